/* PathAlign annotations: persistent points, lines, rectangles, polygons and free-hand regions on each
 * viewer pane, drawn with Annotorious (vendor/annotorious, SVG, no eval) and its selector pack (point,
 * line, free-hand). Attaches through viewer.js's `pathalign:slide-opened` event; never touches viewer.js.
 *
 * The server stores GeoJSON geometries in level-0 pixels (webapp/slides/annotations.py). Annotorious works
 * in the pane's Deep Zoom image pixels, which start at the slide's bounds: toLevel0 / fromLevel0 convert.
 * No inline script (CSP script-src 'self'): configuration comes from data- attributes.
 *
 * Read-only panel (data-readonly="1": a rater in a study that shows the shared layer): the template leaves
 * out the drawing tools, the label and layer choosers, import, export and the form's edit fields, and the
 * server answers the shared layer only, without authors or comments; this script works with what is there.
 */
(function () {
  "use strict";

  const OSD = window.OpenSeadragon;
  const panel = document.querySelector("[data-pa-annotations]");
  if (!panel || !OSD || !OSD.Annotorious) return;
  const viewerRoot = panel.closest("[data-pa-viewer]");
  const KIND_OF_TOOL = { point: "point", line: "line", rect: "rectangle", polygon: "polygon", freehand: "freehand" };
  const KIND_NAMES = { point: "Point", line: "Line", rectangle: "Rectangle", polygon: "Polygon", freehand: "Free-hand" };
  const $ = (sel) => panel.querySelector(sel);
  const readOnly = panel.dataset.readonly === "1";
  const state = { layers: [], active: null, tool: "", show: { personal: true, shared: true }, selected: null, listOpen: false };

  function csrfToken() {
    try { return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || ""; }
    catch (e) { return ""; }
  }

  function request(url, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    opts.headers = Object.assign({ Accept: "application/json" }, opts.headers);
    if (opts.method && opts.method !== "GET") opts.headers["X-CSRFToken"] = csrfToken();
    return fetch(url, opts).then((r) => r.json().catch(() => ({})).then((body) => {
      if (!r.ok) throw new Error(body.error || ("the server answered " + r.status));
      return body;
    }));
  }

  function status(text, isError) {
    const box = $("[data-ann-role=status]");
    box.textContent = text || "";
    box.classList.toggle("pa-ann-error", !!isError);
  }

  function listUrl(slide) { return panel.dataset.listUrl.replace(panel.dataset.zero, slide); }

  // --- geometry: Annotorious selectors <-> GeoJSON in level-0 pixels -----------------------------------
  function round(v) { return Math.round(v * 100) / 100; }

  function svgPoints(value) {
    const doc = new DOMParser().parseFromString(value, "image/svg+xml");
    const polygon = doc.querySelector("polygon");
    if (polygon) {
      return { shape: "polygon", points: polygon.getAttribute("points").trim().split(/\s+/).map((p) => p.split(",").map(Number)) };
    }
    const line = doc.querySelector("line");
    if (line) {
      return { shape: "line", points: [["x1", "y1"], ["x2", "y2"]].map(([a, b]) => [Number(line.getAttribute(a)), Number(line.getAttribute(b))]) };
    }
    const path = doc.querySelector("path");
    if (path) {
      const numbers = (path.getAttribute("d").match(/-?\d+(\.\d+)?(e-?\d+)?/gi) || []).map(Number);
      const points = [];
      for (let i = 0; i + 1 < numbers.length; i += 2) {
        const p = [numbers[i], numbers[i + 1]];
        const last = points[points.length - 1];
        if (!last || last[0] !== p[0] || last[1] !== p[1]) points.push(p);
      }
      return { shape: "path", points: points };
    }
    return null;
  }

  function targetToGeometry(target, kind, layer) {
    const ox = layer.bounds.x;
    const oy = layer.bounds.y;
    const shift = (p) => [round(p[0] + ox), round(p[1] + oy)];
    const selector = Array.isArray(target.selector) ? target.selector[0] : target.selector;
    if (selector.type === "FragmentSelector") {
      const [x, y, w, h] = selector.value.split(":").pop().split(",").map(Number);
      if (kind === "point") return { type: "Point", coordinates: shift([x, y]) };
      const ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]].map(shift);
      return { type: "Polygon", coordinates: [ring] };
    }
    const parsed = svgPoints(selector.value);
    if (!parsed || parsed.points.length < 2) return null;
    const points = parsed.points.map(shift);
    if (kind === "line") return { type: "LineString", coordinates: points };
    const first = points[0];
    const last = points[points.length - 1];
    if (first[0] !== last[0] || first[1] !== last[1]) points.push(first.slice());
    return { type: "Polygon", coordinates: [points] };
  }

  function geometryToTarget(a, layer) {
    const ox = layer.bounds.x;
    const oy = layer.bounds.y;
    const local = (p) => [p[0] - ox, p[1] - oy];
    const g = a.geometry;
    if (g.type === "Point") {
      const [x, y] = local(g.coordinates);
      return { selector: { type: "FragmentSelector", conformsTo: "http://www.w3.org/TR/media-frags/", value: `xywh=pixel:${x},${y},0,0` },
        renderedVia: { name: "point" } };
    }
    if (a.kind === "rectangle") {
      const ring = g.coordinates[0].map(local);
      const xs = ring.map((p) => p[0]);
      const ys = ring.map((p) => p[1]);
      const x = Math.min(...xs);
      const y = Math.min(...ys);
      return { selector: { type: "FragmentSelector", conformsTo: "http://www.w3.org/TR/media-frags/",
        value: `xywh=pixel:${x},${y},${Math.max(...xs) - x},${Math.max(...ys) - y}` } };
    }
    let svg;
    if (g.type === "LineString" && g.coordinates.length === 2) {
      const [[x1, y1], [x2, y2]] = g.coordinates.map(local);
      svg = `<svg><line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}"></line></svg>`;
    } else if (g.type === "LineString" || a.kind === "freehand") {
      const pts = (g.type === "LineString" ? g.coordinates : g.coordinates[0]).map(local);
      svg = `<svg><path d="M${pts.map((p) => p[0] + " " + p[1]).join(" L")}"></path></svg>`;
    } else {
      svg = `<svg><polygon points="${g.coordinates[0].map(local).map((p) => p.join(",")).join(" ")}"></polygon></svg>`;
    }
    return { selector: { type: "SvgSelector", value: svg } };
  }

  function boundsOf(a) {
    const g = a.geometry;
    const pts = g.type === "Point" ? [g.coordinates] : g.type === "LineString" ? g.coordinates : g.coordinates[0];
    const xs = pts.map((p) => p[0]);
    const ys = pts.map((p) => p[1]);
    return { x: Math.min(...xs), y: Math.min(...ys), w: Math.max(...xs) - Math.min(...xs), h: Math.max(...ys) - Math.min(...ys) };
  }

  function hexToRgba(hex, alpha) {
    const v = (hex || "#1f77b4").replace("#", "");
    return `rgba(${parseInt(v.slice(0, 2), 16)},${parseInt(v.slice(2, 4), 16)},${parseInt(v.slice(4, 6), 16)},${alpha})`;
  }

  // --- one layer per viewer pane -----------------------------------------------------------------------
  function Layer(detail) {
    this.osd = detail.osd;
    this.element = detail.element;
    this.pane = detail.pane;
    this.slide = null;
    this.bounds = { x: 0, y: 0 };
    this.items = [];
    this.canEdit = false;
    this.labels = [];
    const layer = this;
    this.anno = OSD.Annotorious(this.osd, {
      disableEditor: true, // our own form in the panel
      readOnly: readOnly, // a rater's panel never edits, not even before the list has loaded
      allowEmpty: true,
      drawOnSingleClick: true, // polygons are drawn click by click, not with a first drag
      // An array, not the older `formatter` option: the selector pack's free-hand editor (0.6.1) passes
      // `config.formatter` where a list is expected and fails on a function.
      formatters: [(annotation) => layer.format(annotation)],
    });
    window.Annotorious.SelectorPack(this.anno, { tools: ["point", "line", "freehand"] });
    this.anno.on("createSelection", (selection) => layer.created(selection));
    this.anno.on("selectAnnotation", (annotation) => layer.selected(annotation));
    this.anno.on("changeSelectionTarget", (target) => {
      layer.pendingTarget = target;
      if (state.selected) $("[data-ann-role=form-measure]").textContent = "Shape changed: Save to keep it, Close to undo.";
    });
    this.anno.on("cancelSelected", () => { layer.pendingTarget = null; });
    this.element.addEventListener("pointerdown", () => setActive(layer), { capture: true, passive: true });
  }

  // Annotorious 2.7.19 keeps the editable shape under the mouse as its "hovered" shape after the shape is
  // gone (cancelSelected) and then fails on the next mouseleave of the pane ("e.getAttribute is not a
  // function"). Telling the editable shape that the mouse left it, as the browser would, clears that.
  Layer.prototype.deselect = function () {
    this.element.querySelectorAll(".a9s-annotationlayer .editable, .a9s-annotationlayer .selected")
      .forEach((el) => el.dispatchEvent(new MouseEvent("mouseleave")));
    this.anno.cancelSelected();
  };

  Layer.prototype.format = function (annotation) {
    const item = this.find(annotation.id);
    if (!item) return null;
    return { className: "pa-ann-shape pa-ann-" + item.kind + (item.layer === "shared" ? " pa-ann-shared" : ""),
      style: `stroke:${item.color};fill:${item.kind === "line" || item.kind === "point" ? item.color : hexToRgba(item.color, 0.12)}` };
  };

  Layer.prototype.find = function (id) {
    const key = String(id).replace(/^#/, "");
    return this.items.find((a) => a.id === key) || null;
  };

  Layer.prototype.load = function (slide, meta) {
    this.slide = slide;
    this.bounds = (meta && meta.bounds) || { x: 0, y: 0 };
    this.items = [];
    this.render();
    panel.dataset.state = "loading";
    return request(listUrl(slide)).then((data) => {
      if (data.slide !== this.slide) return;
      this.items = data.annotations;
      this.canEdit = data.can_edit;
      this.labels = data.labels;
      this.mpp = data.mpp;
      this.anno.readOnly = readOnly || !data.can_edit;
      this.render();
      if (state.active === this) refreshPanel();
      panel.dataset.state = "ready";
    }).catch((err) => { status("Annotations could not be loaded: " + err.message, true); panel.dataset.state = "error"; });
  };

  Layer.prototype.visibleItems = function () {
    return this.items.filter((a) => state.show[a.mine && a.layer === "personal" ? "personal" : a.layer]);
  };

  Layer.prototype.render = function () {
    this.anno.setAnnotations(this.visibleItems().map((a) => ({
      "@context": "http://www.w3.org/ns/anno.jsonld", id: "#" + a.id, type: "Annotation",
      body: a.class_name ? [{ type: "TextualBody", purpose: "tagging", value: a.class_name }] : [],
      target: geometryToTarget(a, this),
    })));
  };

  Layer.prototype.created = function (selection) {
    const kind = KIND_OF_TOOL[state.tool];
    const geometry = kind && targetToGeometry(selection.target, kind, this);
    this.deselect();
    setTool("");
    if (!geometry) { status("That shape could not be read; draw it again.", true); return; }
    const body = { kind: kind, geometry: geometry, layer: $("[data-ann-role=layer]").value,
      label: $("[data-ann-role=label]").value || null, comment: "" };
    status("Saving…");
    request(listUrl(this.slide), { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then((saved) => {
        this.items.push(saved);
        if (!state.show[saved.layer]) { state.show[saved.layer] = true; syncShowBoxes(); }
        this.render();
        status(`${KIND_NAMES[saved.kind]} saved${saved.measurement ? ": " + saved.measurement : ""}.`);
        refreshPanel();
        openForm(saved);
      })
      .catch((err) => { this.render(); status("Not saved: " + err.message, true); });
  };

  Layer.prototype.selected = function (annotation) {
    setActive(this);
    const item = this.find(annotation.id);
    this.pendingTarget = null;
    if (item) openForm(item);
  };

  Layer.prototype.jump = function (item) {
    const b = boundsOf(item);
    const tiled = this.osd.world.getItemAt(0);
    if (!tiled) return;
    const pad = Math.max(b.w, b.h, 200) * 0.6;
    const rect = tiled.imageToViewportRectangle(b.x - this.bounds.x - pad, b.y - this.bounds.y - pad, b.w + 2 * pad, b.h + 2 * pad);
    this.osd.viewport.fitBoundsWithConstraints(rect);
    if (this.visibleItems().includes(item)) this.anno.selectAnnotation("#" + item.id);
    openForm(item);
  };

  // --- the panel ---------------------------------------------------------------------------------------
  function setActive(layer) {
    if (state.active === layer) return;
    state.active = layer;
    state.layers.forEach((l) => l.element.classList.toggle("pa-ann-active-pane", l === layer && state.layers.length > 1));
    if (state.tool) setTool(state.tool); // the chosen tool draws on the pane the user went to
    refreshPanel();
  }

  function setTool(tool) {
    state.tool = tool;
    panel.querySelectorAll("[data-ann-tool]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.annTool === tool)));
    state.layers.forEach((l) => {
      if (tool) {
        l.anno.setDrawingTool(tool);
        l.anno.setDrawingEnabled(l === state.active);
      } else {
        l.anno.setDrawingEnabled(false);
      }
    });
    panel.dataset.tool = tool;
    if (viewerRoot) viewerRoot.toggleAttribute("data-ann-drawing", !!tool);
  }

  function fillLabels(select, labels, current) {
    const keep = current === undefined ? select.value : String(current || "");
    select.replaceChildren(new Option("(none)", ""));
    labels.forEach((l) => select.append(new Option(l.name, String(l.id))));
    select.value = keep;
    if (select.value !== keep) select.value = "";
  }

  function syncShowBoxes() {
    panel.querySelectorAll("[data-ann-show]").forEach((box) => { box.checked = state.show[box.dataset.annShow]; });
  }

  function refreshPanel() {
    const layer = state.active;
    const items = layer ? layer.items : [];
    $("[data-ann-role=count]").textContent = String(items.length);
    panel.classList.toggle("pa-ann-readonly", readOnly || (!!layer && !layer.canEdit));
    const labelChooser = $("[data-ann-role=label]");
    if (layer && labelChooser) fillLabels(labelChooser, layer.labels);
    const exportLink = $("[data-ann-role=export]");
    if (layer && layer.slide && exportLink) exportLink.href = listUrl(layer.slide) + "export.geojson";
    const note = $("[data-ann-role=note]");
    note.textContent = !layer ? "" : layer.mpp ? "" :
      "This slide's resolution is unknown: areas and lengths are given in pixels, not mm² or µm.";
    const list = $("[data-ann-role=items]");
    list.replaceChildren();
    items.forEach((a) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "pa-ann-item";
      button.dataset.annId = a.id;
      button.title = "Go to this annotation";
      const swatch = document.createElement("span");
      swatch.className = "pa-ann-swatch";
      swatch.style.background = a.color;
      const text = document.createElement("span");
      text.textContent = `${KIND_NAMES[a.kind]}${a.class_name ? " · " + a.class_name : ""}${a.measurement ? " · " + a.measurement : ""}`;
      const who = document.createElement("small");
      who.textContent = `${a.layer === "shared" ? "shared" : "mine"} · ${a.owner_name}${a.comment ? " · " + a.comment : ""}`;
      button.append(swatch, text, who);
      button.addEventListener("click", () => layer.jump(a));
      li.append(button);
      if (state.selected && state.selected.id === a.id) li.classList.add("pa-ann-current");
      list.append(li);
    });
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "pa-ann-empty";
      li.textContent = layer && layer.canEdit ? "No annotations yet: choose a tool above and draw on the slide." :
        readOnly ? "No shared annotations on this slide." : "No annotations.";
      list.append(li);
    }
  }

  function toggleList(open) {
    state.listOpen = open === undefined ? !state.listOpen : open;
    $("[data-ann-role=panel]").hidden = !state.listOpen;
    $("[data-ann-role=list-toggle]").setAttribute("aria-expanded", String(state.listOpen));
  }

  function openForm(item) {
    const layer = state.active;
    state.selected = item;
    toggleList(true);
    const form = $("[data-ann-role=form]");
    form.hidden = false;
    $("[data-ann-role=form-title]").textContent = `${KIND_NAMES[item.kind]} by ${item.owner_name}`;
    $("[data-ann-role=form-measure]").textContent = item.measurement || "";
    fillLabels(form.elements.label, layer ? layer.labels : [], item.label ? item.label.id : "");
    if (form.elements.layer) {
      form.elements.layer.value = item.layer;
      form.elements.layer.disabled = !item.mine || !item.can_edit;
    }
    if (form.elements.comment) form.elements.comment.value = item.comment;
    const editable = !readOnly && !!item.can_edit;
    [form.elements.label, form.elements.comment].forEach((el) => { if (el) el.disabled = !editable; });
    const submit = form.querySelector("[type=submit]");
    if (submit) submit.hidden = !editable;
    const remove = $("[data-ann-role=delete]");
    if (remove) remove.hidden = !editable;
    refreshPanel();
  }

  function closeForm() {
    state.selected = null;
    $("[data-ann-role=form]").hidden = true;
    if (state.active) state.active.deselect();
    refreshPanel();
  }

  function replaceItem(layer, saved) {
    layer.items = layer.items.map((a) => (a.id === saved.id ? saved : a));
  }

  function saveForm(event) {
    event.preventDefault();
    const layer = state.active;
    const item = state.selected;
    if (readOnly || !layer || !item) return;
    const form = event.target;
    const body = { label: form.elements.label.value || null, comment: form.elements.comment.value,
      updated_at: item.updated_at }; // the server refuses (409) if someone changed it since
    if (!form.elements.layer.disabled) body.layer = form.elements.layer.value;
    if (layer.pendingTarget) {
      const geometry = targetToGeometry(layer.pendingTarget, item.kind, layer);
      if (geometry) body.geometry = geometry;
    }
    status("Saving…");
    request(listUrl(layer.slide) + item.id + "/", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then((saved) => {
        layer.pendingTarget = null;
        replaceItem(layer, saved);
        layer.deselect();
        layer.render();
        status("Saved.");
        openForm(saved);
      })
      .catch((err) => status("Not saved: " + err.message, true));
  }

  function deleteSelected() {
    const layer = state.active;
    const item = state.selected;
    if (!layer || !item) return;
    if (!window.confirm(`Delete this ${KIND_NAMES[item.kind].toLowerCase()}? It stays in the audit log.`)) return;
    request(listUrl(layer.slide) + item.id + "/delete/", { method: "POST" })
      .then(() => {
        layer.items = layer.items.filter((a) => a.id !== item.id);
        layer.deselect();
        layer.render();
        status("Deleted.");
        closeForm();
      })
      .catch((err) => status("Not deleted: " + err.message, true));
  }

  function importFile(input) {
    const layer = state.active;
    const file = input.files && input.files[0];
    if (!layer || !file) return;
    const data = new FormData();
    data.append("file", file);
    data.append("layer", $("[data-ann-role=layer]").value);
    status("Importing " + file.name + "…");
    request(listUrl(layer.slide) + "import/", { method: "POST", body: data })
      .then((result) => {
        const skipped = Object.entries(result.skipped || {}).map(([k, n]) => `${n} ${k}`).join(", ");
        status(`Imported ${result.imported} annotation${result.imported === 1 ? "" : "s"}${skipped ? " (skipped " + skipped + ")" : ""}.`);
        return layer.load(layer.slide, { bounds: layer.bounds });
      })
      .catch((err) => status("Not imported: " + err.message, true))
      .finally(() => { input.value = ""; });
  }

  function bind() {
    panel.querySelectorAll("[data-ann-tool]").forEach((b) => b.addEventListener("click", () => {
      if (!state.active) return;
      setTool(state.tool === b.dataset.annTool ? "" : b.dataset.annTool);
    }));
    panel.querySelectorAll("[data-ann-show]").forEach((box) => box.addEventListener("change", () => {
      state.show[box.dataset.annShow] = box.checked;
      state.layers.forEach((l) => { l.deselect(); l.render(); });
    }));
    $("[data-ann-role=list-toggle]").addEventListener("click", () => toggleList());
    $("[data-ann-role=form]").addEventListener("submit", saveForm);
    $("[data-ann-role=close]").addEventListener("click", closeForm);
    // Not in the read-only panel (no delete, import or export there).
    const on = (sel, type, fn) => { const el = $(sel); if (el) el.addEventListener(type, fn); };
    on("[data-ann-role=delete]", "click", deleteSelected);
    on("[data-ann-role=import]", "change", (e) => importFile(e.target));
    on("[data-ann-role=export]", "click", (e) => { if (!state.active || !state.active.slide) e.preventDefault(); });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.tool) { setTool(""); state.layers.forEach((l) => l.deselect()); }
    });
  }

  function attach(detail) {
    if (!detail || !detail.osd || !detail.slide) return;
    if (viewerRoot && !viewerRoot.contains(detail.element)) return;
    let layer = state.layers.find((l) => l.osd === detail.osd);
    if (!layer) {
      layer = new Layer(detail);
      state.layers.push(layer);
    }
    if (!state.active || detail.pane === "main") setActive(layer);
    if (layer.slide !== detail.slide) {
      if (state.selected && state.active === layer) closeForm();
      layer.load(detail.slide, detail.meta);
    }
  }

  bind();
  document.addEventListener("pathalign:slide-opened", (event) => attach(event.detail));
  // Panes that opened before this script ran (it loads after viewer.js).
  (window.PathAlignViewer ? window.PathAlignViewer.instances : []).forEach((api) => {
    Object.values(api.panes || {}).forEach((pane) => {
      if (pane && pane.slideId && pane.meta) attach({ pane: pane.name, slide: pane.slideId, meta: pane.meta, osd: pane.osd, element: pane.el });
    });
  });

  window.PathAlignAnnotations = {
    layers: state.layers,
    active: () => state.active,
    setTool: setTool,
    reload: () => Promise.all(state.layers.map((l) => l.load(l.slide, { bounds: l.bounds }))),
  };
})();

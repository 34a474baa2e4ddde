/* PathAlign slide viewer: OpenSeadragon panes with a scale bar in micrometres, magnification buttons,
 * a ruler, rotation, full screen, keyboard shortcuts, a slide strip, a synchronised side-by-side pane
 * and colour-mapped heatmap overlays.
 *
 * Markup comes from templates/slides/_viewer.html; every element with [data-pa-viewer] is started on
 * load (unless it also has data-pa-manual). Other pages can start one themselves:
 *
 *   const viewer = PathAlignViewer.open(element, {slide: "<uuid>"});
 *   viewer.openSlide(id); viewer.compare(id | null);
 *   viewer.addOverlay("attention"); viewer.setOverlayOpacity(0.4); viewer.toggleOverlay(false);
 *   viewer.zoomToMagnification(20); viewer.on("slide-opened", (detail) => ...);
 *
 * No inline script anywhere (CSP script-src 'self'): data comes from data- attributes and JSON endpoints.
 */
(function () {
  "use strict";

  const OSD = window.OpenSeadragon;
  const MAGNIFICATIONS = [1, 5, 10, 20, 40];
  const SCALEBAR_TARGET_PX = 120;
  // Viridis, sampled at 10 points; interpolated linearly (perceptually uniform, colour-blind safe).
  const VIRIDIS = [
    [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37],
  ];
  const MAX_HEATMAP_SIDE = 4096;

  function fetchJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then((r) => {
      if (!r.ok) throw new Error(url + " answered " + r.status);
      return r.json();
    });
  }

  function viridis(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const a = VIRIDIS[i];
    const b = VIRIDIS[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }

  // The largest 1, 2 or 5 x 10^k not above `value`: scale bars read best at round lengths.
  function roundLength(value) {
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    const m = value / power;
    return (m >= 5 ? 5 : m >= 2 ? 2 : 1) * power;
  }

  function formatMicrometres(um) {
    if (um >= 1000) return (um / 1000).toLocaleString(undefined, { maximumFractionDigits: 2 }) + " mm";
    if (um >= 10) return Math.round(um).toLocaleString() + " µm";
    return um.toLocaleString(undefined, { maximumFractionDigits: 2 }) + " µm";
  }

  function element(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---------------------------------------------------------------------------------------------------
  // One OpenSeadragon pane: a slide, its scale bar, ruler and overlay.
  function Pane(owner, root, name) {
    this.owner = owner;
    this.name = name;
    this.el = root;
    this.slideId = null;
    this.meta = null;
    this.tilesLoaded = 0;
    this.overlay = { name: null, item: null, visible: true, opacity: owner.overlayOpacity, data: null };
    this.ruler = { active: false, dragging: false, a: null, b: null };
    this.scalebar = root.querySelector(".pa-scalebar");
    this.readout = root.querySelector(".pa-mag-readout");
    this.svg = root.querySelector(".pa-ruler-layer");
    this.osd = OSD({
      element: root.querySelector(".pa-osd"),
      prefixUrl: owner.options.prefixUrl,
      drawer: "canvas", // predictable everywhere (no WebGL needed) and readable for tests
      showNavigator: true,
      navigatorPosition: "TOP_RIGHT",
      navigatorSizeRatio: 0.18,
      showRotationControl: true,
      showFullPageControl: false, // full screen covers the whole viewer (both panes), see toggleFullscreen
      maxZoomPixelRatio: 4,
      minZoomImageRatio: 0.8,
      visibilityRatio: 0.5,
      animationTime: 0.5,
      timeout: 60000,
      crossOriginPolicy: false,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });
    const pane = this;
    this.osd.addHandler("tile-loaded", () => { pane.tilesLoaded += 1; });
    this.osd.addHandler("update-viewport", () => { pane.updateScalebar(); pane.drawRuler(); });
    this.osd.addHandler("viewport-change", () => owner.paneMoved(pane));
    this.osd.addHandler("canvas-press", (e) => {
      if (!pane.ruler.active) return;
      e.preventDefaultAction = true;
      const p = pane.toImage(e.position);
      if (!p) return;
      pane.ruler.a = p;
      pane.ruler.b = p;
      pane.ruler.dragging = true;
      pane.drawRuler();
    });
    this.osd.addHandler("canvas-drag", (e) => {
      if (!pane.ruler.active) return;
      e.preventDefaultAction = true; // measure instead of panning
      if (pane.ruler.dragging) {
        pane.ruler.b = pane.toImage(e.position) || pane.ruler.b;
        pane.drawRuler();
      }
    });
    this.osd.addHandler("canvas-drag-end", (e) => { if (pane.ruler.active) e.preventDefaultAction = true; });
    this.osd.addHandler("canvas-release", () => {
      if (!pane.ruler.active || !pane.ruler.dragging) return;
      pane.ruler.dragging = false;
      pane.drawRuler();
      owner.emit("measure", { pane: pane.name, micrometres: pane.measurement() });
    });
    this.osd.addHandler("canvas-click", (e) => { if (pane.ruler.active) e.preventDefaultAction = true; });
    // The pane the user touches leads the synchronisation (avoids the two panes chasing each other).
    ["pointerdown", "wheel", "keydown", "focusin"].forEach((type) =>
      root.addEventListener(type, () => { owner.leader = pane; }, { capture: true, passive: true }));
  }

  Pane.prototype.item = function () {
    return this.osd.world.getItemCount() ? this.osd.world.getItemAt(0) : null;
  };

  Pane.prototype.toImage = function (position) {
    const item = this.item();
    return item ? item.viewerElementToImageCoordinates(position) : null;
  };

  Pane.prototype.objectivePower = function () {
    const m = this.meta;
    if (!m) return null;
    if (m.objective_power) return m.objective_power;
    return m.mpp_x ? 10 / m.mpp_x : null; // 0.25 µm/px scans are called 40x, 0.5 µm/px 20x
  };

  // Screen pixels per level-0 image pixel, as displayed now.
  Pane.prototype.imageZoom = function (current) {
    const item = this.item();
    return item ? item.viewportToImageZoom(this.osd.viewport.getZoom(current !== false)) : null;
  };

  Pane.prototype.magnification = function () {
    const power = this.objectivePower();
    const zoom = this.imageZoom();
    return power && zoom ? power * zoom : null;
  };

  Pane.prototype.open = function (id) {
    const pane = this;
    const owner = this.owner;
    this.slideId = id;
    this.clearRuler();
    this.overlay = { name: null, item: null, visible: true, opacity: owner.overlayOpacity, data: null };
    let url = owner.metaUrl(id);
    if (owner.options.deidentified) url += "?deidentified=1";
    return fetchJSON(url).then((meta) => {
      if (pane.slideId !== id) return null; // another slide was asked for meanwhile
      pane.meta = meta;
      return new Promise((resolve, reject) => {
        pane.osd.addOnceHandler("open", () => resolve(meta));
        pane.osd.addOnceHandler("open-failed", (e) => reject(new Error("could not open slide: " + e.message)));
        pane.osd.open(meta.dzi);
      });
    }).then((meta) => {
      if (!meta) return null;
      pane.el.dataset.slide = id;
      const title = pane.el.querySelector(".pa-pane-title");
      if (title) title.textContent = meta.title || meta.stain || "";
      owner.paneOpened(pane);
      return meta;
    });
  };

  Pane.prototype.close = function () {
    this.slideId = null;
    this.meta = null;
    this.clearRuler();
    this.osd.close();
  };

  Pane.prototype.zoomToMagnification = function (mag) {
    const item = this.item();
    const power = this.objectivePower();
    if (!item || !power) return false;
    this.osd.viewport.zoomTo(item.imageToViewportZoom(mag / power));
    return true;
  };

  Pane.prototype.updateScalebar = function () {
    if (!this.scalebar) return;
    const zoom = this.imageZoom();
    const mpp = this.meta && this.meta.mpp_x;
    const label = this.scalebar.querySelector(".pa-scalebar-label");
    const bar = this.scalebar.querySelector(".pa-scalebar-bar");
    if (!zoom || !mpp) {
      this.scalebar.hidden = true;
      return;
    }
    const umPerPixel = mpp / zoom;
    const length = roundLength(SCALEBAR_TARGET_PX * umPerPixel);
    this.scalebar.hidden = false;
    bar.style.width = (length / umPerPixel).toFixed(1) + "px";
    label.textContent = formatMicrometres(length);
    this.scalebar.dataset.micrometres = String(length);
    if (this.readout) {
      const mag = this.magnification();
      this.readout.textContent = mag ? (mag < 10 ? mag.toFixed(1) : Math.round(mag)) + "×" : "";
    }
  };

  // --- ruler: measures on screen only; nothing is sent or saved.
  Pane.prototype.setRuler = function (on) {
    this.ruler.active = on;
    this.el.classList.toggle("pa-measuring", on);
    if (!on) this.clearRuler();
  };

  Pane.prototype.clearRuler = function () {
    this.ruler.a = this.ruler.b = null;
    this.ruler.dragging = false;
    this.drawRuler();
  };

  Pane.prototype.measurement = function () {
    const r = this.ruler;
    if (!r.a || !r.b || !this.meta || !this.meta.mpp_x) return null;
    const dx = (r.b.x - r.a.x) * this.meta.mpp_x;
    const dy = (r.b.y - r.a.y) * (this.meta.mpp_y || this.meta.mpp_x);
    return Math.hypot(dx, dy);
  };

  Pane.prototype.drawRuler = function () {
    const svg = this.svg;
    if (!svg) return;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const item = this.item();
    const r = this.ruler;
    if (!item || !r.a || !r.b) return;
    const a = item.imageToViewerElementCoordinates(new OSD.Point(r.a.x, r.a.y));
    const b = item.imageToViewerElementCoordinates(new OSD.Point(r.b.x, r.b.y));
    const ns = "http://www.w3.org/2000/svg";
    const line = document.createElementNS(ns, "line");
    [["x1", a.x], ["y1", a.y], ["x2", b.x], ["y2", b.y]].forEach(([k, v]) => line.setAttribute(k, v));
    line.setAttribute("class", "pa-ruler-line");
    svg.appendChild(line);
    const um = this.measurement();
    if (um !== null) {
      const text = document.createElementNS(ns, "text");
      text.setAttribute("x", b.x + 8);
      text.setAttribute("y", b.y - 8);
      text.setAttribute("class", "pa-ruler-label");
      text.textContent = formatMicrometres(um);
      svg.appendChild(text);
    }
  };

  // --- heatmap overlay: one canvas pixel per patch, colour-mapped, added as an image in world space.
  Pane.prototype.addOverlay = function (name) {
    const pane = this;
    if (!this.meta) return Promise.reject(new Error("no slide open"));
    const slideId = this.slideId;
    return fetchJSON(this.meta.overlays + encodeURIComponent(name) + ".json").then((data) => {
      if (pane.slideId !== slideId) return null;
      pane.removeOverlay();
      const url = pane.heatmapImage(data);
      if (!url) return null;
      return new Promise((resolve, reject) => {
        pane.osd.addSimpleImage({
          url: url.url,
          x: url.x,
          y: url.y,
          width: url.width,
          opacity: pane.overlay.visible ? pane.overlay.opacity : 0,
          success: (event) => {
            pane.overlay = { ...pane.overlay, name: name, item: event.item, data: data };
            pane.owner.emit("overlay", { pane: pane.name, name: name, visible: pane.overlay.visible });
            resolve(data);
          },
          error: (event) => reject(new Error("overlay image failed: " + (event && event.message))),
        });
      });
    });
  };

  Pane.prototype.heatmapImage = function (data) {
    const item = this.item();
    if (!item || !data.coords.length) return null;
    const bounds = this.meta.bounds || { x: 0, y: 0 };
    const imageWidth = item.source.dimensions.x;
    let step = data.patch_size;
    let minX = Infinity;
    let minY = Infinity;
    let maxX = -Infinity;
    let maxY = -Infinity;
    for (const [x, y] of data.coords) {
      minX = Math.min(minX, x); minY = Math.min(minY, y); maxX = Math.max(maxX, x); maxY = Math.max(maxY, y);
    }
    // Very fine grids are merged into coarser cells so the canvas stays within MAX_HEATMAP_SIDE.
    while ((maxX - minX) / step + 1 > MAX_HEATMAP_SIDE || (maxY - minY) / step + 1 > MAX_HEATMAP_SIDE) step *= 2;
    const cols = Math.floor((maxX - minX) / step) + 1;
    const rows = Math.floor((maxY - minY) / step) + 1;
    const canvas = document.createElement("canvas");
    canvas.width = cols;
    canvas.height = rows;
    const ctx = canvas.getContext("2d");
    const pixels = ctx.createImageData(cols, rows);
    const lo = data.min;
    const span = data.max - data.min;
    data.coords.forEach(([x, y], i) => {
      const offset = (Math.floor((y - minY) / step) * cols + Math.floor((x - minX) / step)) * 4;
      const [r, g, b] = viridis(span > 0 ? (data.values[i] - lo) / span : 1);
      pixels.data[offset] = r; pixels.data[offset + 1] = g; pixels.data[offset + 2] = b; pixels.data[offset + 3] = 255;
    });
    ctx.putImageData(pixels, 0, 0);
    // World coordinates: the slide spans x 0..1; Deep Zoom image pixels start at the slide's bounds.
    return {
      url: canvas.toDataURL("image/png"),
      x: (minX - bounds.x) / imageWidth,
      y: (minY - bounds.y) / imageWidth,
      width: (cols * step) / imageWidth,
    };
  };

  Pane.prototype.removeOverlay = function () {
    if (this.overlay.item) this.osd.world.removeItem(this.overlay.item);
    this.overlay = { ...this.overlay, name: null, item: null, data: null };
  };

  Pane.prototype.applyOverlayOpacity = function () {
    if (this.overlay.item) this.overlay.item.setOpacity(this.overlay.visible ? this.overlay.opacity : 0);
  };

  // ---------------------------------------------------------------------------------------------------
  // The viewer: one or two panes, toolbar, strip, metadata panel.
  function Viewer(root, options) {
    const data = root.dataset;
    this.root = root;
    this.options = Object.assign({
      slide: data.slide || null,
      compare: data.compare || null,
      deidentified: data.deidentified === "1",
      metaUrl: data.metaUrl,
      zero: data.zero,
      prefixUrl: data.osdPrefix,
      updateUrl: data.updateUrl === "1",
      sync: true,
    }, options || {});
    this.listeners = {};
    this.overlayOpacity = 0.5;
    this.overlayVisible = true;
    this.syncEnabled = this.options.sync;
    this.syncing = false;
    this.panes = {
      main: new Pane(this, root.querySelector('[data-pane="main"]'), "main"),
      compare: null,
    };
    this.compareEl = root.querySelector('[data-pane="compare"]');
    this.leader = this.panes.main;
    this.bindControls();
    if (this.options.slide) this.openSlide(this.options.slide);
    if (this.options.compare) this.compare(this.options.compare);
  }

  Viewer.prototype.on = function (name, fn) {
    (this.listeners[name] = this.listeners[name] || []).push(fn);
    return this;
  };

  Viewer.prototype.emit = function (name, detail) {
    (this.listeners[name] || []).forEach((fn) => fn(detail));
    this.root.dispatchEvent(new CustomEvent("pathalign:" + name, { detail: detail, bubbles: true }));
  };

  Viewer.prototype.metaUrl = function (id) {
    return this.options.metaUrl.replace(this.options.zero, id);
  };

  Viewer.prototype.openSlide = function (id) {
    this.leader = this.panes.main;
    return this.panes.main.open(id).catch((err) => this.fail(err));
  };

  Viewer.prototype.compare = function (id) {
    if (!this.compareEl) return Promise.resolve(null);
    if (!id) {
      if (this.panes.compare) this.panes.compare.close();
      this.compareEl.hidden = true;
      this.root.classList.remove("pa-comparing");
      this.renderMeta();
      this.updateLocation();
      return Promise.resolve(null);
    }
    this.compareEl.hidden = false;
    this.root.classList.add("pa-comparing");
    if (!this.panes.compare) this.panes.compare = new Pane(this, this.compareEl, "compare");
    const pane = this.panes.compare;
    return pane.open(id).then((meta) => {
      this.paneMoved(this.panes.main, true); // start where the main pane is
      return meta;
    }).catch((err) => this.fail(err));
  };

  Viewer.prototype.fail = function (err) {
    const box = this.root.querySelector("[data-role=error]");
    if (box) { box.textContent = "The slide could not be shown: " + err.message; box.hidden = false; }
    this.emit("error", { message: err.message });
    return null;
  };

  Viewer.prototype.paneOpened = function (pane) {
    const box = this.root.querySelector("[data-role=error]");
    if (box) box.hidden = true;
    if (pane.name === "main") {
      this.root.querySelectorAll("[data-action=open]").forEach((b) =>
        b.setAttribute("aria-current", String(b.dataset.slideId === pane.slideId)));
      this.loadOverlayList();
      this.root.dataset.state = "ready";
    }
    if (this.panes.compare && this.panes.compare.slideId && pane.name === "main") this.paneMoved(pane, true);
    this.renderMeta();
    this.updateLocation();
    // osd and element let add-ons (annotations.js) attach to the pane without reaching into the viewer.
    this.emit("slide-opened", { pane: pane.name, slide: pane.slideId, meta: pane.meta, osd: pane.osd, element: pane.el });
  };

  // Side by side: the follower shows the same physical scale (µm per screen pixel), the same relative
  // position in the slide and the same rotation as the pane the user moves.
  Viewer.prototype.paneMoved = function (from, force) {
    const other = from === this.panes.main ? this.panes.compare : this.panes.main;
    if (!this.syncEnabled || this.syncing || !other || !other.slideId || this.compareEl.hidden) return;
    if (!force && from !== this.leader) return;
    const fi = from.item();
    const ti = other.item();
    if (!fi || !ti || !from.meta || !other.meta) return;
    const fromZoom = fi.viewportToImageZoom(from.osd.viewport.getZoom(true));
    const scale = (other.meta.mpp_x && from.meta.mpp_x) ? other.meta.mpp_x / from.meta.mpp_x : 1;
    const centre = fi.viewportToImageCoordinates(from.osd.viewport.getCenter(true));
    const fd = fi.source.dimensions;
    const td = ti.source.dimensions;
    const target = ti.imageToViewportCoordinates(new OSD.Point(centre.x / fd.x * td.x, centre.y / fd.y * td.y));
    this.syncing = true;
    try {
      other.osd.viewport.setRotation(from.osd.viewport.getRotation(true), true);
      other.osd.viewport.zoomTo(ti.imageToViewportZoom(fromZoom * scale), null, true);
      other.osd.viewport.panTo(target, true);
    } finally {
      this.syncing = false;
    }
  };

  Viewer.prototype.setSync = function (on) {
    this.syncEnabled = !!on;
    if (on) this.paneMoved(this.panes.main, true);
  };

  Viewer.prototype.zoomToMagnification = function (mag) {
    this.leader = this.panes.main;
    return this.panes.main.zoomToMagnification(mag);
  };

  Viewer.prototype.addOverlay = function (name) {
    const pane = this.panes.main;
    this.overlayVisible = true;
    pane.overlay.visible = true;
    pane.overlay.pending = name; // the checkbox shows "on" while the layer loads
    this.syncOverlayControls();
    const done = () => { if (pane.overlay.pending === name) pane.overlay.pending = null; this.syncOverlayControls(); };
    return pane.addOverlay(name).then((data) => { done(); return data; }, (err) => { done(); throw err; });
  };

  Viewer.prototype.removeOverlay = function () {
    this.panes.main.removeOverlay();
    this.syncOverlayControls();
  };

  Viewer.prototype.setOverlayOpacity = function (x) {
    this.overlayOpacity = Math.min(1, Math.max(0, Number(x)));
    [this.panes.main, this.panes.compare].forEach((pane) => {
      if (!pane) return;
      pane.overlay.opacity = this.overlayOpacity;
      pane.applyOverlayOpacity();
    });
    this.syncOverlayControls();
  };

  Viewer.prototype.toggleOverlay = function (on) {
    const pane = this.panes.main;
    this.overlayVisible = on === undefined ? !this.overlayVisible : !!on;
    pane.overlay.visible = this.overlayVisible;
    pane.applyOverlayOpacity();
    this.syncOverlayControls();
    this.emit("overlay", { pane: "main", name: pane.overlay.name, visible: this.overlayVisible });
  };

  Viewer.prototype.overlayState = function () {
    const o = this.panes.main.overlay;
    return { name: o.name, loaded: !!o.item, visible: o.visible, opacity: o.opacity };
  };

  Viewer.prototype.toggleRuler = function (on) {
    const active = on === undefined ? !this.panes.main.ruler.active : !!on;
    [this.panes.main, this.panes.compare].forEach((pane) => pane && pane.setRuler(active));
    const button = this.root.querySelector("[data-action=ruler]");
    if (button) button.setAttribute("aria-pressed", String(active));
    return active;
  };

  Viewer.prototype.rotate = function (degrees) {
    const viewport = this.leader.osd.viewport;
    this.leader.osd.viewport.setRotation(viewport.getRotation() + (degrees || 90));
  };

  Viewer.prototype.toggleFullscreen = function () {
    const root = this.root;
    if (document.fullscreenElement === root) return document.exitFullscreen();
    if (root.classList.contains("pa-fullpage")) { root.classList.remove("pa-fullpage"); return null; }
    if (root.requestFullscreen) {
      return root.requestFullscreen().catch(() => root.classList.add("pa-fullpage"));
    }
    root.classList.add("pa-fullpage");
    return null;
  };

  Viewer.prototype.updateLocation = function () {
    if (!this.options.updateUrl || !window.history.replaceState) return;
    const url = new URL(window.location.href);
    const main = this.panes.main.slideId;
    const other = this.panes.compare && !this.compareEl.hidden ? this.panes.compare.slideId : null;
    if (main) url.searchParams.set("slide", main);
    if (other) url.searchParams.set("compare", other); else url.searchParams.delete("compare");
    window.history.replaceState(null, "", url);
  };

  // --- metadata panel
  Viewer.prototype.renderMeta = function () {
    const panel = this.root.querySelector("[data-role=meta]");
    if (!panel) return;
    panel.textContent = "";
    [this.panes.main, this.panes.compare].forEach((pane) => {
      if (!pane || !pane.meta || (pane.name === "compare" && this.compareEl.hidden)) return;
      const m = pane.meta;
      const section = element("section", { class: "pa-meta-slide", "data-meta-pane": pane.name });
      section.appendChild(element("h3", {}, (pane.name === "compare" ? "Right: " : "") + (m.title || m.stain)));
      const dl = element("dl");
      const rows = [
        ["Stain", m.stain],
        ["Scanner", [m.vendor, m.scanner].filter(Boolean).join(" · ") || "unknown"],
        ["MPP", m.mpp_x ? m.mpp_x.toFixed(4) + (m.mpp_y && m.mpp_y !== m.mpp_x ? " × " + m.mpp_y.toFixed(4) : "") + " µm/px" : "unknown"],
        ["Objective", m.objective_power ? m.objective_power + "×" : "unknown"],
        ["Dimensions", m.width.toLocaleString() + " × " + m.height.toLocaleString() + " px"],
        ["Levels", m.levels.length + ": " + m.levels.map((l) => l.width + "×" + l.height).join(", ")],
      ];
      if (m.original_filename) rows.push(["File", m.original_filename]);
      rows.forEach(([k, v]) => { dl.appendChild(element("dt", {}, k)); dl.appendChild(element("dd", {}, v)); });
      section.appendChild(dl);
      if (m.associated && m.associated.length) {
        const figures = element("div", { class: "pa-associated" });
        m.associated.forEach((a) => {
          const fig = element("figure", { "data-associated": a.name });
          fig.appendChild(element("img", { src: a.url, alt: a.name + " image", loading: "lazy" }));
          fig.appendChild(element("figcaption", {}, a.name));
          figures.appendChild(fig);
        });
        section.appendChild(figures);
      }
      panel.appendChild(section);
    });
  };

  // --- overlays
  Viewer.prototype.loadOverlayList = function () {
    const select = this.root.querySelector("[data-role=overlay-select]");
    const group = this.root.querySelector("[data-role=overlay-controls]");
    const pane = this.panes.main;
    if (!select || !pane.meta) return Promise.resolve([]);
    const slideId = pane.slideId;
    return fetchJSON(pane.meta.overlays).then((data) => {
      if (pane.slideId !== slideId) return [];
      select.textContent = "";
      data.overlays.forEach((o) => select.appendChild(element("option", { value: o.name }, o.label)));
      if (group) group.classList.toggle("pa-disabled", !data.overlays.length);
      select.disabled = !data.overlays.length;
      this.root.querySelectorAll("[data-role=overlay-toggle],[data-role=overlay-opacity]").forEach((c) => {
        c.disabled = !data.overlays.length;
      });
      const toggle = this.root.querySelector("[data-role=overlay-toggle]");
      if (toggle) toggle.checked = false;
      this.emit("overlays", { overlays: data.overlays });
      return data.overlays;
    }).catch(() => []);
  };

  Viewer.prototype.syncOverlayControls = function () {
    const toggle = this.root.querySelector("[data-role=overlay-toggle]");
    const opacity = this.root.querySelector("[data-role=overlay-opacity]");
    const o = this.panes.main.overlay;
    if (toggle) toggle.checked = !!(o.item || o.pending) && o.visible;
    if (opacity) opacity.value = String(Math.round(this.overlayOpacity * 100));
  };

  Viewer.prototype.bindControls = function () {
    const root = this.root;
    const viewer = this;
    root.addEventListener("click", (event) => {
      const button = event.target.closest("[data-action]");
      if (!button || !root.contains(button)) return;
      const action = button.dataset.action;
      if (action === "mag") viewer.zoomToMagnification(Number(button.dataset.mag));
      else if (action === "home") viewer.leader.osd.viewport.goHome();
      else if (action === "ruler") viewer.toggleRuler();
      else if (action === "rotate") viewer.rotate(90);
      else if (action === "fullscreen") viewer.toggleFullscreen();
      else if (action === "open") viewer.openSlide(button.dataset.slideId);
      else if (action === "compare") viewer.compare(button.dataset.slideId);
      else if (action === "compare-off") viewer.compare(null);
      else return;
      event.preventDefault();
    });
    const toggle = root.querySelector("[data-role=overlay-toggle]");
    const select = root.querySelector("[data-role=overlay-select]");
    const opacity = root.querySelector("[data-role=overlay-opacity]");
    const sync = root.querySelector("[data-role=sync]");
    if (toggle) toggle.addEventListener("change", () => {
      const o = viewer.panes.main.overlay;
      if (toggle.checked && (!o.item || o.name !== select.value)) viewer.addOverlay(select.value);
      else viewer.toggleOverlay(toggle.checked);
    });
    if (select) select.addEventListener("change", () => { if (toggle && toggle.checked) viewer.addOverlay(select.value); });
    if (opacity) opacity.addEventListener("input", () => viewer.setOverlayOpacity(Number(opacity.value) / 100));
    if (sync) sync.addEventListener("change", () => viewer.setSync(sync.checked));
    root.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.target.closest("input, select, textarea, [contenteditable]")) return;
      const digit = "12345".indexOf(event.key);
      if (digit >= 0) viewer.zoomToMagnification(MAGNIFICATIONS[digit]);
      else if (event.key === "m") viewer.toggleRuler();
      else if (event.key === "Escape" && viewer.panes.main.ruler.active) viewer.toggleRuler(false);
      else if (event.key === "o") {
        const o = viewer.panes.main.overlay;
        if (!o.item && select && select.value) viewer.addOverlay(select.value);
        else viewer.toggleOverlay();
      }
      else if (event.key === "p") viewer.toggleFullscreen();
      else if (event.key === "h") viewer.leader.osd.viewport.goHome();
      else return;
      event.preventDefault();
      event.stopPropagation();
    }, true);
  };

  Viewer.prototype.destroy = function () {
    [this.panes.main, this.panes.compare].forEach((pane) => pane && pane.osd.destroy());
    this.listeners = {};
  };

  // --- public API ------------------------------------------------------------------------------------
  function publicApi(viewer) {
    return {
      element: viewer.root,
      viewer: viewer,
      get panes() { return viewer.panes; },
      openSlide: (id) => viewer.openSlide(id),
      compare: (id) => viewer.compare(id),
      addOverlay: (name) => viewer.addOverlay(name),
      removeOverlay: () => viewer.removeOverlay(),
      setOverlayOpacity: (x) => viewer.setOverlayOpacity(x),
      toggleOverlay: (on) => viewer.toggleOverlay(on),
      overlayState: () => viewer.overlayState(),
      zoomToMagnification: (m) => viewer.zoomToMagnification(m),
      magnification: () => viewer.panes.main.magnification(),
      toggleRuler: (on) => viewer.toggleRuler(on),
      measurement: () => viewer.panes.main.measurement(),
      setSync: (on) => viewer.setSync(on),
      toggleFullscreen: () => viewer.toggleFullscreen(),
      on: (name, fn) => viewer.on(name, fn),
      destroy: () => viewer.destroy(),
    };
  }

  const instances = [];
  window.PathAlignViewer = {
    open(element, options) {
      if (element.pathAlignViewer) return element.pathAlignViewer;
      const api = publicApi(new Viewer(element, options));
      element.pathAlignViewer = api;
      instances.push(api);
      return api;
    },
    instances: instances,
    viridis: viridis,
  };

  function start() {
    document.querySelectorAll("[data-pa-viewer]:not([data-pa-manual])").forEach((el) => window.PathAlignViewer.open(el));
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

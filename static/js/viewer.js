/* PathAlign slide viewer: OpenSeadragon panes with a scale bar in micrometres, magnification buttons,
 * a ruler, rotation, full screen, keyboard shortcuts, a slide strip, up to four synchronised panes
 * (side by side, or a 2 x 2 grid), per-pane brightness / contrast / gamma, and colour-mapped heatmap
 * overlays with a legend, a threshold, clipping to tissue and a list of the top regions.
 *
 * Markup comes from templates/slides/_viewer.html; every element with [data-pa-viewer] is started on
 * load (unless it also has data-pa-manual). Other pages can start one themselves:
 *
 *   const viewer = PathAlignViewer.open(element, {slide: "<uuid>"});
 *   viewer.openSlide(id); viewer.compare(id | null); viewer.grid([id, id, id, id]); viewer.addToGrid(id);
 *   viewer.addOverlay("attention"); viewer.setOverlayOpacity(0.4); viewer.toggleOverlay(false);
 *   viewer.setOverlayThreshold(0.5); viewer.regions(); viewer.goToRegion(0);
 *   viewer.setAdjustments("main", {brightness: 1.3, contrast: 1, gamma: 1}); viewer.resetAdjustments();
 *   viewer.zoomToMagnification(20); viewer.on("slide-opened", (detail) => ...);
 *
 * Each time a pane opens a slide the root element gets a bubbling `pathalign:slide-opened` event with
 * detail {pane, slide, meta, osd, element}: add-ons (annotations) attach to every pane through it.
 *
 * No inline script anywhere (CSP script-src 'self'): data comes from data- attributes and JSON endpoints.
 */
(function () {
  "use strict";

  const OSD = window.OpenSeadragon;
  const MAGNIFICATIONS = [1, 5, 10, 20, 40];
  const SCALEBAR_TARGET_PX = 120;
  // Pane names in screen order: left, right, bottom left, bottom right.
  const PANE_NAMES = ["main", "compare", "third", "fourth"];
  // Viridis, sampled at 10 points; interpolated linearly (perceptually uniform, colour-blind safe).
  const VIRIDIS = [
    [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37],
  ];
  const MAX_HEATMAP_PIXELS = 4096 * 1024; // the heatmap canvas: at most ~4 Mpixel (fast to rebuild)
  const ROI_COUNT = 5;
  const DIGITAL_MARGIN = 1.02; // above the scan's own magnification by more than this: digital zoom
  const ADJUST_DEFAULT = { brightness: 1, contrast: 1, gamma: 1 };
  let uid = 0;

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

  // Viridis as 256 opaque RGBA pixels, packed for a Uint32Array view of ImageData (byte order R, G, B, A).
  const VIRIDIS_RGBA = (function () {
    const bytes = new Uint8ClampedArray(256 * 4);
    for (let i = 0; i < 256; i++) { bytes.set(viridis(i / 255).map(Math.round), i * 4); bytes[i * 4 + 3] = 255; }
    return new Uint32Array(bytes.buffer);
  })();

  function viridisGradient() {
    return "linear-gradient(to right, " + VIRIDIS.map((c, i) =>
      "rgb(" + c.join(",") + ") " + Math.round(i / (VIRIDIS.length - 1) * 100) + "%").join(", ") + ")";
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

  function formatValue(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a < 0.01 || a >= 10000)) return v.toExponential(1);
    return v.toLocaleString(undefined, { maximumFractionDigits: a < 1 ? 3 : a < 100 ? 2 : 0 });
  }

  function element(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function storage(key, value) {
    try {
      if (value === undefined) return window.localStorage.getItem(key);
      window.localStorage.setItem(key, value);
    } catch (err) { /* private mode or storage off: the default layout */ }
    return null;
  }

  function loadMask(tissue) {
    if (!tissue || !tissue.url) return Promise.resolve(null);
    const img = new Image();
    img.src = tissue.url;
    return img.decode().then(() => {
      const canvas = document.createElement("canvas");
      canvas.width = tissue.width;
      canvas.height = tissue.height;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const rgba = ctx.getImageData(0, 0, tissue.width, tissue.height).data;
      const inside = new Uint8Array(tissue.width * tissue.height); // 1 = tissue
      for (let i = 0; i < inside.length; i++) inside[i] = rgba[i * 4] >= 128 ? 1 : 0;
      return { tissue: inside, width: tissue.width, height: tissue.height, downsample: tissue.downsample };
    }).catch(() => null);
  }

  // ---------------------------------------------------------------------------------------------------
  // Heatmaps. A layer is a patch grid (level-0 top-left corners, one value each). It is drawn on a canvas
  // in level-0 space at the finer of the patch and tissue-mask resolutions, cells below the threshold
  // and pixels outside tissue left transparent, and added to OpenSeadragon as an image in world space.
  function heatmapModel(data, mask) {
    let step = data.patch_size;
    let minX = Infinity; let minY = Infinity; let maxX = -Infinity; let maxY = -Infinity;
    for (const [x, y] of data.coords) {
      minX = Math.min(minX, x); minY = Math.min(minY, y); maxX = Math.max(maxX, x); maxY = Math.max(maxY, y);
    }
    const cellsFor = (s) => (Math.floor((maxX - minX) / s) + 1) * (Math.floor((maxY - minY) / s) + 1);
    while (cellsFor(step) > MAX_HEATMAP_PIXELS) step *= 2; // very fine grids merge into coarser cells
    const cols = Math.floor((maxX - minX) / step) + 1;
    const rows = Math.floor((maxY - minY) / step) + 1;
    const grid = new Float32Array(cols * rows).fill(NaN);
    data.coords.forEach(([x, y], i) => {
      const k = Math.floor((y - minY) / step) * cols + Math.floor((x - minX) / step);
      const v = data.values[i];
      if (!(grid[k] >= v)) grid[k] = v; // merged cells keep their highest value
    });
    // Output pixels: as fine as the tissue mask where that is finer than a patch, within the budget.
    let px = mask ? Math.min(step, mask.downsample) : step;
    while ((cols * step / px) * (rows * step / px) > MAX_HEATMAP_PIXELS) px *= 2;
    return { data, mask, step, cols, rows, grid, minX, minY, px,
             width: Math.max(1, Math.ceil(cols * step / px)), height: Math.max(1, Math.ceil(rows * step / px)) };
  }

  // Per output column the grid column and the mask column are computed once; per pixel it is two lookups.
  function heatmapCanvas(model, threshold) {
    const { data, mask, step, cols, grid, minX, minY, px, width, height } = model;
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    const pixels = ctx.createImageData(width, height);
    const out = new Uint32Array(pixels.data.buffer);
    const lo = data.min;
    const span = data.max - data.min;
    if (!model.norm) { // each cell's value on 0..1 (-1: no patch), once per layer
      model.norm = new Float32Array(grid.length);
      for (let k = 0; k < grid.length; k++) {
        const v = grid[k];
        model.norm[k] = v === v ? (span > 0 ? (v - lo) / span : 1) : -1;
      }
    }
    const norm = model.norm;
    const colCell = new Int32Array(width);
    const colMask = new Int32Array(width);
    for (let ox = 0; ox < width; ox++) {
      const x = minX + (ox + 0.5) * px;
      colCell[ox] = Math.min(cols - 1, Math.floor((x - minX) / step));
      const mx = mask ? Math.floor(x / mask.downsample) : 0;
      colMask[ox] = mask && (mx < 0 || mx >= mask.width) ? -1 : mx;
    }
    let shown = 0;
    for (let oy = 0; oy < height; oy++) {
      const y = minY + (oy + 0.5) * px;
      const row = Math.min(model.rows - 1, Math.floor((y - minY) / step)) * cols;
      let maskRow = 0;
      if (mask) {
        const my = Math.floor(y / mask.downsample);
        if (my < 0 || my >= mask.height) continue;
        maskRow = my * mask.width;
      }
      const o = oy * width;
      for (let ox = 0; ox < width; ox++) {
        const t = norm[row + colCell[ox]];
        if (t < threshold || t < 0) continue;
        if (mask) {
          const mx = colMask[ox];
          if (mx < 0 || !mask.tissue[maskRow + mx]) continue;
        }
        out[o + ox] = VIRIDIS_RGBA[Math.round(t * 255)];
        shown++;
      }
    }
    ctx.putImageData(pixels, 0, 0);
    return { canvas, shown };
  }

  // The top regions: the highest patches, each at least three patches away from a higher one already
  // taken (so the list is five places, not five neighbours), with a three-patch square around each.
  function topRegions(data, count) {
    const order = data.values.map((v, i) => i).sort((a, b) => data.values[b] - data.values[a]);
    const s = data.patch_size;
    const picked = [];
    for (const i of order) {
      if (picked.length >= count) break;
      const [x, y] = data.coords[i];
      if (picked.some((p) => Math.max(Math.abs(p.cx - x), Math.abs(p.cy - y)) < 3 * s)) continue;
      picked.push({ cx: x, cy: y, value: data.values[i], x: x - s, y: y - s, width: 3 * s, height: 3 * s });
    }
    if (data.max === data.min) return [];
    return picked.map((p, k) => ({ index: k, value: p.value, x: p.x, y: p.y, width: p.width, height: p.height }));
  }

  // ---------------------------------------------------------------------------------------------------
  // One OpenSeadragon pane: a slide, its scale bar, ruler, adjustments and overlay.
  function Pane(owner, root, name) {
    this.owner = owner;
    this.name = name;
    this.el = root;
    this.slideId = null;
    this.meta = null;
    this.tilesLoaded = 0;
    this.overlay = Pane.emptyOverlay(owner.overlayOpacity);
    this.ruler = { active: false, dragging: false, a: null, b: null };
    this.adjust = { ...ADJUST_DEFAULT };
    this.scalebar = root.querySelector(".pa-scalebar");
    this.readout = root.querySelector(".pa-mag-readout");
    this.svg = root.querySelector(".pa-ruler-layer");
    this.legend = root.querySelector(".pa-legend");
    this.osd = OSD({
      element: root.querySelector(".pa-osd"),
      prefixUrl: owner.options.prefixUrl,
      drawer: "canvas", // predictable everywhere (no WebGL needed) and readable for tests
      showNavigator: true,
      navigatorPosition: "TOP_RIGHT",
      navigatorSizeRatio: 0.18,
      navigatorMaintainSizeRatio: true, // the navigator follows the pane's size as panes are added
      showRotationControl: true,
      showFullPageControl: false, // full screen covers the whole viewer (every pane), see toggleFullscreen
      maxZoomPixelRatio: 4,
      minZoomImageRatio: 0.8,
      visibilityRatio: 0.5,
      // When the layout changes (a pane added, the report panel moved) the magnification stays; the pane
      // shows more or less of the slide around the same centre.
      preserveImageSizeOnResize: true,
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
    // The pane the user touches leads the synchronisation (avoids the panes chasing each other) and is
    // the one the image adjustments apply to.
    ["pointerdown", "wheel", "keydown", "focusin"].forEach((type) =>
      root.addEventListener(type, () => owner.setLeader(pane), { capture: true, passive: true }));
  }

  Pane.emptyOverlay = function (opacity) {
    return { name: null, item: null, visible: true, opacity: opacity, data: null, model: null, regions: [],
             threshold: 0, shown: 0, pending: null, drawing: 0 };
  };

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

  Pane.prototype.digitalZoom = function () {
    const zoom = this.imageZoom();
    return !!(zoom && zoom > DIGITAL_MARGIN);
  };

  Pane.prototype.open = function (id) {
    const pane = this;
    const owner = this.owner;
    this.slideId = id;
    this.clearRuler();
    this.clearOverlayState();
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
      pane.applyAdjust();
      owner.paneOpened(pane);
      return meta;
    });
  };

  Pane.prototype.close = function () {
    this.slideId = null;
    this.meta = null;
    this.clearRuler();
    this.clearOverlayState();
    delete this.el.dataset.slide;
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
      const digital = this.digitalZoom();
      const text = mag ? (mag < 10 ? mag.toFixed(1) : Math.round(mag)) + "×" : "";
      // Beyond the scan's own resolution every screen pixel is interpolated: say so.
      this.readout.textContent = text && digital ? text + " digital" : text;
      this.readout.classList.toggle("pa-digital", digital);
      const power = this.objectivePower();
      this.readout.title = digital && power
        ? "Digital zoom: enlarged beyond the scan's " + Math.round(power) + "× (" + zoom.toFixed(1) + " screen px per scanned px)"
        : "";
    }
  };

  // --- image adjustments: CSS filters on this pane's canvas (the pixels on screen; tiles are untouched).
  // Brightness and contrast are CSS filter functions; gamma is an SVG feComponentTransfer (out = in^(1/γ)).
  Pane.prototype.setAdjust = function (values) {
    Object.keys(ADJUST_DEFAULT).forEach((k) => {
      if (values && values[k] !== undefined) this.adjust[k] = Math.min(4, Math.max(0.05, Number(values[k])));
    });
    this.applyAdjust();
  };

  Pane.prototype.applyAdjust = function () {
    const canvas = this.osd.drawer && this.osd.drawer.canvas;
    if (!canvas) return;
    const a = this.adjust;
    const parts = [];
    if (a.brightness !== 1) parts.push("brightness(" + a.brightness + ")");
    if (a.contrast !== 1) parts.push("contrast(" + a.contrast + ")");
    if (a.gamma !== 1) parts.push("url(#" + this.gammaFilter(a.gamma) + ")");
    canvas.style.filter = parts.join(" ");
    this.el.classList.toggle("pa-adjusted", parts.length > 0);
  };

  Pane.prototype.gammaFilter = function (gamma) {
    const ns = "http://www.w3.org/2000/svg";
    if (!this.filterId) {
      this.filterId = "pa-gamma-" + (++uid);
      const svg = document.createElementNS(ns, "svg");
      svg.setAttribute("class", "pa-filters");
      svg.setAttribute("aria-hidden", "true");
      svg.setAttribute("width", "0");
      svg.setAttribute("height", "0");
      const filter = document.createElementNS(ns, "filter");
      filter.setAttribute("id", this.filterId);
      filter.setAttribute("color-interpolation-filters", "sRGB");
      const transfer = document.createElementNS(ns, "feComponentTransfer");
      ["feFuncR", "feFuncG", "feFuncB"].forEach((tag) => {
        const f = document.createElementNS(ns, tag);
        f.setAttribute("type", "gamma");
        f.setAttribute("amplitude", "1");
        f.setAttribute("offset", "0");
        transfer.appendChild(f);
      });
      filter.appendChild(transfer);
      svg.appendChild(filter);
      this.el.appendChild(svg);
      this.gammaTransfer = transfer;
    }
    Array.from(this.gammaTransfer.children).forEach((f) => f.setAttribute("exponent", String(1 / gamma)));
    return this.filterId;
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

  // --- heatmap overlay
  Pane.prototype.addOverlay = function (name) {
    const pane = this;
    if (!this.meta) return Promise.reject(new Error("no slide open"));
    const slideId = this.slideId;
    return fetchJSON(this.meta.overlays + encodeURIComponent(name) + ".json").then((data) =>
      loadMask(data.tissue).then((mask) => ({ data, mask }))
    ).then(({ data, mask }) => {
      if (pane.slideId !== slideId) return null;
      pane.removeOverlay();
      if (!pane.item() || !data.coords.length) return null;
      pane.overlay.name = name;
      pane.overlay.data = data;
      pane.overlay.model = heatmapModel(data, mask);
      pane.overlay.regions = topRegions(data, ROI_COUNT);
      return pane.drawHeatmap().then(() => {
        pane.owner.emit("overlay", { pane: pane.name, name: name, visible: pane.overlay.visible });
        return data;
      });
    });
  };

  // (Re)draw the heatmap image at the current threshold; the old image goes once the new one is in place.
  Pane.prototype.drawHeatmap = function () {
    const pane = this;
    const o = this.overlay;
    const model = o.model;
    const item = this.item();
    if (!model || !item) return Promise.resolve(null);
    const ticket = ++o.drawing;
    const { canvas, shown } = heatmapCanvas(model, o.threshold);
    const bounds = this.meta.bounds || { x: 0, y: 0 };
    const imageWidth = item.source.dimensions.x;
    return new Promise((resolve, reject) => {
      pane.osd.addSimpleImage({
        url: canvas.toDataURL("image/png"),
        // World coordinates: the slide spans x 0..1; Deep Zoom image pixels start at the slide's bounds.
        x: (model.minX - bounds.x) / imageWidth,
        y: (model.minY - bounds.y) / imageWidth,
        width: (model.width * model.px) / imageWidth,
        opacity: o.visible ? o.opacity : 0,
        success: (event) => {
          if (ticket !== o.drawing || pane.overlay !== o) { pane.osd.world.removeItem(event.item); resolve(null); return; }
          if (o.item) pane.osd.world.removeItem(o.item);
          o.item = event.item;
          o.shown = shown;
          pane.renderLegend();
          resolve(event.item);
        },
        error: (event) => reject(new Error("overlay image failed: " + (event && event.message))),
      });
    });
  };

  Pane.prototype.setThreshold = function (t) {
    this.overlay.threshold = Math.min(1, Math.max(0, Number(t) || 0));
    this.renderLegend();
    return this.drawHeatmap();
  };

  Pane.prototype.clearOverlayState = function () {
    this.removeOverlay();
    this.overlay = Pane.emptyOverlay(this.owner.overlayOpacity);
    this.renderLegend();
  };

  Pane.prototype.removeOverlay = function () {
    const o = this.overlay;
    if (o.item) this.osd.world.removeItem(o.item);
    if (this.roiBox) { this.osd.removeOverlay(this.roiBox); this.roiBox = null; }
    o.drawing += 1;
    Object.assign(o, { name: null, item: null, data: null, model: null, regions: [], shown: 0 });
    this.renderLegend();
  };

  Pane.prototype.applyOverlayOpacity = function () {
    if (this.overlay.item) this.overlay.item.setOpacity(this.overlay.visible ? this.overlay.opacity : 0);
    this.renderLegend();
  };

  // The legend: colour scale from the layer's min to its max, the threshold marked on it.
  Pane.prototype.renderLegend = function () {
    const box = this.legend;
    if (!box) return;
    const o = this.overlay;
    const data = o.data;
    if (!data || !o.item || !o.visible) { box.hidden = true; return; }
    box.hidden = false;
    box.textContent = "";
    box.appendChild(element("div", { class: "pa-legend-title" }, data.label));
    const bar = element("div", { class: "pa-legend-bar", role: "img",
      "aria-label": "Colour scale from " + formatValue(data.min) + " (dark blue) to " + formatValue(data.max) + " (yellow)" });
    bar.style.background = viridisGradient();
    if (o.threshold > 0) {
      const cut = element("div", { class: "pa-legend-cut" });
      cut.style.width = (o.threshold * 100).toFixed(1) + "%";
      bar.appendChild(cut);
    }
    box.appendChild(bar);
    const ticks = element("div", { class: "pa-legend-ticks" });
    const mid = (data.min + data.max) / 2;
    [data.min, mid, data.max].forEach((v) => ticks.appendChild(element("span", {}, formatValue(v))));
    box.appendChild(ticks);
    const notes = [];
    if (o.threshold > 0) notes.push("showing ≥ " + formatValue(data.min + o.threshold * (data.max - data.min)));
    if (o.model && o.model.mask) notes.push("tissue only");
    if (notes.length) box.appendChild(element("div", { class: "pa-legend-note" }, notes.join(" · ")));
  };

  Pane.prototype.goToRegion = function (index) {
    const regions = this.overlay.regions;
    const item = this.item();
    if (!regions.length || !item) return null;
    const r = regions[((index % regions.length) + regions.length) % regions.length];
    const bounds = this.meta.bounds || { x: 0, y: 0 };
    const rect = item.imageToViewportRectangle(new OSD.Rect(r.x - bounds.x, r.y - bounds.y, r.width, r.height));
    // The view: the region with some context, never beyond the scan's own resolution (no digital zoom).
    const size = this.osd.viewport.getContainerSize();
    const w = Math.max(r.width * 1.5, size.x);
    const h = Math.max(r.height * 1.5, size.y);
    const view = item.imageToViewportRectangle(new OSD.Rect(r.x + r.width / 2 - w / 2 - bounds.x,
                                                            r.y + r.height / 2 - h / 2 - bounds.y, w, h));
    if (!this.roiBox) {
      this.roiBox = element("div", { class: "pa-roi-box", "aria-hidden": "true" });
      this.osd.addOverlay({ element: this.roiBox, location: rect });
    } else {
      this.osd.updateOverlay(this.roiBox, rect);
    }
    this.roiBox.dataset.index = String(r.index + 1);
    this.osd.viewport.fitBounds(view);
    return r;
  };

  // ---------------------------------------------------------------------------------------------------
  // The viewer: one to four panes, toolbar, strip, metadata panel.
  function Viewer(root, options) {
    const data = root.dataset;
    this.root = root;
    this.options = Object.assign({
      slide: data.slide || null,
      compare: data.compare || null,
      more: (data.more || "").split(",").filter(Boolean),
      deidentified: data.deidentified === "1",
      metaUrl: data.metaUrl,
      zero: data.zero,
      prefixUrl: data.osdPrefix,
      updateUrl: data.updateUrl === "1",
      fill: data.fill === "1",
      info: data.info || "shown",
      infoKey: data.infoKey || "viewer",
      sync: true,
    }, options || {});
    this.listeners = {};
    this.overlayOpacity = 0.5;
    this.overlayVisible = true;
    this.syncEnabled = this.options.sync;
    this.syncing = false;
    this.regionIndex = -1;
    this.panesEl = root.querySelector(".pa-panes");
    this.compareEl = root.querySelector('[data-pane="compare"]');
    // Extra panes are copies of the (still empty) compare pane's markup.
    this.paneTemplate = this.compareEl ? this.compareEl.cloneNode(true) : null;
    this.panes = { main: new Pane(this, root.querySelector('[data-pane="main"]'), "main"),
                   compare: null, third: null, fourth: null };
    this.leader = this.panes.main;
    this.bindControls();
    this.setInfo(this.initialInfo());
    if (this.options.fill) this.fillWindow();
    this.updateLayout();
    if (this.options.slide) this.openSlide(this.options.slide);
    if (this.options.compare) this.compare(this.options.compare);
    this.options.more.slice(0, 2).forEach((id, i) => this.openIn(PANE_NAMES[i + 2], id));
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

  // The viewer fills the window below its top edge (the case viewer page): the strip and the toolbar stay
  // on screen and the canvas never runs under them.
  Viewer.prototype.fillWindow = function () {
    const root = this.root;
    const fit = () => {
      if (document.fullscreenElement === root || root.classList.contains("pa-fullpage")) return;
      const top = root.getBoundingClientRect().top + window.scrollY;
      root.style.height = Math.max(420, window.innerHeight - top - 12) + "px";
    };
    fit();
    window.addEventListener("resize", fit);
  };

  Viewer.prototype.setLeader = function (pane) {
    if (this.leader === pane) return;
    this.leader = pane;
    PANE_NAMES.forEach((n) => { const p = this.panes[n]; if (p) p.el.classList.toggle("pa-active", p === pane); });
    this.syncAdjustControls();
  };

  Viewer.prototype.paneList = function () {
    return PANE_NAMES.map((n) => this.panes[n]).filter((p) => p && !p.el.hidden);
  };

  Viewer.prototype.allPanes = function () {
    return PANE_NAMES.map((n) => this.panes[n]).filter(Boolean);
  };

  Viewer.prototype.paneElement = function (name) {
    let el = this.root.querySelector('[data-pane="' + name + '"]');
    if (!el && this.paneTemplate) {
      el = this.paneTemplate.cloneNode(true);
      el.dataset.pane = name;
      el.hidden = true;
      this.panesEl.appendChild(el);
    }
    return el;
  };

  Viewer.prototype.openSlide = function (id) {
    this.setLeader(this.panes.main);
    return this.panes.main.open(id).catch((err) => this.fail(err));
  };

  // Open `id` in pane `name` (compare, third, fourth), showing the pane.
  Viewer.prototype.openIn = function (name, id) {
    if (name === "main") return this.openSlide(id);
    const el = this.paneElement(name);
    if (!el) return Promise.resolve(null);
    el.hidden = false;
    if (!this.panes[name]) this.panes[name] = new Pane(this, el, name);
    this.updateLayout();
    return this.panes[name].open(id).then((meta) => {
      this.paneMoved(this.panes.main, true); // start where the main pane is
      return meta;
    }).catch((err) => this.fail(err));
  };

  Viewer.prototype.closePane = function (name) {
    const pane = this.panes[name];
    if (name === "main" || !pane) return;
    pane.close();
    pane.el.hidden = true;
    if (this.leader === pane) this.setLeader(this.panes.main);
    this.updateLayout();
    this.renderMeta();
    this.updateLocation();
  };

  Viewer.prototype.compare = function (id) {
    if (!this.compareEl) return Promise.resolve(null);
    if (!id) {
      PANE_NAMES.slice(1).forEach((n) => this.closePane(n));
      return Promise.resolve(null);
    }
    return this.openIn("compare", id);
  };

  // Add a slide to the grid: the first free pane, else the last one is replaced.
  Viewer.prototype.addToGrid = function (id) {
    const free = PANE_NAMES.slice(1).find((n) => !this.panes[n] || this.panes[n].el.hidden);
    return this.openIn(free || "fourth", id);
  };

  // Show exactly these slides (one to four), in screen order.
  Viewer.prototype.grid = function (ids) {
    const list = (ids || []).filter(Boolean).slice(0, PANE_NAMES.length);
    if (!list.length) return Promise.resolve([]);
    const jobs = [this.panes.main.slideId === list[0] ? Promise.resolve(this.panes.main.meta) : this.openSlide(list[0])];
    PANE_NAMES.slice(1).forEach((n, i) => {
      if (list[i + 1]) jobs.push(this.panes[n] && !this.panes[n].el.hidden && this.panes[n].slideId === list[i + 1]
        ? Promise.resolve(this.panes[n].meta) : this.openIn(n, list[i + 1]));
      else this.closePane(n);
    });
    return Promise.all(jobs);
  };

  Viewer.prototype.updateLayout = function () {
    const count = this.paneList().length;
    this.root.dataset.panes = String(count);
    this.root.classList.toggle("pa-comparing", count > 1);
    this.root.classList.toggle("pa-grid", count > 2);
    PANE_NAMES.forEach((n) => { const p = this.panes[n]; if (p) p.el.classList.toggle("pa-active", count > 1 && p === this.leader); });
    const label = this.root.querySelector("[data-role=pane-count]");
    if (label) label.textContent = count > 1 ? count + " slides" : "";
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
      this.regionIndex = -1;
      this.markDigitalButtons();
      this.loadOverlayList();
      this.syncOverlayControls();
      this.root.dataset.state = "ready";
    } else if (this.panes.main.slideId) {
      this.paneMoved(this.panes.main, true);
    }
    if (pane.name === "main" && this.paneList().length > 1) this.paneMoved(pane, true);
    this.renderMeta();
    this.updateLocation();
    this.syncAdjustControls();
    // osd and element let add-ons (annotations.js) attach to the pane without reaching into the viewer.
    this.emit("slide-opened", { pane: pane.name, slide: pane.slideId, meta: pane.meta, osd: pane.osd, element: pane.el });
  };

  // Magnification buttons above the scan's own magnification say that they are digital zoom.
  Viewer.prototype.markDigitalButtons = function () {
    const power = this.panes.main.objectivePower();
    this.root.querySelectorAll("[data-action=mag]").forEach((b) => {
      const mag = Number(b.dataset.mag);
      const digital = !!(power && mag > power * DIGITAL_MARGIN);
      b.classList.toggle("pa-digital", digital);
      if (!b.dataset.title) b.dataset.title = b.title;
      b.title = digital ? b.dataset.title + ": digital zoom, the scan is " + Math.round(power) + "×" : b.dataset.title;
    });
  };

  // Synchronisation: every other pane shows the same physical scale (µm per screen pixel, so slides of
  // different MPP line up), the same relative position in the slide and the same rotation as the pane the
  // user moves.
  Viewer.prototype.paneMoved = function (from, force) {
    if (!this.syncEnabled || this.syncing) return;
    if (!force && from !== this.leader) return;
    const others = this.paneList().filter((p) => p !== from && p.slideId);
    if (!others.length) return;
    const fi = from.item();
    if (!fi || !from.meta) return;
    const fromZoom = fi.viewportToImageZoom(from.osd.viewport.getZoom(true));
    const centre = fi.viewportToImageCoordinates(from.osd.viewport.getCenter(true));
    const fd = fi.source.dimensions;
    const rotation = from.osd.viewport.getRotation(true);
    this.syncing = true;
    try {
      others.forEach((other) => {
        const ti = other.item();
        if (!ti || !other.meta) return;
        const scale = (other.meta.mpp_x && from.meta.mpp_x) ? other.meta.mpp_x / from.meta.mpp_x : 1;
        const td = ti.source.dimensions;
        const target = ti.imageToViewportCoordinates(new OSD.Point(centre.x / fd.x * td.x, centre.y / fd.y * td.y));
        other.osd.viewport.setRotation(rotation, true);
        other.osd.viewport.zoomTo(ti.imageToViewportZoom(fromZoom * scale), null, true);
        other.osd.viewport.panTo(target, true);
      });
    } finally {
      this.syncing = false;
    }
  };

  Viewer.prototype.setSync = function (on) {
    this.syncEnabled = !!on;
    if (on) this.paneMoved(this.leader, true);
  };

  Viewer.prototype.zoomToMagnification = function (mag) {
    this.setLeader(this.panes.main);
    return this.panes.main.zoomToMagnification(mag);
  };

  // --- image adjustments (per pane; the controls act on the active pane)
  Viewer.prototype.setAdjustments = function (name, values) {
    const pane = this.panes[name || this.leader.name];
    if (!pane) return null;
    pane.setAdjust(values);
    this.syncAdjustControls();
    this.emit("adjust", { pane: pane.name, values: { ...pane.adjust } });
    return { ...pane.adjust };
  };

  Viewer.prototype.adjustments = function (name) {
    const pane = this.panes[name || this.leader.name];
    return pane ? { ...pane.adjust } : null;
  };

  Viewer.prototype.resetAdjustments = function (name) {
    return this.setAdjustments(name || this.leader.name, ADJUST_DEFAULT);
  };

  Viewer.prototype.syncAdjustControls = function () {
    const pane = this.leader;
    const a = pane.adjust;
    this.root.querySelectorAll("[data-adjust]").forEach((input) => {
      const k = input.dataset.adjust;
      input.value = String(k === "gamma" ? a[k] : Math.round(a[k] * 100));
      const out = this.root.querySelector('[data-adjust-out="' + k + '"]');
      if (out) out.textContent = k === "gamma" ? a[k].toFixed(2) : Math.round(a[k] * 100) + "%";
    });
    const target = this.root.querySelector("[data-role=adjust-target]");
    if (target) {
      const title = pane.meta ? (pane.meta.title || pane.meta.stain) : "";
      target.textContent = this.paneList().length > 1 ? "Applies to the active slide: " + title : "";
    }
    const summary = this.root.querySelector("[data-role=adjust] summary");
    if (summary) summary.classList.toggle("pa-on", Object.keys(ADJUST_DEFAULT).some((k) => a[k] !== 1));
  };

  // --- overlays (heatmaps) on the main pane
  Viewer.prototype.addOverlay = function (name) {
    const pane = this.panes.main;
    this.overlayVisible = true;
    pane.overlay.visible = true;
    pane.overlay.pending = name; // the checkbox shows "on" while the layer loads
    this.syncOverlayControls();
    const done = () => { if (pane.overlay.pending === name) pane.overlay.pending = null; this.syncOverlayControls(); };
    return pane.addOverlay(name).then((data) => { done(); this.regionIndex = -1; this.renderRegions(); return data; },
      (err) => { done(); throw err; });
  };

  Viewer.prototype.removeOverlay = function () {
    this.panes.main.removeOverlay();
    this.syncOverlayControls();
    this.renderRegions();
  };

  Viewer.prototype.setOverlayOpacity = function (x) {
    this.overlayOpacity = Math.min(1, Math.max(0, Number(x)));
    this.allPanes().forEach((pane) => {
      pane.overlay.opacity = this.overlayOpacity;
      pane.applyOverlayOpacity();
    });
    this.syncOverlayControls();
  };

  Viewer.prototype.setOverlayThreshold = function (t) {
    const done = this.panes.main.setThreshold(t);
    this.syncOverlayControls();
    return done;
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
    return { name: o.name, loaded: !!o.item, visible: o.visible, opacity: o.opacity, threshold: o.threshold,
             shown: o.shown, clipped: !!(o.model && o.model.mask), regions: o.regions.length,
             min: o.data ? o.data.min : null, max: o.data ? o.data.max : null };
  };

  Viewer.prototype.regions = function () {
    return this.panes.main.overlay.regions.map((r) => ({ ...r }));
  };

  Viewer.prototype.goToRegion = function (index) {
    this.setLeader(this.panes.main);
    const r = this.panes.main.goToRegion(index);
    if (!r) return null;
    this.regionIndex = r.index;
    this.root.querySelectorAll("[data-action=roi]").forEach((b) =>
      b.setAttribute("aria-current", String(Number(b.dataset.index) === r.index)));
    this.emit("region", { pane: "main", index: r.index, region: { ...r } });
    return r;
  };

  Viewer.prototype.renderRegions = function () {
    const list = this.root.querySelector("[data-role=roi-list]");
    const box = this.root.querySelector("[data-role=roi]");
    if (!list) return;
    const o = this.panes.main.overlay;
    const mpp = this.panes.main.meta && this.panes.main.meta.mpp_x;
    list.textContent = "";
    o.regions.forEach((r) => {
      const li = element("li");
      const size = mpp ? " · " + formatMicrometres(r.width * mpp) + " wide" : "";
      const button = element("button", { type: "button", "data-action": "roi", "data-index": String(r.index),
        title: "Go to region " + (r.index + 1) + " (g next, G previous)" },
        (r.index + 1) + ". " + (o.data ? o.data.label.split(" (")[0] : "value") + " " + formatValue(r.value) + size);
      li.appendChild(button);
      list.appendChild(li);
    });
    if (box) box.hidden = !o.regions.length;
  };

  Viewer.prototype.toggleRuler = function (on) {
    const active = on === undefined ? !this.panes.main.ruler.active : !!on;
    this.allPanes().forEach((pane) => pane.setRuler(active));
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
    const shown = (n) => { const p = this.panes[n]; return p && !p.el.hidden ? p.slideId : null; };
    const main = this.panes.main.slideId;
    const other = shown("compare");
    const more = [shown("third"), shown("fourth")].filter(Boolean);
    if (main) url.searchParams.set("slide", main);
    if (other) url.searchParams.set("compare", other); else url.searchParams.delete("compare");
    if (more.length) url.searchParams.set("more", more.join(",")); else url.searchParams.delete("more");
    window.history.replaceState(null, "", url);
  };

  // --- metadata panel (folds away: the "Slide info" button or the i key; remembered per page kind)
  Viewer.prototype.initialInfo = function () {
    const stored = storage("pathalign.viewer.info." + this.options.infoKey);
    return stored ? stored === "shown" : this.options.info !== "folded";
  };

  Viewer.prototype.setInfo = function (on, remember) {
    const shown = on === undefined ? this.root.classList.contains("pa-info-folded") : !!on;
    this.root.classList.toggle("pa-info-folded", !shown);
    const panel = this.root.querySelector("[data-role=meta]");
    if (panel) panel.hidden = !shown;
    const button = this.root.querySelector("[data-action=info]");
    if (button) button.setAttribute("aria-pressed", String(shown));
    if (remember) storage("pathalign.viewer.info." + this.options.infoKey, shown ? "shown" : "folded");
    return shown;
  };

  Viewer.prototype.renderMeta = function () {
    const panel = this.root.querySelector("[data-role=meta]");
    if (!panel) return;
    panel.textContent = "";
    const visible = this.paneList();
    const places = visible.length > 2 ? ["Top left", "Top right", "Bottom left", "Bottom right"] : ["", "Right"];
    visible.forEach((pane, i) => {
      if (!pane.meta) return;
      const m = pane.meta;
      const section = element("section", { class: "pa-meta-slide", "data-meta-pane": pane.name });
      const place = visible.length > 1 ? places[i] : "";
      section.appendChild(element("h3", {}, (place ? place + ": " : "") + (m.title || m.stain)));
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

  // --- overlay controls
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
      this.root.querySelectorAll("[data-role=overlay-toggle],[data-role=overlay-opacity],[data-role=overlay-threshold]").forEach((c) => {
        c.disabled = !data.overlays.length;
      });
      const toggle = this.root.querySelector("[data-role=overlay-toggle]");
      if (toggle) toggle.checked = false;
      this.renderRegions();
      this.emit("overlays", { overlays: data.overlays });
      return data.overlays;
    }).catch(() => []);
  };

  Viewer.prototype.syncOverlayControls = function () {
    const toggle = this.root.querySelector("[data-role=overlay-toggle]");
    const opacity = this.root.querySelector("[data-role=overlay-opacity]");
    const threshold = this.root.querySelector("[data-role=overlay-threshold]");
    const o = this.panes.main.overlay;
    if (toggle) toggle.checked = !!(o.item || o.pending) && o.visible;
    if (opacity) opacity.value = String(Math.round(this.overlayOpacity * 100));
    if (threshold) threshold.value = String(Math.round(o.threshold * 100));
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
      else if (action === "grid-add") viewer.addToGrid(button.dataset.slideId);
      else if (action === "compare-off") viewer.compare(null);
      else if (action === "close-pane") viewer.closePane(button.closest("[data-pane]").dataset.pane);
      else if (action === "info") viewer.setInfo(undefined, true);
      else if (action === "adjust-reset") viewer.resetAdjustments();
      else if (action === "roi") viewer.goToRegion(Number(button.dataset.index));
      else return;
      event.preventDefault();
    });
    const toggle = root.querySelector("[data-role=overlay-toggle]");
    const select = root.querySelector("[data-role=overlay-select]");
    const opacity = root.querySelector("[data-role=overlay-opacity]");
    const threshold = root.querySelector("[data-role=overlay-threshold]");
    const sync = root.querySelector("[data-role=sync]");
    if (toggle) toggle.addEventListener("change", () => {
      const o = viewer.panes.main.overlay;
      if (toggle.checked && (!o.item || o.name !== select.value)) viewer.addOverlay(select.value);
      else viewer.toggleOverlay(toggle.checked);
    });
    if (select) select.addEventListener("change", () => { if (toggle && toggle.checked) viewer.addOverlay(select.value); });
    if (opacity) opacity.addEventListener("input", () => viewer.setOverlayOpacity(Number(opacity.value) / 100));
    if (threshold) {
      let queued = false; // redraw at most once per frame while the slider moves
      threshold.addEventListener("input", () => {
        if (queued) return;
        queued = true;
        window.requestAnimationFrame(() => { queued = false; viewer.setOverlayThreshold(Number(threshold.value) / 100); });
      });
    }
    if (sync) sync.addEventListener("change", () => viewer.setSync(sync.checked));
    root.querySelectorAll("[data-adjust]").forEach((input) => input.addEventListener("input", () => {
      const k = input.dataset.adjust;
      viewer.setAdjustments(viewer.leader.name, { [k]: k === "gamma" ? Number(input.value) : Number(input.value) / 100 });
    }));
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
      else if (event.key === "i") viewer.setInfo(undefined, true);
      else if (event.key === "x") viewer.resetAdjustments();
      else if ((event.key === "g" || event.key === "]") && viewer.panes.main.overlay.regions.length) viewer.goToRegion(viewer.regionIndex + 1);
      else if ((event.key === "G" || event.key === "[") && viewer.panes.main.overlay.regions.length) viewer.goToRegion(viewer.regionIndex - 1);
      else return;
      event.preventDefault();
      event.stopPropagation();
    }, true);
  };

  Viewer.prototype.destroy = function () {
    this.allPanes().forEach((pane) => pane.osd.destroy());
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
      grid: (ids) => viewer.grid(ids),
      addToGrid: (id) => viewer.addToGrid(id),
      closePane: (name) => viewer.closePane(name),
      paneNames: () => viewer.paneList().map((p) => p.name),
      addOverlay: (name) => viewer.addOverlay(name),
      removeOverlay: () => viewer.removeOverlay(),
      setOverlayOpacity: (x) => viewer.setOverlayOpacity(x),
      setOverlayThreshold: (t) => viewer.setOverlayThreshold(t),
      toggleOverlay: (on) => viewer.toggleOverlay(on),
      overlayState: () => viewer.overlayState(),
      regions: () => viewer.regions(),
      goToRegion: (i) => viewer.goToRegion(i),
      setAdjustments: (pane, values) => viewer.setAdjustments(pane, values),
      adjustments: (pane) => viewer.adjustments(pane),
      resetAdjustments: (pane) => viewer.resetAdjustments(pane),
      setInfo: (on) => viewer.setInfo(on, true),
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
    // The heatmap drawing, for other pages and for measuring: model(data, mask), canvas(model, threshold).
    heatmap: { model: heatmapModel, canvas: heatmapCanvas, topRegions: topRegions },
  };

  function start() {
    document.querySelectorAll("[data-pa-viewer]:not([data-pa-manual])").forEach((el) => window.PathAlignViewer.open(el));
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

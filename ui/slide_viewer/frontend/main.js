/* PathAsst slide viewer: a Streamlit component (its postMessage protocol written out here) around OpenSeadragon.
 *
 * Tiles, image facts and overlay layers come from the app's case server (pathasst.ui.case_server), with the
 * session's cookies. Features are drawn on a canvas kept in step with the viewport, in level-0 image pixels; overlay
 * PNGs are OpenSeadragon images placed at their origin and scale. Two images show side by side, pan and zoom synced.
 * Returned values: {action: "object", ...} for a clicked object, {action: "region", ...} for a drawn point, box or
 * polygon; each carries a fresh `nonce` so the page can tell a new action from a rerun.
 * For tests: each pane has data-ready / data-zoom; window.__lastValue, __imageToScreen(x, y, pane), __viewers.
 */
"use strict";

(() => {
  const OSD = window.OpenSeadragon;
  const LOOPBACK = ["127.0.0.1", "localhost", "[::1]"];
  const HIT_PX = 6; // a click this near a point feature (or a tiny polygon) selects it
  const OVERLAY_OPACITY = 0.5;
  const ANIMATION_S = 0.2; // OpenSeadragon's 1.2 s glide makes every zoom and pan feel slow
  const DRAFT_COLOUR = "#ffe600";
  const HINTS = {
    pan: "Drag to pan, wheel to zoom, click an object for its details.",
    point: "Click a point to measure the region around it.",
    box: "Drag a box to measure it.",
    polygon: "Click corners, double-click to close (Esc cancels).",
  };

  const state = {
    args: null,
    viewKey: null,
    layersKey: null,
    generation: 0, // a new case or image set: late answers for the old one are dropped
    layersRun: 0, // likewise for layer fetches
    base: "",
    panes: [],
    opened: Promise.resolve(),
    layers: [], // as /layers gives them, with `prepared` features and `items` (overlay images)
    hidden: new Set(), // call ids, and "call\u0000class" pairs, switched off in the legend
    layersDone: false,
    tool: "pan",
    draft: null, // {pane, kind, points, hover}
    shape: null, // the last region sent: {pane, kind, points}
    selected: null, // the clicked object: {pane, prepared}
    leader: 0,
    seq: 0,
  };

  // ---- the Streamlit protocol ----------------------------------------------------------------------------
  function post(type, data) {
    window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");
  }

  function send(value) {
    state.seq += 1;
    const out = { ...value, nonce: `${Date.now()}-${state.seq}` };
    window.__lastValue = out;
    post("streamlit:setComponentValue", { value: out, dataType: "json" });
  }

  // the app may not listen yet when this script runs (its listener comes with the iframe's mount): say it until heard
  const ready = () => post("streamlit:componentReady", { apiVersion: 1 });
  const readyTimer = setInterval(ready, 250);
  window.addEventListener("message", (event) => {
    if (event.source !== window.parent || !event.data || event.data.type !== "streamlit:render") return;
    clearInterval(readyTimer);
    render(event.data.args || {});
  });
  ready();

  function render(args) {
    state.args = args;
    document.getElementById("root").style.height = `${args.height}px`;
    post("streamlit:setFrameHeight", { height: args.height });
    const viewKey = JSON.stringify([args.base_url, args.case_id, args.images, args.mpp]);
    if (viewKey !== state.viewKey) {
      state.viewKey = viewKey;
      state.layersKey = null;
      build();
    }
    const layersKey = JSON.stringify(args.layers_on);
    if (layersKey !== state.layersKey) {
      state.layersKey = layersKey;
      loadLayers();
    }
  }

  // ---- the case server -----------------------------------------------------------------------------------
  function serverBase(base) {
    // a cookie is sent to the host name it was set for: reach the loopback server by the name the page uses
    const url = new URL(base);
    if (LOOPBACK.includes(url.hostname) && LOOPBACK.includes(location.hostname)) url.hostname = location.hostname;
    return url.origin;
  }

  function api(path, params) {
    return `${state.base}${path}?${new URLSearchParams(params)}`;
  }

  async function fetchOk(url) {
    const response = await fetch(url, { credentials: "include" });
    if (!response.ok) throw new Error(`${response.status}: ${(await response.text()).slice(0, 200)}`);
    return response;
  }

  function hint(text, isError = false) {
    const el = document.getElementById("hint");
    el.textContent = text;
    el.classList.toggle("error", isError);
  }

  // ---- panes ---------------------------------------------------------------------------------------------
  function build() {
    state.generation += 1;
    removeOverlayImages();
    for (const pane of state.panes) if (pane.viewer) pane.viewer.destroy();
    state.base = serverBase(state.args.base_url);
    state.layers = [];
    state.layersDone = false;
    state.draft = state.shape = state.selected = null;
    closePopup();
    legend();
    const box = document.getElementById("viewers");
    box.replaceChildren();
    const images = state.args.images || [];
    box.className = images.length > 1 ? "two" : "one";
    state.panes = images.map((name, index) => makePane(box, name, index));
    const generation = state.generation;
    state.opened = Promise.all(state.panes.map(openPane)).then(() => {
      if (generation === state.generation) follow(0);
    });
    state.opened.catch((err) => hint(`Viewer not available: ${err.message}`, true));
    setTool(state.tool);
  }

  function makePane(box, name, index) {
    const el = document.createElement("div");
    el.className = "pane";
    el.id = `viewer-${index}`;
    el.dataset.image = name;
    el.dataset.ready = "0";
    const osdEl = document.createElement("div");
    osdEl.className = "osd";
    const ink = document.createElement("canvas");
    ink.className = "ink";
    const label = document.createElement("div");
    label.className = "name";
    label.textContent = name;
    const scale = document.createElement("div");
    scale.className = "scalebar";
    scale.innerHTML = '<div class="bar"></div><span></span>';
    el.append(osdEl, ink, label, scale);
    box.append(el);
    const pane = { index, name, el, osdEl, ink, scale, viewer: null, info: null, loaded: false, frame: 0 };
    for (const type of ["pointerdown", "wheel", "pointerenter"]) {
      el.addEventListener(type, () => { state.leader = index; }, { capture: true });
    }
    osdEl.addEventListener("pointermove", (event) => hover(pane, event));
    return pane;
  }

  async function openPane(pane) {
    const { case_id: caseId } = state.args;
    try {
      pane.info = await (await fetchOk(api("/info", { case: caseId, image: pane.name }))).json();
    } catch (err) {
      const msg = document.createElement("div");
      msg.className = "message";
      msg.textContent = `${pane.name}: ${err.message}`;
      pane.el.append(msg);
      throw err;
    }
    const info = pane.info;
    const viewer = OSD({
      element: pane.osdEl,
      prefixUrl: "images/",
      drawer: "canvas",
      navigatorDrawer: "canvas",
      showNavigator: true,
      navigatorPosition: "BOTTOM_RIGHT",
      navigatorSizeRatio: 0.18,
      showRotationControl: false,
      showFullPageControl: false,
      loadTilesWithAjax: true,
      ajaxWithCredentials: true,
      visibilityRatio: 0.5,
      animationTime: ANIMATION_S,
      maxZoomPixelRatio: 4,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
      tileSources: {
        width: info.width,
        height: info.height,
        tileSize: info.tile_size,
        tileOverlap: info.overlap,
        minLevel: 0,
        maxLevel: info.levels - 1,
        getTileUrl: (level, col, row) => api("/tile", { case: caseId, image: pane.name, level, col, row }),
      },
    });
    pane.viewer = viewer;
    for (const type of ["viewport-change", "resize", "animation-finish"]) viewer.addHandler(type, () => schedule(pane));
    viewer.addHandler("viewport-change", () => { if (state.leader === pane.index) follow(pane.index); });
    viewer.addHandler("canvas-click", (e) => onClick(pane, e));
    viewer.addHandler("canvas-double-click", (e) => onDoubleClick(pane, e));
    viewer.addHandler("canvas-press", (e) => onPress(pane, e));
    viewer.addHandler("canvas-drag", (e) => onDrag(pane, e));
    viewer.addHandler("canvas-drag-end", (e) => { if (state.tool === "box") e.preventDefaultAction = true; });
    viewer.addHandler("canvas-release", (e) => onRelease(pane, e));
    await new Promise((resolve, reject) => {
      viewer.addHandler("open", resolve);
      viewer.addHandler("open-failed", (e) => reject(new Error(e.message || "the image did not open")));
    });
    const tiled = viewer.world.getItemAt(0);
    const loaded = () => { pane.loaded = true; updateReady(); };
    tiled.addHandler("fully-loaded-change", (e) => { if (e.fullyLoaded) loaded(); });
    if (tiled.getFullyLoaded()) loaded();
    schedule(pane);
  }

  function updateReady() {
    for (const pane of state.panes) pane.el.dataset.ready = pane.loaded && state.layersDone ? "1" : "0";
  }

  /** screen = (x0 + k * X, y0 + k * Y) for level-0 image pixels (X, Y), in the pane's element coordinates. */
  function transform(pane) {
    const tiled = pane.viewer && pane.viewer.world.getItemAt(0);
    if (!tiled) return null;
    const a = tiled.imageToViewerElementCoordinates(new OSD.Point(0, 0));
    const b = tiled.imageToViewerElementCoordinates(new OSD.Point(pane.info.width, 0));
    const k = (b.x - a.x) / pane.info.width;
    const [ox, oy] = pane.info.offset;
    return { k, x0: a.x - k * ox, y0: a.y - k * oy };
  }

  function toImage(pane, position) {
    const t = transform(pane);
    return [(position.x - t.x0) / t.k, (position.y - t.y0) / t.k];
  }

  window.__imageToScreen = (x, y, index = 0) => {
    const pane = state.panes[index];
    const t = transform(pane);
    const r = pane.osdEl.getBoundingClientRect();
    return { x: r.left + t.x0 + t.k * x, y: r.top + t.y0 + t.k * y };
  };
  Object.defineProperty(window, "__viewers", { get: () => state.panes.map((p) => p.viewer) });

  // ---- sync ----------------------------------------------------------------------------------------------
  function follow(index) {
    const src = state.panes[index];
    const st = src && src.viewer && src.viewer.world.getItemAt(0);
    if (state.panes.length < 2 || !st) return;
    const centre = st.viewportToImageCoordinates(src.viewer.viewport.getCenter(true));
    const cx = centre.x + src.info.offset[0];
    const cy = centre.y + src.info.offset[1];
    const imageZoom = st.viewportToImageZoom(src.viewer.viewport.getZoom(true));
    for (const pane of state.panes) {
      const tiled = pane !== src && pane.viewer && pane.viewer.world.getItemAt(0);
      if (!tiled) continue;
      const [ox, oy] = pane.info.offset;
      pane.viewer.viewport.zoomTo(tiled.imageToViewportZoom(imageZoom), null, true);
      pane.viewer.viewport.panTo(tiled.imageToViewportCoordinates(new OSD.Point(cx - ox, cy - oy)), true);
    }
  }

  // ---- layers --------------------------------------------------------------------------------------------
  async function loadLayers() {
    const generation = state.generation;
    const run = ++state.layersRun;
    const { case_id: caseId, images, layers_on: on } = state.args;
    state.layersDone = false;
    updateReady();
    try {
      await state.opened;
      const all = await (await fetchOk(api("/layers", { case: caseId }))).json();
      if (generation !== state.generation || run !== state.layersRun) return;
      const want = on == null ? null : new Set(on);
      removeOverlayImages();
      state.layers = all.filter((l) => images.includes(l.image) && (want === null || want.has(l.call_id)));
      state.selected = null;
      closePopup();
      for (const layer of state.layers) {
        layer.prepared = layer.features.map(prepare);
        layer.items = [];
      }
      await Promise.all(state.layers.filter((l) => l.overlay_url).map(addOverlayImage));
      legend();
    } catch (err) {
      hint(`Layers not available: ${err.message}`, true);
    } finally {
      if (generation === state.generation && run === state.layersRun) {
        state.layersDone = true;
        updateReady();
        redrawAll();
      }
    }
  }

  function prepare(feature) {
    const geometry = feature.geometry || {};
    const c = geometry.coordinates || [];
    const rings = { Polygon: c, MultiPolygon: c.flat(1), LineString: [c], MultiLineString: c }[geometry.type] || [];
    const points = { Point: [c], MultiPoint: c }[geometry.type] || [];
    const bbox = [Infinity, Infinity, -Infinity, -Infinity];
    for (const [x, y] of rings.flat(1).concat(points)) {
      bbox[0] = Math.min(bbox[0], x);
      bbox[1] = Math.min(bbox[1], y);
      bbox[2] = Math.max(bbox[2], x);
      bbox[3] = Math.max(bbox[3], y);
    }
    const cls = (feature.properties || {}).classification || {};
    return {
      feature,
      rings: rings.filter((r) => r.length > 1),
      closed: geometry.type === "Polygon" || geometry.type === "MultiPolygon",
      points,
      bbox: bbox[0] <= bbox[2] ? bbox : null,
      cls: cls.name || "unclassified",
      colour: rgb(cls.color),
    };
  }

  function rgb(colour) {
    return Array.isArray(colour) && colour.length >= 3 ? `rgb(${colour.slice(0, 3).join(",")})` : "rgb(255,200,0)";
  }

  function paneOf(layer) {
    return state.panes.find((p) => p.name === layer.image);
  }

  async function addOverlayImage(layer) {
    const pane = paneOf(layer);
    const blob = await (await fetchOk(new URL(layer.overlay_url, state.base))).blob();
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.src = url;
    await img.decode();
    const tiled = pane.viewer.world.getItemAt(0);
    const [ox, oy] = layer.origin;
    const s = layer.scale || 1;
    const rect = tiled.imageToViewportRectangle(
      ox - pane.info.offset[0], oy - pane.info.offset[1], img.naturalWidth * s, img.naturalHeight * s);
    await new Promise((resolve) => {
      pane.viewer.addSimpleImage({
        url, x: rect.x, y: rect.y, width: rect.width, loadTilesWithAjax: false,
        opacity: layerOn(layer) ? OVERLAY_OPACITY : 0,
        success: (e) => { layer.items.push({ viewer: pane.viewer, item: e.item, url }); resolve(); },
        error: resolve,
      });
    });
  }

  function removeOverlayImages() {
    for (const layer of state.layers) {
      for (const { viewer, item, url } of layer.items || []) {
        if (viewer.world.getIndexOfItem(item) >= 0) viewer.world.removeItem(item);
        URL.revokeObjectURL(url);
      }
    }
  }

  const layerOn = (layer) => !state.hidden.has(layer.call_id);
  const classOn = (layer, cls) => layerOn(layer) && !state.hidden.has(`${layer.call_id}\u0000${cls}`);

  function legend() {
    const box = document.getElementById("legend");
    box.replaceChildren();
    box.hidden = !state.layers.length;
    document.getElementById("legend-button").textContent = `Layers (${state.layers.length})`;
    const toggle = (key, checked, text, swatch) => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox";
      input.checked = checked;
      input.addEventListener("change", () => {
        if (input.checked) state.hidden.delete(key); else state.hidden.add(key);
        applyVisibility();
      });
      label.append(input);
      if (swatch) {
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = swatch;
        label.append(sw);
      }
      label.append(document.createTextNode(text));
      return label;
    };
    for (const layer of state.layers) {
      const row = document.createElement("div");
      row.className = "layer";
      row.dataset.call = layer.call_id;
      row.append(toggle(layer.call_id, layerOn(layer), ` ${layer.label}`));
      if (state.panes.length > 1) {
        const where = document.createElement("div");
        where.className = "image";
        where.textContent = layer.image;
        row.append(where);
      }
      const classes = document.createElement("div");
      classes.className = "classes";
      for (const c of layer.classes) {
        const key = `${layer.call_id}\u0000${c.name}`;
        classes.append(toggle(key, !state.hidden.has(key), ` ${c.name} (${c.count})`, rgb(c.color)));
      }
      row.append(classes);
      box.append(row);
    }
  }

  function applyVisibility() {
    for (const layer of state.layers) {
      for (const { item } of layer.items) item.setOpacity(layerOn(layer) ? OVERLAY_OPACITY : 0);
    }
    redrawAll();
  }

  // ---- drawing -------------------------------------------------------------------------------------------
  function schedule(pane) {
    if (!pane.frame) pane.frame = requestAnimationFrame(() => redraw(pane));
  }

  function redrawAll() {
    for (const pane of state.panes) schedule(pane);
  }

  function redraw(pane) {
    pane.frame = 0;
    const t = transform(pane);
    if (!t) return;
    const dpr = window.devicePixelRatio || 1;
    const w = pane.osdEl.clientWidth;
    const h = pane.osdEl.clientHeight;
    if (pane.ink.width !== Math.round(w * dpr) || pane.ink.height !== Math.round(h * dpr)) {
      pane.ink.width = Math.round(w * dpr);
      pane.ink.height = Math.round(h * dpr);
    }
    const ctx = pane.ink.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, pane.ink.width, pane.ink.height);
    ctx.setTransform(dpr * t.k, 0, 0, dpr * t.k, dpr * t.x0, dpr * t.y0);
    const view = [-t.x0 / t.k, -t.y0 / t.k, (w - t.x0) / t.k, (h - t.y0) / t.k];
    ctx.lineWidth = 1.5 / t.k;
    for (const layer of state.layers) {
      if (layer.image !== pane.name || !layerOn(layer)) continue;
      const byColour = new Map();
      for (const p of layer.prepared) {
        if (!p.bbox || !classOn(layer, p.cls) || !overlaps(p.bbox, view)) continue;
        if (!byColour.has(p.colour)) byColour.set(p.colour, []);
        byColour.get(p.colour).push(p);
      }
      for (const [colour, items] of byColour) {
        ctx.strokeStyle = colour;
        ctx.beginPath();
        for (const p of items) trace(ctx, p, 4 / t.k);
        ctx.stroke();
      }
    }
    if (state.selected && state.selected.pane === pane) {
      ctx.strokeStyle = DRAFT_COLOUR;
      ctx.lineWidth = 3 / t.k;
      ctx.beginPath();
      trace(ctx, state.selected.prepared, 6 / t.k);
      ctx.stroke();
    }
    for (const shape of [state.shape, state.draft]) {
      if (shape && shape.pane === pane) drawShape(ctx, shape, t.k, shape === state.draft);
    }
    pane.el.dataset.zoom = String(pane.viewer.viewport.getZoom(true));
    scalebar(pane, t.k);
  }

  function overlaps(a, b) {
    return a[0] <= b[2] && a[2] >= b[0] && a[1] <= b[3] && a[3] >= b[1];
  }

  function trace(ctx, p, radius) {
    for (const ring of p.rings) {
      ctx.moveTo(ring[0][0], ring[0][1]);
      for (let i = 1; i < ring.length; i += 1) ctx.lineTo(ring[i][0], ring[i][1]);
      if (p.closed) ctx.closePath();
    }
    for (const [x, y] of p.points) {
      ctx.moveTo(x + radius, y);
      ctx.arc(x, y, radius, 0, 2 * Math.PI);
    }
  }

  function drawShape(ctx, shape, k, isDraft) {
    const pts = shape.hover ? shape.points.concat([shape.hover]) : shape.points;
    ctx.strokeStyle = DRAFT_COLOUR;
    ctx.lineWidth = 2.5 / k;
    ctx.setLineDash(isDraft ? [6 / k, 4 / k] : []);
    ctx.beginPath();
    if (shape.kind === "point") {
      const [x, y] = pts[0];
      ctx.moveTo(x - 10 / k, y);
      ctx.lineTo(x + 10 / k, y);
      ctx.moveTo(x, y - 10 / k);
      ctx.lineTo(x, y + 10 / k);
    } else if (shape.kind === "box" && pts.length > 1) {
      const [a, b] = [pts[0], pts[pts.length - 1]];
      ctx.rect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
    } else if (shape.kind === "polygon") {
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (!isDraft) ctx.closePath();
    }
    ctx.stroke();
    ctx.setLineDash([]);
  }

  function scalebar(pane, k) {
    const mpp = state.args.mpp ?? pane.info.mpp;
    const perPx = mpp ? mpp / k : 1 / k; // micrometres (or level-0 pixels) per screen pixel
    const target = 120 * perPx;
    const step = 10 ** Math.floor(Math.log10(target));
    const length = Number(([5, 2, 1].map((m) => m * step).find((v) => v <= target) || step).toPrecision(1));
    let text = `${length} px`;
    if (mpp) text = length >= 1000 ? `${length / 1000} mm` : `${length} µm`;
    pane.scale.querySelector(".bar").style.width = `${Math.round(length / perPx)}px`;
    pane.scale.querySelector("span").textContent = text;
  }

  // ---- tools ---------------------------------------------------------------------------------------------
  function setTool(tool) {
    state.tool = tool;
    state.draft = null;
    for (const b of document.querySelectorAll("#toolbar [data-tool]")) b.classList.toggle("on", b.dataset.tool === tool);
    for (const pane of state.panes) pane.el.classList.toggle("drawing", tool !== "pan");
    hint(HINTS[tool]);
    redrawAll();
  }

  document.getElementById("toolbar").addEventListener("click", (event) => {
    const button = event.target.closest("[data-tool]");
    if (button) setTool(button.dataset.tool);
  });
  document.getElementById("legend-button").addEventListener("click", () => {
    const box = document.getElementById("legend");
    box.hidden = !box.hidden || !state.layers.length;
  });
  document.querySelector("#popup .close").addEventListener("click", closePopup);
  window.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      state.draft = null;
      closePopup();
      redrawAll();
    } else if (event.key === "Enter" && state.draft && state.draft.kind === "polygon") {
      finishPolygon();
    }
  });

  function inside(pane, [x, y]) {
    const [ox, oy] = pane.info.offset;
    return x >= ox && y >= oy && x <= ox + pane.info.width && y <= oy + pane.info.height;
  }

  function clamp(pane, [x, y]) {
    const [ox, oy] = pane.info.offset;
    return [Math.round(Math.min(Math.max(x, ox), ox + pane.info.width - 1)),
      Math.round(Math.min(Math.max(y, oy), oy + pane.info.height - 1))];
  }

  function onClick(pane, e) {
    if (!e.quick) return;
    e.preventDefaultAction = true;
    const at = toImage(pane, e.position);
    if (state.tool === "pan") {
      select(pane, at, e.position);
    } else if (state.tool === "point" && inside(pane, at)) {
      region(pane, "point", [clamp(pane, at)]);
    } else if (state.tool === "point") {
      hint("That point is outside the image.", true);
    } else if (state.tool === "polygon") {
      if (!state.draft) state.draft = { pane, kind: "polygon", points: [] };
      if (state.draft.pane === pane) state.draft.points.push(clamp(pane, at));
      schedule(pane);
    }
  }

  function onDoubleClick(pane, e) {
    e.preventDefaultAction = true;
    if (state.tool === "polygon" && state.draft && state.draft.pane === pane) finishPolygon();
  }

  function finishPolygon() {
    const { pane, points } = state.draft;
    const t = transform(pane);
    // the clicks of the double-click itself add corners on top of the last one: drop them
    const pts = points.filter((p, i) => i === 0 || Math.hypot(p[0] - points[i - 1][0], p[1] - points[i - 1][1]) * t.k > 3);
    if (pts.length < 3) {
      hint("A polygon needs at least three corners.", true);
      return;
    }
    region(pane, "polygon", pts);
  }

  function onPress(pane, e) {
    if (state.tool !== "box") return;
    const at = clamp(pane, toImage(pane, e.position));
    state.draft = { pane, kind: "box", points: [at, at] };
  }

  function onDrag(pane, e) {
    if (state.tool !== "box") return;
    e.preventDefaultAction = true;
    if (state.draft && state.draft.pane === pane) {
      state.draft.points[1] = clamp(pane, toImage(pane, e.position));
      schedule(pane);
    }
  }

  function onRelease(pane, e) {
    if (state.tool !== "box" || !state.draft || state.draft.pane !== pane) return;
    const [a, b] = state.draft.points;
    const t = transform(pane);
    if (Math.abs(b[0] - a[0]) * t.k < 3 || Math.abs(b[1] - a[1]) * t.k < 3) {
      state.draft = null;
      schedule(pane);
      return;
    }
    region(pane, "box", [[Math.min(a[0], b[0]), Math.min(a[1], b[1])], [Math.max(a[0], b[0]), Math.max(a[1], b[1])]]);
    e.preventDefaultAction = true;
  }

  function hover(pane, event) {
    if (!state.draft || state.draft.pane !== pane || state.draft.kind !== "polygon" || !pane.info) return;
    const r = pane.osdEl.getBoundingClientRect();
    state.draft.hover = toImage(pane, { x: event.clientX - r.left, y: event.clientY - r.top });
    schedule(pane);
  }

  function region(pane, kind, points) {
    state.draft = null;
    state.shape = { pane, kind, points };
    const value = { action: "region", kind, image: pane.name };
    if (kind === "point") value.point = points[0];
    else if (kind === "box") value.box = [...points[0], ...points[1]];
    else value.polygon = points;
    send(value);
    hint(`Sent the ${kind} to the assistant: region_segmentation measures it.`);
    redrawAll();
  }

  // ---- objects -------------------------------------------------------------------------------------------
  function hit(pane, [x, y]) {
    const t = transform(pane);
    const tol = HIT_PX / t.k;
    for (let li = state.layers.length - 1; li >= 0; li -= 1) {
      const layer = state.layers[li];
      if (layer.image !== pane.name || !layerOn(layer)) continue;
      for (let i = layer.prepared.length - 1; i >= 0; i -= 1) {
        const p = layer.prepared[i];
        const b = p.bbox;
        if (!b || !classOn(layer, p.cls) || x < b[0] - tol || x > b[2] + tol || y < b[1] - tol || y > b[3] + tol) continue;
        const tiny = (b[2] - b[0]) * t.k < 2 * HIT_PX && (b[3] - b[1]) * t.k < 2 * HIT_PX;
        const near = p.points.some(([px, py]) => Math.hypot(px - x, py - y) <= tol);
        if (near || tiny || (p.closed && insideRings(x, y, p.rings))) return { layer, prepared: p };
      }
    }
    return null;
  }

  function insideRings(x, y, rings) {
    let isIn = false;
    for (const ring of rings) {
      for (let i = 0, j = ring.length - 1; i < ring.length; j = i, i += 1) {
        const [xi, yi] = ring[i];
        const [xj, yj] = ring[j];
        if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) isIn = !isIn;
      }
    }
    return isIn;
  }

  function select(pane, at, position) {
    const found = hit(pane, at);
    state.selected = found ? { pane, prepared: found.prepared } : null;
    redrawAll();
    if (!found) {
      closePopup();
      return;
    }
    const { layer, prepared } = found;
    const properties = prepared.feature.properties || {};
    showPopup(pane, position, layer, prepared, properties);
    send({ action: "object", call_id: layer.call_id, tool: layer.tool, image: pane.name, properties });
  }

  function showPopup(pane, position, layer, prepared, properties) {
    const popup = document.getElementById("popup");
    const body = popup.querySelector(".body");
    body.replaceChildren();
    const title = document.createElement("div");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = prepared.colour;
    const name = document.createElement("b");
    name.textContent = ` ${prepared.cls}`;
    title.append(sw, name);
    body.append(title);
    const rows = measurementRows(properties.measurements);
    if (rows.length) {
      const table = document.createElement("table");
      for (const [k, v] of rows) {
        const tr = table.insertRow();
        tr.insertCell().textContent = k;
        tr.insertCell().textContent = typeof v === "number" ? String(Number(v.toPrecision(4))) : String(v);
      }
      body.append(table);
    }
    const source = document.createElement("div");
    source.className = "source";
    source.textContent = `${layer.call_id} · ${layer.tool}${layer.question ? ` · Q${layer.question}` : ""}`;
    body.append(source);
    popup.hidden = false;
    const root = document.getElementById("root").getBoundingClientRect();
    const r = pane.osdEl.getBoundingClientRect();
    const left = Math.min(r.left - root.left + position.x + 12, root.width - popup.offsetWidth - 4);
    const top = Math.min(r.top - root.top + position.y + 12, root.height - popup.offsetHeight - 4);
    popup.style.left = `${Math.max(0, left)}px`;
    popup.style.top = `${Math.max(0, top)}px`;
  }

  function measurementRows(m) {
    if (Array.isArray(m)) return m.filter((x) => x && x.name !== undefined).map((x) => [x.name, x.value]);
    return m && typeof m === "object" ? Object.entries(m) : [];
  }

  function closePopup() {
    document.getElementById("popup").hidden = true;
  }
})();

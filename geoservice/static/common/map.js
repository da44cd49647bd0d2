// A plain SVG map of a tenant's zones, without tiles: an equirectangular projection in metres
// around the centre of what is shown (x = R·Δλ·cos φ0, y = R·Δφ), so distances near the
// centre are true and a circle zone is drawn with its real radius. Wheel zooms, drag pans.

const SVG = "http://www.w3.org/2000/svg";
const EARTH_RADIUS_M = 6371008.8;
const RAD = Math.PI / 180;
const PIN_PX = 5;
const LABEL_MAX_MPP = 12;

function svgEl(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

export function formatMetres(m) {
  return m >= 1000 ? `${+(m / 1000).toFixed(1)} km` : `${Math.round(m)} m`;
}

// Rings of a GeoJSON Polygon or MultiPolygon as lists of [lon, lat].
function rings(geometry) {
  if (geometry.type === "Polygon") return geometry.coordinates;
  if (geometry.type === "MultiPolygon") return geometry.coordinates.flat();
  return [];
}

export function zoneBounds(feature) {
  const g = feature.geometry;
  if (g.type === "Point") {
    const [lon, lat] = g.coordinates;
    const r = feature.properties.radius_m || 0;
    const dLat = r / (EARTH_RADIUS_M * RAD);
    const dLon = dLat / Math.max(Math.cos(lat * RAD), 1e-6);
    return [lon - dLon, lat - dLat, lon + dLon, lat + dLat];
  }
  let b = [Infinity, Infinity, -Infinity, -Infinity];
  for (const ring of rings(g)) {
    for (const [lon, lat] of ring) {
      b = [Math.min(b[0], lon), Math.min(b[1], lat), Math.max(b[2], lon), Math.max(b[3], lat)];
    }
  }
  return b;
}

export class ZoneMap {
  constructor(svg, { onZoneClick, onMapClick, onView } = {}) {
    this.svg = svg;
    this.onZoneClick = onZoneClick || (() => {});
    this.onMapClick = onMapClick || (() => {});
    this.onView = onView || (() => {});
    this.origin = [8.5417, 47.3769];
    this.view = { x: -1000, y: -1000, w: 2000, h: 2000 };
    this.zones = [];
    this.selected = null;
    this.active = new Set();
    this.phone = null;
    this.path = [];
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    this.gridLayer = svgEl("g", { class: "grid" });
    this.zoneLayer = svgEl("g", { class: "zones" });
    this.overlayLayer = svgEl("g", { class: "overlay" });
    svg.append(this.gridLayer, this.zoneLayer, this.overlayLayer);
    const box = svg.parentElement;
    this.scaleBox = box.querySelector(".scale");
    this.coordsBox = box.querySelector(".coords");
    this._listen();
    new ResizeObserver(() => this._applyView()).observe(svg);
    this._applyView();
  }

  project([lon, lat]) {
    const [lon0, lat0] = this.origin;
    return [
      EARTH_RADIUS_M * (lon - lon0) * RAD * Math.cos(lat0 * RAD),
      -EARTH_RADIUS_M * (lat - lat0) * RAD,
    ];
  }

  unproject([x, y]) {
    const [lon0, lat0] = this.origin;
    return [
      lon0 + x / (EARTH_RADIUS_M * RAD * Math.cos(lat0 * RAD)),
      lat0 - y / (EARTH_RADIUS_M * RAD),
    ];
  }

  metresPerPixel() {
    const rect = this.svg.getBoundingClientRect();
    if (!rect.width || !rect.height) return this.view.w / 800;
    return Math.max(this.view.w / rect.width, this.view.h / rect.height);
  }

  setZones(features) {
    this.zones = features;
    this._drawZones();
  }

  // Show the given bounds [west, south, east, north] (with a margin), re-centring the projection.
  fitBounds(b, minSpanM = 300) {
    if (!Number.isFinite(b[0])) return;
    this.origin = [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2];
    const [x0, y0] = this.project([b[0], b[3]]);
    const [x1, y1] = this.project([b[2], b[1]]);
    const w = Math.max(x1 - x0, minSpanM) * 1.1;
    const h = Math.max(y1 - y0, minSpanM) * 1.1;
    this.view = { x: (x0 + x1) / 2 - w / 2, y: (y0 + y1) / 2 - h / 2, w, h };
    this._redraw();
  }

  fitZones(extra = []) {
    let b = [Infinity, Infinity, -Infinity, -Infinity];
    const grow = (z) => { b = [Math.min(b[0], z[0]), Math.min(b[1], z[1]), Math.max(b[2], z[2]), Math.max(b[3], z[3])]; };
    for (const feature of this.zones) grow(zoneBounds(feature));
    for (const [lon, lat] of extra) grow([lon, lat, lon, lat]);
    if (Number.isFinite(b[0])) this.fitBounds(b);
  }

  centreOn([lon, lat], spanM) {
    const half = (spanM || this.view.w) / 2;
    this.origin = [lon, lat];
    const aspect = this.view.h / this.view.w;
    this.view = { x: -half, y: -half * aspect, w: 2 * half, h: 2 * half * aspect };
    this._redraw();
  }

  zoneAt(id) {
    return this.zones.find((z) => z.id === id) || null;
  }

  focusZone(id) {
    const zone = this.zoneAt(id);
    if (zone) this.fitBounds(zoneBounds(zone), 200);
  }

  select(id) {
    this.selected = id;
    for (const g of this.zoneLayer.children) g.classList.toggle("selected", g.dataset.zoneId === id);
  }

  markActive(ids) {
    this.active = new Set(ids);
    for (const g of this.zoneLayer.children) g.classList.toggle("active", this.active.has(g.dataset.zoneId));
  }

  setPhone(position) {
    this.phone = position; // {lon, lat, accuracy_m} or null
    this._drawOverlay();
  }

  setPath(points) {
    this.path = points; // [[lon, lat], ...]
    this._drawOverlay();
  }

  _redraw() {
    this._drawZones();
    this._drawOverlay();
    this._applyView();
  }

  _drawZones() {
    this.zoneLayer.replaceChildren();
    for (const feature of this.zones) {
      const p = feature.properties;
      const g = svgEl("g", { class: "zone", "data-zone-id": feature.id });
      if (p.enabled === false) g.classList.add("disabled");
      if (this.active.has(feature.id)) g.classList.add("active");
      if (this.selected === feature.id) g.classList.add("selected");
      let centre;
      if (feature.geometry.type === "Point") {
        const [lon, lat] = feature.geometry.coordinates;
        centre = this.project([lon, lat]);
        // East-west metres per degree shrink with latitude: away from the projection's
        // centre latitude a circle on the ground is a slightly wide ellipse on the map.
        const stretch = Math.cos(this.origin[1] * RAD) / Math.max(Math.cos(lat * RAD), 1e-6);
        g.dataset.shape = "circle";
        g.dataset.radiusM = p.radius_m;
        g.append(svgEl("ellipse", {
          class: "shape", cx: centre[0], cy: centre[1], rx: p.radius_m * stretch, ry: p.radius_m,
        }));
      } else {
        let d = "";
        let sx = 0, sy = 0, n = 0;
        for (const ring of rings(feature.geometry)) {
          ring.forEach((position, i) => {
            const [x, y] = this.project(position);
            d += `${i ? "L" : "M"}${x.toFixed(2)} ${y.toFixed(2)}`;
            sx += x; sy += y; n += 1;
          });
          d += "Z";
        }
        g.dataset.shape = "polygon";
        g.append(svgEl("path", { class: "shape", d }));
        centre = [sx / Math.max(n, 1), sy / Math.max(n, 1)];
      }
      // A pin keeps small zones findable when the whole country is on screen.
      g.append(svgEl("circle", { class: "pin", cx: centre[0], cy: centre[1], r: 1 }));
      const label = svgEl("text", { class: "label", x: centre[0], y: centre[1] });
      label.textContent = p.name;
      g.append(label);
      const title = svgEl("title");
      title.textContent = `${p.name} (${feature.id})`;
      g.append(title);
      this.zoneLayer.append(g);
    }
    this.svg.dataset.zoneCount = String(this.zones.length);
    this._sizePins();
  }

  _drawOverlay() {
    this.overlayLayer.replaceChildren();
    const mpp = this.metresPerPixel();
    if (this.path.length) {
      const points = this.path.map((p) => this.project(p).map((v) => v.toFixed(2)).join(",")).join(" ");
      this.overlayLayer.append(svgEl("polyline", { class: "path", points }));
      for (const p of this.path) {
        const [x, y] = this.project(p);
        this.overlayLayer.append(svgEl("circle", { class: "waypoint", cx: x, cy: y, r: 3.5 * mpp }));
      }
    }
    if (this.phone) {
      const [x, y] = this.project([this.phone.lon, this.phone.lat]);
      this.overlayLayer.append(
        svgEl("circle", { class: "phone-accuracy", cx: x, cy: y, r: this.phone.accuracy_m || 0 }),
        svgEl("circle", { class: "phone", cx: x, cy: y, r: 6 * mpp, "data-lat": this.phone.lat, "data-lon": this.phone.lon }),
      );
    }
  }

  _sizePins() {
    const mpp = this.metresPerPixel();
    const r = PIN_PX * mpp;
    for (const pin of this.zoneLayer.querySelectorAll(".pin")) pin.setAttribute("r", r);
    // Names only once zoomed in to a town: at country scale they would cover each other.
    const labels = mpp < LABEL_MAX_MPP;
    this.zoneLayer.classList.toggle("labelled", labels);
    if (!labels) return;
    for (const text of this.zoneLayer.querySelectorAll(".label")) {
      text.setAttribute("font-size", 12 * mpp);
      text.setAttribute("dx", 8 * mpp);
      text.setAttribute("dy", 4 * mpp);
    }
  }

  _applyView() {
    const v = this.view;
    this.svg.setAttribute("viewBox", `${v.x} ${v.y} ${v.w} ${v.h}`);
    this._sizePins();
    this._drawGrid();
    if (this.overlayLayer.childElementCount) this._drawOverlay();
    if (this.scaleBox) {
      const mpp = this.metresPerPixel();
      const metres = niceStep(mpp * 100);
      this.scaleBox.replaceChildren(formatMetres(metres));
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${metres / mpp}px`;
      this.scaleBox.append(bar);
    }
    this.onView(this.view);
  }

  _drawGrid() {
    this.gridLayer.replaceChildren();
    const mpp = this.metresPerPixel();
    const step = niceStep(mpp * 120);
    const rect = this.svg.getBoundingClientRect();
    // The visible area is wider or taller than the viewBox when the aspect ratios differ.
    const w = Math.max(this.view.w, (rect.width || 0) * mpp);
    const h = Math.max(this.view.h, (rect.height || 0) * mpp);
    const cx = this.view.x + this.view.w / 2, cy = this.view.y + this.view.h / 2;
    const x0 = cx - w / 2, y0 = cy - h / 2;
    for (let x = Math.ceil(x0 / step) * step; x < x0 + w; x += step) {
      this.gridLayer.append(svgEl("line", { x1: x, y1: y0, x2: x, y2: y0 + h }));
    }
    for (let y = Math.ceil(y0 / step) * step; y < y0 + h; y += step) {
      this.gridLayer.append(svgEl("line", { x1: x0, y1: y, x2: x0 + w, y2: y }));
    }
  }

  _toMap(event) {
    const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(this.svg.getScreenCTM().inverse());
    return [point.x, point.y];
  }

  _listen() {
    const svg = this.svg;
    svg.addEventListener("wheel", (event) => {
      event.preventDefault();
      const [mx, my] = this._toMap(event);
      const factor = Math.exp(Math.max(-1, Math.min(1, event.deltaY / 300)));
      const v = this.view;
      this.view = { x: mx - (mx - v.x) * factor, y: my - (my - v.y) * factor, w: v.w * factor, h: v.h * factor };
      this._applyView();
    }, { passive: false });
    let drag = null;
    svg.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      drag = { x: event.clientX, y: event.clientY, view: { ...this.view }, moved: false, id: event.pointerId };
    });
    svg.addEventListener("pointermove", (event) => {
      if (this.coordsBox) {
        const [lon, lat] = this.unproject(this._toMap(event));
        this.coordsBox.textContent = `${lat.toFixed(5)}, ${lon.toFixed(5)}`;
      }
      if (!drag) return;
      const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 5) return;
      if (!drag.moved) {
        drag.moved = true;
        svg.setPointerCapture(drag.id);
        svg.classList.add("dragging");
      }
      const mpp = this.metresPerPixel();
      this.view = { ...drag.view, x: drag.view.x - dx * mpp, y: drag.view.y - dy * mpp };
      this._applyView();
    });
    const end = (event) => {
      if (!drag) return;
      const wasClick = !drag.moved;
      drag = null;
      svg.classList.remove("dragging");
      if (!wasClick || event.type !== "pointerup") return;
      const zone = event.target.closest && event.target.closest(".zone");
      const [lon, lat] = this.unproject(this._toMap(event));
      this.onMapClick({ lon, lat }, zone ? zone.dataset.zoneId : null);
      if (zone) this.onZoneClick(zone.dataset.zoneId);
    };
    svg.addEventListener("pointerup", end);
    svg.addEventListener("pointercancel", end);
  }
}

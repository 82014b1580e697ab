// The overview: the src × dst heatmap (any level, metric, window, or a past window) and the
// agents table. A click on a cell opens the pairs behind it (#/pair).
//
// The heatmap is drawn on a <canvas> grouped by colour so thousands of cells stay fluid, and
// from an ImageData (one pixel per cell, scaled) when cells are tiny, so a 1,000 × 1,000 ToR
// matrix draws in one pass; hover is O(1) (cell index from the mouse position) and drawn on
// an overlay canvas.

import { api, ApiError, clock, cssColour, el, format, route } from "./common.js";

const MAX_AGENT_ROWS = 1000;

// -- heatmap view -----------------------------------------------------------------------

const NODATA = 0, GREEN = 1, YELLOW = 2, RED = 3, FAILED = 4;
const VERDICT = {
  [NODATA]: ["nodata", "no data"],
  [GREEN]: ["green", "healthy"],
  [YELLOW]: ["yellow", "warning"],
  [RED]: ["red", "over the SLA"],
  [FAILED]: ["failed", "every probe failed"],
};

export class HeatmapView {
  constructor(root) {
    this.canvas = root.querySelector("#heatmap");
    this.overlay = root.querySelector("#heatmap-overlay");
    this.wrap = root.querySelector("#heatmap-wrap");
    this.legend = root.querySelector("#legend");
    this.note = root.querySelector("#heatmap-note");
    this.windowLine = root.querySelector("#window-line");
    this.title = root.querySelector("#heatmap-title");
    this.tooltip = document.querySelector("#tooltip");
    this.data = null;
    this.categories = null;
    this.geometry = null;
    this.hover = null; // {row, col, clientX, clientY}
    this.parents = new Map(); // entity -> [podset, dc], from the agents list
    this.colours = {
      [NODATA]: cssColour("--heat-nodata"),
      [GREEN]: cssColour("--heat-green"),
      [YELLOW]: cssColour("--heat-yellow"),
      [RED]: cssColour("--heat-red"),
      [FAILED]: cssColour("--heat-failed"),
      mark: cssColour("--heat-failed-mark"),
      grid: cssColour("--heat-grid"),
      ink: cssColour("--ink"),
      muted: cssColour("--muted"),
    };
    this.canvas.addEventListener("mousemove", (e) => this.onMove(e));
    this.canvas.addEventListener("mouseleave", () => this.setHover(null));
    this.canvas.addEventListener("click", (e) => this.onClick(e));
    new ResizeObserver(() => this.draw()).observe(this.wrap);
  }

  setState(state) {
    this.canvas.dataset.state = state;
  }

  // Where each ToR and podset sits, so the grid can show podset and DC boundaries.
  setPlacement(agents) {
    const parents = new Map();
    for (const a of agents) {
      if (a.tor) parents.set(`tor:${a.tor}`, [a.podset, a.dc]);
      if (a.podset) parents.set(`podset:${a.podset}`, [a.dc, a.dc]);
    }
    const changed = parents.size !== this.parents.size ||
      [...parents].some(([k, v]) => String(this.parents.get(k)) !== String(v));
    this.parents = parents;
    if (changed) this.draw();
  }

  // The question itself was refused (4xx, e.g. too many ToRs): show why, not stale cells.
  refuse(detail) {
    this.data = null;
    this.geometry = null;
    this.setHover(null);
    for (const c of [this.canvas, this.overlay]) {
      c.width = 0;
      c.height = 0;
      c.style.width = "0px";
      c.style.height = "0px";
    }
    Object.assign(this.canvas.dataset, { cells: "0", filled: "0", failed: "0" });
    this.note.textContent = detail;
    this.note.hidden = false;
    this.windowLine.textContent = "\u00a0";
    this.setState("refused");
  }

  // data: the API's heatmap with format=columns (values, probes, failures arrays).
  update(data) {
    const t0 = performance.now();
    this.data = data;
    const { values, probes, thresholds } = data;
    const total = values.length;
    const categories = new Uint8Array(total);
    let filled = 0, failed = 0;
    const g = thresholds.green_below, r = thresholds.red_above;
    for (let k = 0; k < total; k++) {
      const v = values[k];
      let cat;
      if (probes[k] === 0) cat = NODATA;
      else if (v === null) cat = FAILED;
      else if (v < g) cat = GREEN;
      else if (v > r) cat = RED;
      else cat = YELLOW;
      categories[k] = cat;
      if (cat !== NODATA) filled++;
      if (cat === FAILED) failed++;
    }
    this.categories = categories;
    this.renderHeader(data);
    this.renderLegend(data);
    this.draw();
    const ds = this.canvas.dataset;
    ds.cells = String(total);
    ds.filled = String(filled);
    ds.failed = String(failed);
    ds.level = data.level;
    ds.metric = data.metric;
    ds.window = data.window;
    ds.windowStart = data.window_start ?? "";
    // How long classifying and drawing took (the benchmark reads it).
    ds.renderMs = (performance.now() - t0).toFixed(1);
    ds.readyMs = performance.now().toFixed(0); // since the page started loading
    this.setState("ready");
    if (this.hover) this.showTooltip(); // keep a pinned mouse's tooltip in step with the data
  }

  cellOf(k) {
    const d = this.data, n = d.entities.length;
    return { src: d.entities[(k / n) | 0], dst: d.entities[k % n], value: d.values[k],
      probes: d.probes[k], failures: d.failures[k] };
  }

  renderHeader(data) {
    const levelName = { tor: "ToR", podset: "Podset", dc: "DC" }[data.level];
    const metricName = data.metric === "p99" ? "P99 latency" : "drop rate";
    this.title.textContent = `${levelName} → ${levelName} ${metricName}` +
      (data.dc ? ` · ${data.dc}` : "");
    const line = this.windowLine;
    line.replaceChildren();
    if (data.window_start) {
      const age = (Date.parse(data.generated_at) - Date.parse(data.window_end)) / 1000;
      const span = (Date.parse(data.window_end) - Date.parse(data.window_start)) / 1000;
      const time = el("time", { datetime: data.window_start,
        title: `${data.window_start} – ${data.window_end} (UTC)` },
        `${format.localDateTime(data.window_start)} – ${format.localTime(data.window_end)}`);
      line.append(`${data.window} window `, time, " local");
      const ageText = ` · data ${format.seconds(age)} old`;
      // A window older than two of its own lengths plus a minute means the analysis stalled.
      if (age > 2 * span + 60) line.append(el("span", { class: "stale" }, `${ageText} (stale)`));
      else line.append(ageText);
      line.append(` · ${format.count(data.entities.length)} ${levelName}s`);
    } else {
      line.append(`${data.window} window: none yet`);
    }
    if (data.note) {
      this.note.textContent = data.note;
      this.note.hidden = false;
    } else {
      this.note.hidden = true;
    }
  }

  renderLegend(data) {
    const { green_below: g, red_above: r } = data.thresholds;
    const u = data.unit;
    const item = (swatchClass, colour, text) => {
      const swatch = el("span", { class: `swatch ${swatchClass}` });
      if (colour) swatch.style.background = colour;
      return el("span", { class: "item" }, swatch, text);
    };
    this.legend.replaceChildren(
      item("", this.colours[GREEN], `< ${format.threshold(g, u)}`),
      item("", this.colours[YELLOW], `${format.threshold(g, u)} – ${format.threshold(r, u)}`),
      item("", this.colours[RED], `> ${format.threshold(r, u)}`),
      item("", this.colours[NODATA], "no data"),
      item("failed", this.colours[FAILED], "probes sent, all failed"),
      item("partial", null, "some probes failed (corner)"),
    );
  }

  layout() {
    const n = this.data.entities.length;
    const ctx = this.canvas.getContext("2d");
    ctx.font = "12px system-ui, sans-serif";
    let labelW = 0;
    for (const name of this.data.entities) labelW = Math.max(labelW, ctx.measureText(name).width);
    labelW = Math.min(Math.ceil(labelW), 160);
    const availW = Math.max(200, this.wrap.clientWidth - 2);
    // Fit the width, and most of the window's height, so the whole grid is seen at once.
    const availH = Math.max(240, window.innerHeight * 0.8);
    const margin = labelW + 14;
    const fit = Math.min(availW - margin - 8, availH - margin - 8) / Math.max(1, n);
    const cell = Math.max(3, Math.min(36, Math.floor(fit)));
    const labels = cell >= 11; // below this the names would overlap; the tooltip has them
    const left = labels ? margin : 8;
    const top = labels ? margin : 8;
    return { n, cell, left, top, labels, labelW,
      width: left + n * cell + 8, height: top + n * cell + 8 };
  }

  draw() {
    if (!this.data) return;
    const g = (this.geometry = this.layout());
    const dpr = window.devicePixelRatio || 1;
    for (const c of [this.canvas, this.overlay]) {
      const w = Math.round(g.width * dpr), h = Math.round(g.height * dpr);
      if (c.width !== w || c.height !== h) {
        c.width = w;
        c.height = h;
        c.style.width = `${g.width}px`;
        c.style.height = `${g.height}px`;
      }
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, g.width, g.height);
    const { n, cell, left, top } = g;
    ctx.fillStyle = this.colours.grid;
    ctx.fillRect(left - 1, top - 1, n * cell + 1, n * cell + 1);
    const gap = cell >= 6 ? 1 : 0;
    const size = cell - gap;
    if (cell <= 4) {
      // Big matrices: one pixel per cell in an ImageData, scaled up without smoothing;
      // a million cells cost one typed-array pass instead of a million fillRect calls.
      this.drawPixels(ctx, g);
    } else {
      // One fillStyle per colour: far fewer state changes than per-cell colours.
      for (const cat of [NODATA, GREEN, YELLOW, RED, FAILED]) {
        ctx.fillStyle = this.colours[cat];
        for (let k = 0; k < this.categories.length; k++) {
          if (this.categories[k] !== cat) continue;
          const i = (k / n) | 0, j = k - i * n;
          ctx.fillRect(left + j * cell, top + i * cell, size, size);
        }
      }
    }
    if (cell >= 7) this.drawMarks(ctx, g, size);
    this.drawBoundaries(ctx, g);
    if (g.labels) this.drawLabels(ctx, g);
    this.drawHover();
    // Geometry in CSS pixels, so tests (and later tools) can point at a cell.
    Object.assign(this.canvas.dataset, { cellPx: cell, originX: left, originY: top });
  }

  drawPixels(ctx, g) {
    const { n, cell, left, top } = g;
    const rgba = {};
    for (const cat of [NODATA, GREEN, YELLOW, RED, FAILED]) {
      const hex = this.colours[cat].replace("#", "");
      const full = hex.length === 3 ? hex.split("").map((c) => c + c).join("") : hex;
      const v = parseInt(full, 16);
      // little-endian Uint32 view of RGBA bytes: 0xAABBGGRR
      rgba[cat] = (0xff << 24) | ((v & 0xff) << 16) | (((v >> 8) & 0xff) << 8) | (v >> 16);
    }
    const image = new ImageData(n, n);
    const words = new Uint32Array(image.data.buffer);
    const cats = this.categories;
    for (let k = 0; k < cats.length; k++) words[k] = rgba[cats[k]];
    if (!this.scratch) this.scratch = document.createElement("canvas");
    this.scratch.width = n;
    this.scratch.height = n;
    this.scratch.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.scratch, left, top, n * cell, n * cell);
  }

  drawMarks(ctx, g, size) {
    const { n, cell, left, top } = g;
    const cells = { length: this.categories.length };
    const failures = this.data.failures;
    const inset = Math.max(2, Math.round(size * 0.25));
    ctx.strokeStyle = this.colours.mark;
    ctx.lineWidth = Math.max(1, size / 10);
    ctx.beginPath();
    for (let k = 0; k < cells.length; k++) {
      if (this.categories[k] !== FAILED) continue;
      const x = left + (k % n) * cell, y = top + ((k / n) | 0) * cell;
      ctx.moveTo(x + inset, y + inset);
      ctx.lineTo(x + size - inset, y + size - inset);
      ctx.moveTo(x + size - inset, y + inset);
      ctx.lineTo(x + inset, y + size - inset);
    }
    ctx.stroke();
    // Cells with a value but some failed probes: a dark corner, so a green P99 over a
    // half-dead pair does not look healthy.
    const corner = Math.max(3, Math.round(size * 0.35));
    ctx.fillStyle = this.colours[FAILED];
    ctx.beginPath();
    for (let k = 0; k < cells.length; k++) {
      const cat = this.categories[k];
      if (cat === NODATA || cat === FAILED || failures[k] === 0) continue;
      const x = left + (k % n) * cell + size, y = top + ((k / n) | 0) * cell;
      ctx.moveTo(x - corner, y);
      ctx.lineTo(x, y);
      ctx.lineTo(x, y + corner);
      ctx.closePath();
    }
    ctx.fill();
  }

  // A line between consecutive entities of different podsets (thin) or DCs (thick): the
  // "crosses" that tell a ToR from a Leaf or Spine problem (PM §5) then stand out.
  drawBoundaries(ctx, g) {
    const { n, cell, left, top } = g;
    const names = this.data.entities;
    const level = this.data.level;
    if (level === "dc") return;
    const parent = (k) => this.parents.get(`${level}:${names[k]}`);
    const extent = n * cell;
    for (let k = 1; k < n; k++) {
      const a = parent(k - 1), b = parent(k);
      if (!a || !b) continue;
      const thin = cell < 6; // small cells: thinner lines, or they hide the data
      const lineWidth = a[1] !== b[1] ? (thin ? 2 : 3) : a[0] !== b[0] ? (thin ? 1 : 1.5) : 0;
      if (!lineWidth) continue;
      ctx.fillStyle = this.colours.muted;
      const at = k * cell - lineWidth / 2 - (cell >= 6 ? 0.5 : 0);
      ctx.fillRect(left + at, top - 2, lineWidth, extent + 2);
      ctx.fillRect(left - 2, top + at, extent + 2, lineWidth);
    }
  }

  drawLabels(ctx, g) {
    const { n, cell, left, top } = g;
    const names = this.data.entities;
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = this.colours.ink;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let i = 0; i < n; i++) {
      ctx.fillText(names[i], left - 6, top + i * cell + cell / 2, g.labelW);
    }
    ctx.save();
    ctx.translate(left, top - 6);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    for (let j = 0; j < n; j++) {
      ctx.fillText(names[j], 0, j * cell + cell / 2, g.labelW);
    }
    ctx.restore();
  }

  cellAt(event) {
    const g = this.geometry;
    if (!g) return null;
    const rect = this.canvas.getBoundingClientRect();
    const col = Math.floor((event.clientX - rect.left - g.left) / g.cell);
    const row = Math.floor((event.clientY - rect.top - g.top) / g.cell);
    if (row < 0 || col < 0 || row >= g.n || col >= g.n) return null;
    return { row, col, clientX: event.clientX, clientY: event.clientY };
  }

  onMove(event) {
    this.setHover(this.cellAt(event));
  }

  onClick(event) {
    const hit = this.cellAt(event);
    if (!hit) return;
    const cell = this.cellOf(hit.row * this.geometry.n + hit.col);
    const detail = { level: this.data.level, src: cell.src, dst: cell.dst,
      window: this.data.window, at: this.data.window_start };
    document.dispatchEvent(new CustomEvent("pingmesh:cell", { detail }));
  }

  setHover(hit) {
    this.hover = hit;
    this.drawHover();
    if (hit && this.data) this.showTooltip();
    else this.tooltip.hidden = true;
  }

  drawHover() {
    const g = this.geometry;
    if (!g) return;
    const dpr = window.devicePixelRatio || 1;
    const ctx = this.overlay.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, g.width, g.height);
    if (!this.hover || this.hover.row >= g.n || this.hover.col >= g.n) return;
    const { row, col } = this.hover;
    // Soft row/column band, then the cell outline: find the pair without losing the grid.
    ctx.fillStyle = "rgba(47, 93, 158, 0.10)";
    ctx.fillRect(g.left, g.top + row * g.cell, g.n * g.cell, g.cell);
    ctx.fillRect(g.left + col * g.cell, g.top, g.cell, g.n * g.cell);
    ctx.strokeStyle = this.colours.ink;
    ctx.lineWidth = 2;
    ctx.strokeRect(g.left + col * g.cell - 1, g.top + row * g.cell - 1, g.cell + 1, g.cell + 1);
  }

  showTooltip() {
    const g = this.geometry;
    const { row, col, clientX, clientY } = this.hover;
    if (row >= g.n || col >= g.n) {
      this.tooltip.hidden = true;
      return;
    }
    const k = row * g.n + col;
    const c = this.cellOf(k);
    const [cls, verdict] = VERDICT[this.categories[k]];
    const metricName = this.data.metric === "p99" ? "P99" : "drop rate";
    const line = (label, value) => el("div", { class: "row" },
      el("span", {}, label), el("span", {}, value));
    this.tooltip.replaceChildren(
      el("div", { class: "pair" }, `${c.src} → ${c.dst}`),
      line(metricName, c.probes === 0 ? "no data" : format.value(c.value, this.data.unit)),
      line("probes", format.count(c.probes)),
      line("failures", format.count(c.failures)),
      el("div", { class: `verdict ${cls}` }, verdict),
      el("div", { class: "muted" }, "click: the server pairs behind this cell"),
    );
    this.tooltip.hidden = false;
    // Keep the tooltip on screen, offset from the pointer.
    const tw = this.tooltip.offsetWidth, th = this.tooltip.offsetHeight;
    let x = clientX + 14, y = clientY + 14;
    if (x + tw > window.innerWidth - 4) x = clientX - tw - 14;
    if (y + th > window.innerHeight - 4) y = clientY - th - 14;
    this.tooltip.style.left = `${Math.max(4, x)}px`;
    this.tooltip.style.top = `${Math.max(4, y)}px`;
  }
}

// -- agents view ------------------------------------------------------------------------

const STATUS_ORDER = { down: 0, never_seen: 1, removed: 2, up: 3 };
const STATUS_TEXT = { up: "up", down: "down", never_seen: "never seen", removed: "removed" };

export class AgentsView {
  constructor(root) {
    this.tbody = root.querySelector("#agents tbody");
    this.counts = root.querySelector("#agent-counts");
    this.summary = document.querySelector("#summary");
    this.filter = root.querySelector("#agent-filter");
    this.more = root.querySelector("#agents-more");
    this.data = null;
    this.filter.addEventListener("input", () => this.renderRows());
  }

  update(data) {
    const t0 = performance.now();
    this.data = data;
    this.renderCounts();
    this.renderRows();
  }

  renderCounts() {
    const c = this.data.counts;
    const pill = (status, n) => {
      const p = el("span", { class: "pill", "data-status": status, "data-count": String(n) },
        el("span", { class: `dot ${status}` }), `${STATUS_TEXT[status]} ${format.count(n)}`);
      if (status === "down" && n > 0) p.classList.add("alarm");
      return p;
    };
    const pills = () => ["up", "down", "never_seen", "removed"]
      .filter((s) => s !== "removed" || c.removed > 0)
      .map((s) => pill(s, c[s]));
    this.counts.replaceChildren(...pills());
    this.summary.replaceChildren(el("span", { class: "muted" }, "agents"), ...pills());
  }

  renderRows() {
    if (!this.data) return;
    const needle = this.filter.value.trim().toLowerCase();
    const now = this.data.generated_at;
    const match = (a) => !needle || [a.name, a.address, a.dc, a.podset, a.tor, a.status,
      STATUS_TEXT[a.status]].some((v) => v && v.toLowerCase().includes(needle));
    const agents = this.data.agents.filter(match).sort((a, b) =>
      STATUS_ORDER[a.status] - STATUS_ORDER[b.status] || a.name.localeCompare(b.name));
    const shown = agents.slice(0, MAX_AGENT_ROWS);
    const rows = shown.map((a) => {
      const seen = el("td", { title: a.last_seen ?? "" }, format.ago(a.last_seen, now));
      const upload = el("td", { title: a.last_upload ?? "" }, format.ago(a.last_upload, now));
      return el("tr", { class: a.status, "data-name": a.name, "data-status": a.status },
        el("td", { class: "status" }, el("span", { class: `dot ${a.status}` }),
          STATUS_TEXT[a.status]),
        el("td", { class: "mono" }, a.name),
        el("td", { class: "mono" }, a.address),
        el("td", {}, a.dc ?? "–"),
        el("td", {}, a.podset ?? "–"),
        el("td", {}, a.tor ?? "–"),
        seen,
        upload,
        el("td", { class: "mono muted" }, a.pinglist_version ?? "–"),
      );
    });
    this.tbody.replaceChildren(...rows); // one swap: no flicker
    if (agents.length > shown.length) {
      this.more.textContent = `showing ${shown.length} of ${agents.length}; filter to narrow`;
      this.more.hidden = false;
    } else {
      this.more.hidden = true;
    }
  }

  dcs() {
    return this.data ? [...new Set(this.data.agents.map((a) => a.dc).filter(Boolean))].sort() : [];
  }
}

// -- the overview page --------------------------------------------------------------------

// The window kinds come from the server (/api/v1/windows: named after their configured
// lengths); the page opens on the fast one, the freshest picture of the fleet.
const DEFAULTS = { level: "tor", metric: "p99", window: "30s", dc: "", at: "" };
const CHOICES = { level: ["tor", "podset", "dc"], metric: ["p99", "drop_rate"], window: null };

export class OverviewPage {
  constructor(shell) {
    this.shell = shell;
    const root = document.querySelector('[data-page="overview"]');
    this.root = root;
    this.heatmap = new HeatmapView(root);
    this.agents = new AgentsView(root);
    this.selects = Object.fromEntries(
      ["level", "metric", "window", "dc"].map((k) => [k, root.querySelector(`#${k}`)]));
    this.at = root.querySelector("#at");
    this.latest = root.querySelector("#latest");
    this.state = { ...DEFAULTS };
    this.inflight = null;
    this.windowsLoaded = false;
    for (const [key, select] of Object.entries(this.selects)) {
      select.addEventListener("change", () => {
        this.state[key] = select.value;
        this.writeRoute();
        this.heatmap.setState("loading");
        this.refresh();
      });
    }
    this.at.addEventListener("change", () => {
      const ms = clock.fromInput(this.at.value);
      this.state.at = ms === null ? "" : new Date(ms).toISOString();
      this.writeRoute();
      this.heatmap.setState("loading");
      this.refresh();
    });
    this.latest.addEventListener("click", () => {
      this.state.at = "";
      this.writeRoute();
      this.heatmap.setState("loading");
      this.refresh();
    });
    document.addEventListener("pingmesh:cell", (e) => {
      const d = e.detail;
      route.go("pair", { level: d.level, src: d.src, dst: d.dst, window: d.window,
        at: d.at ?? "" });
    });
  }

  readRoute(params) {
    const state = {};
    for (const [key, fallback] of Object.entries(DEFAULTS)) {
      const v = params.get(key) ?? fallback;
      state[key] = CHOICES[key] && !CHOICES[key].includes(v) ? fallback : v;
    }
    this.state = state;
  }

  writeRoute() {
    const params = {};
    for (const key of Object.keys(DEFAULTS)) {
      if (this.state[key] !== DEFAULTS[key]) params[key] = this.state[key];
    }
    route.replace("overview", params);
  }

  async loadWindows() {
    if (this.windowsLoaded) return;
    let windows;
    try {
      windows = await api.get("windows");
    } catch {
      return; // keep the built-in choices; the refresh reports the server's state
    }
    const kinds = windows.kinds;
    if (!kinds.length) return;
    this.windowsLoaded = true;
    const label = (k) => {
      const s = k.length_s;
      const length = s % 86400 === 0 ? `${s / 86400} d` : s % 3600 === 0 ? `${s / 3600} h`
        : s % 60 === 0 ? `${s / 60} min` : `${s} s`;
      return k.role === "fast" ? `${length} (live)` : length;
    };
    this.selects.window.replaceChildren(
      ...kinds.map((k) => el("option", { value: k.name }, label(k))));
    CHOICES.window = kinds.map((k) => k.name);
    DEFAULTS.window = kinds[0].name;
  }

  async show(params) {
    await this.loadWindows();
    this.readRoute(params);
    this.writeRoute();
    this.syncSelects();
    return this.refresh();
  }

  syncSelects() {
    for (const [key, select] of Object.entries(this.selects)) {
      if (key === "dc" && this.state.dc &&
          ![...select.options].some((o) => o.value === this.state.dc)) {
        select.append(el("option", { value: this.state.dc }, this.state.dc));
      }
      select.value = this.state[key];
    }
    this.at.value = this.state.at ? clock.toInput(Date.parse(this.state.at)) : "";
    this.latest.hidden = !this.state.at;
  }

  syncDcOptions() {
    const select = this.selects.dc;
    const wanted = ["", ...this.agents.dcs()];
    const have = [...select.options].map((o) => o.value);
    if (wanted.join("\n") === have.join("\n")) return;
    select.replaceChildren(...wanted.map((dc) => el("option", { value: dc }, dc || "all")));
    if (!wanted.includes(this.state.dc)) {
      this.state.dc = ""; // a link named a DC the fleet does not have (any more)
      this.writeRoute();
    }
    select.value = this.state.dc;
  }

  async refresh() {
    this.inflight?.abort(); // a newer question replaces an older one
    const controller = (this.inflight = new AbortController());
    const { level, metric, window, dc, at } = this.state;
    const asked = { level, metric, window, dc, at, format: "columns" };
    const errors = [];
    const [heat, agents] = await Promise.allSettled([
      api.get("heatmap", asked, controller.signal),
      api.get("agents", {}, controller.signal),
    ]);
    if (controller.signal.aborted) return null;
    this.inflight = null;
    if (agents.status === "fulfilled") {
      this.agents.update(agents.value);
      this.heatmap.setPlacement(agents.value.agents);
      this.syncDcOptions();
    } else {
      errors.push(`agents: ${agents.reason.message}`);
    }
    if (heat.status === "fulfilled") {
      this.heatmap.update(heat.value);
    } else if (heat.reason instanceof ApiError && heat.reason.status < 500) {
      this.heatmap.refuse(heat.reason.detail);
    } else {
      errors.push(`heatmap: ${heat.reason.message}`);
      this.heatmap.setState("error");
    }
    return errors;
  }
}

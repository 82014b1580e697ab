// A SmokePing-style distribution graph on a canvas (oetiker/SmokePing: grey "smoke" between
// the sorted pings of each step, the median drawn over it and coloured by the step's loss).
//
// Here each step is an analysed window: bands P50–P90 (dark), P90–P99 (mid), P99–P99.9
// (light), the median line coloured by the window's loss (failed / probes) with SmokePing's
// loss colours, and a red tick at the bottom for every window with failed probes. Windows with
// no data are gaps. Times on the axis are in the zone chosen in the header (browser or UTC),
// which the chart writes under its axis.

import { clock, cssColour, format, pad } from "./common.js";

// SmokePing's default loss colours (etc/config.dist: 0, 1, 2, 3, 4, 10, 19 of 20 pings lost).
const LOSS_COLOURS = [
  [0, "#26ff00"],
  [0.05, "#00b8ff"],
  [0.1, "#0059ff"],
  [0.15, "#5e00ff"],
  [0.2, "#7e00ff"],
  [0.5, "#dd00ff"],
  [0.95, "#ff0000"],
];

export function lossColour(loss) {
  let colour = LOSS_COLOURS[0][1];
  for (const [at, c] of LOSS_COLOURS) if (loss >= at && (loss > 0 || at === 0)) colour = c;
  return colour;
}

function shortLatency(us) {
  if (us >= 1_000_000) return `${+(us / 1_000_000).toFixed(1)} s`;
  if (us >= 1000) return `${+(us / 1000).toFixed(1)} ms`;
  return `${Math.round(us)} µs`;
}

function niceStep(range, ticks) {
  const raw = range / Math.max(1, ticks);
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

const TIME_STEPS_S = [60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400,
  7 * 86400];

export class SmokeChart {
  // series: the API's columnar {start, end, probes, failures, p50_us, …}.
  constructor(canvas, { height = 260, compact = false } = {}) {
    this.canvas = canvas;
    this.height = height;
    this.compact = compact;
    this.series = null;
    this.hover = null;
    this.onPick = null; // called with the index of a clicked window
    this.tooltip = document.querySelector("#tooltip");
    canvas.addEventListener("mousemove", (e) => this.onMove(e));
    canvas.addEventListener("mouseleave", () => this.setHover(null));
    canvas.addEventListener("click", (e) => {
      const k = this.indexAt(e);
      if (k !== null && this.onPick) this.onPick(k);
    });
  }

  update(series, { from = null, to = null } = {}) {
    this.series = series;
    const n = series.start.length;
    this.t0 = from ?? (n ? Date.parse(series.start[0]) : Date.now() - 3600_000);
    this.t1 = to ?? (n ? Date.parse(series.end[n - 1]) : Date.now());
    let max = 0, filled = 0;
    for (let k = 0; k < n; k++) {
      const v = series.p99_us[k] ?? series.p90_us[k] ?? series.p50_us[k];
      if (v !== null && v !== undefined) max = Math.max(max, v);
      if (series.probes[k] > 0) filled++;
    }
    this.max = max > 0 ? max * 1.12 : 1000;
    const ds = this.canvas.dataset;
    ds.points = String(n);
    ds.filled = String(filled);
    ds.state = "ready";
    ds.first = n ? series.start[0] : "";
    this.draw();
  }

  geometry() {
    const width = Math.max(160, this.canvas.parentElement.clientWidth - 2);
    const left = this.compact ? 44 : 62, right = 10, top = 8;
    const bottom = this.compact ? 18 : 40;
    return { width, height: this.height, left, right, top, bottom,
      plotW: width - left - right, plotH: this.height - top - bottom };
  }

  x(g, ms) {
    return g.left + ((ms - this.t0) / Math.max(1, this.t1 - this.t0)) * g.plotW;
  }

  y(g, us) {
    return g.top + g.plotH - (Math.min(us, this.max) / this.max) * g.plotH;
  }

  draw() {
    if (!this.series) return;
    const g = (this.g = this.geometry());
    const dpr = window.devicePixelRatio || 1;
    const c = this.canvas;
    c.width = Math.round(g.width * dpr);
    c.height = Math.round(g.height * dpr);
    c.style.width = `${g.width}px`;
    c.style.height = `${g.height}px`;
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, g.width, g.height);
    ctx.fillStyle = "#fff";
    ctx.fillRect(g.left, g.top, g.plotW, g.plotH);
    this.drawGrid(ctx, g);
    const s = this.series;
    const n = s.start.length;
    const bands = [
      ["p99_us", "p999_us", "#dcdcdc"],
      ["p90_us", "p99_us", "#b4b4b4"],
      ["p50_us", "p90_us", "#7d7d7d"],
    ];
    for (const [lo, hi, colour] of bands) {
      ctx.fillStyle = colour;
      for (let k = 0; k < n; k++) {
        const a = s[lo][k], b = s[hi][k];
        if (a === null || b === null || s.probes[k] === 0) continue;
        const x0 = this.x(g, Date.parse(s.start[k])), x1 = this.x(g, Date.parse(s.end[k]));
        const yTop = this.y(g, b), yBot = this.y(g, a);
        ctx.fillRect(x0, yTop, Math.max(1, x1 - x0), Math.max(1, yBot - yTop));
      }
    }
    // The median, coloured by loss, as a short bar per window (SmokePing draws it 2 px high).
    for (let k = 0; k < n; k++) {
      if (s.probes[k] === 0) continue;
      const loss = s.failures[k] / s.probes[k];
      const x0 = this.x(g, Date.parse(s.start[k])), x1 = this.x(g, Date.parse(s.end[k]));
      const median = s.p50_us[k];
      ctx.fillStyle = lossColour(loss);
      if (median === null) {
        ctx.fillRect(x0, g.top, Math.max(1, x1 - x0), 3); // all lost: a bar at the top
      } else {
        const y = this.y(g, median);
        ctx.fillRect(x0, y - 1, Math.max(2, x1 - x0), 2.5);
      }
      if (s.failures[k] > 0) {
        ctx.fillStyle = "#d1453b";
        ctx.fillRect(x0, g.top + g.plotH - 4, Math.max(1, x1 - x0), 4);
      }
    }
    ctx.strokeStyle = "#9aa3b2";
    ctx.lineWidth = 1;
    ctx.strokeRect(g.left + 0.5, g.top + 0.5, g.plotW - 1, g.plotH - 1);
    this.drawHover(ctx, g);
  }

  drawGrid(ctx, g) {
    ctx.font = `${this.compact ? 10 : 11}px system-ui, sans-serif`;
    ctx.fillStyle = cssColour("--muted") || "#5f6878";
    ctx.strokeStyle = "#eceef2";
    ctx.lineWidth = 1;
    // y: latency
    const step = niceStep(this.max, this.compact ? 2 : 5);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = 0; v <= this.max; v += step) {
      const y = Math.round(this.y(g, v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(g.left, y);
      ctx.lineTo(g.left + g.plotW, y);
      ctx.stroke();
      ctx.fillText(this.compact ? shortLatency(v) : format.latency(v), g.left - 4, y);
    }
    // x: time, ticks on round times of the shown zone
    const span = (this.t1 - this.t0) / 1000;
    const want = Math.max(2, Math.floor(g.plotW / (this.compact ? 90 : 110)));
    const stepS = TIME_STEPS_S.find((s) => span / s <= want) ?? TIME_STEPS_S.at(-1);
    const offsetMs = clock.utc ? 0 : -new Date(this.t0).getTimezoneOffset() * 60_000;
    let t = Math.ceil((this.t0 + offsetMs) / (stepS * 1000)) * stepS * 1000 - offsetMs;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const ticks = [];
    for (; t <= this.t1; t += stepS * 1000) {
      const x = Math.round(this.x(g, t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, g.top);
      ctx.lineTo(x, g.top + g.plotH);
      ctx.stroke();
      const p = clock.parts(t);
      const label = stepS >= 86400 || (p.h === 0 && p.mi === 0)
        ? `${p.mo}-${pad(p.d)}` : `${pad(p.h)}:${pad(p.mi)}`;
      ctx.fillText(label, x, g.top + g.plotH + 3);
      ticks.push(label);
    }
    this.canvas.dataset.ticks = ticks.join(",");
    if (!this.compact) {
      ctx.textAlign = "left";
      ctx.fillText(
        `${format.localDateTime(this.t0)} – ${format.localDateTime(this.t1)}  ` +
          `${clock.zoneName()} (${clock.offsetText(this.t0)})`,
        g.left, g.top + g.plotH + 20);
    }
  }

  indexAt(event) {
    if (!this.series || !this.g) return null;
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const ms = this.t0 + ((x - this.g.left) / this.g.plotW) * (this.t1 - this.t0);
    const s = this.series;
    for (let k = 0; k < s.start.length; k++) {
      if (Date.parse(s.start[k]) <= ms && ms < Date.parse(s.end[k])) return k;
    }
    return null;
  }

  onMove(event) {
    const k = this.indexAt(event);
    this.setHover(k === null ? null : { k, x: event.clientX, y: event.clientY });
  }

  setHover(hover) {
    this.hover = hover;
    if (this.series) this.draw();
    if (!hover || !this.tooltip) {
      if (this.tooltip) this.tooltip.hidden = true;
      return;
    }
    const s = this.series, k = hover.k;
    const row = (label, value) => {
      const r = document.createElement("div");
      r.className = "row";
      const a = document.createElement("span");
      a.textContent = label;
      const b = document.createElement("span");
      b.textContent = value;
      r.append(a, b);
      return r;
    };
    const head = document.createElement("div");
    head.className = "pair";
    head.textContent = `${format.localDateTime(s.start[k])} – ${format.localTime(s.end[k])}`;
    const loss = s.probes[k] ? s.failures[k] / s.probes[k] : null;
    this.tooltip.replaceChildren(head,
      row("probes", format.count(s.probes[k])),
      row("loss", s.probes[k] ? format.percent(loss) : "no data"),
      row("P50", format.latency(s.p50_us[k])),
      row("P90", format.latency(s.p90_us[k])),
      row("P99", format.latency(s.p99_us[k])),
      row("P99.9", format.latency(s.p999_us[k])),
      row("drop rate", format.ratio(s.drop_rate[k])));
    this.tooltip.hidden = false;
    const tw = this.tooltip.offsetWidth, th = this.tooltip.offsetHeight;
    let x = hover.x + 14, y = hover.y + 14;
    if (x + tw > window.innerWidth - 4) x = hover.x - tw - 14;
    if (y + th > window.innerHeight - 4) y = hover.y - th - 14;
    this.tooltip.style.left = `${Math.max(4, x)}px`;
    this.tooltip.style.top = `${Math.max(4, y)}px`;
  }

  drawHover(ctx, g) {
    if (!this.hover) return;
    const s = this.series, k = this.hover.k;
    const x0 = this.x(g, Date.parse(s.start[k])), x1 = this.x(g, Date.parse(s.end[k]));
    ctx.fillStyle = "rgba(47, 93, 158, 0.15)";
    ctx.fillRect(x0, g.top, Math.max(2, x1 - x0), g.plotH);
  }
}

// pingmesh bandwidth page: per host and interface rate graphs, and the fleet's top talkers.
// Vanilla JS, no external assets. State lives in the URL hash (#agent=…&iface=…&range=1h) so
// other pages can link straight to a graph.

const REFRESH_MS = 5000;
const COLORS = { up: "#2f6fbf", down: "#1f9d55", pkUp: "#9dbbe3", pkDown: "#9fd8b5", pkt: "#8a5cc2", size: "#c26f2f" };

const $ = (id) => document.getElementById(id);
const state = { agent: "", iface: "", range: "1h", series: null, timer: null };

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  state.agent = params.get("agent") || "";
  state.iface = params.get("iface") || "";
  const range = params.get("range");
  if (range && [...$("range").options].some((o) => o.value === range)) state.range = range;
  $("range").value = state.range;
}

function writeHash() {
  const params = new URLSearchParams();
  if (state.agent) params.set("agent", state.agent);
  if (state.iface) params.set("iface", state.iface);
  params.set("range", state.range);
  history.replaceState(null, "", "#" + params.toString());
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

export function formatBits(bytesPerS) {
  const bits = bytesPerS * 8;
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
  let i = 0;
  let v = bits;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(v >= 10 ? 1 : 2)} ${units[i]}`;
}

export function formatBytes(bytes) {
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let i = 0;
  let v = bytes;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

function timeLabel(date, spanS) {
  const pad = (n) => String(n).padStart(2, "0");
  const hm = `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}`;
  if (spanS <= 900) return `${hm}:${pad(date.getUTCSeconds())}`;
  if (spanS <= 86400) return hm;
  return `${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())} ${hm}`;
}

function setStatus(text, kind) {
  const el = $("refresh-state");
  el.textContent = text;
  el.dataset.state = kind;
}

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text || "";
  banner.hidden = !text;
}

// -- the interface list and top talkers -----------------------------------------------------

async function loadInterfaces() {
  const data = await getJSON(`api/v1/bandwidth/interfaces?range=${state.range}`);
  const select = $("iface");
  const wanted = `${state.agent}\u0000${state.iface}`;
  select.replaceChildren();
  for (const item of data.interfaces) {
    const option = document.createElement("option");
    option.value = `${item.agent}\u0000${item.interface}`;
    option.textContent = `${item.agent}${item.alias && item.alias !== item.agent ? ` (${item.alias})` : ""} · ${item.interface}`;
    select.append(option);
  }
  if (!data.interfaces.length) {
    const option = document.createElement("option");
    option.value = "";
    option.textContent = "no reports in this range";
    select.append(option);
    state.agent = state.iface = "";
  } else if ([...select.options].some((o) => o.value === wanted)) {
    select.value = wanted;
  } else {
    // Default: the busiest non-loopback interface, else the first.
    const ranked = [...data.interfaces].sort(
      (a, b) => (b.interface !== "lo") - (a.interface !== "lo") || b.rx_bytes + b.tx_bytes - (a.rx_bytes + a.tx_bytes),
    );
    state.agent = ranked[0].agent;
    state.iface = ranked[0].interface;
    select.value = `${state.agent}\u0000${state.iface}`;
  }
  $("summary").replaceChildren(pill(`${new Set(data.interfaces.map((i) => i.agent)).size} agents`),
    pill(`${data.interfaces.length} interfaces`));
}

function pill(text) {
  const span = document.createElement("span");
  span.className = "pill";
  span.textContent = text;
  return span;
}

async function loadTop() {
  const data = await getJSON(`api/v1/bandwidth/top?range=${state.range}&limit=20`);
  const body = $("top-table").querySelector("tbody");
  body.replaceChildren();
  data.talkers.forEach((t, i) => {
    const row = document.createElement("tr");
    row.dataset.agent = t.agent;
    const cells = [String(i + 1), t.agent, t.alias, formatBits(t.tx_bytes_per_s), formatBits(t.rx_bytes_per_s), formatBytes(t.total_bytes)];
    cells.forEach((text, j) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (j === 1) td.className = "mono";
      row.append(td);
    });
    row.addEventListener("click", () => selectAgent(t.agent));
    body.append(row);
  });
  if (!data.talkers.length) {
    const row = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 6;
    td.textContent = "No traffic reported in this range.";
    row.append(td);
    body.append(row);
  }
  $("top-line").textContent = `${timeLabel(new Date(data.start), 86401)} → ${timeLabel(new Date(data.end), 86401)} UTC`;
}

function selectAgent(agent) {
  const options = [...$("iface").options].filter((o) => o.value.startsWith(`${agent}\u0000`));
  const pick = options.find((o) => !o.value.endsWith("\u0000lo")) || options[0];
  if (!pick) return;
  [state.agent, state.iface] = pick.value.split("\u0000");
  $("iface").value = pick.value;
  writeHash();
  refresh();
}

// -- the charts -------------------------------------------------------------------------------

async function loadSeries() {
  const note = $("series-note");
  if (!state.agent) {
    state.series = null;
    note.hidden = false;
    note.textContent = "No interface has reported in this range yet.";
    draw();
    return;
  }
  const query = new URLSearchParams({ agent: state.agent, interface: state.iface, range: state.range });
  const data = await getJSON(`api/v1/bandwidth/series?${query}`);
  state.series = data;
  note.hidden = data.points.length > 0;
  note.textContent = data.points.length ? "" : "No reports from this interface in this range.";
  const last = data.points[data.points.length - 1];
  $("series-line").textContent = `${data.agent} · ${data.interface} · buckets of ${data.step_s} s` +
    (last ? ` · latest: ↑ ${formatBits(last.tx_bytes_per_s)} ↓ ${formatBits(last.rx_bytes_per_s)}` : "");
  draw();
}

function setupCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(320, canvas.parentElement.clientWidth - 4);
  // The height attribute is the logical height; it is overwritten by the pixel height below.
  if (!canvas.dataset.height) canvas.dataset.height = canvas.getAttribute("height");
  const height = Number(canvas.dataset.height);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width, height };
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= value) return m * exp;
  return 10 * exp;
}

// Draws lines of `series` ({key, color, width, dash}) over `points`; returns the geometry.
function plot(canvas, points, lines, fmt, startMs, endMs) {
  const { ctx, width, height } = setupCanvas(canvas);
  const pad = { left: 78, right: 12, top: 10, bottom: 22 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  let max = 0;
  for (const p of points) for (const l of lines) max = Math.max(max, p[l.key] || 0);
  max = niceMax(max);
  const x = (ms) => pad.left + ((ms - startMs) / (endMs - startMs)) * w;
  const y = (v) => pad.top + h - (v / max) * h;
  ctx.strokeStyle = "#e3e6eb";
  ctx.fillStyle = "#6b7382";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i += 1) {
    const v = (max * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v) + 0.5);
    ctx.lineTo(pad.left + w, y(v) + 0.5);
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.fillText(fmt(v), pad.left - 6, y(v) + 4);
  }
  const spanS = (endMs - startMs) / 1000;
  ctx.textAlign = "center";
  for (let i = 0; i <= 5; i += 1) {
    const ms = startMs + ((endMs - startMs) * i) / 5;
    ctx.fillText(timeLabel(new Date(ms), spanS), Math.min(Math.max(x(ms), pad.left + 20), pad.left + w - 20), height - 6);
  }
  const stepMs = (state.series ? state.series.step_s : 1) * 1000;
  for (const line of lines) {
    ctx.strokeStyle = line.color;
    ctx.lineWidth = line.width || 2;
    ctx.setLineDash(line.dash || []);
    ctx.beginPath();
    let previous = null;
    for (const p of points) {
      const value = p[line.key];
      if (value === null || value === undefined) { previous = null; continue; }
      const px = x(p.ms + stepMs / 2);
      // A gap longer than 1.5 buckets is a break in the line: no data there, not zero.
      if (previous === null || p.ms - previous > stepMs * 1.5) ctx.moveTo(px, y(value));
      else ctx.lineTo(px, y(value));
      previous = p.ms;
    }
    ctx.stroke();
  }
  ctx.setLineDash([]);
  canvas.dataset.points = String(points.length);
  return { x, y, pad, w, h, stepMs };
}

function draw() {
  const data = state.series;
  const rate = $("rate-chart");
  const packets = $("packet-chart");
  const endMs = data ? Date.parse(data.end) : Date.now();
  const startMs = data ? Date.parse(data.start) : endMs - 3600e3;
  const points = (data ? data.points : []).map((p) => ({
    ...p,
    ms: Date.parse(p.time),
    pps: p.rx_packets_per_s + p.tx_packets_per_s,
  }));
  rate.geometry = plot(rate, points, [
    { key: "tx_peak_bytes_per_s", color: COLORS.pkUp, width: 1, dash: [3, 3] },
    { key: "rx_peak_bytes_per_s", color: COLORS.pkDown, width: 1, dash: [3, 3] },
    { key: "tx_bytes_per_s", color: COLORS.up },
    { key: "rx_bytes_per_s", color: COLORS.down },
  ], formatBits, startMs, endMs);
  packets.geometry = plot(packets, points, [{ key: "pps", color: COLORS.pkt }],
    (v) => `${v >= 1000 ? (v / 1000).toFixed(1) + "k" : v.toFixed(0)} pkt/s`, startMs, endMs);
  rate.points = packets.points = points;
  $("legend").replaceChildren(
    legendItem(COLORS.up, "upload (tx)"), legendItem(COLORS.down, "download (rx)"),
    legendItem(COLORS.pkUp, "peak"), legendItem(COLORS.pkt, "packets/s"));
}

function legendItem(color, text) {
  const item = document.createElement("span");
  item.className = "item";
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = color;
  item.append(swatch, document.createTextNode(text));
  return item;
}

function hover(event) {
  const canvas = event.currentTarget;
  const tooltip = $("tooltip");
  const points = canvas.points || [];
  const g = canvas.geometry;
  if (!g || !points.length) { tooltip.hidden = true; return; }
  const bounds = canvas.getBoundingClientRect();
  const mx = event.clientX - bounds.left;
  let best = null;
  for (const p of points) {
    const d = Math.abs(g.x(p.ms + g.stepMs / 2) - mx);
    if (best === null || d < best.d) best = { d, p };
  }
  if (!best || best.d > 40) { tooltip.hidden = true; return; }
  const p = best.p;
  const rows = [
    ["upload", formatBits(p.tx_bytes_per_s)], ["download", formatBits(p.rx_bytes_per_s)],
    ["peak ↑ / ↓", `${formatBits(p.tx_peak_bytes_per_s)} / ${formatBits(p.rx_peak_bytes_per_s)}`],
    ["packets ↑ / ↓", `${p.tx_packets_per_s.toFixed(0)} / ${p.rx_packets_per_s.toFixed(0)} /s`],
    ["avg size ↑ / ↓", `${p.tx_avg_packet_bytes ? p.tx_avg_packet_bytes.toFixed(0) : "–"} / ${p.rx_avg_packet_bytes ? p.rx_avg_packet_bytes.toFixed(0) : "–"} B`],
    ["measured", `${p.covered_s.toFixed(1)} s`],
  ];
  const head = document.createElement("div");
  head.className = "pair";
  head.textContent = `${new Date(p.ms).toISOString().replace(".000", "")}`;
  tooltip.replaceChildren(head, ...rows.map(([k, v]) => {
    const row = document.createElement("div");
    row.className = "row";
    const a = document.createElement("span");
    a.textContent = k;
    const b = document.createElement("span");
    b.textContent = v;
    row.append(a, b);
    return row;
  }));
  tooltip.hidden = false;
  tooltip.style.left = `${event.pageX + 14}px`;
  tooltip.style.top = `${event.pageY + 10}px`;
}

// -- the loop --------------------------------------------------------------------------------

async function refresh() {
  clearTimeout(state.timer);
  try {
    await loadInterfaces();
    writeHash();
    await Promise.all([loadSeries(), loadTop()]);
    showBanner("");
    setStatus(`updated ${new Date().toISOString().slice(11, 19)} UTC`, "ok");
  } catch (error) {
    showBanner(`Cannot load bandwidth data: ${error.message}`);
    setStatus("error", "error");
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

function start() {
  readHash();
  $("range").addEventListener("change", () => { state.range = $("range").value; writeHash(); refresh(); });
  $("iface").addEventListener("change", () => {
    [state.agent, state.iface] = $("iface").value.split("\u0000");
    writeHash();
    refresh();
  });
  for (const id of ["rate-chart", "packet-chart"]) {
    $(id).addEventListener("mousemove", hover);
    $(id).addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  }
  window.addEventListener("resize", draw);
  window.addEventListener("hashchange", () => { readHash(); refresh(); });
  refresh();
}

start();

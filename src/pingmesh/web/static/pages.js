// The drill-down and the other pages: a cell's pairs, a pair's history with its raw probes,
// a server's forward and reverse graphs, SLAs per scope and service. Each page builds its
// own DOM inside its <div data-page>, has show(params) for a route change and refresh() for
// the periodic update, and returns a list of error lines (empty when all went well).

import { api, clock, el, format, link, RangePicker, route, table } from "./common.js";
import { SmokeChart } from "./smoke.js";

// "167 1h + 6 10m windows": the kinds a series is read from (a rollup, then the finer windows
// after it that it does not cover yet).
function windowsText(answer) {
  const parts = answer.resolutions ?? [{ window: answer.window, points: null }];
  return parts.map((r) => (r.points === null ? r.window : `${r.points} ${r.window}`)).join(" + ") +
    " windows";
}

function panel(title, ...children) {
  return el("section", { class: "panel" }, el("div", { class: "panel-head" }, el("h2", {}, title)),
    ...children);
}

function note(text) {
  return el("div", { class: "note" }, text);
}

const statColumns = [
  { title: "Probes", value: (r) => format.count(r.probes) },
  { title: "Failed", value: (r) => format.count(r.failures), class: "num" },
  { title: "P50", value: (r) => format.latency(r.p50_us) },
  { title: "P99", value: (r) => format.latency(r.p99_us) },
  { title: "P99.9", value: (r) => format.latency(r.p999_us) },
  { title: "Drop rate", value: (r) => format.ratio(r.drop_rate) },
];

// -- a cell's pairs -----------------------------------------------------------------------

export class PairPage {
  constructor(root) {
    this.root = root;
    this.head = el("div", { class: "crumbs" });
    this.chartWrap = el("div", { class: "chart-wrap" }, el("canvas", { id: "cell-chart" }));
    this.chart = new SmokeChart(this.chartWrap.firstChild, { height: 220 });
    this.body = el("div", { id: "pairs" });
    root.append(this.head,
      panel("History of this cell (last 6 h)", this.chartWrap),
      panel("Server pairs in this window", this.body));
  }

  async show(params) {
    this.params = params;
    return this.refresh();
  }

  async refresh() {
    const p = this.params;
    const level = p.get("level") ?? "tor";
    const src = p.get("src"), dst = p.get("dst");
    const window = p.get("window") ?? undefined, at = p.get("at") ?? undefined;
    const [pairs, history] = await Promise.all([
      api.get("pairs", { level, src, dst, window, at }),
      api.get("history", { level, src, dst }),
    ]);
    const back = route.hash("overview", { level: level === "server" ? "tor" : level, window });
    this.head.replaceChildren(
      link("← heatmap", back), " · ",
      el("strong", {}, `${level} ${src} → ${dst}`),
      pairs.window_start
        ? ` · ${pairs.window} window ${format.localDateTime(pairs.window_start)} – ` +
          `${format.localTime(pairs.window_end)} ${clock.zoneName()}`
        : "",
      pairs.cell ? ` · P99 ${format.latency(pairs.cell.p99_us)}, ` +
        `${format.count(pairs.cell.probes)} probes, ${format.count(pairs.cell.failures)} failed` : "");
    this.chart.update(history.series, { from: Date.parse(history.start), to: Date.parse(history.end) });
    const rows = pairs.pairs;
    const columns = [
      { title: "Source", value: (r) => link(r.src, route.hash("node", { name: r.src })), class: "mono" },
      { title: "Destination", value: (r) => link(r.dst, route.hash("node", { name: r.dst })), class: "mono" },
      ...statColumns,
      { title: "", value: (r) => link("history & probes →", route.hash("history",
        { src: r.src, dst: r.dst, at: pairs.window_start ?? "" }), { class: "go" }) },
    ];
    this.body.replaceChildren(
      pairs.note ? note(pairs.note) : "",
      el("div", { class: "hint" }, `${format.count(rows.length)} pairs probed between the ` +
        `${pairs.src_servers} servers of ${src} and the ${pairs.dst_servers} of ${dst}; failed and ` +
        "slowest first"),
      el("div", { class: "table-wrap" }, table(columns, rows, {
        rowAttrs: (r) => ({ class: r.failures > 0 ? "down" : "", "data-pair": `${r.src}->${r.dst}` }),
        empty: "no server pair of this cell was measured in this window",
      })));
    this.root.dataset.state = "ready";
    return [];
  }
}

// -- a pair's history and raw probes ------------------------------------------------------

export class HistoryPage {
  constructor(root) {
    this.root = root;
    this.head = el("div", { class: "crumbs" });
    this.picker = new RangePicker((r) => this.setRange(r));
    this.canvas = el("canvas", { id: "history-chart" });
    this.chart = new SmokeChart(this.canvas, { height: 300 });
    this.chart.onPick = (k) => this.pickWindow(k);
    this.legend = el("div", { class: "legend smoke-legend" },
      el("span", { class: "item" }, el("span", { class: "swatch", style: { background: "#7d7d7d" } }), "P50–P90"),
      el("span", { class: "item" }, el("span", { class: "swatch", style: { background: "#b4b4b4" } }), "P90–P99"),
      el("span", { class: "item" }, el("span", { class: "swatch", style: { background: "#dcdcdc" } }), "P99–P99.9"),
      el("span", { class: "item" }, el("span", { class: "swatch", style: { background: "#26ff00" } }), "median, no loss"),
      el("span", { class: "item" }, el("span", { class: "swatch", style: { background: "#0059ff" } }), "10 % loss"),
      el("span", { class: "item" }, el("span", { class: "swatch", style: { background: "#ff0000" } }), "≥ 95 % loss"),
      el("span", { class: "item muted" }, "click the graph: the probes of that window"));
    this.failedOnly = el("input", { type: "checkbox", id: "failed-only",
      onchange: () => this.loadProbes() });
    this.probesHead = el("div", { class: "hint" });
    this.probes = el("div", { class: "table-wrap", id: "probes" });
    this.chartWrap = el("div", { class: "chart-wrap" }, this.canvas);
    root.append(this.head,
      panel("Latency distribution", this.picker.node, this.chartWrap, this.legend),
      panel("Raw probes", el("div", { class: "controls" },
        el("label", {}, this.failedOnly, " failed only")), this.probesHead, this.probes));
  }

  async show(params) {
    this.params = new URLSearchParams(params);
    const end = this.params.get("end"), start = this.params.get("start");
    const at = this.params.get("at");
    const endMs = end ? Date.parse(end) : null;
    let startMs = start ? Date.parse(start) : (endMs ?? Date.now()) - 6 * 3600_000;
    if (at && !start) startMs = Math.min(startMs, Date.parse(at) - 3 * 3600_000);
    this.picker.set(startMs, endMs);
    this.probeRange = at ? { start: at, end: null } : null;
    return this.refresh();
  }

  setRange({ start, end }) {
    const p = Object.fromEntries(this.params);
    p.start = start ?? "";
    p.end = end ?? "";
    delete p.at;
    route.go("history", p);
  }

  async refresh() {
    const p = this.params;
    const level = p.get("level") ?? "server", src = p.get("src"), dst = p.get("dst");
    const start = this.picker.start.value ? new Date(clock.fromInput(this.picker.start.value)).toISOString() : undefined;
    const end = p.get("end") || undefined;
    const history = await api.get("history", { level, src, dst, start, end });
    this.history = history;
    const nodeLink = (name) => level === "server" ? link(name, route.hash("node", { name })) : name;
    this.head.replaceChildren(link("← heatmap", route.hash("overview")), " · ",
      el("strong", {}, nodeLink(src), " → ", nodeLink(dst)), ` (${level}) · `,
      link("reverse direction", route.hash("history", { level, src: dst, dst: src })),
      ` · ${windowsText(history)}`);
    this.chart.update(history.series, { from: Date.parse(history.start), to: Date.parse(history.end) });
    await this.loadProbes();
    this.root.dataset.state = "ready";
    return [];
  }

  pickWindow(k) {
    const s = this.history.series;
    this.probeRange = { start: s.start[k], end: s.end[k] };
    this.loadProbes();
  }

  async loadProbes() {
    const p = this.params;
    const level = p.get("level") ?? "server", src = p.get("src"), dst = p.get("dst");
    let range = this.probeRange;
    if (!range) {
      const s = this.history?.series;
      const n = s ? s.start.length : 0;
      range = n ? { start: s.start[Math.max(0, n - 1)], end: null } : { start: null, end: null };
    }
    if (range.start && !range.end) {
      // Around an instant (the window a drill-down came from): 10 minutes either side.
      const at = Date.parse(range.start);
      range = { start: new Date(at - 600_000).toISOString(), end: new Date(at + 600_000).toISOString() };
    }
    let probes;
    try {
      probes = await api.get("probes", { level, src, dst, start: range.start, end: range.end,
        limit: 500, failed_only: this.failedOnly.checked ? "true" : undefined });
    } catch (error) {
      this.probesHead.textContent = `raw probes: ${error.message}`;
      this.probes.replaceChildren();
      return;
    }
    this.probesHead.textContent =
      `${probes.probes.length}${probes.truncated ? "+" : ""} probes from ` +
      `${format.localDateTime(probes.start)} to ${format.localDateTime(probes.end)} ` +
      `${clock.zoneName()}, newest first; each with its 5-tuple (new source port per probe)`;
    const columns = [
      { title: "Time", value: (r) => el("time", { datetime: r.time, title: r.time }, format.localDateTime(r.time)) },
      { title: "5-tuple", value: (r) => `${r.protocol} ${r.src_addr}:${r.src_port} → ${r.dst_addr}:${r.dst_port}`, class: "mono" },
      { title: "Kind", value: (r) => r.kind },
      { title: "Outcome", value: (r) => el("span", { class: `outcome ${r.outcome}` }, r.outcome) },
      { title: "RTT", value: (r) => format.latency(r.rtt_us) },
      { title: "SYN retx", value: (r) => String(r.retransmits) },
      { title: "Size", value: (r) => `${r.size_bytes} B` },
      { title: "Detail", value: (r) => r.detail, class: "muted" },
    ];
    this.probes.replaceChildren(table(columns, probes.probes, {
      rowAttrs: (r) => ({ class: r.outcome === "ok" ? "" : "down", "data-outcome": r.outcome }),
      empty: "no probe of this pair in this range",
    }));
    this.probes.dataset.rows = String(probes.probes.length);
  }
}

// -- a server's forward and reverse graphs (SmartPing's index and reverse pages) ------------

export class NodePage {
  constructor(root) {
    this.root = root;
    this.head = el("div", { class: "crumbs" });
    this.chooser = el("input", { type: "search", list: "server-names", placeholder: "server name",
      "aria-label": "server", id: "node-name" });
    this.names = el("datalist", { id: "server-names" });
    this.chooser.addEventListener("change", () => {
      if (this.chooser.value) route.go("node", { name: this.chooser.value });
    });
    this.picker = new RangePicker((r) => {
      const p = Object.fromEntries(this.params);
      route.go("node", { ...p, start: r.start ?? "", end: r.end ?? "" });
    });
    this.info = el("div", { class: "hint" });
    this.forward = el("div", { class: "thumbs", id: "forward" });
    this.reverse = el("div", { class: "thumbs", id: "reverse" });
    root.append(this.head,
      panel("Server", el("div", { class: "controls" }, this.chooser, this.names), this.picker.node, this.info),
      panel("Forward: this server → its peers", this.forward),
      panel("Reverse: its peers → this server", this.reverse));
  }

  async show(params) {
    this.params = params;
    const end = params.get("end"), start = params.get("start");
    const endMs = end ? Date.parse(end) : null;
    this.picker.set(start ? Date.parse(start) : (endMs ?? Date.now()) - 6 * 3600_000, endMs);
    if (!this.names.children.length) {
      api.get("agents").then((a) => this.names.replaceChildren(
        ...a.agents.map((x) => el("option", { value: x.name }))), () => {});
    }
    return this.refresh();
  }

  async refresh() {
    const name = this.params.get("name");
    this.chooser.value = name ?? "";
    if (!name) {
      this.head.replaceChildren("Choose a server to see its forward and reverse graphs.");
      this.forward.replaceChildren();
      this.reverse.replaceChildren();
      return [];
    }
    const start = this.params.get("start") || new Date(clock.fromInput(this.picker.start.value)).toISOString();
    const end = this.params.get("end") || undefined;
    const node = await api.get(`node/${encodeURIComponent(name)}`, { start, end });
    this.head.replaceChildren(link("← heatmap", route.hash("overview")), " · ",
      el("strong", {}, node.server), ` ${node.address} · ${node.dc} / ${node.podset} / ${node.tor}`);
    this.info.textContent = `${node.forward.length} peers probed, ${node.reverse.length} probing it; ` +
      `${windowsText(node)}. Click a graph for its history and raw probes.`;
    const thumbs = (list, forward) => list.map((s) => {
      const canvas = el("canvas", { "data-peer": s.peer });
      const src = forward ? node.server : s.peer, dst = forward ? s.peer : node.server;
      const box = el("a", { class: "thumb", href: route.hash("history", { src, dst, start, end: end ?? "" }) },
        el("div", { class: "thumb-title mono" }, `${src} → ${dst}`), el("div", { class: "chart-wrap" }, canvas));
      return { box, canvas, s };
    });
    for (const [container, list, forward] of [[this.forward, node.forward, true], [this.reverse, node.reverse, false]]) {
      const made = thumbs(list, forward);
      container.replaceChildren(...made.map((m) => m.box));
      if (!made.length) container.append(el("div", { class: "muted" }, "no data in this range"));
      for (const m of made) {
        // The answer has one time axis for every peer's series.
        new SmokeChart(m.canvas, { height: 110, compact: true })
          .update({ ...m.s, start: node.start, end: node.end },
            { from: Date.parse(node.range_start), to: Date.parse(node.range_end) });
      }
    }
    this.root.dataset.state = "ready";
    return [];
  }
}

// -- SLAs per scope and per service -----------------------------------------------------------

export class SlaPage {
  constructor(root) {
    this.root = root;
    this.scope = el("select", { id: "sla-scope", "aria-label": "scope" },
      ["server", "tor", "podset", "dc", "service"].map((s) => el("option", { value: s }, s)));
    this.window = el("select", { id: "sla-window", "aria-label": "window" });
    for (const s of [this.scope, this.window]) {
      s.addEventListener("change", () => route.go("sla", { scope: this.scope.value, window: this.window.value }));
    }
    this.head = el("div", { class: "window-line" });
    this.body = el("div", { class: "table-wrap", id: "sla-table" });
    this.chartTitle = el("h2", {}, "History");
    this.chartWrap = el("div", { class: "chart-wrap" }, el("canvas", { id: "sla-chart" }));
    this.chart = new SmokeChart(this.chartWrap.firstChild, { height: 220 });
    this.chartPanel = el("section", { class: "panel", hidden: true },
      el("div", { class: "panel-head" }, this.chartTitle), this.chartWrap);
    this.services = el("div", { class: "hint" });
    root.append(panel("Service level per entity",
      el("div", { class: "controls" }, el("label", {}, "Scope ", this.scope),
        el("label", {}, "Window ", this.window)), this.head, this.services, this.body), this.chartPanel);
  }

  async show(params) {
    this.params = params;
    if (!this.window.children.length) {
      const w = await api.get("windows");
      this.window.replaceChildren(...w.kinds.map((k) => el("option", { value: k.name }, k.name)));
      this.defaultWindow = w.default;
    }
    this.scope.value = params.get("scope") ?? "tor";
    this.window.value = params.get("window") ?? this.defaultWindow;
    return this.refresh();
  }

  async refresh() {
    const scope = this.scope.value, window = this.window.value;
    const [sla, services] = await Promise.all([
      api.get("sla", { scope, window }),
      scope === "service" ? api.get("services") : Promise.resolve(null),
    ]);
    this.head.textContent = sla.window_start
      ? `${sla.window} window ${format.localDateTime(sla.window_start)} – ${format.localTime(sla.window_end)} ${clock.zoneName()}`
      : "";
    this.services.textContent = services
      ? `${services.services.length} services in the topology: ` +
        services.services.map((s) => `${s.name} (${s.servers.length} servers)`).join(", ")
      : "";
    const rows = [...sla.rows].sort((a, b) =>
      (b.failures / Math.max(1, b.probes)) - (a.failures / Math.max(1, a.probes)) ||
      (b.p99_us ?? Infinity) - (a.p99_us ?? Infinity));
    const columns = [
      { title: scope, value: (r) => el("a", { href: "#", "data-entity": r.entity, onclick: (e) => {
        e.preventDefault();
        this.showHistory(scope, r.entity);
      } }, r.entity), class: "mono" },
      ...statColumns.slice(0, 2),
      { title: "P50", value: (r) => format.latency(r.p50_us) },
      { title: "P90", value: (r) => format.latency(r.p90_us) },
      ...statColumns.slice(3),
    ];
    this.body.replaceChildren(sla.note ? note(sla.note) : "", table(columns, rows, {
      rowAttrs: (r) => ({ "data-entity": r.entity }),
      empty: `no ${scope} rows in this window`,
    }));
    this.root.dataset.state = "ready";
    return [];
  }

  async showHistory(scope, entity) {
    const h = await api.get("history/sla", { scope, entity });
    this.chartTitle.textContent = `${scope} ${entity}: last 6 h (${windowsText(h)})`;
    this.chartPanel.hidden = false;
    this.chart.update(h.series, { from: Date.parse(h.start), to: Date.parse(h.end) });
  }
}

// Alerts (active, history, one alert with its evidence and traceroute, ack and mute, rules,
// mutes, notifiers) and the topology view (nodes and links coloured by state, red when a rule
// fires: SmartPing's topology page, html/topology.html).

import { api, clock, el, format, link, route, table } from "./common.js";

function panel(title, ...children) {
  return el("section", { class: "panel" }, el("div", { class: "panel-head" }, el("h2", {}, title)),
    ...children);
}

function who() {
  return localStorage.getItem("pingmesh.who") || "";
}

// -- the alerts page --------------------------------------------------------------------------

export class AlertsPage {
  constructor(root, shell) {
    this.root = root;
    this.shell = shell;
    this.name = el("input", { type: "text", id: "who", placeholder: "your name", value: who(),
      onchange: () => localStorage.setItem("pingmesh.who", this.name.value.trim()) });
    this.token = el("input", { type: "password", id: "token", placeholder: "write token (if set)",
      autocomplete: "off", onchange: () => sessionStorage.setItem("pingmesh.token", this.token.value) });
    this.active = el("div", { id: "active-alerts" });
    this.detail = el("div", { id: "alert-detail" });
    this.detailPanel = el("section", { class: "panel", hidden: true, id: "alert-panel" },
      this.detail);
    this.state = el("select", { id: "history-state", "aria-label": "state",
      onchange: () => this.refresh() },
      el("option", { value: "" }, "all"), el("option", { value: "firing" }, "firing"),
      el("option", { value: "resolved" }, "resolved"));
    this.history = el("div", { class: "table-wrap", id: "alert-history" });
    this.rules = el("div", { class: "table-wrap", id: "alert-rules" });
    this.mutes = el("div", { id: "alert-mutes" });
    this.notifiers = el("div", { id: "alert-notifiers" });
    root.append(
      panel("Firing alerts", el("div", { class: "controls" },
        el("label", {}, "Acting as ", this.name), el("label", {}, this.token)), this.active),
      this.detailPanel,
      panel("Alert history", el("div", { class: "controls" }, el("label", {}, "State ", this.state)),
        this.history),
      panel("Rules", this.rules),
      panel("Mutes and notifiers", this.mutes, this.notifiers));
  }

  async show(params) {
    this.params = params;
    return this.refresh();
  }

  alertRow(a, { actions }) {
    const cells = [
      el("span", { class: `sev ${a.severity}` }, a.severity),
      el("a", { href: route.hash("alerts", { id: a.id }), class: "summary-link" }, a.summary),
      el("span", { class: "muted" }, `since ${format.localDateTime(a.started_at)}`),
      a.acked_by ? el("span", { class: "tag" }, `ack ${a.acked_by}`) : "",
      a.muted ? el("span", { class: "tag" }, "muted") : "",
    ];
    if (actions) {
      cells.push(
        el("button", { type: "button", class: "ack", disabled: a.acked_at ? true : undefined,
          onclick: () => this.ack(a) }, "Acknowledge"),
        el("button", { type: "button", class: "mute", onclick: () => this.mute(a, 3600) }, "Mute 1 h"));
    }
    return el("div", { class: `alert-row ${a.state}`, "data-alert": a.id, "data-subject": a.subject,
      "data-acked": a.acked_at ? "1" : "0" }, ...cells);
  }

  async ack(a) {
    await this.act(() => api.post(`alerts/${a.id}/ack`, { by: this.actor(), note: "" }));
  }

  async mute(a, seconds) {
    await this.act(() => api.post(`alerts/${a.id}/mute`,
      { by: this.actor(), duration_s: seconds, reason: "from the dashboard" }));
  }

  actor() {
    const name = this.name.value.trim() || "dashboard";
    localStorage.setItem("pingmesh.who", name);
    return name;
  }

  async act(fn) {
    try {
      await fn();
    } catch (error) {
      this.shell.report([`alerts: ${error.message}`]);
    }
    await this.refresh();
    this.shell.pollAlerts();
  }

  async refresh() {
    const id = this.params?.get("id");
    const [active, history, rules, mutes, notifiers, one] = await Promise.all([
      api.get("alerts/active"),
      api.get("alerts", { state: this.state.value || undefined, limit: 200 }),
      api.get("alerts/rules"),
      api.get("alerts/mutes"),
      api.get("alerts/notifiers"),
      id ? api.get(`alerts/${id}`) : Promise.resolve(null),
    ]);
    this.active.replaceChildren(...active.alerts.map((a) => this.alertRow(a, { actions: true })));
    if (!active.alerts.length) this.active.append(el("div", { class: "muted" }, "No alert is firing."));
    this.renderDetail(one);
    const columns = [
      { title: "State", value: (a) => el("span", { class: `state ${a.state}` }, a.state) },
      { title: "Severity", value: (a) => el("span", { class: `sev ${a.severity}` }, a.severity) },
      { title: "Alert", value: (a) => link(a.summary, route.hash("alerts", { id: a.id })) },
      { title: "Started", value: (a) => format.localDateTime(a.started_at) },
      { title: "Resolved", value: (a) => format.localDateTime(a.resolved_at) },
      { title: "Ack", value: (a) => a.acked_by ?? "" },
    ];
    this.history.replaceChildren(table(columns, history.alerts, {
      rowAttrs: (a) => ({ "data-alert": a.id, "data-state": a.state }), empty: "no alert yet",
    }));
    this.rules.replaceChildren(table([
      { title: "Rule", value: (r) => el("span", { class: "mono" }, r.id) },
      { title: "Origin", value: (r) => r.origin },
      { title: "Fires when", value: (r) => r.description },
      { title: "Severity", value: (r) => r.severity },
    ], rules));
    this.mutes.replaceChildren(el("h3", {}, "Mutes in force"), table([
      { title: "Rule", value: (m) => m.rule_id },
      { title: "Subject", value: (m) => m.subject, class: "mono" },
      { title: "Until", value: (m) => format.localDateTime(m.until) },
      { title: "By", value: (m) => m.created_by },
      { title: "", value: (m) => el("button", { type: "button",
        onclick: () => this.act(() => api.del(`alerts/mutes/${m.id}`)) }, "Unmute") },
    ], mutes, { empty: "nothing is muted" }));
    this.notifiers.replaceChildren(el("h3", {}, "Notifiers"), table([
      { title: "Name", value: (n) => n.name },
      { title: "Kind", value: (n) => n.kind },
      { title: "Where", value: (n) => n.kind === "smtp"
        ? `${n.host}:${n.port} (${n.security}) → ${n.recipients.join(", ")}` : n.url, class: "mono" },
      { title: "Secret", value: (n) => (n.password_set || n.secret_set) ? "set (hidden)" : "none" },
    ], notifiers, { empty: "no notifier configured: alerts show here and sound only" }));
    this.root.dataset.state = "ready";
    return [];
  }

  renderDetail(a) {
    if (!a) {
      this.detailPanel.hidden = true;
      return;
    }
    this.detailPanel.hidden = false;
    const ev = a.evidence ?? {};
    const pairs = Array.isArray(ev.pairs) ? ev.pairs : [];
    const hops = a.trace && Array.isArray(a.trace.hops) ? a.trace.hops : [];
    const level = ev.level ?? a.scope;
    const subject = ev.subject ?? a.subject;
    const [src, dst] = String(subject).split("->");
    const drill = dst !== undefined && ["server", "tor", "podset", "dc"].includes(level)
      ? link("open the pairs of this link →", route.hash("pair", { level, src, dst,
        window: ev.window ?? "", at: ev.window_start ?? "" }))
      : "";
    this.detail.replaceChildren(
      el("div", { class: "panel-head" }, el("h2", {}, a.summary)),
      el("div", { class: `alert-meta ${a.state}`, "data-alert": a.id, "data-state": a.state },
        `${a.state} · ${a.severity} · rule ${a.rule_name} · started ${format.localDateTime(a.started_at)}`,
        a.resolved_at ? ` · resolved ${format.localDateTime(a.resolved_at)}` : "",
        ` ${clock.zoneName()}`,
        a.acked_by ? ` · acknowledged by ${a.acked_by}` : ""),
      drill,
      el("h3", {}, "Affected pairs"),
      table([
        { title: "Source", value: (p) => link(p.src, route.hash("node", { name: p.src })), class: "mono" },
        { title: "Destination", value: (p) => link(p.dst, route.hash("node", { name: p.dst })), class: "mono" },
        { title: "Why", value: (p) => p.why ?? "" },
        { title: "P99", value: (p) => format.latency(p.p99_us) },
        { title: "Failed", value: (p) => p.failures ?? "" },
        { title: "", value: (p) => link("history →", route.hash("history", { src: p.src, dst: p.dst })) },
      ], pairs, { empty: "no pair evidence" }),
      el("h3", {}, "Traceroute taken when it fired"),
      hops.length
        ? el("div", {}, el("div", { class: "hint mono" },
            `${a.trace.agent} ${a.trace.src_addr}:${a.trace.src_port} → ${a.trace.dst} ` +
            `${a.trace.dst_addr}:${a.trace.dst_port}${a.trace.reached ? " (reached)" : ""}`),
          table([
            { title: "TTL", value: (h) => String(h.ttl) },
            { title: "Host", value: (h) => h.address ?? "???", class: "mono" },
            { title: "RTT", value: (h) => format.latency(h.rtt_us) },
          ], hops, { rowAttrs: () => ({ class: "hop" }) }))
        : el("div", { class: "muted", id: "trace-state" }, a.trace_task_id
          ? `requested (task ${a.trace_task_id}); ${a.trace ? a.trace.status ?? "" : "waiting for the agent"}`
          : "no traceroute (no tracer wired, or no server pair to trace)"),
      el("h3", {}, "Notifications"),
      table([
        { title: "Event", value: (n) => n.event },
        { title: "Notifier", value: (n) => n.notifier },
        { title: "State", value: (n) => n.state },
        { title: "Attempts", value: (n) => String(n.attempts) },
        { title: "Sent", value: (n) => format.localDateTime(n.sent_at) },
        { title: "Error", value: (n) => n.last_error ?? "", class: "muted" },
      ], a.notifications, { empty: "no notifier" }));
  }
}

// -- the topology view ----------------------------------------------------------------------

const STATE_COLOUR = { ok: "#3a9d5d", warn: "#e3b93b", bad: "#d1453b", failed: "#262a33", nodata: "#b8bec9" };

export class TopologyPage {
  constructor(root) {
    this.root = root;
    this.level = el("select", { id: "topo-level", "aria-label": "level" },
      ["dc", "podset", "tor", "server"].map((l) => el("option", { value: l }, l)));
    this.dc = el("select", { id: "topo-dc", "aria-label": "DC" }, el("option", { value: "" }, "all"));
    this.tor = el("input", { type: "search", id: "topo-tor", placeholder: "ToR (server level)" });
    this.window = el("select", { id: "topo-window", "aria-label": "window" });
    for (const c of [this.level, this.dc, this.tor, this.window]) {
      c.addEventListener("change", () => route.go("topology", { level: this.level.value,
        dc: this.dc.value, tor: this.tor.value, window: this.window.value }));
    }
    this.head = el("div", { class: "window-line" });
    this.svgWrap = el("div", { class: "topo-wrap" });
    this.alerts = el("div", { id: "topo-alerts" });
    this.legend = el("div", { class: "legend" },
      ...Object.entries({ ok: "healthy", warn: "warning", bad: "over the SLA", failed: "all failed",
        nodata: "no data" }).map(([s, text]) => el("span", { class: "item" },
        el("span", { class: "swatch", style: { background: STATE_COLOUR[s] } }), text)),
      el("span", { class: "item" }, el("span", { class: "swatch alerting" }), "a rule fires (thick, curved)"));
    root.append(panel("Topology", el("div", { class: "controls" },
      el("label", {}, "Level ", this.level), el("label", {}, "DC ", this.dc),
      el("label", {}, "Window ", this.window), this.tor),
      this.head, this.legend, el("div", { class: "topo-row" }, this.svgWrap, this.alerts)));
  }

  async show(params) {
    this.params = params;
    this.level.value = params.get("level") ?? "tor";
    this.tor.value = params.get("tor") ?? "";
    this.tor.hidden = this.level.value !== "server";
    if (this.dc.children.length <= 1) {
      const agents = await api.get("agents");
      const dcs = [...new Set(agents.agents.map((a) => a.dc).filter(Boolean))].sort();
      this.dc.replaceChildren(el("option", { value: "" }, "all"),
        ...dcs.map((d) => el("option", { value: d }, d)));
    }
    this.dc.value = params.get("dc") ?? "";
    if (!this.window.children.length) {
      const w = await api.get("windows");
      this.window.replaceChildren(...w.kinds.map((k) => el("option", { value: k.name }, k.name)));
    }
    // The fast window by default: the freshest state, as the heatmap opens on.
    this.window.value = params.get("window") ?? this.window.options[0]?.value ?? "";
    return this.refresh();
  }

  async refresh() {
    const level = this.level.value;
    const topo = await api.get("topology", { level, dc: this.dc.value || undefined,
      window: this.window.value || undefined,
      tor: level === "server" ? this.tor.value || undefined : undefined });
    this.head.textContent = topo.window_start
      ? `${topo.window} window ${format.localDateTime(topo.window_start)} – ` +
        `${format.localTime(topo.window_end)} ${clock.zoneName()} · ${topo.nodes.length} nodes, ` +
        `${topo.links.length} links`
      : topo.note ?? "";
    this.alerts.replaceChildren(
      el("h3", {}, topo.alerts.length ? `${topo.alerts.length} firing alerts here` : "No alert fires here"),
      ...topo.alerts.map((a) => el("div", { class: "alert-row firing compact" },
        el("span", { class: `sev ${a.severity}` }, a.severity),
        link(a.summary, route.hash("alerts", { id: a.id })))));
    this.draw(topo);
    this.root.dataset.state = "ready";
    return [];
  }

  draw(topo) {
    const NS = "http://www.w3.org/2000/svg";
    const svgEl = (tag, attrs = {}, ...kids) => {
      const n = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
      n.append(...kids);
      return n;
    };
    const nodes = topo.nodes;
    const size = Math.max(420, Math.min(900, 140 + nodes.length * 26));
    const cx = size / 2, cy = size / 2, radius = size / 2 - 70;
    const pos = new Map();
    // A circle, nodes ordered by DC then podset, as SmartPing lays its graph out.
    nodes.forEach((n, k) => {
      const angle = (2 * Math.PI * k) / Math.max(1, nodes.length) - Math.PI / 2;
      pos.set(n.id, [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle), angle]);
    });
    const svg = svgEl("svg", { viewBox: `0 0 ${size} ${size}`, width: size, height: size,
      id: "topology", role: "img", "aria-label": "topology" });
    svg.append(svgEl("defs", {}, svgEl("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9,
      refY: 5, markerWidth: 5, markerHeight: 5, orient: "auto-start-reverse" },
    svgEl("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a93a3" }))));
    const tooltip = document.querySelector("#tooltip");
    const tip = (target, lines) => {
      target.addEventListener("mousemove", (e) => {
        tooltip.replaceChildren(...lines.map((l, i) => el("div", { class: i ? "row" : "pair" }, l)));
        tooltip.hidden = false;
        tooltip.style.left = `${e.clientX + 14}px`;
        tooltip.style.top = `${e.clientY + 14}px`;
      });
      target.addEventListener("mouseleave", () => { tooltip.hidden = true; });
    };
    const nodeR = nodes.length > 60 ? 6 : 14;
    let alerting = 0;
    for (const l of topo.links) {
      if (l.src === l.dst) continue;
      const a = pos.get(l.src), b = pos.get(l.dst);
      if (!a || !b) continue;
      const firing = l.alerts.length > 0;
      if (firing) alerting++;
      // Red, thick and curved when a rule fires (SmartPing: red edges curve by 0.2).
      const bend = firing ? 0.2 : 0.06;
      const mx = (a[0] + b[0]) / 2 + (b[1] - a[1]) * bend, my = (a[1] + b[1]) / 2 - (b[0] - a[0]) * bend;
      const path = svgEl("path", {
        d: `M ${a[0]} ${a[1]} Q ${mx} ${my} ${b[0]} ${b[1]}`, fill: "none",
        stroke: firing ? "#d1453b" : STATE_COLOUR[l.state], "stroke-width": firing ? 3.5 : 1.2,
        "stroke-opacity": firing ? 1 : 0.55, "marker-end": "url(#arrow)", class: "link",
        "data-link": `${l.src}->${l.dst}`, "data-state": l.state, "data-alerting": firing ? "1" : "0",
      });
      path.addEventListener("click", () => route.go("pair", { level: topo.level, src: l.src, dst: l.dst }));
      tip(path, [`${l.src} → ${l.dst}`, `P99 ${format.latency(l.p99_us)}`,
        `probes ${format.count(l.probes)}, failed ${format.count(l.failures)}`,
        firing ? "ALERT firing" : l.state]);
      svg.append(path);
    }
    for (const n of nodes) {
      const [x, y, angle] = pos.get(n.id);
      const firing = n.alerts.length > 0;
      if (firing) alerting++;
      const circle = svgEl("circle", { cx: x, cy: y, r: nodeR,
        fill: firing ? "#d1453b" : STATE_COLOUR[n.state], stroke: firing ? "#7a1d16" : "#fff",
        "stroke-width": firing ? 3 : 2, class: "node", "data-node": n.id, "data-state": n.state,
        "data-alerting": firing ? "1" : "0" });
      circle.addEventListener("click", () => {
        if (topo.level === "server") route.go("node", { name: n.id });
        else route.go("sla", { scope: topo.level });
      });
      tip(circle, [n.id, `P99 ${format.latency(n.p99_us)}`, `probes ${format.count(n.probes)}`,
        firing ? "ALERT firing" : n.state]);
      svg.append(circle);
      if (nodes.length <= 80) {
        const lx = x + Math.cos(angle) * (nodeR + 6), ly = y + Math.sin(angle) * (nodeR + 6);
        svg.append(svgEl("text", { x: lx, y: ly, "font-size": 11,
          "text-anchor": Math.cos(angle) > 0.2 ? "start" : Math.cos(angle) < -0.2 ? "end" : "middle",
          "dominant-baseline": "middle", fill: "#1d2330" }, n.id));
      }
    }
    svg.dataset.alerting = String(alerting);
    this.svgWrap.replaceChildren(svg);
  }
}

// pingmesh dashboard: the shell. Vanilla ES modules, no build step, no external asset.
//
//   common.js   api client, formatting (browser zone or UTC), DOM helpers, hash route
//   overview.js the heatmap (canvas) and the agents table: #/overview
//   pages.js    a cell's pairs (#/pair), a pair's history and raw probes (#/history),
//               a server's forward/reverse graphs (#/node), SLAs (#/sla)
//   alerts.js   alerts (#/alerts) and the topology (#/topology)
//   smoke.js    the SmokePing-style distribution graph
//   sound.js    the alarm (WebAudio)
//
// One refresh loop (every 10 s, never overlapping) updates the page on screen; a second one
// (every 5 s) follows the firing alerts: the badge in the header and the alarm.

import { AlertsPage, TopologyPage } from "./alerts.js";
import { api, clock, REFRESH_MS, route } from "./common.js";
import { OverviewPage } from "./overview.js";
import { HistoryPage, NodePage, PairPage, SlaPage } from "./pages.js";
import { Alarm } from "./sound.js";

const ALERT_POLL_MS = 5000;

class Shell {
  constructor() {
    this.banner = document.querySelector("#banner");
    this.refreshState = document.querySelector("#refresh-state");
    this.badge = document.querySelector("#alert-badge");
    this.alarm = new Alarm(document.querySelector("#sound"));
    this.utc = document.querySelector("#utc");
    this.utc.checked = clock.utc;
    this.utc.addEventListener("change", () => {
      clock.utc = this.utc.checked;
      this.show();
    });
    const page = (name) => document.querySelector(`[data-page="${name}"]`);
    this.pages = {
      overview: new OverviewPage(this),
      pair: new PairPage(page("pair")),
      history: new HistoryPage(page("history")),
      node: new NodePage(page("node")),
      sla: new SlaPage(page("sla")),
      topology: new TopologyPage(page("topology")),
      alerts: new AlertsPage(page("alerts"), this),
    };
    this.current = null;
    this.timer = null;
    this.busy = false;
    window.addEventListener("hashchange", () => this.show());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) this.tick();
    });
  }

  async show() {
    const { view, params } = route.read();
    const name = this.pages[view] ? view : "overview";
    for (const node of document.querySelectorAll("[data-page]")) {
      node.hidden = node.dataset.page !== name;
    }
    for (const a of document.querySelectorAll("nav.views a")) {
      a.classList.toggle("active", a.dataset.view === name);
    }
    document.querySelector("#view").dataset.view = name;
    this.current = name;
    document.title = `pingmesh · ${name}`;
    await this.run(() => this.pages[name].show(params));
  }

  async tick() {
    if (this.current) await this.run(() => this.pages[this.current].refresh());
  }

  // Run a page update; report its errors; schedule the next refresh.
  async run(update) {
    clearTimeout(this.timer);
    this.refreshState.textContent = "updating…";
    let errors;
    try {
      errors = (await update()) ?? [];
    } catch (error) {
      errors = [error.message];
    }
    this.report(errors);
    this.timer = setTimeout(() => this.tick(), REFRESH_MS);
  }

  report(errors) {
    const now = new Date().toLocaleTimeString([], { hour12: false, timeZone: clock.utc ? "UTC" : undefined });
    if (errors.length) {
      this.banner.textContent = `Could not refresh (${errors.join("; ")}). ` +
        `Showing the last good data; retrying every ${REFRESH_MS / 1000} s.`;
      this.banner.hidden = false;
      this.refreshState.textContent = `refresh failed at ${now}`;
      this.refreshState.dataset.state = "error";
    } else {
      this.banner.hidden = true;
      this.refreshState.textContent = `updated ${now} · every ${REFRESH_MS / 1000} s`;
      this.refreshState.dataset.state = "ok";
    }
  }

  async pollAlerts() {
    clearTimeout(this.alertTimer);
    try {
      const active = await api.get("alerts/active");
      this.badge.textContent = active.firing ? String(active.firing) : "";
      this.badge.hidden = active.firing === 0;
      this.badge.dataset.firing = String(active.firing);
      this.badge.classList.toggle("unacked", active.unacknowledged > 0);
      this.badge.title = `${active.firing} firing, ${active.unacknowledged} not acknowledged`;
      document.body.dataset.alerts = String(active.firing);
      this.alarm.set(active.sound);
    } catch {
      // the page's own refresh reports a server that does not answer
    }
    this.alertTimer = setTimeout(() => this.pollAlerts(), ALERT_POLL_MS);
  }

  start() {
    this.show();
    this.pollAlerts();
  }
}

new Shell().start();

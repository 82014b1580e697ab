// Shared helpers of every page: the API client, formatting (times in the browser's zone or
// UTC, by the user's choice), DOM building and the hash route.

export const REFRESH_MS = 10_000;

// -- api ------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

async function request(method, path, params, body, signal) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem("pingmesh.token");
  if (method !== "GET" && token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  // no-store: a revalidated (304) heatmap would come back with the generated_at of its first
  // fetch, and the pages judge how old the data is from generated_at. The server keeps the
  // heatmaps of analysed windows built, so a refresh costs it little.
  const response = await fetch(`api/v1/${path}${query(params)}`, {
    method, signal, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail ?? detail;
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

export const api = {
  get: (path, params = {}, signal = undefined) => request("GET", path, params, undefined, signal),
  post: (path, body = {}) => request("POST", path, {}, body),
  del: (path) => request("DELETE", path, {}, undefined),
};

// -- time -------------------------------------------------------------------------------

// Times come from the API in RFC 3339 UTC. They are shown in the browser's time zone unless
// the user ticks "UTC" (kept in localStorage); either way the zone is always written out.
export const clock = {
  get utc() {
    return localStorage.getItem("pingmesh.utc") === "1";
  },
  set utc(on) {
    localStorage.setItem("pingmesh.utc", on ? "1" : "0");
  },
  zoneName() {
    if (this.utc) return "UTC";
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "local";
  },
  // "UTC+08:00" for a given instant in the shown zone.
  offsetText(ms = Date.now()) {
    if (this.utc) return "UTC";
    const minutes = -new Date(ms).getTimezoneOffset();
    const sign = minutes < 0 ? "-" : "+";
    const a = Math.abs(minutes);
    return `UTC${sign}${String(Math.floor(a / 60)).padStart(2, "0")}:${String(a % 60).padStart(2, "0")}`;
  },
  parts(ms) {
    const d = new Date(ms);
    if (this.utc) {
      return { y: d.getUTCFullYear(), mo: d.getUTCMonth() + 1, d: d.getUTCDate(),
        h: d.getUTCHours(), mi: d.getUTCMinutes(), s: d.getUTCSeconds() };
    }
    return { y: d.getFullYear(), mo: d.getMonth() + 1, d: d.getDate(),
      h: d.getHours(), mi: d.getMinutes(), s: d.getSeconds() };
  },
  // An <input type="datetime-local"> value for an instant, in the shown zone.
  toInput(ms) {
    const p = this.parts(ms);
    return `${p.y}-${pad(p.mo)}-${pad(p.d)}T${pad(p.h)}:${pad(p.mi)}`;
  },
  // The instant an <input type="datetime-local"> value means, in the shown zone.
  fromInput(value) {
    if (!value) return null;
    const ms = this.utc ? Date.parse(`${value}:00Z`) : new Date(value).getTime();
    return Number.isNaN(ms) ? null : ms;
  },
};

export function pad(n) {
  return String(n).padStart(2, "0");
}

// -- format ---------------------------------------------------------------------------

export const format = {
  latency(us) {
    if (us === null || us === undefined) return "–";
    if (us >= 1_000_000) return `${(us / 1_000_000).toFixed(2)} s`;
    if (us >= 1000) return `${(us / 1000).toFixed(2)} ms`;
    return `${Math.round(us)} µs`;
  },
  ratio(r) {
    if (r === null || r === undefined) return "–";
    if (r === 0) return "0";
    const pct = r * 100;
    return `${r.toExponential(1)} (${pct < 0.01 ? pct.toExponential(1) : pct.toFixed(2)} %)`;
  },
  percent(r) {
    if (r === null || r === undefined) return "–";
    return `${(r * 100).toFixed(r > 0 && r < 0.01 ? 2 : 1)} %`;
  },
  value(v, unit) {
    return unit === "us" ? format.latency(v) : format.ratio(v);
  },
  threshold(v, unit) {
    return unit === "us" ? format.latency(v) : v.toExponential(0);
  },
  count(n) {
    return Number(n).toLocaleString();
  },
  localTime(iso) {
    if (!iso) return "–";
    return format.localDateTime(iso).slice(11);
  },
  // YYYY-MM-DD HH:MM:SS in the shown zone: unambiguous whatever the browser's locale.
  localDateTime(iso) {
    if (!iso) return "–";
    const p = clock.parts(typeof iso === "number" ? iso : Date.parse(iso));
    return `${p.y}-${pad(p.mo)}-${pad(p.d)} ${pad(p.h)}:${pad(p.mi)}:${pad(p.s)}`;
  },
  // "12 s ago", measured against the server's clock so a skewed laptop does not lie.
  ago(iso, nowIso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.parse(nowIso) - Date.parse(iso)) / 1000);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 172800) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  },
  seconds(s) {
    return s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`;
  },
};

// -- dom ------------------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v); // CSSOM: allowed by our CSP
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function link(text, hash, attrs = {}) {
  return el("a", { href: hash, ...attrs }, text);
}

export function cssColour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// A table from column specs: [{title, value(row) -> Node|string, class}].
export function table(columns, rows, { rowAttrs = () => ({}), empty = "nothing to show" } = {}) {
  const head = el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c.title))));
  const body = el("tbody");
  for (const row of rows) {
    body.append(el("tr", rowAttrs(row),
      columns.map((c) => el("td", { class: c.class ?? "" }, c.value(row)))));
  }
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: String(columns.length), class: "muted" }, empty)));
  }
  return el("table", {}, head, body);
}

// -- route ----------------------------------------------------------------------------

// The view and its parameters live in location.hash: #/view?key=value&...
export const route = {
  read() {
    const hash = location.hash.replace(/^#/, "");
    const [path, q = ""] = hash.split("?");
    return { view: path.replace(/^\//, "") || "overview", params: new URLSearchParams(q) };
  },
  hash(view, params = {}) {
    const q = query(params);
    return `#/${view}${q}`;
  },
  go(view, params = {}) {
    location.hash = route.hash(view, params);
  },
  // Change the parameters of the current view without a new history entry.
  replace(view, params) {
    const hash = route.hash(view, params);
    if (location.hash !== hash) history.replaceState(null, "", hash);
  },
};

// A date-range picker: two datetime-local inputs in the shown zone and presets. onChange
// gets {start, end} as RFC 3339 UTC strings (end null = now).
export class RangePicker {
  constructor(onChange) {
    this.onChange = onChange;
    this.start = el("input", { type: "datetime-local", "aria-label": "from", class: "range-start" });
    this.end = el("input", { type: "datetime-local", "aria-label": "to", class: "range-end" });
    this.zone = el("span", { class: "muted zone" });
    const preset = (label, hours) => el("button", {
      type: "button", class: "preset", "data-hours": String(hours),
      onclick: () => this.set(Date.now() - hours * 3600_000, null, true),
    }, label);
    const apply = el("button", { type: "button", class: "apply", onclick: () => this.apply() }, "Show");
    this.node = el("div", { class: "range" },
      preset("1 h", 1), preset("6 h", 6), preset("24 h", 24), preset("7 d", 168),
      el("label", {}, "from ", this.start), el("label", {}, "to ", this.end), apply, this.zone);
  }

  set(startMs, endMs, fire = false) {
    this.start.value = clock.toInput(startMs);
    this.end.value = endMs === null ? "" : clock.toInput(endMs);
    this.zone.textContent = `times in ${clock.zoneName()} (${clock.offsetText(startMs)})`;
    if (fire) this.apply();
  }

  apply() {
    const s = clock.fromInput(this.start.value);
    const e = clock.fromInput(this.end.value);
    this.onChange({
      start: s === null ? null : new Date(s).toISOString(),
      end: e === null ? null : new Date(e).toISOString(),
    });
  }
}

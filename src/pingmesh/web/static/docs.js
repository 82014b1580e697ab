// The API documentation page: renders /openapi.json with no external asset (no Swagger UI,
// which would load from a CDN). Endpoints with their parameters and responses, a small
// "try it" form for GET endpoints, and every schema with its fields.

const METHODS = ["get", "post", "put", "patch", "delete"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function refName(ref) {
  return ref.split("/").pop();
}

// A readable one-line type: "string", "integer ≥ 1", "AgentOut[]", "'tor' | 'dc'", "… | null".
function typeOf(schema) {
  if (!schema) return "any";
  if (schema.$ref) {
    const name = refName(schema.$ref);
    return el("a", { href: `#schema-${name}` }, name);
  }
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  const union = schema.anyOf || schema.oneOf;
  if (union) {
    const span = el("span");
    union.forEach((s, i) => {
      if (i) span.append(" | ");
      span.append(typeOf(s));
    });
    return span;
  }
  if (schema.type === "array") {
    const span = el("span");
    span.append(typeOf(schema.items), "[]");
    return span;
  }
  let text = schema.type || "object";
  if (schema.format) text += ` (${schema.format})`;
  if (schema.minimum !== undefined) text += ` ≥ ${schema.minimum}`;
  if (schema.maximum !== undefined) text += ` ≤ ${schema.maximum}`;
  if (schema.pattern) text += ` /${schema.pattern}/`;
  return text;
}

// Docstrings use ``name`` for code: show it as code, everything else as plain text.
function prose(text) {
  const span = el("span");
  text.split(/``([^`]+)``/).forEach((part, i) => {
    span.append(i % 2 ? el("code", {}, part) : part);
  });
  return span;
}

function table(headers, rows) {
  return el("table", { class: "doc-table" },
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))));
}

function tryForm(path, parameters) {
  const inputs = {};
  const output = el("pre", { class: "doc-output", hidden: "" });
  const fields = parameters.filter((p) => p.in === "query" || p.in === "path").map((p) => {
    const schema = p.schema || {};
    const choices = schema.enum || (schema.anyOf || []).flatMap((s) => s.enum || []);
    let input;
    if (choices.length) {
      input = el("select", {}, ...(p.required ? [] : [el("option", { value: "" }, "")]),
        ...choices.map((c) => el("option", { value: c }, c)));
      if (schema.default !== undefined) input.value = schema.default;
    } else {
      input = el("input", { type: "text", placeholder: schema.default ?? "" });
    }
    inputs[p.name] = [p.in, input];
    return el("label", {}, `${p.name} `, input);
  });
  const button = el("button", { type: "submit" }, "Send");
  const form = el("form", { class: "controls doc-try" }, ...fields, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let url = path;
    const query = new URLSearchParams();
    for (const [name, [where, input]] of Object.entries(inputs)) {
      if (!input.value) continue;
      if (where === "path") url = url.replace(`{${name}}`, encodeURIComponent(input.value));
      else query.set(name, input.value);
    }
    const target = url.replace(/^\//, "") + (query.toString() ? `?${query}` : "");
    output.hidden = false;
    output.textContent = `GET /${target} …`;
    try {
      const response = await fetch(target, { headers: { Accept: "application/json" } });
      const text = await response.text();
      let body = text;
      try {
        body = JSON.stringify(JSON.parse(text), null, 2);
      } catch {
        // not JSON: show as is
      }
      const shown = body.length > 20000 ? `${body.slice(0, 20000)}\n… (${body.length} chars)` : body;
      output.textContent = `${response.status} ${response.statusText}\n${shown}`;
    } catch (error) {
      output.textContent = `request failed: ${error.message}`;
    }
  });
  return el("div", {}, form, output);
}

function renderEndpoint(path, method, op) {
  const parameters = op.parameters || [];
  const block = el("div", { class: "doc-endpoint", id: `op-${method}-${path}` },
    el("h3", {}, el("span", { class: `doc-method ${method}` }, method.toUpperCase()), " ",
      el("code", {}, path), op.summary ? el("span", { class: "doc-summary" }, ` ${op.summary}`) : null),
  );
  if (op.description) block.append(el("p", { class: "doc-desc" }, prose(op.description)));
  if (parameters.length) {
    block.append(table(["parameter", "in", "type", "default", "description"],
      parameters.map((p) => [
        el("code", {}, p.name + (p.required ? " *" : "")),
        p.in,
        typeOf(p.schema),
        p.schema && p.schema.default !== undefined ? JSON.stringify(p.schema.default) : "",
        prose(p.description || (p.schema && p.schema.description) || ""),
      ])));
  }
  const requestBody = op.requestBody?.content?.["application/json"]?.schema;
  if (requestBody) block.append(el("p", {}, "Request body: ", typeOf(requestBody)));
  const responses = Object.entries(op.responses || {}).map(([code, r]) => {
    const schema = r.content?.["application/json"]?.schema;
    return [el("code", {}, code), r.description || "", schema ? typeOf(schema) : ""];
  });
  if (responses.length) block.append(table(["status", "meaning", "body"], responses));
  if (method === "get") block.append(tryForm(path, parameters));
  return block;
}

function renderSchema(name, schema) {
  const required = new Set(schema.required || []);
  const block = el("div", { class: "doc-schema", id: `schema-${name}` },
    el("h3", {}, el("code", {}, name)));
  if (schema.description) block.append(el("p", { class: "doc-desc" }, prose(schema.description)));
  if (schema.properties) {
    block.append(table(["field", "type", "description"],
      Object.entries(schema.properties).map(([field, s]) => [
        el("code", {}, field + (required.has(field) ? " *" : "")),
        typeOf(s),
        prose(s.description || ""),
      ])));
  } else if (schema.enum) {
    block.append(el("p", {}, "One of: ", typeOf(schema)));
  }
  return block;
}

async function main() {
  const banner = document.querySelector("#banner");
  let spec;
  try {
    const response = await fetch("openapi.json");
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    spec = await response.json();
  } catch (error) {
    banner.textContent = `Could not load openapi.json: ${error.message}`;
    banner.hidden = false;
    return;
  }
  document.querySelector("#api-title").textContent =
    `${spec.info?.title ?? "API"} ${spec.info?.version ?? ""} · OpenAPI ${spec.openapi ?? ""}`;
  const endpoints = document.querySelector("#endpoints");
  for (const [path, item] of Object.entries(spec.paths || {}).sort()) {
    for (const method of METHODS) {
      if (item[method]) endpoints.append(renderEndpoint(path, method, item[method]));
    }
  }
  const schemas = document.querySelector("#schemas");
  for (const [name, schema] of Object.entries(spec.components?.schemas || {}).sort()) {
    schemas.append(renderSchema(name, schema));
  }
  document.body.dataset.state = "ready";
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

main();

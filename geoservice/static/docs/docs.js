// The API reference, rendered in the browser from the service's own /openapi.json: every
// operation with its key, parameters, request body and answers, schemas expanded in place.
// Plain DOM building (no HTML strings), so nothing in the spec is ever parsed as markup.
import { el } from "/static/common/api.js";

const $ = (id) => document.getElementById(id);
const METHODS = ["get", "put", "post", "patch", "delete"];
const KEY_NAMES = {
  operatorToken: "operator token",
  secretKey: "secret key (sk_…)",
  sdkKey: "SDK key (pk_…)",
};
const MAX_DEPTH = 6;

let spec = null;

function resolve(schema) {
  let seen = 0;
  while (schema && schema.$ref && seen < 20) {
    const name = schema.$ref.split("/").pop();
    schema = { ...spec.components.schemas[name], _name: name, ...withoutRef(schema) };
    seen += 1;
  }
  return schema || {};
}

function withoutRef(schema) {
  const { $ref, ...rest } = schema;
  return rest;
}

// A short type label: "string", "integer | null", "array of StoredZone", "Offer".
function typeLabel(schema) {
  if (!schema) return "any";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.anyOf || schema.oneOf) return (schema.anyOf || schema.oneOf).map(typeLabel).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.type === "array") return `array of ${typeLabel(schema.items)}`;
  if (schema.type === "object" && schema.additionalProperties && !schema.properties) {
    return `map of ${typeLabel(schema.additionalProperties === true ? null : schema.additionalProperties)}`;
  }
  return Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "object";
}

function constraints(schema) {
  const members = schema.anyOf || schema.oneOf;
  if (members) {
    // `Id | null`: the limits are the non-null member's; a default sits on the union itself.
    const inner = members.filter((m) => m.type !== "null").map((m) => constraints(resolve(m))).filter(Boolean);
    const own = schema.default !== undefined && schema.default !== null ? [`default ${JSON.stringify(schema.default)}`] : [];
    return [...new Set([...inner, ...own])].join("; ");
  }
  const parts = [];
  const add = (label, value) => value !== undefined && parts.push(`${label} ${value}`);
  add("≥", schema.minimum);
  add(">", schema.exclusiveMinimum);
  add("≤", schema.maximum);
  add("<", schema.exclusiveMaximum);
  add("min length", schema.minLength);
  add("max length", schema.maxLength);
  add("min items", schema.minItems);
  add("max items", schema.maxItems);
  if (schema.pattern) parts.push(`pattern ${schema.pattern}`);
  if (schema.format) parts.push(`format ${schema.format}`);
  if (schema.default !== undefined) parts.push(`default ${JSON.stringify(schema.default)}`);
  return parts.join(", ");
}

// Schemas nested inside a property: the object or array element, or the members of a union.
// Descriptions use `code` spans (as in docs/api.md): shown as code, never parsed as HTML.
function prose(tag, attributes, text) {
  const node = el(tag, attributes);
  String(text).split("`").forEach((part, i) => node.append(i % 2 ? el("code", {}, part) : part));
  return node;
}

function nested(schema) {
  const members = schema.anyOf || schema.oneOf;
  if (members) return members.filter((m) => m.type !== "null");
  if (schema.type === "array" && schema.items) return [schema.items];
  if (schema.type === "object" && schema.additionalProperties && typeof schema.additionalProperties === "object") {
    return [schema.additionalProperties];
  }
  if (schema.$ref || schema.properties) return [schema];
  return [];
}

function renderSchema(raw, depth = 0, trail = []) {
  const schema = resolve(raw);
  const box = el("div", { class: "schema" });
  if (schema.description && depth === 0) box.append(el("div", { class: "muted" }, schema.description));
  if (depth > MAX_DEPTH || (schema._name && trail.includes(schema._name))) {
    box.append(el("div", { class: "muted" }, `${schema._name || "…"} (see above)`));
    return box;
  }
  const path = schema._name ? [...trail, schema._name] : trail;
  if (schema.properties) {
    const required = new Set(schema.required || []);
    for (const [name, property] of Object.entries(schema.properties)) {
      const resolved = resolve(property);
      const line = el("div", { class: "prop" },
        el("span", { class: "name" }, name), " ",
        el("span", { class: "type" }, typeLabel(property)), " ",
        required.has(name) ? el("span", { class: "req" }, "required") : null, " ",
        el("span", { class: "constraint" }, constraints(resolved)),
        resolved.description || property.description
          ? prose("div", { class: "muted small" }, property.description || resolved.description)
          : null,
      );
      const inner = nested(property).map(resolve).filter((s) => s.properties || nested(s).some((n) => resolve(n).properties));
      if (inner.length) {
        const details = el("details", {}, el("summary", { class: "small" }, `fields of ${typeLabel(property)}`));
        for (const member of nested(property)) details.append(renderSchema(member, depth + 1, path));
        line.append(details);
      }
      box.append(line);
    }
  } else {
    const inner = nested(schema).filter((n) => n !== schema);
    box.append(el("div", {}, el("span", { class: "type" }, typeLabel(raw)), " ",
      el("span", { class: "constraint" }, constraints(schema))));
    for (const member of inner) {
      if (resolve(member).properties || nested(resolve(member)).length) box.append(renderSchema(member, depth + 1, path));
    }
  }
  return box;
}

function renderContent(content) {
  const media = Object.keys(content || {});
  if (!media.length) return el("div", { class: "muted small" }, "no body");
  return el("div", {},
    el("div", { class: "muted small" }, media.join(", ")),
    renderSchema(content[media[0]].schema),
  );
}

function renderParameters(parameters) {
  const rows = parameters.map((p) => el("tr", {},
    el("td", {}, el("code", {}, p.name)),
    el("td", {}, p.in),
    el("td", {}, p.required ? "required" : "optional"),
    el("td", {}, el("span", { class: "type" }, typeLabel(p.schema)), " ",
      el("span", { class: "constraint" }, constraints(resolve(p.schema || {}))),
      p.schema && p.schema.description ? prose("div", { class: "muted small" }, p.schema.description) : null),
  ));
  return el("table", { class: "params" },
    el("thead", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, ""), el("th", {}, "schema"))),
    el("tbody", {}, rows));
}

function operationId(method, path) {
  return `op-${method}-${path.replace(/[^A-Za-z0-9]+/g, "-")}`;
}

function renderOperation(method, path, op) {
  const keys = (op.security || []).flatMap((s) => Object.keys(s)).map((k) => KEY_NAMES[k] || k);
  const body = el("div", { class: "body" },
    el("p", { class: "security" }, keys.length ? `Key: ${keys.join(" or ")}` : "No key"),
    op.description ? prose("p", {}, op.description) : null,
  );
  if (op.parameters && op.parameters.length) body.append(el("h3", {}, "Parameters"), renderParameters(op.parameters));
  if (op.requestBody) body.append(el("h3", {}, "Request body"), renderContent(op.requestBody.content));
  body.append(el("h3", {}, "Answers"));
  for (const [status, answer] of Object.entries(op.responses || {})) {
    const line = el("div", { class: "prop" },
      el("span", { class: "status-code" }, status), " ", prose("span", {}, answer.description || ""));
    if (answer.headers) line.append(el("span", { class: "muted small" }, ` (headers: ${Object.keys(answer.headers).join(", ")})`));
    const content = answer.content || {};
    const media = Object.keys(content);
    // Every error is the same problem document: its schema once per operation is enough.
    if (media.length && !(status >= "400" && op._problemShown)) {
      const details = el("details", {}, el("summary", { class: "small" }, `${media.join(", ")}: ${typeLabel(content[media[0]].schema)}`),
        renderSchema(content[media[0]].schema));
      if (status >= "400") op._problemShown = true;
      if (status < "300") details.open = true;
      line.append(details);
    }
    body.append(line);
  }
  return el("details", { class: "op", id: operationId(method, path), "data-method": method.toUpperCase(), "data-path": path,
    "data-search": `${method} ${path} ${op.summary || ""} ${(op.tags || []).join(" ")}`.toLowerCase() },
    el("summary", {},
      el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("span", { class: "path" }, path),
      el("span", { class: "muted" }, op.summary || "")),
    body);
}

function render() {
  $("version").textContent = `${spec.info.title} ${spec.info.version} · OpenAPI ${spec.openapi}`;
  $("intro").textContent = spec.info.description || "";
  const byTag = new Map();
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const method of METHODS) {
      if (!item[method]) continue;
      const tag = (item[method].tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([method, path, item[method]]);
    }
  }
  const sections = [];
  const toc = [];
  for (const [tag, operations] of byTag) {
    const section = el("section", { "data-tag": tag }, el("h2", { id: `tag-${tag}` }, tag));
    for (const [method, path, op] of operations) section.append(renderOperation(method, path, op));
    sections.push(section);
    toc.push(el("a", { href: `#tag-${tag}` }, `${tag} (${operations.length})`));
  }
  $("toc").replaceChildren(...toc);
  $("operations").replaceChildren(...sections);
  $("operations").dataset.count = String(document.querySelectorAll(".op").length);
  if (window.location.hash) {
    const target = document.getElementById(window.location.hash.slice(1));
    if (target && target.tagName === "DETAILS") target.open = true;
    if (target) target.scrollIntoView();
  }
}

$("filter").addEventListener("input", () => {
  const needle = $("filter").value.trim().toLowerCase();
  for (const op of document.querySelectorAll(".op")) op.hidden = needle && !op.dataset.search.includes(needle);
  for (const section of document.querySelectorAll("section[data-tag]")) {
    section.hidden = !section.querySelector(".op:not([hidden])");
  }
});
$("expand").addEventListener("click", () => document.querySelectorAll(".op").forEach((d) => { d.open = true; }));
$("collapse").addEventListener("click", () => document.querySelectorAll(".op").forEach((d) => { d.open = false; }));

try {
  const response = await fetch("/openapi.json", { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`GET /openapi.json answered ${response.status}`);
  spec = await response.json();
  render();
} catch (error) {
  $("docs-error").hidden = false;
  $("docs-error").textContent = String(error.message || error);
}

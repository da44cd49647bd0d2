// Calls to the geoservice API from the browser, and the few helpers the pages share.
// Keys stay in sessionStorage: gone when the tab closes, never sent anywhere but this origin.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }

  // One readable block: the detail and every offending field the service named.
  describe() {
    const lines = [`${this.status}: ${this.message}`];
    for (const item of this.problem.errors || []) lines.push(`  ${item.field}: ${item.message}`);
    const invalid = this.problem.invalid_features || [];
    if (invalid.length && !(this.problem.errors || []).length) {
      for (const feature of invalid) {
        for (const item of feature.errors) lines.push(`  features[${feature.index}] ${item.field}: ${item.message}`);
      }
    }
    const retry = this.retryAfter;
    if (retry) lines.push(`  retry after ${retry} s`);
    return lines.join("\n");
  }
}

export async function call(method, path, { key, body, rawBody, query } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers };
  if (body !== undefined || rawBody !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = rawBody !== undefined ? rawBody : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (exc) {
    throw new ApiError(0, { detail: `the service did not answer (${exc.message})` });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text.slice(0, 200) };
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    error.retryAfter = Number(response.headers.get("Retry-After")) || 0;
    throw error;
  }
  return data;
}

// Every page of a paged list (zones: up to 1,000 per request).
export async function allZones(key) {
  const features = [];
  let cursor = null;
  do {
    const page = await call("GET", "/v1/zones", { key, query: { limit: 1000, cursor } });
    features.push(...page.features);
    cursor = page.next_cursor;
  } while (cursor);
  return features;
}

export const storage = {
  get: (name) => window.sessionStorage.getItem(`geoservice.${name}`) || "",
  set: (name, value) => window.sessionStorage.setItem(`geoservice.${name}`, value),
  remove: (name) => window.sessionStorage.removeItem(`geoservice.${name}`),
};

// Element builder: el("td", {class: "zone"}, "text", child). Text is always set as text, never
// parsed as HTML, so zone names and offer titles cannot inject markup.
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clockTime(ms) {
  const date = new Date(ms);
  const today = new Date();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  if (date.toDateString() === today.toDateString()) return time;
  return `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

export function badge(type) {
  const labels = { offer_issued: "offer", offer_redeemed: "redeemed" };
  return el("span", { class: `badge ${type}` }, labels[type] || type);
}

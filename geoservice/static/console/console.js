// The retailer console: the tenant's zones on a map, their recent events and offers, editing a
// zone's radius and opening hours, importing a GeoJSON file. Everything goes through the public
// API with the secret key the person typed.
import { ApiError, allZones, badge, call, clockTime, el, storage } from "/static/common/api.js";
import { ZoneMap, formatMetres } from "/static/common/map.js";

const $ = (id) => document.getElementById(id);
const WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const POLL_MS = 2000;
// A zone with an event this recent is highlighted on the map.
const ACTIVE_MS = 5 * 60 * 1000;
const MAX_LISTED_ZONES = 300;

const state = { key: "", zones: [], selected: null, timer: null, polling: false, newestEventId: null };
const map = new ZoneMap($("map"), { onZoneClick: (id) => selectZone(id) });

function show(view) {
  $("login-view").hidden = view !== "login";
  $("app-view").hidden = view !== "app";
  $("logout").hidden = view !== "app";
}

function showError(box, error) {
  box.hidden = false;
  box.textContent = error instanceof ApiError ? error.describe() : String(error.message || error);
}

async function login(key) {
  const tenant = await call("GET", "/v1/tenant", { key });
  state.key = key;
  storage.set("sk", key);
  $("tenant-name").textContent = `${tenant.name} (${tenant.tenant_id})`;
  show("app");
  await loadZones({ fit: true });
  startPolling();
}

function logout() {
  storage.remove("sk");
  state.key = "";
  stopPolling();
  $("tenant-name").textContent = "";
  $("secret-key").value = "";
  show("login");
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").hidden = true;
  const key = $("secret-key").value.trim();
  try {
    await login(key);
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      error.message = "that key may not manage zones: the console needs the secret key (sk_…), not the SDK key";
    } else if (error instanceof ApiError && error.status === 401) {
      error.message = "unknown key";
    }
    showError($("login-error"), error);
  }
});
$("logout").addEventListener("click", logout);

// ---- zones -------------------------------------------------------------------------------

async function loadZones({ fit = false } = {}) {
  state.zones = await allZones(state.key);
  map.setZones(state.zones);
  if (fit) map.fitZones();
  const n = state.zones.length;
  $("zone-count").textContent = `${n} zone${n === 1 ? "" : "s"}`;
  renderZoneList();
  if (state.selected && !map.zoneAt(state.selected)) {
    state.selected = null;
    $("zone-panel").hidden = true;
  }
}

function renderZoneList() {
  const needle = $("zone-filter").value.trim().toLowerCase();
  const matches = state.zones.filter((z) => !needle || [z.id, z.properties.name, z.properties.store_id || ""]
    .some((text) => text.toLowerCase().includes(needle)));
  const items = matches.slice(0, MAX_LISTED_ZONES).map((z) => el("li", {
    "data-zone-id": z.id,
    class: z.id === state.selected ? "selected" : null,
    onclick: () => { selectZone(z.id); map.focusZone(z.id); },
  }, el("span", {}, z.properties.name), el("span", { class: "muted small" }, z.id)));
  if (matches.length > MAX_LISTED_ZONES) {
    items.push(el("li", { class: "muted" }, `… ${matches.length - MAX_LISTED_ZONES} more: filter to find them`));
  }
  $("zone-list").replaceChildren(...items);
}
$("zone-filter").addEventListener("input", renderZoneList);
$("fit").addEventListener("click", () => map.fitZones());

function describeShape(zone) {
  const p = zone.properties;
  if (zone.geometry.type === "Point") return `circle, ${formatMetres(p.radius_m)} radius`;
  const area = p.area_m2 >= 1e6 ? `${(p.area_m2 / 1e6).toFixed(2)} km²` : `${Math.round(p.area_m2)} m²`;
  return `${zone.geometry.type === "Polygon" ? "polygon" : "multipolygon"}, ${area}`;
}

function selectZone(id) {
  const zone = map.zoneAt(id);
  if (!zone) return;
  state.selected = id;
  map.select(id);
  renderZoneList();
  const p = zone.properties;
  $("zone-panel").hidden = false;
  $("zone-panel").dataset.zoneId = id;
  $("zone-title").textContent = p.name;
  $("zone-error").hidden = true;
  $("zone-saved").hidden = true;
  const facts = [
    ["id", id], ["store", p.store_id || "—"], ["shape", describeShape(zone)],
    ["time zone", p.timezone], ["dwell after", `${p.dwell_s} s`],
    ["updated", p.updated_at ? clockTime(p.updated_at) : "—"],
  ];
  $("zone-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const circle = zone.geometry.type === "Point";
  $("radius-row").hidden = !circle;
  $("zone-radius").value = circle ? p.radius_m : "";
  $("zone-enabled").checked = p.enabled !== false;
  const alwaysOpen = p.opening_hours === null || p.opening_hours === undefined;
  $("zone-always-open").checked = alwaysOpen;
  const hours = p.opening_hours || {};
  $("zone-hours").replaceChildren(...WEEKDAYS.flatMap((day) => [
    el("span", {}, day),
    el("input", {
      id: `hours-${day}`, "data-day": day, placeholder: "closed",
      value: (hours[day] || []).map(([a, b]) => `${a}-${b}`).join(", "),
    }),
  ]));
  $("hours-editor").hidden = alwaysOpen;
  refreshZoneEvents();
}

$("zone-always-open").addEventListener("change", () => {
  $("hours-editor").hidden = $("zone-always-open").checked;
  // Switching from "always open" to hours starts from a usual shop week, not from closed.
  if (!$("zone-always-open").checked && WEEKDAYS.every((d) => !$(`hours-${d}`).value)) {
    for (const day of WEEKDAYS.slice(0, 6)) $(`hours-${day}`).value = "08:00-20:00";
  }
});
$("zone-focus").addEventListener("click", () => state.selected && map.focusZone(state.selected));

const INTERVAL = /^\s*(\d{2}:\d{2})\s*-\s*(\d{2}:\d{2})\s*$/;

function readHours() {
  if ($("zone-always-open").checked) return null;
  const hours = {};
  for (const day of WEEKDAYS) {
    const text = $(`hours-${day}`).value.trim();
    if (!text) continue;
    hours[day] = text.split(",").map((part) => {
      const match = INTERVAL.exec(part);
      if (!match) throw new Error(`${day}: "${part.trim()}" is not HH:MM-HH:MM`);
      return [match[1], match[2]];
    });
  }
  return hours;
}

$("zone-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const zone = map.zoneAt(state.selected);
  if (!zone) return;
  $("zone-error").hidden = true;
  $("zone-saved").hidden = true;
  try {
    const properties = { ...zone.properties, enabled: $("zone-enabled").checked, opening_hours: readHours() };
    delete properties.area_m2; // computed by the service
    delete properties.updated_at;
    if (zone.geometry.type === "Point") properties.radius_m = Number($("zone-radius").value);
    else delete properties.radius_m;
    for (const name of ["store_id"]) if (properties[name] === null) delete properties[name];
    const stored = await call("PUT", `/v1/zones/${encodeURIComponent(zone.id)}`, {
      key: state.key, body: { type: "Feature", id: zone.id, geometry: zone.geometry, properties },
    });
    state.zones = state.zones.map((z) => (z.id === stored.id ? stored : z));
    map.setZones(state.zones);
    selectZone(stored.id);
    $("zone-saved").hidden = false;
    $("zone-saved").textContent = `Saved at ${clockTime(stored.properties.updated_at)}.`;
  } catch (error) {
    showError($("zone-error"), error);
  }
});

// ---- import ------------------------------------------------------------------------------

$("upload-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // the same file may be chosen again after a fix
  if (!file) return;
  const box = $("upload-result");
  box.hidden = false;
  box.className = "notice";
  box.textContent = `Importing ${file.name}…`;
  try {
    const text = await file.text();
    try {
      JSON.parse(text);
    } catch (exc) {
      throw new Error(`${file.name} is not JSON: ${exc.message}`);
    }
    const result = await call("POST", "/v1/zones/import", { key: state.key, rawBody: text });
    box.textContent = `${file.name}: ${result.created} created, ${result.updated} replaced.`;
    box.dataset.created = result.created;
    await loadZones({ fit: true });
  } catch (error) {
    box.className = "error";
    box.textContent = `${file.name}: nothing imported.\n` + (error instanceof ApiError ? error.describe() : error.message);
  }
});

// ---- events ------------------------------------------------------------------------------

function zoneName(id) {
  const zone = map.zoneAt(id);
  return zone ? zone.properties.name : id;
}

function eventRow(event, { withZone = true } = {}) {
  return el("tr", { "data-type": event.type, "data-zone-id": event.zone_id, "data-event-id": event.id },
    el("td", {}, clockTime(event.at)),
    el("td", {}, badge(event.type)),
    withZone ? el("td", { class: "zone", title: event.zone_id, onclick: () => selectZone(event.zone_id) }, zoneName(event.zone_id)) : null,
    el("td", { class: "mono", title: `device pseudonym ${event.device}` }, event.device.slice(0, 8)),
    el("td", {}, event.offer_id || ""),
  );
}

function fillTable(table, rows, emptyText) {
  const body = table.tBodies[0];
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "muted", colspan: 5 }, emptyText))]));
  table.dataset.count = String(rows.length);
}

// Returns whether anything new arrived since the last look.
async function refreshEvents() {
  const page = await call("GET", "/v1/events", { key: state.key, query: { limit: 50 } });
  const newest = page.events.length ? page.events[0].id : "";
  const changed = newest !== state.newestEventId;
  state.newestEventId = newest;
  fillTable($("events"), page.events.map((e) => eventRow(e)), "No events yet: send a ping from the simulator.");
  const now = Date.now();
  map.markActive(page.events.filter((e) => now - e.at < ACTIVE_MS).map((e) => e.zone_id));
  $("events-status").textContent = `updated ${clockTime(now)}`;
  return changed;
}

async function refreshZoneEvents() {
  const id = state.selected;
  if (!id) return;
  const page = await call("GET", "/v1/events", { key: state.key, query: { limit: 50, zone_id: id } });
  if (id !== state.selected) return;
  const offers = page.events.filter((e) => e.type.startsWith("offer_"));
  const fences = page.events.filter((e) => !e.type.startsWith("offer_"));
  fillTable($("zone-events"), fences.map((e) => eventRow(e, { withZone: false })), "No events in this zone yet.");
  fillTable($("zone-offers"), offers.map((e) => eventRow(e, { withZone: false })), "No offers issued here yet.");
}

async function poll() {
  if (!state.key || state.polling) return;
  state.polling = true;
  try {
    // A zone's own list can mean reading far back in a busy stream: only when something new
    // arrived (selecting a zone reads it at once anyway).
    if (await refreshEvents()) await refreshZoneEvents();
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      logout(); // the key was rotated
      showError($("login-error"), error);
    } else {
      $("events-status").textContent = `not updated: ${error.message}`;
    }
  } finally {
    state.polling = false;
  }
}

function startPolling() {
  stopPolling();
  poll();
  if ($("live").checked) state.timer = window.setInterval(() => !document.hidden && poll(), POLL_MS);
}

function stopPolling() {
  if (state.timer) window.clearInterval(state.timer);
  state.timer = null;
}
$("live").addEventListener("change", () => ($("live").checked ? startPolling() : stopPolling()));

// ---- start -------------------------------------------------------------------------------

const saved = storage.get("sk");
if (saved) {
  login(saved).catch(() => { storage.remove("sk"); show("login"); });
} else {
  show("login");
}

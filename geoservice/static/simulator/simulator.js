// The phone simulator: what a retailer's app does with the SDK key. Place the phone (or walk it
// along a path, or take the browser's own location) and it posts pings to /v1/pings, showing
// the enter / exit / dwell events and the offer cards as the phone would.
import { ApiError, allZones, badge, call, clockTime, el, storage } from "/static/common/api.js";
import { ZoneMap } from "/static/common/map.js";

const $ = (id) => document.getElementById(id);
const DEFAULT_CENTRE = [8.5417, 47.3769]; // Zurich, where the demo's zones are
// The service allows one ping request per device per second sustained (burst 10): a walk
// stays just under that.
const STEP_MS = 1100;
const MAX_FEED = 40;
const EARTH_RADIUS_M = 6371008.8;
const RAD = Math.PI / 180;

const state = {
  phone: null, // {lon, lat, accuracy_m}
  waypoints: [],
  walking: null, // {timer, route, leg, offset}
  sending: Promise.resolve(),
  inside: new Set(),
  zoneNames: new Map(),
};

const map = new ZoneMap($("map"), {
  onMapClick: ({ lon, lat }) => {
    if (mode() === "walk") addWaypoint(lon, lat);
    else ping(lon, lat);
  },
});
map.centreOn(DEFAULT_CENTRE, 3000);

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function showError(error) {
  const box = $("sim-error");
  if (!error) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.textContent = error instanceof ApiError ? error.describe() : String(error.message || error);
}

// ---- settings, kept for this tab -----------------------------------------------------------

function newDeviceId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return "sim-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function restore() {
  $("sdk-key").value = storage.get("pk");
  $("secret-key").value = storage.get("sk");
  $("customer-id").value = storage.get("customer");
  $("device-id").value = storage.get("device") || newDeviceId();
  storage.set("device", $("device-id").value);
}

for (const [id, name] of [["sdk-key", "pk"], ["customer-id", "customer"], ["device-id", "device"]]) {
  $(id).addEventListener("change", () => storage.set(name, $(id).value.trim()));
}
$("secret-key").addEventListener("change", () => {
  storage.set("sk", $("secret-key").value.trim());
  loadZones();
});
$("new-device").addEventListener("click", () => {
  $("device-id").value = newDeviceId();
  storage.set("device", $("device-id").value);
  state.inside.clear();
  map.markActive([]);
  $("feed").replaceChildren();
  $("phone-status").textContent = "A new phone: its first ping carries the consent";
});

async function loadZones() {
  const key = $("secret-key").value.trim();
  if (!key) return;
  try {
    const zones = await allZones(key);
    state.zoneNames = new Map(zones.map((z) => [z.id, z.properties.name]));
    map.setZones(zones);
    if (zones.length && !state.phone) map.fitZones();
    showError(null);
  } catch (error) {
    showError(error);
  }
}
$("fit").addEventListener("click", () => map.fitZones(state.phone ? [[state.phone.lon, state.phone.lat]] : []));

// ---- pings -------------------------------------------------------------------------------

function consentKey(device) {
  return `consented:${device}`;
}

// One request at a time, in order: the service ignores a ping older than the last it processed.
function ping(lon, lat, accuracy) {
  const position = { lon, lat, accuracy_m: accuracy || Number($("accuracy").value) || 10 };
  state.phone = position;
  map.setPhone(position);
  $("lat").value = lat.toFixed(6);
  $("lon").value = lon.toFixed(6);
  const sent = state.sending.then(() => send(position));
  state.sending = sent.catch(() => {});
  return sent;
}

async function send(position) {
  const key = $("sdk-key").value.trim();
  if (!key) {
    showError(new Error("enter the SDK key (pk_…) first"));
    throw new Error("no key");
  }
  storage.set("pk", key);
  const device = $("device-id").value.trim();
  const body = {
    device_id: device,
    pings: [{ lat: position.lat, lon: position.lon, accuracy_m: position.accuracy_m, ts: Date.now() }],
  };
  const customer = $("customer-id").value.trim();
  if (customer) body.customer_id = customer;
  // The app asks once: the first request of a new install carries the person's answer.
  if (!storage.get(consentKey(device))) body.consent = { location: true, marketing: true };
  try {
    const answer = await call("POST", "/v1/pings", { key, body });
    storage.set(consentKey(device), "1");
    showError(null);
    show(answer, position);
    return answer;
  } catch (error) {
    if (error instanceof ApiError && error.status === 403 && !error.problem.errors) {
      storage.remove(consentKey(device)); // send the consent again next time
    }
    if (error instanceof ApiError && error.status === 429) {
      $("phone-status").textContent = `Rate limited: the phone waits ${error.retryAfter || 1} s`;
    } else {
      showError(error);
    }
    throw error;
  }
}

function zoneLabel(id) {
  return state.zoneNames.get(id) || id;
}

const WORDS = { enter: "You are at", exit: "You left", dwell: "Still at" };

function show(answer, position) {
  for (const event of answer.events) {
    if (event.type === "enter") state.inside.add(event.zone_id);
    if (event.type === "exit") state.inside.delete(event.zone_id);
  }
  map.markActive([...state.inside]);
  const items = [];
  for (const event of answer.events) {
    items.push(el("div", { class: "notification", "data-type": event.type, "data-zone-id": event.zone_id },
      el("span", { class: "when" }, clockTime(event.at)),
      badge(event.type), " ", `${WORDS[event.type] || event.type} ${zoneLabel(event.zone_id)}`,
      event.store_id ? el("div", { class: "muted small" }, `store ${event.store_id}`) : null,
    ));
  }
  for (const offer of answer.offers) {
    const token = el("div", { class: "token", title: offer.token }, offer.token);
    items.push(el("div", { class: "offer-card", "data-offer-id": offer.offer_id, "data-token": offer.token },
      el("h3", {}, offer.title),
      offer.body ? el("div", {}, offer.body) : null,
      el("div", { class: "muted small" }, `${zoneLabel(offer.zone_id)}${offer.store_id ? ` (${offer.store_id})` : ""}, valid until ${clockTime(offer.expires_at)}`),
      token,
      el("button", {
        type: "button",
        onclick: () => navigator.clipboard && navigator.clipboard.writeText(offer.token),
      }, "Copy token for the till"),
    ));
  }
  const feed = $("feed");
  feed.prepend(...items.reverse());
  while (feed.childElementCount > MAX_FEED) feed.lastElementChild.remove();
  const ignored = answer.ignored.length ? `, ignored: ${answer.ignored.map((i) => i.reason).join(", ")}` : "";
  const inside = state.inside.size ? ` · inside ${[...state.inside].map(zoneLabel).join(", ")}` : "";
  $("phone-status").textContent =
    `${clockTime(Date.now())} ping at ${position.lat.toFixed(5)}, ${position.lon.toFixed(5)}: ` +
    `${answer.events.length} event(s), ${answer.offers.length} offer(s)${ignored}${inside}`;
  $("phone").dataset.pings = String(Number($("phone").dataset.pings || 0) + 1);
}

$("settings").addEventListener("submit", (event) => {
  event.preventDefault();
  const lat = Number($("lat").value), lon = Number($("lon").value);
  if (!Number.isFinite(lat) || !Number.isFinite(lon) || $("lat").value === "" || $("lon").value === "") {
    showError(new Error("enter a latitude and a longitude, or click the map"));
    return;
  }
  ping(lon, lat).catch(() => {});
});

$("locate").addEventListener("click", () => {
  if (!navigator.geolocation) {
    showError(new Error("this browser has no geolocation"));
    return;
  }
  $("phone-status").textContent = "Asking the browser for its location…";
  navigator.geolocation.getCurrentPosition(
    (fix) => {
      const { longitude: lon, latitude: lat, accuracy } = fix.coords;
      map.centreOn([lon, lat], Math.max(600, accuracy * 8));
      ping(lon, lat, Math.max(1, Math.round(accuracy))).catch(() => {});
    },
    (error) => showError(new Error(`no location: ${error.message}`)),
    { enableHighAccuracy: true, timeout: 10000, maximumAge: 0 },
  );
});

// ---- walking -----------------------------------------------------------------------------

function addWaypoint(lon, lat) {
  state.waypoints.push([lon, lat]);
  map.setPath(route());
  $("walk").disabled = route().length < 2;
}

function route() {
  const start = state.phone ? [[state.phone.lon, state.phone.lat]] : [];
  return [...start, ...state.waypoints];
}

function distance([lon1, lat1], [lon2, lat2]) {
  const x = (lon2 - lon1) * RAD * Math.cos(((lat1 + lat2) / 2) * RAD);
  const y = (lat2 - lat1) * RAD;
  return Math.hypot(x, y) * EARTH_RADIUS_M;
}

function stopWalking() {
  if (state.walking) window.clearTimeout(state.walking.timer);
  state.walking = null;
  $("stop").disabled = true;
  $("walk").disabled = route().length < 2;
}

function step() {
  const walk = state.walking;
  if (!walk) return;
  let todo = Number($("speed").value) * (STEP_MS / 1000);
  while (walk.leg < walk.route.length - 1) {
    const a = walk.route[walk.leg], b = walk.route[walk.leg + 1];
    const length = distance(a, b);
    if (walk.offset + todo < length) {
      walk.offset += todo;
      break;
    }
    todo -= length - walk.offset;
    walk.leg += 1;
    walk.offset = 0;
  }
  const last = walk.leg >= walk.route.length - 1;
  let position;
  if (last) {
    position = walk.route[walk.route.length - 1];
  } else {
    const a = walk.route[walk.leg], b = walk.route[walk.leg + 1];
    const t = walk.offset / Math.max(distance(a, b), 1e-9);
    position = [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t];
  }
  ping(position[0], position[1])
    .then(() => {
      if (state.walking !== walk) return;
      if (last) {
        state.waypoints = [];
        map.setPath([]);
        stopWalking();
      } else {
        walk.timer = window.setTimeout(step, STEP_MS);
      }
    })
    .catch((error) => {
      if (state.walking !== walk) return;
      if (error instanceof ApiError && error.status === 429) {
        walk.timer = window.setTimeout(step, (error.retryAfter || 1) * 1000);
      } else {
        stopWalking();
      }
    });
}

$("walk").addEventListener("click", () => {
  const points = route();
  if (points.length < 2) return;
  stopWalking();
  state.walking = { timer: null, route: points, leg: 0, offset: 0 };
  $("walk").disabled = true;
  $("stop").disabled = false;
  step();
});
$("stop").addEventListener("click", stopWalking);
$("clear-path").addEventListener("click", () => {
  stopWalking();
  state.waypoints = [];
  map.setPath([]);
  $("walk").disabled = true;
});

restore();
loadZones();

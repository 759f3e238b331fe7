// The prism-mesh page: reads the native API, follows /v1/events, travels in time.
// A token comes from the page's own URL (#token=... or ?token=...).
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token")
  || new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const $ = (selector) => document.querySelector(selector);

let selected = null;          // the service whose instances are shown
const shown = new Map();      // instance id -> instance, for the selected service

async function api(path) {
  const response = await fetch(path, { headers });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function text(value) { return value === null || value === undefined ? "-" : String(value); }

function ago(millis) {
  if (!millis) return "-";
  const seconds = Math.max(0, Math.round((Date.now() - millis) / 1000));
  if (seconds < 60) return seconds + "s ago";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m ago";
  return Math.floor(seconds / 3600) + "h ago";
}

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = text(value);
  if (className) td.className = className;
  return td;
}

async function refreshServices() {
  const { services } = await api("/v1/services");
  const body = $("#services tbody");
  body.replaceChildren();
  let total = 0;
  for (const service of services) {
    total += service.instances;
    const row = body.insertRow();
    row.dataset.service = service.name;
    if (service.name === selected) row.className = "selected";
    cell(row, service.name);
    cell(row, service.instances);
    cell(row, Object.entries(service.by_status).map(([s, n]) => n + " " + s).join(", "));
    row.onclick = () => select(service.name);
  }
  $("#no-services").hidden = services.length > 0;
  $("#totals").textContent = services.length + " services, " + total + " instances";
}

function renderInstances() {
  const body = $("#instances tbody");
  body.replaceChildren();
  const instances = [...shown.values()].sort((a, b) => a.id.localeCompare(b.id));
  for (const i of instances) {
    const row = body.insertRow();
    row.dataset.instanceId = i.id;
    cell(row, i.id.slice(0, 8)).title = i.id;
    cell(row, i.url);
    cell(row, i.status, "status-" + i.status);
    cell(row, i.zone);
    cell(row, i.weight);
    cell(row, (i.tags || []).join(", "));
    cell(row, ago(i.registered_at));
    cell(row, ago(i.last_heartbeat));
  }
  $("#instances").hidden = false;
  $("#pick-hint").hidden = true;
  $("#instances-title").textContent = "Instances of " + selected + " (" + instances.length + ")";
}

async function select(service) {
  selected = service;
  for (const row of document.querySelectorAll("#services tbody tr")) {
    row.className = row.dataset.service === service ? "selected" : "";
  }
  const { instances } = await api("/v1/services/" + encodeURIComponent(service));
  shown.clear();
  for (const i of instances) shown.set(i.id, i);
  renderInstances();
}

let pending = null;
function refreshSoon() {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    try { await refreshServices(); } catch (e) { console.warn(e); }
  }, 150);
}

function onEvent(message) {
  const event = JSON.parse(message.data);
  const line = document.createElement("li");
  const when = new Date(event.stored_at).toLocaleTimeString();
  line.textContent = when + "  " + event.event + "  " + event.service + "/" + event.instance.id.slice(0, 8)
    + (event.reason ? "  (" + event.reason + ")" : "");
  $("#events").prepend(line);
  while ($("#events").children.length > 200) $("#events").lastChild.remove();
  // The event carries the instance: the table changes at once, without a round trip.
  if (event.service === selected) {
    if (event.event === "deregistered" || event.event === "expired") {
      shown.delete(event.instance.id);
    } else {
      const known = shown.get(event.instance.id);
      shown.set(event.instance.id, { ...event.instance, last_heartbeat: known ? known.last_heartbeat : event.stored_at });
    }
    renderInstances();
  }
  refreshSoon();
}

function follow() {
  const url = "/v1/events" + (token ? "?token=" + encodeURIComponent(token) : "");
  const source = new EventSource(url);
  for (const kind of ["registered", "updated", "status", "deregistered", "expired"]) {
    source.addEventListener(kind, onEvent);
  }
  source.onopen = () => { $("#connection").textContent = "live"; $("#connection").className = "badge live"; refreshSoon(); };
  source.onerror = () => { $("#connection").textContent = "reconnecting…"; $("#connection").className = "badge down"; };
}

function describe(instance) {
  return instance.service + "/" + instance.id.slice(0, 8) + " " + instance.url + " " + instance.status;
}

async function travel() {
  const offset = Number($("#slider").value);
  const label = $("#slider-label");
  const result = $("#travel-result");
  if (offset === 0) { label.textContent = "now"; result.textContent = "The live registry is shown above."; return; }
  const t = Date.now() + offset * 1000;
  label.textContent = "at " + new Date(t).toLocaleString();
  result.textContent = "reading the audit trail…";
  try {
    const [past, diff] = await Promise.all([api("/v1/at?t=" + t), api("/v1/diff?from=" + t)]);
    result.replaceChildren();
    const heading = document.createElement("p");
    heading.textContent = past.instances + " instances then; since then "
      + diff.added.length + " added, " + diff.removed.length + " removed, " + diff.changed.length + " changed.";
    result.append(heading);
    const list = document.createElement("ul");
    for (const [service, instances] of Object.entries(past.services)) {
      const item = document.createElement("li");
      item.textContent = service + ": " + instances.map((i) => i.host + ":" + i.port + " " + i.status).join(", ");
      list.append(item);
    }
    result.append(list);
    const changes = document.createElement("ul");
    const add = (cls, prefix, text) => { const li = document.createElement("li"); li.className = cls; li.textContent = prefix + text; changes.append(li); };
    for (const i of diff.added) add("added", "+ ", describe(i));
    for (const i of diff.removed) add("removed", "- ", describe(i));
    for (const c of diff.changed) add("changed", "~ ", describe(c.before) + "  ->  " + c.after.status);
    result.append(changes);
  } catch (e) {
    result.textContent = "could not read the past: " + e.message;
  }
}

$("#slider").addEventListener("change", travel);
$("#slider").addEventListener("input", () => {
  const offset = Number($("#slider").value);
  $("#slider-label").textContent = offset === 0 ? "now" : "at " + new Date(Date.now() + offset * 1000).toLocaleString();
});
$("#range").addEventListener("change", () => { $("#slider").min = -Number($("#range").value); travel(); });
setInterval(() => { refreshSoon(); if (selected) select(selected).catch(() => {}); }, 5000);

refreshServices().then(() => {
  const first = document.querySelector("#services tbody tr");
  if (first && !selected) select(first.dataset.service);
}).catch((e) => { $("#connection").textContent = "error: " + e.message; $("#connection").className = "badge down"; });
follow();

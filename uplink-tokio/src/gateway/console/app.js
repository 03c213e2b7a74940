"use strict";
// The gateway's console: plain DOM, no library. Text from sleds is only ever set as textContent.
const $ = (s) => document.querySelector(s);
let me = null;
let events = null;

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (me && method !== "GET") headers["x-csrf-token"] = me.csrf;
  const r = await fetch(path, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { data = null; }
  if (!r.ok) {
    if (r.status === 401 && path !== "/console/session") signedOut();
    throw new Error((data && data.error) || ("HTTP " + r.status));
  }
  return data;
}

function say(text) { $("#notice").textContent = text; }

function ago(ms) {
  const s = Math.floor((ms || 0) / 1000);
  return s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min" : Math.floor(s / 3600) + " h";
}

// A tool input as a person reads it: a command, a diff, a file excerpt, or JSON; long ones folded.
function renderInput(tool, input) {
  const box = el("div");
  if (input && typeof input.command === "string") {
    box.append(el("pre", { class: "command" }, el("code", { text: input.command })));
  } else if (input && typeof input.old_string === "string" && typeof input.new_string === "string") {
    box.append(el("div", { class: "meta", text: input.file_path || "" }));
    const pre = el("pre", { class: "diff" });
    for (const l of input.old_string.split("\n")) pre.append(el("span", { class: "del", text: "- " + l + "\n" }));
    for (const l of input.new_string.split("\n")) pre.append(el("span", { class: "add", text: "+ " + l + "\n" }));
    box.append(pre);
  } else if (input && typeof input.content === "string") {
    box.append(el("div", { class: "meta", text: input.file_path || "" }));
    box.append(folded(input.content));
  } else {
    box.append(folded(JSON.stringify(input, null, 2)));
  }
  return box;
}

function folded(text) {
  if (text.length <= 600) return el("pre", { text });
  const d = el("details");
  d.append(el("summary", { text: text.slice(0, 120).replace(/\n/g, " ") + " … (" + text.length + " characters)" }));
  d.append(el("pre", { text }));
  return d;
}

function decide(id, body) {
  api("POST", "/api/permissions/" + encodeURIComponent(id), body)
    .then((r) => say(id + " " + r.decision + " by " + r.by + (r.rule ? " (rule " + r.rule + " made)" : "")))
    .catch((e) => say(id + ": " + e.message))
    .finally(refresh);
}

// The time left before each request's sled denies it, counting down.
function tick() {
  for (const t of document.querySelectorAll("[data-deadline]")) {
    const left = Math.max(0, Math.round((Number(t.dataset.deadline) - Date.now()) / 1000));
    t.textContent = left > 0 ? "decide within " + (left < 60 ? left + " s" : Math.floor(left / 60) + " min " + (left % 60) + " s") : "its sled has denied it";
  }
}
setInterval(tick, 1000);

function card(p) {
  const li = el("li", { class: "card", "data-id": p.id });
  const meta = el("div", { class: "meta", text: p.project + " · " + p.tool_name + " · waiting " + ago(p.age_ms) + " · " + p.id + " · " });
  if (p.deadline_in_ms != null) meta.append(el("span", { class: "deadline", "data-deadline": String(Date.now() + p.deadline_in_ms) }));
  li.append(meta);
  li.append(renderInput(p.tool_name, p.tool_input));
  if (me && me.role !== "viewer") {
    const message = el("input", { type: "text", placeholder: "Words for the agent (optional)", "aria-label": "Message for the agent" });
    const scope = el("select", { "aria-label": "Always allow where" },
      el("option", { value: "project", text: "this project" }),
      el("option", { value: "connection", text: "this connection" }),
      el("option", { value: "everywhere", text: "every project" }));
    const actions = el("div", { class: "actions" },
      el("button", { type: "button", class: "approve", onclick: () => decide(p.id, { approved: true, message: message.value || undefined }), text: "Approve" }),
      el("button", { type: "button", class: "deny", onclick: () => decide(p.id, { approved: false, message: message.value || undefined }), text: "Deny" }));
    if (p.suggested_rule) {
      actions.append(el("button", { type: "button", onclick: () => decide(p.id, { approved: true, always_allow: true, scope: scope.value }), text: "Always allow " + p.suggested_rule }), scope);
    }
    li.append(message, actions);
  }
  return li;
}

async function refresh() {
  if (!me) return;
  try {
    const [perms, sleds] = await Promise.all([api("GET", "/api/permissions"), api("GET", "/api/sleds")]);
    const list = $("#pending-list");
    list.replaceChildren(...perms.permissions.map(card));
    tick();
    $("#pending-empty").hidden = perms.permissions.length > 0;
    $("#sled-rows").replaceChildren(...sleds.sleds.map((s) => el("tr", {},
      el("td", { text: s.project }), el("td", { text: s.connected ? (s.stale ? "stale" : "connected") : "gone" }),
      el("td", { text: s.connected ? ago(s.connected_for_ms) : "" }), el("td", { text: String(s.pending_permissions) }))));
    const rules = await api("GET", "/api/rules");
    $("#rule-rows").replaceChildren(...rules.rules.map((r) => el("tr", {},
      el("td", { text: String(r.id) }), el("td", { text: r.effect }), el("td", { text: r.pattern }),
      el("td", { text: r.connection != null ? "connection " + r.connection : r.project || (r.projects || ["every project"]).join(", ") }),
      el("td", { text: r.author }))));
    const audit = await api("GET", "/api/audit?limit=50").catch(() => ({ records: [] }));
    $("#audit-rows").replaceChildren(...audit.records.reverse().map((x) => { const r = x.record; return el("tr", {},
      el("td", { text: String(r.seq) }), el("td", { text: new Date(r.at_ms).toLocaleString() }), el("td", { text: r.kind }),
      el("td", { text: r.project || "" }), el("td", { text: r.tool || "" }), el("td", { text: r.outcome || "" }),
      el("td", { text: r.by || (r.rule != null ? "rule " + r.rule : "") })); }));
  } catch (e) { say(e.message); }
}

function listen() {
  if (events) events.close();
  events = new EventSource("/api/events");
  const ended = (verb) => (ev) => {
    const d = JSON.parse(ev.data);
    const by = d.by ? " by " + d.by : d.reason ? " (" + d.reason + ")" : "";
    say(d.id + " " + (d.decision || verb) + by);
    const gone = document.querySelector('[data-id="' + CSS.escape(d.id) + '"]');
    if (gone) gone.remove();
    refresh();
  };
  events.addEventListener("permission_requested", refresh);
  events.addEventListener("permission_decided", ended("decided"));
  events.addEventListener("permission_withdrawn", ended("withdrawn"));
  for (const e of ["sled_connected", "sled_disconnected", "sled_stale", "sled_alive", "rule_added", "rule_removed", "permission_auto_decided"]) {
    events.addEventListener(e, refresh);
  }
  events.addEventListener("lagged", () => { events.close(); setTimeout(listen, 1000); });
}

function signedIn(who) {
  me = who;
  $("#who").textContent = who.name + " (" + who.role + ")";
  $("#sign-out").hidden = false;
  $("#sign-in-view").hidden = true;
  $("#console-view").hidden = false;
  listen();
  refresh();
}

function signedOut() {
  me = null;
  if (events) events.close();
  // Nothing of the session stays on the page.
  for (const id of ["#pending-list", "#sled-rows", "#rule-rows", "#audit-rows"]) $(id).replaceChildren();
  say("");
  $("#who").textContent = "";
  $("#sign-out").hidden = true;
  $("#console-view").hidden = true;
  $("#sign-in-view").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in").addEventListener("submit", (ev) => {
    ev.preventDefault();
    api("POST", "/console/session", { token: $("#token").value })
      .then((who) => { $("#token").value = ""; $("#sign-in-error").textContent = ""; signedIn(who); })
      .catch((e) => { $("#sign-in-error").textContent = e.message; });
  });
  $("#sign-out").addEventListener("click", () => api("DELETE", "/console/session").finally(signedOut));
  for (const b of document.querySelectorAll("nav button")) {
    b.addEventListener("click", () => {
      for (const o of document.querySelectorAll("nav button")) o.setAttribute("aria-pressed", String(o === b));
      for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== b.dataset.view;
    });
  }
  api("GET", "/console/session").then(signedIn).catch(signedOut);
});

"use strict";
// The gateway's console: plain DOM, no library. Text from sleds is only ever set as textContent.
const $ = (s) => document.querySelector(s);
let me = null;
let events = null;
// Whether the page's event stream is open: while it is not, what the page shows may be out of date, and it
// says so rather than "Nothing is waiting".
let linkUp = false;
let retry = null;

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
    if (r.status === 401 && path !== "/console/session") signedOut(true);
    const e = new Error((data && data.error) || ("HTTP " + r.status));
    e.status = r.status;
    e.data = data;
    throw e;
  }
  return data;
}

function say(text) { $("#notice").textContent = text; }

function ago(ms) {
  const s = Math.floor((ms || 0) / 1000);
  return s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min" : Math.floor(s / 3600) + " h";
}

// What one request can put on the page is bounded, and each card is drawn on its own: whatever one request
// holds, the others are shown and can be decided. An input is shown to SHOW_DEPTH levels (the gateway's own
// limit, wire::MAX_INPUT_DEPTH: it refuses deeper ones) and SHOW_CHARS characters; past either, it is folded
// with a note. Names (project, tool, path) are cut at SHOW_NAME characters.
const SHOW_DEPTH = 64;
const SHOW_CHARS = 65536;
const SHOW_NAME = 200;
// A line of the agent's own words or a URL: longer is cut, with a mark.
const SHOW_TEXT = 2000;
const WHOLE = "uplink permissions ls --json prints it whole";

function count(n) { return n.toLocaleString("en"); }

// `text` (any value, as text) cut to `limit` characters, marked when cut.
function clip(text, limit) {
  const s = String(text);
  return s.length <= limit ? s : s.slice(0, limit) + "…";
}

// `text` cut to SHOW_CHARS, and the note saying so (or null).
function bounded(text) {
  if (text.length <= SHOW_CHARS) return [text, null];
  return [text.slice(0, SHOW_CHARS), "Only the first " + count(SHOW_CHARS) + " of its " + count(text.length) + " characters are shown; " + WHOLE + "."];
}

// A note under a part of a card, or nothing (an empty text: `append` would write a null out as "null").
function note(text) { return text ? el("p", { class: "note", text }) : ""; }

// `value` as indented JSON, never deeper than SHOW_DEPTH levels nor longer than SHOW_CHARS characters: what
// lies deeper is written […] or {…}, what lies beyond is left out. Its notes say which.
function pretty(value) {
  const parts = [];
  let size = 0;
  let deep = false;
  let cut = false;
  const put = (s) => {
    if (s.length > SHOW_CHARS - size) {
      cut = true;
      s = s.slice(0, SHOW_CHARS - size);
    }
    parts.push(s);
    size += s.length;
  };
  const scalar = (v) => (typeof v === "string" ? JSON.stringify(v.length > SHOW_CHARS ? v.slice(0, SHOW_CHARS) : v) : String(JSON.stringify(v)));
  const walk = (v, indent, depth) => {
    if (v === null || typeof v !== "object") return put(scalar(v));
    const list = Array.isArray(v);
    const keys = list ? null : Object.keys(v);
    const n = list ? v.length : keys.length;
    if (n === 0) return put(list ? "[]" : "{}");
    if (depth >= SHOW_DEPTH) {
      deep = true;
      return put(list ? "[…]" : "{…}");
    }
    put(list ? "[" : "{");
    const inner = indent + "  ";
    for (let i = 0; i < n && !cut; i++) {
      put((i ? ",\n" : "\n") + inner);
      if (!list) put(JSON.stringify(keys[i]) + ": ");
      walk(list ? v[i] : v[keys[i]], inner, depth + 1);
    }
    put("\n" + indent + (list ? "]" : "}"));
  };
  walk(value, "", 0);
  const notes = [];
  if (deep) notes.push("Parts nested deeper than " + SHOW_DEPTH + " levels are folded ([…], {…}); " + WHOLE + ".");
  if (cut) notes.push("Only the first " + count(SHOW_CHARS) + " characters are shown; " + WHOLE + ".");
  return [parts.join(""), notes];
}

// A tool input as a person reads it: a command, a diff, a file excerpt, or JSON; long ones folded.
function renderInput(tool, input) {
  const box = el("div", { class: "input" });
  // The agent's own words for the call (Claude Code's `description`), above what it would run.
  if (input && typeof input.description === "string" && input.description) {
    box.append(el("p", { class: "description", text: clip(input.description, SHOW_TEXT) }));
  }
  if (input && typeof input.command === "string") {
    const [text, cut] = bounded(input.command);
    box.append(el("pre", { class: "command" }, el("code", { text })), note(cut));
  } else if (input && typeof input.url === "string") {
    // A fetch: where, and what the agent wants from it.
    box.append(el("div", { class: "url" }, el("code", { text: clip(input.url, SHOW_TEXT) })));
    if (typeof input.prompt === "string") {
      const [text, cut] = bounded(input.prompt);
      box.append(el("p", { class: "prompt", text }), note(cut));
    }
  } else if (input && typeof input.old_string === "string" && typeof input.new_string === "string") {
    box.append(el("div", { class: "meta", text: clip(input.file_path || "", SHOW_NAME) }));
    const [before, cutBefore] = bounded(input.old_string);
    const [after, cutAfter] = bounded(input.new_string);
    const pre = el("pre", { class: "diff" });
    for (const l of before.split("\n")) pre.append(el("span", { class: "del", text: "- " + l + "\n" }));
    for (const l of after.split("\n")) pre.append(el("span", { class: "add", text: "+ " + l + "\n" }));
    box.append(pre, note(cutBefore), note(cutAfter));
  } else if (input && typeof input.content === "string") {
    box.append(el("div", { class: "meta", text: clip(input.file_path || "", SHOW_NAME) }));
    const [text, cut] = bounded(input.content);
    box.append(folded(text, input.content.length), note(cut));
  } else {
    const [text, notes] = pretty(input);
    box.append(folded(text, text.length), ...notes.map(note));
  }
  return box;
}

// `text` (of `total` characters whole) in a block, folded behind its first line when long.
function folded(text, total) {
  if (text.length <= 600) return el("pre", { text });
  const d = el("details");
  d.append(el("summary", { text: text.slice(0, 120).replace(/\n/g, " ") + " … (" + count(total) + " characters)" }));
  d.append(el("pre", { text }));
  return d;
}

// Where an "always allow" applies, in words.
const WHERE = { connection: "from this sled's connection", project: "in this project", everywhere: "in every project" };

// True for a grant that needs a second click: one for every project, one with a wildcard (`Bash(terraform
// apply *)`), or one for a whole tool (`WebFetch`).
function broad(rule, scope) {
  return scope === "everywhere" || rule.includes("*") || !rule.includes("(");
}

// A request, as a notice names it: its tool and project (from its card), then its id.
function named(id) {
  const card = document.querySelector('#pending-list [data-id="' + CSS.escape(id) + '"]');
  return card && card.dataset.tool ? card.dataset.tool + " in " + card.dataset.project + " (" + id + ")" : id;
}
const DONE = { approve: "approved", deny: "denied", always_allow: "always allowed" };
const WHY = { deadline: "its sled's deadline passed", cancelled: "withdrawn by its sled", connection_lost: "its sled went away" };

function decide(id, body) {
  const what = named(id);
  api("POST", "/api/permissions/" + encodeURIComponent(id), body)
    .then((r) => say(what + ": " + (DONE[r.decision] || r.decision) + " by " + r.by + (r.rule ? " (rule " + r.rule + " made)" : "") +
      (r.sled_away ? "; its sled is away: the decision is kept and sent when it comes back" : "")))
    .catch((e) => say(what + ": " + e.message))
    .finally(() => refresh().then(() => {
      // The decided card is gone: the next one takes the focus, so that a keyboard goes on from there.
      if (document.activeElement === document.body || !document.activeElement) {
        const next = document.querySelector("#pending-list .card button");
        if (next) next.focus();
      }
    }));
}

// The time left before each request's sled denies it, counting down.
// How long each request has waited, and the time left before its sled denies it, both counting; a request
// with less than URGENT_S left is marked urgent.
const URGENT_S = 30;
function tick() {
  for (const t of document.querySelectorAll("[data-since]")) {
    t.textContent = "waiting " + ago(Date.now() - Number(t.dataset.since));
  }
  for (const card of document.querySelectorAll("#pending-list .card")) {
    const d = card.querySelector("[data-deadline]");
    const left = d ? (Number(d.dataset.deadline) - Date.now()) / 1000 : Infinity;
    card.classList.toggle("urgent", left < URGENT_S);
  }
  for (const t of document.querySelectorAll("[data-deadline]")) {
    const left = Math.max(0, Math.round((Number(t.dataset.deadline) - Date.now()) / 1000));
    t.textContent = left > 0 ? "decide within " + (left < 60 ? left + " s" : Math.floor(left / 60) + " min " + (left % 60) + " s") : "its sled has denied it";
  }
}
setInterval(tick, 1000);

function card(p) {
  const li = el("li", { class: "card", "data-id": p.id, "data-tool": clip(p.tool_name, SHOW_NAME), "data-project": clip(p.project, SHOW_NAME) });
  const meta = el("div", { class: "meta", text: clip(p.project, SHOW_NAME) + " · " + clip(p.tool_name, SHOW_NAME) + " · " });
  meta.append(el("span", { class: "age", "data-since": String(Date.now() - (p.age_ms || 0)), text: "waiting " + ago(p.age_ms) }));
  meta.append(" · " + p.id + " · ");
  if (p.deadline_in_ms != null) meta.append(el("span", { class: "deadline", "data-deadline": String(Date.now() + p.deadline_in_ms) }));
  li.append(meta);
  // Its sled's link dropped: the request is held for the sled's return; a decision made now is kept until then.
  if (p.sled_away) {
    li.append(el("p", { class: "away", text: p.decided
      ? "Its sled is away. Decided (" + p.decided + "): sent when the sled comes back, and never if it does not."
      : "Its sled is away; it may come back. A decision made now is sent when it does." }));
  }
  li.append(renderInput(p.tool_name, p.tool_input));
  if (me && me.role !== "viewer" && !p.decided) {
    // Enter in the words for the agent denies with them (the safe way: it never approves); with no words it
    // does nothing.
    const message = el("input", { type: "text", placeholder: "Words for the agent (optional)", "aria-label": "Message for the agent",
      onkeydown: (ev) => {
        if (ev.key === "Enter" && message.value.trim()) { ev.preventDefault(); decide(p.id, { approved: false, message: message.value }); }
      } });
    const scope = el("select", { "aria-label": "Always allow where" },
      el("option", { value: "project", text: "this project" }),
      el("option", { value: "connection", text: "this connection" }),
      el("option", { value: "everywhere", text: "every project" }));
    const actions = el("div", { class: "actions" },
      el("button", { type: "button", class: "approve", onclick: () => decide(p.id, { approved: true, message: message.value || undefined }), text: "Approve" }),
      el("button", { type: "button", class: "deny", onclick: () => decide(p.id, { approved: false, message: message.value || undefined }), text: "Deny" }));
    if (p.suggested_rule) {
      const always = el("button", { type: "button", class: "always", text: "Always allow " + p.suggested_rule });
      always.addEventListener("click", () => {
        // A broad grant (every project, a wildcard, or a whole tool) takes a second, deliberate click, and
        // says first exactly what it will allow.
        if (broad(p.suggested_rule, scope.value) && always.dataset.armed !== "1") {
          always.dataset.armed = "1";
          always.classList.add("confirm");
          always.textContent = "Confirm: from now on approve every " + p.suggested_rule + " call " + WHERE[scope.value] + ", without asking";
          setTimeout(() => { always.dataset.armed = ""; always.classList.remove("confirm"); always.textContent = "Always allow " + p.suggested_rule; }, 8000);
          return;
        }
        decide(p.id, { approved: true, always_allow: true, scope: scope.value });
      });
      actions.append(always, scope);
    }
    li.append(message, actions);
  }
  return li;
}

// A request's card, or, when it cannot be drawn, one that says so: only a denial is offered for what cannot
// be seen. Either way the other cards are drawn.
function cardOrNote(p) {
  try {
    return card(p);
  } catch (e) {
    const id = p && typeof p.id === "string" ? p.id : "";
    const li = el("li", { class: "card unshown", "data-id": id });
    li.append(el("div", { class: "meta", text: clip(p && p.project, SHOW_NAME) + " · " + clip(p && p.tool_name, SHOW_NAME) + " · " + id }));
    li.append(el("p", { class: "error", text: "This request cannot be shown here (" + clip(e && e.message, SHOW_NAME) + "); " + WHOLE + "." }));
    if (me && me.role !== "viewer" && id) {
      li.append(el("div", { class: "actions" }, el("button", { type: "button", class: "deny", onclick: () => decide(id, { approved: false }), text: "Deny" })));
    }
    return li;
  }
}

// The list of requests drawn again from a listing, keeping the card of each request that has not changed
// where it is: what a person is typing in it, the focus, a confirmation under way survive every redraw (one
// comes with each event). Only new or changed requests get new cards; ended ones go.
function redraw(list, permissions) {
  const kept = new Map([...list.children].map((li) => [li.dataset.key, li]));
  const cards = permissions.map((p) => {
    const key = JSON.stringify([p && p.id, p && p.decided, !!(p && p.sled_away), me && me.role]);
    const old = kept.get(key);
    if (old) { kept.delete(key); return old; }
    const li = cardOrNote(p);
    li.dataset.key = key;
    return li;
  });
  for (const gone of kept.values()) gone.remove();
  // In place: a card already where it belongs is never taken out (which would take its focus away).
  cards.forEach((li, i) => { if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null); });
}

// Each part of the page is refreshed on its own: one that fails leaves the others drawn.
async function refresh() {
  if (!me) return;
  const part = (draw) => draw().catch((e) => say(e.message));
  await Promise.all([
    part(async () => {
      const perms = await api("GET", "/api/permissions");
      redraw($("#pending-list"), perms.permissions);
      tick();
      // In a cluster, nodes that did not answer: what they hold is not shown, and the page says so.
      const missing = perms.unreachable_nodes || [];
      setPartial(missing);
      $("#pending-empty").hidden = perms.permissions.length > 0 || !linkUp || missing.length > 0;
    }),
    part(async () => {
      const sleds = await api("GET", "/api/sleds");
      $("#sled-rows").replaceChildren(...sleds.sleds.map((s) => el("tr", {},
        el("td", { text: clip(s.project, SHOW_NAME) }), el("td", { text: s.connected ? (s.stale ? "stale" : "connected") : "gone" }),
        el("td", { text: s.connected ? ago(s.connected_for_ms) : "" }), el("td", { text: String(s.pending_permissions) }))));
    }),
    part(async () => {
      const rules = await api("GET", "/api/rules");
      $("#rule-rows").replaceChildren(...rules.rules.map((r) => el("tr", {},
        el("td", { text: String(r.id) }), el("td", { text: r.effect }), el("td", { text: r.pattern }),
        el("td", { text: r.connection != null ? "connection " + r.connection : r.project || (r.projects || ["every project"]).join(", ") }),
        el("td", { text: r.author }))));
    }),
    part(async () => {
      const audit = await api("GET", "/api/audit?limit=50").catch(() => ({ records: [] }));
      $("#audit-rows").replaceChildren(...audit.records.reverse().map((x) => { const r = x.record; return el("tr", {},
        el("td", { text: r.chain ? r.chain + ":" + r.seq : String(r.seq) }), el("td", { text: new Date(r.at_ms).toLocaleString() }), el("td", { text: r.kind }),
        el("td", { text: clip(r.project || "", SHOW_NAME) }), el("td", { text: clip(r.tool || "", SHOW_NAME) }), el("td", { text: r.outcome || "" }),
        el("td", { text: r.by || ruleText(r.rule) })); }));
    }),
  ]);
}

// A record's rule: its id, or (for a rule added) its id, effect and pattern.
function ruleText(rule) {
  if (rule == null) return "";
  if (typeof rule === "object") return "rule " + rule.id + ": " + rule.effect + " " + clip(String(rule.pattern), SHOW_NAME);
  return "rule " + rule;
}

// The link's state, on the page: connected, or reconnecting (the list may be out of date meanwhile).
function setLink(up) {
  linkUp = up;
  $("#link").textContent = up ? "connected" : "reconnecting… (what is shown may be out of date)";
  $("#link").dataset.state = up ? "up" : "down";
  document.body.dataset.link = up ? "up" : "down";
  if (!up) $("#pending-empty").hidden = true;
}

// Nodes of the cluster whose requests the page could not list.
function setPartial(missing) {
  if (!linkUp) return;
  const some = missing.length > 0;
  $("#link").textContent = some
    ? "connected; " + (missing[0] === 0 ? "the other gateway nodes could not be listed" : "gateway node " + missing.join(", ") + " did not answer") + ": what it holds is not shown"
    : "connected";
  $("#link").dataset.state = some ? "partial" : "up";
}

function listen() {
  if (events) events.close();
  clearTimeout(retry);
  events = new EventSource("/api/events");
  // (Re)connected: list everything again, since events may have been missed.
  events.addEventListener("open", () => { setLink(true); refresh(); });
  events.addEventListener("error", () => {
    setLink(false);
    // The browser retries a stream that broke by itself; one refused (a gateway that no longer knows this
    // session answers 401) it gives up: then ask whether the session still stands.
    if (events.readyState !== EventSource.CLOSED) return;
    retry = setTimeout(() => {
      api("GET", "/console/session")
        .then(() => { if (me) listen(); })
        .catch((e) => { if (e.status === 401) signedOut(true); else if (me) listen(); });
    }, 1000);
  });
  const ended = (verb) => (ev) => {
    const d = JSON.parse(ev.data);
    const how = d.decision ? (DONE[d.decision] || d.decision) + (d.by ? " by " + d.by : "") + (d.held ? " (kept until its sled is back)" : "")
      : d.reason ? (WHY[d.reason] || d.reason) : verb;
    say(named(d.id) + ": " + how);
    const gone = document.querySelector('[data-id="' + CSS.escape(d.id) + '"]');
    if (gone) gone.remove();
    refresh();
  };
  events.addEventListener("permission_requested", refresh);
  events.addEventListener("permission_decided", ended("decided"));
  events.addEventListener("permission_withdrawn", ended("withdrawn"));
  events.addEventListener("permission_delivered", ended("delivered to its sled"));
  for (const e of ["sled_connected", "sled_disconnected", "sled_stale", "sled_alive", "rule_added", "rule_removed", "permission_auto_decided", "permission_held", "permission_resumed"]) {
    events.addEventListener(e, refresh);
  }
  events.addEventListener("lagged", () => { events.close(); setTimeout(listen, 1000); });
  // A node of the cluster whose events stopped: list again now, and stream again in a while (from the nodes
  // that are live then).
  events.addEventListener("node_unreachable", () => { refresh(); clearTimeout(retry); retry = setTimeout(listen, 5000); });
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

// `ended`: the session ended without the person signing out (a restart that forgot it, its time ran out).
function signedOut(ended) {
  const was = me;
  me = null;
  clearTimeout(retry);
  if (events) events.close();
  events = null;
  $("#link").textContent = "";
  $("#link").dataset.state = "";
  // Nothing of the session stays on the page.
  for (const id of ["#pending-list", "#sled-rows", "#rule-rows", "#audit-rows"]) $(id).replaceChildren();
  say("");
  $("#who").textContent = "";
  $("#sign-out").hidden = true;
  $("#console-view").hidden = true;
  $("#sign-in-view").hidden = false;
  if (ended === true && was) $("#sign-in-error").textContent = "Your session ended: sign in again.";
  // Whether the gateway also signs people in at the organisation's identity provider.
  fetch("/console/session", { credentials: "same-origin" })
    .then((r) => r.json())
    .then((d) => { $("#sso").hidden = !(d && d.oidc === true); })
    .catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in").addEventListener("submit", (ev) => {
    ev.preventDefault();
    api("POST", "/console/session", { token: $("#token").value })
      .then((who) => { $("#token").value = ""; $("#sign-in-error").textContent = ""; signedIn(who); })
      .catch((e) => { $("#sign-in-error").textContent = e.message; });
  });
  $("#sign-out").addEventListener("click", () => api("DELETE", "/console/session").finally(() => signedOut(false)));
  for (const b of document.querySelectorAll("nav button")) {
    b.addEventListener("click", () => {
      for (const o of document.querySelectorAll("nav button")) o.setAttribute("aria-pressed", String(o === b));
      for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== b.dataset.view;
    });
  }
  api("GET", "/console/session").then(signedIn).catch(() => signedOut(false));
});

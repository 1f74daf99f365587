// wfe web console: the protocol wfe.console.v1 over the websocket of the page's own origin,
// URL routes, lists with a detail pane, keyboard navigation. Plain JavaScript, no build step,
// nothing loaded from elsewhere. Text from the engine is always put in the page with
// textContent, never as HTML. The views themselves are in views.js, the drawings in draw.js.
"use strict";

const PROTOCOL = "wfe.console.v1";
const TOKEN_KEY = "wfe.token";
const PAGE = 100;
const $ = (id) => document.getElementById(id);

const state = {
  ws: null, nextId: 1, pending: new Map(), streams: new Map(),
  role: null, ops: new Set(), tab: "jobs", open: null, tail: null, dirty: false, busy: false,
  inbox: Promise.resolve(), lifecycle: {}, offsets: { jobs: 0, requests: 0, search: 0 },
  timers: [], retry: null,
};

function message(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
  $("banner").hidden = !error || !text;
  $("banner").textContent = error ? text : "";
}

function call(op, args = {}) {
  return new Promise((resolve, reject) => {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { reject(new Error("not connected")); return; }
    const id = state.nextId++;
    state.pending.set(id, { resolve, reject });
    state.ws.send(JSON.stringify({ id, op, args }));
  });
}

// Events of a compressed subscription come as binary messages: 4 bytes of stream id, then
// the zlib-compressed JSON array of events. Decompressing is asynchronous, so every message
// goes through one promise chain: frames are handled in the order the engine sent them.
async function decode(data) {
  if (typeof data === "string") return JSON.parse(data);
  const stream = new DataView(data).getUint32(0);
  const inflated = new Blob([data.slice(4)]).stream().pipeThrough(new DecompressionStream("deflate"));
  return { stream, events: JSON.parse(await new Response(inflated).text()) };
}

function onMessage(event) {
  state.inbox = state.inbox.then(() => decode(event.data)).then(onFrame)
    .catch((err) => message(`bad message from the engine: ${err.message}`, true));
}

function onFrame(frame) {
  if ("stream" in frame && !("ok" in frame)) {
    const handler = state.streams.get(frame.stream);
    if (handler) handler(frame);
    return;
  }
  const waiter = state.pending.get(frame.id);
  if (!waiter) return;
  state.pending.delete(frame.id);
  if (frame.ok) waiter.resolve(frame.result);
  else waiter.reject(new Error(`${frame.error.code}: ${frame.error.message}`));
}

function setStatus(text, good) {
  $("status").textContent = text;
  $("status").className = `status ${good ? "ok" : "bad"}`;
}

function connect(token) {
  clearTimeout(state.retry);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/`);
  state.ws = ws;
  setStatus("connecting", false);
  ws.binaryType = "arraybuffer";
  ws.onmessage = onMessage;
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
    for (const waiter of state.pending.values()) waiter.reject(new Error("disconnected"));
    state.pending.clear();
    state.streams.clear();
    state.tail = null;
    if (e.code === 4401) { setStatus("not signed in", false); signOut(""); return; }  // the auth error is already shown
    if (e.code === 4403) { setStatus("signed out", false); signOut(`signed out: ${e.reason}`); return; }
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved && $("login").hidden) {
      setStatus(`disconnected (${e.code}${e.reason ? ": " + e.reason : ""}), reconnecting`, false);
      state.retry = setTimeout(() => connect(saved), 2000);
    } else {
      setStatus(`disconnected (${e.code}${e.reason ? ": " + e.reason : ""})`, false);
    }
  };
  ws.onopen = async () => {
    try {
      const welcome = await call("auth", { token, protocol: PROTOCOL });
      sessionStorage.setItem(TOKEN_KEY, token);
      message("");  // a refused earlier attempt's error goes with the successful login
      state.role = welcome.role;
      state.ops = new Set(welcome.ops.map((o) => o.op));
      document.body.className = welcome.role;
      $("who").textContent = `${welcome.name} (${welcome.role})`;
      setStatus("connected", true);
      $("login").hidden = true;
      $("app").hidden = false;
      $("signout").hidden = false;
      $("tab-requests").hidden = !state.ops.has("requests");
      state.lifecycle = state.ops.has("lifecycle") ? (await call("lifecycle")).table : {};
      const sub = await call("subscribe", {
        kinds: ["job.", "attempt.", "agent.", "request.", "token.", "work."], compress: true,
      });
      state.streams.set(sub.stream, onEvents);
      await route();
      state.timers.push(setInterval(() => { if (state.dirty && !state.busy) refresh(); }, 400));
      state.timers.push(setInterval(refreshStats, 2000));
    } catch (err) {
      message(err.message, true);
    }
  };
}

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(state.retry);
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.close(1000, "signed out");
  $("login").hidden = false;
  $("app").hidden = true;
  $("signout").hidden = true;
  if (why) message(why, true);
}

function onEvents(frame) {
  if (frame.missed) state.dirty = true;
  if ((frame.events || []).length) state.dirty = true;
}

// --- routes: #/jobs, #/job/ID, #/requests, #/request/ID, #/agents, #/agent/NAME, #/works,
// #/works/PIPELINE, #/search, #/new. A reload (or a shared link) opens the same view.

const ROUTES = [
  [/^#\/job\/(.+)$/, "jobs", (id) => openJob(id)],
  [/^#\/request\/(.+)$/, "requests", (id) => openRequest(id)],
  [/^#\/agent\/(.+)$/, "agents", (name) => openAgent(name)],
  [/^#\/works\/(.+)$/, "works", (pipeline) => openWorks(pipeline)],
  [/^#\/(jobs|requests|agents|works|search|plots|new)$/, null, null],
];

async function route() {
  const hash = location.hash || "#/jobs";
  if ($("message").className !== "error") message("");  // a note belongs to the view it was made in
  for (const [pattern, tab, open] of ROUTES) {
    const m = hash.match(pattern);
    if (!m) continue;
    showTab(tab || m[1]);
    if ((tab || m[1]) === "new" && state.role !== "viewer") loadRunnables().catch((err) => message(err.message, true));
    if (open) {
      state.open = { tab: tab, key: decodeURIComponent(m[1]) };
      try { await open(state.open.key); } catch (err) { message(err.message, true); }
    } else {
      closeDetail(m[1]);
    }
    await refresh();
    return;
  }
  message(`no such page ${hash}`, true);
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function showTab(tab) {
  state.tab = tab;
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.tab === tab);
  for (const pane of document.querySelectorAll(".pane")) pane.hidden = pane.id !== `pane-${tab}`;
}

function closeDetail(tab) {
  const aside = document.querySelector(`#pane-${tab} aside`);
  if (aside) aside.hidden = true;
  if (state.open && state.open.tab === tab) state.open = null;
  if (tab === "jobs") stopTail();
}

// --- lists ----------------------------------------------------------------------------------

function cell(value) {
  const td = document.createElement("td");
  if (value instanceof Node) td.append(value);
  else td.textContent = value === null || value === undefined ? "-" : String(value);
  return td;
}

function stateBadge(value) {
  return Object.assign(document.createElement("span"), { className: `state s-${value}`, textContent: value });
}

// Rows keep the keyboard cursor and selection across refreshes (by their key).
function fill(table, rows, cells, key, href) {
  const tbody = table.tBodies[0];
  const cursor = tbody.querySelector("tr.cursor")?.dataset.key;
  tbody.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    for (const value of cells(row)) tr.append(cell(value));
    tr.dataset.key = key(row);
    if (tr.dataset.key === cursor) tr.classList.add("cursor");
    if (state.open && state.open.key === tr.dataset.key) tr.classList.add("selected");
    if (href) tr.addEventListener("click", () => go(href(row)));
    return tr;
  }));
}

function range(id, page) {
  const last = Math.min(page.offset + page.rows.length, page.total);
  $(id).textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "none";
}

async function refresh() {
  if (state.busy) { state.dirty = true; return; }
  state.busy = true;
  state.dirty = false;
  try {
    const lists = { jobs: refreshJobs, requests: refreshRequests, agents: refreshAgents, works: refreshWorks, plots: refreshPlots };
    if (lists[state.tab]) await lists[state.tab]();
    if (state.open && state.open.tab === state.tab) await refreshOpen();
    await refreshStats();
  } catch (err) {
    message(err.message, true);
  } finally {
    state.busy = false;
  }
}

async function refreshJobs() {
  const args = { kind: "jobs", limit: PAGE, offset: state.offsets.jobs, root_only: $("jobs-roots").checked };
  if ($("jobs-state").value) args.state = $("jobs-state").value;
  if ($("jobs-name").value.trim()) args.name = $("jobs-name").value.trim();
  const page = await call("search", args);
  fill($("jobs"), page.rows, (j) => [j.id, j.kind, j.name, j.state, j.attempts, j.error], (j) => j.id, (j) => `#/job/${encodeURIComponent(j.id)}`);
  range("jobs-range", page);
}

async function refreshRequests() {
  if (!state.ops.has("requests")) return;
  const args = { kind: "requests", limit: PAGE, offset: state.offsets.requests };
  if ($("requests-state").value) args.state = $("requests-state").value;
  if ($("requests-name").value.trim()) args.name = $("requests-name").value.trim();
  const page = await call("search", args);
  fill($("requests"), page.rows, (r) => [r.id, r.workflow, r.namespace, r.state, r.user, verbButtons(r.id, state.lifecycle[r.state] || [])],
    (r) => r.id, (r) => `#/request/${encodeURIComponent(r.id)}`);
  range("requests-range", page);
}

async function refreshStats() {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  const s = await call("stats");
  $("stats").textContent = `agents ${s.agents}  queued ${s.queued}  running ${s.running}  events/s ${s.events_per_second}`;
}

// Only the verbs the protocol allows an operator in the request's state (from `lifecycle`).
function verbButtons(rid, verbs) {
  const span = document.createElement("span");
  if (state.role === "viewer") return span;
  for (const verb of verbs) {
    const button = document.createElement("button");
    button.textContent = verb;
    button.dataset.verb = verb;
    button.addEventListener("click", (e) => { e.stopPropagation(); requestVerb(rid, verb); });
    span.append(button);
  }
  return span;
}

async function requestVerb(rid, verb) {
  if (verb === "cancel" && !confirm(`cancel ${rid}?`)) return;
  const commentBox = state.open && state.open.key === rid ? $("verb-comment") : null;
  const comment = commentBox ? commentBox.value.trim() : "";
  try {
    if (comment) await call("comment", { request: rid, text: `${verb}: ${comment}` });
    const done = await call(verb, { request: rid });
    if (commentBox) commentBox.value = "";
    message(`${verb} ${rid}: ${done.from} -> ${done.state}`);
  } catch (err) { message(`${verb} ${rid}: ${err.message}`, true); }
  state.dirty = true;
}

// --- keyboard: j/k or arrows move the cursor in the visible list, Enter opens its row --------

function onKey(e) {
  if (e.target.closest("input, textarea, select") || e.ctrlKey || e.metaKey || e.altKey) return;
  const pane = document.querySelector(".pane:not([hidden])");
  const tbody = pane?.querySelector("table.rows tbody");
  if (!tbody || !tbody.rows.length) return;
  const rows = [...tbody.rows];
  const at = rows.findIndex((r) => r.classList.contains("cursor"));
  let next = at;
  if (e.key === "j" || e.key === "ArrowDown") next = Math.min(rows.length - 1, at + 1);
  else if (e.key === "k" || e.key === "ArrowUp") next = Math.max(0, at < 0 ? 0 : at - 1);
  else if (e.key === "Enter" && at >= 0) { rows[at].click(); e.preventDefault(); return; }
  else return;
  e.preventDefault();
  rows.forEach((r, i) => r.classList.toggle("cursor", i === next));
  rows[next].scrollIntoView({ block: "nearest" });
}

function parseJson(text, what) {
  if (!text.trim()) return {};
  try { return JSON.parse(text); } catch (err) { throw new Error(`${what}: not JSON: ${err.message}`); }
}

function setup() {
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); connect($("token").value.trim()); });
  $("signout").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", () => { if (!$("app").hidden) route(); });
  document.addEventListener("keydown", onKey);
  for (const [list, pane] of [["jobs", "pane-jobs"], ["requests", "pane-requests"]]) {
    for (const b of document.querySelectorAll(`#${pane} .pager button`)) {
      b.addEventListener("click", () => {
        state.offsets[list] = Math.max(0, state.offsets[list] + Number(b.dataset.page) * PAGE);
        refresh();
      });
    }
    for (const input of document.querySelectorAll(`#${pane} .filters select, #${pane} .filters input`)) {
      input.addEventListener("change", () => { state.offsets[list] = 0; refresh(); });
    }
  }
  setupViews();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) connect(saved);
}

document.addEventListener("DOMContentLoaded", setup);

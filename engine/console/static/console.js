// wfe web console: the protocol wfe.console.v1 over the websocket of the page's own origin.
// Plain JavaScript, no build step, nothing loaded from elsewhere. Text from the engine is
// always put in the page with textContent, never as HTML.
"use strict";

const PROTOCOL = "wfe.console.v1";
const TOKEN_KEY = "wfe.token";
const $ = (id) => document.getElementById(id);

const state = {
  ws: null, nextId: 1, pending: new Map(), streams: new Map(),
  role: null, ops: new Set(), job: null, tail: null, refreshTimer: null, dirty: false,
  inbox: Promise.resolve(),
};

function message(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

function call(op, args = {}) {
  return new Promise((resolve, reject) => {
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

function connect(token) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/`);
  state.ws = ws;
  $("status").textContent = "connecting";
  ws.binaryType = "arraybuffer";
  ws.onmessage = onMessage;
  ws.onclose = (e) => {
    $("status").textContent = `disconnected (${e.code}${e.reason ? ": " + e.reason : ""})`;
    $("status").className = "status bad";
    for (const waiter of state.pending.values()) waiter.reject(new Error("disconnected"));
    state.pending.clear();
    if (e.code === 4401) signOut("");  // the auth error is already shown
    if (e.code === 4403) signOut(`signed out: ${e.reason}`);
  };
  ws.onopen = async () => {
    try {
      const welcome = await call("auth", { token, protocol: PROTOCOL });
      sessionStorage.setItem(TOKEN_KEY, token);
      state.role = welcome.role;
      state.ops = new Set(welcome.ops.map((o) => o.op));
      document.body.className = welcome.role;
      $("who").textContent = `${welcome.name} (${welcome.role})`;
      $("status").textContent = "connected";
      $("status").className = "status ok";
      $("login").hidden = true;
      $("app").hidden = false;
      $("signout").hidden = false;
      $("tab-requests").hidden = !state.ops.has("requests");
      const sub = await call("subscribe", {
        kinds: ["job.", "attempt.", "agent.", "request.", "token."], compress: true,
      });
      state.streams.set(sub.stream, onEvents);
      await refresh();
      state.refreshTimer = setInterval(() => { if (state.dirty) refresh(); }, 300);
      setInterval(refreshStats, 2000);
    } catch (err) {
      message(err.message, true);
    }
  };
}

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.close(1000, "signed out");
  $("login").hidden = false;
  $("app").hidden = true;
  $("signout").hidden = true;
  if (why) message(why, true);
}

function onEvents(frame) {
  if (frame.missed) {
    addEventLine(`missed events ${frame.missed.first_id}..${frame.missed.last_id} (${frame.missed.count})`);
  }
  for (const e of frame.events || []) {
    addEventLine(`${e.id} ${e.kind} ${e.subject} ${JSON.stringify(e.data)}`);
    if (e.subject === state.job && (e.kind === "job.state" || e.kind === "attempt.state")) {
      // an attempt that starts running makes its job run (the engine records no job.state then)
      $("detail-state").textContent = e.kind === "job.state" ? e.data.state : jobStateOf(e.data.state);
    }
  }
  state.dirty = true;
}

function jobStateOf(attemptState) {
  return ["running", "cancelling"].includes(attemptState) ? "running" : $("detail-state").textContent;
}

function addEventLine(text) {
  const li = document.createElement("li");
  li.textContent = text;
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 300) list.lastChild.remove();
}

function fill(tbody, rows, cells, onClick, selectedKey) {
  tbody.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    for (const value of cells(row)) {
      const td = document.createElement("td");
      if (value instanceof Node) td.append(value);
      else td.textContent = value === null || value === undefined ? "-" : String(value);
      tr.append(td);
    }
    if (selectedKey !== undefined) tr.dataset.key = selectedKey(row);
    if (onClick) tr.addEventListener("click", () => onClick(row));
    return tr;
  }));
}

async function refresh() {
  state.dirty = false;
  try {
    const jobs = await call("jobs", { limit: 200 });
    fill($("jobs").tBodies[0], jobs, (j) => [j.id, j.kind, j.name, j.state, j.attempts, j.error], showJob, (j) => j.id);
    for (const tr of $("jobs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.key === state.job);
    const shown = jobs.find((j) => j.id === state.job);
    if (shown && !$("output").textContent.includes("\n-- ")) $("detail-state").textContent = shown.state;
    const agents = await call("agents");
    fill($("agents").tBodies[0], agents, (a) => [a.name, a.state, a.transport, a.slots, a.free_slots, a.running.join(" ")]);
    if (state.ops.has("requests")) {
      const requests = await call("requests", { limit: 200 });
      fill($("requests").tBodies[0], requests,
        (r) => [r.id, r.workflow, r.namespace, r.state, r.user, requestButtons(r)], null, (r) => r.id);
    }
    await refreshStats();
  } catch (err) {
    message(err.message, true);
  }
}

async function refreshStats() {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  const s = await call("stats");
  $("stats").textContent = `agents ${s.agents}  queued ${s.queued}  running ${s.running}  events/s ${s.events_per_second}`;
}

function requestButtons(request) {
  const span = document.createElement("span");
  if (state.role === "viewer") return span;
  for (const verb of ["approve", "pause", "resume", "cancel", "archive"]) {
    const button = document.createElement("button");
    button.textContent = verb;
    button.dataset.verb = verb;
    button.addEventListener("click", async (e) => {
      e.stopPropagation();
      if (verb === "cancel" && !confirm(`cancel ${request.id}?`)) return;
      try {
        const done = await call(verb, { request: request.id });
        message(`${verb} ${request.id}: ${done.from} -> ${done.state}`);
      } catch (err) { message(`${verb} ${request.id}: ${err.message}`, true); }
      state.dirty = true;
    });
    span.append(button);
  }
  return span;
}

async function showJob(job) {
  if (state.tail !== null) {
    state.streams.delete(state.tail);
    call("unsubscribe", { stream: state.tail }).catch(() => {});
    state.tail = null;
  }
  state.job = job.id;
  $("detail").hidden = false;
  $("detail-id").textContent = job.id;
  $("detail-state").textContent = job.state;
  $("output").textContent = "";
  try {
    const tail = await call("tail", { job: job.id });
    state.tail = tail.stream;
    state.streams.set(tail.stream, (frame) => {
      if (frame.output !== undefined) $("output").append(frame.output);
      if (frame.missed) $("output").append(`\n[missed output ${JSON.stringify(frame.missed)}]\n`);
      if (frame.end) {
        $("detail-state").textContent = frame.state;
        $("output").append(`\n-- ${frame.state} --\n`);
      }
      $("output").scrollTop = $("output").scrollHeight;
    });
  } catch (err) { message(err.message, true); }
  state.dirty = true;
}

function parseJson(text, what) {
  if (!text.trim()) return {};
  try { return JSON.parse(text); } catch (err) { throw new Error(`${what}: not JSON: ${err.message}`); }
}

function setup() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tab")) other.classList.toggle("active", other === tab);
      for (const pane of document.querySelectorAll(".pane")) pane.hidden = pane.id !== `pane-${tab.dataset.tab}`;
    });
  }
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); connect($("token").value.trim()); });
  $("signout").addEventListener("click", () => signOut(""));
  $("kill").addEventListener("click", async () => {
    if (!state.job || !confirm(`kill ${state.job} and everything it started?`)) return;
    try {
      const done = await call("kill", { job: state.job });
      message(`kill ${state.job}: was ${done.state}`);
    } catch (err) { message(err.message, true); }
  });
  $("run-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const args = { params: parseJson($("run-params").value, "params") };
      args[$("run-kind").value] = $("run-name").value.trim();
      const started = await call("run", args);
      message(`started ${started.job}`);
      document.querySelector('.tab[data-tab="jobs"]').click();
      await refresh();
      showJob({ id: started.job, state: "queued" });
    } catch (err) { message(err.message, true); }
  });
  $("submit-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const record = await call("submit_toml", {
        toml: $("submit-toml").value, user: $("submit-user").value.trim(),
        params: parseJson($("submit-params").value, "params"),
      });
      message(`submitted ${record.id} (${record.state})`);
      document.querySelector('.tab[data-tab="requests"]').click();
      await refresh();
    } catch (err) { message(err.message, true); }
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) connect(saved);
}

document.addEventListener("DOMContentLoaded", setup);

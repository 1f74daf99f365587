// wfe web console: the detail views (job, request, agent, works), search, and the forms.
// Uses the helpers of console.js and the drawings of draw.js.
"use strict";

const fmtTime = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "-");
const fmtDuration = (s) => (s === null || s === undefined ? "-" : s < 120 ? `${s.toFixed(2)} s` : `${(s / 60).toFixed(1)} min`);

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => {
    const dd = document.createElement("dd");
    if (v instanceof Node) dd.append(v); else dd.textContent = v === null || v === undefined ? "-" : String(v);
    return [Object.assign(document.createElement("dt"), { textContent: k }), dd];
  }));
}

function link(hash, text) {
  return Object.assign(document.createElement("a"), { href: hash, textContent: text });
}

function li(...parts) {
  const item = document.createElement("li");
  item.append(...parts);
  return item;
}

function refreshOpen() {
  const open = { jobs: refreshJob, requests: refreshRequest, agents: refreshAgent, works: refreshWorksOf };
  if (state.open.shown !== state.open.key) return undefined;  // still opening
  return open[state.open.tab](state.open.key);
}

// --- jobs: facts, the root's tree, the timeline of its attempts, live output ----------------

function stopTail() {
  if (state.tail === null) return;
  state.streams.delete(state.tail);
  call("unsubscribe", { stream: state.tail }).catch(() => {});
  state.tail = null;
}

async function openJob(id) {
  if (state.open && state.open.shown === id) return;
  stopTail();
  state.open.shown = id;
  $("detail").hidden = false;
  $("detail-id").textContent = id;
  $("output").textContent = "";
  await refreshJob(id);
  const tail = await call("tail", { job: id });
  state.tail = tail.stream;
  state.streams.set(tail.stream, (frame) => {
    if (frame.output !== undefined) $("output").append(frame.output);
    if (frame.missed) $("output").append(`\n[missed output ${JSON.stringify(frame.missed)}]\n`);
    if (frame.end) {
      $("output").append(`\n-- ${frame.state} --\n`);
      state.dirty = true;
    }
    findInOutput();
    if ($("follow").checked) $("output").scrollTop = $("output").scrollHeight;
  });
}

function treeNode(node) {
  const item = li(stateBadge(node.state), " ", link(`#/job/${encodeURIComponent(node.id)}`, node.id), ` ${node.kind} ${node.name}`,
    Object.assign(document.createElement("span"), { className: "hint",
      textContent: `  ${fmtDuration(node.duration ?? (node.ended_at && node.started_at ? node.ended_at - node.started_at : null))}`
        + `  attempts ${node.attempts}${node.agent ? "  on " + node.agent : ""}${node.error ? "  " + node.error : ""}` }));
  item.dataset.job = node.id;
  item.dataset.state = node.state;
  if (node.id === state.open?.key) item.classList.add("selected");
  if (node.children && node.children.length) {
    const ul = document.createElement("ul");
    ul.append(...node.children.map(treeNode));
    item.append(ul);
  }
  return item;
}

async function refreshJob(id) {
  const job = await call("job", { job: id });
  $("detail-state").textContent = job.state;
  $("detail-state").className = `state s-${job.state}`;
  const last = job.attempt_list[job.attempt_list.length - 1];
  facts($("job-facts"), [
    ["name", `${job.kind} ${job.name}`], ["created", fmtTime(job.created_at)], ["started", fmtTime(job.started_at)],
    ["ended", fmtTime(job.ended_at)], ["attempts", job.attempts], ["agent", last?.agent], ["error", job.error],
    ["parent", job.parent ? link(`#/job/${encodeURIComponent(job.parent)}`, job.parent) : null],
    ["request", job.request ? link(`#/request/${encodeURIComponent(job.request)}`, job.request) : null],
  ]);
  $("job-root").textContent = job.root;
  $("job-root").href = `#/job/${encodeURIComponent(job.root)}`;
  const tree = await call("tree", { job: job.root });
  const ul = Object.assign(document.createElement("ul"), { className: "tree" });
  ul.append(treeNode(tree));
  $("job-tree").replaceChildren(ul);
  const timeline = await call("timeline", { job: job.root });
  drawGantt($("job-timeline"), timeline.attempts, Date.now() / 1000);
}

function findInOutput() {
  const needle = $("output-find").value;
  if (!needle) { $("output-hits").textContent = ""; return; }
  const lines = $("output").textContent.split("\n").filter((l) => l.includes(needle));
  $("output-hits").textContent = `${lines.length} line(s): ${lines.slice(-3).join(" | ")}`;
}

// --- requests: facts, legal verbs, stage DAG, stages with jobs, timeline, products ----------

async function openRequest(rid) {
  if (state.open.shown === rid) return;
  state.open.shown = rid;
  $("request-detail").hidden = false;
  $("request-id").textContent = rid;
  $("provenance").replaceChildren();
  const graph = await call("request.graph", { request: rid });
  if (!state.open || state.open.key !== rid) return;  // another view was opened meanwhile
  state.open.graph = graph;
  $("request-definition").textContent = JSON.stringify(graph.expanded, null, 2);
  await refreshRequest(rid);
}

async function refreshRequest(rid) {
  const [detail, life, timeline, products] = await Promise.all([
    call("request", { request: rid }), call("lifecycle", { request: rid }),
    call("timeline", { request: rid }), call("products", { request: rid }),
  ]);
  $("request-state").textContent = detail.state;
  $("request-state").className = `state s-${detail.state}`;
  facts($("request-facts"), [
    ["workflow", detail.workflow], ["namespace", detail.namespace], ["user", detail.user],
    ["priority", detail.priority], ["approval", detail.approval_required ? "required" : "automatic"],
    ["created", fmtTime(detail.created_at)], ["updated", fmtTime(detail.updated_at)], ["error", detail.error],
  ]);
  $("request-verbs").replaceChildren(verbButtons(rid, life.verbs));
  const known = new Map(detail.stages.map((s) => [s.name, s]));
  const names = state.open?.graph ? state.open.graph.stages.map((s) => s.name) : detail.stages.map((s) => s.name);
  const stages = names.map((name) => ({ state: "waiting", inputs: {}, ...(known.get(name) || {}), name,
    jobs: detail.jobs.filter((j) => j.stage === name) }));
  if (state.open?.graph) drawDag($("request-dag"), state.open.graph, stages);
  $("request-stages").tBodies[0].replaceChildren(...stages.map((s) => {
    const tr = document.createElement("tr");
    const jobs = document.createElement("span");
    for (const j of s.jobs) if (j.job) jobs.append(link(`#/job/${encodeURIComponent(j.job)}`, `${j.job} (${j.state || j.batch_state})`), " ");
    for (const v of [s.name, stateBadge(s.state), ...INPUT_STATES.map((k) => s.inputs[k] || 0), jobs]) tr.append(cell(v));
    tr.dataset.stage = s.name;
    return tr;
  }));
  showStanding(detail.standing, products);
  drawGantt($("request-timeline"), timeline.attempts, Date.now() / 1000);
  const settled = await call("events", { subject: rid, kind: "request.settled", limit: 5000 });
  drawProgress($("request-progress"), settled, names, detail.created_at, detail.state === "running" ? Date.now() / 1000 : detail.updated_at);
  const stageOf = new Map(detail.jobs.filter((j) => j.job).map((j) => [j.job, j.stage]));
  drawDurations($("request-durations"), names.map((stage) => ({
    stage,
    durations: timeline.attempts
      .filter((a) => stageOf.get(a.job) === stage && a.ended_at !== null && (a.started_at ?? a.dispatched_at) !== null)
      .map((a) => a.ended_at - (a.started_at ?? a.dispatched_at)),
  })));
  $("request-products").tBodies[0].replaceChildren(...products.map((p) => {
    const tr = document.createElement("tr");
    const button = Object.assign(document.createElement("button"), { textContent: p.id });
    button.dataset.product = p.id;
    button.addEventListener("click", () => showProvenance(p.id));
    for (const v of [button, p.stage, p.type, p.size, p.path]) tr.append(cell(v));
    return tr;
  }));
  $("request-history").replaceChildren(...detail.history.map((h) =>
    li(`${fmtTime(h.at)} ${h.kind} ${h.verb ? h.verb + " " : ""}${h.state || h.to || ""}${h.by ? " by " + h.by : ""}${h.text ? ": " + h.text : ""}`)));
}

// A standing request (continuous or cron): per stage its gap (inputs with no run of the
// current version), running jobs, cooldown, last and next round and version; stale products.
function whenText(at) {
  if (at === null || at === undefined) return "-";
  const delta = at - Date.now() / 1000;
  if (Math.abs(delta) < 0.5) return "now";
  return delta > 0 ? `in ${delta.toFixed(0)}s` : `${(-delta).toFixed(0)}s ago`;
}

function showStanding(view, products) {
  $("request-standing").hidden = !view;
  if (!view) return;
  const tick = view.next_tick ? `, next tick ${whenText(view.next_tick)}` : "";
  $("standing-trigger").textContent = `trigger ${view.trigger}${tick}`;
  $("standing-stages").tBodies[0].replaceChildren(...view.stages.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.stage = s.stage;
    for (const v of [s.stage, s.gap, s.running, `${s.cooldown}s`, whenText(s.last_round),
      s.gap ? whenText(s.next_round) : "-", `${s.version} (${s.version_policy})`]) tr.append(cell(v));
    return tr;
  }));
  const stale = products.filter((p) => p.stale).length;
  $("standing-stale").textContent = `${stale} stale product(s)`;
}

async function showProvenance(productId) {
  const chain = await call("provenance", { product: productId });
  const graph = Object.assign(document.createElement("div"), { className: "chart", id: "provenance-graph" });
  drawProvenance(graph, chain);
  const raw = Object.assign(document.createElement("details"), {});
  raw.append(Object.assign(document.createElement("summary"), { textContent: "as recorded (JSON)" }),
    Object.assign(document.createElement("pre"), { textContent: JSON.stringify(chain, null, 2) }));
  $("provenance").replaceChildren(Object.assign(document.createElement("h4"), { textContent: `Provenance of ${productId}` }), graph, raw);
  $("provenance").scrollIntoView({ block: "start" });
}

// --- agents ---------------------------------------------------------------------------------

async function refreshAgents() {
  const agents = await call("agents");
  state.agents = agents;
  fill($("agents"), agents, (a) => [a.name, a.group, a.state, a.transport, a.slots, a.free_slots, a.running.length, a.site, (a.tags || []).join(" ")],
    (a) => a.name, (a) => `#/agent/${encodeURIComponent(a.name)}`);
}

async function openAgent(name) {
  state.open.shown = name;
  $("agent-detail").hidden = false;
  $("agent-name").textContent = name;
}

async function refreshAgent(name) {
  const live = (state.agents || []).find((a) => a.name === name);
  const history = await call("agent.history", { agent: name });
  const shown = live ? live.state : history.state;
  $("agent-state").textContent = shown;
  $("agent-state").className = `state s-${shown}`;
  facts($("agent-facts"), [
    ["group", live?.group], ["transport", live?.transport], ["slots", live ? `${live.free_slots} free of ${live.slots}` : null],
    ["site", live?.site], ["tags", live ? (live.tags || []).join(" ") : null], ["memory", live?.memory],
    ["last heard", history.heard_ago === null ? "-" : `${history.heard_ago.toFixed(1)} s ago`],
    ["first seen", fmtTime(history.first_seen)], ["last change", fmtTime(history.last_seen)],
  ]);
  $("agent-running").replaceChildren(...(live?.running || []).map((r) => {
    const job = r.split("#")[0];
    return li(link(`#/job/${encodeURIComponent(job)}`, r));
  }));
  $("agent-history").replaceChildren(...history.events.map((e) => li(`${fmtTime(e.at)} ${e.kind} ${JSON.stringify(e.data)}`)));
}

// --- works: buckets per pipeline and status; a pipeline's works -----------------------------

const WORK_STATUSES = ["queued", "running", "success", "failure", "cancelled"];

async function refreshWorks() {
  if (!state.ops.has("work.buckets")) return;
  const buckets = await call("work.buckets");
  const rows = Object.entries(buckets).map(([pipeline, counts]) => ({ pipeline, counts }));
  fill($("works"), rows, (r) => [r.pipeline, ...WORK_STATUSES.map((s) => r.counts[s] || 0)], (r) => r.pipeline,
    (r) => `#/works/${encodeURIComponent(r.pipeline)}`);
}

async function openWorks(pipeline) {
  state.open.shown = pipeline;
  $("works-detail").hidden = false;
  $("works-pipeline").textContent = pipeline;
}

async function refreshWorksOf(pipeline) {
  const found = await call("work.find", { pipeline, limit: 100 });
  $("works-count").textContent = `${found.count} in all, newest 100`;
  const works = found.works || [];
  $("works-list").tBodies[0].replaceChildren(...works.map((w) => {
    const tr = document.createElement("tr");
    for (const v of [w.id, stateBadge(w.status), w.priority, w.site, w.user, w.attempt, w.worker]) tr.append(cell(v));
    tr.dataset.key = w.id;
    return tr;
  }));
}

// --- plots: throughput and queue depth over a window, from the repository ------------------

async function refreshPlots() {
  const until = Date.now() / 1000;
  const activity = await call("activity", { since: until - Number($("plots-window").value), until, buckets: 60 });
  const ended = Object.entries(activity.ended).map(([name, values]) => ({ name, values }));
  drawSteps($("plot-throughput"), activity, ended, "bars");
  drawSteps($("plot-depth"), activity, [{ name: "queued", values: activity.queued }, { name: "running", values: activity.running }], "lines");
}

// --- search: server-side, filtered, paged ----------------------------------------------------

const SEARCH_COLUMNS = {
  jobs: [["job", (r) => r.id], ["kind", (r) => r.kind], ["name", (r) => r.name], ["state", (r) => r.state],
    ["attempts", (r) => r.attempts], ["created", (r) => fmtTime(r.created_at)], ["error", (r) => r.error]],
  requests: [["request", (r) => r.id], ["workflow", (r) => r.workflow], ["namespace", (r) => r.namespace],
    ["user", (r) => r.user], ["state", (r) => r.state], ["created", (r) => fmtTime(r.created_at)], ["error", (r) => r.error]],
  events: [["event", (r) => r.id], ["at", (r) => fmtTime(r.at)], ["kind", (r) => r.kind], ["subject", (r) => r.subject],
    ["data", (r) => JSON.stringify(r.data)]],
  works: [["work", (r) => r.id], ["pipeline", (r) => r.pipeline], ["status", (r) => r.status],
    ["priority", (r) => r.priority], ["user", (r) => r.user], ["attempt", (r) => r.attempt],
    ["created", (r) => fmtTime(r.creation)]],
};

// Works are searched by the work queue's own op: pipeline (the name field), statuses, user, time.
async function searchWorks(args) {
  const query = { limit: args.limit, offset: args.offset };
  if (args.name) query.pipeline = args.name;
  if (args.state) query.status = args.state;
  for (const key of ["user", "since", "until"]) if (args[key] !== undefined) query[key] = args[key];
  const found = await call("work.find", query);
  return { rows: found.works, total: found.count, offset: found.offset };
}

function searchTarget(kind, row) {
  if (kind === "jobs") return `#/job/${encodeURIComponent(row.id)}`;
  if (kind === "works") return `#/works/${encodeURIComponent(row.pipeline)}`;
  if (kind === "requests") return `#/request/${encodeURIComponent(row.id)}`;
  if (row.kind.startsWith("job.") || row.kind.startsWith("attempt.")) return `#/job/${encodeURIComponent(row.subject)}`;
  if (row.kind.startsWith("request.")) return `#/request/${encodeURIComponent(row.subject)}`;
  if (row.kind.startsWith("agent.")) return `#/agent/${encodeURIComponent(row.subject)}`;
  return null;
}

async function runSearch() {
  const kind = $("search-kind").value;
  const args = { kind, limit: PAGE, offset: state.offsets.search };
  const states = $("search-state").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (states.length) args.state = states;
  for (const key of ["name", "namespace", "user", "text"]) {
    const value = $(`search-${key}`).value.trim();
    if (value) args[key] = value;
  }
  for (const key of ["since", "until"]) {
    const value = $(`search-${key}`).value;
    if (value) args[key] = new Date(value).getTime() / 1000;
  }
  try {
    const page = kind === "works" ? await searchWorks(args) : await call("search", args);
    const columns = SEARCH_COLUMNS[kind];
    const head = document.createElement("tr");
    head.append(...columns.map(([name]) => Object.assign(document.createElement("th"), { textContent: name })));
    $("search-results").tHead.replaceChildren(head);
    fill($("search-results"), page.rows, (r) => columns.map(([, get]) => get(r)), (r) => String(r.id),
      (r) => searchTarget(kind, r) || location.hash);
    range("search-range", page);
  } catch (err) { message(err.message, true); }
}

// --- forms and buttons -------------------------------------------------------------------------

// The run form is built from the declared parameters of the chosen action or RScript (the
// `actions` and `rscripts` ops): one typed input per parameter with its default and doc. An
// empty optional field is left out (the engine applies the default); a bad value is refused
// with one line naming the parameter, before anything is sent.
async function loadRunnables() {
  if (state.runnables) return;
  const [actions, rscripts] = await Promise.all([call("actions"), call("rscripts")]);
  state.runnables = { action: actions, rscript: rscripts };
  showRunFields();
}

function runnable() {
  return (state.runnables?.[$("run-kind").value] || []).find((r) => r.name === $("run-name").value.trim());
}

function showRunFields() {
  const list = state.runnables?.[$("run-kind").value] || [];
  $("run-names").replaceChildren(...list.map((r) => Object.assign(document.createElement("option"), { value: r.name })));
  const chosen = runnable();
  $("run-doc").textContent = chosen ? chosen.doc || "" : "";
  $("run-fields").replaceChildren(...(chosen ? chosen.params : []).map(paramField));
}

// One labelled input for a declared parameter (an action's, an RScript's or a definition's).
function paramField(p) {
  const label = document.createElement("label");
  const input = document.createElement("input");
  input.dataset.param = p.name;
  input.dataset.type = p.type;
  if (p.type === "bool") { input.type = "checkbox"; input.checked = p.default === true; }
  // numbers as text (inputmode for the keyboard): a number input would turn "x" into "" silently
  else if (p.type === "int" || p.type === "float") input.inputMode = p.type === "int" ? "numeric" : "decimal";
  if (p.type !== "bool") {
    input.placeholder = p.default === null || p.default === undefined ? (p.required ? "required" : "") : JSON.stringify(p.default);
    input.required = !!p.required;
  }
  const help = Object.assign(document.createElement("span"), { className: "hint", textContent: ` ${p.type}${p.required ? ", required" : ""}${p.description ? ": " + p.description : ""}` });
  label.append(`${p.name} `, input, help);
  return label;
}

function fieldValues(container = $("run-fields")) {
  const params = {};
  for (const input of container.querySelectorAll("input[data-param]")) {
    const name = input.dataset.param, type = input.dataset.type;
    if (type === "bool") { params[name] = input.checked; continue; }
    const text = input.value.trim();
    if (!text) {
      if (input.required) throw new Error(`params.${name}: required`);
      continue;
    }
    if (type === "int") {
      if (!/^-?\d+$/.test(text)) throw new Error(`params.${name}: expected an integer, got ${JSON.stringify(text)}`);
      params[name] = Number(text);
    } else if (type === "float") {
      if (!Number.isFinite(Number(text))) throw new Error(`params.${name}: expected a number, got ${JSON.stringify(text)}`);
      params[name] = Number(text);
    } else if (type === "list" || type === "dict" || type === "json") {
      try { params[name] = JSON.parse(text); } catch (err) { throw new Error(`params.${name}: not JSON: ${err.message}`); }
    } else params[name] = text;
  }
  return params;
}

// The submit form's fields, from the parameters the pasted definition declares.
async function readDefinitionParams() {
  try {
    const params = await call("definition_params", { toml: $("submit-toml").value });
    $("submit-fields").replaceChildren(...params.map(paramField));
    message(params.length ? `${params.length} parameter(s) declared` : "the definition declares no parameters");
  } catch (err) { $("submit-fields").replaceChildren(); message(err.message, true); }
}

function setupViews() {
  $("kill").addEventListener("click", async () => {
    const job = state.open?.key;
    if (!job || !confirm(`kill ${job} and everything it started?`)) return;
    try {
      const done = await call("kill", { job });
      message(`kill ${job}: was ${done.state}`);
    } catch (err) { message(err.message, true); }
    state.dirty = true;
  });
  $("retry").addEventListener("click", async () => {
    const job = state.open?.key;
    if (!job) return;
    try {
      const done = await call("retry", { job });
      message(`retry ${job}: ${done.state}`);
      state.open.shown = null;
      await openJob(job);
    } catch (err) { message(err.message, true); }
    state.dirty = true;
  });
  $("output-find").addEventListener("input", findInOutput);
  $("plots-window").addEventListener("change", () => refresh());
  $("run-kind").addEventListener("change", showRunFields);
  $("run-name").addEventListener("input", showRunFields);
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); state.offsets.search = 0; runSearch(); });
  for (const b of document.querySelectorAll("#search-form .pager button")) {
    b.addEventListener("click", () => {
      state.offsets.search = Math.max(0, state.offsets.search + Number(b.dataset.page) * PAGE);
      runSearch();
    });
  }
  $("run-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const args = { params: { ...fieldValues(), ...parseJson($("run-params").value, "params") } };
      args[$("run-kind").value] = $("run-name").value.trim();
      const started = await call("run", args);
      message(`started ${started.job}`);
      go(`#/job/${encodeURIComponent(started.job)}`);
    } catch (err) { message(err.message, true); }
  });
  $("submit-read").addEventListener("click", readDefinitionParams);
  $("submit-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const record = await call("submit_toml", {
        toml: $("submit-toml").value, user: $("submit-user").value.trim(),
        params: { ...fieldValues($("submit-fields")), ...parseJson($("submit-params").value, "params") },
      });
      message(`submitted ${record.id} (${record.state})`);
      go("#/requests");
    } catch (err) { message(err.message, true); }
  });
}

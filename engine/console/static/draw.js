// wfe web console: SVG drawings generated in the page (no library): a request's stage DAG,
// a Gantt chart of attempts per agent. Text goes in with textContent only.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs = {}, text = null) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== null) el.textContent = text;
  return el;
}

const INPUT_STATES = ["unallocated", "allocated", "processed", "failed"];

// Stages laid out in columns by depth (longest path from a stage with no upstream), the
// catalog query as a source node when a stage consumes it. Each node: name, state, and a bar
// of its inputs unallocated / allocated / processed / failed with their counts.
function drawDag(container, graph, stages) {
  const byName = new Map(stages.map((s) => [s.name, s]));
  // a stage the engine has not started yet has no row: it is shown "waiting", with no inputs
  const nodes = graph.stages.map((s) => ({ state: "waiting", inputs: {}, ...s, ...(byName.get(s.name) || {}), deps: [...s.depends_on] }));
  const usesQuery = nodes.some((n) => n.from_query);
  if (usesQuery) {
    for (const n of nodes) if (n.from_query) n.deps.push("(query)");
    nodes.unshift({ name: "(query)", state: "source", deps: [], inputs: {}, query: true });
  }
  const depth = new Map();
  const depthOf = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    const node = nodes.find((n) => n.name === name);
    if (!node || seen.has(name)) return 0;
    seen.add(name);
    const d = node.deps.length ? 1 + Math.max(...node.deps.map((p) => depthOf(p, seen))) : 0;
    depth.set(name, d);
    return d;
  };
  const columns = [];
  for (const n of nodes) {
    const d = depthOf(n.name);
    (columns[d] = columns[d] || []).push(n);
  }
  const W = 190, H = 64, GX = 60, GY = 22, PAD = 10;
  const pos = new Map();
  columns.forEach((col, c) => (col || []).forEach((n, r) => pos.set(n.name, { x: PAD + c * (W + GX), y: PAD + r * (H + GY) })));
  const width = PAD * 2 + columns.length * (W + GX) - GX;
  const height = PAD * 2 + Math.max(...columns.map((c) => (c || []).length)) * (H + GY) - GY;
  const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "dag", role: "img" });
  const defs = svgEl("defs");
  const marker = svgEl("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(svgEl("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.append(marker);
  svg.append(defs);
  for (const n of nodes) {
    for (const dep of n.deps) {
      const a = pos.get(dep), b = pos.get(n.name);
      if (!a || !b) continue;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      svg.append(svgEl("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: "edge", "marker-end": "url(#arrow)", "data-from": dep, "data-to": n.name }));
    }
  }
  for (const n of nodes) {
    const p = pos.get(n.name);
    const g = svgEl("g", { class: `node s-${n.state}`, "data-stage": n.name, "data-state": n.state, transform: `translate(${p.x},${p.y})` });
    g.append(svgEl("title", {}, `${n.name}: ${n.state}`));
    g.append(svgEl("rect", { width: W, height: H, rx: 6, class: "box" }));
    g.append(svgEl("text", { x: 8, y: 18, class: "name" }, n.name));
    g.append(svgEl("text", { x: W - 8, y: 18, class: "sstate", "text-anchor": "end" }, n.query ? "catalog" : n.state));
    if (!n.query) {
      const counts = INPUT_STATES.map((s) => (n.inputs || {})[s] || 0);
      const total = counts.reduce((a, b) => a + b, 0);
      let x = 8;
      INPUT_STATES.forEach((s, i) => {
        const w = total ? ((W - 16) * counts[i]) / total : 0;
        if (w > 0) g.append(svgEl("rect", { x, y: 28, width: w, height: 10, class: `in-${s}` }));
        x += w;
      });
      if (!total) g.append(svgEl("rect", { x: 8, y: 28, width: W - 16, height: 10, class: "in-none" }));
      g.append(svgEl("text", { x: 8, y: 55, class: "counts", "data-counts": counts.join("/") },
        `inputs u ${counts[0]} · a ${counts[1]} · p ${counts[2]} · f ${counts[3]}`));
    }
    svg.append(g);
  }
  container.replaceChildren(svg);
}

// One lane per agent ("(no agent)" for attempts never dispatched), split into as many rows as
// it ran attempts at once; one bar per attempt from its dispatch (or start) to its end (or
// now), coloured by its state; a time axis below.
function drawGantt(container, attempts, nowSeconds) {
  if (!attempts.length) {
    container.replaceChildren(Object.assign(document.createElement("p"), { className: "hint", textContent: "no attempts" }));
    return;
  }
  const begin = (a) => a.dispatched_at ?? a.started_at ?? nowSeconds;
  const end = (a) => a.ended_at ?? nowSeconds;
  const t0 = Math.min(...attempts.map(begin));
  const t1 = Math.max(t0 + 0.001, ...attempts.map(end));
  const agents = [...new Set(attempts.map((a) => a.agent || "(no agent)"))].sort();
  const rows = [];  // [agent, ends of the attempts placed in this row]
  const rowOf = new Map();
  for (const agent of agents) {
    const mine = attempts.filter((a) => (a.agent || "(no agent)") === agent).sort((a, b) => begin(a) - begin(b));
    const first = rows.length;
    for (const a of mine) {
      let r = first;
      while (r < rows.length && rows[r][1] > begin(a)) r++;
      if (r === rows.length) rows.push([agent, 0]);
      rows[r][1] = end(a);
      rowOf.set(a, r);
    }
  }
  const LABEL = 110, W = 560, ROW = 18, PAD = 6, AXIS = 20;
  const width = LABEL + W + PAD * 2, height = PAD + rows.length * ROW + AXIS;
  const x = (t) => LABEL + PAD + ((t - t0) / (t1 - t0)) * W;
  const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "gantt", role: "img" });
  rows.forEach(([agent], i) => {
    const y = PAD + i * ROW;
    if (i === 0 || rows[i - 1][0] !== agent) {
      svg.append(svgEl("text", { x: 4, y: y + 13, class: "lane" }, agent));
      svg.append(svgEl("line", { x1: 0, x2: width - PAD, y1: y, y2: y, class: "grid" }));
    }
  });
  for (const a of attempts) {
    const x1 = x(begin(a)), x2 = Math.max(x1 + 2, x(end(a)));
    const bar = svgEl("rect", { x: x1, y: PAD + rowOf.get(a) * ROW + 3, width: x2 - x1, height: ROW - 6, rx: 2,
      class: `bar s-${a.state}`, "data-job": a.job, "data-attempt": a.attempt, "data-agent": a.agent || "" });
    bar.append(svgEl("title", {}, `${a.name} ${a.job}#${a.attempt} ${a.state} on ${a.agent || "-"}, ${(end(a) - begin(a)).toFixed(2)} s`));
    svg.append(bar);
  }
  const axisY = PAD + rows.length * ROW + 14;
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    svg.append(svgEl("text", { x: x(t), y: axisY, class: "tick", "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
      `+${(t - t0).toFixed(t1 - t0 < 10 ? 2 : 0)} s`));
  }
  container.replaceChildren(svg);
}

// Bars stacked per step (one series per state), or lines (one per series), over the steps of
// an `activity` answer; a left axis with the largest value and the window's times below.
function drawSteps(container, activity, series, kind) {
  const n = series.length ? series[0].values.length : 0;
  const W = 640, H = 160, LEFT = 40, PAD = 6, AXIS = 18;
  const top = Math.max(1, ...(kind === "bars"
    ? Array.from({ length: n }, (_, i) => series.reduce((sum, s) => sum + s.values[i], 0))
    : series.flatMap((s) => s.values)));
  const width = LEFT + W + PAD, height = PAD + H + AXIS;
  const x = (i) => LEFT + (i * W) / n, y = (v) => PAD + H - (v * H) / top;
  const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: `plot ${kind}`, role: "img" });
  svg.append(svgEl("line", { x1: LEFT, x2: LEFT + W, y1: PAD + H, y2: PAD + H, class: "grid" }));
  svg.append(svgEl("text", { x: LEFT - 4, y: PAD + 10, "text-anchor": "end", class: "tick" }, String(top)));
  svg.append(svgEl("text", { x: LEFT - 4, y: PAD + H, "text-anchor": "end", class: "tick" }, "0"));
  if (kind === "bars") {
    for (let i = 0; i < n; i++) {
      let base = 0;
      for (const s of series) {
        const v = s.values[i];
        if (!v) continue;
        const bar = svgEl("rect", { x: x(i) + 1, y: y(base + v), width: Math.max(1, W / n - 2), height: y(base) - y(base + v),
          class: `bar s-${s.name}`, "data-series": s.name, "data-step": i, "data-count": v });
        bar.append(svgEl("title", {}, `${s.name}: ${v}`));
        svg.append(bar);
        base += v;
      }
    }
  } else {
    for (const s of series) {
      const points = s.values.map((v, i) => `${x(i + 1)},${y(v)}`).join(" ");
      svg.append(svgEl("polyline", { points: `${x(0)},${y(s.values[0] || 0)} ${points}`, class: `line s-${s.name}`, "data-series": s.name,
        "data-max": Math.max(0, ...s.values) }));
    }
  }
  const legend = series.map((s) => s.name).join(", ");
  svg.append(svgEl("text", { x: LEFT, y: height - 4, class: "tick" }, fmtClock(activity.since)));
  svg.append(svgEl("text", { x: LEFT + W / 2, y: height - 4, class: "tick", "text-anchor": "middle" }, legend));
  svg.append(svgEl("text", { x: LEFT + W, y: height - 4, class: "tick", "text-anchor": "end" }, fmtClock(activity.until)));
  container.replaceChildren(svg);
}

function fmtClock(t) {
  return new Date(t * 1000).toISOString().replace("T", " ").slice(5, 16);
}

// A product's provenance as a graph: the product on the right, what it was made from to its
// left, back to the raw catalog entries; each product names its stage, RScript and agent.
function drawProvenance(container, chain) {
  const W = 200, H = 44, GX = 50, GY = 12, PAD = 8;
  const placed = [];
  let leaves = 0;
  const place = (item, depth) => {
    const kids = item.kind === "product" ? (item.from || []).map((k) => place(k, depth + 1)) : [];
    const y = kids.length ? (kids[0].y + kids[kids.length - 1].y) / 2 : (leaves++) * (H + GY);
    const node = { item, depth, y, kids };
    placed.push(node);
    return node;
  };
  place(chain, 0);
  const depth = Math.max(...placed.map((n) => n.depth));
  const width = PAD * 2 + (depth + 1) * (W + GX) - GX, height = PAD * 2 + Math.max(1, leaves) * (H + GY) - GY;
  const x = (n) => PAD + (depth - n.depth) * (W + GX);
  const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "provenance dag", role: "img" });
  for (const n of placed) {
    for (const k of n.kids) {
      const x1 = x(k) + W, y1 = PAD + k.y + H / 2, x2 = x(n), y2 = PAD + n.y + H / 2, mx = (x1 + x2) / 2;
      svg.append(svgEl("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: "edge" }));
    }
  }
  for (const n of placed) {
    const it = n.item;
    const product = it.kind === "product";
    const g = svgEl("g", { class: `node prov-${it.kind}${it.missing ? " missing" : ""}`, transform: `translate(${x(n)},${PAD + n.y})`,
      "data-kind": it.kind, "data-ref": product ? it.id : (it.path || it.ref || "") });
    const first = product ? `${it.id} (${it.stage || "?"})` : (it.path || it.ref || "?").split("/").pop();
    const second = product ? `${it.made_by?.rscript || "?"} on ${it.made_by?.agent || "-"}` : it.kind === "catalog" ? `raw ${it.size ?? "?"} B` : it.kind;
    g.append(svgEl("title", {}, product ? `${it.path}` : `${it.path || it.ref}`));
    g.append(svgEl("rect", { width: W, height: H, rx: 6, class: "box" }));
    g.append(svgEl("text", { x: 8, y: 17, class: "name" }, first));
    g.append(svgEl("text", { x: 8, y: 34, class: "sstate" }, second));
    svg.append(g);
  }
  container.replaceChildren(svg);
}

// Per stage, the durations of its ended attempts: a bar from the shortest to the longest with
// a mark at the median, on one seconds axis; the count beside it.
function drawDurations(container, rows) {
  const shown = rows.filter((r) => r.durations.length);
  if (!shown.length) {
    container.replaceChildren(Object.assign(document.createElement("p"), { className: "hint", textContent: "no ended attempts yet" }));
    return;
  }
  const LABEL = 110, W = 460, ROW = 22, PAD = 6, AXIS = 18;
  const top = Math.max(0.001, ...shown.flatMap((r) => r.durations));
  const width = LABEL + W + 90, height = PAD + shown.length * ROW + AXIS;
  const x = (v) => LABEL + (v / top) * W;
  const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "durations", role: "img" });
  shown.forEach((r, i) => {
    const sorted = [...r.durations].sort((a, b) => a - b);
    const median = sorted[Math.floor((sorted.length - 1) / 2)];
    const y = PAD + i * ROW;
    svg.append(svgEl("text", { x: 4, y: y + 15, class: "lane" }, r.stage));
    const g = svgEl("g", { class: "stage-durations", "data-stage": r.stage, "data-count": sorted.length,
      "data-min": sorted[0], "data-median": median, "data-max": sorted[sorted.length - 1] });
    g.append(svgEl("rect", { x: x(sorted[0]), y: y + 5, width: Math.max(2, x(sorted[sorted.length - 1]) - x(sorted[0])), height: ROW - 10, class: "bar s-succeeded" }));
    g.append(svgEl("line", { x1: x(median), x2: x(median), y1: y + 2, y2: y + ROW - 2, class: "median" }));
    g.append(svgEl("text", { x: LABEL + W + 6, y: y + 15, class: "tick" }, `${sorted.length} × ${median.toFixed(2)} s`));
    svg.append(g);
  });
  svg.append(svgEl("text", { x: LABEL, y: height - 4, class: "tick" }, "0 s"));
  svg.append(svgEl("text", { x: LABEL + W, y: height - 4, class: "tick", "text-anchor": "end" }, `${top.toFixed(2)} s`));
  container.replaceChildren(svg);
}

// A request's progress: per stage, the inputs settled (processed or failed) so far, as a step
// line over time from the request's creation, from its `request.settled` events; the final count beside each line.
function drawProgress(container, settled, stages, startSeconds, nowSeconds) {
  if (!settled.length) {
    container.replaceChildren(Object.assign(document.createElement("p"), { className: "hint", textContent: "nothing settled yet" }));
    return;
  }
  const t0 = Math.min(startSeconds, ...settled.map((e) => e.at)), t1 = Math.max(t0 + 0.001, nowSeconds, ...settled.map((e) => e.at));
  const lines = stages.map((stage) => {
    let total = 0;
    const points = [];
    for (const e of settled.filter((x) => x.data.stage === stage)) {
      total += (e.data.inputs.processed || 0) + (e.data.inputs.failed || 0);
      points.push([e.at, total]);
    }
    return { stage, points, total };
  }).filter((l) => l.points.length);
  const top = Math.max(1, ...lines.map((l) => l.total));
  const LEFT = 40, W = 560, H = 120, PAD = 6, AXIS = 18;
  const width = LEFT + W + 120, height = PAD + H + AXIS;
  const x = (t) => LEFT + ((t - t0) / (t1 - t0)) * W, y = (v) => PAD + H - (v * H) / top;
  const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "progress", role: "img" });
  svg.append(svgEl("line", { x1: LEFT, x2: LEFT + W, y1: PAD + H, y2: PAD + H, class: "grid" }));
  svg.append(svgEl("text", { x: LEFT - 4, y: PAD + 10, "text-anchor": "end", class: "tick" }, String(top)));
  lines.forEach((l, i) => {
    let d = `M${x(t0)},${y(0)}`;
    for (const [t, v] of l.points) d += ` H${x(t)} V${y(v)}`;
    d += ` H${x(t1)}`;
    svg.append(svgEl("path", { d, class: `line series-${i % 4}`, "data-stage": l.stage, "data-settled": l.total }));
    svg.append(svgEl("text", { x: LEFT + W + 6, y: y(l.total) + 4 + i * 12, class: "tick" }, `${l.stage}: ${l.total}`));
  });
  svg.append(svgEl("text", { x: LEFT, y: height - 4, class: "tick" }, "+0 s"));
  svg.append(svgEl("text", { x: LEFT + W, y: height - 4, class: "tick", "text-anchor": "end" }, `+${(t1 - t0).toFixed(1)} s`));
  container.replaceChildren(svg);
}

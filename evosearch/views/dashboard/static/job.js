"use strict";

const state = {summary: null, candidates: [], front: {ids: [], candidates: [], gene_names: []}, convergence: null,
  version: null, sort: {key: "id", descending: false}, showAll: false};
const TABLE_ROWS = 200;
const GREY = "#b8b8b8", FRONT = "#1f5fa8";

const $ = (id) => document.getElementById(id);
const finite = (v) => typeof v === "number" && Number.isFinite(v);

function objectives() { return state.summary ? state.summary.objectives : []; }

function value(candidate, axis, split) {
  if (axis === "generation") return candidate.generation;
  return (candidate[split] || {})[axis];
}

function axisTitle(axis, split) {
  if (axis === "generation") return "generation";
  const objective = objectives().find((o) => o.name === axis);
  const where = objective && objective.kind === "cost" ? "cost" : `${split} split`;
  return plotText(`${axis} (${objective ? objective.direction : ""}, ${where})`);
}

function hover(candidate) {
  const lines = [`candidate ${candidate.id} (generation ${candidate.generation}, #${candidate.index})`];
  for (const o of objectives()) {
    const report = o.kind === "task" ? `, report ${fmt((candidate.report || {})[o.name])}` : "";
    lines.push(`${plotText(o.name)}: search ${fmt((candidate.search || {})[o.name])}${report}`);
  }
  return lines.join("<br>");
}

// --- controls ------------------------------------------------------------------------------------------
function fillSelect(select, options, chosen) {
  const current = select.value || chosen;
  select.replaceChildren(...options.map(([v, label]) => el("option", {value: v}, label)));
  if (options.some(([v]) => v === current)) select.value = current;
}

function fillControls() {
  const names = objectives().map((o) => [o.name, o.name]);
  const xs = names.length > 1 ? names.concat([["generation", "generation"]]) : [["generation", "generation"]].concat(names);
  fillSelect($("x-objective"), xs, xs[0][0]);
  fillSelect($("y-objective"), names, names.length > 1 ? names[1][0] : names[0][0]);
  const generations = [["", "last committed"]];
  for (let g = state.summary.committed_generations - 1; g >= 0; g--) generations.push([String(g), String(g)]);
  fillSelect($("generation"), generations, "");
}

// --- plots -----------------------------------------------------------------------------------------------
function renderFront() {
  const x = $("x-objective").value, y = $("y-objective").value, split = $("split").value;
  const onFront = new Set(state.front.ids);
  const plotted = (c) => finite(value(c, x, split)) && finite(value(c, y, split));
  const others = state.candidates.filter((c) => c.status === "done" && !onFront.has(c.id) && plotted(c));
  const members = state.front.candidates.filter(plotted).sort((a, b) => value(a, x, split) - value(b, x, split));
  const trace = (rows, name, marker) => ({type: "scatter", mode: "markers", name, marker,
    x: rows.map((c) => value(c, x, split)), y: rows.map((c) => value(c, y, split)),
    customdata: rows.map((c) => c.id), text: rows.map(hover), hovertemplate: "%{text}<extra></extra>"});
  const traces = [trace(others, "not on the front", {color: GREY, size: 7, opacity: 0.7})];
  const xObjective = objectives().find((o) => o.name === x);
  if (xObjective && split === "search" && members.length > 1) {
    traces.push({type: "scatter", mode: "lines", name: "front line", hoverinfo: "skip", showlegend: false,
      x: members.map((c) => value(c, x, split)), y: members.map((c) => value(c, y, split)),
      line: {color: FRONT, width: 1.5, shape: xObjective.direction === "max" ? "vh" : "hv"}});
  }
  const generation = state.front.generation;
  traces.push(trace(members, `front${generation === null ? "" : ` (generation ${generation})`}`,
    {color: FRONT, size: 11, line: {color: "#0b2a4a", width: 1}}));
  const layout = {...baseLayout, uirevision: `${x}|${y}|${split}`, height: 460, legend: {orientation: "h", y: 1.1},
    xaxis: {title: {text: axisTitle(x, split)}}, yaxis: {title: {text: axisTitle(y, split)}}};
  Plotly.react($("front-plot"), traces, layout, plotConfig);
  $("front-plot").dataset.frontPoints = String(members.length);
  $("front-count").textContent = `${members.length} candidate(s) on the front` +
    (generation === null ? " (no generation committed yet);" : ` of generation ${generation};`) +
    ` ${others.length} other(s) shown.`;
}

function generationAxis(count) {
  return {title: {text: "generation", standoff: 4}, dtick: count <= 12 ? 1 : undefined, zeroline: false};
}

function renderConvergence() {
  const data = state.convergence;
  const holder = $("convergence");
  if (holder.children.length !== data.objectives.length) {
    holder.replaceChildren(...data.objectives.map((_, i) => el("div", {id: `convergence-${i}`, class: "plot small"})));
  }
  data.objectives.forEach((o, i) => {
    const traces = [{type: "scatter", mode: "lines+markers", name: o.kind === "cost" ? "best so far (cost)" :
      "best so far, search split", x: data.generations, y: o.search_best_so_far, line: {color: FRONT}}];
    if (o.kind === "task") {
      traces.push({type: "scatter", mode: "lines+markers", name: "front's best, report split (held out)",
        x: data.generations, y: o.report_front_best, line: {color: "#d4700f", dash: "dash"}, connectgaps: false});
    }
    Plotly.react($(`convergence-${i}`), traces, {...baseLayout, height: 260, title: {text: plotText(`${o.name} (${o.direction})`)},
      legend: {orientation: "h", y: -0.35}, margin: {l: 60, r: 20, t: 40, b: 80},
      xaxis: generationAxis(data.generations.length)}, plotConfig);
  });
  const hv = data.hypervolume;
  Plotly.react($("hypervolume"), [{type: "scatter", mode: "lines+markers", name: "hypervolume",
    x: hv.map((g) => g.generation), y: hv.map((g) => g.hypervolume), line: {color: "#2a8a4a"},
    text: hv.map((g) => `front of ${g.front_size}`), hovertemplate: "generation %{x}: %{y:.4g}, %{text}<extra></extra>"}],
    {...baseLayout, height: 260, xaxis: generationAxis(data.generations.length),
      yaxis: {title: {text: "hypervolume (search split)"}}}, plotConfig);
}

function colour(t) {
  return `hsl(${Math.round(230 - 200 * t)}, 65%, 42%)`;
}

function renderGenes() {
  const genes = state.front.gene_names.map(plotText);
  const first = objectives()[0];
  const members = state.front.candidates;
  const scores = members.map((c) => (c.search || {})[first.name]).filter(finite);
  const low = Math.min(...scores), high = Math.max(...scores);
  const traces = members.map((c) => {
    const v = (c.search || {})[first.name];
    let t = finite(v) && high > low ? (v - low) / (high - low) : 0.5;
    if (first.direction === "min") t = 1 - t;
    return {type: "scatter", mode: "lines+markers", x: genes, y: c.genome, name: `candidate ${c.id}`,
      customdata: genes.map(() => c.id), line: {color: colour(t), width: 1.5}, marker: {size: 5},
      hovertemplate: `candidate ${c.id}: %{x} = %{y:.4f}<br>${plotText(first.name)} ${fmt(v)}<extra></extra>`};
  });
  Plotly.react($("genes"), traces, {...baseLayout, height: 400, showlegend: members.length <= 12,
    margin: {l: 60, r: 20, t: 20, b: 120},
    yaxis: {title: {text: "gene (unit box)"}, range: [-0.02, 1.02]}, xaxis: {type: "category", tickangle: -40, automargin: true}},
    plotConfig);
}

// --- table -----------------------------------------------------------------------------------------------
function columns() {
  const cols = [
    {key: "id", label: "id", get: (c) => c.id},
    {key: "generation", label: "gen", get: (c) => c.generation},
    {key: "index", label: "#", get: (c) => c.index},
    {key: "status", label: "status", get: (c) => c.status},
    {key: "worker", label: "worker", get: (c) => c.worker},
    {key: "attempts", label: "attempts", get: (c) => c.attempts},
    {key: "build_seconds", label: "build s", get: (c) => c.build_seconds},
    {key: "eval_seconds", label: "eval s", get: (c) => c.eval_seconds},
  ];
  for (const o of objectives()) {
    cols.push({key: `search:${o.name}`, label: `${o.name} (search)`, get: (c) => (c.search || {})[o.name]});
    if (o.kind === "task") cols.push({key: `report:${o.name}`, label: `${o.name} (report)`, get: (c) => (c.report || {})[o.name]});
  }
  cols.push({key: "error", label: "error", get: (c) => c.error});
  return cols;
}

const missing = (v) => v === null || v === undefined;

// Missing values sort last whichever the direction.
function compare(a, b, sign) {
  if (missing(a) || missing(b)) return missing(a) - missing(b);
  return sign * (typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b)));
}

function renderTable() {
  const cols = columns();
  const head = $("candidates").tHead;
  if (head.dataset.keys !== cols.map((c) => c.key).join("|")) {
    head.dataset.keys = cols.map((c) => c.key).join("|");
    head.replaceChildren(el("tr", {}, ...cols.map((col) => {
      const th = el("th", {"data-key": col.key}, col.label);
      th.addEventListener("click", () => {
        state.sort = {key: col.key, descending: state.sort.key === col.key ? !state.sort.descending : col.key !== "id"};
        renderTable();
      });
      return th;
    })));
  }
  for (const th of head.querySelectorAll("th")) {
    th.classList.toggle("sorted", th.dataset.key === state.sort.key);
    th.classList.toggle("descending", th.dataset.key === state.sort.key && state.sort.descending);
  }
  const wanted = $("status-filter").value;
  const col = cols.find((c) => c.key === state.sort.key) || cols[0];
  const sign = state.sort.descending ? -1 : 1;
  const rows = state.candidates.filter((c) => !wanted || c.status === wanted)
    .sort((a, b) => compare(col.get(a), col.get(b), sign));
  const shown = state.showAll ? rows : rows.slice(0, TABLE_ROWS);
  const onFront = new Set(state.front.ids);
  replaceRows($("candidates").tBodies[0], shown.map((c) => el("tr", {class: `${c.status}${onFront.has(c.id) ? " on-front" : ""}`,
    "data-id": c.id}, ...cols.map((column) => {
      const v = column.get(c);
      if (column.key === "id") return el("td", {class: "num"}, el("a", {href: candidatePath(page.store, page.job, c.id)}, c.id));
      if (column.key === "error") return el("td", {class: "error-cell"}, v || "");
      return el("td", {class: typeof v === "number" ? "num" : ""}, typeof v === "number" ? fmt(v) : (v ?? "-"));
    }))));
  $("more").hidden = state.showAll || rows.length <= TABLE_ROWS;
  $("more").textContent = `show all ${rows.length}`;
  $("candidate-count").textContent = `${state.candidates.length} (${state.summary.done} done, ${state.summary.failed} failed)`;
  $("candidate-count").dataset.count = String(state.candidates.length);
}

// --- summary and refresh ---------------------------------------------------------------------------------
function renderSummary() {
  const s = state.summary;
  $("status").replaceChildren(statusBadge(s.status, s.dead_suspected));
  const best = Object.entries(s.best_search).map(([n, v]) => `${n} ${fmt(v)}`).join(", ") || "-";
  const quiet = s.seconds_since_last_write === null ? "-" : `${duration(s.seconds_since_last_write)} ago` +
    (s.status === "dead" ? ` (dead: driver ${s.driver} stopped renewing its lease: evosearch resume ${s.job})`
      : s.dead_suspected ? ` (dead? nothing written for longer than ${duration(s.dead_after_seconds)}: evosearch resume ${s.job})` : "");
  const facts = [["generation", s.generation === null ? "-" : `${s.generation} committed of ${s.max_generations}`],
    ["candidates", `${s.done} done, ${s.failed} failed`], ["best (search split)", best], ["last write", quiet],
    ["typical candidate", s.typical_candidate_seconds === null ? "-" : `${fmt(s.typical_candidate_seconds, 2)} s`],
    ["space / optimizer", `${s.space} / ${s.optimizer} (population ${s.population_size})`],
    ["fitness", `${s.fitness.mode}${s.fitness.mode === "reduced" ? `: ${s.fitness.estimator}, k=${s.fitness.k}, calibration ${s.fitness.calibration}` : ""}`],
    ["report split scored", s.report_when], ["store", s.store_url]];
  if (s.message) facts.push(["message", s.message]);
  $("summary").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function loadFront() {
  const generation = $("generation").value;
  state.front = await getJSON(apiPath("/front") + (generation ? `?generation=${encodeURIComponent(generation)}` : ""));
}

async function refresh() {
  state.summary = await getJSON(apiPath());
  renderSummary();
  if (state.summary.version === state.version) return;
  const first = state.version === null;
  fillControls();
  const [candidates, , convergence] = await Promise.all([getJSON(apiPath("/candidates")), loadFront(),
    getJSON(apiPath("/convergence"))]);
  state.candidates = candidates.candidates;
  state.convergence = convergence;
  state.version = state.summary.version;
  renderFront();
  renderConvergence();
  renderGenes();
  renderTable();
  document.body.dataset.version = state.version;
  if (first) {
    bindClicks();
    document.body.dataset.ready = "1";
  }
}

// Plotly gives a plot's div its `on` once the plot is drawn.
function bindClicks() {
  for (const id of ["front-plot", "genes"]) {
    $(id).on("plotly_click", (event) => {
      const point = event.points && event.points[0];
      if (point && point.customdata !== undefined) window.location.href = candidatePath(page.store, page.job, point.customdata);
    });
  }
}

for (const id of ["x-objective", "y-objective", "split"]) $(id).addEventListener("change", renderFront);
$("generation").addEventListener("change", async () => { await loadFront(); renderFront(); renderGenes(); renderTable(); });
$("status-filter").addEventListener("change", renderTable);
$("more").addEventListener("click", () => { state.showAll = true; renderTable(); });
$("front-controls").addEventListener("submit", (event) => event.preventDefault());
poll(refresh, 2000);

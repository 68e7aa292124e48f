"use strict";

const $ = (id) => document.getElementById(id);
let lastCount = null;

function share(v) { return v === null || v === undefined ? "-" : `${(100 * v).toFixed(1)}%`; }

function renderTimeline(data) {
  const workers = data.workers.map((w) => plotText(w.worker));
  const segments = data.workers.flatMap((w, i) => w.segments.map((s) => ({...s, worker: workers[i]})));
  const bar = (name, base, width, color) => ({type: "bar", orientation: "h", name, y: segments.map((s) => s.worker),
    base: segments.map(base), x: segments.map(width), marker: {color}, customdata: segments.map((s) => s.id),
    text: segments.map((s) => `candidate ${s.id} (g${s.generation} #${s.index}, ${s.status})`),
    hovertemplate: `%{text}: ${name} %{x:.2f} s<extra></extra>`, textposition: "none"});
  Plotly.react($("timeline"), [bar("build", (s) => s.start, (s) => s.build_seconds, "#1f5fa8"),
    bar("evaluation", (s) => s.start + s.build_seconds, (s) => s.eval_seconds, "#8fb8e6")],
  {...baseLayout, barmode: "overlay", height: 160 + 40 * workers.length, margin: {l: 180, r: 20, t: 30, b: 50},
    xaxis: {title: {text: "seconds since the first candidate started"}}, yaxis: {type: "category"},
    legend: {orientation: "h", y: 1.15}}, plotConfig);
  replaceRows($("workers").tBodies[0], data.workers.map((w) => el("tr", {},
    el("td", {}, w.worker), el("td", {class: "num"}, w.candidates), el("td", {class: "num"}, w.failed),
    el("td", {class: "num"}, fmt(w.build_seconds, 1)), el("td", {class: "num"}, fmt(w.eval_seconds, 1)),
    el("td", {class: "num"}, share(w.busy_share)))));
}

async function refresh() {
  const data = await getJSON(apiPath("/workers"));
  const count = data.workers.reduce((n, w) => n + w.candidates, 0);
  if (count !== lastCount) {
    renderTimeline(data);
    lastCount = count;
  }
  document.body.dataset.ready = "1";
}

poll(refresh, 5000);

"use strict";

const $ = (id) => document.getElementById(id);

function seconds(v) { return v === null || v === undefined ? "-" : `${fmt(v, 2)} s`; }

function renderFacts(c) {
  $("status").replaceChildren(statusBadge(c.status, false));
  const facts = [["job", c.job], ["recipe hash", c.recipe_hash], ["generation / index", `${c.generation} / #${c.index}`],
    ["kind", c.kind === "ps" ? "PS (parameter space)" : "DFS (layer path)"], ["worker", c.worker || "-"],
    ["attempts", c.attempts], ["build", seconds(c.build_seconds)], ["evaluation", seconds(c.eval_seconds)],
    ["overhead", seconds(c.overhead_seconds)]];
  const dl = $("facts");
  dl.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {"data-fact": k}, v)]));
  if (c.cached_from !== null) {
    dl.append(el("dt", {}, "scores copied from"),
      el("dd", {}, el("a", {href: candidatePath(c.store, c.job, c.cached_from)}, `candidate ${c.cached_from}`),
        " (the same recipe)"));
  }
  if (c.error) {
    $("error").hidden = false;
    $("error").textContent = c.error;
  }
}

function renderScores(c) {
  replaceRows($("scores").tBodies[0], c.scores.map((s) => el("tr", {class: s.split},
    el("td", {}, s.objective), el("td", {}, s.direction || "-"), el("td", {}, s.split),
    el("td", {class: "num"}, fmt(s.estimated)), el("td", {class: "num"}, fmt(s.anchor_accuracy)),
    el("td", {class: "num"}, fmt(s.full)), el("td", {}, s.measured_on), el("td", {}, s.metric || "-"),
    el("td", {}, s.filter || "-"))));
}

function psHeatmaps(holder, picture, title) {
  if (picture.error) {
    holder.append(el("p", {class: "error"}, `cannot resolve the recipe's parameters: ${picture.error}`));
    return;
  }
  const constant = (p) => p.rows.every((r) => r.values.every((v) => v === p.rows[0].values[0]));
  const fixed = picture.parameters.filter(constant);
  if (fixed.length) {
    holder.append(el("p", {class: "note"}, `${title}the same for every source and layer: ` +
      fixed.map((p) => `${p.name} ${fmt(p.rows[0].values[0])}`).join(", ")));
  }
  for (const parameter of picture.parameters.filter((p) => !constant(p))) {
    const div = el("div", {class: "plot small"});
    holder.append(div);
    const rows = parameter.rows;
    Plotly.newPlot(div, [{type: "heatmap", x: picture.columns.map(plotText), y: rows.map((r) => plotText(r.label)),
      z: rows.map((r) => r.values), colorscale: "Viridis", text: rows.map((r) => r.values.map((v) => fmt(v, 3))),
      texttemplate: "%{text}", hovertemplate: "%{y}, %{x}: %{z:.4f}<extra></extra>", colorbar: {title: {text: plotText(parameter.name)}}}],
    {...baseLayout, height: 120 + 40 * rows.length, margin: {l: 140, r: 20, t: 40, b: 50},
      title: {text: plotText(`${title}${picture.method}: ${parameter.name} per layer per source`)},
      xaxis: {type: "category"}, yaxis: {type: "category", autorange: "reversed"}}, plotConfig);
  }
}

function dfsPath(holder, picture) {
  const div = el("div", {class: "plot"});
  holder.append(div);
  const traces = picture.sources.map((label, source) => {
    const hops = picture.hops.filter((h) => h.source === source);
    return {type: "scatter", mode: "markers+text", name: plotText(label), x: hops.map((h) => h.step),
      y: hops.map((h) => h.layer), text: hops.map((h) => `L${h.layer}`), textposition: "top center",
      marker: {size: 14}, hovertemplate: hops.map((h) => `hop ${h.step}: ${plotText(label)} layer ${h.layer}, scale ${fmt(h.scale)}<extra></extra>`)};
  });
  traces.unshift({type: "scatter", mode: "lines", name: "path", x: picture.hops.map((h) => h.step),
    y: picture.hops.map((h) => h.layer), line: {color: "#999", width: 1}, hoverinfo: "skip", showlegend: false});
  traces.push({type: "bar", name: "scale into the layer", x: picture.hops.map((h) => h.step),
    y: picture.hops.map((h) => h.scale), yaxis: "y2", marker: {color: "#8c7a5b"},
    hovertemplate: "hop %{x}: scale %{y:.4f}<extra></extra>"});
  Plotly.newPlot(div, traces, {...baseLayout, height: 440, title: {x: 0.01, xanchor: "left", text: plotText(
    `layer path: ${picture.hops.length} hops over ${picture.sources.length} source(s); embeddings and head from ${picture.embed_source}`)},
    xaxis: {title: {text: "hop"}, dtick: 1, anchor: "y2"}, yaxis: {title: {text: "layer"}, domain: [0.38, 1], dtick: 1},
    yaxis2: {title: {text: "scale"}, domain: [0, 0.28]}, margin: {l: 60, r: 20, t: 70, b: 50},
    legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom"}}, plotConfig);
  for (const part of picture.ps_sources) psHeatmaps(holder, part.picture, `${part.source}: `);
}

function renderPicture(c) {
  const holder = $("picture");
  holder.replaceChildren();
  if (c.picture.kind === "ps") {
    $("picture-note").textContent = "Each parameter as the merge resolves it for a tensor of each layer (rest: " +
      "embeddings, norms and head).";
    psHeatmaps(holder, c.picture, "");
  } else {
    $("picture-note").textContent = "Which layer of which source runs at each hop, and the scale the residual " +
      "stream is multiplied by on entering it (the first hop uses 1).";
    dfsPath(holder, c.picture);
  }
}

async function load() {
  const c = await getJSON(apiPath(`/candidates/${encodeURIComponent(page.candidate)}`));
  renderFacts(c);
  renderScores(c);
  $("recipe-yaml").textContent = c.recipe_yaml;
  $("mergekit-panel").hidden = c.mergekit_yaml === null;
  $("mergekit-yaml").textContent = c.mergekit_yaml || "";
  $("export-command").textContent = c.export_command || "(a failed candidate has nothing to export)";
  $("export-note").textContent = c.export_command && c.export_command.includes(":***@") ?
    "Put the store's password in place of ***." : "Rebuilds this candidate into an HF directory with its model card.";
  replaceRows($("genome").tBodies[0], c.genome.map((g) => el("tr", {}, el("td", {}, g.gene), el("td", {class: "num"}, fmt(g.value, 6)))));
  renderPicture(c);
  document.body.dataset.ready = "1";
}

load().catch((error) => {
  $("error").hidden = false;
  $("error").textContent = error.message;
});

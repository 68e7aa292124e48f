"use strict";

function bestText(best) {
  const parts = Object.entries(best || {}).map(([name, value]) => `${name} ${fmt(value)}`);
  return parts.length ? parts.join(", ") : "-";
}

function lastWriteText(job) {
  if (job.seconds_since_last_write === null) return "-";
  return `${duration(job.seconds_since_last_write)} ago`;
}

async function refreshJobs() {
  const [jobs, calibrations] = await Promise.all([getJSON("/api/jobs"), getJSON("/api/calibrations")]);
  replaceRows(document.querySelector("#jobs tbody"), jobs.jobs.map((job) => el("tr", {"data-job": job.job},
    el("td", {}, el("a", {href: jobPath(job.store, job.job)}, job.job)),
    el("td", {}, job.store),
    el("td", {title: job.message || ""}, statusBadge(job.status, job.dead_suspected)),
    el("td", {class: "num"}, job.generation === null ? "-" : job.generation),
    el("td", {class: "num"}, job.done),
    el("td", {class: "num"}, job.failed),
    el("td", {}, bestText(job.best_search)),
    el("td", {title: job.last_write || ""}, lastWriteText(job)),
    el("td", {class: "num"}, fmt(job.candidates_per_minute, 1)),
    el("td", {}, el("a", {href: `${jobPath(job.store, job.job)}/workers`}, "workers")))));
  document.getElementById("jobs-empty").hidden = jobs.jobs.length > 0;
  replaceRows(document.querySelector("#calibrations tbody"), calibrations.calibrations.map((c) => el("tr", {},
    el("td", {}, c.name), el("td", {}, c.store), el("td", {}, c.tasks.join(", ")),
    el("td", {}, c.fitted ? `version ${c.fit_version}` : "not fitted"),
    el("td", {}, Object.entries(c.models_by_role).map(([role, n]) => `${role} ${n}`).join(", ") || "-"),
    el("td", {}, c.created_at || "-"))));
  replaceRows(document.getElementById("stores"), jobs.stores.map((s) => el("li", {}, `${s.key}: `,
    el("code", {}, s.url))));
  document.body.dataset.ready = "1";
}

poll(refreshJobs, 3000);

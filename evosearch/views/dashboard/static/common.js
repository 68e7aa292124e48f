// Shared by every page. Store strings reach the page only as text (textContent), never as markup, and are
// entity-escaped before Plotly draws them (Plotly reads a few HTML tags in its labels).
"use strict";

const page = document.body.dataset;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "href") node.setAttribute("href", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "-";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
}

function plotText(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function jobPath(store, job) {
  return `/jobs/${encodeURIComponent(store)}/${encodeURIComponent(job)}`;
}

function candidatePath(store, job, id) {
  return `${jobPath(store, job)}/candidates/${encodeURIComponent(id)}`;
}

function apiPath(suffix = "") {
  return `/api${jobPath(page.store, page.job)}${suffix}`;
}

async function getJSON(url) {
  const response = await fetch(url, {credentials: "same-origin", headers: {accept: "application/json"}});
  const body = await response.json().catch(() => ({error: response.statusText}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function replaceRows(tbody, rows) {
  const fragment = document.createDocumentFragment();
  rows.forEach((row) => fragment.append(row));
  tbody.replaceChildren(fragment);
}

// `dead`: the driver's lease expired; `dead?`: a job without a lease that has been quiet too long.
function statusBadge(status, dead) {
  const text = status === "dead" ? "dead" : dead ? `${status}, dead?` : status;
  return el("span", {class: `badge ${dead ? "dead" : status}`}, text);
}

// Calls `refresh` now and every `ms`, one call at a time; the header says when the page last heard from the store.
function poll(refresh, ms) {
  const live = document.getElementById("live");
  let busy = false;
  async function tick() {
    if (busy) return;
    busy = true;
    try {
      await refresh();
      live.textContent = `live · read ${new Date().toLocaleTimeString()}`;
      live.classList.remove("stale");
    } catch (error) {
      live.textContent = `cannot read the store: ${error.message}`;
      live.classList.add("stale");
    } finally {
      busy = false;
    }
  }
  tick();
  return setInterval(tick, ms);
}

const plotConfig = {displaylogo: false, responsive: true};
const baseLayout = {margin: {l: 60, r: 20, t: 30, b: 50}, font: {size: 12}, hovermode: "closest",
  paper_bgcolor: "#fff", plot_bgcolor: "#fafafa"};

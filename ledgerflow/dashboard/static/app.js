// The ledgerflow dashboard: three views over the JSON API, routed by the URL hash.
//   #/runs?status=failed&workflow=x   the runs list with its filters
//   #/run/<run id>                    one run: facts, timeline of step bars, events
//   #/dlq                             the dead-letter queue
// Every value from the API is put in the page with textContent (never innerHTML),
// so a payload holding markup is shown as text and never runs.
"use strict";

const $ = (selector) => document.querySelector(selector);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace("Z", "") : "";
}

function payload(value, summary) {
  // An expandable block: a short summary line, the full JSON inside.
  const text = pretty(value);
  const short = text.length > 80 ? text.slice(0, 77).replace(/\s+/g, " ") + "..." : text;
  return el("details", { class: "payload" }, [
    el("summary", { text: summary || short }),
    el("pre", { text }),
  ]);
}

// The API token, if the server wants one (LEDGERFLOW_DASHBOARD_TOKEN): asked for once,
// kept in this tab's sessionStorage, sent as a bearer header (never a cookie, which a
// browser would also attach to requests another site makes).
const TOKEN_KEY = "ledgerflow-dashboard-token";

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) throw new Unauthorized(body.detail || "token required");
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function post(path, payload) {
  // JSON, so a cross-site form or image cannot make the same request.
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
}

function askForToken() {
  const rejected = sessionStorage.getItem(TOKEN_KEY) !== null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("#token-rejected").hidden = !rejected;
  show("token-view");
  $("#token-input").focus();
}

function useToken() {
  const token = $("#token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token-input").value = "";
  render();
}

function show(view) {
  for (const id of ["runs-view", "run-view", "dlq-view", "token-view"]) {
    $("#" + id).hidden = id !== view;
  }
}

function route() {
  const hash = location.hash.replace(/^#/, "") || "/runs";
  const [path, query] = hash.split("?");
  return { path, params: new URLSearchParams(query || "") };
}

let rendering = 0; // bumped per render: only the newest one may draw or say it is ready

// --- runs -------------------------------------------------------------------------

const STATUSES = ["created", "started", "completed", "failed", "cancelled"];

function renderStatusFilter(active) {
  const group = $("#status-filter");
  group.replaceChildren();
  for (const status of ["", ...STATUSES]) {
    const button = el("button", {
      type: "button",
      text: status || "all",
      "aria-pressed": String(status === active),
      data: { status },
    });
    button.addEventListener("click", () => setRunsFilter({ status }));
    group.append(button);
  }
}

function setRunsFilter(change) {
  const { params } = route();
  for (const [key, value] of Object.entries(change)) {
    if (value) params.set(key, value);
    else params.delete(key);
  }
  const query = params.toString();
  location.hash = "#/runs" + (query ? "?" + query : "");
}

async function showRuns(params) {
  const status = params.get("status") || "";
  const workflow = params.get("workflow") || "";
  renderStatusFilter(status);
  const input = $("#workflow-filter");
  if (document.activeElement !== input) input.value = workflow;
  const query = new URLSearchParams({ limit: "200" });
  if (status) query.set("status", status);
  if (workflow) query.set("workflow", workflow);
  const mine = rendering;
  const data = await api("/api/runs?" + query);
  if (mine !== rendering) return; // a newer view was asked for meanwhile
  const rows = data.runs.map((run) =>
    el("tr", { data: { runId: run.run_id, status: run.status } }, [
      el("td", {}, [el("a", { href: "#/run/" + encodeURIComponent(run.run_id), text: run.run_id })]),
      el("td", { text: run.workflow }),
      el("td", {}, [el("span", { class: "status status-" + run.status, text: run.status })]),
      el("td", { text: when(run.created_ms) }),
      el("td", { text: when(run.updated_ms) }),
      el("td", { text: String(run.events) }),
    ]),
  );
  $("#runs-table tbody").replaceChildren(...rows);
  $("#runs-empty").hidden = rows.length > 0;
  show("runs-view");
}

// --- one run ----------------------------------------------------------------------

function fact(name, value) {
  return [el("dt", { text: name }), el("dd", {}, [value])];
}

function renderFacts(run) {
  const facts = [
    ...fact("workflow", run.workflow),
    ...fact("created", when(run.created_ms)),
    ...fact("finished", when(run.finished_ms) || "-"),
    ...fact("arguments", payload({ args: run.args, kwargs: run.kwargs })),
  ];
  if (run.status === "completed") facts.push(...fact("result", payload(run.result)));
  if (run.error) facts.push(...fact("error", payload(run.error, `${run.error.type}: ${run.error.message}`)));
  if (run.cancel_reason) facts.push(...fact("cancelled", run.cancel_reason));
  $("#run-facts").replaceChildren(...facts);
}

function renderTimeline(detail) {
  // Every bar on one axis from the first event to the last: steps that ran in
  // parallel are bars that overlap in time, each on its own row.
  const origin = detail.origin_ms;
  const end = Math.max(detail.end_ms, ...detail.bars.map((bar) => bar.end_ms));
  const span = Math.max(end - origin, 1);
  const percent = (ms) => ((ms - origin) / span) * 100;
  const ticks = [];
  for (let i = 0; i <= 4; i++) {
    const tick = el("span", { class: "tick", text: `${Math.round((span * i) / 4)} ms` });
    tick.style.left = `${i * 25}%`;
    ticks.push(tick);
  }
  $("#axis").replaceChildren(...ticks);
  const lanes = detail.bars.map((bar) => {
    const node = el("div", {
      class: `bar kind-${bar.kind} status-${bar.status}` + (bar.open ? " open" : ""),
      title: `${bar.id} ${bar.name}: ${bar.status}, ${bar.end_ms - bar.start_ms} ms`,
      data: {
        barId: bar.id,
        kind: bar.kind,
        name: bar.name,
        status: bar.status,
        startMs: String(bar.start_ms),
        endMs: String(bar.end_ms),
      },
    });
    node.style.left = `${percent(bar.start_ms)}%`;
    node.style.width = `${Math.max(percent(bar.end_ms) - percent(bar.start_ms), 0)}%`;
    const attempt = bar.attempt > 1 ? ` (attempt ${bar.attempt})` : "";
    return el("div", { class: "lane" }, [
      el("span", { class: "lane-label", text: `${bar.id} ${bar.name}${attempt}` }),
      el("div", { class: "track" }, [node]),
    ]);
  });
  $("#lanes").replaceChildren(...lanes);
}

function renderEvents(detail) {
  const rows = detail.events.map((event) =>
    el("tr", { class: "event", data: { type: event.type, corr: event.corr } }, [
      el("td", { text: String(event.ts - detail.origin_ms) }),
      el("td", { text: event.type }),
      el("td", { text: event.corr || "run" }),
      el("td", {}, [payload(event.data)]),
    ]),
  );
  $("#events-table tbody").replaceChildren(...rows);
}

async function showRun(runId) {
  const mine = rendering;
  const detail = await api("/api/runs/" + encodeURIComponent(runId));
  if (mine !== rendering) return; // a newer view was asked for meanwhile
  $("#run-id").textContent = detail.run.run_id;
  const status = $("#run-status");
  status.textContent = detail.run.status;
  status.className = "status status-" + detail.run.status;
  renderFacts(detail.run);
  renderTimeline(detail);
  renderEvents(detail);
  show("run-view");
}

// --- dead letters -------------------------------------------------------------------

async function showDlq() {
  const mine = rendering;
  const data = await post("/api/dlq", { limit: 200 });
  if (mine !== rendering) return; // a newer view was asked for meanwhile
  $("#dlq-queue").textContent = data.queue;
  $("#dlq-depth").textContent = String(data.depth);
  const rows = data.messages.map((message) =>
    el("tr", { data: { messageId: message.id } }, [
      el("td", { text: message.id }),
      el("td", { class: "reason", text: message.reason || "" }),
      el("td", { text: message.queue || "" }),
      el("td", { text: when(message.dead_at_ms) }),
      el("td", { text: message.kind }),
      el("td", { text: message.run_id || "" }),
      el("td", { text: message.step || "" }),
      el("td", { text: String(message.size) }),
      el("td", {}, [payload({ message: message.decoded, headers: message.headers })]),
    ]),
  );
  $("#dlq-table tbody").replaceChildren(...rows);
  show("dlq-view");
}

// --- routing ------------------------------------------------------------------------


async function render() {
  const { path, params } = route();
  const mine = ++rendering;
  document.body.dataset.state = "loading";
  $("#error").hidden = true;
  try {
    if (path.startsWith("/run/")) await showRun(decodeURIComponent(path.slice(5)));
    else if (path === "/dlq") await showDlq();
    else await showRuns(params);
    if (mine === rendering) document.body.dataset.state = "ready";
  } catch (error) {
    if (mine !== rendering) return;
    if (error instanceof Unauthorized) {
      askForToken();
      document.body.dataset.state = "token";
      return;
    }
    $("#error").textContent = String(error.message || error);
    $("#error").hidden = false;
    document.body.dataset.state = "error";
  }
}

window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", () => {
  $("#refresh").addEventListener("click", render);
  $("#token-submit").addEventListener("click", useToken);
  $("#token-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") useToken();
  });
  $("#workflow-filter").addEventListener("change", (event) =>
    setRunsFilter({ workflow: event.target.value.trim() }),
  );
  render();
});

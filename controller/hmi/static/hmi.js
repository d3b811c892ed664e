// linesentry HMI: polls the status and the alarms, follows the event stream, and sends the
// operator's requests with the session's CSRF token. Every text from the API goes in with
// textContent (never as HTML). No library: the line has no internet.
"use strict";

const RANK = { viewer: 0, operator: 1, engineer: 2 };
const TREND_S = 300;  // the trend keeps the last five minutes (fewer right after the page opens)
const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 3000;  // a controller that does not answer (stopped, hung) is not waited for
const STALE_MS = 3500;  // no good answer for this long: the page says NO DATA, never a stale NORMAL
const MAX_EVENTS = 200;
const HIDDEN_STATES = new Set(["SHELVED", "SUPPRESSED", "OUT_OF_SERVICE"]);
const ANNUNCIATED = new Set(["UNACK", "ACKED", "RTN_UNACK"]);  // only these get their priority colour
const PRIORITY_NUMBER = { critical: 1, high: 2, medium: 3, low: 4 };

const hmi = {
  session: { user: null, role: null, csrf: null, reads_need_login: false },
  trend: [],  // [wall seconds, score, threshold]
  ackedBy: {},  // alarm -> user, from the ack events
  lastEvent: 0,
  stream: null,
  pending: null,  // the request the reason dialog confirms
  drawn: {},  // panel -> what it shows now: redrawn only on a change (buttons stay clickable)
  lastGood: 0,  // Date.now() of the last status and alarms the page got
  stale: true,  // what the page shows is not (or no longer) the controller's answer
  polling: false,  // a refresh is in flight: the next tick does not pile another on
  startedAt: undefined,  // the controller's start (status): a change means it restarted
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function clock(epoch) {
  if (epoch === null || epoch === undefined) return "";
  const d = new Date(epoch * 1000);
  const today = new Date().toDateString() === d.toDateString();
  const t = d.toLocaleTimeString([], { hour12: false });
  return today ? t : `${d.toLocaleDateString()} ${t}`;
}

function number(x, digits = 3) {
  return x === null || x === undefined ? "-" : Number(x).toPrecision(digits);
}

function can(needed) {
  const role = hmi.session.role || (hmi.session.reads_need_login ? null : "viewer");
  return role !== null && RANK[role] >= RANK[needed];
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (method !== "GET" && hmi.session.csrf) headers["X-CSRF-Token"] = hmi.session.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
    // Reads give up soon (the page then says NO DATA); a change (a model reload can take a while)
    // is waited for: giving up would not undo it on the controller.
    signal: method === "GET" ? AbortSignal.timeout(FETCH_TIMEOUT_MS) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error(data.error || `HTTP ${response.status}`);
    err.status = response.status;
    throw err;
  }
  return data;
}

function notice(text, isError = false) {
  const n = $("notice");
  n.textContent = text;
  n.className = isError ? "error" : "";
  n.hidden = !text;
}

// ------------------------------------------------------------------ session

function showSession() {
  const s = hmi.session;
  $("who-text").textContent = s.user ? `${s.user} (${s.role})`
    : (s.reads_need_login ? "not logged in" : "viewer (no login)");
  $("login-open").hidden = Boolean(s.user);
  $("logout").hidden = !s.user;
  for (const b of document.querySelectorAll("[data-needs]")) {
    b.disabled = !can(b.dataset.needs);
    b.title = b.disabled ? `needs the ${b.dataset.needs} role: log in` : "";
  }
}

async function loadSession() {
  hmi.session = await api("GET", "/api/v1/session");
  showSession();
}

async function login(event) {
  event.preventDefault();
  $("login-error").hidden = true;
  try {
    hmi.session = await api("POST", "/api/v1/session/login",
      { user: $("login-user").value, token: $("login-token").value });
    $("login-token").value = "";
    $("login-dialog").close();
    showSession();
    notice(`logged in as ${hmi.session.user} (${hmi.session.role})`);
    refresh();
    openStream();
  } catch (err) {
    $("login-error").textContent = err.message;
    $("login-error").hidden = false;
  }
}

async function logout() {
  try {
    hmi.session = await api("POST", "/api/v1/session/logout");
  } catch (err) {
    notice(err.message, true);
    await loadSession();
  }
  showSession();
  refresh();
}

// ------------------------------------------------------------------ operator requests

function ask(title, path, body, { seconds = false } = {}) {
  hmi.pending = { path, body, seconds };
  $("op-title").textContent = title;
  $("op-seconds-label").hidden = !seconds;
  $("op-reason").value = "";
  $("op-error").hidden = true;
  $("op-dialog").showModal();
  $("op-reason").focus();
}

async function confirmRequest(event) {
  event.preventDefault();
  const { path, body, seconds } = hmi.pending;
  const request = { ...body, reason: $("op-reason").value };
  if (seconds) request.seconds = Number($("op-seconds").value);
  try {
    const answer = await api("POST", path, request);
    $("op-dialog").close();
    const warning = answer.warning && !(answer.message || "").includes(answer.warning) ? answer.warning : "";
    notice([answer.message, warning].filter(Boolean).join(" - ") || "done");
    refresh();
  } catch (err) {
    $("op-error").textContent = err.message;
    $("op-error").hidden = false;
    // 401: the session ended on the controller (expiry, a restart, a login elsewhere in this
    // browser); the page shows so, and its buttons follow, instead of a logged-in user.
    if (err.status === 401) await loadSession().catch(() => {});
  }
}

function opButton(label, needs, onClick) {
  const b = el("button", { type: "button", "data-needs": needs, "data-op": label.toLowerCase(), text: label });
  b.disabled = !can(needs);
  if (b.disabled) b.title = `needs the ${needs} role: log in`;
  b.addEventListener("click", onClick);
  return b;
}

// ------------------------------------------------------------------ panels

function showStatus(status, alarms) {
  const c = status.controller || {};
  $("where").textContent = `linesentry - ${[c.site, c.line, c.name].filter(Boolean).join(" / ")}`;
  const d = status.detector || {};
  const state = $("line-state");
  // Abnormal: the detector says so, or a line alarm (one that carries an explanation) is active
  // for another of its causes (a hard limit).
  const abnormal = Boolean(d.alarm || d.explanation || alarms.some((a) => a.explanation && a.active));
  state.textContent = abnormal ? "ANOMALY" : "NORMAL";
  state.className = abnormal ? "state abnormal" : "state";
  const active = (status.alarms && status.alarms.active) || [];
  $("active-count").textContent = active.length ? `${active.length} alarm${active.length > 1 ? "s" : ""} active` : "no alarm active";
  $("score").textContent = number(d.score);
  $("threshold").textContent = number(d.threshold);
  const top = Math.max(d.threshold || 1, d.score || 0) * 1.25 || 1;
  const bar = $("score-bar");
  bar.style.width = `${Math.min(100, 100 * (d.score || 0) / top)}%`;
  bar.className = d.threshold !== null && d.score > d.threshold ? "over" : "";
  $("threshold-mark").style.left = `${100 * (d.threshold || 0) / top}%`;
  const why = d.explanation && d.explanation.text;
  $("explanation").textContent = why ? `why: ${why}` : "";
  $("explanation").hidden = !why;
  $("model").textContent = d.model ? `model ${d.model}` : "no model";

  const now = Date.now() / 1000;
  if (d.score !== null && d.score !== undefined) hmi.trend.push([now, d.score, d.threshold]);
  while (hmi.trend.length && hmi.trend[0][0] < now - TREND_S) hmi.trend.shift();
  drawTrend(now);
  showBanners(status.protections_disabled || []);
  showActions(status.actions || []);
  showPlcs(status.plcs || []);
}

function drawTrend(now) {
  const svg = $("trend");
  const W = 600, H = 140;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  // The span: whole minutes, at least one, up to TREND_S, as far back as the page has samples.
  const seen = hmi.trend.length ? now - hmi.trend[0][0] : 0;
  const minutes = Math.min(TREND_S / 60, Math.max(1, Math.ceil(seen / 60)));
  const span = minutes * 60;
  const top = Math.max(1e-9, ...hmi.trend.map(([, s, t]) => Math.max(s || 0, t || 0))) * 1.15;
  const x = (t) => W - (now - t) / span * W;
  const y = (v) => H - Math.min(v, top) / top * H;
  const ticks = minutes === 1 ? [-60, -45, -30, -15] : Array.from({ length: minutes }, (_, i) => (i - minutes) * 60);
  for (const t of ticks.slice(1)) {
    const grid = document.createElementNS(ns, "line");
    for (const [k, v] of Object.entries({ x1: x(now + t), x2: x(now + t), y1: 0, y2: H, stroke: "#d0d0d0" })) grid.setAttribute(k, v);
    svg.append(grid);
  }
  const label = (t) => (minutes === 1 ? `${t} s` : `${t / 60} min`);
  $("trend-axis").replaceChildren(...ticks.map((t) => el("span", { text: label(t) })), el("span", { text: "now" }));
  const line = (points, attrs) => {
    const p = document.createElementNS(ns, "polyline");
    p.setAttribute("points", points.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" "));
    p.setAttribute("fill", "none");
    for (const [k, v] of Object.entries(attrs)) p.setAttribute(k, v);
    svg.append(p);
  };
  const limits = hmi.trend.filter(([, , t]) => t !== null);
  if (limits.length) line(limits.map(([t, , l]) => [x(t), y(l)]), { stroke: "#1e1e1e", "stroke-dasharray": "6 4", "stroke-width": 1.5, id: "trend-threshold" });
  if (hmi.trend.length) line(hmi.trend.map(([t, s]) => [x(t), y(s)]), { stroke: "#5a5a5a", "stroke-width": 1.5, id: "trend-score" });
  // Over the threshold: the same samples again, in the alarm colour.
  let run = [];
  for (const [t, s, l] of hmi.trend) {
    if (l !== null && s > l) run.push([x(t), y(s)]);
    else { if (run.length > 1) line(run, { stroke: "#c8102e", "stroke-width": 2.5, class: "trend-over" }); run = []; }
  }
  if (run.length > 1) line(run, { stroke: "#c8102e", "stroke-width": 2.5, class: "trend-over" });
}

function showBanners(disabled) {
  $("banners").replaceChildren(...disabled.map((p) =>
    el("div", { class: `banner ${p.kind}`, "data-kind": p.kind, text: p.message })));
}

function changed(panel, data) {
  const key = JSON.stringify([data, hmi.session.role, hmi.ackedBy]);
  if (hmi.drawn[panel] === key) return false;
  hmi.drawn[panel] = key;
  return true;
}

function showAlarms(alarms) {
  if (!changed("alarms", alarms)) return;
  const rows = alarms.map((a) => {
    const normal = !ANNUNCIATED.has(a.state);
    const cls = [normal ? "alarm-normal" : `p-${a.priority}`, a.state === "UNACK" || a.state === "RTN_UNACK" ? "unack" : "",
      HIDDEN_STATES.has(a.state) ? "hidden-state" : ""].join(" ");
    const ops = el("td", { class: "ops" });
    if (a.state === "UNACK" || a.state === "RTN_UNACK") {
      ops.append(opButton("Ack", "operator", () => ask(`Acknowledge ${a.name}`, `/api/v1/alarms/${encodeURIComponent(a.name)}/ack`, {})));
    }
    if (a.state === "SHELVED") {
      ops.append(opButton("Unshelve", "operator", () => ask(`Unshelve ${a.name}`, `/api/v1/alarms/${encodeURIComponent(a.name)}/unshelve`, {})));
    } else if (a.state !== "OUT_OF_SERVICE") {
      ops.append(opButton("Shelve", "operator", () => ask(`Shelve ${a.name}`, `/api/v1/alarms/${encodeURIComponent(a.name)}/shelve`, {}, { seconds: true })));
    }
    const name = el("td", {}, el("div", { text: a.name }));
    const why = a.explanation && a.explanation.text;
    if (why && !normal) name.append(el("div", { class: "alarm-explanation", text: why }));
    const ackedBy = a.state === "ACKED" ? a.acked_by || hmi.ackedBy[a.name] || "" : "";
    return el("tr", { class: cls, "data-alarm": a.name, "data-state": a.state },
      el("td", {}, el("span", { class: "pri", text: normal ? (a.priority || "") : `${PRIORITY_NUMBER[a.priority] || "?"} ${a.priority}` })),
      name,
      el("td", { class: "state-cell", text: a.state }),
      el("td", { text: a.state === "NORMAL" ? "" : clock(a.since) }),
      el("td", { text: ackedBy }),
      el("td", { text: a.shelved_until ? `${clock(a.shelved_until)}${a.shelved_by ? ` (${a.shelved_by})` : ""}` : "" }),
      ops);
  });
  $("alarms").tBodies[0].replaceChildren(...rows);
}

function showActions(actions) {
  if (!changed("actions", actions)) return;
  const rows = actions.map((a) => {
    const state = el("td");
    for (const [flag, text] of [["latched", "LATCHED"], ["inhibited", "INHIBITED"], ["shadow", "SHADOW"], ["failed", "FAILED"]]) {
      if (a[flag]) state.append(el("span", { class: `tag ${flag}`, text }));
    }
    if (!state.childNodes.length) state.textContent = a.awaiting_confirmation ? "awaiting confirmation" : "armed";
    const base = `/api/v1/actions/${encodeURIComponent(a.name)}`;
    const ops = el("td", { class: "ops" });
    if (a.latched) ops.append(opButton("Reset", "engineer", () => ask(`Reset ${a.name}`, `${base}/reset`, {})));
    ops.append(a.inhibited
      ? opButton("Uninhibit", "engineer", () => ask(`Remove the inhibit of ${a.name}`, `${base}/inhibit`, { enabled: false }))
      : opButton("Inhibit", "engineer", () => ask(`Inhibit ${a.name}`, `${base}/inhibit`, { enabled: true })));
    return el("tr", { "data-action": a.name }, el("td", { text: a.name }), el("td", { text: a.alarm || "" }), state,
      el("td", { text: a.last_fire ? clock(a.last_fire) : "" }), ops);
  });
  $("actions").tBodies[0].replaceChildren(...rows);
}

function showPlcs(plcs) {
  const rows = plcs.map((p) => el("tr", { class: p.comm_lost || p.state !== "connected" ? "plc-bad" : "", "data-plc": p.name },
    el("td", { text: p.name }), el("td", { text: p.comm_lost ? `${p.state} (comm lost)` : p.state }),
    el("td", { text: p.last_good_data_age_s === null ? "never" : `${number(p.last_good_data_age_s, 2)} s` }),
    el("td", { text: String(p.reads) }), el("td", { text: `${p.read_errors} / ${p.write_errors}` }),
    el("td", { text: p.last_error || "" })));
  $("plcs").tBodies[0].replaceChildren(...rows);
}

function addEvents(events) {
  const list = $("events");
  for (const e of events) {
    if (e.id <= hmi.lastEvent) continue;
    hmi.lastEvent = e.id;
    if (e.kind === "alarm" && e.state === "ACKED" && e.user) hmi.ackedBy[e.source] = e.user;
    const who = e.user ? ` [${e.user}${e.role ? `, ${e.role}` : ""}]` : "";
    list.prepend(el("li", { class: e.kind === "alarm" ? "alarm-event" : "", "data-kind": e.kind,
      text: `${clock(e.time)}  ${e.kind}  ${e.source}: ${e.message}${who}` }));
  }
  while (list.childNodes.length > MAX_EVENTS) list.lastChild.remove();
}

// ------------------------------------------------------------------ data flow

async function refresh() {
  if (hmi.polling) return;
  hmi.polling = true;
  try {
    const [status, alarms] = await Promise.all([api("GET", "/api/v1/status"), api("GET", "/api/v1/alarms")]);
    const started = (status.controller || {}).started_at;
    const restarted = hmi.startedAt !== undefined && started !== hmi.startedAt;
    hmi.startedAt = started;
    if (hmi.stale || restarted) await loadSession().catch(() => {});  // a restart ended its sessions
    if (restarted) reloadEvents();
    hmi.lastGood = Date.now();
    hmi.stale = false;
    document.body.classList.remove("stale");
    showStatus(status, alarms);
    showAlarms(alarms);
    $("link").textContent = hmi.stream && hmi.stream.readyState === 1 ? "live" : "polling";
    $("link").className = "";
  } catch (err) {
    showStale(err.status === 401 ? "log in to see the line" : "no answer from the controller");
  } finally {
    hmi.polling = false;
  }
}

// What the page shows is no longer the controller's: the line state says NO DATA (a grey NORMAL
// left from before would look like a healthy line), the panels are dimmed and no button sends.
function showStale(why) {
  hmi.stale = true;
  document.body.classList.add("stale");
  const since = hmi.lastGood ? ` - shown values are from ${clock(hmi.lastGood / 1000)}` : "";
  $("link").textContent = `${why}${since}`;
  $("link").className = "link-lost";
  $("line-state").textContent = "NO DATA";
  $("line-state").className = "state stale";
  for (const b of document.querySelectorAll("main button, #reload")) b.disabled = true;
  hmi.drawn = {};  // redraw every panel (with its buttons) from the next good answer
}

// After a restart the event ids may start again from 1 (a damaged journal set aside): following
// on from the last id seen would show no new event for as long. The list is read again instead.
function reloadEvents() {
  $("events").replaceChildren();
  hmi.lastEvent = 0;
  hmi.ackedBy = {};
  openStream();
}

async function openStream() {
  if (hmi.stream) hmi.stream.close();
  try {
    if (hmi.lastEvent === 0) addEvents((await api("GET", "/api/v1/events")).slice(-MAX_EVENTS));
  } catch (err) {
    return;  // reads need a login first
  }
  if (hmi.stream) hmi.stream.close();  // another openStream finished first: one stream only
  const stream = new EventSource(`/api/v1/events/stream?since=${hmi.lastEvent}`);
  hmi.stream = stream;
  stream.onmessage = (m) => addEvents([JSON.parse(m.data)]);
  stream.onerror = () => {  // reconnect from the last event seen, not from where the URL says
    stream.close();
    if (hmi.stream === stream) setTimeout(openStream, 2000);
  };
}

function tick() {
  $("clock").textContent = new Date().toLocaleTimeString([], { hour12: false });
  if (!hmi.stale && Date.now() - hmi.lastGood > STALE_MS) showStale("no answer from the controller");
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-open").addEventListener("click", () => { $("login-error").hidden = true; $("login-dialog").showModal(); });
  $("login-cancel").addEventListener("click", () => $("login-dialog").close());
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("op-cancel").addEventListener("click", () => $("op-dialog").close());
  $("op-form").addEventListener("submit", confirmRequest);
  $("reload").addEventListener("click", () => ask("Reload the model", "/api/v1/model/reload", {}));
  tick();
  setInterval(tick, 1000);
  try { await loadSession(); } catch (err) { notice(err.message, true); }
  await refresh();
  setInterval(refresh, POLL_MS);
  openStream();
});

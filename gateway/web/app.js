// The technician's status page. One request per refresh (`/api/v1/overview`), every 2 s while
// the page is visible and every 30 s while it is hidden; every value is written with
// textContent, never parsed as HTML (a node's firmware string is whatever the node said).
"use strict";

const VISIBLE_EVERY_MS = 2000;
const HIDDEN_EVERY_MS = 30000;

const $ = (id) => document.getElementById(id);
let latest = null;
let timer = null;

// Sizes as a mobile operator bills them (SI), spans in the largest unit that says them.
function bytes(n) {
  if (n == null) return "—";
  if (n < 1000) return n + " B";
  const units = ["kB", "MB", "GB", "TB"];
  let v = n / 1000, u = 0;
  while (v >= 999.5 && u < units.length - 1) { v /= 1000; u++; }
  return (v < 9.95 ? v.toFixed(1) : v.toFixed(0)) + " " + units[u];
}
function span(ms) {
  if (ms == null) return "—";
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
}
function ago(now, at) { return at == null || at <= 0 ? "never" : span(now - at) + " ago"; }

function text(id, value) { const el = $(id); if (el.textContent !== value) el.textContent = value; }

function render(o) {
  // The first useful paint's moment, for the benchmark (docs/BENCHMARKS.md) and the curious.
  if (latest === null) performance.mark("outpost:first-render");
  latest = o;
  document.title = (o.verdict.level === "good" ? "" : "⚠ ") + o.gateway.id + " — Outpost";
  text("gateway-id", o.gateway.id);
  text("gateway-version", "Outpost " + o.gateway.version);
  text("gateway-uptime", span(o.gateway.uptime_s * 1000));
  text("refreshed", "updated " + new Date().toLocaleTimeString());
  $("refreshed").classList.remove("stale");

  const verdict = $("verdict");
  verdict.className = "verdict " + o.verdict.level;
  text("verdict-headline", o.verdict.headline);
  fillList($("verdict-findings"), o.verdict.findings.slice(1).map((f) => f.text));

  renderAlerts(o);

  renderUplink(o);
  renderGateway(o);
  renderHealth(o);
  renderNodes(o);
  renderDevices(o);
  renderWritable(o);
  renderEnrollment(o);
  renderCommands(o);
  renderFirmware(o);
}

// The newest signed commands from the cloud, obeyed or not (the audit log: `outpost audit`).
function renderCommands(o) {
  const c = o.commands || [];
  $("commands-section").hidden = c.length === 0;
  fillList($("commands-list"), c.map((e) =>
    ago(o.now_ms, e.received_ms) + ": " + e.verb + (e.request ? " (" + e.request + ")" : "") + " — " + e.outcome +
    (e.key_id ? ", signed by " + e.key_id : "") + (e.detail && e.outcome !== "ok" ? ": " + e.detail : "")));
}

// Who may join, and who proved a key but waits for a technician (a window) or a manifest.
function renderEnrollment(o) {
  const e = o.enrollment;
  const open = e.window_until_ms != null && e.window_until_ms > o.now_ms;
  const policy = {
    window: open ? "New nodes may join for " + span(e.window_until_ms - o.now_ms) + " more (enrollment window open)."
                 : "New nodes join only while a technician opens enrollment.",
    allowlist: "New nodes join only if the manufacturer's manifest lists them (" + e.listed + " listed).",
    closed: "No new node may join (policy closed).",
    open: "Any new node may join (policy open: a bench, not a site).",
  }[e.policy] || e.policy;
  text("enrollment-state", policy + (e.waiting.length ? " " + e.waiting.length + " waiting:" : ""));
  fillList($("enrollment-waiting"), e.waiting.map((w) =>
    w.uid + " on " + w.port + " — " + (w.reason === "not_listed" ? "not in the manifest" : "waiting for enrollment") +
    ", key " + w.key_id + ", hw " + w.hw_rev + ", lot " + (w.lot || "—") + ", seen " + ago(o.now_ms, w.last_seen_ms)));
  $("enroll-actions").hidden = !csrf || e.policy !== "window";
  $("enroll-open").hidden = open;
  $("enroll-close").hidden = !open;
}

// A fleet rule's alert: its rule, cohort, state, and its value against its thresholds.
function ruleText(a) {
  const r = a.rule;
  const v = (x) => r.rule === "outbox_age" ? span(x * 1000) : String(+x.toFixed(3));
  return r.rule.replace(/_/g, " ") + ", " + r.cohort_kind + " " + r.cohort + ": " + a.state +
    " — " + v(r.value) + " (fires above " + v(r.fire_above) + ", resolves below " + v(r.resolve_below) +
    "). " + a.message;
}

// Firing alerts, newest first, then pending ones; a logged-in technician may silence a firing
// one for an hour.
function renderAlerts(o) {
  const pending = o.pending_alerts || [];
  $("alerts-section").hidden = o.alerts.length === 0 && pending.length === 0;
  $("alerts").replaceChildren(...o.alerts.concat(pending).map((a) => {
    const li = document.createElement("li");
    const silenced = a.silenced_until_ms != null && a.silenced_until_ms > o.now_ms;
    li.textContent = (a.rule ? ruleText(a) : a.message) + " (" + ago(o.now_ms, a.at_ms) +
      (a.count > 1 ? ", ×" + a.count : "") + ")";
    li.dataset.kind = a.kind;
    li.dataset.state = a.state;
    if (a.state === "pending") {
      li.className = "pending";
    } else if (silenced) {
      li.className = "silenced";
      li.append(" — silenced for " + span(a.silenced_until_ms - o.now_ms));
    } else if (csrf) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "secondary";
      b.textContent = "Silence 1 h";
      b.addEventListener("click", async () => {
        try {
          await act("/api/v1/actions/silence", { kind: a.kind, subject: a.subject, minutes: 60 });
          say("Alert silenced for an hour on this site (the cloud still has it).");
          refresh();
        } catch (err) { say("Silence refused: " + err.message); }
      });
      li.append(b);
    }
    return li;
  }));
}

// The writable points of every device, for the write form.
function renderWritable(o) {
  const options = o.devices.flatMap((d) => (d.writable || []).map((p) => d.name + "/" + p));
  const select = $("write-point");
  const current = [...select.options].map((x) => x.value).join(",");
  if (current !== options.join(",")) {
    select.replaceChildren(...options.map((v) => { const opt = document.createElement("option"); opt.value = v; opt.textContent = v; return opt; }));
  }
  $("write-form").hidden = options.length === 0;
}

function fillList(list, items) {
  list.replaceChildren(...items.map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
}

function renderUplink(o) {
  const u = o.uplink;
  let state;
  if (!u.mqtt) state = "No MQTT uplink (the cloud pulls, or nothing is configured)";
  else if (u.refused) state = "Identity refused: " + u.refused;
  else if (u.connected) state = "Connected" + (u.protocol ? " (MQTT " + u.protocol + ")" : "") + " for " + span(o.now_ms - u.since_ms);
  else state = "Down" + (u.since_ms ? " for " + span(o.now_ms - u.since_ms) : "") + (u.last_error ? ": " + u.last_error : "");
  text("uplink-state", state);
  const p = u.provisioning;
  $("identity-label").hidden = $("uplink-identity").hidden = !p;
  if (p) text("uplink-identity", identityLine(o, p));
  text("uplink-waiting", u.batches + " (" + bytes(u.bytes) + ")" + (u.unsealed_readings ? ", " + u.unsealed_readings + " readings not sealed yet" : ""));
  text("uplink-oldest", u.oldest_unsent_ms == null ? "nothing waiting" : span(o.now_ms - u.oldest_unsent_ms) + " old");
  const c = o.cost;
  text("cost-today", bytes(c.bytes_today));
  text("cost-month", bytes(c.bytes_month) + (c.budget ? " of " + bytes(c.budget) + " budget, on course for " + bytes(c.projected_month) : " (no budget set)"));
  text("cost-interval", span(c.batch_interval_s * 1000));
  drawChart(o);
}

// The gateway's own identity (provisioning by claim): what it waits for, or why it failed and
// when it tries again; once provisioned, its name and when its certificate expires.
function identityLine(o, p) {
  const retry = p.next_attempt_unix_ms ? "; next try in " + span(p.next_attempt_unix_ms - o.now_ms) : "";
  const failed = p.last_error ? "attempt " + p.attempts + " failed: " + p.last_error + retry : "";
  if (p.state === "claiming") return "Not provisioned yet: " + (failed || "getting its own certificate with the claim certificate (" + String(p.exchange).replace(/_/g, " ") + ")");
  if (p.state === "renewing") return "Renewing its certificate" + (failed ? ": " + failed : "");
  let line = "Own certificate" + (p.thing_name ? " as " + p.thing_name : "");
  if (p.not_after_unix_s) line += ", expires in " + span(p.not_after_unix_s * 1000 - o.now_ms);
  if (p.renew_at_unix_s) line += ", renewed in " + span(p.renew_at_unix_s * 1000 - o.now_ms);
  return line + (p.last_error ? "; " + p.last_error : "");
}

// Bars of the last 31 days' bytes; today's bar carries what waits to be sent on top (the
// outbox), so an uplink that is down shows as a growing stripe; the dashed line is the daily
// share of the monthly budget.
function drawChart(o) {
  const svg = $("budget-chart");
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs, title) => {
    const e = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (title) { const t = document.createElementNS(ns, "title"); t.textContent = title; e.appendChild(t); }
    return e;
  };
  const byDay = new Map(o.daily_bytes.map((d) => [d.day, d.bytes]));
  const waiting = o.uplink.bytes || 0;
  const budgetPerDay = o.cost.budget ? o.cost.budget / 30 : 0;
  const W = 310, H = 95, n = 31, w = W / n;
  const now = new Date(o.now_ms);
  const days = [];
  for (let i = 0; i < n; i++) {
    const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() - (n - 1 - i)));
    const key = d.toISOString().slice(0, 10);
    days.push([key, byDay.get(key) || 0]);
  }
  const top = Math.max(1, budgetPerDay, ...days.map(([, v]) => v), days[n - 1][1] + waiting);
  const scale = (v) => Math.round((v / top) * (H - 5));
  const parts = [];
  days.forEach(([key, v], i) => {
    const h = scale(v);
    parts.push(el("rect", { class: "bar", x: (i * w + 1).toFixed(1), y: H - h, width: (w - 2).toFixed(1), height: h }, key + ": " + bytes(v) + " sent"));
  });
  if (waiting > 0) {
    const base = scale(days[n - 1][1]);
    const h = Math.max(2, scale(waiting));
    parts.push(el("rect", { class: "waiting", x: ((n - 1) * w + 1).toFixed(1), y: H - base - h, width: (w - 2).toFixed(1), height: h }, bytes(waiting) + " waiting to be sent"));
  }
  if (budgetPerDay) {
    const y = H - scale(budgetPerDay);
    parts.push(el("line", { class: "budget", x1: 0, x2: W, y1: y, y2: y }, "budget/30: " + bytes(budgetPerDay)));
  }
  const label = el("text", { x: 0, y: 108 });
  label.textContent = top === 1 && !waiting ? "No uplink traffic recorded yet" : "max " + bytes(top) + "/day" + (budgetPerDay ? " · dashed: budget/30" : "") + (waiting ? " · amber: waiting" : "");
  parts.push(label);
  svg.replaceChildren(...parts);
  text("budget-caption", "Uplink bytes per day, last 31 days (today " + bytes(o.cost.bytes_today) + (waiting ? ", " + bytes(waiting) + " waiting" : "") + ")");
}

function renderGateway(o) {
  const s = o.store;
  text("store-size", bytes(s.size_bytes));
  text("store-disk", s.disk_free_bytes == null ? "unknown" : bytes(s.disk_free_bytes));
  text("store-readings", String(s.readings_stored));
  text("store-errors", s.failed_commits + (s.error ? " — last: " + s.error : ""));
  text("gateway-clock", o.gateway.clock_trusted ? "trusted" : "not trusted yet (readings held)");
  const up = o.gateway.update;
  text("gateway-update", up
    ? up.outcome + (up.to_version ? " " + up.to_version : "") + ", " + ago(o.now_ms, up.finished_at_unix_ms) + (up.reason ? " — " + up.reason : "")
    : "none yet");
}

// The gateway's own health (docs/health.md): how its previous run ended, CPU, memory, disk,
// the cellular modem.
const PREVIOUS_RUN = {
  first_run: "first run", clean: "stopped cleanly", crash: "crashed", watchdog: "killed by the watchdog",
  power_loss: "power loss (or a kernel crash)", unknown: "unknown",
};
function renderHealth(o) {
  const h = o.health;
  if (!h) return;
  const p = h.prev;
  text("health-prev", (PREVIOUS_RUN[p.reason] || p.reason) + (p.kind ? " (" + p.kind.replace(/_/g, " ") + ")" : "")
    + (p.reason === "clean" || p.reason === "first_run" ? "" : " — " + p.detail));
  const pct = (v) => v == null ? "?" : v.toFixed(1) + " %";
  text("health-cpu", "gateway " + pct(h.cpu.proc) + ", machine " + pct(h.cpu.sys));
  text("health-mem", (h.mem.rss == null ? "?" : bytes(h.mem.rss)) + " resident, "
    + (h.mem.avail == null ? "?" : bytes(h.mem.avail)) + " available");
  text("health-disk", h.disk.free == null ? "unknown"
    : bytes(h.disk.free) + " free (" + pct(h.disk.free_pct) + ")" + (h.disk.low ? " — low" : ""));
  const m = h.modem;
  text("health-modem", m.state === "none" ? "none (" + m.why + ")"
    : m.state + ", signal " + m.signal + " %" + (m.tech ? ", " + m.tech : "") + (m.operator ? ", " + m.operator : ""));
  $("health").classList.toggle("warn", h.disk.low || !["clean", "first_run"].includes(p.reason));
}

// Sortable, filterable tables: rows are rebuilt from the data at each refresh, so a sort or a
// filter is a property of the table, not of its rows.
const tables = {
  nodes: { key: "uid", dir: 1, filter: "" },
  devices: { key: "name", dir: 1, filter: "" },
};

function nodeRows(o) {
  return o.nodes.map((n) => ({
    id: n.uid,
    state: n.state,
    sort: {
      uid: n.uid, state: n.state, port: n.port || "", fw_version: n.fw_version, hw_rev: n.hw_rev,
      lot: n.lot, last_seen_ms: -n.last_seen_ms, readings_received: n.readings_received,
      link_errors: n.link_errors.gateway_rx + n.link_errors.node_rx, retransmits: n.retransmits ?? -1,
      reset_reason: n.reset_reason || "",
    },
    cells: [
      n.uid, n.revoked_ms != null ? "revoked" : n.state.replace("_", " "), n.port || "—", n.fw_version, String(n.hw_rev), n.lot,
      ago(o.now_ms, n.last_seen_ms), String(n.readings_received),
      String(n.link_errors.gateway_rx + n.link_errors.node_rx), n.retransmits == null ? "—" : String(n.retransmits),
      n.reset_reason || "—",
    ],
  }));
}

function errorSummary(h) {
  const parts = [];
  if (h.timeouts) parts.push(h.timeouts + " timeouts");
  if (h.transport_errors) parts.push(h.transport_errors + " transport");
  if (h.crc_errors) parts.push(h.crc_errors + " CRC");
  if (h.frame_errors) parts.push(h.frame_errors + " framing");
  if (h.decode_errors) parts.push(h.decode_errors + " decode");
  for (const [code, n] of Object.entries(h.exceptions || {})) parts.push(n + " × exception " + code);
  return parts.length ? parts.join(", ") : "none";
}

function deviceRows(o) {
  return o.devices.map((d) => {
    const h = d.health;
    const errors = errorSummary(h);
    return {
      id: d.name,
      state: h.state,
      sort: {
        name: d.name, state: h.state, model: d.model || "", transport: d.transport,
        last_good: -(h.last_good_poll_at || 0), latency: h.last_response_ms ?? -1, readings: d.readings, errors,
      },
      cells: [
        d.name, h.state, d.model || "—", d.transport, ago(o.now_ms, h.last_good_poll_at),
        h.last_response_ms == null ? "—" : h.last_response_ms + " ms", String(d.readings), errors,
      ],
    };
  });
}

const NUMERIC = new Set([4, 7, 8, 9]);

function renderTable(name, rows, total) {
  const t = tables[name];
  const table = $(name);
  const filter = t.filter.toLowerCase();
  const shown = rows
    .filter((r) => !filter || r.cells.some((c) => c.toLowerCase().includes(filter)))
    .sort((a, b) => {
      const x = a.sort[t.key], y = b.sort[t.key];
      return (x < y ? -1 : x > y ? 1 : 0) * t.dir || (a.id < b.id ? -1 : 1);
    });
  const body = table.tBodies[0];
  body.replaceChildren(...shown.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.id = r.id;
    tr.dataset.state = r.state;
    r.cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = c;
      if (i === 1) td.className = "state state-" + r.state;
      else if (name === "nodes" && NUMERIC.has(i)) td.className = "num";
      else if (name === "devices" && (i === 5 || i === 6)) td.className = "num";
      tr.appendChild(td);
    });
    return tr;
  }));
  for (const th of table.tHead.rows[0].cells) {
    if (th.dataset.key === t.key) th.setAttribute("aria-sort", t.dir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
  $(name + "-empty").hidden = rows.length !== 0;
  text(name + "-count", filter ? shown.length + " of " + total : String(total));
}

function renderNodes(o) {
  const online = o.nodes.filter((n) => n.state === "online").length;
  renderTable("nodes", nodeRows(o), o.node_count);
  if (!tables.nodes.filter) text("nodes-count", online + " of " + o.node_count + " online");
}

function renderDevices(o) {
  renderTable("devices", deviceRows(o), o.devices.length);
}

function setUpTable(name) {
  const table = $(name);
  for (const th of table.tHead.rows[0].cells) {
    th.tabIndex = 0;
    const sort = () => {
      const t = tables[name];
      if (t.key === th.dataset.key) t.dir = -t.dir; else { t.key = th.dataset.key; t.dir = 1; }
      if (latest) render(latest);
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
  }
  $(name + "-filter").addEventListener("input", (e) => {
    tables[name].filter = e.target.value;
    if (latest) render(latest);
  });
}

async function refresh() {
  clearTimeout(timer);
  try {
    const response = await fetch("/api/v1/overview", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (e) {
    text("refreshed", "gateway not answering (" + e.message + "); retrying");
    $("refreshed").classList.add("stale");
  }
  timer = setTimeout(refresh, document.hidden ? HIDDEN_EVERY_MS : VISIBLE_EVERY_MS);
}

// The technician's login and actions. The CSRF token lives in this page's memory only; each
// action spends it and the answer brings the next (`X-CSRF-Token`).
let csrf = null;

function setLoggedIn(token) {
  csrf = token;
  $("login-form").hidden = token !== null;
  $("actions").hidden = token === null;
  if (latest) render(latest);
}

function say(message) { text("technician-message", message); }

// `body` is sent as JSON, or as it is when it is a Blob (a firmware bundle). Every action goes
// out as application/json, which no plain HTML form can send: the gateway's CSRF rule. A bundle's
// handler reads raw bytes and never parses them as JSON. A refusal throws an Error with the
// gateway's `kind` when it names one (`bad-signature`, `below-floor`, …).
async function act(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf || "" },
    body: body instanceof Blob ? body : JSON.stringify(body || {}),
  });
  const next = response.headers.get("X-CSRF-Token");
  if (next) csrf = next;
  const answer = await response.json().catch(() => ({}));
  if (response.status === 403) setLoggedIn(null);
  if (!response.ok) {
    const err = new Error(answer.error || "HTTP " + response.status);
    err.kind = typeof answer.kind === "string" ? answer.kind : null;
    throw err;
  }
  return answer;
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const password = $("login-password").value;
  $("login-password").value = "";
  try {
    const response = await fetch("/api/v1/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ password }),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || "HTTP " + response.status);
    setLoggedIn(answer.csrf);
    say("Logged in.");
  } catch (err) {
    say("Login failed: " + err.message);
  }
});

$("send-now").addEventListener("click", async () => {
  try {
    await act("/api/v1/actions/send-now");
    say("Sealing what waits; the uplink sends it as soon as it is connected.");
    refresh();
  } catch (err) {
    say("Send now refused: " + err.message);
  }
});

$("write-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const [device, point] = $("write-point").value.split("/");
  const raw = $("write-value").value.trim();
  // Numbers and true/false as JSON, anything else as text; the gateway checks type and range.
  let value;
  try { value = JSON.parse(raw); } catch { value = raw; }
  try {
    await act("/api/v1/actions/modbus-write", { device, point, value });
    say("Wrote " + raw + " to " + device + " " + point + ".");
  } catch (err) {
    say("Write refused: " + err.message);
  }
});

async function enrollFor(minutes) {
  try {
    await act("/api/v1/actions/enroll-window", { minutes });
    say(minutes ? "Enrollment open for " + minutes + " min: new nodes join at their next hello." : "Enrollment closed.");
    refresh();
  } catch (err) { say("Enrollment refused: " + err.message); }
}
$("enroll-open").addEventListener("click", () => enrollFor(30));
$("enroll-close").addEventListener("click", () => enrollFor(0));

$("revoke-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const uid = $("revoke-uid").value.trim().toLowerCase();
  if (!confirm("Revoke node " + uid + " for good? Its readings are refused from now on.")) return;
  try {
    await act("/api/v1/actions/revoke", { uid });
    $("revoke-uid").value = "";
    say("Node " + uid + " revoked.");
    refresh();
  } catch (err) { say("Revoke refused: " + err.message); }
});

// Node firmware: the rollout (from the overview, at each refresh), each node's transfer, and the
// library (`GET /api/v1/firmware`: it checks every image's signature and digest again, so it is
// read at load, after an upload or a rollout's start or end, and every 30 s, not every refresh).
const LIBRARY_EVERY_MS = 30000;
let library = null;
let libraryAt = 0;
let libraryLoading = false;
let lastRolloutKey = "";

async function loadLibrary() {
  if (libraryLoading) return;
  libraryLoading = true;
  try {
    const response = await fetch("/api/v1/firmware", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    library = await response.json();
    libraryAt = Date.now();
    if (latest) renderFirmware(latest);
  } catch (e) {
    library = null;
    libraryAt = Date.now();
    text("firmware-library-empty", "The library could not be read (" + e.message + ").");
    $("firmware-library-empty").hidden = false;
  } finally {
    libraryLoading = false;
  }
}

// "1.10.2" → [1, 10, 2], compared number by number.
function semver(v) { return String(v || "").split(".").map((x) => Number(x) || 0); }
function versionBelow(a, b) {
  const x = semver(a), y = semver(b);
  for (let i = 0; i < 3; i++) if ((x[i] || 0) !== (y[i] || 0)) return (x[i] || 0) < (y[i] || 0);
  return false;
}

// Why an image of the library would be refused for this site's nodes, or that it would be taken:
// the gateway's own check of the file (`refused`), then what the rollout would say of the nodes
// that said they take updates (hardware revision, anti-rollback floor).
function libraryVerdict(o, e) {
  if (e.refused) return { refused: true, text: "refused: " + e.refused };
  const nodes = (o && o.ota ? o.ota.nodes : []);
  const expires = e.expires_unix_s && o ? ", signature expires in " + span(e.expires_unix_s * 1000 - o.now_ms) : "";
  if (!nodes.length) return { refused: false, text: "signature good; no node has said it takes updates yet" + expires };
  const board = nodes.filter((n) => n.hw_rev === e.hw_rev);
  if (!board.length) return { refused: true, text: "wrong-hardware: built for hw rev " + e.hw_rev + ", no node here is" };
  const below = board.filter((n) => n.floor && versionBelow(e.version, n.floor));
  if (below.length === board.length) {
    return { refused: true, text: "below-floor: " + e.version + " is under the floor of every hw " + e.hw_rev + " node (" + below[0].floor + ")" };
  }
  const need = board.filter((n) => n.fw !== e.version && !below.includes(n)).length;
  if (!need) return { refused: false, text: "every hw " + e.hw_rev + " node runs it" + expires };
  return { refused: false, text: "taken by " + need + " of " + board.length + " hw " + e.hw_rev + " nodes" + (below.length ? " (" + below.length + " below floor)" : "") + expires };
}

// A row of `table`; each cell carries its column's heading (`data-label`), which a phone shows
// in front of the value when the rows stack (app.css).
function cellRow(table, cells, data) {
  const heads = [...table.tHead.rows[0].cells].map((th) => th.textContent);
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(data || {})) tr.dataset[k] = v;
  cells.forEach((c, i) => {
    const td = document.createElement("td");
    td.dataset.label = heads[i] || "";
    if (c instanceof Node) td.append(c); else td.textContent = c;
    tr.appendChild(td);
  });
  return tr;
}

// A <select>'s options, rebuilt only when they change so that a choice in progress survives the
// refresh; `first` is an option with an empty value kept at the top.
function setOptions(select, options, first) {
  const all = (first ? [["", first]] : []).concat(options);
  const key = JSON.stringify(all);
  if (select.dataset.options === key) return;
  const chosen = select.value;
  select.replaceChildren(...all.map(([value, label]) => {
    const opt = document.createElement("option");
    opt.value = value;
    opt.textContent = label;
    return opt;
  }));
  select.dataset.options = key;
  if (all.some(([value]) => value === chosen)) select.value = chosen;
}

const ROLLOUT_STATES = {
  running: "running", soaking: "soaking", rolling_back: "rolling back", halted: "halted", done: "done",
};
// Node phases a transfer is behind: the image is whole on the node.
const PAST_TRANSFER = new Set(["installing", "trial", "confirmed", "finalized", "cannot_roll_back"]);

function renderFirmware(o) {
  const ota = o.ota || { rollout: null, nodes: [] };
  const r = ota.rollout;
  // The rollout: what, where it stands, why it halted.
  if (r) {
    const stage = r.stage ? ", stage " + r.stage : "";
    const soak = r.state === "soaking" && r.soak_remaining_ms != null ? " (" + span(r.soak_remaining_ms) + " of soak left)" : "";
    const stages = (r.stages || []).map((s) => s.stage + " " + String(s.state).replace(/_/g, " ") + " (" + s.nodes + ")").join(" · ");
    text("rollout-state", "Rollout " + r.id + " of " + r.version + " (" + r.mode + ", started by " + r.started_by + "): " +
      (ROLLOUT_STATES[r.state] || r.state) + stage + soak + " — " + r.updated + " of " + r.total + " nodes updated" +
      (stages ? ". Stages: " + stages : "") + (r.rollback ? ". Rolled back." : ""));
    $("rollout-state").dataset.state = r.state;
    const halt = $("rollout-halt-reason");
    halt.hidden = !r.halt_reason;
    if (r.halt_reason) text("rollout-halt-reason", "Halted: " + r.halt_reason);
    const bar = $("rollout-progress");
    bar.hidden = false;
    bar.value = Math.max(0, Math.min(1, r.progress || 0));
    bar.textContent = Math.round(bar.value * 100) + " %";
  } else {
    text("rollout-state", "No rollout since the gateway started.");
    delete $("rollout-state").dataset.state;
    $("rollout-halt-reason").hidden = true;
    $("rollout-progress").hidden = true;
  }
  const active = r && (r.state === "running" || r.state === "soaking" || r.state === "rolling_back");
  $("rollout-halt-actions").hidden = !active;
  // The library is read again when a rollout starts or ends (a finalize raises floors).
  const key = r ? r.id + ":" + r.state : "";
  if (key !== lastRolloutKey || Date.now() - libraryAt > LIBRARY_EVERY_MS) {
    lastRolloutKey = key;
    loadLibrary();
  }

  // One row per node: those that take updates and those of the rollout.
  const inRollout = new Map((r ? r.nodes : []).map((n) => [n.uid, n]));
  const own = new Map(ota.nodes.map((n) => [n.uid, n]));
  const uids = [...new Set([...own.keys(), ...inRollout.keys()])].sort();
  $("ota-nodes").tBodies[0].replaceChildren(...uids.map((uid) => {
    const n = own.get(uid), rn = inRollout.get(uid);
    const phase = rn ? rn.phase : (n && n.phase) || "unknown";
    const bar = document.createElement("progress");
    const size = n && n.size ? n.size : 0;
    let done = n && n.flashed != null ? n.flashed : 0;
    if (PAST_TRANSFER.has(phase) && size) done = size;
    bar.max = size || 1;
    bar.value = size ? Math.min(done, size) : (rn && rn.progress != null ? rn.progress : (PAST_TRANSFER.has(phase) ? 1 : 0));
    const flashedText = size ? bytes(done) + " of " + bytes(size)
      : rn && rn.progress != null ? Math.round(rn.progress * 100) + " %"
      : PAST_TRANSFER.has(phase) ? "whole image" : "—";
    bar.setAttribute("aria-label", "Node " + uid + ": " + flashedText);
    const label = document.createElement("span");
    label.className = "flashed";
    label.textContent = flashedText;
    const wrap = document.createElement("span");
    wrap.className = "progress";
    wrap.append(bar, label);
    const fw = n ? n.fw : rn.from_version;
    const to = rn && rn.to_version && rn.to_version !== fw ? " → " + rn.to_version : "";
    const detail = rn && rn.detail ? " (" + rn.detail + ")" : "";
    return cellRow($("ota-nodes"), [
      uid + (n && !n.online ? " (offline)" : ""),
      rn && rn.stage ? rn.stage : "—",
      phase.replace(/_/g, " ") + detail,
      wrap,
      fw + to + (n && n.floor ? ", floor " + n.floor : ""),
    ], { id: uid, phase, version: fw });
  }));
  $("ota-nodes-empty").hidden = uids.length !== 0;

  // The library, and the pickers of the rollout form.
  const entries = library || [];
  $("firmware-library").tBodies[0].replaceChildren(...entries.map((e) => {
    const v = libraryVerdict(o, e);
    const tr = cellRow($("firmware-library"), [
      e.file, e.version || "—", e.hw_rev == null ? "—" : String(e.hw_rev), e.size == null ? "—" : bytes(e.size),
      e.sha256 ? e.sha256.slice(0, 12) : "—", e.floor || "—", v.text,
    ], { file: e.file, refused: v.refused ? "yes" : "no" });
    tr.cells[2].className = tr.cells[3].className = "num";
    tr.cells[4].className = "mono";
    if (e.sha256) tr.cells[4].title = e.sha256;
    if (v.refused) tr.cells[6].className = "refusal";
    return tr;
  }));
  if (library) {
    text("firmware-library-empty", "The library holds no image.");
    $("firmware-library-empty").hidden = entries.length !== 0;
  }
  setOptions($("rollout-artifact"), entries.filter((e) => !e.refused).map((e) =>
    [e.file, e.file + " — " + e.version + ", hw " + e.hw_rev]));
  setOptions($("rollout-node"), ota.nodes.map((n) => [n.uid, "only " + n.uid + " (" + n.fw + ", hw " + n.hw_rev + ")"]),
    "Every node, canary then waves");
  $("firmware-actions").hidden = !csrf;
}

// A refusal in the panel, with the gateway's reason and its kind.
function firmwareSay(message, err) {
  const p = $("firmware-message");
  if (err) {
    const reason = err.message;
    const kind = err.kind && !reason.includes(err.kind) ? " [" + err.kind + "]" : "";
    p.textContent = message + ": " + reason + kind;
    p.className = "refusal";
    p.dataset.kind = err.kind || "";
  } else {
    p.textContent = message;
    p.className = "";
    delete p.dataset.kind;
  }
}

// A bundle is the signature's manifest (text) followed by the image's bytes, as
// `POST /api/v1/firmware` takes it; the gateway names the file as the manifest does.
$("firmware-upload").addEventListener("submit", async (e) => {
  e.preventDefault();
  const image = $("firmware-image").files[0];
  const sig = $("firmware-sig").files[0];
  if (!image || !sig) { firmwareSay("Choose the image and its .sig file."); return; }
  firmwareSay("Uploading " + image.name + " (" + bytes(image.size) + ")…");
  try {
    const added = await act("/api/v1/actions/firmware", new Blob([sig, image]));
    firmwareSay("Added " + added.file + ": version " + added.version + ", hw rev " + added.hw_rev + ", " + bytes(added.size) + ".");
    $("firmware-upload").reset();
    loadLibrary();
  } catch (err) { firmwareSay("Upload of " + image.name + " refused", err); }
});

$("rollout-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const spec = { artifact: $("rollout-artifact").value };
  const node = $("rollout-node").value;
  if (node) spec.node = node;
  else {
    const canary = $("rollout-canary").value.trim();
    if (canary) spec.canary = Number(canary);
    const waves = $("rollout-waves").value.trim();
    if (waves) spec.waves = waves;
  }
  const soak = $("rollout-soak").value.trim();
  if (soak) spec.soak = soak;
  const confirmWithin = $("rollout-confirm").value.trim();
  if (confirmWithin) spec.confirm_within = confirmWithin;
  try {
    const started = await act("/api/v1/actions/rollout", spec);
    firmwareSay("Rollout " + started.id + " of " + started.version + " started" + (node ? " on node " + node : "") + ".");
    refresh();
  } catch (err) { firmwareSay("Rollout refused", err); }
});

$("rollout-halt").addEventListener("click", async () => {
  const rollback = $("rollout-rollback").checked;
  if (rollback && !confirm("Halt the rollout and put every node it updated back on its previous image?")) return;
  try {
    await act("/api/v1/actions/rollout-halt", { rollback });
    firmwareSay(rollback ? "Rollout halted; updated nodes go back to their previous image." : "Rollout halted; no new transfer starts.");
    $("rollout-rollback").checked = false;
    refresh();
  } catch (err) { firmwareSay("Halt refused", err); }
});

$("logout").addEventListener("click", async () => {
  await fetch("/api/v1/logout", { method: "POST", credentials: "same-origin" });
  setLoggedIn(null);
  say("Logged out.");
});

fetch("/api/v1/session", { credentials: "same-origin", cache: "no-store" })
  .then((r) => r.json())
  .then((s) => setLoggedIn(s.logged_in ? s.csrf : null))
  .catch(() => setLoggedIn(null));

document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
setUpTable("nodes");
setUpTable("devices");
refresh();

// metricsd dashboard: one WebSocket to /metrics/stream, small canvas charts, no dependencies.
// Server strings are only ever written with textContent (never innerHTML).
"use strict";

const POINTS = 120;
const COLORS = ["#4fa3ff", "#ffb347", "#ff6b6b", "#7bd88f", "#c792ea", "#5fd7d7"];
const params = new URLSearchParams(location.search);
const token = params.get("token");

class Chart {
  constructor(id, names) {
    this.canvas = document.getElementById("c-" + id);
    this.legend = document.getElementById("l-" + id);
    this.series = {};
    this.times = [];
    for (const name of names) this.addSeries(name);
  }
  addSeries(name) {
    if (name in this.series) return;
    const color = COLORS[Object.keys(this.series).length % COLORS.length];
    this.series[name] = { color, values: this.times.map(() => null) };
    const item = document.createElement("span");
    item.style.setProperty("--swatch", color);
    item.textContent = name;
    this.legend.appendChild(item);
  }
  push(time, values) {
    for (const name of Object.keys(values)) this.addSeries(name);
    this.times.push(time);
    for (const [name, s] of Object.entries(this.series)) {
      const v = values[name];
      s.values.push(typeof v === "number" && isFinite(v) ? v : null);
    }
    if (this.times.length > POINTS) {
      this.times.shift();
      for (const s of Object.values(this.series)) s.values.shift();
    }
    this.draw();
  }
  last(name) {
    const s = this.series[name];
    return s ? s.values[s.values.length - 1] : undefined;
  }
  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    let max = 0;
    for (const s of Object.values(this.series)) for (const v of s.values) if (v !== null && v > max) max = v;
    max = max > 0 ? max * 1.1 : 1;
    const left = 48, right = 8, top = 8, bottom = 18;
    ctx.strokeStyle = "#2a3541"; ctx.fillStyle = "#8895a4"; ctx.font = "11px system-ui";
    for (let i = 0; i <= 4; i++) {
      const y = top + (h - top - bottom) * i / 4;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - right, y); ctx.stroke();
      ctx.fillText(formatNumber(max * (1 - i / 4)), 2, y + 4);
    }
    const n = this.times.length;
    if (n < 2) return;
    const x = (i) => left + (w - left - right) * i / (POINTS - 1);
    const y = (v) => top + (h - top - bottom) * (1 - v / max);
    for (const s of Object.values(this.series)) {
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.beginPath();
      let pen = false;
      s.values.forEach((v, i) => {
        const xi = x(i + POINTS - n);
        if (v === null) { pen = false; return; }
        if (pen) ctx.lineTo(xi, y(v)); else ctx.moveTo(xi, y(v));
        pen = true;
      });
      ctx.stroke();
    }
  }
}

function formatNumber(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  if (a === 0) return "0";
  return v.toPrecision(3);
}

const charts = {
  throughput: new Chart("throughput", ["requests/s", "tokens/s ÷ 100"]),
  latency: new Chart("latency", ["p50", "p90", "p99"]),
  ttft: new Chart("ttft", ["avg", "p99"]),
  errors: new Chart("errors", ["error rate"]),
  burn: new Chart("burn", []),
  cost: new Chart("cost", ["USD/hour"]),
};
window.metricsd = { charts, messages: 0, updates: 0, errors: [], activeAlerts: null };

function setTile(id, value, text) {
  const el = document.getElementById(id);
  el.dataset.value = String(value);
  el.textContent = text !== undefined ? text : formatNumber(value);
}

function mergeLatency(latency) {
  // The first endpoint's block when one is selected, else the endpoint with the most weight
  // is not known here: show the worst (max) p50/p90/p99 across endpoints.
  let out = null;
  for (const block of Object.values(latency || {})) {
    if (!out) { out = { ...block }; continue; }
    for (const k of ["p50", "p90", "p99", "max"]) out[k] = Math.max(out[k], block[k]);
  }
  return out;
}

function render(data, time) {
  const t = data.throughput || {};
  const rps = t.total_requests_per_sec || 0, tps = t.total_tokens_per_sec || 0;
  setTile("t-rps", rps); setTile("t-tps", tps);
  charts.throughput.push(time, { "requests/s": rps, "tokens/s ÷ 100": tps / 100 });

  const lat = mergeLatency(data.latency);
  if (lat) {
    setTile("t-p50", lat.p50); setTile("t-p99", lat.p99);
    charts.latency.push(time, { p50: lat.p50, p90: lat.p90, p99: lat.p99 });
  }
  const tbody = document.getElementById("latency-table");
  tbody.replaceChildren();
  for (const [endpoint, b] of Object.entries(data.latency || {})) {
    const row = document.createElement("tr");
    for (const v of [endpoint, b.avg, b.p50, b.p90, b.p99, b.max]) {
      const cell = document.createElement("td");
      cell.textContent = typeof v === "number" ? formatNumber(v) : String(v);
      row.appendChild(cell);
    }
    tbody.appendChild(row);
  }
  fillEndpoints(Object.keys((data.throughput || {}).requests_per_sec || {}));

  const s = data.streaming || {};
  setTile("t-streams", s.active_streams || 0);
  if (s.ttft) {
    setTile("t-ttft", s.ttft.avg);
    charts.ttft.push(time, { avg: s.ttft.avg, p99: s.ttft.p99 });
  }
  const e = data.error || {};
  // The ratio first: both rates share the window's divisor, so 1 error in 4 requests is 25 exactly.
  const errRate = rps > 0 ? 100 * ((e.total_errors_per_sec || 0) / rps) : 0;
  setTile("t-err", errRate, errRate.toFixed(2) + " %");
  charts.errors.push(time, { "error rate": errRate });

  const cost = data.cost || {};
  setTile("t-cost", cost.total_usd || 0, "$" + (cost.total_usd || 0).toFixed(4));
  setTile("t-usdh", cost.usd_per_hour || 0, "$" + (cost.usd_per_hour || 0).toFixed(4));
  charts.cost.push(time, { "USD/hour": cost.usd_per_hour || 0 });

  const slos = data.slo || {};
  const burn = {};
  let firstBurn = null;
  for (const [name, slo] of Object.entries(slos)) {
    for (const [w, v] of Object.entries(slo.burn_rates || {})) {
      if (w === "5m" || w === "1h" || w === "6h") burn[name + " " + w] = v;
    }
    if (firstBurn === null && slo.burn_rates) firstBurn = slo.burn_rates["1h"];
  }
  if (firstBurn !== null) setTile("t-burn", firstBurn);
  charts.burn.push(time, burn);
}

let knownEndpoints = new Set();
function fillEndpoints(endpoints) {
  const select = document.getElementById("endpoint");
  for (const ep of endpoints) {
    if (knownEndpoints.has(ep)) continue;
    knownEndpoints.add(ep);
    const opt = document.createElement("option");
    opt.value = ep; opt.textContent = ep;
    select.appendChild(opt);
  }
}

function addAlert(msg) {
  const li = document.createElement("li");
  li.className = msg.level;
  const when = new Date(msg.timestamp * 1000).toLocaleTimeString();
  li.textContent = msg.type === "slo_alert"
    ? `${when} SLO ${msg.slo}: ${msg.level} (1h burn ${formatNumber((msg.burn_rates || {})["1h"])})`
    : `${when} budget ${msg.key_id}: ${msg.level} ($${msg.used_usd} of $${msg.limit_usd})`;
  const list = document.getElementById("alerts");
  list.prepend(li);
  while (list.children.length > 50) list.lastChild.remove();
}

// The alerts active now, from the state the daemon holds (GET /metrics/slo): slo_alert messages
// come only when an alert starts, so a page opened later would not know about one under way.
async function showActiveAlerts() {
  let view;
  try {
    const resp = await fetch("/metrics/slo", { headers: token ? { Authorization: "Bearer " + token } : {} });
    if (!resp.ok) return;
    view = await resp.json();
  } catch (err) {
    return; // the WebSocket's own reconnect reports the daemon as down
  }
  const list = document.getElementById("alerts");
  for (const old of list.querySelectorAll("li[data-active]")) old.remove();
  let active = 0;
  for (const slo of view.slos || []) {
    for (const level of ["page", "ticket"]) {
      if (!(slo.alerts || {})[level]) continue;
      const li = document.createElement("li");
      li.className = level;
      li.dataset.active = slo.name + "/" + level;
      li.textContent = `active: SLO ${slo.name}: ${level} (1h burn ${formatNumber((slo.burn_rates || {})["1h"])})`;
      list.prepend(li);
      active++;
    }
  }
  window.metricsd.activeAlerts = active;
}

let ws = null;
function subscribe() {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(JSON.stringify({ type: "unsubscribe" }));
  const filters = { interval: Number(document.getElementById("interval").value) };
  const ep = document.getElementById("endpoint").value;
  if (ep) filters.endpoint = ep;
  ws.send(JSON.stringify({ type: "subscribe", filters }));
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  ws = new WebSocket(`${proto}//${location.host}/metrics/stream${query}`);
  const status = document.getElementById("status");
  ws.onopen = () => {
    status.dataset.state = "live"; status.textContent = "live"; subscribe(); showActiveAlerts();
  };
  ws.onclose = () => {
    status.dataset.state = "down"; status.textContent = "disconnected";
    setTimeout(connect, 2000);
  };
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    window.metricsd.messages++;
    if (msg.type === "historical_data") {
      for (const h of msg.history || []) {
        charts.throughput.push(h.timestamp, { "requests/s": h.total_requests_per_sec,
                                              "tokens/s ÷ 100": h.total_tokens_per_sec / 100 });
      }
      render(msg.data, msg.timestamp);
    } else if (msg.type === "metrics_update") {
      window.metricsd.updates++;
      render(msg.data, msg.timestamp);
      document.getElementById("updated").textContent =
        "updated " + new Date(msg.timestamp * 1000).toLocaleTimeString();
    } else if (msg.type === "budget_alert" || msg.type === "slo_alert") {
      addAlert(msg);
      if (msg.type === "slo_alert") showActiveAlerts();
    } else if (msg.type === "error") {
      window.metricsd.errors.push(msg.message);
    }
  };
}

document.getElementById("interval").addEventListener("change", subscribe);
document.getElementById("endpoint").addEventListener("change", () => {
  // A new endpoint choice: reset the filter (unsubscribe) and subscribe again.
  subscribe();
});
setInterval(() => { if (ws && ws.readyState === WebSocket.OPEN) ws.send('{"type":"ping"}'); }, 30000);
// Alerts also end: refresh the active ones now and then.
setInterval(() => { if (ws && ws.readyState === WebSocket.OPEN) showActiveAlerts(); }, 15000);
window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.draw()));
connect();

// batchline's dashboard: polls /v1/admin/overview and draws it (plain DOM and SVG, no library).
// With API keys on, the API answers 401 until a key is given; the key is kept in this tab only
// (sessionStorage), never in localStorage or a cookie.
"use strict";

const params = new URLSearchParams(location.search);
const INTERVAL_MS = Math.max(200, Number(params.get("interval_ms")) || 1000);
const BASE = location.pathname.replace(/dashboard\/?$/, "");
const KEY_STORE = "batchline.api_key";

const state = {
  previous: null, // the last overview, for the rates
  rates: {}, // stage -> {done, failed, dead} per second
  downSince: null,
  armed: {}, // stage -> time its purge button was armed (a second click within 3 s purges)
  timer: null,
};

let lastOverview = null; // what render() drew last (redrawn when a button changes)

const $ = (selector) => document.querySelector(selector);

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

async function api(method, path) {
  const headers = {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(BASE + path, { method, headers, cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  return { status: response.status, body };
}

// -- formatting ---------------------------------------------------------------------------

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 0.001) return (value * 1e6).toFixed(0) + " µs";
  if (value < 1) return (value * 1000).toFixed(value < 0.01 ? 2 : 1) + " ms";
  return value.toFixed(2) + " s";
}

function rate(value) {
  if (value === undefined) return "…";
  return value < 10 ? value.toFixed(1) : value.toFixed(0);
}

function clock(timestamp) {
  return new Date(timestamp * 1000).toLocaleTimeString();
}

function ago(now, timestamp) {
  const s = Math.max(0, now - timestamp);
  return s < 60 ? s.toFixed(1) + " s ago" : Math.round(s / 60) + " min ago";
}

// -- charts -------------------------------------------------------------------------------

function sparkline(values) {
  const width = 300, height = 48;
  const top = Math.max(1e-9, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 4 - (v / top) * (height - 12)).toFixed(1)}`);
  const area = `0,${height} ${points.join(" ")} ${width},${height}`;
  return `<svg class="sparkline" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none">` +
    `<polygon points="${area}"></polygon><polyline points="${points.join(" ")}"></polyline>` +
    `<text x="3" y="10">max ${rate(Math.max(...values))}/s</text></svg>`;
}

// Exact sizes up to 16 distinct ones, else powers of two.
function histogramBins(pairs) {
  if (pairs.length <= 16) return pairs.map(([size, n]) => [String(size), n]);
  const bins = new Map();
  for (const [size, n] of pairs) {
    const upper = 2 ** Math.ceil(Math.log2(size));
    bins.set(upper, (bins.get(upper) || 0) + n);
  }
  return [...bins.entries()].sort((a, b) => a[0] - b[0]).map(([upper, n]) => [`≤${upper}`, n]);
}

function histogram(pairs) {
  const width = 200, height = 48;
  const bins = histogramBins(pairs);
  if (!bins.length) {
    return `<svg class="histogram" viewBox="0 0 ${width} ${height}"><text x="4" y="28">no batches yet</text></svg>`;
  }
  const top = Math.max(...bins.map(([, n]) => n));
  const slot = width / bins.length;
  const bars = bins.map(([label, n], i) => {
    const h = Math.max(1, (n / top) * (height - 14));
    return `<rect x="${(i * slot + 1).toFixed(1)}" y="${(height - 10 - h).toFixed(1)}" ` +
      `width="${Math.max(1, slot - 2).toFixed(1)}" height="${h.toFixed(1)}" data-size="${escapeHtml(label)}" data-count="${n}">` +
      `<title>batch size ${escapeHtml(label)}: ${n} batches</title></rect>` +
      (bins.length <= 12 ? `<text x="${(i * slot + 2).toFixed(1)}" y="${height - 1}">${escapeHtml(label)}</text>` : "");
  });
  return `<svg class="histogram" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none">${bars.join("")}</svg>`;
}

// -- rendering ----------------------------------------------------------------------------

function figure(cls, label, value) {
  return `<div class="figure ${cls}" data-value="${escapeHtml(value)}"><div class="value">${escapeHtml(value)}</div>` +
    `<div class="label">${label}</div></div>`;
}

function stageCard(stage, now) {
  const r = state.rates[stage.name] || {};
  const c = stage.counters;
  const queued = Math.max(0, stage.backlog - stage.in_flight);
  const [pipeline, short] = stage.name.split(".");
  const dead = stage.dead;
  const armed = state.armed[stage.name] && Date.now() - state.armed[stage.name] < 3000;
  const letters = dead.latest.map((letter) => `<li class="dead-letter" data-job="${escapeHtml(letter.job || "")}">` +
    `<span class="when">${clock(letter.died_at)}</span>` +
    `<span class="job">${escapeHtml((letter.job || "(no job)").slice(0, 14))}…</span>` +
    `<span class="reason">${escapeHtml(letter.reason)}</span>` +
    (letter.job ? `<button data-action="requeue" data-pipeline="${escapeHtml(pipeline)}" data-stage="${escapeHtml(short)}" data-job="${escapeHtml(letter.job)}">requeue</button>` : "") +
    `</li>`).join("");
  return `<div class="stage" data-stage="${escapeHtml(stage.name)}">
    <h3>${escapeHtml(stage.name)}</h3>
    <div class="figures">
      ${figure("backlog", "backlog", stage.backlog)}
      ${figure("queued", "queued", queued)}
      ${figure("in-flight", "in flight", stage.in_flight)}
      ${figure("workers", "workers", stage.workers.length)}
    </div>
    <div class="rates">done <b class="rate-done">${rate(r.done)}</b>/s · failed <b class="rate-failed">${rate(r.failed)}</b>/s ·
      dead <b class="rate-dead">${rate(r.dead)}</b>/s · totals ${c.done} done, ${c.failed} failed, ${c.dead} dead, ${c.next + c.join} handed on</div>
    <div class="charts">
      <div class="chart"><div class="label">items/s, last ${Math.round(stage.items_per_s.length * lastOverview.bucket_s / 60)} min</div>${sparkline(stage.items_per_s)}</div>
      <div class="chart"><div class="label">batch sizes (max ${stage.max_batch_size})</div>${histogram(stage.batch_sizes)}</div>
    </div>
    <div class="latency">queue wait p50 <b class="wait-p50">${seconds(stage.queue_wait_s.p50)}</b> p99 <b class="wait-p99">${seconds(stage.queue_wait_s.p99)}</b>
      · compute/batch p50 <b class="compute-p50">${seconds(stage.compute_s.p50)}</b> p99 <b class="compute-p99">${seconds(stage.compute_s.p99)}</b></div>
    <div class="dead">dead letters: <span class="count${dead.count ? " some" : ""}" data-value="${dead.count}">${dead.count}</span>
      ${dead.count ? `<button data-action="requeue-all" data-pipeline="${escapeHtml(pipeline)}" data-stage="${escapeHtml(short)}">requeue all</button>
      <button class="danger${armed ? " armed" : ""}" data-action="purge" data-pipeline="${escapeHtml(pipeline)}" data-stage="${escapeHtml(short)}">${armed ? "click again to purge" : "purge"}</button>` : ""}
      <ul>${letters}</ul></div>
  </div>`;
}


function render(overview) {
  lastOverview = overview;
  $("#window").textContent = Math.round(overview.window_s / 60);
  $("#pipelines").innerHTML = overview.pipelines.map((p) => `<section class="pipeline" data-pipeline="${escapeHtml(p.name)}">
      <h2>${escapeHtml(p.name)} <span>${p.stages.length} stage${p.stages.length === 1 ? "" : "s"}</span></h2>
      <div class="stages">${p.stages.map((s) => stageCard(s, overview.now)).join("")}</div>
    </section>`).join("") || "<p>No pipeline is registered yet: start a worker, or run <code>batchline register</code>.</p>";
  $("#workers tbody").innerHTML = overview.workers.map((w) => `<tr class="worker" data-worker="${escapeHtml(w.name)}">
      <td>${escapeHtml(w.name)}</td><td>${escapeHtml((w.stages || []).join(", "))}</td>
      <td class="device">${escapeHtml(w.device || "?")}</td><td>${escapeHtml(w.host || "")} ${escapeHtml(w.pid || "")}</td>
      <td class="heartbeat">${ago(overview.now, w.last_seen)}</td></tr>`).join("") ||
    `<tr><td colspan="5">no live worker</td></tr>`;
}

function updateRates(overview) {
  const previous = state.previous;
  if (previous) {
    const dt = Math.max(0.001, overview.now - previous.now);
    const before = {};
    for (const p of previous.pipelines) for (const s of p.stages) before[s.name] = s.counters;
    for (const p of overview.pipelines) {
      for (const s of p.stages) {
        const old = before[s.name];
        if (!old) continue;
        state.rates[s.name] = {
          done: Math.max(0, s.counters.done - old.done) / dt,
          failed: Math.max(0, s.counters.failed - old.failed) / dt,
          dead: Math.max(0, s.counters.dead - old.dead) / dt,
        };
      }
    }
  }
  state.previous = overview;
}

function setStatus(kind, text, updated) {
  const status = $("#status");
  status.dataset.state = kind;
  status.textContent = text;
  if (updated !== undefined) status.dataset.updated = String(updated);
  const banner = $("#banner");
  $("main").classList.toggle("stale", kind === "down");
  if (kind === "down") {
    banner.hidden = false;
    banner.textContent = `Redis is unreachable (since ${state.downSince.toLocaleTimeString()}): ` +
      "the figures below are from before; retrying every second.";
  } else if (kind === "auth") {
    banner.hidden = false;
    banner.textContent = "An API key is required: enter one above.";
  } else {
    banner.hidden = true;
  }
}

async function poll() {
  state.timer = null;
  let result;
  try {
    result = await api("GET", "v1/admin/overview");
  } catch (error) {
    result = { status: 0, body: null }; // the gateway itself is unreachable
  }
  if (result.status === 200) {
    state.downSince = null;
    updateRates(result.body);
    render(result.body);
    setStatus("ok", `live · updated ${clock(result.body.now)}`, result.body.now);
  } else if (result.status === 401) {
    sessionStorage.removeItem(KEY_STORE);
    $("#key-form").hidden = false;
    setStatus("auth", "API key needed");
    return; // polled again once a key is given
  } else {
    state.downSince = state.downSince || new Date();
    const what = result.status === 0 ? "gateway unreachable" : "Redis unreachable";
    setStatus("down", `${what} · retrying`);
  }
  schedule();
}

function schedule() {
  if (state.timer === null) state.timer = setTimeout(poll, INTERVAL_MS);
}

async function act(button) {
  const { action, pipeline, stage, job } = button.dataset;
  const base = `v1/admin/dead/${encodeURIComponent(pipeline)}/${encodeURIComponent(stage)}`;
  const full = `${pipeline}.${stage}`;
  let result;
  if (action === "requeue") {
    result = await api("POST", `${base}/jobs/${encodeURIComponent(job)}/requeue`);
  } else if (action === "requeue-all") {
    result = await api("POST", `${base}/requeue`);
  } else if (action === "purge") {
    if (!(state.armed[full] && Date.now() - state.armed[full] < 3000)) {
      state.armed[full] = Date.now();
      if (lastOverview) render(lastOverview);
      return;
    }
    delete state.armed[full];
    result = await api("DELETE", base);
  }
  if (result && result.status >= 400) {
    alertBanner((result.body && result.body.message) || `HTTP ${result.status}`);
  }
  if (state.timer !== null) {
    clearTimeout(state.timer);
    state.timer = null;
  }
  poll();
}

function alertBanner(message) {
  const banner = $("#banner");
  banner.hidden = false;
  banner.textContent = message;
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) act(button);
});

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("#key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("#key").value = "";
  $("#key-form").hidden = true;
  setStatus("connecting", "connecting…");
  poll();
});

poll();

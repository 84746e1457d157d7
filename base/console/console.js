// The base's console (`/console` on the operations address): every module and version, traffic
// shares, health, charts of the recent samples, the log, and the actions. Uses common.js.
"use strict";

state.selected = null;   // the module whose detail is shown
state.logAbort = null;   // stops the log stream of the selected module

async function refreshBase() {
  const [listing, health] = await Promise.all([api("GET", "/api/v1/modules"), api("GET", "/api/v1/health")]);
  const modules = group(listing.modules);
  const splits = await Promise.all([...modules.entries()].map(async ([name, versions]) => {
    const live = versions.filter((v) => v.state === "active" || v.state === "inactive");
    if (live.length < 2) return [name, null];
    try { return [name, (await api("GET", `/api/v1/modules/${encodeURIComponent(name)}/traffic`)).weights]; } catch { return [name, null]; }
  }));
  renderBase(health);
  renderModules(modules, new Map(splits), health);
  renderQuarantine(listing.quarantined);
  if (state.selected) await renderDetail(state.selected, modules.get(state.selected));
}

/** The listing's instances by module, versions in order. */
function group(instances) {
  const modules = new Map();
  for (const instance of instances) {
    if (!modules.has(instance.name)) modules.set(instance.name, []);
    modules.get(instance.name).push(instance);
  }
  return modules;
}

function renderBase(health) {
  const status = $("base-status");
  status.textContent = `${health.status}${health.ready ? "" : " (restoring)"}`;
  status.className = `pill ${health.status}`;
  const c = health.counts;
  $("base-counts").textContent =
    `${c.active} active · ${c.inactive} inactive · ${c.broken} broken · ${c.pinned} pinned · ${c.quarantined} quarantined`;
}

/** Each version's share of the module's traffic, in percent. */
function shares(versions, weights) {
  const live = versions.filter((v) => v.state === "active" || v.state === "inactive");
  if (weights && Object.keys(weights).length) {
    const total = Object.values(weights).reduce((a, b) => a + b, 0) || 1;
    return live.map((v) => [v.version, ((weights[v.version] || 0) * 100) / total]).filter(([, s]) => s > 0);
  }
  return live.filter((v) => v.active).map((v) => [v.version, 100]);
}

function renderModules(modules, splits, health) {
  const container = $("modules");
  container.replaceChildren();
  if (modules.size === 0) {
    container.append(el("p", { class: "empty", text: "No module installed. Drop a .so above." }));
    return;
  }
  const healthOf = new Map(health.modules.map((m) => [`${m.module}@${m.version}`, m]));
  // A broken or pinned instance is not probed: its problem entry says why it stopped.
  for (const problem of health.problems) {
    if (problem.state === "broken" || problem.state === "pinned") {
      const why = [problem.reason, problem.message].filter(Boolean).join(": ");
      healthOf.set(problem.module, { status: problem.state, reasons: why ? [why] : [] });
    }
  }
  for (const [name, versions] of modules) {
    const share = shares(versions, splits.get(name));
    const bar = el("span", { class: "traffic-bar", title: "traffic share" },
      share.map(([version, percent]) => el("span", {
        "data-version": version, width: `${percent}%`, title: `${version}: ${percent.toFixed(0)}%`,
        text: percent >= 15 ? `${version} ${percent.toFixed(0)}%` : "",
      })));
    const rows = versions.map((v) => versionRow(name, v, healthOf.get(`${name}@${v.version}`), share));
    const card = el("div", { class: `module${state.selected === name ? " selected" : ""}`, "data-module": name },
      el("div", { class: "title", onclick: () => select(name) },
        el("strong", { text: name }), bar,
        el("span", { class: "small", text: share.length ? "" : "no version takes the traffic" })),
      el("table", {},
        el("thead", {}, el("tr", {}, ["version", "state", "traffic", "health", "requests", "5xx", "p99", "heap", "CPU", "uptime", ""]
          .map((h) => el("th", { text: h })))),
        el("tbody", {}, rows)));
    container.append(card);
  }
}

function versionRow(name, v, health, share) {
  const live = v.state === "active" || v.state === "inactive";
  const percent = share.find(([version]) => version === v.version);
  const standsOut = ["broken", "pinned"].includes(v.state);
  const status = health ? health.status : "–";
  const reasons = health && health.reasons.length ? health.reasons.join("; ") : "";
  const id = `${name}@${v.version}`;
  const actions = [];
  if (live && !v.active) {
    actions.push(el("button", { class: "switch", type: "button", "data-version": v.version,
      onclick: () => act("switch", async () => {
        const done = await api("POST", `/api/v1/modules/${encodeURIComponent(name)}/switch`, { json: { version: v.version } });
        return `switched ${name} to ${done.active_version} in ${number(done.switch_ms)} ms`;
      }) }, "Switch here"));
  }
  actions.push(confirmButton(`uninstall ${id}`, "Uninstall", "uninstall", v.version, async () => {
    const done = await api("DELETE", `/api/v1/modules/${encodeURIComponent(name)}/${encodeURIComponent(v.version)}`);
    return `uninstalled ${id}: ${done.state}${done.active_version ? `; ${done.active_version} has the traffic` : ""}`;
  }));
  const cpu = v.cpu ? v.cpu.user_ms + v.cpu.system_ms : null;
  const latency = v.traffic && v.traffic.latency;
  return el("tr", { class: `version${standsOut ? " stands-out" : ""}`, "data-version": v.version, "data-state": v.state },
    el("td", {}, el("code", { text: v.version })),
    el("td", {}, el("span", { class: `badge state-${v.state}`, text: v.state })),
    el("td", { class: "num", text: percent ? `${percent[1].toFixed(0)}%` : (v.active ? "active" : "–") }),
    el("td", { class: `health health-${status}` }, status, reasons ? el("div", { class: "reasons", text: reasons }) : null),
    el("td", { class: "num", text: v.traffic.requests }),
    el("td", { class: "num", text: v.traffic.server_errors }),
    el("td", { class: "num", text: latency ? micros(latency.p99_us) : "–" }),
    el("td", { class: "num", text: v.heap ? bytes(v.heap.live_bytes) : "–" }),
    el("td", { class: "num", text: cpu === null ? "–" : `${(cpu / 1000).toFixed(2)} s` }),
    el("td", { class: "num", text: since(v.installed_at) }),
    el("td", {}, actions));
}

function renderQuarantine(entries) {
  $("quarantine").hidden = entries.length === 0;
  $("quarantined").replaceChildren(...entries.map((q) => {
    const name = q.install_name || q.name;
    return el("tr", { class: "quarantined stands-out", "data-sha256": q.sha256 },
      el("td", {}, el("span", { class: "badge state-quarantined", text: "quarantined" }), " ",
        name ? `${name}${q.version ? `@${q.version}` : ""}` : "(name unknown)"),
      el("td", {}, el("code", { text: q.sha256.slice(0, 16) })),
      el("td", { class: "reasons", text: q.reason }),
      el("td", { text: since(q.at) }),
      el("td", {}, el("button", { class: "retry", type: "button", onclick: () => act("retry", async () => {
        const query = q.install_name ? `?name=${encodeURIComponent(q.install_name)}` : "";
        const done = await api("POST", `/api/v1/artifacts/${q.sha256}/retry${query}`);
        return `retried: ${done.name}@${done.version} is ${done.state}`;
      }) }, "Retry")));
  }));
}

// ---- one module: charts, log, split -------------------------------------------------------

function select(name) {
  if (state.selected !== name) {
    state.selected = name;
    $("weights").value = "";
    startLog();
  }
  refresh();
}

const CHARTS = [
  { title: "requests/s", lines: [["requests_per_s", ""]], format: (v) => number(v, 1) },
  { title: "5xx/s", lines: [["server_errors_per_s", ""]], format: (v) => number(v, 2) },
  { title: "latency p50 / p99", lines: [["p50_us", "p50"], ["p99_us", "p99"]], format: micros },
  { title: "heap", lines: [["heap_bytes", ""]], format: bytes },
  { title: "CPU", lines: [["cpu_percent", ""]], format: (v) => `${number(v, 1)}%` },
];
const COLORS = ["#2b6cb0", "#d69e2e", "#805ad5", "#38a169", "#c53030"];

async function renderDetail(name, versions) {
  const detail = $("detail");
  if (!versions) {
    detail.hidden = true;
    return;
  }
  detail.hidden = false;
  $("detail-name").textContent = name;
  const samples = await api("GET", `/api/v1/samples?module=${encodeURIComponent(name)}`);
  const charts = $("charts");
  // From the oldest sample shown to now: at least a minute, at most what the base keeps.
  const oldest = Math.min(Date.now(), ...samples.instances.flatMap((i) => i.samples.map((s) => s.at_ms)));
  const windowMs = Math.min(samples.interval_ms * samples.kept, Math.max(60000, Date.now() - oldest));
  charts.replaceChildren(...CHARTS.map((chart) => renderChart(chart, samples.instances, windowMs)));
}

function renderChart(chart, instances, windowMs) {
  const now = Date.now();
  const series = [];
  instances.forEach((instance, i) => {
    chart.lines.forEach(([field, label], j) => {
      const points = instance.samples.filter((s) => s[field] !== null && s[field] !== undefined)
        .map((s) => [s.at_ms, s[field]]);
      series.push({ name: `${instance.version}${label ? ` ${label}` : ""}`, points, color: COLORS[(i + j * 2) % COLORS.length], dashed: j === 0 && chart.lines.length > 1 });
    });
  });
  const values = series.flatMap((s) => s.points.map(([, v]) => v));
  const max = Math.max(1e-9, ...values);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 300 70");
  svg.setAttribute("preserveAspectRatio", "none");
  for (const s of series) {
    if (s.points.length === 0) continue;
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", s.points.map(([t, v]) =>
      `${(300 * (1 - (now - t) / windowMs)).toFixed(1)},${(68 - (66 * v) / max).toFixed(1)}`).join(" "));
    line.setAttribute("stroke", s.color);
    if (s.dashed) line.setAttribute("stroke-dasharray", "3 2");
    svg.append(line);
  }
  const latest = series.map((s) => (s.points.length ? `${s.name}: ${chart.format(s.points[s.points.length - 1][1])}` : null))
    .filter(Boolean).join("  ");
  return el("div", { class: "chart", "data-metric": chart.lines[0][0] },
    el("div", { class: "label" }, el("span", { text: chart.title }), el("span", { class: "value", text: values.length ? `max ${chart.format(max)}` : "" })),
    svg,
    el("div", { class: "legend", text: latest || "no samples yet" }));
}

function logLine(line) {
  const text = `${line.at} ${line.level.padEnd(5)} ${line.version} ${line.message}${line.fields ? ` ${line.fields}` : ""}`;
  return el("div", { class: line.level, text });
}

function appendLog(lines) {
  const box = $("log-lines");
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.append(...lines.map(logLine));
  while (box.childElementCount > 500) box.firstElementChild.remove();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

/** The selected module's log: its tail, then (when following) each new line as it comes. */
async function startLog() {
  if (state.logAbort) state.logAbort.abort();
  const abort = new AbortController();
  state.logAbort = abort;
  const name = state.selected;
  $("log-lines").replaceChildren();
  const path = `/api/v1/modules/${encodeURIComponent(name)}/logs?tail=100`;
  try {
    if (!$("log-follow").checked) {
      appendLog((await api("GET", path, { signal: abort.signal })).lines);
      return;
    }
    // An EventSource cannot send the bearer token: read the server-sent events from a fetch.
    const response = await fetch(`${path}&follow=true`, {
      headers: state.token ? { authorization: `Bearer ${state.token}` } : {}, signal: abort.signal,
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      throw new ApiError(response.status, answer.code || `HTTP_${response.status}`, answer.message || response.statusText);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\n\n");
      buffer = events.pop();
      const lines = [];
      for (const event of events) {
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (data) lines.push(JSON.parse(data));
      }
      if (lines.length) appendLog(lines);
    }
  } catch (e) {
    if (e.name !== "AbortError") $("log-lines").append(el("div", { class: "error", text: e.message }));
  }
}

function parseWeights(text) {
  const weights = {};
  for (const part of text.trim().split(/[\s,]+/).filter(Boolean)) {
    const [version, weight] = part.split("=");
    if (!version || weight === undefined || !/^\d+$/.test(weight)) {
      throw new Error(`"${part}" is not VERSION=WEIGHT`);
    }
    weights[version] = Number(weight);
  }
  return weights;
}

// ---- uploads ------------------------------------------------------------------------------

async function upload(file) {
  const query = [];
  if ($("upload-activate").checked) query.push("activate=true");
  if ($("upload-replace").checked) query.push("strategy=replace");
  await act(`install ${file.name}`, async () => {
    const done = await api("POST", `/api/v1/modules${query.length ? `?${query.join("&")}` : ""}`,
      { bytes: await file.arrayBuffer() });
    return `installed ${done.name}@${done.version} (${done.state}) in ${number(done.install_ms)} ms`;
  });
}

// ---- wiring -------------------------------------------------------------------------------

function wire() {
  $("weights-apply").addEventListener("click", () => act("set weights", async () => {
    const weights = parseWeights($("weights").value);
    await api("PUT", `/api/v1/modules/${encodeURIComponent(state.selected)}/traffic`, { json: weights });
    return `${state.selected}: traffic split ${Object.entries(weights).map(([v, w]) => `${v}=${w}`).join(" ")}`;
  }));
  $("weights-clear").addEventListener("click", () => act("clear weights", async () => {
    await api("PUT", `/api/v1/modules/${encodeURIComponent(state.selected)}/traffic`, { json: {} });
    return `${state.selected}: the active version takes all the traffic`;
  }));
  $("rollback").addEventListener("click", () => act("rollback", async () => {
    const done = await api("POST", `/api/v1/modules/${encodeURIComponent(state.selected)}/rollback`);
    return `rolled ${state.selected} back to ${done.active_version} (${done.how}) in ${number(done.rollback_ms)} ms`;
  }));
  $("log-follow").addEventListener("change", () => startLog());
  $("upload-file").addEventListener("change", (e) => {
    if (e.target.files.length) upload(e.target.files[0]);
    e.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
}

wire();
start({
  probe: "/api/v1/health",
  refresh: refreshBase,
  forget: () => { if (state.logAbort) state.logAbort.abort(); },
});

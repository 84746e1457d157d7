// The fleet's console (`/console` on a controller): every base against every module it runs,
// with the version, state and health of each replica, and each module's rollout as it stands.
// Uses common.js (the base's console shares it).
"use strict";

async function refreshFleet() {
  const [status, bases] = await Promise.all([api("GET", "/api/v1/status"), api("GET", "/api/v1/bases")]);
  const rollouts = await Promise.all(status.modules.map(async (m) => {
    try { return [m.name, await api("GET", `/api/v1/rollouts/${encodeURIComponent(m.name)}`)]; } catch { return [m.name, null]; }
  }));
  renderSummary(status, bases);
  renderMatrix(status, bases);
  renderRollouts(status, new Map(rollouts));
}

function renderSummary(status, bases) {
  const ready = status.modules.filter((m) => m.ready >= m.wanted).length;
  const healthy = ready === status.modules.length;
  const pill = $("base-status");
  pill.textContent = healthy ? "converged" : "converging";
  pill.className = `pill ${healthy ? "healthy" : "degraded"}`;
  $("base-counts").textContent = `${bases.length} bases · ${status.modules.length} modules · ${ready} ready`;
}

/** One base's state as the fleet sees it: cordoned, draining, or how recently it reported. */
function baseState(base) {
  if (base.cordon) return base.drained ? "drained" : (base.cordon.drain ? "draining" : "cordoned");
  return base.status ? "ready" : "registered";
}

function renderMatrix(status, bases) {
  const box = $("matrix");
  if (bases.length === 0) {
    box.replaceChildren(el("p", { class: "empty", text: "No base has registered." }));
    return;
  }
  const replicas = new Map();
  for (const m of status.modules) {
    for (const r of m.replicas) replicas.set(`${r.base_id}/${m.name}`, r);
  }
  for (const u of status.unmanaged || []) {
    replicas.set(`${u.base_id}/${u.name}`, { version: u.version, state: u.state, health: "unmanaged", serving: false });
  }
  const names = [...status.modules.map((m) => m.name), ...new Set((status.unmanaged || []).map((u) => u.name))];
  const head = el("tr", {}, el("th", { text: "base" }), el("th", { text: "state" }), el("th", { text: "memory used" }),
    el("th", { text: "CPU used" }), names.map((n) => el("th", { text: n })));
  const rows = bases.map((b) => {
    const id = b.record.id;
    const state = baseState(b);
    return el("tr", { class: `fleet-base${state === "ready" ? "" : " stands-out"}`, "data-base": id },
      el("td", {}, el("code", { text: id })),
      el("td", {}, el("span", { class: `badge state-${state === "ready" ? "active" : "pinned"}`, text: state })),
      el("td", { class: "num", text: `${bytes(b.used.memory_bytes)} / ${bytes(b.record.capacity.memory_bytes)}` }),
      el("td", { class: "num", text: `${b.used.cpu_millis}m` }),
      names.map((name) => {
        const r = replicas.get(`${id}/${name}`);
        if (!r) return el("td", { class: "empty", "data-module": name, text: "·" });
        const standsOut = r.state === "broken" || r.state === "pinned" || r.health === "unhealthy";
        return el("td", { class: `replica${standsOut ? " stands-out" : ""}`, "data-module": name, "data-state": r.state },
          el("code", { text: r.version }), " ", el("span", { class: `badge state-${r.state}`, text: r.state }),
          r.serving ? " ●" : "", r.reason ? el("div", { class: "reasons", text: r.reason }) : null);
      }));
  });
  box.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, rows)));
}

/** The rollout's steps, the implicit last one (every base, all the traffic) included, as the
 * controller counts them (`rollout::steps`). */
function stepCount(strategy) {
  const last = strategy.steps[strategy.steps.length - 1];
  const full = last && last.bases === "100%" && (last.weight === undefined || last.weight >= 100);
  return strategy.steps.length + (full ? 0 : 1);
}

function renderRollouts(status, rollouts) {
  const box = $("rollouts");
  if (status.modules.length === 0) {
    box.replaceChildren(el("p", { class: "empty", text: "No module is deployed." }));
    return;
  }
  box.replaceChildren(...status.modules.map((m) => {
    const view = rollouts.get(m.name);
    const r = view && view.rollout;
    const moved = r ? r.upgraded.length : 0;
    const percent = m.wanted ? Math.min(100, (100 * (r && r.state !== "complete" ? moved : m.ready)) / m.wanted) : 0;
    const steps = r ? stepCount(r.strategy) : 0;
    const line = r
      ? `${r.from ? `${r.from.version} → ` : ""}${r.to.version}: ${r.state.replace("_", " ")}` +
        (r.state === "progressing" || r.state === "paused" ? `, step ${r.step + 1} of ${steps} (${r.phase.replace(/_/g, " ")})` : "")
      : "no rollout recorded";
    return el("div", { class: "module rollout", "data-module": m.name, "data-rollout": r ? r.state : "" },
      el("div", { class: "title" }, el("strong", { text: m.name }),
        el("span", { class: "traffic-bar", title: "replicas on the new version" },
          el("span", { width: `${percent}%`, text: percent >= 15 ? `${Math.round(percent)}%` : "" })),
        el("span", { class: "small", text: `${m.ready}/${m.wanted} ready · ${line}` }),
        r && r.reason ? el("span", { class: "reasons", text: r.reason }) : null));
  }));
}

start({ probe: "/api/v1/status", refresh: refreshFleet });

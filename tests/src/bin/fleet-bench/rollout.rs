//! `fleet-bench --rollout BASES`: rollouts, rollbacks and autoscaling, timed on real etcd (one
//! node), two real controllers and `BASES` real bases.
//!
//! - **Rollout**: `fx-versioned` on every base (`replicas = BASES`), alternating 1.0.0 ↔ 1.1.0
//!   with steps `1 → 25% → 100%`, no pauses and no analysis window (`window = "0s"`: each step
//!   is judged on its bases' health and NACKs alone); from the `PUT` to the record `complete`
//!   and every base serving the new version, and each step's moving and holding time from the
//!   record's events.
//! - **Rollback**: 1.1.0 fails every fifth `/work` request (the `flaky-fx_versioned_1_1_0`
//!   marker in every base's data directory) under load; steps `{ bases = 1, weight = 20 }, 100%`,
//!   a 3 s window, `min_requests = 20`; from the `PUT` to `rolled_back`, from the end of the
//!   analysis window to it, and from it to every base reporting 1.0.0 alone.
//! - **Autoscale**: `fx-cpu-burner` with `autoscale = { min = 1, max = 3, target_cpu = 0.2,
//!   cooldown = "3s" }` on five more bases, twice side by side: bases reporting every 2 s
//!   (`--report-every 2s`, the default until these figures) and every 1 s (the default); from the first burning request to two
//!   replicas serving, the shrink awaited between repeats.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use pedestal_tests::{
    artifacts,
    etcd::Etcd,
    fleet::{Fleet, FleetBase},
    load::{Load, LoadReport},
};
use serde_json::{Value, json};

use super::{percentile, push};

/// The module rolled.
const MODULE: &str = "fx-versioned";
/// The rollback's analysis window.
const ROLLBACK_WINDOW_MS: u64 = 3_000;
/// The rollback's canary weight.
const CANARY_WEIGHT: u32 = 20;
/// Bases the rollback's load goes through (the first in id order: the canary is among them).
const LOADED_BASES: usize = 5;
/// Bases in each autoscale group.
const SCALE_BASES: usize = 5;
/// The report intervals compared side by side.
const INTERVALS: [&str; 2] = ["2s", "1s"];
/// How often the driver polls the controller API.
const POLL: Duration = Duration::from_millis(20);

/// How many times each part runs.
pub struct Repeats {
    /// Rollouts.
    pub rollouts: usize,
    /// Rollbacks.
    pub rollbacks: usize,
    /// Autoscale reactions per report interval.
    pub scales: usize,
}

/// What the rollout part measured.
pub struct Rollouts {
    bases: usize,
    start: Duration,
    idle: Usage,
    rollouts: Vec<Rollout>,
    rollbacks: Vec<Rollback>,
    scales: Vec<(String, Vec<Reaction>)>,
}

/// One rollout: wall times seen by the driver, and the record's own times.
struct Rollout {
    version: String,
    /// `PUT` → the record `complete` and every base serving the new version.
    total: Duration,
    /// `PUT` → the record's `started` event (the first pass that saw the spec).
    to_started: Duration,
    /// Per step: (moving, holding) from the events, `moving`/`started` → `step_reached` →
    /// the next `moving`/`complete`.
    steps: Vec<(Duration, Duration)>,
}

/// One rollback.
struct Rollback {
    /// `PUT` → the record `rolled_back` (seen by the driver).
    to_rolled_back: Duration,
    /// `step_reached` of the first step → `rolled_back` (the record's times).
    reached_to_rolled_back: Duration,
    /// `rolled_back` minus (`step_reached` + window), in milliseconds; negative when the
    /// analysis failed the canary before its window was over.
    after_window_ms: i64,
    /// `rolled_back` → every base reporting the old version alone.
    to_old_alone: Duration,
    /// Bases the canary reached.
    upgraded: usize,
    /// The step it stopped at (0-based).
    step: u64,
    /// The new version's share of its base's requests over the analysis window: its judged
    /// requests over a fifth of all judged (the load is round-robin over the loaded bases).
    canary_share: f64,
    /// The analysis' words.
    reason: String,
    /// The analysis' new-version measure: requests, 5xx.
    new: (u64, u64),
    /// The load over the whole repeat.
    load: LoadReport,
    /// What the fleet used meanwhile.
    usage: Usage,
}

/// One autoscale reaction.
struct Reaction {
    /// First burning request → the scale record asks for 2 or more (the controller's change
    /// time, from etcd).
    decided: Duration,
    /// First burning request → the fleet status shows 2 or more replicas ready.
    serving: Duration,
}

impl Rollouts {
    /// The report's section.
    pub fn render(&self, out: &mut String) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(out, "## Rollouts, rollbacks, autoscale: {} bases\n", self.bases)?;
        writeln!(
            out,
            "{} bases (`replicas = {}`) started and registered in {:.1} s. Idle over 4 s (the status reports): {}.\n",
            self.bases,
            self.bases,
            self.start.as_secs_f64(),
            self.idle,
        )?;

        let n = self.rollouts.len();
        writeln!(
            out,
            "### Rollout of `{MODULE}` over every base, steps 1 → 25% → 100%, no pauses, window 0s, max_unavailable 25% ({n} repeats; p99 is the max of {n})\n"
        )?;
        writeln!(out, "| measure | p50 (ms) | p99 = max (ms) | each (ms) |\n|---|---|---|---|")?;
        let row = |out: &mut String, what: &str, samples: &[Duration]| {
            let each: Vec<String> = samples.iter().map(|d| format!("{:.0}", ms(*d))).collect();
            writeln!(
                out,
                "| {what} | {:.0} | {:.0} | {} |",
                ms(percentile(samples, 0.5)),
                ms(percentile(samples, 1.0)),
                each.join(", ")
            )
        };
        let totals: Vec<Duration> = self.rollouts.iter().map(|r| r.total).collect();
        row(out, "apply → `complete`, every base serving the new version", &totals)?;
        let started: Vec<Duration> = self.rollouts.iter().map(|r| r.to_started).collect();
        row(out, "apply → `started` (the first pass that read the spec)", &started)?;
        let steps = self.rollouts.iter().map(|r| r.steps.len()).max().unwrap_or(0);
        let names = ["1 base", "25%", "100%"];
        for s in 0..steps {
            let name = names.get(s).copied().unwrap_or("step");
            let moving: Vec<Duration> =
                self.rollouts.iter().filter_map(|r| r.steps.get(s)).map(|x| x.0).collect();
            let holding: Vec<Duration> =
                self.rollouts.iter().filter_map(|r| r.steps.get(s)).map(|x| x.1).collect();
            row(out, &format!("step {} ({name}): moving → `step_reached`", s + 1), &moving)?;
            row(out, &format!("step {} ({name}): `step_reached` → next step / `complete`", s + 1), &holding)?;
        }
        let versions: Vec<&str> = self.rollouts.iter().map(|r| r.version.as_str()).collect();
        writeln!(out, "\nVersions rolled to, in order: {}.\n", versions.join(", "))?;

        let n = self.rollbacks.len();
        writeln!(
            out,
            "### Rollback of a version failing every fifth request: steps `{{ bases = 1, weight = {CANARY_WEIGHT} }}, 100%`, window {} s, min_requests 20 ({n} repeats)\n",
            ROLLBACK_WINDOW_MS / 1000
        )?;
        writeln!(
            out,
            "Load: 4 threads round-robin on `/{MODULE}/work` through the first {LOADED_BASES} bases in id order (the canary, the first base the rollout moves, is among them).\n"
        )?;
        writeln!(
            out,
            "| repeat | apply → `rolled_back` (ms) | `step_reached` → `rolled_back` (ms) | `rolled_back` − window end (ms) | `rolled_back` → every base on 1.0.0 alone (ms) | bases reached | step | new version's share of its base over the window | canary requests / 5xx judged | analysis |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
        for (i, r) in self.rollbacks.iter().enumerate() {
            writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:+} | {:.0} | {} | {} | {:.1}% (weight {CANARY_WEIGHT}) | {} / {} | {} |",
                i + 1,
                ms(r.to_rolled_back),
                ms(r.reached_to_rolled_back),
                r.after_window_ms,
                ms(r.to_old_alone),
                r.upgraded,
                r.step + 1,
                r.canary_share * 100.0,
                r.new.0,
                r.new.1,
                r.reason
            )?;
        }
        for (i, r) in self.rollbacks.iter().enumerate() {
            writeln!(out, "\nLoad of repeat {}: {}; meanwhile {}", i + 1, one_line(&r.load), r.usage)?;
        }
        writeln!(out)?;

        writeln!(
            out,
            "### Autoscale: `fx-cpu-burner`, min 1, max 3, target_cpu 0.2, cooldown 3s, {SCALE_BASES} bases per report interval; load: 2 loops of `burn?ms=100` through one base\n"
        )?;
        writeln!(
            out,
            "| bases report every | repeats | load → scale record ≥ 2 p50 (ms) | max (ms) | load → ≥ 2 replicas ready p50 (ms) | max (ms) | each, ready (ms) |\n|---|---|---|---|---|---|---|"
        )?;
        for (interval, reactions) in &self.scales {
            let decided: Vec<Duration> = reactions.iter().map(|r| r.decided).collect();
            let serving: Vec<Duration> = reactions.iter().map(|r| r.serving).collect();
            let each: Vec<String> = serving.iter().map(|d| format!("{:.0}", ms(*d))).collect();
            writeln!(
                out,
                "| {interval} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                reactions.len(),
                ms(percentile(&decided, 0.5)),
                ms(percentile(&decided, 1.0)),
                ms(percentile(&serving, 0.5)),
                ms(percentile(&serving, 1.0)),
                each.join(", ")
            )?;
        }
        writeln!(out)
    }
}

/// A load report on one line, without its kept failures (the 500s are the canary's own).
fn one_line(report: &LoadReport) -> String {
    format!(
        "{} requests ({:.0}/s), by status {:?}, {} connection errors, p50 {:.1?} p99 {:.1?}, by version {:?}",
        report.total,
        report.rps(),
        report.by_status,
        report.connection_errors,
        report.p50,
        report.p99,
        report.by_version
    )
}

/// Runs every part on one fleet of `bases` bases (plus the autoscale groups).
pub fn measure(bases: usize, repeats: &Repeats, extra: &[&str]) -> anyhow::Result<Rollouts> {
    let started = Instant::now();
    let mut fleet =
        Fleet::start_on(Etcd::single(), 2, bases, |_| vec![("pool".into(), "roll".into())], extra);
    let start = started.elapsed();
    eprintln!("{bases} bases registered in {start:?}");
    let idle = idle(&fleet)?;
    eprintln!("idle: {idle}");

    let shas = [push(&fleet, artifacts::VERSIONED_1_0_0)?, push(&fleet, artifacts::VERSIONED_1_1_0)?];
    let versions = ["1.0.0", "1.1.0"];
    let fast = json!({
        "steps": [{ "bases": 1 }, { "bases": "25%" }, { "bases": "100%" }],
        "max_unavailable": "25%",
        "analysis": { "window_ms": 0 },
    });
    // The first deploy: nothing to roll from.
    apply(&fleet, &spec(versions[0], &shas[0], bases, &fast))?;
    wait_rolled(&fleet, versions[0], "complete", Duration::from_secs(120))?;
    wait_all_serving(&fleet, versions[0], bases, Duration::from_secs(120))?;

    let mut rollouts = Vec::new();
    for i in 0..repeats.rollouts {
        let k = (i + 1) % 2;
        let rollout = roll(&fleet, versions[k], &spec(versions[k], &shas[k], bases, &fast), bases)?;
        eprintln!("rollout → {}: {:?} ({:?})", versions[k], rollout.total, rollout.steps);
        rollouts.push(rollout);
    }
    if repeats.rollouts % 2 == 1 {
        // Back to 1.0.0: the rollback rolls 1.0.0 → 1.1.0.
        roll(&fleet, versions[0], &spec(versions[0], &shas[0], bases, &fast), bases)?;
    }

    let rollbacks = rollbacks(&fleet, &shas, bases, repeats.rollbacks)?;

    // Two groups of autoscale bases, one per report interval.
    let mut scales = Vec::new();
    let sha = push(&fleet, artifacts::CPU_BURNER)?;
    let mut groups = Vec::new();
    for interval in INTERVALS {
        let pool = format!("burn-{interval}");
        let mut args = extra.to_vec();
        args.extend(["--report-every", interval]);
        for i in 0..SCALE_BASES {
            fleet.add_base(&format!("s{interval}-{i}"), &[("pool", &pool)], &args);
        }
        let spec = json!({
            "name": pool, "version": "0.1.0", "sha256": sha, "selector": { "pool": pool },
            "autoscale": { "min": 1, "max": 3, "target_cpu": 0.2, "cooldown_ms": 3_000 },
        });
        apply(&fleet, &spec)?;
        groups.push((interval, pool));
    }
    for (_, pool) in &groups {
        wait_ready_count(&fleet, pool, 1, Duration::from_secs(60))?;
    }
    for (interval, _) in &groups {
        scales.push((interval.to_string(), Vec::new()));
    }
    // Alternating, so both intervals see the same machine.
    for _ in 0..repeats.scales {
        for (g, (interval, pool)) in groups.iter().enumerate() {
            let through = fleet
                .bases
                .iter()
                .find(|b| b.id() == format!("s{interval}-0"))
                .context("the group's first base")?;
            let reaction = react(&fleet, through, pool)?;
            eprintln!(
                "autoscale ({interval} reports): decided {:?}, serving {:?}",
                reaction.decided, reaction.serving
            );
            scales[g].1.push(reaction);
        }
    }
    drop(fleet);
    Ok(Rollouts { bases, start, idle, rollouts, rollbacks, scales })
}

/// The spec of `version` on every base of the `roll` pool with `strategy`.
fn spec(version: &str, sha256: &str, bases: usize, strategy: &Value) -> Value {
    json!({
        "name": MODULE, "version": version, "sha256": sha256, "replicas": bases,
        "selector": { "pool": "roll" }, "rollout": strategy,
    })
}

/// `PUT /api/v1/specs/<name>`.
fn apply(fleet: &Fleet, spec: &Value) -> anyhow::Result<()> {
    let name = spec["name"].as_str().context("a spec name")?;
    let reply = fleet.controller().api("PUT", &format!("/api/v1/specs/{name}"), Some(spec));
    if reply.status != 200 {
        bail!("PUT {name}: {reply:?}");
    }
    Ok(())
}

/// `GET /api/v1/rollouts/fx-versioned`'s record, `Null` before one.
fn record(fleet: &Fleet) -> Value {
    let reply = fleet.controller().api("GET", &format!("/api/v1/rollouts/{MODULE}"), None);
    if reply.status == 200 { reply.json["rollout"].clone() } else { Value::Null }
}

/// Polls the rollout record until it rolls to `version` and is in `state` (or finished
/// otherwise: an error); the record.
fn wait_rolled(fleet: &Fleet, version: &str, state: &str, timeout: Duration) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    loop {
        let record = record(fleet);
        if record["to"]["version"] == version {
            if record["state"] == state {
                return Ok(record);
            }
            if record["finished_ms"].is_u64() {
                bail!("the rollout to {version} ended {} rather than {state}: {record}", record["state"]);
            }
        }
        if t0.elapsed() > timeout {
            bail!("the rollout to {version} was not {state} after {timeout:?}: {record}");
        }
        std::thread::sleep(POLL);
    }
}

/// Polls the fleet status until `want` replicas serve `version`.
fn wait_all_serving(fleet: &Fleet, version: &str, want: usize, timeout: Duration) -> anyhow::Result<()> {
    super::wait_all_serving(fleet, MODULE, version, want, timeout)
}

/// One measured rollout to `version`.
fn roll(fleet: &Fleet, version: &str, spec: &Value, bases: usize) -> anyhow::Result<Rollout> {
    let put_ms = now_ms();
    let t0 = Instant::now();
    apply(fleet, spec)?;
    let record = wait_rolled(fleet, version, "complete", Duration::from_secs(300))?;
    wait_all_serving(fleet, version, bases, Duration::from_secs(60))?;
    let total = t0.elapsed();
    let events = events(&record);
    let started = events.iter().find(|(e, _, _)| e == "started").map(|(_, _, at)| *at).unwrap_or(put_ms);
    // A step runs from its `moving` (the first: `started`) to `step_reached`, then holds until
    // the next `moving` or `complete`.
    let mut steps = Vec::new();
    let mut begin = started;
    let mut step = 0;
    while let Some(reached) = at(&events, "step_reached", step) {
        let next = at(&events, "moving", step + 1).or_else(|| at(&events, "complete", step));
        let end = next.unwrap_or(reached);
        steps.push((ms_between(begin, reached), ms_between(reached, end)));
        begin = end;
        step += 1;
    }
    Ok(Rollout { version: version.to_owned(), total, to_started: ms_between(put_ms, started), steps })
}

/// The record's events: (event, step, at_ms).
fn events(record: &Value) -> Vec<(String, u64, u64)> {
    record["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["event"].as_str()?.to_owned(), e["step"].as_u64()?, e["at_ms"].as_u64()?)))
        .collect()
}

/// When `event` happened at `step`, the first time.
fn at(events: &[(String, u64, u64)], event: &str, step: u64) -> Option<u64> {
    events.iter().find(|(e, s, _)| e == event && *s == step).map(|(_, _, at)| *at)
}

fn ms_between(from_ms: u64, to_ms: u64) -> Duration {
    Duration::from_millis(to_ms.saturating_sub(from_ms))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The rollback part: 1.0.0 runs everywhere; 1.1.0 is flaky on every base.
fn rollbacks(
    fleet: &Fleet,
    shas: &[String; 2],
    bases: usize,
    repeats: usize,
) -> anyhow::Result<Vec<Rollback>> {
    for base in &fleet.bases {
        std::fs::write(base.data_dir().join("flaky-fx_versioned_1_1_0"), "")?;
    }
    let canaried = json!({
        "steps": [{ "bases": 1, "weight": CANARY_WEIGHT }, { "bases": "100%" }],
        "max_unavailable": "25%",
        "analysis": { "window_ms": ROLLBACK_WINDOW_MS, "min_requests": 20 },
    });
    let mut ids: Vec<&FleetBase> = fleet.bases.iter().collect();
    ids.sort_by(|a, b| a.id().cmp(b.id()));
    let targets: Vec<String> = ids.iter().take(LOADED_BASES).map(|b| b.traffic.clone()).collect();
    let mut out = Vec::new();
    for i in 0..repeats {
        if i > 0 {
            // The spec back on 1.0.0 (it still says 1.1.0 after a rollback): nothing moves.
            apply(fleet, &spec("1.0.0", &shas[0], bases, &canaried))?;
            wait_rolled(fleet, "1.0.0", "complete", Duration::from_secs(60))?;
        }
        let meter = Meter::start(fleet)?;
        let load = Load::start(targets.clone(), &format!("/{MODULE}/work"), 4, &[]);
        // Old-version traffic in the metrics before the canary starts.
        std::thread::sleep(Duration::from_millis(2500));
        let put_ms = now_ms();
        let t0 = Instant::now();
        apply(fleet, &spec("1.1.0", &shas[1], bases, &canaried))?;
        let record = wait_rolled(fleet, "1.1.0", "rolled_back", Duration::from_secs(120))?;
        let to_rolled_back = t0.elapsed();
        let seen_ms = now_ms();
        wait_old_alone(fleet, "1.0.0", bases, Duration::from_secs(60))?;
        let alone_ms = now_ms();
        let report = load.stop();
        let usage = meter.finish()?;
        let events = events(&record);
        let reached = at(&events, "step_reached", 0).context("the canary step was reached")?;
        let rolled =
            events.iter().find(|(e, _, _)| e == "rolled_back").map(|(_, _, at)| *at).unwrap_or(seen_ms);
        let upgraded: Vec<&str> =
            record["upgraded"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let canary_base = upgraded.first().copied().unwrap_or("-");
        let analysis = &record["analysis"];
        // Over the window the load is even over the loaded bases (round-robin), so the canary
        // base answered (new + old) / LOADED_BASES of the judged requests, `new` of them by the
        // new version.
        let judged_new = analysis["new"]["requests"].as_u64().unwrap_or(0);
        let judged_old = analysis["old"]["requests"].as_u64().unwrap_or(0);
        let per_base = (judged_new + judged_old) as f64 / LOADED_BASES as f64;
        let rollback = Rollback {
            to_rolled_back,
            reached_to_rolled_back: ms_between(reached, rolled),
            after_window_ms: rolled as i64 - (reached + ROLLBACK_WINDOW_MS) as i64,
            to_old_alone: ms_between(rolled.max(put_ms), alone_ms),
            upgraded: upgraded.len(),
            step: record["step"].as_u64().unwrap_or(0),
            canary_share: judged_new as f64 / per_base.max(1.0),
            reason: record["reason"].as_str().unwrap_or("-").to_owned(),
            new: (
                analysis["new"]["requests"].as_u64().unwrap_or(0),
                analysis["new"]["server_errors"].as_u64().unwrap_or(0),
            ),
            load: report,
            usage,
        };
        eprintln!(
            "rollback: apply → rolled_back {:?}, reached → rolled_back {:?}, after window {} ms, → old alone {:?}, {} base(s) reached ({canary_base}): {}",
            rollback.to_rolled_back,
            rollback.reached_to_rolled_back,
            rollback.after_window_ms,
            rollback.to_old_alone,
            rollback.upgraded,
            rollback.reason
        );
        out.push(rollback);
    }
    for base in &fleet.bases {
        std::fs::remove_file(base.data_dir().join("flaky-fx_versioned_1_1_0")).ok();
    }
    Ok(out)
}

/// Polls `GET /api/v1/bases` until `want` bases report `fx-versioned` `version` serving and no
/// other instance of it.
fn wait_old_alone(fleet: &Fleet, version: &str, want: usize, timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let reply = fleet.controller().api("GET", "/api/v1/bases", None);
        let alone = reply
            .json
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| {
                let instances: Vec<&Value> = b["status"]["modules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["name"] == MODULE)
                    .collect();
                instances.len() == 1 && instances[0]["version"] == version && instances[0]["serving"] == true
            })
            .count();
        if alone == want {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("{alone} of {want} bases run {MODULE} {version} alone after {timeout:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// The fleet status of `module`: (replicas wanted by the autoscaler, ready, replicas listed).
fn scale_view(fleet: &Fleet, module: &str) -> (u64, u64, usize) {
    let view = fleet.controller().module_status(module);
    (
        view["autoscale"]["replicas"].as_u64().unwrap_or(0),
        view["ready"].as_u64().unwrap_or(0),
        view["replicas"].as_array().map_or(0, Vec::len),
    )
}

fn wait_ready_count(fleet: &Fleet, module: &str, want: u64, timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let (wanted, ready, listed) = scale_view(fleet, module);
        if wanted == want && ready == want && listed == want as usize {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("{module}: wanted {wanted}, ready {ready}, listed {listed} after {timeout:?}, not {want}");
        }
        std::thread::sleep(POLL);
    }
}

/// One autoscale reaction of `module`, loaded through `through`; then waits for the shrink back
/// to one replica and for its reports to go quiet.
fn react(fleet: &Fleet, through: &FleetBase, module: &str) -> anyhow::Result<Reaction> {
    wait_ready_count(fleet, module, 1, Duration::from_secs(60))?;
    let url = format!("{}/{module}/burn?ms=100", through.traffic);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reaction = std::thread::scope(|scope| -> anyhow::Result<Reaction> {
        let load_ms = now_ms();
        let t0 = Instant::now();
        for _ in 0..2 {
            scope.spawn(|| {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Failures are not the measure; a refused request just burns nothing.
                    let _ = agent.get(&url).call();
                }
            });
        }
        let result = wait_grown(fleet, module, t0, load_ms);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    })?;
    // Back to one replica (a cooldown of lower demand), then a quiet report interval or two so
    // the next repeat starts from no measured load.
    wait_ready_count(fleet, module, 1, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(4500));
    Ok(reaction)
}

/// Polls until `module` wants and has 2 or more replicas ready (load started at `t0`, at
/// `load_ms` on the wall clock).
fn wait_grown(fleet: &Fleet, module: &str, t0: Instant, load_ms: u64) -> anyhow::Result<Reaction> {
    loop {
        let (wanted, ready, _) = scale_view(fleet, module);
        if wanted >= 2 && ready >= 2 {
            let serving = t0.elapsed();
            let record: Value = fleet
                .etcd
                .get(&format!("/pedestal/scale/{module}"))
                .and_then(|v| serde_json::from_str(&v).ok())
                .context("the scale record")?;
            let changed = record["changed_ms"].as_u64().context("changed_ms")?;
            return Ok(Reaction { decided: ms_between(load_ms, changed), serving });
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("{module} did not grow within 60 s: wanted {wanted}, ready {ready}");
        }
        std::thread::sleep(POLL);
    }
}

/// What a fleet cost over a stretch of time: etcd writes and CPU.
struct Usage {
    /// etcd puts and transactions per second.
    puts_per_s: f64,
    /// CPU used, in cores: every base together, both controllers, etcd.
    cores: [f64; 3],
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} etcd puts/s; CPU, in cores: all bases {:.2}, both controllers {:.2}, etcd {:.2}",
            self.puts_per_s, self.cores[0], self.cores[1], self.cores[2]
        )
    }
}

/// The counters [`Usage`] is the difference of.
struct Meter {
    url: String,
    groups: [Vec<u32>; 3],
    puts: BTreeMap<String, f64>,
    cpu: [f64; 3],
    at: Instant,
}

const PUT_COUNTERS: [&str; 2] = ["etcd_mvcc_put_total", "etcd_mvcc_txn_total"];

impl Meter {
    fn start(fleet: &Fleet) -> anyhow::Result<Self> {
        let url = format!("{}/metrics", fleet.etcd.endpoint(0));
        let groups: [Vec<u32>; 3] = [
            fleet.bases.iter().map(|b| b.pid()).collect(),
            fleet.controllers.iter().map(|c| c.pid()).collect(),
            fleet.etcd.pid(0).into_iter().collect(),
        ];
        let cpu = groups.each_ref().map(|g| cpu_of(g));
        Ok(Self { puts: super::counters(&url)?, url, groups, cpu, at: Instant::now() })
    }

    fn finish(self) -> anyhow::Result<Usage> {
        let puts = super::counters(&self.url)?;
        let cpu = self.groups.each_ref().map(|g| cpu_of(g));
        let elapsed = self.at.elapsed().as_secs_f64();
        Ok(Usage {
            puts_per_s: super::delta(&self.puts, &puts, &PUT_COUNTERS) / elapsed,
            cores: std::array::from_fn(|i| (cpu[i] - self.cpu[i]) / elapsed),
        })
    }
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// What the fleet costs over 4 s with nothing changing (the bases' status reports).
fn idle(fleet: &Fleet) -> anyhow::Result<Usage> {
    let meter = Meter::start(fleet)?;
    std::thread::sleep(Duration::from_secs(4));
    meter.finish()
}

/// User and system CPU seconds a process used so far (`/proc/<pid>/stat`, 100 ticks a second
/// on Linux/x86-64), 0 when it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

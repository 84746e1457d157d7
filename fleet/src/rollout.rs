//! The rollout engine: a pure, deterministic function from a spec, its rollout record, where
//! the scheduler placed it and what the bases report, to the next record and the release each
//! placed base runs.
//!
//! [`crate::schedule::place`] decides *which bases* run a module; [`advance`] decides *which
//! release* each of them runs while a change of version (or of bytes) moves through the
//! strategy's steps. Everything it needs to carry on is in the [`RolloutRecord`] it returns (the
//! step index and the upgraded bases only grow), so a controller elected mid-step resumes from
//! etcd alone: no step is applied twice and none is skipped.
//!
//! The rules:
//! - **Start**: the spec's release (version and sha256) differs from the record's `to`. `from`
//!   is what runs: the old record's `to` when it completed, its `from` when it had not (its
//!   upgraded bases go back to `from`, the release every base is known to run), or, without a
//!   record, the release most placed bases report (or are assigned). Nothing to roll from: a
//!   first deploy, complete at once.
//! - **Moving**: bases (id order) join `upgraded` up to the step's count, at most
//!   `max_unavailable` not yet reporting `to` serving at once. Reached when every upgraded base
//!   reports `to` serving (at the step's weight when it splits) → **Holding**.
//! - **Holding** lasts `max(analysis window, pause)`; the analysis compares `to` with `from` over
//!   the window and rolls back at once on a `fail` verdict. Elapsed → next step, or
//!   **AwaitingPromotion** for `pause = "manual"`, or **Complete** after the last step.
//! - A NACK of `to`, or `to` reported unhealthy, on an upgraded base rolls back at once.
//! - **Paused**: nothing moves forward (no new bases, no next step) but timers keep running and
//!   the analysis and health checks still roll back. Resume carries on where the clock is.

use std::collections::BTreeMap;

use crate::model::{
    Amount, Analysis, AnalysisResult, Assignment, BaseStatus, Canary, Measure, Pause, Release,
    RolloutCommand, RolloutEvent, RolloutRecord, RolloutState, SpecRecord, Step, StepPhase, Strategy,
};

/// Finished rollouts kept per module under `rollout-history/<module>/`.
pub const MAX_PAST_ROLLOUTS: usize = 10;

/// What the controller measured of a module's releases: requests, 5xx and latency summed over
/// bases (see [`crate::controller`]'s metrics).
pub trait Metrics {
    /// `release` of `module` between `from_ms` and `to_ms`.
    fn window(&self, module: &str, release: &Release, from_ms: u64, to_ms: u64) -> Measure;
    /// When this controller's first sample was taken (`None`: none yet). A window never
    /// starts before it: a fresh leader restarts the current window, never skips it.
    fn observed_since(&self) -> Option<u64>;
}

/// Everything [`advance`] decides from.
pub struct Input<'a> {
    /// The module's spec.
    pub spec: &'a SpecRecord,
    /// Its rollout record, if any.
    pub record: Option<&'a RolloutRecord>,
    /// The bases the scheduler placed it on, in id order.
    pub placed: &'a [String],
    /// Every base's last report, by id.
    pub statuses: &'a BTreeMap<String, BaseStatus>,
    /// The assignments in force, by base id then module (what runs before any report).
    pub current: &'a BTreeMap<String, BTreeMap<String, Assignment>>,
    /// Pending commands to this module's rollout, oldest first.
    pub commands: &'a [RolloutCommand],
    /// The measurements.
    pub metrics: &'a dyn Metrics,
    /// Now, in milliseconds since the epoch.
    pub now_ms: u64,
    /// The deciding controller's id (events' actor: `controller <id>`).
    pub controller: &'a str,
}

/// What [`advance`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The record to hold.
    pub record: RolloutRecord,
    /// A rollout this one superseded (or the finished one a new one replaced), for
    /// `rollout-history/`.
    pub retired: Option<RolloutRecord>,
    /// What each placed base runs, by base id.
    pub assignments: BTreeMap<String, Assignment>,
    /// The ids of the commands applied (or ignored): delete them with the record's write.
    pub consumed: Vec<String>,
}

/// One pass of a module's rollout.
pub fn advance(input: &Input) -> Decision {
    let spec = &input.spec.spec;
    let target = spec.release();
    let mut retired = None;
    let mut record = match input.record {
        Some(old) if same(&old.to, &target) => {
            let mut record = old.clone();
            record.to.url = target.url.clone();
            record
        }
        old => {
            let from = match old {
                Some(old) if old.state == RolloutState::Complete => Some(old.to.clone()),
                Some(old) => old.from.clone().or_else(|| Some(old.to.clone())),
                None => running_release(input, &target),
            };
            if let Some(old) = old {
                let mut old = old.clone();
                if !old.state.is_finished() {
                    let message =
                        format!("superseded by generation {} ({})", input.spec.generation, spec.version);
                    push_event(&mut old, input.now_ms, &actor(input), "superseded", message);
                    old.finished_ms = Some(input.now_ms);
                    old.phase = StepPhase::Done;
                }
                retired = Some(old);
            }
            start(input, from, target.clone())
        }
    };

    let mut consumed = Vec::new();
    for command in input.commands {
        apply_command(&mut record, command, input, &target);
        consumed.push(command.id.clone());
    }
    step(&mut record, input);

    let assignments =
        input.placed.iter().map(|base| (base.clone(), assignment_for(&record, input.spec, base))).collect();
    Decision { record, retired, assignments, consumed }
}

/// The steps of `strategy` with the implicit last one (every base, full weight) when its own
/// last step is not that.
pub fn steps(strategy: &Strategy) -> Vec<Step> {
    let mut steps = strategy.steps.clone();
    let full = Step { bases: Amount::Percent(100), weight: 100, pause: Pause::None };
    if steps.last().is_none_or(|last| last.bases != Amount::Percent(100) || last.weight < 100) {
        steps.push(full);
    }
    steps
}

/// The weight `to` takes on an upgraded base at `step`: 100 when both releases are the same
/// version (a base cannot run two builds of one version side by side).
pub fn weight(record: &RolloutRecord, step: &Step) -> u32 {
    match &record.from {
        Some(from) if from.version != record.to.version => step.weight.clamp(1, 100),
        _ => 100,
    }
}

/// Whether two releases are the same build (the url is where to fetch it, not what it is).
fn same(a: &Release, b: &Release) -> bool {
    a.version == b.version && a.sha256 == b.sha256
}

fn actor(input: &Input) -> String {
    format!("controller {}", input.controller)
}

fn push_event(record: &mut RolloutRecord, at_ms: u64, actor: &str, event: &str, message: String) {
    record.history.push(RolloutEvent {
        at_ms,
        actor: actor.to_owned(),
        step: record.step,
        event: event.to_owned(),
        message,
    });
    let excess = record.history.len().saturating_sub(RolloutRecord::MAX_HISTORY);
    record.history.drain(..excess);
}

/// The release most placed bases report running (or, before a report, are assigned), other
/// than `target`; ties go to the smaller version string, for determinism.
fn running_release(input: &Input, target: &Release) -> Option<Release> {
    let module = &input.spec.spec.name;
    let mut counts: BTreeMap<(String, String), (u32, Option<String>)> = BTreeMap::new();
    for base in input.placed {
        let reported = input
            .statuses
            .get(base)
            .into_iter()
            .flat_map(|s| &s.modules)
            .filter(|m| m.name == *module && !(m.version == target.version && m.sha256 == target.sha256));
        let mut found = false;
        for m in reported {
            found = true;
            counts.entry((m.version.clone(), m.sha256.clone())).or_default().0 += 1;
        }
        if !found
            && let Some(a) = input.current.get(base).and_then(|m| m.get(module))
            && !(a.version == target.version && a.sha256 == target.sha256)
        {
            let entry = counts.entry((a.version.clone(), a.sha256.clone())).or_default();
            entry.0 += 1;
            entry.1 = a.url.clone();
        }
    }
    let best = counts.iter().map(|(_, (n, _))| *n).max()?;
    let ((version, sha256), (_, url)) = counts.into_iter().find(|(_, (n, _))| *n == best)?;
    Some(Release { version, sha256, url })
}

/// A new record rolling `from` → `to`.
fn start(input: &Input, from: Option<Release>, to: Release) -> RolloutRecord {
    let strategy = input.spec.spec.strategy();
    let now = input.now_ms;
    let baseline = from.as_ref().and_then(|from| {
        let window = strategy.analysis.window_ms.max(1);
        let measure = input.metrics.window(&input.spec.spec.name, from, now.saturating_sub(window), now);
        (measure.requests > 0).then_some(measure)
    });
    let mut record = RolloutRecord {
        module: input.spec.spec.name.clone(),
        generation: input.spec.generation,
        from: from.clone(),
        to: to.clone(),
        strategy,
        state: RolloutState::Progressing,
        step: 0,
        phase: StepPhase::Moving,
        upgraded: Vec::new(),
        started_ms: now,
        phase_ms: now,
        finished_ms: None,
        paused_by: None,
        baseline,
        analysis: None,
        reason: None,
        history: Vec::new(),
    };
    let who = actor(input);
    match &from {
        Some(from) if !same(from, &to) => {
            let message = format!(
                "{} ({}) → {} ({})",
                from.version,
                short(&from.sha256),
                to.version,
                short(&to.sha256)
            );
            push_event(&mut record, now, &who, "started", message);
        }
        _ => {
            let message = match &from {
                None => format!("first deploy of {}: nothing to roll from", to.version),
                Some(_) => format!("{} already runs", to.version),
            };
            push_event(&mut record, now, &who, "started", message.clone());
            finish(&mut record, now, &who, RolloutState::Complete, "complete", message);
        }
    }
    record
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

fn finish(
    record: &mut RolloutRecord,
    now: u64,
    actor: &str,
    state: RolloutState,
    event: &str,
    message: String,
) {
    record.state = state;
    record.phase = StepPhase::Done;
    record.phase_ms = now;
    record.finished_ms = Some(now);
    record.paused_by = None;
    if matches!(state, RolloutState::RolledBack | RolloutState::Aborted) {
        record.reason = Some(message.clone());
    }
    push_event(record, now, actor, event, message);
}

fn apply_command(record: &mut RolloutRecord, command: &RolloutCommand, input: &Input, target: &Release) {
    let now = input.now_ms;
    let who = command.actor.as_str();
    let why = command.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    let ignored = |record: &mut RolloutRecord, why_not: String| {
        let message = format!("{} ignored: {why_not}", command.action);
        push_event(record, now, who, "ignored", message);
    };
    match command.action.as_str() {
        "pause" => match record.state {
            RolloutState::Progressing => {
                record.state = RolloutState::Paused;
                record.paused_by = Some(who.to_owned());
                push_event(record, now, who, "paused", format!("paused{why}"));
            }
            state => ignored(record, format!("the rollout is {}", state_name(state))),
        },
        "resume" => match record.state {
            RolloutState::Paused => {
                record.state = RolloutState::Progressing;
                record.paused_by = None;
                push_event(record, now, who, "resumed", format!("resumed{why}"));
            }
            RolloutState::RolledBack | RolloutState::Aborted if same(&record.to, target) => {
                record.state = RolloutState::Progressing;
                record.step = 0;
                record.phase = StepPhase::Moving;
                record.phase_ms = now;
                record.upgraded.clear();
                record.finished_ms = None;
                record.reason = None;
                record.analysis = None;
                push_event(record, now, who, "resumed", format!("restarted from step 1{why}"));
            }
            state => ignored(record, format!("the rollout is {}", state_name(state))),
        },
        "promote" => match record.state {
            RolloutState::Progressing | RolloutState::Paused => {
                let total = steps(&record.strategy).len() as u32;
                let message = format!("step {} of {total} promoted{why}", record.step + 1);
                push_event(record, now, who, "promoted", message);
                next_step(record, now, who);
            }
            state => ignored(record, format!("the rollout is {}", state_name(state))),
        },
        "abort" => match record.state {
            RolloutState::Progressing | RolloutState::Paused => {
                let message = format!("aborted by {who}{why}");
                finish(record, now, who, RolloutState::Aborted, "aborted", message);
            }
            state => ignored(record, format!("the rollout is {}", state_name(state))),
        },
        other => ignored(record, format!("{other:?} is not pause, resume, promote or abort")),
    }
}

/// The state's name as the API spells it.
pub fn state_name(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Progressing => "progressing",
        RolloutState::Paused => "paused",
        RolloutState::Complete => "complete",
        RolloutState::RolledBack => "rolled_back",
        RolloutState::Aborted => "aborted",
    }
}

/// To the next step, or complete after the last.
fn next_step(record: &mut RolloutRecord, now: u64, actor: &str) {
    let total = steps(&record.strategy).len() as u32;
    if record.step + 1 >= total {
        let message = format!("every base runs {}", record.to.version);
        finish(record, now, actor, RolloutState::Complete, "complete", message);
    } else {
        record.step += 1;
        record.phase = StepPhase::Moving;
        record.phase_ms = now;
        record.analysis = None;
        push_event(record, now, actor, "moving", format!("step {} of {total}", record.step + 1));
    }
}

/// The controller's own transitions.
fn step(record: &mut RolloutRecord, input: &Input) {
    if record.state.is_finished() {
        return;
    }
    let now = input.now_ms;
    let who = actor(input);
    let module = input.spec.spec.name.as_str();
    let n = input.placed.len() as u32;
    record.upgraded.retain(|base| input.placed.contains(base));
    let all_steps = steps(&record.strategy);
    let index = (record.step as usize).min(all_steps.len() - 1);
    let current = &all_steps[index];
    let weight = weight(record, current);

    // A NACK of `to`, or `to` unhealthy, on an upgraded base: back at once.
    for base in &record.upgraded {
        let status = input.statuses.get(base);
        if let Some(failure) = status.and_then(|s| s.failures.get(module))
            && failure.version == record.to.version
            && failure.sha256 == record.to.sha256
        {
            let message = format!(
                "base {base} could not run {}: {} ({})",
                record.to.version, failure.code, failure.message
            );
            finish(record, now, &who, RolloutState::RolledBack, "rolled_back", message);
            return;
        }
        if let Some(m) = status
            .into_iter()
            .flat_map(|s| &s.modules)
            .find(|m| m.name == module && m.version == record.to.version && m.sha256 == record.to.sha256)
            && m.health == "unhealthy"
        {
            let code = m.reason.as_deref().unwrap_or("UNHEALTHY");
            let message = format!("base {base} reports {} unhealthy ({code})", record.to.version);
            finish(record, now, &who, RolloutState::RolledBack, "rolled_back", message);
            return;
        }
    }

    let moving = record.state == RolloutState::Progressing;
    match record.phase {
        StepPhase::Moving => {
            let wanted = current.bases.of(n) as usize;
            let to = record.to.clone();
            let reached = |base: &String| serves(input.statuses.get(base), module, &to, weight);
            if moving {
                let max_unavailable = record.strategy.max_unavailable.of(n).max(1) as usize;
                let mut in_flight = record.upgraded.iter().filter(|b| !reached(b)).count();
                let mut added = Vec::new();
                for base in input.placed {
                    if record.upgraded.len() + added.len() >= wanted || in_flight >= max_unavailable {
                        break;
                    }
                    if !record.upgraded.contains(base) {
                        added.push(base.clone());
                        in_flight += 1;
                    }
                }
                record.upgraded.extend(added);
            }
            let all_reached = record.upgraded.iter().all(reached);
            if moving && record.upgraded.len() >= wanted && all_reached {
                record.phase = StepPhase::Holding;
                record.phase_ms = now;
                let message = format!(
                    "{} of {n} bases serve {} at weight {weight}",
                    record.upgraded.len(),
                    record.to.version
                );
                push_event(record, now, &who, "step_reached", message);
            }
        }
        StepPhase::Holding | StepPhase::AwaitingPromotion => {
            let analysis = record.strategy.analysis.clone();
            let since = input.metrics.observed_since().unwrap_or(now).max(record.phase_ms);
            let judged = if analysis.window_ms > 0 {
                let from = since.max(now.saturating_sub(analysis.window_ms));
                let result = judge(record, input, &analysis, from, now);
                if result.verdict == "fail" {
                    let message = format!("step {}: {}", record.step + 1, result.reason);
                    record.analysis = Some(result);
                    finish(record, now, &who, RolloutState::RolledBack, "rolled_back", message);
                    return;
                }
                Some(result)
            } else {
                None
            };
            if let Some(result) = judged {
                let unchanged = record.analysis.as_ref().is_some_and(|old| {
                    old.step == result.step
                        && old.verdict == result.verdict
                        && old.old == result.old
                        && old.new == result.new
                });
                if !unchanged {
                    record.analysis = Some(result);
                }
            }
            let window_end = since.saturating_add(analysis.window_ms);
            let pause_end = match current.pause {
                Pause::None | Pause::Manual => record.phase_ms,
                Pause::For(ms) => record.phase_ms.saturating_add(ms),
            };
            if record.phase == StepPhase::Holding && moving && now >= window_end.max(pause_end) {
                let verdict = record.analysis.as_ref().map_or("not measured", |a| a.verdict.as_str());
                let message = format!("step {}: {verdict}", record.step + 1);
                push_event(record, now, &who, "analysis_passed", message);
                if current.pause == Pause::Manual {
                    record.phase = StepPhase::AwaitingPromotion;
                    record.phase_ms = now;
                    let message =
                        format!("step {} waits for `pedestal fleet rollout promote`", record.step + 1);
                    push_event(record, now, &who, "awaiting_promotion", message);
                } else {
                    next_step(record, now, &who);
                }
            }
        }
        StepPhase::Done => {}
    }
}

/// Whether `status` shows `to` serving (at `weight` when it splits).
fn serves(status: Option<&BaseStatus>, module: &str, to: &Release, weight: u32) -> bool {
    status.is_some_and(|s| {
        s.modules.iter().any(|m| {
            m.name == module
                && m.version == to.version
                && m.sha256 == to.sha256
                && m.serving
                && if weight < 100 { m.weight == Some(weight) } else { m.weight.is_none_or(|w| w == 100) }
        })
    })
}

/// The analysis of the current step over `[from_ms, to_ms]`.
fn judge(
    record: &RolloutRecord,
    input: &Input,
    analysis: &Analysis,
    from_ms: u64,
    to_ms: u64,
) -> AnalysisResult {
    let module = input.spec.spec.name.as_str();
    let new = input.metrics.window(module, &record.to, from_ms, to_ms);
    let measured_old = match &record.from {
        Some(from) if !same(from, &record.to) => input.metrics.window(module, from, from_ms, to_ms),
        _ => Measure::default(),
    };
    let (old, against) = if measured_old.requests > 0 {
        (measured_old, "the old version")
    } else {
        match record.baseline {
            Some(baseline) => (baseline, "the baseline"),
            None => (Measure::default(), "no errors (nothing measured of the old version)"),
        }
    };
    let (verdict, reason) = verdict(analysis, &old, &new, against);
    AnalysisResult { at_ms: to_ms, step: record.step, verdict: verdict.to_owned(), old, new, reason }
}

/// `pass`, `fail` or `inconclusive`, and why.
pub fn verdict(analysis: &Analysis, old: &Measure, new: &Measure, against: &str) -> (&'static str, String) {
    if new.requests < analysis.min_requests {
        return (
            "inconclusive",
            format!(
                "{} requests to the new version, fewer than {} to judge",
                new.requests, analysis.min_requests
            ),
        );
    }
    let increase = new.error_rate() - old.error_rate();
    if increase > analysis.max_error_rate_increase {
        return (
            "fail",
            format!(
                "error rate {:.1}% against {:.1}% for {against} (more than {:.1} points worse)",
                new.error_rate() * 100.0,
                old.error_rate() * 100.0,
                analysis.max_error_rate_increase * 100.0
            ),
        );
    }
    if let (Some(new_p99), Some(old_p99)) = (new.p99_us, old.p99_us)
        && new_p99 as f64 > analysis.max_latency_ratio * old_p99 as f64
        && new_p99 > old_p99.saturating_add(analysis.min_latency_increase_us)
    {
        return (
            "fail",
            format!(
                "p99 {new_p99}µs against {old_p99}µs for {against} (more than {}×)",
                analysis.max_latency_ratio
            ),
        );
    }
    ("pass", format!("error rate {:.1}% and p99 within bounds of {against}", new.error_rate() * 100.0))
}

/// What `base` runs under `record`.
fn assignment_for(record: &RolloutRecord, spec: &SpecRecord, base: &String) -> Assignment {
    let from = record.from.clone().unwrap_or_else(|| record.to.clone());
    let (release, canary) = match record.state {
        RolloutState::Complete => (record.to.clone(), None),
        RolloutState::RolledBack | RolloutState::Aborted => (from, None),
        RolloutState::Progressing | RolloutState::Paused if record.upgraded.contains(base) => {
            let all_steps = steps(&record.strategy);
            let current = &all_steps[(record.step as usize).min(all_steps.len() - 1)];
            let weight = weight(record, current);
            let canary = (weight < 100).then_some(Canary { previous: from, weight });
            (record.to.clone(), canary)
        }
        RolloutState::Progressing | RolloutState::Paused => (from, None),
    };
    Assignment {
        module: spec.spec.name.clone(),
        version: release.version,
        sha256: release.sha256,
        url: release.url,
        limits: spec.spec.limits,
        config: spec.spec.config.clone(),
        generation: spec.generation,
        canary,
    }
}

/// The releases of `record` a base may serve (to be listed as an endpoint of each).
pub fn releases(record: &RolloutRecord) -> Vec<&Release> {
    let mut out = vec![&record.to];
    if let Some(from) = &record.from
        && !same(from, &record.to)
    {
        out.push(from);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Failure, ModuleStatus, Placement, Resources, Spec};

    /// Measurements held by the test: per version, a fixed measure for any window.
    #[derive(Default)]
    struct Measured {
        by_version: BTreeMap<String, Measure>,
        since: Option<u64>,
    }

    impl Metrics for Measured {
        fn window(&self, _: &str, release: &Release, _: u64, _: u64) -> Measure {
            self.by_version.get(&release.version).copied().unwrap_or_default()
        }
        fn observed_since(&self) -> Option<u64> {
            self.since
        }
    }

    fn release(version: &str) -> Release {
        Release { version: version.into(), sha256: version.repeat(8), url: None }
    }

    fn spec(version: &str, generation: u64, strategy: Option<Strategy>) -> SpecRecord {
        let r = release(version);
        SpecRecord {
            spec: Spec {
                name: "m".into(),
                version: r.version,
                sha256: r.sha256,
                url: None,
                replicas: Some(4),
                peer: false,
                selector: BTreeMap::new(),
                placement: Placement::Spread,
                resources: Resources::default(),
                limits: None,
                config: Default::default(),
                interface_version: None,
                rollout: strategy,
                autoscale: None,
            },
            generation,
            changed_ms: 0,
        }
    }

    fn canary_strategy(pause: Pause) -> Strategy {
        Strategy {
            steps: vec![Step { bases: Amount::Count(1), weight: 50, pause }],
            max_unavailable: Amount::Count(1),
            analysis: Analysis { window_ms: 2_000, min_requests: 10, ..Analysis::default() },
        }
    }

    /// The fleet as the tests drive it: four bases, what they report, and the record.
    struct Fleet {
        spec: SpecRecord,
        record: Option<RolloutRecord>,
        placed: Vec<String>,
        statuses: BTreeMap<String, BaseStatus>,
        metrics: Measured,
        now: u64,
    }

    impl Fleet {
        fn running(version: &str, strategy: Option<Strategy>) -> Self {
            let placed: Vec<String> = (1..=4).map(|i| format!("b{i}")).collect();
            let mut fleet = Self {
                spec: spec(version, 1, strategy),
                record: None,
                placed,
                statuses: BTreeMap::new(),
                metrics: Measured { since: Some(0), ..Default::default() },
                now: 1_000,
            };
            let first = fleet.pass(&[]);
            assert_eq!(first.record.state, RolloutState::Complete, "a first deploy completes at once");
            fleet.report_assigned(&first);
            fleet
        }

        fn pass(&mut self, commands: &[RolloutCommand]) -> Decision {
            let current = BTreeMap::new();
            let decision = advance(&Input {
                spec: &self.spec,
                record: self.record.as_ref(),
                placed: &self.placed,
                statuses: &self.statuses,
                current: &current,
                commands,
                metrics: &self.metrics,
                now_ms: self.now,
                controller: "c1",
            });
            self.record = Some(decision.record.clone());
            decision
        }

        /// Every base reports what it is assigned, serving (both versions when canary).
        fn report_assigned(&mut self, decision: &Decision) {
            for (base, a) in &decision.assignments {
                let mut modules = vec![module(&a.version, &a.sha256, a.canary.as_ref().map(|c| c.weight))];
                if let Some(canary) = &a.canary {
                    modules.push(module(
                        &canary.previous.version,
                        &canary.previous.sha256,
                        Some(100 - canary.weight),
                    ));
                }
                self.statuses.insert(
                    base.clone(),
                    BaseStatus { base_id: base.clone(), modules, ..Default::default() },
                );
            }
        }

        fn apply(&mut self, version: &str) {
            let strategy = self.spec.spec.rollout.clone();
            self.spec = spec(version, self.spec.generation + 1, strategy);
        }

        fn record(&self) -> &RolloutRecord {
            self.record.as_ref().unwrap()
        }

        fn events(&self) -> Vec<&str> {
            self.record().history.iter().map(|e| e.event.as_str()).collect()
        }
    }

    fn module(version: &str, sha256: &str, weight: Option<u32>) -> ModuleStatus {
        ModuleStatus {
            name: "m".into(),
            version: version.into(),
            sha256: sha256.into(),
            state: "active".into(),
            serving: true,
            health: "healthy".into(),
            reason: None,
            heap_bytes: 0,
            cpu_millis: 0,
            requests: 0,
            managed: true,
            server_errors: 0,
            latency_us: Vec::new(),
            rps: 0.0,
            weight,
        }
    }

    fn command(id: &str, action: &str) -> RolloutCommand {
        RolloutCommand {
            id: id.into(),
            action: action.into(),
            actor: "ann@host".into(),
            reason: None,
            at_ms: 0,
        }
    }

    fn versions(decision: &Decision) -> Vec<(String, Option<u32>)> {
        decision
            .assignments
            .values()
            .map(|a| (a.version.clone(), a.canary.as_ref().map(|c| c.weight)))
            .collect()
    }

    fn measure(requests: u64, server_errors: u64, p99_us: u64) -> Measure {
        Measure { requests, server_errors, p99_us: Some(p99_us) }
    }

    #[test]
    fn a_canary_step_then_every_base_with_holds_between() {
        let mut fleet = Fleet::running("1.0.0", Some(canary_strategy(Pause::None)));
        fleet.apply("1.1.0");
        let moving = fleet.pass(&[]);
        assert_eq!(fleet.record().from, Some(release("1.0.0")));
        assert_eq!(fleet.record().upgraded, ["b1"]);
        assert_eq!(
            versions(&moving),
            [
                ("1.1.0".into(), Some(50)),
                ("1.0.0".into(), None),
                ("1.0.0".into(), None),
                ("1.0.0".into(), None)
            ]
        );
        assert_eq!(moving.assignments["b1"].canary.as_ref().unwrap().previous, release("1.0.0"));
        // Not reported yet: still moving, nothing more moved.
        fleet.now += 500;
        fleet.pass(&[]);
        assert_eq!(fleet.record().phase, StepPhase::Moving);
        fleet.report_assigned(&moving);
        fleet.pass(&[]);
        assert_eq!(fleet.record().phase, StepPhase::Holding);
        // The window is 2 s: holding until then.
        fleet.now += 1_000;
        fleet.metrics.by_version.insert("1.0.0".into(), measure(100, 1, 1_000));
        fleet.metrics.by_version.insert("1.1.0".into(), measure(100, 1, 1_000));
        fleet.pass(&[]);
        assert_eq!((fleet.record().step, fleet.record().phase), (0, StepPhase::Holding));
        assert_eq!(fleet.record().analysis.as_ref().unwrap().verdict, "pass");
        fleet.now += 1_001;
        let last = fleet.pass(&[]);
        assert_eq!((fleet.record().step, fleet.record().phase), (1, StepPhase::Moving));
        // b1 goes to full weight first; until it reports that, it is the one base in flight
        // (max_unavailable = 1).
        assert_eq!(fleet.record().upgraded, ["b1"]);
        assert_eq!(versions(&last)[0], ("1.1.0".into(), None));
        fleet.report_assigned(&last);
        fleet.pass(&[]);
        assert_eq!(fleet.record().upgraded, ["b1", "b2"]);
        for _ in 0..3 {
            let decision = fleet.pass(&[]);
            fleet.report_assigned(&decision);
        }
        let decision = fleet.pass(&[]);
        assert_eq!(fleet.record().upgraded, ["b1", "b2", "b3", "b4"]);
        assert_eq!(fleet.record().phase, StepPhase::Holding, "{:?}", fleet.events());
        fleet.report_assigned(&decision);
        fleet.now += 2_001;
        let done = fleet.pass(&[]);
        assert_eq!(fleet.record().state, RolloutState::Complete);
        assert!(done.assignments.values().all(|a| a.version == "1.1.0" && a.canary.is_none()));
        assert_eq!(
            fleet.events(),
            [
                "started",
                "step_reached",
                "analysis_passed",
                "moving",
                "step_reached",
                "analysis_passed",
                "complete"
            ]
        );
        assert!(fleet.record().history.iter().all(|e| e.actor == "controller c1"));
    }

    #[test]
    fn a_restarted_controller_neither_repeats_nor_skips_a_step() {
        let mut fleet = Fleet::running("1.0.0", Some(canary_strategy(Pause::None)));
        fleet.apply("1.1.0");
        let moving = fleet.pass(&[]);
        fleet.report_assigned(&moving);
        fleet.pass(&[]);
        let holding = fleet.record().clone();
        assert_eq!(holding.phase, StepPhase::Holding);
        // A fresh leader: same record, no samples before now.
        fleet.now += 5_000;
        fleet.metrics.since = Some(fleet.now);
        let again = fleet.pass(&[]);
        assert_eq!(
            (fleet.record().step, fleet.record().phase),
            (0, StepPhase::Holding),
            "its window restarts"
        );
        assert_eq!(fleet.record().history, holding.history, "no event repeated");
        assert_eq!(again.assignments, moving.assignments);
        fleet.now += 2_000;
        fleet.pass(&[]);
        assert_eq!(fleet.record().step, 1, "the next step, once its own window elapsed");
    }

    #[test]
    fn twenty_percent_errors_roll_back_before_the_window_ends() {
        let mut fleet = Fleet::running("1.0.0", Some(canary_strategy(Pause::For(60_000))));
        fleet.apply("1.1.0");
        let moving = fleet.pass(&[]);
        fleet.report_assigned(&moving);
        fleet.pass(&[]);
        fleet.now += 300;
        fleet.metrics.by_version.insert("1.0.0".into(), measure(200, 0, 1_000));
        fleet.metrics.by_version.insert("1.1.0".into(), measure(50, 10, 1_000));
        let back = fleet.pass(&[]);
        let record = fleet.record();
        assert_eq!(record.state, RolloutState::RolledBack);
        assert!(record.reason.as_ref().unwrap().contains("error rate 20.0%"), "{:?}", record.reason);
        assert_eq!(record.analysis.as_ref().unwrap().verdict, "fail");
        assert!(back.assignments.values().all(|a| a.version == "1.0.0" && a.canary.is_none()));
        // It stays back, even once the bad numbers are gone.
        fleet.metrics.by_version.clear();
        fleet.now += 100_000;
        assert!(fleet.pass(&[]).assignments.values().all(|a| a.version == "1.0.0"));
    }

    #[test]
    fn slower_p99_fails_only_past_ratio_and_minimum() {
        let analysis = Analysis::default();
        let check =
            |old: u64, new: u64| verdict(&analysis, &measure(100, 0, old), &measure(100, 0, new), "x").0;
        assert_eq!(check(1_024, 4_096), "pass", "four times, but only 3 ms more");
        assert_eq!(check(4_096, 16_384), "fail");
        assert_eq!(check(16_384, 32_768), "pass", "twice is not more than twice");
        assert_eq!(verdict(&analysis, &measure(100, 0, 1), &measure(19, 19, 1), "x").0, "inconclusive");
    }

    #[test]
    fn few_requests_are_inconclusive_and_the_step_passes() {
        let mut fleet = Fleet::running("1.0.0", Some(canary_strategy(Pause::None)));
        fleet.apply("1.1.0");
        let moving = fleet.pass(&[]);
        fleet.report_assigned(&moving);
        fleet.pass(&[]);
        fleet.metrics.by_version.insert("1.1.0".into(), measure(5, 5, 1_000));
        fleet.now += 2_001;
        fleet.pass(&[]);
        assert_eq!(fleet.record().step, 1);
        assert_eq!(fleet.record().state, RolloutState::Progressing);
        let analyses: Vec<_> =
            fleet.record().history.iter().filter(|e| e.event == "analysis_passed").collect();
        assert!(analyses[0].message.contains("inconclusive"), "{analyses:?}");
    }

    #[test]
    fn the_last_step_is_judged_against_the_baseline() {
        let strategy = Strategy {
            steps: vec![Step { bases: Amount::Percent(100), weight: 100, pause: Pause::None }],
            max_unavailable: Amount::Percent(100),
            analysis: Analysis { window_ms: 2_000, min_requests: 10, ..Analysis::default() },
        };
        let mut fleet = Fleet::running("1.0.0", Some(strategy));
        fleet.metrics.by_version.insert("1.0.0".into(), measure(100, 10, 1_000));
        fleet.apply("1.1.0");
        let moving = fleet.pass(&[]);
        assert_eq!(fleet.record().baseline, Some(measure(100, 10, 1_000)));
        assert_eq!(fleet.record().upgraded.len(), 4);
        fleet.report_assigned(&moving);
        // Nothing of 1.0.0 is left to measure; 12% errors against a 10% baseline passes...
        fleet.metrics.by_version.clear();
        fleet.metrics.by_version.insert("1.1.0".into(), measure(100, 12, 1_000));
        fleet.pass(&[]);
        fleet.now += 100;
        fleet.pass(&[]);
        let analysis = fleet.record().analysis.clone().unwrap();
        assert_eq!((analysis.verdict.as_str(), analysis.old), ("pass", measure(100, 10, 1_000)));
        assert!(analysis.reason.contains("baseline"));
        // ... 20% does not.
        fleet.metrics.by_version.insert("1.1.0".into(), measure(100, 20, 1_000));
        fleet.now += 100;
        fleet.pass(&[]);
        assert_eq!(fleet.record().state, RolloutState::RolledBack);
    }

    #[test]
    fn a_nack_or_unhealthy_new_version_rolls_back_at_once() {
        for nack in [true, false] {
            let mut fleet = Fleet::running("1.0.0", Some(canary_strategy(Pause::None)));
            fleet.apply("1.1.0");
            fleet.pass(&[]);
            let status = fleet.statuses.get_mut("b1").unwrap();
            if nack {
                let to = release("1.1.0");
                status.failures.insert(
                    "m".into(),
                    Failure {
                        version: to.version,
                        sha256: to.sha256,
                        code: "START_FAILED".into(),
                        message: "no".into(),
                        revision: 9,
                    },
                );
            } else {
                let mut sick = module("1.1.0", &release("1.1.0").sha256, Some(50));
                sick.health = "unhealthy".into();
                sick.reason = Some("HEALTH_FAILED".into());
                status.modules.push(sick);
            }
            let back = fleet.pass(&[]);
            let reason = fleet.record().reason.clone().unwrap();
            assert_eq!(fleet.record().state, RolloutState::RolledBack);
            assert!(reason.contains("base b1"), "{reason}");
            assert!(reason.contains(if nack { "START_FAILED" } else { "HEALTH_FAILED" }), "{reason}");
            assert!(back.assignments.values().all(|a| a.version == "1.0.0"));
        }
    }

    #[test]
    fn commands_apply_once_and_ignored_ones_say_why() {
        let mut fleet = Fleet::running("1.0.0", Some(canary_strategy(Pause::Manual)));
        fleet.apply("1.1.0");
        let moving = fleet.pass(&[command("1", "pause")]);
        assert_eq!(moving.consumed, ["1"]);
        assert_eq!(fleet.record().state, RolloutState::Paused);
        assert_eq!(fleet.record().paused_by.as_deref(), Some("ann@host"));
        assert!(fleet.record().upgraded.is_empty(), "paused: no base moves");
        fleet.report_assigned(&moving);
        fleet.pass(&[]);
        assert_eq!(fleet.record().phase, StepPhase::Moving);
        let resumed = fleet.pass(&[command("2", "resume")]);
        assert_eq!(fleet.record().state, RolloutState::Progressing);
        fleet.report_assigned(&resumed);
        fleet.pass(&[]);
        assert_eq!(fleet.record().phase, StepPhase::Holding);
        fleet.now += 2_001;
        fleet.pass(&[]);
        assert_eq!(fleet.record().phase, StepPhase::AwaitingPromotion, "pause = manual");
        fleet.now += 60_000;
        fleet.pass(&[]);
        assert_eq!(fleet.record().phase, StepPhase::AwaitingPromotion, "until promoted");
        fleet.pass(&[command("3", "promote")]);
        assert_eq!((fleet.record().step, fleet.record().phase), (1, StepPhase::Moving));
        let aborted = fleet.pass(&[command("4", "abort"), command("5", "abort")]);
        assert_eq!(aborted.consumed, ["4", "5"]);
        assert_eq!(fleet.record().state, RolloutState::Aborted);
        assert!(fleet.record().reason.as_ref().unwrap().contains("ann@host"));
        assert!(aborted.assignments.values().all(|a| a.version == "1.0.0" && a.canary.is_none()));
        let last = fleet.record().history.last().unwrap();
        assert_eq!((last.event.as_str(), last.actor.as_str()), ("ignored", "ann@host"));
        assert!(last.message.contains("aborted"), "{}", last.message);
        // The same record again, without the deleted commands: nothing more happens.
        let before = fleet.record().clone();
        fleet.pass(&[]);
        assert_eq!(fleet.record(), &before);
        // Resume restarts an aborted rollout whose release the spec still asks for.
        fleet.pass(&[command("6", "resume")]);
        assert_eq!((fleet.record().state, fleet.record().step), (RolloutState::Progressing, 0));
        assert_eq!(fleet.record().upgraded, ["b1"]);
    }

    #[test]
    fn a_new_release_supersedes_a_running_rollout_from_the_same_old_one() {
        let mut fleet = Fleet::running("1.0.0", Some(canary_strategy(Pause::None)));
        fleet.apply("1.1.0");
        let moving = fleet.pass(&[]);
        fleet.report_assigned(&moving);
        fleet.apply("1.2.0");
        let decision = fleet.pass(&[]);
        let retired = decision.retired.clone().expect("the old rollout goes to history");
        assert_eq!(retired.to, release("1.1.0"));
        assert_eq!(retired.history.last().unwrap().event, "superseded");
        assert_eq!(fleet.record().from, Some(release("1.0.0")), "not the half-rolled 1.1.0");
        assert_eq!(fleet.record().to, release("1.2.0"));
        assert_eq!(fleet.record().generation, 3);
        assert_eq!(versions(&decision)[0], ("1.2.0".into(), Some(50)));
        assert!(decision.assignments.values().skip(1).all(|a| a.version == "1.0.0"));
    }

    #[test]
    fn same_version_other_bytes_takes_the_whole_base() {
        let mut fleet = Fleet::running("1.0.0", Some(canary_strategy(Pause::None)));
        fleet.spec.spec.sha256 = "f".repeat(64);
        fleet.spec.generation += 1;
        let decision = fleet.pass(&[]);
        assert_eq!(decision.assignments["b1"].sha256, "f".repeat(64));
        assert_eq!(decision.assignments["b1"].canary, None);
    }

    #[test]
    fn bases_joining_and_leaving_the_placement() {
        let mut fleet = Fleet::running("1.0.0", Some(canary_strategy(Pause::None)));
        fleet.apply("1.1.0");
        fleet.pass(&[]);
        fleet.placed.retain(|b| b != "b1");
        fleet.placed.push("b5".into());
        let decision = fleet.pass(&[]);
        assert_eq!(fleet.record().upgraded, ["b2"], "b1 left; the next base moves instead");
        assert_eq!(decision.assignments["b5"].version, "1.0.0");
        assert!(!decision.assignments.contains_key("b1"));
    }

    #[test]
    fn without_a_record_the_release_most_bases_run_is_the_old_one() {
        let mut fleet = Fleet::running("1.0.0", None);
        fleet.record = None;
        fleet.statuses.get_mut("b4").unwrap().modules = vec![module("0.9.0", "x", None)];
        fleet.apply("2.0.0");
        let decision = fleet.pass(&[]);
        assert_eq!(fleet.record().from, Some(release("1.0.0")));
        assert_eq!(fleet.record().state, RolloutState::Progressing);
        // The default strategy: 25% of four bases in flight.
        assert_eq!(decision.assignments.values().filter(|a| a.version == "2.0.0").count(), 1);
    }

    #[test]
    fn steps_end_with_every_base() {
        assert_eq!(steps(&Strategy::default()).len(), 1);
        let strategy = canary_strategy(Pause::None);
        let all = steps(&strategy);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].bases, Amount::Percent(100));
    }
}

//! The autoscaler: a pure function from an autoscaled spec, its scale record and what its
//! replicas report to the replica count the scheduler places (`scale/<module>`).
//!
//! The rules:
//! - **Load** = the sum over the module's *serving* replicas (assigned bases reporting it serving
//!   the spec's version and bytes) of their CPU and requests per second.
//! - **Desired** = for each target the spec sets, `ceil(load / target)`; the largest of them,
//!   clamped to `min..=max`. Nothing serving measures nothing: the count holds.
//! - **Up at once**, but only once every replica of the last change serves (new replicas have
//!   not been measured yet; scaling again while they start would count the same load twice),
//!   or once the last change is a cooldown old (a replica that never starts does not hold
//!   scaling up forever).
//! - **Down only after a whole cooldown of lower demand**: the record keeps since when the load
//!   has asked for fewer replicas without a break, and the most it asked for meanwhile; once
//!   that is a cooldown old (and the last change too) the count goes down to that most. One
//!   moment of higher demand restarts the wait, so a load swinging around a boundary never
//!   flaps the count.
//! - The record changes only when one of these decisions (or the spec's bounds) changes it, so
//!   the leader writes it on change, not on every pass.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    model::{Autoscale, BaseStatus, ScaleRecord, Spec},
    schedule::serves,
};

/// Checks an `autoscale` table against its spec: `min` at least 1, `max` at least `min`, at
/// least one target and every target above 0, a cooldown, and not with `peer` (a peer module
/// runs on every matching base: there is no count to scale).
pub fn validate(autoscale: &Autoscale, peer: bool) -> Result<(), String> {
    if peer {
        return Err("autoscale and peer = true: a peer module runs on every matching base".to_owned());
    }
    if autoscale.min < 1 {
        return Err("autoscale min must be at least 1".to_owned());
    }
    if autoscale.max < autoscale.min {
        return Err(format!("autoscale max = {} is below min = {}", autoscale.max, autoscale.min));
    }
    if autoscale.max > 100_000 {
        return Err(format!("autoscale max = {} is more than 100000", autoscale.max));
    }
    if autoscale.target_cpu.is_none() && autoscale.target_rps.is_none() {
        return Err("autoscale needs a target: target_cpu (cores per replica) or target_rps".to_owned());
    }
    for (name, target) in [("target_cpu", autoscale.target_cpu), ("target_rps", autoscale.target_rps)] {
        if let Some(target) = target
            && !(target.is_finite() && target > 0.0)
        {
            return Err(format!("autoscale {name} = {target} must be above 0"));
        }
    }
    Ok(())
}

/// What an autoscaled module's serving replicas measure now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// Replicas reporting it serving the spec's release.
    pub serving: u32,
    /// Their CPU, summed, in thousandths of a core.
    pub cpu_millis: u64,
    /// Their requests per second, summed.
    pub rps: f64,
}

impl Load {
    /// Their CPU in cores.
    pub fn cpu_cores(&self) -> f64 {
        self.cpu_millis as f64 / 1000.0
    }
}

/// The load of `spec`'s module on the bases in `placed`.
pub fn measure(spec: &Spec, statuses: &BTreeMap<String, BaseStatus>, placed: &BTreeSet<String>) -> Load {
    let mut load = Load::default();
    for base in placed {
        let Some(status) = statuses.get(base) else { continue };
        if !serves(Some(status), &spec.name, &spec.version, &spec.sha256) {
            continue;
        }
        let Some(module) = status.modules.iter().find(|m| {
            m.name == spec.name && m.version == spec.version && m.sha256 == spec.sha256 && m.serving
        }) else {
            continue;
        };
        load.serving += 1;
        load.cpu_millis += module.cpu_millis;
        load.rps += module.rps.max(0.0);
    }
    load
}

/// The count `spec` starts at before any record: its `replicas`, else `min`, clamped.
pub fn starting_count(autoscale: &Autoscale, spec: &Spec) -> u32 {
    spec.replicas.unwrap_or(autoscale.min).clamp(autoscale.min, autoscale.max.max(autoscale.min))
}

/// The replicas `load` asks for (clamped), or `None` when nothing serves to measure.
pub fn desired(autoscale: &Autoscale, load: &Load) -> Option<u32> {
    if load.serving == 0 {
        return None;
    }
    // A hair below the boundary counts as on it: 1.2 / 0.6 is 2.0000000000000004 in floats.
    let replicas_for = |measured: f64, target: f64| (measured / target - 1e-9).ceil().max(0.0) as u32;
    let by_cpu = autoscale.target_cpu.filter(|t| *t > 0.0).map(|t| replicas_for(load.cpu_cores(), t));
    let by_rps = autoscale.target_rps.filter(|t| *t > 0.0).map(|t| replicas_for(load.rps, t));
    let wanted = by_cpu.into_iter().chain(by_rps).max()?;
    Some(wanted.clamp(autoscale.min, autoscale.max.max(autoscale.min)))
}

/// The scale record after this pass, or `None` when `spec` does not autoscale. `current` is the
/// record in etcd; `placed` the bases the module is assigned to; `now` in milliseconds since
/// the epoch.
pub fn decide(
    spec: &Spec,
    current: Option<&ScaleRecord>,
    statuses: &BTreeMap<String, BaseStatus>,
    placed: &BTreeSet<String>,
    now: u64,
) -> Option<ScaleRecord> {
    let autoscale = spec.autoscale.as_ref()?;
    let (min, max) = (autoscale.min, autoscale.max.max(autoscale.min));
    let mut record = match current {
        Some(record) => record.clone(),
        None => {
            let replicas = starting_count(autoscale, spec);
            return Some(ScaleRecord {
                module: spec.name.clone(),
                replicas,
                changed_ms: now,
                reason: format!("the starting count, {replicas}"),
                lower_since_ms: None,
                lower_peak: 0,
            });
        }
    };
    let bounded = record.replicas.clamp(min, max);
    if bounded != record.replicas {
        change(&mut record, bounded, now, format!("the spec's bounds are {min} to {max}"));
        return Some(record);
    }
    let load = measure(spec, statuses, placed);
    let Some(wanted) = desired(autoscale, &load) else { return Some(record) };
    let cooled = |since: u64| now.saturating_sub(since) >= autoscale.cooldown_ms;
    if wanted > record.replicas {
        record.lower_since_ms = None;
        record.lower_peak = 0;
        if load.serving >= record.replicas || cooled(record.changed_ms) {
            let why = describe(autoscale, &load, wanted);
            change(&mut record, wanted, now, why);
        }
    } else if wanted < record.replicas {
        match record.lower_since_ms {
            None => {
                record.lower_since_ms = Some(now);
                record.lower_peak = wanted;
            }
            Some(since) => {
                record.lower_peak = record.lower_peak.max(wanted);
                if cooled(since) && cooled(record.changed_ms) {
                    let to = record.lower_peak;
                    let why = describe(autoscale, &load, to);
                    change(&mut record, to, now, why);
                }
            }
        }
    } else {
        record.lower_since_ms = None;
        record.lower_peak = 0;
    }
    Some(record)
}

/// `cpu 1.40 cores / target 0.6 per replica, 10.0 rps / target 50 per replica`: the load
/// against each target the spec sets.
pub fn describe_load(autoscale: &Autoscale, load: &Load) -> String {
    let mut parts = Vec::new();
    if let Some(target) = autoscale.target_cpu {
        parts.push(format!("cpu {:.2} cores / target {target} per replica", load.cpu_cores()));
    }
    if let Some(target) = autoscale.target_rps {
        parts.push(format!("{:.1} rps / target {target} per replica", load.rps));
    }
    parts.join(", ")
}

fn describe(autoscale: &Autoscale, load: &Load, to: u32) -> String {
    format!("{} on {} serving: {to} wanted", describe_load(autoscale, load), load.serving)
}

fn change(record: &mut ScaleRecord, replicas: u32, now: u64, reason: String) {
    record.replicas = replicas;
    record.changed_ms = now;
    record.reason = reason;
    record.lower_since_ms = None;
    record.lower_peak = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModuleStatus, Placement, Resources};

    fn spec(target_cpu: Option<f64>, target_rps: Option<f64>) -> Spec {
        Spec {
            name: "burn".into(),
            version: "1.0.0".into(),
            sha256: "a".repeat(64),
            url: None,
            replicas: Some(2),
            peer: false,
            selector: BTreeMap::new(),
            placement: Placement::Spread,
            resources: Resources::default(),
            limits: None,
            config: Default::default(),
            interface_version: None,
            rollout: None,
            autoscale: Some(Autoscale { min: 1, max: 5, target_cpu, target_rps, cooldown_ms: 10_000 }),
        }
    }

    /// Statuses of `bases`, each serving the module with `(cpu_millis, rps)`.
    fn serving(load: &[(&str, u64, f64)]) -> (BTreeMap<String, BaseStatus>, BTreeSet<String>) {
        let statuses = load
            .iter()
            .map(|&(base, cpu_millis, rps)| {
                let module = ModuleStatus {
                    name: "burn".into(),
                    version: "1.0.0".into(),
                    sha256: "a".repeat(64),
                    state: "active".into(),
                    serving: true,
                    health: "healthy".into(),
                    reason: None,
                    heap_bytes: 1 << 20,
                    cpu_millis,
                    requests: 0,
                    managed: true,
                    server_errors: 0,
                    latency_us: Vec::new(),
                    rps,
                    weight: None,
                };
                (
                    base.to_owned(),
                    BaseStatus { base_id: base.into(), modules: vec![module], ..Default::default() },
                )
            })
            .collect();
        (statuses, load.iter().map(|(b, _, _)| (*b).to_owned()).collect())
    }

    fn record(replicas: u32, changed_ms: u64) -> ScaleRecord {
        ScaleRecord {
            module: "burn".into(),
            replicas,
            changed_ms,
            reason: String::new(),
            lower_since_ms: None,
            lower_peak: 0,
        }
    }

    /// Per-base load at one moment: (base, cpu millis, rps).
    type Loads<'a> = &'a [(&'a str, u64, f64)];

    /// Runs `decide` at each of `steps` (time, per-base load), from `start`; the counts after each.
    fn run(spec: &Spec, start: ScaleRecord, steps: &[(u64, Loads)]) -> Vec<u32> {
        let mut current = start;
        let mut counts = Vec::new();
        for (now, load) in steps {
            let (statuses, placed) = serving(load);
            current = decide(spec, Some(&current), &statuses, &placed, *now).expect("autoscaled");
            counts.push(current.replicas);
        }
        counts
    }

    #[test]
    fn a_first_record_is_the_starting_count_clamped() {
        let mut s = spec(Some(0.5), None);
        let first = decide(&s, None, &BTreeMap::new(), &BTreeSet::new(), 7).expect("autoscaled");
        assert_eq!((first.replicas, first.changed_ms), (2, 7));
        s.replicas = Some(9);
        assert_eq!(decide(&s, None, &BTreeMap::new(), &BTreeSet::new(), 7).expect("a record").replicas, 5);
        s.replicas = None;
        assert_eq!(decide(&s, None, &BTreeMap::new(), &BTreeSet::new(), 7).expect("a record").replicas, 1);
        s.autoscale = None;
        assert_eq!(decide(&s, None, &BTreeMap::new(), &BTreeSet::new(), 7), None);
    }

    #[test]
    fn load_above_target_scales_up_at_once() {
        let s = spec(Some(0.5), None);
        // 2 replicas burning 0.9 cores each: 1.8 / 0.5 = 3.6, so 4.
        assert_eq!(run(&s, record(2, 0), &[(1, &[("b1", 900, 0.0), ("b2", 900, 0.0)])]), [4]);
        // Exactly on the boundary: 1.0 / 0.5 = 2, no more.
        assert_eq!(run(&s, record(1, 0), &[(1, &[("b1", 1000, 0.0)])]), [2]);
    }

    #[test]
    fn the_largest_target_wins_and_the_count_is_clamped() {
        let s = spec(Some(1.0), Some(10.0));
        // CPU asks 1, requests ask 3.
        assert_eq!(run(&s, record(1, 0), &[(1, &[("b1", 500, 25.0)])]), [3]);
        // 200 rps asks 20: clamped to max 5.
        assert_eq!(run(&s, record(1, 0), &[(1, &[("b1", 500, 200.0)])]), [5]);
        // The spec's bounds moved under an existing record.
        let mut narrow = s.clone();
        narrow.autoscale.as_mut().expect("autoscaled").max = 2;
        assert_eq!(run(&narrow, record(4, 0), &[(1, &[("b1", 0, 0.0)])]), [2]);
    }

    #[test]
    fn no_second_scale_up_while_new_replicas_start() {
        let s = spec(Some(0.5), None);
        // Scaled to 4 at t=0; only the 2 old replicas serve yet, still hot: hold.
        let hot: &[(&str, u64, f64)] = &[("b1", 1500, 0.0), ("b2", 1500, 0.0)];
        assert_eq!(run(&s, record(4, 0), &[(1_000, hot)]), [4]);
        // All 4 serve and the load still asks for more: up again.
        let four: &[(&str, u64, f64)] =
            &[("b1", 1000, 0.0), ("b2", 1000, 0.0), ("b3", 500, 0.0), ("b4", 500, 0.0)];
        assert_eq!(run(&s, record(4, 0), &[(2_000, four)]), [5]);
        // A replica that never starts does not hold it forever: after a cooldown it goes up.
        assert_eq!(run(&s, record(4, 0), &[(10_000, hot)]), [5]);
    }

    #[test]
    fn scale_down_waits_a_whole_cooldown_of_lower_demand() {
        let s = spec(Some(0.5), None);
        let idle: &[(&str, u64, f64)] = &[("b1", 100, 0.0), ("b2", 100, 0.0), ("b3", 100, 0.0)];
        let counts = run(&s, record(3, 0), &[(1_000, idle), (5_000, idle), (10_999, idle), (11_000, idle)]);
        assert_eq!(counts, [3, 3, 3, 1], "lower since t=1s; down at t=11s, a cooldown later");
    }

    #[test]
    fn scale_down_goes_to_the_most_asked_during_the_wait() {
        let s = spec(Some(0.5), None);
        let low: &[(&str, u64, f64)] =
            &[("b1", 100, 0.0), ("b2", 100, 0.0), ("b3", 100, 0.0), ("b4", 100, 0.0)];
        let middle: &[(&str, u64, f64)] =
            &[("b1", 300, 0.0), ("b2", 300, 0.0), ("b3", 300, 0.0), ("b4", 300, 0.0)];
        let counts = run(&s, record(4, 0), &[(1_000, low), (4_000, middle), (11_000, low)]);
        assert_eq!(counts, [4, 4, 3], "1.2 cores asked for 3 during the wait");
    }

    #[test]
    fn a_load_swinging_around_the_boundary_never_flaps() {
        let s = spec(Some(0.5), None);
        let low: &[(&str, u64, f64)] = &[("b1", 200, 0.0), ("b2", 200, 0.0)];
        let high: &[(&str, u64, f64)] = &[("b1", 500, 0.0), ("b2", 500, 0.0)];
        let steps: Vec<(u64, Loads)> =
            (1..40).map(|i| (i * 1_000, if i % 8 == 0 { high } else { low })).collect();
        let counts = run(&s, record(2, 0), &steps);
        assert!(counts.iter().all(|&c| c == 2), "a high moment every 8 s restarts the 10 s wait: {counts:?}");
        // Once the load stays low for a cooldown, it goes down.
        let settle: Vec<(u64, Loads)> = (41..60).map(|i| (i * 1_000, low)).collect();
        assert_eq!(run(&s, record(2, 0), &settle).last(), Some(&1));
    }

    #[test]
    fn nothing_serving_measures_nothing() {
        let s = spec(Some(0.5), None);
        let (statuses, _) = serving(&[("b1", 5000, 0.0)]);
        let placed = BTreeSet::from(["b9".to_owned()]);
        let kept = decide(&s, Some(&record(3, 0)), &statuses, &placed, 100_000).expect("autoscaled");
        assert_eq!(kept, record(3, 0), "b1 is not placed; nothing measured, nothing changes");
        let mut other_version = statuses.clone();
        other_version.get_mut("b1").expect("b1").modules[0].version = "0.9.0".into();
        let placed = BTreeSet::from(["b1".to_owned()]);
        assert_eq!(measure(&s, &other_version, &placed), Load::default());
    }

    #[test]
    fn an_unchanged_decision_leaves_the_record_as_it_was() {
        let s = spec(Some(0.5), None);
        let (statuses, placed) = serving(&[("b1", 400, 0.0), ("b2", 400, 0.0)]);
        let steady = record(2, 0);
        assert_eq!(decide(&s, Some(&steady), &statuses, &placed, 50_000).as_ref(), Some(&steady));
    }
}

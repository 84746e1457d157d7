//! What a base reports in `status/<id>`: every instance the registry holds, measured.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Instant,
};

use pedestal_base::{CpuTime, Instance, Registry, State};

use crate::model::{BaseStatus, Failure, ModuleStatus};

/// The CPU and request counters of the last report, per instance, to turn them into rates.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    last: HashMap<(String, String), Reading>,
}

/// One instance's counters when last reported.
#[derive(Debug, Clone, Copy)]
struct Reading {
    cpu_ms: u64,
    requests: u64,
    at: Instant,
}

/// What an instance used since the last report.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rates {
    /// Thousandths of a core.
    millicores: u64,
    /// Requests per second.
    rps: f64,
}

impl Meter {
    /// What `instance` used since the last call for it (nothing the first time).
    fn rates(&mut self, instance: &Instance, now: Instant) -> Rates {
        let CpuTime { user_ms, system_ms, .. } = instance.cpu();
        let key = (instance.id.to_string(), instance.artifact.sha256.clone());
        let reading = Reading { cpu_ms: user_ms + system_ms, requests: instance.traffic().requests, at: now };
        let rates = self
            .last
            .get(&key)
            .map_or(Rates { millicores: 0, rps: 0.0 }, |before| rates_between(before, &reading));
        self.last.insert(key, reading);
        rates
    }

    /// Forgets instances that are gone.
    fn retain(&mut self, live: &BTreeSet<(String, String)>) {
        self.last.retain(|key, _| live.contains(key));
    }
}

/// The rates between two readings of one instance; a counter that went back (it cannot, but
/// a restart under the same key would) counts as nothing used.
fn rates_between(before: &Reading, now: &Reading) -> Rates {
    let elapsed_ms = now.at.duration_since(before.at).as_millis().max(1) as u64;
    let millicores = now.cpu_ms.checked_sub(before.cpu_ms).map_or(0, |used| used * 1000 / elapsed_ms);
    let rps = now.requests.checked_sub(before.requests).map_or(0.0, |served| {
        // Two decimals are enough, and keep the report short.
        (served as f64 * 1000.0 / elapsed_ms as f64 * 100.0).round() / 100.0
    });
    Rates { millicores, rps }
}

/// A latency histogram as reported: trailing empty buckets left out.
fn trimmed(counts: [u64; 40]) -> Vec<u64> {
    let len = counts.iter().rposition(|c| *c > 0).map_or(0, |last| last + 1);
    counts[..len].to_vec()
}

/// The report: `managed` names the modules an assignment names, `leaving` those whose
/// assignment is gone and which serve out their removal grace (reported with `reason:
/// "UNASSIGNED"`).
pub(crate) fn status(
    base_id: &str,
    registry: &Registry,
    managed: &BTreeSet<String>,
    leaving: &BTreeSet<String>,
    failures: &BTreeMap<String, Failure>,
    applied_revision: i64,
    meter: &mut Meter,
) -> BaseStatus {
    let now = Instant::now();
    let routes = registry.routes();
    let mut live = BTreeSet::new();
    let modules = registry
        .all()
        .into_iter()
        // A stopped entry stays listed by the base until it is deleted a second time, but it is
        // unloaded: the fleet's report is of what runs (else a module the fleet removed would
        // show as unmanaged for as long as the entry stays).
        .filter(|(instance, _)| instance.state() != State::Stopped)
        .map(|(instance, active)| {
            live.insert((instance.id.to_string(), instance.artifact.sha256.clone()));
            let state = instance.state();
            let serving = routes.get(&instance.id.name).is_some_and(|route| {
                route.running.iter().any(|i| std::ptr::eq(i.as_ref(), instance.as_ref()))
                    && (active
                        || route.split.as_ref().is_some_and(|_| {
                            registry
                                .weights(&instance.id.name)
                                .is_some_and(|w| w.get(&instance.id.version).is_some_and(|w| *w > 0))
                        }))
            });
            let (health, unhealthy) = health(&instance, state);
            let reason = if leaving.contains(&instance.id.name) {
                Some(super::session::UNASSIGNED.to_owned())
            } else {
                unhealthy.or_else(|| {
                    (!serving).then(|| instance.history().last().map(|t| t.reason.clone())).flatten()
                })
            };
            let rates = meter.rates(&instance, now);
            ModuleStatus {
                name: instance.id.name.clone(),
                version: instance.id.version.to_string(),
                sha256: instance.artifact.sha256.clone(),
                state: state_name(state),
                serving,
                health: health.into(),
                reason,
                heap_bytes: instance.heap().map(|h| h.live_bytes).unwrap_or_default(),
                cpu_millis: rates.millicores,
                requests: instance.traffic().requests,
                managed: managed.contains(&instance.id.name),
                server_errors: instance.traffic().server_errors,
                latency_us: trimmed(instance.latency_histogram()),
                rps: rates.rps,
                weight: registry
                    .weights(&instance.id.name)
                    .and_then(|w| w.get(&instance.id.version).copied()),
            }
        })
        .collect();
    meter.retain(&live);
    BaseStatus {
        base_id: base_id.to_owned(),
        applied_revision,
        modules,
        artifacts: registry.artifact_hashes(),
        failures: failures.clone(),
        at_ms: crate::model::now_ms(),
    }
}

/// The state's name as the operations API spells it (`active`, `broken`...).
pub(crate) fn state_name(state: State) -> String {
    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `healthy`, `unhealthy` (with the reason's code) or `unknown` (not running), from what the
/// base measures at its boundary: the memory soft limit, runaway requests, the last minute's
/// 5xx rate.
fn health(instance: &Instance, state: State) -> (&'static str, Option<String>) {
    if !matches!(state, State::Active | State::Inactive) {
        return ("unknown", None);
    }
    if instance.over_memory_limit() {
        return ("unhealthy", Some("MEMORY_SOFT_LIMIT".into()));
    }
    if !instance.runaways().is_empty() {
        return ("unhealthy", Some("RUNAWAY_REQUESTS".into()));
    }
    let recent = instance.traffic().recent;
    if recent.requests >= 10 && recent.server_errors * 2 > recent.requests {
        return ("unhealthy", Some("SERVER_ERRORS".into()));
    }
    ("healthy", None)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rates_are_per_second_between_two_readings() {
        let at = Instant::now();
        let before = Reading { cpu_ms: 1000, requests: 10, at };
        let now = Reading { cpu_ms: 1500, requests: 30, at: at + Duration::from_secs(2) };
        assert_eq!(rates_between(&before, &now), Rates { millicores: 250, rps: 10.0 });
        let back = Reading { cpu_ms: 0, requests: 0, at: at + Duration::from_secs(4) };
        assert_eq!(rates_between(&now, &back), Rates { millicores: 0, rps: 0.0 });
    }

    #[test]
    fn a_histogram_is_reported_without_its_trailing_empty_buckets() {
        let mut counts = [0; 40];
        assert!(trimmed(counts).is_empty());
        counts[3] = 2;
        counts[7] = 5;
        assert_eq!(trimmed(counts), [0, 0, 0, 2, 0, 0, 0, 5]);
    }
}

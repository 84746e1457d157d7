//! What a base reports in `status/<id>`: every instance the registry holds, measured.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Instant,
};

use pedestal_base::{CpuTime, Instance, Registry, State};

use crate::model::{BaseStatus, Failure, ModuleStatus};

/// The CPU counters of the last report, per instance, to turn them into a rate.
#[derive(Debug, Default)]
pub(crate) struct CpuMeter {
    last: HashMap<(String, String), (u64, Instant)>,
}

impl CpuMeter {
    /// Thousandths of a core `instance` used since the last call for it (0 the first time).
    fn millicores(&mut self, instance: &Instance, now: Instant) -> u64 {
        let CpuTime { user_ms, system_ms, .. } = instance.cpu();
        let used = user_ms + system_ms;
        let key = (instance.id.to_string(), instance.artifact.sha256.clone());
        let rate = match self.last.get(&key) {
            Some((before, at)) if used >= *before => {
                let elapsed = now.duration_since(*at).as_millis().max(1) as u64;
                (used - before) * 1000 / elapsed
            }
            _ => 0,
        };
        self.last.insert(key, (used, now));
        rate
    }

    /// Forgets instances that are gone.
    fn retain(&mut self, live: &BTreeSet<(String, String)>) {
        self.last.retain(|key, _| live.contains(key));
    }
}

/// The report: `managed` names the modules an assignment names.
pub(crate) fn status(
    base_id: &str,
    registry: &Registry,
    managed: &BTreeSet<String>,
    failures: &BTreeMap<String, Failure>,
    applied_revision: i64,
    meter: &mut CpuMeter,
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
            let reason = unhealthy.or_else(|| {
                (!serving).then(|| instance.history().last().map(|t| t.reason.clone())).flatten()
            });
            ModuleStatus {
                name: instance.id.name.clone(),
                version: instance.id.version.to_string(),
                sha256: instance.artifact.sha256.clone(),
                state: state_name(state),
                serving,
                health: health.into(),
                reason,
                heap_bytes: instance.heap().map(|h| h.live_bytes).unwrap_or_default(),
                cpu_millis: meter.millicores(&instance, now),
                requests: instance.traffic().requests,
                managed: managed.contains(&instance.id.name),
                server_errors: instance.traffic().server_errors,
                latency_us: Vec::new(),
                rps: 0.0,
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

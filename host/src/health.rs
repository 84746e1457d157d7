//! The health policy. How healthy one instance is, from what the base knows about it: its
//! health hook's answer, its recent 5xx rate, runaway requests and its memory soft limit; which
//! instances are probed and which need an operator; and the base's verdict over all of them.
//! Plain functions over plain inputs, so `GET /api/v1/health`, the background probe behind the
//! unhealthy policy (`registry/watch.rs`) and a custom base can never disagree. The operations
//! API only renders what these decide (`admin/health.rs`).

use serde::Serialize;

use crate::{
    instance::{HookHealth, ModuleHealth, State},
    stats::RecentWindow,
};

/// A module is degraded when this share of its recent requests failed (with at least
/// [`MIN_REQUESTS_FOR_RATE`] requests), and unhealthy at [`UNHEALTHY_ERROR_RATE`].
pub(crate) const DEGRADED_ERROR_RATE: f64 = 0.1;
pub(crate) const UNHEALTHY_ERROR_RATE: f64 = 0.5;
pub(crate) const MIN_REQUESTS_FOR_RATE: u64 = 10;

/// What the base knows about an instance's health at one moment.
#[derive(Debug, Clone)]
pub struct Signals<'a> {
    /// What its health hook answered (or that it did not).
    pub hook: &'a HookHealth,
    /// Its requests and 5xx answers of the recent window.
    pub recent: RecentWindow,
    /// Requests still running far past their timeout.
    pub runaways: usize,
    /// Whether its live heap is over its memory soft limit.
    pub over_memory: bool,
}

/// The instance's health and, when it is not healthy, why (one reason per signal).
pub fn assess(signals: &Signals<'_>) -> (ModuleHealth, Vec<String>) {
    let mut status = ModuleHealth::Healthy;
    let mut reasons = Vec::new();
    let mut worsen = |to: ModuleHealth, reason: String| {
        status = status.max(to);
        reasons.push(reason);
    };
    match signals.hook {
        HookHealth::Answered { status, message, .. } if *status != ModuleHealth::Healthy => {
            worsen(*status, format!("health hook: {message}"));
        }
        HookHealth::NoAnswer { timeout_ms } => worsen(
            ModuleHealth::Unhealthy,
            format!(
                "the health hook did not answer within {timeout_ms} ms (the module's thread is blocked or the hook hangs)"
            ),
        ),
        _ => {}
    }
    let recent = signals.recent;
    let rate = recent.error_rate();
    if recent.requests >= MIN_REQUESTS_FOR_RATE && rate >= DEGRADED_ERROR_RATE {
        let to = if rate >= UNHEALTHY_ERROR_RATE { ModuleHealth::Unhealthy } else { ModuleHealth::Degraded };
        worsen(
            to,
            format!(
                "{} of {} requests in the last {} s failed with 5xx ({:.0}%)",
                recent.server_errors,
                recent.requests,
                recent.seconds,
                rate * 100.0
            ),
        );
    }
    if signals.runaways > 0 {
        worsen(ModuleHealth::Degraded, format!("{} runaway request(s) still running", signals.runaways));
    }
    if signals.over_memory {
        worsen(ModuleHealth::Degraded, "over its memory soft limit".into());
    }
    (status, reasons)
}

/// Whether an instance in `state` is running, so its health is probed (hook, rates).
pub fn is_probed(state: State) -> bool {
    matches!(state, State::Active | State::Inactive)
}

/// Whether an instance in `state` needs an operator: it is listed among the base's problems.
pub fn needs_operator(state: State) -> bool {
    matches!(state, State::Broken | State::Pinned)
}

/// The base's health as `GET /api/v1/health` states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BaseHealth {
    /// Every running instance is healthy and nothing needs an operator.
    Ok,
    /// Some instance is degraded or unhealthy, or something needs an operator (a broken or pinned
    /// instance, a quarantined artifact).
    Degraded,
}

/// The base's verdict from each running instance's health and the number of problems (instances
/// and artifacts that need an operator).
pub fn verdict(running: impl IntoIterator<Item = ModuleHealth>, problems: usize) -> BaseHealth {
    let all_healthy = running.into_iter().all(|health| health == ModuleHealth::Healthy);
    if all_healthy && problems == 0 { BaseHealth::Ok } else { BaseHealth::Degraded }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(hook: HookHealth, requests: u64, server_errors: u64, runaways: usize, expected: ModuleHealth) {
        let recent = RecentWindow { seconds: 60, requests, server_errors };
        let signals = Signals { hook: &hook, recent, runaways, over_memory: false };
        let (status, reasons) = assess(&signals);
        assert_eq!(status, expected, "{signals:?}: {reasons:?}");
        assert_eq!(reasons.is_empty(), expected == ModuleHealth::Healthy, "{reasons:?}");
    }

    fn answered(status: ModuleHealth) -> HookHealth {
        HookHealth::Answered { status, message: "m".into(), ms: 1.0 }
    }

    #[test]
    fn each_signal_worsens_health_to_its_own_level() {
        use ModuleHealth::{Degraded, Healthy, Unhealthy};
        check(answered(Healthy), 0, 0, 0, Healthy);
        check(HookHealth::Unsupported, 0, 0, 0, Healthy);
        check(answered(Degraded), 0, 0, 0, Degraded);
        check(answered(Unhealthy), 0, 0, 0, Unhealthy);
        check(HookHealth::NoAnswer { timeout_ms: 1000 }, 0, 0, 0, Unhealthy);
        // The rate counts only with enough requests.
        check(answered(Healthy), 9, 9, 0, Healthy);
        check(answered(Healthy), 10, 1, 0, Degraded);
        check(answered(Healthy), 10, 5, 0, Unhealthy);
        check(HookHealth::Unsupported, 20, 19, 0, Unhealthy);
        check(answered(Healthy), 0, 0, 2, Degraded);
        // The worst signal wins.
        check(answered(Degraded), 10, 6, 1, Unhealthy);
    }

    #[test]
    fn the_base_is_ok_only_when_every_instance_is_healthy_and_nothing_needs_an_operator() {
        use ModuleHealth::{Degraded, Healthy, Unhealthy};
        let check = |running: &[ModuleHealth], problems: usize, expected: BaseHealth| {
            assert_eq!(
                verdict(running.iter().copied(), problems),
                expected,
                "{running:?}, {problems} problem(s)"
            );
        };
        check(&[], 0, BaseHealth::Ok);
        check(&[Healthy], 0, BaseHealth::Ok);
        check(&[Healthy, Healthy, Healthy], 0, BaseHealth::Ok);
        check(&[], 1, BaseHealth::Degraded);
        check(&[Healthy], 1, BaseHealth::Degraded);
        check(&[Degraded], 0, BaseHealth::Degraded);
        check(&[Unhealthy], 0, BaseHealth::Degraded);
        check(&[Healthy, Degraded, Healthy], 0, BaseHealth::Degraded);
        check(&[Healthy, Unhealthy], 3, BaseHealth::Degraded);
    }

    #[test]
    fn running_instances_are_probed_and_broken_or_pinned_ones_need_an_operator() {
        let check = |state: State, probed: bool, operator: bool| {
            assert_eq!((is_probed(state), needs_operator(state)), (probed, operator), "{state:?}");
        };
        check(State::Installing, false, false);
        check(State::Starting, false, false);
        check(State::Active, true, false);
        check(State::Inactive, true, false);
        check(State::Draining, false, false);
        check(State::Stopping, false, false);
        check(State::Stopped, false, false);
        check(State::Broken, false, true);
        check(State::Pinned, false, true);
    }

    #[test]
    fn base_health_renders_as_the_api_has_always_said_it() {
        assert_eq!(serde_json::to_value(BaseHealth::Ok).unwrap(), "ok");
        assert_eq!(serde_json::to_value(BaseHealth::Degraded).unwrap(), "degraded");
    }
}

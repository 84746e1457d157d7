//! How healthy one instance is, from what the base knows about it: its health hook's answer,
//! its recent 5xx rate, runaway requests and its memory soft limit. One pure function, so
//! `GET /api/v1/health` and the background probe behind the unhealthy policy (`registry/watch.rs`)
//! can never disagree.

use crate::{
    accounting::RecentWindow,
    instance::{HookHealth, ModuleHealth},
};

/// A module is degraded when this share of its recent requests failed (with at least
/// [`MIN_REQUESTS_FOR_RATE`] requests), and unhealthy at [`UNHEALTHY_ERROR_RATE`].
pub(crate) const DEGRADED_ERROR_RATE: f64 = 0.1;
pub(crate) const UNHEALTHY_ERROR_RATE: f64 = 0.5;
pub(crate) const MIN_REQUESTS_FOR_RATE: u64 = 10;

/// What the base knows about an instance's health at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Signals<'a> {
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
pub(crate) fn assess(signals: &Signals<'_>) -> (ModuleHealth, Vec<String>) {
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
}

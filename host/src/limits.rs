//! Per-module limits: what a module declares in its manifest, what the base's config file and
//! operations API override, and the effective values the base enforces.
//!
//! Precedence, per limit: operations API, then config file, then the module's manifest, then the
//! base's defaults. What each limit can and cannot do from inside one process is in
//! ARCHITECTURE.md ("Limits").

use std::time::Duration;

use pedestal_module_api::{MemoryAction, ModuleLimits};
use serde::{Deserialize, Serialize};

/// What the base does when an instance's live heap crosses its memory soft limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Log a warning (base and module log) and count it.
    Log,
    /// Stop routing traffic to the instance; it stays loaded, `inactive`.
    Deactivate,
    /// Stop the instance and start a fresh one from the same artifact.
    Restart,
}

/// What the base does with an instance that stayed unhealthy for its grace period (its health
/// hook said so or did not answer within the health timeout, or most of its recent requests
/// failed with 5xx; see ARCHITECTURE.md, "Limits").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnhealthyAction {
    /// Nothing: health only reports it.
    #[default]
    None,
    /// Stop routing traffic to the instance; it stays loaded, `inactive`.
    Deactivate,
    /// Stop the instance and start a fresh one from the same artifact. A thread spinning in a
    /// handler cannot be reclaimed in-process: the stop leaves the old instance `pinned`.
    Restart,
}

impl std::str::FromStr for UnhealthyAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "deactivate" => Ok(Self::Deactivate),
            "restart" => Ok(Self::Restart),
            other => {
                Err(format!("unknown unhealthy action {other:?} (expected none, deactivate or restart)"))
            }
        }
    }
}

/// Overrides of a module's limits, from the config file or the operations API. `None` leaves a
/// limit to the next source; `0` for a count or size means "no limit".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Most requests inside the module at once.
    pub max_concurrent_requests: Option<u32>,
    /// How long a request may take.
    pub request_timeout_ms: Option<u64>,
    /// Largest request body.
    pub max_request_body_bytes: Option<u64>,
    /// Live heap bytes above which `memory_action` is taken.
    pub memory_soft_limit_bytes: Option<u64>,
    /// What crossing the memory soft limit triggers.
    pub memory_action: Option<Action>,
    /// What staying unhealthy for `unhealthy_grace_ms` triggers.
    pub unhealthy_action: Option<UnhealthyAction>,
    /// How long an instance must stay unhealthy before `unhealthy_action` is taken.
    pub unhealthy_grace_ms: Option<u64>,
}

impl LimitOverrides {
    /// `self`, with every limit `newer` sets taken from `newer`.
    pub fn merged(self, newer: Self) -> Self {
        Self {
            max_concurrent_requests: newer.max_concurrent_requests.or(self.max_concurrent_requests),
            request_timeout_ms: newer.request_timeout_ms.or(self.request_timeout_ms),
            max_request_body_bytes: newer.max_request_body_bytes.or(self.max_request_body_bytes),
            memory_soft_limit_bytes: newer.memory_soft_limit_bytes.or(self.memory_soft_limit_bytes),
            memory_action: newer.memory_action.or(self.memory_action),
            unhealthy_action: newer.unhealthy_action.or(self.unhealthy_action),
            unhealthy_grace_ms: newer.unhealthy_grace_ms.or(self.unhealthy_grace_ms),
        }
    }
}

/// Where an effective limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The base's default.
    Default,
    /// The module's manifest (`export_module!(.., limits = ..)`).
    Manifest,
    /// The base's config file.
    Config,
    /// The operations API (`PUT /api/v1/modules/{name}/limits`).
    Api,
}

/// The limits the base enforces on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Limits {
    /// Most requests inside the module at once (`None`: no limit).
    pub max_concurrent_requests: Option<u32>,
    /// How long a request may take before the caller gets `504`.
    pub request_timeout_ms: u64,
    /// Largest request body; a larger one gets `413`.
    pub max_request_body_bytes: u64,
    /// Live heap bytes above which `memory_action` is taken (`None`: no limit).
    pub memory_soft_limit_bytes: Option<u64>,
    /// What crossing the memory soft limit triggers.
    pub memory_action: Action,
    /// What staying unhealthy for `unhealthy_grace_ms` triggers.
    pub unhealthy_action: UnhealthyAction,
    /// How long an instance must stay unhealthy before `unhealthy_action` is taken.
    pub unhealthy_grace_ms: u64,
    /// A request the module still runs this long after it was sent is reported as runaway.
    pub runaway_after_ms: u64,
    /// Where each limit came from.
    pub sources: Sources,
}

/// The source of each limit in [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Sources {
    /// Of `max_concurrent_requests`.
    pub max_concurrent_requests: Source,
    /// Of `request_timeout_ms`.
    pub request_timeout_ms: Source,
    /// Of `max_request_body_bytes`.
    pub max_request_body_bytes: Source,
    /// Of `memory_soft_limit_bytes`.
    pub memory_soft_limit_bytes: Source,
    /// Of `memory_action`.
    pub memory_action: Source,
    /// Of `unhealthy_action`.
    pub unhealthy_action: Source,
    /// Of `unhealthy_grace_ms`.
    pub unhealthy_grace_ms: Source,
}

/// Picks the first source that sets a value: API, config, manifest, default.
fn pick<T>(api: Option<T>, config: Option<T>, manifest: Option<T>, default: T) -> (T, Source) {
    match (api, config, manifest) {
        (Some(v), _, _) => (v, Source::Api),
        (None, Some(v), _) => (v, Source::Config),
        (None, None, Some(v)) => (v, Source::Manifest),
        (None, None, None) => (default, Source::Default),
    }
}

/// The base's own values for the limits that neither the API, the config file nor the module's
/// manifest set: its flags. A plain value the base builds from its `Config`
/// (`Config::limit_defaults`), so resolving limits needs no config (this is a leaf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDefaults {
    /// `--request-timeout`.
    pub request_timeout: Duration,
    /// `--max-request-body-bytes`.
    pub max_request_body_bytes: u64,
    /// `--unhealthy-action`.
    pub unhealthy_action: UnhealthyAction,
    /// `--unhealthy-grace`.
    pub unhealthy_grace: Duration,
}

impl Limits {
    /// The effective limits of an instance whose module declared `manifest` (`None`: built
    /// against an interface older than 1.1, which cannot declare any).
    pub fn resolve(
        manifest: Option<&ModuleLimits>,
        config_overrides: Option<&LimitOverrides>,
        api_overrides: Option<&LimitOverrides>,
        defaults: &LimitDefaults,
    ) -> Self {
        let nonzero32 = |v: u32| (v != 0).then_some(v);
        let nonzero = |v: u64| (v != 0).then_some(v);
        let declared = manifest.copied().unwrap_or_default();
        let (config_o, api_o) =
            (config_overrides.copied().unwrap_or_default(), api_overrides.copied().unwrap_or_default());
        let (max_concurrent_requests, concurrency_source) = pick(
            api_o.max_concurrent_requests,
            config_o.max_concurrent_requests,
            nonzero32(declared.max_concurrent_requests),
            0,
        );
        let (request_timeout_ms, timeout_source) = pick(
            api_o.request_timeout_ms.and_then(nonzero),
            config_o.request_timeout_ms.and_then(nonzero),
            nonzero(declared.request_timeout_ms),
            defaults.request_timeout.as_millis() as u64,
        );
        let (max_request_body_bytes, body_source) = pick(
            api_o.max_request_body_bytes.and_then(nonzero),
            config_o.max_request_body_bytes.and_then(nonzero),
            nonzero(declared.max_request_body_bytes),
            defaults.max_request_body_bytes,
        );
        let (memory_soft_limit_bytes, memory_source) = pick(
            api_o.memory_soft_limit_bytes,
            config_o.memory_soft_limit_bytes,
            nonzero(declared.memory_soft_limit_bytes),
            0,
        );
        let declared_action = match declared.memory_action {
            MemoryAction::Unset => None,
            MemoryAction::Log => Some(Action::Log),
            MemoryAction::Deactivate => Some(Action::Deactivate),
            MemoryAction::Restart => Some(Action::Restart),
        };
        let (memory_action, action_source) =
            pick(api_o.memory_action, config_o.memory_action, declared_action, Action::Log);
        // Not in the manifest: the ABI's `ModuleLimits` is frozen, and the policy is the
        // operator's call rather than the module author's.
        let (unhealthy_action, unhealthy_source) =
            pick(api_o.unhealthy_action, config_o.unhealthy_action, None, defaults.unhealthy_action);
        let (unhealthy_grace_ms, grace_source) = pick(
            api_o.unhealthy_grace_ms,
            config_o.unhealthy_grace_ms,
            None,
            defaults.unhealthy_grace.as_millis() as u64,
        );
        Self {
            max_concurrent_requests: nonzero32(max_concurrent_requests),
            request_timeout_ms,
            max_request_body_bytes,
            memory_soft_limit_bytes: nonzero(memory_soft_limit_bytes),
            memory_action,
            unhealthy_action,
            unhealthy_grace_ms,
            runaway_after_ms: runaway_after(Duration::from_millis(request_timeout_ms)).as_millis() as u64,
            sources: Sources {
                max_concurrent_requests: concurrency_source,
                request_timeout_ms: timeout_source,
                max_request_body_bytes: body_source,
                memory_soft_limit_bytes: memory_source,
                memory_action: action_source,
                unhealthy_action: unhealthy_source,
                unhealthy_grace_ms: grace_source,
            },
        }
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// When a request that timed out counts as runaway: twice its timeout, and at least one second
/// past it. The caller got its `504` at the timeout; the module is still running it.
pub fn runaway_after(timeout: Duration) -> Duration {
    (timeout * 2).max(timeout + Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags' defaults, as `Config::default().limit_defaults()` gives them.
    fn flags() -> LimitDefaults {
        LimitDefaults {
            request_timeout: Duration::from_secs(30),
            max_request_body_bytes: 16 * 1024 * 1024,
            unhealthy_action: UnhealthyAction::None,
            unhealthy_grace: Duration::from_secs(30),
        }
    }

    #[test]
    fn api_beats_config_beats_manifest_beats_default() {
        let config = flags();
        let manifest = ModuleLimits::new()
            .max_concurrent_requests(4)
            .request_timeout_ms(500)
            .memory_soft_limit(1 << 20, MemoryAction::Restart);
        let from_config = LimitOverrides { request_timeout_ms: Some(700), ..Default::default() };
        let from_api = LimitOverrides { max_concurrent_requests: Some(0), ..Default::default() };

        let declared = Limits::resolve(Some(&manifest), None, None, &config);
        assert_eq!(declared.max_concurrent_requests, Some(4));
        assert_eq!(declared.request_timeout_ms, 500);
        assert_eq!(declared.memory_action, Action::Restart);
        assert_eq!(declared.sources.max_request_body_bytes, Source::Default);
        assert_eq!(declared.max_request_body_bytes, config.max_request_body_bytes);

        let all = Limits::resolve(Some(&manifest), Some(&from_config), Some(&from_api), &config);
        assert_eq!(all.request_timeout_ms, 700);
        assert_eq!(all.sources.request_timeout_ms, Source::Config);
        assert_eq!(all.max_concurrent_requests, None, "0 from the API lifts the limit");
        assert_eq!(all.sources.max_concurrent_requests, Source::Api);
        assert_eq!(all.runaway_after_ms, 1700);

        let old_module = Limits::resolve(None, None, None, &config);
        assert_eq!(old_module.memory_soft_limit_bytes, None);
        assert_eq!(old_module.memory_action, Action::Log);
    }

    #[test]
    fn the_unhealthy_policy_comes_from_the_api_the_config_file_or_the_flags() {
        let flags = LimitDefaults {
            unhealthy_action: UnhealthyAction::Deactivate,
            unhealthy_grace: Duration::from_secs(5),
            ..flags()
        };
        let check = |config: Option<LimitOverrides>, api: Option<LimitOverrides>, expected| {
            let limits = Limits::resolve(None, config.as_ref(), api.as_ref(), &flags);
            let found = (
                limits.unhealthy_action,
                limits.sources.unhealthy_action,
                limits.unhealthy_grace_ms,
                limits.sources.unhealthy_grace_ms,
            );
            assert_eq!(found, expected, "config {config:?}, api {api:?}");
        };
        let restart =
            LimitOverrides { unhealthy_action: Some(UnhealthyAction::Restart), ..Default::default() };
        let grace = LimitOverrides { unhealthy_grace_ms: Some(100), ..Default::default() };
        check(None, None, (UnhealthyAction::Deactivate, Source::Default, 5000, Source::Default));
        check(Some(restart), None, (UnhealthyAction::Restart, Source::Config, 5000, Source::Default));
        check(Some(restart), Some(grace), (UnhealthyAction::Restart, Source::Config, 100, Source::Api));
        let off = LimitOverrides { unhealthy_action: Some(UnhealthyAction::None), ..Default::default() };
        check(Some(restart), Some(off), (UnhealthyAction::None, Source::Api, 5000, Source::Default));
    }
}

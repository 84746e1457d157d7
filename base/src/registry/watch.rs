//! The limits the registry watches rather than checks per request: each instance's memory soft
//! limit (and its action: log, deactivate, restart), runaway requests, and the unhealthy policy
//! (a background health probe, and its action: deactivate, restart). Once a second it also
//! finishes the unload of instances pinned only by their module's threads, and reports module
//! log lines the echo rate limit kept off stderr. The base's sampler thread calls
//! [`Registry::watch_limits`] ten times a second.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use pedestal_module_api::abi::LogLevel;

use super::Registry;
use crate::{
    instance::{Instance, MemoryCrossing, State, StayedUnhealthy},
    limits::{Action, UnhealthyAction},
    logs::LogLine,
    sync::lock,
};

/// At most this many memory-limit restarts of one module in [`RESTART_WINDOW`]; beyond that
/// the instance is deactivated instead.
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// How often the background probe behind the unhealthy policy asks an instance's health hook.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl Registry {
    /// Samples every live instance's heap (keeping peaks current) and enforces the limits that
    /// are watched rather than checked per request: the memory soft limit and runaway requests.
    /// The base calls it ten times a second.
    pub fn watch_limits(self: &Arc<Self>) {
        if !self.is_restored() {
            // No actions (they change what is recorded) before the recorded state is back.
            for (instance, _) in self.all() {
                instance.sample_heap();
            }
            return;
        }
        let tick = self.ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Every 5 s: fold buffered request durations into the exporter's summaries (they would
        // otherwise grow until someone scrapes `/metrics`). Every minute: collect artifacts that
        // have been unreferenced for the grace period.
        if tick.is_multiple_of(50) {
            for (instance, _) in self.all() {
                if instance.state().is_live() {
                    instance.touch_metrics();
                }
            }
            self.metrics.upkeep();
        }
        if tick % 600 == 599 {
            self.collect_garbage();
        }
        if tick.is_multiple_of(super::samples::TICKS_PER_SAMPLE) {
            self.take_samples();
        }
        if tick.is_multiple_of(10) {
            self.finish_stranded_unloads();
            self.report_unechoed_log_lines();
        }
        for (instance, _) in self.all() {
            instance.sample_heap();
            if !matches!(instance.state(), State::Active | State::Inactive) {
                continue;
            }
            for runaway in instance.find_runaways() {
                let message = format!(
                    "runaway request: {} is still running {} ms after it was sent, far past its {} ms \
                     timeout (its caller got 504); the base cannot stop it, the module must",
                    runaway.request,
                    runaway.running_ms,
                    instance.limits().request_timeout_ms
                );
                self.warn(&instance, "runaway", &message);
            }
            if let Some(crossing) = instance.check_memory() {
                self.memory_limit_crossed(&instance, crossing);
            }
            let limits = instance.limits();
            // A deactivated instance has had its action; a busy one is in another operation.
            if limits.unhealthy_action != UnhealthyAction::None
                && !instance.is_deactivated()
                && !instance.is_busy()
                && let Some(unhealthy) = instance.probe_health(
                    PROBE_INTERVAL,
                    self.config.health_timeout,
                    Duration::from_millis(limits.unhealthy_grace_ms),
                )
            {
                self.stayed_unhealthy(&instance, limits.unhealthy_action, unhealthy);
            }
        }
    }

    /// Finishes the unload of instances pinned only by threads their module started, once those
    /// threads have ended, and frees their load paths. Rare, and bounded: `dlclose` runs on the
    /// unload's own thread, and this one waits for it at most the stop timeout.
    fn finish_stranded_unloads(&self) {
        for instance in Instance::finish_stranded_unloads(self.config.stop_timeout) {
            self.metrics.count_unload();
            // Only paths this registry handed out (a process may hold more than one registry).
            if lock(&self.loaded_paths).contains(&instance.load_path) {
                self.release_load_path(&instance.load_path);
            }
            // An uninstalled one leaves the listing now (one a replace or restart superseded is
            // no longer recorded there, and is left alone).
            if instance.state() == crate::instance::State::Stopped {
                self.retire(&instance);
            }
        }
    }

    /// One line per module whose log lines were kept off the base's stderr since the last
    /// report (called once a second, so at most one such line per module and second).
    fn report_unechoed_log_lines(&self) {
        let logs: Vec<_> = lock(&self.logs).iter().map(|(n, l)| (n.clone(), Arc::clone(l))).collect();
        for (name, log) in logs {
            let unreported = log.take_unechoed();
            if unreported > 0 {
                tracing::warn!(
                    module = %name,
                    "{unreported} lines from module {name} not echoed (over {} lines/s); see its log",
                    self.config.module_log_echo_per_sec
                );
            }
        }
    }

    /// Takes the unhealthy policy's action on an instance that stayed unhealthy for its grace
    /// period.
    fn stayed_unhealthy(
        self: &Arc<Self>,
        instance: &Arc<Instance>,
        action: UnhealthyAction,
        unhealthy: StayedUnhealthy,
    ) {
        let action = if action == UnhealthyAction::Restart && !self.may_restart(&instance.id.name) {
            self.warn(
                instance,
                "health",
                &format!(
                    "unhealthy: {MAX_RESTARTS} restarts in {} s already; deactivating instead",
                    RESTART_WINDOW.as_secs()
                ),
            );
            UnhealthyAction::Deactivate
        } else {
            action
        };
        let taken = match action {
            UnhealthyAction::None => return,
            UnhealthyAction::Deactivate => "deactivating the instance",
            // Said every time, because it is what an operator needs to know when the handler spins.
            UnhealthyAction::Restart => {
                "restarting the instance (a thread still running a handler cannot be reclaimed \
                 in-process: if it never returns, the old instance stays pinned until the process \
                 restarts)"
            }
        };
        let message = format!(
            "unhealthy for {} ms (grace {} ms): {}; {taken}",
            unhealthy.for_ms,
            instance.limits().unhealthy_grace_ms,
            unhealthy.reasons.join("; ")
        );
        self.warn(instance, "health", &message);
        let kind = if action == UnhealthyAction::Restart { "restart" } else { "deactivate" };
        *lock(&self.unhealthy_actions).entry((instance.id.name.clone(), kind)).or_default() += 1;
        match action {
            UnhealthyAction::None => {}
            UnhealthyAction::Deactivate => self.deactivate(instance, "unhealthy", &message),
            UnhealthyAction::Restart => self.restart_in_background(instance, "unhealthy", message),
        }
    }

    /// Warns in the base's output and in the module's own log.
    fn warn(&self, instance: &Instance, target: &str, message: &str) {
        let (name, version) = (&instance.id.name, instance.id.version.to_string());
        tracing::warn!(module = %name, version = %version, "{message}");
        let line = LogLine::new(LogLevel::Warn, name, &version, target, message, "");
        self.log(name).write(line);
    }

    fn memory_limit_crossed(self: &Arc<Self>, instance: &Arc<Instance>, crossing: MemoryCrossing) {
        let MemoryCrossing { live_bytes, limit, action } = crossing;
        let action = if action == Action::Restart && !self.may_restart(&instance.id.name) {
            self.warn(
                instance,
                "limits",
                &format!(
                    "memory soft limit: {MAX_RESTARTS} restarts in {} s already; deactivating instead",
                    RESTART_WINDOW.as_secs()
                ),
            );
            Action::Deactivate
        } else {
            action
        };
        let taken = match action {
            Action::Log => "logged",
            Action::Deactivate => "deactivating the instance",
            Action::Restart => "restarting the instance",
        };
        let message = format!(
            "memory soft limit crossed: {live_bytes} live heap bytes, over the limit of {limit}; {taken}"
        );
        self.warn(instance, "limits", &message);
        match action {
            Action::Log => {}
            Action::Deactivate => self.deactivate(instance, "memory_limit", &message),
            Action::Restart => self.restart_in_background(instance, "memory_limit", message),
        }
    }

    /// [`Registry::restart`] on a thread of its own, so the watcher never waits for a module.
    fn restart_in_background(
        self: &Arc<Self>,
        instance: &Arc<Instance>,
        reason: &'static str,
        message: String,
    ) {
        let registry = Arc::clone(self);
        let instance = Arc::clone(instance);
        let restarter = thread::Builder::new().name("pedestal-restart".into()).spawn(move || {
            match registry.restart(&instance, reason, &message) {
                // Heap its statics keep alive survives the restart: only a new process frees it.
                Ok(_) if reason == "memory_limit" => registry.escalate_if_leaked(&instance),
                Ok(_) => {}
                Err(e) => registry.warn(&instance, "limits", &format!("restart failed: {e}")),
            }
        });
        if let Err(e) = restarter {
            tracing::error!("cannot start a restart thread: {e}");
        }
    }

    /// After a memory-limit restart: when the stopped instance left more heap behind than
    /// `--worker-restart-leak-bytes` (memory its statics keep alive, which no in-process restart
    /// reclaims), asks the supervisor for a fresh worker process, the only thing that reclaims it.
    fn escalate_if_leaked(&self, stopped: &Instance) {
        let threshold = self.config.worker_restart_leak_bytes;
        let leaked = stopped.heap_at_stop().map_or(0, |heap| heap.live_bytes);
        if threshold == 0 || leaked <= threshold {
            return;
        }
        let escalated = crate::supervisor::request_worker_restart();
        let message = if escalated {
            format!(
                "the restarted instance left {leaked} heap bytes behind (over the {threshold} of \
                 --worker-restart-leak-bytes): restarting the worker process, which reclaims them"
            )
        } else {
            format!(
                "the restarted instance left {leaked} heap bytes behind (over the {threshold} of \
                 --worker-restart-leak-bytes); only a restart of the base process reclaims them, \
                 and no supervisor can do it now (unsupervised, or 3 worker restarts in 10 minutes)"
            )
        };
        self.warn(stopped, "limits", &message);
    }

    /// Records a restart of module `name` unless it already restarted [`MAX_RESTARTS`] times in
    /// [`RESTART_WINDOW`].
    fn may_restart(&self, name: &str) -> bool {
        let mut restarts = lock(&self.restarts);
        let recent = restarts.entry(name.to_owned()).or_default();
        recent.retain(|at| at.elapsed() < RESTART_WINDOW);
        if recent.len() >= MAX_RESTARTS {
            return false;
        }
        recent.push_back(Instant::now());
        true
    }
}

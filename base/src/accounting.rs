//! The Prometheus export of what the base measures: per-instance series (heap, CPU, requests,
//! the metrics modules registered), instances by state, crashes, and the connection counters of
//! both ports. The counting itself (CPU time from `/proc`, latency, recent rates) is the runtime's
//! leaf `stats.rs`; this file renders it. Every family the base exports is in `FAMILIES` with
//! its help text, which `tests/tests/dashboards.rs` holds to `promtool check metrics`.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use metrics::{Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;
use pedestal_module_api::abi::MetricKind;

use crate::{
    instance::{Instance, ModuleId, State},
    stats::{ModuleMetric, ModuleMetricHandle, RequestMetrics, cpu_by_thread_name},
};

/// The base's Prometheus registry. A recorder of its own rather than the global one, so a custom
/// base keeps its global `metrics` recorder for itself.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The kind of each metric name modules registered: one name, one kind, across modules.
    module_kinds: std::sync::Mutex<HashMap<String, MetricKind>>,
    /// Crashes of earlier processes this one found at its start, by module, version and signal
    /// (rendered on every scrape, so the series outlive the exporter's idle timeout).
    crashes: std::sync::Mutex<std::collections::BTreeMap<(String, String, String), u64>>,
    /// What the accept loops of the two ports counted (`pedestal_connections_*`).
    connections: [std::sync::Arc<ConnectionCounters>; 2],
    /// Instances that started, and instances unloaded (`pedestal_installs_total`,
    /// `pedestal_unloads_total`).
    installs: AtomicU64,
    unloads: AtomicU64,
}

/// The two listening ports, as the `port` label of the connection metrics names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    Traffic,
    Operations,
}

impl Port {
    /// The `port` label value, also used in log lines.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Port::Traffic => "traffic",
            Port::Operations => "operations",
        }
    }
}

/// Counts of one port's accept loop (`crate::server`), rendered on every scrape so the series
/// never expire. Plain atomics: they are bumped on the connection path.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounters {
    /// Connections open now.
    pub(crate) open: AtomicU64,
    /// Connections accepted since the start.
    pub(crate) accepted: AtomicU64,
    /// Connections closed because a request head did not arrive in time (slowloris).
    pub(crate) header_timeouts: AtomicU64,
    /// Keep-alive connections closed after staying idle for the idle timeout.
    pub(crate) idle_timeouts: AtomicU64,
    /// Connections closed because the client read nothing of its answer for the idle timeout.
    pub(crate) write_timeouts: AtomicU64,
    /// Idle connections closed at the connection cap to make room for a new one.
    pub(crate) reclaimed: AtomicU64,
    /// Times the port was at its cap with nothing idle to reclaim, and stopped accepting.
    pub(crate) paused: AtomicU64,
    /// Failed `accept` calls that made the loop back off (out of file descriptors, say).
    pub(crate) accept_errors: AtomicU64,
}

/// Whether `name` is a Prometheus metric name a module may use.
fn is_module_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && name.len() <= 200
        && !name.starts_with("pedestal_")
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METADATA: Metadata<'static> = Metadata::new("pedestal", Level::INFO, Some(module_path!()));

/// The kind of a family the base exports (a histogram renders as a Prometheus summary).
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every family the base exports, with the text of its `# HELP` line: what it counts, and its
/// unit when it has one (the text format has no unit line, and the names end in their unit).
/// Described once, when the registry is made, so each family carries its help from its first
/// sample. A new family goes here too, or it is exported without help text.
const FAMILIES: &[(&str, Kind, &str)] = &[
    // Per instance, labelled `module` and `version`.
    (
        "pedestal_module_heap_live_bytes",
        Kind::Gauge,
        "Bytes the instance's library has allocated and not freed, as its allocator counts them.",
    ),
    (
        "pedestal_module_heap_peak_bytes",
        Kind::Gauge,
        "Highest live heap seen since the instance started, in bytes (sampled: a spike between \
         samples can be missed).",
    ),
    ("pedestal_module_allocations_total", Kind::Counter, "Allocations the instance's library has made."),
    (
        "pedestal_module_requests_total",
        Kind::Counter,
        "Requests handed to the instance (not those refused over its concurrency limit).",
    ),
    ("pedestal_module_responses_4xx_total", Kind::Counter, "Answers of the instance with a 4xx status."),
    (
        "pedestal_module_responses_5xx_total",
        Kind::Counter,
        "Answers of the instance with a 5xx status, including panics, timeouts and requests that \
         found it stopped.",
    ),
    ("pedestal_module_panics_total", Kind::Counter, "Panics caught inside the instance's handlers."),
    (
        "pedestal_module_rejected_total",
        Kind::Counter,
        "Requests refused with 503 MODULE_OVERLOADED because the instance was at its concurrency \
         limit.",
    ),
    (
        "pedestal_module_runaway_requests_total",
        Kind::Counter,
        "Requests whose caller got 504 and that the instance was still running max(2 x timeout, \
         timeout + 1 s) after they were sent.",
    ),
    (
        "pedestal_module_memory_limit_crossings_total",
        Kind::Counter,
        "Times the instance's live heap rose above its memory soft limit.",
    ),
    (
        "pedestal_module_tasks",
        Kind::Gauge,
        "Tasks alive on the instance's async runtime (modules built against interface 1.1 or later).",
    ),
    (
        "pedestal_module_concurrency_limit",
        Kind::Gauge,
        "Requests the instance may run at once (only for an instance that has the limit).",
    ),
    (
        "pedestal_module_memory_soft_limit_bytes",
        Kind::Gauge,
        "The instance's memory soft limit, in bytes of live heap (only for an instance that has it).",
    ),
    ("pedestal_module_requests_in_flight", Kind::Gauge, "Requests inside the instance now."),
    (
        "pedestal_module_cpu_user_seconds",
        Kind::Gauge,
        "User-mode CPU time of the instance's live threads, in seconds (a gauge: it falls when a \
         thread ends).",
    ),
    (
        "pedestal_module_cpu_system_seconds",
        Kind::Gauge,
        "Kernel-mode CPU time of the instance's live threads, in seconds (a gauge: it falls when a \
         thread ends).",
    ),
    ("pedestal_module_threads", Kind::Gauge, "Live threads of the instance (its own and those it started)."),
    (
        "pedestal_module_active",
        Kind::Gauge,
        "1 when the instance is its module's active version (it receives the module's traffic), else 0.",
    ),
    (
        "pedestal_module_load_seconds",
        Kind::Gauge,
        "How long opening, checking and initialising the instance's library took, in seconds.",
    ),
    ("pedestal_module_start_seconds", Kind::Gauge, "How long the instance's start hook took, in seconds."),
    (
        "pedestal_module_request_duration_seconds",
        Kind::Histogram,
        "Duration of the instance's answered requests as the base saw them, in seconds; quantiles \
         over the last minute, sum and count since the instance started.",
    ),
    (
        "pedestal_module_crashes_total",
        Kind::Counter,
        "Crashes of earlier base processes found at start, by the module, version and signal the \
         crash was attributed to.",
    ),
    // Per module name (they outlive an instance's restart).
    (
        "pedestal_module_log_lines_not_echoed_total",
        Kind::Counter,
        "Module log lines the echo rate limit kept off the base's stderr (the module's log file \
         has them).",
    ),
    (
        "pedestal_module_unhealthy_actions_total",
        Kind::Counter,
        "Times an instance of the module stayed unhealthy past its grace and the base acted, by \
         action (deactivate, restart).",
    ),
    // Base-wide.
    ("pedestal_instances", Kind::Gauge, "Instances the base holds, by state."),
    (
        "pedestal_installs_total",
        Kind::Counter,
        "Instances that started in this process: installs, replaces, restarts and restores.",
    ),
    (
        "pedestal_unloads_total",
        Kind::Counter,
        "Instances whose library was unloaded and unmapped: uninstalls, replaces and restarts.",
    ),
    // Per port, labelled `port` (traffic, operations).
    ("pedestal_connections_open", Kind::Gauge, "Connections open now."),
    ("pedestal_connections_accepted_total", Kind::Counter, "Connections accepted."),
    (
        "pedestal_connections_timed_out_total",
        Kind::Counter,
        "Connections closed on a timeout, by reason: header (no request head in time), idle \
         (keep-alive idle too long), write (the client read nothing of its answer).",
    ),
    (
        "pedestal_connections_reclaimed_total",
        Kind::Counter,
        "Idle connections closed at the connection cap to make room for a new one.",
    ),
    (
        "pedestal_connections_paused_total",
        Kind::Counter,
        "Times the port was at its connection cap with nothing idle to reclaim, and stopped \
         accepting.",
    ),
    (
        "pedestal_connections_accept_errors_total",
        Kind::Counter,
        "Failed accept calls that made the accept loop back off (out of file descriptors, say).",
    ),
];

/// Every state an instance can be in: each is rendered on every scrape, zeros included, so a
/// state's series neither expires nor keeps a stale count.
const STATES: [State; 9] = [
    State::Installing,
    State::Starting,
    State::Active,
    State::Inactive,
    State::Draining,
    State::Stopping,
    State::Stopped,
    State::Broken,
    State::Pinned,
];

fn labels(id: &ModuleId) -> Vec<Label> {
    vec![Label::new("module", id.name.clone()), Label::new("version", id.version.to_string())]
}

impl Metrics {
    /// An empty registry. Series of instances that stopped disappear after ten minutes.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::ALL, Some(Duration::from_secs(600)))
            .build_recorder();
        let handle = recorder.handle();
        for &(name, kind, help) in FAMILIES {
            let (key, help) = (name.into(), help.into());
            match kind {
                Kind::Counter => recorder.describe_counter(key, None, help),
                Kind::Gauge => recorder.describe_gauge(key, None, help),
                Kind::Histogram => recorder.describe_histogram(key, None, help),
            }
        }
        Self {
            recorder,
            handle,
            module_kinds: std::sync::Mutex::new(HashMap::new()),
            crashes: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            connections: Default::default(),
            installs: AtomicU64::new(0),
            unloads: AtomicU64::new(0),
        }
    }

    /// Counts an instance that started (an install, a restart, a restore).
    pub(crate) fn count_install(&self) {
        self.installs.fetch_add(1, Relaxed);
    }

    /// Counts an instance whose library was unloaded (an uninstall, a replace, a restart).
    pub(crate) fn count_unload(&self) {
        self.unloads.fetch_add(1, Relaxed);
    }

    /// The connection counters of `port`.
    pub(crate) fn connections(&self, port: Port) -> std::sync::Arc<ConnectionCounters> {
        std::sync::Arc::clone(&self.connections[port as usize])
    }

    /// Counts a crash of `module@version` with `signal` (`pedestal_module_crashes_total`).
    pub(crate) fn record_crash(&self, module: &str, version: &str, signal: &str) {
        let mut crashes = self.crashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *crashes.entry((module.to_owned(), version.to_owned(), signal.to_owned())).or_default() += 1;
    }

    /// Registers module metric `name` for instance `id`; `None` when the name is not a
    /// Prometheus name, is reserved (`pedestal_`), or is registered with another kind.
    pub(crate) fn module_metric(
        &self,
        id: &ModuleId,
        kind: MetricKind,
        name: &str,
        help: &str,
    ) -> Option<ModuleMetric> {
        if !is_module_metric_name(name) {
            return None;
        }
        {
            let mut kinds = self.module_kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match kinds.get(name) {
                Some(known) if *known != kind => return None,
                Some(_) => {}
                None => {
                    kinds.insert(name.to_owned(), kind);
                    // Every family has a `# HELP` line, a module's too.
                    let help = if help.trim().is_empty() {
                        "A module's metric (the module that registered it gave no help text).".to_owned()
                    } else {
                        help.to_owned()
                    };
                    let (key, help) = (name.to_owned().into(), help.into());
                    match kind {
                        MetricKind::Counter => self.recorder.describe_counter(key, None, help),
                        MetricKind::Gauge => self.recorder.describe_gauge(key, None, help),
                        MetricKind::Histogram => self.recorder.describe_histogram(key, None, help),
                    }
                }
            }
        }
        let key = Key::from_parts(name.to_owned(), labels(id));
        let handle = match kind {
            MetricKind::Counter => {
                ModuleMetricHandle::Counter(self.recorder.register_counter(&key, &METADATA))
            }
            MetricKind::Gauge => ModuleMetricHandle::Gauge(self.recorder.register_gauge(&key, &METADATA)),
            MetricKind::Histogram => {
                ModuleMetricHandle::Histogram(self.recorder.register_histogram(&key, &METADATA))
            }
        };
        Some(ModuleMetric::new(name.to_owned(), kind, handle))
    }

    /// Sets counter `name` of module `name` (all its versions), with one more label if given.
    /// For what the base counts per module rather than per instance (it outlives a restart).
    pub(crate) fn module_counter(
        &self,
        name: &'static str,
        module: &str,
        label: Option<(&'static str, &'static str)>,
        value: u64,
    ) {
        let mut labels = vec![Label::new("module", module.to_owned())];
        labels.extend(label.map(|(key, value)| Label::new(key, value)));
        self.recorder.register_counter(&Key::from_parts(name, labels), &METADATA).absolute(value);
    }

    /// The request-duration histogram of one instance (registered once, recorded per request).
    pub fn request_duration(&self, id: &ModuleId) -> Histogram {
        let key = Key::from_parts("pedestal_module_request_duration_seconds", labels(id));
        self.recorder.register_histogram(&key, &METADATA)
    }

    /// Folds recorded samples into the exporter's summaries. Without it, every recorded request
    /// duration stays buffered until the next render: call it periodically (the base does, every
    /// few seconds), not only on scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Updates every instance's series and renders the Prometheus text format.
    pub fn render(&self, instances: &[(std::sync::Arc<Instance>, bool)]) -> String {
        let cpu = cpu_by_thread_name();
        for (instance, active) in instances {
            if !instance.state().is_live() {
                continue;
            }
            let labels = labels(&instance.id);
            let gauge = |name: &'static str, value: f64| {
                self.recorder.register_gauge(&Key::from_parts(name, labels.clone()), &METADATA).set(value)
            };
            let counter = |name: &'static str, value: u64| {
                self.recorder
                    .register_counter(&Key::from_parts(name, labels.clone()), &METADATA)
                    .absolute(value)
            };
            let heap = instance.heap().unwrap_or_default();
            gauge("pedestal_module_heap_live_bytes", heap.live_bytes as f64);
            gauge("pedestal_module_heap_peak_bytes", instance.heap_peak() as f64);
            counter("pedestal_module_allocations_total", heap.allocations);
            let traffic = instance.traffic();
            counter("pedestal_module_requests_total", traffic.requests);
            counter("pedestal_module_responses_4xx_total", traffic.client_errors);
            counter("pedestal_module_responses_5xx_total", traffic.server_errors);
            counter("pedestal_module_panics_total", traffic.panics);
            counter("pedestal_module_rejected_total", traffic.rejected);
            counter("pedestal_module_runaway_requests_total", instance.runaways_total());
            counter("pedestal_module_memory_limit_crossings_total", instance.memory_limit_crossings());
            if let Some(tasks) = instance.tasks() {
                gauge("pedestal_module_tasks", tasks as f64);
            }
            let limits = instance.limits();
            if let Some(limit) = limits.max_concurrent_requests {
                gauge("pedestal_module_concurrency_limit", limit as f64);
            }
            if let Some(limit) = limits.memory_soft_limit_bytes {
                gauge("pedestal_module_memory_soft_limit_bytes", limit as f64);
            }
            gauge("pedestal_module_requests_in_flight", traffic.in_flight as f64);
            let cpu = instance.cpu_from(&cpu);
            gauge("pedestal_module_cpu_user_seconds", cpu.user_ms as f64 / 1000.0);
            gauge("pedestal_module_cpu_system_seconds", cpu.system_ms as f64 / 1000.0);
            gauge("pedestal_module_threads", cpu.threads as f64);
            gauge("pedestal_module_active", if *active { 1.0 } else { 0.0 });
            gauge("pedestal_module_load_seconds", instance.load_ms() / 1000.0);
            gauge("pedestal_module_start_seconds", instance.start_ms() / 1000.0);
        }
        self.render_states(instances);
        let crashes = self.crashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for ((module, version, signal), count) in crashes {
            let labels = vec![
                Label::new("module", module),
                Label::new("version", version),
                Label::new("signal", signal),
            ];
            self.recorder
                .register_counter(&Key::from_parts("pedestal_module_crashes_total", labels), &METADATA)
                .absolute(count);
        }
        for (name, count) in
            [("pedestal_installs_total", &self.installs), ("pedestal_unloads_total", &self.unloads)]
        {
            self.recorder.register_counter(&Key::from_name(name), &METADATA).absolute(count.load(Relaxed));
        }
        for port in [Port::Traffic, Port::Operations] {
            self.render_connections(port);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// `pedestal_instances{state}`: how many of `instances` are in each state.
    fn render_states(&self, instances: &[(std::sync::Arc<Instance>, bool)]) {
        for state in STATES {
            let count = instances.iter().filter(|(instance, _)| instance.state() == state).count();
            let labels = vec![Label::new("state", state.as_str())];
            self.recorder
                .register_gauge(&Key::from_parts("pedestal_instances", labels), &METADATA)
                .set(count as f64);
        }
    }

    fn render_connections(&self, port: Port) {
        let counts = &self.connections[port as usize];
        let label = |extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![Label::new("port", port.label())];
            labels.extend(extra.map(|(key, value)| Label::new(key, value)));
            labels
        };
        let counter = |name: &'static str, extra, value: &AtomicU64| {
            self.recorder
                .register_counter(&Key::from_parts(name, label(extra)), &METADATA)
                .absolute(value.load(Relaxed))
        };
        let open = counts.open.load(Relaxed) as f64;
        self.recorder
            .register_gauge(&Key::from_parts("pedestal_connections_open", label(None)), &METADATA)
            .set(open);
        counter("pedestal_connections_accepted_total", None, &counts.accepted);
        counter("pedestal_connections_timed_out_total", Some(("reason", "header")), &counts.header_timeouts);
        counter("pedestal_connections_timed_out_total", Some(("reason", "idle")), &counts.idle_timeouts);
        counter("pedestal_connections_timed_out_total", Some(("reason", "write")), &counts.write_timeouts);
        counter("pedestal_connections_reclaimed_total", None, &counts.reclaimed);
        counter("pedestal_connections_paused_total", None, &counts.paused);
        counter("pedestal_connections_accept_errors_total", None, &counts.accept_errors);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestMetrics for Metrics {
    fn request_duration(&self, id: &ModuleId) -> Histogram {
        Metrics::request_duration(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::{FAMILIES, Kind, Metrics};

    /// The names follow the conventions `promtool check metrics` lints: a counter ends in
    /// `_total` and nothing else does, no family ends in a histogram's or summary's suffix, and
    /// each family is described once, with help text that says something.
    #[test]
    fn every_family_is_named_and_described_as_promtool_wants() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, help) in FAMILIES {
            assert!(seen.insert(name), "{name} is described twice");
            assert!(name.starts_with("pedestal_"), "{name}");
            let is_counter = matches!(kind, Kind::Counter);
            assert_eq!(name.ends_with("_total"), is_counter, "{name}: only a counter ends in _total");
            for suffix in ["_bucket", "_sum", "_count", "_created"] {
                assert!(!name.ends_with(suffix), "{name} ends in {suffix}");
            }
            assert!(help.len() > 20 && help.ends_with('.'), "{name}: help {help:?}");
        }
    }

    /// What the base renders with no instance at all (instances by state, crashes found at
    /// start, a module's log counter, both ports' connections) carries its `# HELP` line.
    #[test]
    fn every_rendered_family_has_its_help_line() {
        let metrics = Metrics::new();
        metrics.record_crash("fx", "0.1.0", "SIGSEGV");
        metrics.module_counter("pedestal_module_log_lines_not_echoed_total", "fx", None, 3);
        let text = metrics.render(&[]);
        let families: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(families.len() >= 9, "{text}");
        for family in families {
            assert!(text.lines().any(|l| l.starts_with(&format!("# HELP {family} "))), "{family}: {text}");
        }
        assert!(text.contains("pedestal_instances{state=\"pinned\"} 0"), "{text}");
    }
}

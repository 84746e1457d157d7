//! The Prometheus export of what the base measures: per-instance series (heap, CPU, requests,
//! the metrics modules registered), crashes, and the connection counters of both ports. The
//! counting itself (CPU time from `/proc`, latency, recent rates) is the runtime's leaf
//! `stats.rs`; this file renders it.

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
    instance::{Instance, ModuleId},
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
        Self {
            recorder,
            handle,
            module_kinds: std::sync::Mutex::new(HashMap::new()),
            crashes: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            connections: Default::default(),
        }
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
                    let (key, help) = (name.to_owned().into(), help.to_owned().into());
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
        for port in [Port::Traffic, Port::Operations] {
            self.render_connections(port);
        }
        self.handle.run_upkeep();
        self.handle.render()
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

//! What the base measures per module instance besides the module's own heap counters: CPU time
//! of its threads, request latency, and the Prometheus export of everything.
//!
//! CPU time is read from `/proc/self/task/<tid>/stat` for the threads carrying the instance
//! thread's `pdl-<n>` name (the instance thread, the threads it started without naming them, and
//! its runtime's blocking pool): one pass over the process's threads serves every instance.
//! Threads that have already exited no longer appear there, so their CPU time is not counted.

use std::{
    collections::HashMap,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use metrics::{Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;
use pedestal_module_api::abi::MetricKind;
use serde::Serialize;

use crate::instance::{Instance, ModuleId};

/// User and system CPU time of a group of threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CpuTime {
    /// Milliseconds in user mode.
    pub user_ms: u64,
    /// Milliseconds in the kernel.
    pub system_ms: u64,
    /// Live threads counted.
    pub threads: u64,
}

/// One thread of this process, as `/proc/self/task/<tid>/stat` describes it.
pub(crate) struct TaskStat {
    /// The thread's name (`comm`).
    pub name: String,
    /// Kernel flags; `PF_EXITING` (0x4) once the thread is on its way out.
    pub flags: u64,
    /// User and system time, in USER_HZ ticks.
    pub ticks: (u64, u64),
}

impl TaskStat {
    /// Whether the thread has started exiting (`pthread_join` returns before the task is gone).
    pub fn exiting(&self) -> bool {
        self.flags & 0x4 != 0
    }
}

/// Parses the `stat` of thread `tid` of this process.
pub(crate) fn task_stat(tid: &str) -> Option<TaskStat> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    // After the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime stime ...
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Some(TaskStat {
        name: stat[open + 1..close].to_owned(),
        flags: number(6),
        ticks: (number(11), number(12)),
    })
}

/// The ids of this process's threads.
pub(crate) fn task_ids() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.flatten().filter_map(|t| t.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// CPU time of the process's live threads, grouped by thread name (one pass over
/// `/proc/self/task`).
pub fn cpu_by_thread_name() -> HashMap<String, CpuTime> {
    // `/proc` reports in USER_HZ ticks, which Linux fixes at 100 per second for user space.
    const MS_PER_TICK: u64 = 10;
    let mut by_name: HashMap<String, CpuTime> = HashMap::new();
    for stat in task_ids().iter().filter_map(|tid| task_stat(tid)) {
        let entry = by_name.entry(stat.name).or_default();
        entry.user_ms += stat.ticks.0 * MS_PER_TICK;
        entry.system_ms += stat.ticks.1 * MS_PER_TICK;
        entry.threads += 1;
    }
    by_name
}

/// Request latencies in power-of-two microsecond buckets: lock-free to record, precise enough
/// for p50 and p99 in the API (Prometheus gets its own summary).
#[derive(Debug)]
pub struct Latency {
    buckets: [AtomicU64; 40],
}

/// Latency quantiles, in microseconds (each the upper bound of its bucket).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
}

impl Latency {
    /// No samples yet.
    pub const fn new() -> Self {
        Self { buckets: [const { AtomicU64::new(0) }; 40] }
    }

    /// Records one request.
    pub fn record(&self, elapsed: Duration) {
        let micros = elapsed.as_micros().max(1) as u64;
        let bucket = (64 - micros.leading_zeros() as usize).min(39);
        self.buckets[bucket].fetch_add(1, Relaxed);
    }

    /// p50 and p99, or `None` before the first request.
    pub fn summary(&self) -> Option<LatencySummary> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let quantile = |q: f64| {
            let rank = (total as f64 * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (bucket, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return 1u64 << bucket;
                }
            }
            1u64 << 39
        };
        Some(LatencySummary { p50_us: quantile(0.5), p99_us: quantile(0.99) })
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Requests and 5xx answers of the last [`RecentRate::WINDOW_SECONDS`] seconds, in one-second
/// slots: lock-free to record. A record racing with a slot's reset for a new second can be lost,
/// which a health signal tolerates.
#[derive(Debug)]
pub struct RecentRate {
    slots: [RateSlot; RecentRate::WINDOW_SECONDS as usize],
}

#[derive(Debug)]
struct RateSlot {
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

/// Requests and server errors over the recent window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecentWindow {
    /// The window's length.
    pub seconds: u64,
    /// Requests answered in it.
    pub requests: u64,
    /// Of those, answers with a 5xx status (module failures, panics, timeouts).
    pub server_errors: u64,
}

impl RecentWindow {
    /// The share of requests that failed, or 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.server_errors as f64 / self.requests as f64 }
    }
}

/// Whole seconds since the base started (plus one, so no slot's `0` is a real second).
fn second_now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1
}

impl RecentRate {
    /// The window's length in seconds.
    pub const WINDOW_SECONDS: u64 = 60;

    /// No requests yet.
    pub const fn new() -> Self {
        Self {
            slots: [const {
                RateSlot { second: AtomicU64::new(0), requests: AtomicU64::new(0), errors: AtomicU64::new(0) }
            }; Self::WINDOW_SECONDS as usize],
        }
    }

    /// Records one answered request.
    pub fn record(&self, server_error: bool) {
        let now = second_now();
        let slot = &self.slots[(now % Self::WINDOW_SECONDS) as usize];
        if slot.second.load(Relaxed) != now && slot.second.swap(now, Relaxed) != now {
            slot.requests.store(0, Relaxed);
            slot.errors.store(0, Relaxed);
        }
        slot.requests.fetch_add(1, Relaxed);
        if server_error {
            slot.errors.fetch_add(1, Relaxed);
        }
    }

    /// The counts of the last [`Self::WINDOW_SECONDS`] seconds.
    pub fn window(&self) -> RecentWindow {
        let now = second_now();
        let mut window = RecentWindow { seconds: Self::WINDOW_SECONDS, ..RecentWindow::default() };
        for slot in &self.slots {
            if now - slot.second.load(Relaxed).min(now) < Self::WINDOW_SECONDS {
                window.requests += slot.requests.load(Relaxed);
                window.server_errors += slot.errors.load(Relaxed);
            }
        }
        window
    }
}

impl Default for RecentRate {
    fn default() -> Self {
        Self::new()
    }
}

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

/// A metric a module registered, recorded through the `record_metric` host callback.
pub(crate) struct ModuleMetric {
    pub(crate) name: String,
    pub(crate) kind: MetricKind,
    handle: ModuleMetricHandle,
}

enum ModuleMetricHandle {
    Counter(metrics::Counter),
    Gauge(metrics::Gauge),
    Histogram(Histogram),
}

impl ModuleMetric {
    /// Keeps the series from expiring while its instance lives (the exporter drops series
    /// that did not change for ten minutes, and a handle the module keeps would then record
    /// into nothing). A histogram cannot be touched without an observation: one that observes
    /// nothing for ten minutes is dropped and comes back with its next registration.
    pub(crate) fn touch(&self) {
        match &self.handle {
            ModuleMetricHandle::Counter(counter) => counter.increment(0),
            ModuleMetricHandle::Gauge(gauge) => gauge.increment(0.0),
            ModuleMetricHandle::Histogram(_) => {}
        }
    }

    /// Records a value: a counter adds it (whole units; negative values are ignored), a gauge
    /// takes it, a histogram observes it.
    pub(crate) fn record(&self, value: f64) {
        match &self.handle {
            ModuleMetricHandle::Counter(counter) if value > 0.0 => counter.increment(value.round() as u64),
            ModuleMetricHandle::Counter(_) => {}
            ModuleMetricHandle::Gauge(gauge) => gauge.set(value),
            ModuleMetricHandle::Histogram(histogram) => histogram.record(value),
        }
    }
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
        Some(ModuleMetric { name: name.to_owned(), kind, handle })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_land_in_the_right_bucket() {
        let latency = Latency::new();
        assert!(latency.summary().is_none());
        for _ in 0..98 {
            latency.record(Duration::from_micros(100));
        }
        latency.record(Duration::from_millis(5));
        latency.record(Duration::from_millis(5));
        let summary = latency.summary().unwrap();
        assert_eq!(summary.p50_us, 128);
        assert_eq!(summary.p99_us, 8192);
    }

    #[test]
    fn the_recent_window_counts_requests_and_errors() {
        let rate = RecentRate::new();
        assert_eq!(rate.window().requests, 0);
        for i in 0..10 {
            rate.record(i % 5 == 0);
        }
        let window = rate.window();
        assert_eq!((window.requests, window.server_errors), (10, 2));
        assert!((window.error_rate() - 0.2).abs() < 1e-9);
    }

    #[test]
    fn this_threads_cpu_time_is_found_by_its_name() {
        let name = "acct-probe".to_owned();
        let found = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // Spin until the kernel has charged this thread 30 ms (bounded at 10 s of wall
                // time), rather than for a wall-clock time a loaded machine may not schedule.
                let started = std::time::Instant::now();
                let mut x = 0u64;
                loop {
                    let spun = std::time::Instant::now();
                    while spun.elapsed() < Duration::from_millis(5) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                    let cpu = cpu_by_thread_name().remove(&name);
                    let charged = cpu.as_ref().map_or(0, |c| c.user_ms + c.system_ms);
                    if charged >= 30 || started.elapsed() > Duration::from_secs(10) {
                        return cpu;
                    }
                }
            })
            .unwrap()
            .join()
            .unwrap()
            .expect("the thread is listed under its name");
        assert_eq!(found.threads, 1);
        assert!(found.user_ms + found.system_ms >= 20, "{found:?}");
    }
}

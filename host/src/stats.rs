//! What the runtime measures per module instance besides the module's own heap counters: CPU
//! time of its threads (from `/proc`), request latency, recent request rates, and the handles of
//! the metrics a module registered. A leaf: the Prometheus exporter that renders them is the
//! control layer's (`accounting.rs`); this file only counts.
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

use metrics::Histogram;
use pedestal_module_api::abi::MetricKind;
use serde::Serialize;

use crate::ids::ModuleId;

/// Where an instance registers its per-request duration histogram: the base's exporter, which
/// the runtime knows only through this trait.
pub trait RequestMetrics {
    /// The `pedestal_module_request_duration_seconds` histogram of instance `id`.
    fn request_duration(&self, id: &ModuleId) -> Histogram;
}

/// User and system CPU time of a group of threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CpuTime {
    /// Milliseconds in user mode.
    pub user_ms: u64,
    /// Milliseconds in the kernel.
    pub system_ms: u64,
    /// Live threads counted.
    pub threads: u64,
}

/// One thread of this process, as `/proc/self/task/<tid>/stat` describes it.
pub struct TaskStat {
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
pub fn task_stat(tid: &str) -> Option<TaskStat> {
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
pub fn task_ids() -> Vec<String> {
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
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
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

    /// Every bucket's count: `counts()[i]` requests took at most 2^i microseconds (and more
    /// than 2^(i-1)), cumulative since the instance started.
    pub fn counts(&self) -> [u64; 40] {
        std::array::from_fn(|i| self.buckets[i].load(Relaxed))
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// A metric a module registered, recorded through the `record_metric` host callback.
pub struct ModuleMetric {
    pub name: String,
    pub kind: MetricKind,
    handle: ModuleMetricHandle,
}

/// The exporter's handle behind a [`ModuleMetric`], one per kind.
pub enum ModuleMetricHandle {
    /// A counter.
    Counter(metrics::Counter),
    /// A gauge.
    Gauge(metrics::Gauge),
    /// A histogram.
    Histogram(Histogram),
}

impl ModuleMetric {
    /// A registered metric: its name, its kind and the exporter's handle.
    pub fn new(name: String, kind: MetricKind, handle: ModuleMetricHandle) -> Self {
        Self { name, kind, handle }
    }

    /// Keeps the series from expiring while its instance lives (the exporter drops series
    /// that did not change for ten minutes, and a handle the module keeps would then record
    /// into nothing). A histogram cannot be touched without an observation: one that observes
    /// nothing for ten minutes is dropped and comes back with its next registration.
    pub fn touch(&self) {
        match &self.handle {
            ModuleMetricHandle::Counter(counter) => counter.increment(0),
            ModuleMetricHandle::Gauge(gauge) => gauge.increment(0.0),
            ModuleMetricHandle::Histogram(_) => {}
        }
    }

    /// Records a value: a counter adds it (whole units; negative values are ignored), a gauge
    /// takes it, a histogram observes it.
    pub fn record(&self, value: f64) {
        match &self.handle {
            ModuleMetricHandle::Counter(counter) if value > 0.0 => counter.increment(value.round() as u64),
            ModuleMetricHandle::Counter(_) => {}
            ModuleMetricHandle::Gauge(gauge) => gauge.set(value),
            ModuleMetricHandle::Histogram(histogram) => histogram.record(value),
        }
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
        // 100 µs is in (64, 128]: bucket 7; 5 ms in (4096, 8192]: bucket 13.
        let counts = latency.counts();
        assert_eq!((counts[7], counts[13]), (98, 2));
        assert_eq!(counts.iter().sum::<u64>(), 100);
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

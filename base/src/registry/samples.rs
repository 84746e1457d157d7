//! A small ring of recent samples per live instance: requests/s, 5xx/s, p50/p99 latency, heap
//! and CPU, one sample a second for the last five minutes. The console's charts and
//! `pedestal top` read it (`GET /api/v1/samples`).
//!
//! Each sample is the difference of the instance's cumulative counters between two ticks
//! (requests, 5xx, the latency histogram, CPU time of its threads), so a sample's latency is
//! that second's, not the instance's lifetime's. Bounded: [`KEPT`] samples an instance, and an
//! instance that is no longer live loses its ring at the next tick.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use super::Registry;
use crate::{
    instance::{Instance, State},
    stats::cpu_by_thread_name,
    sync::lock,
};

/// Samples kept per instance: five minutes at one a second.
pub(crate) const KEPT: usize = 300;
/// Ticks of the limit watcher (10 a second) between samples.
pub(crate) const TICKS_PER_SAMPLE: u64 = 10;

/// One second of one instance.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Sample {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub requests_per_s: f64,
    pub server_errors_per_s: f64,
    /// The latency of the requests answered in this interval (`None` without any), as the upper
    /// bound of its power-of-two bucket.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Live heap bytes at the sample.
    pub heap_bytes: Option<u64>,
    /// CPU time of the instance's threads over the interval, in percent of one core.
    pub cpu_percent: f64,
}

/// The recent samples of one instance, oldest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceSamples {
    pub name: String,
    pub version: String,
    pub state: State,
    pub samples: Vec<Sample>,
}

/// What one ring remembers between two ticks.
#[derive(Debug)]
struct Ring {
    /// The instance it samples: a reinstall under the same identity starts a new ring.
    instance: std::sync::Weak<Instance>,
    last: Counters,
    samples: VecDeque<Sample>,
}

/// An instance's cumulative counters at one tick.
#[derive(Debug, Clone, Copy)]
struct Counters {
    at: Instant,
    requests: u64,
    server_errors: u64,
    latency: [u64; 40],
    cpu_ms: u64,
}

impl Counters {
    fn of(instance: &Instance, cpu: &HashMap<String, crate::stats::CpuTime>) -> Self {
        let traffic = instance.traffic();
        let cpu = instance.cpu_from(cpu);
        Counters {
            at: Instant::now(),
            requests: traffic.requests,
            server_errors: traffic.server_errors,
            latency: instance.latency_histogram(),
            cpu_ms: cpu.user_ms + cpu.system_ms,
        }
    }

    /// The sample of the interval from `earlier` to `self`.
    fn since(&self, earlier: &Counters, heap_bytes: Option<u64>) -> Sample {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        let interval: [u64; 40] = std::array::from_fn(|i| self.latency[i].saturating_sub(earlier.latency[i]));
        Sample {
            at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            requests_per_s: self.requests.saturating_sub(earlier.requests) as f64 / seconds,
            server_errors_per_s: self.server_errors.saturating_sub(earlier.server_errors) as f64 / seconds,
            p50_us: quantile(&interval, 0.50),
            p99_us: quantile(&interval, 0.99),
            heap_bytes,
            cpu_percent: self.cpu_ms.saturating_sub(earlier.cpu_ms) as f64 / (seconds * 10.0),
        }
    }
}

/// The `q` quantile of a power-of-two microsecond histogram (`[i]`: requests of at most 2^i
/// µs), as its bucket's upper bound; `None` when it is empty.
fn quantile(histogram: &[u64; 40], q: f64) -> Option<u64> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    histogram.iter().enumerate().find_map(|(i, count)| {
        seen += count;
        (seen >= rank).then_some(1u64 << i)
    })
}

/// Every live instance's ring, by `name@version`.
#[derive(Debug, Default)]
pub(crate) struct Samples(HashMap<String, Ring>);

impl Registry {
    /// Takes one sample of every live instance (the limit watcher calls it once a second), and
    /// drops the rings of instances that are no longer live.
    pub(crate) fn take_samples(&self) {
        let live: Vec<Arc<Instance>> = self
            .all()
            .into_iter()
            .map(|(i, _)| i)
            .filter(|i| matches!(i.state(), State::Active | State::Inactive))
            .collect();
        let cpu = cpu_by_thread_name();
        let mut rings = lock(&self.samples);
        rings.0.retain(|_, ring| {
            ring.instance.upgrade().is_some_and(|i| matches!(i.state(), State::Active | State::Inactive))
        });
        for instance in live {
            let now = Counters::of(&instance, &cpu);
            let key = instance.id.to_string();
            let fresh =
                |now| Ring { instance: Arc::downgrade(&instance), last: now, samples: VecDeque::new() };
            let ring = rings.0.entry(key).or_insert_with(|| fresh(now));
            if !ring.instance.upgrade().is_some_and(|i| Arc::ptr_eq(&i, &instance)) {
                *ring = fresh(now);
                continue;
            }
            if now.at == ring.last.at {
                continue;
            }
            let sample = now.since(&ring.last, instance.heap().map(|h| h.live_bytes));
            ring.last = now;
            ring.samples.push_back(sample);
            if ring.samples.len() > KEPT {
                ring.samples.pop_front();
            }
        }
    }

    /// The recent samples of every live instance (of module `name` only, when given), oldest
    /// first, and only those taken after `since_ms` (milliseconds since the Unix epoch).
    pub fn samples(&self, name: Option<&str>, since_ms: u64) -> Vec<InstanceSamples> {
        let rings = lock(&self.samples);
        let mut found: Vec<InstanceSamples> = rings
            .0
            .values()
            .filter_map(|ring| {
                let instance = ring.instance.upgrade()?;
                if name.is_some_and(|n| n != instance.id.name) {
                    return None;
                }
                Some(InstanceSamples {
                    name: instance.id.name.clone(),
                    version: instance.id.version.to_string(),
                    state: instance.state(),
                    samples: ring.samples.iter().filter(|s| s.at_ms > since_ms).copied().collect(),
                })
            })
            .collect();
        found.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_the_upper_bound_of_their_bucket() {
        let mut histogram = [0u64; 40];
        assert_eq!(quantile(&histogram, 0.5), None);
        histogram[3] = 98; // ≤ 8 µs
        histogram[10] = 2; // ≤ 1024 µs
        assert_eq!((quantile(&histogram, 0.5), quantile(&histogram, 0.99)), (Some(8), Some(1024)));
        histogram[3] = 99;
        histogram[10] = 1;
        assert_eq!(quantile(&histogram, 0.99), Some(8));
    }
}

//! What the leader remembers of the bases' measurements, for rollout analysis: per base,
//! module, version and sha256, the last few minutes of cumulative samples (requests, 5xx,
//! latency histogram) taken from their status reports.
//!
//! A base's counters are cumulative per module instance; one going down means a new instance
//! (a restart), and the series carries on from the old total, so a delta never goes negative.
//! Memory is bounded: at most [`MAX_SAMPLES`] per series, and a series not reported for
//! [`FORGET_MS`] is dropped. Nothing is persisted: a fresh leader starts with no history, and
//! [`Samples::observed_since`] makes a step's window start at its first sample.

use std::collections::{BTreeMap, VecDeque};

use crate::{
    model::{BaseStatus, Measure, Release},
    rollout,
};

/// Samples kept per series (bases report every second: about two minutes, less while reports
/// on change come faster; [`crate::model::Analysis::MAX_WINDOW_MS`] follows from it).
pub(crate) const MAX_SAMPLES: usize = 120;
/// A series not reported for this long is forgotten.
pub(crate) const FORGET_MS: u64 = 5 * 60_000;

/// One cumulative sample.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sample {
    at_ms: u64,
    requests: u64,
    server_errors: u64,
    latency_us: Vec<u64>,
}

/// One instance's series: adjusted (monotonic) samples and the last raw one.
#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<Sample>,
    /// Whether older samples were dropped ([`MAX_SAMPLES`]): the first kept is not its start.
    trimmed: bool,
    last_raw: Sample,
    offset: Sample,
}

/// Key: (base, module, version, sha256).
type SeriesKey = (String, String, String, String);

/// The leader's samples.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    series: BTreeMap<SeriesKey, Series>,
    first_ms: Option<u64>,
}

impl Samples {
    /// Takes a sample of every module instance in `statuses` (those already sampled at their
    /// report's time are skipped), then forgets what went quiet.
    pub(crate) fn ingest<'a>(&mut self, statuses: impl IntoIterator<Item = &'a BaseStatus>, now_ms: u64) {
        for status in statuses {
            for m in &status.modules {
                let key = (status.base_id.clone(), m.name.clone(), m.version.clone(), m.sha256.clone());
                let series = self.series.entry(key).or_default();
                if series.samples.back().is_some_and(|s| s.at_ms >= status.at_ms) {
                    continue;
                }
                let raw = Sample {
                    at_ms: status.at_ms,
                    requests: m.requests,
                    server_errors: m.server_errors,
                    latency_us: m.latency_us.clone(),
                };
                if !series.samples.is_empty() && raw.requests < series.last_raw.requests {
                    // A new instance: it counts from 0 again, after everything the old one did.
                    series.offset = series.samples.back().cloned().unwrap_or_default();
                }
                let adjusted = Sample {
                    at_ms: raw.at_ms,
                    requests: series.offset.requests + raw.requests,
                    server_errors: series.offset.server_errors + raw.server_errors,
                    latency_us: add(&series.offset.latency_us, &raw.latency_us),
                };
                series.last_raw = raw;
                series.samples.push_back(adjusted);
                if series.samples.len() > MAX_SAMPLES {
                    series.samples.pop_front();
                    series.trimmed = true;
                }
                self.first_ms.get_or_insert(status.at_ms);
            }
        }
        self.series.retain(|_, s| s.samples.back().is_some_and(|last| last.at_ms + FORGET_MS >= now_ms));
    }

    /// Series held (for tests and bounds).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.series.len()
    }
}

impl rollout::Metrics for Samples {
    fn window(&self, module: &str, release: &Release, from_ms: u64, to_ms: u64) -> Measure {
        let mut total = Sample::default();
        for ((_, m, version, sha256), series) in &self.series {
            if m != module || *version != release.version || *sha256 != release.sha256 {
                continue;
            }
            let inside: Vec<&Sample> =
                series.samples.iter().filter(|s| s.at_ms >= from_ms && s.at_ms <= to_ms).collect();
            let Some(last) = inside.last() else { continue };
            let before = series.samples.iter().rev().find(|s| s.at_ms < from_ms);
            let start = match before {
                Some(before) => before.clone(),
                // First seen inside the window while this controller was already watching: a
                // new instance, counted from 0 (unless what came before was dropped: then the
                // window is measured from its oldest kept sample, never over a lifetime).
                None if !series.trimmed && self.first_ms.is_some_and(|first| first < inside[0].at_ms) => {
                    Sample::default()
                }
                None => inside[0].clone(),
            };
            total.requests += last.requests.saturating_sub(start.requests);
            total.server_errors += last.server_errors.saturating_sub(start.server_errors);
            total.latency_us = add(&total.latency_us, &sub(&last.latency_us, &start.latency_us));
        }
        Measure {
            requests: total.requests,
            server_errors: total.server_errors,
            p99_us: p99(&total.latency_us),
        }
    }

    fn observed_since(&self) -> Option<u64> {
        self.first_ms
    }
}

fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
    (0..a.len().max(b.len()))
        .map(|i| a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0))
        .collect()
}

fn sub(a: &[u64], b: &[u64]) -> Vec<u64> {
    (0..a.len()).map(|i| a[i].saturating_sub(b.get(i).copied().unwrap_or(0))).collect()
}

/// The 99th percentile of a power-of-two histogram: the upper bound (2^i µs) of the bucket
/// holding it.
pub(crate) fn p99(histogram: &[u64]) -> Option<u64> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total * 99).div_ceil(100);
    let mut seen = 0;
    for (i, count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(1u64 << i.min(63));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::ModuleStatus, rollout::Metrics as _};

    fn status(
        base: &str,
        at_ms: u64,
        version: &str,
        requests: u64,
        errors: u64,
        latency: &[u64],
    ) -> BaseStatus {
        BaseStatus {
            base_id: base.into(),
            at_ms,
            modules: vec![ModuleStatus {
                name: "m".into(),
                version: version.into(),
                sha256: "s".into(),
                state: "active".into(),
                serving: true,
                health: "healthy".into(),
                reason: None,
                heap_bytes: 0,
                cpu_millis: 0,
                requests,
                managed: true,
                server_errors: errors,
                latency_us: latency.to_vec(),
                rps: 0.0,
                weight: None,
            }],
            ..Default::default()
        }
    }

    fn release(version: &str) -> Release {
        Release { version: version.into(), sha256: "s".into(), url: None }
    }

    #[test]
    fn windows_sum_deltas_over_bases_and_survive_restarts() {
        let mut samples = Samples::default();
        samples.ingest([&status("b1", 1_000, "1", 100, 1, &[100])], 1_000);
        samples.ingest(
            [&status("b1", 3_000, "1", 150, 2, &[140, 10]), &status("b2", 3_000, "1", 0, 0, &[])],
            3_000,
        );
        // b1 restarted (counters back near 0), b2 served 40 with 10 errors.
        samples.ingest(
            [&status("b1", 5_000, "1", 20, 0, &[20]), &status("b2", 5_000, "1", 40, 10, &[0, 0, 40])],
            5_000,
        );
        let whole = samples.window("m", &release("1"), 2_000, 5_000);
        assert_eq!(whole.requests, 50 + 20 + 40, "{whole:?}");
        assert_eq!(whole.server_errors, 1 + 10);
        assert_eq!(whole.p99_us, Some(4), "40 of 110 took up to 4µs");
        assert_eq!(samples.window("m", &release("2"), 0, 5_000), Measure::default());
        assert_eq!(samples.observed_since(), Some(1_000));
        // The same report twice is one sample.
        samples.ingest([&status("b2", 5_000, "1", 40, 10, &[0, 0, 40])], 5_000);
        assert_eq!(samples.window("m", &release("1"), 2_000, 5_000), whole);
    }

    #[test]
    fn memory_is_bounded() {
        let mut samples = Samples::default();
        for i in 0..(MAX_SAMPLES as u64 * 2) {
            samples.ingest([&status("b1", i * 10, "1", i, 0, &[i])], i * 10);
        }
        assert_eq!(samples.series.values().next().unwrap().samples.len(), MAX_SAMPLES);
        // A window older than what is kept is measured from the oldest kept sample, not from 0.
        let last = MAX_SAMPLES as u64 * 2 - 1;
        let oldest = last - MAX_SAMPLES as u64 + 1;
        assert_eq!(samples.window("m", &release("1"), 0, last * 10).requests, last - oldest);
        samples.ingest([&status("b2", FORGET_MS * 3, "1", 1, 0, &[])], FORGET_MS * 3);
        assert_eq!(samples.len(), 1, "b1 went quiet and is forgotten");
    }

    #[test]
    fn p99_is_a_bucket_bound() {
        assert_eq!(p99(&[]), None);
        assert_eq!(p99(&[99, 1]), Some(1));
        assert_eq!(p99(&[98, 0, 2]), Some(4));
    }
}

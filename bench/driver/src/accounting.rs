//! The cost of accounting: the same module served by two bench bases side by side, one with
//! accounting on (the module's counting allocator, the base's per-request latency histogram,
//! Prometheus duration histogram and recent error-rate window) and one with all of it off (the
//! module built with `pedestal-module-api/bench-no-heap-accounting`, the base started with
//! `--request-accounting off`). Request counters and CPU/heap sampling stay on in both.
//!
//! Rounds alternate between the two bases, and the order within a pair of rounds alternates
//! too (on-off, off-on, ...), so drift on a shared machine falls on both. The result is
//! reported, never asserted: on two shared cores the noise is of the order of the effect.

use std::time::Duration;

use anyhow::Context;

use crate::{BaseProcess, Options, Run, load, median};

/// One side of the comparison.
struct Side {
    base: BaseProcess,
    name: String,
    version: String,
}

impl Side {
    fn start(options: &Options, module: &[u8], args: &[&str]) -> anyhow::Result<Self> {
        let base = BaseProcess::start_with(&options.base, args)?;
        let installed = base.install(module)?;
        let name = installed["name"].as_str().context("name")?.to_owned();
        let version = installed["version"].as_str().context("version")?.to_owned();
        Ok(Self { base, name, version })
    }

    fn url(&self, handler: &str) -> String {
        format!("{}/{}/{handler}", self.base.traffic, self.name)
    }

    /// One round of load, with the base's CPU time per request over it.
    fn round(&self, handler: &str, options: &Options, duration: Duration) -> anyhow::Result<(Run, f64)> {
        let cpu = self.base.cpu_seconds()?;
        let run = load(&self.url(handler), options.connections, duration)?;
        let cpu_us = (self.base.cpu_seconds()? - cpu) * 1e6 / run.requests.max(1) as f64;
        Ok((run, cpu_us))
    }

    /// What the base says it accounted: (heap allocations counted, requests in the recent
    /// error-rate window, whether it has a latency summary, requests counted).
    fn accounted(&self) -> anyhow::Result<(u64, u64, bool, u64)> {
        let described: serde_json::Value =
            self.base.admin("GET", &format!("/api/v1/modules/{}", self.name)).call()?.into_json()?;
        let version = &described["versions"][0];
        let traffic = &version["traffic"];
        Ok((
            version["heap"]["allocations"].as_u64().unwrap_or(0),
            traffic["recent"]["requests"].as_u64().unwrap_or(0),
            !traffic["latency"].is_null(),
            traffic["requests"].as_u64().unwrap_or(0),
        ))
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.base.uninstall(&self.name, &self.version);
    }
}

/// Medians over the rounds of one side and handler.
struct Summary {
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    errors: u64,
}

fn summarize(rounds: &[(Run, f64)]) -> Summary {
    Summary {
        rps: median(rounds.iter().map(|(r, _)| r.rps()).collect()),
        p50: median(rounds.iter().map(|(r, _)| r.latency.value_at_quantile(0.5) as f64).collect()),
        p99: median(rounds.iter().map(|(r, _)| r.latency.value_at_quantile(0.99) as f64).collect()),
        cpu_us: median(rounds.iter().map(|(_, cpu)| *cpu).collect()),
        errors: rounds.iter().map(|(r, _)| r.errors).sum(),
    }
}

pub(crate) fn run(options: &Options, module: &[u8], unaccounted: &[u8]) -> anyhow::Result<String> {
    let on = Side::start(options, module, &[])?;
    let off = Side::start(options, unaccounted, &["--request-accounting", "off"])?;
    let (rounds, round) = (options.accounting_rounds, options.accounting_round);
    let mut out = format!(
        "## Accounting overhead: accounting on vs off\n\n\
         Two bench bases side by side serve the same module: one with accounting on (the \
         module's counting allocator; the base's per-request latency histogram, Prometheus \
         duration histogram and recent error-rate window), one with all of it off (the module \
         built with `pedestal-module-api/bench-no-heap-accounting`, the base started with \
         `--request-accounting off`). Request counters and CPU/heap sampling stay on in both. \
         {} keep-alive connections, closed loop; {rounds} alternating rounds of {:.1} s per side \
         (order alternating within each pair); medians of the rounds. Base CPU is user + system \
         time of the base process (which runs the module too) per request. Overhead = 1 − on/off \
         req/s, the median over pairs of neighbouring rounds, with the range over the pairs.\n\n\
         | handler | accounting | req/s | p50 µs | p99 µs | base CPU µs/req | errors | overhead |\n\
         |---|---|---|---|---|---|---|---|\n",
        options.connections,
        round.as_secs_f64(),
    );
    let mut overheads = Vec::new();
    for handler in ["empty", "work"] {
        load(&on.url(handler), options.connections, Duration::from_millis(300))?;
        load(&off.url(handler), options.connections, Duration::from_millis(300))?;
        let (mut on_runs, mut off_runs) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            if i % 2 == 0 {
                on_runs.push(on.round(handler, options, round)?);
                off_runs.push(off.round(handler, options, round)?);
            } else {
                off_runs.push(off.round(handler, options, round)?);
                on_runs.push(on.round(handler, options, round)?);
            }
        }
        // Paired: each "on" round against the "off" round next to it in time.
        let mut ratios: Vec<f64> =
            on_runs.iter().zip(&off_runs).map(|(a, b)| a.0.rps() / b.0.rps()).collect();
        ratios.sort_by(f64::total_cmp);
        let (a, b) = (summarize(&on_runs), summarize(&off_runs));
        let overhead = 1.0 - median(ratios.clone());
        let (low, high) = (1.0 - ratios[ratios.len() - 1], 1.0 - ratios[0]);
        out += &format!(
            "| `/{handler}` | off | {:.0} | {:.0} | {:.0} | {:.1} | {} | |\n",
            b.rps, b.p50, b.p99, b.cpu_us, b.errors
        );
        out += &format!(
            "| `/{handler}` | on | {:.0} | {:.0} | {:.0} | {:.1} | {} | **{:.1}%** ({:.1}% … {:.1}%) |\n",
            a.rps,
            a.p50,
            a.p99,
            a.cpu_us,
            a.errors,
            overhead * 100.0,
            low * 100.0,
            high * 100.0
        );
        overheads.push((handler, overhead, a.cpu_us / b.cpu_us - 1.0));
    }
    let (on_heap, on_recent, on_latency, on_requests) = on.accounted()?;
    let (off_heap, off_recent, off_latency, off_requests) = off.accounted()?;
    let (on_rss, off_rss) = (on.base.rss_kib()? as f64 / 1024.0, off.base.rss_kib()? as f64 / 1024.0);
    let verdict = if overheads.iter().all(|(_, o, _)| *o <= 0.05) { "met" } else { "not met" };
    let list = |f: &dyn Fn(f64, f64) -> f64| {
        let each: Vec<String> =
            overheads.iter().map(|(h, o, c)| format!("`/{h}` {:+.1}%", f(*o, *c) * 100.0)).collect();
        each.join(", ")
    };
    out += &format!(
        "\nTarget ≤ 5% throughput overhead: **{verdict}** in this run ({}). Base CPU per request, \
         on vs off: {}.\n\n\
         The switch worked, as the bases report it: with accounting on, {on_heap} heap allocations \
         counted, {on_recent} requests in the recent error-rate window, latency summary {}, over \
         {on_requests} requests; off: {off_heap}, {off_recent}, {}, over {off_requests} requests. \
         Base RSS after the rounds: on {on_rss:.1} MiB, off {off_rss:.1} MiB.\n\n",
        list(&|o, _| o),
        list(&|_, c| c),
        if on_latency { "present" } else { "absent" },
        if off_latency { "present" } else { "absent" },
    );
    Ok(out)
}

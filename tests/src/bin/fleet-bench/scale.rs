//! `fleet-bench --scale`: the fleet's metadata at size. `modules` specs of one replica each over
//! `bases` real bases (every module is the `fx-versioned` 1.0.0 build installed under its own
//! name), and what that costs etcd: the largest transaction the leader committed (operations and
//! bytes, from its own counters), the snapshot pages a pass reads, the number and largest of
//! the keys, etcd's database size, and its watchers (every base watches its own assignments and
//! the endpoints; controllers the prefix).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use pedestal_tests::{artifacts, etcd::Etcd, fleet::Fleet};
use serde_json::json;

/// What one scale run measured.
pub struct Scale {
    bases: usize,
    modules: usize,
    start: Duration,
    all_serving: Duration,
    one_change: Duration,
    keys: usize,
    value_bytes: usize,
    largest_key: (String, usize),
    db_bytes: f64,
    watchers: f64,
    controller: serde_json::Value,
}

impl Scale {
    /// The report's section.
    pub fn render(&self, out: &mut String) -> std::fmt::Result {
        let c = &self.controller;
        writeln!(out, "## Metadata at scale: {} modules × {} bases\n", self.modules, self.bases)?;
        writeln!(out, "| measure | value |\n|---|---|")?;
        writeln!(out, "| bases started and registered | {:.1} s |", self.start.as_secs_f64())?;
        writeln!(
            out,
            "| {} specs applied (one PUT each) → every replica serving | {:.1} s |",
            self.modules,
            self.all_serving.as_secs_f64()
        )?;
        writeln!(
            out,
            "| one spec changed at that size → its replica serving it | {:.0} ms |",
            ms(self.one_change)
        )?;
        writeln!(
            out,
            "| keys under the prefix | {} ({:.1} MiB of values) |",
            self.keys,
            mib(self.value_bytes)
        )?;
        writeln!(
            out,
            "| largest value | {} ({:.1} KiB) |",
            self.largest_key.0,
            self.largest_key.1 as f64 / 1024.0
        )?;
        writeln!(out, "| etcd database size | {:.1} MiB |", self.db_bytes / (1 << 20) as f64)?;
        writeln!(out, "| etcd watchers | {} |", self.watchers)?;
        writeln!(
            out,
            "| largest leader transaction | {} operations, {:.1} KiB (etcd's limits: 128, 1.5 MiB) |",
            c["max_txn_ops"],
            c["max_txn_bytes"].as_f64().unwrap_or(0.0) / 1024.0
        )?;
        writeln!(out, "| snapshot read | {} pages of ≤ 1000 keys |", c["snapshot_pages"])?;
        writeln!(
            out,
            "| leader passes, transactions, operations | {} / {} / {} |",
            c["passes"], c["txns"], c["ops"]
        )?;
        writeln!(out)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Runs it.
pub fn measure(bases: usize, modules: usize) -> anyhow::Result<Scale> {
    let started = Instant::now();
    let per_base = modules.div_ceil(bases) + 4;
    let max_modules = per_base.to_string();
    let extra = ["--max-connections", "32", "--admin-max-connections", "16", "--max-modules", &max_modules];
    let fleet = Fleet::start_on(Etcd::single(), 1, bases, |_| Vec::new(), &extra);
    let start = started.elapsed();
    eprintln!("{bases} bases registered in {start:?}");
    let sha = super::push(&fleet, artifacts::VERSIONED_1_0_0)?;
    let sha_b = super::push(&fleet, artifacts::VERSIONED_1_1_0)?;
    let names: Vec<String> = (0..modules).map(|i| format!("m{i:04}")).collect();
    let t0 = Instant::now();
    for name in &names {
        let spec = json!({
            "name": name, "version": "1.0.0", "sha256": sha, "replicas": 1,
            "resources": { "memory_bytes": 4 << 20, "cpu_millis": 1 },
        });
        let reply = fleet.controller().api("PUT", &format!("/api/v1/specs/{name}"), Some(&spec));
        if reply.status != 200 {
            bail!("PUT {name}: {reply:?}");
        }
    }
    eprintln!("{modules} specs written in {:?}", t0.elapsed());
    let deadline = Duration::from_secs(600);
    loop {
        let status = fleet.controller().status();
        let ready = ready_by_module(&status);
        let done = names
            .iter()
            .filter(|n| ready.get(n.as_str()).is_some_and(|(v, r)| v == "1.0.0" && *r >= 1))
            .count();
        if done == modules {
            break;
        }
        if t0.elapsed() > deadline {
            bail!("{done} of {modules} modules serving after {deadline:?}");
        }
        eprintln!("{done} of {modules} serving after {:?}", t0.elapsed());
        std::thread::sleep(Duration::from_secs(2));
    }
    let all_serving = t0.elapsed();
    eprintln!("every replica serving in {all_serving:?}");

    // One change at that size: the pass reads everything.
    let name = &names[modules / 2];
    let spec = json!({
        "name": name, "version": "1.1.0", "sha256": sha_b, "replicas": 1,
        "resources": { "memory_bytes": 4 << 20, "cpu_millis": 1 },
        "rollout": { "steps": [{ "bases": "100%" }], "max_unavailable": 1, "analysis": { "window_ms": 0 } },
    });
    let t1 = Instant::now();
    let reply = fleet.controller().api("PUT", &format!("/api/v1/specs/{name}"), Some(&spec));
    if reply.status != 200 {
        bail!("PUT {name} 1.1.0: {reply:?}");
    }
    loop {
        let view = fleet.controller().module_status(name);
        let serving = view["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["serving"] == true && r["version"] == "1.1.0");
        if serving {
            break;
        }
        if t1.elapsed() > Duration::from_secs(60) {
            bail!("{name} did not serve 1.1.0 within 60 s: {view}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let one_change = t1.elapsed();

    let entries = fleet.etcd.get_prefix("/pedestal/");
    let keys = entries.len();
    let value_bytes = entries.iter().map(|(_, v)| v.len()).sum();
    let largest_key = entries
        .iter()
        .max_by_key(|(_, v)| v.len())
        .map(|(k, v)| (k.clone(), v.len()))
        .context("some keys")?;
    let metrics = ureq::get(&format!("{}/metrics", fleet.etcd.endpoint(0))).call()?.into_string()?;
    let gauge = |name: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let leader = fleet.wait_for_leader();
    let controller = fleet.controllers[leader].api("GET", "/api/v1/leader", None).json["reconcile"].clone();
    Ok(Scale {
        bases,
        modules,
        start,
        all_serving,
        one_change,
        keys,
        value_bytes,
        largest_key,
        db_bytes: gauge("etcd_mvcc_db_total_size_in_bytes "),
        watchers: gauge("etcd_debugging_mvcc_watcher_total "),
        controller,
    })
}

/// Each module's spec version and ready count, from the fleet status.
fn ready_by_module(status: &serde_json::Value) -> BTreeMap<&str, (String, u64)> {
    status["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((m["name"].as_str()?, (m["version"].as_str()?.to_owned(), m["ready"].as_u64().unwrap_or(0))))
        })
        .collect()
}

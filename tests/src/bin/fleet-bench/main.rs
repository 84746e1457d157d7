//! The fleet benchmark (`cargo xtask bench fleet [--quick]`): real etcd, two real controllers
//! and 10, 50 and 100 real `pedestal serve --fleet` bases (`--supervisor off`, small connection
//! caps), measured from outside over HTTP and through etcd's own `/metrics`:
//!
//! - apply → every replica acknowledged serving: a `peer` spec on every base, switched to a new
//!   version each repeat (the first apply also ships the artifact to every base);
//! - `kill -9` of a base → its replica serving elsewhere (a `replicas` spec);
//! - controller failover: `kill -9` of the leader → the standby leads;
//! - etcd traffic per placement: etcd's put/txn/delete counters and gRPC bytes around each
//!   apply, and the idle rate (status reports) over the same time for comparison.
//!
//! - metadata at scale ([`scale`]): 1000 one-replica modules over 100 bases (`--quick`: 50
//!   over 5), the largest transaction and value, etcd's database size and watchers.
//! - rollouts ([`rollout`]) over 100 bases (`--quick`: 5): a rollout 1 → 25% → 100% with no
//!   pauses, timed per step from the record's events; the rollback of a version failing a
//!   fifth of its requests under load; the autoscaler's reaction to a load step, with bases
//!   reporting every 2 s and every 1 s side by side.
//!
//! Usage: `fleet-bench [--quick] [--sizes 10,50,100] [--repeats N] [--scale BASES,MODULES]
//! [--no-scale] [--rollout BASES] [--rollout-repeats N] [--no-rollout] [--out FILE]`.

mod rollout;
mod scale;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use pedestal_tests::{
    artifacts,
    etcd::Etcd,
    fleet::{Fleet, TOKEN, serving_replicas},
};
use serde_json::json;

/// Every base's extra `serve` arguments: small connection caps, so 100 bases fit the machine.
const BASE_ARGS: &[&str] = &["--max-connections", "64", "--admin-max-connections", "32"];

/// The etcd counters read around each apply.
const COUNTERS: &[&str] = &[
    "etcd_mvcc_put_total",
    "etcd_mvcc_txn_total",
    "etcd_mvcc_delete_total",
    "etcd_network_client_grpc_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let sizes: Vec<usize> = match value("--sizes") {
        Some(list) => list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("--sizes")?,
        None if quick => vec![10],
        None => vec![10, 50, 100],
    };
    let repeats: usize =
        value("--repeats").map(|r| r.parse()).transpose()?.unwrap_or(if quick { 3 } else { 8 });
    let kills = if quick { 1 } else { 3 };
    let mut report = String::new();
    writeln!(report, "# Fleet benchmark\n")?;
    writeln!(
        report,
        "{} CPUs; etcd 1 node; 2 controllers; bases `--supervisor off`; {repeats} applies and {kills} base kills per size (`--sizes`).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    let scale_size: Option<(usize, usize)> = match value("--scale") {
        _ if args.iter().any(|a| a == "--no-scale") => None,
        Some(pair) => {
            let (b, m) = pair.split_once(',').context("--scale BASES,MODULES")?;
            Some((b.parse().context("--scale bases")?, m.parse().context("--scale modules")?))
        }
        None if quick => Some((5, 50)),
        None => Some((100, 1000)),
    };
    let rollout_bases: Option<usize> = match value("--rollout") {
        _ if args.iter().any(|a| a == "--no-rollout") => None,
        Some(n) => Some(n.parse().context("--rollout BASES")?),
        None if quick => Some(5),
        None => Some(100),
    };
    let rollout_repeats: usize = value("--rollout-repeats")
        .map(|r| r.parse())
        .transpose()
        .context("--rollout-repeats")?
        .unwrap_or(if quick { 2 } else { 5 });
    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("== {n} bases");
        rows.push(measure(n, repeats, kills)?);
    }
    if !rows.is_empty() {
        write_rows(&mut report, &rows)?;
    }
    if let Some((bases, modules)) = scale_size {
        eprintln!("== metadata: {modules} modules over {bases} bases");
        writeln!(report)?;
        scale::measure(bases, modules)?.render(&mut report)?;
    }
    if let Some(bases) = rollout_bases {
        eprintln!("== rollouts over {bases} bases");
        let repeats = rollout::Repeats {
            rollouts: rollout_repeats,
            rollbacks: if quick { 1 } else { 3 },
            scales: rollout_repeats,
        };
        writeln!(report)?;
        rollout::measure(bases, &repeats, BASE_ARGS)?.render(&mut report)?;
    }
    print!("{report}");
    let out = value("--out").unwrap_or_else(|| "target/release/bench-fleet-results.md".into());
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &report).with_context(|| format!("writing {out}"))?;
    eprintln!("written to {out}");
    Ok(())
}

/// The sizes' table.
fn write_rows(report: &mut String, rows: &[Row]) -> std::fmt::Result {
    writeln!(
        report,
        "| bases | start all (s) | first apply, with transfer (ms) | apply → all serving p50 (ms) | p99 (ms) | max (ms) | kill -9 → re-placed p50 (ms) | max (ms) | failover (ms) | etcd puts+txns / apply | per replica | gRPC KiB / apply | idle puts+txns over the same time |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for row in rows {
        writeln!(report, "{row}")?;
    }
    Ok(())
}

/// One size's numbers, as a table row.
struct Row {
    bases: usize,
    start: Duration,
    first: Duration,
    applies: Vec<Duration>,
    kills: Vec<Duration>,
    failover: Duration,
    ops_per_apply: f64,
    bytes_per_apply: f64,
    idle_ops: f64,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "| {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} |",
            self.bases,
            self.start.as_secs_f64(),
            ms(self.first),
            ms(percentile(&self.applies, 0.50)),
            ms(percentile(&self.applies, 0.99)),
            ms(percentile(&self.applies, 1.0)),
            ms(percentile(&self.kills, 0.50)),
            ms(percentile(&self.kills, 1.0)),
            ms(self.failover),
            self.ops_per_apply,
            self.ops_per_apply / self.bases as f64,
            self.bytes_per_apply / 1024.0,
            self.idle_ops,
        )
    }
}

/// Nearest-rank percentile.
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn measure(n: usize, repeats: usize, kills: usize) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut fleet = Fleet::start_on(Etcd::single(), 2, n, |_| Vec::new(), BASE_ARGS);
    let start = started.elapsed();
    eprintln!("{n} bases registered in {start:?}");
    let metrics_url = format!("{}/metrics", fleet.etcd.endpoint(0));

    // The versions a peer spec cycles through (each apply is a change).
    let versions = [
        ("1.0.0", artifacts::VERSIONED_1_0_0),
        ("1.1.0", artifacts::VERSIONED_1_1_0),
        ("2.0.0", artifacts::VERSIONED_2_0_0),
    ];
    // Push every artifact first, so later applies measure placement and the switch, and the
    // first one the transfer to every base too.
    let mut shas = BTreeMap::new();
    for (version, path) in versions {
        shas.insert(version, push(&fleet, path)?);
    }
    let mut applies = Vec::new();
    let mut first = Duration::ZERO;
    let (mut ops, mut bytes) = (0.0, 0.0);
    let mut window = Duration::ZERO;
    for i in 0..=repeats {
        let (version, _) = versions[i % versions.len()];
        let spec =
            json!({ "name": "fx-versioned", "version": version, "sha256": shas[version], "peer": true });
        let before = counters(&metrics_url)?;
        let t0 = Instant::now();
        let reply = fleet.controller().api("PUT", "/api/v1/specs/fx-versioned", Some(&spec));
        if reply.status != 200 {
            bail!("PUT spec: {reply:?}");
        }
        wait_all_serving(&fleet, "fx-versioned", version, n, Duration::from_secs(120))?;
        let took = t0.elapsed();
        let after = counters(&metrics_url)?;
        eprintln!("apply {version} → {n} serving in {took:?}");
        if i == 0 {
            first = took;
        } else {
            applies.push(took);
            ops += delta(
                &before,
                &after,
                &["etcd_mvcc_put_total", "etcd_mvcc_txn_total", "etcd_mvcc_delete_total"],
            );
            bytes += delta(
                &before,
                &after,
                &[
                    "etcd_network_client_grpc_received_bytes_total",
                    "etcd_network_client_grpc_sent_bytes_total",
                ],
            );
            window += took;
        }
    }
    let applied = applies.len().max(1) as f64;
    // What the fleet writes to etcd when nothing changes (status reports), over as long as
    // the applies took together.
    let idle_window = window.max(Duration::from_secs(2));
    let before = counters(&metrics_url)?;
    std::thread::sleep(idle_window);
    let after = counters(&metrics_url)?;
    let idle_ops =
        delta(&before, &after, &["etcd_mvcc_put_total", "etcd_mvcc_txn_total", "etcd_mvcc_delete_total"])
            * window.as_secs_f64()
            / idle_window.as_secs_f64()
            / applied;

    // kill -9 of a base hosting a replicated module → served elsewhere.
    let replicas = (n / 5).max(2);
    let spec = json!({ "name": "fx-good", "version": "0.1.0", "sha256": push(&fleet, artifacts::GOOD)?, "replicas": replicas });
    let reply = fleet.controller().api("PUT", "/api/v1/specs/fx-good", Some(&spec));
    if reply.status != 200 {
        bail!("PUT fx-good: {reply:?}");
    }
    wait_all_serving(&fleet, "fx-good", "0.1.0", replicas, Duration::from_secs(60))?;
    let mut kill_times = Vec::new();
    for _ in 0..kills {
        let hosting = serving_replicas(&fleet.controller().module_status("fx-good"));
        let victim = hosting.first().context("a base hosting fx-good")?.clone();
        let at = fleet.bases.iter().position(|b| b.id() == victim).context("the victim")?;
        let t0 = Instant::now();
        fleet.bases[at].kill9();
        fleet.bases.remove(at);
        loop {
            let view = fleet.controller().module_status("fx-good");
            let serving = serving_replicas(&view);
            if serving.len() == replicas && !serving.contains(&victim) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the killed base's replica was not re-placed in 60 s: {view}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = t0.elapsed();
        eprintln!("kill -9 {victim} → re-placed in {took:?}");
        kill_times.push(took);
    }

    // Controller failover.
    let leader = fleet.wait_for_leader();
    let t0 = Instant::now();
    fleet.controllers[leader].kill9();
    let standby = 1 - leader;
    while !fleet.controllers[standby].leading() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the standby did not lead within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let failover = t0.elapsed();
    eprintln!("failover in {failover:?}");
    drop(fleet);
    Ok(Row {
        bases: n,
        start,
        first,
        applies,
        kills: kill_times,
        failover,
        ops_per_apply: ops / applied,
        bytes_per_apply: bytes / applied,
        idle_ops,
    })
}

/// Pushes an artifact (`POST /api/v1/artifacts`); its sha256.
fn push(fleet: &Fleet, path: &str) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let answer: serde_json::Value = ureq::post(&format!("{}/api/v1/artifacts", fleet.controller().url()))
        .set("authorization", &format!("Bearer {TOKEN}"))
        .send_bytes(&bytes)
        .with_context(|| format!("pushing {path}"))?
        .into_json()?;
    Ok(answer["sha256"].as_str().context("the push answers the sha256")?.to_owned())
}

/// Polls the fleet status (every 10 ms) until `want` replicas report serving `version`.
fn wait_all_serving(
    fleet: &Fleet,
    module: &str,
    version: &str,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let view = fleet.controller().module_status(module);
        let serving = view["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["serving"] == true && r["version"] == version)
            .count();
        if view["version"] == version && serving == want {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("{module} {version}: {serving} of {want} serving after {timeout:?}: {view}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sums of each counter of [`COUNTERS`] in etcd's `/metrics`.
fn counters(url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = ureq::get(url).timeout(Duration::from_secs(5)).call()?.into_string()?;
    let mut sums = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        if COUNTERS.contains(&name) {
            let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            *sums.entry(name.to_owned()).or_insert(0.0) += value;
        }
    }
    Ok(sums)
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, names: &[&str]) -> f64 {
    names.iter().map(|n| after.get(*n).unwrap_or(&0.0) - before.get(*n).unwrap_or(&0.0)).sum()
}

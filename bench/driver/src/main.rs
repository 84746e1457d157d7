//! `pedestal-bench`: measures a real base process side by side. Run with `cargo xtask bench`
//! (add `--quick` for a short smoke run).
//!
//! 1. Throughput and latency of the same handlers served natively by the base (`/native/...`)
//!    and from a module (`/bench-module/...`), in alternating rounds under the same load.
//! 2. SPI round trips: base → module → base against a direct in-process call, and a fan-out to
//!    10 modules (see `spi.rs`).
//! 3. The cost of accounting: the module's throughput with accounting on (heap counting in the
//!    module, per-request accounting in the base) against a base and module with both off, in
//!    alternating rounds (`--unaccounted-module PATH`, see `accounting.rs`).
//! 4. Install latency: upload sent → first request served, plus the base's own install time.
//! 5. Install/uninstall cycles: RSS growth of the base, and whether every cycle unmapped.
//!
//! `--density`, `--lifecycle` and `--supervision` run the other benchmarks instead (see their
//! files).

mod accounting;
mod density;
mod lifecycle;
mod spi;
mod supervision;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

struct Options {
    base: PathBuf,
    module: PathBuf,
    /// The same module built without heap accounting (feature `bench-no-heap-accounting`).
    unaccounted: Option<PathBuf>,
    round: Duration,
    rounds: usize,
    accounting_round: Duration,
    accounting_rounds: usize,
    connections: usize,
    installs: usize,
    cycles: usize,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let quick = args.iter().any(|a| a == "--quick");
    if args.iter().any(|a| a == "--density") {
        let options = density::Density {
            base: value("--base").context("--base PATH is required")?.into(),
            native: value("--native").context("--native PATH is required")?.into(),
            module: value("--module").context("--module PATH is required")?.into(),
            instances: if quick { 50 } else { 1000 },
            merged: if quick { vec![3] } else { vec![10, 50] },
            round: Duration::from_millis(if quick { 300 } else { 3000 }),
        };
        let report = density::run(&options)?;
        println!("{report}");
        let out = options.module.parent().unwrap().join("bench-density-results.md");
        std::fs::write(&out, &report)?;
        eprintln!("(also written to {})", out.display());
        return Ok(());
    }
    if args.iter().any(|a| a == "--lifecycle") {
        let options = lifecycle::Lifecycle {
            base: value("--base").context("--base PATH is required")?.into(),
            old: value("--module").context("--module PATH is required")?.into(),
            new: value("--new-module").context("--new-module PATH is required")?.into(),
            switches: if quick { 20 } else { 100 },
            modules: if quick { 10 } else { 100 },
            windows: if quick { 2 } else { 10 },
        };
        let report = lifecycle::run(&options)?;
        println!("{report}");
        let out = options.old.parent().unwrap().join("bench-lifecycle-results.md");
        std::fs::write(&out, &report)?;
        eprintln!("(also written to {})", out.display());
        return Ok(());
    }
    if args.iter().any(|a| a == "--supervision") {
        let options = supervision::Supervision {
            pedestal: value("--pedestal").context("--pedestal PATH is required")?.into(),
            module: value("--module").context("--module PATH is required")?.into(),
            crashy: value("--crashy").context("--crashy PATH is required")?.into(),
            sizes: if quick { vec![1, 10] } else { vec![1, 10, 100] },
            rounds: if quick { 2 } else { 5 },
            loaded_crashes: if quick { 2 } else { 10 },
            clients: 8,
        };
        let report = supervision::run(&options)?;
        println!("{report}");
        let out = options.module.parent().unwrap().join("bench-supervision-results.md");
        std::fs::write(&out, &report)?;
        eprintln!("(also written to {})", out.display());
        return Ok(());
    }
    if let Some(url) = value("--load") {
        // Load only, for profiling a running base: `pedestal-bench --load URL [--seconds N]`.
        let seconds = value("--seconds").map_or(Ok(5), |s| s.parse())?;
        let run = load(&url, 16, Duration::from_secs(seconds))?;
        println!(
            "{:.0} req/s, p50 {} µs, errors {}",
            run.rps(),
            run.latency.value_at_quantile(0.5),
            run.errors
        );
        return Ok(());
    }
    let options = Options {
        base: value("--base").context("--base PATH is required")?.into(),
        module: value("--module").context("--module PATH is required")?.into(),
        unaccounted: value("--unaccounted-module").map(PathBuf::from),
        round: Duration::from_millis(if quick { 300 } else { 3000 }),
        rounds: if quick { 1 } else { 3 },
        accounting_round: Duration::from_millis(if quick { 300 } else { 1000 }),
        accounting_rounds: if quick { 2 } else { 15 },
        connections: 16,
        installs: if quick { 20 } else { 200 },
        cycles: if quick { 30 } else { 1000 },
    };
    let base = BaseProcess::start(&options.base)?;
    let module = std::fs::read(&options.module)?;
    let mut report = String::new();
    report += &throughput(&base, &module, &options)?;
    report += &spi::run(&base, &options.module, if quick { 500 } else { 20_000 })?;
    if let Some(unaccounted) = &options.unaccounted {
        report += &accounting::run(&options, &module, &std::fs::read(unaccounted)?)?;
    }
    report += &install_latency(&base, &module, &options)?;
    report += &cycles(&base, &module, &options)?;
    println!("{report}");
    let out = options.module.parent().unwrap().join("bench-results.md");
    std::fs::write(&out, &report)?;
    eprintln!("(also written to {})", out.display());
    Ok(())
}

/// The operations token a base generated into `<data>/admin-token` (written before it is ready).
pub(crate) fn read_token(data: &std::path::Path) -> anyhow::Result<String> {
    let file = data.join("admin-token");
    let token = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(token.trim().to_owned())
}

/// The benchmark base, running as its own process.
pub(crate) struct BaseProcess {
    child: Child,
    pub(crate) traffic: String,
    admin: String,
    /// The operations token the base generated into `<data>/admin-token`.
    token: String,
    data: PathBuf,
    program: PathBuf,
}

impl BaseProcess {
    pub(crate) fn start(binary: &PathBuf) -> anyhow::Result<Self> {
        Self::start_with(binary, &[])
    }

    /// Starts `binary DATA_DIR ARGS...` with a data directory of its own.
    pub(crate) fn start_with(binary: &PathBuf, args: &[&str]) -> anyhow::Result<Self> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let data = std::env::temp_dir().join(format!("pedestal-bench-{}-{n}", std::process::id()));
        Self::start_at(binary, &data, args)
    }

    /// Starts `binary DATA_DIR ARGS...` on the given data directory (it may hold a base's state).
    pub(crate) fn start_at(binary: &PathBuf, data: &std::path::Path, args: &[&str]) -> anyhow::Result<Self> {
        let data = data.to_owned();
        let mut child = Command::new(binary).arg(&data).args(args).stdout(Stdio::piped()).spawn()?;
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready)?;
        let words: Vec<&str> = ready.split_whitespace().collect();
        let after = |key: &str| {
            words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).map(|s| s.to_string())
        };
        let (Some(traffic), Some(admin)) = (after("traffic"), after("operations")) else {
            bail!("unexpected ready line {ready:?}");
        };
        let token = read_token(&data)?;
        Ok(Self { child, traffic, admin, token, data, program: binary.clone() })
    }

    /// An operations API request (`path` under its address) with the token.
    pub(crate) fn admin(&self, method: &str, path: &str) -> ureq::Request {
        ureq::request(method, &format!("{}{path}", self.admin))
            .set("authorization", &format!("Bearer {}", self.token))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many entries `/proc/<pid>/<kind>` has (`task`: threads, `fd`: open descriptors).
    pub(crate) fn count(&self, kind: &str) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/{kind}", self.child.id()))?.count())
    }

    /// Installs the module file at `path` (read by the base) under `name`. Path installs read
    /// from `<data-dir>/incoming/` only: a file elsewhere is copied there first (once per name).
    pub(crate) fn install_path_as(&self, path: &std::path::Path, name: &str) -> anyhow::Result<Value> {
        let path = stage_in_incoming(&self.data, path)?;
        let body = serde_json::json!({ "path": path }).to_string();
        let response = self
            .admin("POST", &format!("/api/v1/modules?name={name}"))
            .set("content-type", "application/json")
            .send_string(&body)?;
        Ok(response.into_json()?)
    }

    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }

    /// CPU time the process has used so far (user + system, all threads), in seconds.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name; utime and stime are fields 14 and 15 of the whole line.
        let fields: Vec<&str> = stat.rsplit_once(')').context("stat format")?.1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // USER_HZ, 100 on every Linux the benchmark runs on.
        Ok(ticks as f64 / 100.0)
    }

    fn install(&self, module: &[u8]) -> anyhow::Result<Value> {
        let response = self
            .admin("POST", "/api/v1/modules")
            .set("content-type", "application/octet-stream")
            .send_bytes(module)?;
        Ok(response.into_json()?)
    }

    pub(crate) fn uninstall(&self, name: &str, version: &str) -> anyhow::Result<Value> {
        Ok(self.admin("DELETE", &format!("/api/v1/modules/{name}/{version}")).call()?.into_json()?)
    }
}

impl Drop for BaseProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.data.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

pub(crate) struct Run {
    requests: u64,
    errors: u64,
    seconds: f64,
    pub(crate) latency: Histogram<u64>,
}

impl Run {
    pub(crate) fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// Adds another run's requests, errors, time and latencies to this one.
    pub(crate) fn absorb(&mut self, other: Run) -> anyhow::Result<()> {
        self.requests += other.requests;
        self.errors += other.errors;
        self.seconds += other.seconds;
        self.latency.add(other.latency)?;
        Ok(())
    }
}

/// Closed-loop load on one URL (see [`load_many`]).
fn load(url: &str, connections: usize, duration: Duration) -> anyhow::Result<Run> {
    load_many(&[url.to_owned()], connections, duration)
}

/// Closed-loop load: `connections` keep-alive connections, each sending its next request as
/// soon as the previous answer arrived, for `duration`, walking round-robin over `urls`. The
/// client runs on one thread.
pub(crate) fn load_many(urls: &[String], connections: usize, duration: Duration) -> anyhow::Result<Run> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(connections).build_http();
        let uris = urls.iter().map(|u| u.parse::<hyper::Uri>()).collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for connection in 0..connections {
            let (client, uris) = (client.clone(), uris.clone());
            tasks.push(tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).expect("histogram");
                let (mut requests, mut errors) = (0u64, 0u64);
                let mut next = connection;
                while Instant::now() < deadline {
                    let uri = uris[next % uris.len()].clone();
                    next += 1;
                    let sent = Instant::now();
                    let ok = match client.get(uri).await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            ok && response.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    latency.saturating_record(sent.elapsed().as_micros() as u64);
                    requests += 1;
                    errors += u64::from(!ok);
                }
                (requests, errors, latency)
            }));
        }
        let mut run = Run { requests: 0, errors: 0, seconds: 0.0, latency: Histogram::new(3)? };
        for task in tasks {
            let (requests, errors, latency) = task.await?;
            run.requests += requests;
            run.errors += errors;
            run.latency.add(latency)?;
        }
        run.seconds = started.elapsed().as_secs_f64();
        Ok(run)
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn throughput(base: &BaseProcess, module: &[u8], options: &Options) -> anyhow::Result<String> {
    let installed = base.install(module)?;
    let name = installed["name"].as_str().unwrap_or("bench-module").to_owned();
    let work_us = {
        let mut samples: Vec<f64> = (0..2000)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(bench_handlers::work());
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let mut out = format!(
        "## Throughput: module vs the same handler compiled into the base\n\n\
         {} keep-alive connections, closed loop, one client thread on the same machine; {} alternating \
         rounds of {:.1} s per variant; medians of the rounds. `/work` computes for {work_us:.1} µs \
         (median, measured natively).\n\n\
         | handler | variant | req/s | p50 µs | p99 µs | errors | module/native req/s |\n|---|---|---|---|---|---|---|\n",
        options.connections,
        options.rounds,
        options.round.as_secs_f64()
    );
    for handler in ["empty", "work"] {
        let native_url = format!("{}/native/{handler}", base.traffic);
        let module_url = format!("{}/{name}/{handler}", base.traffic);
        load(&native_url, options.connections, Duration::from_millis(300))?;
        load(&module_url, options.connections, Duration::from_millis(300))?;
        let (mut native, mut moduled) = (Vec::new(), Vec::new());
        for _ in 0..options.rounds {
            native.push(load(&native_url, options.connections, options.round)?);
            moduled.push(load(&module_url, options.connections, options.round)?);
        }
        let summary = |runs: &[Run]| {
            (
                median(runs.iter().map(Run::rps).collect()),
                median(runs.iter().map(|r| r.latency.value_at_quantile(0.5) as f64).collect()),
                median(runs.iter().map(|r| r.latency.value_at_quantile(0.99) as f64).collect()),
                runs.iter().map(|r| r.errors).sum::<u64>(),
            )
        };
        let (n_rps, n_p50, n_p99, n_err) = summary(&native);
        let (m_rps, m_p50, m_p99, m_err) = summary(&moduled);
        out += &format!("| `/{handler}` | native | {n_rps:.0} | {n_p50:.0} | {n_p99:.0} | {n_err} | |\n");
        out += &format!(
            "| `/{handler}` | module | {m_rps:.0} | {m_p50:.0} | {m_p99:.0} | {m_err} | **{:.2}** |\n",
            m_rps / n_rps
        );
    }
    base.uninstall(&name, installed["version"].as_str().unwrap_or("0.1.0"))?;
    Ok(out + "\n")
}

pub(crate) fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn install_latency(base: &BaseProcess, module: &[u8], options: &Options) -> anyhow::Result<String> {
    let (mut end_to_end, mut server) = (Vec::new(), Vec::new());
    for _ in 0..options.installs {
        let sent = Instant::now();
        let installed = base.install(module)?;
        let name = installed["name"].as_str().context("name")?.to_owned();
        let version = installed["version"].as_str().context("version")?.to_owned();
        loop {
            if ureq::get(&format!("{}/{name}/empty", base.traffic)).call().is_ok() {
                break;
            }
        }
        end_to_end.push(sent.elapsed().as_secs_f64() * 1000.0);
        server.push(installed["install_ms"].as_f64().context("install_ms")?);
        base.uninstall(&name, &version)?;
    }
    Ok(format!(
        "## Install latency ({} installs of a {:.1} MiB module)\n\n\
         | measure | p50 ms | p99 ms |\n|---|---|---|\n\
         | upload sent → first request served (client side, includes the upload over loopback) | {:.2} | {:.2} |\n\
         | upload received → module started and routed (base side: hash, store, dlopen, checks, start) | {:.2} | {:.2} |\n\n",
        options.installs,
        module.len() as f64 / (1024.0 * 1024.0),
        percentile(&mut end_to_end, 0.5),
        percentile(&mut end_to_end, 0.99),
        percentile(&mut server, 0.5),
        percentile(&mut server, 0.99),
    ))
}

fn cycles(base: &BaseProcess, module: &[u8], options: &Options) -> anyhow::Result<String> {
    let cycle = || -> anyhow::Result<bool> {
        let installed = base.install(module)?;
        let name = installed["name"].as_str().context("name")?.to_owned();
        let version = installed["version"].as_str().context("version")?.to_owned();
        ureq::get(&format!("{}/{name}/empty", base.traffic)).call()?;
        let removed = base.uninstall(&name, &version)?;
        Ok(removed["state"] == "stopped" && removed["mapped"] == false)
    };
    for _ in 0..20 {
        cycle()?;
    }
    let before = base.rss_kib()?;
    let started = Instant::now();
    let mut unmapped = 0;
    for _ in 0..options.cycles {
        unmapped += usize::from(cycle()?);
    }
    let elapsed = started.elapsed();
    let after = base.rss_kib()?;
    Ok(format!(
        "## Install/uninstall cycles\n\n\
         | cycles | unmapped every time | RSS before | RSS after | growth | per cycle |\n|---|---|---|---|---|---|\n\
         | {} | {unmapped}/{} | {:.1} MiB | {:.1} MiB | {:.2} MiB | {:.2} ms |\n\n\
         Each cycle installs the module, serves one request, uninstalls it and checks the reply says \
         `stopped` and `mapped: false`; RSS is read from `/proc/<pid>/status` after 20 warm-up cycles.\n",
        options.cycles,
        options.cycles,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after as f64 - before as f64) / 1024.0,
        elapsed.as_secs_f64() * 1000.0 / options.cycles as f64,
    ))
}

/// `path` inside `<data>/incoming/`, where a base's path installs may read: copied there unless
/// it already is (a copy made earlier under the same file name is reused).
pub(crate) fn stage_in_incoming(data: &std::path::Path, path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let incoming = data.join("incoming");
    if path.starts_with(&incoming) {
        return Ok(path.to_owned());
    }
    let staged = incoming.join(path.file_name().context("a module file name")?);
    if !staged.exists() {
        std::fs::create_dir_all(&incoming)?;
        std::fs::copy(path, &staged)?;
    }
    Ok(staged)
}

//! `cargo xtask bench density`: many instances in one base, and merged vs separate processes.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{BaseProcess, load_many};

/// Options of a density run.
pub struct Density {
    pub base: PathBuf,
    pub native: PathBuf,
    pub module: PathBuf,
    pub instances: usize,
    pub merged: Vec<usize>,
    pub round: Duration,
}

pub fn run(options: &Density) -> anyhow::Result<String> {
    let mut out = many_instances(options)?;
    out += &merged_vs_separate(options)?;
    Ok(out)
}

/// Installs `options.instances` copies of the module under distinct names into one base.
fn many_instances(options: &Density) -> anyhow::Result<String> {
    let base = BaseProcess::start(&options.base)?;
    std::thread::sleep(Duration::from_millis(300));
    let idle = base.rss_kib()?;
    let install = |i: usize| base.install_path_as(&options.module, &format!("d-{i}"));
    let started = Instant::now();
    install(0)?;
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    let probe = format!("{}/d-0/empty", base.traffic);
    let with_one = load_many(std::slice::from_ref(&probe), 4, options.round)?;
    let started = Instant::now();
    for i in 1..options.instances {
        install(i)?;
    }
    let rest = started.elapsed();
    let total_s = rest.as_secs_f64() + first_ms / 1000.0;
    std::thread::sleep(Duration::from_secs(1));
    let full = base.rss_kib()?;
    let (threads, fds) = (base.count("task")?, base.count("fd")?);
    let with_all = load_many(std::slice::from_ref(&probe), 4, options.round)?;
    let started = Instant::now();
    for i in 0..options.instances {
        let removed = base.uninstall(&format!("d-{i}"), "0.1.0")?;
        if removed["state"] != "stopped" {
            bail!("d-{i} ended {} instead of stopped", removed["state"]);
        }
    }
    let uninstall_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let after = base.rss_kib()?;
    let p50 = |run: &crate::Run| run.latency.value_at_quantile(0.5);
    let p99 = |run: &crate::Run| run.latency.value_at_quantile(0.99);
    let n = options.instances;
    Ok(format!(
        "## {n} instances in one base\n\n\
         The same module installed {n} times under different names (`?name=d-<i>`), each its own \
         library copy, thread and tokio runtime.\n\n\
         | measure | value |\n|---|---|\n\
         | install all {n} (sequential, from a file path) | {total_s:.2} s ({:.2} ms each) |\n\
         | base RSS idle, empty | {:.1} MiB |\n\
         | base RSS with {n} idle instances | {:.1} MiB |\n\
         | RSS per idle instance | **{:.0} KiB** |\n\
         | threads / open fds with {n} instances | {threads} / {fds} |\n\
         | `/d-0/empty` with 1 installed: p50 / p99 (4 connections) | {} µs / {} µs ({:.0} req/s) |\n\
         | `/d-0/empty` with {n} installed: p50 / p99 | {} µs / {} µs ({:.0} req/s) |\n\
         | p50 with {n} / p50 with 1 | **{:.2}** |\n\
         | uninstall all {n} | {uninstall_s:.2} s |\n\
         | base RSS after uninstalling all | {:.1} MiB ({:+.1} MiB vs idle) |\n\n",
        total_s * 1000.0 / n as f64,
        idle as f64 / 1024.0,
        full as f64 / 1024.0,
        (full as f64 - idle as f64) / n as f64,
        p50(&with_one),
        p99(&with_one),
        with_one.rps(),
        p50(&with_all),
        p99(&with_all),
        with_all.rps(),
        p50(&with_all) as f64 / p50(&with_one) as f64,
        after as f64 / 1024.0,
        (after as f64 - idle as f64) / 1024.0,
    ))
}

/// N copies of the same small service: N separate native processes against N modules in one
/// base, measured one after the other in the same run.
fn merged_vs_separate(options: &Density) -> anyhow::Result<String> {
    let mut out = String::from(
        "## Merged vs separate\n\n\
         N copies of the same service (the `/work` handler, ~20 µs of CPU): N separate minimal \
         axum processes (`bench-native`, tokio's default runtime) against N modules in one base. \
         Memory is the sum over the processes (RSS, and PSS, which splits shared pages fairly); \
         throughput is 16 connections spreading requests round-robin over the N services.\n\n\
         | N | separate RSS | separate PSS | merged RSS | merged PSS | memory merged/separate (PSS) | separate req/s | merged req/s | throughput merged/separate |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for &n in &options.merged {
        let natives: Vec<Native> =
            (0..n).map(|_| Native::start(&options.native)).collect::<anyhow::Result<_>>()?;
        std::thread::sleep(Duration::from_millis(300));
        let urls: Vec<String> = natives.iter().map(|s| format!("http://{}/work", s.addr)).collect();
        let separate = load_many(&urls, 16, options.round)?;
        let separate_rss: u64 =
            natives.iter().map(|s| memory(s.child.id(), "Rss:")).sum::<anyhow::Result<u64>>()?;
        let separate_pss: u64 =
            natives.iter().map(|s| memory(s.child.id(), "Pss:")).sum::<anyhow::Result<u64>>()?;
        drop(natives);

        let base = BaseProcess::start(&options.base)?;
        for i in 0..n {
            base.install_path_as(&options.module, &format!("m-{i}"))?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let urls: Vec<String> = (0..n).map(|i| format!("{}/m-{i}/work", base.traffic)).collect();
        let merged = load_many(&urls, 16, options.round)?;
        let merged_rss = memory(base.pid(), "Rss:")?;
        let merged_pss = memory(base.pid(), "Pss:")?;
        drop(base);
        let mib = |kib: u64| kib as f64 / 1024.0;
        out += &format!(
            "| {n} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | **{:.2}** | {:.0} | {:.0} | **{:.2}** |\n",
            mib(separate_rss),
            mib(separate_pss),
            mib(merged_rss),
            mib(merged_pss),
            merged_pss as f64 / separate_pss as f64,
            separate.rps(),
            merged.rps(),
            merged.rps() / separate.rps(),
        );
    }
    Ok(out + "\n")
}

/// One `bench-native` process.
struct Native {
    child: Child,
    addr: String,
}

impl Native {
    fn start(binary: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(binary).stdout(Stdio::piped()).spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let addr = line.strip_prefix("listening ").context("bench-native's first line")?.trim().to_owned();
        Ok(Self { child, addr })
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` line of `/proc/<pid>/smaps_rollup` (`Rss:` or `Pss:`).
fn memory(pid: u32, key: &str) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let line = rollup.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key} for {pid}"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

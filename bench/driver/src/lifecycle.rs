//! `cargo xtask bench lifecycle`: what versions cost while traffic flows.
//!
//! 1. Switch latency: `POST .../switch` round trip (client side) and the base's own `switch_ms`.
//! 2. Failed requests across 100 switches and 100 replace-deploys under continuous load (must be
//!    0).
//! 3. Installing a new version while the old one serves: the old version's latency in windows
//!    with an install (and uninstall) of the new version, against windows without, alternating.
//! 4. Restart to ready: a base with 100 installed modules killed with SIGKILL and started again
//!    on the same data directory, against an empty base started the same way.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{BaseProcess, Run, load_many, percentile};

/// What `pedestal-bench --lifecycle` needs.
pub struct Lifecycle {
    /// The benchmark base binary.
    pub base: PathBuf,
    /// The benchmark module at version 0.1.0 (the workspace's).
    pub old: PathBuf,
    /// The same module at version 0.2.0.
    pub new: PathBuf,
    /// Switches and replace-deploys under load.
    pub switches: usize,
    /// Modules installed before the restart.
    pub modules: usize,
    /// Alternating windows with and without an install.
    pub windows: usize,
}

pub fn run(options: &Lifecycle) -> anyhow::Result<String> {
    let old = std::fs::read(&options.old)?;
    let new = std::fs::read(&options.new)?;
    let mut out = String::from("## Lifecycle\n\n");
    out += &switching(options, &old, &new)?;
    out += &install_while_serving(options, &old, &new)?;
    out += &restart_to_ready(options, &old)?;
    Ok(out)
}

fn post_json(base: &BaseProcess, path: &str, body: &Value) -> anyhow::Result<Value> {
    let request = base.admin("POST", path).set("content-type", "application/json");
    Ok(request.send_string(&body.to_string())?.into_json()?)
}

fn install_query(base: &BaseProcess, module: &[u8], query: &str) -> anyhow::Result<Value> {
    let response = base
        .admin("POST", &format!("/api/v1/modules?{query}"))
        .set("content-type", "application/octet-stream")
        .send_bytes(module)?;
    Ok(response.into_json()?)
}

/// Runs `load` on another thread while `work` runs here; returns both.
fn under_load<T>(url: &str, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Run)> {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let loader = scope.spawn(|| {
            let mut total: Option<Run> = None;
            while !stop.load(Ordering::Relaxed) {
                let run = load_many(&[url.to_owned()], 8, Duration::from_millis(200))?;
                total = Some(match total {
                    None => run,
                    Some(mut t) => {
                        t.absorb(run)?;
                        t
                    }
                });
            }
            total.context("no load ran")
        });
        let result = work();
        stop.store(true, Ordering::Relaxed);
        let run = loader.join().expect("the load thread")?;
        Ok((result?, run))
    })
}

fn switching(options: &Lifecycle, old: &[u8], new: &[u8]) -> anyhow::Result<String> {
    let base = BaseProcess::start(&options.base)?;
    let installed = install_query(&base, old, "")?;
    let name = installed["name"].as_str().context("name")?.to_owned();
    let (v_old, v_new) = (installed["version"].as_str().context("version")?.to_owned(), {
        let other = install_query(&base, new, "")?;
        other["version"].as_str().context("version")?.to_owned()
    });
    let url = format!("{}/{name}/empty", base.traffic);
    let switch_path = format!("/api/v1/modules/{name}/switch");
    let ((client_ms, base_ms), switch_run) = under_load(&url, || {
        let (mut client, mut server) = (Vec::new(), Vec::new());
        for i in 0..options.switches {
            let to = if i % 2 == 0 { &v_new } else { &v_old };
            let sent = Instant::now();
            let reply = post_json(&base, &switch_path, &json!({ "version": to }))?;
            client.push(sent.elapsed().as_secs_f64() * 1000.0);
            server.push(reply["switch_ms"].as_f64().context("switch_ms")?);
            // Spread the switches over the load (a switch alone takes well under a millisecond).
            thread::sleep(Duration::from_millis(5));
        }
        Ok((client, server))
    })?;
    // Replace-deploys: each installs the other version with strategy=replace, which switches to
    // it and drains and unloads the one that was active.
    let active = |base: &BaseProcess| -> anyhow::Result<String> {
        let module: Value = base.admin("GET", &format!("/api/v1/modules/{name}")).call()?.into_json()?;
        Ok(module["active_version"].as_str().unwrap_or_default().to_owned())
    };
    let inactive = if active(&base)? == v_old { &v_new } else { &v_old };
    base.uninstall(&name, inactive)?;
    let (replace_ms, replace_run) = under_load(&url, || {
        let mut took = Vec::new();
        for _ in 0..options.switches {
            let module = if active(&base)? == v_old { new } else { old };
            let sent = Instant::now();
            install_query(&base, module, "strategy=replace")?;
            took.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(took)
    })?;
    let (mut client_ms, mut base_ms, mut replace_ms) = (client_ms, base_ms, replace_ms);
    Ok(format!(
        "### Switching under load\n\n\
         8 keep-alive connections on `/{name}/empty` throughout; {n} switches between two running \
         versions, 5 ms apart, then {n} replace-deploys (install the other version with `strategy=replace`: \
         switch to it, drain and unload the old one).\n\n\
         | measure | p50 | p99 |\n|---|---|---|\n\
         | switch, client round trip (ms) | {:.3} | {:.3} |\n\
         | switch, base side: table swap plus the durable state write (ms) | {:.4} | {:.4} |\n\
         | replace-deploy, client round trip (ms) | {:.2} | {:.2} |\n\n\
         | phase | requests | failed |\n|---|---|---|\n\
         | {n} switches | {} | **{}** |\n\
         | {n} replace-deploys | {} | **{}** |\n\n",
        percentile(&mut client_ms, 0.5),
        percentile(&mut client_ms, 0.99),
        percentile(&mut base_ms, 0.5),
        percentile(&mut base_ms, 0.99),
        percentile(&mut replace_ms, 0.5),
        percentile(&mut replace_ms, 0.99),
        switch_run.requests,
        switch_run.errors,
        replace_run.requests,
        replace_run.errors,
        n = options.switches,
    ))
}

fn install_while_serving(options: &Lifecycle, old: &[u8], new: &[u8]) -> anyhow::Result<String> {
    let base = BaseProcess::start(&options.base)?;
    let installed = install_query(&base, old, "")?;
    let name = installed["name"].as_str().context("name")?.to_owned();
    let url = format!("{}/{name}/work", base.traffic);
    load_many(std::slice::from_ref(&url), 8, Duration::from_millis(300))?;
    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    let mut install_ms = Vec::new();
    for _ in 0..options.windows {
        let (_, run) = under_load(&url, || {
            thread::sleep(Duration::from_millis(600));
            Ok(())
        })?;
        quiet.push(run);
        let (took, run) = under_load(&url, || {
            thread::sleep(Duration::from_millis(100));
            let sent = Instant::now();
            let other = install_query(&base, new, "")?;
            let took = sent.elapsed().as_secs_f64() * 1000.0;
            let version = other["version"].as_str().context("version")?.to_owned();
            base.uninstall(&name, &version)?;
            thread::sleep(Duration::from_millis(100));
            Ok(took)
        })?;
        install_ms.push(took);
        busy.push(run);
    }
    let sum = |runs: Vec<Run>| -> anyhow::Result<Run> {
        let mut runs = runs.into_iter();
        let mut total = runs.next().context("no windows")?;
        for run in runs {
            total.absorb(run)?;
        }
        Ok(total)
    };
    let (quiet, busy) = (sum(quiet)?, sum(busy)?);
    let row = |what: &str, run: &Run| {
        format!(
            "| {what} | {:.0} | {} | {} | {} |\n",
            run.rps(),
            run.latency.value_at_quantile(0.5),
            run.latency.value_at_quantile(0.99),
            run.errors
        )
    };
    Ok(format!(
        "### Installing a new version while the old one serves\n\n\
         8 connections on the active version's `/work` ({} alternating windows of each kind); in \
         the busy windows the other version is installed (inactive) and uninstalled again. The \
         install took p50 {:.2} ms.\n\n\
         | window | req/s | p50 µs | p99 µs | failed |\n|---|---|---|---|---|\n{}{}\n",
        options.windows,
        percentile(&mut install_ms, 0.5),
        row("no install", &quiet),
        row("install + uninstall of the new version", &busy),
    ))
}

fn restart_to_ready(options: &Lifecycle, module: &[u8]) -> anyhow::Result<String> {
    let (mut empty_ms, mut full_ms) = (Vec::new(), Vec::new());
    let mut base = BaseProcess::start(&options.base)?;
    let file = base.data.join("module.so");
    std::fs::create_dir_all(&base.data)?;
    std::fs::write(&file, module)?;
    for i in 0..options.modules {
        base.install_path_as(&file, &format!("m{i}"))?;
    }
    for _ in 0..3 {
        let empty = Instant::now();
        drop(BaseProcess::start(&options.base)?);
        empty_ms.push(empty.elapsed().as_secs_f64() * 1000.0);
        let (restarted, ms) = base.kill_and_restart()?;
        base = restarted;
        full_ms.push(ms);
    }
    let listed: Value = base.admin("GET", "/api/v1/modules").call()?.into_json()?;
    let running =
        listed["modules"].as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "active").count());
    Ok(format!(
        "### Restart to ready\n\n\
         SIGKILL, then the same binary on the same data directory, until its `pedestal ready` line \
         (state restored, every module started and routed); 3 restarts, medians.\n\n\
         | base | ready after (ms) |\n|---|---|\n\
         | empty | {:.0} |\n| {} installed modules ({running} active after the last restart) | **{:.0}** |\n\n",
        percentile(&mut empty_ms, 0.5),
        options.modules,
        percentile(&mut full_ms, 0.5),
    ))
}

impl BaseProcess {
    /// SIGKILLs the base and starts it again on the same data directory; returns it and how long
    /// it took from the start to its ready line.
    fn kill_and_restart(mut self) -> anyhow::Result<(BaseProcess, f64)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let data = self.data.clone();
        let program = self.program.clone();
        // Keep the data directory: forget this handle's cleanup.
        self.data = PathBuf::new();
        drop(self);
        let started = Instant::now();
        let restarted = BaseProcess::start_at(&program, &data, &[])?;
        Ok((restarted, started.elapsed().as_secs_f64() * 1000.0))
    }
}

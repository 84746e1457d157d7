//! `cargo xtask test`: everything CI runs, on a fresh machine. Installs the pinned tools the
//! suite needs, then checks formatting and lints, runs every test and a quick benchmark.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{cargo, exec};

/// cargo-generate 0.25/0.26 do not build on Rust 1.95; 0.23.14 does (DESIGN.md).
const CARGO_GENERATE_VERSION: &str = "0.23.14";

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    ensure_cargo_generate()?;
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    exec(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    let mut tests = cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("PEDESTAL_TEMPLATE_TEST", "1")
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(tests.stdout.take().expect("piped stdout")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += count(result, " passed");
            failed += count(result, " failed");
        }
    }
    let status = tests.wait()?;
    if status.success() {
        // A short benchmark run, so the benchmark cannot rot (its numbers are not judged here).
        crate::bench::run(&["--quick".to_owned()])?;
        crate::bench::run(&["density".to_owned(), "--quick".to_owned()])?;
        crate::bench::run(&["lifecycle".to_owned(), "--quick".to_owned()])?;
        crate::bench::run(&["supervision".to_owned(), "--quick".to_owned()])?;
        crate::bench::run(&["fleet".to_owned(), "--quick".to_owned()])?;
    }
    // One closing line for the whole workspace, rather than the last crate's.
    println!("summary: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

/// The number before `label` in a `test result:` line (`ok. 12 passed; 0 failed; ...`).
fn count(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| {
            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(label)
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn ensure_cargo_generate() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["generate", "--version"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed.contains(CARGO_GENERATE_VERSION) {
        return Ok(());
    }
    eprintln!("installing cargo-generate {CARGO_GENERATE_VERSION} (about 4 minutes on two cores)");
    exec(Command::new("cargo").args([
        "install",
        &format!("cargo-generate@{CARGO_GENERATE_VERSION}"),
        "--locked",
        "--no-default-features",
    ]))
}

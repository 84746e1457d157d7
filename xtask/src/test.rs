//! `cargo xtask test`: everything CI runs, on a fresh machine. Installs the pinned tools and the
//! Debian packages the suite needs (etcd for the fleet tests, protoc for the `etcd-client`
//! crate's build), then checks formatting and lints, runs every test and a quick benchmark.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{cargo, exec};

/// cargo-generate 0.25/0.26 do not build on Rust 1.95; 0.23.14 does (DESIGN.md).
const CARGO_GENERATE_VERSION: &str = "0.23.14";

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    ensure_debian_packages()?;
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
        crate::bench::run(&["devloop".to_owned(), "--quick".to_owned()])?;
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

/// The Debian packages the suite needs, each with what shows it is there without dpkg: etcd 3.4
/// for the tests' real etcd processes, protoc with protobuf's well-known types, which the
/// `etcd-client` crate's build script compiles its protos with (DESIGN.md, Tooling), haproxy for
/// the fleet's load balancer test, promtool to lint `/metrics`, Chromium and ChromeDriver for
/// the console's browser tests, and tmux for `pedestal top`'s.
const DEBIAN_PACKAGES: &[(&str, Present)] = &[
    ("etcd-server", Present::Command("etcd")),
    ("etcd-client", Present::Command("etcdctl")),
    ("haproxy", Present::Command("haproxy")),
    ("protobuf-compiler", Present::Command("protoc")),
    ("libprotobuf-dev", Present::File("/usr/include/google/protobuf/descriptor.proto")),
    ("prometheus", Present::Command("promtool")),
    ("chromium", Present::File("/usr/bin/chromium")),
    ("chromium-driver", Present::File("/usr/bin/chromedriver")),
    ("tmux", Present::Command("tmux")),
];

/// What shows a package's part is on the machine.
#[derive(Clone, Copy)]
enum Present {
    /// A command on `PATH`.
    Command(&'static str),
    /// A file it installs.
    File(&'static str),
}

/// Installs whichever of [`DEBIAN_PACKAGES`] is missing with apt (as root, or through sudo); a
/// no-op when all are present. `apt-get update` runs only when a first install failed (a stale
/// or empty package list), so a machine that has everything never touches the network.
pub fn ensure_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(name, present)| !is_present(name, *present))
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").stdout(Stdio::null()).status().is_err() {
        bail!("missing {}: install them (Debian's package names; no apt-get here)", missing.join(" "));
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let apt = || {
        let mut command = if is_root() { Command::new("apt-get") } else { sudo_apt() };
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    let install = || {
        let mut command = apt();
        command.args(["install", "-y", "--no-install-recommends"]).args(&missing);
        command
    };
    if install().status().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    eprintln!("apt-get install failed; updating the package lists and trying again");
    exec(apt().arg("update"))?;
    exec(&mut install())
}

fn is_present(package: &str, present: Present) -> bool {
    let dpkg = Command::new("dpkg-query").args(["-W", "-f=${Status}", package]).output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with("install ok installed")
    });
    dpkg || match present {
        Present::Command(command) => std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file())),
        Present::File(file) => std::path::Path::new(file).is_file(),
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn sudo_apt() -> Command {
    let mut command = Command::new("sudo");
    command.arg("apt-get");
    command
}

pub fn ensure_cargo_generate() -> anyhow::Result<()> {
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

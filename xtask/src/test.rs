//! `cargo xtask test`: everything CI runs, on a fresh machine. Installs the pinned tools the
//! suite needs, then checks formatting and lints and runs every test.

use std::process::Command;

use crate::{cargo, exec};

/// cargo-generate 0.25/0.26 do not build on Rust 1.95; 0.23.14 does (DESIGN.md).
const CARGO_GENERATE_VERSION: &str = "0.23.14";

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    ensure_cargo_generate()?;
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    exec(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    exec(cargo().args(["test", "--workspace"]).env("PEDESTAL_TEMPLATE_TEST", "1"))?;
    Ok(())
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

//! `cargo xtask <command>`: the project's developer commands.
//!
//! - `demo`   — build the base and the example modules, start the base, deploy the examples, print what to try;
//!   `demo --fleet`: etcd, a controller and three bases, the examples applied to the fleet.
//! - `deploy` — build a module in release and install it into a running base.
//! - `test`   — install the pinned tools the suite needs, then run fmt, clippy and every test (what CI runs).
//! - `bench`  — run the benchmarks and print their tables (see BENCHMARKS.md).

mod bench;
mod bench_devloop;
mod bench_fleet;
mod demo;
mod demo_fleet;
mod deploy;
mod test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

fn main() {
    if let Err(e) = dispatch() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "demo" => demo::run(&rest),
        "deploy" => deploy::run(&rest),
        "rollback" => deploy::rollback(&rest),
        "test" => test::run(&rest),
        "bench" => bench::run(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 demo [--fleet]               start a base (or a local fleet) with the example modules deployed\n  \
                 deploy <dir|package> [--admin URL] [--token T] [--sign KEY] [--inactive] [--allow-downgrade] [--watch]\n                               \
                 build a module (release) and deploy it into a running base (see deploy.rs)\n  \
                 deploy --sha256 HEX [--name N]  install an artifact still in the base's store again\n  \
                 rollback NAME                return a module to the build it ran before the last switch or replace\n  \
                 test                         install pinned tools, run fmt, clippy and all tests (CI)\n  \
                 bench                        run the benchmarks"
            );
            if command.is_empty() || command == "help" || command == "--help" {
                Ok(())
            } else {
                bail!("unknown command {command:?}")
            }
        }
    }
}

/// The workspace root.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// The `cargo` that runs this xtask.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(project_root());
    command
}

/// Runs a command, failing with its name when it fails.
fn exec(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Value of `--flag VALUE` in `args`, if present.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

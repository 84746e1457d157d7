//! `cargo xtask bench [density] [--quick]`: builds the benchmark base, the benchmark module, the
//! stand-alone native service and the driver in release, then runs the driver (see
//! `bench/driver`). Results go to stdout and to `target/release/bench-*results.md`;
//! BENCHMARKS.md records them with the machine.

use crate::{cargo, exec, project_root};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    exec(cargo().args(["build", "--release", "-p", "pedestal-bench"]))?;
    // Separately: built together, cargo would unify the base's tokio features (`signal`) into
    // the module, and every load would leak tokio's signal registry (see module-api runtime.rs).
    exec(cargo().args(["build", "--release", "-p", "bench-module"]))?;
    let release = project_root().join("target/release");
    let mut driver = std::process::Command::new(release.join("pedestal-bench"));
    driver
        .arg("--base")
        .arg(release.join("bench-base"))
        .arg("--module")
        .arg(release.join("libbench_module.so"));
    if args.iter().any(|a| a == "density") {
        driver.arg("--density").arg("--native").arg(release.join("bench-native"));
    }
    if args.iter().any(|a| a == "--quick") {
        driver.arg("--quick");
    }
    exec(&mut driver)
}

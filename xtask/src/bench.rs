//! `cargo xtask bench [density] [--quick]`: builds the benchmark base, the benchmark module, the
//! stand-alone native service and the driver in release, then runs the driver (see
//! `bench/driver`). Results go to stdout and to `target/release/bench-*results.md`;
//! BENCHMARKS.md records them with the machine.
//!
//! The module is built twice: normally, and with its heap accounting compiled out (feature
//! `pedestal-module-api/bench-no-heap-accounting`, into `target/bench-unaccounted` so the two
//! builds never share artifacts) for the accounting-overhead comparison.

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
    } else {
        let unaccounted = project_root().join("target/bench-unaccounted");
        exec(
            cargo()
                .args(["build", "--release", "-p", "bench-module"])
                .args(["--features", "pedestal-module-api/bench-no-heap-accounting", "--target-dir"])
                .arg(&unaccounted),
        )?;
        driver.arg("--unaccounted-module").arg(unaccounted.join("release/libbench_module.so"));
    }
    if args.iter().any(|a| a == "--quick") {
        driver.arg("--quick");
    }
    exec(&mut driver)
}

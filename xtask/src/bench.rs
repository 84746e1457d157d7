//! `cargo xtask bench [density|lifecycle|supervision|fleet|devloop] [--quick]`: builds the benchmark base, the benchmark module, the
//! stand-alone native service and the driver in release, then runs the driver (see
//! `bench/driver`). Results go to stdout and to `target/release/bench-*results.md`;
//! BENCHMARKS.md records them with the machine.
//!
//! The module is built twice: normally, and with its heap accounting compiled out (feature
//! `pedestal-module-api/bench-no-heap-accounting`, into `target/bench-unaccounted` so the two
//! builds never share artifacts) for the accounting-overhead comparison.

use crate::{cargo, exec, project_root};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "fleet") {
        return crate::bench_fleet::run(args);
    }
    if args.iter().any(|a| a == "devloop") {
        return crate::bench_devloop::run(args);
    }
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
    } else if args.iter().any(|a| a == "supervision") {
        // The real `pedestal` binary (the supervisor is its `serve`), and `fx-crashy` to crash it
        // from a handler; each in a cargo invocation of its own, like the module.
        exec(cargo().args(["build", "--release", "-p", "pedestal", "--bin", "pedestal"]))?;
        exec(cargo().args(["build", "--release", "-p", "fx-crashy"]))?;
        driver
            .arg("--supervision")
            .arg("--pedestal")
            .arg(release.join("pedestal"))
            .arg("--crashy")
            .arg(release.join("libfx_crashy.so"));
    } else if args.iter().any(|a| a == "lifecycle") {
        driver.arg("--lifecycle").arg("--new-module").arg(build_second_version()?);
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

/// Builds `bench-module` again as version 0.2.0 (a package of its own under
/// `target/bench-versions/`, sharing the sources, the lock file and the release target directory)
/// so the lifecycle benchmark has two versions of one module to switch between.
fn build_second_version() -> anyhow::Result<std::path::PathBuf> {
    let root = project_root();
    let package = root.join("target/bench-versions/0.2.0");
    std::fs::create_dir_all(&package)?;
    let manifest = format!(
        "[package]\nname = \"bench-module\"\nversion = \"0.2.0\"\nedition = \"2024\"\npublish = false\n\n\
         [lib]\nname = \"bench_module_v2\"\ncrate-type = [\"cdylib\"]\npath = {:?}\n\n\
         [dependencies]\npedestal-module-api = {{ path = {:?} }}\nbench-handlers = {{ path = {:?} }}\n\
         axum = {{ version = \"0.8\", default-features = false, features = [\"query\", \"json\"] }}\n\
         serde = {{ version = \"1\", features = [\"derive\"] }}\n\n[workspace]\n\n\
         [profile.release]\nstrip = \"debuginfo\"\n",
        root.join("bench/module/src/lib.rs"),
        root.join("module-api"),
        root.join("bench/handlers"),
    );
    if std::fs::read_to_string(package.join("Cargo.toml")).ok().as_deref() != Some(manifest.as_str()) {
        std::fs::write(package.join("Cargo.toml"), &manifest)?;
    }
    if !package.join("Cargo.lock").exists() {
        std::fs::copy(root.join("Cargo.lock"), package.join("Cargo.lock"))?;
    }
    exec(
        cargo().current_dir(&package).args(["build", "--release", "--target-dir"]).arg(root.join("target")),
    )?;
    Ok(root.join("target/release/libbench_module_v2.so"))
}

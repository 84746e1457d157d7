//! `cargo xtask bench fleet [--quick] [--sizes 10,50,100] [--repeats N] [--scale BASES,MODULES]
//! [--no-scale] [--rollout BASES] [--rollout-repeats N] [--no-rollout] [--out FILE]`: the fleet
//! benchmark. Builds the real `pedestal` binary and the fixture modules (the tests crate's
//! build script does) and runs its driver, `pedestal-tests`'s `fleet-bench` binary, which
//! starts a real etcd, two controllers and real bases: applies and kills at 10, 50 and 100 bases
//! (`--quick`: 10), metadata at scale (1000 modules × 100 bases; `--quick`: 50 × 5), and
//! rollouts, rollbacks and autoscaling over 100 bases (`--quick`: 5). Results go to stdout and
//! to `target/release/bench-fleet-results.md`; BENCHMARKS.md ("The fleet") records them.

use crate::{cargo, exec, project_root};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    exec(cargo().args(["build", "-p", "pedestal-tests", "--bin", "fleet-bench"]))?;
    let mut driver = std::process::Command::new(project_root().join("target/debug/fleet-bench"));
    driver.current_dir(project_root());
    // Everything after `fleet` is the driver's.
    driver.args(args.iter().filter(|a| *a != "fleet"));
    exec(&mut driver)
}

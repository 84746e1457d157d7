//! Autoscale end to end (issue 15): a CPU-burning module (`fx-cpu-burner`) with `autoscale =
//! { min = 1, max = 3, target_cpu = 0.2, cooldown = "3s" }` on three real bases: under a burning
//! request loop its replicas grow, and after the load stops and the cooldown passes they shrink
//! back to one. Slow (many processes, a cooldown): runs with `PEDESTAL_SLOW_TESTS=1`.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use pedestal_tests::{
    artifacts, eventually,
    fleet::{Fleet, SpecDir, fleet_cli, fleet_json, module_of},
};
use serde_json::Value;

fn slow_tests() -> bool {
    std::env::var_os("PEDESTAL_SLOW_TESTS").is_some()
}

fn wanted(view: &Value) -> u64 {
    view["autoscale"]["replicas"].as_u64().unwrap_or(0)
}

#[test]
fn replicas_follow_cpu_up_and_back_down_after_the_cooldown() {
    if !slow_tests() {
        eprintln!("skipped: set PEDESTAL_SLOW_TESTS=1");
        return;
    }
    let fleet = Fleet::start(3, |_| Vec::new());
    let controller = fleet.controller();
    let specs = SpecDir::new();
    let file = specs.write(
        "burn",
        &format!(
            "name = \"fx-cpu-burner\"\nversion = \"0.1.0\"\nartifact = {:?}\n\
             autoscale = {{ min = 1, max = 3, target_cpu = 0.2, cooldown = \"3s\" }}\n",
            artifacts::CPU_BURNER
        ),
    );
    fleet_cli(controller, &["apply", file.to_str().expect("utf-8"), "--wait"]).ok();
    let view = fleet.wait_ready("fx-cpu-burner", Duration::from_secs(20));
    assert_eq!(wanted(&view), 1, "starts at min: {view}");

    // Two request loops burning 100 ms each, through one base (it forwards to the replicas).
    let stop = AtomicBool::new(false);
    let grown = std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let reply = fleet.bases[0].traffic("/fx-cpu-burner/burn?ms=100");
                    assert_eq!(reply.status, 200, "{}", reply.body);
                }
            });
        }
        let grown = eventually("the replicas to grow under load", Duration::from_secs(30), || {
            let view = module_of(&fleet_json(controller, &["status"]), "fx-cpu-burner");
            (wanted(&view) >= 2 && view["ready"].as_u64() >= Some(2)).then_some(view)
        });
        stop.store(true, Ordering::Relaxed);
        grown
    });
    let line = fleet_cli(controller, &["status", "fx-cpu-burner"]).ok().stdout;
    assert!(line.contains("autoscale: "), "{line}");
    eprintln!("grown: {grown}");

    let shrunk = eventually("the replicas to shrink after the cooldown", Duration::from_secs(40), || {
        let view = module_of(&fleet_json(controller, &["status"]), "fx-cpu-burner");
        (wanted(&view) == 1 && view["replicas"].as_array().map(Vec::len) == Some(1)).then_some(view)
    });
    assert_eq!(shrunk["ready"], 1, "{shrunk}");
}

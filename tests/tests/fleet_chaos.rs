//! Reordered, delayed and duplicated assignment deliveries and controller writes are harmless:
//! three bases and two controllers started with `PEDESTAL_FLEET_CHAOS` (the chaos layers of
//! the agent and of the leader's writes, testing aids) take a stream of spec changes, at least
//! 1000 assignment deliveries and 1000 leader writes in all, the leading controller is killed
//! half-way, and the bases end up running exactly what the final specs say. No copy of a
//! committed leader write commits again (without the write sequence, every one would).
//! Slow (many spec changes, three bases): run with `PEDESTAL_SLOW_TESTS=1`.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use pedestal_tests::{
    TestBase, artifacts,
    etcd::Etcd,
    eventually,
    fleet::{Controller, TOKEN, fleet_cli, sha256_of},
};
use serde_json::{Value, json};

const MODULES: [&str; 3] = ["chaos-a", "chaos-b", "chaos-c"];

/// The largest `field=N` on `log`'s lines containing `summary` (a chaos layer's counters).
fn counter(log: &str, summary: &str, field: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(summary))
        .filter_map(|l| l.split(&format!(" {field}=")).nth(1)?.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The deliveries a base's chaos layer reports: the last summary line's count.
fn delivered(base: &TestBase) -> u64 {
    counter(&base.log(), "fleet chaos: assignment deliveries so far", "delivered")
}

/// A controller's write chaos counter `field`.
fn writes(controller: &Controller, field: &str) -> u64 {
    counter(&controller.log(), "fleet chaos: controller writes so far", field)
}

#[test]
fn chaotic_deliveries_still_converge_on_the_final_specs() {
    if std::env::var_os("PEDESTAL_SLOW_TESTS").is_none() {
        eprintln!("skipped: set PEDESTAL_SLOW_TESTS=1");
        return;
    }
    let etcd = Etcd::single();
    let mut controllers: Vec<Controller> = (0..2)
        .map(|i| {
            Controller::start_with_env(&etcd, TOKEN, &[], &[("PEDESTAL_FLEET_CHAOS", &format!("{}", 7 + i))])
        })
        .collect();
    let controller = &controllers[0];
    let endpoints = etcd.endpoints();
    let bases: Vec<TestBase> = (0..3)
        .map(|i| {
            let id = format!("b{i}");
            let args =
                ["--fleet", &endpoints, "--base-id", &id, "--fleet-token", TOKEN, "--supervisor", "off"];
            TestBase::start_with_env(&args, &[("PEDESTAL_FLEET_CHAOS", &format!("{}", 11 + i))])
        })
        .collect();
    for base in &bases {
        eventually("the chaos layer's loud warning", Duration::from_secs(10), || {
            base.log().contains("PEDESTAL_FLEET_CHAOS is set").then_some(())
        });
    }
    for controller in &controllers {
        assert!(controller.log().contains("PEDESTAL_FLEET_CHAOS is set"), "{}", controller.log());
    }
    eventually("a leading controller", Duration::from_secs(20), || {
        controllers.iter().any(Controller::leading).then_some(())
    });
    let releases: Vec<(&str, String)> = [
        ("1.0.0", artifacts::VERSIONED_1_0_0),
        ("1.1.0", artifacts::VERSIONED_1_1_0),
        ("2.0.0", artifacts::VERSIONED_2_0_0),
    ]
    .into_iter()
    .map(|(version, file)| {
        fleet_cli(controller, &["push", file]).ok();
        (version, sha256_of(file))
    })
    .collect();
    eventually("three bases listed", Duration::from_secs(20), || {
        let bases = controller.api("GET", "/api/v1/bases", None).json;
        (bases.as_array()?.len() == 3).then_some(())
    });

    // Spec changes in quick succession until the bases saw 1000 deliveries and the leaders
    // made 1000 writes; the leading controller is killed half-way.
    let mut finals: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut change = 0usize;
    let total_writes =
        |controllers: &[Controller]| controllers.iter().map(|c| writes(c, "writes")).sum::<u64>();
    let mut killed = false;
    while bases.iter().map(delivered).sum::<u64>() < 1000 || total_writes(&controllers) < 1000 {
        assert!(
            Instant::now() < deadline,
            "fewer than 1000 deliveries ({}) or leader writes ({}) in 300 s",
            bases.iter().map(delivered).sum::<u64>(),
            total_writes(&controllers)
        );
        if !killed && bases.iter().map(delivered).sum::<u64>() >= 500 {
            let leader = controllers.iter().position(Controller::leading).unwrap_or(0);
            controllers[leader].kill9();
            eprintln!("killed the leading controller ({}) after {change} rounds", controllers[leader].id());
            killed = true;
            controllers.swap(0, leader);
        }
        let live = &controllers[usize::from(killed)];
        for (m, module) in MODULES.iter().enumerate() {
            let (version, sha256) = &releases[(change + m) % releases.len()];
            let spec = json!({
                "name": module, "version": version, "sha256": sha256,
                "replicas": 1 + (change + m) % 3, "config": {"change": change},
            });
            // While the standby takes over, a spec write finds no leader: retried.
            eventually("a spec write", Duration::from_secs(30), || {
                (live.api("PUT", &format!("/api/v1/specs/{module}"), Some(&spec)).status < 300).then_some(())
            });
        }
        change += 1;
        std::thread::sleep(Duration::from_millis(30));
    }
    for (m, module) in MODULES.iter().enumerate() {
        let (version, sha256) = &releases[(change - 1 + m) % releases.len()];
        finals.push(json!({"name": module, "version": version, "sha256": sha256, "replicas": 1 + (change - 1 + m) % 3}));
    }
    eprintln!(
        "{change} rounds of spec changes, {} deliveries, {} leader writes",
        bases.iter().map(delivered).sum::<u64>(),
        total_writes(&controllers)
    );

    // Every base runs exactly what its final assignments say, and the assignments are the
    // final specs'.
    eventually("every base to run the final specs", Duration::from_secs(60), || {
        let mut replicas = vec![0; MODULES.len()];
        for (i, base) in bases.iter().enumerate() {
            let status: Value = serde_json::from_str(&etcd.get(&format!("/pedestal/status/b{i}"))?).ok()?;
            let running: BTreeSet<(String, String, String)> = status["modules"]
                .as_array()?
                .iter()
                .map(|m| {
                    let text = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                    (text("name"), text("version"), text("sha256"))
                })
                .collect();
            let mut wanted = BTreeSet::new();
            for (m, spec) in finals.iter().enumerate() {
                let Some(assignment) = etcd.get(&format!("/pedestal/assign/b{i}/{}", MODULES[m])) else {
                    continue;
                };
                let assignment: Value = serde_json::from_str(&assignment).ok()?;
                if assignment["version"] != spec["version"] || assignment["sha256"] != spec["sha256"] {
                    return None;
                }
                replicas[m] += 1;
                wanted.insert((
                    MODULES[m].to_owned(),
                    spec["version"].as_str()?.to_owned(),
                    spec["sha256"].as_str()?.to_owned(),
                ));
                // The config reached the module's instance on that base.
                let config = base.admin_get(&format!("/api/v1/modules/{}/config", MODULES[m]));
                if config.json["values"]["change"] != json!(change - 1) {
                    return None;
                }
            }
            if running != wanted || !status["failures"].as_object().is_none_or(|f| f.is_empty()) {
                return None;
            }
        }
        let counts: Vec<u64> = finals.iter().map(|s| s["replicas"].as_u64().unwrap()).collect();
        (replicas.iter().map(|r| *r as u64).collect::<Vec<_>>() == counts).then_some(())
    });

    // The write chaos sent stale copies; the write sequence refused every copy of a committed
    // write (a stale one committing would have rewound what a later pass wrote).
    std::thread::sleep(Duration::from_secs(1));
    let field = |f: &str| controllers.iter().map(|c| writes(c, f)).sum::<u64>();
    eprintln!(
        "leader writes: duplicated {}, late {} ({} of them committed), stale copies refused {}, committed {}",
        field("duplicated"),
        field("late"),
        field("late_committed"),
        field("stale_refused"),
        field("stale_committed")
    );
    assert!(field("duplicated") > 0 && field("stale_refused") > 0, "the chaos layer sent stale copies");
    assert_eq!(field("stale_committed"), 0, "a copy of a committed leader write committed again");
}

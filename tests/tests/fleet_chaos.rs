//! Reordered, delayed and duplicated assignment deliveries are harmless: three bases started
//! with `PEDESTAL_FLEET_CHAOS` (the agent's testing aid) take a stream of spec changes, at
//! least 1000 assignment deliveries in all, and end up running exactly what the final specs
//! say. Slow (many spec changes, three bases): run with `PEDESTAL_SLOW_TESTS=1`.

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

/// The deliveries a base's chaos layer reports: the last summary line's count.
fn delivered(base: &TestBase) -> u64 {
    base.log()
        .lines()
        .filter(|l| l.contains("fleet chaos: assignment deliveries so far"))
        .filter_map(|l| l.split("delivered=").nth(1)?.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn chaotic_deliveries_still_converge_on_the_final_specs() {
    if std::env::var_os("PEDESTAL_SLOW_TESTS").is_none() {
        eprintln!("skipped: set PEDESTAL_SLOW_TESTS=1");
        return;
    }
    let etcd = Etcd::single();
    let controller = Controller::start(&etcd, TOKEN);
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
    let releases: Vec<(&str, String)> = [
        ("1.0.0", artifacts::VERSIONED_1_0_0),
        ("1.1.0", artifacts::VERSIONED_1_1_0),
        ("2.0.0", artifacts::VERSIONED_2_0_0),
    ]
    .into_iter()
    .map(|(version, file)| {
        fleet_cli(&controller, &["push", file]).ok();
        (version, sha256_of(file))
    })
    .collect();
    eventually("three bases listed", Duration::from_secs(20), || {
        let bases = controller.api("GET", "/api/v1/bases", None).json;
        (bases.as_array()?.len() == 3).then_some(())
    });

    // Spec changes in quick succession until the bases saw 1000 deliveries.
    let mut finals: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut change = 0usize;
    while bases.iter().map(delivered).sum::<u64>() < 1000 {
        assert!(Instant::now() < deadline, "fewer than 1000 deliveries in 240 s");
        for (m, module) in MODULES.iter().enumerate() {
            let (version, sha256) = &releases[(change + m) % releases.len()];
            let spec = json!({
                "name": module, "version": version, "sha256": sha256,
                "replicas": 1 + (change + m) % 3, "config": {"change": change},
            });
            let reply = controller.api("PUT", &format!("/api/v1/specs/{module}"), Some(&spec));
            assert!(reply.status < 300, "{reply:?}");
        }
        change += 1;
        std::thread::sleep(Duration::from_millis(30));
    }
    for (m, module) in MODULES.iter().enumerate() {
        let (version, sha256) = &releases[(change - 1 + m) % releases.len()];
        finals.push(json!({"name": module, "version": version, "sha256": sha256, "replicas": 1 + (change - 1 + m) % 3}));
    }
    eprintln!("{change} rounds of spec changes, {} deliveries", bases.iter().map(delivered).sum::<u64>());

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
}

//! Automatic rollback and failover of fleet rollouts (issue 15), under load, with real etcd,
//! controllers, bases and the CLI:
//!
//! - a version failing 20% of its requests (the `flaky-<crate>` marker of `fx-versioned`) is
//!   rolled back by the analysis, having reached only the first step's base and weight, and the
//!   record says why; the old version lost no request meanwhile;
//! - the leading controller `kill -9`ed while a step holds: the standby carries the rollout on
//!   from etcd, no step applied twice, none skipped.

use std::time::Duration;

use pedestal_tests::{
    artifacts, eventually,
    fleet::{Fleet, SpecDir, fleet_cli, fleet_json},
    load::Load,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(30);
const MODULE: &str = "fx-versioned";

fn spec(version: &str, steps: &str, window: &str) -> String {
    let artifact = match version {
        "1.0.0" => artifacts::VERSIONED_1_0_0,
        "1.1.0" => artifacts::VERSIONED_1_1_0,
        _ => artifacts::VERSIONED_2_0_0,
    };
    format!(
        "name = \"{MODULE}\"\nversion = \"{version}\"\nartifact = {artifact:?}\nreplicas = 3\n\
         [rollout]\nsteps = {steps}\nmax_unavailable = 1\n\
         [rollout.analysis]\nwindow = \"{window}\"\nmin_requests = 20\n"
    )
}

fn rollout(fleet: &Fleet) -> Value {
    fleet_json(fleet.controller(), &["rollout", "status", MODULE])
}

/// What each base runs of the module, asked of each base itself: (base, version).
fn running(fleet: &Fleet) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for base in &fleet.bases {
        for v in ["1.0.0", "1.1.0", "2.0.0"] {
            // Never forwarded: what the base runs itself.
            let path = format!("/{MODULE}/version");
            let pinned =
                base.get_with(&path, &[("x-pedestal-forwarded-by", "the-test"), ("x-pedestal-version", v)]);
            if pinned.status == 200 {
                all.push((base.id().to_owned(), v.to_owned()));
            }
        }
    }
    all
}

#[test]
fn a_version_failing_a_fifth_of_its_requests_is_rolled_back_from_its_first_step() {
    let fleet = Fleet::start(3, |_| Vec::new());
    let controller = fleet.controller();
    let specs = SpecDir::new();
    let steps = "[{ bases = 1, weight = 20 }, { bases = \"100%\" }]";
    let v1 = specs.write("v1", &spec("1.0.0", steps, "3s"));
    fleet_cli(controller, &["apply", "--wait", v1.to_str().unwrap()]).ok();
    for base in &fleet.bases {
        std::fs::write(base.data_dir().join("flaky-fx_versioned_1_1_0"), "").unwrap();
    }
    let load =
        Load::start(fleet.bases.iter().map(|b| b.traffic.clone()).collect(), "/fx-versioned/work", 4, &[]);
    std::thread::sleep(Duration::from_millis(500));

    let v2 = specs.write("v2", &spec("1.1.0", steps, "3s"));
    let waited = fleet_cli(controller, &["apply", "--wait", "--timeout", "60", v2.to_str().unwrap()]);
    let report = load.stop();
    assert_eq!(waited.code, Some(1), "apply --wait fails on a rollback: {waited:?}");
    assert!(waited.stderr.contains("ROLLED_BACK"), "{waited:?}");

    let view = rollout(&fleet);
    let record = &view["rollout"];
    assert_eq!(record["state"], "rolled_back", "{view}");
    assert_eq!(record["step"], 0, "it never left the first step: {view}");
    assert_eq!(record["upgraded"].as_array().map(Vec::len), Some(1), "one base at most: {view}");
    let analysis = &record["analysis"];
    assert_eq!(analysis["verdict"], "fail", "{view}");
    let new = &analysis["new"];
    let rate = new["server_errors"].as_f64().unwrap() / new["requests"].as_f64().unwrap();
    assert!((0.15..=0.25).contains(&rate), "the canary failed about a fifth of its requests: {view}");
    assert!(record["reason"].as_str().unwrap().contains("error rate"), "the reason says why: {view}");
    let table = fleet_cli(controller, &["rollout", "status", MODULE]).ok().stdout;
    assert!(table.contains("rolled_back") && table.contains("error rate"), "{table}");

    // The canary took at most its weight on its one base: about a fifteenth of the load.
    let canary = report.by_version.get("1.1.0").copied().unwrap_or(0) as f64;
    let total = report.total as f64;
    assert!(canary > 0.0 && canary / total < 0.15, "canary share {canary}/{total}: {report}");
    // Every failure was the canary's own 500 (the module failing), none the fleet's.
    let failures: u64 = report.by_status.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum();
    assert_eq!(report.connection_errors, 0, "{report}");
    assert_eq!(report.by_status.keys().copied().filter(|s| *s != 200 && *s != 500).count(), 0, "{report}");
    assert!(failures as f64 <= canary / 4.0 + 5.0, "only the canary's one in five failed: {report}");
    eventually("every base on 1.0.0 alone", CONVERGE, || {
        let running = running(&fleet);
        (running.len() == 3 && running.iter().all(|(_, v)| v == "1.0.0")).then_some(())
    });
    println!("rolled back: {view}\nload: {report}");
}

#[test]
fn a_standby_carries_a_rollout_on_after_the_leader_is_killed_mid_step() {
    let mut fleet = Fleet::start_on(pedestal_tests::etcd::Etcd::single(), 2, 3, |_| Vec::new(), &[]);
    let specs = SpecDir::new();
    let steps = "[{ bases = 1, weight = 50, pause = \"manual\" }, { bases = 2, pause = \"2s\" }, { bases = \"100%\" }]";
    let v1 = specs.write("v1", &spec("1.0.0", steps, "1s"));
    fleet_cli(fleet.controller(), &["apply", "--wait", v1.to_str().unwrap()]).ok();
    let load =
        Load::start(fleet.bases.iter().map(|b| b.traffic.clone()).collect(), "/fx-versioned/work", 2, &[]);
    let v2 = specs.write("v2", &spec("1.1.0", steps, "1s"));
    fleet_cli(fleet.controller(), &["apply", v2.to_str().unwrap()]).ok();
    eventually("the first step to wait for promotion", CONVERGE, || {
        (rollout(&fleet)["rollout"]["phase"] == "awaiting_promotion").then_some(())
    });
    // The canary serves both versions on its base, by weight, and a pinned request reaches it
    // through any base.
    let before = rollout(&fleet);
    let canary_base = before["rollout"]["upgraded"][0].as_str().unwrap().to_owned();
    for base in &fleet.bases {
        let pinned = base.get_with("/fx-versioned/version", &[("x-pedestal-version", "1.1.0")]);
        assert_eq!(pinned.status, 200, "{pinned:?}");
        assert_eq!(pinned.body, "1.1.0");
        assert_eq!(pinned.header("x-pedestal-base"), Some(canary_base.as_str()), "{pinned:?}");
    }

    let leader = fleet.wait_for_leader();
    fleet.controllers[leader].kill9();
    let standby = 1 - leader;
    eventually("the standby to lead", CONVERGE, || fleet.controllers[standby].leading().then_some(()));
    let after = fleet_json(&fleet.controllers[standby], &["rollout", "status", MODULE]);
    assert_eq!(after["rollout"]["step"], before["rollout"]["step"], "no step skipped: {after}");
    assert_eq!(after["rollout"]["upgraded"], before["rollout"]["upgraded"], "no base moved again: {after}");
    assert_eq!(after["rollout"]["phase"], "awaiting_promotion", "{after}");

    fleet_json(&fleet.controllers[standby], &["rollout", "promote", MODULE]);
    let done = eventually("1.1.0 to complete under the new leader", CONVERGE, || {
        let view = fleet_json(&fleet.controllers[standby], &["rollout", "status", MODULE]);
        (view["rollout"]["state"] == "complete").then_some(view)
    });
    let history = done["rollout"]["history"].as_array().unwrap();
    for step in 0..3 {
        let reached = history.iter().filter(|e| e["event"] == "step_reached" && e["step"] == step).count();
        assert_eq!(reached, 1, "step {step} reached exactly once: {done}");
    }
    let report = load.stop();
    assert_eq!(report.failed(), 0, "no request failed across the failover and the rollout: {report}");
    eventually("every base on 1.1.0 alone", CONVERGE, || {
        let running = running(&fleet);
        (running.len() == 3 && running.iter().all(|(_, v)| v == "1.1.0")).then_some(())
    });
}

//! Fleet rollouts end to end (issue 15): a real etcd, a real controller, three real bases and
//! the real CLI take `fx-versioned` from 1.0.0 to 1.1.0 step by step (held for promotion,
//! paused, resumed, promoted), then refuse 2.0.0 whose start fails (a NACK rolls it back, and
//! `apply --wait` says so), then restart and abort it.

use std::time::Duration;

use pedestal_tests::{
    artifacts, eventually,
    fleet::{Fleet, SpecDir, fleet_cli, fleet_json},
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);

fn spec(version: &str, artifact: &str) -> String {
    format!(
        "name = \"fx-versioned\"\nversion = \"{version}\"\nartifact = {artifact:?}\nreplicas = 3\n\
         [rollout]\nsteps = [{{ bases = 1, pause = \"manual\" }}, {{ bases = \"100%\" }}]\nmax_unavailable = 1\n\
         [rollout.analysis]\nwindow = \"2s\"\n"
    )
}

/// The versions the bases answer themselves, in base order.
fn versions(fleet: &Fleet) -> Vec<String> {
    fleet.bases.iter().map(|b| b.local("/fx-versioned/version").body).collect()
}

fn rollout(fleet: &Fleet) -> Value {
    fleet_json(fleet.controller(), &["rollout", "status", "fx-versioned"])
}

fn wait_rollout(fleet: &Fleet, what: &str, test: impl Fn(&Value) -> bool) -> Value {
    eventually(what, CONVERGE, || {
        let view = rollout(fleet);
        test(&view["rollout"]).then_some(view)
    })
}

#[test]
fn a_release_rolls_step_by_step_and_a_failing_one_rolls_back() {
    let fleet = Fleet::start(3, |_| Vec::new());
    let controller = fleet.controller();
    let specs = SpecDir::new();
    let v1 = specs.write("v1", &spec("1.0.0", artifacts::VERSIONED_1_0_0));
    fleet_cli(controller, &["apply", "--wait", v1.to_str().unwrap()]).ok();
    let first = rollout(&fleet);
    assert_eq!(first["rollout"]["state"], "complete", "a first deploy completes at once: {first}");
    assert_eq!(versions(&fleet), ["1.0.0"; 3]);

    // 1.1.0: one base, then held for promotion.
    let v2 = specs.write("v2", &spec("1.1.0", artifacts::VERSIONED_1_1_0));
    fleet_cli(controller, &["apply", v2.to_str().unwrap()]).ok();
    let held = wait_rollout(&fleet, "step 1 to wait for promotion", |r| r["phase"] == "awaiting_promotion");
    assert_eq!(held["rollout"]["upgraded"], serde_json::json!(["b0"]), "{held}");
    assert_eq!(versions(&fleet), ["1.1.0", "1.0.0", "1.0.0"]);
    let table = fleet_cli(controller, &["rollout", "status", "fx-versioned"]).ok().stdout;
    assert!(table.contains("step     1 of 2") && table.contains("promote"), "{table}");
    let status = fleet_cli(controller, &["status"]).ok().stdout;
    assert!(status.contains("rollout fx-versioned 1.0.0 → 1.1.0"), "{status}");

    // Pause, resume, promote through the CLI: each applied by the leader before it answers.
    let paused = fleet_json(controller, &["rollout", "pause", "fx-versioned", "--reason", "lunch"]);
    assert_eq!(paused["rollout"]["state"], "paused", "{paused}");
    assert!(paused["rollout"]["paused_by"].as_str().unwrap().contains('@'), "{paused}");
    let resumed = fleet_json(controller, &["rollout", "resume", "fx-versioned"]);
    assert_eq!(resumed["rollout"]["state"], "progressing", "{resumed}");
    let promoted = fleet_json(controller, &["rollout", "promote", "fx-versioned"]);
    assert_eq!(promoted["rollout"]["step"], 1, "{promoted}");
    let done = wait_rollout(&fleet, "1.1.0 to complete", |r| r["state"] == "complete");
    assert_eq!(versions(&fleet), ["1.1.0"; 3]);
    let events: Vec<&str> =
        done["rollout"]["history"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    for event in ["started", "step_reached", "paused", "resumed", "promoted", "complete"] {
        assert!(events.contains(&event), "{event} missing from {events:?}");
    }

    // 2.0.0 fails to start on every base: the first base's NACK rolls it back, and
    // `apply --wait` fails saying why.
    for base in &fleet.bases {
        std::fs::write(base.data_dir().join("fail-start-fx_versioned_2_0_0"), "").unwrap();
    }
    let v3 = specs.write("v3", &spec("2.0.0", artifacts::VERSIONED_2_0_0));
    let waited = fleet_cli(controller, &["apply", "--wait", "--timeout", "30", v3.to_str().unwrap()]);
    assert_eq!(waited.code, Some(1), "{waited:?}");
    assert!(waited.stderr.contains("ROLLED_BACK") && waited.stderr.contains("b0"), "{waited:?}");
    let back = rollout(&fleet);
    assert_eq!(back["rollout"]["state"], "rolled_back", "{back}");
    assert!(back["rollout"]["reason"].as_str().unwrap().contains("START_FAILED"), "{back}");
    let past = &back["history"];
    assert_eq!(past[0]["to"]["version"], "1.1.0", "the 1.1.0 rollout is history: {back}");
    eventually("every base back on 1.1.0", CONVERGE, || (versions(&fleet) == ["1.1.0"; 3]).then_some(()));
    let why = fleet_cli(controller, &["rollout", "status", "fx-versioned"]).ok().stdout;
    assert!(why.contains("rolled_back") && why.contains("START_FAILED"), "{why}");

    // Fixed: resume restarts it from step 1; abort sends it back.
    for base in &fleet.bases {
        std::fs::remove_file(base.data_dir().join("fail-start-fx_versioned_2_0_0")).unwrap();
    }
    fleet_json(controller, &["rollout", "resume", "fx-versioned"]);
    wait_rollout(&fleet, "2.0.0 to hold step 1", |r| r["phase"] == "awaiting_promotion");
    eventually("b0 on 2.0.0", CONVERGE, || (versions(&fleet) == ["2.0.0", "1.1.0", "1.1.0"]).then_some(()));
    let aborted = fleet_json(controller, &["rollout", "abort", "fx-versioned", "--reason", "not today"]);
    assert_eq!(aborted["rollout"]["state"], "aborted", "{aborted}");
    assert!(aborted["rollout"]["reason"].as_str().unwrap().contains("not today"), "{aborted}");
    eventually("every base back on 1.1.0", CONVERGE, || (versions(&fleet) == ["1.1.0"; 3]).then_some(()));
    let ignored = fleet_json(controller, &["rollout", "abort", "fx-versioned"]);
    let last = ignored["rollout"]["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "ignored", "{ignored}");
}

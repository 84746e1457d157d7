//! Cordon and drain end to end (issue 15): a real etcd, a real controller, three real bases,
//! the real `pedestal fleet` CLI. A drained base's replicas move make-before-break, so traffic
//! through every base sees only 2xx while they move, and after: the drained base can be killed.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use pedestal_tests::{
    artifacts, eventually,
    fleet::{Fleet, FleetBase, SpecDir, fleet_cli, fleet_json, module_of, serving_replicas},
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);

fn spec(replicas: u32) -> String {
    format!(
        "name = \"fx-versioned\"\nversion = \"1.0.0\"\nartifact = {:?}\nreplicas = {replicas}\n",
        artifacts::VERSIONED_1_0_0
    )
}

/// Requests `/fx-versioned/version` through each of `bases` in turn until `stop`, counting
/// 2xx answers and the others (with the first few of them).
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn new() -> Self {
        Self { ok: AtomicU64::new(0), failed: AtomicU64::new(0), failures: Default::default() }
    }

    fn run(&self, bases: &[&FleetBase], stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            for base in bases {
                let reply = base.traffic("/fx-versioned/version");
                if (200..300).contains(&reply.status) {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    let mut failures = self.failures.lock().unwrap();
                    if failures.len() < 5 {
                        failures.push(format!(
                            "{} via {}: {} {}",
                            reply.status,
                            base.id(),
                            reply.body,
                            reply.json
                        ));
                    }
                }
            }
        }
    }

    fn assert_all_2xx(&self, what: &str) {
        let (ok, failed) = (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed));
        assert!(ok > 0, "{what}: no request answered");
        assert_eq!(failed, 0, "{what}: {ok} 2xx, {failed} others: {:?}", self.failures.lock().unwrap());
    }
}

/// Requests through `bases` while `during` runs; every answer must be 2xx.
fn under_load<T>(what: &str, bases: &[&FleetBase], during: impl FnOnce() -> T) -> T {
    let load = Load::new();
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        scope.spawn(|| load.run(bases, &stop));
        // Some load before the change, so a broken start shows too.
        std::thread::sleep(Duration::from_millis(300));
        let out = during();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        out
    });
    load.assert_all_2xx(what);
    eprintln!("{what}: {} requests, all 2xx", load.ok.load(Ordering::Relaxed));
    out
}

fn base_view(bases: &Value, id: &str) -> Value {
    bases.as_array().and_then(|b| b.iter().find(|b| b["record"]["id"] == id).cloned()).unwrap_or(Value::Null)
}

/// Two replicas on three bases; `drain --wait` one of them under load through every base;
/// then it shows drained, runs no fleet module and is killed with traffic still all 2xx; it
/// comes back under the same id and is still cordoned (a cordon is the operator's, kept while
/// the base is gone); `uncordon` makes it eligible again.
#[test]
fn a_drained_base_hands_over_its_replicas_without_a_failed_request() {
    let mut fleet = Fleet::start(3, |_| Vec::new());
    let specs = SpecDir::new();
    let file = specs.write("two", &spec(2));
    let controller = fleet.controller();
    fleet_cli(controller, &["apply", file.to_str().expect("utf-8"), "--wait"]).ok();
    let view = fleet.wait_ready("fx-versioned", CONVERGE);
    let before = serving_replicas(&view);
    assert_eq!(before.len(), 2, "{view}");
    let drained = before[0].clone();

    let all: Vec<&FleetBase> = fleet.bases.iter().collect();
    let run = under_load("drain", &all, || {
        fleet_cli(controller, &["drain", &drained, "--reason", "kernel update", "--wait", "--timeout", "60s"])
    });
    let run = run.ok();
    assert!(run.stdout.contains(&format!("drained {drained}")), "{run:?}");

    let bases = fleet_json(controller, &["bases"]);
    let view_of = base_view(&bases, &drained);
    assert_eq!(view_of["drained"], true, "{view_of}");
    assert_eq!(view_of["cordon"]["drain"], true, "{view_of}");
    assert_eq!(view_of["cordon"]["reason"], "kernel update", "{view_of}");
    let table = fleet_cli(controller, &["bases"]).ok().stdout;
    assert!(table.contains("drained (kernel update)"), "{table}");
    let managed_left: Vec<&Value> = view_of["status"]["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["managed"] == true)
        .collect();
    assert!(managed_left.is_empty(), "no fleet module left on {drained}: {view_of}");
    let view = fleet.wait_ready("fx-versioned", CONVERGE);
    let after = serving_replicas(&view);
    assert_eq!(after.len(), 2, "still two replicas: {view}");
    assert!(!after.contains(&drained), "none on the drained base: {view}");

    // It can be stopped: traffic through the others stays all 2xx.
    let index = fleet.bases.iter().position(|b| b.id() == drained).expect("the drained base");
    {
        let (left, right) = fleet.bases.split_at_mut(index);
        let (victim, rest) = right.split_first_mut().expect("the drained base");
        let remaining: Vec<&FleetBase> = left.iter().chain(rest.iter()).collect();
        under_load("killing the drained base", &remaining, || victim.kill9());
    }

    // Back under the same id, it is still cordoned: a third replica finds no other base.
    let controller = fleet.controller();
    let file = specs.write("three", &spec(3));
    fleet_cli(controller, &["apply", file.to_str().expect("utf-8")]).ok();
    fleet.add_base(&drained, &[], &[]);
    let controller = fleet.controller();
    let reason = eventually("the third replica to be unschedulable for the cordon", CONVERGE, || {
        let view = module_of(&fleet_json(controller, &["status"]), "fx-versioned");
        let reason = view["reason"].as_str()?.to_owned();
        (view["state"] == "unschedulable" && reason.contains("1 is cordoned")).then_some(reason)
    });
    assert!(reason.starts_with("2 of 3 replicas placed"), "{reason}");

    let run = fleet_cli(controller, &["uncordon", &drained]).ok();
    assert!(run.stdout.contains("uncordoned"), "{run:?}");
    let view = fleet.wait_ready("fx-versioned", CONVERGE);
    assert!(serving_replicas(&view).contains(&drained), "eligible again: {view}");
    let bases = fleet_json(controller, &["bases"]);
    assert_eq!(base_view(&bases, &drained)["cordon"], Value::Null, "{bases}");
}

/// A cordon of a base that is not registered is kept, and says so; uncordoning twice changes
/// nothing the second time.
#[test]
fn a_cordon_of_an_unknown_base_is_kept_and_says_so() {
    let fleet = Fleet::start(1, |_| Vec::new());
    let controller = fleet.controller();
    let answer = fleet_json(controller, &["cordon", "not-yet", "--reason", "rack 4"]);
    assert_eq!(answer["registered"], false, "{answer}");
    assert!(answer["message"].as_str().unwrap_or_default().contains("no live base"), "{answer}");
    let answer = fleet_json(controller, &["uncordon", "not-yet"]);
    assert_eq!(answer["changed"], true, "{answer}");
    let answer = fleet_json(controller, &["uncordon", "not-yet"]);
    assert_eq!(answer["changed"], false, "{answer}");
    let refused = fleet_cli(controller, &["cordon", "bad/id"]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
}

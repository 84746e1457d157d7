//! A seeded random trial of `kill -9`: random operations (install, replace, uninstall, switch,
//! tenants) against the real binary, the base killed with SIGKILL at a random moment during one
//! of them (and, now and then, again during the restore that follows), restarted on the same
//! data directory and compared with a model of what was acknowledged. The state after a restart
//! must be exactly the acknowledged one, or — for the one operation the kill interrupted — that
//! operation's outcome, never a part of it.
//!
//! 50 kills by default; `PEDESTAL_SLOW_TESTS=1` runs 200. `PEDESTAL_KILL_SEED=N` replays a seed.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    thread,
    time::Duration,
};

use pedestal_tests::{RestoreKill, TestBase, artifacts};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

/// The builds the trial installs: key, file, version. Two builds share 1.0.0 (same identity,
/// other bytes), so replaces of a version by a rebuild of itself happen too.
const BUILDS: &[(&str, &str, &str)] = &[
    ("1.0.0", artifacts::VERSIONED_1_0_0, "1.0.0"),
    ("1.0.0-b", artifacts::VERSIONED_1_0_0_B, "1.0.0"),
    ("1.1.0", artifacts::VERSIONED_1_1_0, "1.1.0"),
    ("2.0.0", artifacts::VERSIONED_2_0_0, "2.0.0"),
];
const VERSIONS: &[&str] = &["1.0.0", "1.1.0", "2.0.0"];
const TENANTS: &[&str] = &["t0", "t1", "t2"];

/// What the base hosts, as far as a client can tell: `fx-versioned`'s versions (with the build
/// each runs) and its active version, and which tenants of `fx-good` run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    versions: BTreeMap<&'static str, &'static str>,
    active: Option<&'static str>,
    tenants: BTreeSet<&'static str>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Install { build: usize, activate: bool },
    Replace { build: usize },
    Uninstall { version: &'static str },
    Switch { version: &'static str },
    AddTenant(&'static str),
    RemoveTenant(&'static str),
}

impl Model {
    /// The state after `op` is acknowledged, and whether the base accepts it at all (`None`:
    /// either answer is right — an uninstall of a version that is not running changes nothing,
    /// and the base answers it `200` when it still lists a stopped entry of that identity).
    fn after(&self, op: Op) -> (Model, Option<bool>) {
        let mut next = self.clone();
        let accepted = match op {
            Op::Install { build, activate } => {
                let (key, _, version) = BUILDS[build];
                if self.versions.contains_key(version) {
                    false
                } else {
                    next.versions.insert(version, key);
                    if self.active.is_none() || activate {
                        next.active = Some(version);
                    }
                    true
                }
            }
            Op::Replace { build } => {
                let (key, _, version) = BUILDS[build];
                match self.versions.get(version) {
                    // The same bytes are already running under that identity.
                    Some(running) if *running == key => false,
                    // A rebuild of a running version takes its seat; the active one stays.
                    Some(_) => {
                        next.versions.insert(version, key);
                        next.active = Some(version);
                        true
                    }
                    None => {
                        if let Some(previous) = self.active {
                            next.versions.remove(previous);
                        }
                        next.versions.insert(version, key);
                        next.active = Some(version);
                        true
                    }
                }
            }
            Op::Uninstall { version } => {
                if next.versions.remove(version).is_none() {
                    return (next, None);
                } else {
                    if self.active == Some(version) {
                        // The newest other version takes the traffic.
                        next.active = next.versions.keys().next_back().copied();
                    }
                    true
                }
            }
            Op::Switch { version } => {
                let known = self.versions.contains_key(version);
                if known {
                    next.active = Some(version);
                }
                known
            }
            Op::AddTenant(tenant) => next.tenants.insert(tenant),
            Op::RemoveTenant(tenant) => {
                if !next.tenants.remove(tenant) {
                    return (next, None);
                }
                true
            }
        };
        (next, Some(accepted))
    }
}

fn random_op(rng: &mut StdRng) -> Op {
    let version = VERSIONS[rng.random_range(0..VERSIONS.len())];
    let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
    match rng.random_range(0..10) {
        0..=2 => Op::Install { build: rng.random_range(0..BUILDS.len()), activate: rng.random_bool(0.5) },
        3..=4 => Op::Replace { build: rng.random_range(0..BUILDS.len()) },
        5 => Op::Uninstall { version },
        6 => Op::Switch { version },
        7..=8 => Op::AddTenant(tenant),
        _ => Op::RemoveTenant(tenant),
    }
}

/// Sends `op`; `Err` when the base died before answering.
fn send(base: &TestBase, op: Op) -> Result<u16, String> {
    // A kill inside a load quarantines those bytes (the base cannot tell it from a crash), and
    // uploading them again answers 409 QUARANTINED: each upload is also the explicit retry.
    let upload = |file: &str, query: &str| {
        let bytes = std::fs::read(file).expect("reading a fixture");
        let headers = [("content-type", "application/octet-stream")];
        base.try_admin("POST", &format!("/api/v1/modules?{query}&retry=true"), &headers, Some(&bytes))
    };
    let reply = match op {
        Op::Install { build, activate } => upload(BUILDS[build].1, &format!("activate={activate}")),
        Op::Replace { build } => upload(BUILDS[build].1, "strategy=replace"),
        Op::Uninstall { version } => {
            base.try_admin("DELETE", &format!("/api/v1/modules/fx-versioned/{version}"), &[], None)
        }
        Op::Switch { version } => {
            let body = json!({ "version": version }).to_string();
            let headers = [("content-type", "application/json")];
            base.try_admin("POST", "/api/v1/modules/fx-versioned/switch", &headers, Some(body.as_bytes()))
        }
        Op::AddTenant(tenant) => upload(artifacts::GOOD, &format!("name={tenant}")),
        Op::RemoveTenant(tenant) => {
            base.try_admin("DELETE", &format!("/api/v1/modules/{tenant}/0.1.0"), &[], None)
        }
    }?;
    Ok(reply.status)
}

/// What the base hosts now, read through the operations API and through traffic.
fn observe(base: &TestBase) -> Model {
    let listed = base.admin_get("/api/v1/modules").json;
    let mut model = Model::default();
    for entry in listed["modules"].as_array().expect("a module list") {
        let state = entry["state"].as_str().unwrap_or_default();
        if !matches!(state, "active" | "inactive") {
            continue;
        }
        let name = entry["name"].as_str().unwrap_or_default();
        if let Some(tenant) = TENANTS.iter().find(|t| **t == name) {
            model.tenants.insert(tenant);
            continue;
        }
        assert_eq!(name, "fx-versioned", "unexpected module: {listed}");
        let version = VERSIONS.iter().copied().find(|v| entry["version"] == *v).expect("a known version");
        // Which build runs, asked of the version itself.
        let build = base.get_with("/fx-versioned/build", &[("x-pedestal-version", version)]).body;
        let key = BUILDS
            .iter()
            .find(|(key, _, v)| {
                *v == version && build == format!("fx_versioned_{}", key.replace(['.', '-'], "_"))
            })
            .map(|(key, _, _)| *key)
            .unwrap_or_else(|| panic!("{version} serves an unknown build {build:?}"));
        model.versions.insert(version, key);
        if entry["active"] == true && state == "active" {
            model.active = Some(version);
        }
    }
    model
}

fn check_answer(status: u16, accepted: Option<bool>, context: &str) {
    if let Some(accepted) = accepted {
        assert_eq!(status < 300, accepted, "{context} answered {status}");
    }
}

fn kill(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

#[test]
fn a_random_kill_never_loses_or_tears_acknowledged_state() {
    let kills: usize = if std::env::var_os("PEDESTAL_SLOW_TESTS").is_some() { 200 } else { 50 };
    let seed: u64 = std::env::var("PEDESTAL_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(11);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut base = TestBase::start();
    let mut model = Model::default();
    let (mut interrupted, mut during_restore, mut inside_a_restore) = (0, 0, 0);
    for kill_no in 0..kills {
        let context = |what: &str| format!("seed {seed}, kill {kill_no}: {what}");
        // A few acknowledged operations, each checked against the model as it goes.
        for _ in 0..rng.random_range(0..4) {
            let op = random_op(&mut rng);
            let (next, accepted) = model.after(op);
            let status = send(&base, op).unwrap_or_else(|e| panic!("{}", context(&format!("{op:?}: {e}"))));
            check_answer(status, accepted, &context(&format!("{op:?}")));
            model = next;
            assert_eq!(observe(&base), model, "{}", context(&format!("after {op:?}")));
        }
        // The doomed operation: SIGKILL a few milliseconds into it.
        let op = random_op(&mut rng);
        let (next, accepted) = model.after(op);
        // The whole base, supervisor and worker: a worker killed alone would be restarted by
        // its supervisor, whose restore the next kill would cut short unobserved.
        let pid = base.supervisor_pid();
        let delay = Duration::from_micros(rng.random_range(0..12_000));
        let killer = thread::spawn(move || {
            thread::sleep(delay);
            kill(pid);
        });
        let answer = send(&base, op);
        killer.join().unwrap();
        let uncertain = match answer {
            Ok(status) => {
                check_answer(status, accepted, &context(&format!("{op:?}")));
                model = next.clone();
                None
            }
            Err(_) => {
                interrupted += 1;
                Some(next)
            }
        };
        base = if rng.random_bool(0.2) {
            during_restore += 1;
            // Half at a random moment, half as soon as the restore is inside a module's load.
            let when = if rng.random_bool(0.5) {
                RestoreKill::After(Duration::from_millis(rng.random_range(0..150)))
            } else {
                RestoreKill::InsideALoad
            };
            let (restarted, inside) = base.kill_and_restart_killing_restores(&[when], &[]);
            inside_a_restore += usize::from(inside[0]);
            restarted
        } else {
            base.kill_and_restart(&[])
        };
        let observed = observe(&base);
        assert!(
            observed == model || Some(&observed) == uncertain.as_ref(),
            "{}\nobserved {observed:?}\nacknowledged {model:?}\nor, with the interrupted {op:?}, {uncertain:?}\nlog:\n{}",
            context("the restart lost or tore state"),
            base.log()
        );
        model = observed;
    }
    eprintln!(
        "{kills} kills (seed {seed}): {interrupted} interrupted an operation; {during_restore} restarts \
         killed again, {inside_a_restore} of them inside a module's load"
    );
    assert!(interrupted > 0, "no kill landed during an operation: the trial tested nothing");
}

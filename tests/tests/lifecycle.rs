//! Module lifecycle against the real binary: versions side by side, switch, pinned versions,
//! weighted traffic, replace, zero failed requests while switching, drain timeout, one operation
//! at a time, asynchronous operations.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use pedestal_tests::{Reply, TestBase, artifact_name, artifacts, eventually};
use serde_json::{Value, json};

fn switch(base: &TestBase, version: &str) -> Reply {
    base.admin_json("POST", "/api/v1/modules/fx-versioned/switch", &json!({"version": version}))
}

fn served_by(reply: &Reply) -> &str {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-pedestal-version"), Some(reply.body.as_str()), "misrouted: {reply:?}");
    &reply.body
}

#[test]
fn versions_run_side_by_side_and_a_switch_moves_the_traffic() {
    let base = TestBase::start();
    assert_eq!(base.install_ok(artifacts::VERSIONED_1_0_0)["state"], "active");
    assert_eq!(base.install_ok(artifacts::VERSIONED_1_1_0)["state"], "inactive");
    assert_eq!(served_by(&base.get("/fx-versioned/version")), "1.0.0");
    let pinned = base.get_with("/fx-versioned/version", &[("x-pedestal-version", "1.1.0")]);
    assert_eq!(served_by(&pinned), "1.1.0");
    let missing = base.get_with("/fx-versioned/version", &[("x-pedestal-version", "3.0.0")]);
    assert_eq!((missing.status, missing.code()), (404, "VERSION_NOT_FOUND"), "{missing:?}");
    assert_eq!(missing.json["details"]["running"], json!(["1.0.0", "1.1.0"]));

    let switched = switch(&base, "1.1.0");
    assert_eq!(switched.status, 200, "{switched:?}");
    assert_eq!(
        (switched.json["active_version"].as_str(), switched.json["previous_version"].as_str()),
        (Some("1.1.0"), Some("1.0.0"))
    );
    assert_eq!(served_by(&base.get("/fx-versioned/version")), "1.1.0");
    let module = base.admin_get("/api/v1/modules/fx-versioned").json;
    assert_eq!(module["active_version"], "1.1.0");
    let last = |v: &Value| v["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last(&module["versions"][0])["state"].as_str(), last(&module["versions"][0])["reason"].as_str()),
        (Some("inactive"), Some("switch"))
    );
    assert_eq!(last(&module["versions"][1])["reason"], "switch");

    let activated = base.install_query(artifacts::VERSIONED_2_0_0, "activate=true");
    assert_eq!((activated.status, activated.json["state"].as_str()), (201, Some("active")), "{activated:?}");
    assert_eq!(served_by(&base.get("/fx-versioned/version")), "2.0.0");

    assert_eq!(switch(&base, "9.9.9").code(), "NOT_FOUND");
    assert_eq!(base.uninstall("fx-versioned", "1.0.0").json["state"], "stopped");
    let gone = switch(&base, "1.0.0");
    assert_eq!((gone.status, gone.code()), (404, "NOT_FOUND"), "an uninstalled version is gone: {gone:?}");
    assert_eq!(switch(&base, "not-semver").code(), "BAD_REQUEST");
}

#[test]
fn weights_split_the_traffic_for_a_canary() {
    let base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    base.install_ok(artifacts::VERSIONED_1_1_0);
    let set =
        base.admin_json("PUT", "/api/v1/modules/fx-versioned/traffic", &json!({"1.0.0": 90, "1.1.0": 10}));
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(set.json["weights"], json!({"1.0.0": 90, "1.1.0": 10}));
    let mut canary = 0;
    for _ in 0..100 {
        if served_by(&base.get("/fx-versioned/version")) == "1.1.0" {
            canary += 1;
        }
    }
    assert_eq!(canary, 10, "the split is exact over a cycle of the total weight");
    // A pinned request ignores the weights.
    let pinned = base.get_with("/fx-versioned/version", &[("x-pedestal-version", "1.1.0")]);
    assert_eq!(served_by(&pinned), "1.1.0");

    let stopped = base.admin_json("PUT", "/api/v1/modules/fx-versioned/traffic", &json!({"2.0.0": 5}));
    assert_eq!(stopped.code(), "NOT_FOUND");
    let zero = base.admin_json("PUT", "/api/v1/modules/fx-versioned/traffic", &json!({"1.0.0": 0}));
    assert_eq!(zero.code(), "BAD_REQUEST");
    let cleared = base.admin_json("PUT", "/api/v1/modules/fx-versioned/traffic", &json!({}));
    assert_eq!(cleared.json["weights"], Value::Null);
    assert!((0..20).all(|_| served_by(&base.get("/fx-versioned/version")) == "1.0.0"));
}

#[test]
fn a_request_finishes_on_the_version_it_started_on() {
    let base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    base.install_ok(artifacts::VERSIONED_1_1_0);
    thread::scope(|scope| {
        let slow = scope.spawn(|| base.get("/fx-versioned/sleep?ms=400"));
        thread::sleep(Duration::from_millis(100));
        assert_eq!(switch(&base, "1.1.0").status, 200);
        assert_eq!(served_by(&base.get("/fx-versioned/version")), "1.1.0");
        assert_eq!(served_by(&slow.join().unwrap()), "1.0.0");
    });
}

#[test]
fn replace_installs_switches_drains_and_unloads_the_old_version() {
    let base = TestBase::start();
    let old = base.install_ok(artifacts::VERSIONED_1_0_0);
    thread::scope(|scope| {
        let slow = scope.spawn(|| base.get("/fx-versioned/sleep?ms=400"));
        thread::sleep(Duration::from_millis(100));
        let replaced = base.install_query(artifacts::VERSIONED_1_1_0, "strategy=replace");
        assert_eq!(replaced.status, 201, "{replaced:?}");
        assert_eq!(replaced.json["state"], "active");
        assert_eq!(replaced.json["replaced"], json!({"version": "1.0.0", "state": "stopped"}));
        assert_eq!(served_by(&slow.join().unwrap()), "1.0.0", "the in-flight request finished on 1.0.0");
    });
    assert_eq!(served_by(&base.get("/fx-versioned/version")), "1.1.0");
    assert!(!base.maps_contain(&artifact_name(old["sha256"].as_str().unwrap())));

    // Replacing with the same version stops the old instance first.
    let again = base.install_query(artifacts::VERSIONED_1_1_0, "strategy=replace");
    assert_eq!(again.code(), "ALREADY_INSTALLED", "the very same artifact is a no-op: {again:?}");
}

#[test]
fn no_request_fails_across_100_switches_and_20_replace_deploys_under_load() {
    let base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    base.install_ok(artifacts::VERSIONED_1_1_0);
    let stop = AtomicBool::new(false);
    let (served, replies) = thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut replies = Vec::new();
                    while !stop.load(Ordering::Relaxed) && replies.len() < 20_000 {
                        replies.push(base.get("/fx-versioned/version"));
                    }
                    replies
                })
            })
            .collect();
        for i in 0..100 {
            let to = if i % 2 == 0 { "1.1.0" } else { "1.0.0" };
            let reply = switch(&base, to);
            assert_eq!(reply.status, 200, "switch {i}: {reply:?}");
        }
        // Replace-deploys: each round installs the other version with `strategy=replace`, which
        // switches to it and drains and unloads the version that was active.
        for i in 0..20 {
            let (target, artifact) = if i % 2 == 0 {
                ("1.1.0", artifacts::VERSIONED_1_1_0)
            } else {
                ("1.0.0", artifacts::VERSIONED_1_0_0)
            };
            if i == 0 {
                assert_eq!(base.uninstall("fx-versioned", target).json["state"], "stopped");
            }
            let reply = base.install_query(artifact, "strategy=replace");
            assert_eq!(reply.status, 201, "replace {i}: {reply:?}");
            assert_eq!(reply.json["replaced"]["state"], "stopped", "replace {i}: {reply:?}");
        }
        stop.store(true, Ordering::Relaxed);
        let replies: Vec<Reply> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
        (replies.iter().map(|r| served_by(r).to_owned()).collect::<Vec<_>>(), replies.len())
    });
    assert!(replies > 100, "only {replies} requests were made");
    assert!(served.iter().any(|v| v == "1.0.0") && served.iter().any(|v| v == "1.1.0"));
}

/// A rebuild of the running version (a developer's every edit) replaces it in its own seat:
/// requests arriving between the old build's drain and the new one's routing wait for the seat
/// instead of getting `503`.
#[test]
fn same_version_rebuilds_replace_under_load_without_a_failed_request() {
    let base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    let stop = AtomicBool::new(false);
    let replies = thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut replies = Vec::new();
                    while !stop.load(Ordering::Relaxed) && replies.len() < 20_000 {
                        replies.push(base.get("/fx-versioned/build"));
                    }
                    replies
                })
            })
            .collect();
        for i in 0..20 {
            let artifact = if i % 2 == 0 { artifacts::VERSIONED_1_0_0_B } else { artifacts::VERSIONED_1_0_0 };
            let reply = base.install_query(artifact, "strategy=replace");
            assert_eq!(reply.status, 201, "replace {i}: {reply:?}");
            assert_eq!(
                reply.json["replaced"],
                json!({"version": "1.0.0", "state": "stopped"}),
                "replace {i}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect::<Vec<Reply>>()
    });
    let failed: Vec<&Reply> = replies.iter().filter(|r| r.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        replies.len(),
        failed[0]
    );
    let builds: std::collections::BTreeSet<&str> = replies.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(
        builds,
        ["fx_versioned_1_0_0", "fx_versioned_1_0_0_b"].into_iter().collect(),
        "both builds served {} requests",
        replies.len()
    );
}

#[test]
fn requests_still_running_at_the_drain_timeout_get_a_clear_503() {
    let base = TestBase::start_with(&["--drain-timeout-ms", "200"]);
    base.install_ok(artifacts::VERSIONED_1_0_0);
    thread::scope(|scope| {
        let slow = scope.spawn(|| base.get("/fx-versioned/sleep?ms=3000"));
        thread::sleep(Duration::from_millis(100));
        let removed = base.uninstall("fx-versioned", "1.0.0");
        assert_eq!(removed.json["state"], "stopped", "{removed:?}");
        let cut = slow.join().unwrap();
        assert_eq!((cut.status, cut.code()), (503, "DRAIN_TIMEOUT"), "{cut:?}");
        assert_eq!(cut.json["details"]["timeout_ms"], 200);
    });
}

#[test]
fn one_operation_at_a_time_per_identity_and_async_operations_report_their_outcome() {
    let base = TestBase::start();
    let accepted = base.install_query(artifacts::VERSIONED_1_0_0, "async=true");
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let url = accepted.json["status_url"].as_str().unwrap().to_owned();
    let done = eventually("the install operation", Duration::from_secs(10), || {
        let op = base.admin_get(&url).json;
        (op["status"] != "running").then_some(op)
    });
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["kind"], "install");
    assert_eq!(done["result"]["version"], "1.0.0");

    thread::scope(|scope| {
        let slow = scope.spawn(|| base.get("/fx-versioned/sleep?ms=600"));
        thread::sleep(Duration::from_millis(100));
        let draining = base.admin("DELETE", "/api/v1/modules/fx-versioned/1.0.0?async=true", &[], None);
        assert_eq!(draining.status, 202, "{draining:?}");
        thread::sleep(Duration::from_millis(50));
        let second = base.uninstall("fx-versioned", "1.0.0");
        assert_eq!((second.status, second.code()), (409, "OPERATION_IN_PROGRESS"), "{second:?}");
        let busy = switch(&base, "1.0.0");
        assert_eq!(busy.status, 409, "{busy:?}");
        let url = draining.json["status_url"].as_str().unwrap().to_owned();
        let op = base.admin_get(&url).json;
        assert_eq!(op["status"], "running", "{op}");
        assert_eq!(served_by(&slow.join().unwrap()), "1.0.0");
        let done = eventually("the uninstall operation", Duration::from_secs(10), || {
            let op = base.admin_get(&url).json;
            (op["status"] != "running").then_some(op)
        });
        assert_eq!(done["result"]["state"], "stopped", "{done}");
    });

    let failed = base.install_query(artifacts::START_FAILS, "async=true");
    let url = failed.json["status_url"].as_str().unwrap().to_owned();
    let done = eventually("the failing install", Duration::from_secs(10), || {
        let op = base.admin_get(&url).json;
        (op["status"] != "running").then_some(op)
    });
    assert_eq!(
        (done["status"].as_str(), done["error"]["code"].as_str()),
        (Some("failed"), Some("START_FAILED")),
        "{done}"
    );
    assert_eq!(base.admin_get("/api/v1/operations/999999").code(), "NOT_FOUND");
}

#[test]
fn a_watched_directory_installs_dropped_modules_and_switches_to_newer_versions() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let base = TestBase::start_with(&["--watch", dir.path().to_str().unwrap()]);
    // Written in two halves with a pause longer than the quiet period: the first half must not
    // be loaded.
    let bytes = pedestal_tests::read(artifacts::VERSIONED_1_0_0);
    let mut file = std::fs::File::create(dir.path().join("versioned.so")).unwrap();
    file.write_all(&bytes[..bytes.len() / 2]).unwrap();
    file.flush().unwrap();
    base.wait_for_log("not loaded (incomplete or not a module");
    assert_eq!(base.get("/fx-versioned/version").code(), "MODULE_NOT_FOUND");
    file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(file);
    eventually("1.0.0 installed from the directory", Duration::from_secs(10), || {
        (base.get("/fx-versioned/version").body == "1.0.0").then_some(())
    });

    // A newer version, renamed into place: installed and switched to.
    std::fs::copy(artifacts::VERSIONED_1_1_0, dir.path().join("incoming.tmp")).unwrap();
    std::fs::rename(dir.path().join("incoming.tmp"), dir.path().join("versioned-1.1.0.so")).unwrap();
    eventually("traffic on 1.1.0", Duration::from_secs(10), || {
        (base.get("/fx-versioned/version").body == "1.1.0").then_some(())
    });
    let module = base.admin_get("/api/v1/modules/fx-versioned").json;
    assert_eq!(
        module["versions"].as_array().unwrap().len(),
        2,
        "the older version stays, inactive: {module}"
    );
}

#[test]
fn replacing_a_version_with_a_rebuild_of_itself_leaves_the_other_versions_alone() {
    let base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    base.install_ok(artifacts::VERSIONED_1_1_0);
    assert_eq!(switch(&base, "1.1.0").status, 200);
    // Other bytes, same module and version (a rebuild): trailing bytes do not change the code.
    let mut rebuilt = pedestal_tests::read(artifacts::VERSIONED_1_1_0);
    rebuilt.extend_from_slice(b"rebuilt");
    let headers = [("content-type", "application/octet-stream")];
    let replaced = base.admin("POST", "/api/v1/modules?strategy=replace", &headers, Some(&rebuilt));
    assert_eq!(replaced.status, 201, "{replaced:?}");
    assert_eq!(replaced.json["replaced"]["version"], "1.1.0", "{replaced:?}");
    assert_ne!(replaced.json["sha256"], base.module("fx-versioned")["sha256"].clone(), "a new artifact");
    let module = base.admin_get("/api/v1/modules/fx-versioned").json;
    assert_eq!(module["active_version"], "1.1.0", "{module}");
    assert_eq!(module["versions"][0]["state"], "inactive", "1.0.0 stays installed: {module}");
    let history = module["versions"][0]["history"].to_string();
    assert!(!history.contains("took over"), "1.0.0 never took the traffic in between: {history}");
    assert_eq!(served_by(&base.get("/fx-versioned/version")), "1.1.0");
}

#[test]
fn a_sigterm_during_an_uninstall_does_not_lose_the_other_modules() {
    let mut base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::VERSIONED_1_0_0);
    let url = format!("{}/fx-versioned/sleep?ms=1500", base.traffic);
    let slow = thread::spawn(move || ureq::get(&url).call().map(|r| r.status()).ok());
    thread::sleep(Duration::from_millis(100));
    let draining = base.admin("DELETE", "/api/v1/modules/fx-versioned/1.0.0?async=true", &[], None);
    assert_eq!(draining.status, 202);
    thread::sleep(Duration::from_millis(100));
    // The uninstall is still draining the slow request; shutdown stops everything else meanwhile.
    assert_eq!(base.terminate(Duration::from_secs(10)), Some(0));
    let _ = slow.join();
    let base = base.kill_and_restart(&[]);
    assert_eq!(base.get("/fx-good/ping").body, "pong", "{}", base.log());
}

/// A leak check: an identity installed and uninstalled again and again (a fleet alternating two
/// versions) keeps a bounded history — each instance its latest transitions, at most 64, and the
/// module at most 8 retired instances — where the earlier incarnations' histories used to pile
/// up forever (~1 KiB of history and ~10 KiB of the base's RSS per cycle).
#[test]
fn reinstalling_an_identity_keeps_a_bounded_history() {
    let base = TestBase::start();
    let files = [artifacts::VERSIONED_1_0_0, artifacts::VERSIONED_1_1_0];
    let versions = ["1.0.0", "1.1.0"];
    base.install_ok(files[0]);
    for cycle in 0..40 {
        let (new, old) = ((cycle + 1) % 2, cycle % 2);
        base.install_ok(files[new]);
        assert_eq!(switch(&base, versions[new]).status, 200);
        assert_eq!(base.uninstall("fx-versioned", versions[old]).json["state"], "stopped");
    }
    let module = base.admin_get("/api/v1/modules/fx-versioned").json;
    for version in module["versions"].as_array().unwrap() {
        let history = version["history"].as_array().unwrap();
        assert!(history.len() <= 64, "{} kept {} transitions", version["version"], history.len());
    }
    let retired = module["retired"].as_array().unwrap();
    assert_eq!(retired.len(), 8, "the latest incarnations stay visible, and no more: {retired:?}");
    assert!(retired.iter().all(|r| r["state"] == "stopped" && r["history"].as_array().unwrap().len() <= 64));
    let active = module["versions"].as_array().unwrap().iter().find(|v| v["version"] == "1.0.0").unwrap();
    assert_eq!(active["history"].as_array().unwrap().last().unwrap()["state"], "active");
}

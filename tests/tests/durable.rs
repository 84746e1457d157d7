//! Durable state against the real binary: a base killed with SIGKILL restores exactly what it
//! acknowledged, quarantines a module it died loading, installs boot modules, and reports
//! readiness.

use std::{thread, time::Duration};

use pedestal_tests::{TestBase, artifacts, eventually, read};
use serde_json::{Value, json};

fn active_version(base: &TestBase, name: &str) -> Value {
    base.admin_get(&format!("/api/v1/modules/{name}")).json["active_version"].clone()
}

fn pinned(base: &TestBase, version: &str) -> String {
    base.get_with("/fx-versioned/version", &[("x-pedestal-version", version)]).body
}

#[test]
fn a_killed_base_restores_exactly_what_it_acknowledged() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::VERSIONED_1_0_0);
    base.install_ok(artifacts::VERSIONED_1_1_0);
    assert_eq!(
        base.admin_json("POST", "/api/v1/modules/fx-versioned/switch", &json!({"version": "1.1.0"})).status,
        200
    );
    let weights = json!({"1.0.0": 1, "1.1.0": 3});
    assert_eq!(base.admin_json("PUT", "/api/v1/modules/fx-versioned/traffic", &weights).status, 200);
    base.install_as(artifacts::GOOD, "tenant-a");
    base.install_as(artifacts::GOOD, "tenant-b");
    assert_eq!(base.uninstall("tenant-b", "0.1.0").json["state"], "stopped");
    assert_eq!(base.put_limits("fx-good", &json!({"max_concurrent_requests": 7})).status, 200);
    let leaky = base.install_ok(artifacts::LEAKY);
    assert_eq!(base.uninstall("fx-leaky", "0.1.0").json["state"], "stopped");
    let leaky_artifact = base.data_dir().join(format!("artifacts/{}.so", leaky["sha256"].as_str().unwrap()));
    assert!(leaky_artifact.exists(), "kept for a while after its last use, for a quick reinstall");

    let base = base.kill_and_restart(&[]);
    assert_eq!(base.admin_get("/api/v1/ready").json["ready"], true);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    assert_eq!(base.get("/tenant-a/ping").body, "pong");
    assert_eq!(base.get("/tenant-b/ping").code(), "MODULE_NOT_FOUND");
    assert_eq!(base.get("/fx-leaky/leak?kib=1").code(), "MODULE_NOT_FOUND");
    assert!(!leaky_artifact.exists(), "an artifact nothing refers to is collected at boot");
    assert_eq!(active_version(&base, "fx-versioned"), "1.1.0");
    assert_eq!((pinned(&base, "1.0.0"), pinned(&base, "1.1.0")), ("1.0.0".into(), "1.1.0".into()));
    let traffic = base.admin_get("/api/v1/modules/fx-versioned/traffic").json;
    assert_eq!(traffic["weights"], weights, "{traffic}");
    let limits = &base.module("fx-good")["limits"];
    assert_eq!(
        (limits["max_concurrent_requests"].as_u64(), limits["sources"]["max_concurrent_requests"].as_str()),
        (Some(7), Some("api"))
    );
    let listed = base.admin_get("/api/v1/modules").json;
    assert_eq!(listed["modules"].as_array().unwrap().len(), 4, "{listed}");
    assert_eq!(listed["quarantined"], json!([]));
}

#[test]
fn sigkill_during_install_switch_or_uninstall_restarts_into_a_consistent_state() {
    let mut base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    for round in 0..9u64 {
        // Each round: an operation in flight, SIGKILL after a few milliseconds, restart.
        let (kind, reply) = match round % 3 {
            0 => ("install", base.install_query(artifacts::VERSIONED_1_1_0, "async=true&activate=true")),
            1 => (
                "switch",
                base.admin_json(
                    "POST",
                    "/api/v1/modules/fx-versioned/switch?async=true",
                    &json!({"version": "1.0.0"}),
                ),
            ),
            _ => (
                "uninstall",
                base.admin("DELETE", "/api/v1/modules/fx-versioned/1.1.0?async=true", &[], None),
            ),
        };
        thread::sleep(Duration::from_millis(round % 4));
        let _ = reply;
        base = base.kill_and_restart(&[]);
        let listed = base.admin_get("/api/v1/modules").json;
        // Whatever survived is running and serves; nothing is half there.
        for module in listed["modules"].as_array().unwrap() {
            let version = module["version"].as_str().unwrap();
            assert!(
                matches!(module["state"].as_str(), Some("active" | "inactive")),
                "round {round} ({kind}): {listed}"
            );
            assert_eq!(pinned(&base, version), version, "round {round} ({kind}): {listed}");
        }
        let active = active_version(&base, "fx-versioned");
        let served = base.get("/fx-versioned/version").body;
        assert_eq!(
            Some(served.as_str()),
            active.as_str(),
            "round {round} ({kind}): {listed}\n{}",
            base.log()
        );
        // An install cut short may be quarantined (the base died while loading it): retry it.
        for q in listed["quarantined"].as_array().unwrap() {
            assert_eq!(kind, "install", "only a load can be interrupted into quarantine: {listed}");
            // Killed inside the library's constructors, the name was not known yet: retried by
            // its artifact (uploading the same bytes again answers 409 QUARANTINED).
            let retry = match (q["name"].as_str(), q["version"].as_str()) {
                (Some(name), Some(version)) => format!("/api/v1/modules/{name}/{version}/retry"),
                _ => format!("/api/v1/artifacts/{}/retry", q["sha256"].as_str().unwrap()),
            };
            let retried = base.admin("POST", &retry, &[], None);
            assert!(retried.status == 200 || retried.status == 201, "{retried:?}");
        }
        // Acknowledged operations on the next round start from a known state.
        if round % 3 == 2 {
            let _ = base.uninstall("fx-versioned", "1.1.0");
            let _ = base.uninstall("fx-versioned", "1.1.0");
        }
    }
    // And acknowledged operations are never lost.
    let installed = base.install_query(artifacts::VERSIONED_1_1_0, "activate=true");
    assert!(installed.status == 201 || installed.code() == "ALREADY_INSTALLED", "{installed:?}");
    assert_eq!(
        base.admin_json("POST", "/api/v1/modules/fx-versioned/switch", &json!({"version": "1.1.0"})).status,
        200
    );
    let base = base.kill_and_restart(&[]);
    assert_eq!(active_version(&base, "fx-versioned"), "1.1.0");
}

#[test]
fn a_module_that_kills_the_base_in_its_start_is_quarantined_on_the_next_start() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    std::fs::write(base.data_dir().join("abort-on-start"), "").unwrap();
    let crashed = ureq::post(&format!("{}/api/v1/modules", base.admin))
        .set("authorization", &base.bearer())
        .set("content-type", "application/octet-stream")
        .send_bytes(&read(artifacts::START_ABORTS));
    assert!(crashed.is_err(), "the base should have died: {crashed:?}");

    let base = base.kill_and_restart(&[]);
    assert_eq!(base.get("/fx-good/ping").body, "pong", "the rest is served");
    let module = base.admin_get("/api/v1/modules/fx-start-aborts").json;
    let quarantined = &module["quarantined"][0];
    assert_eq!(quarantined["version"], "0.1.0", "{module}");
    assert!(quarantined["reason"].as_str().unwrap().contains("died while loading or starting"), "{module}");
    let health = base.admin_get("/api/v1/health").json;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["problems"][0]["state"], "quarantined", "{health}");
    assert_eq!(base.get("/fx-start-aborts/ping").code(), "MODULE_NOT_FOUND");

    // Still quarantined after another restart, until an operator retries it.
    let base = base.kill_and_restart(&[]);
    assert_eq!(base.admin_get("/api/v1/modules").json["quarantined"].as_array().unwrap().len(), 1);
    std::fs::remove_file(base.data_dir().join("abort-on-start")).unwrap();
    let retried = base.admin("POST", "/api/v1/modules/fx-start-aborts/0.1.0/retry", &[], None);
    assert_eq!((retried.status, retried.json["state"].as_str()), (200, Some("active")), "{retried:?}");
    assert_eq!(base.get("/fx-start-aborts/ping").body, "pong");
    assert_eq!(base.admin_get("/api/v1/modules").json["quarantined"], json!([]));
    let base = base.kill_and_restart(&[]);
    assert_eq!(base.get("/fx-start-aborts/ping").body, "pong");
}

#[test]
fn boot_modules_install_in_order_and_readiness_can_wait_for_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(artifacts::GOOD, dir.path().join("10-good.so")).unwrap();
    std::fs::copy(artifacts::VERSIONED_1_0_0, dir.path().join("20-versioned.so")).unwrap();
    let modules_dir = dir.path().to_str().unwrap();
    let base = TestBase::start_with(&["--modules-dir", modules_dir, "--ready-requires-modules"]);
    assert_eq!(base.admin_get("/api/v1/ready").json["ready"], true);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    assert_eq!(base.get("/fx-versioned/version").body, "1.0.0");
    let good = base.module("fx-good");
    let versioned = base.module("fx-versioned");
    assert!(
        good["installed_at"].as_str() < versioned["installed_at"].as_str(),
        "name order: {good} {versioned}"
    );
    // Restarted on the same directory: restored, and the boot modules count as installed.
    let base = base.kill_and_restart(&["--modules-dir", modules_dir, "--ready-requires-modules"]);
    assert_eq!(base.admin_get("/api/v1/ready").json["ready"], true);
    assert_eq!(base.admin_get("/api/v1/modules").json["modules"].as_array().unwrap().len(), 2);

    std::fs::write(dir.path().join("30-broken.so"), b"not a module").unwrap();
    let strict = TestBase::start_with(&["--modules-dir", modules_dir, "--ready-requires-modules"]);
    let ready = strict.admin_get("/api/v1/ready");
    assert_eq!((ready.status, ready.json["ready"].as_bool()), (503, Some(false)), "{ready:?}");
    assert_eq!(strict.get("/fx-good/ping").body, "pong", "the modules that installed still serve");
    let lenient = TestBase::start_with(&["--modules-dir", modules_dir]);
    assert_eq!(lenient.admin_get("/api/v1/ready").json["ready"], true);
    eventually("boot modules", Duration::from_secs(5), || {
        (lenient.get("/fx-versioned/version").body == "1.0.0").then_some(())
    });
}

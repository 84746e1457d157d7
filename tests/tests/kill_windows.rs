//! The moments a `kill -9` used to lose acknowledged state, each reproduced deterministically:
//! a tenant's load cut short before its manifest was read (A), a kill during the base's own
//! restore (B), a kill during a same-version replace while the new build starts (C), and a
//! recorded active version that does not come back.

use std::{fs, thread, time::Duration};

use pedestal_tests::{RestoreKill, TestBase, artifacts};
use serde_json::json;

fn served_build(base: &TestBase) -> String {
    base.get("/fx-versioned/build").body
}

#[test]
fn a_tenant_cut_short_before_its_manifest_quarantines_only_that_tenant() {
    let base = TestBase::start();
    let sha256 = base.install_as(artifacts::GOOD, "tenant-1")["sha256"].as_str().unwrap().to_owned();
    base.install_as(artifacts::GOOD, "tenant-2");
    // What a base killed inside tenant-3's library constructors leaves behind: its loading
    // marker, written before the load, naming the artifact and the install name only.
    let loading = base.data_dir().join("loading");
    fs::create_dir_all(&loading).unwrap();
    let marker = json!({"sha256": sha256, "install_name": "tenant-3", "name": null, "version": null});
    fs::write(loading.join("1-0.json"), marker.to_string()).unwrap();

    let base = base.kill_and_restart(&[]);
    assert_eq!(base.get("/tenant-1/ping").body, "pong", "{}", base.log());
    assert_eq!(base.get("/tenant-2/ping").body, "pong");
    let quarantined = base.admin_get("/api/v1/modules").json["quarantined"].clone();
    assert_eq!(quarantined.as_array().unwrap().len(), 1, "{quarantined}");
    assert_eq!(quarantined[0]["install_name"], "tenant-3", "{quarantined}");
    // Retried by the name it was being installed under.
    let retried = base.admin("POST", "/api/v1/modules/tenant-3/0.1.0/retry", &[], None);
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(base.get("/tenant-3/ping").body, "pong");

    // And the siblings are still recorded: nothing was dropped from state.json.
    let base = base.kill_and_restart(&[]);
    for tenant in ["tenant-1", "tenant-2", "tenant-3"] {
        assert_eq!(base.get(&format!("/{tenant}/ping")).body, "pong", "{tenant}: {}", base.log());
    }
    assert_eq!(base.admin_get("/api/v1/modules").json["quarantined"], json!([]));
}

#[test]
fn a_kill_during_the_restore_quarantines_nothing() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::VERSIONED_1_0_0);
    // From now on fx-versioned's start hook takes a second: the restore is killed inside it.
    fs::write(base.data_dir().join("slow-start"), "").unwrap();
    let (base, inside) =
        base.kill_and_restart_killing_restores(&[RestoreKill::InsideTheStartOf("fx-versioned")], &[]);
    assert_eq!(inside, [true], "the kill was to land inside the restore's load of fx-versioned");
    let listed = base.admin_get("/api/v1/modules").json;
    assert_eq!(listed["quarantined"], json!([]), "{listed}\n{}", base.log());
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    assert_eq!(base.get("/fx-versioned/version").body, "1.0.0");

    // A completed restore forgets that death: one more kill inside a load is again only a kill.
    let (base, inside) =
        base.kill_and_restart_killing_restores(&[RestoreKill::InsideTheStartOf("fx-versioned")], &[]);
    assert_eq!(inside, [true]);
    assert_eq!(base.admin_get("/api/v1/modules").json["quarantined"], json!([]), "{}", base.log());
}

#[test]
fn two_restores_in_a_row_dying_in_one_module_without_a_crash_record_quarantine_it() {
    // What a module that gets the base killed during its start (say, by the OOM killer) looks
    // like from the outside: the restore dies inside its load, with no crash record, every time.
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::VERSIONED_1_0_0);
    fs::write(base.data_dir().join("slow-start"), "").unwrap();
    let (base, inside) = base.kill_and_restart_killing_restores(
        &[RestoreKill::InsideTheStartOf("fx-versioned"), RestoreKill::InsideTheStartOf("fx-versioned")],
        &[],
    );
    assert_eq!(inside, [true, true]);
    let quarantined = base.admin_get("/api/v1/modules").json["quarantined"].clone();
    assert_eq!(quarantined.as_array().unwrap().len(), 1, "{quarantined}\n{}", base.log());
    assert_eq!(quarantined[0]["name"], "fx-versioned", "{quarantined}");
    assert!(quarantined[0]["reason"].as_str().unwrap().contains("restores in a row"), "{quarantined}");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn a_module_that_crashes_the_base_during_the_restore_is_quarantined_not_restored_again() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::START_ABORTS);
    // From now on fx-start-aborts aborts the process in its start hook: the restore's.
    fs::write(base.data_dir().join("abort-on-start"), "").unwrap();
    let unsupervised = [("PEDESTAL_SUPERVISOR", "off")];
    let (status, base) = base.restart_through_a_crash(&unsupervised);
    assert!(!status.success(), "{status:?}");
    let quarantined = base.admin_get("/api/v1/modules").json["quarantined"].clone();
    assert_eq!(quarantined.as_array().unwrap().len(), 1, "{quarantined}\n{}", base.log());
    assert_eq!(quarantined[0]["name"], "fx-start-aborts", "{quarantined}");
    assert_eq!(quarantined[0]["signal"], "SIGABRT", "{quarantined}");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn a_kill_during_a_same_version_replace_keeps_the_build_it_replaced() {
    let base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    assert_eq!(served_build(&base), "fx_versioned_1_0_0");
    fs::write(base.data_dir().join("slow-start"), "").unwrap();
    let replace = base.install_query(artifacts::VERSIONED_1_0_0_B, "strategy=replace&async=true");
    assert_eq!(replace.status, 202, "{replace:?}");
    // The old build is unloaded at once; the new one sits in its one-second start hook.
    thread::sleep(Duration::from_millis(400));
    fs::remove_file(base.data_dir().join("slow-start")).unwrap();
    let base = base.kill_and_restart(&[]);
    assert_eq!(served_build(&base), "fx_versioned_1_0_0", "{}", base.log());
    assert_eq!(base.admin_get("/api/v1/modules/fx-versioned").json["active_version"], "1.0.0");

    // The base died loading the new build (it cannot tell a kill from a crash): its bytes are
    // quarantined, and only an explicit retry loads them again.
    let refused = base.install_query(artifacts::VERSIONED_1_0_0_B, "strategy=replace");
    assert_eq!((refused.status, refused.code()), (409, "QUARANTINED"), "{refused:?}");
    // An acknowledged same-version replace is recorded as the new build.
    let replaced = base.install_query(artifacts::VERSIONED_1_0_0_B, "strategy=replace&retry=true");
    assert_eq!(replaced.status, 201, "{replaced:?}");
    assert_eq!(served_build(&base), "fx_versioned_1_0_0_b");
    let base = base.kill_and_restart(&[]);
    assert_eq!(served_build(&base), "fx_versioned_1_0_0_b", "{}", base.log());
}

#[test]
fn a_same_version_replace_whose_new_build_fails_to_start_puts_the_old_build_back() {
    let base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    fs::write(base.data_dir().join("fail-start-fx_versioned_1_0_0_b"), "").unwrap();
    let replace = base.install_query(artifacts::VERSIONED_1_0_0_B, "strategy=replace");
    assert_eq!(replace.code(), "START_FAILED", "{replace:?}");
    assert!(replace.json["message"].as_str().unwrap().contains("started again"), "{replace:?}");
    assert_eq!(served_build(&base), "fx_versioned_1_0_0", "{}", base.log());
    assert_eq!(base.admin_get("/api/v1/modules/fx-versioned").json["active_version"], "1.0.0");
    // And so it is recorded.
    let base = base.kill_and_restart(&[]);
    assert_eq!(served_build(&base), "fx_versioned_1_0_0", "{}", base.log());
}

#[test]
fn a_missing_active_version_hands_the_traffic_to_a_running_one() {
    let base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    let newer = base.install_query(artifacts::VERSIONED_1_1_0, "activate=true");
    assert_eq!(newer.status, 201, "{newer:?}");
    assert_eq!(base.get("/fx-versioned/version").body, "1.1.0");
    // 1.1.0 cannot come back: its artifact is gone.
    let sha256 = newer.json["sha256"].as_str().unwrap();
    fs::remove_file(base.data_dir().join(format!("artifacts/{sha256}.so"))).unwrap();

    let base = base.kill_and_restart(&[]);
    assert_eq!(base.get("/fx-versioned/version").body, "1.0.0", "{}", base.log());
    let module = base.admin_get("/api/v1/modules/fx-versioned").json;
    assert_eq!(module["active_version"], "1.0.0", "{module}");
}

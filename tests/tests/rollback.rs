//! Rollback and reinstall by hash, uninstall that reads naturally, and the probes a developer's
//! and an operator's tools use, against the real binary: a rollback returns a module to the
//! build that had its traffic before the last switch or replace (switching back when that build
//! still runs, reinstalling it from the artifact store when it was unloaded); any artifact in the
//! store installs again by its sha256; `DELETE` of a module without a version lists the versions
//! to choose from; an uninstall of the active version says which took over (or refuses);
//! refused installs are logged; readiness on the traffic port and a public `/metrics` on request.

use pedestal_tests::{Reply, TestBase, artifacts};
use serde_json::json;

fn served(base: &TestBase, path: &str) -> String {
    let reply = base.get(path);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

fn rollback(base: &TestBase) -> Reply {
    base.admin("POST", "/api/v1/modules/fx-versioned/rollback", &[], None)
}

#[test]
fn a_rollback_after_a_replace_reinstalls_the_unloaded_version_from_the_store() {
    let base = TestBase::start();
    let first = base.install_ok(artifacts::VERSIONED_1_0_0);
    let replaced = base.install_query(artifacts::VERSIONED_1_1_0, "strategy=replace");
    assert_eq!(replaced.json["replaced"], json!({"version": "1.0.0", "state": "stopped"}), "{replaced:?}");
    assert_eq!(served(&base, "/fx-versioned/version"), "1.1.0");

    let back = rollback(&base);
    assert_eq!(back.status, 200, "{back:?}");
    assert_eq!(
        (
            back.json["active_version"].as_str(),
            back.json["how"].as_str(),
            back.json["previous_version"].as_str()
        ),
        (Some("1.0.0"), Some("reinstalled"), Some("1.1.0")),
        "{back:?}"
    );
    assert_eq!(back.json["previous_state"], "stopped", "a rollback by reinstall unloads what it replaced");
    assert_eq!(back.json["sha256"], first["sha256"]);
    assert_eq!(served(&base, "/fx-versioned/version"), "1.0.0");
    // And forward again: the rollback itself was a replace.
    let forward = rollback(&base);
    assert_eq!(
        (forward.status, forward.json["active_version"].as_str()),
        (200, Some("1.1.0")),
        "{forward:?}"
    );
    assert_eq!(served(&base, "/fx-versioned/version"), "1.1.0");
}

#[test]
fn a_rollback_after_a_switch_switches_back_and_a_rebuild_rolls_back_to_its_previous_bytes() {
    let base = TestBase::start();
    let fresh = rollback(&base);
    assert_eq!((fresh.status, fresh.code()), (404, "NOT_FOUND"), "{fresh:?}");
    base.install_ok(artifacts::VERSIONED_1_0_0);
    let nothing = rollback(&base);
    assert_eq!((nothing.status, nothing.code()), (409, "NO_PREVIOUS_VERSION"), "{nothing:?}");

    base.install_ok(artifacts::VERSIONED_1_1_0);
    let switched =
        base.admin_json("POST", "/api/v1/modules/fx-versioned/switch", &json!({"version": "1.1.0"}));
    assert_eq!(switched.status, 200, "{switched:?}");
    let back = rollback(&base);
    assert_eq!(
        (back.status, back.json["how"].as_str(), back.json["previous_state"].as_str()),
        (200, Some("switched"), Some("inactive")),
        "{back:?}"
    );
    assert_eq!(served(&base, "/fx-versioned/version"), "1.0.0");

    // A rebuild of the running version (other bytes) replaced in its seat, then rolled back:
    // the earlier bytes serve again.
    assert_eq!(served(&base, "/fx-versioned/build"), "fx_versioned_1_0_0");
    let rebuilt = base.install_query(artifacts::VERSIONED_1_0_0_B, "strategy=replace");
    assert_eq!(rebuilt.status, 201, "{rebuilt:?}");
    assert_eq!(served(&base, "/fx-versioned/build"), "fx_versioned_1_0_0_b");
    let back = rollback(&base);
    assert_eq!((back.status, back.json["how"].as_str()), (200, Some("reinstalled")), "{back:?}");
    assert_eq!(served(&base, "/fx-versioned/build"), "fx_versioned_1_0_0");
}

#[test]
fn an_artifact_in_the_store_installs_again_by_its_sha256() {
    let base = TestBase::start();
    let first = base.install_ok(artifacts::VERSIONED_1_0_0);
    let sha256 = first["sha256"].as_str().unwrap().to_owned();
    base.install_query(artifacts::VERSIONED_1_1_0, "strategy=replace");
    let json_post = |query: &str, body: &serde_json::Value| {
        base.admin(
            "POST",
            &format!("/api/v1/modules{query}"),
            &[("content-type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    };
    let again = json_post("?strategy=replace", &json!({"sha256": sha256}));
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(
        (
            again.json["version"].as_str(),
            again.json["state"].as_str(),
            again.json["replaced"]["version"].as_str()
        ),
        (Some("1.0.0"), Some("active"), Some("1.1.0")),
        "{again:?}"
    );
    assert_eq!(served(&base, "/fx-versioned/version"), "1.0.0");

    // The name a reinstall asks for is checked like an upload's: it names files and a mount point.
    let escape = json_post("?name=../../escape", &json!({"sha256": sha256}));
    assert_eq!((escape.status, escape.code()), (422, "BAD_REQUEST"), "{escape:?}");
    let pinned_twice = json_post(&format!("?sha256={sha256}"), &json!({"sha256": sha256}));
    assert_eq!((pinned_twice.status, pinned_twice.code()), (422, "BAD_REQUEST"), "{pinned_twice:?}");
    let unknown = json_post("", &json!({"sha256": "ab".repeat(32)}));
    assert_eq!((unknown.status, unknown.code()), (404, "NOT_FOUND"), "{unknown:?}");
    let malformed = json_post("", &json!({"sha256": "not-a-hash"}));
    assert_eq!((malformed.status, malformed.code()), (400, "BAD_REQUEST"), "{malformed:?}");
    let both = json_post("", &json!({"sha256": sha256, "path": "/tmp/x.so"}));
    assert_eq!((both.status, both.code()), (422, "BAD_REQUEST"), "{both:?}");
    assert!(both.json["message"].as_str().unwrap().contains("exactly one"), "{both:?}");
}

#[test]
fn uninstall_names_the_versions_to_choose_from_and_who_took_over() {
    let base = TestBase::start();
    base.install_ok(artifacts::VERSIONED_1_0_0);
    base.install_ok(artifacts::VERSIONED_1_1_0);
    let which = base.admin("DELETE", "/api/v1/modules/fx-versioned", &[], None);
    assert_eq!((which.status, which.code()), (400, "VERSION_REQUIRED"), "{which:?}");
    assert_eq!(which.json["details"]["running"], json!(["1.0.0", "1.1.0"]), "{which:?}");
    assert_eq!(which.json["details"]["active_version"], "1.0.0", "{which:?}");
    let unknown = base.admin("DELETE", "/api/v1/modules/nope", &[], None);
    assert_eq!((unknown.status, unknown.code()), (404, "NOT_FOUND"), "{unknown:?}");

    let kept = base.admin("DELETE", "/api/v1/modules/fx-versioned/1.0.0?keep_active=true", &[], None);
    assert_eq!((kept.status, kept.code()), (409, "VERSION_ACTIVE"), "{kept:?}");
    assert_eq!(served(&base, "/fx-versioned/version"), "1.0.0");

    let removed = base.uninstall("fx-versioned", "1.0.0");
    assert_eq!(
        (removed.json["state"].as_str(), removed.json["active_version"].as_str()),
        (Some("stopped"), Some("1.1.0")),
        "the answer names the version that took over: {removed:?}"
    );
    assert_eq!(served(&base, "/fx-versioned/version"), "1.1.0");
    // Gone from the listing; its history stays reachable with the module's description.
    let listed = base.admin_get("/api/v1/modules").json;
    let listed: Vec<_> = listed["modules"].as_array().unwrap().iter().map(|m| m["version"].clone()).collect();
    assert_eq!(listed, [json!("1.1.0")], "an uninstalled instance leaves the listing");
    let described = base.admin_get("/api/v1/modules/fx-versioned").json;
    assert_eq!(described["versions"].as_array().unwrap().len(), 1, "{described}");
    let retired = &described["retired"][0];
    assert_eq!((retired["version"].as_str(), retired["state"].as_str()), (Some("1.0.0"), Some("stopped")));
    let reasons: Vec<_> =
        retired["history"].as_array().unwrap().iter().map(|t| t["reason"].clone()).collect();
    assert_eq!(reasons.last(), Some(&json!("uninstall")), "{retired}");
    // The last one: nothing takes over, and keep_active does not stand in the way.
    let last = base.admin("DELETE", "/api/v1/modules/fx-versioned/1.1.0?keep_active=true", &[], None);
    assert_eq!(
        (last.status, last.json["active_version"].clone()),
        (200, serde_json::Value::Null),
        "{last:?}"
    );
    // The module has no instance left: the listing has none of it, its description only what
    // was retired, newest first; a second uninstall finds nothing to remove.
    assert!(base.admin_get("/api/v1/modules").json["modules"].as_array().unwrap().is_empty());
    let described = base.admin_get("/api/v1/modules/fx-versioned").json;
    let retired: Vec<_> =
        described["retired"].as_array().unwrap().iter().map(|r| r["version"].clone()).collect();
    assert_eq!((described["versions"].clone(), retired), (json!([]), vec![json!("1.1.0"), json!("1.0.0")]));
    let again = base.admin("DELETE", "/api/v1/modules/fx-versioned/1.1.0", &[], None);
    assert_eq!((again.status, again.code()), (404, "NOT_FOUND"), "{again:?}");
}

#[test]
fn the_rollback_record_and_its_artifact_survive_a_restart() {
    let base = TestBase::start();
    let first = base.install_ok(artifacts::VERSIONED_1_0_0);
    let replaced = base.install_query(artifacts::VERSIONED_1_1_0, "strategy=replace");
    assert_eq!(replaced.status, 201, "{replaced:?}");
    // A restart collects every unreferenced artifact at once: the one a rollback needs is kept.
    let base = base.kill_and_restart(&[]);
    assert_eq!(served(&base, "/fx-versioned/version"), "1.1.0");
    let back = rollback(&base);
    assert_eq!(
        (back.status, back.json["active_version"].as_str(), back.json["how"].as_str()),
        (200, Some("1.0.0"), Some("reinstalled")),
        "{back:?}"
    );
    assert_eq!(back.json["sha256"], first["sha256"]);
    assert_eq!(served(&base, "/fx-versioned/version"), "1.0.0");
}

#[test]
fn refused_installs_are_logged_with_their_code_and_the_uploader() {
    let base = TestBase::start();
    let refused = base.install_bytes(b"\x7fELF but not really a module");
    assert_eq!(refused.code(), "NOT_A_MODULE", "{refused:?}");
    let log = base.wait_for_log("install refused");
    let line = log.lines().find(|l| l.contains("install refused")).unwrap();
    assert!(line.contains("NOT_A_MODULE") && line.contains("127.0.0.1:"), "{line}");
}

#[test]
fn the_traffic_port_answers_readiness_and_metrics_can_be_public() {
    let base = TestBase::start();
    let ready = base.get("/.well-known/pedestal/ready");
    assert_eq!((ready.status, ready.json.clone()), (200, json!({"ready": true})), "{ready:?}");
    let closed = base.admin_without_token("GET", "/metrics", &[], None);
    assert_eq!(closed.status, 401, "{closed:?}");

    let open = TestBase::start_with(&["--metrics-public"]);
    let metrics = open.admin_without_token("GET", "/metrics", &[], None);
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(metrics.body.contains("# TYPE"), "{}", metrics.body);
    let modules = open.admin_without_token("GET", "/api/v1/modules", &[], None);
    assert_eq!(modules.status, 401, "only /metrics opens: {modules:?}");
}

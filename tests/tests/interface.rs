//! Interface evolution within a major version, against the real binary: a module built against
//! the frozen interface 1.0.0 runs in this (newer minor) base.

use pedestal_tests::{TestBase, artifact_name, artifacts};

#[test]
fn a_module_built_against_an_older_minor_loads_serves_and_unloads() {
    let base = TestBase::start();
    let installed = base.install_ok(artifacts::INTERFACE_1_0);
    assert_eq!(installed["interface_version"], "1.0.0");
    assert_eq!(installed["state"], "active");
    assert_eq!(base.get("/fx-interface-1-0/ping").body, "pong from 1.0");

    // What 1.0 cannot say is absent, not guessed: no declared limits, no task count, no hook.
    let module = base.module("fx-interface-1-0");
    assert_eq!(module["tasks"], serde_json::Value::Null, "{module}");
    assert_eq!(module["limits"]["sources"]["max_concurrent_requests"], "default", "{module}");
    assert!(module["heap"]["live_bytes"].as_u64().unwrap() > 0, "heap counters are 1.0 too: {module}");
    let (health, all) = base.health_of("fx-interface-1-0");
    assert_eq!(health["hook"]["outcome"], "unsupported", "{all}");
    assert_eq!(health["status"], "healthy", "{all}");

    let sha = installed["sha256"].as_str().unwrap().to_owned();
    let removed = base.uninstall("fx-interface-1-0", "0.1.0");
    assert_eq!(removed.json["state"], "stopped", "{removed:?}");
    assert!(!base.maps_contain(&artifact_name(&sha)));
}

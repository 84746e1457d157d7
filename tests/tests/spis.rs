//! SPIs against the real binary: a module implementing the `echo` SPI (`tests/spis/echo-spi`)
//! called through the operations API's SPI endpoint — typed errors, panics, fan-out, drain on
//! uninstall, and the version check at install.

use std::{thread, time::Duration};

use pedestal_tests::{TestBase, artifacts};
use serde_json::{Value, json};

fn call(base: &TestBase, method: &str, query: &str, args: &Value) -> pedestal_tests::Reply {
    base.admin_json("POST", &format!("/api/v1/spis/echo/{method}{query}"), args)
}

#[test]
fn an_spi_call_reaches_the_module_and_comes_back_typed() {
    let base = TestBase::start();
    base.install_ok(artifacts::ECHO);
    let echoed = call(&base, "echo", "?module=fx-echo", &json!(["hello"]));
    assert_eq!(echoed.status, 200, "{echoed:?}");
    assert_eq!(echoed.json["result"], json!({"text": "hello", "by": "fx-echo", "length": 5}));
    assert_eq!(echoed.json["module"], "fx-echo@0.1.0");

    let failed = call(&base, "fail", "?module=fx-echo", &json!(["NO_STOCK"]));
    assert_eq!(
        (failed.status, failed.code()),
        (502, "NO_STOCK"),
        "the implementation's own code: {failed:?}"
    );
    let panicked = call(&base, "boom", "?module=fx-echo", &json!([]));
    assert_eq!((panicked.status, panicked.code()), (502, "SPI_PANICKED"), "{panicked:?}");
    assert!(panicked.json["message"].as_str().unwrap().contains("boom on request"), "{panicked:?}");
    assert_eq!(base.get("/fx-echo/ping").body, "pong", "the module keeps serving after the panic");
    assert_eq!(base.module("fx-echo")["traffic"]["panics"], 1);
    let unknown = call(&base, "nonexistent", "?module=fx-echo", &json!([]));
    assert_eq!((unknown.status, unknown.code()), (501, "UNKNOWN_METHOD"), "{unknown:?}");
    let bad = call(&base, "echo", "?module=fx-echo", &json!([42]));
    assert_eq!(bad.code(), "BAD_PAYLOAD", "{bad:?}");

    let listed = base.admin_get("/api/v1/spis").json;
    assert_eq!(listed["implemented"]["echo"][0]["module"], "fx-echo@0.1.0", "{listed}");
    assert_eq!(listed["implemented"]["echo"][0]["spi_version"], "1.1.0", "{listed}");
    let nobody = base.admin_json("POST", "/api/v1/spis/ranker/rank", &json!([]));
    assert_eq!((nobody.status, nobody.code()), (503, "SPI_NOT_IMPLEMENTED"), "{nobody:?}");
}

#[test]
fn a_call_without_a_module_fans_out_to_every_implementation() {
    let base = TestBase::start();
    for tenant in ["echo-c", "echo-a", "echo-b"] {
        base.install_as(artifacts::ECHO, tenant);
    }
    let all = call(&base, "echo", "", &json!(["x"]));
    assert_eq!(all.status, 200, "{all:?}");
    let modules: Vec<&str> =
        all.json["results"].as_array().unwrap().iter().map(|r| r["module"].as_str().unwrap()).collect();
    assert_eq!(modules, ["echo-a@0.1.0", "echo-b@0.1.0", "echo-c@0.1.0"]);
    assert!(all.json["results"].as_array().unwrap().iter().all(|r| r["result"]["text"] == "x"));
}

#[test]
fn an_uninstall_drains_spi_calls_and_then_the_implementation_is_gone() {
    let base = TestBase::start();
    base.install_ok(artifacts::ECHO);
    thread::scope(|scope| {
        let slow = scope.spawn(|| call(&base, "slow", "?module=fx-echo", &json!([400])));
        thread::sleep(Duration::from_millis(100));
        assert_eq!(base.uninstall("fx-echo", "0.1.0").json["state"], "stopped");
        let slow = slow.join().unwrap();
        assert_eq!(
            (slow.status, slow.json["result"].as_str()),
            (200, Some("slept 400 ms")),
            "drained: {slow:?}"
        );
    });
    let gone = call(&base, "echo", "?module=fx-echo", &json!(["x"]));
    assert_eq!((gone.status, gone.code()), (503, "SPI_NOT_IMPLEMENTED"), "{gone:?}");
}

#[test]
fn a_module_implementing_another_major_version_of_a_declared_spi_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pedestal.toml");
    std::fs::write(&file, "[spis]\necho = \"2.0.0\"\n").unwrap();
    let base = TestBase::start_with(&["--config", file.to_str().unwrap()]);
    let refused = base.install(artifacts::ECHO);
    assert_eq!((refused.status, refused.code()), (422, "SPI_INCOMPATIBLE"), "{refused:?}");
    assert_eq!(refused.json["details"]["module_spi_version"], "1.1.0");
    assert_eq!(refused.json["details"]["base_spi_version"], "2.0.0");
    assert_eq!(base.admin_get("/api/v1/spis").json["declared"], json!({"echo": "2.0.0"}));

    std::fs::write(&file, "[spis]\necho = \"1.0.0\"\n").unwrap();
    let older_minor = TestBase::start_with(&["--config", file.to_str().unwrap()]);
    older_minor.install_ok(artifacts::ECHO);
}

#[test]
fn a_newer_caller_calls_a_module_built_against_the_older_spi_and_gets_the_default() {
    // echo-base calls with echo-spi 1.1.0; fx-echo-1-0 was built against echo-spi 1.0.0.
    let base = TestBase::start_custom(artifacts::ECHO_BASE, &[]);
    base.install_ok(artifacts::ECHO_1_0);
    base.install_ok(artifacts::ECHO);
    let old = base.get("/typed/fx-echo-1-0/echo?text=hi").json;
    assert_eq!(
        old["ok"],
        json!({"text": "hi", "by": "fx-echo-1-0", "length": null}),
        "the new optional field defaults: {old}"
    );
    let new = base.get("/typed/fx-echo/echo?text=hi").json;
    assert_eq!(new["ok"]["length"], 2, "{new}");
    // `describe` is new in 1.1.0: the old module does not know it, the default runs in the caller
    // (and itself calls the module's `echo` through the same handle).
    let described = base.get("/typed/fx-echo-1-0/describe").json;
    assert_eq!(described["ok"], "an echo by fx-echo-1-0 (default description)", "{described}");
    let own = base.get("/typed/fx-echo/describe").json;
    assert_eq!(own["ok"], "fx-echo, built against echo 1.1.0", "{own}");
    let listed = base.admin_get("/api/v1/spis").json;
    assert_eq!(listed["declared"], json!({"echo": "1.1.0"}), "{listed}");
    let versions: Vec<&str> = listed["implemented"]["echo"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spi_version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.1.0", "1.0.0"], "{listed}");
}

#[test]
fn a_handle_held_across_an_uninstall_answers_module_gone_and_never_calls_into_the_unloaded_library() {
    let base = TestBase::start_custom(artifacts::ECHO_BASE, &[]);
    let installed = base.install_ok(artifacts::ECHO);
    thread::scope(|scope| {
        let held = scope.spawn(|| base.get("/typed/fx-echo/held?wait_ms=500"));
        thread::sleep(Duration::from_millis(100));
        assert_eq!(base.uninstall("fx-echo", "0.1.0").json["state"], "stopped");
        let held = held.join().unwrap().json;
        assert_eq!(held["error"]["code"], "MODULE_GONE", "{held}");
    });
    assert!(!base.maps_contain(&pedestal_tests::artifact_name(installed["sha256"].as_str().unwrap())));
}

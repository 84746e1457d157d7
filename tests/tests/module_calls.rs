//! Modules calling other modules' SPIs, against the real binary: `fx-echo-caller` (requires
//! `echo` 1.1.0) calls `fx-echo` (1.1.0) and `fx-echo-1-0` (1.0.0), `fx-echo-caller-1-0`
//! (built against 1.0.0) calls `fx-echo`; the base installs in dependency order and refuses to
//! unload the last implementation a running module requires.

use std::time::Duration;

use pedestal_tests::{TestBase, artifacts, eventually};
use serde_json::json;

#[test]
fn a_module_calls_another_modules_spi_with_typed_errors() {
    let base = TestBase::start();
    base.install_ok(artifacts::ECHO);
    let caller = base.install_ok(artifacts::ECHO_CALLER);
    assert_eq!(caller["state"], "active", "{caller}");

    // The start hook already called it (calls work before the module serves).
    let at_start = base.get("/fx-echo-caller/at-start");
    assert_eq!(at_start.json, json!({"text": "from the start hook", "by": "fx-echo", "length": 19}));

    let echoed = base.get("/fx-echo-caller/echo?text=hello");
    assert_eq!(echoed.status, 200, "{echoed:?}");
    assert_eq!(echoed.json, json!({"text": "hello", "by": "fx-echo", "length": 5}));
    let named = base.get("/fx-echo-caller/echo?text=x&target=fx-echo");
    assert_eq!(named.json["by"], "fx-echo", "{named:?}");
    assert_eq!(base.get("/fx-echo-caller/describe").json, json!("fx-echo, built against echo 1.1.0"));

    let failed = base.get("/fx-echo-caller/fail?code=NO_STOCK");
    assert_eq!((failed.status, failed.json["code"].as_str()), (502, Some("NO_STOCK")), "{failed:?}");
    let panicked = base.get("/fx-echo-caller/boom");
    assert_eq!(panicked.json["code"], "SPI_PANICKED", "{panicked:?}");
    assert!(panicked.json["message"].as_str().unwrap().contains("boom on request"), "{panicked:?}");
    assert_eq!(base.get("/fx-echo/ping").body, "pong", "the implementation keeps serving after its panic");
    assert_eq!(base.get("/fx-echo-caller/echo?text=again").status, 200, "and so does the caller");

    let missing = base.get("/fx-echo-caller/echo?text=x&target=nobody");
    assert_eq!(missing.json["code"], "SPI_NOT_IMPLEMENTED", "{missing:?}");

    let described = base.module("fx-echo-caller");
    assert_eq!(described["requires"], json!({"echo": "1.1.0"}), "{described}");
    let spis = base.admin_get("/api/v1/spis").json;
    assert_eq!(spis["required"]["echo"][0]["module"], "fx-echo-caller@0.1.0", "{spis}");
}

#[test]
fn fan_out_from_a_module_reaches_every_implementation() {
    let base = TestBase::start();
    base.install_as(artifacts::ECHO, "echo-b");
    base.install_as(artifacts::ECHO, "echo-a");
    base.install_ok(artifacts::ECHO_1_0);
    base.install_ok(artifacts::ECHO_CALLER);
    let all = base.get("/fx-echo-caller/all");
    assert_eq!(all.status, 200, "{all:?}");
    let modules: Vec<&str> =
        all.json.as_array().unwrap().iter().map(|a| a["module"].as_str().unwrap()).collect();
    assert_eq!(modules, ["echo-a", "echo-b", "fx-echo-1-0"], "{all:?}");
    let by: Vec<&str> = all.json.as_array().unwrap().iter().map(|a| a["by"].as_str().unwrap()).collect();
    assert_eq!(by, ["fx-echo", "fx-echo", "fx-echo-1-0"], "{all:?}");
}

#[test]
fn evolution_holds_in_both_directions_between_modules() {
    let base = TestBase::start();
    base.install_ok(artifacts::ECHO_1_0);
    base.install_ok(artifacts::ECHO);
    // A caller built against 1.1.0 calling a module built against 1.0.0: the new optional field
    // takes its default, the new method's default body runs in the caller.
    base.install_ok(artifacts::ECHO_CALLER);
    let old = base.get("/fx-echo-caller/echo?text=abc&target=fx-echo-1-0");
    assert_eq!(old.json, json!({"text": "abc", "by": "fx-echo-1-0", "length": null}), "{old:?}");
    let described = base.get("/fx-echo-caller/describe?target=fx-echo-1-0");
    assert_eq!(described.json, json!("an echo by fx-echo-1-0 (default description)"), "{described:?}");

    // A caller built against 1.0.0 calling a module built against 1.1.0: the field it does not
    // know is ignored.
    base.install_ok(artifacts::ECHO_CALLER_1_0);
    let new = base.get("/fx-echo-caller-1-0/echo?text=abc&target=fx-echo");
    assert_eq!(new.json, json!({"text": "abc", "by": "fx-echo"}), "{new:?}");
    assert_eq!(base.module("fx-echo-caller-1-0")["requires"], json!({"echo": "1.0.0"}));
}

#[test]
fn required_spis_order_installs_and_guard_uninstalls() {
    let base = TestBase::start();
    // Nothing implements echo yet.
    let refused = base.install(artifacts::ECHO_CALLER);
    assert_eq!((refused.status, refused.code()), (424, "SPI_MISSING"), "{refused:?}");
    assert_eq!(refused.json["details"]["spi"], "echo", "{refused:?}");
    assert!(refused.json["message"].as_str().unwrap().contains("?force=true"), "{refused:?}");
    assert_eq!(base.admin_get("/api/v1/modules/fx-echo-caller").status, 404, "nothing was left behind");

    // Forced, it installs, and its calls fail cleanly until an implementation arrives.
    let forced = base.install_query(artifacts::ECHO_CALLER, "force=true");
    assert_eq!(forced.status, 201, "{forced:?}");
    assert_eq!(base.get("/fx-echo-caller/at-start").json["code"], "SPI_NOT_IMPLEMENTED");
    assert_eq!(base.get("/fx-echo-caller/echo?text=x").json["code"], "SPI_NOT_IMPLEMENTED");
    base.install_ok(artifacts::ECHO);
    assert_eq!(base.get("/fx-echo-caller/echo?text=x").json["by"], "fx-echo");

    // The last implementation stays while a module requires it.
    let kept = base.uninstall("fx-echo", "0.1.0");
    assert_eq!((kept.status, kept.code()), (409, "MODULE_REQUIRED"), "{kept:?}");
    assert_eq!(kept.json["details"]["dependents"], json!(["fx-echo-caller@0.1.0"]), "{kept:?}");
    assert_eq!(base.get("/fx-echo-caller/echo?text=x").status, 200, "still served");

    // With a second implementation, either may go.
    base.install_ok(artifacts::ECHO_1_0);
    assert_eq!(base.uninstall("fx-echo", "0.1.0").status, 200);
    assert_eq!(base.get("/fx-echo-caller/echo?text=x").json["by"], "fx-echo-1-0");
    let last = base.uninstall("fx-echo-1-0", "0.1.0");
    assert_eq!(last.code(), "MODULE_REQUIRED", "{last:?}");
    // Forced: unloaded, and calls answer with a clean error.
    let forced = base.admin("DELETE", "/api/v1/modules/fx-echo-1-0/0.1.0?force=true", &[], None);
    assert_eq!(forced.status, 200, "{forced:?}");
    assert_eq!(base.get("/fx-echo-caller/echo?text=x").json["code"], "SPI_NOT_IMPLEMENTED");
    // The dependent itself can always go.
    assert_eq!(base.uninstall("fx-echo-caller", "0.1.0").status, 200);
}

#[test]
fn boot_and_restore_install_implementations_first() {
    // Boot modules listed dependents first: the base installs them in dependency order.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(artifacts::ECHO_CALLER, dir.path().join("a-caller.so")).unwrap();
    std::fs::copy(artifacts::ECHO, dir.path().join("b-echo.so")).unwrap();
    let modules_dir = dir.path().to_str().unwrap();
    let base = TestBase::start_with(&["--modules-dir", modules_dir, "--ready-requires-modules"]);
    let ready = eventually("ready", Duration::from_secs(20), || {
        let ready = base.admin_get("/api/v1/ready");
        (ready.json["ready"] == true).then_some(ready)
    });
    assert_eq!(ready.status, 200);
    assert_eq!(base.get("/fx-echo-caller/at-start").json["by"], "fx-echo", "{}", base.log());

    drop(base);

    // After a crash the restore starts the implementation first too (`zz-echo` is recorded after
    // its dependent), so the dependent's start hook reaches it again.
    let base = TestBase::start();
    base.install_as(artifacts::ECHO, "zz-echo");
    base.install_ok(artifacts::ECHO_CALLER);
    let base = base.kill_and_restart(&[]);
    assert_eq!(base.get("/fx-echo-caller/at-start").json["by"], "fx-echo", "{}", base.log());
    assert_eq!(base.get("/fx-echo-caller/echo?text=after").json["text"], "after");
}

#[test]
fn a_call_in_flight_is_drained_when_its_implementation_goes() {
    let base = TestBase::start();
    let implementation = base.install_ok(artifacts::ECHO_1_0);
    base.install_ok(artifacts::ECHO_CALLER);
    assert_eq!(base.get("/fx-echo-caller/echo?text=x").json["by"], "fx-echo-1-0");
    // A slow call in flight while its implementation is uninstalled (forced): drained, not cut.
    let slow = std::thread::scope(|scope| {
        let call = scope.spawn(|| base.get("/fx-echo-caller/slow?ms=500&target=fx-echo-1-0"));
        std::thread::sleep(Duration::from_millis(150));
        let gone = base.admin("DELETE", "/api/v1/modules/fx-echo-1-0/0.1.0?force=true", &[], None);
        assert_eq!(gone.status, 200, "{gone:?}");
        call.join().unwrap()
    });
    assert_eq!(slow.json, json!("slept 500 ms"), "the call in flight finished: {slow:?}");
    let artifact = pedestal_tests::artifact_name(implementation["sha256"].as_str().unwrap());
    assert!(!base.maps_contain(&artifact), "the implementation's library is unmapped");
    assert_eq!(base.get("/fx-echo-caller/echo?text=x").json["code"], "SPI_NOT_IMPLEMENTED");
}

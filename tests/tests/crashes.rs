//! Crashes after start, against the real binary: a module that kills the whole process (abort, a
//! null-pointer write, a stack overflow, a panic in `Drop` while unwinding, or an abort from a
//! background task with no request at all) is named in `crashes.log`, quarantined by the next
//! start with the signal and the time, and its neighbour is restored and serves. A retry lifts
//! the quarantine.
//!
//! These bases run without the supervisor (`PEDESTAL_SUPERVISOR=off`): the test needs the process
//! to die of the crash, to look at what the next start does.

use std::{os::unix::process::ExitStatusExt, time::Duration};

use pedestal_tests::{TestBase, artifacts, eventually};
use serde_json::{Value, json};

const NO_SUPERVISOR: &[(&str, &str)] = &[("PEDESTAL_SUPERVISOR", "off")];
/// Signal numbers on Linux (the test crate does not link `libc` for two constants).
const SIGABRT: i32 = 6;
const SIGSEGV: i32 = 11;

fn crash_log(base: &TestBase) -> String {
    std::fs::read_to_string(base.data_dir().join("crashes.log")).unwrap_or_default()
}

/// Waits for the base to die by itself and checks the signal it died of.
fn expect_death(base: &mut TestBase, signal: i32) {
    let status = base.wait_for_exit(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!("the base should have died; log:\n{}", base.log());
    });
    assert_eq!(status.signal(), Some(signal), "{status:?}; log:\n{}", base.log());
}

/// The quarantine entry of fx-crashy, after checking it is shown everywhere an operator looks:
/// the module page, health (with the signal and time), the metric and the module's log.
fn quarantined_crashy(base: &TestBase, signal: &str, by: &str) -> Value {
    let module = base.admin_get("/api/v1/modules/fx-crashy").json;
    let entry = module["quarantined"][0].clone();
    assert_eq!(
        (entry["name"].as_str(), entry["version"].as_str()),
        (Some("fx-crashy"), Some("0.1.0")),
        "{module}"
    );
    assert_eq!(entry["signal"], signal, "{module}");
    let crashed_at = entry["crashed_at"].as_str().expect("the crash time");
    assert!(crashed_at.ends_with('Z') && crashed_at.contains('T'), "{crashed_at}");
    assert!(entry["reason"].as_str().unwrap().contains(crashed_at), "{module}");
    assert_eq!(module["crashes"][0]["signal"], signal, "{module}");
    assert_eq!(module["crashes"][0]["attributed_by"], by, "{module}");

    let (_, health) = base.health_of("fx-good");
    assert_eq!(health["status"], "degraded", "{health}");
    let problem = health["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["module"] == "fx-crashy@0.1.0")
        .unwrap_or_else(|| panic!("fx-crashy is not among the problems: {health}"));
    assert_eq!((&problem["state"], &problem["signal"]), (&json!("quarantined"), &json!(signal)), "{health}");
    assert_eq!(problem["crashed_at"], crashed_at, "{health}");

    let metrics = base.admin_get("/metrics").body;
    let series = format!(
        "pedestal_module_crashes_total{{module=\"fx-crashy\",version=\"0.1.0\",signal=\"{signal}\"}} 1"
    );
    assert!(metrics.contains(&series), "no {series:?} in\n{metrics}");

    let logs = base.admin_get("/api/v1/modules/fx-crashy/logs?level=error").json;
    let lines = logs["lines"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l["message"].as_str().unwrap().contains("crashed the base with")
            && l["fields"].as_str().unwrap().contains(&format!("signal={signal}"))),
        "{logs}"
    );
    assert!(base.log().contains("fx-crashy@0.1.0 crashed the base with"), "{}", base.log());
    entry
}

/// Retries fx-crashy (the request that crashed it is not sent again) and checks the quarantine is
/// gone for good: a restart does not act on the old record again.
fn retry_crashy(base: TestBase) -> TestBase {
    let retried = base.admin("POST", "/api/v1/modules/fx-crashy/0.1.0/retry", &[], None);
    assert_eq!((retried.status, retried.json["state"].as_str()), (200, Some("active")), "{retried:?}");
    assert_eq!(base.get("/fx-crashy/ok").body, "fine");
    assert_eq!(base.admin_get("/api/v1/modules").json["quarantined"], json!([]));
    let base = base.restart_with_env(&[], NO_SUPERVISOR);
    assert_eq!(base.get("/fx-crashy/ok").body, "fine", "a record is acted on once; log:\n{}", base.log());
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    base
}

/// `GET /fx-crashy<route>` kills the base with `exit_signal`; the record names fx-crashy with
/// `recorded` (the first signal: a stack overflow is a SIGSEGV that Rust turns into an abort),
/// attributed `by` thread name or address; the next start quarantines it with `described` in the
/// reason and serves fx-good.
fn check(route: &str, exit_signal: i32, recorded: &str, described: &str, by: &str) {
    let mut base = TestBase::start_with_env(&[], NO_SUPERVISOR);
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::CRASHY);
    assert_eq!(base.get("/fx-crashy/ok").body, "fine");

    let answer = ureq::get(&format!("{}/fx-crashy{route}", base.traffic)).call();
    assert!(answer.is_err(), "the request dies with the base: {answer:?}");
    expect_death(&mut base, exit_signal);
    let records = crash_log(&base);
    let record = records.lines().last().unwrap_or_default();
    let thread = if by == "thread" { "thread=pdl-" } else { "thread=crashy-worker" };
    let by_part = format!("by={by}");
    for part in [&format!("signal={recorded}"), &by_part, "module=fx-crashy", "version=0.1.0", thread] {
        assert!(record.contains(part), "{part:?} missing from the crash record {record:?}");
    }
    if route == "/overflow" {
        assert!(record.contains("hint=stack-overflow"), "{record}");
        assert!(base.log().contains("has overflowed its stack"), "Rust still reports it:\n{}", base.log());
    }

    let base = base.restart_with_env(&[], NO_SUPERVISOR);
    assert_eq!(base.get("/fx-good/ping").body, "pong", "the neighbour is restored and serves");
    assert_eq!(base.get("/fx-crashy/ok").code(), "MODULE_NOT_FOUND");
    let entry = quarantined_crashy(&base, recorded, by);
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("crashed the base with {described}")), "{reason}");
    assert!(reason.contains("POST /api/v1/modules/fx-crashy/0.1.0/retry"), "{reason}");
    retry_crashy(base);
}

#[test]
fn an_abort_in_a_handler_quarantines_its_module() {
    check("/abort", SIGABRT, "SIGABRT", "SIGABRT (abort)", "thread");
}

#[test]
fn a_null_pointer_write_in_a_handler_quarantines_its_module() {
    check("/segv", SIGSEGV, "SIGSEGV", "SIGSEGV (null-pointer write at 0x0)", "thread");
}

#[test]
fn a_stack_overflow_in_a_handler_quarantines_its_module() {
    check("/overflow", SIGABRT, "SIGSEGV", "SIGSEGV (stack overflow at 0x", "thread");
}

#[test]
fn a_null_pointer_write_on_a_thread_the_module_renamed_is_attributed_by_address() {
    check("/renamed-segv", SIGSEGV, "SIGSEGV", "SIGSEGV (null-pointer write at 0x0)", "address");
}

#[test]
fn a_panic_in_drop_while_unwinding_quarantines_its_module() {
    check("/drop-panic", SIGABRT, "SIGABRT", "SIGABRT (abort)", "thread");
}

/// Installs fx-good, then fx-crashy with `crash-after-start` present: the base dies 500 ms after
/// fx-crashy started, with no request.
fn base_killed_by_a_delayed_crash(extra: &[&str]) -> TestBase {
    let mut base = TestBase::start_with_env(extra, NO_SUPERVISOR);
    base.install_ok(artifacts::GOOD);
    std::fs::write(base.data_dir().join("crash-after-start"), "").unwrap();
    let installed = base.install(artifacts::CRASHY);
    assert_eq!(installed.status, 201, "it starts cleanly: {installed:?}");
    expect_death(&mut base, SIGABRT);
    base
}

#[test]
fn a_module_that_aborts_after_a_clean_start_is_quarantined_instead_of_crash_looping() {
    let base = base_killed_by_a_delayed_crash(&[]);
    assert!(crash_log(&base).contains("module=fx-crashy"), "{}", crash_log(&base));

    // Before crash records, this restart loaded fx-crashy again and died 500 ms later, forever.
    let mut base = base.restart_with_env(&[], NO_SUPERVISOR);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    let entry = quarantined_crashy(&base, "SIGABRT", "thread");
    assert!(entry["reason"].as_str().unwrap().contains("its first crash"), "{entry}");
    assert!(base.is_running());
    // Only the neighbour holds a slot in the crash table.
    let slots = |base: &TestBase| base.admin_get("/api/v1/health").json["crash_table"]["in_use"].clone();
    assert_eq!(slots(&base), 1);

    std::fs::remove_file(base.data_dir().join("crash-after-start")).unwrap();
    let base = retry_crashy(base);
    // A slot is given back once its library is verified unmapped.
    assert_eq!(slots(&base), 2);
    assert_eq!(base.uninstall("fx-good", "0.1.0").json["state"], "stopped");
    assert_eq!(slots(&base), 1);
}

#[test]
fn below_the_threshold_a_crash_is_reported_and_the_module_restored() {
    let flags = ["--crash-quarantine-after", "2"];
    let base = base_killed_by_a_delayed_crash(&flags);

    // The first crash: reported, and fx-crashy restored (so it crashes the base again).
    let mut base = base.restart_with_env(&flags, NO_SUPERVISOR);
    let health = eventually("the crash in health", Duration::from_secs(5), || {
        let health = base.admin_get("/api/v1/health").json;
        (health["crashes"].as_array()?.len() == 1).then_some(health)
    });
    assert_eq!(health["crashes"][0]["name"], "fx-crashy", "{health}");
    assert_eq!(health["crashes"][0]["signal"], "SIGABRT", "{health}");
    assert!(base.log().contains("restored: 1 of 2 crashes within 600 s quarantine it"), "{}", base.log());
    expect_death(&mut base, SIGABRT);

    // The second: quarantined, counted across the restarts.
    let base = base.restart_with_env(&flags, NO_SUPERVISOR);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    let entry = &base.admin_get("/api/v1/modules/fx-crashy").json["quarantined"][0];
    assert!(entry["reason"].as_str().unwrap().contains("2 crashes within 600 s"), "{entry}");
    assert_eq!(base.admin_get("/api/v1/modules/fx-crashy").json["crashes"].as_array().unwrap().len(), 2);
}

#[test]
fn a_crash_in_a_start_hook_is_quarantined_by_its_marker_with_the_signal_from_its_record() {
    let mut base = TestBase::start_with_env(&[], NO_SUPERVISOR);
    base.install_ok(artifacts::GOOD);
    std::fs::write(base.data_dir().join("abort-on-start"), "").unwrap();
    let crashed = ureq::post(&format!("{}/api/v1/modules", base.admin))
        .set("authorization", &base.bearer())
        .set("content-type", "application/octet-stream")
        .send_bytes(&pedestal_tests::read(artifacts::START_ABORTS));
    assert!(crashed.is_err(), "the base should have died: {crashed:?}");
    expect_death(&mut base, SIGABRT);

    let base = base.restart_with_env(&[], NO_SUPERVISOR);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    let module = base.admin_get("/api/v1/modules/fx-start-aborts").json;
    let quarantined = module["quarantined"].as_array().unwrap();
    assert_eq!(quarantined.len(), 1, "one entry, not one per marker and record: {module}");
    let reason = quarantined[0]["reason"].as_str().unwrap();
    assert!(reason.contains("died while loading or starting it"), "{reason}");
    assert!(reason.contains("crashed the base with SIGABRT (abort) at"), "{reason}");
    assert_eq!(quarantined[0]["signal"], "SIGABRT", "{module}");
}

#[test]
fn only_the_tenant_that_crashed_is_quarantined() {
    let mut base = TestBase::start_with_env(&[], NO_SUPERVISOR);
    base.install_as(artifacts::CRASHY, "tenant-a");
    base.install_as(artifacts::CRASHY, "tenant-b");
    assert!(ureq::get(&format!("{}/tenant-b/abort", base.traffic)).call().is_err());
    expect_death(&mut base, SIGABRT);
    let record = crash_log(&base);
    assert!(record.contains("module=tenant-b") && record.contains("install=tenant-b"), "{record}");

    let base = base.restart_with_env(&[], NO_SUPERVISOR);
    assert_eq!(base.get("/tenant-a/ok").body, "fine", "the other tenant of the artifact serves");
    assert_eq!(base.get("/tenant-b/ok").code(), "MODULE_NOT_FOUND");
    let quarantined = base.admin_get("/api/v1/modules").json["quarantined"].clone();
    assert_eq!(quarantined.as_array().map(Vec::len), Some(1), "{quarantined}");
    assert_eq!(
        (&quarantined[0]["name"], &quarantined[0]["install_name"]),
        (&json!("tenant-b"), &json!("tenant-b"))
    );
    let retried = base.admin("POST", "/api/v1/modules/tenant-b/0.1.0/retry", &[], None);
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(base.get("/tenant-b/ok").body, "fine");
}

//! Per-module limits and health against the real binary: concurrency, timeout and body limits
//! from the manifest, overridden by the config file and the API; runaway requests; the memory
//! soft limit's actions; health hooks and recent error rates.

use std::{thread, time::Duration};

use pedestal_tests::{Reply, TestBase, artifacts, eventually};
use serde_json::json;

/// Sends `count` concurrent `GET`s to `path` and returns their replies.
fn concurrently(base: &TestBase, path: &str, count: usize) -> Vec<Reply> {
    thread::scope(|scope| {
        let requests: Vec<_> = (0..count).map(|_| scope.spawn(|| base.get(path))).collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

#[test]
fn a_module_over_its_concurrency_limit_gets_503s_while_its_neighbour_is_unaffected() {
    let base = TestBase::start();
    base.install_ok(artifacts::LIMITED);
    base.install_ok(artifacts::GOOD);
    let limits = &base.module("fx-limited")["limits"];
    assert_eq!(limits["max_concurrent_requests"], 2, "{limits}");
    assert_eq!(limits["sources"]["max_concurrent_requests"], "manifest");

    let (limited, neighbour) = thread::scope(|scope| {
        let limited = scope.spawn(|| concurrently(&base, "/fx-limited/sleep?ms=250", 6));
        let neighbour = scope.spawn(|| {
            thread::sleep(Duration::from_millis(50));
            concurrently(&base, "/fx-good/sleep?ms=100", 6)
        });
        (limited.join().unwrap(), neighbour.join().unwrap())
    });
    let served = limited.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = limited.iter().filter(|r| r.status == 503).collect();
    assert_eq!(served, 2, "{limited:?}");
    assert_eq!(refused.len(), 4, "{limited:?}");
    assert!(refused.iter().all(|r| r.code() == "MODULE_OVERLOADED" && r.json["details"]["limit"] == 2));
    assert!(neighbour.iter().all(|r| r.status == 200), "the neighbour was affected: {neighbour:?}");
    let traffic = &base.module("fx-limited")["traffic"];
    assert_eq!((traffic["rejected"].as_u64(), traffic["requests"].as_u64()), (Some(4), Some(2)), "{traffic}");

    // The API lifts it for every version at once; the next requests see the new limit.
    let set = base.put_limits("fx-limited", &json!({"max_concurrent_requests": 6}));
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(set.json["versions"][0]["limits"]["sources"]["max_concurrent_requests"], "api");
    let all = concurrently(&base, "/fx-limited/sleep?ms=250", 6);
    assert!(all.iter().all(|r| r.status == 200), "{all:?}");

    let bad = base.put_limits("fx-limited", &json!({"max_concurrent": 6}));
    assert_eq!((bad.status, bad.code()), (422, "BAD_REQUEST"), "{bad:?}");
    assert_eq!(base.put_limits("no-such-module", &json!({})).code(), "NOT_FOUND");
}

#[test]
fn timeouts_and_body_limits_are_per_module_and_the_config_file_overrides_the_manifest() {
    let base = TestBase::start();
    base.install_ok(artifacts::LIMITED);
    base.install_ok(artifacts::GOOD);
    let slow = base.get("/fx-limited/sleep?ms=1000");
    assert_eq!((slow.status, slow.code()), (504, "MODULE_TIMEOUT"), "{slow:?}");
    assert_eq!(slow.json["details"]["timeout_ms"], 300);
    assert_eq!(base.get("/fx-good/sleep?ms=1000").status, 200, "the neighbour keeps the base's timeout");

    let body = vec![b'x'; 2048];
    let big = base.post("/fx-limited/echo", &body);
    assert_eq!((big.status, big.code()), (413, "PAYLOAD_TOO_LARGE"), "{big:?}");
    assert_eq!(big.json["details"]["limit"], 1024);
    assert_eq!(base.post("/fx-limited/echo", &body[..1000]).status, 200);
    assert_eq!(base.post("/fx-good/echo", &body).status, 200, "the neighbour keeps the base's body limit");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pedestal.toml");
    std::fs::write(
        &file,
        "[modules.fx-limited.limits]\nrequest_timeout_ms = 3000\nmax_request_body_bytes = 4096\n",
    )
    .unwrap();
    let configured = TestBase::start_with(&["--config", file.to_str().unwrap()]);
    configured.install_ok(artifacts::LIMITED);
    let limits = &configured.module("fx-limited")["limits"];
    assert_eq!(limits["sources"]["request_timeout_ms"], "config", "{limits}");
    assert_eq!(limits["sources"]["max_concurrent_requests"], "manifest", "{limits}");
    assert_eq!(configured.get("/fx-limited/sleep?ms=1000").status, 200);
    assert_eq!(configured.post("/fx-limited/echo", &body).status, 200);
}

#[test]
fn a_config_file_with_a_mistake_is_refused_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pedestal.toml");
    std::fs::write(&file, "[modules.search.limits]\nmax_concurent_requests = 3\n").unwrap();
    let output = std::process::Command::new(artifacts::PEDESTAL)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid config file") && stderr.contains("max_concurent_requests"), "{stderr}");
}

#[test]
fn a_request_running_far_past_its_timeout_is_reported_as_runaway() {
    let base = TestBase::start();
    base.install_ok(artifacts::LIMITED);
    base.install_ok(artifacts::GOOD);
    let blocked = thread::scope(|scope| {
        let blocked = scope.spawn(|| base.get("/fx-limited/block?ms=3000"));
        // While the module's thread is blocked, its health hook cannot answer.
        thread::sleep(Duration::from_millis(100));
        let (limited, health) = base.health_of("fx-limited");
        assert_eq!(limited["status"], "unhealthy", "{health}");
        assert_eq!(limited["hook"]["outcome"], "no_answer", "{health}");
        let (good, _) = base.health_of("fx-good");
        assert_eq!(good["status"], "healthy", "{health}");
        // Timeout 300 ms: runaway from 1300 ms after it was sent.
        let runaway = eventually("the runaway request in the API", Duration::from_secs(3), || {
            let runaways = base.module("fx-limited")["runaway_requests"].clone();
            (!runaways.as_array()?.is_empty()).then_some(runaways)
        });
        assert_eq!(runaway[0]["request"], "GET /block?ms=3000", "{runaway}");
        assert!(runaway[0]["running_ms"].as_u64().unwrap() >= 1300, "{runaway}");
        base.wait_for_log("runaway request: GET /block?ms=3000");
        blocked.join().unwrap()
    });
    assert_eq!(blocked.code(), "MODULE_TIMEOUT");
    base.wait_for_log("runaway request finished");
    let (limited, health) = base.health_of("fx-limited");
    assert_eq!(limited["runaway_requests"], json!([]), "{health}");
    assert_eq!(limited["hook"]["outcome"], "answered", "{health}");
    assert_eq!(base.metric("pedestal_module_runaway_requests_total", "fx-limited"), Some(1.0));
}

#[test]
fn health_shows_each_modules_hook_and_recent_error_rate() {
    let base = TestBase::start();
    base.install_ok(artifacts::LIMITED);
    base.install_ok(artifacts::GOOD);
    let (limited, health) = base.health_of("fx-limited");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        (limited["status"].as_str(), limited["hook"]["status"].as_str()),
        (Some("healthy"), Some("healthy"))
    );

    assert_eq!(base.get("/fx-limited/sick?message=database%20unreachable").body, "sick");
    let (limited, health) = base.health_of("fx-limited");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(limited["status"], "unhealthy", "{health}");
    assert_eq!(limited["reasons"][0], "health hook: database unreachable", "{health}");
    assert_eq!(base.get("/fx-limited/well").body, "well again");
    assert_eq!(base.health_of("fx-limited").0["status"], "healthy");

    // With the 2 requests above, 3 failures in 14 requests: degraded; then a majority failing: unhealthy.
    for i in 0..12 {
        let path = if i % 4 == 0 { "/fx-limited/fail" } else { "/fx-limited/well" };
        base.get(path);
    }
    let (limited, health) = base.health_of("fx-limited");
    assert_eq!(limited["status"], "degraded", "{health}");
    assert_eq!(limited["recent"]["requests"], 14, "{health}");
    assert_eq!(limited["recent"]["server_errors"], 3, "{health}");
    assert!(limited["reasons"][0].as_str().unwrap().contains("3 of 14 requests"), "{health}");
    for _ in 0..12 {
        base.get("/fx-limited/fail");
    }
    assert_eq!(base.health_of("fx-limited").0["status"], "unhealthy");
    assert_eq!(base.health_of("fx-good").0["status"], "healthy");
}

#[test]
fn crossing_the_memory_soft_limit_logs_deactivates_or_restarts_as_configured() {
    let base = TestBase::start();
    for (name, action) in [("leaky-log", "log"), ("leaky-off", "deactivate"), ("leaky-restart", "restart")] {
        base.install_as(artifacts::LEAKY, name);
        let limits = json!({"memory_soft_limit_bytes": 1 << 20, "memory_action": action});
        assert_eq!(base.put_limits(name, &limits).status, 200);
        assert_eq!(base.get(&format!("/{name}/leak?kib=2048")).status, 200);
    }
    let last_reason = |name: &str| {
        let history = base.module(name)["history"].clone();
        history.as_array().unwrap().last().map(|t| (t["state"].clone(), t["reason"].clone()))
    };

    base.wait_for_log("memory soft limit crossed");
    let deactivated = eventually("leaky-off deactivated", Duration::from_secs(5), || {
        let (state, reason) = last_reason("leaky-off")?;
        (state == "inactive").then_some(reason)
    });
    assert_eq!(deactivated, "memory_limit");
    let refused = base.get("/leaky-off/leak?kib=1");
    assert_eq!((refused.status, refused.code()), (503, "MODULE_UNAVAILABLE"), "{refused:?}");

    let restarted = eventually("leaky-restart restarted", Duration::from_secs(10), || {
        let history = base.module("leaky-restart")["history"].clone();
        let states: Vec<_> =
            history.as_array()?.iter().map(|t| t["state"].as_str().unwrap().to_owned()).collect();
        (states.ends_with(&["stopped".into(), "installing".into(), "starting".into(), "active".into()]))
            .then_some(history)
    });
    assert!(restarted.to_string().contains("memory_limit"), "{restarted}");
    let fresh = base.module("leaky-restart");
    assert!(fresh["heap"]["live_bytes"].as_u64().unwrap() < 1 << 20, "{fresh}");
    assert_eq!(fresh["limits"]["memory_action"], "restart", "the override survives the restart");
    assert_eq!(base.get("/leaky-restart/leak?kib=1").status, 200);

    let logged = base.module("leaky-log");
    assert_eq!(logged["state"], "active", "{logged}");
    assert_eq!(base.get("/leaky-log/leak?kib=1").status, 200);
    assert_eq!(base.metric("pedestal_module_memory_limit_crossings_total", "leaky-log"), Some(1.0));
    let module_log = base.admin_get("/api/v1/modules/leaky-log/logs?level=warn").json;
    assert!(module_log.to_string().contains("memory soft limit crossed"), "{module_log}");
}

#[test]
fn tasks_of_a_module_are_counted() {
    let base = TestBase::start();
    base.install_ok(artifacts::LIMITED);
    thread::scope(|scope| {
        let sleeping = scope.spawn(|| concurrently(&base, "/fx-limited/sleep?ms=250", 2));
        let tasks = eventually("two tasks", Duration::from_secs(3), || {
            let tasks = base.module("fx-limited")["tasks"].as_u64()?;
            (tasks >= 2).then_some(tasks)
        });
        assert_eq!(tasks, 2);
        assert!(sleeping.join().unwrap().iter().all(|r| r.status == 200));
    });
    let tasks = eventually("no tasks", Duration::from_secs(3), || {
        let tasks = base.module("fx-limited")["tasks"].as_u64()?;
        (tasks == 0).then_some(tasks)
    });
    assert_eq!(tasks, 0);
}

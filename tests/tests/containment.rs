//! A misbehaving module is contained by the base's own housekeeping (issue 11, section 3): a
//! memory-limit restart unroutes at once and drains briefly; a request whose client left still
//! counts as in flight while the module runs it; an instance pinned only by its module's threads
//! is unloaded once they end; the unhealthy policy deactivates or restarts a module that stays
//! unhealthy; a module's log burst reaches stderr only at a bounded rate.

use std::{
    io::Write,
    net::TcpStream,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use pedestal_tests::{Reply, TestBase, artifact_name, artifacts, eventually};
use serde_json::{Value, json};

/// The states of module `name`'s first version, oldest first, and its history.
fn states(base: &TestBase, name: &str) -> (Vec<String>, Value) {
    let history = base.module_or_retired(name)["history"].clone();
    let states = history
        .as_array()
        .map(|h| h.iter().map(|t| t["state"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default();
    (states, history)
}

/// Whether module `name`'s history ends with a restart: stopped, then a fresh instance active.
fn restarted(base: &TestBase, name: &str) -> Option<Value> {
    let (states, history) = states(base, name);
    states
        .ends_with(&["stopped".into(), "installing".into(), "starting".into(), "active".into()])
        .then_some(history)
}

/// Sends `GET path` on a raw connection and returns it, so the test can hang up on the request.
fn send_raw(base: &TestBase, path: &str) -> TcpStream {
    let addr = base.traffic.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connecting to the traffic server");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("sending a request");
    stream
}

fn in_flight(base: &TestBase, name: &str) -> Option<u64> {
    base.module_or_retired(name)["traffic"]["in_flight"].as_u64()
}

#[test]
fn a_memory_limit_restart_unroutes_at_once_and_drains_briefly() {
    // The uninstall drain is a minute: only the restart's own short drain lets this finish.
    let base = TestBase::start_with(&["--drain-timeout-ms", "60000", "--restart-drain-timeout-ms", "300"]);
    base.install_ok(artifacts::LEAKY);
    let limits = json!({"memory_soft_limit_bytes": 1 << 20, "memory_action": "restart"});
    assert_eq!(base.put_limits("fx-leaky", &limits).status, 200);

    // The offending request leaks past the limit and stays in flight, while other requests keep
    // coming.
    let done = AtomicBool::new(false);
    let (held, history, answers) = thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut answers = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                let reply = base.get("/fx-leaky/leak?kib=0");
                answers.push((reply.status, reply.code().to_owned()));
            }
            answers
        });
        let held = scope.spawn(|| base.get("/fx-leaky/leak?kib=2048&hold_ms=20000"));
        let history = eventually("the restart", Duration::from_secs(10), || restarted(&base, "fx-leaky"));
        // Traffic is back, on the fresh instance, while the old request would still be running.
        let fresh = base.get("/fx-leaky/leak?kib=1");
        assert_eq!((fresh.status, fresh.body.as_str()), (200, "leaked 1 KiB"), "{fresh:?}");
        done.store(true, Ordering::Relaxed);
        (held.join().unwrap(), history, load.join().unwrap())
    });
    // During the restart the module is unavailable (503), never unknown (404).
    let refused: Vec<_> = answers.iter().filter(|(status, _)| *status != 200).collect();
    assert!(!refused.is_empty(), "the load never met the restart");
    assert!(
        refused.iter().all(|(status, code)| (*status, code.as_str()) == (503, "MODULE_UNAVAILABLE")),
        "{refused:?}"
    );
    assert_eq!((held.status, held.code()), (503, "DRAIN_TIMEOUT"), "{held:?}");
    assert_eq!(held.json["details"]["timeout_ms"], 300, "{held:?}");

    let history = history.as_array().unwrap();
    let draining = history.iter().rfind(|t| t["state"] == "draining").unwrap();
    assert_eq!(draining["reason"], "memory_limit", "{draining}");
    assert!(draining["message"].as_str().unwrap().contains("memory soft limit crossed"), "{draining}");
    let stopping = history.iter().rfind(|t| t["state"] == "stopping").unwrap();
    assert_eq!(
        stopping["message"],
        "drain timeout (300 ms) with 1 requests in flight; they get 503; asking the module to stop",
        "{stopping}"
    );
    let fresh = base.module("fx-leaky");
    assert!(fresh["heap"]["live_bytes"].as_u64().unwrap() < 1 << 20, "{fresh}");
}

#[test]
fn a_request_whose_client_left_counts_as_in_flight_until_the_module_answers() {
    let base = TestBase::start_with(&["--drain-timeout-ms", "20000"]);
    let installed = base.install_ok(artifacts::GOOD);
    let artifact = artifact_name(installed["sha256"].as_str().unwrap());
    let client = send_raw(&base, "/fx-good/blocking?ms=3000");
    eventually("the request in flight", Duration::from_secs(5), || {
        (in_flight(&base, "fx-good") == Some(1)).then_some(())
    });
    // The client hangs up: the base drops its side of the request, the module keeps running it.
    client.shutdown(std::net::Shutdown::Both).unwrap();
    drop(client);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(in_flight(&base, "fx-good"), Some(1), "the module is still running it");

    // So the uninstall's drain waits for it, and the module is unloaded cleanly after it.
    let removed = base.uninstall("fx-good", "0.1.0");
    assert_eq!(removed.json["state"], "stopped", "{removed:?}");
    let history = removed.json["history"].as_array().unwrap();
    let stopping = history.iter().find(|t| t["state"] == "stopping").unwrap();
    assert_eq!(stopping["message"], "drained; asking the module to stop", "{stopping}");
    assert_eq!(in_flight(&base, "fx-good"), Some(0));
    assert!(!base.maps_contain(&artifact), "still mapped after the uninstall");
}

#[test]
fn an_instance_pinned_by_a_blocking_job_is_unloaded_once_the_job_ends() {
    // A short drain, and a stop timeout beyond the module runtime's 2 s shutdown grace: the stop
    // itself returns, leaving the blocking-pool thread running in the library.
    let base = TestBase::start_with(&["--drain-timeout-ms", "200", "--stop-timeout-ms", "8000"]);
    let installed = base.install_ok(artifacts::GOOD);
    let artifact = artifact_name(installed["sha256"].as_str().unwrap());
    let client = send_raw(&base, "/fx-good/blocking?ms=5000");
    eventually("the request in flight", Duration::from_secs(5), || {
        (in_flight(&base, "fx-good") == Some(1)).then_some(())
    });
    client.shutdown(std::net::Shutdown::Both).unwrap();
    drop(client);

    let removed = base.uninstall("fx-good", "0.1.0");
    assert_eq!(removed.json["state"], "pinned", "{removed:?}");
    let pinned = removed.json["history"].as_array().unwrap().last().unwrap().clone();
    assert!(
        pinned["message"].as_str().unwrap().contains("thread(s) the module started are still running"),
        "{pinned}"
    );
    let stopping =
        removed.json["history"].as_array().unwrap().iter().rfind(|t| t["state"] == "stopping").cloned();
    assert!(stopping.unwrap()["message"].as_str().unwrap().contains("with 1 requests in flight"));
    assert!(base.maps_contain(&artifact), "a pinned library stays mapped");
    let (health, _) = base.health_of("fx-good");
    assert_eq!(health, Value::Null, "a pinned instance is not a running one");
    assert_eq!(base.admin_get("/api/v1/health").json["counts"]["pinned"], 1);

    // By itself, once the job is over: closed, unmapped, and said so.
    let stopped = eventually("the unload to finish", Duration::from_secs(20), || {
        let (states, history) = states(&base, "fx-good");
        (states.last()? == "stopped").then_some(history)
    });
    let last = stopped.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "unpinned", "{last}");
    assert!(last["message"].as_str().unwrap().contains("unloaded and unmapped"), "{last}");
    assert!(!base.maps_contain(&artifact), "still mapped after the pin cleared");
    assert_eq!(base.admin_get("/api/v1/health").json["counts"]["pinned"], 0);
    // The load path is free again: the artifact installs (from its own path) and serves.
    base.install_ok(artifacts::GOOD);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn a_module_that_stays_unhealthy_is_deactivated_or_restarted_after_its_grace() {
    let base = TestBase::start_with(&["--unhealthy-action", "deactivate", "--unhealthy-grace-ms", "1000"]);
    base.install_as(artifacts::LIMITED, "stuck");
    base.install_as(artifacts::LIMITED, "sick");
    base.install_ok(artifacts::GOOD);
    let set = base.put_limits("sick", &json!({"unhealthy_action": "restart", "unhealthy_grace_ms": 500}));
    assert_eq!(set.status, 200, "{set:?}");
    let limits = &set.json["versions"][0]["limits"];
    assert_eq!(
        (limits["unhealthy_action"].as_str(), limits["sources"]["unhealthy_action"].as_str()),
        (Some("restart"), Some("api"))
    );
    assert_eq!(base.module("stuck")["limits"]["sources"]["unhealthy_action"], "default");

    // `stuck` blocks its thread (its health hook cannot answer); `sick`'s hook says it is unhealthy.
    let blocked = thread::scope(|scope| {
        let blocked = scope.spawn(|| base.get("/stuck/block?ms=4000"));
        assert_eq!(base.get("/sick/sick?message=disk%20full").body, "sick");
        let deactivated = eventually("stuck deactivated", Duration::from_secs(10), || {
            let history = base.module("stuck")["history"].clone();
            let last = history.as_array()?.last()?.clone();
            (last["state"] == "inactive" && last["reason"] == "unhealthy").then_some(last)
        });
        let message = deactivated["message"].as_str().unwrap();
        assert!(message.contains("the health hook did not answer"), "{deactivated}");
        assert!(message.contains("deactivating the instance"), "{deactivated}");
        blocked.join().unwrap()
    });
    assert_eq!(blocked.code(), "MODULE_TIMEOUT", "{blocked:?}");
    let refused = base.get("/stuck/well");
    assert_eq!((refused.status, refused.code()), (503, "MODULE_UNAVAILABLE"), "{refused:?}");
    assert!(refused.json["message"].as_str().unwrap().contains("unhealthy"), "{refused:?}");

    let history = eventually("sick restarted", Duration::from_secs(10), || restarted(&base, "sick"));
    let draining = history.as_array().unwrap().iter().rfind(|t| t["state"] == "draining").unwrap().clone();
    assert_eq!(draining["reason"], "unhealthy", "{draining}");
    assert!(draining["message"].as_str().unwrap().contains("health hook: disk full"), "{draining}");
    // The fresh instance has fresh statics: its hook reports healthy.
    let (sick, health) = base.health_of("sick");
    assert_eq!(sick["status"], "healthy", "{health}");

    let (good, health) = base.health_of("fx-good");
    assert_eq!(
        (good["status"].as_str(), good["state"].as_str()),
        (Some("healthy"), Some("active")),
        "{health}"
    );
    let metrics = base.admin_get("/metrics").body;
    let series = |module: &str, action: &str| {
        let prefix =
            format!("pedestal_module_unhealthy_actions_total{{module=\"{module}\",action=\"{action}\"}}");
        metrics
            .lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        (series("stuck", "deactivate"), series("sick", "restart")),
        (Some(1.0), Some(1.0)),
        "{metrics}"
    );
    assert_eq!(series("fx-good", "deactivate"), None, "{metrics}");
    let log = base.wait_for_log("unhealthy for");
    assert!(log.contains("health hook: disk full"), "{log}");
    let module_log = base.admin_get("/api/v1/modules/stuck/logs?level=warn").json;
    assert!(module_log.to_string().contains("deactivating the instance"), "{module_log}");
}

#[test]
fn an_unhealthy_restart_cannot_reclaim_a_spinning_handler_but_a_fresh_instance_serves() {
    // A short restart drain and stop timeout, both well inside the handler's 5 s spin.
    let base = TestBase::start_with(&[
        "--unhealthy-action",
        "restart",
        "--unhealthy-grace-ms",
        "500",
        "--restart-drain-timeout-ms",
        "100",
        "--stop-timeout-ms",
        "1000",
    ]);
    base.install_ok(artifacts::CPU_BURNER);
    let spun = thread::scope(|scope| {
        let spinning = scope.spawn(|| base.get("/fx-cpu-burner/burn?ms=5000"));
        let history = eventually("a fresh instance", Duration::from_secs(10), || {
            let (states, history) = states(&base, "fx-cpu-burner");
            let tail = ["stopping", "pinned", "installing", "starting", "active"].map(String::from);
            states.ends_with(&tail).then_some(history)
        });
        let history = history.as_array().unwrap();
        let draining = history.iter().rfind(|t| t["state"] == "draining").unwrap();
        assert_eq!(draining["reason"], "unhealthy", "{draining}");
        assert!(
            draining["message"].as_str().unwrap().contains("cannot be reclaimed in-process"),
            "{draining}"
        );
        let pinned = history.iter().rfind(|t| t["state"] == "pinned").unwrap();
        assert!(pinned["message"].as_str().unwrap().contains("still running"), "{pinned}");
        // The fresh instance (a private copy of the library) serves while the old thread spins.
        let fresh = base.get("/fx-cpu-burner/burn?ms=1");
        assert_eq!((fresh.status, fresh.body.as_str()), (200, "burned 1 ms"), "{fresh:?}");
        // The old instance is no longer the registry's, but health still shows it, with the
        // CPU its spinning thread burns.
        let health = base.admin_get("/api/v1/health").json;
        assert_eq!(health["counts"]["pinned"], 1, "{health}");
        let problems = health["problems"].as_array().unwrap();
        let old =
            problems.iter().find(|p| p["module"] == "fx-cpu-burner@0.1.0").expect("the pinned instance");
        assert_eq!((old["state"].as_str(), old["replaced"].as_bool()), (Some("pinned"), Some(true)), "{old}");
        assert_eq!(old["cpu"]["threads"], 1, "{old}");
        spinning.join().unwrap()
    });
    // The spinning handler finished on the pinned instance, whose state the base kept alive.
    assert_eq!(spun.status, 200, "{spun:?}");
    // Its thread returned at last: the base finishes that unload by itself.
    eventually("the old instance unloaded", Duration::from_secs(20), || {
        (base.admin_get("/api/v1/health").json["counts"]["pinned"] == 0).then_some(())
    });
}

/// The lines of `text` containing `needle`.
fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_log_burst_is_echoed_at_a_bounded_rate_and_kept_whole_in_the_modules_log() {
    const LINES: usize = 5000;
    let base = TestBase::start_with(&["--module-log-echo-per-sec", "100"]);
    base.install_ok(artifacts::GOOD);
    let began = Instant::now();
    let logged: Reply = base.get(&format!("/fx-good/log-burst?n={LINES}"));
    assert_eq!(logged.body, format!("logged {LINES}"));
    let took = began.elapsed();

    // Every line the echo held back is counted, and reported in one line a second at most.
    let not_echoed = eventually("the count of held-back lines", Duration::from_secs(5), || {
        base.metric("pedestal_module_log_lines_not_echoed_total", "fx-good").filter(|n| *n > 0.0)
    }) as usize;
    let reported = eventually("the reports to add up", Duration::from_secs(10), || {
        let log = base.log();
        let reported: usize = log
            .lines()
            .filter(|l| l.contains("lines from module fx-good not echoed"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.parse::<usize>().ok()))
            .sum();
        (reported == not_echoed).then_some(reported)
    });
    assert_eq!(reported, not_echoed);
    let echoed = eventually("every echoed line on stderr", Duration::from_secs(5), || {
        let echoed = count(&base.log(), "burst line");
        (echoed + not_echoed == LINES).then_some(echoed)
    });
    // A burst of five seconds' worth, then 100 a second for as long as the burst lasted.
    let bound = 500 + (100.0 * (took.as_secs_f64() + 1.0)) as usize;
    assert!((500..=bound).contains(&echoed), "{echoed} echoed, at most {bound} expected");

    // The module's own log has every line: its file, and the tail in memory.
    let file = std::fs::read_to_string(base.data_dir().join("logs").join("fx-good.log")).unwrap();
    assert_eq!(count(&file, "burst line"), LINES);
    let tail = base.admin_get("/api/v1/modules/fx-good/logs?tail=1000").json;
    let lines = tail["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1000, "{tail}");
    assert_eq!(lines.last().unwrap()["message"], format!("burst line {}", LINES - 1));
}

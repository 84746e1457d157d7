//! Built-in supervision (issue 11): `pedestal serve` is a supervisor process that owns the
//! listening sockets and restarts the worker process hosting the modules when it crashes.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use pedestal_tests::{TestBase, artifacts, eventually, process_is_alive};
use serde_json::{Value, json};

/// What one request over a fresh connection came to.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// `200` with the expected body.
    Served,
    /// An HTTP answer, but not the expected one.
    Wrong(String),
    /// The connection was refused: nobody listened.
    Refused,
    /// Connected, then the connection broke before an answer (the request was in flight).
    Broken(String),
}

/// `GET path` on `addr` (`127.0.0.1:port`) over a new connection, expecting `200` and `body`.
fn fresh_get(addr: &str, path: &str, body: &str) -> Outcome {
    let mut stream = match TcpStream::connect(addr) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) => return Outcome::Broken(format!("connect: {e}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return Outcome::Broken(format!("write: {e}"));
    }
    let mut answer = String::new();
    match stream.read_to_string(&mut answer) {
        Err(e) => Outcome::Broken(format!("read: {e}")),
        Ok(_) if answer.is_empty() => Outcome::Broken("closed without an answer".into()),
        Ok(_) if answer.starts_with("HTTP/1.1 200") && answer.ends_with(body) => Outcome::Served,
        Ok(_) => Outcome::Wrong(answer.lines().next().unwrap_or_default().to_owned()),
    }
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

fn base_process(base: &TestBase) -> Value {
    base.admin_get("/api/v1/base").json
}

/// Waits until the worker generation is past `generation` and the new worker is ready (its
/// operations API answers while it restores).
fn next_worker(base: &TestBase, generation: u64) -> Value {
    let process = eventually("a new worker", Duration::from_secs(20), || {
        let process = base.admin_get("/api/v1/base").json;
        (process["worker_generation"].as_u64()? > generation).then_some(process)
    });
    eventually("the new worker's restore", Duration::from_secs(20), || {
        (base.admin_get("/api/v1/ready").json["ready"] == true).then_some(())
    });
    process
}

#[test]
fn a_crash_fails_only_the_requests_in_flight_and_a_new_worker_serves_with_no_refused_connection() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::CRASHY);
    let before = base_process(&base);
    assert_eq!(before["supervised"], true, "{before}");
    assert_eq!(before["worker_generation"], 1, "{before}");
    assert_eq!(before["supervisor_pid"], base.supervisor_pid(), "{before}");
    assert_ne!(before["pid"], base.supervisor_pid(), "{before}");

    const CLIENTS: usize = 4;
    let addr = host_port(&base.traffic);
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(Instant, Outcome)>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, stop, results) = (addr.clone(), Arc::clone(&stop), Arc::clone(&results));
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let sent = Instant::now();
                    let outcome = fresh_get(&addr, "/fx-good/ping", "pong");
                    results.lock().unwrap().push((sent, outcome));
                }
            })
        })
        .collect();
    let served = |results: &Mutex<Vec<(Instant, Outcome)>>, after: Instant| {
        results.lock().unwrap().iter().filter(|(at, o)| *at >= after && *o == Outcome::Served).count()
    };
    let started = Instant::now();
    eventually("load before the crash", Duration::from_secs(20), || {
        (served(&results, started) >= 50).then_some(())
    });

    let crash = Instant::now();
    let crashed = ureq::get(&format!("{}/fx-crashy/abort", base.traffic)).call();
    assert!(crashed.is_err(), "the worker should have died: {crashed:?}");
    let after = next_worker(&base, 1);
    assert_eq!(after["supervisor_pid"], base.supervisor_pid(), "the supervisor stays: {after}");
    assert_ne!(after["pid"], before["pid"], "{after}");
    let recovered = Instant::now();
    eventually("load after the restart", Duration::from_secs(20), || {
        (served(&results, recovered) >= 50).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let results = results.lock().unwrap().clone();
    let count = |f: &dyn Fn(&Outcome) -> bool| results.iter().filter(|(_, o)| f(o)).count();
    let refused = count(&|o| *o == Outcome::Refused);
    let wrong: Vec<_> = results.iter().filter(|(_, o)| matches!(o, Outcome::Wrong(_))).collect();
    let broken: Vec<_> = results.iter().filter(|(_, o)| matches!(o, Outcome::Broken(_))).collect();
    eprintln!(
        "{} requests: {} broken in flight, {refused} refused, {} wrong; restart took {:?}",
        results.len(),
        broken.len(),
        wrong.len(),
        recovered - crash
    );
    assert_eq!(refused, 0, "connections were refused during the restart");
    assert!(wrong.is_empty(), "requests got a wrong answer: {wrong:?}");
    // Each client has one request at a time: at most one each was in flight when the worker died.
    assert!(broken.len() <= CLIENTS, "{} requests broke, more than were in flight: {broken:?}", broken.len());
    assert!(
        broken.iter().all(|(sent, _)| *sent < recovered),
        "no request sent once the new worker served may break: {broken:?}"
    );
    let served_after = results.iter().filter(|(at, o)| *at >= crash && *o == Outcome::Served).count();
    assert!(served_after >= 50, "served after the crash: {served_after}");
    base.wait_for_log("supervisor: the worker was killed by signal SIGABRT (6); restarting it at once");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    // The new worker read the dead one's crash record: the culprit is quarantined, not loaded
    // again (the same request would otherwise kill every worker).
    let quarantined = base.admin_get("/api/v1/modules").json["quarantined"].clone();
    assert_eq!(quarantined[0]["name"], "fx-crashy", "{quarantined}");
    assert_eq!(quarantined[0]["signal"], "SIGABRT", "{quarantined}");
    assert_eq!(base.get("/fx-crashy/ok").code(), "MODULE_NOT_FOUND");
}

#[test]
fn a_module_that_aborts_after_its_start_costs_one_worker_restart_not_a_crash_loop() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    // From the next start on, fx-crashy aborts the process 500 ms after a clean start.
    std::fs::write(base.data_dir().join("crash-after-start"), "").unwrap();
    base.install_ok(artifacts::CRASHY);
    let after = next_worker(&base, 1);
    assert_eq!(after["worker_generation"], 2, "one restart: {after}");
    let quarantined = base.admin_get("/api/v1/modules").json["quarantined"].clone();
    assert_eq!(quarantined[0]["name"], "fx-crashy", "{quarantined}\n{}", base.log());
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    // And it stays one: the second worker does not load the culprit, so nothing kills it.
    thread::sleep(Duration::from_secs(1));
    assert_eq!(base_process(&base)["worker_generation"], 2);
}

#[test]
fn sigterm_to_the_supervisor_stops_the_worker_and_exits_0() {
    let mut base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    let worker = base.pid();
    assert_eq!(base.workers(), vec![worker]);
    assert_eq!(base.terminate(Duration::from_secs(20)), Some(0), "log:\n{}", base.log());
    assert!(!process_is_alive(worker), "the worker outlived its supervisor");
    // The worker stopped its modules rather than dying with its parent.
    base.wait_for_log("shutting down: stopping every module");
    base.wait_for_log("supervisor: the worker exited with status 0; stopping");
}

#[test]
fn kill_9_of_the_supervisor_leaves_no_worker_behind() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    let worker = base.pid();
    let traffic = host_port(&base.traffic);
    let status = Command::new("kill").args(["-KILL", &base.supervisor_pid().to_string()]).status().unwrap();
    assert!(status.success());
    eventually("the worker to die with its supervisor", Duration::from_secs(10), || {
        (!process_is_alive(worker)).then_some(())
    });
    // Nobody holds the ports any more.
    eventually("the traffic port to close", Duration::from_secs(10), || {
        (fresh_get(&traffic, "/fx-good/ping", "pong") == Outcome::Refused).then_some(())
    });
}

#[test]
fn a_corrupt_state_file_stops_the_supervisor_with_its_error_and_no_restart() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("state.json"), "{ this is not json").unwrap();
    let mut child = Command::new(artifacts::PEDESTAL)
        .current_dir(data.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = eventually("the supervisor to stop", Duration::from_secs(20), || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("STATE_INVALID") && stderr.contains("state.json"), "the error: {stderr}");
    assert!(stderr.contains("before it was ready; not restarting it"), "the reason: {stderr}");
    assert_eq!(stderr.matches("supervisor: worker started").count(), 1, "started once: {stderr}");
}

#[test]
fn a_crash_loop_stops_the_supervisor_with_a_message() {
    let mut base = TestBase::start();
    let (mut generation, mut kills) = (1, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while base.is_running() {
        assert!(Instant::now() < deadline, "the supervisor never gave up; log:\n{}", base.log());
        let worker = base.workers();
        assert_eq!(worker.len(), 1, "{worker:?}");
        let _ = Command::new("kill").args(["-KILL", &worker[0].to_string()]).status();
        kills += 1;
        eventually("the supervisor to react", Duration::from_secs(20), || {
            if !base.is_running() {
                return Some(());
            }
            let workers = base.workers();
            let replaced = workers.len() == 1 && workers[0] != worker[0];
            // The new worker is up once it answers; a refused or broken request means not yet.
            let answers = replaced
                && ureq::get(&format!("{}/api/v1/base", base.admin))
                    .call()
                    .ok()
                    .and_then(|r| r.into_json::<Value>().ok())
                    .is_some_and(|p| p["worker_generation"].as_u64() == Some(generation + 1));
            answers.then_some(())
        });
        generation += 1;
    }
    let exit = base.exited().and_then(|status| status.code());
    assert_eq!(exit, Some(137), "the last worker's status (SIGKILL), as a shell reports it");
    let log = base.wait_for_log("a crash loop; not restarting it");
    assert_eq!((kills, generation), (6, 7), "five restarts were allowed, not a sixth: {log}");
}

#[test]
fn a_memory_limit_restart_that_leaves_a_leak_behind_escalates_to_a_new_worker() {
    let base = TestBase::start_with(&["--worker-restart-leak-bytes", "2097152"]);
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::LEAKY);
    let limits = json!({"memory_soft_limit_bytes": 1 << 20, "memory_action": "restart"});
    assert_eq!(base.put_limits("fx-leaky", &limits).status, 200);
    let before = base_process(&base);
    assert_eq!(before["worker_restart_available"], true, "{before}");
    assert_eq!(base.get("/fx-leaky/leak?kib=4096").status, 200);

    let after = next_worker(&base, 1);
    assert_ne!(after["pid"], before["pid"], "{after}");
    base.wait_for_log("restarting the worker process, which reclaims them");
    base.wait_for_log("supervisor: the worker asked for a fresh process");
    // The recorded state survived: both modules serve, the override still applies, and the
    // fresh process holds none of the leak.
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    assert_eq!(base.get("/fx-leaky/leak?kib=1").status, 200);
    let leaky = base.module("fx-leaky");
    assert_eq!(leaky["limits"]["memory_action"], "restart", "{leaky}");
    assert!(leaky["heap"]["live_bytes"].as_u64().unwrap() < 1 << 20, "{leaky}");
}

#[test]
fn without_escalation_a_memory_limit_restart_only_says_a_process_restart_would_reclaim_the_leak() {
    let base = TestBase::start_with_env(
        &["--worker-restart-leak-bytes", "2097152"],
        &[("PEDESTAL_SUPERVISOR", "off")],
    );
    base.install_ok(artifacts::LEAKY);
    let limits = json!({"memory_soft_limit_bytes": 1 << 20, "memory_action": "restart"});
    assert_eq!(base.put_limits("fx-leaky", &limits).status, 200);
    let process = base_process(&base);
    assert_eq!(
        (process["supervised"].as_bool(), process["worker_restart_available"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(base.get("/fx-leaky/leak?kib=4096").status, 200);
    base.wait_for_log("only a restart of the base process reclaims them");
    assert_eq!(base_process(&base)["pid"], process["pid"], "the same process serves on");
    assert_eq!(base.get("/fx-leaky/leak?kib=1").status, 200);
}

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

/// The status with which a worker asks its supervisor for a fresh process (`EX_TEMPFAIL`).
const WORKER_RESTART_EXIT_CODE: i32 = 75;

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

fn base_process(base: &TestBase) -> Value {
    base.admin_get("/api/v1/base").json
}

/// Waits until the worker generation is past `generation` and the new worker is ready: its
/// operations API answers before its restore is done (and before it quarantines anything).
fn next_worker(base: &TestBase, generation: u64) -> Value {
    eventually("a new, ready worker", Duration::from_secs(20), || {
        let process = base.admin_get("/api/v1/base").json;
        let ready = base.admin_get("/api/v1/ready").json["ready"] == true;
        (process["worker_generation"].as_u64()? > generation && ready).then_some(process)
    })
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
                    .set("authorization", &base.bearer())
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

/// Kills the serving worker with SIGKILL (no crash record: no module is blamed).
fn kill_worker(base: &TestBase) -> u32 {
    let worker = base.pid();
    let status = Command::new("kill").args(["-KILL", &worker.to_string()]).status().unwrap();
    assert!(status.success());
    worker
}

/// The lines of the base's log that contain every one of `needles`.
fn log_lines(base: &TestBase, needles: &[&str]) -> Vec<String> {
    base.log().lines().filter(|line| needles.iter().all(|n| line.contains(n))).map(str::to_owned).collect()
}

#[test]
fn a_module_printing_invalid_utf8_neither_closes_stdout_nor_stops_a_restoring_worker() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::CRASHY);
    // Twice: the second `println!` would panic if the first line had closed the pipe.
    for _ in 0..2 {
        let printed = base.get("/fx-crashy/print-binary");
        assert_eq!((printed.status, printed.body.as_str()), (200, "printed"), "{}", base.log());
    }
    // The next worker's restore prints invalid UTF-8 before the worker prints its ready line.
    std::fs::write(base.data_dir().join("print-binary-at-start"), "").unwrap();
    kill_worker(&base);
    let after = next_worker(&base, 1);
    assert_eq!(after["worker_generation"], 2, "{after}");
    eventually("the second worker's ready line", Duration::from_secs(10), || {
        (!log_lines(&base, &["supervisor: worker ready", "generation=2"]).is_empty()).then_some(())
    });
    assert_eq!(base.get("/fx-crashy/print-binary").body, "printed");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn hundreds_of_connections_opened_while_the_worker_restarts_all_wait_and_get_answers() {
    const CONNECTIONS: usize = 300;
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::CRASHY);
    let addr = host_port(&base.traffic);
    // The supervisor's socket has the deep backlog (ss shows a listener's backlog as Send-Q),
    // capped by the kernel's limit as `listen` caps it.
    let port = addr.rsplit(':').next().unwrap();
    let ss = Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output().unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
    let somaxconn: u32 =
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    let backlog: Option<u32> = ss.split_whitespace().nth(2).and_then(|q| q.parse().ok());
    assert_eq!(backlog, Some(somaxconn.min(1024)), "ss: {ss}");

    let crashed = ureq::get(&format!("{}/fx-crashy/abort", base.traffic)).call();
    assert!(crashed.is_err(), "the worker should have died: {crashed:?}");
    // All at once, while the next worker starts and restores.
    let barrier = Arc::new(std::sync::Barrier::new(CONNECTIONS));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (addr, barrier) = (addr.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                fresh_get(&addr, "/fx-good/ping", "pong")
            })
        })
        .collect();
    let outcomes: Vec<Outcome> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let failed: Vec<_> = outcomes.iter().filter(|o| **o != Outcome::Served).collect();
    assert!(failed.is_empty(), "{} of {CONNECTIONS} failed: {failed:?}\n{}", failed.len(), base.log());
    assert_eq!(base_process(&base)["worker_generation"], 2);
}

#[test]
fn an_escalation_drains_every_module_for_the_restart_drain_timeout_only() {
    let base = TestBase::start_with(&[
        "--worker-restart-leak-bytes",
        "2097152",
        "--drain-timeout-ms",
        "60000",
        "--restart-drain-timeout-ms",
        "300",
    ]);
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::LEAKY);
    let limits = json!({"memory_soft_limit_bytes": 1 << 20, "memory_action": "restart"});
    assert_eq!(base.put_limits("fx-leaky", &limits).status, 200);
    // A request in flight in a neighbour when the worker stops for its restart.
    let traffic = base.traffic.clone();
    let held = thread::spawn(move || ureq::get(&format!("{traffic}/fx-good/sleep?ms=120000")).call().is_ok());
    eventually("the held request in flight", Duration::from_secs(10), || {
        (base.module("fx-good")["traffic"]["in_flight"].as_u64() == Some(1)).then_some(())
    });
    assert_eq!(base.get("/fx-leaky/leak?kib=4096").status, 200);
    next_worker(&base, 1);
    assert!(!held.join().unwrap(), "the held request cannot be answered by a stopped module");
    base.wait_for_log("supervisor: the worker asked for a fresh process");
    let drained = log_lines(&base, &["drain timeout (300 ms) with 1 requests in flight", "fx-good"]);
    assert_eq!(drained.len(), 1, "fx-good drained briefly:\n{}", base.log());
    assert!(!base.log().contains("drain timeout (60000 ms)"), "{}", base.log());
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn a_later_worker_failing_before_it_is_ready_is_a_crash_not_a_setup_error() {
    let mut base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    // The first worker started on a sound setup; every later one finds a broken state file.
    std::fs::write(base.data_dir().join("state.json"), "{ this is not json").unwrap();
    kill_worker(&base);
    let status = base.wait_for_exit(Duration::from_secs(60)).expect("the crash-loop rule stops the base");
    assert_eq!(status.code(), Some(1), "{}", base.log());
    let log = base.wait_for_log("a crash loop; not restarting it");
    assert!(!log.contains("not restarting it (a restart would fail the same way)"), "{log}");
    // The SIGKILL and five failed restores: six crashes, counted like any other.
    assert_eq!(log.matches("supervisor: worker started").count(), 6, "{log}");
    assert_eq!(log.matches("exited with status 1; restarting it at once").count(), 4, "{log}");
}

#[test]
fn a_crash_quarantine_later_than_the_crash_loop_rule_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(artifacts::PEDESTAL)
        .current_dir(data.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--crash-quarantine-after", "5", "--data-dir"])
        .arg(data.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // A base that accepted the setting serves on: stop it, then fail below.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert!(stderr.contains("--crash-quarantine-after 5 is more than the supervisor allows"), "{stderr}");
    assert!(!stderr.contains("supervisor: worker started"), "refused before any worker: {stderr}");
}

#[test]
fn a_module_calling_exit_75_cannot_restart_the_worker_forever() {
    let mut base = TestBase::start();
    base.install_ok(artifacts::CRASHY);
    let mut generation = 1;
    // Three uncounted replacements (the escalations a worker may ask for), then six counted
    // crashes: the crash-loop rule stops the base.
    while base.is_running() {
        assert!(generation <= 12, "the supervisor never gave up; log:\n{}", base.log());
        let exited = ureq::get(&format!("{}/fx-crashy/exit?code=75", base.traffic)).call();
        assert!(exited.is_err(), "the worker should have exited: {exited:?}");
        eventually("the supervisor to react", Duration::from_secs(20), || {
            if !base.is_running() {
                return Some(());
            }
            let process = ureq::get(&format!("{}/api/v1/base", base.admin))
                .set("authorization", &base.bearer())
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())?;
            (process["worker_generation"].as_u64() == Some(generation + 1)).then_some(())
        });
        generation += 1;
    }
    assert_eq!(base.exited().and_then(|s| s.code()), Some(WORKER_RESTART_EXIT_CODE), "{}", base.log());
    let log = base.wait_for_log("a crash loop; not restarting it");
    assert_eq!(log.matches("supervisor: the worker asked for a fresh process").count(), 3, "{log}");
    assert_eq!(log.matches("counted as a crash").count(), 6, "{log}");
    assert_eq!(generation, 10, "{log}");
}

#[test]
fn sighup_to_the_supervisor_stops_the_worker_gracefully_and_exits_0() {
    let mut base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    let worker = base.pid();
    let status = Command::new("kill").args(["-HUP", &base.supervisor_pid().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = base.wait_for_exit(Duration::from_secs(20)).and_then(|s| s.code());
    assert_eq!(exit, Some(0), "log:\n{}", base.log());
    assert!(!process_is_alive(worker), "the worker outlived its supervisor");
    base.wait_for_log("shutting down: stopping every module");
    base.wait_for_log("supervisor: the worker exited with status 0; stopping");
}

#[test]
fn the_supervisors_hand_over_variables_do_not_reach_what_modules_start() {
    let base = TestBase::start();
    base.install_ok(artifacts::CRASHY);
    assert_eq!(base_process(&base)["supervised"], true);
    let env = |name: &str| base.get(&format!("/fx-crashy/env?name={name}")).body;
    // The route does see the environment...
    assert_eq!(env("PEDESTAL_LOG"), "info");
    // ...but not what the supervisor told its worker, read and removed at the worker's start.
    for name in [
        "PEDESTAL_LISTEN_FDS",
        "PEDESTAL_WORKER_GENERATION",
        "PEDESTAL_SUPERVISOR_PID",
        "PEDESTAL_WORKER_ESCALATION",
    ] {
        assert_eq!(env(name), "unset", "{name}");
    }
}

#[test]
fn a_sequential_client_is_never_over_a_concurrency_limit_of_one() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    assert_eq!(base.put_limits("fx-good", &json!({"max_concurrent_requests": 1})).status, 200);
    // Each answer reaches the client only once its request stopped counting as in flight.
    for i in 0..300 {
        let reply = base.get("/fx-good/ping");
        assert_eq!((reply.status, reply.body.as_str()), (200, "pong"), "request {i}");
    }
    assert_eq!(base.module("fx-good")["traffic"]["rejected"], 0);
}

//! The foundation, end to end: the real `pedestal` binary, real fixture `.so` files, real HTTP.

use std::{
    io::{Read, Write},
    process::Command,
    time::Duration,
};

use pedestal_tests::{TestBase, artifact_name, artifacts, read};

#[test]
fn a_module_installs_serves_logs_and_unloads_for_real() {
    let base = TestBase::start();
    let installed = base.install_ok(artifacts::GOOD);
    assert_eq!(installed["name"], "fx-good");
    assert_eq!(installed["version"], "0.1.0");
    assert_eq!(installed["interface_version"], "1.3.0");
    assert_eq!(installed["state"], "active");
    let sha = installed["sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha.len(), 64);
    assert!(installed["install_ms"].as_f64().unwrap() > 0.0);

    let ping = base.get("/fx-good/ping");
    assert_eq!((ping.status, ping.body.as_str()), (200, "pong"));
    assert_eq!(ping.header("x-pedestal-module"), Some("fx-good@0.1.0"));
    assert_eq!(base.post("/fx-good/echo", b"round trip").body, "round trip");
    assert_eq!(base.get("/fx-good/sleep?ms=20").body, "slept 20");
    assert_eq!(base.get("/fx-good/spawn").body, "task said 42");

    assert_eq!(base.get("/fx-good/log").body, "logged");
    let log = base.wait_for_log("fixture log line");
    let tracing_line = log.lines().find(|l| l.contains("fixture tracing line")).expect("tracing line");
    assert!(
        tracing_line.contains("module=\"fx-good\"") && tracing_line.contains("version=0.1.0"),
        "{tracing_line}"
    );
    assert!(tracing_line.contains("answer=42"), "{tracing_line}");
    let log_line = log.lines().find(|l| l.contains("fixture log line")).unwrap();
    assert!(log_line.contains("WARN") && log_line.contains("module=\"fx-good\""), "{log_line}");

    let described = base.admin_get("/api/v1/modules/fx-good").json;
    let version = &described["versions"][0];
    assert_eq!(described["active_version"], "0.1.0");
    assert!(version["heap"]["live_bytes"].as_u64().unwrap() > 0, "{version}");
    assert_eq!(version["traffic"]["requests"], 5);
    let states: Vec<_> = version["history"].as_array().unwrap().iter().map(|t| t["state"].clone()).collect();
    assert_eq!(states, ["installing", "starting", "active"]);
    assert!(base.maps_contain(&artifact_name(&sha)));

    let removed = base.uninstall("fx-good", "0.1.0");
    assert_eq!(removed.status, 200, "{removed:?}");
    assert_eq!(removed.json["state"], "stopped", "{removed:?}");
    assert!(removed.json["leaked_bytes"].is_u64());
    assert!(!base.maps_contain(&artifact_name(&sha)), "the library is still mapped after uninstall");
    assert_eq!(base.get("/fx-good/ping").code(), "MODULE_NOT_FOUND");
    let described = base.admin_get("/api/v1/modules/fx-good").json;
    assert_eq!(described["versions"], serde_json::json!([]), "{described}");
    assert_eq!(described["retired"][0]["state"], "stopped", "{described}");
}

#[test]
fn modules_with_timers_tasks_thread_locals_and_threads_unmap_and_reload() {
    let base = TestBase::start();
    let cases = [
        (artifacts::GOOD, "fx-good", "/sleep?ms=5", "slept 5"),
        (artifacts::GOOD, "fx-good", "/spawn", "task said 42"),
        (artifacts::THREAD_LOCAL, "fx-thread-local", "/roll", "rolled"),
        (artifacts::THREADS, "fx-threads", "/work", "sum 5050"),
    ];
    for (path, name, route, expected) in cases {
        // Twice: a reinstall must load fresh code, which only happens if the first copy was unmapped.
        for round in 0..2 {
            let sha = base.install_ok(path)["sha256"].as_str().unwrap().to_owned();
            let reply = base.get(&format!("/{name}{route}"));
            assert!(reply.body.starts_with(expected), "{name}{route} round {round}: {reply:?}");
            if name == "fx-thread-local" {
                assert!(reply.body.ends_with("1 rolls so far"), "stale thread-local state: {reply:?}");
            }
            let removed = base.uninstall(name, "0.1.0");
            assert_eq!(removed.json["state"], "stopped", "{name} round {round}: {removed:?}");
            assert!(!base.maps_contain(&artifact_name(&sha)), "{name} still mapped");
            base.uninstall(name, "0.1.0"); // forget the stopped record
        }
    }
}

#[test]
fn a_module_thread_that_never_ends_pins_the_instance_without_harming_the_base() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    let sha = base.install_ok(artifacts::THREAD_LEAK)["sha256"].as_str().unwrap().to_owned();
    assert_eq!(base.get("/fx-thread-leak/ping").body, "pong");
    let removed = base.uninstall("fx-thread-leak", "0.1.0");
    assert_eq!(removed.json["state"], "pinned", "{removed:?}");
    let reason =
        removed.json["history"].as_array().unwrap().last().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(reason.contains("1 thread(s) the module started are still running"), "{reason}");
    assert!(base.maps_contain(&artifact_name(&sha)));
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    let health = base.admin_get("/api/v1/health").json;
    assert_eq!(health["counts"]["pinned"], 1, "{health}");
    assert_eq!(health["problems"][0]["module"], "fx-thread-leak@0.1.0");

    // The same artifact again: the pinned copy is still mapped, so the base loads a private copy.
    base.install_ok(artifacts::THREAD_LEAK);
    assert_eq!(base.get("/fx-thread-leak/ping").body, "pong");
}

#[test]
fn a_panicking_handler_is_a_500_for_that_request_only() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::PANICKING);
    for _ in 0..3 {
        let boom = base.get("/fx-panicking/boom");
        assert_eq!((boom.status, boom.code()), (500, "MODULE_PANICKED"), "{boom:?}");
        assert!(boom.json["message"].as_str().unwrap().contains("fixture handler exploded"));
    }
    assert_eq!(base.get("/fx-panicking/ok").body, "fine");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    let log = base.wait_for_log("module panicked");
    let line = log.lines().find(|l| l.contains("module panicked")).unwrap();
    assert!(line.contains("module=\"fx-panicking\"") && line.contains("fixture handler exploded"), "{line}");
    assert!(line.contains("fx-panicking/src/lib.rs"), "no location: {line}");
    let version = &base.admin_get("/api/v1/modules/fx-panicking").json["versions"][0];
    assert_eq!(version["traffic"]["panics"], 3);
    assert_eq!(version["traffic"]["server_errors"], 3);
}

/// One bad upload: the status and code it must get, a phrase the message must contain, and
/// the base must go on serving the module it had.
fn check_refused(base: &TestBase, what: &str, bytes: &[u8], status: u16, code: &str, phrase: &str) {
    let reply = base.install_bytes(bytes);
    assert_eq!((reply.status, reply.code()), (status, code), "{what}: {reply:?}\nlog:\n{}", base.log());
    let message = reply.json["message"].as_str().unwrap_or_default();
    assert!(message.contains(phrase), "{what}: message {message:?} lacks {phrase:?}");
    assert_eq!(base.get("/fx-good/ping").body, "pong", "after {what}");
}

#[test]
fn bad_uploads_get_precise_codes_and_the_base_keeps_serving() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    let good = read(artifacts::GOOD);
    let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();

    check_refused(&base, "empty body", b"", 422, "EMPTY_UPLOAD", "empty");
    check_refused(&base, "random bytes", &random, 422, "NOT_A_MODULE", "ELF magic");
    check_refused(&base, "shell script", b"#!/bin/sh\nrm -rf /\n", 422, "NOT_A_MODULE", "script");
    check_refused(&base, "truncated module", &good[..good.len() / 3], 422, "NOT_A_MODULE", "truncated");
    check_refused(
        &base,
        "plain cdylib",
        &read(artifacts::PLAIN_CDYLIB),
        422,
        "NOT_A_MODULE",
        "pedestal_interface_stamp",
    );
    let libz = ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a system libz");
    check_refused(&base, "system library", &read(libz), 422, "NOT_A_MODULE", "pedestal_interface_stamp");
    check_refused(
        &base,
        "interface 2.0.0",
        &read(artifacts::INTERFACE_V2),
        422,
        "INTERFACE_MISMATCH",
        "2.0.0",
    );
    let mismatch = base.install(artifacts::INTERFACE_V2);
    assert_eq!(mismatch.json["details"]["base_interface"], "1.3.0");
    assert_eq!(mismatch.json["details"]["module_interface"], "2.0.0");
    check_refused(
        &base,
        "start fails",
        &read(artifacts::START_FAILS),
        422,
        "START_FAILED",
        "database is unreachable",
    );
    check_refused(
        &base,
        "start panics",
        &read(artifacts::START_PANICS),
        422,
        "START_FAILED",
        "fixture start exploded",
    );
    check_refused(&base, "start hangs", &read(artifacts::START_HANGS), 422, "START_TIMEOUT", "broken");
    check_refused(&base, "start blocks", &read(artifacts::START_BLOCKS), 422, "START_TIMEOUT", "pinned");
    check_refused(&base, "same module again", &good, 409, "ALREADY_INSTALLED", "fx-good@0.1.0");

    let states =
        |name: &str| base.admin_get(&format!("/api/v1/modules/{name}")).json["versions"][0]["state"].clone();
    assert_eq!(states("fx-start-fails"), "broken");
    assert_eq!(states("fx-start-hangs"), "broken");
    assert_eq!(states("fx-start-blocks"), "pinned");
    let health = base.admin_get("/api/v1/health").json;
    assert_eq!(health["counts"]["active"], 1, "{health}");
}

#[test]
fn uploads_over_the_limit_are_refused_before_they_are_read() {
    let base = TestBase::start_with(&["--max-upload-bytes", "100000"]);
    // The base answers from the declared length alone, before a byte of the body: the client
    // below sends only the headers. With `Expect: 100-continue` (as curl sends for large
    // bodies) that is the whole exchange; without it the 413 arrives just the same.
    for (length, expect) in [(100_001u64, false), (300_000_000, true)] {
        let addr = base.admin.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let expect = if expect { "Expect: 100-continue\r\n" } else { "" };
        write!(
            stream,
            "POST /api/v1/modules HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
             Authorization: {}\r\nContent-Length: {length}\r\n{expect}\r\n",
            base.bearer()
        )
        .unwrap();
        let mut answer = vec![0; 4096];
        let n = stream.read(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{length}: {answer}");
        assert!(answer.contains("PAYLOAD_TOO_LARGE") && answer.contains("\"limit\":100000"), "{answer}");
    }
    // A body that fits passes the size check (and is then judged on its content).
    let small = base.install_bytes(&[0x7f; 99_999]);
    assert_eq!(small.code(), "NOT_A_MODULE", "{small:?}");
}

#[test]
fn a_module_built_against_a_newer_minor_interface_loads() {
    let base = TestBase::start();
    let installed = base.install_ok(artifacts::INTERFACE_NEWER_MINOR);
    assert_eq!(installed["interface_version"], "1.4.0");
    assert_eq!(base.get("/fx-interface-newer-minor/ping").body, "pong from 1.4");
}

#[test]
fn install_from_a_path_and_unknown_names() {
    let base = TestBase::start();
    // Path installs read from <data-dir>/incoming/ (and --allow-path-install directories) only.
    let file = base.data_dir().join("incoming/good.so");
    std::fs::copy(artifacts::GOOD, &file).unwrap();
    let reply = base.install_path(&file);
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    assert_eq!(base.get("/nobody/here").code(), "MODULE_NOT_FOUND");
    assert_eq!(base.uninstall("nobody", "1.0.0").code(), "NOT_FOUND");
    assert_eq!(base.uninstall("fx-good", "not-a-version").code(), "BAD_REQUEST");
    let listed = base.admin_get("/api/v1/modules").json;
    assert_eq!(listed["modules"][0]["name"], "fx-good");
    assert_eq!(listed["modules"][0]["active"], true);
}

#[test]
fn the_operations_api_requires_its_token() {
    let base = TestBase::start_with(&["--admin-token", "s3cret-of-the-test"]);
    let denied = base.admin_without_token("GET", "/api/v1/health", &[], None);
    assert_eq!((denied.status, denied.code()), (401, "UNAUTHORIZED"));
    let wrong = base.admin("GET", "/api/v1/health", &[("authorization", "Bearer nope")], None);
    assert_eq!(wrong.status, 401);
    let allowed =
        base.admin("GET", "/api/v1/health", &[("authorization", "Bearer s3cret-of-the-test")], None);
    assert_eq!(allowed.status, 200);

    let refused = Command::new(artifacts::PEDESTAL)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .env_remove("PEDESTAL_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not a loopback address") && stderr.contains("--admin-token"), "{stderr}");
}

#[test]
fn sigterm_stops_every_module_and_exits_cleanly() {
    let mut base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::THREADS);
    assert_eq!(base.terminate(Duration::from_secs(20)), Some(0), "log:\n{}", base.log());
    let log = base.log();
    assert!(log.matches("unloaded and unmapped").count() >= 2, "{log}");
    assert!(!base.is_running());
}

#[test]
fn a_request_past_its_timeout_gets_a_504_and_the_module_keeps_serving() {
    let base = TestBase::start_with(&["--request-timeout-ms", "1500"]);
    base.install_ok(artifacts::GOOD);
    let slow = base.get("/fx-good/sleep?ms=10000");
    assert_eq!((slow.status, slow.code()), (504, "MODULE_TIMEOUT"), "{slow:?}");
    assert_eq!(slow.json["details"]["timeout_ms"], 1500);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn uninstall_waits_for_in_flight_requests_before_stopping_the_module() {
    let base = std::sync::Arc::new(TestBase::start());
    base.install_ok(artifacts::GOOD);
    let in_flight = {
        let base = std::sync::Arc::clone(&base);
        std::thread::spawn(move || base.get("/fx-good/sleep?ms=700"))
    };
    // Uninstall only once the request is inside the module.
    let in_flight_now =
        || base.admin_get("/api/v1/modules/fx-good").json["versions"][0]["traffic"]["in_flight"].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while in_flight_now() != 1 {
        assert!(std::time::Instant::now() < deadline, "the request never reached the module");
        std::thread::sleep(Duration::from_millis(10));
    }
    let removed = base.uninstall("fx-good", "0.1.0");
    let answered = in_flight.join().unwrap();
    assert_eq!((answered.status, answered.body.as_str()), (200, "slept 700"), "{answered:?}");
    assert_eq!(removed.json["state"], "stopped", "{removed:?}");
    let history = removed.json["history"].as_array().unwrap();
    let draining = history.iter().find(|t| t["state"] == "draining").unwrap();
    let stopping = history.iter().find(|t| t["state"] == "stopping").unwrap();
    assert_eq!(stopping["message"], "drained; asking the module to stop", "{draining} {stopping}");
}

#[test]
fn a_base_survives_more_module_loads_than_the_process_has_pthread_keys() {
    // Each load of a module's std creates a pthread key; glibc has 1024. Without the base
    // reclaiming them, load number ~1000 aborted the process ("out of TLS keys").
    let base = TestBase::start();
    assert_eq!(base.admin_get("/api/v1/health").json["tls_keys_reclaimable"], true);
    let module = read(artifacts::GOOD);
    let open_fds = || std::fs::read_dir(format!("/proc/{}/fd", base.pid())).unwrap().count();
    let fds_before = open_fds();
    for cycle in 0..1100 {
        let installed = base.install_bytes(&module);
        assert_eq!(installed.status, 201, "cycle {cycle}: {installed:?}\n{}", base.log());
        let removed = base.uninstall("fx-good", "0.1.0");
        assert_eq!(removed.json["state"], "stopped", "cycle {cycle}: {removed:?}");
    }
    assert_eq!(base.get("/fx-good/ping").code(), "MODULE_NOT_FOUND");
    // Every eventfd and every descriptor a module opened is gone (a few HTTP sockets may linger).
    let fds_after = open_fds();
    assert!(fds_after <= fds_before + 4, "file descriptors leaked: {fds_before} before, {fds_after} after");
    base.install_ok(artifacts::GOOD);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn a_relative_data_directory_still_unloads_for_real() {
    // The unmap check compares device and inode, so the form of the data path does not matter.
    let base = TestBase::start_with(&["--data-dir", "./data/../data"]);
    for _ in 0..2 {
        let sha = base.install_ok(artifacts::THREAD_LOCAL)["sha256"].as_str().unwrap().to_owned();
        assert!(base.get("/fx-thread-local/roll").body.ends_with("1 rolls so far"));
        let removed = base.uninstall("fx-thread-local", "0.1.0");
        assert_eq!(
            (removed.json["state"].as_str(), removed.json["mapped"].as_bool()),
            (Some("stopped"), Some(false))
        );
        assert!(!base.maps_contain(&artifact_name(&sha)));
        base.uninstall("fx-thread-local", "0.1.0");
    }
}

#[test]
fn the_operations_api_answers_every_mistake_in_json() {
    let base = TestBase::start();
    let wrong_method = base.admin("PUT", "/api/v1/modules", &[], Some(b""));
    assert_eq!((wrong_method.status, wrong_method.code()), (405, "METHOD_NOT_ALLOWED"), "{wrong_method:?}");
    let no_route = base.admin_get("/api/v2/everything");
    assert_eq!((no_route.status, no_route.code()), (404, "NOT_FOUND"));
    let missing = serde_json::json!({ "path": base.data_dir().join("incoming/nonexistent.so") }).to_string();
    let reply = base.admin(
        "POST",
        "/api/v1/modules",
        &[("content-type", "application/json")],
        Some(missing.as_bytes()),
    );
    assert_eq!((reply.status, reply.code()), (404, "NOT_FOUND"), "{reply:?}");
    let garbled = base.admin("POST", "/api/v1/modules", &[("content-type", "application/json")], Some(b"{"));
    assert_eq!((garbled.status, garbled.code()), (422, "BAD_REQUEST"), "{garbled:?}");
}

#[test]
fn one_artifact_serves_many_tenants_each_its_own_instance() {
    let base = TestBase::start();
    let a = base.install_as(artifacts::GOOD, "tenant-a");
    assert_eq!((a["name"].as_str(), a["package"].as_str()), (Some("tenant-a"), Some("fx-good")));
    base.install_as(artifacts::GOOD, "tenant-b");
    base.install_ok(artifacts::GOOD); // and under its own name
    for name in ["tenant-a", "tenant-b", "fx-good"] {
        let reply = base.get(&format!("/{name}/ping"));
        assert_eq!(reply.body, "pong");
        assert_eq!(reply.header("x-pedestal-module"), Some(format!("{name}@0.1.0").as_str()));
    }
    assert_eq!(base.get("/tenant-a/log").body, "logged");
    let line = base.wait_for_log("fixture tracing line");
    let line = line.lines().find(|l| l.contains("fixture tracing line")).unwrap();
    assert!(line.contains("module=\"tenant-a\""), "{line}");
    let b = base.admin_get("/api/v1/modules/tenant-b").json;
    assert_eq!(b["versions"][0]["package"], "fx-good");
    assert_eq!(b["versions"][0]["traffic"]["requests"], 1, "accounting is per instance: {b}");

    let module = [("content-type", "application/octet-stream")];
    let twice = base.admin("POST", "/api/v1/modules?name=tenant-b", &module, Some(&read(artifacts::GOOD)));
    assert_eq!((twice.status, twice.code()), (409, "ALREADY_INSTALLED"));
    let bad = base.admin("POST", "/api/v1/modules?name=no/slashes", &module, Some(&read(artifacts::GOOD)));
    assert_eq!((bad.status, bad.code()), (422, "BAD_REQUEST"));

    assert_eq!(base.uninstall("tenant-a", "0.1.0").json["state"], "stopped");
    assert_eq!(base.get("/tenant-a/ping").code(), "MODULE_NOT_FOUND");
    assert_eq!(base.get("/tenant-b/ping").body, "pong");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

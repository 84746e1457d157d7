//! Each module's own log: files, tail with level filter, follow as server-sent events, and no
//! mixing between modules logging at the same time.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use pedestal_tests::{TestBase, artifacts};

#[test]
fn two_modules_logging_at_once_never_get_each_others_lines() {
    let base = std::sync::Arc::new(TestBase::start());
    base.install_as(artifacts::GOOD, "tenant-a");
    base.install_as(artifacts::GOOD, "tenant-b");
    let hammer = |name: &'static str| {
        let base = std::sync::Arc::clone(&base);
        std::thread::spawn(move || {
            for _ in 0..100 {
                assert_eq!(base.get(&format!("/{name}/log")).body, "logged");
            }
        })
    };
    let workers = [hammer("tenant-a"), hammer("tenant-b"), hammer("tenant-a"), hammer("tenant-b")];
    for worker in workers {
        worker.join().unwrap();
    }
    for (name, other) in [("tenant-a", "tenant-b"), ("tenant-b", "tenant-a")] {
        let logs = base.admin_get(&format!("/api/v1/modules/{name}/logs?tail=1000")).json;
        let lines = logs["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 400, "{name}: 200 requests, a tracing and a log line each");
        assert!(
            lines.iter().all(|l| l["module"] == name && l["version"] == "0.1.0"),
            "{name} got a foreign line"
        );
        let file = std::fs::read_to_string(logs["file"].as_str().unwrap()).unwrap();
        assert_eq!(
            file.lines().filter(|l| l.contains(&format!("{name}@0.1.0"))).count(),
            400,
            "{name}'s file"
        );
        assert!(!file.contains(other), "{name}'s file holds {other}'s lines");

        let warnings = base.admin_get(&format!("/api/v1/modules/{name}/logs?tail=1000&level=warn")).json;
        let warnings = warnings["lines"].as_array().unwrap();
        assert_eq!(warnings.len(), 200);
        assert!(warnings.iter().all(|l| l["level"] == "warn" && l["message"] == "fixture log line"));
    }
    let unknown = base.admin_get("/api/v1/modules/nobody/logs");
    assert_eq!((unknown.status, unknown.code()), (404, "NOT_FOUND"));
    let bad_level = base.admin_get("/api/v1/modules/tenant-a/logs?level=loud");
    assert_eq!((bad_level.status, bad_level.code()), (422, "BAD_REQUEST"));
}

#[test]
fn following_a_log_streams_new_lines_as_server_sent_events() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    assert_eq!(base.get("/fx-good/log").body, "logged");
    let addr = base.admin.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    write!(
        stream,
        "GET /api/v1/modules/fx-good/logs?follow=true&tail=1&level=warn HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: {}\r\n\r\n",
        base.bearer()
    )
    .unwrap();
    let mut received = String::new();
    // Reads until `received` holds `events` log events (or fails after ten seconds).
    let mut wait_for_events = |events: usize, received: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buffer = [0u8; 4096];
        while received.matches("event: log").count() < events {
            assert!(Instant::now() < deadline, "waited for {events} events: {received}");
            if let Ok(n) = stream.read(&mut buffer) {
                received.push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        }
    };
    wait_for_events(1, &mut received);
    assert!(received.contains("text/event-stream"), "{received}");
    // tail=1 sends exactly one line first; then a new request's warning arrives live.
    assert_eq!(base.get("/fx-good/log").body, "logged");
    wait_for_events(2, &mut received);
    assert_eq!(received.matches("\"message\":\"fixture log line\"").count(), 2, "{received}");
    assert!(!received.contains("fixture tracing line"), "level=warn must filter info lines: {received}");
}

#[test]
fn module_log_files_can_be_json() {
    let base = TestBase::start_with(&["--module-log-format", "json"]);
    base.install_ok(artifacts::GOOD);
    assert_eq!(base.get("/fx-good/log").body, "logged");
    let logs = base.admin_get("/api/v1/modules/fx-good/logs").json;
    let file = std::fs::read_to_string(logs["file"].as_str().unwrap()).unwrap();
    let first: serde_json::Value = serde_json::from_str(file.lines().next().unwrap()).unwrap();
    assert_eq!(first["module"], "fx-good");
    assert_eq!(first["message"], "fixture tracing line");
    assert_eq!(first["fields"], "answer=42");
}

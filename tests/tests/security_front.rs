//! The operations API's front door against the real binary: a drive-by browser upload, DNS
//! rebinding, content types, query strings, oversized headers, tokens (generated, too short,
//! guessed), and the audit trail.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    process::Command,
    time::Duration,
};

use pedestal_tests::{Reply, TestBase, artifacts, eventually, read};
use serde_json::Value;

/// A raw HTTP/1.1 request to the operations API (for headers a client library will not send
/// as given, like a foreign `Host`): the status and the body as JSON.
fn raw(base: &TestBase, head: &str, body: &[u8]) -> (u16, Value) {
    let addr = base.admin.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connecting to the operations API");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!("{head}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    // The base may answer (and close) before reading a refused body: a failed write is fine.
    let _ = stream.write_all(request.as_bytes()).and_then(|()| stream.write_all(body));
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn port(base: &TestBase) -> &str {
    base.admin.rsplit(':').next().unwrap()
}

fn installed_modules(base: &TestBase) -> usize {
    base.admin_get("/api/v1/modules").json["modules"].as_array().map_or(0, Vec::len)
}

/// `reply` is the JSON error `status` with `code`, and its message mentions `needle`.
fn check_error(what: &str, reply: &Reply, status: u16, code: &str, needle: &str) {
    assert_eq!((reply.status, reply.code()), (status, code), "{what}: {reply:?}");
    let message = reply.json["message"].as_str().unwrap_or("");
    assert!(message.contains(needle), "{what}: {needle:?} not in {message:?}");
    assert!(reply.json["details"].is_object(), "{what}: no details in {reply:?}");
}

#[test]
fn a_browsers_cross_site_upload_is_refused_and_loads_nothing() {
    let base = TestBase::start();
    let addr = base.admin.trim_start_matches("http://").to_owned();
    // Exactly what a web page's `fetch(url, {method: "POST", mode: "no-cors", body})` with a
    // string body sends: a "simple" request, no preflight, no token.
    let head = format!(
        "POST /api/v1/modules HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\n\
         Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n"
    );
    let (status, body) = raw(&base, &head, &read(artifacts::GOOD));
    assert_eq!((status, body["code"].as_str()), (403, Some("CROSS_ORIGIN")), "{body}");
    // Even had the page the token, the browser's headers give it away.
    let with_token = format!("{head}Authorization: {}\r\n", base.bearer());
    let (status, body) = raw(&base, &with_token, &read(artifacts::GOOD));
    assert_eq!((status, body["code"].as_str()), (403, Some("CROSS_ORIGIN")), "{body}");
    // Older browsers send no Sec-Fetch-*: the Origin alone gives it away; newer ones may be
    // told apart by Sec-Fetch-Site alone.
    for headers in ["Origin: http://evil.example\r\n", "Sec-Fetch-Site: cross-site\r\n"] {
        for content_type in ["text/plain", "application/octet-stream"] {
            let head = format!(
                "POST /api/v1/modules HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n{headers}"
            );
            let (status, body) = raw(&base, &head, &read(artifacts::GOOD));
            assert_eq!((status, body["code"].as_str()), (403, Some("CROSS_ORIGIN")), "{headers}: {body}");
        }
    }
    // Another local site (another port of localhost is the same site) is refused too.
    let same_site = format!(
        "GET /api/v1/modules HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://localhost:3000\r\n\
         Authorization: {}\r\n",
        base.bearer()
    );
    let (status, body) = raw(&base, &same_site, b"");
    assert_eq!((status, body["code"].as_str()), (403, Some("CROSS_ORIGIN")), "{body}");

    assert_eq!(installed_modules(&base), 0, "a module was loaded");
    assert_eq!(base.get("/fx-good/ping").code(), "MODULE_NOT_FOUND");
    // The base's own origin is fine (a page it served, say).
    let own = [("origin", format!("http://{addr}")), ("sec-fetch-site", "same-origin".into())];
    let own: Vec<(&str, &str)> = own.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(base.admin("GET", "/api/v1/modules", &own, None).status, 200);
}

#[test]
fn a_rebinding_host_is_refused_even_with_the_token() {
    let base = TestBase::start_with(&["--admin-allowed-hosts", "ops.example.com,proxy.example.com:8443"]);
    let port = port(&base).to_owned();
    let get = |host: &str| {
        let head =
            format!("GET /api/v1/modules HTTP/1.1\r\nHost: {host}\r\nAuthorization: {}\r\n", base.bearer());
        raw(&base, &head, b"")
    };
    let (status, body) = get(&format!("rebind.evil.example:{port}"));
    assert_eq!((status, body["code"].as_str()), (403, Some("HOST_NOT_ALLOWED")), "{body}");
    assert_eq!(body["details"]["host"], format!("rebind.evil.example:{port}"));
    // Nor is an open route a way in.
    let head = format!("GET /api/v1/ready HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\n");
    assert_eq!(raw(&base, &head, b"").0, 403);
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")] {
        assert_eq!(get(&host).0, 200, "Host {host}");
    }
    assert_eq!(get("ops.example.com").0, 200, "an allowed name");
    assert_eq!(get("proxy.example.com:8443").0, 200, "an allowed name and port");
    assert_eq!(get("proxy.example.com:9443").0, 403, "an allowed name on another port");
    // An allowed name without a port is an allowed Origin on the API's port only: another
    // application on that host is another site.
    let with_origin = |origin: &str| {
        let head = format!(
            "GET /api/v1/modules HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {origin}\r\nAuthorization: {}\r\n",
            base.bearer()
        );
        raw(&base, &head, b"")
    };
    let (status, body) = with_origin("http://ops.example.com:3000");
    assert_eq!((status, body["code"].as_str()), (403, Some("CROSS_ORIGIN")), "{body}");
    assert_eq!(with_origin(&format!("http://ops.example.com:{port}")).0, 200);
    assert_eq!(with_origin("https://proxy.example.com:8443").0, 200, "the port written with it");
}

#[test]
fn bodies_must_say_what_they_are() {
    let base = TestBase::start();
    let module = read(artifacts::GOOD);
    let addr = base.admin.trim_start_matches("http://").to_owned();
    // Raw: the base answers before reading a refused body, which a client library that writes
    // the whole body first reports as a broken connection.
    let upload = |content_type: Option<&str>| {
        let typed = content_type.map(|t| format!("Content-Type: {t}\r\n")).unwrap_or_default();
        let head = format!(
            "POST /api/v1/modules HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n{typed}",
            base.bearer()
        );
        raw(&base, &head, &module)
    };
    for (content_type, needle) in [
        (Some("text/plain"), "text/plain"),
        (None, "application/octet-stream"),
        (Some("application/x-www-form-urlencoded"), "form-urlencoded"),
        (Some("multipart/form-data; boundary=x"), "multipart"),
    ] {
        let (status, body) = upload(content_type);
        assert_eq!(
            (status, body["code"].as_str()),
            (415, Some("UNSUPPORTED_MEDIA_TYPE")),
            "{content_type:?}: {body}"
        );
        assert!(body["message"].as_str().unwrap().contains(needle), "{content_type:?}: {body}");
    }
    assert_eq!(installed_modules(&base), 0, "a refused upload loaded a module");
    assert_eq!(upload(Some("Application/Octet-Stream")).0, 201, "media types are case-insensitive");

    // JSON endpoints take JSON only (parameters allowed).
    let switch = |content_type: &str| {
        let body = br#"{"version": "0.1.0"}"#;
        base.admin("POST", "/api/v1/modules/fx-good/switch", &[("content-type", content_type)], Some(body))
    };
    check_error("text/plain switch", &switch("text/plain"), 415, "UNSUPPORTED_MEDIA_TYPE", "text/plain");
    check_error("xml switch", &switch("application/xml"), 415, "UNSUPPORTED_MEDIA_TYPE", "application/json");
    assert_eq!(switch("application/json; charset=utf-8").status, 200);
    let untyped = base.admin("PUT", "/api/v1/modules/fx-good/limits", &[], Some(b"{}"));
    check_error("untyped limits", &untyped, 415, "UNSUPPORTED_MEDIA_TYPE", "application/json");

    // Routes without a body refuse what a page may send without asking first.
    for (method, path) in [
        ("POST", "/api/v1/config/reload"),
        ("POST", "/api/v1/modules/fx-good/0.1.0/retry"),
        ("POST", "/api/v1/artifacts/0000000000000000000000000000000000000000000000000000000000000000/retry"),
        ("DELETE", "/api/v1/modules/fx-good/0.1.0"),
    ] {
        let reply = base.admin(method, path, &[("content-type", "text/plain")], Some(b"x"));
        check_error(&format!("{method} {path}"), &reply, 415, "UNSUPPORTED_MEDIA_TYPE", "text/plain");
    }
    assert_eq!(base.get("/fx-good/ping").body, "pong", "the DELETE was refused");
}

#[test]
fn unknown_query_parameters_and_bad_values_are_json_errors() {
    let base = TestBase::start();
    // A misspelt option is not ignored (the module would be installed without it).
    // Raw: refused before its body is read, which a client that writes the body first may see
    // as a broken pipe.
    let head = format!(
        "POST /api/v1/modules?activte=true&name=tenant HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
         Content-Type: application/octet-stream\r\n",
        base.admin.trim_start_matches("http://"),
        base.bearer()
    );
    let (status, misspelt) = raw(&base, &head, &read(artifacts::GOOD));
    assert_eq!((status, misspelt["code"].as_str()), (400, Some("BAD_REQUEST")), "{misspelt}");
    assert!(misspelt["message"].as_str().unwrap().contains("activte"), "{misspelt}");
    assert_eq!(misspelt["details"]["unknown_parameters"], serde_json::json!(["activte"]));
    assert_eq!(installed_modules(&base), 0);
    // A route that takes none.
    let health = base.admin_get("/api/v1/health?verbose=1&x=2");
    check_error("parameters on health", &health, 400, "BAD_REQUEST", "takes none");
    assert_eq!(health.json["details"]["unknown_parameters"], serde_json::json!(["verbose", "x"]));
    let reload = base.admin("POST", "/api/v1/config/reload?now=true", &[], None);
    check_error("parameters on reload", &reload, 400, "BAD_REQUEST", "now");

    base.install_ok(artifacts::GOOD);
    // Values that do not parse, in the query and in the path: JSON, not axum's plain text.
    let tail = base.admin_get("/api/v1/modules/fx-good/logs?tail=many");
    check_error("tail=many", &tail, 400, "BAD_REQUEST", "tail");
    let flag = base.admin("DELETE", "/api/v1/modules/fx-good/0.1.0?async=maybe", &[], None);
    check_error("async=maybe", &flag, 400, "BAD_REQUEST", "");
    let encoding = base.admin_get("/api/v1/modules?%zz=1");
    check_error("a garbled name", &encoding, 400, "BAD_REQUEST", "%zz");
    let operation = base.admin_get("/api/v1/operations/not-a-number");
    check_error("operation id", &operation, 400, "BAD_REQUEST", "");
    assert_eq!(base.get("/fx-good/ping").body, "pong", "refused requests changed nothing");
}

#[test]
fn every_route_refuses_a_parameter_it_does_not_take() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    let routes = [
        ("GET", "/api/v1/modules"),
        ("POST", "/api/v1/modules"),
        ("GET", "/api/v1/modules/fx-good"),
        ("DELETE", "/api/v1/modules/fx-good/0.1.0"),
        ("GET", "/api/v1/modules/fx-good/logs"),
        ("GET", "/api/v1/modules/fx-good/limits"),
        ("PUT", "/api/v1/modules/fx-good/limits"),
        ("POST", "/api/v1/modules/fx-good/switch"),
        ("GET", "/api/v1/modules/fx-good/traffic"),
        ("PUT", "/api/v1/modules/fx-good/traffic"),
        ("GET", "/api/v1/operations/1"),
        ("POST", "/api/v1/modules/fx-good/0.1.0/retry"),
        ("POST", "/api/v1/artifacts/0000000000000000000000000000000000000000000000000000000000000000/retry"),
        ("GET", "/api/v1/ready"),
        ("GET", "/api/v1/base"),
        ("GET", "/api/v1/modules/fx-good/config"),
        ("GET", "/api/v1/modules/fx-good/kv"),
        ("POST", "/api/v1/config/reload"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/events/topic"),
        ("GET", "/api/v1/spis"),
        ("POST", "/api/v1/spis/ranker/rank"),
        ("GET", "/api/v1/health"),
        ("GET", "/metrics"),
    ];
    for (method, path) in routes {
        let reply = base.admin(method, &format!("{path}?zz=1"), &[], None);
        check_error(&format!("{method} {path}"), &reply, 400, "BAD_REQUEST", "zz");
    }
    assert_eq!(base.get("/fx-good/ping").body, "pong", "nothing was done");
}

#[test]
fn oversized_headers_answer_431_in_json() {
    let base = TestBase::start();
    let addr = base.admin.trim_start_matches("http://").to_owned();
    // 200 KB of headers: 50 fields of 4 000 bytes.
    let filler: String = (0..50).map(|n| format!("X-Filler-{n}: {}\r\n", "a".repeat(4000))).collect();
    let head = format!(
        "GET /api/v1/health HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n{filler}",
        base.bearer()
    );
    let (status, body) = raw(&base, &head, b"");
    assert_eq!((status, body["code"].as_str()), (431, Some("HEADERS_TOO_LARGE")), "{body}");
    assert!(body["details"]["limit"].as_u64().is_some(), "{body}");
    assert_eq!(base.admin_get("/api/v1/health").status, 200, "the base serves on");
}

/// Starts `pedestal serve` with `args` and expects it to refuse to start with `code`.
fn check_refused_start(args: &[&str], code: &str) {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(artifacts::PEDESTAL)
        .current_dir(data.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(args)
        .env_remove("PEDESTAL_ADMIN_TOKEN")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains(code), "{args:?}: no {code} in {stderr}");
    assert!(output.stdout.is_empty(), "{args:?} reported ready");
}

#[test]
fn blank_and_short_tokens_are_refused_at_start() {
    check_refused_start(&["--admin-token", ""], "ADMIN_TOKEN_TOO_SHORT");
    check_refused_start(&["--admin-token", "   "], "ADMIN_TOKEN_TOO_SHORT");
    check_refused_start(&["--admin-token", "fifteen-chars-x"], "ADMIN_TOKEN_TOO_SHORT");
    check_refused_start(&["--admin-token", "short", "--supervisor", "off"], "ADMIN_TOKEN_TOO_SHORT");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "  \n").unwrap();
    check_refused_start(&["--admin-token-file", file.to_str().unwrap()], "ADMIN_TOKEN_TOO_SHORT");
}

#[test]
fn the_generated_token_is_private_works_and_survives_a_restart() {
    let base = TestBase::start();
    let file = base.data_dir().join("admin-token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    assert_eq!(base.token(), token);
    let log = base.log();
    assert!(
        log.contains("admin-token") && !log.contains(&token),
        "the log names the file, never the token: {log}"
    );

    let denied = base.admin_without_token("GET", "/api/v1/modules", &[], None);
    check_error("no token", &denied, 401, "UNAUTHORIZED", "token");
    assert_eq!(
        base.admin_without_token("GET", "/api/v1/ready", &[], None).status,
        200,
        "probes need no token"
    );
    base.install_ok(artifacts::GOOD);

    let base = base.kill_and_restart(&[]);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token, "reused, not regenerated");
    assert_eq!(base.admin_get("/api/v1/modules/fx-good").status, 200);
}

#[test]
fn a_token_file_and_any_case_of_bearer_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ops-token");
    std::fs::write(&file, "a-token-read-from-a-file\n").unwrap();
    let base = TestBase::start_with(&["--admin-token-file", file.to_str().unwrap()]);
    assert_eq!(base.token(), "a-token-read-from-a-file");
    assert!(!base.data_dir().join("admin-token").exists(), "nothing generated when a token is given");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let header = format!("{scheme} a-token-read-from-a-file");
        let reply = base.admin_without_token("GET", "/api/v1/health", &[("authorization", &header)], None);
        assert_eq!(reply.status, 200, "{scheme}: {reply:?}");
    }
    let basic =
        base.admin_without_token("GET", "/api/v1/health", &[("authorization", "Basic a-token")], None);
    assert_eq!(basic.status, 401);
}

#[test]
fn guessing_the_token_is_throttled_and_logged() {
    let base = TestBase::start();
    let guess = |n: usize| {
        let header = format!("Bearer guess-number-{n:08}");
        base.admin_without_token("GET", "/api/v1/modules", &[("authorization", &header)], None)
    };
    // The first five guesses are answered; with one more allowed per second, a few dozen
    // guesses in a row always meet the throttle.
    for n in 0..5 {
        let reply = guess(n);
        check_error("a wrong token", &reply, 401, "UNAUTHORIZED", "token");
    }
    let throttled = (5..40).map(guess).find(|reply| reply.status == 429).expect("no 429 after 40 guesses");
    check_error("throttled", &throttled, 429, "TOO_MANY_ATTEMPTS", "retry");
    let retry_after: u64 = throttled.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let log = base.wait_for_log("UNAUTHORIZED");
    let refusal = log.lines().find(|l| l.contains("refused") && l.contains("UNAUTHORIZED")).unwrap();
    assert!(refusal.contains("client=127.0.0.1:"), "no client address: {refusal}");
}

/// Guesses wrong tokens from the test's address until the base throttles it.
fn throttle_this_address(base: &TestBase) {
    let throttled = (0..40).find(|n| {
        let header = format!("Bearer guess-number-{n:08}");
        base.admin_without_token("GET", "/api/v1/modules", &[("authorization", &header)], None).status == 429
    });
    assert!(throttled.is_some(), "no 429 after 40 guesses");
}

#[test]
fn guesses_from_the_same_address_never_lock_out_a_strong_token() {
    // The generated token (64 hex digits): wrong guesses from 127.0.0.1, as any local process
    // can send, do not keep the operator (also 127.0.0.1) out.
    let base = TestBase::start();
    throttle_this_address(&base);
    assert_eq!(base.admin_get("/api/v1/modules").status, 200, "the right token was throttled");
    // And it cleared the address's bucket: a wrong guess is told so, not to wait.
    let wrong = base.admin_without_token("GET", "/api/v1/modules", &[("authorization", "Bearer nope")], None);
    check_error("after the right token", &wrong, 401, "UNAUTHORIZED", "token");
}

#[test]
fn a_weak_token_is_refused_while_its_address_is_throttled() {
    // 16..31 characters: the throttle is what keeps it from being guessed, so it holds for the
    // right token too.
    let base = TestBase::start_with(&["--admin-token", "weak-but-long-enough"]);
    base.wait_for_log("shorter than 32 characters");
    throttle_this_address(&base);
    let refused = base.admin_get("/api/v1/modules");
    check_error("the right weak token while throttled", &refused, 429, "TOO_MANY_ATTEMPTS", "retry");
}

#[test]
fn the_audit_log_records_operations_and_refusals() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.admin_get("/api/v1/modules"); // a read: not an operation
    let wrong = base.admin_without_token(
        "DELETE",
        "/api/v1/modules/fx-good/0.1.0",
        &[("authorization", "Bearer nope")],
        None,
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(base.admin_without_token("GET", "/api/v1/health", &[], None).status, 401);

    let file = base.data_dir().join("audit.log");
    let entries = eventually("three audit entries", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&file).ok()?;
        let entries: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        (entries.len() >= 3).then_some(entries)
    });
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(entries.len(), 3, "reads are not audited: {entries:?}");
    let find = |method: &str, status: u64| {
        entries
            .iter()
            .find(|e| e["method"] == method && e["status"] == status)
            .unwrap_or_else(|| panic!("no {method} {status} in {entries:?}"))
    };
    let install = find("POST", 201);
    assert_eq!(
        (install["identity"].as_str(), install["path"].as_str()),
        (Some("token"), Some("/api/v1/modules"))
    );
    assert!(install["code"].is_null() && install["ms"].as_f64().is_some(), "{install}");
    let refused = find("DELETE", 401);
    assert_eq!(
        (refused["identity"].as_str(), refused["code"].as_str()),
        (Some("anonymous"), Some("UNAUTHORIZED"))
    );
    assert_eq!(find("GET", 401)["path"], "/api/v1/health");
    for entry in &entries {
        assert!(entry["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{entry}");
        assert!(entry["at"].as_str().is_some(), "{entry}");
    }
    let installed = base.wait_for_log("installed");
    let line = installed.lines().find(|l| l.contains(" installed")).unwrap();
    assert!(line.contains("client=127.0.0.1:"), "the installed line has no client: {line}");
}

/// The audit file's entries so far.
fn audit_entries(base: &TestBase) -> Vec<Value> {
    let text = std::fs::read_to_string(base.data_dir().join("audit.log")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[test]
fn a_flood_of_refusals_cannot_wipe_the_audit_log_or_hide_an_operation() {
    let base = TestBase::start();
    // 300 requests without a token, each with an 8 KiB path.
    let long = format!("/{}", "a".repeat(8 * 1024));
    for _ in 0..300 {
        assert_eq!(base.admin_without_token("GET", &long, &[], None).status, 401);
    }
    let installed = base.install_query(artifacts::GOOD, "async=true");
    assert_eq!(installed.status, 202, "{installed:?}");
    let operation = installed.json["operation"].as_u64().unwrap();
    let entries = eventually("the operation's outcome and a summary", Duration::from_secs(30), || {
        let entries = audit_entries(&base);
        let finished = entries.iter().any(|e| e["operation"] == operation && e["status"] == 201);
        let summary = entries.iter().any(|e| e["refusals_not_logged"].as_u64().is_some_and(|n| n > 0));
        (finished && summary).then_some(entries)
    });
    let refusals: Vec<&Value> = entries.iter().filter(|e| e["status"] == 401).collect();
    assert!(refusals.len() < 100, "{} refusals logged of 300", refusals.len());
    for refusal in &refusals {
        let path = refusal["path"].as_str().unwrap();
        assert!(path.len() < 1100 && path.contains("truncated"), "{} bytes: {path:.80}", path.len());
    }
    let accepted = entries.iter().find(|e| e["operation"] == operation && e["status"] == 202);
    assert!(accepted.is_some_and(|e| e["identity"] == "token"), "{entries:?}");
    let held_back: u64 = entries.iter().filter_map(|e| e["refusals_not_logged"].as_u64()).sum();
    assert!(held_back > 0 && refusals.len() as u64 + held_back <= 300, "{held_back}");
    let stderr_refusals = base.log().lines().filter(|l| l.contains("request refused")).count();
    assert!(stderr_refusals < 100, "{stderr_refusals} refusal lines on stderr");
}

//! The base agent (`pedestal serve --fleet`) against a real etcd, with assignments written by
//! the test itself (no controller): registration under a lease, applying, switching, NACKs,
//! stale revisions, fail static, forwarding and ownership.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use pedestal_tests::{TestBase, artifacts, etcd::Etcd, eventually};
use serde_json::{Value, json};

const TOKEN: &str = "fleet-token-for-tests-0123456789";
const PREFIX: &str = "/pedestal/";

/// A tiny HTTP server handing out artifacts by `/<sha256>`: the assignments' `url`.
struct ArtifactServer {
    url: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl ArtifactServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the artifact server");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let served = Arc::clone(&files);
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                // The rest of the head.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
                let body = served.lock().unwrap().get(&path).cloned();
                let mut stream = reader.into_inner();
                let _ = match body {
                    Some(body) => stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|()| stream.write_all(&body)),
                    None => stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    ),
                };
            }
        });
        Self { url, files }
    }

    /// Serves `file` at `/<name>`; returns its URL.
    fn serve_as(&self, name: &str, file: &str) -> String {
        let bytes = std::fs::read(file).expect("reading a fixture");
        self.files.lock().unwrap().insert(name.to_owned(), bytes);
        format!("{}/{name}", self.url)
    }

    /// Serves `file` at `/<its sha256>`; returns its sha256 and URL.
    fn serve(&self, file: &str) -> (String, String) {
        let sha = sha256_of(file);
        let url = self.serve_as(&sha, file);
        (sha, url)
    }
}

/// The lower-case hex sha256 of `bytes`.
fn hex(bytes: &[u8]) -> String {
    pedestal_signing::sha256(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_of(file: &str) -> String {
    hex(&std::fs::read(file).expect("reading a fixture"))
}

/// Starts a fleet base `id` on `etcd`, with `extra` flags.
fn fleet_base(etcd: &Etcd, id: &str, extra: &[&str]) -> TestBase {
    let endpoints = etcd.endpoints();
    let mut args = vec!["--fleet", &endpoints, "--base-id", id, "--fleet-token", TOKEN];
    args.extend_from_slice(extra);
    TestBase::start_with(&args)
}

/// Writes an assignment of `module` (`version`, `sha256`, `url`) to `base`; returns its
/// mod_revision.
fn assign(etcd: &Etcd, base: &str, module: &str, version: &str, sha256: &str, url: &str) -> i64 {
    let assignment =
        json!({"module": module, "version": version, "sha256": sha256, "url": url, "generation": 1});
    let key = format!("{PREFIX}assign/{base}/{module}");
    let out = etcd.ctl(&["put", &key, &assignment.to_string()]);
    assert!(out.contains("OK"), "etcdctl put: {out:?}");
    mod_revision(etcd, &key)
}

fn mod_revision(etcd: &Etcd, key: &str) -> i64 {
    let out = etcd.ctl(&["get", key, "-w", "json"]);
    let answer: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl get -w json: {e}: {out}"));
    answer["kvs"][0]["mod_revision"].as_i64().unwrap_or_else(|| panic!("no mod_revision in {answer}"))
}

/// The base's last status report.
fn status(etcd: &Etcd, base: &str) -> Option<Value> {
    etcd.get(&format!("{PREFIX}status/{base}")).map(|s| serde_json::from_str(&s).expect("status is JSON"))
}

/// Waits until `GET /<module>/version` answers `version` on `base`.
fn wait_serving(base: &TestBase, module: &str, version: &str) {
    eventually(&format!("{module} to serve {version}"), Duration::from_secs(20), || {
        let reply = base.get(&format!("/{module}/version"));
        (reply.status == 200 && reply.body == version).then_some(())
    });
}

/// The versions of `module` the base runs (not stopped).
fn versions(base: &TestBase, module: &str) -> Vec<String> {
    let reply = base.admin_get(&format!("/api/v1/modules/{module}"));
    if reply.status == 404 {
        return Vec::new();
    }
    let mut found: Vec<String> = reply.json["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions in {}", reply.body))
        .iter()
        // The last version uninstalled stays listed, stopped, with its history.
        .filter(|v| v["state"] != "stopped")
        .map(|v| v["version"].as_str().unwrap().to_owned())
        .collect();
    found.sort();
    found
}

#[test]
fn a_base_registers_under_a_lease_that_ends_with_it() {
    let etcd = Etcd::single();
    let base = fleet_base(
        &etcd,
        "b1",
        &["--labels", "tier=web", "--capacity-memory", "256MiB", "--max-modules", "8"],
    );
    let record: Value = eventually("the base's registration", Duration::from_secs(10), || {
        etcd.get(&format!("{PREFIX}bases/b1")).map(|s| serde_json::from_str(&s).unwrap())
    });
    assert_eq!(record["id"], "b1");
    assert_eq!(record["traffic_url"], base.traffic.as_str(), "the bound traffic port, not 0");
    assert_eq!(record["admin_url"], base.admin.as_str());
    assert_eq!(record["labels"], json!({"tier": "web"}));
    assert_eq!(record["capacity"]["memory_bytes"], 256 << 20);
    assert_eq!(record["capacity"]["max_modules"], 8);
    let report = eventually("the base's status", Duration::from_secs(10), || status(&etcd, "b1"));
    assert_eq!(report["base_id"], "b1");

    // Both keys are under one lease of the base's: kill -9, and they go with it.
    drop(base);
    assert!(etcd.get(&format!("{PREFIX}bases/b1")).is_some(), "the lease outlives the process a moment");
    let killed = Instant::now();
    eventually("the registration to expire", Duration::from_secs(15), || {
        etcd.get(&format!("{PREFIX}bases/b1")).is_none().then_some(())
    });
    assert!(etcd.get(&format!("{PREFIX}status/b1")).is_none(), "the status went with the lease");
    assert!(killed.elapsed() >= Duration::from_secs(1), "expired by the lease's TTL, not at once");
}

#[test]
fn assignments_are_applied_switched_and_removed() {
    let etcd = Etcd::single();
    let files = ArtifactServer::start();
    let base = fleet_base(&etcd, "b1", &[]);
    // A module installed by hand is reported unmanaged, and never touched.
    base.install_ok(artifacts::GOOD);

    let (sha1, url1) = files.serve(artifacts::VERSIONED_1_0_0);
    let revision = assign(&etcd, "b1", "svc", "1.0.0", &sha1, &url1);
    wait_serving(&base, "svc", "1.0.0");
    let reply = base.get("/svc/version");
    assert_eq!(reply.header("x-pedestal-base"), Some("b1"), "{reply:?}");
    let report = eventually("the report of svc", Duration::from_secs(10), || {
        status(&etcd, "b1").filter(|s| s["applied_revision"].as_i64() >= Some(revision))
    });
    let modules = report["modules"].as_array().unwrap();
    let svc = modules.iter().find(|m| m["name"] == "svc").expect("svc reported");
    assert_eq!((svc["version"].as_str(), svc["sha256"].as_str()), (Some("1.0.0"), Some(sha1.as_str())));
    assert_eq!((svc["state"].as_str(), svc["serving"].as_bool()), (Some("active"), Some(true)));
    assert_eq!(svc["managed"], true);
    let good = modules.iter().find(|m| m["name"] == "fx-good").expect("the hand-installed module reported");
    assert_eq!(good["managed"], false);
    assert!(report["artifacts"].as_array().unwrap().iter().any(|a| a == sha1.as_str()), "{report}");

    // A new version: installed beside, switched to, the old one unloaded.
    let (sha2, url2) = files.serve(artifacts::VERSIONED_1_1_0);
    assign(&etcd, "b1", "svc", "1.1.0", &sha2, &url2);
    wait_serving(&base, "svc", "1.1.0");
    eventually("the old version to be unloaded", Duration::from_secs(10), || {
        (versions(&base, "svc") == ["1.1.0"]).then_some(())
    });

    // The assignment deleted: the module goes, the hand-installed one stays.
    etcd.ctl(&["del", &format!("{PREFIX}assign/b1/svc")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !versions(&base, "svc").is_empty() {
        assert!(
            Instant::now() < deadline,
            "svc still runs {:?}; log: {}",
            versions(&base, "svc"),
            base.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn a_wrong_sha256_is_refused_and_nothing_loads() {
    let etcd = Etcd::single();
    let files = ArtifactServer::start();
    let base = fleet_base(&etcd, "b1", &[]);
    // The URL serves the good module's bytes, but the assignment names other ones.
    let claimed = hex(b"some other module");
    let url = files.serve_as("good.so", artifacts::VERSIONED_1_0_0);
    let revision = assign(&etcd, "b1", "svc", "1.0.0", &claimed, &url);
    let failure = eventually("a NACK", Duration::from_secs(10), || {
        status(&etcd, "b1").and_then(|s| s["failures"].get("svc").cloned())
    });
    assert_eq!(failure["code"], "SHA256_MISMATCH", "{failure}");
    assert_eq!(failure["revision"], revision);
    assert_eq!(failure["sha256"], claimed.as_str());
    assert!(versions(&base, "svc").is_empty(), "nothing loaded");
    assert_eq!(base.get("/svc/version").status, 404);
    assert!(!base.artifact_files().iter().any(|f| f.contains(&sha256_of(artifacts::VERSIONED_1_0_0))));

    // An artifact no one has: a NACK of its own.
    let missing = hex(b"nowhere");
    assign(&etcd, "b1", "gone", "1.0.0", &missing, &format!("{}/nowhere", files.url));
    let failure = eventually("a NACK", Duration::from_secs(10), || {
        status(&etcd, "b1").and_then(|s| s["failures"].get("gone").cloned())
    });
    assert_eq!(failure["code"], "ARTIFACT_UNAVAILABLE", "{failure}");
}

#[test]
fn an_assignment_older_than_the_applied_one_is_never_applied() {
    let etcd = Etcd::single();
    let files = ArtifactServer::start();
    let base = fleet_base(&etcd, "b1", &[]);
    let (sha1, url1) = files.serve(artifacts::VERSIONED_1_0_0);
    let revision = assign(&etcd, "b1", "svc", "1.0.0", &sha1, &url1);
    wait_serving(&base, "svc", "1.0.0");
    let file = base.data_dir().join("fleet-applied.json");
    let applied: Value = eventually("the applied record", Duration::from_secs(10), || {
        std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok())
    });
    assert_eq!(applied["modules"]["svc"]["revision"], revision);

    // As if this base had applied a much later assignment of svc before it restarted.
    let later = revision + 1_000;
    let mut record = applied.clone();
    record["modules"]["svc"]["revision"] = json!(later);
    std::fs::write(&file, record.to_string()).unwrap();
    let endpoints = etcd.endpoints();
    let base = base.kill_and_restart(&["--fleet", &endpoints, "--base-id", "b1", "--fleet-token", TOKEN]);
    wait_serving(&base, "svc", "1.0.0");
    let (sha2, url2) = files.serve(artifacts::VERSIONED_1_1_0);
    let stale = assign(&etcd, "b1", "svc", "1.1.0", &sha2, &url2);
    assert!(stale < later);
    let failure = eventually("the stale assignment's NACK", Duration::from_secs(10), || {
        status(&etcd, "b1").and_then(|s| s["failures"].get("svc").cloned()).filter(|f| f["revision"] == stale)
    });
    assert_eq!(failure["code"], "ASSIGNMENT_STALE", "{failure}");
    // Several reconcile passes later, still the version it had.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(base.get("/svc/version").body, "1.0.0");
    assert_eq!(versions(&base, "svc"), ["1.0.0"]);
    assert!(base.log().contains("older than the one applied"), "logged");
}

#[test]
fn a_base_cut_off_from_etcd_keeps_serving_and_catches_up() {
    let mut etcd = Etcd::single();
    let files = ArtifactServer::start();
    let base = fleet_base(&etcd, "b1", &[]);
    let (sha1, url1) = files.serve(artifacts::VERSIONED_1_0_0);
    assign(&etcd, "b1", "svc", "1.0.0", &sha1, &url1);
    wait_serving(&base, "svc", "1.0.0");

    etcd.kill(0);
    // Well past the lease's TTL: the base serves what it has, and uninstalls nothing.
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        assert_eq!(base.get("/svc/version").body, "1.0.0");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(versions(&base, "svc"), ["1.0.0"]);

    etcd.restart(0);
    eventually("the base to register again", Duration::from_secs(20), || {
        etcd.get(&format!("{PREFIX}bases/b1")).map(|_| ())
    });
    let (sha2, url2) = files.serve(artifacts::VERSIONED_1_1_0);
    assign(&etcd, "b1", "svc", "1.1.0", &sha2, &url2);
    wait_serving(&base, "svc", "1.1.0");
}

/// A watch cancelled by compaction: the base's session relists and converges. The hidden
/// `PEDESTAL_FLEET_WATCH_DELAY_MS` holds each session's watch 8 s after its list (the lease kept
/// alive), so the test can, in that gap, assign a module and compact etcd past the list's
/// revision: etcd then cancels the watch as it starts (`compact_revision`), and only a relist
/// shows the base the new assignment.
#[test]
fn a_watch_cancelled_by_compaction_relists_and_converges() {
    const LISTED: &str = "assignments listed at revision";
    let mut etcd = Etcd::single();
    let files = ArtifactServer::start();
    let endpoints = etcd.endpoints();
    let args = ["--fleet", &endpoints, "--base-id", "b1", "--fleet-token", TOKEN];
    let base = TestBase::start_with_env(&args, &[("PEDESTAL_FLEET_WATCH_DELAY_MS", "8000")]);
    let (sha1, url1) = files.serve(artifacts::VERSIONED_1_0_0);
    assign(&etcd, "b1", "svc", "1.0.0", &sha1, &url1);
    wait_serving(&base, "svc", "1.0.0");

    // A new session: etcd restarted under the base. It lists, then waits 8 s to watch.
    let sessions = base.log().matches(LISTED).count();
    etcd.kill(0);
    etcd.restart(0);
    eventually("the base to list its assignments again", Duration::from_secs(20), || {
        (base.log().matches(LISTED).count() > sessions).then_some(())
    });
    // In the gap: a new assignment, another write, and the history compacted past them both.
    let (sha2, url2) = files.serve(artifacts::VERSIONED_1_1_0);
    let assigned = assign(&etcd, "b1", "svc", "1.1.0", &sha2, &url2);
    etcd.ctl(&["put", "/unrelated/key", "moves the revision on"]);
    let compacted = etcd.compact_now();
    assert!(compacted > assigned, "compacted at {compacted}, past the assignment at {assigned}");

    // The watch starts 8 s after the list, and is refused then.
    eventually("the watch to be cancelled by the compaction", Duration::from_secs(30), || {
        base.log().contains("history compacted at revision").then_some(())
    });
    wait_serving(&base, "svc", "1.1.0");
    assert_eq!(versions(&base, "svc"), ["1.1.0"]);
    let log = base.log();
    assert!(log.matches(LISTED).count() > sessions + 1, "a relist after the cancelled watch:\n{log}");
}

#[test]
fn a_base_forwards_requests_for_modules_it_does_not_run() {
    let etcd = Etcd::single();
    let files = ArtifactServer::start();
    let serving = fleet_base(&etcd, "b1", &[]);
    let forwarding = fleet_base(&etcd, "b2", &[]);
    let (sha, url) = files.serve(artifacts::VERSIONED_1_0_0);
    assign(&etcd, "b1", "svc", "1.0.0", &sha, &url);
    wait_serving(&serving, "svc", "1.0.0");
    let endpoints = json!({
        "module": "svc",
        "endpoints": [{"base_id": "b1", "traffic_url": serving.traffic, "version": "1.0.0"}],
    });
    etcd.ctl(&["put", &format!("{PREFIX}endpoints/svc"), &endpoints.to_string()]);
    let reply = eventually("b2 to forward svc", Duration::from_secs(10), || {
        let reply = forwarding.get("/svc/version");
        (reply.status == 200).then_some(reply)
    });
    assert_eq!(reply.body, "1.0.0");
    assert_eq!(reply.header("x-pedestal-base"), Some("b1"), "served by b1: {reply:?}");
    // The query travels too (fx-versioned's /sleep answers after `ms`).
    let slept = forwarding.get("/svc/sleep?ms=10");
    assert_eq!(slept.status, 200, "{slept:?}");

    // Never forwarded twice: a forwarded request meets the base's own answer.
    let again = forwarding.get_with("/svc/version", &[("x-pedestal-forwarded-by", "b9")]);
    assert_eq!((again.status, again.code()), (404, "MODULE_NOT_FOUND"), "{again:?}");
    // A module no endpoint names: the base's own 404.
    assert_eq!(forwarding.get("/nothing/here").code(), "MODULE_NOT_FOUND");

    // Its endpoints gone, b2 stops forwarding.
    etcd.ctl(&["del", &format!("{PREFIX}endpoints/svc")]);
    eventually("b2 to stop forwarding", Duration::from_secs(10), || {
        (forwarding.get("/svc/version").status == 404).then_some(())
    });
}

#[test]
fn the_operations_api_refuses_changes_to_fleet_modules_unless_forced() {
    let etcd = Etcd::single();
    let files = ArtifactServer::start();
    let base = fleet_base(&etcd, "b1", &[]);
    let (sha, url) = files.serve(artifacts::VERSIONED_1_0_0);
    assign(&etcd, "b1", "svc", "1.0.0", &sha, &url);
    wait_serving(&base, "svc", "1.0.0");

    let refused = base.uninstall("svc", "1.0.0");
    assert_eq!((refused.status, refused.code()), (409, "FLEET_OWNED"), "{refused:?}");
    let limits = base.put_limits("svc", &json!({"max_concurrent_requests": 3}));
    assert_eq!((limits.status, limits.code()), (409, "FLEET_OWNED"), "{limits:?}");
    let bytes = std::fs::read(artifacts::VERSIONED_1_1_0).unwrap();
    let install = base.install_with_headers(&bytes, "name=svc", &[]);
    assert_eq!((install.status, install.code()), (409, "FLEET_OWNED"), "{install:?}");
    let switch = base.admin_json("POST", "/api/v1/modules/svc/switch", &json!({"version": "1.0.0"}));
    assert_eq!((switch.status, switch.code()), (409, "FLEET_OWNED"), "{switch:?}");
    assert_eq!(versions(&base, "svc"), ["1.0.0"]);

    // Forced: it goes, and the fleet puts its assignment back.
    let forced = base.admin("DELETE", "/api/v1/modules/svc/1.0.0?force=true", &[], None);
    assert_eq!(forced.status, 200, "{forced:?}");
    wait_serving(&base, "svc", "1.0.0");
}

#[test]
fn an_assignments_config_reaches_the_module_and_follows_changes() {
    let etcd = Etcd::single();
    let files = ArtifactServer::start();
    let base = fleet_base(&etcd, "b1", &[]);
    let (sha, url) = files.serve(artifacts::SERVICES);
    let version = sha_version(artifacts::SERVICES);
    let key = format!("{PREFIX}assign/b1/cfg");
    let put = |greeting: &str| {
        let assignment = json!({"module": "cfg", "version": version, "sha256": sha, "url": url,
            "generation": 1, "config": {"greeting": greeting}});
        assert!(etcd.ctl(&["put", &key, &assignment.to_string()]).contains("OK"));
    };
    put("hello");
    let read = || base.get("/cfg/config?key=greeting").json["value"].clone();
    eventually("the module to read its assigned config", Duration::from_secs(20), || {
        (read() == "hello").then_some(())
    });
    // What it read before its start hook ended: the values were set before the install.
    assert_eq!(base.get("/cfg/config/at-start").json["greeting"], "hello");
    put("bonjour");
    eventually("the changed config to reach the running module", Duration::from_secs(20), || {
        (read() == "bonjour").then_some(())
    });
}

/// The version a fixture artifact declares, read from a throwaway base.
fn sha_version(file: &str) -> String {
    let base = TestBase::start();
    base.install_ok(file)["version"].as_str().expect("a version").to_owned()
}

/// A canary assignment runs the previous release beside the new one and splits the traffic by
/// weight; a request pinned to a version another base runs is forwarded there; the canary's
/// end goes back to one version; a deleted assignment keeps serving through its removal grace,
/// reported `UNASSIGNED`, then goes.
#[test]
fn canaries_split_traffic_pins_reach_their_version_and_removals_wait_out_a_grace() {
    let etcd = Etcd::single();
    let files = ArtifactServer::start();
    let old = fleet_base(&etcd, "b1", &[]);
    let split = fleet_base(&etcd, "b2", &[]);
    let (sha1, url1) = files.serve(artifacts::VERSIONED_1_0_0);
    let (sha11, url11) = files.serve(artifacts::VERSIONED_1_1_0);
    assign(&etcd, "b1", "svc", "1.0.0", &sha1, &url1);
    let canary = json!({
        "module": "svc", "version": "1.1.0", "sha256": sha11, "url": url11, "generation": 2,
        "canary": {"previous": {"version": "1.0.0", "sha256": sha1, "url": url1}, "weight": 25},
    });
    etcd.ctl(&["put", &format!("{PREFIX}assign/b2/svc"), &canary.to_string()]);
    wait_serving(&old, "svc", "1.0.0");
    let weights = eventually("b2 to split svc 75/25", Duration::from_secs(20), || {
        let reply = split.admin_get("/api/v1/modules/svc/traffic");
        let weights = reply.json["weights"].clone();
        (versions(&split, "svc") == ["1.0.0", "1.1.0"] && weights == json!({"1.0.0": 75, "1.1.0": 25}))
            .then_some(weights)
    });
    assert_eq!(weights, json!({"1.0.0": 75, "1.1.0": 25}));
    // Exactly 1 request in 4 reaches the canary over a cycle of the total weight.
    let answers: Vec<String> = (0..100).map(|_| split.get("/svc/version").body).collect();
    assert_eq!(answers.iter().filter(|a| *a == "1.1.0").count(), 25, "{answers:?}");
    // The status says each version's share.
    let report = eventually("b2's status to show the weights", Duration::from_secs(10), || {
        let report = status(&etcd, "b2")?;
        let modules = report["modules"].as_array()?.clone();
        (modules.len() == 2 && modules.iter().all(|m| m["weight"].is_u64())).then_some(modules)
    });
    assert!(report.iter().any(|m| m["version"] == "1.1.0" && m["weight"] == 25), "{report:?}");

    // Endpoints as the rollout engine writes them: one entry per base and version.
    let endpoints = json!({"module": "svc", "endpoints": [
        {"base_id": "b1", "traffic_url": old.traffic, "version": "1.0.0"},
        {"base_id": "b2", "traffic_url": split.traffic, "version": "1.0.0"},
        {"base_id": "b2", "traffic_url": split.traffic, "version": "1.1.0"},
    ]});
    etcd.ctl(&["put", &format!("{PREFIX}endpoints/svc"), &endpoints.to_string()]);
    let pinned = eventually("b1 to forward a request pinned to 1.1.0", Duration::from_secs(10), || {
        let reply = old.get_with("/svc/version", &[("x-pedestal-version", "1.1.0")]);
        (reply.status == 200).then_some(reply)
    });
    assert_eq!(pinned.body, "1.1.0");
    assert_eq!(pinned.header("x-pedestal-base"), Some("b2"), "{pinned:?}");
    // Pinned to what b1 runs: b1 answers itself. Pinned to what nobody runs: b1's own answer.
    let here = old.get_with("/svc/version", &[("x-pedestal-version", "1.0.0")]);
    assert_eq!((here.body.as_str(), here.header("x-pedestal-base")), ("1.0.0", Some("b1")));
    let nowhere = old.get_with("/svc/version", &[("x-pedestal-version", "9.9.9")]);
    assert_eq!((nowhere.status, nowhere.code()), (404, "VERSION_NOT_FOUND"), "{nowhere:?}");

    // The canary's end: 1.1.0 alone, no weights left.
    assign(&etcd, "b2", "svc", "1.1.0", &sha11, &url11);
    eventually("b2 to run 1.1.0 alone", Duration::from_secs(20), || {
        let reply = split.admin_get("/api/v1/modules/svc/traffic");
        (versions(&split, "svc") == ["1.1.0"] && reply.json["weights"].is_null()).then_some(())
    });
    wait_serving(&split, "svc", "1.1.0");

    // Unassigned: still serving a moment, reported as on its way out, then gone.
    etcd.ctl(&["del", &format!("{PREFIX}assign/b1/svc")]);
    let leaving = eventually("b1 to report svc UNASSIGNED", Duration::from_secs(10), || {
        let report = status(&etcd, "b1")?;
        let module = report["modules"].as_array()?.iter().find(|m| m["name"] == "svc")?.clone();
        (module["reason"] == "UNASSIGNED").then_some(module)
    });
    assert_eq!(leaving["version"], "1.0.0");
    eventually("b1 to unload svc after the grace", Duration::from_secs(10), || {
        versions(&old, "svc").is_empty().then_some(())
    });
    assert!(old.log().contains("serving for 1s more, then unloaded"), "the grace is logged");
}

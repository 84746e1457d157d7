//! The controller as a process: real etcd, real `pedestal controller` processes, real HTTP.
//! Bases are registered with etcdctl (a `bases/<id>` key under a lease), as an agent would.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use pedestal_tests::{artifacts, etcd::Etcd};
use serde_json::{Value, json};

const TOKEN: &str = "fleet-test-token-0123456789";

/// A running `pedestal controller`; killed when dropped.
struct Controller {
    child: Child,
    url: String,
    id: String,
    data: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Controller {
    fn start(etcd: &Etcd, id: &str) -> Self {
        Self::start_with_env(etcd, id, &[])
    }

    fn start_with_env(etcd: &Etcd, id: &str, env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("a data directory");
        let mut child = Command::new(artifacts::PEDESTAL)
            .args(["controller", "--etcd", &etcd.endpoints(), "--listen", "127.0.0.1:0", "--id", id])
            .arg("--data-dir")
            .arg(data.path())
            .env("PEDESTAL_FLEET_TOKEN", TOKEN)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pedestal controller");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push_str(&format!("{line}\n"));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the ready line");
        thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        // `pedestal controller ready: api http://ADDR id ID`
        let rest = line
            .trim()
            .strip_prefix("pedestal controller ready: api ")
            .unwrap_or_else(|| panic!("ready line: {line:?}"));
        let (url, shown) = rest.split_once(" id ").expect("url and id");
        assert_eq!(shown, id);
        Self { child, url: url.to_owned(), id: id.to_owned(), data, log }
    }

    fn call(&self, method: &str, path: &str, body: Option<&[u8]>, token: Option<&str>) -> (u16, Value) {
        let mut request =
            ureq::request(method, &format!("{}{path}", self.url)).timeout(Duration::from_secs(10));
        if let Some(token) = token {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => request.send_bytes(body),
            None => request.call(),
        };
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let mut bytes = Vec::new();
        response.into_reader().read_to_end(&mut bytes).expect("a body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None, Some(TOKEN));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn put_spec(&self, spec: &Value) -> (u16, Value) {
        let name = spec["name"].as_str().expect("a name");
        self.call("PUT", &format!("/api/v1/specs/{name}"), Some(spec.to_string().as_bytes()), Some(TOKEN))
    }

    fn leading(&self) -> bool {
        self.get("/api/v1/leader")["leading"] == true
    }

    fn artifact_path(&self, sha: &str) -> PathBuf {
        self.data.path().join("artifacts").join(format!("{sha}.so"))
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Registers a base the way an agent does: `bases/<id>` under a lease; the lease id.
fn register_base(etcd: &Etcd, id: &str, labels: Value, memory_mib: u64) -> String {
    let granted = etcd.ctl(&["lease", "grant", "60"]);
    let lease = granted.split_whitespace().nth(1).expect("lease <id> granted").to_owned();
    let record = json!({
        "id": id,
        "traffic_url": format!("http://127.0.0.1:1/{id}"),
        "admin_url": format!("http://127.0.0.1:1/{id}-admin"),
        "labels": labels,
        "capacity": {"memory_bytes": memory_mib << 20, "cpu_millis": 2000, "max_modules": 8},
        "interface_version": "1.3.0",
        "started_ms": 1,
    });
    etcd.ctl(&["put", &format!("--lease={lease}"), &format!("/pedestal/bases/{id}"), &record.to_string()]);
    lease
}

fn placement(etcd: &Etcd, module: &str) -> Value {
    etcd.get(&format!("/pedestal/placement/{module}"))
        .map(|v| serde_json::from_str(&v).expect("JSON"))
        .unwrap_or(Value::Null)
}

fn push(controller: &Controller, bytes: &[u8]) -> Value {
    let (status, body) = controller.call("POST", "/api/v1/artifacts", Some(bytes), Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn the_leader_compacts_etcd_history_one_interval_behind() {
    let etcd = Etcd::single();
    let every = [("PEDESTAL_CONTROLLER_COMPACT_EVERY", "1s")];
    let first = Controller::start_with_env(&etcd, "c1", &every);
    let second = Controller::start_with_env(&etcd, "c2", &every);
    wait_for("one leader", Duration::from_secs(10), || first.leading() || second.leading());
    let (leader, standby) = if first.leading() { (&first, &second) } else { (&second, &first) };
    let before = etcd.revision();
    for i in 0..5 {
        etcd.ctl(&["put", "/unrelated/churn", &i.to_string()]);
    }
    let written = etcd.revision();
    let reconcile = |c: &Controller| c.get("/api/v1/leader")["reconcile"].clone();
    wait_for("a compaction past the writes", Duration::from_secs(15), || {
        reconcile(leader)["compacted_revision"].as_i64().unwrap_or(0) >= written
    });
    assert!(reconcile(leader)["compactions"].as_u64().unwrap_or(0) >= 1, "{}", reconcile(leader));
    let old = etcd.get_at("/unrelated/churn", before + 1);
    assert!(old.as_ref().is_err_and(|e| e.contains("compacted")), "reading revision {}: {old:?}", before + 1);
    assert_eq!(etcd.get("/unrelated/churn").as_deref(), Some("4"), "the current value stays");
    assert!(leader.log().contains("compacted etcd's history up to revision"), "{}", leader.log());
    assert_eq!(reconcile(standby)["compactions"], 0, "only the leader compacts");

    let refused = Command::new(artifacts::PEDESTAL)
        .args([
            "controller",
            "--etcd",
            &etcd.endpoints(),
            "--listen",
            "127.0.0.1:0",
            "--compact-every",
            "100ms",
        ])
        .env("PEDESTAL_FLEET_TOKEN", TOKEN)
        .output()
        .expect("running pedestal controller");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("--compact-every \"100ms\": at least 1s"), "{stderr}");
}

#[test]
fn one_leads_and_the_standby_takes_over_after_kill_9() {
    let etcd = Etcd::single();
    let first = Controller::start(&etcd, "c1");
    let second = Controller::start(&etcd, "c2");
    wait_for("one leader", Duration::from_secs(10), || first.leading() || second.leading());
    let (leader, standby) = if first.leading() { (first, second) } else { (second, first) };
    assert!(!standby.leading(), "only one leads");
    let view = standby.get("/api/v1/leader");
    assert_eq!(view["leader"]["id"], leader.id.as_str(), "{view}");
    let ids: Vec<Value> = standby
        .get("/api/v1/controllers")
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, [json!("c1"), json!("c2")]);

    let mut leader = leader;
    let _ = leader.child.kill();
    let _ = leader.child.wait();
    let killed = Instant::now();
    wait_for("the standby to lead", Duration::from_secs(8), || standby.leading());
    eprintln!("failover took {:?}", killed.elapsed());
    let record: Value =
        serde_json::from_str(&etcd.get("/pedestal/leader").expect("a leader key")).expect("JSON");
    assert_eq!(record["id"], standby.id.as_str());
    assert!(standby.log().contains("leading (term"), "{}", standby.log());
}

#[test]
fn specs_are_placed_validated_and_removed() {
    let etcd = Etcd::single();
    let controller = Controller::start(&etcd, "solo");
    wait_for("leadership", Duration::from_secs(10), || controller.leading());

    let (status, body) = controller.call("GET", "/api/v1/specs", None, Some("wrong-token-wrong-token"));
    assert_eq!((status, body["code"].as_str()), (401, Some("UNAUTHORIZED")));
    assert_eq!(controller.call("GET", "/api/v1/specs", None, None).0, 401);

    for (id, tier) in [("web-1", "web"), ("web-2", "web"), ("db-1", "db")] {
        register_base(&etcd, id, json!({"tier": tier}), 1024);
    }
    let bytes = std::fs::read(artifacts::GOOD).expect("the fixture");
    let pushed = push(&controller, &bytes);
    let sha = pushed["sha256"].as_str().expect("a hash").to_owned();
    assert_eq!(pushed["stored"], true);
    assert_eq!(push(&controller, &bytes)["stored"], false, "the same bytes twice");
    assert!(etcd.get(&format!("/pedestal/artifacts/{sha}")).is_some());
    let (status, body) = controller.call(
        "POST",
        &format!("/api/v1/artifacts?sha256={}", "0".repeat(64)),
        Some(&bytes),
        Some(TOKEN),
    );
    assert_eq!((status, body["code"].as_str()), (422, Some("SHA256_MISMATCH")), "{body}");

    let mut spec = json!({"name": "greeter", "version": "1.0.0", "sha256": sha, "replicas": 2, "selector": {"tier": "web"}});
    let (status, body) = controller.put_spec(&spec);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"name": "greeter", "generation": 1, "changed": true}));
    wait_for("placement", Duration::from_secs(5), || placement(&etcd, "greeter")["state"] == "placed");
    assert_eq!(placement(&etcd, "greeter")["bases"], json!(["web-1", "web-2"]));
    let assigned: Vec<String> = etcd.get_prefix("/pedestal/assign/").into_iter().map(|(k, _)| k).collect();
    assert_eq!(assigned, ["/pedestal/assign/web-1/greeter", "/pedestal/assign/web-2/greeter"]);

    let (_, again) = controller.put_spec(&spec);
    assert_eq!(again, json!({"name": "greeter", "generation": 1, "changed": false}), "idempotent");

    // Three replicas on two web bases: unschedulable, with the reason, until a third joins.
    spec["replicas"] = json!(3);
    assert_eq!(controller.put_spec(&spec).1["generation"], 2);
    wait_for("unschedulable", Duration::from_secs(5), || {
        placement(&etcd, "greeter")["state"] == "unschedulable"
    });
    assert_eq!(placement(&etcd, "greeter")["reason"], "2 of 3 replicas placed: 2 bases match tier=web");
    let status = controller.get("/api/v1/status?module=greeter");
    assert_eq!(status["modules"][0]["state"], "unschedulable", "{status}");
    assert_eq!(status["modules"][0]["replicas"][0]["state"], "pending", "no base reported yet: {status}");
    let web3 = register_base(&etcd, "web-3", json!({"tier": "web"}), 1024);
    wait_for("the third replica", Duration::from_secs(5), || {
        placement(&etcd, "greeter")["state"] == "placed"
    });
    assert_eq!(placement(&etcd, "greeter")["bases"], json!(["web-1", "web-2", "web-3"]));

    // A base gone (its lease revoked): its assignment goes, and the spec is short again.
    etcd.ctl(&["lease", "revoke", &web3]);
    wait_for("web-3's assignment removed", Duration::from_secs(5), || {
        etcd.get("/pedestal/assign/web-3/greeter").is_none()
            && placement(&etcd, "greeter")["state"] == "unschedulable"
    });
    let bases = controller.get("/api/v1/bases");
    assert_eq!(bases.as_array().map(Vec::len), Some(3), "{bases}");

    // Invalid specs, precisely.
    let mut both = spec.clone();
    both["peer"] = json!(true);
    let (status, body) = controller.put_spec(&both);
    assert_eq!((status, body["code"].as_str()), (422, Some("SPEC_INVALID")));
    assert!(body["message"].as_str().is_some_and(|m| m.contains("both replicas and peer")), "{body}");
    let mut bad_version = spec.clone();
    bad_version["version"] = json!("one");
    assert!(
        controller.put_spec(&bad_version).1["message"].as_str().is_some_and(|m| m.contains("not semver"))
    );
    let unknown = json!({"name": "ghost", "version": "1.0.0", "sha256": "f".repeat(64), "replicas": 1});
    assert_eq!(controller.put_spec(&unknown).1["code"], "ARTIFACT_NOT_FOUND");
    let (status, body) =
        controller.call("PUT", "/api/v1/specs/other", Some(spec.to_string().as_bytes()), Some(TOKEN));
    assert_eq!((status, body["code"].as_str()), (422, Some("SPEC_INVALID")));

    // Deleting the spec removes everything the leader wrote for it.
    let (status, body) = controller.call("DELETE", "/api/v1/specs/greeter", None, Some(TOKEN));
    assert_eq!((status, body), (200, json!({"name": "greeter", "deleted": true})));
    wait_for("the spec's keys removed", Duration::from_secs(5), || {
        etcd.get_prefix("/pedestal/assign/").is_empty()
            && etcd.get("/pedestal/placement/greeter").is_none()
            && etcd.get("/pedestal/endpoints/greeter").is_none()
    });
    let (status, body) = controller.call("GET", "/api/v1/specs/greeter", None, Some(TOKEN));
    assert_eq!((status, body["code"].as_str()), (404, Some("MODULE_NOT_FOUND")));
}

#[test]
fn the_standby_forwards_mutations_and_artifacts_are_mirrored() {
    let etcd = Etcd::single();
    let first = Controller::start(&etcd, "c1");
    let second = Controller::start(&etcd, "c2");
    wait_for("one leader", Duration::from_secs(10), || first.leading() || second.leading());
    let (leader, standby) = if first.leading() { (&first, &second) } else { (&second, &first) };

    // Pushed to the leader: the standby mirrors it.
    let good = std::fs::read(artifacts::GOOD).expect("the fixture");
    let sha = push(leader, &good)["sha256"].as_str().expect("a hash").to_owned();
    wait_for("the standby's copy", Duration::from_secs(10), || standby.artifact_path(&sha).is_file());
    assert_eq!(std::fs::read(standby.artifact_path(&sha)).expect("the copy"), good);
    let served = ureq::get(&format!("{}/api/v1/artifacts/{sha}", standby.url))
        .set("authorization", &format!("Bearer {TOKEN}"))
        .call()
        .expect("the standby serves its copy");
    let mut bytes = Vec::new();
    served.into_reader().read_to_end(&mut bytes).expect("the bytes");
    assert_eq!(bytes, good);

    // Pushed to the standby: forwarded, so the leader has it and recorded it.
    let echo = std::fs::read(artifacts::ECHO).expect("the fixture");
    let echo_sha = push(standby, &echo)["sha256"].as_str().expect("a hash").to_owned();
    assert!(leader.artifact_path(&echo_sha).is_file());
    assert!(etcd.get(&format!("/pedestal/artifacts/{echo_sha}")).is_some());

    // A spec applied on the standby is written by the leader.
    register_base(&etcd, "b1", json!({}), 1024);
    let spec = json!({"name": "echo", "version": "0.1.0", "sha256": echo_sha, "peer": true});
    let (status, body) = standby.put_spec(&spec);
    assert_eq!((status, body), (200, json!({"name": "echo", "generation": 1, "changed": true})));
    let stored: Value =
        serde_json::from_str(&etcd.get("/pedestal/specs/echo").expect("the spec")).expect("JSON");
    assert_eq!(stored["spec"]["peer"], true);
    wait_for("placement", Duration::from_secs(5), || placement(&etcd, "echo")["bases"] == json!(["b1"]));
    assert_eq!(standby.get("/api/v1/specs/echo")["generation"], 1);
}

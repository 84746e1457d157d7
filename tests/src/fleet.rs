//! A real fleet for tests and the fleet benchmark: `pedestal controller` processes and
//! `pedestal serve --fleet` bases against a real etcd ([`crate::etcd::Etcd`]), spoken to over
//! real HTTP, and the real `pedestal fleet` CLI.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{Reply, TestBase, artifacts, etcd::Etcd, eventually, process_is_alive};

/// The fleet token every part of a test fleet shares (at least 16 characters).
pub const TOKEN: &str = "fleet-test-token-0123456789abcdef";

/// The header a base adds to a request it forwards; a request carrying it is never forwarded
/// again, so tests send it to see only what a base serves itself.
pub const FORWARDED_BY: &str = "x-pedestal-forwarded-by";

/// The header naming the base that served a module's answer.
pub const SERVED_BY: &str = "x-pedestal-base";

/// A running `pedestal controller`; killed when dropped.
pub struct Controller {
    child: Child,
    url: String,
    id: String,
    token: String,
    log: Arc<Mutex<String>>,
    _data: tempfile::TempDir,
    agent: ureq::Agent,
}

impl Controller {
    /// Starts a controller on `etcd` (all its members) with `token`, listening on a free port.
    pub fn start(etcd: &Etcd, token: &str) -> Self {
        Self::start_with(etcd, token, &[])
    }

    /// Starts a controller with extra `pedestal controller` arguments (`--id`...).
    pub fn start_with(etcd: &Etcd, token: &str, extra: &[&str]) -> Self {
        Self::start_with_env(etcd, token, extra, &[])
    }

    /// [`Controller::start_with`] with extra environment variables.
    pub fn start_with_env(etcd: &Etcd, token: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(artifacts::PEDESTAL)
            .current_dir(data.path())
            .args(["controller", "--etcd", &etcd.endpoints(), "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(["--fleet-token", token])
            .args(extra)
            .env("PEDESTAL_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning pedestal controller");
        let log = collect(child.stderr.take().expect("piped stderr"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut ready = String::new();
        stdout.read_line(&mut ready).expect("reading the controller's ready line");
        thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        // `pedestal controller ready: api http://ADDR id ID`
        let mut word_after = |key: &str| {
            ready.split_whitespace().skip_while(|w| *w != key).nth(1).map(str::to_owned).unwrap_or_else(
                || {
                    let _ = child.kill();
                    thread::sleep(Duration::from_millis(100));
                    panic!("no {key} in the controller's ready line {ready:?}; log:\n{}", log.lock().unwrap())
                },
            )
        };
        let (url, id) = (word_after("api"), word_after("id"));
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
        Self { child, url, id, token: token.to_owned(), log, _data: data, agent }
    }

    /// `http://127.0.0.1:<port>` of its API.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its id (from the ready line).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: frozen, its lease runs out while it cannot notice.
    pub fn stop(&self) {
        signal("STOP", self.child.id());
    }

    /// SIGCONT after [`Controller::stop`].
    pub fn cont(&self) {
        signal("CONT", self.child.id());
    }

    /// An API request with the fleet token, JSON body if any; `Err` with the transport error
    /// when the controller cannot be reached.
    pub fn try_api(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply, String> {
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.url))
            .set("authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(body) => request.set("content-type", "application/json").send_string(&body.to_string()),
            None => request.call(),
        };
        match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(Reply::from_response(response)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// An API request that must reach the controller.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.try_api(method, path, body)
            .unwrap_or_else(|e| panic!("controller {} unreachable: {e}; log:\n{}", self.id, self.log()))
    }

    /// Whether it leads now (`GET /api/v1/leader`), false when it cannot answer.
    pub fn leading(&self) -> bool {
        self.try_api("GET", "/api/v1/leader", None).is_ok_and(|r| r.json["leading"] == true)
    }

    /// `GET /api/v1/status` (`FleetStatus`).
    pub fn status(&self) -> Value {
        let reply = self.api("GET", "/api/v1/status", None);
        assert_eq!(reply.status, 200, "GET /api/v1/status: {reply:?}");
        reply.json
    }

    /// One module's entry in the fleet status, `Null` without one.
    pub fn module_status(&self, module: &str) -> Value {
        module_of(&self.status(), module)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too, but continue it anyway so nothing lingers.
        if let Ok(None) = self.child.try_wait() {
            signal("CONT", self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `pedestal serve --fleet` base: a [`TestBase`] (its every helper works) with its fleet id.
pub struct FleetBase {
    base: TestBase,
    id: String,
}

impl std::ops::Deref for FleetBase {
    type Target = TestBase;
    fn deref(&self) -> &TestBase {
        &self.base
    }
}

impl std::ops::DerefMut for FleetBase {
    fn deref_mut(&mut self) -> &mut TestBase {
        &mut self.base
    }
}

impl FleetBase {
    /// Starts a base joined to the fleet in `etcd` as `id` with `labels`, unsupervised (half
    /// the processes) unless `extra` says `--supervisor on`, and extra `serve` arguments.
    pub fn start(etcd: &Etcd, id: &str, labels: &[(&str, &str)], extra: &[&str]) -> Self {
        let labels = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let endpoints = etcd.endpoints();
        let mut args = vec!["--fleet", &endpoints, "--base-id", id, "--fleet-token", TOKEN];
        if !labels.is_empty() {
            args.extend(["--labels", &labels]);
        }
        if !extra.contains(&"--supervisor") {
            args.extend(["--supervisor", "off"]);
        }
        args.extend_from_slice(extra);
        Self { base: TestBase::start_with(&args), id: id.to_owned() }
    }

    /// Its `--base-id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `kill -9` (of the supervisor and its worker, when supervised), and waits until every
    /// process of it is gone.
    pub fn kill9(&mut self) {
        self.base.kill_with_workers();
    }

    /// SIGSTOP to every process of the base: frozen, its lease expires while it cannot notice.
    pub fn stop(&self) {
        for pid in self.processes() {
            signal("STOP", pid);
        }
    }

    /// SIGCONT after [`FleetBase::stop`].
    pub fn cont(&self) {
        for pid in self.processes() {
            signal("CONT", pid);
        }
    }

    fn processes(&self) -> Vec<u32> {
        let mut pids = self.base.workers();
        pids.push(self.base.supervisor_pid());
        pids.into_iter().filter(|pid| process_is_alive(*pid)).collect()
    }

    /// `GET` on its traffic port as a client would send it (forwarded when it lacks the module).
    pub fn traffic(&self, path: &str) -> Reply {
        self.base.get(path)
    }

    /// `GET` on its traffic port marked as already forwarded: only what it serves itself
    /// answers, with its own id in `x-pedestal-base`.
    pub fn local(&self, path: &str) -> Reply {
        self.base.get_with(path, &[(FORWARDED_BY, "the-test")])
    }

    /// Whether it serves `path` itself (200, tagged with its own id).
    pub fn serves_locally(&self, path: &str) -> bool {
        let reply = self.local(path);
        reply.status == 200 && reply.header(SERVED_BY) == Some(self.id.as_str())
    }
}

/// An etcd, controllers and bases.
pub struct Fleet {
    /// The bases (dropped first, the etcd last: fields drop in order).
    pub bases: Vec<FleetBase>,
    /// The controllers, the first started first.
    pub controllers: Vec<Controller>,
    /// The etcd.
    pub etcd: Etcd,
}

impl Fleet {
    /// One etcd node, one controller, and `n_bases` bases `b0`, `b1`... labelled by `labels`
    /// (given the index); waits until the controller lists every base.
    pub fn start(n_bases: usize, labels: impl Fn(usize) -> Vec<(String, String)>) -> Self {
        Self::start_on(Etcd::single(), 1, n_bases, labels, &[])
    }

    /// `controllers` controllers and `n_bases` bases on `etcd`, each base with `extra`
    /// arguments; waits until every base is listed and one controller leads.
    pub fn start_on(
        etcd: Etcd,
        controllers: usize,
        n_bases: usize,
        labels: impl Fn(usize) -> Vec<(String, String)>,
        extra: &[&str],
    ) -> Self {
        let controllers = (0..controllers)
            .map(|i| Controller::start_with(&etcd, TOKEN, &["--id", &format!("c{i}")]))
            .collect();
        let mut fleet = Self { bases: Vec::new(), controllers, etcd };
        for i in 0..n_bases {
            let labels = labels(i);
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            fleet.bases.push(FleetBase::start(&fleet.etcd, &format!("b{i}"), &labels, extra));
        }
        fleet.wait_for_leader();
        fleet.wait_for_bases(n_bases);
        fleet
    }

    /// Starts one more base and waits until it is listed.
    pub fn add_base(&mut self, id: &str, labels: &[(&str, &str)], extra: &[&str]) -> &FleetBase {
        self.bases.push(FleetBase::start(&self.etcd, id, labels, extra));
        let want = id.to_owned();
        eventually(&format!("base {id} to be listed"), Duration::from_secs(15), || {
            self.base_ids().contains(&want).then_some(())
        });
        self.bases.last().expect("just pushed")
    }

    /// The base with `id`.
    pub fn base(&self, id: &str) -> &FleetBase {
        self.bases.iter().find(|b| b.id == id).unwrap_or_else(|| panic!("no base {id}"))
    }

    /// A controller that answers (the first alive one).
    pub fn controller(&self) -> &Controller {
        self.controllers
            .iter()
            .find(|c| c.try_api("GET", "/api/v1/leader", None).is_ok())
            .expect("a controller that answers")
    }

    /// The leading controller's index, once one leads (15 s at most).
    pub fn wait_for_leader(&self) -> usize {
        eventually("a controller to lead", Duration::from_secs(15), || {
            self.controllers.iter().position(Controller::leading)
        })
    }

    /// The ids of the live bases the controller lists (`GET /api/v1/bases`).
    pub fn base_ids(&self) -> Vec<String> {
        let reply = self.controller().api("GET", "/api/v1/bases", None);
        let mut ids: Vec<String> = reply
            .json
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["record"]["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// Waits until the controller lists `n` live bases.
    pub fn wait_for_bases(&self, n: usize) {
        eventually(&format!("{n} bases to register"), Duration::from_secs(20), || {
            (self.base_ids().len() == n).then_some(())
        });
    }

    /// The ids of the bases (still running ones among [`Fleet::bases`]) that serve `path`
    /// themselves, sorted.
    pub fn serving(&self, path: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .bases
            .iter()
            .filter(|b| b.base.try_admin("GET", "/api/v1/ready", &[], None).is_ok())
            .filter(|b| b.serves_locally(path))
            .map(|b| b.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Waits (up to `timeout`) until the fleet status says `module` has every wanted replica
    /// ready, and returns the module's status entry.
    pub fn wait_ready(&self, module: &str, timeout: Duration) -> Value {
        eventually(&format!("{module} to have every replica ready"), timeout, || {
            let view = self.controller().module_status(module);
            let wanted = view["wanted"].as_u64()?;
            (wanted > 0 && view["ready"].as_u64() == Some(wanted) && view["state"] == "placed")
                .then_some(view)
        })
    }
}

/// The `ModuleView` of `module` in a `FleetStatus`, `Null` without one.
pub fn module_of(status: &Value, module: &str) -> Value {
    status["modules"]
        .as_array()
        .and_then(|modules| modules.iter().find(|m| m["name"] == module).cloned())
        .unwrap_or(Value::Null)
}

/// The base ids of a `ModuleView`'s replicas that report serving, sorted.
pub fn serving_replicas(view: &Value) -> Vec<String> {
    let mut ids: Vec<String> = view["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["serving"] == true)
        .filter_map(|r| r["base_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// What a run of the `pedestal fleet` CLI printed, and how it ended.
#[derive(Debug)]
pub struct CliRun {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliRun {
    /// The standard output as JSON (panics with both outputs if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Panics unless it exited 0.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "pedestal fleet failed: {self:?}");
        self
    }
}

/// Runs the real `pedestal fleet <args>` against `controller`, with the fleet token (both
/// through the environment, as an operator's shell would have them).
pub fn fleet_cli(controller: &Controller, args: &[&str]) -> CliRun {
    let output = Command::new(artifacts::PEDESTAL)
        .arg("fleet")
        .args(args)
        .env("PEDESTAL_CONTROLLER", controller.url())
        .env("PEDESTAL_FLEET_TOKEN", &controller.token)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("running pedestal fleet");
    CliRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `pedestal fleet --output json <args>`, which must succeed, as JSON.
pub fn fleet_json(controller: &Controller, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    fleet_cli(controller, &all).ok().json()
}

/// A directory of spec files for `pedestal fleet apply`.
pub struct SpecDir {
    dir: tempfile::TempDir,
}

impl Default for SpecDir {
    fn default() -> Self {
        Self::new()
    }
}

impl SpecDir {
    /// A fresh directory.
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }

    /// Writes `<file>.toml` with `toml` as its content and returns its path.
    pub fn write(&self, file: &str, toml: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{file}.toml"));
        std::fs::write(&path, toml).expect("writing a spec file");
        path
    }
}

/// Lower-case hex sha256 of a file.
pub fn sha256_of(path: impl AsRef<Path>) -> String {
    use sha2::Digest;
    let bytes =
        std::fs::read(path.as_ref()).unwrap_or_else(|e| panic!("reading {}: {e}", path.as_ref().display()));
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A tiny HTTP server on a loopback port answering every request with `body` (an artifact's
/// `url`), until dropped; counts the requests it answered.
pub struct FileServer {
    url: String,
    served: Arc<Mutex<u32>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FileServer {
    /// Serves `body` at `http://127.0.0.1:<port>/<name>`.
    pub fn serve(name: &str, body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a file server");
        listener.set_nonblocking(true).expect("non-blocking accept");
        let url = format!("http://{}/{name}", listener.local_addr().expect("its address"));
        let served = Arc::new(Mutex::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, done) = (Arc::clone(&served), Arc::clone(&stop));
        thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                // Read the request head (no body is expected), then answer.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                if stream.write_all(answer.as_bytes()).and_then(|()| stream.write_all(&body)).is_ok() {
                    *count.lock().unwrap() += 1;
                }
            }
        });
        Self { url, served, stop }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many requests it answered.
    pub fn served(&self) -> u32 {
        *self.served.lock().unwrap()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Collects a child's output lines into a shared string.
fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

/// `kill -<name> <pid>`.
fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).stderr(Stdio::null()).status();
}

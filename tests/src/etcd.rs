//! Real etcd for fleet tests: one node or a 3-member cluster of Debian's `etcd` 3.4, on free
//! loopback ports with their own data directories, `--pre-vote` as DESIGN.md recommends;
//! killed when dropped. Faults for tests: [`Etcd::kill`]/[`Etcd::restart`] a member,
//! [`Etcd::kill_leader`], [`Etcd::freeze`]/[`Etcd::thaw`] one (SIGSTOP/SIGCONT: alive to its
//! peers' TCP, silent to raft), [`Etcd::lose_quorum`], and [`Etcd::compact_now`] (watchers on
//! an older revision must re-list).

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A free loopback port (bound and released: another process could take it meanwhile, which
/// the caller then sees as a failed start).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// One etcd member.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    data: PathBuf,
}

/// An etcd cluster of one or three members.
pub struct Etcd {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
    token: String,
}

impl Etcd {
    /// One node.
    pub fn single() -> Self {
        Self::start(1)
    }

    /// Three members.
    pub fn cluster3() -> Self {
        Self::start(3)
    }

    fn start(size: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                data: dir.path().join(format!("m{i}")),
            })
            .collect();
        let token = format!("pedestal-test-{}", std::process::id());
        let mut etcd = Self { members, _dir: dir, token };
        for i in 0..size {
            etcd.spawn(i, "new");
        }
        etcd.wait_healthy(Duration::from_secs(20));
        etcd
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let cluster = self.initial_cluster();
        let member = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::File::create(format!("{}.log", member.data.display())).expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", &member.name, "--data-dir"])
            .arg(&member.data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token, "--pre-vote"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (cargo xtask test installs Debian's etcd-server)");
        member.child = Some(child);
    }

    /// The client URLs of every member, comma-separated (for `--fleet` and `--etcd`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// `etcdctl` against the whole cluster, its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints()))
            .args(["--command-timeout=3s"])
            .args(args)
            .output()
            .expect("running etcdctl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Member `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", "--print-value-only", key]);
        let value = out.trim_end_matches('\n');
        (!value.is_empty()).then(|| value.to_owned())
    }

    /// The value of `key` at `revision`, or etcdctl's error (say, the revision was compacted).
    pub fn get_at(&self, key: &str, revision: i64) -> Result<String, String> {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints()))
            .args(["--command-timeout=3s", "get", "--print-value-only", &format!("--rev={revision}"), key])
            .output()
            .expect("running etcdctl");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Every key under `prefix`, with its value.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].to_owned(), c[1].to_owned())).collect()
    }

    /// Waits until every running member answers its health check.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            let url = format!("http://127.0.0.1:{}/health", member.client_port);
            loop {
                let ok = ureq::get(&url)
                    .timeout(Duration::from_secs(1))
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok())
                    .is_some_and(|body| body.contains("\"true\""));
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "etcd member {} did not become healthy", member.name);
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The index of the member that leads now.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).find(|&i| {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.endpoint(i)))
                .args(["endpoint", "status", "-w", "json"])
                .output();
            out.ok().and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok()).is_some_and(
                |v| {
                    let status = &v[0]["Status"];
                    status["leader"] == status["header"]["member_id"] && !status["leader"].is_null()
                },
            )
        })
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its old data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} runs");
        self.spawn(i, "existing");
        // The port may take a moment to accept.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.members[i].client_port)).is_err()
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Etcd {
    /// How many members it has.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// `kill -9` of the member that leads now (waiting up to 10 s for one to), and its index.
    pub fn kill_leader(&mut self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        let leader = loop {
            if let Some(leader) = self.leader() {
                break leader;
            }
            assert!(Instant::now() < deadline, "no etcd member leads");
            thread::sleep(Duration::from_millis(100));
        };
        self.kill(leader);
        leader
    }

    /// SIGSTOP to member `i`: its sockets stay open but it answers nothing (a hung host).
    pub fn freeze(&self, i: usize) {
        assert!(self.signal(i, "STOP"), "kill -STOP of etcd member {i}");
    }

    /// SIGCONT to member `i` after [`Etcd::freeze`].
    pub fn thaw(&self, i: usize) {
        assert!(self.signal(i, "CONT"), "kill -CONT of etcd member {i}");
    }

    /// `kill -<name>` of member `i`'s process; whether it was sent.
    fn signal(&self, i: usize, name: &str) -> bool {
        let Some(child) = self.members[i].child.as_ref() else { return false };
        Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Kills every member but `keep` (a majority of three), waits `outage`, starts them again on
    /// their data and waits until the cluster is healthy: `outage` without quorum.
    pub fn lose_quorum(&mut self, keep: usize, outage: Duration) {
        let lost: Vec<usize> = (0..self.members.len()).filter(|&i| i != keep).collect();
        for &i in &lost {
            self.kill(i);
        }
        thread::sleep(outage);
        for &i in &lost {
            self.restart(i);
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// The cluster's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        let status: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl endpoint status: {e}: {out}"));
        status
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|member| member["Status"]["header"]["revision"].as_i64())
            .max()
            .unwrap_or_else(|| panic!("no revision in {out}"))
    }

    /// Compacts the history up to the current revision (and returns it): a watch resuming from
    /// an older revision is refused and its owner must re-list.
    pub fn compact_now(&self) -> i64 {
        let revision = self.revision();
        let out = self.ctl(&["compact", &revision.to_string(), "--physical"]);
        assert!(out.contains("compacted revision"), "etcdctl compact {revision}: {out:?}");
        revision
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // A frozen member dies of SIGKILL too; continue it anyway so nothing lingers.
            self.signal(i, "CONT");
            self.kill(i);
        }
    }
}

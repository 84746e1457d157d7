//! A real load balancer in front of bases: Debian's HAProxy (2.6), as a child process on a free
//! loopback port, killed when dropped. ARCHITECTURE.md (Testing: load and faults) says why its
//! configuration is the honest one: it is what an operator runs in front of a fleet, so a test
//! through it shows what that operator's clients see.
//!
//! - `balance roundrobin` over every base's traffic port;
//! - TCP health checks on each base's traffic port every 500 ms, out after 2 failures, back
//!   after 1 success: a base being stopped (it closes its traffic listener first) or killed is
//!   out within about a second. (An HTTP check of `GET /api/v1/ready` on the operations port
//!   would say more, but that port refuses a `Host` other than its own `name:port`, and
//!   HAProxy sends one check request per backend, not per server.)
//! - `retries 3`, `option redispatch 1` and `retry-on conn-failure empty-response
//!   response-timeout`: a request that found a base's port closed (or its connection closed
//!   without an answer) before it is out of rotation is sent to another base, not failed.
//!   Only GET requests are retried (HAProxy never retries a request whose body it could not
//!   buffer; the load tests send GETs).

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::etcd::free_port;

/// One backend: a base's traffic port.
#[derive(Debug, Clone)]
pub struct Backend {
    /// A name for HAProxy's logs and stats (the base id).
    pub name: String,
    /// The traffic port on 127.0.0.1.
    pub traffic_port: u16,
}

impl Backend {
    /// A backend from a base's traffic URL (`http://127.0.0.1:<port>`).
    pub fn new(name: &str, traffic_url: &str) -> Self {
        Self { name: name.to_owned(), traffic_port: port_of(traffic_url) }
    }
}

/// A running HAProxy; killed when dropped.
pub struct Haproxy {
    child: Child,
    url: String,
    stats: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy in front of `backends` and waits until every backend is up (passes its
    /// health check), 20 s at most.
    pub fn start(backends: &[Backend]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (port, stats_port) = (free_port(), free_port());
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, config_text(port, stats_port, backends)).expect("writing haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy log file");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second log handle"))
            .stderr(log)
            .spawn()
            .expect("starting haproxy (cargo xtask test installs Debian's haproxy)");
        let mut lb = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            stats: format!("http://127.0.0.1:{stats_port}/stats;csv"),
            config,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while lb.up().len() < backends.len() {
            if let Ok(Some(status)) = lb.child.try_wait() {
                panic!("haproxy exited ({status}); log:\n{}", lb.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy's backends did not come up: {:?}\n{}",
                lb.up(),
                lb.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy does not accept on {port}");
            thread::sleep(Duration::from_millis(20));
        }
        lb
    }

    /// `http://127.0.0.1:<port>`: where clients send traffic.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The names of the backends HAProxy holds up now (from its stats page).
    pub fn up(&self) -> Vec<String> {
        let Some(csv) = ureq::get(&self.stats)
            .timeout(Duration::from_secs(2))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
        else {
            return Vec::new();
        };
        // `# pxname,svname,qcur,...,status(18th),...`: the rows of backend `bases`' servers.
        csv.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                (fields.len() > 17
                    && fields[0] == "bases"
                    && !["BACKEND", "FRONTEND"].contains(&fields[1])
                    && fields[17].starts_with("UP"))
                .then(|| fields[1].to_owned())
            })
            .collect()
    }

    /// The configuration file and what HAProxy logged (for failure messages).
    pub fn log(&self) -> String {
        let config = std::fs::read_to_string(&self.config).unwrap_or_default();
        let log = std::fs::read_to_string(self.config.with_file_name("haproxy.log")).unwrap_or_default();
        format!("{config}\n--- haproxy log ---\n{log}")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy's configuration (see the module docs for why each line).
fn config_text(port: u16, stats_port: u16, backends: &[Backend]) -> String {
    let mut text = format!(
        "global\n\
         \x20   maxconn 4096\n\
         defaults\n\
         \x20   mode http\n\
         \x20   option http-keep-alive\n\
         \x20   timeout connect 1s\n\
         \x20   timeout client 30s\n\
         \x20   timeout server 10s\n\
         \x20   timeout http-keep-alive 10s\n\
         \x20   timeout check 1s\n\
         \x20   retries 3\n\
         \x20   option redispatch 1\n\
         \x20   retry-on conn-failure empty-response response-timeout\n\
         frontend traffic\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   default_backend bases\n\
         listen stats\n\
         \x20   bind 127.0.0.1:{stats_port}\n\
         \x20   stats enable\n\
         \x20   stats uri /stats\n\
         backend bases\n\
         \x20   balance roundrobin\n\
         \x20   default-server inter 500ms fall 2 rise 1\n"
    );
    for backend in backends {
        text.push_str(&format!("    server {} 127.0.0.1:{} check\n", backend.name, backend.traffic_port));
    }
    text
}

/// The port of `http://127.0.0.1:<port>`.
fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

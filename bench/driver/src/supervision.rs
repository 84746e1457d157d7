//! `cargo xtask bench supervision`: what a crash of the worker costs under the built-in
//! supervisor (the real `pedestal` binary, `--supervisor on`).
//!
//! 1. Crash to serving again: the worker is killed (`kill -9`, or a request to `fx-crashy`'s
//!    `/abort`) with 1, 10 and 100 modules installed; the time from the kill until a request to
//!    the last module restored is answered `200` by the new worker.
//! 2. Under a steady load over fresh connections, across a crash from a handler: how many
//!    requests failed, and how many connections were refused (must be 0: the supervisor keeps
//!    the listening sockets open, so the kernel queues connections while the worker restarts).
//!
//! One base takes at most [`MAX_CRASHES`] crashes: one more within a minute is a crash loop, and
//! the supervisor would rightly give up. Rows with more crashes use several bases.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use pedestal_base::MAX_CRASHES;

use crate::percentile;

/// What `pedestal-bench --supervision` needs.
pub struct Supervision {
    /// The real `pedestal` binary.
    pub pedestal: PathBuf,
    /// The benchmark module, installed 1, 10 and 100 times under different names.
    pub module: PathBuf,
    /// The `fx-crashy` fixture (`/abort` kills the worker from a handler).
    pub crashy: PathBuf,
    /// How many modules the crash-to-serving rows have.
    pub sizes: Vec<usize>,
    /// Crashes per row.
    pub rounds: usize,
    /// Crashes under load.
    pub loaded_crashes: usize,
    /// Client threads of the load.
    pub clients: usize,
}

pub fn run(options: &Supervision) -> anyhow::Result<String> {
    let mut out = String::from(
        "## Supervision\n\n### Crash to serving again\n\n\
         The worker process is killed; the time runs from the kill (or from sending `/abort`) until \
         a request to the last module restored is answered `200` by the new worker — it waits in \
         the kernel's accept queue meanwhile, since the supervisor holds the socket. Medians (and \
         the slowest) of the rounds.\n\n\
         Split of the median: until the old worker is gone (the kernel tears it down; the \
         supervisor is told), and until the new worker process started (its `started_at`), the \
         rest being the new worker's start and restore.\n\n\
         | modules installed | crash | rounds | median ms | max ms | old worker gone (median ms) | new worker started (median ms) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for &modules in &options.sizes {
        let last = format!("/m{}/empty", modules - 1);
        let (mut killed, mut aborted) = (Vec::<Timing>::new(), Vec::<Timing>::new());
        for (crash, times) in [(Crash::Kill, &mut killed), (Crash::Abort, &mut aborted)] {
            let mut base = None;
            for round in 0..options.rounds {
                if round % MAX_CRASHES == 0 {
                    base = Some(Supervised::with_modules(options, modules)?);
                }
                let base = base.as_ref().expect("started above");
                times.push(base.crash_and_time(&last, crash)?);
                base.retry_crashy()?;
            }
        }
        for (crash, times) in [("`kill -9` of the worker", &killed), ("`/abort` in a handler", &aborted)] {
            let column = |f: fn(&Timing) -> f64| times.iter().map(f).collect::<Vec<_>>();
            let mut served = column(|t| t.served_ms);
            out += &format!(
                "| {modules} | {crash} | {} | **{:.1}** | {:.1} | {:.1} | {:.1} |\n",
                options.rounds,
                percentile(&mut served, 0.5),
                percentile(&mut served, 1.0),
                percentile(&mut column(|t| t.gone_ms), 0.5),
                percentile(&mut column(|t| t.started_ms), 0.5),
            );
        }
    }
    out += &under_load(options)?;
    Ok(out)
}

/// One crash, in milliseconds from the kill (or from sending `/abort`).
struct Timing {
    /// The old worker was gone (dead, a zombie or reaped).
    gone_ms: f64,
    /// The new worker process started (its `started_at`, a wall-clock time in milliseconds).
    started_ms: f64,
    /// The request to the last module restored was answered.
    served_ms: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Crash {
    Kill,
    Abort,
}

/// A supervised `pedestal serve` on a data directory of its own.
struct Supervised {
    child: Child,
    traffic: String,
    admin: String,
    /// The operations token the base generated into `<data>/admin-token`.
    token: String,
    data: PathBuf,
}

impl Supervised {
    /// A base with `modules` instances of the benchmark module (`m0`...) and `fx-crashy`.
    fn with_modules(options: &Supervision, modules: usize) -> anyhow::Result<Self> {
        let base = Supervised::start(&options.pedestal)?;
        let file = base.data.join("module.so");
        std::fs::write(&file, std::fs::read(&options.module)?)?;
        for i in 0..modules {
            base.install_path(&file, &format!("m{i}"))?;
        }
        let crashy = base.data.join("crashy.so");
        std::fs::write(&crashy, std::fs::read(&options.crashy)?)?;
        base.install_path(&crashy, "fx-crashy")?;
        Ok(base)
    }

    fn start(pedestal: &Path) -> anyhow::Result<Self> {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let data =
            std::env::temp_dir().join(format!("pedestal-bench-supervision-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data)?;
        let mut child = Command::new(pedestal)
            .current_dir(&data)
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("PEDESTAL_SUPERVISOR", "on")
            .env("PEDESTAL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut ready = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut ready)?;
        let words: Vec<&str> = ready.split_whitespace().collect();
        let after = |key: &str| {
            words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).map(|s| s.to_string())
        };
        let (Some(traffic), Some(admin)) = (after("traffic"), after("operations")) else {
            bail!("unexpected ready line {ready:?}");
        };
        let token = crate::read_token(&data)?;
        Ok(Self { child, traffic, admin, token, data })
    }

    /// An operations API request (`path` under its address) with the token.
    fn admin(&self, method: &str, path: &str) -> ureq::Request {
        ureq::request(method, &format!("{}{path}", self.admin))
            .set("authorization", &format!("Bearer {}", self.token))
    }

    fn install_path(&self, path: &Path, name: &str) -> anyhow::Result<Value> {
        let path = crate::stage_in_incoming(&self.data, path)?;
        let body = json!({ "path": path }).to_string();
        let response = self
            .admin("POST", &format!("/api/v1/modules?name={name}"))
            .set("content-type", "application/json")
            .send_string(&body)?;
        Ok(response.into_json()?)
    }

    fn process(&self) -> anyhow::Result<Value> {
        Ok(self.admin("GET", "/api/v1/base").call()?.into_json()?)
    }

    /// Crashes the worker and returns the milliseconds until `path` is served again by the next
    /// one.
    fn crash_and_time(&self, path: &str, crash: Crash) -> anyhow::Result<Timing> {
        let before = self.process()?;
        let pid = before["pid"].as_u64().context("pid")? as u32;
        let generation = before["worker_generation"].as_u64().context("generation")?;
        let (started, wall) = (Instant::now(), std::time::SystemTime::now());
        match crash {
            Crash::Kill => {
                Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
            }
            Crash::Abort => {
                let crashed = ureq::get(&format!("{}/fx-crashy/abort", self.traffic)).call();
                anyhow::ensure!(crashed.is_err(), "fx-crashy's /abort answered: {crashed:?}");
            }
        }
        // Until the old worker is gone, a request could still be answered by it.
        let deadline = started + Duration::from_secs(30);
        while alive(pid) {
            anyhow::ensure!(Instant::now() < deadline, "the worker {pid} survived its crash");
            thread::sleep(Duration::from_micros(200));
        }
        let gone_ms = started.elapsed().as_secs_f64() * 1000.0;
        let address = self.traffic.trim_start_matches("http://");
        loop {
            anyhow::ensure!(Instant::now() < deadline, "not served again within 30 s");
            if fresh_get(address, path) == Outcome::Served {
                break;
            }
        }
        let served_ms = started.elapsed().as_secs_f64() * 1000.0;
        let after = self.process()?;
        anyhow::ensure!(after["worker_generation"].as_u64() > Some(generation), "no new worker: {after}");
        let new_start = humantime::parse_rfc3339(after["started_at"].as_str().context("started_at")?)?;
        let started_ms = new_start.duration_since(wall).unwrap_or_default().as_secs_f64() * 1000.0;
        Ok(Timing { gone_ms, started_ms, served_ms })
    }

    /// Puts `fx-crashy` back after a crash it caused: once crash attribution quarantines the
    /// module that crashed the worker, a retry starts it again.
    fn retry_crashy(&self) -> anyhow::Result<()> {
        let module: Value = self.admin("GET", "/api/v1/modules/fx-crashy").call()?.into_json()?;
        for quarantined in module["quarantined"].as_array().into_iter().flatten() {
            let version = quarantined["version"].as_str().unwrap_or("0.1.0");
            self.admin("POST", &format!("/api/v1/modules/fx-crashy/{version}/retry")).call()?;
        }
        Ok(())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Served,
    Wrong,
    Refused,
    Broken,
}

/// `GET path` over a new connection (`Connection: close`).
fn fresh_get(address: &str, path: &str) -> Outcome {
    let mut stream = match TcpStream::connect(address) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(_) => return Outcome::Broken,
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return Outcome::Broken;
    }
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Err(_) => Outcome::Broken,
        Ok(_) if answer.is_empty() => Outcome::Broken,
        Ok(_) if answer.starts_with(b"HTTP/1.1 200") => Outcome::Served,
        Ok(_) => Outcome::Wrong,
    }
}

/// `clients` threads request a module over fresh connections; a handler crashes the worker a
/// third of the way through each window.
fn under_load(options: &Supervision) -> anyhow::Result<String> {
    let (mut requests, mut broken, mut refused, mut wrong) = (0, 0, 0, 0);
    let mut longest_ms = Vec::new();
    let mut base = None;
    for crash in 0..options.loaded_crashes {
        if crash % MAX_CRASHES == 0 {
            base = Some(Supervised::with_modules(options, 10)?);
        }
        let base = base.as_ref().expect("started above");
        let address = base.traffic.trim_start_matches("http://").to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes: Arc<Mutex<Vec<(Outcome, f64)>>> = Arc::default();
        let clients: Vec<_> = (0..options.clients)
            .map(|client| {
                let (address, stop, outcomes) = (address.clone(), Arc::clone(&stop), Arc::clone(&outcomes));
                thread::spawn(move || {
                    let mut mine = Vec::new();
                    let mut next = client;
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let outcome = fresh_get(&address, &format!("/m{}/empty", next % 10));
                        mine.push((outcome, sent.elapsed().as_secs_f64() * 1000.0));
                        next += 1;
                    }
                    outcomes.lock().unwrap().extend(mine);
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(300));
        let generation = base.process()?["worker_generation"].as_u64();
        let crashed = ureq::get(&format!("{}/fx-crashy/abort", base.traffic)).call();
        anyhow::ensure!(crashed.is_err(), "fx-crashy's /abort answered: {crashed:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while base.process().ok().and_then(|p| p["worker_generation"].as_u64()) <= generation {
            anyhow::ensure!(Instant::now() < deadline, "no new worker within 30 s");
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(600));
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        }
        let outcomes = outcomes.lock().unwrap();
        requests += outcomes.len();
        broken += outcomes.iter().filter(|(o, _)| *o == Outcome::Broken).count();
        refused += outcomes.iter().filter(|(o, _)| *o == Outcome::Refused).count();
        wrong += outcomes.iter().filter(|(o, _)| *o == Outcome::Wrong).count();
        longest_ms.push(outcomes.iter().map(|(_, ms)| *ms).fold(0.0, f64::max));
        drop(outcomes);
        base.retry_crashy()?;
    }
    Ok(format!(
        "\n### Requests across a crash under load\n\n\
         {clients} client threads, each sending `GET /m<i>/empty` over a new connection as soon as \
         the previous answer arrived, across 10 modules; {n} windows of about 1 s, each with one \
         crash of the worker from a handler (`fx-crashy`'s `/abort`) a third of the way in.\n\n\
         | crashes | requests | failed (in flight at the crash) | wrong answers | refused connections | longest request, median over windows (ms) |\n\
         |---|---|---|---|---|---|\n\
         | {n} | {requests} | **{broken}** | {wrong} | **{refused}** | {:.1} |\n\n",
        percentile(&mut longest_ms, 0.5),
        clients = options.clients,
        n = options.loaded_crashes,
    ))
}

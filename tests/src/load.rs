//! A load generator for tests: `concurrency` threads, each with its own keep-alive HTTP/1.1
//! connection pool (a `ureq` agent), sending `GET <target><path>` round-robin over the targets
//! (bases' traffic URLs, or a load balancer's) until stopped. Every answer is tallied: by
//! status, by the version and base that served it (`x-pedestal-version`, `x-pedestal-base`),
//! and its latency into an HDR histogram. A connection error, a timeout or a non-2xx status is a
//! failure; the first [`KEPT_FAILURES`] are kept with their answer body.
//!
//! ```no_run
//! # use pedestal_tests::load::Load;
//! let load = Load::start(vec!["http://127.0.0.1:8080".into()], "/greeter/work", 4, &[]);
//! std::thread::sleep(std::time::Duration::from_secs(1));
//! let report = load.stop();
//! assert_eq!(report.failed(), 0, "{report}");
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// How many failures a report keeps verbatim (it counts all of them).
pub const KEPT_FAILURES: usize = 20;

/// One request's time limit: longer than any drain a test causes, so a slow answer shows as
/// latency and only a stuck one as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Load running in the background; [`Load::stop`] ends it and reports.
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// What a run (or a window of it) saw.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Requests that got an answer or failed.
    pub total: u64,
    /// Answers by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that got no answer at all (connection refused or reset, timeout).
    pub connection_errors: u64,
    /// The first [`KEPT_FAILURES`] failures: target, status or transport error, answer body.
    pub failures: Vec<String>,
    /// Median latency of every request (answered or not).
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// The slowest request.
    pub max: Duration,
    /// 2xx answers by the version that served them (`x-pedestal-version`; `-` without one).
    pub by_version: BTreeMap<String, u64>,
    /// 2xx answers by the base that served them (`x-pedestal-base`; `-` without one).
    pub by_base: BTreeMap<String, u64>,
    /// How long the run (or window) lasted.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Answers with a 2xx status.
    pub fn succeeded(&self) -> u64 {
        self.by_status.iter().filter(|(status, _)| (200..300).contains(*status)).map(|(_, n)| n).sum()
    }

    /// Requests that failed: non-2xx answers and connection errors.
    pub fn failed(&self) -> u64 {
        self.total - self.succeeded()
    }

    /// Requests per second over [`LoadReport::elapsed`].
    pub fn rps(&self) -> f64 {
        self.total as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests in {:.1?} ({:.0}/s), {} failed ({} connection errors), by status {:?}, \
             p50 {:.1?} p99 {:.1?} max {:.1?}, by version {:?}, by base {:?}",
            self.total,
            self.elapsed,
            self.rps(),
            self.failed(),
            self.connection_errors,
            self.by_status,
            self.p50,
            self.p99,
            self.max,
            self.by_version,
            self.by_base
        )?;
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        Ok(())
    }
}

impl Load {
    /// Starts `concurrency` threads sending `GET <target><path>` round-robin over `targets`
    /// with `headers` on every request.
    pub fn start(targets: Vec<String>, path: &str, concurrency: usize, headers: &[(&str, &str)]) -> Self {
        assert!(!targets.is_empty() && concurrency > 0, "load needs a target and a thread");
        let urls: Vec<String> =
            targets.iter().map(|t| format!("{}{path}", t.trim_end_matches('/'))).collect();
        let headers: Vec<(String, String)> =
            headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            urls,
            headers,
            tallies: Mutex::new((Tally::new(), Tally::new())),
        });
        let threads = (0..concurrency)
            .map(|_| {
                let shared = Arc::clone(&shared);
                thread::spawn(move || shared.drive())
            })
            .collect();
        Self { shared, threads }
    }

    /// What the run saw so far (it goes on).
    pub fn snapshot(&self) -> LoadReport {
        self.shared.tallies.lock().unwrap().0.report()
    }

    /// What the run saw since the previous call (or the start), and a fresh window from now:
    /// for latencies before and during an operation.
    pub fn window(&self) -> LoadReport {
        let mut tallies = self.shared.tallies.lock().unwrap();
        std::mem::replace(&mut tallies.1, Tally::new()).report()
    }

    /// Stops every thread (each finishes its request in flight) and reports the whole run.
    pub fn stop(mut self) -> LoadReport {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What the threads share.
struct Shared {
    stop: AtomicBool,
    next: AtomicUsize,
    urls: Vec<String>,
    headers: Vec<(String, String)>,
    /// The whole run's tally, and the current window's.
    tallies: Mutex<(Tally, Tally)>,
}

impl Shared {
    /// One thread's loop: a request at a time on its own keep-alive agent.
    fn drive(&self) {
        let agent =
            ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).max_idle_connections_per_host(4).build();
        while !self.stop.load(Ordering::Relaxed) {
            let url = &self.urls[self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len()];
            let mut request = agent.get(url);
            for (name, value) in &self.headers {
                request = request.set(name, value);
            }
            let started = Instant::now();
            let outcome = match request.call() {
                Ok(response) | Err(ureq::Error::Status(_, response)) => {
                    let status = response.status();
                    let version = response.header("x-pedestal-version").unwrap_or("-").to_owned();
                    let base = response.header("x-pedestal-base").unwrap_or("-").to_owned();
                    // Read to the end: only then does the connection go back to the pool.
                    match response.into_string() {
                        Ok(body) => Outcome::Answer { status, version, base, body },
                        Err(e) => Outcome::Transport(format!("status {status}, body unreadable: {e}")),
                    }
                }
                Err(e) => Outcome::Transport(e.to_string()),
            };
            let latency = started.elapsed();
            let mut tallies = self.tallies.lock().unwrap();
            tallies.0.record(url, &outcome, latency);
            tallies.1.record(url, &outcome, latency);
        }
    }
}

/// How one request ended.
enum Outcome {
    Answer { status: u16, version: String, base: String, body: String },
    Transport(String),
}

/// Counts, and the latency histogram in microseconds.
struct Tally {
    started: Instant,
    total: u64,
    by_status: BTreeMap<u16, u64>,
    connection_errors: u64,
    failures: Vec<String>,
    latency_us: Histogram<u64>,
    by_version: BTreeMap<String, u64>,
    by_base: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            total: 0,
            by_status: BTreeMap::new(),
            connection_errors: 0,
            failures: Vec::new(),
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("a histogram from 1 µs to a minute"),
            by_version: BTreeMap::new(),
            by_base: BTreeMap::new(),
        }
    }

    fn record(&mut self, url: &str, outcome: &Outcome, latency: Duration) {
        self.total += 1;
        self.latency_us.saturating_record(latency.as_micros().try_into().unwrap_or(u64::MAX));
        let failure = match outcome {
            Outcome::Answer { status, version, base, body } => {
                *self.by_status.entry(*status).or_default() += 1;
                if (200..300).contains(status) {
                    *self.by_version.entry(version.clone()).or_default() += 1;
                    *self.by_base.entry(base.clone()).or_default() += 1;
                    None
                } else {
                    Some(format!("{url}: status {status} from base {base}: {}", body.trim()))
                }
            }
            Outcome::Transport(error) => {
                self.connection_errors += 1;
                Some(format!("{url}: no answer: {error}"))
            }
        };
        if let Some(failure) = failure
            && self.failures.len() < KEPT_FAILURES
        {
            self.failures.push(failure);
        }
    }

    fn report(&self) -> LoadReport {
        let us = |q: f64| Duration::from_micros(self.latency_us.value_at_quantile(q));
        LoadReport {
            total: self.total,
            by_status: self.by_status.clone(),
            connection_errors: self.connection_errors,
            failures: self.failures.clone(),
            p50: us(0.5),
            p99: us(0.99),
            max: Duration::from_micros(self.latency_us.max()),
            by_version: self.by_version.clone(),
            by_base: self.by_base.clone(),
            elapsed: self.started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Write},
        net::TcpListener,
        sync::atomic::AtomicU64,
    };

    use super::*;

    /// A keep-alive HTTP/1.1 server on a loopback port: every third request answers 500, the
    /// others 200 tagged `x-pedestal-version: 1.0.0` and `x-pedestal-base: <tag>`. Its URL, and
    /// the number of connections it accepted.
    fn server(tag: &'static str) -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = Arc::clone(&connections);
        let requests = Arc::new(AtomicU64::new(0));
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                accepted.fetch_add(1, Ordering::Relaxed);
                let requests = Arc::clone(&requests);
                thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        // The request head, up to its empty line.
                        let mut line = String::new();
                        let mut head = 0;
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            head += 1;
                            if line == "\r\n" {
                                break;
                            }
                        }
                        assert!(head > 1, "a request line before the empty line");
                        let n = requests.fetch_add(1, Ordering::Relaxed);
                        let (status, body) =
                            if n % 3 == 2 { ("500 Boom", "boom") } else { ("200 OK", "fine") };
                        let answer = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nx-pedestal-version: 1.0.0\r\n\
                             x-pedestal-base: {tag}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, connections)
    }

    #[test]
    fn tallies_statuses_versions_bases_and_keeps_connections_alive() {
        let (a, connections_a) = server("a");
        let (b, connections_b) = server("b");
        let load = Load::start(vec![a, b], "/m/work", 2, &[("x-test", "1")]);
        thread::sleep(Duration::from_millis(300));
        let early = load.snapshot();
        assert!(early.total > 0, "{early}");
        thread::sleep(Duration::from_millis(300));
        let report = load.stop();
        assert!(report.total >= early.total && report.total > 30, "{report}");
        assert_eq!(report.connection_errors, 0, "{report}");
        let (ok, errors) = (report.by_status[&200], report.by_status[&500]);
        assert_eq!(ok + errors, report.total, "{report}");
        // Each server fails every third of its requests: a third overall, give or take the
        // requests in flight when the load stopped.
        assert!(errors * 3 >= report.total - 3 && errors * 3 <= report.total + 6, "{report}");
        assert_eq!(report.failed(), errors);
        assert_eq!(report.failures.len(), KEPT_FAILURES.min(errors as usize), "{report}");
        assert!(report.failures[0].contains("status 500") && report.failures[0].contains("boom"), "{report}");
        assert_eq!(report.by_version, BTreeMap::from([("1.0.0".to_owned(), ok)]));
        // Round-robin: both bases served, evenly within the threads' interleaving.
        let (from_a, from_b) = (report.by_base["a"], report.by_base["b"]);
        assert_eq!(from_a + from_b, ok);
        assert!(from_a.abs_diff(from_b) * 5 <= ok, "{report}");
        // Keep-alive: two threads hold a connection to each server, not one per request.
        let connections = connections_a.load(Ordering::Relaxed) + connections_b.load(Ordering::Relaxed);
        assert!(connections <= 8, "{connections} connections for {} requests", report.total);
        assert!(report.p50 <= report.p99 && report.p99 <= report.max, "{report}");
    }

    #[test]
    fn a_refused_connection_is_a_failure() {
        let port = crate::etcd::free_port();
        let load = Load::start(vec![format!("http://127.0.0.1:{port}")], "/x", 1, &[]);
        thread::sleep(Duration::from_millis(200));
        let window = load.window();
        let report = load.stop();
        assert!(report.total > 0 && report.connection_errors == report.total, "{report}");
        assert_eq!(report.failed(), report.total);
        assert!(report.by_status.is_empty() && report.by_version.is_empty(), "{report}");
        assert!(report.failures[0].contains("no answer"), "{report}");
        assert!(window.total > 0 && window.total <= report.total, "{window}");
    }
}

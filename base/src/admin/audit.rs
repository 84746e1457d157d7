//! The audit trail: every operation (every request to `/api/v1` but reads) and every refused
//! request (no or a wrong token, a foreign `Host` or `Origin`), as one JSON line each in
//! `<data-dir>/audit.log` and in the base's own log.
//!
//! Bounded against a flood from someone without the token: a logged path is cut at
//! [`MAX_PATH_BYTES`], and entries of requests without a valid token spend from one token bucket
//! ([`REFUSALS_BURST`], then [`REFUSALS_PER_SEC`]); those held back are counted in a summary line
//! (`refusals_not_logged`) at most every [`SUMMARY_EVERY`]. Entries of requests with the token
//! are never dropped: when the queue is full, the request waits for room.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::{Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::Response,
};
use serde::Serialize;

use super::gate::{Identity, client_of, display_client};
use crate::error_response::ErrorCode;

/// The audit file under the data directory.
pub const AUDIT_FILE: &str = "audit.log";

/// Rotated files kept besides the current one (`audit.log.1` is the newest).
const KEEP_ROTATED: usize = 3;

/// Entries waiting for the writer thread. Beyond, a refusal's entry is dropped and counted (a
/// flood of refused requests must not hold the operations API up, nor grow memory); an entry
/// with the token waits for room.
const QUEUE: usize = 4096;

/// The most of a request's path and query an entry keeps (a 64 KiB path would rotate the log
/// away in a few hundred requests).
pub(crate) const MAX_PATH_BYTES: usize = 1024;

/// Entries of requests without a valid token logged in a row, then [`REFUSALS_PER_SEC`].
const REFUSALS_BURST: f64 = 60.0;
const REFUSALS_PER_SEC: f64 = 1.0;

/// How often the count of refusals held back is written, when there is one.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// The outcome of an `?async=true` operation, for its second audit line: the handler puts this
/// in its `202` answer's extensions, and the audit layer waits for it.
#[derive(Debug, Clone)]
pub(crate) struct PendingOutcome {
    pub(crate) operation: u64,
    pub(crate) outcome: Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<Outcome>>>>,
}

/// What an operation ended with: the status a synchronous call would have answered, and the
/// error's code.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) status: u16,
    pub(crate) code: Option<String>,
}

/// One audited request.
#[derive(Debug, Clone, Serialize)]
struct Entry {
    at: String,
    client: String,
    identity: &'static str,
    method: String,
    path: String,
    status: u16,
    /// The error's stable code, when it failed.
    code: Option<String>,
    ms: f64,
    /// The `?async=true` operation's id: on its `202` and on the line of its outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<u64>,
}

/// The token bucket of entries without a valid token, and how many it held back.
#[derive(Debug)]
struct RefusalBudget {
    left: f64,
    at: Instant,
    held_back: u64,
}

impl RefusalBudget {
    /// Whether one more may be logged now.
    fn spend(&mut self, now: Instant) -> bool {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * REFUSALS_PER_SEC;
        self.left = (self.left + gained).min(REFUSALS_BURST);
        self.at = now;
        if self.left >= 1.0 {
            self.left -= 1.0;
            true
        } else {
            self.held_back += 1;
            false
        }
    }
}

/// Writes entries to `audit.log` from a thread of its own (the file is opened `O_APPEND`, mode
/// 0600, and rotated at `max_bytes` like module logs).
#[derive(Debug)]
pub(crate) struct AuditLog {
    queue: SyncSender<String>,
    budget: Arc<std::sync::Mutex<RefusalBudget>>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Starts the writer for `<data_dir>/audit.log`.
    pub(crate) fn open(data_dir: &Path, max_bytes: u64) -> std::io::Result<Arc<Self>> {
        let path = data_dir.join(AUDIT_FILE);
        let writer = Writer::open(path, max_bytes)?;
        let (queue, entries) = sync_channel(QUEUE);
        let budget = Arc::new(std::sync::Mutex::new(RefusalBudget {
            left: REFUSALS_BURST,
            at: Instant::now(),
            held_back: 0,
        }));
        let summaries = Arc::clone(&budget);
        std::thread::Builder::new()
            .name("pedestal-audit".into())
            .spawn(move || writer.run(entries, &summaries))?;
        Ok(Arc::new(Self { queue, budget, dropped: AtomicU64::new(0) }))
    }

    /// Logs `entry` (to the base's log and the file), unless it is one refusal too many.
    async fn record(&self, entry: Entry) {
        let authenticated = entry.identity == Identity::Token.as_str();
        if !authenticated {
            let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
            if !budget.spend(Instant::now()) {
                return;
            }
        }
        log_line(&entry);
        let line = serde_json::to_string(&entry).unwrap_or_default();
        match self.queue.try_send(line) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            // An operation's entry is never dropped: wait (off the runtime) for the writer.
            Err(TrySendError::Full(line)) if authenticated => {
                let queue = self.queue.clone();
                let _ = tokio::task::spawn_blocking(move || queue.send(line)).await;
            }
            Err(TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "audit log queue full: refusals dropped (still in the base's log)"
                    );
                }
            }
        }
    }
}

fn log_line(entry: &Entry) {
    let message =
        if matches!(entry.status, 401 | 403 | 429) { "operations API request refused" } else { "audit" };
    tracing::info!(
        target: "pedestal::audit",
        client = %entry.client,
        identity = entry.identity,
        method = %entry.method,
        path = %entry.path,
        status = entry.status,
        code = entry.code.as_deref().unwrap_or(""),
        ms = entry.ms,
        operation = entry.operation,
        "{message}"
    );
}

/// The middleware: times the request and records it when it is an operation or a refusal.
pub(crate) async fn record(State(audit): State<Arc<AuditLog>>, request: Request, next: Next) -> Response {
    let began = Instant::now();
    let client = client_of(&request);
    let method = request.method().clone();
    let path = capped(
        request.uri().path_and_query().map_or_else(|| request.uri().path().to_owned(), |p| p.to_string()),
    );
    let response = next.run(request).await;
    let status = response.status();
    let is_operation = !matches!(method, Method::GET | Method::HEAD) && path.starts_with("/api/v1");
    let refused =
        matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS);
    if !(is_operation || refused) {
        return response;
    }
    let identity = response.extensions().get::<Identity>().copied().unwrap_or(Identity::Anonymous);
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0.clone());
    let pending = response.extensions().get::<PendingOutcome>().cloned();
    let entry = Entry {
        at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        client: display_client(client),
        identity: identity.as_str(),
        method: method.to_string(),
        path,
        status: status.as_u16(),
        code,
        ms: began.elapsed().as_secs_f64() * 1000.0,
        operation: pending.as_ref().map(|p| p.operation),
    };
    audit.record(entry.clone()).await;
    let receiver = pending.and_then(|p| p.outcome.lock().unwrap_or_else(|e| e.into_inner()).take());
    if let Some(receiver) = receiver {
        // The operation's own line, when it ends (nothing if the base stops first).
        tokio::spawn(async move {
            if let Ok(outcome) = receiver.await {
                let finished = Entry {
                    at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                    status: outcome.status,
                    code: outcome.code,
                    ms: began.elapsed().as_secs_f64() * 1000.0,
                    ..entry
                };
                audit.record(finished).await;
            }
        });
    }
    response
}

/// `path`, cut at [`MAX_PATH_BYTES`] (on a character boundary) with a note saying so.
fn capped(path: String) -> String {
    if path.len() <= MAX_PATH_BYTES {
        return path;
    }
    let mut end = MAX_PATH_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...(truncated, {} bytes)", &path[..end], path.len())
}

struct Writer {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    written: u64,
}

impl Writer {
    fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        let written = file.metadata()?.len();
        Ok(Self { path, max_bytes, file, written })
    }

    fn run(mut self, entries: Receiver<String>, budget: &std::sync::Mutex<RefusalBudget>) {
        let mut last_summary = Instant::now();
        loop {
            let line = match entries.recv_timeout(SUMMARY_EVERY) {
                Ok(line) => Some(line),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if last_summary.elapsed() >= SUMMARY_EVERY {
                last_summary = Instant::now();
                let held_back =
                    std::mem::take(&mut budget.lock().unwrap_or_else(|e| e.into_inner()).held_back);
                if held_back > 0 {
                    tracing::warn!(target: "pedestal::audit", refusals_not_logged = held_back, "refused requests not logged (too many)");
                    let summary = serde_json::json!({
                        "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                        "refusals_not_logged": held_back,
                    });
                    self.write_logged(&summary.to_string());
                }
            }
            if let Some(line) = line {
                self.write_logged(&line);
            }
        }
    }

    fn write_logged(&mut self, line: &str) {
        if let Err(e) = self.append(line) {
            tracing::error!(file = %self.path.display(), "cannot write the audit log: {e}");
        }
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        let size = line.len() as u64 + 1;
        if self.max_bytes > 0 && self.written > 0 && self.written + size > self.max_bytes {
            self.rotate()?;
        }
        // One write per line: with O_APPEND, lines never interleave even with another writer.
        self.file.write_all(format!("{line}\n").as_bytes())?;
        self.written += size;
        Ok(())
    }

    /// `audit.log` → `audit.log.1` → … → `audit.log.<KEEP_ROTATED>` (the oldest is dropped).
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = fs::remove_file(numbered(KEEP_ROTATED));
        for n in (1..KEEP_ROTATED).rev() {
            let _ = fs::rename(numbered(n), numbered(n + 1));
        }
        fs::rename(&self.path, numbered(1))?;
        *self = Self::open(self.path.clone(), self.max_bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_and_say_so() {
        assert_eq!(capped("/api/v1/modules?async=true".into()), "/api/v1/modules?async=true");
        let long = format!("/{}", "é".repeat(4000));
        let cut = capped(long.clone());
        assert!(cut.len() < MAX_PATH_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("...(truncated, {} bytes)", long.len())), "{cut}");
    }

    #[test]
    fn refusals_spend_a_bucket_and_are_counted_beyond() {
        let now = Instant::now();
        let mut budget = RefusalBudget { left: REFUSALS_BURST, at: now, held_back: 0 };
        let logged = (0..200).filter(|_| budget.spend(now)).count();
        assert_eq!((logged, budget.held_back), (REFUSALS_BURST as usize, 200 - REFUSALS_BURST as u64));
        assert!(budget.spend(now + Duration::from_secs(1)), "refilled");
    }

    #[test]
    fn the_audit_file_is_private_appended_and_rotated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        let mut writer = Writer::open(path.clone(), 100).unwrap();
        for n in 0..10 {
            writer.append(&format!("{{\"n\":{n},\"pad\":\"................\"}}")).unwrap();
        }
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.contains("\"n\":9"), "{current}");
        assert!(current.len() <= 100, "{current}");
        assert!(dir.path().join("audit.log.1").exists());
        assert!(!dir.path().join(format!("audit.log.{}", KEEP_ROTATED + 1)).exists());
    }
}

//! The audit trail: every operation (every request to `/api/v1` but reads) and every refused
//! request (no or a wrong token, a foreign `Host` or `Origin`), as one JSON line each in
//! `<data-dir>/audit.log` and in the base's own log.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Instant, SystemTime},
};

use axum::{
    extract::{Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::Response,
};
use serde::Serialize;

use super::gate::{Identity, client_of, display_client};
use crate::error::ErrorCode;

/// The audit file under the data directory.
pub const AUDIT_FILE: &str = "audit.log";

/// Rotated files kept besides the current one (`audit.log.1` is the newest).
const KEEP_ROTATED: usize = 3;

/// Entries waiting for the writer thread; beyond, entries are dropped and counted (a flood of
/// refused requests must not hold the operations API up, nor grow memory).
const QUEUE: usize = 4096;

/// One audited request.
#[derive(Debug, Serialize)]
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
}

/// Writes entries to `audit.log` from a thread of its own (the file is opened `O_APPEND`, mode
/// 0600, and rotated at `max_bytes` like module logs).
#[derive(Debug)]
pub(crate) struct AuditLog {
    queue: SyncSender<String>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Starts the writer for `<data_dir>/audit.log`.
    pub(crate) fn open(data_dir: &Path, max_bytes: u64) -> std::io::Result<Arc<Self>> {
        let path = data_dir.join(AUDIT_FILE);
        let writer = Writer::open(path, max_bytes)?;
        let (queue, entries) = sync_channel(QUEUE);
        std::thread::Builder::new().name("pedestal-audit".into()).spawn(move || writer.run(entries))?;
        Ok(Arc::new(Self { queue, dropped: AtomicU64::new(0) }))
    }

    fn record(&self, entry: &Entry) {
        let line = serde_json::to_string(entry).unwrap_or_default();
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "audit log queue full: entries dropped (still in the base's log)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The middleware: times the request and records it when it is an operation or a refusal.
pub(crate) async fn record(
    State(audit): State<Option<Arc<AuditLog>>>,
    request: Request,
    next: Next,
) -> Response {
    let began = Instant::now();
    let client = client_of(&request);
    let method = request.method().clone();
    let path =
        request.uri().path_and_query().map_or_else(|| request.uri().path().to_owned(), |p| p.to_string());
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
    let entry = Entry {
        at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        client: display_client(client),
        identity: identity.as_str(),
        method: method.to_string(),
        path,
        status: status.as_u16(),
        code,
        ms: began.elapsed().as_secs_f64() * 1000.0,
    };
    tracing::info!(
        target: "pedestal::audit",
        client = %entry.client,
        identity = entry.identity,
        method = %entry.method,
        path = %entry.path,
        status = entry.status,
        code = entry.code.as_deref().unwrap_or(""),
        ms = entry.ms,
        "audit"
    );
    if let Some(audit) = &audit {
        audit.record(&entry);
    }
    response
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

    fn run(mut self, entries: Receiver<String>) {
        for line in entries {
            if let Err(e) = self.append(&line) {
                tracing::error!(file = %self.path.display(), "cannot write the audit log: {e}");
            }
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

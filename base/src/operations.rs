//! Operations the API runs in the background (`?async=true`): each gets an id, and
//! `GET /api/v1/operations/{id}` reports its progress and outcome.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use serde::Serialize;
use serde_json::Value;

use crate::{error::Error, sync::lock};

/// At most this many finished operations are remembered (the oldest are forgotten first).
const KEEP_FINISHED: usize = 1000;

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Still running.
    Running,
    /// Done; `result` says what it did.
    Succeeded,
    /// Failed; `error` is the same `{code, message, details}` a synchronous call answers.
    Failed,
}

/// One operation as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Operation {
    /// Its id.
    pub id: u64,
    /// `install`, `uninstall`, `switch`...
    pub kind: String,
    /// What it acts on (`name@version`, or the upload's size).
    pub target: String,
    /// Where it is.
    pub status: Status,
    /// RFC 3339 start time.
    pub started_at: String,
    /// How long it ran (so far).
    pub duration_ms: f64,
    /// What it did, once it succeeded.
    pub result: Option<Value>,
    /// Why it failed, once it failed.
    pub error: Option<Value>,
    #[serde(skip)]
    began: Option<Instant>,
}

/// The operations of one base.
#[derive(Debug, Default)]
pub struct Operations {
    next: AtomicU64,
    all: Mutex<BTreeMap<u64, Operation>>,
}

impl Operations {
    /// Records a new running operation and returns its id.
    pub fn begin(&self, kind: &str, target: &str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let operation = Operation {
            id,
            kind: kind.to_owned(),
            target: target.to_owned(),
            status: Status::Running,
            started_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            duration_ms: 0.0,
            result: None,
            error: None,
            began: Some(Instant::now()),
        };
        let mut all = lock(&self.all);
        all.insert(id, operation);
        while all.len() > KEEP_FINISHED {
            let Some(oldest) = all.iter().find(|(_, op)| op.status != Status::Running).map(|(id, _)| *id)
            else {
                break;
            };
            all.remove(&oldest);
        }
        id
    }

    /// Records the outcome of operation `id`.
    pub fn finish(&self, id: u64, outcome: Result<Value, Error>) {
        let mut all = lock(&self.all);
        let Some(operation) = all.get_mut(&id) else { return };
        operation.duration_ms = operation.began.take().map_or(0.0, |b| b.elapsed().as_secs_f64() * 1000.0);
        match outcome {
            Ok(result) => {
                operation.status = Status::Succeeded;
                operation.result = Some(result);
            }
            Err(e) => {
                operation.status = Status::Failed;
                operation.error = Some(e.to_json());
            }
        }
    }

    /// Operation `id` as it is now.
    pub fn get(&self, id: u64) -> Option<Operation> {
        let mut operation = lock(&self.all).get(&id).cloned()?;
        if let Some(began) = operation.began {
            operation.duration_ms = began.elapsed().as_secs_f64() * 1000.0;
        }
        Some(operation)
    }
}

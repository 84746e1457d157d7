//! A notes module: state shared by handlers, start, stop and health hooks, a background tokio
//! task, and limits declared in its manifest.
//!
//! Run with `cargo xtask demo` (or `cargo xtask deploy examples/notes` into a running base),
//! then:
//!
//! ```text
//! curl -XPOST 127.0.0.1:7070/notes/notes -d 'buy milk'
//! curl 127.0.0.1:7070/notes/notes
//! curl 127.0.0.1:7070/notes/notes/0
//! ```

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use pedestal_module_api::{Health, MemoryAction, Module, ModuleLimits, StartError, export_module};
use serde::Serialize;
use tokio::sync::{Mutex, watch};

#[derive(Default)]
struct Notes {
    store: Arc<Mutex<Vec<String>>>,
    stop: Mutex<Option<watch::Sender<bool>>>,
}

impl Module for Notes {
    fn router(&self) -> Router {
        Router::new()
            .route("/notes", get(list).post(add))
            .route("/notes/{id}", get(one))
            .with_state(Arc::clone(&self.store))
    }

    /// Starts a background task that reports the number of notes every ten seconds.
    async fn start(&self) -> Result<(), StartError> {
        let (stop, mut stopped) = watch::channel(false);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let notes = store.lock().await.len();
                        tracing::info!(notes, "still here");
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        *self.stop.lock().await = Some(stop);
        tracing::info!("notes started");
        Ok(())
    }

    async fn stop(&self) {
        if let Some(stop) = self.stop.lock().await.take() {
            let _ = stop.send(true);
        }
        let notes = self.store.lock().await.len();
        tracing::info!(notes, "notes stopping; notes are in memory only");
    }

    /// Notes live in memory: past a thousand, say so (shown in `/api/v1/health`).
    async fn health(&self) -> Health {
        match self.store.lock().await.len() {
            n if n > MAX_NOTES => Health::degraded(format!("{n} notes held in memory")),
            _ => Health::healthy(),
        }
    }
}

const MAX_NOTES: usize = 1000;

export_module!(
    Notes::default(),
    limits = ModuleLimits::new()
        .max_concurrent_requests(128)
        .request_timeout_ms(2_000)
        .max_request_body_bytes(64 * 1024)
        .memory_soft_limit(64 * 1024 * 1024, MemoryAction::Log)
);

#[derive(Serialize)]
struct Note {
    id: usize,
    text: String,
}

async fn list(State(store): State<Arc<Mutex<Vec<String>>>>) -> Json<Vec<Note>> {
    let notes = store.lock().await;
    Json(notes.iter().enumerate().map(|(id, text)| Note { id, text: text.clone() }).collect())
}

async fn add(State(store): State<Arc<Mutex<Vec<String>>>>, text: String) -> (StatusCode, Json<Note>) {
    let mut notes = store.lock().await;
    notes.push(text.clone());
    tracing::info!(id = notes.len() - 1, "note added");
    (StatusCode::CREATED, Json(Note { id: notes.len() - 1, text }))
}

async fn one(
    State(store): State<Arc<Mutex<Vec<String>>>>,
    Path(id): Path<usize>,
) -> Result<Json<Note>, StatusCode> {
    let notes = store.lock().await;
    notes.get(id).map(|text| Json(Note { id, text: text.clone() })).ok_or(StatusCode::NOT_FOUND)
}

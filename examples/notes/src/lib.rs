//! A notes module: notes kept in the base's key-value store (so they survive restarts,
//! upgrades and redeploys), a configured title, an event published per note, a metric, a
//! background tokio task, a health hook and limits declared in its manifest.
//!
//! Run with `cargo xtask demo` (or `cargo xtask deploy examples/notes` into a running base),
//! then:
//!
//! ```text
//! curl -XPOST 127.0.0.1:7070/notes/notes -d 'buy milk'
//! curl 127.0.0.1:7070/notes/notes
//! curl 127.0.0.1:7070/notes/notes/0
//! curl 127.0.0.1:7070/notes/title
//! ```
//!
//! Its configuration (`[modules.notes.config]` in the base's config file, or
//! `PEDESTAL_CONFIG__NOTES__TITLE=...`): `title` (default "Notes") and `max_notes` (default
//! 1000), read at each request, so an edit of the config file applies at once.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use pedestal_module_api::{
    Health, MemoryAction, Module, ModuleLimits, SpiError, StartError, config, events, export_module, kv,
    metrics::Counter,
};
use serde::Serialize;
use tokio::sync::{Mutex, watch};

/// The key of note `id` (zero-padded, so keys list in order).
fn key(id: u64) -> String {
    format!("note/{id:010}")
}

#[derive(Default)]
struct Notes {
    /// Serializes additions, so ids stay dense.
    adding: Arc<Mutex<()>>,
    stop: Mutex<Option<watch::Sender<bool>>>,
    added: std::sync::OnceLock<Counter>,
}

#[derive(Clone)]
struct App {
    adding: Arc<Mutex<()>>,
    added: Option<Counter>,
}

impl Module for Notes {
    fn router(&self) -> Router {
        let app = App { adding: Arc::clone(&self.adding), added: self.added.get().copied() };
        Router::new()
            .route("/notes", get(list).post(add))
            .route("/notes/{id}", get(one))
            .route("/title", get(|| async { config::get_or("title", String::from("Notes")) }))
            .with_state(app)
    }

    /// Registers the metric and starts a background task that reports the number of notes
    /// every ten seconds, at debug level: a heartbeat at info would drown the lines worth
    /// reading in the demo's output.
    async fn start(&self) -> Result<(), StartError> {
        let _ = self.added.set(Counter::new("notes_added_total", "Notes added")?);
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Ok(usage) = kv::usage().await {
                            tracing::debug!(notes = usage.keys, bytes = usage.used_bytes, "still here");
                        }
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        *self.stop.lock().await = Some(stop);
        tracing::info!(title = %config::get_or("title", String::from("Notes")), "notes started");
        Ok(())
    }

    async fn stop(&self) {
        if let Some(stop) = self.stop.lock().await.take() {
            let _ = stop.send(true);
        }
        tracing::info!("notes stopping; the notes stay in the base's store");
    }

    /// Degraded when the store is nearly full, or past `max_notes`.
    async fn health(&self) -> Health {
        match kv::usage().await {
            Ok(usage) if usage.used_bytes * 10 > usage.quota_bytes * 9 => Health::degraded(format!(
                "the store is {}% full",
                usage.used_bytes * 100 / usage.quota_bytes.max(1)
            )),
            Ok(usage) if usage.keys > config::get_or("max_notes", 1000) => {
                Health::degraded(format!("{} notes, more than max_notes", usage.keys))
            }
            Ok(_) => Health::healthy(),
            Err(e) => Health::unhealthy(format!("the store does not answer: {e}")),
        }
    }
}

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
    id: u64,
    text: String,
}

/// A store error as a response.
fn unavailable(error: SpiError) -> Response {
    let body = Json(serde_json::json!({"code": error.code, "message": error.message}));
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn list() -> Result<Json<Vec<Note>>, Response> {
    let mut notes = Vec::new();
    for key in kv::list("note/").await.map_err(unavailable)? {
        let Some(id) = key.strip_prefix("note/").and_then(|id| id.parse().ok()) else { continue };
        if let Some(text) = kv::get(&key).await.map_err(unavailable)? {
            notes.push(Note { id, text: String::from_utf8_lossy(&text).into_owned() });
        }
    }
    Ok(Json(notes))
}

async fn add(State(app): State<App>, text: String) -> Result<(StatusCode, Json<Note>), Response> {
    let _one_at_a_time = app.adding.lock().await;
    let id = kv::list("note/").await.map_err(unavailable)?.len() as u64;
    if id >= config::get_or("max_notes", 1000) {
        let error = SpiError::new("TOO_MANY_NOTES", "max_notes reached (see the module's config)");
        return Err((StatusCode::INSUFFICIENT_STORAGE, Json(error)).into_response());
    }
    kv::put(&key(id), &text).await.map_err(unavailable)?;
    if let Some(added) = app.added {
        added.inc();
    }
    // Whoever subscribes to `notes.added` (another module, or the base) hears about it.
    let _ = events::publish("notes.added", &serde_json::json!({"id": id, "length": text.len()})).await;
    tracing::info!(id, "note added");
    Ok((StatusCode::CREATED, Json(Note { id, text })))
}

async fn one(Path(id): Path<u64>) -> Result<Json<Note>, Response> {
    match kv::get(&key(id)).await.map_err(unavailable)? {
        Some(text) => Ok(Json(Note { id, text: String::from_utf8_lossy(&text).into_owned() })),
        None => Err(StatusCode::NOT_FOUND.into_response()),
    }
}

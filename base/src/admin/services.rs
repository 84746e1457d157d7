//! The admin views of the base's services: a module's configuration (secrets redacted), its
//! key-value usage, the config reload, and events (topics, and publishing as `base`).

use std::{collections::BTreeMap, path::Path as FilePath, sync::Arc};

use axum::{
    Json,
    extract::{Path, State},
    http::HeaderMap,
    routing::{get, post},
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    Routes, answer,
    gate::require_json,
    params::{NoParams, Params},
};
use crate::{error::Error, error_response::Answer, registry::Registry, services::kv::Usage};

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/modules/{name}/config", get(module_config))
        .route("/api/v1/modules/{name}/kv", get(module_kv))
        .route("/api/v1/config/reload", post(reload_config))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/{topic}", post(publish_event))
}

/// `GET /api/v1/modules/{name}/config`.
#[derive(Serialize)]
struct ModuleConfigView<'a> {
    module: &'a str,
    /// The values, with secrets replaced.
    values: Map<String, Value>,
    /// The keys whose values were replaced.
    redacted: Vec<String>,
    /// The config file, if the base has one.
    file: Option<&'a FilePath>,
}

/// `GET /api/v1/modules/{name}/config`: the values module `name` reads (the config file's
/// section with the environment's on top) with secrets redacted, and where the file is.
async fn module_config(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Json<Value> {
    let configs = registry.module_configs();
    let (values, redacted) = configs.redacted(&name);
    let file = configs.file().map(|f| f.as_path());
    answer(&ModuleConfigView { module: &name, values, redacted, file })
}

/// `GET /api/v1/modules/{name}/kv`.
#[derive(Serialize)]
struct KvView<'a> {
    module: &'a str,
    usage: Usage,
}

/// `GET /api/v1/modules/{name}/kv`: how much of its key-value quota module `name` uses.
async fn module_kv(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Answer<Json<Value>> {
    let usage = registry.kv().usage(&name, registry.kv_quota(&name))?;
    Ok(answer(&KvView { module: &name, usage }))
}

/// `POST /api/v1/config/reload`.
#[derive(Serialize)]
struct Reloaded {
    /// The modules whose values changed.
    changed: Vec<String>,
}

/// `POST /api/v1/config/reload`: re-reads the config file now (it is also watched) and hands
/// the modules whose values changed their new values.
async fn reload_config(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Answer<Json<Value>> {
    let changed = tokio::task::spawn_blocking(move || registry.reload_config())
        .await
        .map_err(|e| Error::BadRequest { message: e.to_string() })??;
    Ok(answer(&Reloaded { changed }))
}

/// `GET /api/v1/events`.
#[derive(Serialize)]
struct EventTotals {
    /// Topic → subscribers.
    topics: BTreeMap<String, usize>,
    published: u64,
    delivered: u64,
}

/// `GET /api/v1/events`: the topics with subscribers, and totals.
async fn list_events(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Json<Value> {
    let events = registry.events();
    let topics = events.topics().into_iter().collect();
    let (published, delivered) = events.totals();
    answer(&EventTotals { topics, published, delivered })
}

/// `POST /api/v1/events/{topic}`.
#[derive(Serialize)]
struct Published<'a> {
    topic: &'a str,
    /// Deliveries queued, one per subscriber.
    queued: usize,
}

/// `POST /api/v1/events/{topic}` with a JSON body: publishes it as `base`.
async fn publish_event(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer<Json<Value>> {
    require_json(&headers, &body)?;
    crate::services::events::check_topic(&topic).map_err(|message| Error::BadRequest { message })?;
    let data: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest { message: format!("the body must be JSON: {e}") })?;
    let queued = registry.events().publish(&topic, "base", data);
    Ok(answer(&Published { topic: &topic, queued }))
}

//! The admin views of the base's services: a module's configuration (secrets redacted), its
//! key-value usage, the config reload, and events (topics, and publishing as `base`).

use std::{collections::BTreeMap, path::Path as FilePath, sync::Arc};

use axum::{
    Json,
    extract::{Path, State},
    http::HeaderMap,
};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::{
    Routes, answer,
    gate::require_json,
    json_errors::ErrorBody,
    params::{NoParams, Params},
};
use crate::{error::Error, error_response::Answer, registry::Registry, services::kv::Usage};

pub(super) fn routes() -> Routes {
    Routes::new()
        .route(routes!(module_config))
        .route(routes!(module_kv))
        .route(routes!(reload_config))
        .route(routes!(list_events))
        .route(routes!(publish_event))
}

/// `GET /api/v1/modules/{name}/config`.
#[derive(Serialize, ToSchema)]
struct ModuleConfigView<'a> {
    module: &'a str,
    /// The values, with secrets replaced.
    #[schema(value_type = Object)]
    values: Map<String, Value>,
    /// The keys whose values were replaced.
    redacted: Vec<String>,
    /// The config file, if the base has one.
    #[schema(value_type = Option<String>)]
    file: Option<&'a FilePath>,
}

/// `GET /api/v1/modules/{name}/config`: the values module `name` reads (the config file's
/// section with the environment's on top) with secrets redacted, and where the file is.
#[utoipa::path(get, path = "/api/v1/modules/{name}/config", tag = "services",
    params(("name", description = "The module's name.")),
    responses((status = 200, description = "The values the module reads, secrets shown `\"(redacted)\"`.", body = ModuleConfigView)))]
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
#[derive(Serialize, ToSchema)]
struct KvView<'a> {
    module: &'a str,
    usage: Usage,
}

/// `GET /api/v1/modules/{name}/kv`: how much of its key-value quota module `name` uses.
#[utoipa::path(get, path = "/api/v1/modules/{name}/kv", tag = "services",
    params(("name", description = "The module's name.")),
    responses(
        (status = 200, description = "The module's use of its key-value quota.", body = KvView),
        (status = 500, description = "`INTERNAL`: the store could not be read.", body = ErrorBody),
    ))]
async fn module_kv(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Answer<Json<Value>> {
    let usage = registry.kv().usage(&name, registry.kv_quota(&name))?;
    Ok(answer(&KvView { module: &name, usage }))
}

/// `POST /api/v1/config/reload`.
#[derive(Serialize, ToSchema)]
struct Reloaded {
    /// The modules whose values changed.
    changed: Vec<String>,
}

/// `POST /api/v1/config/reload`: re-reads the config file now (it is also watched) and hands
/// the modules whose values changed their new values.
#[utoipa::path(post, path = "/api/v1/config/reload", tag = "services",
    responses(
        (status = 200, description = "Reloaded: the modules whose values changed.", body = Reloaded),
        (status = 500, description = "`CONFIG_INVALID`: the config file cannot be read or has a mistake.", body = ErrorBody),
    ))]
async fn reload_config(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Answer<Json<Value>> {
    let changed = tokio::task::spawn_blocking(move || registry.reload_config())
        .await
        .map_err(|e| Error::BadRequest { message: e.to_string() })??;
    Ok(answer(&Reloaded { changed }))
}

/// `GET /api/v1/events`.
#[derive(Serialize, ToSchema)]
struct EventTotals {
    /// Topic → subscribers.
    topics: BTreeMap<String, usize>,
    published: u64,
    delivered: u64,
}

/// `GET /api/v1/events`: the topics with subscribers, and totals.
#[utoipa::path(get, path = "/api/v1/events", tag = "services",
    responses((status = 200, description = "The topics with their subscriber counts, and totals.", body = EventTotals)))]
async fn list_events(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Json<Value> {
    let events = registry.events();
    let topics = events.topics().into_iter().collect();
    let (published, delivered) = events.totals();
    answer(&EventTotals { topics, published, delivered })
}

/// `POST /api/v1/events/{topic}`.
#[derive(Serialize, ToSchema)]
struct Published<'a> {
    topic: &'a str,
    /// Deliveries queued, one per subscriber.
    queued: usize,
}

/// `POST /api/v1/events/{topic}` with a JSON body: publishes it as `base`.
#[utoipa::path(post, path = "/api/v1/events/{topic}", tag = "services",
    params(("topic", description = "The topic to publish on.")),
    request_body(content = Object, description = "Any JSON value: the event's data."),
    responses(
        (status = 200, description = "Published: one delivery queued per subscriber.", body = Published),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: a body that is not `application/json`.", body = ErrorBody),
        (status = 422, description = "`BAD_REQUEST`: an invalid topic, or a body that is not JSON.", body = ErrorBody),
    ))]
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

//! Which version of a module gets its traffic: the switch of the active version (one routing
//! table swap) and weighted splits across running versions.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::{
    Routes, answer,
    gate::require_json,
    json_errors::ErrorBody,
    operations::Accepted,
    operations::run_operation,
    params::{NoParams, Params},
    parse_version, to_json,
};
use crate::{
    error::{Error, Result},
    error_response::Answer,
    registry::Registry,
};

pub(super) fn routes() -> Routes {
    Routes::new().route(routes!(switch)).route(routes!(set_traffic, get_traffic))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AsyncOption {
    /// Answer `202` with an operation id at once instead of waiting.
    #[serde(default, rename = "async")]
    run_async: bool,
    /// Switch even a module a fleet owns (`FLEET_OWNED` otherwise).
    #[serde(default)]
    force: bool,
}

/// The parameters of a change that only ownership guards.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ForceOption {
    /// Change even a module a fleet owns (`FLEET_OWNED` otherwise).
    #[serde(default)]
    pub(super) force: bool,
}

/// The body of a switch.
#[derive(Deserialize, ToSchema)]
struct SwitchTo {
    /// The running version to make active.
    version: String,
}

/// What a switch answers.
#[derive(Serialize, ToSchema)]
struct Switched {
    name: String,
    active_version: String,
    previous_version: Option<String>,
    switch_ms: f64,
}

/// `POST /api/v1/modules/{name}/switch {"version": "..."}`: one routing-table swap.
#[utoipa::path(post, path = "/api/v1/modules/{name}/switch", tag = "traffic", operation_id = "switch_version",
    params(("name", description = "The module's name."), AsyncOption),
    request_body = SwitchTo,
    responses(
        (status = 200, description = "Switched.", body = Switched),
        (status = 202, description = "With `async=true`: the operation, to follow at `status_url`.", body = Accepted),
        (status = 404, description = "`NOT_FOUND`: no such module or version.", body = ErrorBody),
        (status = 409, description = "`NOT_RUNNING`: that version is not running; `FLEET_OWNED` (without `force=true`); `OPERATION_IN_PROGRESS`.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: a body that is not `application/json`.", body = ErrorBody),
        (status = 422, description = "`BAD_REQUEST`: not `{\"version\": \"...\"}`, or not a semver version.", body = ErrorBody),
    ))]
async fn switch(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
    Params(options): Params<AsyncOption>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer<Response> {
    require_json(&headers, &body)?;
    let SwitchTo { version } = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest { message: format!("expected {{\"version\": \"...\"}}: {e}") })?;
    let version = parse_version(&version)?;
    registry.check_owner(&name, options.force)?;
    let target = format!("{name}@{version}");
    run_operation(&registry, "switch", &target, options.run_async, StatusCode::OK, move |registry| {
        let began = Instant::now();
        let (active, previous) = registry.switch(&name, &version)?;
        let switch_ms = began.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(module = %name, version = %version, switch_ms, "switched");
        Ok(to_json(&Switched {
            active_version: active.id.version.to_string(),
            previous_version: previous.map(|p| p.id.version.to_string()),
            name,
            switch_ms,
        }))
    })
    .await
}

/// How a module's traffic is split, as the API shows it.
#[derive(Serialize, ToSchema)]
struct TrafficView<'a> {
    module: &'a str,
    active_version: Option<String>,
    /// `version` → weight, or `null` when the active version takes all traffic.
    weights: Option<BTreeMap<String, u32>>,
}

/// `PUT /api/v1/modules/{name}/traffic {"1.0.0": 90, "1.1.0": 10}`: a weighted split across
/// running versions (`{}` goes back to the active version alone).
#[utoipa::path(put, path = "/api/v1/modules/{name}/traffic", tag = "traffic",
    params(ForceOption, ("name", description = "The module's name.")),
    request_body(content = BTreeMap<String, u32>, description = "`version` → weight, across running versions; `{}` goes back to the active version alone."),
    responses(
        (status = 200, description = "The new split.", body = TrafficView),
        (status = 404, description = "`NOT_FOUND`: no such module.", body = ErrorBody),
        (status = 409, description = "`NOT_RUNNING`: a weighted version is not running; `FLEET_OWNED` (without `force=true`).", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: a body that is not `application/json`.", body = ErrorBody),
        (status = 422, description = "`BAD_REQUEST`: not an object of versions and weights.", body = ErrorBody),
    ))]
async fn set_traffic(
    State(registry): State<Arc<Registry>>,
    Params(options): Params<ForceOption>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer<Json<Value>> {
    require_json(&headers, &body)?;
    registry.check_owner(&name, options.force)?;
    let weights: BTreeMap<String, u32> = serde_json::from_slice(&body).map_err(|e| Error::BadRequest {
        message: format!("expected {{\"<version>\": <weight>, ...}}: {e}"),
    })?;
    let weights =
        weights.into_iter().map(|(v, w)| Ok((parse_version(&v)?, w))).collect::<Result<BTreeMap<_, _>>>()?;
    let setting = Arc::clone(&registry);
    let target = name.clone();
    tokio::task::spawn_blocking(move || setting.set_weights(&target, weights))
        .await
        .map_err(|e| Error::Io { context: "traffic task".into(), source: std::io::Error::other(e) })??;
    Ok(traffic_view(&registry, &name))
}

/// `GET /api/v1/modules/{name}/traffic`: the active version and the weighted split, if any.
#[utoipa::path(get, path = "/api/v1/modules/{name}/traffic", tag = "traffic",
    params(("name", description = "The module's name.")),
    responses(
        (status = 200, description = "The active version and the split, if any.", body = TrafficView),
        (status = 404, description = "`NOT_FOUND`: no such module.", body = ErrorBody),
    ))]
async fn get_traffic(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Answer<Json<Value>> {
    registry.module(&name)?;
    Ok(traffic_view(&registry, &name))
}

fn traffic_view(registry: &Registry, name: &str) -> Json<Value> {
    let weights = registry.weights(name).map(|w| w.into_iter().map(|(v, w)| (v.to_string(), w)).collect());
    let active_version = registry.module(name).ok().and_then(|(_, active)| active).map(|v| v.to_string());
    answer(&TrafficView { module: name, active_version, weights })
}

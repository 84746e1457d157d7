//! A module's limits: the API's overrides, and each version's effective limits with where each
//! value came from.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::HeaderMap,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::{
    Routes, answer,
    gate::require_json,
    json_errors::ErrorBody,
    params::{NoParams, Params},
};
use crate::{
    error::Error,
    error_response::Answer,
    instance::Instance,
    limits::{LimitOverrides, Limits},
    registry::Registry,
};

pub(super) fn routes() -> Routes {
    Routes::new().route(routes!(set_limits, get_limits))
}

/// A module's limits as the API shows them.
#[derive(Serialize, ToSchema)]
struct LimitsView<'a> {
    module: &'a str,
    overrides: LimitOverrides,
    /// Every live version.
    versions: Vec<VersionLimits>,
}

/// One version's effective limits.
#[derive(Serialize, ToSchema)]
struct VersionLimits {
    version: String,
    /// Whether its manifest declares limits.
    declared: bool,
    limits: Limits,
}

fn limits_view(name: &str, overrides: LimitOverrides, instances: &[Arc<Instance>]) -> Json<Value> {
    let versions = instances
        .iter()
        .filter(|i| i.state().is_live())
        .map(|i| VersionLimits {
            version: i.id.version.to_string(),
            declared: i.declared_limits.is_some(),
            limits: i.limits(),
        })
        .collect();
    answer(&LimitsView { module: name, overrides, versions })
}

/// `GET /api/v1/modules/{name}/limits`: the API's overrides and each version's effective limits.
#[utoipa::path(get, path = "/api/v1/modules/{name}/limits", tag = "limits",
    params(("name", description = "The module's name.")),
    responses(
        (status = 200, description = "The overrides, and each live version's effective limits with their sources.", body = LimitsView),
        (status = 404, description = "`NOT_FOUND`: no module of that name.", body = ErrorBody),
    ))]
async fn get_limits(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Answer<Json<Value>> {
    let (instances, _) = registry.module(&name)?;
    Ok(limits_view(&name, registry.limit_overrides(&name), &instances))
}

/// `PUT /api/v1/modules/{name}/limits`: replaces the API's overrides of the module's limits
/// (a field left out or `null` falls back to the config file, the manifest, then the default;
/// `0` lifts a count or size limit) and applies them to every version at once.
#[utoipa::path(put, path = "/api/v1/modules/{name}/limits", tag = "limits",
    params(super::traffic::ForceOption, ("name", description = "The module's name.")),
    request_body = LimitOverrides,
    responses(
        (status = 200, description = "The new overrides, applied: each live version's effective limits.", body = LimitsView),
        (status = 404, description = "`NOT_FOUND`: no module of that name.", body = ErrorBody),
        (status = 409, description = "`FLEET_OWNED` (without `force=true`).", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: a body that is not `application/json`.", body = ErrorBody),
        (status = 422, description = "`BAD_REQUEST`: not an object of known limits.", body = ErrorBody),
    ))]
async fn set_limits(
    State(registry): State<Arc<Registry>>,
    Params(options): Params<super::traffic::ForceOption>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer<Json<Value>> {
    require_json(&headers, &body)?;
    registry.check_owner(&name, options.force)?;
    let overrides: LimitOverrides = serde_json::from_slice(&body).map_err(|e| Error::BadRequest {
        message: format!(
            "expected a JSON object with any of max_concurrent_requests, request_timeout_ms, \
             max_request_body_bytes, memory_soft_limit_bytes, memory_action, unhealthy_action, \
             unhealthy_grace_ms: {e}"
        ),
    })?;
    let setting = Arc::clone(&registry);
    let target = name.clone();
    let instances = tokio::task::spawn_blocking(move || setting.set_limit_overrides(&target, overrides))
        .await
        .map_err(|e| Error::Io { context: "limits task".into(), source: std::io::Error::other(e) })??;
    tracing::info!(module = %name, ?overrides, "limits overridden through the API");
    Ok(limits_view(&name, overrides, &instances))
}

//! Quarantined artifacts: the operator's explicit retry of bytes that crashed the base.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::{
    Routes,
    json_errors::ErrorBody,
    modules::{History, InstanceView, view},
    operations::run_operation,
    params::Params,
    parse_version, to_json,
};
use crate::{
    error::Error,
    error_response::Answer,
    registry::{Registry, RetryTarget},
};

pub(super) fn routes() -> Routes {
    Routes::new().route(routes!(retry)).route(routes!(retry_artifact))
}

/// The parameters of a retry of a module's version.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ModuleRetry {
    /// Retry even a module a fleet owns (`FLEET_OWNED` otherwise).
    #[serde(default)]
    force: bool,
}

/// `POST /api/v1/modules/{name}/{version}/retry[?force=true]`: loads a quarantined module again.
#[utoipa::path(post, path = "/api/v1/modules/{name}/{version}/retry", tag = "artifacts", operation_id = "retry_module",
    params(ModuleRetry, ("name", description = "The module's name."), ("version", description = "Its quarantined version (semver)."),
        ("X-Pedestal-Signature" = Option<String>, Header, description = "A new signature of the quarantined artifact (`--trusted-keys`).")),
    responses(
        (status = 200, description = "Loaded and started: the instance, active.", body = InstanceView),
        (status = 403, description = "`SIGNATURE_REQUIRED`, `SIGNATURE_INVALID` (with `--trusted-keys`).", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: nothing of that name and version is quarantined.", body = ErrorBody),
        (status = 409, description = "`FLEET_OWNED` (without `force=true`), `ALREADY_INSTALLED`, `OPERATION_IN_PROGRESS`.", body = ErrorBody),
        (status = 422, description = "`BAD_REQUEST`: the version is not semver; or it failed to load or start again (`LOAD_FAILED`, `START_FAILED`...).", body = ErrorBody),
    ))]
async fn retry(
    State(registry): State<Arc<Registry>>,
    Params(options): Params<ModuleRetry>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer<Response> {
    let version = parse_version(&version)?;
    let target = format!("{name}@{version}");
    // A new signature of the quarantined artifact, say by the key that replaced its signer's.
    let signature = headers
        .get(crate::signing::SIGNATURE_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    run_operation(&registry, "retry", &target, false, StatusCode::OK, move |registry| {
        let target = RetryTarget::Module(&name, &version);
        let instance = registry.retry_as_operator(target, signature.as_deref(), options.force)?;
        Ok(to_json(&view(&instance, true, History::Left, &HashMap::new())))
    })
    .await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ArtifactRetry {
    /// The install of the artifact under this name (default: under its package's name).
    name: Option<String>,
    /// Retry even a module a fleet owns (`FLEET_OWNED` otherwise).
    #[serde(default)]
    force: bool,
}

/// `POST /api/v1/artifacts/{sha256}/retry[?name=NAME&force=true]`: loads a quarantined artifact again,
/// also one that crashed the base in its constructors, before its name and version were known.
#[utoipa::path(post, path = "/api/v1/artifacts/{sha256}/retry", tag = "artifacts",
    params(("sha256", description = "The quarantined artifact's sha256 (64 lower-case hex digits)."), ArtifactRetry),
    responses(
        (status = 200, description = "Loaded and started: the instance, active.", body = InstanceView),
        (status = 404, description = "`NOT_FOUND`: no quarantined artifact with that sha256.", body = ErrorBody),
        (status = 409, description = "`FLEET_OWNED` (without `force=true`), `ALREADY_INSTALLED`, `OPERATION_IN_PROGRESS`.", body = ErrorBody),
        (status = 422, description = "`BAD_REQUEST`: not a lower-case hex sha256; or it failed to load or start again (`LOAD_FAILED`, `START_FAILED`...).", body = ErrorBody),
    ))]
async fn retry_artifact(
    State(registry): State<Arc<Registry>>,
    Path(sha256): Path<String>,
    Params(options): Params<ArtifactRetry>,
) -> Answer<Response> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(
            Error::BadRequest { message: format!("{sha256:?} is not a lower-case hex sha256") }.into()
        );
    }
    let target = format!("artifact {sha256}");
    run_operation(&registry, "retry", &target, false, StatusCode::OK, move |registry| {
        let target = RetryTarget::Artifact(&sha256, options.name.as_deref());
        let instance = registry.retry_as_operator(target, None, options.force)?;
        Ok(to_json(&view(&instance, true, History::Left, &HashMap::new())))
    })
    .await
}

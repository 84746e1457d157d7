//! Quarantined artifacts: the operator's explicit retry of bytes that crashed the base.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::post,
};
use serde::Deserialize;

use super::{
    Routes,
    modules::{History, view},
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
    Routes::new()
        .route("/api/v1/modules/{name}/{version}/retry", post(retry))
        .route("/api/v1/artifacts/{sha256}/retry", post(retry_artifact))
}

/// The parameters of a retry of a module's version.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleRetry {
    /// Retry even a module a fleet owns (`FLEET_OWNED` otherwise).
    #[serde(default)]
    force: bool,
}

/// `POST /api/v1/modules/{name}/{version}/retry[?force=true]`: loads a quarantined module again.
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

#[derive(Deserialize)]
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

//! `GET /metrics`: the Prometheus exposition.

use std::sync::Arc;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};

use super::{
    Routes,
    params::{NoParams, Params},
};
use crate::{error::Error, error_response::Answer, registry::Registry};

pub(super) fn routes() -> Routes {
    Routes::new().route(utoipa_axum::routes!(metrics))
}

/// `GET /metrics`: every series in Prometheus' text format, rendered on a blocking thread
/// because it walks every module and instance.
#[utoipa::path(get, path = "/metrics", tag = "metrics", responses((status = 200, body = String, content_type = "text/plain; version=0.0.4", description = "Prometheus text.")))]
async fn metrics(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Answer<Response> {
    let text = tokio::task::spawn_blocking(move || registry.render_metrics())
        .await
        .map_err(|e| Error::Io { context: "metrics task".into(), source: std::io::Error::other(e) })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

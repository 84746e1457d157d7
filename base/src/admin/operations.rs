//! How a blocking change runs (waited for, or in the background with an operation id), and
//! `GET /api/v1/operations/{id}`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::{Routes, answer, audit, json_errors::ErrorBody, params::NoParams, params::Params};
use crate::{
    error::{Error, Result},
    error_response::Answer,
    operations::Operation,
    registry::Registry,
};

pub(super) fn routes() -> Routes {
    Routes::new().route(routes!(operation))
}

/// What an operation run in the background answers at once.
#[derive(Serialize, ToSchema)]
pub(super) struct Accepted {
    operation: u64,
    status_url: String,
}

/// Runs a blocking registry operation: waits for it and answers `ok` with its result, or with
/// `run_async` answers `202 {operation, status_url}` at once and records the outcome for
/// `GET /api/v1/operations/{id}`.
pub(super) async fn run_operation(
    registry: &Arc<Registry>,
    kind: &str,
    target: &str,
    run_async: bool,
    ok: StatusCode,
    work: impl FnOnce(&Registry) -> Result<Value> + Send + 'static,
) -> Answer<Response> {
    let running = Arc::clone(registry);
    if run_async {
        let id = registry.operations.begin(kind, target);
        let (ended, outcome) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let result = work(&running);
            let status = match &result {
                Ok(_) => audit::Outcome { status: ok.as_u16(), code: None },
                Err(e) => audit::Outcome { status: e.status().as_u16(), code: Some(e.code().to_owned()) },
            };
            running.operations.finish(id, result);
            let _ = ended.send(status);
        });
        let accepted = Accepted { operation: id, status_url: format!("/api/v1/operations/{id}") };
        let mut response = (StatusCode::ACCEPTED, answer(&accepted)).into_response();
        response.extensions_mut().insert(audit::PendingOutcome {
            operation: id,
            outcome: Arc::new(std::sync::Mutex::new(Some(outcome))),
        });
        return Ok(response);
    }
    let result = tokio::task::spawn_blocking(move || work(&running))
        .await
        .map_err(|e| Error::Io { context: format!("{kind} task"), source: std::io::Error::other(e) })??;
    Ok((ok, Json(result)).into_response())
}

/// `GET /api/v1/operations/{id}`: a background operation's status, and its result or error.
#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations", operation_id = "get_operation",
    params(("id", description = "The id a `202` answer gave.")),
    responses(
        (status = 200, description = "Its status, and its result or error once it ended.", body = Operation),
        (status = 404, description = "`NOT_FOUND`: no operation with that id.", body = ErrorBody),
    ))]
async fn operation(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(id): Path<u64>,
) -> Answer<Json<Operation>> {
    registry
        .operations
        .get(id)
        .map(Json)
        .ok_or_else(|| Error::NotFound { what: format!("operation {id}") })
        .map_err(Into::into)
}

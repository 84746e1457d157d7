//! A module's log on this base, for the controllers' `fleet logs` fan-in:
//! `GET /.pedestal/logs/{module}?version=&tail=&follow=` on the traffic port (fleet token
//! required), answered as NDJSON, one [`LogLine`] per line, oldest first; with `follow=true`
//! the answer stays open and new lines follow as the module writes them.

use std::{convert::Infallible, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use pedestal_base::{LogLine, Registry};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::artifacts::authorized;
use crate::model::ErrorBody;

/// The path of a module's log below a base's traffic URL.
pub(crate) const LOGS_PATH: &str = "/.pedestal/logs/";

/// The query of a log request.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LogQuery {
    /// Only the lines of this version.
    pub(crate) version: Option<String>,
    /// How many recent lines (default 100; the base keeps its last 1000).
    pub(crate) tail: Option<usize>,
    /// Keep the answer open and stream new lines.
    pub(crate) follow: Option<bool>,
}

/// The route, for [`pedestal_base::BaseBuilder::routes_with`].
pub(crate) fn routes(registry: Arc<Registry>, token: String) -> Router {
    Router::new().route("/.pedestal/logs/{module}", get(serve)).with_state((registry, Arc::new(token)))
}

fn refusal(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(ErrorBody { code: code.into(), message })).into_response()
}

fn ndjson(line: &LogLine) -> Bytes {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

async fn serve(
    State((registry, token)): State<(Arc<Registry>, Arc<String>)>,
    Path(module): Path<String>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &token) {
        return refusal(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "the fleet token is required".into());
    }
    let Some(log) = registry.existing_log(&module) else {
        return refusal(
            StatusCode::NOT_FOUND,
            "MODULE_NOT_FOUND",
            format!("no log of module {module:?} here"),
        );
    };
    let wanted = move |line: &LogLine| query.version.as_deref().is_none_or(|v| line.version == v);
    // Subscribed before the tail is read, so no line falls between the two.
    let live = query.follow.unwrap_or(false).then(|| log.follow());
    let tail = query.tail.unwrap_or(100);
    // Every line the base keeps, then the version's last `tail`.
    let recent: Vec<LogLine> = log.tail(usize::MAX, pedestal_module_api::abi::LogLevel::Trace);
    let recent: Vec<&LogLine> = recent.iter().filter(|l| wanted(l)).collect();
    let head: Vec<Result<Bytes, Infallible>> =
        recent[recent.len().saturating_sub(tail)..].iter().map(|l| Ok(ndjson(l))).collect();
    let head = futures_util::stream::iter(head);
    let body = match live {
        None => Body::from_stream(head),
        Some(live) => {
            let new_lines = futures_util::stream::unfold((live, wanted), |(mut live, wanted)| async move {
                loop {
                    match live.recv().await {
                        Ok(line) if wanted(&line) => return Some((Ok(ndjson(&line)), (live, wanted))),
                        Ok(_) | Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    }
                }
            });
            Body::from_stream(futures_util::StreamExt::chain(head, new_lines))
        }
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

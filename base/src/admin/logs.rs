//! A module's log: its recent lines, or a live stream of them.

use std::{convert::Infallible, path::Path as FilePath, sync::Arc};

use axum::{
    extract::{Path, State},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{StreamExt, stream};
use pedestal_module_api::abi::LogLevel;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::{Routes, answer, json_errors::ErrorBody, params::Params};
use crate::{
    error::Error,
    error_response::Answer,
    logs::{LogLine, RECENT_LINES, parse_level},
    registry::Registry,
};

pub(super) fn routes() -> Routes {
    Routes::new().route(routes!(module_logs))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogQuery {
    /// How many recent lines (default 100, at most [`RECENT_LINES`]).
    tail: Option<usize>,
    /// The least severe level to show (`error`, `warn`, `info`, `debug`, `trace`).
    level: Option<String>,
    /// Keep the response open and stream new lines as server-sent events.
    follow: Option<bool>,
}

/// A module's recent log lines.
#[derive(Serialize, ToSchema)]
struct RecentLines<'a> {
    module: &'a str,
    /// The module's log file.
    #[schema(value_type = String)]
    file: &'a FilePath,
    /// Oldest first.
    #[schema(value_type = Vec<LogLine>)]
    lines: &'a [LogLine],
}

/// `GET /api/v1/modules/{name}/logs[?tail=N][&level=L][&follow=true]`: a module's recent log
/// lines, or with `?follow=true` a stream of them (server-sent events,
/// event name `log`, data = the line as JSON), starting with the requested tail.
#[utoipa::path(get, path = "/api/v1/modules/{name}/logs", tag = "logs",
    params(("name", description = "The module's name."), LogQuery),
    responses(
        (status = 200, description = "The recent lines; with `follow=true`, server-sent events named `log`, each line as JSON.",
            content((RecentLines = "application/json"), (LogLine = "text/event-stream"))),
        (status = 404, description = "`NOT_FOUND`: no log of that module.", body = ErrorBody),
        (status = 422, description = "`BAD_REQUEST`: an unknown log level.", body = ErrorBody),
    ))]
async fn module_logs(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
    Params(query): Params<LogQuery>,
) -> Answer<Response> {
    let log =
        registry.existing_log(&name).ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
    let min = match query.level.as_deref() {
        Some(level) => parse_level(level)
            .ok_or_else(|| Error::BadRequest { message: format!("unknown log level {level:?}") })?,
        None => LogLevel::Trace,
    };
    // Subscribe before reading the tail, so no line falls between the two.
    let live = query.follow.unwrap_or(false).then(|| log.follow());
    let recent = log.tail(query.tail.unwrap_or(100).min(RECENT_LINES), min);
    let Some(live) = live else {
        return Ok(answer(&RecentLines { module: &name, file: log.path(), lines: &recent }).into_response());
    };
    let event = |line: &LogLine| Event::default().event("log").json_data(line).unwrap_or_default();
    let head = stream::iter(recent.iter().map(event).map(Ok::<_, Infallible>).collect::<Vec<_>>());
    let new_lines = stream::unfold(live, move |mut live| async move {
        loop {
            match live.recv().await {
                Ok(line) if line.at_least(min) => return Some((Ok(event(&line)), live)),
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(head.chain(new_lines)).keep_alive(KeepAlive::default()).into_response())
}

//! `GET /api/v1/logs/{module}?version=&tail=&follow=`: every live base's log of a module,
//! fanned in. Each base is asked for its part (`GET /.pedestal/logs/{module}` on its traffic
//! port, with the fleet token) at once; the answer is NDJSON, one `{"base", "line"}` object per
//! log line, in the order they arrive. A base that never ran the module (`404`) has no part.
//! A base that cannot be asked, or whose part breaks off or ends while following (it died or
//! stopped), ends its part with `{"base", "end": "<why>"}`; without follow, a part that simply
//! ends says nothing.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Controller, reconcile::Snapshot};
use crate::{agent::LOGS_PATH, model::ErrorBody};

/// How long a base may take to start answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The query, passed on to every base.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LogQuery {
    version: Option<String>,
    tail: Option<usize>,
    follow: Option<bool>,
}

impl LogQuery {
    fn to_query_string(&self) -> String {
        let mut parts = Vec::new();
        if let Some(version) = &self.version {
            parts.push(format!("version={}", encode(version)));
        }
        if let Some(tail) = self.tail {
            parts.push(format!("tail={tail}"));
        }
        if self.follow == Some(true) {
            parts.push("follow=true".to_owned());
        }
        parts.join("&")
    }
}

/// Percent-encodes what is not unreserved (RFC 3986 §2.3).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The handler (see the module docs).
pub(crate) async fn module_logs(
    State(ctl): State<Arc<Controller>>,
    Path(module): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    let mut client = ctl.client();
    let snapshot = match Snapshot::read(&mut client, &ctl.keys).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            let body = ErrorBody { code: "ETCD_UNAVAILABLE".into(), message: format!("etcd: {e}") };
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        }
    };
    let (sender, receiver) = mpsc::channel::<Bytes>(256);
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let path = format!("{LOGS_PATH}{}?{}", encode(&module), query.to_query_string());
    let follow = query.follow == Some(true);
    for base in snapshot.bases.into_values() {
        let (sender, http, token) = (sender.clone(), http.clone(), ctl.token.clone());
        let url = format!("{}{path}", base.traffic_url.trim_end_matches('/'));
        tokio::spawn(async move {
            let why = match base_part(&http, &url, &token, &base.id, &sender).await {
                Ok(Part::Streamed) if follow => "its log stream ended (the base stopped)".to_owned(),
                Ok(_) => return,
                Err(why) => why,
            };
            let _ = sender.send(object(&base.id, "end", serde_json::Value::String(why))).await;
        });
    }
    drop(sender);
    let lines = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|line| (Ok::<_, Infallible>(line), receiver))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
}

/// One NDJSON line: `{"base": base, key: value}`.
fn object(base: &str, key: &str, value: serde_json::Value) -> Bytes {
    let mut line = serde_json::to_vec(&serde_json::json!({ "base": base, key: value })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// How a base's part went.
enum Part {
    /// The base never ran the module, or the client went away.
    Nothing,
    /// Every line the base sent was passed on, to its end.
    Streamed,
}

/// Streams one base's part into `sender`: `Err` says why it broke off.
async fn base_part(
    http: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
    token: &str,
    base: &str,
    sender: &mpsc::Sender<Bytes>,
) -> Result<Part, String> {
    let request = http::Request::get(url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())
        .map_err(|e| format!("not a request: {e}"))?;
    let response = match tokio::time::timeout(CONNECT_TIMEOUT, http.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(format!("cannot be asked: {e}")),
        Err(_) => return Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    };
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(Part::Nothing),
        other => return Err(format!("answered {other}")),
    }
    let mut body = response.into_body();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("its log broke off: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(line) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
            if sender.send(object(base, "line", line)).await.is_err() {
                // The client went away.
                return Ok(Part::Nothing);
            }
        }
    }
    Ok(Part::Streamed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_passed_on_encoded() {
        let query = LogQuery { version: Some("1.0.0+a b".into()), tail: Some(5), follow: Some(true) };
        assert_eq!(query.to_query_string(), "version=1.0.0%2Ba%20b&tail=5&follow=true");
        assert_eq!(LogQuery::default().to_query_string(), "");
    }
}

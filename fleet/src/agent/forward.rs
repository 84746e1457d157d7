//! Forwarding: a request for a module this base does not run goes to a base that does, from
//! `endpoints/<module>` (watched into an [`EndpointMap`]), round-robin, the next endpoint on a
//! connect error, the body streamed both ways. The forwarded request carries
//! `x-pedestal-forwarded-by: <this base>`; a request that already carries it is never
//! forwarded again (the base answers it as its own: `MODULE_NOT_FOUND`).

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, Uri};
use pedestal_base::Fallback;

use super::{FORWARDED_BY, Join};
use crate::model::{Endpoint, ErrorBody};

/// How long a connection to another base may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Every module's endpoints, as `endpoints/` says, and a round-robin counter.
#[derive(Debug, Default)]
pub(crate) struct EndpointMap {
    modules: RwLock<HashMap<String, Vec<Endpoint>>>,
    next: AtomicUsize,
}

impl EndpointMap {
    /// Replaces every module's endpoints (after a fresh list).
    pub(crate) fn replace(&self, modules: HashMap<String, Vec<Endpoint>>) {
        *self.modules.write().unwrap_or_else(std::sync::PoisonError::into_inner) = modules;
    }

    /// Sets (or with `None` removes) one module's endpoints.
    pub(crate) fn set(&self, module: &str, endpoints: Option<Vec<Endpoint>>) {
        let mut modules = self.modules.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match endpoints {
            Some(endpoints) => modules.insert(module.to_owned(), endpoints),
            None => modules.remove(module),
        };
    }

    /// The traffic URLs serving `module` other than `me`'s, starting at the next in turn.
    fn targets(&self, module: &str, me: &str) -> Vec<String> {
        let modules = self.modules.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let urls: Vec<String> = modules
            .get(module)
            .map(|e| e.iter().filter(|e| e.base_id != me).map(|e| e.traffic_url.clone()).collect())
            .unwrap_or_default();
        if urls.is_empty() {
            return urls;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % urls.len();
        urls[start..].iter().chain(&urls[..start]).cloned().collect()
    }
}

/// The traffic fallback of a fleet base.
#[expect(
    clippy::result_large_err,
    reason = "the base's fallback gives a declined request back whole, by value"
)]
pub(crate) fn fallback(join: Arc<Join>, endpoints: Arc<EndpointMap>) -> Fallback {
    Arc::new(move |request: Request| {
        if request.headers().contains_key(FORWARDED_BY) {
            return Err(request);
        }
        let path = request.uri().path();
        let module = path.strip_prefix('/').unwrap_or(path).split('/').next().unwrap_or_default();
        let targets = endpoints.targets(module, &join.base_id);
        if targets.is_empty() {
            return Err(request);
        }
        let me = join.base_id.clone();
        Ok(Box::pin(async move { forward(request, targets, &me).await }))
    })
}

async fn forward(request: Request, targets: Vec<String>, me: &str) -> Response {
    let mut failures = Vec::new();
    for target in &targets {
        let Some(authority) = target.strip_prefix("http://").map(|a| a.trim_end_matches('/')) else {
            failures.push(format!("{target}: not an http:// URL"));
            continue;
        };
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    failures.push(format!("{target}: {e}"));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{target}: no connection within {CONNECT_TIMEOUT:?}"));
                    continue;
                }
            };
        // Connected: from here the request (and its body) is this base's, whatever happens.
        return match send(stream, authority, request, me).await {
            Ok(response) => response,
            Err(e) => bad_gateway(format!("forwarding to {target}: {e}")),
        };
    }
    bad_gateway(format!("no base serving this module could be reached: {}", failures.join("; ")))
}

async fn send(
    stream: tokio::net::TcpStream,
    authority: &str,
    request: Request,
    me: &str,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    parts.uri = Uri::try_from(path)?;
    parts.headers.insert(http::header::HOST, HeaderValue::from_str(authority)?);
    parts.headers.insert(FORWARDED_BY, HeaderValue::from_str(me)?);
    // Hop-by-hop: this is a connection of its own.
    parts.headers.remove(http::header::CONNECTION);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("forwarded connection: {e}");
        }
    });
    let response = sender.send_request(http::Request::from_parts(parts, body)).await?;
    Ok(response.map(Body::new))
}

fn bad_gateway(message: String) -> Response {
    tracing::warn!("{message}");
    (StatusCode::BAD_GATEWAY, axum::Json(ErrorBody { code: "FORWARD_FAILED".into(), message }))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str) -> Endpoint {
        Endpoint { base_id: id.into(), traffic_url: format!("http://{id}"), version: "1.0.0".into() }
    }

    #[test]
    fn targets_rotate_and_never_include_this_base() {
        let map = EndpointMap::default();
        map.set("echo", Some(vec![endpoint("a"), endpoint("me"), endpoint("b")]));
        let first = map.targets("echo", "me");
        let second = map.targets("echo", "me");
        assert_eq!(first.len(), 2);
        assert!(!first.contains(&"http://me".to_owned()));
        assert_ne!(first[0], second[0], "round-robin");
        assert!(map.targets("other", "me").is_empty());
        map.set("echo", None);
        assert!(map.targets("echo", "me").is_empty());
    }
}

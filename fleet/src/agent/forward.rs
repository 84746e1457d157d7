//! Forwarding: a request for a module this base does not run (or pinning, with
//! `x-pedestal-version`, a version it does not run) goes to a base that does, from
//! `endpoints/<module>` (watched into an [`EndpointMap`]), round-robin, the body streamed both
//! ways over pooled keep-alive connections. The next endpoint is tried when a connection cannot
//! be made (2 s) and nothing of the request was sent; an answer's head must arrive within the
//! base's request timeout (`504 FORWARD_TIMEOUT` otherwise). Hop-by-hop headers are dropped both
//! ways, `x-forwarded-for` gets the client's address. The forwarded request carries
//! `x-pedestal-forwarded-by: <this base>`; a request that already carries it is never
//! forwarded again (the base answers it as its own: `MODULE_NOT_FOUND`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use hyper::body::{Frame, SizeHint};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use pedestal_base::{Fallback, VERSION_HEADER};

use super::{FORWARDED_BY, Join};
use crate::model::{Endpoint, ErrorBody};

/// How long a connection to another base may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an answer's head may take when the base's request timeout is not known.
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle keep-alive connections kept per base, and for how long.
const IDLE_PER_BASE: usize = 32;
const IDLE_FOR: Duration = Duration::from_secs(30);

/// Every module's endpoints, as `endpoints/` says, and a round-robin counter.
#[derive(Debug, Default)]
pub(crate) struct EndpointMap {
    modules: RwLock<HashMap<String, Vec<Endpoint>>>,
    next: AtomicUsize,
    /// How long a forwarded request may wait for its answer's head: the base's request
    /// timeout, once the agent starts ([`DEFAULT_RESPONSE_TIMEOUT`] before).
    response_timeout: OnceLock<Duration>,
}

impl EndpointMap {
    /// Sets how long a forwarded request waits for its answer's head (once; later calls are
    /// ignored).
    pub(crate) fn set_response_timeout(&self, timeout: Duration) {
        let _ = self.response_timeout.set(timeout);
    }

    fn response_timeout(&self) -> Duration {
        self.response_timeout.get().copied().filter(|t| !t.is_zero()).unwrap_or(DEFAULT_RESPONSE_TIMEOUT)
    }

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

    /// The traffic URLs serving `module` other than `me`'s, starting at the next in turn: for a
    /// request `pinned` to a version, only the bases serving that version; otherwise each base
    /// once (a base serving two versions is listed once per version).
    fn targets(&self, module: &str, me: &str, pinned: Option<&str>) -> Vec<String> {
        let modules = self.modules.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut urls: Vec<String> = Vec::new();
        for endpoint in modules.get(module).into_iter().flatten() {
            if endpoint.base_id != me
                && pinned.is_none_or(|v| endpoint.version == v)
                && !urls.contains(&endpoint.traffic_url)
            {
                urls.push(endpoint.traffic_url.clone());
            }
        }
        if urls.is_empty() {
            return urls;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % urls.len();
        urls[start..].iter().chain(&urls[..start]).cloned().collect()
    }
}

/// The pooled client forwarded requests go through.
type Forwarder = Client<HttpConnector, Reclaimable>;

fn forwarder() -> Forwarder {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_FOR)
        .pool_max_idle_per_host(IDLE_PER_BASE)
        .build(connector)
}

/// The traffic fallback of a fleet base.
#[expect(
    clippy::result_large_err,
    reason = "the base's fallback gives a declined request back whole, by value"
)]
pub(crate) fn fallback(join: Arc<Join>, endpoints: Arc<EndpointMap>) -> Fallback {
    let client = forwarder();
    Arc::new(move |request: Request| {
        if request.headers().contains_key(FORWARDED_BY) {
            return Err(request);
        }
        let path = request.uri().path();
        let module = path.strip_prefix('/').unwrap_or(path).split('/').next().unwrap_or_default();
        let pinned = request.headers().get(VERSION_HEADER).and_then(|v| v.to_str().ok());
        let targets = endpoints.targets(module, &join.base_id, pinned);
        if targets.is_empty() {
            return Err(request);
        }
        let me = join.base_id.clone();
        let (client, timeout) = (client.clone(), endpoints.response_timeout());
        Ok(Box::pin(async move { forward(&client, request, targets, &me, timeout).await }))
    })
}

/// A request body the client may give back untouched: until it is first polled (nothing of it
/// sent), a failed connection leaves it here for the next endpoint.
struct Reclaimable {
    shared: Arc<Mutex<Option<Body>>>,
    taken: Option<Body>,
}

impl Reclaimable {
    fn new(body: Body) -> (Self, Arc<Mutex<Option<Body>>>) {
        let shared = Arc::new(Mutex::new(Some(body)));
        (Self { shared: Arc::clone(&shared), taken: None }, shared)
    }

    fn body(&mut self) -> Option<&mut Body> {
        if self.taken.is_none() {
            self.taken = self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        }
        self.taken.as_mut()
    }

    fn peek<T>(&self, f: impl FnOnce(&Body) -> T, none: T) -> T {
        match &self.taken {
            Some(body) => f(body),
            None => match &*self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
                Some(body) => f(body),
                None => none,
            },
        }
    }
}

impl hyper::body::Body for Reclaimable {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.body() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.peek(hyper::body::Body::is_end_stream, true)
    }

    fn size_hint(&self) -> SizeHint {
        self.peek(hyper::body::Body::size_hint, SizeHint::with_exact(0))
    }
}

/// The hop-by-hop headers of RFC 9110 §7.6.1: those `Connection` names, and the usual ones.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().starts_with("proxy-")).cloned().collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// `x-forwarded-for`: what it said, then `client`.
fn add_forwarded_for(headers: &mut HeaderMap, client: Option<SocketAddr>) {
    let Some(client) = client else { return };
    let name = HeaderName::from_static("x-forwarded-for");
    let before: Vec<&str> = headers.get_all(&name).iter().filter_map(|v| v.to_str().ok()).collect();
    let value = if before.is_empty() {
        client.ip().to_string()
    } else {
        format!("{}, {}", before.join(", "), client.ip())
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

async fn forward(
    client: &Forwarder,
    request: Request,
    targets: Vec<String>,
    me: &str,
    timeout: Duration,
) -> Response {
    let client_address = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded_for(&mut parts.headers, client_address);
    parts.headers.remove(header::HOST);
    let Ok(me) = HeaderValue::from_str(me) else {
        return bad_gateway(format!("{me:?} is not a header value"));
    };
    parts.headers.insert(FORWARDED_BY, me);
    let mut body = Some(body);
    let mut failures = Vec::new();
    for target in &targets {
        let Some(authority) = target.strip_prefix("http://").map(|a| a.trim_end_matches('/')) else {
            failures.push(format!("{target}: not an http:// URL"));
            continue;
        };
        let Ok(uri) = Uri::try_from(format!("http://{authority}{path}")) else {
            failures.push(format!("{target}: not a URL with {path:?}"));
            continue;
        };
        let Some(this_body) = body.take() else { break };
        let (reclaimable, shared) = Reclaimable::new(this_body);
        let mut outgoing = http::Request::new(reclaimable);
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = parts.headers.clone();
        match tokio::time::timeout(timeout, client.request(outgoing)).await {
            Ok(Ok(response)) => {
                let (mut parts, incoming) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                return Response::from_parts(parts, Body::new(incoming));
            }
            Ok(Err(e)) => {
                // Not connected, nothing of the body sent: the next endpoint gets it.
                let reclaimed = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                if e.is_connect()
                    && let Some(reclaimed) = reclaimed
                {
                    failures.push(format!("{target}: {e}"));
                    body = Some(reclaimed);
                    continue;
                }
                return bad_gateway(format!("forwarding to {target}: {e}"));
            }
            Err(_) => {
                return failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    "FORWARD_TIMEOUT",
                    format!("forwarding to {target}: no answer within {timeout:?}"),
                );
            }
        }
    }
    bad_gateway(format!("no base serving this module could be reached: {}", failures.join("; ")))
}

fn bad_gateway(message: String) -> Response {
    failure(StatusCode::BAD_GATEWAY, "FORWARD_FAILED", message)
}

fn failure(status: StatusCode, code: &str, message: String) -> Response {
    tracing::warn!("{message}");
    (status, axum::Json(ErrorBody { code: code.into(), message })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str) -> Endpoint {
        versioned(id, "1.0.0")
    }

    fn versioned(id: &str, version: &str) -> Endpoint {
        Endpoint { base_id: id.into(), traffic_url: format!("http://{id}"), version: version.into() }
    }

    #[test]
    fn targets_rotate_and_never_include_this_base() {
        let map = EndpointMap::default();
        map.set("echo", Some(vec![endpoint("a"), endpoint("me"), endpoint("b")]));
        let first = map.targets("echo", "me", None);
        let second = map.targets("echo", "me", None);
        assert_eq!(first.len(), 2);
        assert!(!first.contains(&"http://me".to_owned()));
        assert_ne!(first[0], second[0], "round-robin");
        assert!(map.targets("other", "me", None).is_empty());
        map.set("echo", None);
        assert!(map.targets("echo", "me", None).is_empty());
    }

    #[test]
    fn a_pinned_request_goes_only_to_bases_serving_its_version_and_others_to_each_base_once() {
        let map = EndpointMap::default();
        // `b` splits between two versions (a canary): listed once per version.
        map.set(
            "echo",
            Some(vec![
                versioned("a", "1.0.0"),
                versioned("b", "1.0.0"),
                versioned("b", "1.1.0"),
                versioned("me", "1.1.0"),
            ]),
        );
        assert_eq!(map.targets("echo", "me", Some("1.1.0")), ["http://b"]);
        let mut old = map.targets("echo", "me", Some("1.0.0"));
        old.sort();
        assert_eq!(old, ["http://a", "http://b"]);
        assert!(map.targets("echo", "me", Some("2.0.0")).is_empty(), "no base runs it");
        let mut any = map.targets("echo", "me", None);
        any.sort();
        assert_eq!(any, ["http://a", "http://b"], "each base once");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_the_client_is_appended() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-forwarded-for", "10.0.0.1"),
            ("content-type", "text/plain"),
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        add_forwarded_for(&mut headers, Some("127.0.0.2:5000".parse().unwrap()));
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-forwarded-for"]);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
    }

    #[tokio::test]
    async fn a_base_that_never_answers_times_out_and_an_unreachable_one_is_skipped() {
        // Accepts connections (the kernel does) but never answers, like a stopped process.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_url = format!("http://{}", silent.local_addr().unwrap());
        // Nothing listens there: port 1 (tcpmux) is privileged and never served here. A port
        // freed by dropping a listener could be bound again by a concurrent test meanwhile.
        let closed_url = "http://127.0.0.1:1".to_owned();
        let client = forwarder();
        let request = || Request::builder().uri("/echo/x").body(Body::from("hello")).unwrap();
        let started = std::time::Instant::now();
        let response = forward(
            &client,
            request(),
            vec![closed_url.clone(), silent_url],
            "me",
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(started.elapsed() < Duration::from_secs(5));
        let response = forward(&client, request(), vec![closed_url], "me", Duration::from_millis(300)).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    }
}

//! The traffic server: `/<module>/<rest>` goes to that module's active instance.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{
    error::{Error, Result, Subject},
    error_response::Refusal,
    instance::ModuleId,
    registry::Registry,
    routing::{RoutingTable, VERSION_HEADER},
};

/// What the traffic server does with a request this base cannot answer itself: one for a module
/// it has no route for (before it answers `MODULE_NOT_FOUND`), or one pinning (with
/// `x-pedestal-version`) a version the module's route here does not run (before it answers
/// `VERSION_NOT_FOUND`). A fleet agent forwards it to a base that runs it.
/// `Ok` takes the request and answers it; `Err` gives it back, for the base's own answer.
pub type Fallback = Arc<
    dyn Fn(Request) -> std::result::Result<std::pin::Pin<Box<dyn Future<Output = Response> + Send>>, Request>
        + Send
        + Sync,
>;

/// What a base of its own adds to module traffic (see `BaseBuilder::fallback` and
/// `BaseBuilder::module_header`).
#[derive(Clone, Default)]
pub(crate) struct Extras {
    /// For requests of modules without a route here, or pinning a version not running here.
    pub(crate) fallback: Option<Fallback>,
    /// Added to every module answer.
    pub(crate) headers: http::HeaderMap,
}

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extras")
            .field("fallback", &self.fallback.is_some())
            .field("headers", &self.headers)
            .finish()
    }
}

/// The traffic router: the `native` routes compiled into the base first, then every module
/// mounted at `/<name>/`.
pub(crate) fn router(registry: Arc<Registry>, native: Router, extras: Arc<Extras>) -> Router {
    let modules = Router::new()
        .route(READY_PATH, axum::routing::get(ready))
        .fallback(dispatch)
        .with_state((registry, extras));
    native.merge(modules)
}

/// The traffic port's readiness probe, for load balancers: `.` is in no module name, so no
/// module is ever mounted here.
pub const READY_PATH: &str = "/.well-known/pedestal/ready";

/// `GET /.well-known/pedestal/ready`: `200 {"ready": true}` once the base restored its state
/// (and, with `--ready-requires-modules`, installed its boot modules), `503 {"ready": false}`
/// before; no token, nothing else told.
async fn ready(State((registry, _)): State<(Arc<Registry>, Arc<Extras>)>) -> Response {
    let ready = registry.is_ready();
    let status = if ready { http::StatusCode::OK } else { http::StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(serde_json::json!({ "ready": ready }))).into_response()
}

async fn dispatch(
    State((registry, extras)): State<(Arc<Registry>, Arc<Extras>)>,
    request: Request,
) -> Response {
    let request = match &extras.fallback {
        Some(fallback) if !served_here(&registry.routes(), &request) => match fallback(request) {
            Ok(answer) => return answer.await,
            Err(request) => request,
        },
        _ => request,
    };
    match forward(&registry, request).await {
        Ok(mut response) => {
            for (name, value) in &extras.headers {
                response.headers_mut().insert(name.clone(), value.clone());
            }
            response
        }
        Err(e) => Refusal(e).into_response(),
    }
}

/// Whether this base's table can answer `request` itself: it has a route for the module, and
/// runs the version the request pins, if it pins one.
fn served_here(routes: &RoutingTable, request: &Request) -> bool {
    let Some(route) = routes.get(module_of(request.uri().path())) else { return false };
    match request.headers().get(VERSION_HEADER).map(HeaderValue::to_str) {
        None => true,
        Some(Ok(pinned)) => route.running.iter().any(|i| i.id.version.to_string() == pinned),
        // Not text: no base runs such a version; the base's own answer says so.
        Some(Err(_)) => true,
    }
}

/// The module a traffic path names: its first segment.
fn module_of(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split('/').next().unwrap_or_default()
}

async fn forward(registry: &Registry, request: Request) -> Result<Response> {
    let uri = request.uri();
    let path = uri.path().strip_prefix('/').unwrap_or(uri.path());
    let (name, rest) = match path.find('/') {
        Some(slash) => (&path[..slash], &path[slash..]),
        None => (path, "/"),
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let name = name.to_owned();
    let (parts, body) = request.into_parts();
    let pinned = parts.headers.get(VERSION_HEADER).map(|v| v.to_str().unwrap_or("(not text)").to_owned());
    // A request can pick an instance just as a switch or uninstall drains it: then pick again
    // from the new table (a few times at most; the table changes only through operations). A
    // same-version replace empties its version's seat for a moment: a request that finds no
    // instance, or one already draining, while a seat is held waits for it (bounded, a few
    // times: back-to-back rebuilds hold one seat after another).
    let mut seat_waits = 0;
    let mut rechecked = false;
    for _ in 0..8 {
        let picked = {
            let routes = registry.routes();
            match routes.get(&name) {
                Some(route) => route.pick(&name, pinned.as_deref()),
                None => Err(registry.why_unrouted(&name)),
            }
        };
        let instance = match picked {
            Ok(instance) => instance,
            Err(e) => {
                if seat_waits < MAX_SEAT_WAITS && wait_for_held_seat(registry, &name).await {
                    seat_waits += 1;
                    continue;
                }
                // The seat may have been released between the lookup and now: look once more.
                if !rechecked {
                    rechecked = true;
                    continue;
                }
                return Err(e);
            }
        };
        if let Some(admission) = instance.admit() {
            let read = |limit| read_body(body, limit);
            let response =
                instance.call(admission, parts.method, parts.headers, path_and_query, read).await?;
            return Ok(tagged(&instance.id, response));
        }
        if seat_waits < MAX_SEAT_WAITS && wait_for_held_seat(registry, &name).await {
            seat_waits += 1;
        }
    }
    Err(Error::ModuleUnavailable {
        id: Subject::Name(name),
        reason: "its versions kept changing while this request was being routed".into(),
    })
}

/// How many held seats one request waits for at most.
const MAX_SEAT_WAITS: u32 = 3;

/// When a seat of module `name` is held (a same-version replace), waits until it is released,
/// at most the drain, stop and start timeouts together (a replacing build that never starts is
/// given up, and the old one put back, within them), and says so; `false` when none is held.
async fn wait_for_held_seat(registry: &Registry, name: &str) -> bool {
    let Some(mut seat) = registry.held_seat(name) else {
        return false;
    };
    let config = registry.config();
    let limit = config.drain_timeout + config.stop_timeout + config.start_timeout;
    let _ = tokio::time::timeout(limit, seat.wait_for(|released| *released)).await;
    true
}

/// A module's response as the client gets it: tagged with the instance that answered
/// (`x-pedestal-module: name@version`, and its version in [`VERSION_HEADER`]).
fn tagged(id: &ModuleId, response: http::Response<Bytes>) -> Response {
    let mut response = response.map(Body::from);
    let tag = HeaderValue::from_str(&id.to_string()).expect("identities are ASCII");
    response.headers_mut().insert("x-pedestal-module", tag);
    let version = HeaderValue::from_str(&id.version.to_string()).expect("versions are ASCII");
    response.headers_mut().insert(VERSION_HEADER, version);
    response
}

/// Reads a whole body, refusing one over `limit` bytes with `PAYLOAD_TOO_LARGE`.
pub(crate) async fn read_body(body: Body, limit: u64) -> Result<Bytes> {
    match Limited::new(body, limit as usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Error::PayloadTooLarge { size: limit + 1, limit }),
        Err(e) => Err(Error::BadRequest { message: format!("cannot read the body: {e}") }),
    }
}

/// How slowly a body may arrive before the base gives up on it: any body has `grace`, and after
/// that must have kept `bytes_per_second` on average since its first byte was awaited.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinRate {
    pub(crate) grace: std::time::Duration,
    pub(crate) bytes_per_second: u64,
}

impl MinRate {
    /// How long a body of `received` bytes may have taken so far.
    fn allowed(self, received: u64) -> std::time::Duration {
        self.grace + std::time::Duration::from_secs_f64(received as f64 / self.bytes_per_second.max(1) as f64)
    }
}

/// [`read_body`], refusing a body that arrives slower than `rate` with `REQUEST_TIMEOUT`: a client
/// trickling a large upload cannot hold its request (and its connection) open for ever, while
/// one sending at any reasonable rate is never cut off however large its body.
pub(crate) async fn read_body_at_min_rate(body: Body, limit: u64, rate: MinRate) -> Result<Bytes> {
    let started = tokio::time::Instant::now();
    let mut body = std::pin::pin!(Limited::new(body, limit as usize));
    let mut collected = bytes::BytesMut::new();
    loop {
        let received = collected.len() as u64;
        let frame = match tokio::time::timeout_at(started + rate.allowed(received), body.frame()).await {
            Err(_) => {
                return Err(Error::RequestBodyTooSlow {
                    received,
                    min_bytes_per_second: rate.bytes_per_second,
                    grace_ms: rate.grace.as_millis() as u64,
                });
            }
            Ok(None) => return Ok(collected.freeze()),
            Ok(Some(Err(e))) if e.is::<LengthLimitError>() => {
                return Err(Error::PayloadTooLarge { size: limit + 1, limit });
            }
            Ok(Some(Err(e))) => {
                return Err(Error::BadRequest { message: format!("cannot read the body: {e}") });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            collected.extend_from_slice(&data);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn a_body_may_take_the_grace_and_then_its_size_at_the_minimum_rate() {
        let rate = MinRate { grace: Duration::from_secs(10), bytes_per_second: 64 * 1024 };
        assert_eq!(rate.allowed(0), Duration::from_secs(10));
        // 256 MiB at 64 KiB/s: 4096 s after the grace.
        assert_eq!(rate.allowed(256 * 1024 * 1024), Duration::from_secs(10 + 4096));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_is_refused_and_a_steady_one_read_whole() {
        let rate = MinRate { grace: Duration::from_secs(6), bytes_per_second: 1024 };
        let body = |pause: Duration, chunks: usize| {
            let chunks = futures_util::stream::iter(0..chunks).then(move |_| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(Bytes::from_static(&[b'x'; 512]))
            });
            Body::from_stream(chunks)
        };
        // 512 bytes every 100 ms: 5 KiB/s, well over the minimum.
        let read = read_body_at_min_rate(body(Duration::from_millis(100), 40), 1 << 20, rate).await;
        assert_eq!(read.unwrap().len(), 40 * 512);
        // 512 bytes every 5 s: 100 bytes/s, under it once the grace is over.
        let read = read_body_at_min_rate(body(Duration::from_secs(5), 40), 1 << 20, rate).await;
        assert!(matches!(read, Err(Error::RequestBodyTooSlow { received: 512, .. })), "{read:?}");
    }
}

//! The traffic server: `/<module>/<rest>` goes to that module's active instance.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{
    error::{Error, Result},
    registry::Registry,
    routing::VERSION_HEADER,
};

/// The traffic router: the `native` routes compiled into the base first, then every module
/// mounted at `/<name>/`.
pub fn router(registry: Arc<Registry>, native: Router) -> Router {
    let modules = Router::new().fallback(dispatch).with_state(registry);
    native.merge(modules)
}

async fn dispatch(State(registry): State<Arc<Registry>>, request: Request) -> Response {
    match forward(&registry, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
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
    // from the new table (a few times at most; the table changes only through operations).
    for _ in 0..8 {
        let instance = {
            let routes = registry.routes();
            let Some(route) = routes.get(&name) else {
                return Err(registry.why_unrouted(&name));
            };
            route.pick(&name, pinned.as_deref())?
        };
        if let Some(admission) = instance.admit() {
            return instance.call(admission, parts.method, parts.headers, path_and_query, body).await;
        }
    }
    Err(Error::ModuleUnavailable {
        id: name,
        reason: "its versions kept changing while this request was being routed".into(),
    })
}

/// Reads a whole body, refusing one over `limit` bytes with `PAYLOAD_TOO_LARGE`.
pub(crate) async fn read_body(body: Body, limit: u64) -> Result<Bytes> {
    match Limited::new(body, limit as usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Error::PayloadTooLarge { size: limit + 1, limit }),
        Err(e) => Err(Error::BadRequest { message: format!("cannot read the body: {e}") }),
    }
}

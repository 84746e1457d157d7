//! The web console at `/console` on the operations address: a page of plain HTML, CSS and
//! JavaScript shipped inside the binary (`base/console/`), so `pedestal serve` needs nothing
//! else.
//!
//! The page and its two files hold no data and answer without a token, like `GET
//! /api/v1/ready`: a browser cannot send a bearer token with a navigation. Everything the page
//! shows comes from the operations API, which the page calls with the token the operator gives
//! it (kept in the tab's `sessionStorage`), so the console never works around the API's auth.
//! The `Host` check of the gate applies to the page too, and the answers forbid framing and any
//! script, style or connection from elsewhere.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};

use super::Routes;

/// The console's files, as the binary carries them.
const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
/// What the base's console and the fleet's (served by the controller) share: the API client,
/// the token form, formatting, and the look.
pub const COMMON_SCRIPT: &str = include_str!("../../console/common.js");
pub const STYLE: &str = include_str!("../../console/console.css");

/// The paths the gate lets through without a token (see `gate::is_open`).
pub(crate) const OPEN_PATHS: &[&str] =
    &["/console", "/console/", "/console/common.js", "/console/console.js", "/console/console.css"];

pub(super) fn routes() -> Routes {
    Routes::new()
        .page("/console", get(|| async { Redirect::permanent("/console/") }))
        .page("/console/", get(|| async { file(INDEX, "text/html; charset=utf-8") }))
        .page("/console/common.js", get(|| async { file(COMMON_SCRIPT, "text/javascript; charset=utf-8") }))
        .page("/console/console.js", get(|| async { file(SCRIPT, "text/javascript; charset=utf-8") }))
        .page("/console/console.css", get(|| async { file(STYLE, "text/css; charset=utf-8") }))
}

/// One of a console's files, with headers that forbid framing, sniffing, and anything loaded or
/// run from elsewhere.
pub fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

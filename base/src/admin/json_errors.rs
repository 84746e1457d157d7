//! Every error leaves the operations API as JSON `{code, message, details}`: answers that are
//! not (axum's own rejections of a path or a body, say) are rewritten here with a code from
//! their status and their text as the message.

use axum::{
    extract::Request,
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error_response::ErrorCode;

/// The body of every error answer, as `Error::to_json` and [`rejection`] make it: the schema
/// the OpenAPI document gives every error status.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody {
    /// A stable machine-readable code (`NOT_FOUND`, `VERSION_ACTIVE`...); README.md lists them.
    code: String,
    /// What happened, for a person.
    message: String,
    /// The error's particulars (`module`, `running`, `unknown_parameters`...), `{}` without any.
    #[schema(value_type = Object)]
    details: Map<String, Value>,
}

/// How much of a plain-text error body becomes the message.
const MESSAGE_BYTES: usize = 4096;

/// Closes the connection after an error answer to a request that came with a body: most
/// refusals (a content type, a token, a query string) answer before reading it, and a connection
/// whose request body was left unread cannot carry another request. Saying so in the answer
/// (`Connection: close`) keeps a client from sending its next request on a connection the server
/// is about to close, which it would see as a reset.
pub(crate) async fn close_after_refused_body(request: Request, next: Next) -> Response {
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
        || request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let mut response = next.run(request).await;
    if has_body && (response.status().is_client_error() || response.status().is_server_error()) {
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

/// The middleware.
pub(crate) async fn as_json(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if !needs_rewrite(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MESSAGE_BYTES).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let mut rewritten = rejection(parts.status, &text);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

fn needs_rewrite(response: &Response) -> bool {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (response.status().is_client_error() || response.status().is_server_error())
        && !is_json
        && response.extensions().get::<ErrorCode>().is_none()
}

/// The JSON answer for an error `status` with `text` (what the rejection said).
pub(crate) fn rejection(status: StatusCode, text: &str) -> Response {
    let code = code_of(status);
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.to_owned()
    };
    let body = ErrorBody { code: code.to_owned(), message, details: Map::new() };
    let mut response = (status, super::answer(&body)).into_response();
    response.extensions_mut().insert(ErrorCode(code.to_owned()));
    response
}

/// The stable code of an answer the base did not make itself, by its status.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "BAD_REQUEST",
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "HEADERS_TOO_LARGE",
        StatusCode::TOO_MANY_REQUESTS => "TOO_MANY_ATTEMPTS",
        _ => "INTERNAL",
    }
}

//! The HTTP edge's answer for an [`Error`]: its status, its `{code, message, details}` body,
//! the headers some variants carry, and its code kept for the audit trail. Both ports (the
//! traffic server and the operations API) answer errors through this one mapping.

use axum::{
    Json,
    http::header,
    response::{IntoResponse, Response},
};

use crate::error::Error;

/// The stable code of an error answer, kept in the response's extensions for the audit trail.
#[derive(Debug, Clone)]
pub(crate) struct ErrorCode(pub String);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = self.to_json();
        let mut response = (self.status(), Json(body)).into_response();
        if let Self::TooManyAttempts { retry_after_secs } = &self {
            response.headers_mut().insert(header::RETRY_AFTER, (*retry_after_secs).into());
        }
        response.extensions_mut().insert(ErrorCode(self.code().to_owned()));
        response
    }
}

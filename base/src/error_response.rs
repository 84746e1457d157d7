//! The HTTP edge's answer for an [`Error`]: its status, its `{code, message, details}` body,
//! the headers some variants carry, and its code kept for the audit trail. Both ports (the
//! traffic server and the operations API) answer errors through this one mapping.
//!
//! `Error` is `pedestal-host`'s type, and axum's `IntoResponse` is axum's: the orphan rule
//! refuses the impl here, so the edge answers with [`Refusal`], this crate's wrapper. A handler
//! returns [`Answer`]; `?` on an `Error` converts through `From`, so handler bodies read as
//! they did when `Error` itself was the response.

use axum::{
    Json,
    http::header,
    response::{IntoResponse, Response},
};

use crate::error::Error;

/// The stable code of an error answer, kept in the response's extensions for the audit trail.
#[derive(Debug, Clone)]
pub(crate) struct ErrorCode(pub String);

/// An [`Error`] on its way out as an HTTP answer: what a custom base's native routes return to
/// answer as the base does (`{code, message, details}`, the status, `Retry-After`).
#[derive(Debug)]
pub struct Refusal(pub Error);

impl From<Error> for Refusal {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

/// What a handler returns: its answer, or the refusal of it.
pub type Answer<T> = std::result::Result<T, Refusal>;

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Self(error) = self;
        let body = error.to_json();
        let mut response = (error.status(), Json(body)).into_response();
        if let Error::TooManyAttempts { retry_after_secs } = &error {
            response.headers_mut().insert(header::RETRY_AFTER, (*retry_after_secs).into());
        }
        response.extensions_mut().insert(ErrorCode(error.code().to_owned()));
        response
    }
}

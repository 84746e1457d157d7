//! Fixture: a module built against the frozen interface 1.0.0 (`tests/compat/module-api-1.0`).
//! A 1.1 base must load it, serve it, unload it, and treat what 1.0 cannot tell it (declared
//! limits, task counts, a health hook) as absent.

use axum::{Router, routing::get};
use pedestal_module_api::{Module, export_module};

struct OlderMinor;

impl Module for OlderMinor {
    fn router(&self) -> Router {
        Router::new().route("/ping", get(|| async { "pong from 1.0" }))
    }
}

export_module!(OlderMinor);

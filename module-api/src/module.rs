//! What a module author implements: [`Module`], with its defaulted hooks, and [`Health`].
//!
//! Layer: the author's API, below `runtime.rs` (which drives a `Module`) and the crate root
//! (which exports it with `export_module!`).

use std::{error::Error, future::Future};

use crate::abi::HealthStatus;

/// Why a start hook failed. Any error converts into it, and so does a string.
pub type StartError = Box<dyn Error + Send + Sync>;

/// A module's answer to a health check: a status and, unless healthy, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// What is wrong (empty when healthy).
    pub message: String,
}

impl Health {
    /// Working normally.
    pub fn healthy() -> Self {
        Self { status: HealthStatus::Healthy, message: String::new() }
    }

    /// Working, but something needs attention.
    pub fn degraded(message: impl Into<String>) -> Self {
        Self { status: HealthStatus::Degraded, message: message.into() }
    }

    /// Not working.
    pub fn unhealthy(message: impl Into<String>) -> Self {
        Self { status: HealthStatus::Unhealthy, message: message.into() }
    }
}

/// A Pedestal module: what the base mounts at `/<name>/`.
///
/// Only [`Module::router`] is required. The hooks run on the module's own tokio runtime, so they
/// may await timers, spawn tasks and do I/O.
pub trait Module: 'static {
    /// The module's HTTP routes, relative to its mount point (`/hello` answers `/<name>/hello`).
    /// Called once, after [`Module::start`] succeeded.
    fn router(&self) -> axum::Router;

    /// Runs before the module receives traffic. An error (or a panic) fails the install with
    /// `START_FAILED` and the message; the base bounds how long it may take.
    fn start(&self) -> impl Future<Output = Result<(), StartError>> {
        async { Ok(()) }
    }

    /// Runs after the base stopped routing traffic to the module and drained it; bounded by a
    /// deadline. Join any thread the module started here: a thread still running module code
    /// keeps the library mapped (the base then reports the instance as `pinned`).
    fn stop(&self) -> impl Future<Output = ()> {
        async {}
    }

    /// Answers a health check; the base shows the answer in `/api/v1/health`. Runs on the
    /// module's runtime next to its requests, and must answer within the base's health-check
    /// timeout (one second by default) or the module is reported unresponsive. A panic counts
    /// as unhealthy.
    fn health(&self) -> impl Future<Output = Health> {
        async { Health::healthy() }
    }
}

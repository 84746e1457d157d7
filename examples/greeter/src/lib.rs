//! A greeting module: the smallest useful Pedestal module.
//!
//! Run with `cargo xtask demo` (or deploy it into a running base with
//! `cargo xtask deploy examples/greeter`), then:
//!
//! ```text
//! curl '127.0.0.1:7070/greeter/hello?name=Ada'
//! curl '127.0.0.1:7070/greeter/slow?ms=50'
//! ```

use std::time::Duration;

use axum::{Router, extract::Query, routing::get};
use pedestal_module_api::{Module, export_module};
use serde::Deserialize;

struct Greeter;

impl Module for Greeter {
    fn router(&self) -> Router {
        Router::new().route("/hello", get(hello)).route("/slow", get(slow))
    }
}

export_module!(Greeter);

#[derive(Deserialize)]
struct Who {
    name: Option<String>,
}

/// Greets the caller; the log line shows up in the base's log tagged `module=greeter`.
async fn hello(Query(who): Query<Who>) -> String {
    let name = who.name.unwrap_or_else(|| "world".to_owned());
    tracing::info!(%name, "greeting");
    format!("hello, {name}!\n")
}

#[derive(Deserialize)]
struct Delay {
    ms: Option<u64>,
}

/// Answers after an ordinary `tokio::time::sleep`, running on the module's own runtime.
async fn slow(Query(delay): Query<Delay>) -> String {
    let ms = delay.ms.unwrap_or(100).min(10_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

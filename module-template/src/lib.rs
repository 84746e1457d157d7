//! {{project-name}}: a Pedestal module.
//!
//! Deploy it into a running base (`cargo xtask demo` in a Pedestal checkout) with
//! `cargo xtask deploy /path/to/{{project-name}}` run from that checkout, then:
//!
//! ```text
//! curl '127.0.0.1:7070/{{project-name}}/hello?name=you'
//! ```

use std::time::Duration;

use axum::{Router, extract::Query, routing::get};
use pedestal_module_api::{Health, Module, ModuleLimits, export_module};
use serde::Deserialize;

/// The module. Add state here; `start` and `stop` hooks are optional (see `Module`).
struct App;

impl Module for App {
    /// Routes are relative to the module's mount point, `/{{project-name}}/`.
    fn router(&self) -> Router {
        Router::new().route("/hello", get(hello))
    }

    /// What `/api/v1/health` shows for this module: report what your module depends on.
    async fn health(&self) -> Health {
        Health::healthy()
    }
}

// The limits this module declares; the base's config file and operations API can override them.
export_module!(App, limits = ModuleLimits::new().max_concurrent_requests(256).request_timeout_ms(5_000));

#[derive(Deserialize)]
struct Hello {
    name: Option<String>,
}

/// Ordinary axum, tokio and tracing: the SDK runs them on the module's own runtime and tags the
/// log line with this module's name and version in the base's log.
async fn hello(Query(query): Query<Hello>) -> String {
    let name = query.name.unwrap_or_else(|| "world".into());
    tokio::time::sleep(Duration::from_millis(1)).await;
    tracing::info!(%name, "said hello");
    format!("hello, {name}, from {{project-name}}\n")
}

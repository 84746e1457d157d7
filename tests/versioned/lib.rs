//! Fixture `fx-versioned`: one module source that `tests/build.rs` builds at several package
//! versions (1.0.0, 1.1.0, 2.0.0), so tests can install versions side by side, switch between
//! them and replace one with another.
//!
//! `/version` answers the version that served it; `/sleep?ms=N` answers it after N ms (to show
//! that a request finishes on the version it started on); `/build` answers the library's crate
//! name, which differs between two builds of one version (1.0.0 is also built as a second
//! library, `fx_versioned_1_0_0_b`: same identity, other bytes). When the file `slow-start`
//! exists in the base's working directory (the data directory in tests), the start hook takes
//! a second, so a test can kill the base while a start runs; when `fail-start-<crate name>`
//! exists (say `fail-start-fx_versioned_1_0_0_b`), that build's start hook fails.

use std::time::Duration;

use axum::{Router, extract::Query, routing::get};
use pedestal_module_api::{Module, StartError, export_module};
use serde::Deserialize;

const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Versioned;

impl Module for Versioned {
    fn router(&self) -> Router {
        Router::new()
            .route("/version", get(|| async { VERSION }))
            .route("/sleep", get(sleep))
            .route("/build", get(|| async { env!("CARGO_CRATE_NAME") }))
    }

    async fn start(&self) -> Result<(), StartError> {
        if std::path::Path::new(concat!("fail-start-", env!("CARGO_CRATE_NAME"))).exists() {
            return Err("this build is told to fail its start (a fail-start file)".into());
        }
        if std::path::Path::new("slow-start").exists() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }
}

export_module!(Versioned);

#[derive(Deserialize)]
struct Millis {
    ms: u64,
}

async fn sleep(Query(Millis { ms }): Query<Millis>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    VERSION
}

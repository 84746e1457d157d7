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
//!
//! `/work` is the route load tests drive: it answers the version at once, unless a marker file
//! in the working directory says otherwise. With `flaky-<crate name>` (say
//! `flaky-fx_versioned_1_1_0`) every fifth request of that build answers 500 (a deterministic
//! counter: exactly 20%); with `slow-<crate name>` every request takes 50 ms more. The markers
//! are looked at most every 200 ms (cached), so load tests measure the module, not `stat`.

use std::{
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::Query, http::StatusCode, routing::get};
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
            .route("/work", get(work))
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

/// Every `/work` request of this build, counted (the flaky marker fails each fifth).
static WORK_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// How often the marker files are looked at.
const MARKER_CHECK: Duration = Duration::from_millis(200);

/// The markers as last seen, and when.
struct Markers {
    checked: Option<Instant>,
    flaky: bool,
    slow: bool,
}

static MARKERS: Mutex<Markers> = Mutex::new(Markers { checked: None, flaky: false, slow: false });

/// `(flaky, slow)`: whether each marker file exists, looked at most every [`MARKER_CHECK`].
fn markers() -> (bool, bool) {
    let mut markers = MARKERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if markers.checked.is_none_or(|at| at.elapsed() >= MARKER_CHECK) {
        markers.flaky = Path::new(concat!("flaky-", env!("CARGO_CRATE_NAME"))).exists();
        markers.slow = Path::new(concat!("slow-", env!("CARGO_CRATE_NAME"))).exists();
        markers.checked = Some(Instant::now());
    }
    (markers.flaky, markers.slow)
}

async fn work() -> (StatusCode, &'static str) {
    let (flaky, slow) = markers();
    let n = WORK_REQUESTS.fetch_add(1, Ordering::Relaxed);
    if slow {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if flaky && n % 5 == 4 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "flaky: every fifth request fails");
    }
    (StatusCode::OK, VERSION)
}

//! `echo-base`: a test base (built with the `pedestal-base` library) whose routes call the `echo`
//! SPI 1.1.0 through typed `Remote` handles, as a company's own base would.
//!
//! - `GET /typed/{module}/echo?text=T` — `Echo::echo` on that module's implementation;
//! - `GET /typed/{module}/describe` — `Echo::describe` (added in 1.1.0 with a default: a module
//!   built against 1.0.0 answers `UNKNOWN_METHOD` and the default runs here);
//! - `GET /typed/{module}/held?wait_ms=N` — takes the handle, waits N ms (time to uninstall the
//!   module), then calls through the stale handle.
//!
//! Flags: `--listen`, `--admin-listen`, `--data-dir` as `pedestal serve` (others are ignored).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query},
    routing::get,
};
use echo_spi::{Echo, EchoSpi};
use pedestal_base::{Base, Config, Registry};
use pedestal_module_api::SpiError;
use serde::Deserialize;
use serde_json::{Value, json};

fn answer<T: serde::Serialize>(outcome: Result<T, SpiError>) -> Json<Value> {
    Json(match outcome {
        Ok(value) => json!({ "ok": value }),
        Err(error) => json!({ "error": error }),
    })
}

#[derive(Deserialize)]
struct Text {
    text: String,
}

#[derive(Deserialize)]
struct Wait {
    wait_ms: u64,
}

fn routes(registry: Arc<Registry>) -> Router {
    let (echo, describe, held) = (Arc::clone(&registry), Arc::clone(&registry), registry);
    Router::new()
        .route(
            "/typed/{module}/echo",
            get(move |Path(module): Path<String>, Query(q): Query<Text>| async move {
                match echo.implementation::<EchoSpi>(&module) {
                    Ok(remote) => answer(remote.echo(q.text).await),
                    Err(e) => answer::<()>(Err(e)),
                }
            }),
        )
        .route(
            "/typed/{module}/describe",
            get(move |Path(module): Path<String>| async move {
                match describe.implementation::<EchoSpi>(&module) {
                    Ok(remote) => answer(remote.describe().await),
                    Err(e) => answer::<()>(Err(e)),
                }
            }),
        )
        .route(
            "/typed/{module}/held",
            get(move |Path(module): Path<String>, Query(q): Query<Wait>| async move {
                let remote = match held.implementation::<EchoSpi>(&module) {
                    Ok(remote) => remote,
                    Err(e) => return answer::<()>(Err(e)),
                };
                tokio::time::sleep(Duration::from_millis(q.wait_ms)).await;
                answer(remote.echo("still there?".into()).await)
            }),
        )
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let config = Config {
        listen: flag("--listen").map_or(Ok(([127, 0, 0, 1], 0).into()), |a| a.parse::<SocketAddr>())?,
        admin_listen: flag("--admin-listen")
            .map_or(Ok(([127, 0, 0, 1], 0).into()), |a| a.parse::<SocketAddr>())?,
        data_dir: flag("--data-dir").map_or_else(|| "echo-data".into(), Into::into),
        ..Config::default()
    };
    let base = Base::builder(config).spi::<EchoSpi>().routes_with(routes).build()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(base.serve())
}

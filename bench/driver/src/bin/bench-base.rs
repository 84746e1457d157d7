//! A custom base built with the `pedestal-base` library: the universal base plus the benchmark
//! handlers compiled natively at `/native/...`. Started by `pedestal-bench`.
//!
//! `bench-base DATA_DIR [--request-accounting off]`: the flag turns off the base's per-request
//! accounting (latency histograms, the recent error rate), to measure what it costs.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, extract::Query};
use bench_handlers::{Bench, BenchSpi, Echo};
use pedestal_base::{Base, Config, Registry};
use serde::Deserialize;
use serde_json::{Value, json};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data_dir =
        args.first().filter(|a| !a.starts_with("--")).map_or_else(|| "bench-data".into(), PathBuf::from);
    let request_accounting = !args.windows(2).any(|w| w[0] == "--request-accounting" && w[1] == "off");
    let config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        data_dir,
        drain_timeout: Duration::from_secs(5),
        request_accounting,
        ..Config::default()
    };
    let base = Base::builder(config)
        .spi::<BenchSpi>()
        .routes_with(|registry| {
            axum::Router::new().nest("/native", bench_handlers::router()).route(
                "/native/spi-bench",
                axum::routing::get(move |Query(q): Query<SpiBench>| spi_bench(Arc::clone(&registry), q)),
            )
        })
        .build()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(base.serve())
}

#[derive(Deserialize)]
struct SpiBench {
    calls: usize,
    size: usize,
    #[serde(default)]
    fanout: bool,
}

/// Measured inside the base: `calls` sequential SPI round trips (base → module → base) with a
/// payload of `size` bytes — to `bench-module`, or with `fanout` to every implementation at once
/// per call — against the same trait called directly on an in-process implementation.
async fn spi_bench(registry: Arc<Registry>, q: SpiBench) -> Json<Value> {
    let payload = "x".repeat(q.size);
    let mut direct = Vec::with_capacity(q.calls);
    for _ in 0..q.calls {
        let began = Instant::now();
        let answer = Echo.echo(std::hint::black_box(payload.clone())).await;
        std::hint::black_box(answer.ok());
        direct.push(began.elapsed().as_nanos() as f64 / 1000.0);
    }
    let remotes = if q.fanout {
        registry.implementations::<BenchSpi>()
    } else {
        registry.implementation::<BenchSpi>("bench-module").into_iter().collect()
    };
    if remotes.is_empty() {
        return Json(json!({"error": "no bench implementation is running"}));
    }
    let mut remote = Vec::with_capacity(q.calls);
    let mut errors = 0;
    for _ in 0..q.calls {
        let began = Instant::now();
        let answers = futures_util::future::join_all(remotes.iter().map(|r| r.echo(payload.clone()))).await;
        errors += answers.iter().filter(|a| a.as_ref().map_or(true, |echoed| echoed.len() != q.size)).count();
        remote.push(began.elapsed().as_nanos() as f64 / 1000.0);
    }
    let quantile = |values: &mut Vec<f64>, q: f64| {
        values.sort_by(f64::total_cmp);
        values[((values.len() - 1) as f64 * q).round() as usize]
    };
    Json(json!({
        "implementations": remotes.len(),
        "direct_p50_us": quantile(&mut direct, 0.5),
        "direct_p99_us": quantile(&mut direct, 0.99),
        "spi_p50_us": quantile(&mut remote, 0.5),
        "spi_p99_us": quantile(&mut remote, 0.99),
        "errors": errors,
    }))
}

//! The benchmark handlers as a module, mounted at `/bench-module/`. Run with `cargo xtask bench`.
//!
//! Besides the shared handlers it measures, from inside the module, what only a module can:
//! `/m2m?calls=N&size=S&target=T` calls `BenchSpi::echo` on module `T` through the base (a
//! module-to-module round trip) and on a local implementation; `/kv?calls=N&size=S` times
//! `kv::put` and `kv::get`.

use std::time::{Duration, Instant};

use axum::{Json, Router, extract::Query, routing::get};
use bench_handlers::{Bench as BenchSpiTrait, BenchSpi, Echo};
use pedestal_module_api::{
    Module, SpiError, export_module, kv,
    serde_json::{Value, json},
    spi,
};

struct Bench;

impl Module for Bench {
    fn router(&self) -> Router {
        bench_handlers::router().route("/m2m", get(module_to_module)).route("/kv", get(key_value))
    }
}

impl BenchSpiTrait for Bench {
    async fn echo(&self, payload: String) -> Result<String, SpiError> {
        Echo.echo(payload).await
    }
}

export_module!(Bench, provides = [BenchSpi]);

#[derive(serde::Deserialize)]
struct Params {
    calls: usize,
    size: usize,
    target: Option<String>,
}

/// p50 and p99 in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        samples.get(((samples.len() as f64 - 1.0) * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    (at(0.5), at(0.99))
}

async fn module_to_module(Query(params): Query<Params>) -> Json<Value> {
    let payload = "x".repeat(params.size);
    let remote = spi::implementation::<BenchSpi>(params.target.as_deref().unwrap_or("bench-module"));
    let (mut through_base, mut direct, mut errors) = (Vec::new(), Vec::new(), 0);
    for _ in 0..params.calls {
        let began = Instant::now();
        if remote.echo(payload.clone()).await.is_err() {
            errors += 1;
        }
        through_base.push(began.elapsed());
    }
    for _ in 0..params.calls {
        let began = Instant::now();
        let _ = std::hint::black_box(Echo.echo(payload.clone()).await);
        direct.push(began.elapsed());
    }
    let ((spi_p50, spi_p99), (direct_p50, direct_p99)) = (percentiles(through_base), percentiles(direct));
    Json(json!({
        "errors": errors,
        "spi_p50_us": spi_p50, "spi_p99_us": spi_p99,
        "direct_p50_us": direct_p50, "direct_p99_us": direct_p99,
    }))
}

async fn key_value(Query(params): Query<Params>) -> Json<Value> {
    let value = vec![b'v'; params.size];
    let (mut puts, mut gets, mut errors) = (Vec::new(), Vec::new(), 0);
    for i in 0..params.calls {
        let key = format!("bench/{}", i % 100);
        let began = Instant::now();
        errors += usize::from(kv::put(&key, &value).await.is_err());
        puts.push(began.elapsed());
        let began = Instant::now();
        errors += usize::from(kv::get(&key).await.is_err());
        gets.push(began.elapsed());
    }
    let ((put_p50, put_p99), (get_p50, get_p99)) = (percentiles(puts), percentiles(gets));
    Json(json!({
        "errors": errors,
        "put_p50_us": put_p50, "put_p99_us": put_p99,
        "get_p50_us": get_p50, "get_p99_us": get_p99,
    }))
}

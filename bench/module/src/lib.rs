//! The benchmark handlers as a module, mounted at `/bench-module/`. Run with `cargo xtask bench`.

use axum::Router;
use bench_handlers::{Bench as BenchSpiTrait, BenchSpi, Echo};
use pedestal_module_api::{Module, SpiError, export_module};

struct Bench;

impl Module for Bench {
    fn router(&self) -> Router {
        bench_handlers::router()
    }
}

impl BenchSpiTrait for Bench {
    async fn echo(&self, payload: String) -> Result<String, SpiError> {
        Echo.echo(payload).await
    }
}

export_module!(Bench, provides = [BenchSpi]);

//! The benchmark handlers as a module, mounted at `/bench-module/`. Run with `cargo xtask bench`.

use axum::Router;
use pedestal_module_api::{Module, export_module};

struct Bench;

impl Module for Bench {
    fn router(&self) -> Router {
        bench_handlers::router()
    }
}

export_module!(Bench);

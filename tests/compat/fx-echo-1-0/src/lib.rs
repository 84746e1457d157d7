//! Fixture: implements the `echo` SPI as declared at 1.0.0 — no `describe`, no `Echoed::length`.
//! A caller built against 1.1.0 must still call it, and get `describe`'s default.

use std::time::Duration;

use echo_spi::{Echo, EchoSpi, Echoed};
use pedestal_module_api::{Module, SpiError, axum::Router, export_module};

struct EchoModule;

impl Module for EchoModule {
    fn router(&self) -> Router {
        Router::new()
    }
}

impl Echo for EchoModule {
    async fn echo(&self, text: String) -> Result<Echoed, SpiError> {
        Ok(Echoed { text, by: env!("CARGO_PKG_NAME").into() })
    }

    async fn fail(&self, code: String) -> Result<(), SpiError> {
        Err(SpiError::new(code, "failing on request"))
    }

    async fn boom(&self) -> Result<(), SpiError> {
        panic!("boom on request")
    }

    async fn slow(&self, ms: u64) -> Result<String, SpiError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(format!("slept {ms} ms"))
    }
}

export_module!(EchoModule, provides = [EchoSpi]);

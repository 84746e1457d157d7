//! The benchmark's handlers. The same code is compiled into `bench-module` (a Pedestal module)
//! and natively into `bench-base` (at `/native/...`), so the two can be compared side by side.

use std::hint::black_box;

use axum::{Router, routing::get};
use pedestal_module_api::SpiError;

pedestal_module_api::spi! {
    /// What the SPI benchmark calls: the payload back.
    #[spi(name = "bench", version = "1.0.0", id = BenchSpi)]
    pub trait Bench {
        /// Answers `payload`.
        async fn echo(&self, payload: String) -> Result<String, SpiError>;
    }
}

/// The [`Bench`] implementation: inside `bench-module`, and in the base itself for the direct,
/// in-process comparison.
#[derive(Debug, Clone, Copy)]
pub struct Echo;

impl Bench for Echo {
    async fn echo(&self, payload: String) -> Result<String, SpiError> {
        Ok(payload)
    }
}

/// `/empty` answers at once; `/work` does about 20 µs of CPU work first.
pub fn router() -> Router {
    Router::new().route("/empty", get(|| async { "" })).route("/work", get(|| async { work().to_string() }))
}

/// Bytes hashed by [`work`]; sized for roughly 20 µs on the benchmark machine (the driver
/// measures and reports the real figure).
pub const WORK_BYTES: usize = 24 * 1024;

/// FNV-1a over [`WORK_BYTES`] bytes: fixed, allocation-free CPU work.
pub fn work() -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..WORK_BYTES {
        hash ^= black_box(i as u64 & 0xff);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}

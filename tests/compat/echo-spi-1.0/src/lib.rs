//! The `echo` SPI 1.0.0, frozen (`tests/spis/echo-spi` is 1.1.0).

use pedestal_module_api::SpiError;
use serde::{Deserialize, Serialize};

pedestal_module_api::spi! {
    /// Echoes text back, and fails or panics on request.
    #[spi(name = "echo", version = "1.0.0", id = EchoSpi)]
    pub trait Echo {
        /// The text back, and who answered.
        async fn echo(&self, text: String) -> Result<Echoed, SpiError>;
        /// Fails with the given code.
        async fn fail(&self, code: String) -> Result<(), SpiError>;
        /// Panics.
        async fn boom(&self) -> Result<(), SpiError>;
        /// Answers after `ms` milliseconds.
        async fn slow(&self, ms: u64) -> Result<String, SpiError>;
    }
}

/// What `echo` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echoed {
    /// The text.
    pub text: String,
    /// The module that answered.
    pub by: String,
}

//! A test SPI, `echo` 1.1.0. Version 1.1.0 added `describe` (with a default) and the optional
//! `Echoed::length` field; a module built against 1.0.0 must keep working with a 1.1.0 caller.

use pedestal_module_api::SpiError;
use serde::{Deserialize, Serialize};

pedestal_module_api::spi! {
    /// Echoes text back, and fails or panics on request.
    #[spi(name = "echo", version = "1.1.0", id = EchoSpi)]
    pub trait Echo {
        /// The text back, and who answered.
        async fn echo(&self, text: String) -> Result<Echoed, SpiError>;
        /// Fails with the given code.
        async fn fail(&self, code: String) -> Result<(), SpiError>;
        /// Panics.
        async fn boom(&self) -> Result<(), SpiError>;
        /// Answers after `ms` milliseconds.
        async fn slow(&self, ms: u64) -> Result<String, SpiError>;
        /// Added in 1.1.0: what this implementation is.
        async fn describe(&self) -> Result<String, SpiError> {
            let echoed = self.echo("describe".into()).await?;
            Ok(format!("an echo by {} (default description)", echoed.by))
        }
    }
}

/// What `echo` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echoed {
    /// The text.
    pub text: String,
    /// The module that answered.
    pub by: String,
    /// Added in 1.1.0: the text's length.
    #[serde(default)]
    pub length: Option<usize>,
}

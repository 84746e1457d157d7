//! `pedestal.spis`: which running modules implement an SPI, for modules that choose among
//! implementations themselves.

use std::sync::Arc;

use pedestal_module_api::{
    SpiError,
    spi::{Implementor, decode, encode},
};
use semver::Version;

use super::{Call, Service};
use crate::registry::{Registry, compatible};

/// Answers `implementors [spi, version]` with the compatible implementations.
#[derive(Debug)]
pub struct SpisService;

impl SpisService {
    fn implementors(registry: &Registry, method: &str, payload: &[u8]) -> Result<Vec<u8>, SpiError> {
        if method != "implementors" {
            return Err(SpiError::new(
                SpiError::UNKNOWN_METHOD,
                format!("pedestal.spis has no method {method}"),
            ));
        }
        let (spi, version): (String, String) = decode(payload)?;
        let wanted = Version::parse(&version)
            .map_err(|e| SpiError::new(SpiError::BAD_PAYLOAD, format!("SPI version {version:?}: {e}")))?;
        let found: Vec<Implementor> = registry
            .implementors_for_calls(&spi)
            .iter()
            .filter_map(|i| {
                let spi_version = i.provided_version(&spi).filter(|v| compatible(v, &wanted))?;
                Some(Implementor {
                    module: i.id.name.clone(),
                    version: i.id.version.to_string(),
                    spi_version: spi_version.to_string(),
                })
            })
            .collect();
        encode(&found)
    }
}

impl Service for SpisService {
    fn name(&self) -> &'static str {
        "pedestal.spis"
    }

    fn call(self: Arc<Self>, call: Call) {
        let result = Self::implementors(call.registry(), call.method(), call.payload());
        call.answer(result);
    }
}

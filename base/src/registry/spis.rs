//! Calling the SPIs modules implement, and checking their versions at install.
//!
//! An implementation is the active version of a module that declares the SPI. A caller gets
//! [`Remote`] handles: each call goes to the module's instance as a message (see
//! `pedestal_module_api::spi`), so the caller never runs module code and never holds anything of
//! the module's. A handle whose module was unloaded answers `MODULE_GONE`; an uninstall drains
//! calls in flight like requests.

use std::{sync::Arc, time::Duration};

use pedestal_module_api::spi::{BoxFuture, Remote, Spi, SpiError, Transport};
use semver::Version;

use super::Registry;
use crate::{
    error::{Error, Result},
    instance::{Instance, ModuleId},
    sync::lock,
};

/// Reaches one module instance.
struct InstanceTransport {
    instance: Arc<Instance>,
    timeout: Duration,
}

impl Transport for InstanceTransport {
    fn call(
        &self,
        spi: &'static str,
        method: &'static str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, SpiError>> {
        Box::pin(self.instance.call_spi(spi, method, payload, self.timeout))
    }

    fn target(&self) -> String {
        self.instance.id.to_string()
    }
}

/// Whether a module built against SPI version `module` works with a base that declares `base`:
/// the same major (and, before 1.0, the same minor); minors evolve in both directions.
pub fn compatible(module: &Version, base: &Version) -> bool {
    module.major == base.major && (base.major != 0 || module.minor == base.minor)
}

impl Registry {
    /// Declares that this base calls SPI `S`: modules implementing another major version of it
    /// are refused at install (`SPI_INCOMPATIBLE`).
    pub fn declare_spi<S: Spi>(&self) {
        self.declare_spi_version(S::NAME, S::VERSION);
    }

    /// [`Registry::declare_spi`] by name and version.
    pub fn declare_spi_version(&self, name: &str, version: &str) {
        let version = Version::parse(version).expect("an SPI version is semver");
        lock(&self.declared_spis).insert(name.to_owned(), version);
    }

    /// The SPIs this base declares, with their versions.
    pub fn declared_spis(&self) -> Vec<(String, Version)> {
        lock(&self.declared_spis).iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// Refuses an instance implementing a declared SPI in an incompatible version.
    pub(crate) fn check_spis(&self, instance: &Instance) -> Result<()> {
        let declared = lock(&self.declared_spis);
        for (spi, version) in &instance.provides {
            if let Some(base) = declared.get(spi).filter(|base| !compatible(version, base)) {
                return Err(Error::SpiIncompatible {
                    id: Box::new(instance.id.clone()),
                    spi: spi.clone(),
                    module: version.to_string(),
                    base: base.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The instances that implement SPI `name`: the active version of each module declaring it,
    /// in module-name order.
    pub fn implementors(&self, name: &str) -> Vec<Arc<Instance>> {
        let routes = self.routes();
        let mut found: Vec<_> =
            routes.values().filter_map(|route| route.active.clone()).filter(|i| i.provides(name)).collect();
        found.sort_by(|a, b| a.id.name.cmp(&b.id.name));
        found
    }

    fn remote<S: Spi>(&self, instance: Arc<Instance>) -> Remote<S> {
        let timeout = instance.limits().request_timeout();
        Remote::new(Arc::new(InstanceTransport { instance, timeout }))
    }

    /// Every implementation of SPI `S` (the active version of each module that implements it).
    pub fn implementations<S: Spi>(&self) -> Vec<Remote<S>> {
        self.implementors(S::NAME).into_iter().map(|i| self.remote(i)).collect()
    }

    /// The implementation of SPI `S` by module `module`.
    pub fn implementation<S: Spi>(&self, module: &str) -> Result<Remote<S>, SpiError> {
        self.select::<S>(|id| id.name == module)
    }

    /// The first implementation of SPI `S` whose module `pick` accepts.
    pub fn select<S: Spi>(&self, pick: impl Fn(&ModuleId) -> bool) -> Result<Remote<S>, SpiError> {
        let instance = self.implementors(S::NAME).into_iter().find(|i| pick(&i.id)).ok_or_else(|| {
            SpiError::new(
                SpiError::NOT_IMPLEMENTED,
                format!("no running module implements {} that way", S::NAME),
            )
        })?;
        Ok(self.remote(instance))
    }
}

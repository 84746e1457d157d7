//! Reinstalling from the artifact store, and rolling a module back to the build that had its
//! traffic before the last switch, replace or hand-over.

use std::sync::Arc;

use super::{InstallOptions, Installed, Registry, Strategy, durable::Load};
use crate::{
    error::{Error, Result},
    instance::Instance,
    sync::lock,
};

/// What a rollback did.
#[derive(Debug)]
pub struct RolledBack {
    /// The instance that now takes the traffic.
    pub instance: Arc<Instance>,
    /// The one that had it: still loaded and inactive after a switch, unloaded after a reinstall.
    pub from: Option<Arc<Instance>>,
    /// `switched` (the build was still loaded) or `reinstalled` (from the store).
    pub how: &'static str,
}

impl Registry {
    /// Loads a stored artifact again, by its sha256 (an artifact unloaded by a replace stays in
    /// the store for a while): as an upload of the same bytes would, signature and quarantine
    /// checks included, without sending them again.
    pub fn install_stored(&self, sha256: &str, options: &InstallOptions) -> Result<Installed> {
        let sha256 = sha256.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Sha256Invalid { value: sha256 });
        }
        self.check_install(options)?;
        if !options.retry_quarantined {
            self.refuse_quarantined(&sha256, options.name.as_deref())?;
        }
        // Held shared like an upload's: garbage collection cannot delete it under the load.
        let in_use = self.artifacts_in_use.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let artifact = self.stored_artifact(&sha256)?;
        let launched = self.launch_artifact(artifact, options, Load::Install);
        drop(in_use);
        launched
    }

    /// Returns `name` to the build that had its traffic before the last switch, replace or
    /// hand-over: a switch when that build still runs, else a replace by its stored artifact.
    pub fn rollback(&self, name: &str) -> Result<RolledBack> {
        let previous = {
            let modules = lock(&self.modules);
            let versions = modules
                .get(name)
                .filter(|v| v.instances.values().any(|i| i.state().is_live()))
                .ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
            versions.previous.clone().ok_or_else(|| Error::NoPreviousVersion { name: name.to_owned() })?
        };
        let running = self.find(name, &previous.version).ok().filter(|i| i.state().is_live());
        if let Some(running) = running.filter(|i| i.artifact.sha256 == previous.sha256) {
            if running.state() == crate::instance::State::Active {
                return Err(Error::NoPreviousVersion { name: name.to_owned() });
            }
            let (instance, from) = self.switch(name, &previous.version)?;
            return Ok(RolledBack { instance, from, how: "switched" });
        }
        let options = InstallOptions {
            name: Some(name.to_owned()),
            strategy: Strategy::Replace,
            ..InstallOptions::default()
        };
        let installed = self.install_stored(&previous.sha256, &options).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound {
                what: format!(
                    "artifact {} of {name}@{} (no longer in the store: reinstall it by uploading it)",
                    previous.sha256, previous.version
                ),
            },
            other => other,
        })?;
        Ok(RolledBack { instance: installed.instance, from: installed.replaced, how: "reinstalled" })
    }
}

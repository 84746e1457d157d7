//! Applying assignments with the registry: what runs is made what the assignments say, one
//! module at a time, on blocking threads (every registry call here blocks).
//!
//! Per module: the assigned version and sha256 already active, alone → nothing (its limits
//! checked). Otherwise fetch the bytes (the store first), install them beside what runs (the
//! same version with other bytes: the base's replace strategy, but only once an install beside
//! was refused because the bytes are that version), make them serve (`switch`),
//! then drain and unload every other version. A failure leaves nothing new serving: an install
//! that failed loaded nothing, and a version installed here whose switch failed is unloaded.
//!
//! With a canary (`Assignment::canary`): the previous release and the new version both run,
//! the previous one active, and the traffic is split by weight (`Registry::set_weights`). The
//! order keeps every request answered: the new version is installed (started) before it gets
//! weight, and the weights are set before any other version is unloaded. Without one, a base
//! that split its traffic goes back to one version (a switch, or empty weights, clears the
//! split). A canary whose previous release is of the assigned version (other bytes) cannot
//! apply, a base holding one instance per version: it is treated as no canary.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use pedestal_base::{Dependents, InstallOptions, Registry, State, Strategy};
use semver::Version;
use serde::{Deserialize, Serialize};

use super::artifacts::{self, Source};
use crate::model::{Assignment, Canary, Release};

/// The file the applied revisions are kept in, under the data directory.
pub(crate) const APPLIED_FILE: &str = "fleet-applied.json";

/// An assignment and its etcd mod_revision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Desired {
    pub(crate) assignment: Assignment,
    pub(crate) revision: i64,
}

/// What the agent applied, per module (`<data-dir>/fleet-applied.json`): an assignment with a
/// lower revision than the one recorded is never applied, across restarts too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub(crate) modules: BTreeMap<String, AppliedModule>,
}

/// One module's applied assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AppliedModule {
    pub(crate) revision: i64,
    pub(crate) version: String,
    pub(crate) sha256: String,
}

impl Applied {
    /// The file under `data_dir`.
    pub(crate) fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(APPLIED_FILE)
    }

    /// The recorded applications: none when there is no file. An unreadable (corrupt) file is
    /// logged as an error and moved aside to `fleet-applied.json.corrupt` (for an operator to
    /// look at), and the agent starts from no applied assignment: until it applies again, no
    /// assignment is stale. A file that cannot be read at all is logged and treated as none.
    pub(crate) fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                let aside = path.with_extension("json.corrupt");
                let moved = match std::fs::rename(path, &aside) {
                    Ok(()) => format!("moved aside to {}", aside.display()),
                    Err(e) => format!("could not be moved aside to {}: {e}", aside.display()),
                };
                tracing::error!(
                    file = %path.display(),
                    "unreadable ({e}); {moved}; starting from no applied assignment: stale \
                     assignments are not recognised until the agent applies again"
                );
                Self::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(e) => {
                tracing::error!(file = %path.display(), "cannot read, starting from no applied assignment: {e}");
                Self::default()
            }
        }
    }

    /// Writes the file durably: a temporary file, synced, renamed over it, and the directory
    /// synced.
    pub(crate) fn save(&self, path: &Path) {
        use std::io::Write;
        let temporary = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let mut file = std::fs::File::create(&temporary)?;
                file.write_all(&bytes)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, path))
            .and_then(|()| match path.parent() {
                Some(dir) => std::fs::File::open(dir).and_then(|d| d.sync_all()),
                None => Ok(()),
            });
        if let Err(e) = written {
            tracing::error!(file = %path.display(), "cannot record the applied assignments: {e}");
        }
    }

    /// The highest revision applied.
    pub(crate) fn revision(&self) -> i64 {
        self.modules.values().map(|m| m.revision).max().unwrap_or_default()
    }

    /// Whether `desired` is older than what was applied for `module`.
    pub(crate) fn is_stale(&self, module: &str, desired: &Desired) -> bool {
        self.modules.get(module).is_some_and(|applied| desired.revision < applied.revision)
    }
}

/// Why an assignment was not applied: a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Nack {
    pub(crate) code: String,
    pub(crate) message: String,
}

impl From<pedestal_base::Error> for Nack {
    fn from(e: pedestal_base::Error) -> Self {
        Self { code: e.code().to_owned(), message: e.to_string() }
    }
}

fn invalid(message: String) -> Nack {
    Nack { code: "ASSIGNMENT_INVALID".into(), message }
}

/// The canary an assignment asks for, when it can apply: a `previous` release of the same
/// version as the new one (other bytes of one version) cannot run beside it, since a base holds
/// one instance per version; such an assignment is applied as if it had no canary (the new
/// bytes replace the old ones).
pub(crate) fn canary_of(assignment: &Assignment) -> Option<&Canary> {
    assignment.canary.as_ref().filter(|c| c.previous.version != assignment.version)
}

/// The traffic weights `canary` splits a module into: `previous` takes what the new version
/// does not.
fn weights_of(canary: &Canary, version: &Version, previous: &Version) -> BTreeMap<Version, u32> {
    let weight = canary.weight.min(100);
    BTreeMap::from([(previous.clone(), 100 - weight), (version.clone(), weight)])
}

/// Whether `module` runs exactly what `assignment` says: that version with that sha256 active
/// and alone, with its limits; with a canary, the previous release active beside the new one,
/// both started, and the traffic split by the canary's weight.
pub(crate) fn is_satisfied(registry: &Registry, module: &str, assignment: &Assignment) -> bool {
    let Ok((instances, active)) = registry.module(module) else { return false };
    let Ok(version) = Version::parse(&assignment.version) else { return false };
    let runs = |version: &Version, sha256: &str| {
        instances.iter().any(|i| {
            i.id.version == *version
                && i.artifact.sha256 == sha256
                && matches!(i.state(), State::Active | State::Inactive)
        })
    };
    let settings = registry.limit_overrides(module) == assignment.limits.unwrap_or_default()
        && registry.module_configs().overlay(module) == assignment.config;
    match canary_of(assignment) {
        None => {
            active.as_ref() == Some(&version)
                && instances.len() == 1
                && runs(&version, &assignment.sha256)
                && instances[0].state() == State::Active
                && registry.weights(module).is_none()
                && settings
        }
        Some(canary) => {
            let Ok(previous) = Version::parse(&canary.previous.version) else { return false };
            active.as_ref() == Some(&previous)
                && instances.len() == 2
                && runs(&previous, &canary.previous.sha256)
                && runs(&version, &assignment.sha256)
                && registry.weights(module) == Some(weights_of(canary, &version, &previous))
                && settings
        }
    }
}

/// Makes `module` run `assignment` (see the module docs): its bytes fetched from `sources`,
/// a canary's previous release's from `previous_sources`. Blocking.
pub(crate) fn apply(
    registry: &Registry,
    module: &str,
    assignment: &Assignment,
    sources: &[Source],
    previous_sources: &[Source],
    token: &str,
) -> Result<(), Nack> {
    let release = Release {
        version: assignment.version.clone(),
        sha256: assignment.sha256.clone(),
        url: assignment.url.clone(),
    };
    let version = parse_release(&release)?.0;
    let canary = canary_of(assignment)
        .map(|canary| parse_release(&canary.previous).map(|(previous, _)| (canary, previous)))
        .transpose()?;
    // Before any install: a new instance reads its configuration when it starts. Running
    // instances of the module get the new values at once.
    registry.set_module_config(module, Some(assignment.config.clone()));
    let (_, active) = registry.module(module).unwrap_or_default();
    // The version that keeps (or takes) the module's traffic, and those that stay.
    let (serving, kept) = match &canary {
        None => (version.clone(), vec![version.clone()]),
        Some((_, previous)) => (previous.clone(), vec![previous.clone(), version.clone()]),
    };
    let mut installed_here = Vec::new();
    if let Some((canary, previous)) = &canary {
        // The old release first: it is what serves. Usually it runs already.
        if install(registry, module, &canary.previous, previous, previous_sources, token)? {
            installed_here.push(previous.clone());
        }
    }
    // The new version is installed (started) before it gets any traffic.
    match install(registry, module, &release, &version, sources, token) {
        Ok(true) => installed_here.push(version.clone()),
        Ok(false) => {}
        Err(nack) => {
            undo(registry, module, &installed_here);
            return Err(nack);
        }
    }
    let (_, now_active) = registry.module(module)?;
    if now_active.as_ref() != Some(&serving) {
        // A switch clears the module's weights: a base that split its traffic goes back to one
        // version.
        if let Err(e) = registry.switch(module, &serving) {
            undo(registry, module, &installed_here);
            return Err(e.into());
        }
        tracing::info!(module, version = %serving, previous = ?active, "assignment serving");
    }
    // The weights are set before anything is unloaded: no request is routed to a version on
    // its way out.
    let weights = match &canary {
        Some((canary, previous)) => weights_of(canary, &version, previous),
        None => BTreeMap::new(),
    };
    if registry.weights(module).unwrap_or_default() != weights {
        registry.set_weights(module, weights.clone())?;
        tracing::info!(module, ?weights, "assignment traffic split");
    }
    let (instances, _) = registry.module(module)?;
    for other in instances.iter().filter(|i| !kept.contains(&i.id.version)) {
        registry.uninstall_checked(module, &other.id.version, Dependents::Protect)?;
        tracing::info!(module, version = %other.id.version, "unassigned version unloaded");
    }
    let limits = assignment.limits.unwrap_or_default();
    if registry.limit_overrides(module) != limits {
        registry.set_limit_overrides(module, limits)?;
    }
    Ok(())
}

/// A release's version and digest, or why it is no release.
fn parse_release(release: &Release) -> Result<(Version, [u8; 32]), Nack> {
    let version = Version::parse(&release.version)
        .map_err(|e| invalid(format!("version {:?}: {e}", release.version)))?;
    let digest = pedestal_base::signing::parse_sha256(&release.sha256)
        .map_err(|e| invalid(format!("sha256 {:?}: {e}", release.sha256)))?;
    Ok((version, digest))
}

/// Unloads the versions this apply installed (it failed: nothing new stays).
fn undo(registry: &Registry, module: &str, installed_here: &[Version]) {
    for version in installed_here {
        let _ = registry.uninstall_checked(module, version, Dependents::Abandon);
    }
}

/// Makes `release` (of version `version`) run beside what runs, fetching its bytes if needed:
/// whether it was installed here (`false`: it ran already, or replaced other bytes of its
/// version). The same version with other bytes is replaced (a canary's two releases are of two
/// versions, so this never replaces the other one).
fn install(
    registry: &Registry,
    module: &str,
    release: &Release,
    version: &Version,
    sources: &[Source],
    token: &str,
) -> Result<bool, Nack> {
    let (_, digest) = parse_release(release)?;
    let (instances, _) = registry.module(module).unwrap_or_default();
    let present = instances.iter().any(|i| {
        i.id.version == *version
            && i.artifact.sha256 == release.sha256
            && matches!(i.state(), State::Active | State::Inactive)
    });
    if present {
        return Ok(false);
    }
    let bytes = artifacts::fetch(registry, &release.sha256, sources, token)
        .map_err(|u| Nack { code: u.code.into(), message: u.message })?;
    let same_version = instances.iter().any(|i| i.id.version == *version && i.state().is_live());
    let options = |strategy| InstallOptions {
        name: Some(module.to_owned()),
        strategy,
        sha256: Some(digest),
        ..InstallOptions::default()
    };
    let mismatch = |found: &Version| {
        invalid(format!("the artifact {} is {module}@{found}, the assignment says {version}", release.sha256))
    };
    // Installed beside what runs first, whatever the bytes declare: bytes of another version
    // than assigned never touch the running ones. Bytes of the assigned version, which runs
    // with other bytes, are refused before anything of them starts (`ALREADY_INSTALLED`): only
    // then, their version known, are they the replacement.
    let (installed, replaced) = match registry.install_with(&bytes, &options(Strategy::Install)) {
        Err(pedestal_base::Error::AlreadyInstalled { id }) if id.version == *version && same_version => {
            (registry.install_with(&bytes, &options(Strategy::Replace))?, true)
        }
        Err(pedestal_base::Error::AlreadyInstalled { id }) if id.version != *version => {
            return Err(mismatch(&id.version));
        }
        other => (other?, false),
    };
    if installed.instance.id.version != *version {
        let found = installed.instance.id.version.clone();
        if !replaced {
            let _ = registry.uninstall_checked(module, &found, Dependents::Abandon);
        }
        return Err(mismatch(&found));
    }
    tracing::info!(module, %version, sha256 = %release.sha256, "assignment installed");
    Ok(!replaced)
}

/// Uninstalls every version of `module` (its assignment was deleted). Blocking.
pub(crate) fn remove(registry: &Registry, module: &str) -> Result<(), Nack> {
    let Ok((instances, active)) = registry.module(module) else { return Ok(()) };
    // The inactive versions first: the active one goes last, so no request finds none.
    let mut versions: Vec<Version> = instances.iter().map(|i| i.id.version.clone()).collect();
    versions.sort_by_key(|v| Some(v) == active.as_ref());
    for version in versions {
        match registry.uninstall_checked(module, &version, Dependents::Protect) {
            Ok(_) | Err(pedestal_base::Error::NotFound { .. }) => {
                tracing::info!(module, %version, "assignment deleted: uninstalled");
            }
            Err(e) => return Err(e.into()),
        }
    }
    registry.set_module_config(module, None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(revision: i64) -> Desired {
        Desired {
            assignment: Assignment {
                module: "echo".into(),
                version: "1.0.0".into(),
                sha256: "00".repeat(32),
                url: None,
                limits: None,
                config: Default::default(),
                generation: 1,
                canary: None,
            },
            revision,
        }
    }

    #[test]
    fn an_older_revision_than_the_applied_one_is_stale_across_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = Applied::path(dir.path());
        assert_eq!(Applied::load(&path), Applied::default());
        let mut applied = Applied::default();
        applied.modules.insert(
            "echo".into(),
            AppliedModule { revision: 40, version: "1.0.0".into(), sha256: "00".repeat(32) },
        );
        applied.save(&path);
        let applied = Applied::load(&path);
        assert_eq!(applied.revision(), 40);
        assert!(applied.is_stale("echo", &desired(39)));
        assert!(!applied.is_stale("echo", &desired(40)));
        assert!(!applied.is_stale("echo", &desired(41)));
        assert!(!applied.is_stale("other", &desired(1)));
    }

    #[test]
    fn an_unreadable_record_counts_as_none_and_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = Applied::path(dir.path());
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(Applied::load(&path), Applied::default());
        assert!(!path.exists(), "moved aside");
        assert_eq!(std::fs::read_to_string(path.with_extension("json.corrupt")).unwrap(), "{not json");
    }
}

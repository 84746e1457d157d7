//! What the base hosts, kept on disk so a restarted base restores it before it reports ready.
//!
//! `<data-dir>/state.json` records every running instance (identity, artifact hash, the name it
//! was installed under), the active version and traffic weights of each module, the API's limit
//! overrides and the quarantined modules. It is rewritten whole after every acknowledged change
//! (temporary file, `fsync`, rename, `fsync` of the directory), so after `kill -9` — or a power
//! cut — at any moment it holds either the state before a change or after it.
//!
//! Crash-loop quarantine: before a library is loaded, a marker naming it is written under
//! `<data-dir>/loading/`, and removed once its start hook finished (either way). A marker found at
//! boot means the base process died while loading or starting that module (a segfault or an
//! abort in its constructor or start hook): it is not loaded again but marked `quarantined`,
//! until an operator retries it.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{InstallOptions, Registry, policy};
use crate::{
    artifact::write_atomically,
    error::{Error, Result},
    instance::{Instance, State},
    limits::LimitOverrides,
    sync::lock,
};

const STATE_FILE: &str = "state.json";
/// How long an artifact nothing refers to is kept (for a quick reinstall or rollback).
const ARTIFACT_GRACE: Duration = Duration::from_secs(600);
const FORMAT: u32 = 1;

/// The contents of `state.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    modules: Vec<Record>,
    #[serde(default)]
    weights: BTreeMap<String, BTreeMap<String, u32>>,
    #[serde(default)]
    limit_overrides: BTreeMap<String, LimitOverrides>,
    #[serde(default)]
    quarantined: Vec<Quarantined>,
    /// Restores in a row that died while loading a module and left no crash record, per
    /// `sha256/install name`: cleared by the first restore that completes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    restore_deaths: BTreeMap<String, u32>,
    /// Per module, what a rollback returns to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    previous: BTreeMap<String, PreviousRecord>,
}

/// A module's rollback record (`Versions::previous`): the build that had its traffic before
/// the last switch, replace or hand-over. Its artifact is kept in the store while recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PreviousRecord {
    version: String,
    sha256: String,
}

/// Restores in a row that may die inside one module's load, with no crash record, before the
/// module is quarantined anyway: one is an operator's `kill -9`; two in a row is a module that
/// kills the process in a way no handler sees (the OOM killer, a stack overflow on a thread
/// without a signal stack).
const RESTORE_DEATHS: u32 = 2;

/// One running instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    version: String,
    sha256: String,
    /// Installed under `name` rather than its package's name.
    renamed: bool,
    active: bool,
    #[serde(default)]
    deactivated: bool,
    /// The SPIs it implements and calls: the restore starts implementations first.
    #[serde(default)]
    provides: Vec<String>,
    #[serde(default)]
    requires: Vec<String>,
}

impl Record {
    /// The record of a running instance; `active` when it is its module's active version.
    fn of(instance: &Instance, active: bool) -> Self {
        Record {
            name: instance.id.name.clone(),
            version: instance.id.version.to_string(),
            sha256: instance.artifact.sha256.clone(),
            renamed: instance.id.name != instance.package,
            active: active && instance.state() == State::Active,
            deactivated: instance.is_deactivated(),
            provides: instance.provides.iter().map(|(spi, _)| spi.clone()).collect(),
            requires: instance.requires.iter().map(|(spi, _)| spi.clone()).collect(),
        }
    }

    /// The name it was installed under when that is not its package's name.
    fn install_name(&self) -> Option<&str> {
        self.renamed.then_some(self.name.as_str())
    }
}

/// Records `state.json` keeps while the instance they describe is being replaced.
#[derive(Debug, Default)]
pub(super) struct HeldRecords(std::sync::Mutex<Vec<Record>>);

/// Whether quarantine entry `q` covers the recorded instance `record`. An entry whose module name
/// was never known (the base died inside the library's constructors) covers only the install
/// it was made for — the same artifact under the same install name — never the other tenants of
/// that artifact.
fn covers(q: &Quarantined, sha256: &str, name: &str, install_name: Option<&str>) -> bool {
    q.sha256 == sha256
        && match &q.name {
            Some(quarantined) => quarantined == name || q.install_name.as_deref() == Some(name),
            None => q.install_name.as_deref() == install_name,
        }
}

/// Whether quarantine entry `q` keeps out a new install of artifact `sha256` under
/// `install_name` (`None`: under its package's name), decided before the library is loaded (so
/// its module name is not known yet). An entry whose module name was never known (the base died
/// in the library's loading or constructors, which do not depend on the name it is installed
/// under) keeps out the bytes under every name; one that crashed later keeps out the same bytes
/// installed the same way. (Restoring the other tenants already recorded is `covers`' business.)
fn blocks_install(q: &Quarantined, sha256: &str, install_name: Option<&str>) -> bool {
    q.sha256 == sha256
        && (q.name.is_none()
            || q.install_name.as_deref() == install_name
            || install_name.is_some() && q.name.as_deref() == install_name)
}

/// How an operator retries quarantined `name@version`, or the artifact `sha256` (installed under
/// `install_name`) when the base died before its identity was known.
pub(super) fn retry_hint(
    name: Option<&str>,
    version: Option<&str>,
    sha256: &str,
    install_name: Option<&str>,
) -> String {
    match (name, version) {
        (Some(name), Some(version)) => format!("retry with POST /api/v1/modules/{name}/{version}/retry"),
        _ => {
            let query = install_name.map(|n| format!("?name={n}")).unwrap_or_default();
            format!("retry with POST /api/v1/artifacts/{sha256}/retry{query}")
        }
    }
}

/// What an operator's retry names (see `Registry::retry_as_operator`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RetryTarget<'a> {
    /// `POST /api/v1/modules/{name}/{version}/retry`.
    Module(&'a str, &'a Version),
    /// `POST /api/v1/artifacts/{sha256}/retry[?name=NAME]`.
    Artifact(&'a str, Option<&'a str>),
}

/// A module the base will not load until an operator retries it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quarantined {
    /// Its name, when it was known (a crash inside the library's constructors comes before it).
    pub name: Option<String>,
    /// Its version, when it was known.
    pub version: Option<String>,
    /// The artifact.
    pub sha256: String,
    /// The name it was being installed under (`?name=`), if any.
    pub install_name: Option<String>,
    /// Why.
    pub reason: String,
    /// RFC 3339 time it was quarantined.
    pub at: String,
    /// The signal it crashed the base with, when a crash record says (`SIGSEGV`, `SIGABRT`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// RFC 3339 time of that crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashed_at: Option<String>,
}

/// What a marker under `loading/` says.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    sha256: String,
    install_name: Option<String>,
    name: Option<String>,
    version: Option<String>,
    /// Whether an operation or the base's own restore was loading it.
    #[serde(default)]
    during: Load,
    /// The base process that was loading it.
    #[serde(default)]
    pid: u32,
    /// When the marker file was last written (read from the file, not stored in it): the
    /// process was alive then, which tells a crash record of it from one of a reused pid.
    #[serde(skip)]
    written: Option<SystemTime>,
}

/// What a load is part of, as its marker records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Load {
    /// An install, replace or retry: the base died in a load someone asked for, which is
    /// indistinguishable from the module crashing it, so the module is quarantined.
    #[default]
    Install,
    /// The restore at boot: being killed while restoring (an operator's `kill -9`, a power cut)
    /// is not the fault of the module being restored, so the marker alone quarantines nothing.
    Restore,
}

/// A marker file, removed when dropped.
pub(crate) struct Loading {
    path: PathBuf,
    marker: Marker,
}

impl Loading {
    /// Records which identity the library turned out to be.
    pub(crate) fn identify(&mut self, instance: &Instance) {
        self.marker.name = Some(instance.id.name.clone());
        self.marker.version = Some(instance.id.version.to_string());
        let _ = crate::private::write(&self.path, &serde_json::to_vec(&self.marker).unwrap_or_default());
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What a restore did.
#[derive(Debug, Default, Serialize)]
pub struct Restored {
    /// Instances started again.
    pub started: usize,
    /// Modules quarantined (now or earlier), with the reason.
    pub quarantined: Vec<Quarantined>,
    /// Milliseconds the restore took.
    pub ms: f64,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Registry {
    fn state_path(&self) -> PathBuf {
        self.store.data_dir().join(STATE_FILE)
    }

    fn loading_dir(&self) -> PathBuf {
        self.store.data_dir().join("loading")
    }

    /// Writes a marker saying `sha256` is being loaded; it is removed when the result is dropped.
    pub(crate) fn loading(&self, sha256: &str, install_name: Option<&str>, during: Load) -> Loading {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.loading_dir();
        let _ = crate::private::create_dir(&dir);
        let path = dir.join(format!("{}-{}.json", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let marker = Marker {
            sha256: sha256.to_owned(),
            install_name: install_name.map(str::to_owned),
            name: None,
            version: None,
            during,
            pid: std::process::id(),
            written: None,
        };
        let _ = crate::private::write(&path, &serde_json::to_vec(&marker).unwrap_or_default());
        Loading { path, marker }
    }

    /// Records the current state in `state.json`. Call after every acknowledged change, before
    /// answering.
    pub(crate) fn persist(&self) -> Result<()> {
        let _one_writer = lock(&self.persisting);
        // Before the restore, the file still holds what is being restored; during shutdown,
        // stopping everything is not a change to record.
        if !self.is_restored() || self.shutting_down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut file = StateFile { format: FORMAT, ..StateFile::default() };
        {
            let modules = lock(&self.modules);
            for (name, versions) in modules.iter() {
                for (version, instance) in &versions.instances {
                    if !matches!(instance.state(), State::Active | State::Inactive) {
                        continue;
                    }
                    file.modules.push(Record::of(instance, versions.active.as_ref() == Some(version)));
                }
                if let Some(weights) = &versions.weights {
                    let weights = weights.iter().map(|(v, w)| (v.to_string(), *w)).collect();
                    file.weights.insert(name.clone(), weights);
                }
                if let Some(previous) = &versions.previous {
                    let record = PreviousRecord {
                        version: previous.version.to_string(),
                        sha256: previous.sha256.clone(),
                    };
                    file.previous.insert(name.clone(), record);
                }
            }
        }
        // A same-version replace in progress: until the new build is routed, the file keeps the
        // build it replaces (a kill meanwhile restores that one, the state before the change).
        for held in lock(&self.held.0).iter() {
            if !file.modules.iter().any(|r| r.name == held.name && r.version == held.version) {
                file.modules.push(held.clone());
            }
        }
        file.limit_overrides = lock(&self.limit_overrides).iter().map(|(k, v)| (k.clone(), *v)).collect();
        file.quarantined = lock(&self.quarantined).clone();
        self.write_state(&file)
    }

    /// Keeps `instance`'s record in `state.json` while a same-version replace unloads it and
    /// starts its successor, until [`Registry::release_record`]: the removal is part of the
    /// replace, and the file must never hold part of a change.
    pub(crate) fn hold_record(&self, instance: &Instance) {
        let active = lock(&self.modules)
            .get(&instance.id.name)
            .is_some_and(|versions| versions.active.as_ref() == Some(&instance.id.version));
        let record = Record::of(instance, active);
        let mut held = lock(&self.held.0);
        held.retain(|r| !(r.name == record.name && r.version == record.version));
        held.push(record);
    }

    /// Ends [`Registry::hold_record`] for `id`: its successor is routed, or failed to start.
    /// Returns whether a record was held, and whether it was its module's active version.
    pub(crate) fn release_record(&self, id: &crate::instance::ModuleId) -> Option<bool> {
        let mut held = lock(&self.held.0);
        let at = held.iter().position(|r| r.name == id.name && r.version == id.version.to_string())?;
        Some(held.remove(at).active)
    }

    fn write_state(&self, file: &StateFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(file).expect("the state serializes");
        write_atomically(&self.state_path(), &bytes, true)
    }

    /// Persists, logging (rather than failing the operation) when the disk refuses.
    pub(crate) fn persist_or_warn(&self) {
        if let Err(e) = self.persist() {
            tracing::error!("cannot record the base's state (it will not survive a restart): {e}");
        }
    }

    /// Restores what `state.json` records, quarantining modules whose load or start the previous
    /// base process died in. Call once, before the base reports ready.
    pub fn restore(&self) -> Result<Restored> {
        let began = std::time::Instant::now();
        let file = match fs::read(self.state_path()) {
            Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes)
                .map_err(|e| Error::StateInvalid { path: self.state_path(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => return Err(Error::io(format!("reading {}", self.state_path().display()))(e)),
        };
        if file.format > FORMAT {
            return Err(Error::StateInvalid {
                path: self.state_path(),
                message: format!(
                    "written by a newer base (format {}, this base reads {FORMAT})",
                    file.format
                ),
            });
        }
        let mut file = file;
        file.format = FORMAT;
        *lock(&self.limit_overrides) = file.limit_overrides.clone().into_iter().collect();
        let (markers, crashed) = self.crash_markers();
        let earlier_deaths = std::mem::take(&mut file.restore_deaths);
        for marker in crashed {
            let mut restore_death = false;
            if marker.during == Load::Restore && !self.crashed_loading(&marker) {
                // Killed while restoring (by an operator, the OOM killer, a power cut), or it
                // crashed in another module: not a crash of the module it was restoring, which
                // is restored again now — unless that happened to the last restore too.
                let key = format!("{}/{}", marker.sha256, marker.install_name.as_deref().unwrap_or(""));
                let deaths = earlier_deaths.get(&key).copied().unwrap_or(0) + 1;
                if deaths < RESTORE_DEATHS {
                    tracing::warn!(
                        sha256 = %marker.sha256,
                        module = marker.name.as_deref().unwrap_or("?"),
                        "the previous base process ended while restoring this module, with no crash \
                         record; restoring it again"
                    );
                    file.restore_deaths.insert(key, deaths);
                    continue;
                }
                restore_death = true;
            }
            let retry = retry_hint(
                marker.name.as_deref(),
                marker.version.as_deref(),
                &marker.sha256,
                marker.install_name.as_deref(),
            );
            let reason = if restore_death {
                format!(
                    "the base process died {RESTORE_DEATHS} restores in a row while loading or starting it, \
                     with no crash record (killed, by the OOM killer for one, or a crash no handler saw); \
                     {retry}"
                )
            } else {
                format!(
                    "the base process died while loading or starting it (a crash in its constructors or \
                     start hook); {retry}"
                )
            };
            let known = file
                .quarantined
                .iter()
                .any(|q| q.sha256 == marker.sha256 && q.install_name == marker.install_name);
            if known {
                continue;
            }
            let what = match (&marker.name, &marker.version) {
                (Some(name), Some(version)) => format!("{name}@{version}"),
                _ => format!("artifact {}", marker.sha256),
            };
            tracing::error!(
                "quarantined {what}: the previous base process died while loading or starting it"
            );
            file.quarantined.push(Quarantined {
                name: marker.name,
                version: marker.version,
                sha256: marker.sha256,
                install_name: marker.install_name,
                reason,
                at: now(),
                signal: None,
                crashed_at: None,
            });
        }
        // Crash records of modules that crashed the base after they started (and the signal of
        // those the markers just quarantined).
        self.apply_crash_records(&mut file.quarantined);
        // Record the quarantine before the markers go: a crash during this restore must not
        // forget it (and loop on the same module).
        self.write_state(&file)?;
        self.save_crash_ledger();
        for marker in markers {
            let _ = fs::remove_file(marker);
        }
        let mut quarantined = file.quarantined.clone();
        let is_quarantined = |record: &Record| {
            quarantined.iter().any(|q| covers(q, &record.sha256, &record.name, record.install_name()))
        };
        let to_start: Vec<Record> = policy::dependency_order(
            file.modules.iter().filter(|r| !is_quarantined(r)).cloned().collect(),
            |r| (&r.provides, &r.requires),
        );
        let mut restored = Restored::default();
        for record in &to_start {
            let options = InstallOptions {
                name: record.renamed.then(|| record.name.clone()),
                ..InstallOptions::default()
            };
            let _in_use = self.artifacts_in_use.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let outcome = self
                .stored_artifact(&record.sha256)
                .and_then(|artifact| self.launch_artifact(artifact, &options, Load::Restore))
                .map(|done| done.instance);
            match outcome {
                Ok(_) => restored.started += 1,
                Err(e) => {
                    tracing::error!(module = %record.name, version = %record.version, "cannot restore: {e}");
                    quarantined.push(Quarantined {
                        name: Some(record.name.clone()),
                        version: Some(record.version.clone()),
                        sha256: record.sha256.clone(),
                        install_name: record.renamed.then(|| record.name.clone()),
                        reason: format!("restoring it failed: {e}"),
                        at: now(),
                        signal: None,
                        crashed_at: None,
                    });
                }
            }
        }
        *lock(&self.quarantined) = quarantined.clone();
        self.apply_recorded_routing(&file);
        self.restored.store(true, Ordering::Release);
        self.persist_or_warn();
        self.collect_unreferenced(Duration::ZERO);
        restored.quarantined = quarantined;
        restored.ms = began.elapsed().as_secs_f64() * 1000.0;
        Ok(restored)
    }

    /// Sets the recorded active versions, deactivations and weights of the restored (inactive)
    /// instances in one step, then publishes the routing table once.
    fn apply_recorded_routing(&self, file: &StateFile) {
        let mut modules = lock(&self.modules);
        for record in &file.modules {
            let Ok(version) = Version::parse(&record.version) else { continue };
            let Some(versions) = modules.get_mut(&record.name) else { continue };
            let Some(instance) = versions.instances.get(&version).filter(|i| i.state() == State::Inactive)
            else {
                continue;
            };
            if record.deactivated {
                instance.set_deactivated(true);
            }
            if record.active {
                instance.transition(State::Active, "restore", "active before the restart");
                versions.active = Some(version);
            }
        }
        // A recorded active version that did not come back (quarantined, or its restore failed):
        // hand the traffic to the newest running version rather than leave the module unrouted.
        for record in file.modules.iter().filter(|r| r.active) {
            let Some(versions) = modules.get_mut(&record.name) else { continue };
            if versions.active.is_some() {
                continue;
            }
            let successor = policy::restore_fallback(&policy::Module::of(versions))
                .and_then(|v| Some((v.clone(), Arc::clone(versions.instances.get(&v)?))));
            if let Some((version, instance)) = successor {
                let message = format!(
                    "{}@{} was active before the restart and is not running",
                    record.name, record.version
                );
                tracing::warn!(module = %record.name, version = %version, "{message}; this version takes the traffic");
                instance.transition(State::Active, "restore", &message);
                versions.active = Some(version);
            }
        }
        for (name, weights) in &file.weights {
            let Some(versions) = modules.get_mut(name) else { continue };
            let weights: BTreeMap<Version, u32> = weights
                .iter()
                .filter_map(|(v, w)| Some((Version::parse(v).ok()?, *w)))
                .filter(|(v, _)| versions.instances.contains_key(v))
                .collect();
            if !weights.is_empty() {
                versions.weights = Some(weights);
            }
        }
        for (name, record) in &file.previous {
            let Some(versions) = modules.get_mut(name) else { continue };
            let Ok(version) = Version::parse(&record.version) else { continue };
            versions.previous = Some(super::Previous { version, sha256: record.sha256.clone() });
        }
        self.publish(&modules);
    }

    /// Installs the boot modules (`[boot] modules` of the config file, then the `*.so` files of
    /// `--modules-dir` in name order), each after the implementations of the SPIs it requires.
    /// One already running (restored) counts as installed. Returns whether all of them are
    /// running.
    pub fn install_boot_modules(&self) -> bool {
        let mut files = self.config.boot_modules.clone();
        if let Some(dir) = &self.config.modules_dir {
            match fs::read_dir(dir) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "so"))
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => {
                    tracing::error!("cannot read --modules-dir {}: {e}", dir.display());
                    return false;
                }
            }
        }
        // In dependency order: a module whose required SPI is not running yet waits for the
        // others and is tried again after each round that installed something.
        let mut waiting = files;
        let mut all = true;
        loop {
            let mut missing = Vec::new();
            let mut progress = false;
            let round = std::mem::take(&mut waiting);
            for file in round {
                match self.install_boot_module(&file) {
                    Ok(()) => progress = true,
                    Err(e @ Error::SpiMissing { .. }) => missing.push((file, e)),
                    Err(e) => {
                        all = false;
                        tracing::error!(file = %file.display(), code = e.code(), "boot module failed: {e}");
                    }
                }
            }
            if missing.is_empty() {
                break;
            }
            if !progress {
                for (file, e) in missing {
                    all = false;
                    tracing::error!(file = %file.display(), code = e.code(), "boot module failed: {e}");
                }
                break;
            }
            waiting = missing.into_iter().map(|(file, _)| file).collect();
        }
        all
    }

    fn install_boot_module(&self, file: &std::path::Path) -> Result<()> {
        let outcome = fs::read(file)
            .map_err(|e| Error::io(format!("reading {}", file.display()))(e))
            .and_then(|bytes| {
                // A boot module the base died loading would kill every boot: skip it.
                let sha256 = hex::encode(Sha256::digest(&bytes));
                // Installed under its package's name: a quarantined tenant of the same artifact
                // (another install name) does not keep it out.
                if let Some(q) =
                    self.quarantined().into_iter().find(|q| q.sha256 == sha256 && q.install_name.is_none())
                {
                    return Err(Error::Quarantined { what: file.display().to_string(), reason: q.reason });
                }
                let signature = self.signature_beside(file)?;
                self.install_with(&bytes, &InstallOptions { signature, ..InstallOptions::default() })
            });
        match outcome {
            Ok(done) => {
                let signed_by = done.instance.artifact.signed_by.as_deref();
                tracing::info!(module = %done.instance.id, file = %file.display(), signed_by, "boot module installed");
                Ok(())
            }
            Err(Error::AlreadyInstalled { id }) => {
                tracing::info!(module = %id, file = %file.display(), "boot module already running");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The markers earlier base processes left under `loading/` (their paths, to delete once
    /// the quarantine is recorded, and what they say).
    fn crash_markers(&self) -> (Vec<PathBuf>, Vec<Marker>) {
        let Ok(entries) = fs::read_dir(self.loading_dir()) else { return (Vec::new(), Vec::new()) };
        let own = format!("{}-", std::process::id());
        let mut paths = Vec::new();
        let mut markers = Vec::new();
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&own) {
                continue;
            }
            if let Some(mut marker) =
                fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
            {
                marker.written = entry.metadata().and_then(|m| m.modified()).ok();
                markers.push(marker);
            }
            paths.push(entry.path());
        }
        (paths, markers)
    }

    /// Whether the process that left `marker` died of a crash that may be the marked load's: its
    /// crash record names that load's artifact (and install name), or names no module at all. A
    /// process that left no record was killed (SIGKILL, the OOM killer) or lost power.
    fn crashed_loading(&self, marker: &Marker) -> bool {
        let Some(crash) = crate::crash::crash_of_process(self.store.data_dir(), marker.pid, marker.written)
        else {
            return false;
        };
        match &crash.sha256 {
            None => true,
            Some(sha256) => *sha256 == marker.sha256 && crash.install_name == marker.install_name,
        }
    }

    /// The quarantined modules.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        lock(&self.quarantined).clone()
    }

    /// Refuses (`QUARANTINED`) an install of the artifact `sha256` under `install_name` that a
    /// quarantine entry keeps out: the same bytes would crash the base the same way. Only an
    /// explicit retry loads them again.
    pub(super) fn refuse_quarantined(&self, sha256: &str, install_name: Option<&str>) -> Result<()> {
        let quarantined = lock(&self.quarantined);
        let Some(q) = quarantined.iter().find(|q| blocks_install(q, sha256, install_name)) else {
            return Ok(());
        };
        let what = match (&q.name, &q.version) {
            (Some(name), Some(version)) => format!("{name}@{version} (artifact {sha256})"),
            _ => format!("artifact {sha256}"),
        };
        Err(Error::Quarantined { what, reason: q.reason.clone() })
    }

    /// Records that an instance started from artifact `sha256`: unreferenced later, it is kept
    /// for [`ARTIFACT_GRACE`] (a rollback may want it).
    pub(super) fn mark_started(&self, sha256: &str) {
        lock(&self.started).insert(sha256.to_owned());
    }

    /// Tries the quarantined artifact `sha256` again, the install of it under `install_name`
    /// (`None`: under its package's name, or its only quarantined install): the way to retry a
    /// library that crashed the base before its name and version were known.
    pub fn retry_artifact(&self, sha256: &str, install_name: Option<&str>) -> Result<Arc<Instance>> {
        let entry = self.quarantined_artifact(sha256, install_name)?;
        self.retry_entry(entry, None, false)
    }

    fn quarantined_artifact(&self, sha256: &str, install_name: Option<&str>) -> Result<Quarantined> {
        let quarantined = lock(&self.quarantined);
        let of_artifact: Vec<&Quarantined> = quarantined.iter().filter(|q| q.sha256 == sha256).collect();
        let chosen = of_artifact
            .iter()
            .find(|q| blocks_install(q, sha256, install_name))
            .or(match (install_name, of_artifact.as_slice()) {
                (None, [only]) => Some(only),
                _ => None,
            })
            .map(|q| (*q).clone());
        let what = match install_name {
            Some(name) => format!("quarantined artifact {sha256} installed as {name}"),
            None => format!("quarantined artifact {sha256}"),
        };
        chosen.ok_or(Error::NotFound { what })
    }

    /// Tries a quarantined `name@version` again: loads it from its artifact, and lifts the
    /// quarantine if it starts.
    pub fn retry(&self, name: &str, version: &Version) -> Result<Arc<Instance>> {
        self.retry_signed(name, version, None)
    }

    /// [`Registry::retry`] with a new signature of the quarantined artifact (a `.sig` file's
    /// text or its line): with `--trusted-keys`, it is verified and kept before the load, for an
    /// artifact whose kept signature this start no longer accepts (its key was dropped) or that
    /// was installed before the base required signatures.
    pub fn retry_signed(
        &self,
        name: &str,
        version: &Version,
        signature: Option<&str>,
    ) -> Result<Arc<Instance>> {
        let entry = self.quarantined_module(name, version)?;
        self.retry_entry(entry, signature, false)
    }

    fn quarantined_module(&self, name: &str, version: &Version) -> Result<Quarantined> {
        lock(&self.quarantined)
            .iter()
            .find(|q| match &q.name {
                Some(quarantined) => {
                    quarantined == name && q.version.as_deref() == Some(&version.to_string())
                }
                // Died in its constructors, before its identity was known: found by the name it
                // was being installed under, whatever the version asked for.
                None => q.install_name.as_deref() == Some(name),
            })
            .cloned()
            .ok_or_else(|| Error::NotFound { what: format!("quarantined {name}@{version}") })
    }

    /// The operations API's retries: as [`Registry::retry_signed`] and
    /// [`Registry::retry_artifact`], refused with `FLEET_OWNED` when the module the bytes turn
    /// out to be is owned (see [`Registry::set_owner`]) and `force` is not given.
    pub(crate) fn retry_as_operator(
        &self,
        target: RetryTarget<'_>,
        signature: Option<&str>,
        force: bool,
    ) -> Result<Arc<Instance>> {
        let entry = match target {
            RetryTarget::Module(name, version) => {
                self.check_owner(name, force)?;
                self.quarantined_module(name, version)?
            }
            RetryTarget::Artifact(sha256, install_name) => {
                if let Some(name) = install_name {
                    self.check_owner(name, force)?;
                }
                self.quarantined_artifact(sha256, install_name)?
            }
        };
        self.retry_entry(entry, signature, !force)
    }

    fn retry_entry(
        &self,
        entry: Quarantined,
        signature: Option<&str>,
        refuse_owned: bool,
    ) -> Result<Arc<Instance>> {
        if let Some(signature) = signature {
            self.keep_signature(&entry.sha256, signature)?;
        }
        let artifact = self.stored_artifact(&entry.sha256)?;
        let options =
            InstallOptions { name: entry.install_name.clone(), refuse_owned, ..InstallOptions::default() };
        let _in_use = self.artifacts_in_use.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let installed = self.launch_artifact(artifact, &options, Load::Install)?;
        Ok(installed.instance)
    }

    /// Lifts the quarantine of an artifact that just started under `name` (and of entries of
    /// that install of it whose module name was never known).
    pub(crate) fn lift_quarantine(&self, sha256: &str, name: &str, install_name: Option<&str>) {
        let before = lock(&self.quarantined).len();
        // The bytes loaded and started: an entry saying they kill the base in their constructors
        // (under whatever name) is disproved too.
        lock(&self.quarantined)
            .retain(|q| !(covers(q, sha256, name, install_name) || q.sha256 == sha256 && q.name.is_none()));
        if lock(&self.quarantined).len() != before {
            tracing::info!(module = name, sha256, "quarantine lifted: it started");
            self.forgive_crashes(sha256, name);
        }
    }

    /// Deletes stored artifacts nothing refers to (no running or pinned instance, no record, no
    /// quarantined module): at once when no instance ever started from them here (a refused
    /// upload), else once unreferenced for [`ARTIFACT_GRACE`], so a quick reinstall or rollback
    /// finds its artifact still there; [`Registry::restore`] collects without grace. Skipped
    /// (until the next call) while an install is in progress.
    pub(crate) fn collect_garbage(&self) {
        self.collect_unreferenced(ARTIFACT_GRACE);
    }

    /// Deletes artifact `sha256`, which an upload just stored and failed to start, unless
    /// something needs it: another upload of the same bytes in progress, an instance of it
    /// (live or still mapped), a quarantine entry (kept for the retry), a held record, or an
    /// instance that started from it in this process (a rollback may want it).
    pub(crate) fn remove_refused(&self, sha256: &str) {
        // Held while deleting: an upload of the same bytes registers here before it stores them,
        // so it either stops this deletion or stores the bytes again after it.
        let installing = lock(&self.installing);
        if installing.contains_key(sha256)
            || lock(&self.started).contains(sha256)
            || lock(&self.quarantined).iter().any(|q| q.sha256 == sha256)
            || lock(&self.held.0).iter().any(|r| r.sha256 == sha256)
            || self.artifacts_loaded().contains(sha256)
            || lock(&self.modules).values().any(|v| v.previous.as_ref().is_some_and(|p| p.sha256 == sha256))
        {
            return;
        }
        self.store.remove(sha256);
        lock(&self.unreferenced).remove(sha256);
        drop(installing);
    }

    fn collect_unreferenced(&self, grace: Duration) {
        // While an install is between storing and loading its artifact, collect next time.
        let Ok(_no_install_between) = self.artifacts_in_use.try_write() else { return };
        let mut keep: HashSet<String> = lock(&self.quarantined).iter().map(|q| q.sha256.clone()).collect();
        // The build a same-version replace unloaded stays recorded (and may be started again).
        keep.extend(lock(&self.held.0).iter().map(|r| r.sha256.clone()));
        keep.extend(self.artifacts_loaded());
        // What a rollback returns to stays reinstallable for as long as it is recorded.
        keep.extend(lock(&self.modules).values().filter_map(|v| Some(v.previous.as_ref()?.sha256.clone())));
        let mut unreferenced = lock(&self.unreferenced);
        let stored = self.store.hashes();
        unreferenced.retain(|sha256, _| !keep.contains(sha256) && stored.contains(sha256));
        let mut started = lock(&self.started);
        for sha256 in stored.into_iter().filter(|s| !keep.contains(s)) {
            let since = *unreferenced.entry(sha256.clone()).or_insert_with(Instant::now);
            let grace = if started.contains(&sha256) { grace } else { Duration::ZERO };
            if since.elapsed() >= grace {
                self.store.remove(&sha256);
                unreferenced.remove(&sha256);
                started.remove(&sha256);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Quarantined, covers};

    fn entry(name: Option<&str>, install_name: Option<&str>) -> Quarantined {
        Quarantined {
            name: name.map(str::to_owned),
            version: name.map(|_| "0.1.0".to_owned()),
            sha256: "aa".into(),
            install_name: install_name.map(str::to_owned),
            reason: String::new(),
            at: String::new(),
            signal: None,
            crashed_at: None,
        }
    }

    /// Whether `q` covers an instance of artifact `sha256` named `name`, installed under
    /// `install_name` (`None`: under its package's name).
    fn check(q: Quarantined, sha256: &str, name: &str, install_name: Option<&str>, expected: bool) {
        assert_eq!(
            covers(&q, sha256, name, install_name),
            expected,
            "{q:?} vs {sha256} {name} {install_name:?}"
        );
    }

    #[test]
    fn quarantine_entries_cover_only_their_own_install() {
        // Known identity.
        check(entry(Some("notes"), None), "aa", "notes", None, true);
        check(entry(Some("notes"), None), "bb", "notes", None, false);
        check(entry(Some("notes"), None), "aa", "tenant-1", Some("tenant-1"), false);
        check(entry(Some("tenant-1"), Some("tenant-1")), "aa", "tenant-1", Some("tenant-1"), true);
        check(entry(Some("tenant-1"), Some("tenant-1")), "aa", "tenant-2", Some("tenant-2"), false);
        // Died in the constructors of tenant-3's load: only tenant-3, never its siblings.
        check(entry(None, Some("tenant-3")), "aa", "tenant-3", Some("tenant-3"), true);
        check(entry(None, Some("tenant-3")), "aa", "tenant-1", Some("tenant-1"), false);
        check(entry(None, Some("tenant-3")), "aa", "notes", None, false);
        // Died in the constructors of an install under the package's name.
        check(entry(None, None), "aa", "notes", None, true);
        check(entry(None, None), "aa", "tenant-1", Some("tenant-1"), false);
        check(entry(None, None), "bb", "notes", None, false);
    }
}

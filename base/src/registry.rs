//! Which modules the base hosts, which version of each gets traffic, and the operations that
//! change that.
//!
//! The routing table is an immutable map swapped atomically (`arc-swap`): the request path
//! reads it without a lock, and an install or uninstall publishes a new one. A request that
//! already holds an instance finishes on it.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use semver::Version;
use serde::{Deserialize, Serialize};

mod crashes;
mod durable;
mod spis;
mod watch;

pub use durable::{Quarantined, Restored};
pub use spis::compatible;

use crate::{
    accounting::Metrics,
    artifact::ArtifactStore,
    config::Config,
    elf,
    error::{Error, Result},
    instance::{Instance, State},
    limits::{LimitOverrides, Limits},
    loader,
    logs::ModuleLog,
    routing::{Route, RoutingTable, Split},
    sync::lock,
};

/// How an install treats the versions of the module already installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Add the version next to the others (Koupleless's "install").
    #[default]
    Install,
    /// Install the new version, switch the traffic to it, then drain and unload the version that
    /// was active. No request fails when the versions differ; the same version is stopped first.
    Replace,
}

/// What an install is asked to do besides loading the module.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Install under this name instead of the package's (one artifact, many tenants).
    pub name: Option<String>,
    /// Make the new version active even when another one is.
    pub activate: bool,
    /// How to treat the versions already installed.
    pub strategy: Strategy,
    /// Install even when an SPI the module requires has no compatible implementation running.
    pub force: bool,
    /// Load the bytes even when they are quarantined: an operator's explicit retry.
    pub retry_quarantined: bool,
    /// The sha256 the bytes must have (`?sha256=`): checked before anything is stored or loaded.
    pub sha256: Option<crate::signing::Digest>,
    /// The artifact's detached signature (a `.sig` file's text, or its signature line), checked
    /// against the trusted keys when the base has them (`--trusted-keys`); ignored otherwise.
    pub signature: Option<String>,
}

/// What an install did.
#[derive(Debug)]
pub struct Installed {
    /// The new instance.
    pub instance: Arc<Instance>,
    /// The version a replace took the traffic from and unloaded.
    pub replaced: Option<Arc<Instance>>,
}

/// Refuses, from the file's bytes alone, what is not a module of this base's interface major
/// (`NOT_A_MODULE`, `INTERFACE_MISMATCH`), before any of its code could run.
fn check_module(file: &(impl elf::Source + ?Sized)) -> Result<()> {
    let stamp = elf::check_module(file).map_err(|reason| Error::NotAModule { reason })?;
    let base = loader::base_interface();
    if u64::from(stamp.major) != base.major {
        return Err(Error::InterfaceMismatch { module: stamp.to_string(), base: base.to_string() });
    }
    Ok(())
}

/// The base's modules and routing.
#[derive(Debug)]
pub struct Registry {
    config: Config,
    metrics: Metrics,
    store: ArtifactStore,
    modules: Mutex<BTreeMap<String, Versions>>,
    routes: ArcSwap<RoutingTable>,
    /// Each module name's log (shared by its versions and kept after they stop).
    logs: Mutex<HashMap<String, Arc<ModuleLog>>>,
    /// Library paths loaded by a live or pinned instance: a second `dlopen` of one of them
    /// would return the first instance's library, so a new instance gets a private copy.
    loaded_paths: Mutex<HashSet<PathBuf>>,
    /// Limit overrides set through the operations API, per module name.
    limit_overrides: Mutex<HashMap<String, LimitOverrides>>,
    /// Recent memory-limit restarts per module name, to stop a restart loop.
    restarts: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Modules the base is restarting (memory limit, unhealthy), with the reason: between the
    /// old instance's stop and the fresh one's start their requests get 503, not 404.
    restarting: Mutex<HashMap<String, String>>,
    /// Actions the unhealthy policy took, per module name and action, for `/metrics`.
    unhealthy_actions: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Operations run in the background for the API.
    pub(crate) operations: crate::operations::Operations,
    /// Serializes writes of `state.json`.
    persisting: Mutex<()>,
    /// Modules not loaded because the base died loading them (or they failed to restore).
    quarantined: Mutex<Vec<Quarantined>>,
    /// Records kept in `state.json` while a same-version replace swaps their instance.
    held: durable::HeldRecords,
    /// Installs hold it shared from storing their artifact until it is loaded; garbage
    /// collection holds it exclusively, so it never deletes an artifact about to be loaded.
    artifacts_in_use: RwLock<()>,
    /// Whether the base restored its state (and installed its boot modules).
    ready: AtomicBool,
    /// Set by `stop_all`: from then on nothing is recorded in `state.json`.
    shutting_down: AtomicBool,
    /// Set once `restore` has run: before, `state.json` is not rewritten (it still holds what
    /// is being restored) and the operations API refuses changes.
    restored: AtomicBool,
    /// Turns of the limit watcher (it runs housekeeping every so many).
    ticks: std::sync::atomic::AtomicU64,
    /// Since when each stored artifact nothing refers to has been unreferenced.
    unreferenced: Mutex<HashMap<String, Instant>>,
    /// Artifacts an instance started from in this process: only they are kept for a while
    /// once unreferenced (a rollback); one that never ran is deleted at once.
    started: Mutex<HashSet<String>>,
    /// Artifacts uploads are storing and loading right now, with how many uploads each: a
    /// refused upload's artifact is not deleted under another upload of the same bytes.
    installing: Mutex<HashMap<String, usize>>,
    /// The SPIs this base calls, with the version it was built against.
    declared_spis: Mutex<BTreeMap<String, Version>>,
    /// This registry, for the calls of its modules' instances.
    me: std::sync::Weak<Registry>,
    /// The base's runtime, where module calls that wait run.
    runtime: Mutex<Option<tokio::runtime::Handle>>,
    /// The modules' key-value store.
    kv: crate::services::kv::Kv,
    /// Publish and subscribe.
    events: crate::services::events::Events,
    /// The modules' configuration values.
    module_configs: crate::services::module_config::ModuleConfigs,
    /// Crash records processed and the crashes of the window (`registry/crashes.rs`).
    crash_ledger: Mutex<crate::crash::Ledger>,
    /// The keys every artifact must be signed with (`--trusted-keys`), read at start.
    trusted_keys: Option<crate::signing::TrustedKeys>,
}

#[derive(Debug, Default)]
pub(crate) struct Versions {
    pub(crate) instances: BTreeMap<Version, Arc<Instance>>,
    pub(crate) active: Option<Version>,
    /// Traffic weights across versions (a canary), when set.
    weights: Option<BTreeMap<Version, u32>>,
}

impl Registry {
    /// An empty registry keeping artifacts (and the modules' key-value store) under
    /// `config.data_dir`. Module calls that wait run on the current tokio runtime, if any (see
    /// [`Registry::set_runtime`]).
    pub fn new(config: Config) -> Result<Arc<Self>> {
        let declared_spis = config.spis.clone();
        let store = ArtifactStore::open(&config.data_dir)?;
        let kv = crate::services::kv::Kv::open(&config.data_dir.join("kv.redb"))?;
        // The store and the directories exist now: make all of it the base's alone (a data
        // directory from an older version, or a `kv.redb` redb just created with the umask's
        // mode).
        crate::private::tighten(store.data_dir());
        let module_configs = crate::services::module_config::ModuleConfigs::new(&config);
        let runtime = Mutex::new(tokio::runtime::Handle::try_current().ok());
        let trusted_keys =
            config.trusted_keys.as_deref().map(crate::signing::load_trusted_keys).transpose()?;
        if let (Some(keys), Some(path)) = (&trusted_keys, &config.trusted_keys) {
            let ids: Vec<String> = keys.ids().iter().map(ToString::to_string).collect();
            tracing::info!(file = %path.display(), keys = ?ids, "only artifacts signed by a trusted key are loaded");
        }
        Ok(Arc::new_cyclic(|me| Self {
            trusted_keys,
            me: me.clone(),
            runtime,
            kv,
            events: crate::services::events::Events::default(),
            module_configs,
            config,
            metrics: Metrics::new(),
            logs: Mutex::new(HashMap::new()),
            store,
            modules: Mutex::new(BTreeMap::new()),
            routes: ArcSwap::from_pointee(RoutingTable::new()),
            loaded_paths: Mutex::new(HashSet::new()),
            limit_overrides: Mutex::new(HashMap::new()),
            restarts: Mutex::new(HashMap::new()),
            restarting: Mutex::new(HashMap::new()),
            unhealthy_actions: Mutex::new(BTreeMap::new()),
            operations: crate::operations::Operations::default(),
            persisting: Mutex::new(()),
            quarantined: Mutex::new(Vec::new()),
            held: durable::HeldRecords::default(),
            artifacts_in_use: RwLock::new(()),
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            restored: AtomicBool::new(false),
            ticks: std::sync::atomic::AtomicU64::new(0),
            unreferenced: Mutex::new(HashMap::new()),
            started: Mutex::new(HashSet::new()),
            installing: Mutex::new(HashMap::new()),
            declared_spis: Mutex::new(declared_spis),
            crash_ledger: Mutex::new(crate::crash::Ledger::default()),
        }))
    }

    /// Sets the runtime module calls that wait run on (the base's own, at `serve`).
    pub fn set_runtime(&self, handle: tokio::runtime::Handle) {
        *lock(&self.runtime) = Some(handle);
    }

    pub(crate) fn runtime(&self) -> Option<tokio::runtime::Handle> {
        lock(&self.runtime).clone()
    }

    /// The modules' key-value store.
    pub fn kv(&self) -> &crate::services::kv::Kv {
        &self.kv
    }

    /// Publish and subscribe, for the base's own code too.
    pub fn events(&self) -> &crate::services::events::Events {
        &self.events
    }

    /// The modules' configuration values.
    pub fn module_configs(&self) -> &crate::services::module_config::ModuleConfigs {
        &self.module_configs
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the base is ready: its state restored and its boot modules installed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether the recorded state has been restored (changes are accepted from then on).
    pub fn is_restored(&self) -> bool {
        self.restored.load(Ordering::Acquire)
    }

    /// Marks the base ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The settings the registry runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The directories path installs may read from: `<data-dir>/incoming/` and those of
    /// `--allow-path-install`.
    pub fn path_install_dirs(&self) -> Vec<PathBuf> {
        let incoming = self.store.data_dir().join(crate::path_install::INCOMING);
        std::iter::once(incoming).chain(self.config.allow_path_install.iter().cloned()).collect()
    }

    /// The log of module `name` (created on first use).
    pub fn log(&self, name: &str) -> Arc<ModuleLog> {
        let mut logs = lock(&self.logs);
        Arc::clone(logs.entry(name.to_owned()).or_insert_with(|| {
            let dir = self.store.data_dir().join("logs");
            Arc::new(
                ModuleLog::new(dir, name, self.config.module_log_format, self.config.module_log_max_bytes)
                    .with_echo_limit(self.config.module_log_echo_per_sec),
            )
        }))
    }

    /// The log of module `name`, if it ever had an instance.
    pub fn existing_log(&self, name: &str) -> Option<Arc<ModuleLog>> {
        lock(&self.logs).get(name).cloned()
    }

    /// Every live instance's metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        // Per module name rather than per instance: they outlive the instances (a restart).
        for (name, log) in lock(&self.logs).iter() {
            self.metrics.module_counter(
                "pedestal_module_log_lines_not_echoed_total",
                name,
                None,
                log.not_echoed(),
            );
        }
        for ((name, action), count) in lock(&self.unhealthy_actions).iter() {
            let action = Some(("action", *action));
            self.metrics.module_counter("pedestal_module_unhealthy_actions_total", name, action, *count);
        }
        self.metrics.render(&self.all())
    }

    /// The limit overrides set through the API for module `name`.
    pub fn limit_overrides(&self, name: &str) -> LimitOverrides {
        lock(&self.limit_overrides).get(name).copied().unwrap_or_default()
    }

    /// Replaces the API's limit overrides of module `name` and applies them to every instance of
    /// it at once. Returns its instances.
    pub fn set_limit_overrides(&self, name: &str, overrides: LimitOverrides) -> Result<Vec<Arc<Instance>>> {
        let (instances, _) = self.module(name)?;
        lock(&self.limit_overrides).insert(name.to_owned(), overrides);
        for instance in &instances {
            instance.set_limits(self.resolve_limits(instance));
        }
        self.persist_or_warn();
        Ok(instances)
    }

    fn resolve_limits(&self, instance: &Instance) -> Limits {
        let name = &instance.id.name;
        let api = lock(&self.limit_overrides).get(name).copied();
        Limits::resolve(
            instance.declared_limits.as_ref(),
            self.config.module_limits.get(name),
            api.as_ref(),
            &self.config,
        )
    }

    /// Why nothing serves `/<name>/`: `503 MODULE_UNAVAILABLE` with the reason when a version of
    /// the module is installed (say, deactivated), `404 MODULE_NOT_FOUND` otherwise.
    pub fn why_unrouted(&self, name: &str) -> Error {
        if let Some(reason) = lock(&self.restarting).get(name) {
            return Error::ModuleUnavailable {
                id: name.to_owned(),
                reason: format!("restarting ({reason})"),
            };
        }
        let modules = lock(&self.modules);
        let Some(versions) = modules.get(name).filter(|v| v.instances.values().any(|i| i.state().is_live()))
        else {
            return Error::ModuleNotMounted { name: name.to_owned() };
        };
        let last = versions
            .instances
            .values()
            .filter_map(|i| i.history().pop().map(|t| (t, i.id.to_string())))
            .max_by(|a, b| a.0.at.cmp(&b.0.at));
        let reason = match last {
            Some((t, id)) => {
                format!("no version is active; last change: {id} {:?} ({}): {}", t.state, t.reason, t.message)
            }
            None => "no version is active".into(),
        };
        Error::ModuleUnavailable { id: name.to_owned(), reason }
    }

    /// The current routing table.
    pub fn routes(&self) -> Arc<RoutingTable> {
        self.routes.load_full()
    }

    /// Installs a module from its `.so` bytes and starts it, with the default options. Blocking:
    /// call it off the async runtime. See [`Registry::install_with`].
    pub fn install(&self, bytes: &[u8], name: Option<&str>) -> Result<Arc<Instance>> {
        let options = InstallOptions { name: name.map(str::to_owned), ..InstallOptions::default() };
        Ok(self.install_with(bytes, &options)?.instance)
    }

    /// Installs a module from its `.so` bytes and starts it. Blocking: call it off the async
    /// runtime. The first version of a module becomes active; later ones install inactive unless
    /// `activate` (or the `replace` strategy) says otherwise.
    ///
    /// `name` installs the module under another name than its package's (mounted at `/<name>/`,
    /// logged and accounted as `<name>`): the same artifact can serve many tenants, each its own
    /// instance.
    pub fn install_with(&self, bytes: &[u8], options: &InstallOptions) -> Result<Installed> {
        let name = options.name.as_deref();
        if bytes.is_empty() {
            return Err(Error::EmptyUpload);
        }
        if let Some(name) = name.filter(|n| !loader::is_valid_name(n)) {
            return Err(Error::BadRequest {
                message: format!("{name:?} is not a module name (letters, digits, '-' and '_', at most 64)"),
            });
        }
        if let Some(wedged) = loader::wedged() {
            return Err(Error::LoadFailed {
                path: wedged,
                message: "the initialisation of this library never returned and still holds the \
                          dynamic loader's lock, so no module can be loaded; restart the base"
                    .into(),
            });
        }
        if bytes.len() as u64 > self.config.max_upload_bytes {
            return Err(Error::PayloadTooLarge {
                size: bytes.len() as u64,
                limit: self.config.max_upload_bytes,
            });
        }
        let digest = crate::signing::sha256(bytes);
        let verified = crate::signing::check(
            "the artifact",
            &digest,
            options.sha256.as_ref(),
            self.trusted_keys.as_ref(),
            options.signature.as_deref(),
        )?;
        // Decided from the bytes alone: nothing is stored, and no code of the library runs.
        check_module(bytes)?;
        let sha256 = hex::encode(digest);
        if !options.retry_quarantined {
            self.refuse_quarantined(&sha256, name)?;
        }
        let in_use = self.artifacts_in_use.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        *lock(&self.installing).entry(sha256.clone()).or_default() += 1;
        let launched = self.store.put(bytes, digest).and_then(|mut artifact| {
            if let Some(line) = &verified.signature {
                self.store.put_signature(&artifact.sha256, line)?;
            }
            artifact.signed_by = verified.signed_by.map(|id| id.to_string());
            self.launch_artifact(artifact, options, true)
        });
        drop(in_use);
        {
            let mut installing = lock(&self.installing);
            if let Some(count) = installing.get_mut(&sha256) {
                *count -= 1;
                if *count == 0 {
                    installing.remove(&sha256);
                }
            }
        }
        if launched.is_err() {
            // A refused artifact is deleted now, unless something still needs it (a live
            // instance, a record, a quarantine entry, another upload of the same bytes): it
            // never ran, so no rollback wants it. Not left to the garbage collector, which
            // waits while any install runs: a stream of refused uploads would fill the disk.
            self.remove_refused(&sha256);
        }
        launched
    }

    /// The stored artifact with this hash, checked against this start's trusted keys with the
    /// signature kept when it was installed (see [`crate::signing::check_stored`]).
    pub(crate) fn stored_artifact(&self, sha256: &str) -> Result<crate::artifact::Artifact> {
        let mut artifact =
            self.store.get(sha256).ok_or_else(|| Error::NotFound { what: format!("artifact {sha256}") })?;
        let stored = self.store.signature(sha256);
        let signed_by = crate::signing::check_stored(sha256, self.trusted_keys.as_ref(), stored.as_deref())?;
        artifact.signed_by = signed_by.map(|id| id.to_string());
        Ok(artifact)
    }

    /// Verifies a new signature of the stored artifact `sha256` against the trusted keys and keeps
    /// it in place of the one kept so far (nothing happens without trusted keys).
    pub(crate) fn keep_signature(&self, sha256: &str, signature: &str) -> Result<()> {
        if self.trusted_keys.is_none() {
            return Ok(());
        }
        let artifact =
            self.store.get(sha256).ok_or_else(|| Error::NotFound { what: format!("artifact {sha256}") })?;
        let digest = crate::signing::parse_sha256(&artifact.sha256)
            .map_err(|e| Error::BadRequest { message: e.to_string() })?;
        let what = format!("stored artifact {sha256}");
        let verified =
            crate::signing::check(&what, &digest, None, self.trusted_keys.as_ref(), Some(signature))?;
        match verified.signature {
            Some(line) => self.store.put_signature(sha256, &line),
            None => Ok(()),
        }
    }

    /// Whether every artifact needs a signature by a trusted key (`--trusted-keys`).
    pub fn requires_signatures(&self) -> bool {
        self.trusted_keys.is_some()
    }

    /// The text of the signature beside `file` (`<file>.sig`) when the base requires signatures,
    /// for installs of files (a path install, `[boot]`, `--modules-dir`, `--watch`).
    pub fn signature_beside(&self, file: &Path) -> Result<Option<String>> {
        crate::signing::text_beside(file, self.trusted_keys.as_ref())
    }

    /// Loads, starts and routes a stored artifact, records it in `state.json` and lifts a
    /// quarantine of it. Without `acknowledge` (a restore) it only loads and starts it, leaving
    /// it `inactive`: the restore routes and records everything at its end.
    pub(crate) fn launch_artifact(
        &self,
        artifact: crate::artifact::Artifact,
        options: &InstallOptions,
        acknowledge: bool,
    ) -> Result<Installed> {
        let name = options.name.as_deref();
        if let Some(existing) = self.live_instance_of(&artifact.sha256, name) {
            return Err(Error::AlreadyInstalled { id: existing.id.to_string() });
        }
        // Every load passes here (uploads, boot modules, the watched directory, restores,
        // retries): the stored file is checked again, piecewise, right before `dlopen` runs its
        // constructors.
        let stored = elf::FileSource::open(&artifact.path)
            .map_err(Error::io(format!("reading {}", artifact.path.display())))?;
        check_module(&stored)?;
        let load_path = self.claim_load_path(&artifact)?;
        let replace = options.strategy == Strategy::Replace;
        let during = if acknowledge { durable::Load::Install } else { durable::Load::Restore };
        let mut loading = self.loading(&artifact.sha256, name, during);
        // A replace of the same version unloads the running one before the new one starts.
        let mut replaced_same = None;
        let launched = Instance::launch(
            artifact,
            load_path.clone(),
            name,
            &self.config,
            &self.metrics,
            &|name| self.log(name),
            |instance| {
                loading.identify(instance);
                // A restore loads everything first and routes at the end: no check then.
                replaced_same = self.reserve(instance, replace, acknowledge && !options.force)?;
                Ok(())
            },
        );
        drop(loading);
        let instance = match launched {
            Ok(instance) => instance,
            Err(e) => {
                // No instance to ask (it failed before or during start): look at the mappings.
                if !loader::is_mapped(&load_path) {
                    self.release_load_path(&load_path);
                }
                if let Some(replaced) = &replaced_same
                    && let Some(was_active) = self.release_record(&replaced.id)
                {
                    return Err(self.roll_back_replace(replaced, was_active, options, e));
                }
                return Err(e);
            }
        };
        // It started: lift a quarantine of it now, before the first write that records it (a
        // replace writes once more when it unloads the old version), so no file can name the
        // instance and still quarantine it.
        self.lift_quarantine(&instance.artifact.sha256, &instance.id.name, name);
        self.mark_started(&instance.artifact.sha256);
        if !acknowledge {
            // Restoring: `restore` sets the recorded active versions and weights in one step.
            instance.transition(State::Inactive, "restore", "started; restoring the recorded routing");
            instance.end_operation();
            return Ok(Installed { instance, replaced: None });
        }
        let previous = {
            let mut modules = lock(&self.modules);
            let versions = modules.entry(instance.id.name.clone()).or_default();
            let current = versions
                .active
                .as_ref()
                .and_then(|v| versions.instances.get(v))
                .filter(|i| i.state() == State::Active && i.id.version != instance.id.version)
                .cloned();
            let previous = match current {
                Some(_) if !options.activate && !replace => {
                    instance.transition(State::Inactive, "install", "started; another version is active");
                    None
                }
                current => {
                    if let Some(current) = &current {
                        current.transition(
                            State::Inactive,
                            "switch",
                            &format!("{} took the traffic", instance.id),
                        );
                        // Moving the traffic clears a split; taking an empty seat (a restart, a
                        // same-version replace) keeps it.
                        versions.weights = None;
                    }
                    versions.active = Some(instance.id.version.clone());
                    instance.transition(State::Active, "install", "started and receiving traffic");
                    current
                }
            };
            self.publish(&modules);
            previous
        };
        // The new build is routed: from now on `state.json` records it instead of the one it
        // replaced (the next write below).
        if replaced_same.is_some() {
            self.release_record(&instance.id);
        }
        // Only now, with the instance routed, may another operation (an uninstall) take it.
        instance.end_operation();
        let replaced = match previous.filter(|_| replace && replaced_same.is_none()) {
            Some(previous) => match self.uninstall(&previous.id.name, &previous.id.version) {
                Ok(replaced) => Some(replaced),
                // Someone else is already unloading (or forgot) it: the replace is still done.
                Err(Error::OperationInProgress { .. } | Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => replaced_same,
        };
        self.persist_or_warn();
        Ok(Installed { instance, replaced })
    }

    /// A same-version replace unloaded `replaced` and its successor failed to start (`failure`):
    /// starts the replaced build again from its artifact, so the failed replace changes nothing,
    /// and returns the failure saying so. If even that fails, the removal is recorded (that is
    /// the state now) and the failure says the version is gone.
    fn roll_back_replace(
        &self,
        replaced: &Arc<Instance>,
        was_active: bool,
        options: &InstallOptions,
        failure: Error,
    ) -> Error {
        let restart =
            InstallOptions { name: options.name.clone(), activate: was_active, ..InstallOptions::default() };
        let outcome = self
            .stored_artifact(&replaced.artifact.sha256)
            .and_then(|artifact| self.launch_artifact(artifact, &restart, true));
        let note = match outcome {
            Ok(_) => {
                tracing::warn!(module = %replaced.id, "the replacing build failed to start; the replaced build runs again");
                "; the build it was to replace was started again".to_owned()
            }
            Err(e) => {
                tracing::error!(module = %replaced.id, "the replacing build failed to start, and so did the replaced build: {e}");
                self.persist_or_warn();
                format!(
                    "; starting the replaced build again failed too ({e}), so {} is not running",
                    replaced.id
                )
            }
        };
        match failure {
            Error::StartFailed { id, message } => Error::StartFailed { id, message: message + &note },
            other => {
                tracing::warn!("{other}{note}");
                other
            }
        }
    }

    /// Makes `name@version` (started, inactive) the active version: one routing-table swap.
    /// Requests already inside the previous version finish there. Clears traffic weights.
    pub fn switch(&self, name: &str, version: &Version) -> Result<(Arc<Instance>, Option<Arc<Instance>>)> {
        let target = self.find(name, version)?;
        if !target.try_begin_operation() {
            return Err(Error::OperationInProgress { id: target.id.to_string() });
        }
        let switched = (|| {
            let mut modules = lock(&self.modules);
            let state = target.state();
            if !matches!(state, State::Active | State::Inactive) {
                return Err(Error::NotRunning {
                    id: target.id.to_string(),
                    state: format!("{state:?}").to_lowercase(),
                });
            }
            let versions =
                modules.get_mut(name).ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
            let previous = versions
                .active
                .as_ref()
                .filter(|v| *v != version)
                .and_then(|v| versions.instances.get(v))
                .filter(|i| i.state() == State::Active)
                .cloned();
            if let Some(previous) = &previous {
                previous.transition(State::Inactive, "switch", &format!("switched to {}", target.id));
            }
            target.set_deactivated(false);
            versions.active = Some(version.clone());
            versions.weights = None;
            if state != State::Active {
                target.transition(State::Active, "switch", "switched to; receiving the traffic");
            }
            self.publish(&modules);
            Ok(previous)
        })();
        target.end_operation();
        let previous = switched?;
        self.persist_or_warn();
        Ok((target, previous))
    }

    /// Splits module `name`'s traffic across running versions by weight (`{"1.0.0": 90,
    /// "1.1.0": 10}`); an empty map goes back to the active version alone. Requests pinned with
    /// `x-pedestal-version` are not affected.
    pub fn set_weights(&self, name: &str, weights: BTreeMap<Version, u32>) -> Result<()> {
        let mut modules = lock(&self.modules);
        let versions =
            modules.get_mut(name).ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
        for version in weights.keys() {
            let instance = versions
                .instances
                .get(version)
                .ok_or_else(|| Error::NotFound { what: format!("{name}@{version}") })?;
            let state = instance.state();
            if !matches!(state, State::Active | State::Inactive) {
                return Err(Error::NotRunning {
                    id: instance.id.to_string(),
                    state: format!("{state:?}").to_lowercase(),
                });
            }
        }
        if !weights.is_empty() && weights.values().all(|w| *w == 0) {
            return Err(Error::BadRequest { message: "at least one weight must be above zero".into() });
        }
        versions.weights = (!weights.is_empty()).then_some(weights);
        self.publish(&modules);
        drop(modules);
        self.persist_or_warn();
        Ok(())
    }

    /// Module `name`'s traffic weights, if set.
    pub fn weights(&self, name: &str) -> Option<BTreeMap<Version, u32>> {
        lock(&self.modules).get(name).and_then(|v| v.weights.clone())
    }

    /// Stops and unloads `name@version`. A live instance is drained, stopped and unloaded; an
    /// instance that already ended (stopped, broken) is forgotten. If it was the active version,
    /// the newest other running version takes the traffic.
    pub fn uninstall(&self, name: &str, version: &Version) -> Result<Arc<Instance>> {
        self.uninstall_with(name, version, true, false)
    }

    /// [`Registry::uninstall`], refused (`MODULE_REQUIRED`) unless `force` when the instance is
    /// the last implementation of an SPI other running modules require.
    pub fn uninstall_checked(&self, name: &str, version: &Version, force: bool) -> Result<Arc<Instance>> {
        self.uninstall_with(name, version, true, !force)
    }

    /// [`Registry::uninstall`]; `hand_over` says whether another version takes the traffic of an
    /// active one.
    /// With `check_dependents`, refuses (`MODULE_REQUIRED`) to remove the last implementation of
    /// an SPI another running module requires; checked under the registry's lock, with the
    /// version that would take over, so two concurrent uninstalls cannot both pass.
    fn uninstall_with(
        &self,
        name: &str,
        version: &Version,
        hand_over: bool,
        check_dependents: bool,
    ) -> Result<Arc<Instance>> {
        let instance = self.find(name, version)?;
        if !instance.state().is_live() {
            let mut modules = lock(&self.modules);
            if let Some(versions) = modules.get_mut(name) {
                // Only this record: a concurrent reinstall may have put a new instance here.
                if versions.instances.get(version).is_some_and(|current| Arc::ptr_eq(current, &instance)) {
                    versions.instances.remove(version);
                }
                if versions.instances.is_empty() {
                    modules.remove(name);
                }
            }
            return Ok(instance);
        }
        if !instance.try_begin_operation() {
            return Err(Error::OperationInProgress { id: instance.id.to_string() });
        }
        if !instance.state().is_live() {
            // A concurrent uninstall finished between the check above and taking the lock.
            instance.end_operation();
            return Ok(instance);
        }
        {
            let mut modules = lock(&self.modules);
            let successor = modules
                .get(name)
                .filter(|versions| versions.active.as_ref() == Some(version))
                .and_then(|versions| {
                    versions.instances.iter().rev().filter(|_| hand_over).find(|(v, i)| {
                        *v != version && i.state() == State::Inactive && !i.is_busy() && !i.is_deactivated()
                    })
                })
                .map(|(v, i)| (v.clone(), Arc::clone(i)));
            if check_dependents
                && let Err(e) =
                    Self::check_dependents(&modules, &instance, successor.as_ref().map(|(_, i)| i))
            {
                instance.end_operation();
                return Err(e);
            }
            // Without a hand-over (a same-version replace) the new build takes this version's
            // seat, its share of a split included.
            if hand_over && let Some(weights) = modules.get_mut(name).and_then(|v| v.weights.as_mut()) {
                weights.remove(version);
            }
            if let Some(versions) = modules.get_mut(name)
                && versions.active.as_ref() == Some(version)
            {
                versions.active = successor.as_ref().map(|(v, _)| v.clone());
                if let Some((_, next)) = successor {
                    next.transition(State::Active, "uninstall", &format!("took over from {}", instance.id));
                }
            }
            // Out of the routing table (including pinned versions) from this swap on.
            instance.transition(State::Draining, "uninstall", "no new requests; waiting for in-flight ones");
            self.publish(&modules);
        }
        instance.stop(&self.config, "uninstall");
        if !instance.is_mapped() {
            self.release_load_path(&instance.load_path);
        }
        self.persist_or_warn();
        self.collect_garbage();
        Ok(instance)
    }

    /// Every version of the module `name`, oldest first, and which one is active.
    pub fn module(&self, name: &str) -> Result<(Vec<Arc<Instance>>, Option<Version>)> {
        let modules = lock(&self.modules);
        let versions = modules.get(name).ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
        Ok((versions.instances.values().cloned().collect(), versions.active.clone()))
    }

    /// Every instance the base knows about, with whether it is its module's active version.
    pub fn all(&self) -> Vec<(Arc<Instance>, bool)> {
        let modules = lock(&self.modules);
        modules
            .values()
            .flat_map(|versions| {
                versions.instances.iter().map(|(v, i)| (Arc::clone(i), versions.active.as_ref() == Some(v)))
            })
            .collect()
    }

    /// Stops every live instance (in parallel), for shutdown: each drains for the full
    /// `drain_timeout`.
    pub fn stop_all(&self) {
        self.stop_all_draining(self.config.drain_timeout);
    }

    /// [`Registry::stop_all`] before a worker restart (a memory limit escalated): each instance
    /// drains for the short `restart_drain_timeout` only, since every request still in flight
    /// delays the fresh worker that will serve the traffic queued meanwhile.
    pub(crate) fn stop_all_for_worker_restart(&self) {
        self.stop_all_draining(self.config.restart_drain_timeout);
    }

    fn stop_all_draining(&self, drain: Duration) {
        // What is recorded is what the next start restores: shutdown stops are not changes.
        self.shutting_down.store(true, Ordering::SeqCst);
        self.routes.store(Arc::new(RoutingTable::new()));
        let live: Vec<_> = self.all().into_iter().map(|(i, _)| i).filter(|i| i.state().is_live()).collect();
        thread::scope(|scope| {
            for instance in &live {
                scope.spawn(move || {
                    if instance.try_begin_operation() {
                        if instance.state().is_live() {
                            instance.stop_draining(&self.config, drain, "shutdown");
                        } else {
                            instance.end_operation();
                        }
                    }
                });
            }
        });
    }

    fn find(&self, name: &str, version: &Version) -> Result<Arc<Instance>> {
        lock(&self.modules)
            .get(name)
            .and_then(|v| v.instances.get(version))
            .cloned()
            .ok_or_else(|| Error::NotFound { what: format!("{name}@{version}") })
    }

    /// Registers a freshly loaded instance under its identity, unless a live one holds it (with
    /// `replace`, a live one of the same identity is drained and unloaded first, and returned).
    fn reserve(
        &self,
        instance: &Arc<Instance>,
        replace: bool,
        check_requires: bool,
    ) -> Result<Option<Arc<Instance>>> {
        self.check_spis(instance)?;
        if check_requires {
            self.check_requires(instance)?;
        }
        let mut replaced = None;
        if replace {
            let same =
                self.find(&instance.id.name, &instance.id.version).ok().filter(|i| i.state().is_live());
            if let Some(same) = same {
                // The new instance takes this version's seat: no other version takes the traffic
                // in between (requests meanwhile get 503 MODULE_UNAVAILABLE). `state.json` keeps
                // the old build until the new one is routed (or failed).
                self.hold_record(&same);
                match self.uninstall_with(&same.id.name, &same.id.version, false, false) {
                    Ok(same) => replaced = Some(same),
                    Err(e) => {
                        self.release_record(&same.id);
                        return Err(e);
                    }
                }
            }
        }
        let mut modules = lock(&self.modules);
        let versions = modules.entry(instance.id.name.clone()).or_default();
        if let Some(existing) = versions.instances.get(&instance.id.version) {
            if existing.state().is_live() {
                return Err(Error::AlreadyInstalled { id: instance.id.to_string() });
            }
            instance.inherit_history(existing.history());
        }
        versions.instances.insert(instance.id.version.clone(), Arc::clone(instance));
        drop(modules);
        instance.set_limits(self.resolve_limits(instance));
        // Before the start hook runs: the module may call, and reads its configuration.
        instance.attach(self.me.clone());
        self.send_config(instance);
        Ok(replaced)
    }

    /// A live instance of the artifact `sha256` under the name an install would give it (the
    /// package name unless `name` says otherwise), found without loading anything.
    fn live_instance_of(&self, sha256: &str, name: Option<&str>) -> Option<Arc<Instance>> {
        self.all().into_iter().map(|(i, _)| i).find(|i| {
            i.artifact.sha256 == sha256 && i.id.name == name.unwrap_or(&i.package) && i.state().is_live()
        })
    }

    fn claim_load_path(&self, artifact: &crate::artifact::Artifact) -> Result<PathBuf> {
        let mut loaded = lock(&self.loaded_paths);
        if loaded.insert(artifact.path.clone()) {
            return Ok(artifact.path.clone());
        }
        let copy = self.store.private_copy(artifact)?;
        loaded.insert(copy.clone());
        Ok(copy)
    }

    /// Frees a load path for reuse (call only once its library is known to be unmapped), and
    /// deletes it when it was a private copy.
    fn release_load_path(&self, path: &Path) {
        lock(&self.loaded_paths).remove(path);
        self.store.remove_private_copy(path);
    }

    fn publish(&self, modules: &BTreeMap<String, Versions>) {
        let previous = self.routes.load();
        let table: RoutingTable = modules
            .iter()
            .filter_map(|(name, versions)| {
                let routable = |i: &&Arc<Instance>| {
                    matches!(i.state(), State::Active | State::Inactive) && !i.is_deactivated()
                };
                let running: Vec<_> = versions.instances.values().filter(routable).cloned().collect();
                if running.is_empty() {
                    return None;
                }
                let active = versions
                    .active
                    .as_ref()
                    .and_then(|v| versions.instances.get(v))
                    .filter(|i| i.state() == State::Active && !i.is_deactivated())
                    .cloned();
                let split = versions.weights.as_ref().and_then(|weights| {
                    let weighted = weights
                        .iter()
                        .filter_map(|(v, w)| {
                            Some((Arc::clone(versions.instances.get(v).filter(routable)?), *w))
                        })
                        .collect();
                    Split::new(weighted, previous.get(name).and_then(|route| route.split.as_ref()))
                });
                Some((name.clone(), Route { active, running, split }))
            })
            .collect();
        self.routes.store(Arc::new(table));
    }
}

//! Which modules the base hosts, which version of each gets traffic, and the operations that
//! change that.
//!
//! The routing table is an immutable map swapped atomically (`arc-swap`): the request path
//! reads it without a lock, and an install or uninstall publishes a new one. A request that
//! already holds an instance finishes on it.
//!
//! # The lifecycle API
//!
//! What an operator, a hot-reload watcher or a fleet agent drives, all blocking (call them off
//! the async runtime), each one operation at a time per identity (`OPERATION_IN_PROGRESS`):
//!
//! | to | call | gives |
//! |---|---|---|
//! | install bytes as `name@version` | [`Registry::install_with`] ([`InstallOptions`]: name, activate, [`Strategy`], expected sha256, signature) | [`Installed`] |
//! | make a version active | [`Registry::switch`] | the instance and the one it took over from |
//! | split traffic by weight | [`Registry::set_weights`] | |
//! | uninstall | [`Registry::uninstall_checked`] ([`Dependents`]) | the stopped instance |
//! | restart in place | [`Registry::restart`] | the fresh instance |
//! | report status | [`Registry::all`], [`Registry::module`], [`Instance::state`], [`Instance::history`] | |
//!
//! Errors are [`Error`] variants with a stable [`Error::code`], the same the operations API
//! answers with. The state is split in three: this file holds the module table and the routing
//! table, `lifecycle.rs` the operations above as straight-line code, and `policy.rs` their
//! decisions (which version takes over, which SPI would go missing, in which order a restore
//! starts modules) as pure functions over a snapshot of the table.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwap;
use semver::Version;
use serde::{Deserialize, Serialize};

mod crashes;
mod durable;
mod lifecycle;
mod policy;
mod rollback;
mod samples;
mod seats;
mod spis;
mod watch;

pub(crate) use durable::RetryTarget;
pub use durable::{Quarantined, Restored};
pub use lifecycle::Dependents;
pub use samples::{InstanceSamples, Sample};
/// How far apart an instance's samples are, and how many it keeps.
pub(crate) const SAMPLE_INTERVAL_MS: u64 = samples::TICKS_PER_SAMPLE * 100;
pub(crate) use samples::KEPT as SAMPLES_KEPT;
pub use spis::compatible;

use crate::{
    accounting::Metrics,
    artifact::ArtifactStore,
    config::Config,
    error::{Error, Result, Subject},
    instance::{Instance, State},
    limits::{LimitOverrides, Limits},
    logs::ModuleLog,
    routing::{Route, RoutingTable, Split},
    sync::lock,
};

/// How many uninstalled instances the base remembers (with their history): per module, and
/// across modules.
const RETIRED_PER_MODULE: usize = 8;
const RETIRED: usize = 64;

/// An uninstalled instance as the base remembers it: what it was, what it served, and its
/// history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Retired {
    pub name: String,
    pub package: String,
    pub version: String,
    pub sha256: String,
    pub state: State,
    pub installed_at: String,
    pub retired_at: String,
    /// Heap the module still held when it stopped (what its unload freed on its behalf).
    pub leaked_bytes: Option<u64>,
    pub heap_peak_bytes: u64,
    pub traffic: crate::instance::Traffic,
    pub history: Vec<crate::instance::Transition>,
}

impl Retired {
    fn of(instance: &Instance) -> Self {
        Retired {
            name: instance.id.name.clone(),
            package: instance.package.clone(),
            version: instance.id.version.to_string(),
            sha256: instance.artifact.sha256.clone(),
            state: instance.state(),
            installed_at: humantime::format_rfc3339_millis(instance.installed_at).to_string(),
            retired_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            leaked_bytes: instance.heap_at_stop().map(|h| h.live_bytes),
            heap_peak_bytes: instance.heap_peak(),
            traffic: instance.traffic(),
            history: instance.history(),
        }
    }
}

/// How an install treats the versions of the module already installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Refuse the install with `FLEET_OWNED` when the module it turns out to be is owned (see
    /// [`Registry::set_owner`]): the operations API's installs without `?force=true`.
    pub refuse_owned: bool,
}

/// What an install did.
#[derive(Debug)]
pub struct Installed {
    /// The new instance.
    pub instance: Arc<Instance>,
    /// The version a replace took the traffic from and unloaded.
    pub replaced: Option<Arc<Instance>>,
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
    /// Modules whose build a same-version replace is swapping (`registry/seats.rs`): their
    /// requests wait for the new build.
    seats: Mutex<seats::Seats>,
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
    /// What the base offers modules besides traffic, one entry per service (`services.rs`).
    services: crate::services::Services,
    /// Crash records processed and the crashes of the window (`registry/crashes.rs`).
    crash_ledger: Mutex<crate::crash::Ledger>,
    /// Uninstalled instances, newest last: out of the listing, their history still reachable
    /// (`GET /api/v1/modules/{name}`'s `retired`). At most [`RETIRED_PER_MODULE`] per module
    /// and [`RETIRED`] in all.
    retired: Mutex<VecDeque<Retired>>,
    /// The recent samples of every live instance (`registry/samples.rs`).
    samples: Mutex<samples::Samples>,
    /// The keys every artifact must be signed with (`--trusted-keys`), read at start.
    trusted_keys: Option<crate::signing::TrustedKeys>,
    /// The bound traffic and operations addresses, once `Base::serve` bound them.
    bound: std::sync::OnceLock<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// Modules something other than the operator owns (a fleet agent), by name: the operations
    /// API refuses to change them unless forced (`FLEET_OWNED`).
    owners: Mutex<HashMap<String, String>>,
}

#[derive(Debug, Default)]
pub(crate) struct Versions {
    pub(crate) instances: BTreeMap<Version, Arc<Instance>>,
    pub(crate) active: Option<Version>,
    /// Traffic weights across versions (a canary), when set.
    weights: Option<BTreeMap<Version, u32>>,
    /// The build that had the traffic before the last switch, replace or hand-over: what a
    /// rollback returns to (`Registry::rollback`).
    pub(crate) previous: Option<Previous>,
}

/// A build that had a module's traffic: its version and artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Previous {
    pub(crate) version: Version,
    pub(crate) sha256: String,
}

impl Previous {
    pub(crate) fn of(instance: &Instance) -> Self {
        Self { version: instance.id.version.clone(), sha256: instance.artifact.sha256.clone() }
    }
}

impl Registry {
    /// An empty registry keeping artifacts (and the modules' key-value store) under
    /// `config.data_dir`. Module calls that wait run on the current tokio runtime, if any (see
    /// [`Registry::set_runtime`]).
    pub fn new(config: Config) -> Result<Arc<Self>> {
        Self::with_services(config, |_| {})
    }

    /// [`Registry::new`], with the built-in services changed by `choose` (services added or
    /// taken out) before any module can call them.
    pub(crate) fn with_services(
        config: Config,
        choose: impl FnOnce(&mut crate::services::Services),
    ) -> Result<Arc<Self>> {
        let declared_spis = config.spis.clone();
        let store = ArtifactStore::open(&config.data_dir)?;
        let mut services = crate::services::Services::builtin(&config)?;
        choose(&mut services);
        // The store and the directories exist now: make all of it the base's alone (a data
        // directory from an older version, or a `kv.redb` redb just created with the umask's
        // mode).
        crate::private::tighten(store.data_dir());
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
            services,
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
            seats: Mutex::new(HashMap::new()),
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
            retired: Mutex::new(VecDeque::new()),
            samples: Mutex::new(samples::Samples::default()),
            bound: std::sync::OnceLock::new(),
            owners: Mutex::new(HashMap::new()),
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
        self.services.kv()
    }

    /// Publish and subscribe, for the base's own code too.
    pub fn events(&self) -> &crate::services::events::Events {
        self.services.events()
    }

    /// The modules' configuration values.
    pub fn module_configs(&self) -> &crate::services::module_config::ModuleConfigs {
        self.services.module_configs()
    }

    /// The services modules can call, by name.
    pub fn services(&self) -> &crate::services::Services {
        &self.services
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
            &self.config.limit_defaults(),
        )
    }

    /// Why nothing serves `/<name>/`: `503 MODULE_UNAVAILABLE` with the reason when a version of
    /// the module is installed (say, deactivated), `404 MODULE_NOT_FOUND` otherwise.
    pub fn why_unrouted(&self, name: &str) -> Error {
        if let Some(reason) = lock(&self.restarting).get(name) {
            return Error::ModuleUnavailable {
                id: Subject::Name(name.to_owned()),
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
        Error::ModuleUnavailable { id: Subject::Name(name.to_owned()), reason }
    }

    /// The traffic and operations addresses the base listens on (port 0 resolved), once
    /// [`crate::Base::serve`] bound them (before its `pedestal ready:` line); `None` before.
    pub fn bound_addresses(&self) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        self.bound.get().copied()
    }

    /// Records the bound addresses (the first call wins).
    pub(crate) fn set_bound_addresses(&self, traffic: std::net::SocketAddr, admin: std::net::SocketAddr) {
        let _ = self.bound.set((traffic, admin));
    }

    /// Marks module `name` as owned by `owner` (a fleet agent: `"fleet"`), or as the
    /// operator's again with `None`. The operations API refuses to install, replace, switch,
    /// re-weight, uninstall or re-limit an owned module unless asked with `?force=true`
    /// (`FLEET_OWNED`); this API ([`Registry::install_with`], [`Registry::switch`]...) does not
    /// check it: the owner drives the module through it.
    pub fn set_owner(&self, name: &str, owner: Option<&str>) {
        let mut owners = lock(&self.owners);
        match owner {
            Some(owner) => owners.insert(name.to_owned(), owner.to_owned()),
            None => owners.remove(name),
        };
    }

    /// Who owns module `name`, if not the operator (see [`Registry::set_owner`]).
    pub fn owner(&self, name: &str) -> Option<String> {
        lock(&self.owners).get(name).cloned()
    }

    /// `FLEET_OWNED` when module `name` is owned and the operator did not force the change.
    pub(crate) fn check_owner(&self, name: &str, force: bool) -> Result<()> {
        match self.owner(name) {
            Some(owner) if !force => Err(Error::FleetOwned { name: name.to_owned(), owner }),
            _ => Ok(()),
        }
    }

    /// The stored artifact with this sha256 (lower-case hex), if the store holds it: its path
    /// and size, for a base serving its store to peers.
    pub fn artifact(&self, sha256: &str) -> Option<crate::artifact::Artifact> {
        self.store.get(sha256)
    }

    /// The sha256 of every artifact in the store (those whose bytes are there).
    pub fn artifact_hashes(&self) -> Vec<String> {
        self.store.hashes().into_iter().filter(|sha| self.store.get(sha).is_some()).collect()
    }

    /// The current routing table.
    pub fn routes(&self) -> Arc<RoutingTable> {
        self.routes.load_full()
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

    /// Module `name`'s traffic weights, if set.
    pub fn weights(&self, name: &str) -> Option<BTreeMap<Version, u32>> {
        lock(&self.modules).get(name).and_then(|v| v.weights.clone())
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

    /// Module `name`'s uninstalled instances that the base still remembers, newest first.
    pub fn retired(&self, name: &str) -> Vec<Retired> {
        lock(&self.retired).iter().rev().filter(|r| r.name == name).cloned().collect()
    }

    /// Takes `instance`, which ended (uninstalled, or forgotten once broken), out of its
    /// module's versions, when it is still the one recorded there (a concurrent reinstall may
    /// have put a new instance in its place), and remembers what it was among the retired (a
    /// record only: nothing of the instance itself is kept). A module left without instances is
    /// forgotten (its weights and rollback record with it).
    fn retire(&self, instance: &Arc<Instance>) {
        let mut modules = lock(&self.modules);
        let name = &instance.id.name;
        let Some(versions) = modules.get_mut(name) else { return };
        if !versions.instances.get(&instance.id.version).is_some_and(|current| Arc::ptr_eq(current, instance))
        {
            return;
        }
        versions.instances.remove(&instance.id.version);
        if versions.instances.is_empty() {
            modules.remove(name);
        }
        drop(modules);
        let mut retired = lock(&self.retired);
        retired.push_back(Retired::of(instance));
        if retired.iter().filter(|r| r.name == *name).count() > RETIRED_PER_MODULE
            && let Some(oldest) = retired.iter().position(|r| r.name == *name)
        {
            retired.remove(oldest);
        }
        while retired.len() > RETIRED {
            retired.pop_front();
        }
    }

    /// The artifacts of instances still loaded or mapped (live or pinned): garbage collection
    /// keeps them.
    fn artifacts_loaded(&self) -> HashSet<String> {
        self.all()
            .into_iter()
            .filter(|(i, _)| i.state().is_live() || i.is_mapped())
            .map(|(i, _)| i.artifact.sha256.clone())
            .collect()
    }

    fn find(&self, name: &str, version: &Version) -> Result<Arc<Instance>> {
        lock(&self.modules)
            .get(name)
            .and_then(|v| v.instances.get(version))
            .cloned()
            .ok_or_else(|| Error::NotFound { what: format!("{name}@{version}") })
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

//! Which modules the base hosts, which version of each gets traffic, and the operations that
//! change that.
//!
//! The routing table is an immutable map swapped atomically (`arc-swap`): the request path
//! reads it without a lock, and an install or uninstall publishes a new one. A request that
//! already holds an instance finishes on it.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use semver::Version;

use crate::{
    accounting::Metrics,
    artifact::ArtifactStore,
    config::Config,
    elf,
    error::{Error, Result},
    instance::{Instance, MemoryCrossing, State, lock},
    limits::{Action, LimitOverrides, Limits},
    loader,
    logs::ModuleLog,
};

/// Module name → the instance that serves `/<name>/`.
pub type RoutingTable = HashMap<String, Arc<Instance>>;

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
}

/// At most this many memory-limit restarts of one module in [`RESTART_WINDOW`]; beyond that
/// the instance is deactivated instead.
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct Versions {
    instances: BTreeMap<Version, Arc<Instance>>,
    active: Option<Version>,
}

impl Registry {
    /// An empty registry keeping artifacts under `config.data_dir`.
    pub fn new(config: Config) -> Result<Self> {
        let store = ArtifactStore::open(&config.data_dir)?;
        Ok(Self {
            config,
            metrics: Metrics::new(),
            logs: Mutex::new(HashMap::new()),
            store,
            modules: Mutex::new(BTreeMap::new()),
            routes: ArcSwap::from_pointee(RoutingTable::new()),
            loaded_paths: Mutex::new(HashSet::new()),
            limit_overrides: Mutex::new(HashMap::new()),
            restarts: Mutex::new(HashMap::new()),
        })
    }

    /// The settings the registry runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The log of module `name` (created on first use).
    pub fn log(&self, name: &str) -> Arc<ModuleLog> {
        let mut logs = lock(&self.logs);
        Arc::clone(logs.entry(name.to_owned()).or_insert_with(|| {
            let dir = self.store.data_dir().join("logs");
            Arc::new(ModuleLog::new(
                dir,
                name,
                self.config.module_log_format,
                self.config.module_log_max_bytes,
            ))
        }))
    }

    /// The log of module `name`, if it ever had an instance.
    pub fn existing_log(&self, name: &str) -> Option<Arc<ModuleLog>> {
        lock(&self.logs).get(name).cloned()
    }

    /// Every live instance's metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.all())
    }

    /// Samples every live instance's heap (keeping peaks current) and enforces the limits that
    /// are watched rather than checked per request: the memory soft limit and runaway requests.
    /// The base calls it ten times a second.
    pub fn watch_limits(self: &Arc<Self>) {
        for (instance, _) in self.all() {
            instance.sample_heap();
            if !matches!(instance.state(), State::Active | State::Inactive) {
                continue;
            }
            for runaway in instance.find_runaways() {
                let message = format!(
                    "runaway request: {} is still running {} ms after it was sent, far past its {} ms \
                     timeout (its caller got 504); the base cannot stop it, the module must",
                    runaway.request,
                    runaway.running_ms,
                    instance.limits().request_timeout_ms
                );
                self.warn(&instance, "runaway", &message);
            }
            if let Some(crossing) = instance.check_memory() {
                self.memory_limit_crossed(&instance, crossing);
            }
        }
    }

    /// Warns in the base's output and in the module's own log.
    fn warn(&self, instance: &Instance, target: &str, message: &str) {
        let (name, version) = (&instance.id.name, instance.id.version.to_string());
        tracing::warn!(module = %name, version = %version, "{message}");
        let line = crate::logs::LogLine::new(
            pedestal_module_api::abi::LogLevel::Warn,
            name,
            &version,
            target,
            message,
            "",
        );
        self.log(name).write(line);
    }

    fn memory_limit_crossed(self: &Arc<Self>, instance: &Arc<Instance>, crossing: MemoryCrossing) {
        let MemoryCrossing { live_bytes, limit, action } = crossing;
        let action = if action == Action::Restart && !self.may_restart(&instance.id.name) {
            self.warn(
                instance,
                "limits",
                &format!(
                    "memory soft limit: {MAX_RESTARTS} restarts in {} s already; deactivating instead",
                    RESTART_WINDOW.as_secs()
                ),
            );
            Action::Deactivate
        } else {
            action
        };
        let taken = match action {
            Action::Log => "logged",
            Action::Deactivate => "deactivating the instance",
            Action::Restart => "restarting the instance",
        };
        let message = format!(
            "memory soft limit crossed: {live_bytes} live heap bytes, over the limit of {limit}; {taken}"
        );
        self.warn(instance, "limits", &message);
        match action {
            Action::Log => {}
            Action::Deactivate => self.deactivate(instance, "memory_limit", &message),
            Action::Restart => {
                let registry = Arc::clone(self);
                let instance = Arc::clone(instance);
                let restarter = thread::Builder::new().name("pedestal-restart".into()).spawn(move || {
                    if let Err(e) = registry.restart(&instance, "memory_limit", &message) {
                        registry.warn(&instance, "limits", &format!("restart failed: {e}"));
                    }
                });
                if let Err(e) = restarter {
                    tracing::error!("cannot start a restart thread: {e}");
                }
            }
        }
    }

    /// Records a restart of module `name` unless it already restarted [`MAX_RESTARTS`] times in
    /// [`RESTART_WINDOW`].
    fn may_restart(&self, name: &str) -> bool {
        let mut restarts = lock(&self.restarts);
        let recent = restarts.entry(name.to_owned()).or_default();
        recent.retain(|at| at.elapsed() < RESTART_WINDOW);
        if recent.len() >= MAX_RESTARTS {
            return false;
        }
        recent.push_back(Instant::now());
        true
    }

    /// Takes an instance out of traffic (it stays loaded, `inactive`). Requests to its module
    /// get `503 MODULE_UNAVAILABLE` until a version is active again.
    pub fn deactivate(&self, instance: &Arc<Instance>, reason: &str, message: &str) {
        if !instance.try_begin_operation() {
            return;
        }
        let mut modules = lock(&self.modules);
        if instance.state() == State::Active {
            if let Some(versions) = modules.get_mut(&instance.id.name)
                && versions.active.as_ref() == Some(&instance.id.version)
            {
                versions.active = None;
            }
            instance.transition(State::Inactive, reason, message);
            self.publish(&modules);
        }
        drop(modules);
        instance.end_operation();
    }

    /// Stops an instance and starts a fresh one from the same artifact under the same identity;
    /// it takes the traffic back if the old one had it. Blocking.
    pub fn restart(&self, instance: &Arc<Instance>, reason: &str, message: &str) -> Result<Arc<Instance>> {
        if !instance.try_begin_operation() {
            return Err(Error::OperationInProgress { id: instance.id.to_string() });
        }
        {
            // Keep `active` pointing at this version: the fresh instance takes it over.
            let modules = lock(&self.modules);
            instance.transition(State::Draining, reason, message);
            self.publish(&modules);
        }
        instance.stop(&self.config, reason);
        if !instance.is_mapped() {
            self.release_load_path(&instance.load_path);
        }
        let bytes = std::fs::read(&instance.artifact.path)
            .map_err(Error::io(format!("reading {}", instance.artifact.path.display())))?;
        let name = (instance.id.name != instance.package).then_some(instance.id.name.as_str());
        self.install(&bytes, name)
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

    /// Installs a module from its `.so` bytes and starts it. Blocking: call it off the async
    /// runtime. The first version of a module becomes active; later ones install inactive.
    ///
    /// `name` installs the module under another name than its package's (mounted at `/<name>/`,
    /// logged and accounted as `<name>`): the same artifact can serve many tenants, each its own
    /// instance.
    pub fn install(&self, bytes: &[u8], name: Option<&str>) -> Result<Arc<Instance>> {
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
        elf::check_shared_object(bytes).map_err(|reason| Error::NotAModule { reason })?;
        let artifact = self.store.put(bytes)?;
        if let Some(existing) = self.live_instance_of(&artifact.sha256, name) {
            return Err(Error::AlreadyInstalled { id: existing.id.to_string() });
        }
        let load_path = self.claim_load_path(&artifact)?;
        let launched = Instance::launch(
            artifact,
            load_path.clone(),
            name,
            &self.config,
            &self.metrics,
            &|name| self.log(name),
            |instance| self.reserve(instance),
        );
        let instance = match launched {
            Ok(instance) => instance,
            Err(e) => {
                // No instance to ask (it failed before or during start): look at the mappings.
                if !loader::is_mapped(&load_path) {
                    self.release_load_path(&load_path);
                }
                return Err(e);
            }
        };
        let mut modules = lock(&self.modules);
        let versions = modules.entry(instance.id.name.clone()).or_default();
        let active_is_live = versions
            .active
            .as_ref()
            .and_then(|v| versions.instances.get(v))
            .is_some_and(|i| matches!(i.state(), State::Active));
        if active_is_live {
            instance.transition(State::Inactive, "install", "started; another version is active");
        } else {
            versions.active = Some(instance.id.version.clone());
            instance.transition(State::Active, "install", "started and receiving traffic");
            self.publish(&modules);
        }
        // Only now, with the instance routed, may another operation (an uninstall) take it.
        instance.end_operation();
        Ok(instance)
    }

    /// Stops and unloads `name@version`. A live instance is drained, stopped and unloaded; an
    /// instance that already ended (stopped, broken) is forgotten. If it was the active version,
    /// the newest other running version takes the traffic.
    pub fn uninstall(&self, name: &str, version: &Version) -> Result<Arc<Instance>> {
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
        {
            let mut modules = lock(&self.modules);
            if let Some(versions) = modules.get_mut(name)
                && versions.active.as_ref() == Some(version)
            {
                let successor = versions
                    .instances
                    .iter()
                    .rev()
                    .find(|(v, i)| *v != version && i.state() == State::Inactive && !i.is_busy())
                    .map(|(v, i)| (v.clone(), Arc::clone(i)));
                versions.active = successor.as_ref().map(|(v, _)| v.clone());
                if let Some((_, next)) = successor {
                    next.transition(State::Active, "uninstall", &format!("took over from {}", instance.id));
                }
            }
            self.publish(&modules);
        }
        instance.stop(&self.config, "uninstall");
        if !instance.is_mapped() {
            self.release_load_path(&instance.load_path);
        }
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

    /// Stops every live instance (in parallel), for shutdown.
    pub fn stop_all(&self) {
        self.routes.store(Arc::new(RoutingTable::new()));
        let live: Vec<_> = self.all().into_iter().map(|(i, _)| i).filter(|i| i.state().is_live()).collect();
        thread::scope(|scope| {
            for instance in &live {
                scope.spawn(move || {
                    if instance.try_begin_operation() {
                        instance.stop(&self.config, "shutdown");
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

    /// Registers a freshly loaded instance under its identity, unless a live one holds it.
    fn reserve(&self, instance: &Arc<Instance>) -> Result<()> {
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
        Ok(())
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
        let table: RoutingTable = modules
            .iter()
            .filter_map(|(name, versions)| {
                let instance = versions.instances.get(versions.active.as_ref()?)?;
                (instance.state() == State::Active).then(|| (name.clone(), Arc::clone(instance)))
            })
            .collect();
        self.routes.store(Arc::new(table));
    }
}

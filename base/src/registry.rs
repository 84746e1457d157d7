//! Which modules the base hosts, which version of each gets traffic, and the operations that
//! change that.
//!
//! The routing table is an immutable map swapped atomically (`arc-swap`): the request path
//! reads it without a lock, and an install or uninstall publishes a new one. A request that
//! already holds an instance finishes on it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
};

use arc_swap::ArcSwap;
use semver::Version;

use crate::{
    accounting::Metrics,
    artifact::ArtifactStore,
    config::Config,
    elf,
    error::{Error, Result},
    instance::{Instance, State, lock},
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
}

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

    /// Samples every live instance's heap, keeping peaks current.
    pub fn sample_heaps(&self) {
        for (instance, _) in self.all() {
            instance.sample_heap();
        }
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

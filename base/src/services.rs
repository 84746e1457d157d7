//! What the base offers modules besides traffic: calls to other modules' SPIs, and the base's
//! own services (key-value store, events, SPI lookup, configuration), each a [`Service`].
//!
//! A module's call arrives through the `call` host callback on a module thread. Quick work
//! (reads, publishing, lookups) is done there and then; anything that waits (another module's
//! answer, a durable write) runs on the base's runtime. Either way the answer is queued as a
//! completion on the calling instance, which wakes it.
//!
//! A service is one value in the registry's [`Services`] table, registered in one place
//! ([`Services::builtin`], or [`BaseBuilder::service`](crate::BaseBuilder::service) for a
//! base's own): the table routes calls by the service's name and tells every service when an
//! instance starts or stops and when the config file is reloaded. Adding one touches no other
//! file of the base.

pub mod events;
pub mod kv;
pub mod module_config;
pub mod spis;

use std::sync::Arc;

use pedestal_module_api::{
    SpiError,
    abi::{RESERVED_SPI_PREFIX, SpiStatus},
};
use semver::Version;

pub(crate) use crate::calls::{OwnedCall, refuse};
use crate::{
    calls::{ModuleCalls, answer},
    error::Error,
    instance::{Instance, ModuleId, State},
    registry::{Registry, compatible},
    stats::ModuleMetric,
};

/// The runtime reaches the base's services through this (see `calls.rs`).
impl ModuleCalls for Registry {
    fn start_call(self: Arc<Self>, caller: Arc<Instance>, call: OwnedCall) {
        Registry::start_call(self, caller, call);
    }

    fn register_metric(
        &self,
        id: &ModuleId,
        kind: pedestal_module_api::abi::MetricKind,
        name: &str,
        help: &str,
    ) -> Option<ModuleMetric> {
        self.metrics().module_metric(id, kind, name, help)
    }
}

/// A capability the base offers modules under a reserved name (`pedestal.*`).
///
/// Every hook runs on a base or module thread that must not block on another module: do quick
/// work in place and anything that waits on the base's runtime ([`Call::runtime`]).
pub trait Service: Send + Sync + std::fmt::Debug + 'static {
    /// The name modules call it by (`pedestal.kv`); it must start with `pedestal.`.
    fn name(&self) -> &'static str;

    /// Answers a module's call, now or later, with [`Call::answer`]. The caller's identity is
    /// the calling instance's ([`Call::caller`]), never something the call says. By default a
    /// service takes no calls (it only pushes to modules) and answers as an unknown service.
    fn call(self: Arc<Self>, call: Call) {
        call.unknown();
    }

    /// An instance of a module was loaded and is about to run its start hook (and may call from
    /// it): the moment to push what it reads at start.
    fn instance_started(&self, _instance: &Instance) {}

    /// An instance was stopped by an uninstall or a restart: the moment to drop what the
    /// service keeps for it. Not called when the whole base stops (shutdown, worker restart),
    /// nor for an instance whose start hook failed after `instance_started`, nor for one that
    /// ended `broken` or crashed: a service must not rely on it to free what it holds, only to
    /// free it early (hold per-instance state weakly, as `pedestal.events` does).
    fn instance_stopped(&self, _instance: &Instance) {}

    /// The config file was re-read; `changed` names the modules whose configuration values
    /// changed.
    fn config_reloaded(&self, _registry: &Registry, _changed: &[String]) {}
}

/// A call of a service, with what is needed to answer it. Dropping it without an answer leaves
/// the module waiting until its call times out: answer every call.
#[derive(Debug)]
pub struct Call {
    registry: Arc<Registry>,
    caller: Arc<Instance>,
    call: OwnedCall,
}

impl Call {
    /// The calling instance: its identity (`caller().id`) is who is calling.
    pub fn caller(&self) -> &Arc<Instance> {
        &self.caller
    }

    /// The method called.
    pub fn method(&self) -> &str {
        &self.call.method
    }

    /// The call's payload, as the module encoded it.
    pub fn payload(&self) -> &[u8] {
        &self.call.payload
    }

    /// The registry, for services that look at the other modules (`pedestal.spis`).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The base's runtime, where work that waits runs; None before the base serves.
    pub fn runtime(&self) -> Option<tokio::runtime::Handle> {
        self.registry.runtime()
    }

    /// Answers the call: a payload, or an error the module sees as an [`SpiError`].
    pub fn answer(self, result: Result<Vec<u8>, SpiError>) {
        answer(&self.caller, self.call.id, result);
    }

    /// Answers `SERVICE_UNAVAILABLE`: the service cannot take calls now.
    pub fn refuse(self, why: &str) {
        refuse(&self.caller, self.call.id, why);
    }

    /// Answers as a base without this service would: the module sees an unknown service.
    pub fn unknown(self) {
        self.caller.complete(self.call.id, SpiStatus::Unknown, Vec::new());
    }
}

/// The services of a base, by name.
#[derive(Debug)]
pub struct Services {
    table: Vec<Arc<dyn Service>>,
    kv: Arc<kv::KvService>,
    events: Arc<events::EventsService>,
    configs: Arc<module_config::ConfigService>,
}

impl Services {
    /// The base's own services: `pedestal.kv`, `pedestal.events`, `pedestal.spis` and
    /// `pedestal.config`, opened under the configured data directory.
    pub(crate) fn builtin(config: &crate::config::Config) -> crate::error::Result<Self> {
        let kv = Arc::new(kv::KvService::open(&config.data_dir.join("kv.redb"))?);
        let events = Arc::new(events::EventsService::default());
        let configs = Arc::new(module_config::ConfigService::new(config));
        let table: Vec<Arc<dyn Service>> =
            vec![kv.clone(), events.clone(), Arc::new(spis::SpisService), configs.clone()];
        Ok(Self { table, kv, events, configs })
    }

    /// Adds `service`, in place of a service of the same name.
    pub(crate) fn add(&mut self, service: Arc<dyn Service>) {
        self.remove(service.name());
        self.table.push(service);
    }

    /// Takes the service `name` out: modules calling it see an unknown service, as with a base
    /// that never had it. The base's own handle on a built-in's store stays (the operations
    /// API still reads it).
    pub(crate) fn remove(&mut self, name: &str) {
        self.table.retain(|service| service.name() != name);
    }

    /// The service modules call as `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Service>> {
        self.table.iter().find(|service| service.name() == name)
    }

    /// The names of the services, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.table.iter().map(|service| service.name()).collect()
    }

    pub(crate) fn kv(&self) -> &kv::Kv {
        self.kv.store()
    }

    pub(crate) fn events(&self) -> &events::Events {
        self.events.events()
    }

    pub(crate) fn module_configs(&self) -> &module_config::ModuleConfigs {
        self.configs.configs()
    }

    pub(crate) fn instance_started(&self, instance: &Instance) {
        for service in &self.table {
            service.instance_started(instance);
        }
    }

    pub(crate) fn instance_stopped(&self, instance: &Instance) {
        for service in &self.table {
            service.instance_stopped(instance);
        }
    }

    pub(crate) fn config_reloaded(&self, registry: &Registry, changed: &[String]) {
        for service in &self.table {
            service.config_reloaded(registry, changed);
        }
    }
}

/// A base error as the module sees it.
fn spi_error(error: Error) -> SpiError {
    match error {
        Error::Spi(e) => e,
        other => SpiError::new(other.code(), other.to_string()),
    }
}

impl Registry {
    /// Starts module `caller`'s call. Runs on a module thread: never blocks on another module.
    pub(crate) fn start_call(self: Arc<Self>, caller: Arc<Instance>, call: OwnedCall) {
        if let Some(service) = self.services().get(&call.service) {
            let service = Arc::clone(service);
            return service.call(Call { registry: self, caller, call });
        }
        if call.service.starts_with(RESERVED_SPI_PREFIX) {
            return caller.complete(call.id, SpiStatus::Unknown, Vec::new());
        }
        self.module_call(caller, call)
    }

    /// A call of another module's SPI: resolved now, answered when the implementation answers.
    fn module_call(self: Arc<Self>, caller: Arc<Instance>, call: OwnedCall) {
        let id = call.id;
        let Some(runtime) = self.runtime() else {
            return refuse(&caller, id, "the base's runtime is not running");
        };
        let target = match self.resolve_for_module(&call) {
            Ok(target) => target,
            Err(e) => return answer(&caller, id, Err(e)),
        };
        let timeout = target.limits().request_timeout();
        runtime.spawn(async move {
            let result = target.call_spi(call.service, call.method, call.payload, timeout).await;
            answer(&caller, id, result);
        });
    }

    /// The instance that answers a module's SPI call: the named module (or the first by name)
    /// among the compatible implementations. Before the restore has finished, started but not
    /// yet routed versions count too, so modules restored after their dependencies can call
    /// them from their start hooks.
    fn resolve_for_module(&self, call: &OwnedCall) -> Result<Arc<Instance>, SpiError> {
        let spi = call.service.as_str();
        let wanted = Version::parse(&call.version).map_err(|e| {
            SpiError::new(SpiError::BAD_PAYLOAD, format!("SPI version {:?}: {e}", call.version))
        })?;
        let candidates = self.implementors_for_calls(spi);
        let named: Vec<_> =
            candidates.iter().filter(|i| call.target.is_empty() || i.id.name == call.target).collect();
        let compatible_one =
            named.iter().find(|i| i.provided_version(spi).is_some_and(|v| compatible(v, &wanted)));
        match (compatible_one, named.first()) {
            (Some(found), _) => Ok(Arc::clone(found)),
            (None, Some(other)) => Err(SpiError::new(
                SpiError::INCOMPATIBLE,
                format!(
                    "{} implements {spi} {}, the caller was built against {spi} {wanted}: the major versions differ",
                    other.id,
                    other.provided_version(spi).map(ToString::to_string).unwrap_or_default()
                ),
            )),
            (None, None) if call.target.is_empty() => {
                Err(SpiError::new(SpiError::NOT_IMPLEMENTED, format!("no running module implements {spi}")))
            }
            (None, None) => Err(SpiError::new(
                SpiError::NOT_IMPLEMENTED,
                format!("module {} is not running or does not implement {spi}", call.target),
            )),
        }
    }

    /// The implementations module calls may reach: the routed ones, plus (while restoring) the
    /// newest started version of each other module implementing `spi`.
    pub(crate) fn implementors_for_calls(&self, spi: &str) -> Vec<Arc<Instance>> {
        let mut found = self.implementors(spi);
        if !self.is_restored() {
            let mut waiting: Vec<_> = self
                .all()
                .into_iter()
                .map(|(i, _)| i)
                .filter(|i| i.provides(spi) && i.state() == State::Inactive)
                .filter(|i| !found.iter().any(|f| f.id.name == i.id.name))
                .collect();
            waiting.sort_by(|a, b| (&a.id.name, &b.id.version).cmp(&(&b.id.name, &a.id.version)));
            waiting.dedup_by(|a, b| a.id.name == b.id.name);
            found.extend(waiting);
            found.sort_by(|a, b| a.id.name.cmp(&b.id.name));
        }
        found
    }

    /// Module `module`'s key-value quota.
    pub fn kv_quota(&self, module: &str) -> u64 {
        self.config().module_kv_quota.get(module).copied().unwrap_or(self.config().kv_quota_bytes)
    }

    /// Sets module `name`'s configuration from this program (a fleet agent applying its spec's
    /// `[config]`; `None` takes it away), over the config file's values, and hands the result to
    /// its running instances (`pedestal.config`'s `changed`) when it changed. Returns whether it
    /// changed.
    pub fn set_module_config(
        &self,
        name: &str,
        values: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> bool {
        let changed = self.module_configs().set_overlay(name, values);
        if changed {
            self.services().config_reloaded(self, &[name.to_owned()]);
            tracing::info!(module = name, "configuration set");
        }
        changed
    }

    /// Re-reads the config file and hands each module whose values changed its new values (and
    /// every service the news). Returns the names of those modules.
    pub fn reload_config(&self) -> crate::error::Result<Vec<String>> {
        let changed = self.module_configs().reload()?;
        self.services().config_reloaded(self, &changed);
        if !changed.is_empty() {
            tracing::info!(modules = ?changed, "configuration reloaded");
        }
        Ok(changed)
    }
}

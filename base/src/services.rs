//! What the base offers modules besides traffic: calls to other modules' SPIs, and the base's
//! own services (key-value store, events, SPI lookup, configuration, metrics).
//!
//! A module's call arrives through the `call` host callback on a module thread. Quick work
//! (reads, publishing, lookups) is done there and then; anything that waits (another module's
//! answer, a durable write) runs on the base's runtime. Either way the answer is queued as a
//! completion on the calling instance, which wakes it.

pub mod events;
pub mod kv;
pub mod module_config;

use std::{collections::BTreeMap, sync::Arc};

use pedestal_module_api::{
    SpiError,
    abi::{RESERVED_SPI_PREFIX, SpiStatus},
    spi::{Implementor, decode, encode},
};
use semver::Version;

use crate::{
    error::Error,
    instance::{Instance, State},
    registry::{Registry, Versions, compatible},
};

/// A module's call, copied out of the module's view.
#[derive(Debug)]
pub(crate) struct OwnedCall {
    pub(crate) id: u64,
    pub(crate) service: String,
    pub(crate) version: String,
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) payload: Vec<u8>,
}

/// Answers call `id` of `caller` with `SERVICE_UNAVAILABLE`.
pub(crate) fn refuse(caller: &Instance, id: u64, why: &str) {
    answer(caller, id, Err(SpiError::new(SpiError::UNAVAILABLE, why)));
}

fn answer(caller: &Instance, id: u64, result: Result<Vec<u8>, SpiError>) {
    match result {
        Ok(payload) => caller.complete(id, SpiStatus::Ok, payload),
        Err(error) => caller.complete(id, SpiStatus::Error, encode(&error).unwrap_or_default()),
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
        let id = call.id;
        match call.service.as_str() {
            "pedestal.kv" => self.kv_call(caller, call),
            "pedestal.events" => {
                let result = self.events_call(&caller, &call);
                answer(&caller, id, result);
            }
            "pedestal.spis" => {
                let result = self.spis_call(&call);
                answer(&caller, id, result);
            }
            reserved if reserved.starts_with(RESERVED_SPI_PREFIX) => {
                caller.complete(id, SpiStatus::Unknown, Vec::new());
            }
            _ => self.module_call(caller, call),
        }
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
    fn implementors_for_calls(&self, spi: &str) -> Vec<Arc<Instance>> {
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

    /// `pedestal.spis`/`implementors` `[spi, version]`: the compatible implementations.
    fn spis_call(&self, call: &OwnedCall) -> Result<Vec<u8>, SpiError> {
        if call.method != "implementors" {
            return Err(SpiError::new(
                SpiError::UNKNOWN_METHOD,
                format!("pedestal.spis has no method {}", call.method),
            ));
        }
        let (spi, version): (String, String) = decode(&call.payload)?;
        let wanted = Version::parse(&version)
            .map_err(|e| SpiError::new(SpiError::BAD_PAYLOAD, format!("SPI version {version:?}: {e}")))?;
        let found: Vec<Implementor> = self
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

    /// `pedestal.events`: `publish [topic, data]`, `subscribe [topic, id]`, `unsubscribe [topic, id]`.
    fn events_call(&self, caller: &Arc<Instance>, call: &OwnedCall) -> Result<Vec<u8>, SpiError> {
        let bad = |message: String| SpiError::new(SpiError::BAD_PAYLOAD, message);
        match call.method.as_str() {
            "publish" => {
                let (topic, data): (String, serde_json::Value) = decode(&call.payload)?;
                events::check_topic(&topic).map_err(bad)?;
                encode(&self.events().publish(&topic, &caller.id.to_string(), data))
            }
            "subscribe" => {
                let (topic, subscription): (String, u64) = decode(&call.payload)?;
                events::check_topic(&topic).map_err(bad)?;
                self.events().subscribe_instance(&topic, caller, subscription);
                encode(&())
            }
            "unsubscribe" => {
                let (topic, subscription): (String, u64) = decode(&call.payload)?;
                self.events().unsubscribe_instance(&topic, caller, subscription);
                encode(&())
            }
            other => {
                Err(SpiError::new(SpiError::UNKNOWN_METHOD, format!("pedestal.events has no method {other}")))
            }
        }
    }

    /// `pedestal.kv`: `get key`, `put [len][key][value]`, `delete key`, `list prefix`, `usage`.
    /// Reads are answered at once; writes (durable, so they wait for the disk) run on the
    /// base's blocking pool.
    fn kv_call(self: Arc<Self>, caller: Arc<Instance>, call: OwnedCall) {
        let id = call.id;
        let module = caller.id.name.clone();
        let text = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| SpiError::new(SpiError::BAD_PAYLOAD, "keys are UTF-8 text"))
        };
        let result = match call.method.as_str() {
            "get" => text(&call.payload).and_then(|key| {
                let value = self.kv().get(&module, &key).map_err(spi_error)?;
                Ok(match value {
                    Some(mut value) => {
                        value.insert(0, 1);
                        value
                    }
                    None => vec![0],
                })
            }),
            "list" => text(&call.payload)
                .and_then(|prefix| self.kv().list(&module, &prefix).map_err(spi_error))
                .and_then(|keys| encode(&keys)),
            "usage" => {
                self.kv().usage(&module, self.kv_quota(&module)).map_err(spi_error).and_then(|u| encode(&u))
            }
            "put" | "delete" => {
                let Some(runtime) = self.runtime() else {
                    return refuse(&caller, id, "the base's runtime is not running");
                };
                runtime.spawn_blocking(move || {
                    let result = self.kv_write(&module, &call);
                    answer(&caller, id, result);
                });
                return;
            }
            other => {
                Err(SpiError::new(SpiError::UNKNOWN_METHOD, format!("pedestal.kv has no method {other}")))
            }
        };
        answer(&caller, id, result);
    }

    fn kv_write(&self, module: &str, call: &OwnedCall) -> Result<Vec<u8>, SpiError> {
        let bad = |message: &str| SpiError::new(SpiError::BAD_PAYLOAD, message);
        if call.method == "delete" {
            let key = std::str::from_utf8(&call.payload).map_err(|_| bad("keys are UTF-8 text"))?;
            return encode(&self.kv().delete(module, key).map_err(spi_error)?);
        }
        let (key, value) = pedestal_module_api::wire::decode_kv_put(&call.payload)?;
        self.kv().put(module, key, value, self.kv_quota(module)).map_err(spi_error)?;
        encode(&())
    }

    /// Module `module`'s key-value quota.
    pub fn kv_quota(&self, module: &str) -> u64 {
        self.config().module_kv_quota.get(module).copied().unwrap_or(self.config().kv_quota_bytes)
    }

    /// Re-reads the config file and hands each module whose values changed its new values.
    /// Returns the names of those modules.
    pub fn reload_config(&self) -> crate::error::Result<Vec<String>> {
        let changed = self.module_configs().reload()?;
        for name in &changed {
            let Ok((instances, _)) = self.module(name) else { continue };
            for instance in instances {
                self.send_config(&instance);
            }
        }
        if !changed.is_empty() {
            tracing::info!(modules = ?changed, "configuration reloaded");
        }
        Ok(changed)
    }

    /// Queues `instance`'s configuration for it (before its start hook, and after changes).
    pub(crate) fn send_config(&self, instance: &Instance) {
        self.module_configs().send(&instance.id.name, |values| {
            let values = serde_json::Value::Object(values);
            instance.notify("pedestal.config", "changed", values.to_string().into_bytes());
        });
    }

    /// Refuses to install `instance` while an SPI it requires has no compatible implementation
    /// running (`SPI_MISSING`). An SPI the instance implements itself counts as present.
    pub(crate) fn check_requires(&self, instance: &Instance) -> crate::error::Result<()> {
        for (spi, version) in &instance.requires {
            let own = instance.provided_version(spi).is_some_and(|v| compatible(v, version));
            let running = self.implementors_for_calls(spi).iter().any(|i| {
                i.id.name != instance.id.name
                    && i.provided_version(spi).is_some_and(|v| compatible(v, version))
            });
            if !own && !running {
                return Err(Error::SpiMissing {
                    id: instance.id.to_string(),
                    spi: spi.clone(),
                    version: version.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Refuses to uninstall `instance` when a running module requires an SPI it implements and
    /// no other compatible implementation would remain (`MODULE_REQUIRED`): the active version
    /// of another module, or the version of this module that takes over (`successor`).
    pub(crate) fn check_dependents(
        modules: &BTreeMap<String, Versions>,
        instance: &Instance,
        successor: Option<&Arc<Instance>>,
    ) -> crate::error::Result<()> {
        let serving =
            |i: &&Arc<Instance>| matches!(i.state(), State::Active | State::Inactive) && !i.is_deactivated();
        // What implements what after the uninstall: every other module's active version, and
        // this module's remaining active version (or its successor).
        let remaining: Vec<Arc<Instance>> = modules
            .values()
            .filter_map(|versions| versions.active.as_ref().and_then(|v| versions.instances.get(v)))
            .filter(|i| !std::ptr::eq(Arc::as_ptr(i), instance) && serving(i))
            .chain(successor.filter(|i| serving(i)))
            .cloned()
            .collect();
        let live = modules.values().flat_map(|versions| versions.instances.values());
        for dependent in live.filter(|d| d.id.name != instance.id.name && d.state().is_live()) {
            for (spi, wanted) in &dependent.requires {
                let provided_here = instance.provided_version(spi).is_some_and(|v| compatible(v, wanted));
                if !provided_here {
                    continue;
                }
                let elsewhere =
                    remaining.iter().any(|i| i.provided_version(spi).is_some_and(|v| compatible(v, wanted)));
                if !elsewhere {
                    let mut dependents: Vec<String> = modules
                        .values()
                        .flat_map(|versions| versions.instances.values())
                        .filter(|d| d.id.name != instance.id.name && d.state().is_live() && d.requires(spi))
                        .map(|d| d.id.to_string())
                        .collect();
                    dependents.sort();
                    return Err(Error::ModuleRequired {
                        id: instance.id.to_string(),
                        spi: spi.clone(),
                        dependents,
                    });
                }
            }
        }
        Ok(())
    }
}

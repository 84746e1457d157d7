//! How the runtime hands a module's calls to the layer above it, without knowing that layer.
//!
//! The `call` and `register_metric` host callbacks run on a module thread and need the base's
//! services; the runtime reaches them only through [`ModuleCalls`], which the control layer
//! implements (for `Registry`, in `services.rs`). So imports point one way: down.

use std::sync::Arc;

use pedestal_module_api::{
    SpiError,
    abi::{MetricKind, SpiStatus},
    spi::encode,
};

use crate::{
    instance::{Instance, ModuleId},
    stats::ModuleMetric,
};

/// What serves a module's calls to the base. Held by each instance as a `Weak`, set before its
/// start hook runs.
pub trait ModuleCalls: Send + Sync {
    /// Starts module `caller`'s call. Runs on a module thread: never blocks on another module;
    /// the answer is queued as a completion on `caller` (see [`answer`]).
    fn start_call(self: Arc<Self>, caller: Arc<Instance>, call: OwnedCall);

    /// Registers module metric `name` for instance `id`; `None` when it cannot be registered.
    fn register_metric(
        &self,
        id: &ModuleId,
        kind: MetricKind,
        name: &str,
        help: &str,
    ) -> Option<ModuleMetric>;
}

/// A module's call, copied out of the module's view.
#[derive(Debug)]
pub struct OwnedCall {
    pub id: u64,
    pub service: String,
    pub version: String,
    pub method: String,
    pub target: String,
    pub payload: Vec<u8>,
}

/// Answers call `id` of `caller` with `SERVICE_UNAVAILABLE`.
pub fn refuse(caller: &Instance, id: u64, why: &str) {
    answer(caller, id, Err(SpiError::new(SpiError::UNAVAILABLE, why)));
}

/// Answers call `id` of `caller`: queues the completion and wakes the module.
pub fn answer(caller: &Instance, id: u64, result: Result<Vec<u8>, SpiError>) {
    match result {
        Ok(payload) => caller.complete(id, SpiStatus::Ok, payload),
        Err(error) => caller.complete(id, SpiStatus::Error, encode(&error).unwrap_or_default()),
    }
}

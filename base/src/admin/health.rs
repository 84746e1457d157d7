//! Health: `GET /api/v1/health` (the base, each running instance, and what needs an operator),
//! `GET /api/v1/ready`, and `GET /api/v1/base` (which process serves). The verdicts are the
//! health policy's (`crate::health`); this file only gathers the inputs and renders them.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::{
    Routes, answer,
    params::{NoParams, Params},
};
use crate::{
    crash::Crash,
    health::{self, BaseHealth},
    instance::{HookHealth, Instance, ModuleHealth, Runaway, State as InstanceState},
    registry::Registry,
    stats::CpuTime,
};

pub(super) fn routes() -> Routes {
    Routes::new().route(routes!(ready)).route(routes!(base_process)).route(routes!(health))
}

/// `GET /api/v1/ready`.
#[derive(Serialize, ToSchema)]
struct Readiness {
    ready: bool,
}

/// `GET /api/v1/ready`: `200 {"ready": true}` once the base restored its state (and, with
/// `--ready-requires-modules`, installed every boot module); `503 {"ready": false}` before.
#[utoipa::path(get, path = "/api/v1/ready", tag = "health",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready yet.", body = Readiness),
    ))]
async fn ready(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Response {
    let ready = registry.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, answer(&Readiness { ready })).into_response()
}

/// `GET /api/v1/base`: which process serves (the worker's pid and generation when supervised).
#[utoipa::path(get, path = "/api/v1/base", tag = "health",
    responses((status = 200, description = "The process that serves.", body = crate::supervisor::BaseProcess)))]
async fn base_process(_: Params<NoParams>) -> Json<crate::supervisor::BaseProcess> {
    Json(crate::supervisor::base_process().clone())
}

/// One running instance's health, as `GET /api/v1/health` lists it.
#[derive(Serialize, ToSchema)]
struct InstanceHealth {
    module: String,
    version: String,
    state: InstanceState,
    active: bool,
    status: ModuleHealth,
    /// Why it is not healthy, one reason per signal.
    reasons: Vec<String>,
    hook: HookHealth,
    recent: RecentRequests,
    runaway_requests: Vec<Runaway>,
    tasks: Option<u64>,
}

/// The requests of the recent window, and the share of them that failed.
#[derive(Serialize, ToSchema)]
struct RecentRequests {
    seconds: u64,
    requests: u64,
    server_errors: u64,
    error_rate: f64,
}

/// One running instance's health: its hook's answer, its recent error rate, its limits.
async fn instance_health(instance: Arc<Instance>, active: bool, timeout: Duration) -> InstanceHealth {
    let hook = instance.check_health(timeout).await;
    let recent = instance.traffic().recent;
    let runaways = instance.runaways();
    let signals = health::Signals {
        hook: &hook,
        recent,
        runaways: runaways.len(),
        over_memory: instance.over_memory_limit(),
    };
    let (status, reasons) = health::assess(&signals);
    InstanceHealth {
        module: instance.id.name.clone(),
        version: instance.id.version.to_string(),
        state: instance.state(),
        active,
        status,
        reasons,
        hook,
        recent: RecentRequests {
            seconds: recent.seconds,
            requests: recent.requests,
            server_errors: recent.server_errors,
            error_rate: recent.error_rate(),
        },
        runaway_requests: runaways,
        tasks: instance.tasks(),
    }
}

/// Something that needs an operator, as `GET /api/v1/health` lists it under `problems`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum Problem {
    /// A broken or pinned instance the registry lists.
    Instance {
        /// `name@version`.
        module: String,
        state: InstanceState,
        /// The reason and message of its last transition.
        reason: Option<String>,
        message: Option<String>,
    },
    /// A pinned instance whose identity another instance took since (a restart, a reinstall):
    /// the registry no longer lists it, but its threads may still run, so it comes with their CPU.
    Replaced {
        /// `name@version`.
        module: String,
        state: InstanceState,
        reason: Option<String>,
        message: Option<String>,
        replaced: bool,
        cpu: CpuTime,
    },
    /// A quarantined artifact.
    Quarantined {
        /// `name@version`, or `artifact <sha256>` when the crash came before both were known.
        module: String,
        state: &'static str,
        reason: &'static str,
        /// Why it is quarantined.
        message: String,
        signal: Option<String>,
        crashed_at: Option<String>,
    },
}

impl Problem {
    fn of_instance(instance: &Instance) -> Self {
        let last = instance.history().pop();
        Self::Instance {
            module: instance.id.to_string(),
            state: instance.state(),
            reason: last.as_ref().map(|t| t.reason.clone()),
            message: last.map(|t| t.message),
        }
    }

    fn of_replaced(instance: &Instance) -> Self {
        let last = instance.history().pop();
        Self::Replaced {
            module: instance.id.to_string(),
            state: InstanceState::Pinned,
            reason: last.as_ref().map(|t| t.reason.clone()),
            message: last.map(|t| t.message),
            replaced: true,
            cpu: instance.cpu(),
        }
    }
}

/// `GET /api/v1/health`.
#[derive(Serialize, ToSchema)]
struct BaseHealthView {
    status: BaseHealth,
    interface_version: &'static str,
    tls_keys_reclaimable: bool,
    /// Instances by state, and quarantined artifacts.
    counts: BTreeMap<&'static str, usize>,
    ready: bool,
    modules: Vec<InstanceHealth>,
    problems: Vec<Problem>,
    crashes: Vec<Crash>,
    crash_table: CrashTable,
}

/// How full the crash handler's table of loaded libraries is.
#[derive(Serialize, ToSchema)]
struct CrashTable {
    in_use: usize,
    capacity: usize,
}

/// `GET /api/v1/health`: the base, each running instance's health (its hook plus its recent
/// error rate), and the instances that need an operator (broken, pinned) with their reasons.
#[utoipa::path(get, path = "/api/v1/health", tag = "health",
    responses((status = 200, description = "The base's health, each running instance's, and what needs an operator.", body = BaseHealthView)))]
async fn health(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Json<Value> {
    let all = registry.all();
    let timeout = registry.config().health_timeout;
    let count = |state: InstanceState| all.iter().filter(|(i, _)| i.state() == state).count();
    let running = all
        .iter()
        .filter(|(i, _)| health::is_probed(i.state()))
        .map(|(i, active)| instance_health(Arc::clone(i), *active, timeout));
    let modules = futures_util::future::join_all(running).await;
    let mut problems: Vec<_> = all
        .iter()
        .filter(|(i, _)| health::needs_operator(i.state()))
        .map(|(i, _)| Problem::of_instance(i))
        .collect();
    let mut pinned_elsewhere = 0;
    for i in crate::instance::pinned_instances() {
        if !all.iter().any(|(listed, _)| Arc::ptr_eq(listed, &i)) && i.state() == InstanceState::Pinned {
            pinned_elsewhere += 1;
            problems.push(Problem::of_replaced(&i));
        }
    }
    let quarantined = registry.quarantined();
    for q in &quarantined {
        let module = match (&q.name, &q.version) {
            (Some(name), Some(version)) => format!("{name}@{version}"),
            _ => format!("artifact {}", q.sha256),
        };
        problems.push(Problem::Quarantined {
            module,
            state: "quarantined",
            reason: "quarantined",
            message: q.reason.clone(),
            signal: q.signal.clone(),
            crashed_at: q.crashed_at.clone(),
        });
    }
    let counts = BTreeMap::from([
        ("active", count(InstanceState::Active)),
        ("inactive", count(InstanceState::Inactive)),
        ("broken", count(InstanceState::Broken)),
        ("pinned", count(InstanceState::Pinned) + pinned_elsewhere),
        ("stopped", count(InstanceState::Stopped)),
        ("quarantined", quarantined.len()),
    ]);
    let (in_use, capacity) = crate::crash::slots_in_use();
    answer(&BaseHealthView {
        status: health::verdict(modules.iter().map(|m| m.status), problems.len()),
        interface_version: pedestal_module_api::abi::INTERFACE_VERSION,
        tls_keys_reclaimable: crate::tls_keys::keys_are_reclaimable(),
        counts,
        ready: registry.is_ready(),
        modules,
        problems,
        crashes: registry.crashes(),
        crash_table: CrashTable { in_use, capacity },
    })
}

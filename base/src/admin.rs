//! The operations API under `/api/v1`: install, inspect and uninstall modules; health.
//!
//! Each resource has its own file holding its routes, its handlers and the typed views they
//! answer with: `modules` (install, list, describe, uninstall), `artifacts` (quarantine
//! retries), `limits`, `traffic` (switch, weights), `spis`, `services` (config, kv, events),
//! `health` (health, readiness, the base process), `logs`, `metrics` and `operations` (how a
//! blocking change runs, and its status). The front door every request passes first is in
//! `token`, `gate`, `params`, `audit` and `json_errors`.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Request, State},
    middleware::{self, Next},
    response::Response,
};
use semver::Version;
use serde::Serialize;
use serde_json::Value;

use crate::{
    config::Config,
    error::{Error, Result},
    error_response::{Answer, Refusal},
    registry::Registry,
};

mod artifacts;
mod audit;
mod gate;
mod health;
mod json_errors;
mod limits;
mod logs;
mod metrics;
mod modules;
mod operations;
mod params;
mod samples;
mod services;
mod spis;
pub(crate) mod token;
mod traffic;

pub use self::{audit::AUDIT_FILE, token::TOKEN_FILE};
use self::{
    audit::AuditLog,
    gate::{AllowedHosts, Gate, Throttle},
    token::AdminToken,
};

/// What the operations API keeps across the apps a base builds: its token, the throttle of
/// failed authentications, the audit log.
#[derive(Debug, Clone)]
pub(crate) struct FrontDoor {
    token: AdminToken,
    throttle: Arc<Throttle>,
    audit: Arc<AuditLog>,
    allowed_hosts: Vec<String>,
}

impl FrontDoor {
    /// Resolves the token (generating `<data-dir>/admin-token` at first start, so the data
    /// directory must exist) and opens the audit log.
    pub(crate) fn open(config: &Config) -> Result<Self> {
        let token = AdminToken::resolve(config)?;
        token.log_where();
        let audit = AuditLog::open(&config.data_dir, config.module_log_max_bytes)
            .map_err(Error::io(format!("opening {}", config.data_dir.join(AUDIT_FILE).display())))?;
        tracing::info!(file = %config.data_dir.join(AUDIT_FILE).display(), "operations audit log");
        Ok(Self { token, throttle: Arc::default(), audit, allowed_hosts: config.admin_allowed_hosts.clone() })
    }
}

/// The routes of one resource, sharing the registry as their state.
type Routes = Router<Arc<Registry>>;

/// The operations API router, answering on `listen` (its bound address: the `Host` values it
/// accepts depend on the port). Every request but `GET /api/v1/ready` requires
/// `Authorization: Bearer <token>`.
pub(crate) fn router(registry: Arc<Registry>, door: &FrontDoor, listen: SocketAddr) -> Router {
    let gate = Arc::new(Gate {
        token: door.token.clone(),
        hosts: AllowedHosts::new(listen, &door.allowed_hosts),
        throttle: Arc::clone(&door.throttle),
        metrics_public: registry.config().metrics_public,
    });
    Router::new()
        .merge(modules::routes())
        .merge(artifacts::routes())
        .merge(logs::routes())
        .merge(samples::routes())
        .merge(limits::routes())
        .merge(traffic::routes())
        .merge(operations::routes())
        .merge(services::routes())
        .merge(spis::routes())
        .merge(health::routes())
        .merge(metrics::routes())
        .fallback(|| async { Refusal(Error::NotFound { what: "route".into() }) })
        .method_not_allowed_fallback(|| async { Refusal(Error::MethodNotAllowed) })
        .layer(middleware::from_fn(json_errors::as_json))
        .layer(middleware::from_fn_with_state(Arc::clone(&registry), refuse_changes_until_restored))
        .layer(middleware::from_fn_with_state(gate, gate::guard))
        .layer(middleware::from_fn_with_state(door.audit.clone(), audit::record))
        .layer(middleware::from_fn(json_errors::close_after_refused_body))
        .with_state(registry)
}

/// Changes wait for the recorded state to be back: made earlier, they would be overwritten (or
/// would overwrite what is being restored).
async fn refuse_changes_until_restored(
    State(registry): State<Arc<Registry>>,
    request: Request,
    next: Next,
) -> Answer<Response> {
    if request.method() != axum::http::Method::GET && !registry.is_restored() {
        return Err(Error::NotReady.into());
    }
    Ok(next.run(request).await)
}

/// A view as the API sends it. It goes through a [`Value`] on its way out because the API has
/// always sent object keys sorted (serde_json's map keeps them so without `preserve_order`):
/// clients that compare answers keep working, and a view, or any type it nests, may declare its
/// fields in the order that reads best.
fn to_json(view: &impl Serialize) -> Value {
    serde_json::to_value(view).unwrap_or_default()
}

/// [`to_json`] as a handler's answer.
fn answer(view: &impl Serialize) -> Json<Value> {
    Json(to_json(view))
}

/// A version from a path segment or a body.
fn parse_version(version: &str) -> Result<Version> {
    Version::parse(version)
        .map_err(|e| Error::BadRequest { message: format!("{version:?} is not a semver version: {e}") })
}

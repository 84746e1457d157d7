//! The operations API under `/api/v1`: install, inspect and uninstall modules; health.
//!
//! Each resource has its own file holding its routes, its handlers and the typed views they
//! answer with: `modules` (install, list, describe, uninstall), `artifacts` (quarantine
//! retries), `limits`, `traffic` (switch, weights), `spis`, `services` (config, kv, events),
//! `health` (health, readiness, the base process), `logs`, `metrics` and `operations` (how a
//! blocking change runs, and its status). The front door every request passes first is in
//! `token`, `gate`, `params`, `audit` and `json_errors`. `openapi` describes all of it
//! (`GET /api/v1/openapi.json`), from the routes as [`Routes`] collects them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{Request, State},
    middleware::{self, Next},
    response::Response,
    routing::MethodRouter,
};
use semver::Version;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::{OpenApi, RefOr, schema::Schema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::{
    config::Config,
    error::{Error, Result},
    error_response::{Answer, Refusal},
    registry::Registry,
};

mod artifacts;
mod audit;
pub(crate) mod console;
mod gate;
mod health;
mod json_errors;
mod limits;
mod logs;
mod metrics;
mod modules;
mod openapi;
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

/// The routes of one resource, sharing the registry as their state. An API route comes in only
/// with its description: [`Routes::route`] takes what `utoipa_axum::routes!` makes of handlers
/// annotated with `#[utoipa::path]`, the router's entry and the document's operation from one
/// declaration. The console's files, which are no part of the API, come in as pages.
#[derive(Clone)]
struct Routes {
    api: OpenApiRouter<Arc<Registry>>,
    /// The paths handed to the router, API routes and pages: what the test that the document
    /// names exactly the routes asks the router about.
    paths: BTreeSet<String>,
    pages: BTreeSet<String>,
}

impl Routes {
    fn new() -> Self {
        Self { api: OpenApiRouter::default(), paths: BTreeSet::new(), pages: BTreeSet::new() }
    }

    /// The handlers of one path, `routes!(get_handler, post_handler)`, and their operations.
    fn route(mut self, handlers: UtoipaMethodRouter<Arc<Registry>>) -> Self {
        let (schemas, paths, _) = &handlers;
        self.check_schema_names(schemas.iter().map(|(name, schema)| (name, schema)));
        self.paths.extend(paths.paths.keys().cloned());
        Self { api: self.api.routes(handlers), ..self }
    }

    /// A file of the console: served, but not described (an API client has no use for it). The
    /// gate lets pages through without a token, so a page must hold no data.
    fn page(mut self, path: &str, page: MethodRouter<Arc<Registry>>) -> Self {
        self.paths.insert(path.to_owned());
        self.pages.insert(path.to_owned());
        Self { api: self.api.route(path, page), ..self }
    }

    fn merge(mut self, other: Self) -> Self {
        if let Some(components) = &other.api.get_openapi().components {
            self.check_schema_names(components.schemas.iter());
        }
        self.paths.extend(other.paths);
        self.pages.extend(other.pages);
        Self { api: self.api.merge(other.api), ..self }
    }

    /// The document names schemas by type name alone: two different views of one name would
    /// silently become one.
    fn check_schema_names<'a>(&self, incoming: impl Iterator<Item = (&'a String, &'a RefOr<Schema>)>) {
        let mut known: BTreeMap<&String, &RefOr<Schema>> =
            self.api.get_openapi().components.iter().flat_map(|c| &c.schemas).collect();
        for (name, schema) in incoming {
            let same = *known.entry(name).or_insert(schema) == schema;
            assert!(same, "two different schemas are named {name}: rename one (`#[schema(as = ..)]`)");
        }
    }

    /// The router, answering what no route takes as the API answers everything (JSON `404`,
    /// `405`).
    fn into_router(self) -> Router<Arc<Registry>> {
        self.api
            .split_for_parts()
            .0
            .fallback(|| async { Refusal(Error::NotFound { what: "route".into() }) })
            .method_not_allowed_fallback(|| async { Refusal(Error::MethodNotAllowed) })
    }

    /// The OpenAPI document of these routes.
    fn into_document(self) -> OpenApi {
        openapi::completed(self.api.into_openapi())
    }
}

/// Every route of the operations API.
fn routes() -> Routes {
    Routes::new()
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
        .merge(console::routes())
        .merge(openapi::routes())
}

/// The operations API router, answering on `listen` (its bound address: the `Host` values it
/// accepts depend on the port). Every request but `GET /api/v1/ready`, the console's files and
/// (with `--metrics-public`) `GET /metrics` requires `Authorization: Bearer <token>`.
pub(crate) fn router(registry: Arc<Registry>, door: &FrontDoor, listen: SocketAddr) -> Router {
    let gate = Arc::new(Gate {
        token: door.token.clone(),
        hosts: AllowedHosts::new(listen, &door.allowed_hosts),
        throttle: Arc::clone(&door.throttle),
        metrics_public: registry.config().metrics_public,
    });
    routes()
        .into_router()
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

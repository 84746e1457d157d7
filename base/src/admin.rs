//! The operations API under `/api/v1`: install, inspect and uninstall modules; health.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use semver::Version;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{StreamExt, stream};
use pedestal_module_api::abi::LogLevel;
use tokio::sync::broadcast::error::RecvError;

use crate::{
    accounting::{CpuTime, cpu_by_thread_name},
    config::Config,
    error::{Error, Result},
    instance::{Instance, Runaway, State as InstanceState, Traffic, Transition},
    limits::{LimitOverrides, Limits},
    logs::{LogLine, RECENT_LINES, parse_level},
    operations::Operation,
    registry::{Dependents, InstallOptions as Options, Registry, Strategy},
    traffic::{MinRate, read_body_at_min_rate},
};

mod audit;
mod gate;
mod json_errors;
mod params;
pub(crate) mod token;

pub use self::{audit::AUDIT_FILE, token::TOKEN_FILE};
use self::{
    audit::AuditLog,
    gate::{AllowedHosts, Gate, Throttle, require_json},
    params::{NoParams, Params},
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

/// The operations API router, answering on `listen` (its bound address: the `Host` values it
/// accepts depend on the port). Every request but `GET /api/v1/ready` requires
/// `Authorization: Bearer <token>`.
pub(crate) fn router(registry: Arc<Registry>, door: &FrontDoor, listen: SocketAddr) -> Router {
    let gate = Arc::new(Gate {
        token: door.token.clone(),
        hosts: AllowedHosts::new(listen, &door.allowed_hosts),
        throttle: Arc::clone(&door.throttle),
    });
    Router::new()
        .route("/api/v1/modules", get(list).post(install))
        .route("/api/v1/modules/{name}", get(describe))
        .route("/api/v1/modules/{name}/{version}", delete(uninstall))
        .route("/api/v1/modules/{name}/logs", get(module_logs))
        .route("/api/v1/modules/{name}/limits", put(set_limits).get(get_limits))
        .route("/api/v1/modules/{name}/switch", post(switch))
        .route("/api/v1/modules/{name}/traffic", put(set_traffic).get(get_traffic))
        .route("/api/v1/operations/{id}", get(operation))
        .route("/api/v1/modules/{name}/{version}/retry", post(retry))
        .route("/api/v1/artifacts/{sha256}/retry", post(retry_artifact))
        .route("/api/v1/ready", get(ready))
        .route("/api/v1/base", get(base_process))
        .route("/api/v1/modules/{name}/config", get(module_config))
        .route("/api/v1/modules/{name}/kv", get(module_kv))
        .route("/api/v1/config/reload", post(reload_config))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/{topic}", post(publish_event))
        .route("/api/v1/spis", get(list_spis))
        .route("/api/v1/spis/{spi}/{method}", post(call_spi))
        .route("/api/v1/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { Error::NotFound { what: "route".into() } })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
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
) -> Result<Response> {
    if request.method() != axum::http::Method::GET && !registry.is_restored() {
        return Err(Error::NotReady);
    }
    Ok(next.run(request).await)
}

#[derive(Deserialize)]
struct InstallFromPath {
    path: PathBuf,
}

#[derive(Deserialize)]
struct InstallOptions {
    /// Install under this name instead of the package's (one artifact, many tenants).
    name: Option<String>,
    /// Make the new version active even when another one is.
    #[serde(default)]
    activate: bool,
    /// `install` (default) or `replace`.
    #[serde(default)]
    strategy: Strategy,
    /// Install even when a required SPI has no implementation running.
    #[serde(default)]
    force: bool,
    /// Answer `202` with an operation id at once instead of waiting.
    #[serde(default, rename = "async")]
    run_async: bool,
    /// Load the bytes even when they are quarantined (the base died loading them, or they
    /// crashed it): an operator's explicit retry.
    #[serde(default)]
    retry: bool,
    /// The sha256 the artifact must have (64 hex digits).
    sha256: Option<String>,
}

#[derive(Deserialize)]
struct AsyncOption {
    #[serde(default, rename = "async")]
    run_async: bool,
}

#[derive(Deserialize)]
struct UninstallOptions {
    #[serde(default, rename = "async")]
    run_async: bool,
    /// Unload even the last implementation of an SPI running modules require.
    #[serde(default)]
    force: bool,
}

/// Runs a blocking registry operation: waits for it and answers `ok` with its result, or with
/// `run_async` answers `202 {operation, status_url}` at once and records the outcome for
/// `GET /api/v1/spis`: the SPIs the base declares, and which running modules implement what.
async fn list_spis(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Json<Value> {
    let declared: BTreeMap<String, String> =
        registry.declared_spis().into_iter().map(|(n, v)| (n, v.to_string())).collect();
    let mut implemented: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut required: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (instance, active) in registry.all() {
        if !matches!(instance.state(), InstanceState::Active | InstanceState::Inactive) {
            continue;
        }
        for (spi, version) in &instance.provides {
            implemented.entry(spi.clone()).or_default().push(json!({
                "module": instance.id.to_string(),
                "spi_version": version.to_string(),
                "active": active,
            }));
        }
        for (spi, version) in &instance.requires {
            required.entry(spi.clone()).or_default().push(json!({
                "module": instance.id.to_string(),
                "spi_version": version.to_string(),
            }));
        }
    }
    Json(json!({ "declared": declared, "implemented": implemented, "required": required }))
}

/// `GET /api/v1/modules/{name}/config`: the values module `name` reads (the config file's
/// section with the environment's on top) with secrets redacted, and where the file is.
async fn module_config(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Json<Value> {
    let configs = registry.module_configs();
    let (values, redacted) = configs.redacted(&name);
    Json(json!({
        "module": name,
        "values": Value::Object(values),
        "redacted": redacted,
        "file": configs.file(),
    }))
}

/// `GET /api/v1/modules/{name}/kv`: how much of its key-value quota module `name` uses.
async fn module_kv(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    let usage = registry.kv().usage(&name, registry.kv_quota(&name))?;
    Ok(Json(json!({ "module": name, "usage": usage })))
}

/// `POST /api/v1/config/reload`: re-reads the config file now (it is also watched) and hands
/// the modules whose values changed their new values.
async fn reload_config(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Result<Json<Value>> {
    let changed = tokio::task::spawn_blocking(move || registry.reload_config())
        .await
        .map_err(|e| Error::BadRequest { message: e.to_string() })??;
    Ok(Json(json!({ "changed": changed })))
}

/// `GET /api/v1/events`: the topics with subscribers, and totals.
async fn list_events(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Json<Value> {
    let events = registry.events();
    let topics: BTreeMap<String, usize> = events.topics().into_iter().collect();
    let (published, delivered) = events.totals();
    Json(json!({ "topics": topics, "published": published, "delivered": delivered }))
}

/// `POST /api/v1/events/{topic}` with a JSON body: publishes it as `base`.
async fn publish_event(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    require_json(&headers, &body)?;
    crate::services::events::check_topic(&topic).map_err(|message| Error::BadRequest { message })?;
    let data: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest { message: format!("the body must be JSON: {e}") })?;
    let queued = registry.events().publish(&topic, "base", data);
    Ok(Json(json!({ "topic": topic, "queued": queued })))
}

#[derive(Deserialize)]
struct SpiTarget {
    /// Only this module's implementation (default: every implementation).
    module: Option<String>,
}

/// `POST /api/v1/spis/{spi}/{method}[?module=NAME]` with the arguments as a JSON array: calls
/// the method on one module's implementation, or on every implementation (fan-out, answered in
/// module order). Errors are the SPI's typed errors (`MODULE_GONE`, `SPI_PANICKED`, the
/// implementation's own code...).
async fn call_spi(
    State(registry): State<Arc<Registry>>,
    Path((spi, method)): Path<(String, String)>,
    Params(target): Params<SpiTarget>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    require_json(&headers, &body)?;
    let payload = if body.is_empty() { b"[]".to_vec() } else { body.to_vec() };
    let mut targets = registry.implementors(&spi);
    if let Some(module) = &target.module {
        targets.retain(|i| &i.id.name == module);
    }
    if targets.is_empty() {
        return Err(Error::Spi(pedestal_module_api::SpiError::new(
            pedestal_module_api::SpiError::NOT_IMPLEMENTED,
            format!(
                "no running module implements {spi}{}",
                target.module.map(|m| format!(" as {m}")).unwrap_or_default()
            ),
        )));
    }
    let calls = targets.iter().map(|instance| {
        let (spi, method, payload) = (spi.clone(), method.clone(), payload.clone());
        async move {
            let timeout = instance.limits().request_timeout();
            let outcome = instance.call_spi(spi, method, payload, timeout).await;
            (instance.id.to_string(), outcome)
        }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let decode = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
    if target.module.is_some() {
        let (module, outcome) = outcomes.into_iter().next().expect("one target");
        let result = outcome.map_err(Error::Spi)?;
        return Ok(Json(json!({ "module": module, "result": decode(&result) })));
    }
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|(module, outcome)| match outcome {
            Ok(result) => json!({ "module": module, "result": decode(&result) }),
            Err(e) => json!({ "module": module, "error": e }),
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

/// `GET /api/v1/ready`: `200 {"ready": true}` once the base restored its state (and, with
/// `--ready-requires-modules`, installed every boot module); `503 {"ready": false}` before.
async fn ready(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Response {
    let ready = registry.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready }))).into_response()
}

/// `GET /api/v1/base`: which process serves (the worker's pid and generation when supervised).
async fn base_process(_: Params<NoParams>) -> Json<crate::supervisor::BaseProcess> {
    Json(crate::supervisor::base_process().clone())
}

/// `POST /api/v1/modules/{name}/{version}/retry`: loads a quarantined module again.
async fn retry(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let version = parse_version(&version)?;
    let target = format!("{name}@{version}");
    // A new signature of the quarantined artifact, say by the key that replaced its signer's.
    let signature = headers
        .get(crate::signing::SIGNATURE_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    run_operation(&registry, "retry", &target, false, StatusCode::OK, move |registry| {
        let instance = registry.retry_signed(&name, &version, signature.as_deref())?;
        Ok(serde_json::to_value(view(&instance, true, false, &HashMap::new())).unwrap_or_default())
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactRetry {
    /// The install of the artifact under this name (default: under its package's name).
    name: Option<String>,
}

/// `POST /api/v1/artifacts/{sha256}/retry[?name=NAME]`: loads a quarantined artifact again,
/// also one that crashed the base in its constructors, before its name and version were known.
async fn retry_artifact(
    State(registry): State<Arc<Registry>>,
    Path(sha256): Path<String>,
    Params(options): Params<ArtifactRetry>,
) -> Result<Response> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::BadRequest { message: format!("{sha256:?} is not a lower-case hex sha256") });
    }
    let target = format!("artifact {sha256}");
    run_operation(&registry, "retry", &target, false, StatusCode::OK, move |registry| {
        let instance = registry.retry_artifact(&sha256, options.name.as_deref())?;
        Ok(serde_json::to_value(view(&instance, true, false, &HashMap::new())).unwrap_or_default())
    })
    .await
}

/// Runs a blocking registry operation (see `run_operation`'s callers).
async fn run_operation(
    registry: &Arc<Registry>,
    kind: &str,
    target: &str,
    run_async: bool,
    ok: StatusCode,
    work: impl FnOnce(&Registry) -> Result<Value> + Send + 'static,
) -> Result<Response> {
    let running = Arc::clone(registry);
    if run_async {
        let id = registry.operations.begin(kind, target);
        let (ended, outcome) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let result = work(&running);
            let status = match &result {
                Ok(_) => audit::Outcome { status: ok.as_u16(), code: None },
                Err(e) => audit::Outcome { status: e.status().as_u16(), code: Some(e.code().to_owned()) },
            };
            running.operations.finish(id, result);
            let _ = ended.send(status);
        });
        let body = json!({"operation": id, "status_url": format!("/api/v1/operations/{id}")});
        let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
        response.extensions_mut().insert(audit::PendingOutcome {
            operation: id,
            outcome: Arc::new(std::sync::Mutex::new(Some(outcome))),
        });
        return Ok(response);
    }
    let result = tokio::task::spawn_blocking(move || work(&running))
        .await
        .map_err(|e| Error::Io { context: format!("{kind} task"), source: std::io::Error::other(e) })??;
    Ok((ok, Json(result)).into_response())
}

/// `GET /api/v1/operations/{id}`.
async fn operation(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(id): Path<u64>,
) -> Result<Json<Operation>> {
    registry.operations.get(id).map(Json).ok_or_else(|| Error::NotFound { what: format!("operation {id}") })
}

fn parse_version(version: &str) -> Result<Version> {
    Version::parse(version)
        .map_err(|e| Error::BadRequest { message: format!("{version:?} is not a semver version: {e}") })
}

#[derive(Deserialize)]
struct SwitchTo {
    version: String,
}

/// `POST /api/v1/modules/{name}/switch {"version": "..."}`: one routing-table swap.
async fn switch(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
    Params(options): Params<AsyncOption>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response> {
    require_json(&headers, &body)?;
    let SwitchTo { version } = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest { message: format!("expected {{\"version\": \"...\"}}: {e}") })?;
    let version = parse_version(&version)?;
    let target = format!("{name}@{version}");
    run_operation(&registry, "switch", &target, options.run_async, StatusCode::OK, move |registry| {
        let began = Instant::now();
        let (active, previous) = registry.switch(&name, &version)?;
        let switch_ms = began.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(module = %name, version = %version, switch_ms, "switched");
        Ok(json!({
            "name": name,
            "active_version": active.id.version.to_string(),
            "previous_version": previous.map(|p| p.id.version.to_string()),
            "switch_ms": switch_ms,
        }))
    })
    .await
}

/// `PUT /api/v1/modules/{name}/traffic {"1.0.0": 90, "1.1.0": 10}`: a weighted split across
/// running versions (`{}` goes back to the active version alone).
async fn set_traffic(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    require_json(&headers, &body)?;
    let weights: BTreeMap<String, u32> = serde_json::from_slice(&body).map_err(|e| Error::BadRequest {
        message: format!("expected {{\"<version>\": <weight>, ...}}: {e}"),
    })?;
    let weights =
        weights.into_iter().map(|(v, w)| Ok((parse_version(&v)?, w))).collect::<Result<BTreeMap<_, _>>>()?;
    let setting = Arc::clone(&registry);
    let target = name.clone();
    tokio::task::spawn_blocking(move || setting.set_weights(&target, weights))
        .await
        .map_err(|e| Error::Io { context: "traffic task".into(), source: std::io::Error::other(e) })??;
    Ok(traffic_view(&registry, &name))
}

async fn get_traffic(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    registry.module(&name)?;
    Ok(traffic_view(&registry, &name))
}

fn traffic_view(registry: &Registry, name: &str) -> Json<Value> {
    let weights: Option<BTreeMap<String, u32>> =
        registry.weights(name).map(|w| w.into_iter().map(|(v, w)| (v.to_string(), w)).collect());
    let active = registry.module(name).ok().and_then(|(_, active)| active).map(|v| v.to_string());
    Json(json!({ "module": name, "active_version": active, "weights": weights }))
}

/// What an install answers.
#[derive(Serialize)]
struct Installed {
    name: String,
    package: String,
    version: String,
    interface_version: String,
    sha256: String,
    size: u64,
    /// The id of the trusted key whose signature was verified (`--trusted-keys`).
    signed_by: Option<String>,
    state: InstanceState,
    install_ms: f64,
    /// With `strategy=replace`: the version that was active, now unloaded.
    replaced: Option<Value>,
}

/// The most of a signature file beside a path install that is read (one line is under 200 bytes;
/// comments may precede it).
const SIGNATURE_FILE_LIMIT: u64 = 64 * 1024;

/// How slowly an upload may arrive: 10 s for any body, then 64 KiB/s on average (a 256 MiB
/// module may take 68 minutes), so a client trickling bytes cannot hold a request open for ever.
const UPLOAD_RATE: MinRate =
    MinRate { grace: std::time::Duration::from_secs(10), bytes_per_second: 64 * 1024 };

async fn install(
    State(registry): State<Arc<Registry>>,
    Params(options): Params<InstallOptions>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response> {
    // Explicitly typed: a body without a type (a browser's `fetch` of a blob sends none, and
    // needs no preflight for it) is never taken for a module.
    let is_json = match gate::media_type(&headers).as_deref() {
        Some("application/json") => true,
        Some("application/octet-stream") => false,
        found => {
            return Err(Error::UnsupportedMediaType {
                found: found.unwrap_or_default().to_owned(),
                expected: "application/octet-stream (the module's bytes) or application/json ({\"path\": ...})",
            });
        }
    };
    let client = gate::display_client(gate::client_of(&request));
    let query_async = options.run_async;
    let pin = options.sha256.as_deref().map(crate::signing::parse_pin).transpose()?;
    let mut signature = headers
        .get(crate::signing::SIGNATURE_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let limit = registry.config().max_upload_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|size| *size > limit) {
        return Err(Error::PayloadTooLarge { size, limit });
    }
    let body =
        read_body_at_min_rate(request.into_body(), if is_json { 64 * 1024 } else { limit }, UPLOAD_RATE)
            .await?;
    let bytes = if is_json {
        let InstallFromPath { path } = serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest { message: format!("expected {{\"path\": \"...\"}}: {e}") })?;
        // Confined, bounded and blocking (a slow disk, a network file system, a FIFO): off the
        // runtime, and so is the signature beside it, under the same rules.
        let allowed = registry.path_install_dirs();
        let wants_signature = signature.is_none() && registry.requires_signatures();
        let (bytes, beside) = tokio::task::spawn_blocking(move || {
            let bytes = crate::path_install::read_confined(&path, &allowed, limit)?;
            let beside = if wants_signature {
                let sig = crate::signing::signature_path(&path);
                match crate::path_install::read_confined(&sig, &allowed, SIGNATURE_FILE_LIMIT) {
                    Ok(text) => Some(String::from_utf8_lossy(&text).into_owned()),
                    Err(Error::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            Ok::<_, Error>((bytes, beside))
        })
        .await
        .map_err(|e| Error::Io { context: "path install".into(), source: std::io::Error::other(e) })??;
        if beside.is_some() {
            signature = beside;
        }
        bytes.into()
    } else {
        body
    };
    let received = Instant::now();
    let options = Options {
        name: options.name,
        activate: options.activate,
        strategy: options.strategy,
        force: options.force,
        retry_quarantined: options.retry,
        sha256: pin,
        signature,
    };
    let run_async = query_async;
    let target = format!("upload of {} bytes", bytes.len());
    run_operation(&registry, "install", &target, run_async, StatusCode::CREATED, move |registry| {
        let done = registry.install_with(&bytes, &options)?;
        let instance = &done.instance;
        let install_ms = received.elapsed().as_secs_f64() * 1000.0;
        let signed_by = instance.artifact.signed_by.clone();
        tracing::info!(module = %instance.id.name, version = %instance.id.version, sha256 = %instance.artifact.sha256, signed_by, install_ms, %client, "installed");
        let installed = Installed {
            name: instance.id.name.clone(),
            package: instance.package.clone(),
            version: instance.id.version.to_string(),
            interface_version: instance.interface.to_string(),
            sha256: instance.artifact.sha256.clone(),
            size: instance.artifact.size,
            signed_by,
            state: instance.state(),
            install_ms,
            replaced: done.replaced.map(|r| json!({"version": r.id.version.to_string(), "state": r.state()})),
        };
        Ok(serde_json::to_value(installed).unwrap_or_default())
    })
    .await
}

/// One instance as the API shows it.
#[derive(Serialize)]
struct InstanceView {
    name: String,
    package: String,
    version: String,
    state: InstanceState,
    active: bool,
    sha256: String,
    /// The id of the trusted key whose signature was verified (`--trusted-keys`).
    signed_by: Option<String>,
    interface_version: String,
    /// The SPIs it implements, `name` → declaration version.
    provides: BTreeMap<String, String>,
    /// The SPIs it calls, `name` → declaration version.
    requires: BTreeMap<String, String>,
    installed_at: String,
    install_ms: f64,
    heap: Option<HeapView>,
    heap_peak_bytes: u64,
    leaked_bytes: Option<u64>,
    cpu: CpuTime,
    tasks: Option<u64>,
    limits: Limits,
    over_memory_limit: bool,
    runaway_requests: Vec<Runaway>,
    load_ms: f64,
    start_ms: f64,
    traffic: Traffic,
    mapped: bool,
    history: Vec<Transition>,
}

#[derive(Serialize)]
struct HeapView {
    live_bytes: u64,
    allocated_bytes: u64,
    allocations: u64,
    frees: u64,
}

/// One instance as the API shows it; `cpu` is one [`cpu_by_thread_name`] scan shared by a listing.
fn view(
    instance: &Instance,
    active: bool,
    with_history: bool,
    cpu: &HashMap<String, CpuTime>,
) -> InstanceView {
    InstanceView {
        name: instance.id.name.clone(),
        package: instance.package.clone(),
        version: instance.id.version.to_string(),
        state: instance.state(),
        active,
        sha256: instance.artifact.sha256.clone(),
        signed_by: instance.artifact.signed_by.clone(),
        interface_version: instance.interface.to_string(),
        provides: instance.provides.iter().map(|(n, v)| (n.clone(), v.to_string())).collect(),
        requires: instance.requires.iter().map(|(n, v)| (n.clone(), v.to_string())).collect(),
        installed_at: humantime::format_rfc3339_millis(instance.installed_at).to_string(),
        install_ms: instance.install_ms(),
        heap: instance.heap().map(|h| HeapView {
            live_bytes: h.live_bytes,
            allocated_bytes: h.allocated_bytes,
            allocations: h.allocations,
            frees: h.frees,
        }),
        heap_peak_bytes: instance.heap_peak(),
        leaked_bytes: instance.heap_at_stop().map(|h| h.live_bytes),
        cpu: instance.cpu_from(cpu),
        tasks: instance.tasks(),
        limits: instance.limits(),
        over_memory_limit: instance.over_memory_limit(),
        runaway_requests: instance.runaways(),
        load_ms: instance.load_ms(),
        start_ms: instance.start_ms(),
        traffic: instance.traffic(),
        mapped: instance.is_mapped(),
        history: if with_history { instance.history() } else { Vec::new() },
    }
}

async fn list(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Json<Value> {
    let cpu = cpu_by_thread_name();
    let modules: Vec<_> = registry.all().iter().map(|(i, active)| view(i, *active, false, &cpu)).collect();
    Json(json!({ "modules": modules, "quarantined": registry.quarantined() }))
}

async fn describe(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    let quarantined: Vec<_> = registry
        .quarantined()
        .into_iter()
        .filter(|q| q.name.as_deref() == Some(&name) || q.install_name.as_deref() == Some(&name))
        .collect();
    let (instances, active) = match registry.module(&name) {
        Err(Error::NotFound { .. }) if !quarantined.is_empty() => (Vec::new(), None),
        other => other?,
    };
    let cpu = cpu_by_thread_name();
    let versions: Vec<_> =
        instances.iter().map(|i| view(i, active.as_ref() == Some(&i.id.version), true, &cpu)).collect();
    let crashes: Vec<_> = registry
        .crashes()
        .into_iter()
        .filter(|c| c.name.as_deref() == Some(&name) || c.install_name.as_deref() == Some(&name))
        .collect();
    Ok(Json(json!({
        "name": name,
        "active_version": active.map(|v| v.to_string()),
        "versions": versions,
        "quarantined": quarantined,
        "crashes": crashes,
    })))
}

async fn uninstall(
    State(registry): State<Arc<Registry>>,
    Path((name, version)): Path<(String, String)>,
    Params(options): Params<UninstallOptions>,
) -> Result<Response> {
    let version = parse_version(&version)?;
    let target = format!("{name}@{version}");
    let dependents = if options.force { Dependents::Abandon } else { Dependents::Protect };
    run_operation(&registry, "uninstall", &target, options.run_async, StatusCode::OK, move |registry| {
        let instance = registry.uninstall_checked(&name, &version, dependents)?;
        let view = view(&instance, false, true, &HashMap::new());
        Ok(serde_json::to_value(view).unwrap_or_default())
    })
    .await
}

#[derive(Deserialize)]
struct LogQuery {
    /// How many recent lines (default 100, at most [`RECENT_LINES`]).
    tail: Option<usize>,
    /// The least severe level to show (`error`, `warn`, `info`, `debug`, `trace`).
    level: Option<String>,
    /// Keep the response open and stream new lines as server-sent events.
    follow: Option<bool>,
}

/// A module's recent log lines, or with `?follow=true` a stream of them (server-sent events,
/// event name `log`, data = the line as JSON), starting with the requested tail.
async fn module_logs(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
    Params(query): Params<LogQuery>,
) -> Result<Response> {
    let log =
        registry.existing_log(&name).ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
    let min = match query.level.as_deref() {
        Some(level) => parse_level(level)
            .ok_or_else(|| Error::BadRequest { message: format!("unknown log level {level:?}") })?,
        None => LogLevel::Trace,
    };
    // Subscribe before reading the tail, so no line falls between the two.
    let live = query.follow.unwrap_or(false).then(|| log.follow());
    let recent = log.tail(query.tail.unwrap_or(100).min(RECENT_LINES), min);
    let Some(live) = live else {
        return Ok(Json(json!({ "module": name, "file": log.path(), "lines": recent })).into_response());
    };
    let event = |line: &LogLine| Event::default().event("log").json_data(line).unwrap_or_default();
    let head = stream::iter(recent.iter().map(event).map(Ok::<_, Infallible>).collect::<Vec<_>>());
    let new_lines = stream::unfold(live, move |mut live| async move {
        loop {
            match live.recv().await {
                Ok(line) if line.at_least(min) => return Some((Ok(event(&line)), live)),
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(head.chain(new_lines)).keep_alive(KeepAlive::default()).into_response())
}

async fn metrics(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Result<Response> {
    let text = tokio::task::spawn_blocking(move || registry.render_metrics())
        .await
        .map_err(|e| Error::Io { context: "metrics task".into(), source: std::io::Error::other(e) })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `GET /api/v1/modules/{name}/limits`: the API's overrides and each version's effective limits.
async fn get_limits(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    let (instances, _) = registry.module(&name)?;
    Ok(Json(limits_view(&name, registry.limit_overrides(&name), &instances)))
}

/// `PUT /api/v1/modules/{name}/limits`: replaces the API's overrides of the module's limits
/// (a field left out or `null` falls back to the config file, the manifest, then the default;
/// `0` lifts a count or size limit) and applies them to every version at once.
async fn set_limits(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    require_json(&headers, &body)?;
    let overrides: LimitOverrides = serde_json::from_slice(&body).map_err(|e| Error::BadRequest {
        message: format!(
            "expected a JSON object with any of max_concurrent_requests, request_timeout_ms, \
             max_request_body_bytes, memory_soft_limit_bytes, memory_action, unhealthy_action, \
             unhealthy_grace_ms: {e}"
        ),
    })?;
    let setting = Arc::clone(&registry);
    let target = name.clone();
    let instances = tokio::task::spawn_blocking(move || setting.set_limit_overrides(&target, overrides))
        .await
        .map_err(|e| Error::Io { context: "limits task".into(), source: std::io::Error::other(e) })??;
    tracing::info!(module = %name, ?overrides, "limits overridden through the API");
    Ok(Json(limits_view(&name, overrides, &instances)))
}

fn limits_view(name: &str, overrides: LimitOverrides, instances: &[Arc<Instance>]) -> Value {
    let versions: Vec<_> = instances
        .iter()
        .filter(|i| i.state().is_live())
        .map(|i| json!({"version": i.id.version.to_string(), "declared": i.declared_limits.is_some(), "limits": i.limits()}))
        .collect();
    json!({ "module": name, "overrides": overrides, "versions": versions })
}

/// One running instance's health: its hook's answer, its recent error rate, its limits.
async fn instance_health(instance: Arc<Instance>, active: bool, timeout: std::time::Duration) -> Value {
    let hook = instance.check_health(timeout).await;
    let recent = instance.traffic().recent;
    let rate = recent.error_rate();
    let runaways = instance.runaways();
    let signals = crate::health::Signals {
        hook: &hook,
        recent,
        runaways: runaways.len(),
        over_memory: instance.over_memory_limit(),
    };
    let (status, reasons) = crate::health::assess(&signals);
    json!({
        "module": instance.id.name,
        "version": instance.id.version.to_string(),
        "state": instance.state(),
        "active": active,
        "status": status,
        "reasons": reasons,
        "hook": hook,
        "recent": { "seconds": recent.seconds, "requests": recent.requests, "server_errors": recent.server_errors, "error_rate": rate },
        "runaway_requests": runaways,
        "tasks": instance.tasks(),
    })
}

/// `GET /api/v1/health`: the base, each running instance's health (its hook plus its recent
/// error rate), and the instances that need an operator (broken, pinned) with their reasons.
async fn health(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Json<Value> {
    let all = registry.all();
    let timeout = registry.config().health_timeout;
    let count = |state: InstanceState| all.iter().filter(|(i, _)| i.state() == state).count();
    let running = all
        .iter()
        .filter(|(i, _)| matches!(i.state(), InstanceState::Active | InstanceState::Inactive))
        .map(|(i, active)| instance_health(Arc::clone(i), *active, timeout));
    let modules = futures_util::future::join_all(running).await;
    let troubled: Vec<_> = all
        .iter()
        .filter(|(i, _)| matches!(i.state(), InstanceState::Broken | InstanceState::Pinned))
        .map(|(i, _)| {
            let last = i.history().pop();
            json!({
                "module": i.id.to_string(),
                "state": i.state(),
                "reason": last.as_ref().map(|t| t.reason.clone()),
                "message": last.map(|t| t.message),
            })
        })
        .collect();
    let mut troubled = troubled;
    // Pinned instances whose identity another instance took since (a restart, a reinstall): the
    // registry no longer lists them, but their threads may still run, so say so with their CPU.
    let mut pinned_elsewhere = 0;
    for i in crate::instance::pinned_instances() {
        if !all.iter().any(|(listed, _)| Arc::ptr_eq(listed, &i)) && i.state() == InstanceState::Pinned {
            pinned_elsewhere += 1;
            let last = i.history().pop();
            troubled.push(json!({
                "module": i.id.to_string(),
                "state": "pinned",
                "reason": last.as_ref().map(|t| t.reason.clone()),
                "message": last.map(|t| t.message),
                "replaced": true,
                "cpu": i.cpu(),
            }));
        }
    }
    for q in registry.quarantined() {
        let id = match (&q.name, &q.version) {
            (Some(name), Some(version)) => format!("{name}@{version}"),
            _ => format!("artifact {}", q.sha256),
        };
        troubled.push(json!({
            "module": id,
            "state": "quarantined",
            "reason": "quarantined",
            "message": q.reason,
            "signal": q.signal,
            "crashed_at": q.crashed_at,
        }));
    }
    let all_healthy = modules.iter().all(|m| m["status"] == "healthy");
    Json(json!({
        "status": if all_healthy && troubled.is_empty() { "ok" } else { "degraded" },
        "interface_version": pedestal_module_api::abi::INTERFACE_VERSION,
        "tls_keys_reclaimable": crate::keys_are_reclaimable(),
        "counts": {
            "active": count(InstanceState::Active),
            "inactive": count(InstanceState::Inactive),
            "broken": count(InstanceState::Broken),
            "pinned": count(InstanceState::Pinned) + pinned_elsewhere,
            "stopped": count(InstanceState::Stopped),
            "quarantined": registry.quarantined().len(),
        },
        "ready": registry.is_ready(),
        "modules": modules,
        "problems": troubled,
        "crashes": registry.crashes(),
        "crash_table": {
            "in_use": crate::crash::slots_in_use().0,
            "capacity": crate::crash::slots_in_use().1,
        },
    }))
}

//! Modules: install (`POST /api/v1/modules`), list, describe, uninstall; and the view of one
//! instance that every answer about an instance shares.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use axum::{
    Json,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::{
    Routes, answer, gate,
    json_errors::ErrorBody,
    operations::{Accepted, run_operation},
    params::{NoParams, Params},
    parse_version, to_json,
};
use crate::{
    crash::Crash,
    error::Error,
    error_response::Answer,
    instance::{Instance, Runaway, State as InstanceState, Traffic, Transition},
    limits::Limits,
    registry::{Dependents, InstallOptions as Options, Quarantined, Registry, Retired, Strategy},
    stats::{CpuTime, cpu_by_thread_name},
    traffic::{MinRate, read_body_at_min_rate},
};

pub(super) fn routes() -> Routes {
    Routes::new()
        .route(routes!(list, install))
        .route(routes!(describe, uninstall_which))
        .route(routes!(uninstall))
        .route(routes!(rollback))
}

/// One instance as the API shows it.
#[derive(Serialize, ToSchema)]
pub(super) struct InstanceView {
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

/// The instance's heap as its counting allocator sees it.
#[derive(Serialize, ToSchema)]
struct HeapView {
    live_bytes: u64,
    allocated_bytes: u64,
    allocations: u64,
    frees: u64,
}

/// Whether a view carries the instance's state history (a listing leaves it out).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum History {
    Included,
    Left,
}

/// One instance as the API shows it; `cpu` is one [`cpu_by_thread_name`] scan shared by a
/// listing (an empty map where the answer is about one instance that no longer runs).
pub(super) fn view(
    instance: &Instance,
    active: bool,
    history: History,
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
        history: if history == History::Included { instance.history() } else { Vec::new() },
    }
}

/// `GET /api/v1/modules`.
#[derive(Serialize, ToSchema)]
struct ModuleList {
    modules: Vec<InstanceView>,
    quarantined: Vec<Quarantined>,
}

/// `GET /api/v1/modules`: every instance (without history), and the quarantined artifacts.
#[utoipa::path(get, path = "/api/v1/modules", tag = "modules", operation_id = "list_modules",
    responses((status = 200, description = "Every instance, and the quarantined artifacts.", body = ModuleList)))]
async fn list(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Json<Value> {
    let cpu = cpu_by_thread_name();
    let modules = registry.all().iter().map(|(i, active)| view(i, *active, History::Left, &cpu)).collect();
    answer(&ModuleList { modules, quarantined: registry.quarantined() })
}

/// `GET /api/v1/modules/{name}`.
#[derive(Serialize, ToSchema)]
struct ModuleDescription {
    name: String,
    active_version: Option<String>,
    versions: Vec<InstanceView>,
    quarantined: Vec<Quarantined>,
    crashes: Vec<Crash>,
    /// Uninstalled instances the base still remembers, newest first, with their history.
    retired: Vec<Retired>,
}

/// `GET /api/v1/modules/{name}`: every version of one module with its history, its
/// quarantined artifacts, its crashes and its retired (uninstalled) instances. A module known
/// only from its quarantine or its retired instances is found.
#[utoipa::path(get, path = "/api/v1/modules/{name}", tag = "modules", operation_id = "describe_module",
    params(("name", description = "The module's name (as installed).")),
    responses(
        (status = 200, description = "The module's versions, quarantined artifacts, crashes and retired instances.", body = ModuleDescription),
        (status = 404, description = "`NOT_FOUND`: no module of that name.", body = ErrorBody),
    ))]
async fn describe(
    State(registry): State<Arc<Registry>>,
    _: Params<NoParams>,
    Path(name): Path<String>,
) -> Answer<Json<Value>> {
    let quarantined: Vec<_> = registry
        .quarantined()
        .into_iter()
        .filter(|q| q.name.as_deref() == Some(&name) || q.install_name.as_deref() == Some(&name))
        .collect();
    let retired = registry.retired(&name);
    let (instances, active) = match registry.module(&name) {
        Err(Error::NotFound { .. }) if !quarantined.is_empty() || !retired.is_empty() => (Vec::new(), None),
        other => other?,
    };
    let cpu = cpu_by_thread_name();
    let versions = instances
        .iter()
        .map(|i| view(i, active.as_ref() == Some(&i.id.version), History::Included, &cpu))
        .collect();
    let crashes = registry
        .crashes()
        .into_iter()
        .filter(|c| c.name.as_deref() == Some(&name) || c.install_name.as_deref() == Some(&name))
        .collect();
    Ok(answer(&ModuleDescription {
        name,
        active_version: active.map(|v| v.to_string()),
        versions,
        quarantined,
        crashes,
        retired,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UninstallOptions {
    /// Answer `202` with an operation id at once instead of waiting.
    #[serde(default, rename = "async")]
    run_async: bool,
    /// Unload even the last implementation of an SPI running modules require.
    #[serde(default)]
    force: bool,
    /// Refuse (`VERSION_ACTIVE`) to uninstall the version with the traffic while other
    /// versions run, instead of handing the traffic to one of them.
    #[serde(default)]
    keep_active: bool,
}

/// `DELETE /api/v1/modules/{name}`: which version? `400 VERSION_REQUIRED` with the running
/// versions to choose from.
#[utoipa::path(delete, path = "/api/v1/modules/{name}", tag = "modules", operation_id = "uninstall_without_version",
    params(("name", description = "The module's name.")),
    responses(
        (status = 400, description = "`VERSION_REQUIRED`: `details.running` lists the versions to choose from, `details.active_version` the one with the traffic.", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no module of that name.", body = ErrorBody),
    ))]
async fn uninstall_which(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
    _: Params<NoParams>,
) -> Answer<Response> {
    let (instances, active) = registry.module(&name)?;
    let running =
        instances.iter().filter(|i| i.state().is_live()).map(|i| i.id.version.to_string()).collect();
    Err(Error::VersionRequired { name, running, active: active.map(|v| v.to_string()) }.into())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AsyncForce {
    /// Answer `202` with an operation id at once instead of waiting.
    #[serde(default, rename = "async")]
    run_async: bool,
    /// Roll back even a module a fleet owns (`FLEET_OWNED` otherwise).
    #[serde(default)]
    force: bool,
}

/// What a rollback answers.
#[derive(Serialize, ToSchema)]
struct RolledBackView {
    name: String,
    /// The version that now takes the traffic, and its artifact.
    active_version: String,
    sha256: String,
    /// The one that had it.
    previous_version: Option<String>,
    /// What became of it: `inactive` (a switch) or `stopped` (a reinstall replaced it).
    previous_state: Option<InstanceState>,
    /// `switched` (the build was still loaded) or `reinstalled` (from the artifact store).
    how: &'static str,
    rollback_ms: f64,
}

/// `POST /api/v1/modules/{name}/rollback[?force=true][&async=true]`: returns the module to the
/// build that had its traffic before the last switch, replace or hand-over, reinstalling it
/// from the artifact store when it was unloaded.
#[utoipa::path(post, path = "/api/v1/modules/{name}/rollback", tag = "modules", operation_id = "rollback_module",
    params(("name", description = "The module's name."), AsyncForce),
    responses(
        (status = 200, description = "The module is back on its previous build.", body = RolledBackView),
        (status = 202, description = "With `async=true`: the operation, to follow at `status_url`.", body = Accepted),
        (status = 404, description = "`NOT_FOUND`: no module of that name.", body = ErrorBody),
        (status = 409, description = "`NO_PREVIOUS_VERSION`: none is recorded; `FLEET_OWNED` (without `force=true`); `OPERATION_IN_PROGRESS`.", body = ErrorBody),
        (status = 422, description = "The previous build failed to load or start again (`LOAD_FAILED`, `START_FAILED`, `START_TIMEOUT`...).", body = ErrorBody),
    ))]
async fn rollback(
    State(registry): State<Arc<Registry>>,
    Path(name): Path<String>,
    Params(options): Params<AsyncForce>,
) -> Answer<Response> {
    registry.check_owner(&name, options.force)?;
    let target = name.clone();
    let started = Instant::now();
    run_operation(&registry, "rollback", &target, options.run_async, StatusCode::OK, move |registry| {
        let done = registry.rollback(&name)?;
        tracing::info!(module = %done.instance.id, how = done.how, "rolled back");
        Ok(to_json(&RolledBackView {
            name,
            active_version: done.instance.id.version.to_string(),
            sha256: done.instance.artifact.sha256.clone(),
            previous_version: done.from.as_ref().map(|f| f.id.version.to_string()),
            previous_state: done.from.as_ref().map(|f| f.state()),
            how: done.how,
            rollback_ms: started.elapsed().as_secs_f64() * 1e3,
        }))
    })
    .await
}

/// `DELETE /api/v1/modules/{name}/{version}[?force=true][&async=true]`: drains and unloads one
/// version, answering its last view (with history).
#[utoipa::path(delete, path = "/api/v1/modules/{name}/{version}", tag = "modules", operation_id = "uninstall_version",
    params(("name", description = "The module's name."), ("version", description = "The version to uninstall (semver)."), UninstallOptions),
    responses(
        (status = 200, description = "The instance's final view (`stopped`, or `pinned` with the reason), and who has the traffic now.", body = Uninstalled),
        (status = 202, description = "With `async=true`: the operation, to follow at `status_url`.", body = Accepted),
        (status = 404, description = "`NOT_FOUND`: no such module or version.", body = ErrorBody),
        (status = 409, description = "`MODULE_REQUIRED`: the last implementation of an SPI running modules require (`details.dependents`; or `force=true`); `VERSION_ACTIVE` (with `keep_active=true`); `FLEET_OWNED`; `OPERATION_IN_PROGRESS`.", body = ErrorBody),
        (status = 422, description = "`BAD_REQUEST`: the version is not semver.", body = ErrorBody),
    ))]
async fn uninstall(
    State(registry): State<Arc<Registry>>,
    Path((name, version)): Path<(String, String)>,
    Params(options): Params<UninstallOptions>,
) -> Answer<Response> {
    let version = parse_version(&version)?;
    let target = format!("{name}@{version}");
    registry.check_owner(&name, options.force)?;
    let dependents = if options.force { Dependents::Abandon } else { Dependents::Protect };
    let keep_active = options.keep_active;
    run_operation(&registry, "uninstall", &target, options.run_async, StatusCode::OK, move |registry| {
        let instance = if keep_active {
            registry.uninstall_unless_active(&name, &version, dependents)?
        } else {
            registry.uninstall_checked(&name, &version, dependents)?
        };
        let active_version =
            registry.module(&name).ok().and_then(|(_, active)| active).map(|v| v.to_string());
        Ok(to_json(&Uninstalled {
            instance: view(&instance, false, History::Included, &HashMap::new()),
            active_version,
        }))
    })
    .await
}

/// What an uninstall answers: the instance's last view, and who has the traffic now.
#[derive(Serialize, ToSchema)]
struct Uninstalled {
    #[serde(flatten)]
    instance: InstanceView,
    /// The version that took the traffic over, or none.
    active_version: Option<String>,
}

/// A JSON install body: a file on the base's disk, or an artifact already in its store (exactly
/// one of the two).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InstallFromJson {
    /// An absolute path inside `<data-dir>/incoming/` or an `--allow-path-install` directory.
    #[schema(value_type = Option<String>)]
    path: Option<PathBuf>,
    /// The sha256 of an artifact still in the base's store: a reinstall.
    sha256: Option<String>,
}

/// Where a JSON install takes its bytes from.
enum JsonSource {
    Path(PathBuf),
    Stored(String),
}

impl InstallFromJson {
    fn parse(body: &[u8]) -> Result<JsonSource, Error> {
        let expected = "expected {\"path\": \"...\"} or {\"sha256\": \"...\"} (an artifact in the store)";
        let parsed: Self = serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest { message: format!("{expected}: {e}") })?;
        match (parsed.path, parsed.sha256) {
            (Some(path), None) => Ok(JsonSource::Path(path)),
            (None, Some(sha256)) => Ok(JsonSource::Stored(sha256)),
            _ => Err(Error::BadRequest { message: format!("{expected}: exactly one of the two") }),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct InstallOptions {
    /// Install under this name instead of the package's (one artifact, many tenants).
    name: Option<String>,
    /// Make the new version active even when another one is.
    #[serde(default)]
    activate: bool,
    /// `install` (default) or `replace`.
    #[serde(default)]
    #[param(inline)]
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

impl InstallOptions {
    /// The registry's options for this request, with the pin and signature it came with.
    fn into_registry(self, sha256: Option<crate::signing::Digest>, signature: Option<String>) -> Options {
        Options {
            name: self.name,
            activate: self.activate,
            strategy: self.strategy,
            force: self.force,
            retry_quarantined: self.retry,
            sha256,
            signature,
            refuse_owned: !self.force,
        }
    }
}

/// What an install answers.
#[derive(Serialize, ToSchema)]
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
    replaced: Option<Replaced>,
}

/// The version an install with `strategy=replace` unloaded.
#[derive(Serialize, ToSchema)]
struct Replaced {
    version: String,
    state: InstanceState,
}

/// The most of a signature file beside a path install that is read (one line is under 200 bytes;
/// comments may precede it).
const SIGNATURE_FILE_LIMIT: u64 = 64 * 1024;

/// How slowly an upload may arrive: 10 s for any body, then 64 KiB/s on average (a 256 MiB
/// module may take 68 minutes), so a client trickling bytes cannot hold a request open for ever.
const UPLOAD_RATE: MinRate =
    MinRate { grace: std::time::Duration::from_secs(10), bytes_per_second: 64 * 1024 };

/// `POST /api/v1/modules`: installs the module whose bytes are the body
/// (`application/octet-stream`), or whose file on the base's disk the body names
/// (`application/json`, `{"path": ...}`, with `--allow-path-install`).
#[utoipa::path(post, path = "/api/v1/modules", tag = "modules", operation_id = "install_module",
    params(InstallOptions,
        ("X-Pedestal-Signature" = Option<String>, Header, description = "A signature of the artifact by a trusted key (`--trusted-keys`); a path install also finds `<file>.sig`.")),
    request_body(description = "The module's bytes, or JSON naming a file on the base's disk or an artifact in its store.",
        content(("application/octet-stream"), (InstallFromJson = "application/json"))),
    responses(
        (status = 201, description = "Installed (and started).", body = Installed),
        (status = 202, description = "With `async=true`: the operation, to follow at `status_url`.", body = Accepted),
        (status = 400, description = "`BAD_REQUEST`: a malformed `sha256`; `PATH_NOT_ABSOLUTE`.", body = ErrorBody),
        (status = 403, description = "`PATH_NOT_ALLOWED`; `SIGNATURE_REQUIRED`, `SIGNATURE_INVALID` (with `--trusted-keys`).", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: the path install's file, or the reinstall's artifact.", body = ErrorBody),
        (status = 408, description = "`REQUEST_TIMEOUT`: the upload arrived slower than 64 KiB/s on average after 10 s.", body = ErrorBody),
        (status = 409, description = "`ALREADY_INSTALLED`, `QUARANTINED`, `SHA256_MISMATCH`, `FLEET_OWNED`, `OPERATION_IN_PROGRESS`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: over `--max-upload-bytes`.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: neither `application/octet-stream` nor `application/json`.", body = ErrorBody),
        (status = 422, description = "Not loadable: `EMPTY_UPLOAD`, `NOT_A_MODULE`, `INTERFACE_MISMATCH`, `ABI_MISMATCH`, `LOAD_FAILED`, `START_FAILED`, `START_TIMEOUT`, `SPI_INCOMPATIBLE`, `NOT_A_REGULAR_FILE`; `BAD_REQUEST` for a JSON body that does not parse, or a reinstall by `{\"sha256\"}` pinned again.", body = ErrorBody),
        (status = 424, description = "`SPI_MISSING`: a required SPI has no compatible implementation running (or `force=true`).", body = ErrorBody),
    ))]
async fn install(
    State(registry): State<Arc<Registry>>,
    Params(options): Params<InstallOptions>,
    headers: HeaderMap,
    request: Request,
) -> Answer<Response> {
    // Explicitly typed: a body without a type (a browser's `fetch` of a blob sends none, and
    // needs no preflight for it) is never taken for a module.
    let is_json = match gate::media_type(&headers).as_deref() {
        Some("application/json") => true,
        Some("application/octet-stream") => false,
        found => {
            return Err(Error::UnsupportedMediaType {
                found: found.unwrap_or_default().to_owned(),
                expected: "application/octet-stream (the module's bytes) or application/json ({\"path\": ...})",
            }.into());
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
        return Err(Error::PayloadTooLarge { size, limit }.into());
    }
    let body =
        read_body_at_min_rate(request.into_body(), if is_json { 64 * 1024 } else { limit }, UPLOAD_RATE)
            .await?;
    let received = Instant::now();
    let stored = match is_json.then(|| InstallFromJson::parse(&body)).transpose()? {
        Some(JsonSource::Stored(sha256)) => Some(sha256),
        Some(JsonSource::Path(path)) => {
            let bytes = read_path_install(&registry, path, &mut signature, limit).await?;
            return install_bytes(registry, bytes, options, pin, signature, received, client).await;
        }
        None => None,
    };
    if let Some(sha256) = stored {
        if pin.is_some() {
            return Err(Error::BadRequest {
                message: "a reinstall by {\"sha256\"} is already pinned: leave out ?sha256=".into(),
            }
            .into());
        }
        let options = options.into_registry(None, None);
        let target = format!("reinstall of {sha256}");
        return run_operation(
            &registry,
            "install",
            &target,
            query_async,
            StatusCode::CREATED,
            move |registry| {
                let done = registry.install_stored(&sha256, &options).inspect_err(
                    |e| tracing::warn!(code = e.code(), %client, sha256, "reinstall refused: {e}"),
                )?;
                Ok(to_json(&installed_view(&done, received, &client)))
            },
        )
        .await;
    }
    install_bytes(registry, body, options, pin, signature, received, client).await
}

/// Reads a path install's file (and the signature beside it, when one is needed), confined to
/// the allowed directories, off the runtime.
async fn read_path_install(
    registry: &Arc<Registry>,
    path: PathBuf,
    signature: &mut Option<String>,
    limit: u64,
) -> Result<axum::body::Bytes, Error> {
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
        *signature = beside;
    }
    Ok(bytes.into())
}

/// Installs uploaded (or path-read) bytes.
async fn install_bytes(
    registry: Arc<Registry>,
    bytes: axum::body::Bytes,
    options: InstallOptions,
    pin: Option<crate::signing::Digest>,
    signature: Option<String>,
    received: Instant,
    client: String,
) -> Answer<Response> {
    let run_async = options.run_async;
    let options = options.into_registry(pin, signature);
    let target = format!("upload of {} bytes", bytes.len());
    run_operation(&registry, "install", &target, run_async, StatusCode::CREATED, move |registry| {
        let done = registry.install_with(&bytes, &options).inspect_err(
            |e| tracing::warn!(code = e.code(), %client, size = bytes.len(), "install refused: {e}"),
        )?;
        Ok(to_json(&installed_view(&done, received, &client)))
    })
    .await
}

/// What an install answers, logged as it is answered.
fn installed_view(done: &crate::registry::Installed, received: Instant, client: &str) -> Installed {
    let instance = &done.instance;
    let install_ms = received.elapsed().as_secs_f64() * 1000.0;
    let signed_by = instance.artifact.signed_by.clone();
    tracing::info!(module = %instance.id.name, version = %instance.id.version, sha256 = %instance.artifact.sha256, signed_by, install_ms, %client, "installed");
    Installed {
        name: instance.id.name.clone(),
        package: instance.package.clone(),
        version: instance.id.version.to_string(),
        interface_version: instance.interface.to_string(),
        sha256: instance.artifact.sha256.clone(),
        size: instance.artifact.size,
        signed_by,
        state: instance.state(),
        install_ms,
        replaced: done
            .replaced
            .as_ref()
            .map(|r| Replaced { version: r.id.version.to_string(), state: r.state() }),
    }
}

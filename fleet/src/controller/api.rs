//! The fleet API (`/api/v1/...`), bearer-authenticated with the fleet token.
//!
//! Reads are answered by any controller from etcd. Mutations (specs, artifact uploads) are
//! made by the leader, fenced; a standby forwards them to the leader's URL from the leader key
//! and hands back its answer, status and body as they came.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, Query, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use etcd_client::{Compare, CompareOp, TxnOp};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;

use super::{
    Controller,
    artifacts::is_sha256,
    reconcile::{Snapshot, json},
};
use crate::{
    autoscale, keys,
    model::{
        ArtifactRecord, BaseView, CommandRequest, CordonRecord, ErrorBody, FleetStatus, LeaderRecord,
        ModuleView, ReplicaView, RolloutCommand, RolloutView, ScaleView, Spec, SpecRecord, UnmanagedView,
        now_ms,
    },
    schedule,
    store::{self, Outcome, REQUEST_TIMEOUT},
};

/// The header a forwarded request carries: a controller never forwards such a request again.
const FORWARDED_BY: &str = "x-pedestal-forwarded-by";
/// Largest spec body.
const MAX_SPEC_BYTES: usize = 1 << 20;

/// The API's routes.
pub(crate) fn router(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/api/v1/leader", get(leader))
        .route("/api/v1/controllers", get(controllers))
        .route("/api/v1/specs", get(list_specs))
        .route(
            "/api/v1/specs/{name}",
            get(get_spec).put(put_spec).delete(delete_spec).layer(DefaultBodyLimit::max(MAX_SPEC_BYTES)),
        )
        .route("/api/v1/artifacts", post(push_artifact))
        .route("/api/v1/artifacts/{sha256}", get(get_artifact).head(head_artifact))
        .route("/api/v1/status", get(status))
        .route("/api/v1/bases", get(bases))
        .route("/api/v1/bases/{id}/cordon", post(cordon).delete(uncordon))
        .route("/api/v1/endpoints/{module}", get(endpoints))
        .route("/api/v1/rollouts/{module}", get(get_rollout))
        .route("/api/v1/rollouts/{module}/{action}", post(command_rollout))
        .route("/api/v1/logs/{module}", get(super::logs::module_logs))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route in the fleet API")
        })
        .layer(middleware::from_fn_with_state(ctl.clone(), authenticate))
        .layer(DefaultBodyLimit::disable())
        .with_state(ctl)
        .merge(console())
}

/// The fleet's web console at `/console`: its files hold no data and answer without the token
/// (a browser cannot send one with a navigation); the page asks for the fleet token and calls
/// this API with it. It shares its script and look with the base's console.
fn console() -> Router {
    use pedestal_base::console::{COMMON_SCRIPT, STYLE, file};
    const INDEX: &str = include_str!("../../console/index.html");
    const SCRIPT: &str = include_str!("../../console/fleet.js");
    const JS: &str = "text/javascript; charset=utf-8";
    Router::new()
        .route("/console", get(|| async { axum::response::Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { file(INDEX, "text/html; charset=utf-8") }))
        .route("/console/common.js", get(|| async { file(COMMON_SCRIPT, JS) }))
        .route("/console/fleet.js", get(|| async { file(SCRIPT, JS) }))
        .route("/console/console.css", get(|| async { file(STYLE, "text/css; charset=utf-8") }))
}

/// An error answer: a status and `{"code", "message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "SPEC_INVALID", message)
    }

    fn etcd(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ETCD_UNAVAILABLE", format!("etcd: {e}"))
    }

    fn no_leader(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "NO_LEADER", message)
    }

    fn module_not_found(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "MODULE_NOT_FOUND", format!("no spec named {name:?}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { code: self.code.to_owned(), message: self.message })).into_response()
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

async fn authenticate(State(ctl): State<Arc<Controller>>, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {}", ctl.token);
    let given = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    if bool::from(given.ct_eq(expected.as_bytes())) {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or wrong fleet token (authorization: Bearer ...)",
        )
        .into_response()
    }
}

async fn snapshot(ctl: &Controller) -> ApiResult<Snapshot> {
    let mut client = ctl.client();
    Snapshot::read(&mut client, &ctl.keys).await.map_err(ApiError::etcd)
}

async fn leader(State(ctl): State<Arc<Controller>>) -> ApiResult {
    let leader = read_leader(&ctl).await?;
    Ok(Json(json!({
        "id": ctl.id,
        "leading": ctl.leadership.fence().is_some(),
        "leader": leader,
        "reconcile": ctl.metrics.snapshot(),
    }))
    .into_response())
}

async fn read_leader(ctl: &Controller) -> ApiResult<Option<LeaderRecord>> {
    let mut client = ctl.client();
    let got = tokio::time::timeout(REQUEST_TIMEOUT, client.get(ctl.keys.leader(), None))
        .await
        .map_err(|_| ApiError::etcd("no answer in time"))?
        .map_err(ApiError::etcd)?;
    Ok(got.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

async fn controllers(State(ctl): State<Arc<Controller>>) -> ApiResult {
    let snapshot = snapshot(&ctl).await?;
    Ok(Json(snapshot.controllers.into_values().collect::<Vec<_>>()).into_response())
}

async fn list_specs(State(ctl): State<Arc<Controller>>) -> ApiResult {
    let snapshot = snapshot(&ctl).await?;
    Ok(Json(snapshot.specs.into_values().collect::<Vec<_>>()).into_response())
}

async fn get_spec(State(ctl): State<Arc<Controller>>, Path(name): Path<String>) -> ApiResult {
    let (record, _) = read_spec(&ctl, &name).await?.ok_or_else(|| ApiError::module_not_found(&name))?;
    Ok(Json(record).into_response())
}

async fn read_spec(ctl: &Controller, name: &str) -> ApiResult<Option<(SpecRecord, i64)>> {
    if !keys::is_valid_id(name) {
        return Ok(None);
    }
    let mut client = ctl.client();
    let got = tokio::time::timeout(REQUEST_TIMEOUT, client.get(ctl.keys.spec(name), None))
        .await
        .map_err(|_| ApiError::etcd("no answer in time"))?
        .map_err(ApiError::etcd)?;
    Ok(got.kvs().first().and_then(|kv| Some((serde_json::from_slice(kv.value()).ok()?, kv.mod_revision()))))
}

async fn put_spec(
    State(ctl): State<Arc<Controller>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", "a spec is at most 1 MiB");
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", format!("reading the spec: {e}")),
    })?;
    if ctl.leadership.fence().is_none() {
        return forward(
            &ctl,
            method,
            &format!("/api/v1/specs/{name}"),
            &headers,
            Payload::Bytes(body.to_vec()),
        )
        .await;
    }
    if body.len() > MAX_SPEC_BYTES {
        return Err(too_large());
    }
    let spec: Spec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the spec does not parse: {e}")))?;
    validate(&spec, &name).map_err(ApiError::invalid)?;
    if spec.url.is_none() && !artifact_known(&ctl, &spec.sha256).await? {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ARTIFACT_NOT_FOUND",
            format!("no artifact {} was pushed and the spec has no url: push it first", spec.sha256),
        ));
    }
    for _ in 0..3 {
        let fence =
            ctl.leadership.fence().ok_or_else(|| ApiError::no_leader("this controller stopped leading"))?;
        let current = read_spec(&ctl, &name).await?;
        if let Some((record, _)) = &current
            && record.spec == spec
        {
            return Ok(Json(json!({"name": name, "generation": record.generation, "changed": false}))
                .into_response());
        }
        let generation = current.as_ref().map_or(1, |(r, _)| r.generation + 1);
        let record = SpecRecord { spec: spec.clone(), generation, changed_ms: now_ms() };
        let key = ctl.keys.spec(&name);
        let unchanged = match &current {
            Some((_, revision)) => Compare::mod_revision(key.clone(), CompareOp::Equal, *revision),
            None => Compare::version(key.clone(), CompareOp::Equal, 0),
        };
        let mut client = ctl.client();
        let ops = vec![TxnOp::put(key, json(&record), None)];
        match store::commit(&mut client, vec![fence.compare(), unchanged], ops).await {
            Outcome::Committed(_) => {
                ctl.kick.notify_one();
                return Ok(
                    Json(json!({"name": name, "generation": generation, "changed": true})).into_response()
                );
            }
            // Another write of this spec, or the end of this term: read again.
            Outcome::Refused | Outcome::Stale => continue,
            Outcome::Unknown(e) => {
                return Err(ApiError::etcd(format!("the write's outcome is unknown ({e}); apply again")));
            }
        }
    }
    Err(ApiError::no_leader("the spec kept changing or this controller stopped leading; apply again"))
}

async fn artifact_known(ctl: &Controller, sha256: &str) -> ApiResult<bool> {
    let mut client = ctl.client();
    let got = tokio::time::timeout(REQUEST_TIMEOUT, client.get(ctl.keys.artifact(sha256), None))
        .await
        .map_err(|_| ApiError::etcd("no answer in time"))?
        .map_err(ApiError::etcd)?;
    Ok(!got.kvs().is_empty())
}

async fn delete_spec(
    State(ctl): State<Arc<Controller>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult {
    if ctl.leadership.fence().is_none() {
        return forward(&ctl, method, &format!("/api/v1/specs/{name}"), &headers, Payload::Bytes(Vec::new()))
            .await;
    }
    for _ in 0..3 {
        let fence =
            ctl.leadership.fence().ok_or_else(|| ApiError::no_leader("this controller stopped leading"))?;
        let Some((_, revision)) = read_spec(&ctl, &name).await? else {
            return Err(ApiError::module_not_found(&name));
        };
        let key = ctl.keys.spec(&name);
        let mut client = ctl.client();
        let compares = vec![fence.compare(), Compare::mod_revision(key.clone(), CompareOp::Equal, revision)];
        match store::commit(&mut client, compares, vec![TxnOp::delete(key, None)]).await {
            Outcome::Committed(_) => {
                ctl.kick.notify_one();
                return Ok(Json(json!({"name": name, "deleted": true})).into_response());
            }
            Outcome::Refused | Outcome::Stale => continue,
            Outcome::Unknown(e) => {
                return Err(ApiError::etcd(format!("the delete's outcome is unknown ({e})")));
            }
        }
    }
    Err(ApiError::no_leader("the spec kept changing or this controller stopped leading; delete again"))
}

#[derive(Deserialize)]
struct PushQuery {
    sha256: Option<String>,
}

async fn push_artifact(
    State(ctl): State<Arc<Controller>>,
    Query(query): Query<PushQuery>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    if let Some(sha) = &query.sha256
        && !is_sha256(sha)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "sha256 must be 64 lower-case hex characters",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("an artifact is at most {} bytes (--max-upload-bytes)", ctl.max_upload_bytes),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctl.max_upload_bytes) {
        return Err(too_large());
    }
    // Received into this controller's store first, standby or not: the hash is computed as
    // the bytes arrive, and a standby's copy is one more.
    let internal = |e: std::io::Error| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", format!("the artifact store: {e}"))
    };
    // File work runs on the blocking pool, in writes of about a MiB, never on the runtime.
    let store = ctl.clone();
    let mut receiver = blocking(move || store.store.receiver()).await.map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut size = 0u64;
    loop {
        let chunk = stream.next().await.transpose().map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", format!("reading the upload: {e}"))
        })?;
        if let Some(chunk) = &chunk {
            size += chunk.len() as u64;
            if size > ctl.max_upload_bytes {
                return Err(too_large());
            }
            buffer.extend_from_slice(chunk);
        }
        if !buffer.is_empty() && (chunk.is_none() || buffer.len() >= WRITE_BYTES) {
            let bytes = std::mem::take(&mut buffer);
            receiver = blocking(move || receiver.write(&bytes).map(|()| receiver)).await.map_err(internal)?;
        }
        if chunk.is_none() {
            break;
        }
    }
    let received = blocking(move || receiver.finish()).await.map_err(internal)?;
    if let Some(expected) = &query.sha256
        && *expected != received.sha256
    {
        let actual = received.sha256.clone();
        let store = ctl.clone();
        let _ = blocking(move || {
            store.store.discard(received);
            Ok(())
        })
        .await;
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "SHA256_MISMATCH",
            format!("the bytes hash to {actual}, not {expected}"),
        ));
    }
    let (sha256, size) = (received.sha256.clone(), received.size);
    let store = ctl.clone();
    let stored = blocking(move || store.store.keep(received)).await.map_err(internal)?;

    if ctl.leadership.fence().is_none() {
        let path = format!("/api/v1/artifacts?sha256={sha256}");
        return forward(&ctl, method, &path, &headers, Payload::File(ctl.store.path(&sha256))).await;
    }
    let key = ctl.keys.artifact(&sha256);
    for _ in 0..3 {
        if artifact_known(&ctl, &sha256).await? {
            return Ok(Json(json!({"sha256": sha256, "size": size, "stored": stored})).into_response());
        }
        let fence =
            ctl.leadership.fence().ok_or_else(|| ApiError::no_leader("this controller stopped leading"))?;
        let record = ArtifactRecord { sha256: sha256.clone(), size, pushed_ms: now_ms() };
        let mut client = ctl.client();
        let compares = vec![fence.compare(), Compare::version(key.clone(), CompareOp::Equal, 0)];
        match store::commit(&mut client, compares, vec![TxnOp::put(key.clone(), json(&record), None)]).await {
            Outcome::Committed(_) => {
                ctl.kick_artifacts.notify_one();
                return Ok(Json(json!({"sha256": sha256, "size": size, "stored": true})).into_response());
            }
            Outcome::Refused | Outcome::Stale => continue,
            Outcome::Unknown(e) => {
                return Err(ApiError::etcd(format!("the write's outcome is unknown ({e}); push again")));
            }
        }
    }
    Err(ApiError::no_leader("this controller stopped leading; push again"))
}

/// Writes to an artifact's temporary file are gathered to about this size.
const WRITE_BYTES: usize = 1 << 20;
/// A streamed artifact is read in pieces of this size.
const READ_BYTES: usize = 64 << 10;

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// The artifact's size, when the fleet knows it (its `artifacts/<sha>` record exists: a push
/// whose record was never written is not known, so the CLI pushes again) and this controller
/// holds its bytes.
async fn known_artifact(ctl: &Controller, sha256: &str) -> ApiResult<u64> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ARTIFACT_NOT_FOUND",
            format!("this controller has no artifact {sha256}"),
        )
    };
    if !is_sha256(sha256) {
        return Err(not_found());
    }
    let metadata = tokio::fs::metadata(ctl.store.path(sha256)).await.map_err(|_| not_found())?;
    if !metadata.is_file() || !artifact_known(ctl, sha256).await? {
        return Err(not_found());
    }
    Ok(metadata.len())
}

fn artifact_headers(size: u64) -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
        (header::CONTENT_LENGTH, HeaderValue::from(size)),
    ]
}

/// `HEAD /api/v1/artifacts/{sha256}`: from the record and the file's metadata, no bytes read.
async fn head_artifact(State(ctl): State<Arc<Controller>>, Path(sha256): Path<String>) -> ApiResult {
    let size = known_artifact(&ctl, &sha256).await?;
    Ok((artifact_headers(size), Body::empty()).into_response())
}

/// `GET /api/v1/artifacts/{sha256}`: the bytes, streamed from the file.
async fn get_artifact(State(ctl): State<Arc<Controller>>, Path(sha256): Path<String>) -> ApiResult {
    let size = known_artifact(&ctl, &sha256).await?;
    let file = tokio::fs::File::open(ctl.store.path(&sha256)).await.map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ARTIFACT_NOT_FOUND",
            format!("this controller has no artifact {sha256}"),
        )
    })?;
    Ok((artifact_headers(size), Body::from_stream(file_stream(file))).into_response())
}

/// A file's bytes as a stream of pieces; ends after the first error.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0; READ_BYTES];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(Bytes::from(buffer)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[derive(Deserialize)]
struct StatusQuery {
    module: Option<String>,
}

async fn status(State(ctl): State<Arc<Controller>>, Query(query): Query<StatusQuery>) -> ApiResult {
    let snapshot = snapshot(&ctl).await?;
    if let Some(module) = &query.module
        && !snapshot.specs.contains_key(module)
    {
        return Err(ApiError::module_not_found(module));
    }
    Ok(Json(fleet_status(&snapshot, query.module.as_deref())).into_response())
}

async fn bases(State(ctl): State<Arc<Controller>>) -> ApiResult {
    let snapshot = snapshot(&ctl).await?;
    Ok(Json(base_views(&snapshot)).into_response())
}

async fn endpoints(State(ctl): State<Arc<Controller>>, Path(module): Path<String>) -> ApiResult {
    let snapshot = snapshot(&ctl).await?;
    let endpoints = snapshot.endpoints.get(&module).ok_or_else(|| ApiError::module_not_found(&module))?;
    Ok(Json(endpoints).into_response())
}

/// `POST /api/v1/bases/{id}/cordon`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CordonBody {
    #[serde(default)]
    drain: bool,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/bases/{id}/cordon`: the leader writes `cordons/<id>` (fenced). A base that is
/// not registered may be cordoned (it may be restarting); the answer says it is not.
async fn cordon(
    State(ctl): State<Arc<Controller>>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    if ctl.leadership.fence().is_none() {
        let path = format!("/api/v1/bases/{id}/cordon");
        return forward(&ctl, method, &path, &headers, Payload::Bytes(body.to_vec())).await;
    }
    let id = base_id(&id)?;
    let body: CordonBody =
        serde_json::from_slice(if body.is_empty() { b"{}" } else { &body }).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", format!("the cordon body: {e}"))
        })?;
    let record = CordonRecord {
        base_id: id.clone(),
        drain: body.drain,
        actor: body.actor.filter(|a| !a.is_empty()).unwrap_or_else(|| "unknown".to_owned()),
        reason: body.reason.filter(|r| !r.is_empty()),
        at_ms: now_ms(),
    };
    let registered = key_exists(&ctl, ctl.keys.base(&id)).await?;
    let fence =
        ctl.leadership.fence().ok_or_else(|| ApiError::no_leader("this controller stopped leading"))?;
    let mut client = ctl.client();
    let ops = vec![TxnOp::put(ctl.keys.cordon(&id), json(&record), None)];
    match store::commit(&mut client, vec![fence.compare()], ops).await {
        Outcome::Committed(_) => {
            ctl.kick.notify_one();
            let what = if record.drain { "draining" } else { "cordoned" };
            let message = if registered {
                format!("base {id} is {what}")
            } else {
                format!("base {id} is {what}, but no live base has that id (it may be restarting)")
            };
            Ok(Json(json!({
                "base_id": id, "drain": record.drain, "registered": registered, "message": message,
            }))
            .into_response())
        }
        Outcome::Refused | Outcome::Stale => {
            Err(ApiError::no_leader("this controller stopped leading; cordon again"))
        }
        Outcome::Unknown(e) => {
            Err(ApiError::etcd(format!("the write's outcome is unknown ({e}); cordon again")))
        }
    }
}

/// `DELETE /api/v1/bases/{id}/cordon`: the base is eligible again (nothing moves back by
/// itself). Uncordoning a base that is not cordoned changes nothing and says so.
async fn uncordon(
    State(ctl): State<Arc<Controller>>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult {
    if ctl.leadership.fence().is_none() {
        let path = format!("/api/v1/bases/{id}/cordon");
        return forward(&ctl, method, &path, &headers, Payload::Bytes(Vec::new())).await;
    }
    let id = base_id(&id)?;
    let key = ctl.keys.cordon(&id);
    if !key_exists(&ctl, key.clone()).await? {
        return Ok(Json(
            json!({"base_id": id, "changed": false, "message": format!("base {id} is not cordoned")}),
        )
        .into_response());
    }
    let fence =
        ctl.leadership.fence().ok_or_else(|| ApiError::no_leader("this controller stopped leading"))?;
    let mut client = ctl.client();
    match store::commit(&mut client, vec![fence.compare()], vec![TxnOp::delete(key, None)]).await {
        Outcome::Committed(_) => {
            ctl.kick.notify_one();
            Ok(Json(json!({"base_id": id, "changed": true, "message": format!("base {id} is uncordoned")}))
                .into_response())
        }
        Outcome::Refused | Outcome::Stale => {
            Err(ApiError::no_leader("this controller stopped leading; uncordon again"))
        }
        Outcome::Unknown(e) => Err(ApiError::etcd(format!("the delete's outcome is unknown ({e})"))),
    }
}

fn base_id(id: &str) -> ApiResult<String> {
    if keys::is_valid_id(id) {
        Ok(id.to_owned())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", format!("{id:?} is not a base id")))
    }
}

async fn key_exists(ctl: &Controller, key: String) -> ApiResult<bool> {
    let mut client = ctl.client();
    let got = tokio::time::timeout(REQUEST_TIMEOUT, client.get(key, None))
        .await
        .map_err(|_| ApiError::etcd("no answer in time"))?
        .map_err(ApiError::etcd)?;
    Ok(!got.kvs().is_empty())
}

async fn get_rollout(State(ctl): State<Arc<Controller>>, Path(module): Path<String>) -> ApiResult {
    let snapshot = snapshot(&ctl).await?;
    Ok(Json(rollout_view(&snapshot, &module)?).into_response())
}

fn rollout_view(snapshot: &Snapshot, module: &str) -> ApiResult<RolloutView> {
    let rollout = snapshot.rollouts.get(module).cloned().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "ROLLOUT_NOT_FOUND", format!("module {module:?} has no rollout"))
    })?;
    let history =
        snapshot.past_rollouts.get(module).map(|p| p.values().rev().cloned().collect()).unwrap_or_default();
    Ok(RolloutView { rollout, history })
}

/// Writes a [`RolloutCommand`] for the leader to apply. Any controller writes it (it is an
/// input, like a base's report, not a leader decision: the leader applies and deletes it in
/// the fenced transaction that changes the record), so a command given while no controller
/// leads waits in etcd for the next leader. Answers the record once the command was
/// consumed, or 202 with the record as it stands after 5 s.
async fn command_rollout(
    State(ctl): State<Arc<Controller>>,
    Path((module, action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message);
    if !["pause", "resume", "promote", "abort"].contains(&action.as_str()) {
        return Err(bad(format!("{action:?} is not pause, resume, promote or abort")));
    }
    let body = body.map_err(|e| bad(format!("reading the command: {e}")))?;
    let request: CommandRequest = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("the body is not {{\"actor\": \"...\", \"reason\": \"...\"}}: {e}")))?;
    if request.actor.trim().is_empty() {
        return Err(bad("`actor` is required: who asks".into()));
    }
    if !keys::is_valid_id(&module) {
        return Err(rollout_view(&Snapshot::default(), &module).unwrap_err());
    }
    rollout_view(&snapshot(&ctl).await?, &module)?;
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = now_ms();
    let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{now:013}-{}-{sequence}", ctl.id);
    let command =
        RolloutCommand { id: id.clone(), action, actor: request.actor, reason: request.reason, at_ms: now };
    let key = ctl.keys.command(&module, &id);
    let mut client = ctl.client();
    tokio::time::timeout(REQUEST_TIMEOUT, client.put(key.clone(), json(&command), None))
        .await
        .map_err(|_| ApiError::etcd("no answer in time"))?
        .map_err(ApiError::etcd)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = tokio::time::timeout(REQUEST_TIMEOUT, client.get(key.clone(), None))
            .await
            .map_err(|_| ApiError::etcd("no answer in time"))?
            .map_err(ApiError::etcd)?;
        let consumed = got.kvs().is_empty();
        if consumed || tokio::time::Instant::now() >= deadline {
            let view = rollout_view(&snapshot(&ctl).await?, &module)?;
            let status = if consumed { StatusCode::OK } else { StatusCode::ACCEPTED };
            return Ok((status, Json(view)).into_response());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a forwarded request carries.
enum Payload {
    Bytes(Vec<u8>),
    File(std::path::PathBuf),
}

/// Sends a mutation to the leader and answers what it answered.
async fn forward(
    ctl: &Controller,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    payload: Payload,
) -> ApiResult {
    if headers.contains_key(FORWARDED_BY) {
        return Err(ApiError::no_leader("forwarded here, but this controller does not lead either"));
    }
    let leader =
        read_leader(ctl).await?.ok_or_else(|| ApiError::no_leader("no controller leads the fleet now"))?;
    if leader.id == ctl.id {
        return Err(ApiError::no_leader("this controller's term is ending; retry"));
    }
    let url = format!("{}{path}", leader.url.trim_end_matches('/'));
    let token = format!("Bearer {}", ctl.token);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let id = ctl.id.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<(u16, String, Vec<u8>), String> {
        let mut request = ureq::request(method.as_str(), &url)
            .timeout(Duration::from_secs(300))
            .set("authorization", &token)
            .set(FORWARDED_BY, &id);
        if let Some(content_type) = &content_type {
            request = request.set("content-type", content_type);
        }
        let sent = match payload {
            Payload::Bytes(bytes) => request.send_bytes(&bytes),
            Payload::File(path) => match std::fs::File::open(&path) {
                Ok(file) => request.send(file),
                Err(e) => return Err(format!("reading {}: {e}", path.display())),
            },
        };
        let response = match sent {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(e) => return Err(e.to_string()),
        };
        let status = response.status();
        let content_type = response.content_type().to_owned();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body).map_err(|e| e.to_string())?;
        Ok((status, content_type, body))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "LEADER_UNREACHABLE", e.to_string()))?;
    let (status, content_type, body) = answer.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "LEADER_UNREACHABLE",
            format!("forwarding to the leader {}: {e}", leader.id),
        )
    })?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type =
        HeaderValue::from_str(&content_type).unwrap_or(HeaderValue::from_static("application/json"));
    Ok((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Checks what serde cannot: names, versions, hashes, the replica mode, the selector.
pub(crate) fn validate(spec: &Spec, name: &str) -> Result<(), String> {
    if spec.name != name {
        return Err(format!("the spec's name {:?} differs from the path's {name:?}", spec.name));
    }
    if !keys::is_valid_id(name) {
        return Err(format!("name {name:?} must be 1 to 64 of [A-Za-z0-9_.-]"));
    }
    semver::Version::parse(&spec.version)
        .map_err(|e| format!("version {:?} is not semver: {e}", spec.version))?;
    if !is_sha256(&spec.sha256) {
        return Err(format!("sha256 {:?} must be 64 lower-case hex characters", spec.sha256));
    }
    if let Some(url) = &spec.url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(format!("url {url:?} must start with http:// or https://"));
    }
    if let Some(autoscale) = &spec.autoscale {
        crate::autoscale::validate(autoscale, spec.peer)?;
    }
    if let Some(strategy) = &spec.rollout
        && strategy.analysis.window_ms > crate::model::Analysis::MAX_WINDOW_MS
    {
        return Err(format!(
            "rollout.analysis.window_ms = {}: at most {} (the leader keeps two minutes of reports)",
            strategy.analysis.window_ms,
            crate::model::Analysis::MAX_WINDOW_MS
        ));
    }
    match (spec.replicas, spec.peer) {
        (Some(_), true) => return Err("both replicas and peer = true: choose one".to_owned()),
        (None, false) if spec.autoscale.is_none() => {
            return Err("neither replicas nor peer = true: say how many bases run it".to_owned());
        }
        (Some(n), false) if n > 100_000 => return Err(format!("replicas = {n} is more than 100000")),
        _ => {}
    }
    for (key, value) in &spec.selector {
        if !keys::is_valid_id(key) || !keys::is_valid_id(value) {
            return Err(format!("selector {key:?} = {value:?}: labels are 1 to 64 of [A-Za-z0-9_.-]"));
        }
    }
    if let Some(version) = &spec.interface_version {
        semver::Version::parse(version)
            .map_err(|e| format!("interface_version {version:?} is not semver: {e}"))?;
    }
    Ok(())
}

/// `GET /api/v1/status`: specs, their placements and assignments, and what bases report.
pub(crate) fn fleet_status(snapshot: &Snapshot, only: Option<&str>) -> FleetStatus {
    let mut modules = Vec::new();
    for (name, record) in snapshot.specs.iter().filter(|(name, _)| only.is_none_or(|m| m == name.as_str())) {
        let spec = &record.spec;
        let placement = snapshot.placements.get(name).filter(|p| p.generation == record.generation);
        let mut replicas = Vec::new();
        for (base_id, assigned) in snapshot.assignments.iter().filter_map(|(b, m)| Some((b, m.get(name)?))) {
            let status = snapshot.statuses.get(base_id);
            let reported = status.and_then(|s| {
                let all: Vec<_> = s.modules.iter().filter(|m| &m.name == name).collect();
                all.iter()
                    .find(|m| m.version == assigned.version && m.sha256 == assigned.sha256)
                    .or(all.first())
                    .copied()
            });
            let failure = status
                .and_then(|s| s.failures.get(name))
                .filter(|f| f.version == assigned.version && f.sha256 == assigned.sha256);
            let replica = match (failure, reported) {
                (Some(failure), _) => ReplicaView {
                    base_id: base_id.clone(),
                    version: assigned.version.clone(),
                    sha256: assigned.sha256.clone(),
                    state: "failed".to_owned(),
                    serving: false,
                    health: "unknown".to_owned(),
                    reason: Some(failure.code.clone()),
                    heap_bytes: 0,
                    cpu_millis: 0,
                    requests: 0,
                },
                (None, Some(m)) => ReplicaView {
                    base_id: base_id.clone(),
                    version: m.version.clone(),
                    sha256: m.sha256.clone(),
                    state: m.state.clone(),
                    serving: m.serving,
                    health: m.health.clone(),
                    reason: m.reason.clone(),
                    heap_bytes: m.heap_bytes,
                    cpu_millis: m.cpu_millis,
                    requests: m.requests,
                },
                (None, None) => ReplicaView {
                    base_id: base_id.clone(),
                    version: assigned.version.clone(),
                    sha256: assigned.sha256.clone(),
                    state: "pending".to_owned(),
                    serving: false,
                    health: "unknown".to_owned(),
                    reason: None,
                    heap_bytes: 0,
                    cpu_millis: 0,
                    requests: 0,
                },
            };
            replicas.push(replica);
        }
        let ready = replicas
            .iter()
            .filter(|r| r.serving && r.version == spec.version && r.sha256 == spec.sha256)
            .count();
        modules.push(ModuleView {
            name: name.clone(),
            version: spec.version.clone(),
            generation: record.generation,
            wanted: placement.map_or(spec.replicas.unwrap_or(0), |p| p.wanted),
            ready: ready as u32,
            state: placement.map_or("pending".to_owned(), |p| p.state.clone()),
            reason: placement.and_then(|p| p.reason.clone()),
            replicas,
            autoscale: scale_view(snapshot, record),
        });
    }
    let unmanaged = snapshot
        .statuses
        .iter()
        .flat_map(|(base_id, s)| s.modules.iter().filter(|m| !m.managed).map(move |m| (base_id, m)))
        .filter(|(_, m)| only.is_none_or(|name| name == m.name))
        .map(|(base_id, m)| UnmanagedView {
            base_id: base_id.clone(),
            name: m.name.clone(),
            version: m.version.clone(),
            state: m.state.clone(),
        })
        .collect();
    FleetStatus { modules, unmanaged }
}

/// `GET /api/v1/bases`: each live base with what it uses by the scheduler's need rules.
pub(crate) fn base_views(snapshot: &Snapshot) -> Vec<BaseView> {
    snapshot
        .bases
        .iter()
        .map(|(id, record)| {
            let (used, modules) =
                schedule::usage(id, &snapshot.specs, &snapshot.statuses, &snapshot.assignments);
            let cordon = snapshot.cordons.get(id).cloned();
            let drained = cordon.as_ref().is_some_and(|c| c.drain) && !runs_fleet_modules(snapshot, id);
            BaseView {
                record: record.clone(),
                status: snapshot.statuses.get(id).cloned(),
                used,
                modules,
                cordon,
                drained,
            }
        })
        .collect()
}

/// Whether any fleet-managed module is on `base`: assigned, or reported (the base may still
/// be unloading one the fleet took away).
fn runs_fleet_modules(snapshot: &Snapshot, base: &str) -> bool {
    snapshot.assignments.get(base).is_some_and(|m| !m.is_empty())
        || snapshot.statuses.get(base).is_some_and(|s| s.modules.iter().any(|m| m.managed))
}

/// An autoscaled spec's count and the load it is measured from.
fn scale_view(snapshot: &Snapshot, record: &SpecRecord) -> Option<ScaleView> {
    let spec = &record.spec;
    let autoscale = spec.autoscale.as_ref()?;
    let placed: std::collections::BTreeSet<String> = snapshot
        .assignments
        .iter()
        .filter(|(_, modules)| modules.contains_key(&spec.name))
        .map(|(base, _)| base.clone())
        .collect();
    let load = autoscale::measure(spec, &snapshot.statuses, &placed);
    let replicas = snapshot
        .scales
        .get(&spec.name)
        .map_or_else(|| autoscale::starting_count(autoscale, spec), |s| s.replicas);
    Some(ScaleView {
        replicas,
        min: autoscale.min,
        max: autoscale.max,
        cpu: load.cpu_cores(),
        rps: load.rps,
        target_cpu: autoscale.target_cpu,
        target_rps: autoscale.target_rps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edit: impl FnOnce(&mut serde_json::Value), expected: Option<&str>) {
        let mut spec =
            json!({"name": "greeter", "version": "1.0.0", "sha256": "a".repeat(64), "replicas": 2});
        edit(&mut spec);
        let spec: Spec = serde_json::from_value(spec).expect("parses");
        match (validate(&spec, "greeter"), expected) {
            (Ok(()), None) => {}
            (Err(message), Some(part)) => assert!(message.contains(part), "{message:?} lacks {part:?}"),
            (outcome, expected) => panic!("{outcome:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn specs_are_validated_precisely() {
        check(|_| {}, None);
        check(|s| s["name"] = json!("other"), Some("differs from the path's"));
        check(|s| s["version"] = json!("1.0"), Some("is not semver"));
        check(|s| s["sha256"] = json!("A".repeat(64)), Some("64 lower-case hex"));
        check(|s| s["peer"] = json!(true), Some("both replicas and peer"));
        check(
            |s| {
                s.as_object_mut().expect("an object").remove("replicas");
            },
            Some("neither replicas nor peer"),
        );
        check(|s| s["selector"] = json!({"tier": "web/db"}), Some("labels are 1 to 64"));
        check(|s| s["url"] = json!("ftp://x"), Some("http:// or https://"));
        check(|s| s["interface_version"] = json!("x"), Some("interface_version"));
        check(|s| s["url"] = json!("https://example.com/a.so"), None);
    }

    #[tokio::test]
    async fn an_artifact_streams_whole() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("a.so");
        let bytes: Vec<u8> = (0..(3 * READ_BYTES + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("written");
        let file = tokio::fs::File::open(&path).await.expect("opened");
        let pieces: Vec<Bytes> =
            file_stream(file).map(|piece| piece.expect("read")).collect::<Vec<_>>().await;
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.concat(), bytes);
    }
}

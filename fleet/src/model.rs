//! What the fleet keeps in etcd, and what its API answers: one JSON document per key (see
//! [`crate::keys`] for where each lives and who writes it).
//!
//! Every type here is the contract between the agent (on each base), the controller and the
//! CLI: fields are added with `#[serde(default)]`, never renamed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A module deployment, as the controller stores it (`/pedestal/specs/<name>`): the TOML file
/// of `pedestal fleet apply`, validated, its local artifact path replaced by the pushed bytes'
/// sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The module's name (what its requests start with: `/<name>/...`).
    pub name: String,
    /// The version every replica runs (semver).
    pub version: String,
    /// Lower-case hex sha256 of the module's `.so`; every base verifies it before loading.
    pub sha256: String,
    /// Where to get the bytes besides the fleet's own copies (`http://` or `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How many bases run it; `None` with `peer = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Every base the selector matches runs it (Koupleless's "peer" mode).
    #[serde(default)]
    pub peer: bool,
    /// Labels a base must carry, all of them (`tier = "web"`).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Where replicas go among the bases that fit.
    #[serde(default)]
    pub placement: Placement,
    /// What one replica is expected to use until it has run and been measured.
    #[serde(default)]
    pub resources: Resources,
    /// Per-module limits applied on every base (the operations API's `PUT .../limits` body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<pedestal_base::LimitOverrides>,
    /// The module's configuration (`pedestal.config`), the same on every base.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The module interface version the artifact was built against, when known: bases of
    /// another major, or an older minor, are not eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_version: Option<String>,
}

/// How replicas are spread over the bases that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Fewest modules first: replicas land on the emptiest bases.
    #[default]
    Spread,
    /// Fullest base that still fits first: leaves other bases empty, to reclaim.
    Pack,
}

/// A replica's expected use, declared in the spec, until measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Heap bytes.
    pub memory_bytes: u64,
    /// CPU, in thousandths of a core.
    pub cpu_millis: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Self { memory_bytes: 32 << 20, cpu_millis: 50 }
    }
}

/// A stored spec with its place in the desired state's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecRecord {
    /// The spec.
    pub spec: Spec,
    /// Starts at 1, bumped by each `apply` that changed the spec.
    pub generation: u64,
    /// When it was last changed, in milliseconds since the epoch.
    pub changed_ms: u64,
}

/// One base, as it registers (`/pedestal/bases/<id>`, under the base's lease: it disappears
/// about a TTL after the base dies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// `--base-id`.
    pub id: String,
    /// `http://host:port` of its traffic server (modules answer at `/<name>/...`).
    pub traffic_url: String,
    /// `http://host:port` of its operations API.
    pub admin_url: String,
    /// `--labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the base may give its modules.
    pub capacity: Capacity,
    /// The module interface version it hosts (`pedestal_module_api::INTERFACE_VERSION`).
    pub interface_version: String,
    /// When this process registered, in milliseconds since the epoch.
    pub started_ms: u64,
}

/// What a base may give its modules (`--capacity-memory`, `--capacity-cpu`, `--max-modules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Heap bytes, all modules together.
    pub memory_bytes: u64,
    /// CPU, in thousandths of a core, all modules together.
    pub cpu_millis: u64,
    /// Modules at most (fleet-managed or not).
    pub max_modules: u32,
}

/// What a base reports (`/pedestal/status/<id>`, under its lease), each time something changed
/// and at least every two seconds (its measurements move).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaseStatus {
    /// `--base-id`.
    pub base_id: String,
    /// The highest etcd revision of its assignments it has applied (it never applies an older
    /// assignment than one it already applied).
    pub applied_revision: i64,
    /// Every module instance it hosts, fleet-managed or not.
    #[serde(default)]
    pub modules: Vec<ModuleStatus>,
    /// The sha256 of every artifact in its store (it serves them to peers).
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Assignments it could not apply, by module name: the stable code and the message.
    #[serde(default)]
    pub failures: BTreeMap<String, Failure>,
    /// When it was measured, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// Why an assignment was not applied (a NACK).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The version assigned.
    pub version: String,
    /// The sha256 assigned.
    pub sha256: String,
    /// A stable code: the base's (`SHA256_MISMATCH`, `START_FAILED`...) or the fleet's
    /// (`ARTIFACT_UNAVAILABLE`).
    pub code: String,
    /// What happened.
    pub message: String,
    /// The assignment's revision.
    pub revision: i64,
}

/// One module instance on a base, as measured there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleStatus {
    /// Module name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its artifact's sha256.
    pub sha256: String,
    /// The base's state name (`active`, `inactive`, `broken`...).
    pub state: String,
    /// Whether it takes the module's traffic (or a weighted share of it).
    pub serving: bool,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health: String,
    /// The stable code of why it is not serving or not healthy, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Heap bytes now.
    pub heap_bytes: u64,
    /// CPU used over the last report interval, in thousandths of a core.
    pub cpu_millis: u64,
    /// Requests served since it started.
    pub requests: u64,
    /// Whether an assignment of the fleet names it (otherwise: installed by hand, unmanaged).
    pub managed: bool,
}

/// What one base must run of one module (`/pedestal/assign/<base>/<module>`), written by the
/// leading controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Module name.
    pub module: String,
    /// Version to run and make active.
    pub version: String,
    /// The artifact's sha256, verified before loading.
    pub sha256: String,
    /// The spec's external URL, if any (tried after the fleet's own copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Limits to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<pedestal_base::LimitOverrides>,
    /// Configuration to apply.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The spec generation it comes from.
    pub generation: u64,
}

/// The scheduler's answer for one spec (`/pedestal/placement/<module>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// Module name.
    pub module: String,
    /// The spec generation placed.
    pub generation: u64,
    /// `placed` (every wanted replica has a base) or `unschedulable` (see `reason`).
    pub state: String,
    /// Why not every replica has a base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Replicas wanted (for `peer`, the bases the selector matches).
    pub wanted: u32,
    /// The bases assigned, by id.
    pub bases: Vec<String>,
    /// When it was decided, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// Where a module is served (`/pedestal/endpoints/<module>`): for bases forwarding requests
/// and for external load balancers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    /// Module name.
    pub module: String,
    /// Bases serving it now (reported serving the assigned version).
    pub endpoints: Vec<Endpoint>,
}

/// One base serving a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Base id.
    pub base_id: String,
    /// Its traffic server, `http://host:port`.
    pub traffic_url: String,
    /// The version it serves.
    pub version: String,
}

/// An artifact pushed to the fleet (`/pedestal/artifacts/<sha256>`); the bytes live in the
/// controllers' and bases' stores, never in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Lower-case hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was pushed, in milliseconds since the epoch.
    pub pushed_ms: u64,
}

/// A running controller (`/pedestal/controllers/<id>`, under its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    /// `--id` (default: host name and port).
    pub id: String,
    /// `http://host:port` of its API.
    pub url: String,
}

/// The leading controller (`/pedestal/leader`, under the leader's lease). Its create revision
/// is the leader's term: every write of the leader compares it (see [`crate::keys::LEADER`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The controller's id.
    pub id: String,
    /// Its API, for standbys forwarding writes.
    pub url: String,
    /// When it was elected, in milliseconds since the epoch.
    pub since_ms: u64,
}

/// The fleet API's error body, like the base's: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code (see README's fleet error table).
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// `GET /api/v1/status`: every spec and where it runs, and what runs unmanaged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// One entry per spec, by name.
    pub modules: Vec<ModuleView>,
    /// Modules bases run that no spec names (installed by hand): shown, never deleted.
    #[serde(default)]
    pub unmanaged: Vec<UnmanagedView>,
}

/// One spec and its replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleView {
    /// Module name.
    pub name: String,
    /// The spec's version.
    pub version: String,
    /// The spec's generation.
    pub generation: u64,
    /// Replicas wanted.
    pub wanted: u32,
    /// Replicas reported serving the spec's version and sha256.
    pub ready: u32,
    /// The placement's state (`placed`, `unschedulable`, or `pending` before the first one).
    pub state: String,
    /// Why it is not placed, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each assigned base, as it reports the module.
    pub replicas: Vec<ReplicaView>,
}

/// One replica: an assigned base and what it reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Base id.
    pub base_id: String,
    /// The version it runs (reported), or the one assigned while it has not reported.
    pub version: String,
    /// The sha256 it runs.
    pub sha256: String,
    /// `active`, `inactive`... as the base says; `pending` before its first report of it;
    /// `failed` with a NACK.
    pub state: String,
    /// Whether it takes traffic.
    pub serving: bool,
    /// `healthy`, `unhealthy`, `unknown`.
    pub health: String,
    /// The NACK's code, or why it is not serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Heap bytes.
    pub heap_bytes: u64,
    /// CPU, thousandths of a core.
    pub cpu_millis: u64,
    /// Requests served.
    pub requests: u64,
}

/// A module a base runs that no spec names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmanagedView {
    /// Base id.
    pub base_id: String,
    /// Module name.
    pub name: String,
    /// Version.
    pub version: String,
    /// State.
    pub state: String,
}

/// `GET /api/v1/bases`: one live base, its registration, its last report, and what it has
/// committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseView {
    /// As it registered.
    pub record: BaseRecord,
    /// Its last report, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BaseStatus>,
    /// Memory and CPU its modules use or are expected to (measured where measured).
    pub used: Resources,
    /// Modules on it: assigned plus unmanaged.
    pub modules: u32,
}

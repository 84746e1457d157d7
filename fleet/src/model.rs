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
    /// How a new version reaches the bases (`[rollout]`); [`Strategy::default`] without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Strategy>,
    /// Replicas from measured load (`autoscale = {...}`): then `replicas` is the starting count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
}

impl Spec {
    /// The rollout strategy in force: the spec's, or the default.
    pub fn strategy(&self) -> Strategy {
        self.rollout.clone().unwrap_or_default()
    }

    /// The release the spec asks for.
    pub fn release(&self) -> Release {
        Release { version: self.version.clone(), sha256: self.sha256.clone(), url: self.url.clone() }
    }
}

/// One build of a module: what a rollout goes from and to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Semver version.
    pub version: String,
    /// Lower-case hex sha256 of the `.so`.
    pub sha256: String,
    /// The spec's external URL for these bytes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// How a new version (or new bytes of the same version) replaces the running one (`[rollout]`
/// in the spec file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    /// The steps, in order; each moves more bases. A last step short of every base is followed
    /// by an implicit `{ bases = "100%" }`.
    pub steps: Vec<Step>,
    /// Bases moving to the new version at once (upgrading in place, not yet reporting it
    /// serving). At least 1.
    pub max_unavailable: Amount,
    /// How each step's health is judged.
    #[serde(default)]
    pub analysis: Analysis,
}

impl Default for Strategy {
    /// Every base in one step, 25% of them at a time, judged by the default analysis.
    fn default() -> Self {
        Self {
            steps: vec![Step { bases: Amount::Percent(100), weight: 100, pause: Pause::None }],
            max_unavailable: Amount::Percent(25),
            analysis: Analysis::default(),
        }
    }
}

/// A number of bases: a count, or a percentage of the module's replicas (rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// `bases = 1`.
    Count(u32),
    /// `bases = "25%"` (1 to 100).
    Percent(u32),
}

impl Amount {
    /// How many of `n` bases: a count capped at `n`, a percentage rounded up; at least 1 when
    /// `n > 0`.
    pub fn of(self, n: u32) -> u32 {
        let wanted = match self {
            Self::Count(count) => count,
            Self::Percent(percent) => (u64::from(n) * u64::from(percent)).div_ceil(100) as u32,
        };
        wanted.clamp(n.min(1), n)
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(count) => serializer.serialize_u32(*count),
            Self::Percent(percent) => serializer.serialize_str(&format!("{percent}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(count) if count >= 1 => Ok(Self::Count(count)),
            Raw::Count(_) => Err(serde::de::Error::custom("a number of bases is at least 1")),
            Raw::Text(text) => match text.trim().strip_suffix('%').map(|p| p.trim().parse::<u32>()) {
                Some(Ok(percent)) if (1..=100).contains(&percent) => Ok(Self::Percent(percent)),
                _ => Err(serde::de::Error::custom(format!(
                    "{text:?} is not a number of bases (say 2) or a percentage from 1% to 100%"
                ))),
            },
        }
    }
}

/// One step of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// How many of the module's bases run the new version once this step is reached (counted
    /// from the start, not added to the previous step's).
    pub bases: Amount,
    /// The share of each of those bases' traffic the new version takes, 1 to 100; below 100
    /// the base keeps the old version beside it for the rest (not possible when both are the
    /// same version: then 100).
    #[serde(default = "full_weight")]
    pub weight: u32,
    /// How long the step holds once reached (besides its analysis window), or `manual`: until
    /// `pedestal fleet rollout promote`.
    #[serde(default, skip_serializing_if = "Pause::is_none")]
    pub pause: Pause,
}

impl Step {
    /// `bases` as the spec says it: `2` or `"25%"`.
    pub fn bases_text(&self) -> String {
        match self.bases {
            Amount::Count(n) => n.to_string(),
            Amount::Percent(p) => format!("{p}%"),
        }
    }
}

fn full_weight() -> u32 {
    100
}

/// How long a reached step holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pause {
    /// Not at all (its analysis window aside).
    #[default]
    None,
    /// This many milliseconds (`pause = "30s"`).
    For(u64),
    /// Until promoted (`pause = "manual"`).
    Manual,
}

impl Pause {
    /// Whether there is no pause.
    pub fn is_none(&self) -> bool {
        *self == Self::None
    }
}

impl Serialize for Pause {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => serializer.serialize_str("0s"),
            Self::For(ms) => serializer.serialize_str(&format_duration(*ms)),
            Self::Manual => serializer.serialize_str("manual"),
        }
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim() == "manual" {
            return Ok(Self::Manual);
        }
        match parse_duration(&text).map_err(serde::de::Error::custom)? {
            0 => Ok(Self::None),
            ms => Ok(Self::For(ms)),
        }
    }
}

/// How a step's health is judged: the new version's error rate and p99 latency against the old
/// version's, from the bases' own accounting, over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Analysis {
    /// How long each reached step is measured, in milliseconds (0: not measured; the step is
    /// judged on its bases' health and NACKs alone).
    pub window_ms: u64,
    /// The new version fails the step when its 5xx rate exceeds the old one's by more than
    /// this (0.05 = five points).
    pub max_error_rate_increase: f64,
    /// ... or when its p99 latency is more than this many times the old one's, and more than
    /// [`Analysis::min_latency_increase_us`] above it.
    pub max_latency_ratio: f64,
    /// The least p99 increase that counts as slower, in microseconds (latency is measured in
    /// power-of-two buckets: sub-millisecond moves are noise).
    pub min_latency_increase_us: u64,
    /// Fewer requests to the new version than this in a window judge nothing: the step passes
    /// on health alone (and the analysis says it was inconclusive).
    pub min_requests: u64,
}

impl Analysis {
    /// The longest window accepted: the leader keeps the last 120 samples of each series
    /// (`controller/metrics.rs`), two minutes of reports every second, and a window longer than
    /// what is kept could not be measured.
    pub const MAX_WINDOW_MS: u64 = 120_000;
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            window_ms: 10_000,
            max_error_rate_increase: 0.05,
            max_latency_ratio: 2.0,
            min_latency_increase_us: 5_000,
            min_requests: 20,
        }
    }
}

/// Replicas from measured load (`autoscale = { min = 1, max = 20, target_cpu = 0.6 }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// The fewest replicas (at least 1).
    pub min: u32,
    /// The most replicas (at least `min`).
    pub max: u32,
    /// CPU per replica to aim at, in cores (0.6 = 600m): more replicas when the replicas'
    /// mean is above, fewer when below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu: Option<f64>,
    /// Requests per second per replica to aim at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rps: Option<f64>,
    /// The least time between a change and a scale-down, in milliseconds (scale-up is not
    /// held back: load is served first).
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
}

fn default_cooldown_ms() -> u64 {
    30_000
}

/// Parses a duration: `"250ms"`, `"10s"`, `"2m"`, `"1h"`, or `"0"`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration (say 250ms, 10s, 2m or 1h)"))?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" if number == 0 => 0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (ms, s, m, h)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

/// `ms` as [`parse_duration`] reads it back: whole seconds as `"10s"`, else `"250ms"`.
pub fn format_duration(ms: u64) -> String {
    if ms > 0 && ms.is_multiple_of(1_000) { format!("{}s", ms / 1_000) } else { format!("{ms}ms") }
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
/// and at least every second (its measurements move).
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
    /// Of `requests`, answers with a 5xx status, since it started.
    #[serde(default)]
    pub server_errors: u64,
    /// Latency of its answered requests since it started: `latency_us[i]` requests took at
    /// most 2^i microseconds (and more than 2^(i-1)); trailing zeros left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_us: Vec<u64>,
    /// Requests per second over the last report interval.
    #[serde(default)]
    pub rps: f64,
    /// Its share of the module's traffic on this base when the base splits it by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
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
    /// During a rollout step with a weight below 100: the version this base keeps beside
    /// `version`, and the share `version` takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// A base splitting a module's traffic between the old release and the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The old release, kept running and active for the rest of the traffic.
    pub previous: Release,
    /// The new version's share, 1 to 99 (the old one takes the rest).
    pub weight: u32,
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

/// One base serving one version of a module (a base serving two versions, during a canary
/// step, is listed once for each).
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
    /// The autoscaler's view, when the spec autoscales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<ScaleView>,
}

/// An autoscaled module's count and the load it is measured from, now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleView {
    /// Replicas wanted (the scale record's count, or the starting count before one).
    pub replicas: u32,
    /// The fewest replicas.
    pub min: u32,
    /// The most replicas.
    pub max: u32,
    /// CPU of the serving replicas, summed, in cores.
    pub cpu: f64,
    /// Requests per second of the serving replicas, summed.
    pub rps: f64,
    /// The spec's CPU target per replica, in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu: Option<f64>,
    /// The spec's requests-per-second target per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rps: Option<f64>,
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
    /// Its cordon, while cordoned (`pedestal fleet cordon` or `drain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordon: Option<CordonRecord>,
    /// Draining and no fleet-managed module left on it (assigned or reported): it can be
    /// stopped.
    #[serde(default)]
    pub drained: bool,
}

/// A module's rollout (`/pedestal/rollouts/<module>`), written by the leader (fenced): where a
/// change of version (or of bytes) stands. Everything a controller needs to carry it on is
/// here, so a standby elected mid-step resumes it from etcd alone; the step index and the set
/// of upgraded bases only grow, so no step is applied twice and none is skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// Module name.
    pub module: String,
    /// The spec generation that started it (its id).
    pub generation: u64,
    /// What ran before (`None` for a first deploy: nothing to roll from, complete at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Release>,
    /// What it rolls to.
    pub to: Release,
    /// The strategy, as the spec said when it started.
    pub strategy: Strategy,
    /// Where it stands.
    pub state: RolloutState,
    /// The current step (0-based, into the strategy's steps with the implicit last one).
    pub step: u32,
    /// Where the current step stands.
    pub phase: StepPhase,
    /// The bases assigned `to` so far, in the order they were moved.
    #[serde(default)]
    pub upgraded: Vec<String>,
    /// When it started, in milliseconds since the epoch.
    pub started_ms: u64,
    /// When the current phase began.
    pub phase_ms: u64,
    /// When it ended (complete, rolled back or aborted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// Who paused it, while paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    /// `from`'s error rate and latency over the window before the rollout started, when
    /// measured: what the last step (no old version left to compare with) is judged against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Measure>,
    /// The latest judgement of the current (or last) step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisResult>,
    /// Why it stopped, when it did (rolled back, aborted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, oldest first (the last [`RolloutRecord::MAX_HISTORY`] events).
    #[serde(default)]
    pub history: Vec<RolloutEvent>,
}

impl RolloutRecord {
    /// Events kept in a record.
    pub const MAX_HISTORY: usize = 100;
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Moving bases, measuring or holding a step.
    Progressing,
    /// Held by `pedestal fleet rollout pause` (analysis still runs: a regression still rolls
    /// back).
    Paused,
    /// Every base runs `to`.
    Complete,
    /// A measured regression (or a failed step) returned every base to `from`.
    RolledBack,
    /// `pedestal fleet rollout abort` returned every base to `from`.
    Aborted,
}

impl RolloutState {
    /// Whether it has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Complete | Self::RolledBack | Self::Aborted)
    }
}

/// Where the current step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// Bases are being moved to the step's count (at most `max_unavailable` at once).
    Moving,
    /// Reached: measuring the analysis window and holding the step's pause.
    Holding,
    /// Reached, measured, waiting for `promote` (`pause = "manual"`).
    AwaitingPromotion,
    /// The rollout has ended.
    Done,
}

/// Requests, 5xx answers and p99 latency of one version over a window, summed over bases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// Requests answered.
    pub requests: u64,
    /// Of them, 5xx.
    pub server_errors: u64,
    /// p99 latency in microseconds (a power-of-two bucket's upper bound), if any request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
}

impl Measure {
    /// The share of requests that failed (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.server_errors as f64 / self.requests as f64 }
    }
}

/// One judgement of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisResult {
    /// When it was made, in milliseconds since the epoch.
    pub at_ms: u64,
    /// The step judged.
    pub step: u32,
    /// `pass`, `fail` or `inconclusive` (too few requests to judge).
    pub verdict: String,
    /// The old version over the window (or the baseline).
    pub old: Measure,
    /// The new version over the window.
    pub new: Measure,
    /// Why, in words.
    pub reason: String,
}

/// One thing that happened to a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
    /// Who: `controller <id>` for the controller's own decisions, else the actor of a command.
    pub actor: String,
    /// The step it happened at.
    pub step: u32,
    /// What: `started`, `moving`, `step_reached`, `analysis_passed`, `promoted`, `paused`,
    /// `resumed`, `rolled_back`, `aborted`, `complete`, `superseded`.
    pub event: String,
    /// Why, in words.
    pub message: String,
}

/// `GET /api/v1/rollouts/<module>`: the module's rollout and the finished ones before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    /// The current (or last) rollout.
    pub rollout: RolloutRecord,
    /// Earlier rollouts (superseded or replaced by a newer one), newest first, at most 10.
    #[serde(default)]
    pub history: Vec<RolloutRecord>,
}

/// `POST /api/v1/rollouts/<module>/<action>`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// Who asks (the CLI sends `$USER@host`); required.
    pub actor: String,
    /// Why, if they say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A command to a rollout (`/pedestal/commands/<module>/<id>`), written by whichever
/// controller the CLI asked, applied and deleted by the leader in one transaction with the
/// record it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutCommand {
    /// Unique, key-safe (the key's last segment).
    pub id: String,
    /// `pause`, `resume`, `promote` or `abort`.
    pub action: String,
    /// Who asked (the CLI sends the user and host).
    pub actor: String,
    /// Why, if they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// A cordoned base (`/pedestal/cordons/<base>`), written by the leader: no new replicas go
/// there; with `drain`, its replicas move to other bases (each new one serving before the
/// old one goes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CordonRecord {
    /// Base id.
    pub base_id: String,
    /// Whether its replicas are moved off.
    pub drain: bool,
    /// Who cordoned it.
    pub actor: String,
    /// Why, if they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// An autoscaled module's replica count (`/pedestal/scale/<module>`), written by the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleRecord {
    /// Module name.
    pub module: String,
    /// Replicas wanted now.
    pub replicas: u32,
    /// When it last changed, in milliseconds since the epoch.
    pub changed_ms: u64,
    /// Why, in words (the measured load and the target).
    pub reason: String,
    /// Since when the load has asked for fewer replicas than `replicas`, without a break
    /// (a scale-down waits for this to be a whole cooldown old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_since_ms: Option<u64>,
    /// The most replicas the load asked for since `lower_since_ms`: what a scale-down goes to.
    #[serde(default)]
    pub lower_peak: u32,
}

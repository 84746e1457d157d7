//! The operations API's answers as the commands read them: only the fields they show, each
//! defaulted, so an answer with more (a newer base) or fewer (an older one) still reads. The
//! API's JSON is the contract (README.md, "Operations API"); `--output json` prints it whole.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `GET /api/v1/modules`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ModuleList {
    pub modules: Vec<Instance>,
    pub quarantined: Vec<Quarantined>,
}

/// One instance (`name@version`) in a listing or a module's page.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Instance {
    pub name: String,
    pub version: String,
    pub state: String,
    pub active: bool,
    pub sha256: String,
    pub signed_by: Option<String>,
    pub interface_version: String,
    pub installed_at: String,
    pub heap: Option<Heap>,
    pub heap_peak_bytes: u64,
    pub leaked_bytes: Option<u64>,
    pub cpu: Cpu,
    pub tasks: Option<u64>,
    pub limits: Option<Limits>,
    pub over_memory_limit: bool,
    pub traffic: Traffic,
    pub provides: BTreeMap<String, String>,
    pub requires: BTreeMap<String, String>,
    pub history: Vec<Transition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Heap {
    pub live_bytes: u64,
}

/// CPU time of an instance's threads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Cpu {
    pub user_ms: u64,
    pub system_ms: u64,
}

impl Cpu {
    pub fn total_ms(&self) -> u64 {
        self.user_ms + self.system_ms
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Traffic {
    pub requests: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub panics: u64,
    pub rejected: u64,
    pub in_flight: u64,
    pub latency: Option<Latency>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

/// One state change in an instance's history.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Transition {
    pub at: String,
    pub state: String,
    pub reason: String,
    pub message: String,
}

/// An instance's effective limits, each with where it comes from (`sources`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_concurrent_requests: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub max_request_body_bytes: Option<u64>,
    pub memory_soft_limit_bytes: Option<u64>,
    pub memory_action: Option<String>,
    pub unhealthy_action: Option<String>,
    pub unhealthy_grace_ms: Option<u64>,
    pub sources: BTreeMap<String, String>,
}

/// An artifact the base will not load until an operator retries it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Quarantined {
    pub name: Option<String>,
    pub version: Option<String>,
    pub install_name: Option<String>,
    pub sha256: String,
    pub reason: String,
    pub at: String,
    pub signal: Option<String>,
}

impl Quarantined {
    /// The name it is known by: the install name, else the package's, else its artifact.
    pub fn module(&self) -> String {
        self.install_name
            .clone()
            .or_else(|| self.name.clone())
            .unwrap_or_else(|| format!("artifact {}", self.sha256))
    }
}

/// `GET /api/v1/modules/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ModulePage {
    pub name: String,
    pub active_version: Option<String>,
    pub versions: Vec<Instance>,
    pub quarantined: Vec<Quarantined>,
    pub crashes: Vec<Crash>,
    pub retired: Vec<Retired>,
}

/// A crash of the base a module caused.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Crash {
    pub name: Option<String>,
    pub version: Option<String>,
    pub signal: String,
    pub description: String,
    pub at: String,
    pub attributed_by: String,
    pub cleared: bool,
}

/// An instance uninstalled lately.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Retired {
    pub version: String,
    pub state: String,
    pub installed_at: String,
    pub retired_at: String,
    pub leaked_bytes: Option<u64>,
    pub traffic: Traffic,
}

/// `GET /api/v1/modules/{name}/traffic`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Weights {
    pub active_version: Option<String>,
    /// `null` (no split) reads as empty.
    #[serde(deserialize_with = "null_as_empty")]
    pub weights: BTreeMap<String, u64>,
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `GET /api/v1/health`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Health {
    pub status: String,
    pub ready: bool,
    pub interface_version: String,
    pub counts: BTreeMap<String, u64>,
    pub modules: Vec<InstanceHealth>,
    pub problems: Vec<Problem>,
    pub crashes: Vec<Crash>,
}

/// One running instance's health.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct InstanceHealth {
    pub module: String,
    pub version: String,
    pub state: String,
    pub status: String,
    pub reasons: Vec<String>,
}

/// An instance or an artifact that needs an operator.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Problem {
    /// `name@version`.
    pub module: String,
    pub state: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// `GET /api/v1/modules/{name}/limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LimitsPage {
    pub module: String,
    /// What the API set (`null`: not set here).
    pub overrides: serde_json::Map<String, Value>,
    pub versions: Vec<VersionLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct VersionLimits {
    pub version: String,
    pub limits: Limits,
}

/// `GET /api/v1/spis`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Spis {
    pub declared: BTreeMap<String, String>,
    pub implemented: BTreeMap<String, Vec<SpiModule>>,
    pub required: BTreeMap<String, Vec<SpiModule>>,
}

/// A running module implementing or calling an SPI.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SpiModule {
    /// `name@version`.
    pub module: String,
    pub spi_version: String,
    /// Whether it has its module's traffic (implementations only).
    pub active: Option<bool>,
}

/// One module log line.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogLine {
    pub at: String,
    pub level: String,
    pub version: String,
    pub target: String,
    pub message: String,
    pub fields: String,
}

/// `GET /api/v1/samples`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Samples {
    pub interval_ms: u64,
    pub instances: Vec<InstanceSamples>,
}

/// One live instance's recent samples, oldest first.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct InstanceSamples {
    pub name: String,
    pub version: String,
    pub state: String,
    pub samples: Vec<Sample>,
}

/// One second of one instance.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct Sample {
    pub at_ms: u64,
    pub requests_per_s: f64,
    pub server_errors_per_s: f64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub heap_bytes: Option<u64>,
    pub cpu_percent: f64,
}

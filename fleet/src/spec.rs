//! The spec file of `pedestal fleet apply`: a small TOML file declaring one module deployment.
//!
//! ```toml
//! name = "greeter"
//! version = "0.1.0"
//! artifact = "target/release/libgreeter.so"   # or sha256 = "…" with url = "https://…"
//! replicas = 2                                  # or peer = true
//! # autoscale = { min = 1, max = 20, target_cpu = 0.6, target_rps = 50, cooldown = "30s" }
//! placement = "spread"                          # or "pack"
//! [selector]
//! tier = "web"
//! [resources]
//! memory = "64MiB"                              # declared estimate until measured
//! cpu = 0.1                                     # cores
//! [limits]
//! max_concurrent_requests = 64
//! [config]
//! greeting = "hello"
//! [rollout]                                     # how a new version reaches the bases
//! steps = [{ bases = 1, weight = 10, pause = "30s" }, { bases = "50%" }]
//! max_unavailable = 1                           # or "25%"
//! [rollout.analysis]
//! window = "10s"
//! max_error_rate_increase = 0.05
//! ```
//!
//! [`SpecFile::load`] parses and validates it (an unknown key is an error naming the key and its
//! line); [`SpecFile::to_spec`] turns it into the [`model::Spec`] the controller stores, once the
//! CLI knows the artifact's sha256 (it pushes a local `artifact` first).
//!
//! ```no_run
//! use pedestal_fleet::spec::{ArtifactSource, SpecFile};
//! use sha2::Digest;
//!
//! let file = SpecFile::load("greeter.toml".as_ref())?;
//! let sha256 = match &file.artifact {
//!     ArtifactSource::Local(path) => hex::encode(sha2::Sha256::digest(std::fs::read(path)?)),
//!     ArtifactSource::Remote { sha256, .. } => sha256.clone(),
//! };
//! let spec = file.to_spec(&sha256);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{
    collections::BTreeMap,
    ops::Range,
    path::{Path, PathBuf},
};

use pedestal_base::LimitOverrides;
use serde::Deserialize;
use toml::Spanned;

use crate::model::{self, Amount, Analysis, Pause, Placement, Resources, Step, Strategy, parse_duration};

/// The stable code of every spec file error (the controller answers the same for a bad spec).
pub const SPEC_INVALID: &str = "SPEC_INVALID";

/// A spec file that could not be read or is not a valid spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid spec.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file (or what the text came from).
        origin: String,
        /// What is wrong, with the line when it is known.
        message: String,
    },
}

impl SpecError {
    /// The stable code (`SPEC_INVALID`, or `SPEC_UNREADABLE` when the file cannot be read).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read { .. } => "SPEC_UNREADABLE",
            Self::Invalid { .. } => SPEC_INVALID,
        }
    }
}

/// A validated spec file.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecFile {
    /// The module's name.
    pub name: String,
    /// The version every replica runs (valid semver).
    pub version: String,
    /// Where the module's bytes come from.
    pub artifact: ArtifactSource,
    /// How many bases run it.
    pub replicas: Replicas,
    /// Where replicas go among the bases that fit.
    pub placement: Placement,
    /// Labels a base must carry, all of them.
    pub selector: BTreeMap<String, String>,
    /// A replica's declared use, until measured.
    pub resources: Resources,
    /// Limits applied on every base.
    pub limits: Option<LimitOverrides>,
    /// The module's configuration.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Replicas from measured load; `replicas` is then the starting count (clamped).
    pub autoscale: Option<model::Autoscale>,
    /// `[rollout]`: how a new version reaches the bases (`None`: the default strategy).
    pub rollout: Option<Strategy>,
}

/// Where a module's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// A local `.so` (`artifact = "..."`), resolved against the spec file's directory: `apply`
    /// pushes it.
    Local(PathBuf),
    /// Bytes the fleet already has or can fetch (`sha256 = "..."`, optional `url`).
    Remote {
        /// Lower-case hex sha256.
        sha256: String,
        /// Where to get them besides the fleet's own copies.
        url: Option<String>,
    },
}

/// How many bases run a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// Exactly this many (`replicas = N`, at least 1).
    Count(u32),
    /// Every base the selector matches (`peer = true`).
    Peer,
}

impl SpecFile {
    /// Reads and validates the spec file at `path`; a relative `artifact` is taken from the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SpecError::Read { path: path.to_owned(), source })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir, &path.display().to_string())
    }

    /// Validates spec text; `dir` resolves a relative `artifact`, `origin` names the text in
    /// errors.
    pub fn parse(text: &str, dir: &Path, origin: &str) -> Result<Self, SpecError> {
        let invalid = |message: String| SpecError::Invalid { origin: origin.to_owned(), message };
        // toml's own message names the line and the unknown key (`deny_unknown_fields`).
        let raw: RawSpec = toml::from_str(text).map_err(|e| invalid(one_line(&e.to_string())))?;
        let at =
            |span: Range<usize>, message: String| invalid(format!("line {}: {message}", line_of(text, span)));

        let name = raw.name.get_ref();
        if !is_module_name(name) {
            return Err(at(
                raw.name.span(),
                format!("name {name:?} is not a module name (1 to 64 of A-Z a-z 0-9 - _)"),
            ));
        }
        let version = raw.version.get_ref();
        if let Err(e) = semver::Version::parse(version) {
            return Err(at(raw.version.span(), format!("version {version:?} is not semver ({e})")));
        }

        let artifact = match (raw.artifact, raw.sha256) {
            (Some(_), Some(sha)) => {
                return Err(at(
                    sha.span(),
                    "give either `artifact` (a local .so) or `sha256`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "missing `artifact` (a local .so) or `sha256` (with an optional `url`)".into(),
                ));
            }
            (Some(path), None) => {
                if let Some(url) = &raw.url {
                    return Err(at(
                        url.span(),
                        "`url` goes with `sha256`; a local `artifact` is pushed to the fleet".into(),
                    ));
                }
                let path = Path::new(path.get_ref());
                ArtifactSource::Local(if path.is_absolute() { path.to_owned() } else { dir.join(path) })
            }
            (None, Some(sha)) => {
                let sha256 = sha.get_ref().to_ascii_lowercase();
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(at(sha.span(), format!("sha256 {:?} is not 64 hex digits", sha.get_ref())));
                }
                let url = match raw.url {
                    None => None,
                    Some(url) => {
                        let text = url.get_ref();
                        let scheme_ok = ["http://", "https://"]
                            .iter()
                            .any(|s| text.len() > s.len() && text[..s.len()].eq_ignore_ascii_case(s));
                        if !scheme_ok {
                            return Err(at(
                                url.span(),
                                format!("url {text:?} must start with http:// or https://"),
                            ));
                        }
                        Some(text.clone())
                    }
                };
                ArtifactSource::Remote { sha256, url }
            }
        };

        let autoscale = match raw.autoscale {
            None => None,
            Some(table) => {
                let span = table.span();
                let table = table.into_inner();
                let cooldown_ms = match &table.cooldown {
                    None => 30_000,
                    Some(text) => model::parse_duration(text)
                        .map_err(|e| at(span.clone(), format!("autoscale cooldown: {e}")))?,
                };
                let autoscale = model::Autoscale {
                    min: table.min,
                    max: table.max,
                    target_cpu: table.target_cpu,
                    target_rps: table.target_rps,
                    cooldown_ms,
                };
                let peer = raw.peer.as_ref().is_some_and(|p| *p.get_ref());
                crate::autoscale::validate(&autoscale, peer).map_err(|e| at(span, e))?;
                Some(autoscale)
            }
        };
        let raw_replicas = match (&autoscale, raw.replicas) {
            // The starting count: `replicas` if given, clamped to the bounds, else `min`.
            (Some(a), replicas) => Some(Spanned::new(
                replicas.as_ref().map_or(0..0, |r| r.span()),
                replicas.map_or(a.min, |r| r.into_inner().clamp(a.min, a.max)),
            )),
            (None, replicas) => replicas,
        };
        let replicas = match (raw_replicas, raw.peer) {
            (Some(_), Some(peer)) if *peer.get_ref() => {
                return Err(at(peer.span(), "give either `replicas = N` or `peer = true`, not both".into()));
            }
            (Some(count), _) => {
                if *count.get_ref() == 0 {
                    return Err(at(
                        count.span(),
                        "replicas must be at least 1 (`pedestal fleet delete` removes a module)".into(),
                    ));
                }
                Replicas::Count(*count.get_ref())
            }
            (None, Some(peer)) if *peer.get_ref() => Replicas::Peer,
            (None, _) => {
                return Err(invalid(
                    "missing `replicas = N` or `peer = true` (every base the selector matches)".into(),
                ));
            }
        };

        for (key, value) in &raw.selector {
            if !is_label(key) || !is_label(value) {
                return Err(invalid(format!(
                    "[selector] {key} = {value:?}: label keys and values are 1 to 64 of A-Z a-z 0-9 - _ ."
                )));
            }
        }

        let mut resources = Resources::default();
        if let Some(declared) = raw.resources {
            if let Some(memory) = declared.memory {
                resources.memory_bytes = match memory.get_ref() {
                    Size::Bytes(n) => *n,
                    Size::Text(text) => {
                        parse_size(text).map_err(|e| at(memory.span(), format!("memory: {e}")))?
                    }
                };
            }
            if let Some(cpu) = declared.cpu {
                let cores = *cpu.get_ref();
                if !cores.is_finite() || cores < 0.0 {
                    return Err(at(
                        cpu.span(),
                        format!("cpu = {cores}: a number of cores, 0 or more (0.1 = 100m)"),
                    ));
                }
                resources.cpu_millis = (cores * 1000.0).round() as u64;
            }
        }

        let config = match serde_json::to_value(raw.config) {
            Ok(serde_json::Value::Object(values)) => values,
            Ok(_) => unreachable!("a TOML table is a JSON object"),
            Err(e) => return Err(invalid(format!("[config]: {e}"))),
        };

        let rollout = match raw.rollout {
            None => None,
            Some(rollout) => Some(strategy(rollout, &at)?),
        };

        Ok(Self {
            rollout,
            name: raw.name.into_inner(),
            version: raw.version.into_inner(),
            artifact,
            replicas,
            placement: raw.placement.unwrap_or_default(),
            selector: raw.selector,
            resources,
            limits: raw.limits,
            config,
            autoscale,
        })
    }

    /// The spec the controller stores, for the artifact with `sha256` (lower-case hex: what a
    /// push of the local `artifact` answered, or the file's own `sha256`).
    pub fn to_spec(&self, sha256: &str) -> model::Spec {
        let url = match &self.artifact {
            ArtifactSource::Remote { url, .. } => url.clone(),
            ArtifactSource::Local(_) => None,
        };
        let (replicas, peer) = match self.replicas {
            Replicas::Count(n) => (Some(n), false),
            Replicas::Peer => (None, true),
        };
        model::Spec {
            name: self.name.clone(),
            version: self.version.clone(),
            sha256: sha256.to_ascii_lowercase(),
            url,
            replicas,
            peer,
            selector: self.selector.clone(),
            placement: self.placement,
            resources: self.resources,
            limits: self.limits,
            config: self.config.clone(),
            interface_version: None,
            rollout: self.rollout.clone(),
            autoscale: self.autoscale.clone(),
        }
    }
}

/// `[rollout]` validated: weights 1 to 100, at least one step, steps' bases non-decreasing.
fn strategy(
    raw: Spanned<RawRollout>,
    at: &dyn Fn(Range<usize>, String) -> SpecError,
) -> Result<Strategy, SpecError> {
    let span = raw.span();
    let raw = raw.into_inner();
    if raw.steps.is_empty() {
        return Err(at(span, "[rollout] needs at least one step (steps = [{ bases = 1 }, ...])".into()));
    }
    let mut steps = Vec::new();
    let mut previous: Option<Amount> = None;
    for (i, step) in raw.steps.into_iter().enumerate() {
        let span = step.span();
        let step = step.into_inner();
        if !(1..=100).contains(&step.weight) {
            return Err(at(span, format!("rollout step {}: weight {} is not 1 to 100", i + 1, step.weight)));
        }
        if let Some(previous) = previous {
            let fewer = match (previous, step.bases) {
                (Amount::Count(a), Amount::Count(b)) | (Amount::Percent(a), Amount::Percent(b)) => b < a,
                (Amount::Percent(100), Amount::Count(_)) => true,
                _ => false,
            };
            if fewer {
                return Err(at(
                    span,
                    format!(
                        "rollout step {}: its bases are fewer than the step before's (they count from the start)",
                        i + 1
                    ),
                ));
            }
        }
        previous = Some(step.bases);
        steps.push(Step { bases: step.bases, weight: step.weight, pause: step.pause.unwrap_or_default() });
    }
    let mut analysis = Analysis::default();
    if let Some(raw) = raw.analysis {
        if let Some(window) = raw.window {
            analysis.window_ms =
                parse_duration(window.get_ref()).map_err(|e| at(window.span(), format!("window: {e}")))?;
            if analysis.window_ms > Analysis::MAX_WINDOW_MS {
                return Err(at(
                    window.span(),
                    format!(
                        "window = {:?}: at most 2m (the leader keeps two minutes of reports)",
                        window.get_ref()
                    ),
                ));
            }
        }
        if let Some(increase) = raw.max_error_rate_increase {
            let value = *increase.get_ref();
            if !(0.0..=1.0).contains(&value) {
                return Err(at(
                    increase.span(),
                    format!("max_error_rate_increase = {value}: a share, 0 to 1"),
                ));
            }
            analysis.max_error_rate_increase = value;
        }
        if let Some(ratio) = raw.max_latency_ratio {
            let value = *ratio.get_ref();
            if !value.is_finite() || value < 1.0 {
                return Err(at(ratio.span(), format!("max_latency_ratio = {value}: at least 1")));
            }
            analysis.max_latency_ratio = value;
        }
        if let Some(increase) = raw.min_latency_increase {
            let ms = parse_duration(increase.get_ref())
                .map_err(|e| at(increase.span(), format!("min_latency_increase: {e}")))?;
            analysis.min_latency_increase_us = ms * 1_000;
        }
        if let Some(min) = raw.min_requests {
            analysis.min_requests = min;
        }
    }
    Ok(Strategy { steps, max_unavailable: raw.max_unavailable.unwrap_or(Amount::Percent(25)), analysis })
}

/// Parses a size: plain bytes (`1048576`) or a number with a unit, binary (`KiB`, `MiB`, `GiB`,
/// `TiB`) or decimal (`kB`, `MB`, `GB`, `TB`), `B` for bytes; fractions are fine (`1.5GiB`),
/// a space before the unit too.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (say 64MiB, 1.5GiB or a number of bytes)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
            ));
        }
    };
    let bytes = number * scale as f64;
    if bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// The file as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Spanned<String>,
    version: Spanned<String>,
    artifact: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    replicas: Option<Spanned<u32>>,
    peer: Option<Spanned<bool>>,
    placement: Option<Placement>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
    resources: Option<RawResources>,
    limits: Option<LimitOverrides>,
    #[serde(default)]
    config: toml::Table,
    autoscale: Option<Spanned<RawAutoscale>>,
    rollout: Option<Spanned<RawRollout>>,
}

/// `autoscale = { min = 1, max = 20, target_cpu = 0.6, target_rps = 50, cooldown = "30s" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutoscale {
    min: u32,
    max: u32,
    target_cpu: Option<f64>,
    target_rps: Option<f64>,
    cooldown: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
    max_unavailable: Option<Amount>,
    analysis: Option<RawAnalysis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    bases: Amount,
    #[serde(default = "full_weight")]
    weight: u32,
    pause: Option<Pause>,
}

fn full_weight() -> u32 {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    window: Option<Spanned<String>>,
    max_error_rate_increase: Option<Spanned<f64>>,
    max_latency_ratio: Option<Spanned<f64>>,
    min_latency_increase: Option<Spanned<String>>,
    min_requests: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    memory: Option<Spanned<Size>>,
    cpu: Option<Spanned<f64>>,
}

/// `memory = "64MiB"` or `memory = 67108864`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// The base's rule for a module name (it is the mount point `/<name>/`).
fn is_module_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A label key or value in a selector: the controller's rule (1 to 64 of `[A-Za-z0-9_.-]`, no
/// `/`), so a spec file that passes here is not refused by the controller.
fn is_label(text: &str) -> bool {
    crate::keys::is_valid_id(text)
}

/// The 1-based line of a byte span's start.
fn line_of(text: &str, span: Range<usize>) -> usize {
    text[..span.start.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// toml's multi-line message (`TOML parse error at line 3, column 1` + a caret drawing + the
/// reason) as one line: `line 3, column 1: unknown field ...`.
fn one_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let reason =
        lines.rfind(|l| !l.starts_with('|') && !l.chars().next().is_some_and(|c| c.is_ascii_digit()));
    let place = first.strip_prefix("TOML parse error at ").unwrap_or(first);
    match reason {
        Some(reason) => format!("{place}: {reason}"),
        None => place.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "aa00000000000000000000000000000000000000000000000000000000000000";

    fn parse(text: &str) -> Result<SpecFile, String> {
        SpecFile::parse(text, Path::new("/specs"), "greeter.toml").map_err(|e| e.to_string())
    }

    /// `text` is refused with a message containing every one of `expected`.
    fn refused(text: &str, expected: &[&str]) {
        let message = parse(text).expect_err("refused");
        for part in expected {
            assert!(message.contains(part), "{message:?} should contain {part:?}");
        }
    }

    #[test]
    fn the_issue_example_parses_with_defaults() {
        let file = parse(
            "name = \"greeter\"\nversion = \"0.1.0\"\nartifact = \"target/release/libgreeter.so\"\n\
             replicas = 2\nplacement = \"spread\"\n[selector]\ntier = \"web\"\n",
        )
        .unwrap();
        assert_eq!(file.artifact, ArtifactSource::Local("/specs/target/release/libgreeter.so".into()));
        assert_eq!(file.replicas, Replicas::Count(2));
        assert_eq!(file.resources, Resources::default());
        let spec = file.to_spec(&SHA.to_uppercase());
        assert_eq!(spec.sha256, SHA);
        assert_eq!((spec.replicas, spec.peer, spec.url), (Some(2), false, None));
        assert_eq!(spec.selector["tier"], "web");
        assert_eq!(spec.placement, Placement::Spread);
    }

    #[test]
    fn every_key_reaches_the_spec() {
        let file = parse(&format!(
            "name = \"notes\"\nversion = \"1.2.3-rc.1\"\nsha256 = \"{}\"\nurl = \"https://example.org/n.so\"\n\
             peer = true\nplacement = \"pack\"\n[resources]\nmemory = \"64MiB\"\ncpu = 0.25\n\
             [limits]\nmax_concurrent_requests = 8\nmemory_soft_limit_bytes = 1000\n\
             [config]\ntitle = \"t\"\nmax = 3\n[config.db]\ndsn = \"x\"\n",
            SHA.to_uppercase()
        ))
        .unwrap();
        let spec = file.to_spec(SHA);
        assert!(spec.peer);
        assert_eq!(spec.replicas, None);
        assert_eq!(spec.url.as_deref(), Some("https://example.org/n.so"));
        assert_eq!(spec.placement, Placement::Pack);
        assert_eq!(spec.resources, Resources { memory_bytes: 64 << 20, cpu_millis: 250 });
        let limits = spec.limits.unwrap();
        assert_eq!(limits.max_concurrent_requests, Some(8));
        assert_eq!(limits.memory_soft_limit_bytes, Some(1000));
        assert_eq!(spec.config["max"], 3);
        assert_eq!(spec.config["db"]["dsn"], "x");
        assert_eq!(file.artifact, ArtifactSource::Remote { sha256: SHA.into(), url: spec.url.clone() });
    }

    #[test]
    fn autoscale_parses_with_replicas_as_the_starting_count() {
        let head = "name = \"burn\"\nversion = \"1.0.0\"\nartifact = \"b.so\"\n";
        let file = parse(&format!(
            "{head}autoscale = {{ min = 2, max = 20, target_cpu = 0.6, target_rps = 50, cooldown = \"3s\" }}\n"
        ))
        .unwrap();
        assert_eq!(file.replicas, Replicas::Count(2), "no replicas: start at min");
        let spec = file.to_spec(SHA);
        let autoscale = spec.autoscale.expect("autoscaled");
        assert_eq!((autoscale.min, autoscale.max, autoscale.cooldown_ms), (2, 20, 3_000));
        assert_eq!((autoscale.target_cpu, autoscale.target_rps), (Some(0.6), Some(50.0)));
        let file =
            parse(&format!("{head}replicas = 9\nautoscale = {{ min = 1, max = 3, target_rps = 5 }}\n"))
                .unwrap();
        assert_eq!(file.replicas, Replicas::Count(3), "clamped to max");
        assert_eq!(file.autoscale.expect("autoscaled").cooldown_ms, 30_000);

        refused(
            &format!("{head}autoscale = {{ min = 0, max = 3, target_cpu = 1 }}\n"),
            &["line 4", "at least 1"],
        );
        refused(&format!("{head}autoscale = {{ min = 3, max = 2, target_cpu = 1 }}\n"), &["below min"]);
        refused(&format!("{head}autoscale = {{ min = 1, max = 2 }}\n"), &["needs a target"]);
        refused(&format!("{head}autoscale = {{ min = 1, max = 2, target_cpu = 0 }}\n"), &["above 0"]);
        refused(
            &format!("{head}peer = true\nautoscale = {{ min = 1, max = 2, target_cpu = 1 }}\n"),
            &["peer"],
        );
        refused(
            &format!("{head}autoscale = {{ min = 1, max = 2, target_cpu = 1, cooldown = \"3 weeks\" }}\n"),
            &["cooldown"],
        );
        refused(
            &format!("{head}autoscale = {{ min = 1, max = 2, target_cpu = 1, target = 3 }}\n"),
            &["target"],
        );
    }

    #[test]
    fn absolute_artifacts_stay_as_written() {
        let file =
            parse("name = \"g\"\nversion = \"0.1.0\"\nartifact = \"/x/libg.so\"\nreplicas = 1\n").unwrap();
        assert_eq!(file.artifact, ArtifactSource::Local("/x/libg.so".into()));
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        refused("name = \"g\"\nversion = \"0.1.0\"\nreplica = 2\n", &["line 3", "replica"]);
        refused(
            "name = \"g\"\nversion = \"0.1.0\"\nsha256 = \"aa\"\nreplicas = 1\n[resources]\nheap = 1\n",
            &["line 6", "heap"],
        );
        refused(
            "name = \"g\"\nversion = \"0.1.0\"\nartifact = \"a.so\"\nreplicas = 1\n[limits]\nmax_requests = 1\n",
            &["line 6", "max_requests"],
        );
    }

    #[test]
    fn bad_values_are_refused_precisely() {
        let head = "name = \"g\"\nversion = \"0.1.0\"\n";
        refused(
            "name = \"a b\"\nversion = \"0.1.0\"\nartifact = \"a.so\"\nreplicas = 1\n",
            &["line 1", "module name"],
        );
        refused(
            "name = \"g\"\nversion = \"1.0\"\nartifact = \"a.so\"\nreplicas = 1\n",
            &["line 2", "semver"],
        );
        refused(&format!("{head}sha256 = \"abc\"\nreplicas = 1\n"), &["line 3", "64 hex"]);
        refused(
            &format!("{head}sha256 = \"{SHA}\"\nurl = \"ftp://x/y.so\"\nreplicas = 1\n"),
            &["line 4", "http://"],
        );
        refused(&format!("{head}artifact = \"a.so\"\nsha256 = \"{SHA}\"\nreplicas = 1\n"), &["not both"]);
        refused(&format!("{head}replicas = 1\n"), &["missing `artifact`"]);
        refused(
            &format!("{head}artifact = \"a.so\"\nurl = \"https://x\"\nreplicas = 1\n"),
            &["line 4", "`url` goes"],
        );
        refused(&format!("{head}artifact = \"a.so\"\n"), &["missing `replicas"]);
        refused(&format!("{head}artifact = \"a.so\"\npeer = false\n"), &["missing `replicas"]);
        refused(&format!("{head}artifact = \"a.so\"\nreplicas = 2\npeer = true\n"), &["line 5", "not both"]);
        refused(&format!("{head}artifact = \"a.so\"\nreplicas = 0\n"), &["line 4", "at least 1"]);
        refused(&format!("{head}artifact = \"a.so\"\nreplicas = -1\n"), &["line 4"]);
        refused(
            &format!("{head}artifact = \"a.so\"\nreplicas = 1\nplacement = \"random\"\n"),
            &["line 5", "random"],
        );
        refused(
            &format!("{head}artifact = \"a.so\"\nreplicas = 1\n[selector]\n\"a b\" = \"x\"\n"),
            &["selector"],
        );
        refused(
            &format!("{head}artifact = \"a.so\"\nreplicas = 1\n[selector]\ntier = \"web/db\"\n"),
            &["selector", "1 to 64"],
        );
        refused(
            &format!("{head}artifact = \"a.so\"\nreplicas = 1\n[resources]\nmemory = \"64 parsecs\"\n"),
            &["line 6", "unit"],
        );
        refused(
            &format!("{head}artifact = \"a.so\"\nreplicas = 1\n[resources]\ncpu = -1.0\n"),
            &["line 6", "cores"],
        );
        refused("version = \"0.1.0\"\n", &["name"]);
    }

    #[test]
    fn replicas_with_peer_false_is_a_count() {
        let file =
            parse("name = \"g\"\nversion = \"0.1.0\"\nartifact = \"a.so\"\nreplicas = 3\npeer = false\n")
                .unwrap();
        assert_eq!(file.replicas, Replicas::Count(3));
    }

    #[test]
    fn sizes() {
        let check = |text: &str, expected: u64| assert_eq!(parse_size(text), Ok(expected), "{text}");
        check("1048576", 1 << 20);
        check("64MiB", 64 << 20);
        check("64 MiB", 64 << 20);
        check("1.5GiB", 3 << 29);
        check("2KiB", 2048);
        check("1GB", 1_000_000_000);
        check("10B", 10);
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1 furlong").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn a_rollout_table_becomes_the_strategy() {
        let text = "name = \"g\"\nversion = \"0.1.0\"\nartifact = \"a.so\"\nreplicas = 3\n\
            [rollout]\nsteps = [{ bases = 1, weight = 10, pause = \"30s\" }, { bases = \"50%\", pause = \"manual\" }]\n\
            max_unavailable = \"50%\"\n[rollout.analysis]\nwindow = \"2s\"\nmin_requests = 5\nmin_latency_increase = \"10ms\"\n";
        let strategy = parse(text).unwrap().rollout.unwrap();
        assert_eq!(
            strategy.steps,
            [
                Step { bases: Amount::Count(1), weight: 10, pause: Pause::For(30_000) },
                Step { bases: Amount::Percent(50), weight: 100, pause: Pause::Manual },
            ]
        );
        assert_eq!(strategy.max_unavailable, Amount::Percent(50));
        assert_eq!(
            strategy.analysis,
            Analysis {
                window_ms: 2_000,
                min_requests: 5,
                min_latency_increase_us: 10_000,
                ..Analysis::default()
            }
        );
        assert_eq!(parse(text).unwrap().to_spec(&"a".repeat(64)).rollout, Some(strategy));
        let plain = "name = \"g\"\nversion = \"0.1.0\"\nartifact = \"a.so\"\nreplicas = 3\n";
        assert_eq!(parse(plain).unwrap().rollout, None);
    }

    #[test]
    fn bad_rollouts_are_refused_with_their_line() {
        let head = "name = \"g\"\nversion = \"0.1.0\"\nartifact = \"a.so\"\nreplicas = 3\n[rollout]\n";
        refused(&format!("{head}steps = [{{ bases = 1, weight = 0 }}]\n"), &["line 6", "weight 0"]);
        refused(&format!("{head}steps = [{{ bases = 1, weight = 101 }}]\n"), &["line 6", "1 to 100"]);
        refused(&format!("{head}steps = []\n"), &["line 5", "at least one step"]);
        refused(
            &format!("{head}steps = [\n  {{ bases = 2 }},\n  {{ bases = 1 }},\n]\n"),
            &["line 8", "fewer"],
        );
        refused(&format!("{head}steps = [{{ bases = \"150%\" }}]\n"), &["line 6", "percentage"]);
        refused(&format!("{head}steps = [{{ bases = 1, pause = \"soon\" }}]\n"), &["line 6", "duration"]);
        refused(
            &format!("{head}steps = [{{ bases = 1 }}]\n[rollout.analysis]\nwindow = \"2 weeks\"\n"),
            &["line 8", "window"],
        );
        refused(
            &format!("{head}steps = [{{ bases = 1 }}]\n[rollout.analysis]\nwindow = \"5m\"\n"),
            &["line 8", "at most 2m"],
        );
        refused(&format!("{head}steps = [{{ bases = 1, weigth = 5 }}]\n"), &["line 6", "weigth"]);
    }

    #[test]
    fn memory_may_be_plain_bytes() {
        let file = parse("name = \"g\"\nversion = \"0.1.0\"\nartifact = \"a.so\"\nreplicas = 1\n[resources]\nmemory = 4096\n")
            .unwrap();
        assert_eq!(file.resources.memory_bytes, 4096);
        assert_eq!(file.resources.cpu_millis, Resources::default().cpu_millis);
    }
}

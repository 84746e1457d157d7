//! `pedestal serve`'s fleet flags, parsed and checked.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use crate::{
    keys::{self, Keys},
    model::Capacity,
};

/// How often a base writes its status when nothing changed (its measurements move), unless
/// `--report-every` says otherwise.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// `pedestal serve`'s fleet flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JoinArgs {
    /// etcd endpoints, comma-separated: joins this base to the fleet they hold.
    #[arg(long, env = "PEDESTAL_FLEET", value_delimiter = ',')]
    pub fleet: Vec<String>,
    /// This base's id in the fleet (1 to 64 of letters, digits, `-`, `_`, `.`); required with
    /// --fleet.
    #[arg(long, env = "PEDESTAL_BASE_ID")]
    pub base_id: Option<String>,
    /// Labels specs select bases by, `key=value`, comma-separated (`tier=web,zone=a`).
    #[arg(long, env = "PEDESTAL_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Heap the fleet may place on this base, all modules together: bytes, or with a suffix
    /// (`KiB`, `MiB`, `GiB`). Default: 1 GiB.
    #[arg(long, env = "PEDESTAL_CAPACITY_MEMORY")]
    pub capacity_memory: Option<String>,
    /// CPU the fleet may place on this base, in cores (`1.5`). Default: the number of CPUs.
    #[arg(long, env = "PEDESTAL_CAPACITY_CPU")]
    pub capacity_cpu: Option<f64>,
    /// Modules this base hosts at most, fleet-managed or not.
    #[arg(long, env = "PEDESTAL_MAX_MODULES", default_value_t = 64)]
    pub max_modules: u32,
    /// The fleet's shared secret (at least 16 characters), for peers' artifact requests and
    /// the controllers' API.
    #[arg(long, env = "PEDESTAL_FLEET_TOKEN", hide_env_values = true)]
    pub fleet_token: Option<String>,
    /// A file holding the fleet token (trailing whitespace ignored).
    #[arg(long, env = "PEDESTAL_FLEET_TOKEN_FILE", conflicts_with = "fleet_token")]
    pub fleet_token_file: Option<PathBuf>,
    /// The prefix of every fleet key in etcd.
    #[arg(long, env = "PEDESTAL_ETCD_PREFIX", default_value = keys::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// The host in the URLs this base registers (`http://<host>:<port>`).
    #[arg(long, env = "PEDESTAL_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// How often the base writes its status when nothing changed (`2s`, `500ms`). Hidden: the
    /// fleet benchmark runs bases of two intervals side by side to measure what the interval
    /// costs the autoscaler's reaction.
    #[arg(long, env = "PEDESTAL_FLEET_REPORT_EVERY", hide = true)]
    pub report_every: Option<String>,
}

/// A base's fleet settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// etcd endpoints.
    pub endpoints: Vec<String>,
    /// `--base-id`.
    pub base_id: String,
    /// `--labels`.
    pub labels: BTreeMap<String, String>,
    /// What the base offers the fleet.
    pub capacity: Capacity,
    /// The fleet token.
    pub token: String,
    /// The key layout under `--etcd-prefix`.
    pub keys: Keys,
    /// `--advertise-host`.
    pub advertise_host: String,
    /// How often the status is written even when nothing changed (its measurements move).
    pub report_every: Duration,
}

/// Fleet flags that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// `--fleet` without a token.
    #[error("a fleet base needs the fleet token: --fleet-token, --fleet-token-file or PEDESTAL_FLEET_TOKEN")]
    TokenRequired,
    /// A flag's value is unusable.
    #[error("{flag}: {message}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl JoinError {
    /// The stable code: `FLEET_TOKEN_REQUIRED` or `FLEET_ARGS_INVALID`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TokenRequired => "FLEET_TOKEN_REQUIRED",
            Self::Invalid { .. } => "FLEET_ARGS_INVALID",
        }
    }
}

impl JoinArgs {
    /// The checked settings, or `None` without `--fleet` (a base on its own: the other fleet
    /// flags are then ignored).
    pub fn resolve(&self) -> Result<Option<Join>, JoinError> {
        let endpoints: Vec<String> =
            self.fleet.iter().map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect();
        if endpoints.is_empty() {
            return Ok(None);
        }
        let invalid = |flag, message: String| JoinError::Invalid { flag, message };
        let base_id =
            self.base_id.clone().ok_or_else(|| invalid("--base-id", "required with --fleet".into()))?;
        if !keys::is_valid_id(&base_id) {
            return Err(invalid(
                "--base-id",
                format!("{base_id:?} is not an id (1 to 64 of letters, digits, '-', '_', '.')"),
            ));
        }
        let labels = parse_labels(&self.labels).map_err(|m| invalid("--labels", m))?;
        let memory_bytes = match &self.capacity_memory {
            Some(text) => parse_size(text).map_err(|m| invalid("--capacity-memory", m))?,
            None => 1 << 30,
        };
        let cpus = match self.capacity_cpu {
            Some(cores) if cores.is_finite() && cores > 0.0 => cores,
            Some(cores) => {
                return Err(invalid("--capacity-cpu", format!("{cores} is not a positive number of cores")));
            }
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64,
        };
        if self.max_modules == 0 {
            return Err(invalid("--max-modules", "at least 1".into()));
        }
        let token = crate::token::read(self.fleet_token.as_deref(), self.fleet_token_file.as_deref())
            .map_err(|e| invalid("--fleet-token-file", e.to_string()))?
            .ok_or(JoinError::TokenRequired)?;
        let token = crate::token::long_enough(token).map_err(|e| invalid("--fleet-token", e.to_string()))?;
        if self.advertise_host.is_empty() || self.advertise_host.contains(['/', ' ', '@']) {
            return Err(invalid("--advertise-host", format!("{:?} is not a host", self.advertise_host)));
        }
        let report_every = match &self.report_every {
            Some(text) => match crate::model::parse_duration(text) {
                Ok(ms) if ms >= 100 => Duration::from_millis(ms),
                Ok(ms) => return Err(invalid("--report-every", format!("{ms}ms is below 100ms"))),
                Err(message) => return Err(invalid("--report-every", message)),
            },
            None => REPORT_EVERY,
        };
        Ok(Some(Join {
            endpoints,
            base_id,
            labels,
            capacity: Capacity {
                memory_bytes,
                cpu_millis: (cpus * 1000.0).round() as u64,
                max_modules: self.max_modules,
            },
            token,
            keys: Keys::new(&self.etcd_prefix),
            advertise_host: self.advertise_host.clone(),
            report_every,
        }))
    }
}

/// `k=v` pairs: keys and values as ids (`[A-Za-z0-9_.-]`, 1 to 64), keys unique.
pub fn parse_labels(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in pairs.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        if !keys::is_valid_id(key) || !keys::is_valid_id(value) {
            return Err(format!("{pair:?}: keys and values are 1 to 64 of letters, digits, '-', '_', '.'"));
        }
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("label {key:?} given twice"));
        }
    }
    Ok(labels)
}

/// A size in bytes: a number, optionally followed by `B`, `KiB`, `MiB`, `GiB` or `TiB` (also
/// `K`, `M`, `G`, `T`, all powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 =
        digits.parse().map_err(|_| format!("{text:?} is not a size (bytes, or 64MiB, 1GiB...)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => return Err(format!("{text:?}: unknown unit {other:?} (B, KiB, MiB, GiB, TiB)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        join: JoinArgs,
    }

    fn resolve(args: &[&str]) -> Result<Option<Join>, JoinError> {
        let cli =
            Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).expect("flags parse");
        cli.join.resolve()
    }

    const TOKEN: &str = "--fleet-token=0123456789abcdef";

    #[test]
    fn without_fleet_nothing_is_required() {
        assert_eq!(resolve(&[]).unwrap(), None);
        assert_eq!(resolve(&["--labels", "not a label"]).unwrap(), None);
    }

    #[test]
    fn every_flag_is_parsed() {
        let join = resolve(&[
            "--fleet=http://127.0.0.1:2379,http://127.0.0.1:2479",
            "--base-id=b-1",
            "--labels=tier=web,zone=a",
            "--capacity-memory=512MiB",
            "--capacity-cpu=1.5",
            "--max-modules=8",
            TOKEN,
            "--etcd-prefix=/p",
            "--advertise-host=10.0.0.7",
            "--report-every=1s",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(join.endpoints, ["http://127.0.0.1:2379", "http://127.0.0.1:2479"]);
        assert_eq!(join.base_id, "b-1");
        assert_eq!(join.labels, BTreeMap::from([("tier".into(), "web".into()), ("zone".into(), "a".into())]));
        assert_eq!(join.capacity, Capacity { memory_bytes: 512 << 20, cpu_millis: 1500, max_modules: 8 });
        assert_eq!(join.keys.prefix(), "/p/");
        assert_eq!(join.advertise_host, "10.0.0.7");
        assert_eq!(join.report_every, Duration::from_secs(1));
        let defaults = resolve(&["--fleet=http://e:2379", "--base-id=b", TOKEN]).unwrap().unwrap();
        assert_eq!(defaults.capacity.memory_bytes, 1 << 30);
        assert_eq!(defaults.capacity.max_modules, 64);
        assert!(defaults.capacity.cpu_millis >= 1000);
        assert_eq!(defaults.keys.prefix(), "/pedestal/");
        assert_eq!(defaults.report_every, REPORT_EVERY);
    }

    #[test]
    fn bad_flags_are_refused_with_their_code() {
        let check = |args: &[&str], code: &str, needle: &str| {
            let error = resolve(args).expect_err("refused");
            assert_eq!(error.code(), code, "{error}");
            assert!(error.to_string().contains(needle), "{error}");
        };
        let fleet = "--fleet=http://e:2379";
        check(&[fleet, TOKEN], "FLEET_ARGS_INVALID", "--base-id: required");
        check(&[fleet, "--base-id=a/b", TOKEN], "FLEET_ARGS_INVALID", "not an id");
        check(&[fleet, "--base-id=b"], "FLEET_TOKEN_REQUIRED", "fleet token");
        check(&[fleet, "--base-id=b", "--fleet-token=short"], "FLEET_ARGS_INVALID", "at least 16");
        check(&[fleet, "--base-id=b", TOKEN, "--labels=tier"], "FLEET_ARGS_INVALID", "key=value");
        check(&[fleet, "--base-id=b", TOKEN, "--labels=a=1,a=2"], "FLEET_ARGS_INVALID", "twice");
        check(&[fleet, "--base-id=b", TOKEN, "--capacity-memory=1PB"], "FLEET_ARGS_INVALID", "unknown unit");
        check(&[fleet, "--base-id=b", TOKEN, "--capacity-cpu=0"], "FLEET_ARGS_INVALID", "cores");
        check(&[fleet, "--base-id=b", TOKEN, "--max-modules=0"], "FLEET_ARGS_INVALID", "at least 1");
    }

    #[test]
    fn a_token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdefXYZ\n").unwrap();
        let flag = format!("--fleet-token-file={}", file.display());
        let join = resolve(&["--fleet=http://e:2379", "--base-id=b", &flag]).unwrap().unwrap();
        assert_eq!(join.token, "0123456789abcdefXYZ");
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("99999999999TiB").unwrap_err().contains("too large"));
    }
}

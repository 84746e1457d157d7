//! The base's settings, with the defaults `pedestal serve` uses.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use pedestal_module_api::abi::LogLevel;
use serde::Deserialize;

use crate::{
    error::{Error, Result},
    limits::{LimitDefaults, LimitOverrides, UnhealthyAction},
    logs::LogFormat,
    settings::RuntimeSettings,
};

// The supervisor's crash-loop bound lives here, with the settings validated against it
// (`crash_quarantine_after` must stay below it), so the config layer needs nothing above it.

/// More crashes than this within [`CRASH_WINDOW`] and the supervisor gives up.
pub const MAX_CRASHES: usize = 5;
/// The window [`MAX_CRASHES`] counts in.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// Everything the base needs to know to run. Its `Debug` shows neither the token nor the
/// modules' configuration values (which may hold secrets).
#[derive(Clone)]
pub struct Config {
    /// Where module traffic is served.
    pub listen: SocketAddr,
    /// Where the operations API is served.
    pub admin_listen: SocketAddr,
    /// Where artifacts (and, later, state) are kept.
    pub data_dir: PathBuf,
    /// Bearer token the operations API requires (at least [`MIN_ADMIN_TOKEN_LEN`] characters).
    /// Without it (and without `admin_token_file`) the base uses the token in
    /// `<data_dir>/admin-token`, generated at first start. Mandatory beyond loopback.
    pub admin_token: Option<String>,
    /// A file holding the operations API token (`--admin-token-file`), read at start.
    pub admin_token_file: Option<PathBuf>,
    /// `Host` names the operations API answers to besides its own address and `localhost`
    /// (`--admin-allowed-hosts`): `name` (any port) or `name:port`.
    pub admin_allowed_hosts: Vec<String>,
    /// Largest accepted module upload.
    pub max_upload_bytes: u64,
    /// Largest request body forwarded to a module.
    pub max_request_body_bytes: u64,
    /// How long loading plus a module's start hook may take.
    pub start_timeout: Duration,
    /// How long an uninstall waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How long a restart by the base (memory limit, unhealthy) waits for in-flight requests:
    /// short, because the instance it replaces is misbehaving (say, still allocating).
    pub restart_drain_timeout: Duration,
    /// How long a module's thread gets to finish after stop is requested.
    pub stop_timeout: Duration,
    /// How long a request may take inside a module.
    pub request_timeout: Duration,
    /// The most verbose module log level forwarded to the base.
    pub module_log_level: LogLevel,
    /// How module log files are written.
    pub module_log_format: LogFormat,
    /// Size at which a module's log file is rotated (three rotated files are kept).
    pub module_log_max_bytes: u64,
    /// How long `/api/v1/health` waits for a module's health hook (and the background probe
    /// behind the unhealthy policy before it counts a check as unanswered).
    pub health_timeout: Duration,
    /// What the base does with an instance that stayed unhealthy for `unhealthy_grace`, unless
    /// its limits say otherwise (`[modules.NAME.limits] unhealthy_action`, the API).
    pub unhealthy_action: UnhealthyAction,
    /// How long an instance must stay unhealthy before `unhealthy_action` is taken.
    pub unhealthy_grace: Duration,
    /// Module log lines echoed to the base's stderr per second and module (a token bucket with
    /// a burst of five seconds' worth); the module's own log keeps every line. `0`: no limit.
    pub module_log_echo_per_sec: u32,
    /// Whether the base records per-request accounting (latency histograms, the recent error
    /// rate). Off only to measure what it costs (`cargo xtask bench`).
    pub request_accounting: bool,
    /// Limit overrides per module name, from the config file.
    pub module_limits: BTreeMap<String, LimitOverrides>,
    /// Modules installed at boot, in this order (the config file's `[boot] modules`).
    pub boot_modules: Vec<PathBuf>,
    /// A directory whose `*.so` files are installed at boot, in name order, after `boot_modules`.
    pub modules_dir: Option<PathBuf>,
    /// Readiness waits until every boot module is installed (and stays false if one fails).
    pub ready_requires_modules: bool,
    /// A hot-reload directory (`--watch`).
    pub watch_dir: Option<PathBuf>,
    /// SPIs the base declares (name → version): implementations of another major are refused.
    /// A custom base adds its own with `BaseBuilder::spi`.
    pub spis: BTreeMap<String, semver::Version>,
    /// The config file the settings came from (`--config`): its `[modules.NAME.config]`
    /// sections are watched and handed to the modules again when it changes.
    pub config_file: Option<PathBuf>,
    /// Each module's configuration values (`[modules.NAME.config]`), before the environment's.
    pub module_config: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// Configuration keys of each module the API shows redacted (`[modules.NAME] secret_keys`),
    /// besides those whose names say they are secrets (see `services::module_config`).
    pub module_secret_keys: BTreeMap<String, Vec<String>>,
    /// How many bytes (keys plus values) a module may keep in its key-value store.
    pub kv_quota_bytes: u64,
    /// Per-module quotas (`[modules.NAME] kv_quota_bytes`), overriding `kv_quota_bytes`.
    pub module_kv_quota: BTreeMap<String, u64>,
    /// Crashes of one module (within `crash_window`, since its last retry) that quarantine it at
    /// the next start; 0 never quarantines (crashes are still reported). Supervised, at most
    /// [`MAX_CRASHES`](crate::MAX_CRASHES) `- 1` (see [`Config::validate`]); and with 0, a module
    /// crashing at every start makes the supervisor's crash-loop rule stop the base.
    pub crash_quarantine_after: u32,
    /// The window crashes are counted in, back from each crash.
    pub crash_window: Duration,
    /// Whether [`supervise`](crate::supervise) runs the base as a supervised worker process
    /// (`--supervisor on|off`).
    pub supervisor: bool,
    /// A memory-limit restart whose old instance left more heap than this behind (memory its
    /// statics keep alive) escalates to a worker restart, when supervised; 0 never escalates.
    pub worker_restart_leak_bytes: u64,
    /// How long a client has to send a whole request head: from the accept for a connection's
    /// first request, from the head's first byte for the next ones. Both ports.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request. Both ports.
    pub idle_timeout: Duration,
    /// Traffic connections held open at most; `None`: the open-file limit less a reserve for
    /// the rest of the base (see ARCHITECTURE.md, "Connections").
    pub max_connections: Option<usize>,
    /// Operations connections held open at most; `None`: 256 (less with a low open-file limit).
    pub admin_max_connections: Option<usize>,
    /// At stop, how long requests in flight have to finish before their connections are closed
    /// (event streams end at once).
    pub connection_drain_timeout: Duration,
    /// Directories `POST /api/v1/modules {"path": ...}` may read module files from, besides
    /// `<data-dir>/incoming/` (`--allow-path-install`).
    pub allow_path_install: Vec<PathBuf>,
    /// The public keys artifacts must be signed with (`--trusted-keys`): with it set, every
    /// artifact the base loads needs a valid signature by one of them. Read when the base (each
    /// worker) starts.
    pub trusted_keys: Option<PathBuf>,
    /// Whether `GET /metrics` on the operations port answers without the token
    /// (`--metrics-public`): a Prometheus scraper then needs no secret. Off by default.
    pub metrics_public: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so a new field cannot be left out (or shown) without a decision here.
        let Self {
            listen,
            admin_listen,
            data_dir,
            admin_token,
            admin_token_file,
            admin_allowed_hosts,
            max_upload_bytes,
            max_request_body_bytes,
            start_timeout,
            drain_timeout,
            restart_drain_timeout,
            stop_timeout,
            request_timeout,
            module_log_level,
            module_log_format,
            module_log_max_bytes,
            health_timeout,
            unhealthy_action,
            unhealthy_grace,
            module_log_echo_per_sec,
            request_accounting,
            module_limits,
            boot_modules,
            modules_dir,
            ready_requires_modules,
            watch_dir,
            spis,
            config_file,
            module_config,
            module_secret_keys,
            kv_quota_bytes,
            module_kv_quota,
            crash_quarantine_after,
            crash_window,
            supervisor,
            worker_restart_leak_bytes,
            header_read_timeout,
            idle_timeout,
            connection_drain_timeout,
            max_connections,
            admin_max_connections,
            allow_path_install,
            trusted_keys,
            metrics_public,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("admin_listen", admin_listen)
            .field("data_dir", data_dir)
            .field("admin_token", &admin_token.as_ref().map(|_| Redacted))
            .field("admin_token_file", admin_token_file)
            .field("admin_allowed_hosts", admin_allowed_hosts)
            .field("max_upload_bytes", max_upload_bytes)
            .field("max_request_body_bytes", max_request_body_bytes)
            .field("start_timeout", start_timeout)
            .field("drain_timeout", drain_timeout)
            .field("restart_drain_timeout", restart_drain_timeout)
            .field("stop_timeout", stop_timeout)
            .field("request_timeout", request_timeout)
            .field("module_log_level", module_log_level)
            .field("module_log_format", module_log_format)
            .field("module_log_max_bytes", module_log_max_bytes)
            .field("health_timeout", health_timeout)
            .field("unhealthy_action", unhealthy_action)
            .field("unhealthy_grace", unhealthy_grace)
            .field("module_log_echo_per_sec", module_log_echo_per_sec)
            .field("request_accounting", request_accounting)
            .field("module_limits", module_limits)
            .field("boot_modules", boot_modules)
            .field("modules_dir", modules_dir)
            .field("ready_requires_modules", ready_requires_modules)
            .field("watch_dir", watch_dir)
            .field("spis", spis)
            .field("config_file", config_file)
            .field(
                "module_config",
                &module_config
                    .iter()
                    .map(|(module, values)| (module, ValuesNotShown(values.len())))
                    .collect::<BTreeMap<_, _>>(),
            )
            .field("module_secret_keys", module_secret_keys)
            .field("kv_quota_bytes", kv_quota_bytes)
            .field("module_kv_quota", module_kv_quota)
            .field("crash_quarantine_after", crash_quarantine_after)
            .field("crash_window", crash_window)
            .field("supervisor", supervisor)
            .field("worker_restart_leak_bytes", worker_restart_leak_bytes)
            .field("header_read_timeout", header_read_timeout)
            .field("idle_timeout", idle_timeout)
            .field("connection_drain_timeout", connection_drain_timeout)
            .field("max_connections", max_connections)
            .field("admin_max_connections", admin_max_connections)
            .field("allow_path_install", allow_path_install)
            .field("trusted_keys", trusted_keys)
            .field("metrics_public", metrics_public)
            .finish()
    }
}

/// Stands in for a secret in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

/// Stands in for a module's configuration values in `Debug` output: how many, not what.
struct ValuesNotShown(usize);

impl fmt::Debug for ValuesNotShown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({} values, not shown)", self.0)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 7070).into(),
            admin_listen: ([127, 0, 0, 1], 7071).into(),
            data_dir: PathBuf::from("pedestal-data"),
            admin_token: None,
            admin_token_file: None,
            admin_allowed_hosts: Vec::new(),
            max_upload_bytes: 256 * 1024 * 1024,
            max_request_body_bytes: 16 * 1024 * 1024,
            start_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            restart_drain_timeout: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            module_log_level: LogLevel::Info,
            module_log_format: LogFormat::Text,
            module_log_max_bytes: 10 * 1024 * 1024,
            health_timeout: Duration::from_secs(1),
            unhealthy_action: UnhealthyAction::None,
            unhealthy_grace: Duration::from_secs(30),
            module_log_echo_per_sec: 200,
            request_accounting: true,
            module_limits: BTreeMap::new(),
            boot_modules: Vec::new(),
            modules_dir: None,
            ready_requires_modules: false,
            watch_dir: None,
            spis: BTreeMap::new(),
            config_file: None,
            module_config: BTreeMap::new(),
            module_secret_keys: BTreeMap::new(),
            kv_quota_bytes: 64 * 1024 * 1024,
            module_kv_quota: BTreeMap::new(),
            crash_quarantine_after: 1,
            crash_window: Duration::from_secs(600),
            supervisor: true,
            worker_restart_leak_bytes: 64 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            admin_max_connections: None,
            connection_drain_timeout: Duration::from_secs(30),
            allow_path_install: Vec::new(),
            metrics_public: false,
            trusted_keys: None,
        }
    }
}

impl Config {
    /// What the runtime needs of this configuration, as a plain value.
    pub fn runtime(&self) -> RuntimeSettings {
        RuntimeSettings {
            start_timeout: self.start_timeout,
            drain_timeout: self.drain_timeout,
            stop_timeout: self.stop_timeout,
            module_log_level: self.module_log_level,
            request_accounting: self.request_accounting,
            limits: self.limit_defaults(),
        }
    }

    /// The flags' values for the limits neither the API, the config file nor a manifest set.
    pub fn limit_defaults(&self) -> LimitDefaults {
        LimitDefaults {
            request_timeout: self.request_timeout,
            max_request_body_bytes: self.max_request_body_bytes,
            unhealthy_action: self.unhealthy_action,
            unhealthy_grace: self.unhealthy_grace,
        }
    }

    /// Refuses settings that would be unsafe to run with.
    ///
    /// With the supervisor on, `crash_quarantine_after` must leave the supervisor's crash-loop
    /// rule room: a module crashing at every start crashes one worker per start, and the module
    /// must be quarantined before [`MAX_CRASHES`](crate::MAX_CRASHES) worker crashes end the
    /// base. One crash of the budget is kept for a crash no module is blamed for (a `kill -9`
    /// of the worker, say) in the same window, hence at most `MAX_CRASHES - 1`.
    pub fn validate(&self) -> Result<()> {
        if let Some(token) = &self.admin_token {
            check_admin_token(token, "--admin-token (or PEDESTAL_ADMIN_TOKEN)")?;
        }
        let has_token = self.admin_token.is_some() || self.admin_token_file.is_some();
        if !self.admin_listen.ip().is_loopback() && !has_token {
            return Err(Error::AdminTokenRequired { addr: self.admin_listen.to_string() });
        }
        let max_after = MAX_CRASHES - 1;
        if self.supervisor && self.crash_quarantine_after as usize > max_after {
            return Err(Error::CrashQuarantineTooLate {
                after: self.crash_quarantine_after,
                max_crashes: MAX_CRASHES,
                max_after,
            });
        }
        if let Some(path) = &self.trusted_keys {
            crate::signing::load_trusted_keys(path)?;
        }
        Ok(())
    }
}

/// The shortest operations API token accepted, in characters (a generated one has 64).
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The length from which a token counts as strong, in characters: guessing it is hopeless, so
/// the throttle of failed authentications never refuses it (see ARCHITECTURE.md, "The
/// operations API's front door"). A weaker one is refused too while its client is throttled.
pub const STRONG_ADMIN_TOKEN_LEN: usize = 32;

/// Refuses a blank token, or one shorter than [`MIN_ADMIN_TOKEN_LEN`] once trimmed; `origin`
/// says where it came from, for the message.
pub(crate) fn check_admin_token(token: &str, origin: &str) -> Result<()> {
    let length = token.trim().chars().count();
    if length < MIN_ADMIN_TOKEN_LEN {
        return Err(Error::AdminTokenTooShort {
            origin: origin.to_owned(),
            length,
            min: MIN_ADMIN_TOKEN_LEN,
        });
    }
    Ok(())
}

/// The config file (`pedestal serve --config FILE`, TOML): modules to install at boot, and
/// per-module sections.
///
/// ```toml
/// [boot]
/// modules = ["/srv/modules/search.so", "/srv/modules/rank.so"]   # installed in this order
///
/// [spis]
/// ranker = "1.1.0"   # implementations of another major version are refused at install
///
/// [modules.search]
/// kv_quota_bytes = 1048576   # its key-value store's quota
/// secret_keys = ["db.dsn"]   # config keys the API shows redacted (besides *_password...)
///
/// [modules.search.config]    # read by the module with pedestal_module_api::config
/// index = "products"
/// db = { pool_size = 8, dsn = "postgres://search:…@db/search" }
/// api_token = "…"            # shown redacted by the API: its name contains `token`
///
/// [modules.search.limits]
/// max_concurrent_requests = 64
/// request_timeout_ms = 500
/// max_request_body_bytes = 1048576
/// memory_soft_limit_bytes = 268435456
/// memory_action = "restart"   # or "log", "deactivate"
/// unhealthy_action = "deactivate"   # or "none", "restart"; after unhealthy_grace_ms unhealthy
/// unhealthy_grace_ms = 30000
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    boot: BootSection,
    #[serde(default)]
    modules: BTreeMap<String, ModuleSection>,
    #[serde(default)]
    spis: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootSection {
    #[serde(default)]
    modules: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleSection {
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    config: toml::Table,
    kv_quota_bytes: Option<u64>,
    /// Keys of `config` (dotted for nested ones: `db.dsn`) the API shows redacted.
    #[serde(default)]
    secret_keys: Vec<String>,
}

fn read_file(path: &Path) -> Result<ConfigFile> {
    let invalid = |message: String| Error::ConfigInvalid { path: path.to_owned(), message };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    toml::from_str(&text).map_err(|e| invalid(e.to_string()))
}

fn module_config(path: &Path, table: toml::Table) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::to_value(table) {
        Ok(serde_json::Value::Object(values)) => Ok(values),
        Ok(_) => unreachable!("a TOML table is a JSON object"),
        Err(e) => Err(Error::ConfigInvalid { path: path.to_owned(), message: e.to_string() }),
    }
}

/// Each module's configuration values and secret keys, as the config file has them.
pub(crate) type ModuleConfigSections =
    (BTreeMap<String, serde_json::Map<String, serde_json::Value>>, BTreeMap<String, Vec<String>>);

/// The `[modules.NAME.config]` sections of the config file at `path`, and each module's
/// `secret_keys` (re-read when it changes).
pub(crate) fn read_module_configs(path: &Path) -> Result<ModuleConfigSections> {
    let file = read_file(path)?;
    let mut configs = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (name, section) in file.modules {
        if !section.secret_keys.is_empty() {
            secrets.insert(name.clone(), section.secret_keys);
        }
        if !section.config.is_empty() {
            configs.insert(name, module_config(path, section.config)?);
        }
    }
    Ok((configs, secrets))
}

impl Config {
    /// Applies the config file at `path` on top of these settings.
    pub fn with_file(mut self, path: &Path) -> Result<Self> {
        let invalid = |message: String| Error::ConfigInvalid { path: path.to_owned(), message };
        let file = read_file(path)?;
        self.config_file = Some(path.to_owned());
        // Relative boot paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        self.boot_modules.extend(file.boot.modules.into_iter().map(|m| base.join(m)));
        for (spi, version) in file.spis {
            let version = semver::Version::parse(&version)
                .map_err(|e| invalid(format!("SPI {spi}: {version:?} is not a semver version: {e}")))?;
            self.spis.insert(spi, version);
        }
        for (name, section) in file.modules {
            if !crate::ids::is_valid_name(&name) {
                return Err(invalid(format!("{name:?} is not a module name")));
            }
            if let Some(quota) = section.kv_quota_bytes {
                self.module_kv_quota.insert(name.clone(), quota);
            }
            if !section.config.is_empty() {
                self.module_config.insert(name.clone(), module_config(path, section.config)?);
            }
            if !section.secret_keys.is_empty() {
                self.module_secret_keys.insert(name.clone(), section.secret_keys);
            }
            self.module_limits.insert(name, section.limits);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_defaults_are_the_flags_defaults() {
        // `limits.rs`'s tests resolve against these values.
        let defaults = Config::default().limit_defaults();
        assert_eq!(defaults.request_timeout, Duration::from_secs(30));
        assert_eq!(defaults.max_request_body_bytes, 16 * 1024 * 1024);
        assert_eq!(defaults.unhealthy_grace, Duration::from_secs(30));
        assert_eq!(Config::default().unhealthy_action, UnhealthyAction::None, "off unless asked for");
    }

    #[test]
    fn debug_shows_neither_the_token_nor_module_config_values() {
        let mut values = serde_json::Map::new();
        values.insert("db_password".into(), "hunter2-hunter2".into());
        let config = Config {
            admin_token: Some("a-very-secret-operations-token".into()),
            module_config: BTreeMap::from([("notes".to_owned(), values)]),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("a-very-secret-operations-token"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("admin_token: Some((redacted))"), "{shown}");
        assert!(shown.contains("\"notes\": (1 values, not shown)"), "{shown}");
        assert!(shown.contains("admin_listen: 127.0.0.1:7071"), "{shown}");
        assert!(!format!("{:?}", Config::default()).contains("(redacted)"), "no token, nothing redacted");
    }

    fn check(supervisor: bool, crash_quarantine_after: u32, accepted: bool) {
        let config = Config { supervisor, crash_quarantine_after, ..Config::default() };
        assert_eq!(
            config.validate().is_ok(),
            accepted,
            "supervisor {supervisor}, after {crash_quarantine_after}"
        );
    }

    #[test]
    fn blank_and_short_tokens_are_refused_at_start() {
        let check = |token: &str, accepted: bool| {
            let config = Config { admin_token: Some(token.to_owned()), ..Config::default() };
            let outcome = config.validate();
            assert_eq!(outcome.is_ok(), accepted, "{token:?}: {outcome:?}");
            if let Err(e) = outcome {
                assert_eq!(e.code(), "ADMIN_TOKEN_TOO_SHORT");
            }
        };
        check("", false);
        check("   ", false);
        check("fifteen-chars-x", false);
        check("  fifteen-chars-x  ", false);
        check("sixteen-chars-xx", true);
        check(&"f".repeat(64), true);
    }

    #[test]
    fn supervised_a_module_crashing_at_every_start_is_quarantined_before_the_crash_loop_rule() {
        check(true, 1, true);
        check(true, MAX_CRASHES as u32 - 1, true);
        check(true, MAX_CRASHES as u32, false);
        check(true, 100, false);
        // Report only: allowed, the crash-loop rule then stops the base.
        check(true, 0, true);
        // Unsupervised, a crash ends the process anyway: any count is the operator's choice.
        check(false, 100, true);
    }
}

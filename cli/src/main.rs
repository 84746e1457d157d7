//! `pedestal`: the universal base.
//!
//! Run with `cargo run -p pedestal-base -- serve` (or `cargo xtask demo` for a base with the
//! example modules deployed).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

mod cli;

use clap::{Parser, Subcommand};
use pedestal_base::{Base, Config, LogFormat, UnhealthyAction};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "pedestal", version, about = "Hosts native Rust modules in one long-running process")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a base: module traffic on --listen, the operations API on --admin-listen.
    Serve(Box<ServeArgs>),
    /// Make a signing key pair: PATH (secret, mode 0600) and PATH.pub (for --trusted-keys).
    Keygen(cli::keys::KeygenArgs),
    /// Sign module files: writes FILE.sig beside each.
    Sign(cli::keys::SignArgs),
    /// Upload a module to a running base's operations API.
    Install(cli::install::InstallArgs),
    #[command(flatten)]
    Ops(cli::ops::OpsCommand),
    /// Print a shell completion script: `pedestal completions bash > /etc/bash_completion.d/pedestal`.
    Completions {
        /// `bash`, `zsh`, `fish`, `elvish` or `powershell`.
        shell: clap_complete::Shell,
    },
    /// Run a fleet controller: the scheduler and the fleet API (any number; one leads).
    Controller(Box<pedestal_fleet::controller::ControllerArgs>),
    /// Operate a fleet through a controller: apply, status, push, delete, bases.
    Fleet(Box<pedestal_fleet::cli::FleetArgs>),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address for module traffic.
    #[arg(long, env = "PEDESTAL_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Address for the operations API (`/api/v1`).
    #[arg(long, env = "PEDESTAL_ADMIN_LISTEN", default_value = "127.0.0.1:7071")]
    admin_listen: SocketAddr,
    /// Directory for artifacts and state.
    #[arg(long, env = "PEDESTAL_DATA_DIR", default_value = "pedestal-data")]
    data_dir: PathBuf,
    /// Bearer token for the operations API (at least 16 characters). Without it or
    /// --admin-token-file, the base generates one at first start into <data-dir>/admin-token
    /// (mode 0600) and reuses it. One of the two is required beyond loopback.
    #[arg(long, env = "PEDESTAL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A file holding the operations API token (trailing whitespace ignored).
    #[arg(long, env = "PEDESTAL_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    /// More `Host` names the operations API answers to, comma-separated: `name` (any port) or
    /// `name:port` (a reverse proxy's name, say). Its own address and localhost always work.
    #[arg(long, env = "PEDESTAL_ADMIN_ALLOWED_HOSTS", value_delimiter = ',')]
    admin_allowed_hosts: Vec<String>,
    /// Largest accepted module upload, in bytes.
    #[arg(long, env = "PEDESTAL_MAX_UPLOAD_BYTES", default_value_t = 256 * 1024 * 1024)]
    max_upload_bytes: u64,
    /// Largest request body forwarded to a module, in bytes.
    #[arg(long, env = "PEDESTAL_MAX_REQUEST_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_request_body_bytes: u64,
    /// How long loading and a module's start hook may take, in milliseconds.
    #[arg(long, env = "PEDESTAL_START_TIMEOUT_MS", default_value_t = 10_000)]
    start_timeout_ms: u64,
    /// How long an uninstall waits for in-flight requests, in milliseconds.
    #[arg(long, env = "PEDESTAL_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    drain_timeout_ms: u64,
    /// How long a restart by the base (memory limit, unhealthy policy) waits for in-flight
    /// requests, in milliseconds.
    #[arg(long, env = "PEDESTAL_RESTART_DRAIN_TIMEOUT_MS", default_value_t = 1_000)]
    restart_drain_timeout_ms: u64,
    /// How long a module's thread gets to finish after stop, in milliseconds.
    #[arg(long, env = "PEDESTAL_STOP_TIMEOUT_MS", default_value_t = 10_000)]
    stop_timeout_ms: u64,
    /// How long a request may take inside a module, in milliseconds.
    #[arg(long, env = "PEDESTAL_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// Format of the base's own output on stderr: `text` or `json`.
    #[arg(long, env = "PEDESTAL_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Format of each module's log file under `<data-dir>/logs/`: `text` or `json`.
    #[arg(long, env = "PEDESTAL_MODULE_LOG_FORMAT", default_value = "text")]
    module_log_format: LogFormat,
    /// Size at which a module's log file is rotated, in bytes (three rotated files are kept).
    #[arg(long, env = "PEDESTAL_MODULE_LOG_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    module_log_max_bytes: u64,
    /// How long `/api/v1/health` waits for each module's health hook, in milliseconds.
    #[arg(long, env = "PEDESTAL_HEALTH_TIMEOUT_MS", default_value_t = 1_000)]
    health_timeout_ms: u64,
    /// What to do with a module instance that stayed unhealthy for --unhealthy-grace-ms:
    /// `none`, `deactivate` or `restart` (per module: `[modules.<name>.limits]`).
    #[arg(long, env = "PEDESTAL_UNHEALTHY_ACTION", default_value = "none")]
    unhealthy_action: UnhealthyAction,
    /// How long a module instance must stay unhealthy before --unhealthy-action, in milliseconds.
    #[arg(long, env = "PEDESTAL_UNHEALTHY_GRACE_MS", default_value_t = 30_000)]
    unhealthy_grace_ms: u64,
    /// Module log lines echoed to stderr per second and module (burst: five seconds' worth);
    /// the rest are counted and stay in the module's own log. `0`: no limit.
    #[arg(long, env = "PEDESTAL_MODULE_LOG_ECHO_PER_SEC", default_value_t = 200)]
    module_log_echo_per_sec: u32,
    /// How many bytes (keys plus values) each module may keep in its key-value store; a config
    /// file's `[modules.<name>] kv_quota_bytes` overrides it per module.
    #[arg(long, env = "PEDESTAL_KV_QUOTA_BYTES", default_value_t = 64 * 1024 * 1024)]
    kv_quota_bytes: u64,
    /// Per-request accounting (latency histograms, recent error rates): `on` or `off`. Off only
    /// to measure its cost.
    #[arg(long, env = "PEDESTAL_REQUEST_ACCOUNTING", default_value = "on", value_parser = ["on", "off"])]
    request_accounting: String,
    /// A TOML config file: boot modules (`[boot] modules = [...]`) and per-module sections
    /// (`[modules.<name>.limits]`, `[modules.<name>.config]`), see README.md. Watched: module
    /// configuration changes reach the modules without a restart.
    #[arg(long, env = "PEDESTAL_CONFIG")]
    config: Option<PathBuf>,
    /// Install every `*.so` in this directory at boot, in name order (static merged deployment).
    #[arg(long, env = "PEDESTAL_MODULES_DIR")]
    modules_dir: Option<PathBuf>,
    /// Report ready only once every boot module is installed (`GET /api/v1/ready`).
    #[arg(long, env = "PEDESTAL_READY_REQUIRES_MODULES")]
    ready_requires_modules: bool,
    /// A hot-reload directory: a `.so` dropped here is installed, and a newer version of a
    /// running module takes its traffic.
    #[arg(long, env = "PEDESTAL_WATCH")]
    watch: Option<PathBuf>,
    /// Crashes of one module (within --crash-window-secs, since its last retry) after which the
    /// next start quarantines it instead of loading it; 0 never does (crashes are still reported).
    /// Supervised, at most 4, so a module crashing at every start is quarantined before the
    /// supervisor's crash-loop rule (more than 5 worker crashes in 60 s) stops the base; with 0,
    /// such a module does stop the base.
    #[arg(long, env = "PEDESTAL_CRASH_QUARANTINE_AFTER", default_value_t = 1)]
    crash_quarantine_after: u32,
    /// The window module crashes are counted in, in seconds.
    #[arg(long, env = "PEDESTAL_CRASH_WINDOW_SECS", default_value_t = 600)]
    crash_window_secs: u64,
    /// Run as a supervisor process that owns the listening sockets and restarts the worker
    /// process hosting the modules when it crashes: `on` or `off`.
    #[arg(long, env = "PEDESTAL_SUPERVISOR", default_value = "on", value_parser = ["on", "off"])]
    supervisor: String,
    /// A memory-limit restart that leaves more than this many heap bytes behind (kept alive by
    /// the module's statics) escalates to a worker restart when supervised; 0 = never.
    #[arg(long, env = "PEDESTAL_WORKER_RESTART_LEAK_BYTES", default_value_t = 64 * 1024 * 1024)]
    worker_restart_leak_bytes: u64,
    /// glibc malloc arenas at most (0: glibc's default, eight per core). Module threads that
    /// come and go with installs make glibc add arenas it never gives back; a cap keeps a
    /// long-lived base's memory flat (ARCHITECTURE.md, "Memory over many upgrades").
    #[arg(long, env = "PEDESTAL_MALLOC_ARENAS", default_value_t = 2)]
    malloc_arenas: u32,
    /// How long a client has to send a whole request head, in milliseconds: from the accept for
    /// a connection's first request, from the head's first byte for the next ones (both ports).
    #[arg(long, env = "PEDESTAL_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    header_read_timeout_ms: u64,
    /// How long a keep-alive connection may wait for its next request, in milliseconds (both
    /// ports).
    #[arg(long, env = "PEDESTAL_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Traffic connections held open at most; at the cap the longest-idle ones are closed for
    /// new ones, or accepting pauses. Default: the open-file limit less a reserve (a tenth, at
    /// least 1024) and the operations port's share.
    #[arg(long, env = "PEDESTAL_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Operations-API connections held open at most. Default: 256.
    #[arg(long, env = "PEDESTAL_ADMIN_MAX_CONNECTIONS")]
    admin_max_connections: Option<usize>,
    /// At stop, how long requests in flight have to finish, in milliseconds, before their
    /// connections are closed (both ports; log follows end at once).
    #[arg(long, env = "PEDESTAL_CONNECTION_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    connection_drain_timeout_ms: u64,
    /// A directory `POST /api/v1/modules {"path": ...}` may read module files from (repeatable,
    /// or a comma-separated list); `<data-dir>/incoming/` always may, nothing else does.
    #[arg(long, env = "PEDESTAL_ALLOW_PATH_INSTALL", value_delimiter = ',')]
    allow_path_install: Vec<PathBuf>,
    /// Public keys (`pedestal keygen`'s `.pub` files, concatenated): with it, only artifacts
    /// signed by one of them are loaded, from anywhere (read at start; restart to change it).
    #[arg(long, env = "PEDESTAL_TRUSTED_KEYS")]
    trusted_keys: Option<PathBuf>,
    /// Let `GET /metrics` on the operations port answer without the token (for a Prometheus
    /// scraper that should hold no secret; the rest of the API still needs it).
    #[arg(long, env = "PEDESTAL_METRICS_PUBLIC")]
    metrics_public: bool,
    #[command(flatten)]
    fleet: pedestal_fleet::agent::JoinArgs,
}

impl From<ServeArgs> for Config {
    fn from(args: ServeArgs) -> Self {
        Config {
            listen: args.listen,
            admin_listen: args.admin_listen,
            data_dir: args.data_dir,
            admin_token: args.admin_token,
            admin_token_file: args.admin_token_file,
            admin_allowed_hosts: args.admin_allowed_hosts,
            max_upload_bytes: args.max_upload_bytes,
            max_request_body_bytes: args.max_request_body_bytes,
            start_timeout: Duration::from_millis(args.start_timeout_ms),
            drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            restart_drain_timeout: Duration::from_millis(args.restart_drain_timeout_ms),
            stop_timeout: Duration::from_millis(args.stop_timeout_ms),
            request_timeout: Duration::from_millis(args.request_timeout_ms),
            module_log_format: args.module_log_format,
            module_log_max_bytes: args.module_log_max_bytes,
            health_timeout: Duration::from_millis(args.health_timeout_ms),
            unhealthy_action: args.unhealthy_action,
            unhealthy_grace: Duration::from_millis(args.unhealthy_grace_ms),
            module_log_echo_per_sec: args.module_log_echo_per_sec,
            request_accounting: args.request_accounting == "on",
            modules_dir: args.modules_dir,
            ready_requires_modules: args.ready_requires_modules,
            watch_dir: args.watch,
            kv_quota_bytes: args.kv_quota_bytes,
            crash_quarantine_after: args.crash_quarantine_after,
            crash_window: Duration::from_secs(args.crash_window_secs),
            supervisor: args.supervisor == "on",
            worker_restart_leak_bytes: args.worker_restart_leak_bytes,
            header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(args.idle_timeout_ms),
            max_connections: args.max_connections,
            admin_max_connections: args.admin_max_connections,
            connection_drain_timeout: Duration::from_millis(args.connection_drain_timeout_ms),
            allow_path_install: args.allow_path_install,
            trusted_keys: args.trusted_keys,
            metrics_public: args.metrics_public,
            ..Config::default()
        }
    }
}

/// Errors are printed whole (`error: CODE: context: cause`), never with a backtrace: a
/// configuration mistake is the operator's to fix, not a crash to debug. A base that cannot be
/// reached exits 2, anything else refused or failed 1.
fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<cli::admin::ApiError>() {
                Some(api) => ExitCode::from(api.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args = match Cli::parse().command {
        Command::Serve(args) => *args,
        Command::Keygen(args) => return cli::keys::keygen(args),
        Command::Sign(args) => return cli::keys::sign(args),
        Command::Install(args) => return cli::install::run(args),
        Command::Ops(command) => return cli::ops::run(command),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "pedestal",
                &mut script,
            );
            pedestal_fleet::render::emit(&String::from_utf8_lossy(&script));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Controller(args) => return pedestal_fleet::controller::run(*args),
        Command::Fleet(args) => return pedestal_fleet::cli::run(*args),
    };
    let filter = EnvFilter::try_from_env("PEDESTAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: redirected logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => output.init(),
        LogFormat::Json => output.json().init(),
    }
    let file = args.config.clone();
    if !pedestal_base::limit_malloc_arenas(args.malloc_arenas) {
        tracing::warn!(
            arenas = args.malloc_arenas,
            "glibc refused the malloc arena cap; running with its default"
        );
    }
    // Checked before anything starts: a fleet base without its token or id never serves.
    let join = match args.fleet.resolve() {
        Ok(join) => join,
        Err(e) => return Err(anyhow::anyhow!("{e}").context(e.code())),
    };
    let mut config = Config::from(args);
    if let Some(file) = file {
        config = config.with_file(&file)?;
    }
    // The supervisor returns here once its worker stopped for good; the worker goes on.
    if let Some(exit) = pedestal_base::supervise(&config).map_err(with_code)? {
        return Ok(exit);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match join {
        None => {
            let base = Base::new(config).map_err(with_code)?;
            runtime.block_on(base.serve()).map_err(with_code)?;
        }
        Some(join) => {
            // The agent joins the fleet once the base has bound its ports and restored its
            // state; the base serves whatever becomes of etcd.
            let agent = pedestal_fleet::agent::Agent::new(join);
            let base = agent.prepare(Base::builder(config)).build().map_err(with_code)?;
            runtime
                .block_on(async {
                    agent.spawn(std::sync::Arc::clone(base.registry()));
                    base.serve().await
                })
                .map_err(with_code)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Puts the stable code of a base error (`STATE_INVALID`...) in front of its message, so the
/// last words of a base that could not start name it.
fn with_code(error: impl Into<anyhow::Error>) -> anyhow::Error {
    let error = error.into();
    match error.downcast_ref::<pedestal_base::Error>().map(|e| e.code().to_owned()) {
        Some(code) => error.context(code),
        None => error,
    }
}

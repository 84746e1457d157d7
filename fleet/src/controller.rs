//! `pedestal controller`: the scheduler and the fleet API. Any number run; one leads.
//!
//! - [`election`]: a lease (TTL 2 s, renewed every 500 ms) and a campaign transaction on the
//!   leader key; the key's create revision is the term every leader write is fenced on.
//! - [`reconcile`]: the leader's loop: one consistent read of the whole prefix, the pure
//!   [`crate::schedule::place`], and the diff written in fenced transactions.
//! - [`api`]: the fleet API (`/api/v1/...`), answered by any controller; mutations on a standby
//!   are forwarded to the leader.
//! - [`artifacts`]: each controller's content-addressed store, mirrored from its peers.
//!
//! Everything the controller decides from lives in etcd: a controller starting, or a standby
//! elected, resumes from etcd alone (its artifact store aside, which it refills by mirroring).

mod api;
mod artifacts;
mod chaos;
mod compact;
mod election;
mod logs;
mod metrics;
mod reconcile;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context as _;

use crate::keys::{self, Keys};

/// `pedestal controller`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "PEDESTAL_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Address of the fleet API (`127.0.0.1:0` picks a free port, printed on the ready line).
    #[arg(long, env = "PEDESTAL_CONTROLLER_LISTEN", default_value = "127.0.0.1:7080")]
    pub listen: SocketAddr,
    /// Directory for this controller's copy of every artifact.
    #[arg(long, env = "PEDESTAL_CONTROLLER_DATA_DIR", default_value = "pedestal-controller-data")]
    pub data_dir: PathBuf,
    /// This controller's id (default: `<hostname>-<port>`): 1 to 64 of `[A-Za-z0-9_.-]`.
    #[arg(long, env = "PEDESTAL_CONTROLLER_ID")]
    pub id: Option<String>,
    /// The fleet's shared secret (at least 16 characters), for the API and for fetching
    /// artifacts from bases.
    #[arg(long, env = "PEDESTAL_FLEET_TOKEN", hide_env_values = true)]
    pub fleet_token: Option<String>,
    /// A file holding the fleet token (trailing whitespace ignored).
    #[arg(long, env = "PEDESTAL_FLEET_TOKEN_FILE", conflicts_with = "fleet_token")]
    pub fleet_token_file: Option<PathBuf>,
    /// The prefix of every fleet key in etcd.
    #[arg(long, env = "PEDESTAL_ETCD_PREFIX", default_value = keys::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// The URL other controllers and the CLI reach this one at (default `http://<listen>`,
    /// with the bound port).
    #[arg(long, env = "PEDESTAL_CONTROLLER_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Largest accepted artifact upload, in bytes.
    #[arg(long, env = "PEDESTAL_MAX_UPLOAD_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// How often the leader compacts etcd's history to the revision of its previous compaction
    /// tick (`5m`, `30s`; `0` leaves compaction to etcd's `--auto-compaction-*`).
    #[arg(long, env = "PEDESTAL_CONTROLLER_COMPACT_EVERY", default_value = "5m")]
    pub compact_every: String,
}

/// Runs a controller until SIGTERM or SIGINT.
pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let token = match fleet_token(&args) {
        Ok(token) => token,
        Err(message) => {
            eprintln!("FLEET_TOKEN_REQUIRED: {message}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pedestal-controller")
        .build()
        .context("starting the controller's runtime")?;
    let outcome = runtime.block_on(serve(args, token));
    // A blocking fetch in flight does not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}

async fn serve(args: ControllerArgs, token: String) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the fleet API to {}", args.listen))?;
    let addr = listener.local_addr().context("the fleet API's bound address")?;
    let id = match args.id.clone() {
        Some(id) => id,
        None => default_id(addr.port()),
    };
    anyhow::ensure!(keys::is_valid_id(&id), "--id {id:?} must be 1 to 64 of [A-Za-z0-9_.-]");
    let url = args.advertise_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let compact_every = crate::model::parse_duration(&args.compact_every)
        .map(std::time::Duration::from_millis)
        .map_err(|message| anyhow::anyhow!("--compact-every {:?}: {message}", args.compact_every))?;
    anyhow::ensure!(
        compact_every.is_zero() || compact_every >= std::time::Duration::from_secs(1),
        "--compact-every {:?}: at least 1s, or 0 to leave compaction to etcd",
        args.compact_every
    );
    let client = crate::store::connect(&args.etcd)
        .await
        .with_context(|| format!("connecting to etcd at {}", args.etcd.join(",")))?;
    let store = artifacts::ArtifactStore::open(args.data_dir.join("artifacts"))?;
    let controller = Arc::new(Controller {
        id: id.clone(),
        url,
        keys: Keys::new(&args.etcd_prefix),
        client: std::sync::Mutex::new(client),
        endpoints: args.etcd.clone(),
        token,
        store,
        max_upload_bytes: args.max_upload_bytes,
        leadership: election::Leadership::new(),
        kick: tokio::sync::Notify::new(),
        kick_artifacts: tokio::sync::Notify::new(),
        metrics: Metrics::default(),
        samples: std::sync::Mutex::new(metrics::Samples::default()),
        chaos: chaos::WriteChaos::from_env(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    let mut names = std::collections::HashMap::new();
    names.insert(tasks.spawn(election::run(controller.clone())).id(), "election");
    names.insert(tasks.spawn(reconcile::run(controller.clone())).id(), "reconcile");
    names.insert(tasks.spawn(reconcile::watch(controller.clone())).id(), "watch");
    names.insert(tasks.spawn(artifacts::mirror(controller.clone())).id(), "artifact mirror");
    names.insert(tasks.spawn(compact::run(controller.clone(), compact_every)).id(), "compaction");

    let app = api::router(controller.clone());
    println!("pedestal controller ready: api http://{addr} id {id}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    // Every task runs forever: one that ends (or panics) would leave, say, a leader that no
    // longer reconciles. The process exits instead, and its manager starts it again.
    let code = tokio::select! {
        served = server => match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                controller.say(&format!("the fleet API stopped: {e}; exiting"));
                ExitCode::FAILURE
            }
        },
        Some(ended) = tasks.join_next_with_id() => {
            let (name, how) = match &ended {
                Ok((id, ())) => (names.get(id).copied(), "ended".to_owned()),
                Err(e) if e.is_panic() => (names.get(&e.id()).copied(), "panicked".to_owned()),
                Err(e) => (names.get(&e.id()).copied(), format!("failed: {e}")),
            };
            controller.say(&format!("the {} task {how}; exiting", name.unwrap_or("?")));
            ExitCode::FAILURE
        }
    };

    tasks.abort_all();
    let mut client = controller.client();
    controller.leadership.resign(&mut client).await;
    controller.say("stopped");
    Ok(code)
}

/// What every part of a running controller shares.
pub(crate) struct Controller {
    /// `--id`.
    pub(crate) id: String,
    /// Where others reach its API.
    pub(crate) url: String,
    pub(crate) keys: Keys,
    /// One connection, cloned per use (the client multiplexes); replaced by
    /// [`Controller::reconnect`].
    client: std::sync::Mutex<etcd_client::Client>,
    /// `--etcd`.
    endpoints: Vec<String>,
    pub(crate) token: String,
    pub(crate) store: artifacts::ArtifactStore,
    pub(crate) max_upload_bytes: u64,
    pub(crate) leadership: election::Leadership,
    /// Wakes the reconcile loop (a change in etcd, a spec written).
    pub(crate) kick: tokio::sync::Notify,
    /// Wakes the artifact mirror.
    pub(crate) kick_artifacts: tokio::sync::Notify,
    pub(crate) metrics: Metrics,
    /// The bases' measurements, for rollout analysis (taken by the leader's passes).
    pub(crate) samples: std::sync::Mutex<metrics::Samples>,
    /// The write chaos layer, when `PEDESTAL_FLEET_CHAOS` is set (a testing aid).
    pub(crate) chaos: Option<chaos::WriteChaos>,
}

impl Controller {
    /// The etcd client, cloned (cheap: clones share the connection).
    pub(crate) fn client(&self) -> etcd_client::Client {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connects to etcd again, leaving out members that do not accept connections now (see
    /// [`crate::store::connect`]); called when requests fail. Streams opened on the old client
    /// carry on until they break.
    pub(crate) async fn reconnect(&self) {
        match crate::store::connect(&self.endpoints).await {
            Ok(client) => *self.client.lock().unwrap_or_else(|e| e.into_inner()) = client,
            Err(e) => self.say(&format!("cannot reconnect to etcd: {e}")),
        }
    }

    /// One line on stderr about this controller's life (leading, standing by, deposed...).
    pub(crate) fn say(&self, message: &str) {
        eprintln!("pedestal controller {}: {message}", self.id);
    }
}

/// Counters of the leader's etcd traffic, served at `GET /api/v1/controllers` (for the
/// benchmark's "etcd traffic per placement").
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Reconcile passes run while leading.
    pub(crate) passes: AtomicU64,
    /// Fenced transactions those passes committed.
    pub(crate) txns: AtomicU64,
    /// Operations in them.
    pub(crate) ops: AtomicU64,
    /// The most operations in one of them.
    pub(crate) max_txn_ops: AtomicU64,
    /// The most bytes of keys and values in one of them.
    pub(crate) max_txn_bytes: AtomicU64,
    /// The range requests the last pass's snapshot read took.
    pub(crate) snapshot_pages: AtomicU64,
    /// Passes cut short because a write was stale (planned from a state that changed since).
    pub(crate) stale: AtomicU64,
    /// Compactions of etcd's history this controller made while leading.
    pub(crate) compactions: AtomicU64,
    /// The revision its last compaction reached (0: none).
    pub(crate) compacted: AtomicU64,
}

impl Metrics {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "passes": self.passes.load(Ordering::Relaxed),
            "txns": self.txns.load(Ordering::Relaxed),
            "ops": self.ops.load(Ordering::Relaxed),
            "max_txn_ops": self.max_txn_ops.load(Ordering::Relaxed),
            "max_txn_bytes": self.max_txn_bytes.load(Ordering::Relaxed),
            "snapshot_pages": self.snapshot_pages.load(Ordering::Relaxed),
            "stale": self.stale.load(Ordering::Relaxed),
            "compactions": self.compactions.load(Ordering::Relaxed),
            "compacted_revision": self.compacted.load(Ordering::Relaxed),
        })
    }
}

/// The token from `--fleet-token-file`, `--fleet-token` or `PEDESTAL_FLEET_TOKEN`.
fn fleet_token(args: &ControllerArgs) -> Result<String, String> {
    let token = crate::token::read(args.fleet_token.as_deref(), args.fleet_token_file.as_deref())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "a controller needs the fleet token: --fleet-token, --fleet-token-file or \
                 PEDESTAL_FLEET_TOKEN (at least {} characters)",
                crate::token::MIN_TOKEN_LEN
            )
        })?;
    crate::token::long_enough(token).map_err(|e| e.to_string())
}

/// `<hostname>-<port>`, the host name reduced to key-safe characters.
fn default_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "controller".to_owned());
    let host: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .take(50)
        .collect();
    let host = if host.is_empty() { "controller".to_owned() } else { host };
    format!("{host}-{port}")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    fn parse(argv: &[&str]) -> ControllerArgs {
        Cli::try_parse_from(std::iter::once("controller").chain(argv.iter().copied()))
            .expect("flags parse")
            .args
    }

    #[test]
    fn the_token_is_required_and_long_enough() {
        let args = parse(&["--etcd", "http://127.0.0.1:1"]);
        if std::env::var_os("PEDESTAL_FLEET_TOKEN").is_none() {
            assert!(fleet_token(&args).unwrap_err().contains("needs the fleet token"));
        }
        let short = parse(&["--etcd", "http://127.0.0.1:1", "--fleet-token", "short"]);
        assert!(fleet_token(&short).unwrap_err().contains("at least 16"));
        let good = parse(&["--etcd", "a,b", "--fleet-token", "0123456789abcdef"]);
        assert_eq!(fleet_token(&good).as_deref(), Ok("0123456789abcdef"));
        assert_eq!(good.etcd, ["a", "b"]);
        assert_eq!(good.listen.to_string(), "127.0.0.1:7080");
    }

    #[test]
    fn the_default_id_is_key_safe() {
        let id = default_id(7080);
        assert!(keys::is_valid_id(&id), "{id}");
        assert!(id.ends_with("-7080"));
    }
}

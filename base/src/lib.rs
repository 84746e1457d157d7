//! The Pedestal base: hosts native modules (Rust `cdylib`s) in one long-running process,
//! routes HTTP to them, and unloads them for real.
//!
//! A library first, so a company can build its own base; the `pedestal` binary is the
//! universal base built from the same API:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use pedestal_base::{Base, Config};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let native = Router::new().route("/status", get(|| async { "base is up\n" }));
//! Base::new(Config::default())?.with_native_routes(native).serve().await
//! # }
//! ```
//!
//! Modules are installed through the operations API ([`Base::admin_app`]) and answer at
//! `/<module name>/...` on the traffic server ([`Base::traffic_app`]).
//!
//! A base of your own can drive the lifecycle itself, as a fleet agent applying assignments
//! would (see [`Registry`]'s module docs for the whole list), and offer modules a service of
//! its own ([`BaseBuilder::service`]):
//!
//! ```no_run
//! use std::{collections::BTreeMap, sync::Arc};
//!
//! use pedestal_base::{Base, Call, Config, Dependents, InstallOptions, Service, Strategy};
//!
//! /// `pedestal.clock`: answers `now` with the base's time in seconds.
//! #[derive(Debug)]
//! struct Clock;
//!
//! impl Service for Clock {
//!     fn name(&self) -> &'static str {
//!         "pedestal.clock"
//!     }
//!
//!     fn call(self: Arc<Self>, call: Call) {
//!         let now = std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_secs();
//!         call.answer(Ok(now.to_le_bytes().to_vec()));
//!     }
//! }
//!
//! # fn run(bytes: Vec<u8>, sha256: [u8; 32]) -> anyhow::Result<()> {
//! let base = Base::builder(Config::default()).service(Clock).without_service("pedestal.events").build()?;
//! let registry = Arc::clone(base.registry());
//! // "Install this sha256 as shop@<its version>", beside the version that runs.
//! let options = InstallOptions {
//!     name: Some("shop".into()),
//!     strategy: Strategy::Install,
//!     sha256: Some(sha256),
//!     ..InstallOptions::default()
//! };
//! let installed = registry.install_with(&bytes, &options)?;
//! let version = installed.instance.id.version.clone();
//! // "Send it a tenth of the traffic", then "make it active", then report.
//! if let (_, Some(active)) = registry.module("shop")?
//!     && active != version
//! {
//!     registry.set_weights("shop", BTreeMap::from([(active, 90), (version.clone(), 10)]))?;
//! }
//! registry.switch("shop", &version)?;
//! for (instance, active) in registry.all() {
//!     println!("{} {:?} active={active}", instance.id, instance.state());
//! }
//! registry.uninstall_checked("shop", &version, Dependents::Protect)?;
//! # Ok(())
//! # }
//! ```

// Architecture Invariant: `pedestal-base` has no `unsafe` at all. All of it (the ABI glue, the
// crash handler, the supervisor's descriptor hand-over) lives in `pedestal-host`, the runtime
// layer's crate, which cargo does not let import anything from here.
#![forbid(unsafe_code)]

mod accounting;
mod admin;
mod artifact;
mod config;
mod error_response;
mod hot_reload;
mod operations;
mod path_install;
mod registry;
mod routing;
mod server;
mod services;
pub mod signing;
mod supervisor;
mod traffic;

// The runtime layer and its leaves, from their own crate, under the names the files of this
// crate have always used (`crate::instance::Instance`, `crate::error::Error`...).
use pedestal_host::{
    calls, crash, elf, error, health, ids, instance, limits, loader, logs, private, settings, stats, sync,
    sys, tls_keys,
};

use std::{net::SocketAddr, sync::Arc};

use axum::Router;
use tokio::net::TcpListener;

use crate::accounting::Port;

pub use pedestal_host::loader::limit_malloc_arenas;

/// The web console's shared files, for the fleet controller's own console.
pub mod console {
    pub use crate::admin::console::{COMMON_SCRIPT, STYLE, file};
}
pub use crate::{
    admin::{AUDIT_FILE, TOKEN_FILE as ADMIN_TOKEN_FILE},
    artifact::Artifact,
    config::{Config, MIN_ADMIN_TOKEN_LEN, STRONG_ADMIN_TOKEN_LEN},
    crash::{Crash, CrashRecord, crash_of_process},
    error::{Error, Result},
    error_response::{Answer, Refusal},
    instance::{Instance, ModuleId, State, Traffic, Transition},
    limits::{Action, LimitDefaults, LimitOverrides, Limits, Source, Sources, UnhealthyAction},
    logs::{LogFormat, LogLine, ModuleLog},
    operations::{Operation, Operations, Status as OperationStatus},
    registry::{
        Dependents, InstallOptions, Installed, InstanceSamples, Quarantined, Registry, Restored, Retired,
        Sample, Strategy,
    },
    routing::{Route, RoutingTable, Split, VERSION_HEADER},
    services::{
        Call, Service, Services,
        events::{Events, EventsService},
        kv::{Kv, KvService, Usage as KvUsage},
        module_config::{ConfigService, ModuleConfigs},
        spis::SpisService,
    },
    settings::RuntimeSettings,
    stats::{CpuTime, LatencySummary},
    supervisor::{BaseProcess, CRASH_WINDOW, MAX_CRASHES, WORKER_RESTART_EXIT_CODE, base_process, supervise},
    tls_keys::keys_are_reclaimable,
    traffic::Fallback,
};

/// A configured base, ready to serve.
#[derive(Debug)]
pub struct Base {
    registry: Arc<Registry>,
    native: Router,
    front: admin::FrontDoor,
    /// The fallback and headers of module traffic a builder set.
    extras: Arc<traffic::Extras>,
}

impl Base {
    /// A base with no modules yet. Refuses unsafe settings (an operations API beyond loopback
    /// without a token).
    pub fn new(config: Config) -> Result<Self> {
        Self::with_services(config, |_| {})
    }

    /// [`Base::new`] with the built-in services changed by `choose` (see [`BaseBuilder::service`]).
    fn with_services(config: Config, choose: impl FnOnce(&mut services::Services)) -> Result<Self> {
        config.validate()?;
        // Each instance holds a few descriptors (its eventfd, its runtime's epoll and waker):
        // take the hard limit rather than the often-low soft one.
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            tracing::warn!("cannot raise the open-file limit: {e}");
        }
        if !keys_are_reclaimable() {
            tracing::warn!(
                "this binary does not export pthread_key_create: every module load will leak a \
                 pthread key and the process aborts after about a thousand loads; link it with \
                 -Wl,--export-dynamic-symbol=pthread_key_create (see pedestal-base's build.rs)"
            );
        }
        // A custom base that did not call `supervise` first: take the secrets out of the
        // environment now if it can still be done safely (it warns otherwise).
        supervisor::forget_secrets();
        let data_dir = config.data_dir.clone();
        let registry = Registry::with_services(config, choose)?;
        // After the registry made the data directory. Without the handler the base still runs;
        // a crash then goes unattributed (and a module that crashes after start may crash-loop).
        if let Err(e) = crash::install(&data_dir) {
            tracing::error!(
                "cannot install the crash handler ({e}): crashes will not be attributed to modules"
            );
        }
        // After the registry made the data directory, which holds the generated token.
        let front = admin::FrontDoor::open(registry.config())?;
        spawn_heap_sampler(Arc::downgrade(&registry));
        Ok(Self { registry, native: Router::new(), front, extras: Arc::default() })
    }

    /// A builder for a base of your own: its routes (which may call module SPIs through the
    /// registry) and the SPIs it declares.
    ///
    /// ```no_run
    /// # use pedestal_base::{Base, Config, Registry};
    /// # use std::sync::Arc;
    /// # async fn run() -> anyhow::Result<()> {
    /// let base = Base::builder(Config::default())
    ///     .routes_with(|registry: Arc<Registry>| {
    ///         axum::Router::new().route(
    ///             "/modules",
    ///             axum::routing::get(move || async move { registry.all().len().to_string() }),
    ///         )
    ///     })
    ///     .build()?;
    /// base.serve().await
    /// # }
    /// ```
    pub fn builder(config: Config) -> BaseBuilder {
        BaseBuilder {
            config,
            routes: Vec::new(),
            spis: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            extras: traffic::Extras::default(),
        }
    }

    /// Routes compiled into the base itself, served on the traffic port before module routes.
    pub fn with_native_routes(mut self, routes: Router) -> Self {
        self.native = self.native.merge(routes);
        self
    }

    /// The registry of modules.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The traffic application (native routes plus `/<module>/...`), usable without a socket.
    pub fn traffic_app(&self) -> Router {
        traffic::router(Arc::clone(&self.registry), self.native.clone(), Arc::clone(&self.extras))
    }

    /// The operations API application, usable without a socket (it answers to the `Host`
    /// names of the configured `admin_listen`).
    pub fn admin_app(&self) -> Router {
        self.admin_app_at(self.registry.config().admin_listen)
    }

    /// The operations API answering on `listen`, its bound address.
    fn admin_app_at(&self, listen: SocketAddr) -> Router {
        admin::router(Arc::clone(&self.registry), &self.front, listen)
    }

    /// Binds both servers (or, in a supervised worker, takes the listeners its supervisor
    /// handed over: see [`supervise`]), restores the recorded state and installs the boot
    /// modules (the operations API answers meanwhile, with `GET /api/v1/ready` false; traffic
    /// waits in the kernel's queue until the restore is done), prints one `pedestal ready:` line
    /// with the bound addresses on stdout, serves until SIGTERM, SIGINT or SIGHUP, then stops
    /// every module and returns.
    ///
    /// In a supervised worker whose memory limit escalated to a worker restart, it stops every
    /// module the same way (the recorded state is kept), each drained for the short
    /// `restart_drain_timeout` rather than `drain_timeout`, and then exits the process with
    /// [`WORKER_RESTART_EXIT_CODE`], for the supervisor to start a fresh worker.
    pub async fn serve(self) -> anyhow::Result<()> {
        let config = self.registry.config().clone();
        supervisor::base_process();
        let (traffic, admin) = match supervisor::inherited_listeners()? {
            Some((traffic, admin)) => (inherit(traffic)?, inherit(admin)?),
            None => {
                (bind(config.listen, "traffic").await?, bind(config.admin_listen, "operations API").await?)
            }
        };
        let (traffic_addr, admin_addr) = (traffic.local_addr()?, admin.local_addr()?);
        self.registry.set_bound_addresses(traffic_addr, admin_addr);
        // Before the restore: a SIGTERM while modules load must stop the base cleanly, not kill
        // it mid-load (which would quarantine the module being loaded).
        let shutdown = shutdown_signal()?;
        self.registry.set_runtime(tokio::runtime::Handle::current());
        if let Some(file) = &config.config_file {
            services::module_config::watch(Arc::downgrade(&self.registry), file.clone())?;
        }

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let (traffic_hygiene, admin_hygiene) = connection_hygiene(&config);
        let metrics = self.registry.metrics();
        let admin_server = server::serve(
            admin,
            // The accept loop gives every request its peer address (`ConnectInfo`), for the
            // audit trail and the per-client throttle.
            self.admin_app_at(admin_addr),
            Port::Operations,
            admin_hygiene,
            metrics.connections(Port::Operations),
            stopped(stop_rx.clone()),
        );
        let admin_server = tokio::spawn(admin_server);

        let registry = Arc::clone(&self.registry);
        let restored = tokio::task::spawn_blocking(move || registry.restore()).await??;
        // Traffic is accepted only now: until the restore is done, connections wait in the
        // listening socket's queue rather than get a 404 from a module not loaded yet (after a
        // worker restart, every module is in that case for the length of the restore).
        let traffic_server = server::serve(
            traffic,
            self.traffic_app(),
            Port::Traffic,
            traffic_hygiene,
            metrics.connections(Port::Traffic),
            stopped(stop_rx),
        );
        let traffic_server = tokio::spawn(traffic_server);
        tracing::info!(
            started = restored.started,
            quarantined = restored.quarantined.len(),
            ms = restored.ms,
            "state restored"
        );
        let registry = Arc::clone(&self.registry);
        let booting = tokio::task::spawn_blocking(move || registry.install_boot_modules());
        if config.ready_requires_modules {
            let all_started = booting.await?;
            if !all_started {
                tracing::error!("not ready: a boot module failed to install (--ready-requires-modules)");
            }
            self.registry.set_ready(all_started);
        } else {
            self.registry.set_ready(true);
        }
        if let Some(dir) = &config.watch_dir {
            hot_reload::spawn(Arc::clone(&self.registry), dir.clone())?;
        }
        println!("pedestal ready: traffic http://{traffic_addr} operations http://{admin_addr}");
        tracing::info!(%traffic_addr, %admin_addr, data_dir = %config.data_dir.display(), "pedestal ready");

        tokio::select! {
            _ = shutdown => tracing::info!("shutting down: stopping every module"),
            _ = supervisor::worker_restart_requested() => tracing::warn!(
                "worker restart: stopping every module (the recorded state is kept) and exiting with \
                 status {WORKER_RESTART_EXIT_CODE}, for the supervisor to start a fresh worker"
            ),
        }
        let _ = stop_tx.send(true);
        let registry = Arc::clone(&self.registry);
        tokio::task::spawn_blocking(move || {
            if supervisor::worker_restart_wanted() {
                registry.stop_all_for_worker_restart()
            } else {
                registry.stop_all()
            }
        })
        .await?;
        traffic_server.await?;
        admin_server.await?;
        if supervisor::worker_restart_wanted() {
            drop(self);
            std::process::exit(WORKER_RESTART_EXIT_CODE);
        }
        Ok(())
    }
}

/// Builds a [`Base`]: see [`Base::builder`].
pub struct BaseBuilder {
    config: Config,
    routes: Vec<Box<dyn FnOnce(Arc<Registry>) -> Router>>,
    /// SPIs declared: name and version.
    spis: Vec<(&'static str, &'static str)>,
    /// Services added to the built-in ones, and the names of those taken out, in call order.
    added: Vec<Arc<dyn Service>>,
    removed: Vec<String>,
    extras: traffic::Extras,
}

impl std::fmt::Debug for BaseBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl BaseBuilder {
    /// Routes of the base's own, served on the traffic port before module routes.
    pub fn routes(self, routes: Router) -> Self {
        self.routes_with(move |_| routes)
    }

    /// Routes built with the registry in hand, to call module SPIs
    /// ([`Registry::implementations`], [`Registry::implementation`], [`Registry::select`]).
    pub fn routes_with(mut self, routes: impl FnOnce(Arc<Registry>) -> Router + 'static) -> Self {
        self.routes.push(Box::new(routes));
        self
    }

    /// What the traffic server does with a request for a module that has no route on this base,
    /// instead of answering `MODULE_NOT_FOUND` (a fleet agent forwards it to a base running the
    /// module): see [`Fallback`].
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.extras.fallback = Some(fallback);
        self
    }

    /// A header added to every module answer of the traffic server (a fleet base's
    /// `x-pedestal-base: <id>`).
    pub fn module_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.extras.headers.insert(name, value);
        self
    }

    /// Declares an SPI this base calls: modules implementing another major version of it are
    /// refused at install with `SPI_INCOMPATIBLE`.
    pub fn spi<S: pedestal_module_api::Spi>(mut self) -> Self {
        self.spis.push((S::NAME, S::VERSION));
        self
    }

    /// Offers modules `service` under its name, in place of a built-in of the same name.
    pub fn service(mut self, service: impl Service) -> Self {
        self.removed.retain(|name| name != service.name());
        self.added.push(Arc::new(service));
        self
    }

    /// Takes the service `name` (`pedestal.kv`, `pedestal.events`, `pedestal.spis`,
    /// `pedestal.config`, or one added) out: modules calling it see an unknown service, as with
    /// a base that never had it.
    pub fn without_service(mut self, name: &str) -> Self {
        self.added.retain(|service| service.name() != name);
        self.removed.push(name.to_owned());
        self
    }

    /// The base, ready to [`serve`](Base::serve).
    pub fn build(self) -> Result<Base> {
        let reserved = pedestal_module_api::abi::RESERVED_SPI_PREFIX;
        if let Some(service) = self.added.iter().find(|s| !s.name().starts_with(reserved)) {
            // Any other name is a module SPI's: a service under it would answer in its place.
            return Err(Error::BadRequest {
                message: format!("service {:?}: a service's name starts with {reserved:?}", service.name()),
            });
        }
        let (added, removed, extras) = (self.added, self.removed, self.extras);
        let mut base = Base::with_services(self.config, move |services| {
            for name in &removed {
                services.remove(name);
            }
            for service in added {
                services.add(service);
            }
        })?;
        base.extras = Arc::new(extras);
        for (name, version) in self.spis {
            base.registry.declare_spi_version(name, version);
        }
        for routes in self.routes {
            base.native = base.native.merge(routes(Arc::clone(&base.registry)));
        }
        Ok(base)
    }
}

/// Ten times a second, samples every instance's heap (so peaks are seen between API reads) and
/// watches the memory soft limits and runaway requests; ends with the registry.
fn spawn_heap_sampler(registry: std::sync::Weak<Registry>) {
    let sampler = std::thread::Builder::new().name("pedestal-heap".into()).spawn(move || {
        while let Some(registry) = registry.upgrade() {
            registry.watch_limits();
            drop(registry);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    if let Err(e) = sampler {
        tracing::warn!("cannot start the heap sampler ({e}); peaks are sampled on reads only");
    }
}

/// Each port's timeouts and connection cap: the flags, or what the open-file limit allows.
fn connection_hygiene(config: &Config) -> (server::Hygiene, server::Hygiene) {
    let budget = server::Budget::of_this_process();
    let traffic = config.max_connections.unwrap_or(budget.traffic);
    let admin = config.admin_max_connections.unwrap_or(budget.operations);
    if traffic + admin > budget.traffic + budget.operations {
        tracing::warn!(
            traffic,
            operations = admin,
            reserve = budget.reserve,
            "the connection caps leave fewer than {} file descriptors for modules, logs and the \
             store: with the ports full, module loads may fail",
            budget.reserve
        );
    }
    let hygiene = |max_connections: usize| server::Hygiene {
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: max_connections.max(1),
        drain_timeout: config.connection_drain_timeout,
    };
    tracing::info!(traffic, operations = admin, reserve = budget.reserve, "connection caps");
    (hygiene(traffic), hygiene(admin))
}

/// A listener the supervisor handed over, for tokio.
fn inherit(listener: std::net::TcpListener) -> anyhow::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
}

/// Installs the SIGTERM, SIGINT and SIGHUP handlers now; the future ends at the first signal.
/// SIGHUP stops gracefully too: a closed terminal sends it to the supervisor and its worker
/// alike, and the worker must stop its modules rather than die mid-request.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
            _ = hangup.recv() => {}
        }
    })
}

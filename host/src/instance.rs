//! One running copy of a module: its thread, its request queue, its state history, and the
//! exact sequence that starts it and unloads it.
//!
//! Architecture Invariant: no module code ever runs on a base thread. Each instance gets a
//! thread of its own; the library is opened, initialised, started and run there. The base talks
//! to it only through [`Shared`] (a queue plus an `eventfd`), and closes the library only after
//! that thread has been joined and nothing the module made is still held.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method};
use pedestal_module_api::{HealthStatus, HeapSnapshot, ModuleLimits, SpiError};
use semver::Version;
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

pub use crate::ids::{ModuleId, State};
use crate::{
    calls::ModuleCalls,
    crash::{self, CrashSlot},
    doorbell::Doorbell,
    error::{Error, Result, StartOutcome, Subject},
    host,
    ids::Artifact,
    limits::{Action, Limits},
    loader::{self, Counters, Library, Manifest, Unload},
    logs::ModuleLog,
    mailbox::{Cancelled, Mailbox},
    settings::RuntimeSettings,
    stats::{
        CpuTime, Latency, LatencySummary, RecentRate, RecentWindow, RequestMetrics, cpu_by_thread_name,
        task_ids, task_stat,
    },
    sync::{EventFd, lock},
};

/// One state change, with when and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Transition {
    /// The new state.
    pub state: State,
    /// RFC 3339 time of the change.
    pub at: String,
    /// A short machine-friendly reason, e.g. `install`, `start_failed`, `uninstall`.
    pub reason: String,
    /// A human-readable explanation.
    pub message: String,
}

/// How many state changes an identity keeps (its latest). Reinstalling an identity carries its
/// earlier incarnations' history forward, so without a bound a version installed and uninstalled
/// again and again (a fleet alternating two versions) grew its history, and the base's memory,
/// forever: measured ~1 KiB of history JSON and ~15 KiB of RSS per upgrade cycle.
pub const HISTORY_KEPT: usize = 64;

/// Drops the oldest transitions beyond [`HISTORY_KEPT`].
fn keep_recent(history: &mut Vec<Transition>) {
    if let Some(excess) = history.len().checked_sub(HISTORY_KEPT).filter(|&n| n > 0) {
        history.drain(..excess);
    }
}

/// Request counters kept by the base at the boundary.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Traffic {
    /// Requests handed to the module.
    pub requests: u64,
    /// Answers with a 4xx status.
    pub client_errors: u64,
    /// Answers with a 5xx status, including requests the module failed (a panic) and requests
    /// that timed out or found the instance stopped.
    pub server_errors: u64,
    /// Panics caught inside the module.
    pub panics: u64,
    /// Requests refused with `503 MODULE_OVERLOADED` (over the concurrency limit); not handed
    /// to the module, so not in `requests`.
    pub rejected: u64,
    /// Requests currently inside the module.
    pub in_flight: usize,
    /// Requests and 5xx answers of the last minute.
    pub recent: RecentWindow,
    /// Latency of answered requests, as the base saw it.
    pub latency: Option<LatencySummary>,
}

/// A running (or formerly running) copy of a module.
pub struct Instance {
    /// `name@version`.
    pub id: ModuleId,
    /// The module's package name: the same as `id.name` unless it was installed under another
    /// name.
    pub package: String,
    /// The artifact it was installed from.
    pub artifact: Artifact,
    /// The interface version it was built against.
    pub interface: Version,
    /// The limits the module declares (`None`: built against an interface older than 1.1).
    pub declared_limits: Option<ModuleLimits>,
    /// The SPIs the module implements, with their declaration versions.
    pub provides: Vec<(String, Version)>,
    /// The SPIs the module calls, with the declaration versions it was built against.
    pub requires: Vec<(String, Version)>,
    /// The file the library was loaded from (the artifact, or a private copy of it).
    pub load_path: PathBuf,
    /// When the install began.
    pub installed_at: SystemTime,
    install_micros: AtomicU64,
    load_micros: u64,
    start_micros: AtomicU64,
    thread_name: String,
    heap_peak: AtomicU64,
    latency: Latency,
    duration: metrics::Histogram,
    shared: Arc<Shared>,
    history: Mutex<Vec<Transition>>,
    worker: Mutex<Option<Worker>>,
    leaked: Mutex<Option<HeapSnapshot>>,
    /// Requests inside the module (or on their way in). Shared with the guards of the requests,
    /// which a request's reply slot keeps after its caller left (see [`PendingReply`]).
    in_flight: Arc<AtomicUsize>,
    busy: AtomicBool,
    limits: ArcSwap<Limits>,
    /// Whether the live heap is above the memory soft limit (the action fires on the crossing).
    over_memory: AtomicBool,
    memory_limit_crossings: AtomicU64,
    recent: RecentRate,
    request_accounting: bool,
    /// Taken out of traffic by the base (memory limit): not routed even by a pinned version.
    deactivated: AtomicBool,
    /// Set when a stop's drain timed out: requests cut off then get `DRAIN_TIMEOUT`.
    drain_expired: AtomicBool,
    drain_timeout_ms: AtomicU64,
    /// The library of an instance pinned only by threads the module started, until they end.
    stranded: Mutex<Option<Stranded>>,
    /// The background health probe behind the unhealthy policy.
    probe: Mutex<Probe>,
}

/// Where the background health probe of one instance is (see [`Instance::probe_health`]).
#[derive(Debug, Default)]
struct Probe {
    /// The check asked for and when, until it is answered or times out.
    outstanding: Option<(u64, Instant)>,
    /// When the last probe ended.
    last: Option<Instant>,
    /// Since when every probe found the instance unhealthy.
    unhealthy_since: Option<Instant>,
}

/// An instance found unhealthy by every background probe for at least its grace period.
#[derive(Debug, Clone)]
pub struct StayedUnhealthy {
    /// How long, from the first probe that found it unhealthy.
    pub for_ms: u64,
    /// Why, as the last probe saw it.
    pub reasons: Vec<String>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance").field("id", &self.id).field("state", &self.state()).finish()
    }
}

/// The instance's thread and what the base may read while the library is open.
struct Worker {
    thread: JoinHandle<Option<Library>>,
    done: mpsc::Receiver<()>,
    /// The module's heap and task counters. The handle keeps the library open, so it is
    /// dropped before the library is unloaded (see [`Instance::close_library`]).
    counters: Counters,
    /// The instance thread's unique name. Linux threads inherit their creator's name, so a
    /// thread the module started (and did not name) carries it too: that is how the base finds
    /// module threads that are still alive before it closes the library.
    thread_name: String,
    /// The instance's entry in the crash table: released once the library is verified unmapped.
    crash_slot: CrashSlot,
}

/// What the base and the module's thread share: the target of the module's `HostCtx`.
pub(crate) struct Shared {
    pub(crate) tags: OnceLock<ModuleId>,
    /// The module's own log; set with `tags`, before any module code beyond the loader runs.
    pub(crate) log: OnceLock<Arc<ModuleLog>>,
    /// Rung for every message, stop request and health check the base gives the module.
    pub(crate) doorbell: Doorbell,
    pub(crate) stop: AtomicBool,
    /// What the base gives the module, one mailbox per kind of message.
    pub(crate) mail: Mail,
    pub(crate) started: Mutex<Option<mpsc::SyncSender<Result<(), String>>>>,
    next_id: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) client_errors: AtomicU64,
    pub(crate) server_errors: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// The newest health check the base asked for, and the newest the module took.
    pub(crate) health_wanted: AtomicU64,
    pub(crate) health_taken: AtomicU64,
    /// The module's latest health answer, and a wake-up for those waiting on it.
    pub(crate) health: Mutex<Option<HookAnswer>>,
    pub(crate) health_answered: Notify,
    /// Requests whose caller got a timeout while the module was running them, by id.
    pub(crate) timed_out: Mutex<HashMap<u64, TimedOut>>,
    pub(crate) runaways_total: AtomicU64,
    /// What serves the module's calls to the base; set before the start hook runs.
    pub(crate) calls: OnceLock<Weak<dyn ModuleCalls>>,
    /// The instance itself, for the module's calls (set right after it is built).
    pub(crate) me: OnceLock<std::sync::Weak<Instance>>,
    /// The metrics the module registered; a handle is an index plus one.
    pub(crate) module_metrics: Mutex<Vec<crate::stats::ModuleMetric>>,
}

/// The base's messages for one module, by kind. A new kind of message is one field here, plus
/// its line in [`Mail::has_work`] and [`Mail::close`].
#[derive(Default)]
pub(crate) struct Mail {
    /// Requests, answered through their [`PendingReply`].
    pub(crate) requests: Mailbox<host::HeldRequest, PendingReply>,
    /// SPI calls to the module; the base's own notifications have no replier.
    pub(crate) spi_calls: Mailbox<QueuedSpiCall, oneshot::Sender<SpiOutcome>>,
    /// Answers to the module's own calls, never answered back.
    pub(crate) completions: Mailbox<SpiCompletion, ()>,
}

impl Mail {
    /// Whether any message waits for the module.
    pub(crate) fn has_work(&self) -> bool {
        self.requests.has_work() || self.spi_calls.has_work() || self.completions.has_work()
    }

    /// Closes every mailbox (see [`Mailbox::close`]).
    fn close(&self) {
        self.requests.close();
        self.spi_calls.close();
        self.completions.close();
    }
}

/// The answer to one of the module's calls.
pub(crate) struct SpiCompletion {
    pub(crate) id: u64,
    pub(crate) status: pedestal_module_api::abi::SpiStatus,
    pub(crate) payload: Vec<u8>,
}

/// An SPI call waiting in an instance's queue.
pub(crate) struct QueuedSpiCall {
    pub(crate) id: u64,
    pub(crate) spi: std::borrow::Cow<'static, str>,
    pub(crate) method: std::borrow::Cow<'static, str>,
    pub(crate) payload: Vec<u8>,
}

/// How a module answered an SPI call.
pub(crate) struct SpiOutcome {
    pub(crate) status: pedestal_module_api::abi::SpiStatus,
    pub(crate) payload: Vec<u8>,
}

/// A module's answer to a health check.
#[derive(Debug, Clone)]
pub(crate) struct HookAnswer {
    pub(crate) check: u64,
    pub(crate) status: HealthStatus,
    pub(crate) message: String,
}

/// A request the module is still running after its caller got `504`.
#[derive(Debug)]
pub(crate) struct TimedOut {
    pub(crate) sent: Instant,
    pub(crate) what: String,
    /// Reported as runaway already.
    pub(crate) runaway: bool,
    /// The module still runs it, so it still counts as in flight (a drain waits for it).
    _in_flight: InFlight,
}

/// Where the module's answer to a request goes, and the request's in-flight count.
///
/// The count lives here rather than in the caller's future: when the client disconnects, the
/// HTTP future is dropped, but the module is still running the request, so a drain or an
/// unload must keep waiting for it. The slot is dropped when the module answers or fails the
/// request, when the request times out (its count moves to [`TimedOut`]), or when the
/// instance closes.
pub(crate) struct PendingReply {
    reply: oneshot::Sender<Outcome>,
    _in_flight: InFlight,
}

impl PendingReply {
    /// Hands the module's answer to the waiting caller; `false` when the caller left. Either
    /// way the request stops counting as in flight.
    pub(crate) fn send(self, outcome: Outcome) -> bool {
        let Self { reply, _in_flight: in_flight } = self;
        // The count goes down before the caller can see the answer: a sequential client's next
        // request must not find this one still counted (a spurious `503 MODULE_OVERLOADED` at
        // `max_concurrent_requests = 1`).
        drop(in_flight);
        reply.send(outcome).is_ok()
    }
}

/// At most this many timed-out requests are tracked per instance (the rest are only counted).
const MAX_TRACKED_TIMEOUTS: usize = 1024;

/// A request that ran far past its timeout, as health and the API show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Runaway {
    /// The request's method and path.
    pub request: String,
    /// How long ago it was sent, in milliseconds.
    pub running_ms: u64,
}

/// What a health check of one instance found out from its hook.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum HookHealth {
    /// The module answered.
    Answered {
        /// Its status.
        status: ModuleHealth,
        /// Its message (empty when healthy).
        message: String,
        /// How long it took to answer.
        ms: f64,
    },
    /// The module did not answer in time: its thread is blocked or its hook hangs.
    NoAnswer {
        /// How long the base waited.
        timeout_ms: u64,
    },
    /// Built against an interface older than 1.1, which has no health hook.
    Unsupported,
    /// Not running (starting, draining, stopped...).
    NotRunning,
}

/// A health status, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModuleHealth {
    /// Working normally.
    Healthy,
    /// Working, but something needs attention.
    Degraded,
    /// Not working.
    Unhealthy,
}

impl From<HealthStatus> for ModuleHealth {
    fn from(status: HealthStatus) -> Self {
        match status {
            HealthStatus::Healthy => Self::Healthy,
            HealthStatus::Degraded => Self::Degraded,
            HealthStatus::Unhealthy => Self::Unhealthy,
        }
    }
}

/// The memory soft limit was crossed (upwards).
#[derive(Debug, Clone, Copy)]
pub struct MemoryCrossing {
    /// Live heap bytes when it was seen.
    pub live_bytes: u64,
    /// The soft limit.
    pub limit: u64,
    /// What to do about it.
    pub action: Action,
}

/// A request waiting in an instance's queue.
pub(crate) struct QueuedRequest {
    pub(crate) id: u64,
    pub(crate) method: Method,
    pub(crate) path_and_query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// How the module answered a request.
pub(crate) enum Outcome {
    /// The module's response, copied out of its view.
    Response(http::Response<Bytes>),
    Failed {
        code: String,
        message: String,
    },
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A module loaded by [`Instance::load`]: its library is open and checked on its own thread and
/// its manifest is read (the instance's name, version, declared limits, provided and required
/// SPIs are known), but none of its code beyond the library's initialisation has run. Its
/// thread waits for one of the two ways on: [`Loaded::start`] or [`Loaded::abandon`].
#[must_use = "a loaded module's thread waits until it is started or abandoned"]
pub struct Loaded {
    instance: Arc<Instance>,
    /// `true` runs the module, `false` sends its thread home without running it.
    go: mpsc::SyncSender<bool>,
    /// The module's start report.
    started: mpsc::Receiver<Result<(), String>>,
    /// When the load began: the install's time counts from there.
    began: Instant,
    start_timeout: Duration,
    stop_timeout: Duration,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded").field("id", &self.instance.id).finish_non_exhaustive()
    }
}

impl Loaded {
    /// The instance, `installing`, to register under its identity before it starts.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// Runs the module's start hook, with its log set to `log`, and waits for its report. On a
    /// start failure the instance is torn down and left `broken` (or `pinned`), and the error
    /// says why. On success it is still busy: the registry ends the install once it has routed
    /// the instance.
    pub fn start(self, log: Arc<ModuleLog>) -> Result<Arc<Instance>> {
        let Self { instance, go, started, began, start_timeout, stop_timeout } = self;
        let _ = instance.shared.log.set(log);
        instance.transition(State::Starting, "install", "running the start hook");
        let _ = go.send(true);

        let failure = match started.recv_timeout(start_timeout) {
            Ok(Ok(())) => {
                let total = began.elapsed().as_micros() as u64;
                instance.install_micros.store(total, Ordering::Relaxed);
                instance.start_micros.store(total.saturating_sub(instance.load_micros), Ordering::Relaxed);
                instance.sample_heap();
                return Ok(instance);
            }
            Ok(Err(message)) => Some(Error::StartFailed { id: instance.id.clone(), message }),
            Err(RecvTimeoutError::Disconnected) => Some(Error::StartFailed {
                id: instance.id.clone(),
                message: "the module returned without reporting its start".into(),
            }),
            // A timeout: what became of the instance is known only after the teardown below.
            Err(RecvTimeoutError::Timeout) => None,
        };
        let (state, message) = instance.teardown(stop_timeout);
        let failure = failure.unwrap_or_else(|| Error::StartTimeout {
            id: Subject::Module(instance.id.clone()),
            timeout_ms: start_timeout.as_millis() as u64,
            outcome: if state == State::Pinned { StartOutcome::Pinned } else { StartOutcome::Unloaded },
        });
        let final_state = if state == State::Pinned { State::Pinned } else { State::Broken };
        let message = if state == State::Pinned { message } else { failure.to_string() };
        instance.transition(final_state, failure.code(), &message);
        instance.busy.store(false, Ordering::Release);
        Err(failure)
    }

    /// Sends the module's thread home without running the module (its identity was refused)
    /// and unloads the library exactly as a failed start does, pinning it where that must.
    /// The instance stays busy and records no further state, as it always did on this path.
    pub fn abandon(self) {
        let _ = self.go.send(false);
        self.instance.teardown(self.stop_timeout);
    }
}

/// Sends `()` when the instance thread's closure ends, however it ends.
struct DoneGuard(mpsc::SyncSender<()>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

impl Instance {
    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Opens and checks a module's library from `load_path` on a new thread of its own, and
    /// reads its manifest; nothing of the module is started. The caller reserves the identity
    /// the [`Loaded`] names, then [`starts`](Loaded::start) or [`abandons`](Loaded::abandon) it.
    ///
    /// A library whose initialisation does not return within the start timeout is pinned (its
    /// thread can never be joined) and the error says so.
    pub fn load(
        artifact: Artifact,
        load_path: PathBuf,
        name: Option<&str>,
        config: &RuntimeSettings,
        metrics: &dyn RequestMetrics,
    ) -> Result<Loaded> {
        let installed_at = SystemTime::now();
        let began = Instant::now();
        let shared = Arc::new(Shared::new()?);
        let (manifest_tx, manifest_rx) = mpsc::sync_channel::<Result<(Manifest, Counters)>>(1);
        let (go_tx, go_rx) = mpsc::sync_channel::<bool>(1);
        let (done_tx, done_rx) = mpsc::sync_channel::<()>(1);
        let (started_tx, started_rx) = mpsc::sync_channel(1);
        *lock(&shared.started) = Some(started_tx);

        let thread_shared = Arc::clone(&shared);
        let thread_path = load_path.clone();
        let max_level = config.module_log_level;
        let thread_name = next_thread_name();
        // Before the thread exists, so a crash in the library's constructors is attributed too.
        let crash_slot = crash::register(&thread_name, &artifact.sha256, name);
        let thread = thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let _done = DoneGuard(done_tx);
                let _tid = InstanceThread::register();
                // Room for the crash handler (and Rust's stack-overflow report) after an overflow.
                let _signal_stack = crash::AlternateStack::install();
                let (library, manifest) = match loader::open(&thread_path) {
                    Ok(opened) => opened,
                    Err(e) => {
                        let _ = manifest_tx.send(Err(e));
                        return None;
                    }
                };
                crash_slot.set_library(library.load_base());
                let _ = manifest_tx.send(Ok((manifest, library.counters())));
                if go_rx.recv() == Ok(true) {
                    library.run(host::host_for(&thread_shared, max_level));
                }
                // Dropping the sender tells a waiting starter that no start report will come.
                lock(&thread_shared.started).take();
                Some(library)
            })
            .inspect_err(|_| crash_slot.release())
            .map_err(Error::io("spawning a module thread"))?;
        // The slot of a library that failed to load is freed once the loader forgot it.
        let release_unless_loaded = |path: &std::path::Path| {
            if !loader::is_loaded(path) {
                crash_slot.release();
            }
        };

        let (manifest, counters) = match manifest_rx.recv_timeout(config.start_timeout) {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                let _ = thread.join();
                release_unless_loaded(&load_path);
                return Err(e);
            }
            Err(RecvTimeoutError::Timeout) => {
                // A library constructor that never returns: its thread can never be joined,
                // and it holds the dynamic loader's lock.
                loader::mark_wedged(&load_path);
                // Keep both ends of the hand-over channels too: if the initialiser returned
                // now, the thread's `(manifest, counters)` would sit in the channel, and
                // dropping the receiver here would drop the last share of the library (a
                // `dlclose`, and its destructors) on this base thread. Kept, the thread waits
                // for `go` forever, holding its library, as `InitialisationHung` says.
                std::mem::forget(manifest_rx);
                std::mem::forget(go_tx);
                pin_forever(shared, None, Pin::InitialisationHung);
                return Err(Error::StartTimeout {
                    id: Subject::Library(load_path),
                    timeout_ms: config.start_timeout.as_millis() as u64,
                    outcome: StartOutcome::InitialisationHung,
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                let message = match thread.join() {
                    Err(panic) => format!("the loader panicked: {}", panic_text(panic.as_ref())),
                    Ok(_) => "the loader ended without reporting".into(),
                };
                release_unless_loaded(&load_path);
                return Err(Error::LoadFailed { path: load_path, message });
            }
        };

        let id = ModuleId {
            name: name.map_or_else(|| manifest.name.clone(), str::to_owned),
            version: manifest.version,
        };
        crash_slot.identify(&id.name, &id.version.to_string(), &artifact.sha256, name);
        let _ = shared.tags.set(id.clone());
        let instance = Arc::new(Instance {
            duration: metrics.request_duration(&id),
            id,
            package: manifest.name,
            artifact,
            interface: manifest.interface,
            declared_limits: manifest.limits,
            provides: manifest.provides,
            requires: manifest.requires,
            load_path,
            installed_at,
            install_micros: AtomicU64::new(0),
            load_micros: began.elapsed().as_micros() as u64,
            start_micros: AtomicU64::new(0),
            thread_name: thread_name.clone(),
            heap_peak: AtomicU64::new(0),
            latency: Latency::new(),
            shared,
            history: Mutex::new(Vec::new()),
            worker: Mutex::new(Some(Worker { thread, done: done_rx, counters, thread_name, crash_slot })),
            leaked: Mutex::new(None),
            in_flight: Arc::new(AtomicUsize::new(0)),
            busy: AtomicBool::new(true),
            limits: ArcSwap::from_pointee(Limits::resolve(
                manifest.limits.as_ref(),
                None,
                None,
                &config.limits,
            )),
            over_memory: AtomicBool::new(false),
            memory_limit_crossings: AtomicU64::new(0),
            recent: RecentRate::new(),
            request_accounting: config.request_accounting,
            deactivated: AtomicBool::new(false),
            drain_expired: AtomicBool::new(false),
            drain_timeout_ms: AtomicU64::new(0),
            stranded: Mutex::new(None),
            probe: Mutex::new(Probe::default()),
        });
        let _ = instance.shared.me.set(Arc::downgrade(&instance));
        instance.transition(State::Installing, "install", "library loaded and checked");
        Ok(Loaded {
            instance,
            go: go_tx,
            started: started_rx,
            began,
            start_timeout: config.start_timeout,
            stop_timeout: config.stop_timeout,
        })
    }

    /// The current state.
    pub fn state(&self) -> State {
        lock(&self.history).last().map_or(State::Installing, |t| t.state)
    }

    /// Every state change so far, oldest first.
    pub fn history(&self) -> Vec<Transition> {
        lock(&self.history).clone()
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Puts an earlier incarnation's history in front of this one's (same identity, reinstalled),
    /// keeping only the last [`HISTORY_KEPT`] transitions of both.
    pub fn inherit_history(&self, earlier: Vec<Transition>) {
        let mut history = lock(&self.history);
        let mine = std::mem::replace(&mut *history, earlier);
        history.extend(mine);
        keep_recent(&mut history);
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Records a state change.
    pub fn transition(&self, state: State, reason: &str, message: &str) {
        tracing::info!(module = %self.id.name, version = %self.id.version, ?state, reason, "{message}");
        let mut history = lock(&self.history);
        history.push(Transition { state, at: now(), reason: reason.to_owned(), message: message.to_owned() });
        keep_recent(&mut history);
    }

    /// Milliseconds from the start of the install to the module reporting it had started.
    pub fn install_ms(&self) -> f64 {
        self.install_micros.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Whether the library is (or may still be) mapped: true until the unload verified in
    /// dynamic loader that it is gone (`stopped`, `broken`), and forever when `pinned`.
    pub fn is_mapped(&self) -> bool {
        !matches!(self.state(), State::Stopped | State::Broken)
    }

    /// Milliseconds the library took to open, check and initialise (on its thread).
    pub fn load_ms(&self) -> f64 {
        self.load_micros as f64 / 1000.0
    }

    /// Milliseconds the module's start hook took.
    pub fn start_ms(&self) -> f64 {
        self.start_micros.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// The module's heap right now, while its library is loaded. Also updates the peak.
    pub fn heap(&self) -> Option<HeapSnapshot> {
        let heap = lock(&self.worker).as_ref().map(|worker| worker.counters.heap())?;
        self.heap_peak.fetch_max(heap.live_bytes, Ordering::Relaxed);
        Some(heap)
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Reads the heap so the peak stays current (the registry samples every instance).
    pub fn sample_heap(&self) {
        let _ = self.heap();
    }

    /// The highest live heap seen (sampled: a spike between samples can be missed).
    pub fn heap_peak(&self) -> u64 {
        self.heap_peak.load(Ordering::Relaxed)
    }

    /// CPU time of this instance's live threads, from a [`cpu_by_thread_name`] scan.
    pub fn cpu_from(&self, by_name: &HashMap<String, CpuTime>) -> CpuTime {
        by_name.get(&self.thread_name).copied().unwrap_or_default()
    }

    /// CPU time of this instance's live threads.
    pub fn cpu(&self) -> CpuTime {
        self.cpu_from(&cpu_by_thread_name())
    }

    /// Tasks alive on the module's runtime, while its library is loaded (`None` for modules built
    /// against an interface older than 1.1).
    pub fn tasks(&self) -> Option<u64> {
        lock(&self.worker).as_ref().and_then(|worker| worker.counters.tasks())
    }

    /// The limits the base enforces on this instance.
    pub fn limits(&self) -> Limits {
        **self.limits.load()
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Replaces the enforced limits (the next request sees them).
    pub fn set_limits(&self, limits: Limits) {
        self.limits.store(Arc::new(limits));
        // Re-arm the memory action against the new limit.
        self.over_memory.store(false, Ordering::Relaxed);
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Checks the live heap against the memory soft limit: `Some` once per upward crossing
    /// (re-armed when the heap falls back under the limit).
    pub fn check_memory(&self) -> Option<MemoryCrossing> {
        let limits = self.limits.load();
        let limit = limits.memory_soft_limit_bytes?;
        let live = self.heap()?.live_bytes;
        if live <= limit {
            self.over_memory.store(false, Ordering::Relaxed);
            return None;
        }
        if self.over_memory.swap(true, Ordering::Relaxed) {
            return None;
        }
        self.memory_limit_crossings.fetch_add(1, Ordering::Relaxed);
        Some(MemoryCrossing { live_bytes: live, limit, action: limits.memory_action })
    }

    /// Whether the base took this instance out of traffic (it is not routed, even when pinned).
    pub fn is_deactivated(&self) -> bool {
        self.deactivated.load(Ordering::Relaxed)
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    pub fn set_deactivated(&self, deactivated: bool) {
        self.deactivated.store(deactivated, Ordering::Relaxed);
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Lets the memory action fire again at the next sample (its first firing could not act).
    pub fn rearm_memory_limit(&self) {
        self.over_memory.store(false, Ordering::Relaxed);
    }

    /// Whether the live heap is above the memory soft limit (as last checked).
    pub fn over_memory_limit(&self) -> bool {
        self.over_memory.load(Ordering::Relaxed)
    }

    /// How many times the live heap crossed the memory soft limit.
    pub fn memory_limit_crossings(&self) -> u64 {
        self.memory_limit_crossings.load(Ordering::Relaxed)
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Requests the module is still running though their caller got `504` long ago: more than
    /// `runaway_after_ms` since they were sent. Returns the newly found ones (and marks them).
    pub fn find_runaways(&self) -> Vec<Runaway> {
        let after = Duration::from_millis(self.limits.load().runaway_after_ms);
        let mut found = Vec::new();
        for request in lock(&self.shared.timed_out).values_mut() {
            let running = request.sent.elapsed();
            if running >= after && !request.runaway {
                request.runaway = true;
                self.shared.runaways_total.fetch_add(1, Ordering::Relaxed);
                found.push(Runaway { request: request.what.clone(), running_ms: running.as_millis() as u64 });
            }
        }
        found
    }

    /// Requests running far past their timeout right now.
    pub fn runaways(&self) -> Vec<Runaway> {
        lock(&self.shared.timed_out)
            .values()
            .filter(|request| request.runaway)
            .map(|r| Runaway { request: r.what.clone(), running_ms: r.sent.elapsed().as_millis() as u64 })
            .collect()
    }

    /// How many requests were ever reported as runaway.
    pub fn runaways_total(&self) -> u64 {
        self.shared.runaways_total.load(Ordering::Relaxed)
    }

    /// Asks the module's health hook, waiting at most `timeout`.
    pub async fn check_health(&self, timeout: Duration) -> HookHealth {
        if !matches!(self.state(), State::Active | State::Inactive) {
            return HookHealth::NotRunning;
        }
        if self.declared_limits.is_none() {
            return HookHealth::Unsupported;
        }
        let began = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let check = self.shared.health_wanted.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.wake();
        loop {
            let answered = self.shared.health_answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if let Some(answer) = lock(&self.shared.health).as_ref().filter(|a| a.check >= check) {
                return HookHealth::Answered {
                    status: answer.status.into(),
                    message: answer.message.clone(),
                    ms: began.elapsed().as_secs_f64() * 1000.0,
                };
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return HookHealth::NoAnswer { timeout_ms: timeout.as_millis() as u64 };
            }
        }
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// One step of the background health probe behind the unhealthy policy. It never waits for
    /// the module: a step either asks the health hook (at most once per `interval`), or reads
    /// the answer to the check it asked for earlier, counting a check unanswered after
    /// `timeout` as unhealthy (as `/api/v1/health` does). Each finished probe judges the
    /// instance like `/api/v1/health` (hook, recent 5xx rate, runaways, memory). Returns `Some`
    /// once every probe for at least `grace` found it unhealthy, and starts counting again.
    pub fn probe_health(
        &self,
        interval: Duration,
        timeout: Duration,
        grace: Duration,
    ) -> Option<StayedUnhealthy> {
        let now = Instant::now();
        let mut probe = lock(&self.probe);
        let due = probe.last.is_none_or(|last| now.duration_since(last) >= interval);
        let (hook, began) = match probe.outstanding {
            // Built against an interface without a health hook: the other signals only.
            None if self.declared_limits.is_none() => {
                if !due {
                    return None;
                }
                (HookHealth::Unsupported, now)
            }
            None => {
                if due {
                    let check = self.shared.health_wanted.fetch_add(1, Ordering::SeqCst) + 1;
                    self.shared.wake();
                    probe.outstanding = Some((check, now));
                }
                return None;
            }
            Some((check, sent)) => {
                let answer = lock(&self.shared.health).as_ref().filter(|a| a.check >= check).cloned();
                let waited = now.duration_since(sent);
                match answer {
                    Some(answer) => (
                        HookHealth::Answered {
                            status: answer.status.into(),
                            message: answer.message,
                            ms: waited.as_secs_f64() * 1000.0,
                        },
                        sent,
                    ),
                    None if waited >= timeout => {
                        (HookHealth::NoAnswer { timeout_ms: timeout.as_millis() as u64 }, sent)
                    }
                    None => return None,
                }
            }
        };
        probe.outstanding = None;
        probe.last = Some(now);
        let signals = crate::health::Signals {
            hook: &hook,
            recent: self.recent.window(),
            runaways: self.runaways().len(),
            over_memory: self.over_memory_limit(),
        };
        let (status, reasons) = crate::health::assess(&signals);
        if status != ModuleHealth::Unhealthy {
            probe.unhealthy_since = None;
            return None;
        }
        let since = *probe.unhealthy_since.get_or_insert(began);
        let unhealthy_for = now.duration_since(since);
        if unhealthy_for < grace {
            return None;
        }
        probe.unhealthy_since = None;
        Some(StayedUnhealthy { for_ms: unhealthy_for.as_millis() as u64, reasons })
    }

    /// The module's heap as it was when it stopped: bytes still live then are its leak.
    pub fn heap_at_stop(&self) -> Option<HeapSnapshot> {
        *lock(&self.leaked)
    }

    /// Request counters.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            requests: self.shared.requests.load(Ordering::Relaxed),
            client_errors: self.shared.client_errors.load(Ordering::Relaxed),
            server_errors: self.shared.server_errors.load(Ordering::Relaxed),
            panics: self.shared.panics.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            recent: self.recent.window(),
            latency: self.latency.summary(),
        }
    }

    /// The cumulative latency histogram of its answered requests: `[i]` requests took at most
    /// 2^i microseconds (and more than 2^(i-1)). See [`crate::stats::Latency::counts`].
    pub fn latency_histogram(&self) -> [u64; 40] {
        self.latency.counts()
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Claims the identity for an operation; `false` when another operation holds it.
    pub fn try_begin_operation(&self) -> bool {
        !self.busy.swap(true, Ordering::AcqRel)
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Ends the operation that holds the identity.
    pub fn end_operation(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// Whether an operation (install, uninstall) holds the identity right now.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Counts a request as in flight, if the instance still takes requests. `None` means it
    /// started draining after the request picked it from the routing table: pick again. (A
    /// stop reads the in-flight count only after it moved the state to `draining`, so a request
    /// admitted here is always waited for.)
    pub fn admit(&self) -> Option<Admission<'_>> {
        let (in_flight, count) = InFlight::enter(&self.in_flight);
        matches!(self.state(), State::Active | State::Inactive).then_some(Admission {
            in_flight,
            count,
            _instance: std::marker::PhantomData,
        })
    }

    /// Reads the request body (with `read_body`, given the instance's body size limit), sends the
    /// request to the module and waits for its answer, within the instance's limits
    /// (concurrency, body size, timeout). The request counts as in flight from the start, so an
    /// uninstall's drain waits for bodies still being uploaded too. The HTTP edge owns reading
    /// the body and tagging the response; the runtime only needs `http`'s types.
    pub async fn call<B>(
        &self,
        admission: Admission<'_>,
        method: Method,
        headers: HeaderMap,
        path_and_query: String,
        read_body: impl FnOnce(u64) -> B,
    ) -> Result<http::Response<Bytes>>
    where
        B: Future<Output = Result<Bytes>>,
    {
        let limits = self.limits();
        let Admission { in_flight: counted, count: in_flight, .. } = admission;
        if let Some(limit) = limits.max_concurrent_requests
            && in_flight > limit as usize
        {
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Error::ModuleOverloaded { id: self.id.clone(), limit });
        }
        let began = Instant::now();
        let timeout = limits.request_timeout();
        // The request timeout covers the body too: a client trickling it would otherwise hold
        // this request, its concurrency slot and its connection for as long as it likes. The
        // slot (`counted`) is released when this returns.
        let deadline = tokio::time::Instant::now() + timeout;
        let body = tokio::time::timeout_at(deadline, read_body(limits.max_request_body_bytes))
            .await
            .map_err(|_| Error::RequestBodyTimeout { timeout_ms: timeout.as_millis() as u64 })??;
        let what = format!("{method} {path_and_query}");
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        // From here the request counts as in flight until the module is done with it, even if
        // this future is dropped (the client went away).
        let requests = &self.shared.mail.requests;
        if requests.expect_reply(id, PendingReply { reply, _in_flight: counted }).is_err() {
            return Err(self.unavailable("the instance has stopped"));
        }
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        requests.push(id, QueuedRequest { id, method, path_and_query, headers, body }.into());
        self.shared.wake();
        let outcome = tokio::time::timeout_at(deadline, answer).await;
        let elapsed = began.elapsed();
        if self.request_accounting {
            self.latency.record(elapsed);
            self.duration.record(elapsed.as_secs_f64());
        }
        let record = |server_error: bool| {
            if self.request_accounting {
                self.recent.record(server_error);
            }
        };
        let failed = |e: Error| {
            self.shared.server_errors.fetch_add(1, Ordering::Relaxed);
            record(true);
            Err(e)
        };
        match outcome {
            Ok(Ok(Outcome::Response(response))) => {
                let status = response.status();
                if status.is_client_error() {
                    self.shared.client_errors.fetch_add(1, Ordering::Relaxed);
                } else if status.is_server_error() {
                    self.shared.server_errors.fetch_add(1, Ordering::Relaxed);
                }
                record(status.is_server_error());
                Ok(response)
            }
            Ok(Ok(Outcome::Failed { code, message })) => {
                failed(Error::ModuleFailed { id: self.id.clone(), code, message })
            }
            Ok(Err(_)) if self.drain_expired.load(Ordering::Acquire) => failed(Error::DrainTimeout {
                id: self.id.clone(),
                timeout_ms: self.drain_timeout_ms.load(Ordering::Relaxed),
            }),
            Ok(Err(_)) => failed(self.unavailable("the instance stopped before answering")),
            Err(_) => {
                // Not taken by the module yet: it is dropped (with its body) now. Taken and still
                // unanswered: the module is running it; watch it for running away (and keep
                // counting it as in flight). Recorded inside the cancel, so an answer arriving
                // now finds the request among the timed-out ones (see `Mailbox::cancel`).
                self.shared.mail.requests.cancel(id, |found| {
                    if let Cancelled::Taken(unanswered) = found {
                        let mut timed_out = lock(&self.shared.timed_out);
                        if timed_out.len() < MAX_TRACKED_TIMEOUTS {
                            let _in_flight = unanswered._in_flight;
                            timed_out.insert(id, TimedOut { sent: began, what, runaway: false, _in_flight });
                        }
                    }
                });
                failed(Error::ModuleTimeout { id: self.id.clone(), timeout_ms: timeout.as_millis() as u64 })
            }
        }
    }

    fn unavailable(&self, reason: &str) -> Error {
        Error::ModuleUnavailable { id: Subject::Module(self.id.clone()), reason: reason.to_owned() }
    }

    /// Whether the module implements SPI `name` (any version).
    pub fn provides(&self, name: &str) -> bool {
        self.provides.iter().any(|(spi, _)| spi == name)
    }

    /// Whether the module calls SPI `name`.
    pub fn requires(&self, name: &str) -> bool {
        self.requires.iter().any(|(spi, _)| spi == name)
    }

    /// The version of SPI `name` the module implements.
    pub fn provided_version(&self, name: &str) -> Option<&Version> {
        self.provides.iter().find(|(spi, _)| spi == name).map(|(_, v)| v)
    }

    /// Whether the base may queue messages of its own (configuration, events) for the module:
    /// built against interface 1.3 or later (older ones do not take them), and not stopping.
    pub fn accepts_notifications(&self) -> bool {
        self.interface >= Version::new(1, 3, 0)
            && self.state().is_live()
            && !self.shared.stop.load(Ordering::SeqCst)
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Queues a message of the base's (`pedestal.config`, `pedestal.events`) for the module,
    /// without waiting for its answer. Returns whether it was queued.
    pub fn notify(&self, spi: &'static str, method: &'static str, payload: Vec<u8>) -> bool {
        if !self.accepts_notifications() {
            return false;
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let call = QueuedSpiCall { id, spi: spi.into(), method: method.into(), payload };
        self.shared.mail.spi_calls.push(id, call);
        self.shared.wake();
        true
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Queues the answer to the module's call `id` (dropped once the instance stopped).
    pub fn complete(&self, id: u64, status: pedestal_module_api::abi::SpiStatus, payload: Vec<u8>) {
        if self.shared.stop.load(Ordering::SeqCst) && !self.state().is_live() {
            return;
        }
        self.shared.mail.completions.push(id, SpiCompletion { id, status, payload });
        self.shared.wake();
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Keeps the module's metrics from expiring (see `ModuleMetric::touch`).
    pub fn touch_metrics(&self) {
        for metric in lock(&self.shared.module_metrics).iter() {
            metric.touch();
        }
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Lets the module's calls reach `calls`. Called before the start hook runs.
    pub fn attach(&self, calls: Weak<dyn ModuleCalls>) {
        let _ = self.shared.calls.set(calls);
    }

    /// Calls `method` of SPI `spi` on the module with serialized arguments and waits (at most
    /// `timeout`) for the serialized result. Counted as in flight, so an uninstall drains it;
    /// an instance that is not running answers `MODULE_GONE`.
    pub async fn call_spi(
        &self,
        spi: impl Into<std::borrow::Cow<'static, str>>,
        method: impl Into<std::borrow::Cow<'static, str>>,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> std::result::Result<Vec<u8>, SpiError> {
        let (spi, method) = (spi.into(), method.into());
        let gone = || SpiError::new(SpiError::MODULE_GONE, format!("{} is no longer running", self.id));
        let Some(_admission) = self.admit() else { return Err(gone()) };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let spi_calls = &self.shared.mail.spi_calls;
        if spi_calls.expect_reply(id, reply).is_err() {
            return Err(gone());
        }
        let call = QueuedSpiCall { id, spi: spi.clone(), method: method.clone(), payload };
        spi_calls.push(id, call);
        self.shared.wake();
        let outcome = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => return Err(gone()),
            Err(_) => {
                // Taken or not, the call is the module's business now: its answer finds no
                // replier and is dropped.
                spi_calls.cancel(id, drop);
                return Err(SpiError::new(
                    SpiError::TIMEOUT,
                    format!("{} did not answer {spi}.{method} within {} ms", self.id, timeout.as_millis()),
                ));
            }
        };
        use pedestal_module_api::abi::SpiStatus;
        match outcome.status {
            SpiStatus::Ok => Ok(outcome.payload),
            SpiStatus::Error => Err(pedestal_module_api::spi::decode(&outcome.payload).unwrap_or_else(|e| e)),
            SpiStatus::Unknown => Err(SpiError::new(
                SpiError::UNKNOWN_METHOD,
                format!("{} does not implement {spi}.{method}", self.id),
            )),
            // The module's panic hook already counted and logged it.
            SpiStatus::Panicked => Err(SpiError::new(
                SpiError::PANICKED,
                format!(
                    "{spi}.{method} panicked in {}: {}",
                    self.id,
                    String::from_utf8_lossy(&outcome.payload)
                ),
            )),
        }
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Drains, stops and unloads the instance, recording each step. Returns the final state:
    /// `stopped`, or `pinned` with the reason in the history.
    pub fn stop(&self, config: &RuntimeSettings, reason: &str) -> State {
        self.stop_draining(config, config.drain_timeout, reason)
    }

    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// [`Instance::stop`], waiting at most `drain` for the requests in flight (a restart drains
    /// briefly: the instance it stops is misbehaving).
    pub fn stop_draining(&self, config: &RuntimeSettings, drain: Duration, reason: &str) -> State {
        if self.state() != State::Draining {
            self.transition(State::Draining, reason, "no new requests; waiting for in-flight ones");
        }
        let deadline = Instant::now() + drain;
        while self.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let left = self.in_flight.load(Ordering::Acquire);
        if left > 0 {
            self.drain_timeout_ms.store(drain.as_millis() as u64, Ordering::Relaxed);
            self.drain_expired.store(true, Ordering::Release);
        }
        let message = if left == 0 {
            "drained; asking the module to stop".to_owned()
        } else {
            format!(
                "drain timeout ({} ms) with {left} requests in flight; they get 503; asking the module \
                 to stop",
                drain.as_millis()
            )
        };
        self.transition(State::Stopping, reason, &message);
        let (state, message) = self.teardown(config.stop_timeout);
        self.transition(state, reason, &message);
        self.end_operation();
        state
    }

    /// Stops the module's thread, closes the library and checks that it is gone.
    /// Returns `Stopped` or `Pinned`, with a message. A pinned instance is remembered in
    /// [`PINNED`], so it stays visible after another instance takes its identity.
    fn teardown(&self, stop_timeout: Duration) -> (State, String) {
        let (state, message) = self.close_library(stop_timeout);
        if state == State::Pinned
            && let Some(me) = self.shared.me.get().and_then(|me| me.upgrade())
        {
            let mut pinned = lock(&PINNED);
            if !pinned.iter().any(|other| Arc::ptr_eq(other, &me)) {
                pinned.push(me);
            }
        }
        (state, message)
    }

    /// The steps of [`Instance::teardown`].
    fn close_library(&self, stop_timeout: Duration) -> (State, String) {
        self.shared.request_stop();
        // Out of the mutex for the whole stop, so readers (the API's heap view) never wait on it.
        let Some(worker) = lock(&self.worker).take() else {
            return (self.state(), "already unloaded".into());
        };
        let crash_slot = worker.crash_slot;
        if let Err(RecvTimeoutError::Timeout) = worker.done.recv_timeout(stop_timeout) {
            // Module code is still running: closing the library would pull the code out from
            // under it. Keep everything, forever.
            *lock(&self.worker) = Some(worker);
            pin_forever(Arc::clone(&self.shared), None, Pin::ThreadStillRunning);
            return (
                State::Pinned,
                format!(
                    "the module's thread was still running {} ms after stop was requested \
                     (a start or stop hook that never returns, or a blocking call); \
                     the library stays loaded",
                    stop_timeout.as_millis()
                ),
            );
        }
        let Worker { thread, counters, thread_name, .. } = worker;
        let library = thread.join().ok().flatten();
        // After the join, so what the thread's exit-time destructors free is not counted.
        let heap = counters.heap();
        *lock(&self.leaked) = Some(heap);
        // The counters share the library. When the thread handed it back they go now, so its
        // unload below closes it; when the thread unwound and dropped it on its way out, they
        // hold the last share, and are closed (or kept) in its place.
        let orphaned = match library {
            Some(_) => {
                drop(counters);
                None
            }
            None => Some(counters),
        };
        self.shared.close();
        let pinned = |library: Option<Library>, orphaned: Option<Counters>, why: Pin, reason: String| {
            // Kept like the library: the thread's code may still run.
            std::mem::forget(orphaned);
            pin_forever(Arc::clone(&self.shared), library, why);
            (State::Pinned, reason)
        };
        let stragglers = threads_named(&thread_name);
        if stragglers > 0 {
            let message = format!(
                "{stragglers} thread(s) the module started are still running, so the library \
                 stays loaded (join module threads in the stop hook)"
            );
            // The one pin that can end by itself: the base looks again every second and
            // finishes the unload once those threads are gone (see `finish_stranded_unloads`).
            if let (Some(library), Some(me)) = (library, self.shared.me.get().and_then(|me| me.upgrade())) {
                *lock(&self.stranded) = Some(Stranded { library, thread_name, crash_slot });
                lock(&STRANDED).push(me);
                return (State::Pinned, format!("{message}; it is unloaded once they end"));
            }
            return pinned(None, orphaned, Pin::ThreadsLeftRunning, message);
        }
        if let Some(wedged) = loader::wedged() {
            return pinned(
                library,
                orphaned,
                Pin::LoaderWedged,
                format!(
                    "not closed: the initialisation of {} never returned and holds the dynamic \
                     loader's lock, so dlclose would block; restart the base",
                    wedged.display()
                ),
            );
        }
        let Some(library) = library else {
            // The thread unwound and dropped the library on its way out; closing the counters'
            // share closes it, off this thread like any unload.
            let closed = orphaned.map_or(Unload::Unmapped, |c| c.unload(&self.load_path, stop_timeout));
            if closed != Unload::Unmapped {
                pin_forever(Arc::clone(&self.shared), None, Pin::StillLoaded);
                return (State::Pinned, "the module's thread failed and its library is still loaded".into());
            }
            crash_slot.release();
            return (State::Stopped, "the module's thread failed; its library was closed".into());
        };
        match library.unload(&self.load_path, stop_timeout) {
            Unload::Unmapped => {
                loader::return_freed_memory();
                crash_slot.release();
            }
            Unload::StillLoaded => {
                // The module's code may still be called from a thread it left running.
                pin_forever(Arc::clone(&self.shared), None, Pin::StillLoaded);
                return (
                    State::Pinned,
                    "the library is still loaded after dlclose: a thread the module started (and \
                     renamed) is still alive and holds a thread-local destructor in it (join module \
                     threads in the stop hook)"
                        .into(),
                );
            }
            Unload::LoaderBusy => {
                pin_forever(Arc::clone(&self.shared), None, Pin::LoaderBusy);
                return (
                    State::Pinned,
                    format!(
                        "the dynamic loader did not answer within {} ms (another library's \
                         initialisation holds its lock); the library may stay loaded",
                        stop_timeout.as_millis()
                    ),
                );
            }
        }
        let message = format!(
            "unloaded and unmapped; {} heap bytes in {} allocations were still live (leaked)",
            heap.live_bytes,
            heap.allocations.saturating_sub(heap.frees)
        );
        (State::Stopped, message)
    }
}

impl Instance {
    #[doc(hidden)] // for pedestal-base only: not part of the public face
    /// Looks again at every instance pinned only because threads the module started were still
    /// running at its unload: once none of them is left, closes the library, checks that it is
    /// gone (as [`Instance::teardown`] does) and records `pinned → stopped`. Returns the
    /// instances whose unload finished (their load paths can be reused). The base's limit
    /// watcher calls it about once a second; it does nothing when nothing is stranded.
    pub fn finish_stranded_unloads(unload_timeout: Duration) -> Vec<Arc<Instance>> {
        let mut unloaded = Vec::new();
        // Pinned because the instance thread was still running at the stop timeout (a handler
        // that spun or blocked past it): once that thread has returned after all, the unload
        // can go on where it stopped — with the same checks, so threads the module left still
        // running strand it instead.
        let outlived: Vec<Arc<Instance>> = lock(&PINNED)
            .iter()
            .filter(|i| lock(&i.worker).as_ref().is_some_and(|w| w.thread.is_finished()))
            .cloned()
            .collect();
        for instance in outlived {
            let (state, message) = instance.close_library(unload_timeout);
            let message = format!("its thread returned after the stop timeout; {message}");
            instance.transition(state, "unpinned", &message);
            if state == State::Stopped {
                lock(&PINNED).retain(|other| !Arc::ptr_eq(other, &instance));
                unloaded.push(instance);
            }
        }
        let candidates: Vec<Arc<Instance>> = lock(&STRANDED).clone();
        for instance in candidates {
            let Some(state) = instance.finish_unload(unload_timeout) else { continue };
            lock(&STRANDED).retain(|other| !Arc::ptr_eq(other, &instance));
            if state == State::Stopped {
                lock(&PINNED).retain(|other| !Arc::ptr_eq(other, &instance));
                unloaded.push(instance);
            }
        }
        unloaded
    }

    /// Finishes the unload of a stranded instance if its module's threads have ended: `None`
    /// while they have not (or while the dynamic loader is wedged), else the final state.
    fn finish_unload(&self, unload_timeout: Duration) -> Option<State> {
        let mut stranded = lock(&self.stranded);
        let thread_name = &stranded.as_ref()?.thread_name;
        if threads_named(thread_name) > 0 || loader::wedged().is_some() {
            return None;
        }
        let Stranded { library, crash_slot, .. } = stranded.take()?;
        drop(stranded);
        let (state, message) = match library.unload(&self.load_path, unload_timeout) {
            Unload::Unmapped => {
                loader::return_freed_memory();
                // Its code is gone: a crash can no longer be its.
                crash_slot.release();
                let heap = lock(&self.leaked).unwrap_or_default();
                let message = format!(
                    "the threads the module started have ended; unloaded and unmapped; {} heap bytes \
                     in {} allocations were still live at its stop (leaked)",
                    heap.live_bytes,
                    heap.allocations.saturating_sub(heap.frees)
                );
                (State::Stopped, message)
            }
            Unload::StillLoaded => {
                // A renamed thread of the module may still call into it: keep its state forever.
                pin_forever(Arc::clone(&self.shared), None, Pin::StillLoaded);
                (
                    State::Pinned,
                    "the threads the module started have ended, but the library is still loaded after \
                     dlclose (a renamed thread of the module holds a thread-local destructor in it)"
                        .to_owned(),
                )
            }
            Unload::LoaderBusy => {
                pin_forever(Arc::clone(&self.shared), None, Pin::LoaderBusy);
                (
                    State::Pinned,
                    format!(
                        "the threads the module started have ended, but the dynamic loader did not \
                         answer within {} ms; the library may stay loaded",
                        unload_timeout.as_millis()
                    ),
                )
            }
        };
        self.transition(state, "unpinned", &message);
        Some(state)
    }
}

/// Why an instance's library and shared state are kept for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pin {
    /// The library's initialisation never returned: its thread can never be joined, and it
    /// holds the dynamic loader's lock.
    InitialisationHung,
    /// The instance thread was still running module code at the stop timeout.
    ThreadStillRunning,
    /// Threads the module started were still running and the library could not be kept for a
    /// later unload.
    ThreadsLeftRunning,
    /// Another library's initialisation holds the dynamic loader's lock, so `dlclose` would
    /// block.
    LoaderWedged,
    /// The library is still loaded after `dlclose` (or after its thread unwound): a thread may
    /// still run its code.
    StillLoaded,
    /// The dynamic loader did not answer the unload in time.
    LoaderBusy,
}

/// The one way the base gives up on unloading: `shared` (the target of the module's
/// `HostCtx`) and `library`, if the base still has it, are leaked, so code of the module still
/// running on some thread never calls into freed state or unmapped code. Every other path drops
/// both in order: shared state first, the library last.
fn pin_forever(shared: Arc<Shared>, library: Option<Library>, reason: Pin) {
    tracing::debug!(?reason, "keeping a module's library and state for the life of the process");
    std::mem::forget(library);
    std::mem::forget(shared);
}

/// Every instance that ended `pinned` and was not unloaded since, whether or not the registry
/// still lists it: after a restart or a reinstall of its identity the registry holds the new
/// instance only, but the old one's threads may still run (a spinning handler burns a core).
pub fn pinned_instances() -> Vec<Arc<Instance>> {
    lock(&PINNED).clone()
}

static PINNED: Mutex<Vec<Arc<Instance>>> = Mutex::new(Vec::new());

/// What an instance pinned by its module's threads keeps until they end.
struct Stranded {
    /// Still open: closing it would unmap code those threads run.
    library: Library,
    /// The instance thread's name, which the module's unnamed threads inherit.
    thread_name: String,
    /// Its slot in the crash table: those threads may still crash in its code.
    crash_slot: CrashSlot,
}

/// Instances whose library is [`Stranded`]. Holding them here keeps the library and the state
/// its callbacks use alive even after the registry forgot the instance (an uninstall of a
/// pinned instance, or a reinstall of its identity), so it is never closed under a thread.
static STRANDED: Mutex<Vec<Arc<Instance>>> = Mutex::new(Vec::new());

impl Shared {
    fn new() -> Result<Self> {
        Ok(Self {
            tags: OnceLock::new(),
            log: OnceLock::new(),
            doorbell: Doorbell::new(EventFd::new().map_err(Error::io("creating an eventfd"))?),
            stop: AtomicBool::new(false),
            mail: Mail::default(),
            started: Mutex::new(None),
            next_id: AtomicU64::new(1),
            requests: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            health_wanted: AtomicU64::new(0),
            health_taken: AtomicU64::new(0),
            health: Mutex::new(None),
            health_answered: Notify::new(),
            timed_out: Mutex::new(HashMap::new()),
            runaways_total: AtomicU64::new(0),
            calls: OnceLock::new(),
            me: OnceLock::new(),
            module_metrics: Mutex::new(Vec::new()),
        })
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Tells the module there is work (see [`Doorbell::wake`]).
    pub(crate) fn wake(&self) {
        self.doorbell.wake();
    }

    /// Whether the module has anything to do: a message, a stop request or a health check.
    pub(crate) fn has_work(&self) -> bool {
        self.mail.has_work()
            || self.stop.load(Ordering::SeqCst)
            || self.health_wanted.load(Ordering::SeqCst) > self.health_taken.load(Ordering::SeqCst)
    }

    /// Refuses new requests and answers queued and pending ones with `503`.
    fn close(&self) {
        self.mail.close();
        lock(&self.timed_out).clear();
    }
}

/// A process-unique name for an instance thread (at most 15 bytes, the Linux limit).
fn next_thread_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("pdl-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// How many live threads of this process are named `name`. Instance threads are skipped
/// without reading their names (they are known), so this stays cheap with many instances.
fn threads_named(name: &str) -> usize {
    let instance_threads = lock(&INSTANCE_THREADS);
    task_ids()
        .iter()
        .filter(|tid| !tid.parse::<u32>().is_ok_and(|tid| instance_threads.contains(&tid)))
        .filter_map(|tid| task_stat(tid))
        // A thread already exiting does not count: `pthread_join` returns before it is gone.
        .filter(|task| task.name == name && !task.exiting())
        .count()
}

/// Thread ids of the live instance threads.
static INSTANCE_THREADS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Keeps the calling instance thread's id in [`INSTANCE_THREADS`] while it lives.
struct InstanceThread(Option<u32>);

impl InstanceThread {
    fn register() -> Self {
        // `/proc/thread-self` links to `<pid>/task/<tid>`.
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|link| link.file_name()?.to_str()?.parse::<u32>().ok());
        if let Some(tid) = tid {
            lock(&INSTANCE_THREADS).insert(tid);
        }
        Self(tid)
    }
}

impl Drop for InstanceThread {
    fn drop(&mut self) {
        if let Some(tid) = self.0 {
            lock(&INSTANCE_THREADS).remove(&tid);
        }
    }
}

/// A request counted as in flight on an instance that takes requests (see [`Instance::admit`]).
pub struct Admission<'a> {
    in_flight: InFlight,
    count: usize,
    _instance: std::marker::PhantomData<&'a Instance>,
}

/// Counts a request as in flight for as long as it lives (it may outlive the caller's future:
/// see [`PendingReply`]).
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Enters, returning the guard and the number in flight including this one.
    fn enter(counter: &Arc<AtomicUsize>) -> (Self, usize) {
        let now = counter.fetch_add(1, Ordering::AcqRel) + 1;
        (Self(Arc::clone(counter)), now)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

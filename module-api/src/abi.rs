//! The Pedestal ABI: every type that crosses between the base and a module, in one place.
//!
//! Read this file the way you would read Envoy's `abi.h`. It is grouped as
//! **types**, **module entry points** (the root module the base loads) and **host callbacks**
//! (functions the base gives the module).
//!
//! # Trust
//! A module runs inside the base process with the base's privileges. The ABI protects the base
//! from *mistakes* (wrong version, a panic, a stuck start), not from malice: a module can do
//! anything the base can.
//!
//! # Versioning
//! The interface version is this crate's version ([`INTERFACE_VERSION`]). The base loads a module
//! built against the same major version and any minor version, older or newer. Changes within a
//! major version are append-only: new host callbacks and new root-module fields go *after* the
//! `#[sabi(last_prefix_field)]` field of their prefix type and are read as `Option`s; plain
//! structs and enums in this file never change within a major version. The tidy test in
//! `base/tests/tidy.rs` records a hash of this file: changing it without updating that hash
//! (and this crate's version, and `docs/abi.md`) fails `cargo test`.
//!
//! # Layers
//! This file is the bottom layer of the crate: it imports nothing from it. Everything else
//! (the wire encoding, host access, calls, services, the runtime, the author's API) builds on
//! it; `module-api/tests/layers.rs` keeps the imports pointing one way.
//!
//! # Threads
//! The base calls [`ModuleRoot::run`] exactly once per loaded library, on a thread the base
//! created for that module instance; all module code runs on that thread or on threads the
//! module itself starts from it and joins before `run` returns. Host callbacks may be called
//! from any module thread unless their documentation says otherwise.
//!
//! # Ownership
//! Nothing allocated on one side is ever freed on the other. Data passed in either direction is
//! *borrowed* for the duration of a call (or, for [`RequestView`], until the next
//! [`HostApi::next_request`]); the receiver copies what it keeps.

use std::{
    ffi::c_void,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{ROption, RSlice, RStr},
};

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// The interface version this crate defines, `major.minor.patch`.
pub const INTERFACE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A data-only symbol every module exports as `pedestal_interface_stamp`.
///
/// The base reads it with `dlsym` before it calls into the library (only the library's ELF
/// constructors have run, as part of `dlopen`, on the instance's thread), to tell a Pedestal
/// module from any other shared library and to compare interface versions before the layout
/// check.
/// Owned by the module's library; valid while the library is loaded.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceStamp {
    /// Always [`InterfaceStamp::MAGIC`].
    pub magic: [u8; 8],
    /// Major interface version the module was built against.
    pub major: u32,
    /// Minor interface version the module was built against.
    pub minor: u32,
    /// Patch interface version the module was built against.
    pub patch: u32,
}

impl InterfaceStamp {
    /// The magic bytes that open every stamp.
    pub const MAGIC: [u8; 8] = *b"PEDESTAL";
    /// The NUL-terminated symbol name the stamp is exported under.
    pub const SYMBOL: &'static [u8] = b"pedestal_interface_stamp\0";
    /// The stamp of the interface this crate defines.
    pub const CURRENT: Self = Self::new(
        parse_u32(env!("CARGO_PKG_VERSION_MAJOR")),
        parse_u32(env!("CARGO_PKG_VERSION_MINOR")),
        parse_u32(env!("CARGO_PKG_VERSION_PATCH")),
    );

    /// A stamp for the given version (tests use it to build modules that claim other versions).
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self { magic: Self::MAGIC, major, minor, patch }
    }
}

const fn parse_u32(digits: &str) -> u32 {
    let bytes = digits.as_bytes();
    let mut value = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

/// Severity of a forwarded log record. Exhaustive: it never grows.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Normal operation.
    Info = 3,
    /// Detail for developers.
    Debug = 4,
    /// Very fine detail.
    Trace = 5,
}

/// A module's own view of its health, as its health hook reports it. Exhaustive: it never grows.
/// Since 1.1.0.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HealthStatus {
    /// Working normally.
    Healthy = 1,
    /// Working, but something needs attention.
    Degraded = 2,
    /// Not working.
    Unhealthy = 3,
}

/// What the base does when a module's live heap crosses its memory soft limit. Exhaustive: it
/// never grows. Since 1.1.0.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryAction {
    /// Not declared: the base's default applies.
    #[default]
    Unset = 0,
    /// Log a warning and count it in a metric.
    Log = 1,
    /// Stop routing traffic to the instance (it stays loaded, `inactive`).
    Deactivate = 2,
    /// Stop the instance and start a fresh one from the same artifact.
    Restart = 3,
}

/// The limits a module declares for itself: the resource section of its manifest. The base reads
/// them at load time (before the start hook runs); its configuration and operations API can
/// override each one. Zero (or [`MemoryAction::Unset`]) means "not declared". Frozen since 1.1.0.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModuleLimits {
    /// Most requests inside the module at once; the excess is refused with `503`.
    pub max_concurrent_requests: u32,
    /// What crossing `memory_soft_limit_bytes` triggers.
    pub memory_action: MemoryAction,
    /// How long a request may take before the caller gets `504`.
    pub request_timeout_ms: u64,
    /// Largest request body the module accepts; a larger one gets `413`.
    pub max_request_body_bytes: u64,
    /// Live heap bytes above which `memory_action` is taken.
    pub memory_soft_limit_bytes: u64,
}

impl ModuleLimits {
    /// No limits declared.
    pub const fn new() -> Self {
        Self {
            max_concurrent_requests: 0,
            memory_action: MemoryAction::Unset,
            request_timeout_ms: 0,
            max_request_body_bytes: 0,
            memory_soft_limit_bytes: 0,
        }
    }

    /// Declares the most requests the module handles at once.
    pub const fn max_concurrent_requests(mut self, requests: u32) -> Self {
        self.max_concurrent_requests = requests;
        self
    }

    /// Declares how long a request may take, in milliseconds.
    pub const fn request_timeout_ms(mut self, ms: u64) -> Self {
        self.request_timeout_ms = ms;
        self
    }

    /// Declares the largest request body the module accepts, in bytes.
    pub const fn max_request_body_bytes(mut self, bytes: u64) -> Self {
        self.max_request_body_bytes = bytes;
        self
    }

    /// Declares a memory soft limit (live heap bytes) and what crossing it triggers.
    pub const fn memory_soft_limit(mut self, bytes: u64, action: MemoryAction) -> Self {
        self.memory_soft_limit_bytes = bytes;
        self.memory_action = action;
        self
    }
}

/// Task counters of one module library, kept by the SDK's runtime in the library's static
/// memory; the base only reads them (atomic loads). Frozen since 1.1.0.
#[repr(C)]
#[derive(StableAbi, Debug, Default)]
pub struct TaskCounters {
    /// Tasks alive on the module's runtime (request handlers and the module's own tasks),
    /// updated each time the module's request loop turns and each time a request finishes.
    pub alive: AtomicU64,
}

/// How many shards a module's [`HeapCounters`] are split into.
pub(crate) const HEAP_SHARDS: usize = 16;

/// One thread-group's share of a module's heap counters, alone on its cache line. Frozen since
/// 1.0.0.
#[repr(C, align(64))]
#[derive(StableAbi, Debug)]
pub struct HeapShard {
    allocated_bytes: AtomicU64,
    freed_bytes: AtomicU64,
    allocations: AtomicU64,
    frees: AtomicU64,
}

impl HeapShard {
    const fn new() -> Self {
        Self {
            allocated_bytes: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
            frees: AtomicU64::new(0),
        }
    }
}

/// Heap counters of one module library, kept by the SDK's counting allocator in the library's
/// static memory. The base reads them through [`ModuleRoot::heap`] with atomic loads only
/// ([`HeapCounters::snapshot`]). Frozen since 1.0.0.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct HeapCounters {
    shards: [HeapShard; HEAP_SHARDS],
}

/// A point-in-time sum of a module's heap counters. Not an ABI type: the base computes it on
/// its side of the boundary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapSnapshot {
    /// Bytes allocated and not yet freed.
    pub live_bytes: u64,
    /// Total bytes ever allocated.
    pub allocated_bytes: u64,
    /// Number of allocations ever made.
    pub allocations: u64,
    /// Number of frees ever made.
    pub frees: u64,
}

impl HeapCounters {
    /// Zeroed counters.
    pub const fn new() -> Self {
        Self { shards: [const { HeapShard::new() }; HEAP_SHARDS] }
    }

    /// Sums the shards. Concurrent updates may be half-seen; the numbers settle when the
    /// module is quiet.
    pub fn snapshot(&self) -> HeapSnapshot {
        let mut s = HeapSnapshot::default();
        let mut freed = 0u64;
        for shard in &self.shards {
            s.allocated_bytes += shard.allocated_bytes.load(Relaxed);
            freed += shard.freed_bytes.load(Relaxed);
            s.allocations += shard.allocations.load(Relaxed);
            s.frees += shard.frees.load(Relaxed);
        }
        s.live_bytes = s.allocated_bytes.saturating_sub(freed);
        s
    }

    /// Counts an allocation of `bytes` in shard `shard` (the allocating thread's).
    pub(crate) fn record_alloc(&self, shard: usize, bytes: usize) {
        let shard = &self.shards[shard % HEAP_SHARDS];
        shard.allocated_bytes.fetch_add(bytes as u64, Relaxed);
        shard.allocations.fetch_add(1, Relaxed);
    }

    /// Counts a free of `bytes` in shard `shard` (the freeing thread's).
    pub(crate) fn record_free(&self, shard: usize, bytes: usize) {
        let shard = &self.shards[shard % HEAP_SHARDS];
        shard.freed_bytes.fetch_add(bytes as u64, Relaxed);
        shard.frees.fetch_add(1, Relaxed);
    }
}

impl Default for HeapCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// One SPI a module implements: its name and the semver version of its declaration. Frozen
/// since 1.2.0.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct SpiDecl {
    /// The SPI's name, e.g. `ranker`.
    pub name: RStr<'static>,
    /// The version of the SPI declaration the module was built against, e.g. `1.1.0`.
    pub version: RStr<'static>,
}

impl SpiDecl {
    /// A declaration.
    pub const fn new(name: &'static str, version: &'static str) -> Self {
        Self { name: RStr::from_str(name), version: RStr::from_str(version) }
    }
}

/// How a module answered an SPI call. Exhaustive: it never grows. Since 1.2.0.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpiStatus {
    /// The payload is the method's serialized `Ok` value.
    Ok = 0,
    /// The payload is a serialized `SpiError` (the implementation's error, or a bad payload).
    Error = 1,
    /// The module does not implement that SPI or method (the caller may fall back to the
    /// method's default).
    Unknown = 2,
    /// The implementation panicked; the payload is the panic message.
    Panicked = 3,
}

/// An SPI call handed to the module by [`HostApi::next_spi_call`]. Owned by the base; valid
/// until the module's next call to `next_spi_call` on the same instance, and only on the thread
/// that made the call: the module copies it at once. Since 1.2.0.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct SpiCallView<'a> {
    /// Identifies the call in [`HostApi::spi_reply`].
    pub id: u64,
    /// The SPI's name.
    pub spi: RStr<'a>,
    /// The method's name.
    pub method: RStr<'a>,
    /// The serialized arguments.
    pub payload: RSlice<'a, u8>,
}

/// A call from a module to the base, handed to [`HostApi::call`]: a method of an SPI another
/// module implements, or of one of the base's own services. Borrowed for the duration of the
/// call (the base copies it). Since 1.3.0.
///
/// The base's services are reached like SPIs under reserved names (see
/// [`RESERVED_SPI_PREFIX`]): `pedestal.kv` (the module's key-value namespace), `pedestal.events`
/// (publish and subscribe) and `pedestal.spis` (which modules implement an SPI). Their methods
/// and payloads are private to this crate's SDK and the base, which are released together.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct ServiceCall<'a> {
    /// Chosen by the module, unique among its calls in flight; the completion carries it back.
    pub id: u64,
    /// The SPI's name, or a base service's.
    pub service: RStr<'a>,
    /// The version of the SPI declaration the caller was built against (empty for the base's
    /// services): the base refuses an implementation of another major version.
    pub version: RStr<'a>,
    /// The method's name.
    pub method: RStr<'a>,
    /// The implementing module's name; empty for the one the base picks (the first, by module
    /// name, of the compatible implementations).
    pub target: RStr<'a>,
    /// The serialized arguments.
    pub payload: RSlice<'a, u8>,
}

/// The answer to a [`ServiceCall`], handed to the module by [`HostApi::next_completion`]. Owned
/// by the base; valid until the module's next call to `next_completion` on the same instance,
/// and only on the thread that made the call: the module copies it at once. Since 1.3.0.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The id of the [`ServiceCall`] answered.
    pub id: u64,
    /// How it went; `Error` carries a serialized `SpiError`.
    pub status: SpiStatus,
    /// The serialized result (or error).
    pub payload: RSlice<'a, u8>,
}

/// SPI names starting with this are the base's own: modules cannot declare them, and the base
/// uses them to reach modules (as [`SpiCallView`]s: `pedestal.config`/`changed` with the
/// module's configuration, `pedestal.events`/`deliver` with an event) and modules to reach the
/// base's services (as [`ServiceCall`]s). Since 1.3.0.
pub const RESERVED_SPI_PREFIX: &str = "pedestal.";

/// What a module metric measures. Exhaustive: it never grows. Since 1.3.0.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic total: each record adds its value.
    Counter = 1,
    /// A level: each record sets it.
    Gauge = 2,
    /// A distribution: each record is one observation.
    Histogram = 3,
}

/// An opaque pointer to the base's state for one module instance.
///
/// Owned by the base; valid from the moment `run` is called until the base has joined the
/// instance's thread (and forever if the instance ends up pinned). Only ever passed back to
/// host callbacks; a module never dereferences it.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCtx(pub *const c_void);

// SAFETY: `HostCtx` is an opaque token: the module never dereferences it, and the base's state
// behind it is `Sync` and outlives every module thread the base can see: the instance thread is
// joined first, threads it started are found by their inherited name, and threads that keep the
// library mapped are found after `dlclose`; in each of those cases the state is kept forever.
unsafe impl Send for HostCtx {}
// SAFETY: see the `Send` impl above.
unsafe impl Sync for HostCtx {}

/// One HTTP header. Borrowed from whoever built the surrounding view.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Header<'a> {
    /// Lower-case header name.
    pub name: RStr<'a>,
    /// Raw header value.
    pub value: RSlice<'a, u8>,
}

/// A request handed to the module by [`HostApi::next_request`].
///
/// Owned by the base. Valid until the module's next call to `next_request` on the same
/// instance, and only on the thread that made the call: the module copies it at once.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Identifies the request in [`HostApi::respond`] and [`HostApi::fail`].
    pub id: u64,
    /// The HTTP method, e.g. `GET`.
    pub method: RStr<'a>,
    /// Path (with the module's mount prefix removed) and query, e.g. `/hello?name=x`.
    pub path_and_query: RStr<'a>,
    /// Request headers.
    pub headers: RSlice<'a, Header<'a>>,
    /// The whole request body.
    pub body: RSlice<'a, u8>,
}

/// A response passed to [`HostApi::respond`]. Owned by the module, borrowed by the base for the
/// duration of the call (the base copies it).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    /// The id from the [`RequestView`] being answered.
    pub request_id: u64,
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: RSlice<'a, Header<'a>>,
    /// The whole response body.
    pub body: RSlice<'a, u8>,
}

/// A log record forwarded from the module's `tracing` or `log` output. Borrowed for the call.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct LogRecord<'a> {
    /// Severity.
    pub level: LogLevel,
    /// The module-side target (usually the Rust module path).
    pub target: RStr<'a>,
    /// The formatted message.
    pub message: RStr<'a>,
    /// The event's other fields, formatted as `key=value` pairs separated by spaces.
    pub fields: RStr<'a>,
}

// ---------------------------------------------------------------------------------------------
// Module entry points
// ---------------------------------------------------------------------------------------------

/// The root module every Pedestal module exports (through [`export_module!`](crate::export_module)).
///
/// Owned by the module's library; every `'static` here means "while the library is loaded".
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ModuleRootRef)))]
pub struct ModuleRoot {
    /// The module's name: its Cargo package name.
    pub name: RStr<'static>,
    /// The module's own semver version: its Cargo package version.
    pub version: RStr<'static>,
    /// The module's heap counters, maintained by its global allocator. The base only reads
    /// them (atomic loads); it never calls module code to do so.
    pub heap: &'static HeapCounters,
    /// Runs the module: builds its async runtime, calls its start hook, reports the outcome
    /// through [`HostApi::started`], serves requests until the base asks it to stop, calls its
    /// stop hook and returns once every module thread is done. Called once, on a thread the
    /// base created for this instance. Never unwinds: panics are caught inside.
    #[sabi(last_prefix_field)]
    pub run: extern "C" fn(host: Host),
    /// The limits the module declares. Since 1.1.0 (absent from older modules).
    pub limits: ModuleLimits,
    /// The module's task counters, maintained by its runtime. Since 1.1.0.
    pub tasks: &'static TaskCounters,
    /// The SPIs the module implements. Since 1.2.0.
    pub provides: RSlice<'static, SpiDecl>,
    /// The SPIs the module calls: the base installs it only when a compatible implementation
    /// runs, and refuses to unload the last implementation while it runs. Since 1.3.0.
    pub requires: RSlice<'static, SpiDecl>,
}

impl RootModule for ModuleRootRef {
    declare_root_module_statics! {ModuleRootRef}
    const BASE_NAME: &'static str = "pedestal_module";
    const NAME: &'static str = "pedestal_module";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// What the base passes to [`ModuleRoot::run`]. Copied by value; never changes shape.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct Host {
    /// The host callbacks.
    pub api: HostApiRef,
    /// The token to pass back to every callback.
    pub ctx: HostCtx,
    /// A non-blocking `eventfd` owned by the base. It becomes readable when there is work
    /// (requests or a stop request); the module waits on it with its own reactor and
    /// acknowledges with [`HostApi::ack_wake`]. The module never closes it.
    pub wake_fd: i32,
    /// The most verbose level the base wants forwarded.
    pub max_log_level: LogLevel,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("ctx", &self.ctx)
            .field("wake_fd", &self.wake_fd)
            .field("max_log_level", &self.max_log_level)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Host callbacks
// ---------------------------------------------------------------------------------------------

/// Functions the base offers the module. Owned by the base (a `'static` table).
///
/// Host code running on a module thread is fine: the base is never unloaded. Every callback
/// copies what it needs before returning and never panics across the boundary.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostApiRef)))]
pub struct HostApi {
    /// Forwards one log record; the base re-emits it tagged with the module and its version.
    pub log: extern "C" fn(ctx: HostCtx, record: &LogRecord<'_>),
    /// Reports the outcome of the start hook, once: `ok` or a message saying why not.
    pub started: extern "C" fn(ctx: HostCtx, ok: bool, message: RStr<'_>),
    /// Consumes a pending wake-up from `wake_fd`. Returns `false` when there was none
    /// (the module then clears its readiness and waits again).
    pub ack_wake: extern "C" fn(ctx: HostCtx) -> bool,
    /// Tells the base the module found no queued work and wants to sleep on `wake_fd`.
    /// Returns `true` when it may (the base will write `wake_fd` for the next work), `false`
    /// when work arrived meanwhile and the module should look again. Until the module calls
    /// this, the base assumes it is awake and does not write `wake_fd`, which keeps wake-ups
    /// (system calls and thread switches) off the path of a busy module.
    pub idle: extern "C" fn(ctx: HostCtx) -> bool,
    /// Whether the base has asked the module to stop.
    pub stop_requested: extern "C" fn(ctx: HostCtx) -> bool,
    /// Takes the next queued request, if any. Instance thread only; see [`RequestView`] for
    /// how long the view lives.
    pub next_request: extern "C" fn(ctx: HostCtx) -> ROption<RequestView<'static>>,
    /// Answers a request. Answering an unknown or already answered id is ignored.
    pub respond: extern "C" fn(ctx: HostCtx, response: &ResponseView<'_>),
    /// Fails a request with a stable error code; the base answers with its JSON error body.
    pub fail: extern "C" fn(ctx: HostCtx, request_id: u64, code: RStr<'_>, message: RStr<'_>),
    /// Reports a panic caught inside the module (message and `file:line:column`).
    #[sabi(last_prefix_field)]
    pub panicked: extern "C" fn(ctx: HostCtx, message: RStr<'_>, location: RStr<'_>),
    /// Takes the health check the base asked for, if any: returns its id (never 0), or 0 when
    /// there is none. The base writes `wake_fd` when it asks, and `idle` returns `false` while
    /// one is waiting. The module runs its health hook on its runtime and answers with
    /// [`HostApi::report_health`]. Instance thread only. Since 1.1.0.
    pub take_health_check: extern "C" fn(ctx: HostCtx) -> u64,
    /// Answers health check `check` (a stale id is ignored). Since 1.1.0.
    pub report_health: extern "C" fn(ctx: HostCtx, check: u64, status: HealthStatus, message: RStr<'_>),
    /// Takes the next queued SPI call, if any (the base writes `wake_fd` for it, and `idle`
    /// returns `false` while one is queued). Instance thread only; see [`SpiCallView`] for how
    /// long the view lives. Since 1.2.0.
    pub next_spi_call: extern "C" fn(ctx: HostCtx) -> ROption<SpiCallView<'static>>,
    /// Answers SPI call `id` (an unknown or already answered id is ignored); the base copies the
    /// payload. Since 1.2.0.
    pub spi_reply: extern "C" fn(ctx: HostCtx, id: u64, status: SpiStatus, payload: RSlice<'_, u8>),
    /// Starts a call of another module's SPI or of a base service. Never blocks: the answer
    /// comes later as a [`Completion`] with the call's id (the base writes `wake_fd`, and `idle`
    /// returns `false` while one is queued). Any module thread. Since 1.3.0.
    pub call: extern "C" fn(ctx: HostCtx, call: &ServiceCall<'_>),
    /// Takes the next completed [`ServiceCall`], if any. Instance thread only; see [`Completion`]
    /// for how long the view lives. Since 1.3.0.
    pub next_completion: extern "C" fn(ctx: HostCtx) -> ROption<Completion<'static>>,
    /// Registers a metric the base exports with the instance's `module` and `version` labels;
    /// returns its handle, or 0 when refused (a name that is not a Prometheus name, starts with
    /// `pedestal_`, or is already registered with another kind). Registering a name again
    /// returns the same series. Any module thread. Since 1.3.0.
    pub register_metric: extern "C" fn(ctx: HostCtx, kind: MetricKind, name: RStr<'_>, help: RStr<'_>) -> u64,
    /// Records `value` on metric `metric` (a counter adds it, a gauge takes it, a histogram
    /// observes it); an unknown handle is ignored. Any module thread. Since 1.3.0.
    pub record_metric: extern "C" fn(ctx: HostCtx, metric: u64, value: f64),
}

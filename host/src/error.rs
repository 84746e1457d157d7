//! The base's one error type: each variant with its context, its stable code, its HTTP status
//! and its JSON body.
//!
//! Every error leaves the base as JSON `{code, message, details}`. `code` is stable and
//! machine-readable (documented in README.md, which a tidy test keeps complete); `message` is
//! for people; `details` carries the variant's context (module, versions, limits). The answer
//! itself (status, body, headers) is built at the HTTP edge, in `error_response.rs`: this file
//! needs `http` for the status but no web framework, so every layer can return it.

use std::{fmt, path::PathBuf};

use http::StatusCode;
use serde_json::{Value, json};

pub use crate::ids::{ModuleId, State};

/// Result with the base's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the base, each with the context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An upload with no bytes.
    #[error("the upload is empty: send a module's .so file as the request body")]
    EmptyUpload,
    /// The bytes are not a loadable Pedestal module.
    #[error("not a Pedestal module: {reason}")]
    NotAModule {
        /// What gave it away.
        reason: String,
    },
    /// The module was built against an interface major version this base does not provide.
    #[error(
        "interface mismatch: the module was built against pedestal-module-api {module}, \
         this base provides {base} (the major versions must match)"
    )]
    InterfaceMismatch {
        /// The module's interface version.
        module: String,
        /// The base's interface version.
        base: String,
    },
    /// The module's ABI layout does not match the base's.
    #[error("ABI layout mismatch (module interface {module}, base interface {base}): {details}")]
    AbiMismatch {
        /// The module's interface version.
        module: String,
        /// The base's interface version.
        base: String,
        /// abi_stable's description of the difference.
        details: String,
    },
    /// `dlopen` or the root-module constructor failed.
    #[error("cannot load {path}: {message}")]
    LoadFailed {
        /// The library that failed.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The identity `name@version` is already installed and live.
    #[error("{id} is already installed")]
    AlreadyInstalled {
        /// `name@version`.
        id: ModuleId,
    },
    /// A rollback of a module with no earlier build on record.
    #[error(
        "{name} has no earlier build to roll back to (one is recorded when a switch, replace or \
         uninstall moves the traffic)"
    )]
    NoPreviousVersion {
        /// The module's name.
        name: String,
    },
    /// An uninstall that names a module but not which of its versions.
    #[error(
        "say which version of {name} to uninstall: DELETE /api/v1/modules/{name}/VERSION (running: {})",
        if running.is_empty() { "none".to_owned() } else { running.join(", ") }
    )]
    VersionRequired {
        /// The module's name.
        name: String,
        /// Its live versions.
        running: Vec<String>,
        /// The one with the traffic.
        active: Option<String>,
    },
    /// An uninstall with `keep_active=true` of the version with the traffic while others run.
    #[error(
        "{id} has the traffic and {others} other version(s) run: switch first, or uninstall \
         without keep_active=true to hand the traffic over"
    )]
    VersionActive {
        /// `name@version`.
        id: String,
        /// How many other versions run.
        others: usize,
    },
    /// Another operation on the same identity is running.
    #[error("an operation on {id} is already in progress")]
    OperationInProgress {
        /// `name@version`.
        id: ModuleId,
    },
    /// A change through the operations API of a module a fleet (or another owner) manages.
    #[error(
        "module {name} is managed by the {owner}: change it through the {owner} (or add ?force=true; \
         the {owner} may undo the change)"
    )]
    FleetOwned {
        /// The module's name.
        name: String,
        /// Who owns it (`fleet`).
        owner: String,
    },
    /// No such module or version.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// The module's start hook failed or panicked.
    #[error("{id} failed to start: {message}")]
    StartFailed {
        /// `name@version`.
        id: ModuleId,
        /// The module's message.
        message: String,
    },
    /// The module's start hook did not finish in time.
    #[error("{id} did not start within {timeout_ms} ms; it was stopped ({outcome})")]
    StartTimeout {
        /// `name@version`, or the library's path when its initialisation never returned.
        id: Subject,
        /// The start timeout.
        timeout_ms: u64,
        /// What became of the instance.
        outcome: StartOutcome,
    },
    /// A body over the configured limit.
    #[error("the body is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The body's size, or the limit plus one when the size is unknown.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A request body that did not arrive within the module's request timeout (the traffic port).
    #[error("the request body did not arrive within {timeout_ms} ms")]
    RequestBodyTimeout {
        /// The module's request timeout, which covers reading the body and the module's answer.
        timeout_ms: u64,
    },
    /// A request body arriving slower than the operations API's minimum rate (an upload).
    #[error(
        "the request body arrived slower than {min_bytes_per_second} bytes/s after a grace of {grace_ms} ms          ({received} bytes received)"
    )]
    RequestBodyTooSlow {
        /// Bytes received before the base gave up.
        received: u64,
        /// The average rate a body must keep after the grace period.
        min_bytes_per_second: u64,
        /// How long any body may take before the rate counts.
        grace_ms: u64,
    },
    /// A request head over the HTTP layer's limits, refused before any route saw it (`431`, and
    /// the connection closed).
    #[error("the request head is over the limit of {max_headers} headers or {max_head_bytes} bytes")]
    RequestHeadTooLarge {
        /// Headers a request may have.
        max_headers: usize,
        /// Bytes a request head may have.
        max_head_bytes: usize,
    },
    /// A request URI too long for the HTTP layer (`414`, and the connection closed).
    #[error("the request URI is too long")]
    UriTooLong,
    /// A request head that is not valid HTTP/1.1 (`400`, and the connection closed).
    #[error("the request head is not valid HTTP/1.1")]
    MalformedRequest,
    /// A malformed request.
    #[error("bad request: {message}")]
    BadRequest {
        /// What is wrong.
        message: String,
    },
    /// The route exists but not with this method.
    #[error("this route does not accept that method")]
    MethodNotAllowed,
    /// Missing or wrong bearer token on the operations API.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Too many wrong tokens from this client: refused without checking, for a while.
    #[error("too many failed authentications from this client; retry in {retry_after_secs} s")]
    TooManyAttempts {
        /// When the next attempt is accepted, in seconds (also the `Retry-After` header).
        retry_after_secs: u64,
    },
    /// The `Host` header names none of the names the operations API answers to (DNS rebinding).
    #[error(
        "the operations API does not answer to Host {host:?}; add it with --admin-allowed-hosts \
         if it is yours"
    )]
    HostNotAllowed {
        /// The `Host` header as sent (empty when there was none).
        host: String,
    },
    /// A browser sent the request on behalf of another site (`Origin`, `Sec-Fetch-Site`).
    #[error("cross-origin request refused: {header} is {value:?}")]
    CrossOrigin {
        /// The header that gave it away.
        header: &'static str,
        /// Its value.
        value: String,
    },
    /// The body's `Content-Type` is not one this route accepts.
    #[error("Content-Type {found:?} is not accepted here; send {expected}")]
    UnsupportedMediaType {
        /// The `Content-Type` sent (empty when there was none).
        found: String,
        /// What the route accepts.
        expected: &'static str,
    },
    /// A query string the route cannot take: unknown parameters, or values that do not parse.
    #[error("bad query string: {message}")]
    BadQuery {
        /// What is wrong.
        message: String,
        /// The parameters the route does not know, if that is what is wrong.
        unknown: Vec<String>,
    },
    /// The request's header fields add up to more than the base reads.
    #[error("the request's header fields are {size} bytes, over the limit of {limit} bytes")]
    HeadersTooLarge {
        /// Their size (names, values and separators).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The operations API token is blank or too short to resist guessing.
    #[error(
        "the operations API token from {origin} is {length} characters long (after trimming \
         whitespace): it must be at least {min}"
    )]
    AdminTokenTooShort {
        /// Where it came from (`--admin-token`, a file).
        origin: String,
        /// Its length, trimmed.
        length: usize,
        /// The shortest accepted.
        min: usize,
    },
    /// The operations API would listen beyond loopback without a token.
    #[error(
        "the operations API listens on {addr}, which is not a loopback address: \
         set --admin-token (or PEDESTAL_ADMIN_TOKEN)"
    )]
    AdminTokenRequired {
        /// The configured admin address.
        addr: String,
    },
    /// Supervised, a module crashing at every start would end the base in a crash loop before
    /// `crash_quarantine_after` crashes ever quarantined it.
    #[error(
        "--crash-quarantine-after {after} is more than the supervisor allows: it stops the base \
         after {max_crashes} worker crashes within a minute, so a module crashing at every start \
         would never be quarantined; use 1 to {max_after} (or 0 to only report crashes, which lets \
         such a module stop the base)"
    )]
    CrashQuarantineTooLate {
        /// The configured `crash_quarantine_after`.
        after: u32,
        /// Worker crashes the supervisor tolerates in its window.
        max_crashes: usize,
        /// The largest accepted `crash_quarantine_after`.
        max_after: usize,
    },
    /// No module is mounted under the requested path.
    #[error("no module is mounted at /{name}/")]
    ModuleNotMounted {
        /// The first path segment.
        name: String,
    },
    /// The module stopped (or is stopping) before answering.
    #[error("{id} is not serving: {reason}")]
    ModuleUnavailable {
        /// `name@version`, or the module's name when no version of it serves.
        id: Subject,
        /// Why.
        reason: String,
    },
    /// The module already has as many requests in flight as its limit allows.
    #[error("{id} is at its limit of {limit} concurrent requests; retry later")]
    ModuleOverloaded {
        /// `name@version`.
        id: ModuleId,
        /// The concurrency limit.
        limit: u32,
    },
    /// The module implements an SPI the base declares, in an incompatible version.
    #[error(
        "{id} implements SPI {spi} {module}, which this base ({spi} {base}) cannot call: the major versions differ"
    )]
    SpiIncompatible {
        /// `name@version`, boxed: with three strings beside it, this variant would make every
        /// `Result` of the base larger.
        id: Box<ModuleId>,
        /// The SPI.
        spi: String,
        /// The module's version of it.
        module: String,
        /// The base's version of it.
        base: String,
    },
    /// The module requires an SPI no running module implements compatibly.
    #[error(
        "{id} requires SPI {spi} {version}, which no running module implements in a compatible \
         version; install an implementation first (or force the install with ?force=true)"
    )]
    SpiMissing {
        /// `name@version`.
        id: ModuleId,
        /// The SPI.
        spi: String,
        /// The version of it the module was built against.
        version: String,
    },
    /// The module is the last implementation of an SPI running modules require.
    #[error(
        "{id} is the last implementation of SPI {spi}, which {} require; uninstall them first \
         (or force it with ?force=true)", dependents.join(", ")
    )]
    ModuleRequired {
        /// `name@version`.
        id: ModuleId,
        /// The SPI.
        spi: String,
        /// The modules (`name@version`) that require it.
        dependents: Vec<String>,
    },
    /// A module's key-value store refused a write: it would exceed the module's quota.
    #[error("{module}'s key-value store would hold {would_use} bytes, over its quota of {quota} bytes")]
    KvQuotaExceeded {
        /// The module.
        module: String,
        /// Bytes it would use.
        would_use: u64,
        /// Its quota.
        quota: u64,
    },
    /// An SPI call failed (the implementation's error, a panic, a gone module...).
    #[error("{0}")]
    Spi(pedestal_module_api::SpiError),
    /// The base is still restoring its recorded state and accepts no changes yet.
    #[error("the base is restoring its recorded state; retry once GET /api/v1/ready says ready")]
    NotReady,
    /// The module is quarantined: the base died loading or starting it.
    #[error("{what} is quarantined: {reason}")]
    Quarantined {
        /// The module (or file).
        what: String,
        /// Why.
        reason: String,
    },
    /// A path install named a relative path.
    #[error("{path} is not an absolute path: path installs take absolute paths only")]
    PathNotAbsolute {
        /// The path asked for.
        path: PathBuf,
    },
    /// A path install named a path outside the directories path installs may read (whether or
    /// not it exists: the answer does not say).
    #[error(
        "{path} is not inside a directory path installs may read (<data-dir>/incoming/, or one \
         named by --allow-path-install)"
    )]
    PathNotAllowed {
        /// The path asked for.
        path: PathBuf,
    },
    /// A path install named a device, FIFO, socket or directory.
    #[error("{path} is {kind}, not a regular file")]
    NotARegularFile {
        /// The path asked for.
        path: PathBuf,
        /// What it is.
        kind: String,
    },
    /// `state.json` cannot be read.
    #[error("the base's state file {path} is unreadable: {message}; move it aside to start empty")]
    StateInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A request pinned a version (`x-pedestal-version`) that is not running.
    #[error("{name} has no running version {version:?} (running: {running:?})")]
    VersionNotFound {
        /// The module.
        name: String,
        /// The pinned version.
        version: String,
        /// The versions that are running.
        running: Vec<String>,
    },
    /// The operation needs a running (active or inactive) instance.
    #[error("{id} is {state}, not running")]
    NotRunning {
        /// `name@version`.
        id: ModuleId,
        /// Its state.
        state: State,
    },
    /// The instance was stopped at the end of its drain timeout while this request ran.
    #[error(
        "{id} was stopped after its drain timeout of {timeout_ms} ms while this request was still running"
    )]
    DrainTimeout {
        /// `name@version`.
        id: ModuleId,
        /// The drain timeout.
        timeout_ms: u64,
    },
    /// The config file cannot be read or has an error.
    #[error("invalid config file {path}: {message}")]
    ConfigInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The module did not answer in time.
    #[error("{id} did not answer within {timeout_ms} ms")]
    ModuleTimeout {
        /// `name@version`.
        id: ModuleId,
        /// The request timeout.
        timeout_ms: u64,
    },
    /// The module failed the request with its own code (for example `MODULE_PANICKED`).
    #[error("{id}: {message}")]
    ModuleFailed {
        /// `name@version`.
        id: ModuleId,
        /// The stable code the module side reported.
        code: String,
        /// What happened.
        message: String,
    },
    /// The artifact's bytes do not hash to the sha256 the request pinned (`?sha256=`).
    #[error("the artifact's sha256 is {actual}, not the expected {expected}")]
    Sha256Mismatch {
        /// The pinned sha256.
        expected: String,
        /// The bytes' sha256.
        actual: String,
    },
    /// A pinned sha256 that is not 64 hex digits.
    #[error("bad request: sha256 {value:?} is not 64 hex digits")]
    Sha256Invalid {
        /// What was sent.
        value: String,
    },
    /// The base requires signed artifacts (`--trusted-keys`) and this one came without one.
    #[error(
        "{what} is not signed, and this base loads only artifacts signed by a trusted key ({}): \
         send its signature (header X-Pedestal-Signature, or a .sig file beside the .so)",
        trusted.join(", ")
    )]
    SignatureRequired {
        /// The upload, file or artifact.
        what: String,
        /// Its sha256.
        sha256: String,
        /// The ids of the trusted keys.
        trusted: Vec<String>,
    },
    /// The artifact's signature is malformed, by a key the base does not trust, or not a
    /// signature of these bytes.
    #[error("{what}: signature refused: {reason}")]
    SignatureInvalid {
        /// The upload, file or artifact.
        what: String,
        /// Its sha256.
        sha256: String,
        /// The key id the signature names, when it could be read.
        key_id: Option<String>,
        /// Why it was refused.
        reason: String,
        /// The ids of the trusted keys.
        trusted: Vec<String>,
    },
    /// The `--trusted-keys` file cannot be read or has an error.
    #[error("invalid --trusted-keys file {path}: {message}")]
    TrustedKeysInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An I/O failure in the base itself.
    #[error("{context}: {source}")]
    Io {
        /// What the base was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What an error is about, when it may be an instance, a module by name or a library file.
/// Displayed as the string it replaces: `name@version`, the name, or the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An instance.
    Module(ModuleId),
    /// A module by name, when no version of it is in question.
    Name(String),
    /// A library whose module's identity is not known (its initialisation never returned).
    Library(PathBuf),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Module(id) => id.fmt(f),
            Self::Name(name) => f.write_str(name),
            Self::Library(path) => path.display().fmt(f),
        }
    }
}

/// What became of an instance whose start timed out (`START_TIMEOUT`'s `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// Torn down and unmapped: the instance is `broken`.
    Unloaded,
    /// It could not be unloaded: the instance is `pinned`.
    Pinned,
    /// The library's initialisation never returned, so its thread can never be joined: pinned
    /// before it had an identity.
    InitialisationHung,
}

impl fmt::Display for StartOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unloaded => "broken, unloaded",
            Self::Pinned => "pinned",
            Self::InitialisationHung => "pinned: the library's initialisation never returned",
        })
    }
}

impl Error {
    /// Wraps an I/O error with what the base was doing.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            Self::EmptyUpload => "EMPTY_UPLOAD",
            Self::NotAModule { .. } => "NOT_A_MODULE",
            Self::InterfaceMismatch { .. } => "INTERFACE_MISMATCH",
            Self::AbiMismatch { .. } => "ABI_MISMATCH",
            Self::LoadFailed { .. } => "LOAD_FAILED",
            Self::AlreadyInstalled { .. } => "ALREADY_INSTALLED",
            Self::NoPreviousVersion { .. } => "NO_PREVIOUS_VERSION",
            Self::VersionRequired { .. } => "VERSION_REQUIRED",
            Self::VersionActive { .. } => "VERSION_ACTIVE",
            Self::OperationInProgress { .. } => "OPERATION_IN_PROGRESS",
            Self::FleetOwned { .. } => "FLEET_OWNED",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::StartFailed { .. } => "START_FAILED",
            Self::StartTimeout { .. } => "START_TIMEOUT",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::RequestBodyTimeout { .. } | Self::RequestBodyTooSlow { .. } => "REQUEST_TIMEOUT",
            Self::HeadersTooLarge { .. } | Self::RequestHeadTooLarge { .. } => "HEADERS_TOO_LARGE",
            Self::UriTooLong => "URI_TOO_LONG",
            Self::MalformedRequest => "MALFORMED_REQUEST",
            Self::BadRequest { .. } => "BAD_REQUEST",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::TooManyAttempts { .. } => "TOO_MANY_ATTEMPTS",
            Self::HostNotAllowed { .. } => "HOST_NOT_ALLOWED",
            Self::CrossOrigin { .. } => "CROSS_ORIGIN",
            Self::UnsupportedMediaType { .. } => "UNSUPPORTED_MEDIA_TYPE",
            Self::BadQuery { .. } => "BAD_REQUEST",
            Self::AdminTokenTooShort { .. } => "ADMIN_TOKEN_TOO_SHORT",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::AdminTokenRequired { .. } => "ADMIN_TOKEN_REQUIRED",
            Self::CrashQuarantineTooLate { .. } => "CRASH_QUARANTINE_TOO_LATE",
            Self::ModuleNotMounted { .. } => "MODULE_NOT_FOUND",
            Self::ModuleUnavailable { .. } => "MODULE_UNAVAILABLE",
            Self::ModuleTimeout { .. } => "MODULE_TIMEOUT",
            Self::ModuleOverloaded { .. } => "MODULE_OVERLOADED",
            Self::ConfigInvalid { .. } => "CONFIG_INVALID",
            Self::VersionNotFound { .. } => "VERSION_NOT_FOUND",
            Self::StateInvalid { .. } => "STATE_INVALID",
            Self::Quarantined { .. } => "QUARANTINED",
            Self::PathNotAbsolute { .. } => "PATH_NOT_ABSOLUTE",
            Self::PathNotAllowed { .. } => "PATH_NOT_ALLOWED",
            Self::NotARegularFile { .. } => "NOT_A_REGULAR_FILE",
            Self::NotReady => "NOT_READY",
            Self::SpiIncompatible { .. } => "SPI_INCOMPATIBLE",
            Self::SpiMissing { .. } => "SPI_MISSING",
            Self::ModuleRequired { .. } => "MODULE_REQUIRED",
            Self::KvQuotaExceeded { .. } => "KV_QUOTA_EXCEEDED",
            Self::Spi(e) => &e.code,
            Self::NotRunning { .. } => "NOT_RUNNING",
            Self::DrainTimeout { .. } => "DRAIN_TIMEOUT",
            Self::ModuleFailed { code, .. } => code,
            Self::Sha256Mismatch { .. } => "SHA256_MISMATCH",
            Self::Sha256Invalid { .. } => "BAD_REQUEST",
            Self::SignatureRequired { .. } => "SIGNATURE_REQUIRED",
            Self::SignatureInvalid { .. } => "SIGNATURE_INVALID",
            Self::TrustedKeysInvalid { .. } => "TRUSTED_KEYS_INVALID",
            Self::Io { .. } => "INTERNAL",
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::EmptyUpload
            | Self::NotAModule { .. }
            | Self::InterfaceMismatch { .. }
            | Self::AbiMismatch { .. }
            | Self::LoadFailed { .. }
            | Self::BadRequest { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::AlreadyInstalled { .. }
            | Self::OperationInProgress { .. }
            | Self::FleetOwned { .. }
            | Self::NoPreviousVersion { .. }
            | Self::VersionActive { .. } => StatusCode::CONFLICT,
            Self::VersionRequired { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } | Self::ModuleNotMounted { .. } => StatusCode::NOT_FOUND,
            Self::StartFailed { .. } | Self::StartTimeout { .. } | Self::SpiIncompatible { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Spi(e) => match e.code.as_str() {
                pedestal_module_api::SpiError::MODULE_GONE
                | pedestal_module_api::SpiError::NOT_IMPLEMENTED => StatusCode::SERVICE_UNAVAILABLE,
                pedestal_module_api::SpiError::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
                pedestal_module_api::SpiError::UNKNOWN_METHOD => StatusCode::NOT_IMPLEMENTED,
                pedestal_module_api::SpiError::BAD_PAYLOAD => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            },
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestBodyTimeout { .. } | Self::RequestBodyTooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::HeadersTooLarge { .. } | Self::RequestHeadTooLarge { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::MalformedRequest => StatusCode::BAD_REQUEST,
            Self::PathNotAbsolute { .. } => StatusCode::BAD_REQUEST,
            Self::PathNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::NotARegularFile { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HostNotAllowed { .. } | Self::CrossOrigin { .. } => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BadQuery { .. } => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ModuleUnavailable { .. }
            | Self::ModuleOverloaded { .. }
            | Self::DrainTimeout { .. }
            | Self::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Self::VersionNotFound { .. } => StatusCode::NOT_FOUND,
            Self::NotRunning { .. } | Self::Quarantined { .. } | Self::ModuleRequired { .. } => {
                StatusCode::CONFLICT
            }
            Self::SpiMissing { .. } => StatusCode::FAILED_DEPENDENCY,
            Self::Sha256Mismatch { .. } => StatusCode::CONFLICT,
            Self::Sha256Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::SignatureRequired { .. } | Self::SignatureInvalid { .. } => StatusCode::FORBIDDEN,
            Self::KvQuotaExceeded { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Self::ModuleTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ModuleFailed { code, .. } if code == "BAD_REQUEST" => StatusCode::BAD_REQUEST,
            Self::ModuleFailed { .. }
            | Self::AdminTokenRequired { .. }
            | Self::AdminTokenTooShort { .. }
            | Self::CrashQuarantineTooLate { .. }
            | Self::ConfigInvalid { .. }
            | Self::StateInvalid { .. }
            | Self::TrustedKeysInvalid { .. }
            | Self::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn details(&self) -> Value {
        match self {
            Self::InterfaceMismatch { module, base } => {
                json!({"module_interface": module, "base_interface": base})
            }
            Self::AbiMismatch { module, base, .. } => {
                json!({"module_interface": module, "base_interface": base})
            }
            Self::LoadFailed { path, .. } => json!({"path": path}),
            Self::AlreadyInstalled { id }
            | Self::OperationInProgress { id }
            | Self::StartFailed { id, .. }
            | Self::ModuleFailed { id, .. } => json!({"module": id.to_string()}),
            Self::ModuleUnavailable { id, .. } => json!({"module": id.to_string()}),
            Self::StartTimeout { id, timeout_ms, outcome } => {
                json!({"module": id.to_string(), "timeout_ms": timeout_ms, "outcome": outcome.to_string()})
            }
            Self::ModuleTimeout { id, timeout_ms } => {
                json!({"module": id.to_string(), "timeout_ms": timeout_ms})
            }
            Self::ModuleOverloaded { id, limit } => json!({"module": id.to_string(), "limit": limit}),
            Self::ConfigInvalid { path, .. }
            | Self::StateInvalid { path, .. }
            | Self::TrustedKeysInvalid { path, .. } => json!({"path": path}),
            Self::Sha256Mismatch { expected, actual } => json!({"expected": expected, "actual": actual}),
            Self::FleetOwned { name, owner } => json!({"module": name, "owner": owner}),
            Self::NoPreviousVersion { name } => json!({"module": name}),
            Self::VersionActive { id, others } => json!({"module": id, "others": others}),
            Self::VersionRequired { name, running, active } => {
                json!({"module": name, "running": running, "active_version": active})
            }
            Self::Sha256Invalid { value } => json!({"sha256": value}),
            Self::SignatureRequired { sha256, trusted, .. } => {
                json!({"sha256": sha256, "trusted_keys": trusted})
            }
            Self::SignatureInvalid { sha256, key_id, trusted, .. } => {
                json!({"sha256": sha256, "key_id": key_id, "trusted_keys": trusted})
            }
            Self::VersionNotFound { name, version, running } => {
                json!({"module": name, "version": version, "running": running})
            }
            Self::NotRunning { id, state } => json!({"module": id.to_string(), "state": state}),
            Self::SpiIncompatible { id, spi, module, base } => {
                json!({"module": id.to_string(), "spi": spi, "module_spi_version": module, "base_spi_version": base})
            }
            Self::Quarantined { what, .. } => json!({"module": what}),
            Self::SpiMissing { id, spi, version } => {
                json!({"module": id.to_string(), "spi": spi, "spi_version": version})
            }
            Self::ModuleRequired { id, spi, dependents } => {
                json!({"module": id.to_string(), "spi": spi, "dependents": dependents})
            }
            Self::KvQuotaExceeded { module, would_use, quota } => {
                json!({"module": module, "would_use_bytes": would_use, "quota_bytes": quota})
            }
            Self::DrainTimeout { id, timeout_ms } => {
                json!({"module": id.to_string(), "timeout_ms": timeout_ms})
            }
            Self::PayloadTooLarge { size, limit } => json!({"size": size, "limit": limit}),
            Self::RequestBodyTimeout { timeout_ms } => json!({"timeout_ms": timeout_ms}),
            Self::RequestBodyTooSlow { received, min_bytes_per_second, grace_ms } => json!({
                "received": received,
                "min_bytes_per_second": min_bytes_per_second,
                "grace_ms": grace_ms,
            }),
            Self::RequestHeadTooLarge { max_headers, max_head_bytes } => {
                json!({"max_headers": max_headers, "max_head_bytes": max_head_bytes})
            }
            Self::ModuleNotMounted { name } => json!({"module": name}),
            Self::TooManyAttempts { retry_after_secs } => json!({"retry_after_secs": retry_after_secs}),
            Self::HostNotAllowed { host } => json!({"host": host}),
            Self::CrossOrigin { header, value } => json!({"header": header, "value": value}),
            Self::UnsupportedMediaType { found, expected } => {
                json!({"content_type": found, "expected": expected})
            }
            Self::BadQuery { unknown, .. } if !unknown.is_empty() => json!({"unknown_parameters": unknown}),
            Self::HeadersTooLarge { size, limit } => json!({"size": size, "limit": limit}),
            Self::AdminTokenTooShort { origin, length, min } => {
                json!({"origin": origin, "length": length, "min": min})
            }
            Self::PathNotAbsolute { path } | Self::PathNotAllowed { path } => json!({"path": path}),
            Self::NotARegularFile { path, kind } => json!({"path": path, "kind": kind}),
            _ => json!({}),
        }
    }
}

impl Error {
    /// The error as the API shows it: `{code, message, details}`.
    pub fn to_json(&self) -> Value {
        json!({"code": self.code(), "message": self.to_string(), "details": self.details()})
    }
}

#[cfg(test)]
mod tests {
    use semver::Version;
    use serde_json::json;

    use super::*;

    fn id() -> ModuleId {
        ModuleId { name: "fx-good".into(), version: Version::new(1, 2, 3) }
    }

    /// The typed fields display and serialize as the strings they replaced.
    fn check(error: Error, message: &str, details: Value) {
        let json = error.to_json();
        assert_eq!(json["message"], message, "{error:?}");
        assert_eq!(json["details"], details, "{error:?}");
    }

    #[test]
    fn typed_fields_read_as_the_strings_they_replaced() {
        check(
            Error::StartTimeout {
                id: Subject::Library("/data/artifacts/ab.so".into()),
                timeout_ms: 500,
                outcome: StartOutcome::InitialisationHung,
            },
            "/data/artifacts/ab.so did not start within 500 ms; it was stopped (pinned: the library's \
             initialisation never returned)",
            json!({"module": "/data/artifacts/ab.so", "timeout_ms": 500,
                   "outcome": "pinned: the library's initialisation never returned"}),
        );
        check(
            Error::StartTimeout { id: Subject::Module(id()), timeout_ms: 5, outcome: StartOutcome::Unloaded },
            "fx-good@1.2.3 did not start within 5 ms; it was stopped (broken, unloaded)",
            json!({"module": "fx-good@1.2.3", "timeout_ms": 5, "outcome": "broken, unloaded"}),
        );
        check(
            Error::StartTimeout { id: Subject::Module(id()), timeout_ms: 5, outcome: StartOutcome::Pinned },
            "fx-good@1.2.3 did not start within 5 ms; it was stopped (pinned)",
            json!({"module": "fx-good@1.2.3", "timeout_ms": 5, "outcome": "pinned"}),
        );
        check(
            Error::NotRunning { id: id(), state: State::Draining },
            "fx-good@1.2.3 is draining, not running",
            json!({"module": "fx-good@1.2.3", "state": "draining"}),
        );
        check(
            Error::ModuleUnavailable { id: Subject::Name("fx-good".into()), reason: "restarting".into() },
            "fx-good is not serving: restarting",
            json!({"module": "fx-good"}),
        );
        check(
            Error::SpiIncompatible {
                id: Box::new(id()),
                spi: "greeter".into(),
                module: "2.0.0".into(),
                base: "1.0.0".into(),
            },
            "fx-good@1.2.3 implements SPI greeter 2.0.0, which this base (greeter 1.0.0) cannot call: the \
             major versions differ",
            json!({"module": "fx-good@1.2.3", "spi": "greeter", "module_spi_version": "2.0.0",
                   "base_spi_version": "1.0.0"}),
        );
    }
}

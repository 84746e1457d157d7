//! Access to the base that started this library: the one place that calls the host callbacks.
//!
//! The base hands its [`Host`] to `run` once per loaded library; it is kept here for the
//! library's other threads (logging, calls, metrics). Each callback has a safe wrapper, and the
//! callbacks added after 1.0.0 (`Option`s in [`HostApi`](crate::abi::HostApi), absent when the
//! base is older than the module) are wrapped so that an absent one reads as "nothing there" or
//! `None`, never as a crash. Views the base lends (requests, SPI calls, completions) live only
//! until the next call of the same callback, so the wrappers copy them before returning.
//!
//! Layer: above `abi.rs` and `wire.rs`; everything that talks to the base goes through here.

use std::sync::OnceLock;

use abi_stable::std_types::{RSlice, RStr};

use crate::abi::{HealthStatus, Host, LogLevel, LogRecord, MetricKind, RequestView, ServiceCall, SpiStatus};

static HOST: OnceLock<Host> = OnceLock::new();

/// Keeps the host `run` was given (the first one: a library runs once) and returns it.
pub(crate) fn install(host: Host) -> &'static Host {
    HOST.get_or_init(|| host)
}

/// The host this library was started by, once `run` has begun.
pub(crate) fn current() -> Option<&'static Host> {
    HOST.get()
}

/// An SPI call copied out of the base's view.
pub(crate) struct SpiCall {
    pub(crate) id: u64,
    pub(crate) spi: String,
    pub(crate) method: String,
    pub(crate) payload: Vec<u8>,
}

/// The answer to one of this library's calls, copied out of the base's view.
pub(crate) struct Completion {
    pub(crate) id: u64,
    pub(crate) status: SpiStatus,
    pub(crate) payload: Vec<u8>,
}

// Callbacks every base offers (1.0.0).

/// Forwards one log record.
pub(crate) fn log(host: &Host, level: LogLevel, target: &str, message: &str, fields: &str) {
    let record = LogRecord {
        level,
        target: RStr::from_str(target),
        message: RStr::from_str(message),
        fields: RStr::from_str(fields),
    };
    (host.api.log())(host.ctx, &record);
}

/// Reports a panic caught inside the module.
pub(crate) fn panicked(host: &Host, message: &str, location: &str) {
    (host.api.panicked())(host.ctx, RStr::from_str(message), RStr::from_str(location));
}

/// Reports the start hook's outcome.
pub(crate) fn started(host: &Host, ok: bool, message: &str) {
    (host.api.started())(host.ctx, ok, RStr::from_str(message));
}

/// Consumes a pending wake-up; `false` when there was none.
pub(crate) fn ack_wake(host: &Host) -> bool {
    (host.api.ack_wake())(host.ctx)
}

/// Declares the module idle; `false` when work arrived meanwhile.
pub(crate) fn idle(host: &Host) -> bool {
    (host.api.idle())(host.ctx)
}

/// Whether the base asked the module to stop.
pub(crate) fn stop_requested(host: &Host) -> bool {
    (host.api.stop_requested())(host.ctx)
}

/// Takes the next queued request and hands its view to `copy`, which must copy what it keeps:
/// the view does not outlive the closure. Instance thread only.
pub(crate) fn next_request<T>(host: &Host, copy: impl FnOnce(&RequestView<'_>) -> T) -> Option<T> {
    let view = (host.api.next_request())(host.ctx).into_option()?;
    Some(copy(&view))
}

/// Answers a request.
pub(crate) fn respond(host: &Host, response: &crate::abi::ResponseView<'_>) {
    (host.api.respond())(host.ctx, response);
}

/// Fails a request with a stable error code.
pub(crate) fn fail(host: &Host, id: u64, code: &str, message: &str) {
    (host.api.fail())(host.ctx, id, RStr::from_str(code), RStr::from_str(message));
}

// Callbacks since 1.1.0.

/// The id of the health check the base asked for; `None` when there is none or the base is
/// too old to ask.
pub(crate) fn take_health_check(host: &Host) -> Option<u64> {
    let take = host.api.take_health_check()?;
    let id = take(host.ctx);
    (id != 0).then_some(id)
}

/// Answers health check `id` (nothing to do in a base too old to ask).
pub(crate) fn report_health(host: &Host, id: u64, status: HealthStatus, message: &str) {
    if let Some(report) = host.api.report_health() {
        report(host.ctx, id, status, RStr::from_str(message));
    }
}

// Callbacks since 1.2.0.

/// Takes the next queued SPI call, copied; `None` when there is none or the base is too old to
/// send any. Instance thread only.
pub(crate) fn next_spi_call(host: &Host) -> Option<SpiCall> {
    let next = host.api.next_spi_call()?;
    let view = next(host.ctx).into_option()?;
    Some(SpiCall {
        id: view.id,
        spi: view.spi.as_str().to_owned(),
        method: view.method.as_str().to_owned(),
        payload: view.payload.as_slice().to_vec(),
    })
}

/// Answers SPI call `id`.
pub(crate) fn spi_reply(host: &Host, id: u64, status: SpiStatus, payload: &[u8]) {
    if let Some(reply) = host.api.spi_reply() {
        reply(host.ctx, id, status, RSlice::from_slice(payload));
    }
}

// Callbacks since 1.3.0.

/// Whether the base takes calls from modules (it is 1.3.0 or newer).
pub(crate) fn takes_calls(host: &Host) -> bool {
    host.api.call().is_some()
}

/// Starts a call (nothing happens in a base too old to take calls: see [`takes_calls`]).
pub(crate) fn call(host: &Host, call: &ServiceCall<'_>) {
    if let Some(call_fn) = host.api.call() {
        call_fn(host.ctx, call);
    }
}

/// Takes the next completion of this library's calls, copied; `None` when there is none or the
/// base is too old to take calls. Instance thread only.
pub(crate) fn next_completion(host: &Host) -> Option<Completion> {
    let next = host.api.next_completion()?;
    let view = next(host.ctx).into_option()?;
    Some(Completion { id: view.id, status: view.status, payload: view.payload.as_slice().to_vec() })
}

/// Registers a metric: `None` when the base is too old to export module metrics, `Some(0)` when
/// it refused the metric, its handle otherwise.
pub(crate) fn register_metric(host: &Host, kind: MetricKind, name: &str, help: &str) -> Option<u64> {
    let register = host.api.register_metric()?;
    Some(register(host.ctx, kind, RStr::from_str(name), RStr::from_str(help)))
}

/// Records a value on a metric (nothing to do in a base too old to export module metrics).
pub(crate) fn record_metric(host: &Host, metric: u64, value: f64) {
    if let Some(record) = host.api.record_metric() {
        record(host.ctx, metric, value);
    }
}

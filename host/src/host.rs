//! The host side of the ABI: the callbacks a module calls, and the instance's `eventfd`.
//!
//! ABI glue: with `loader.rs`, the only place in the base with `unsafe`. Every callback runs
//! base code on a module thread (allowed: the base is never unloaded), copies what it needs
//! from the borrowed arguments before returning, and never lets a panic cross back into the
//! module.

use std::{
    ffi::c_void,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, OnceLock, Weak, atomic::Ordering},
};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{RNone, ROption, RSlice, RSome, RStr},
};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pedestal_module_api::abi::{
    Completion, Header, HealthStatus, Host, HostApi, HostApiRef, HostCtx, LogLevel, LogRecord, MetricKind,
    RequestView, ResponseView, ServiceCall, SpiCallView, SpiStatus,
};

use crate::{
    calls::{OwnedCall, refuse},
    instance::{HookAnswer, Outcome, QueuedRequest, Shared, SpiOutcome},
    logs::LogLine,
    sync::lock,
};

/// A request in its mailbox, with the header table the module's view of it points to (filled
/// when the module takes it).
pub(crate) struct HeldRequest {
    request: QueuedRequest,
    headers: Vec<Header<'static>>,
}

impl From<QueuedRequest> for HeldRequest {
    fn from(request: QueuedRequest) -> Self {
        Self { request, headers: Vec::new() }
    }
}

/// The `Host` value passed to a module's `run`, pointing at `shared`.
///
/// The `HostCtx` is `shared`'s address. The caller keeps `shared` alive until the module's
/// thread is joined, or forever if the instance is pinned.
pub(crate) fn host_for(shared: &Arc<Shared>, max_log_level: LogLevel) -> Host {
    Host {
        api: host_api(),
        ctx: HostCtx(Arc::as_ptr(shared).cast::<c_void>()),
        wake_fd: shared.doorbell.fd().as_raw_fd(),
        max_log_level,
    }
}

fn host_api() -> HostApiRef {
    static API: OnceLock<HostApiRef> = OnceLock::new();
    *API.get_or_init(|| {
        HostApi {
            log,
            started,
            ack_wake,
            idle,
            stop_requested,
            next_request,
            respond,
            fail,
            panicked,
            take_health_check,
            report_health,
            next_spi_call,
            spi_reply,
            call,
            next_completion,
            register_metric,
            record_metric,
        }
        .leak_into_prefix()
    })
}

/// The instance state behind a module's context token.
///
/// # Safety
/// `ctx` must come from [`host_for`], whose caller keeps the `Shared` alive while any module
/// thread can still call back (see `Instance::teardown`).
unsafe fn shared<'a>(ctx: HostCtx) -> &'a Shared {
    // SAFETY: guaranteed by the caller, per this function's contract.
    unsafe { &*ctx.0.cast::<Shared>() }
}

/// Runs a callback body, containing any panic in base code so it never reaches the module.
fn guarded<R>(fallback: R, body: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        tracing::error!("a host callback panicked; the module sees a neutral answer");
        fallback
    })
}

extern "C" fn log(ctx: HostCtx, record: &LogRecord<'_>) {
    guarded((), || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        emit_module_log(shared, record);
    })
}

fn emit_module_log(shared: &Shared, record: &LogRecord<'_>) {
    let (name, version) = match shared.tags.get() {
        Some(id) => (id.name.as_str(), id.version.to_string()),
        None => ("?", String::from("?")),
    };
    let target = record.target.as_str();
    let message = record.message.as_str();
    let fields = record.fields.as_str();
    macro_rules! emit {
        ($level:expr) => {
            if fields.is_empty() {
                tracing::event!(target: "module", $level, module = name, version = %version, module_target = target, "{message}")
            } else {
                tracing::event!(target: "module", $level, module = name, version = %version, module_target = target, "{message} {fields}")
            }
        };
    }
    if let Some(log) = shared.log.get() {
        log.write(LogLine::new(record.level, name, &version, target, message, fields));
        // The module's own log keeps every line; the base's stderr gets a bounded share, so a
        // module logging in a loop cannot flood it (the registry reports what was held back).
        if !log.may_echo() {
            return;
        }
    }
    match record.level {
        LogLevel::Error => emit!(tracing::Level::ERROR),
        LogLevel::Warn => emit!(tracing::Level::WARN),
        LogLevel::Info => emit!(tracing::Level::INFO),
        LogLevel::Debug => emit!(tracing::Level::DEBUG),
        LogLevel::Trace => emit!(tracing::Level::TRACE),
    }
}

extern "C" fn started(ctx: HostCtx, ok: bool, message: RStr<'_>) {
    guarded((), || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        if let Some(reply) = lock(&shared.started).take() {
            let _ = reply.send(if ok { Ok(()) } else { Err(message.as_str().to_owned()) });
        }
    })
}

extern "C" fn ack_wake(ctx: HostCtx) -> bool {
    guarded(false, || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        shared.doorbell.acknowledge()
    })
}

extern "C" fn idle(ctx: HostCtx) -> bool {
    guarded(true, || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        shared.doorbell.idle(|| shared.has_work())
    })
}

extern "C" fn stop_requested(ctx: HostCtx) -> bool {
    guarded(true, || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        unsafe { shared(ctx) }.stop.load(Ordering::SeqCst)
    })
}

extern "C" fn next_request(ctx: HostCtx) -> ROption<RequestView<'static>> {
    guarded(RNone, || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let view = shared.mail.requests.take(|held| {
            let headers = pedestal_module_api::header_views(&held.request.headers);
            // SAFETY: the views point into heap data owned by `held.request`, which stays held
            // in its mailbox, unmoved and unmodified, until the module's next `next_request` on
            // this instance (or until the instance is torn down after its thread was joined).
            // The ABI documents exactly that lifetime for `RequestView`.
            held.headers = unsafe { std::mem::transmute::<Vec<Header<'_>>, Vec<Header<'static>>>(headers) };
            let request = &held.request;
            let view = RequestView {
                id: request.id,
                method: RStr::from_str(request.method.as_str()),
                path_and_query: RStr::from_str(&request.path_and_query),
                headers: RSlice::from_slice(&held.headers),
                body: RSlice::from_slice(&request.body),
            };
            // SAFETY: as above: every pointer in the view targets data kept alive and unmoved
            // in the mailbox for the lifetime the ABI promises.
            unsafe { std::mem::transmute::<RequestView<'_>, RequestView<'static>>(view) }
        });
        view.map_or(RNone, RSome)
    })
}

extern "C" fn respond(ctx: HostCtx, view: &ResponseView<'_>) {
    guarded((), || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let reply = shared.mail.requests.replier(view.request_id);
        let Some(reply) = reply else {
            finished_late(shared, view.request_id);
            return;
        };
        let mut response = http::Response::new(Bytes::copy_from_slice(view.body.as_slice()));
        *response.status_mut() =
            StatusCode::from_u16(view.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        for header in view.headers.iter() {
            let name = HeaderName::from_bytes(header.name.as_str().as_bytes());
            let value = HeaderValue::from_bytes(header.value.as_slice());
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        let _ = reply.send(Outcome::Response(response));
    })
}

extern "C" fn fail(ctx: HostCtx, request_id: u64, code: RStr<'_>, message: RStr<'_>) {
    guarded((), || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let reply = shared.mail.requests.replier(request_id);
        if let Some(reply) = reply {
            let outcome =
                Outcome::Failed { code: code.as_str().to_owned(), message: message.as_str().to_owned() };
            let _ = reply.send(outcome);
        } else {
            finished_late(shared, request_id);
        }
    })
}

extern "C" fn panicked(ctx: HostCtx, message: RStr<'_>, location: RStr<'_>) {
    guarded((), || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        shared.panics.fetch_add(1, Ordering::Relaxed);
        let (name, version) = match shared.tags.get() {
            Some(id) => (id.name.as_str(), id.version.to_string()),
            None => ("?", String::from("?")),
        };
        tracing::error!(
            target: "module",
            module = name,
            version = %version,
            location = location.as_str(),
            "module panicked: {}",
            message.as_str()
        );
        if let Some(log) = shared.log.get() {
            let text = format!("module panicked: {}", message.as_str());
            let fields = format!("location={}", location.as_str());
            log.write(LogLine::new(LogLevel::Error, name, &version, "panic", &text, &fields));
        }
    })
}

/// A request whose caller already got `504` has finished: stop watching it, and say so when it
/// had been reported as runaway.
fn finished_late(shared: &Shared, request_id: u64) {
    let Some(late) = lock(&shared.timed_out).remove(&request_id) else { return };
    if late.runaway {
        let ms = late.sent.elapsed().as_millis();
        let (name, version) = match shared.tags.get() {
            Some(id) => (id.name.as_str(), id.version.to_string()),
            None => ("?", String::from("?")),
        };
        tracing::warn!(module = name, version = %version, request = %late.what, running_ms = ms, "runaway request finished");
    }
}

extern "C" fn take_health_check(ctx: HostCtx) -> u64 {
    guarded(0, || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let wanted = shared.health_wanted.load(Ordering::SeqCst);
        if shared.health_taken.swap(wanted, Ordering::SeqCst) < wanted { wanted } else { 0 }
    })
}

extern "C" fn report_health(ctx: HostCtx, check: u64, status: HealthStatus, message: RStr<'_>) {
    guarded((), || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        {
            let mut health = lock(&shared.health);
            if health.as_ref().is_some_and(|answer| answer.check >= check) {
                return;
            }
            *health = Some(HookAnswer { check, status, message: message.as_str().to_owned() });
        }
        shared.health_answered.notify_waiters();
    })
}

extern "C" fn next_spi_call(ctx: HostCtx) -> ROption<SpiCallView<'static>> {
    guarded(RNone, || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let view = shared.mail.spi_calls.take(|call| {
            let view = SpiCallView {
                id: call.id,
                spi: RStr::from_str(&call.spi),
                method: RStr::from_str(&call.method),
                payload: RSlice::from_slice(&call.payload),
            };
            // SAFETY: the names and the payload stay held in their mailbox (heap data, unmoved
            // and unmodified) until the module's next `next_spi_call` on this instance (or until
            // the instance is torn down after its thread was joined). The ABI documents exactly
            // that lifetime for `SpiCallView`.
            unsafe { std::mem::transmute::<SpiCallView<'_>, SpiCallView<'static>>(view) }
        });
        view.map_or(RNone, RSome)
    })
}

extern "C" fn spi_reply(ctx: HostCtx, id: u64, status: SpiStatus, payload: RSlice<'_, u8>) {
    guarded((), || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let reply = shared.mail.spi_calls.replier(id);
        if let Some(reply) = reply {
            let _ = reply.send(SpiOutcome { status, payload: payload.as_slice().to_vec() });
        }
    })
}

extern "C" fn call(ctx: HostCtx, call: &ServiceCall<'_>) {
    guarded((), || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let Some(caller) = shared.me.get().and_then(Weak::upgrade) else { return };
        let owned = OwnedCall {
            id: call.id,
            service: call.service.as_str().to_owned(),
            version: call.version.as_str().to_owned(),
            method: call.method.as_str().to_owned(),
            target: call.target.as_str().to_owned(),
            payload: call.payload.as_slice().to_vec(),
        };
        let id = owned.id;
        match shared.calls.get().and_then(Weak::upgrade) {
            Some(calls) => {
                let answered = Arc::clone(&caller);
                if catch_unwind(AssertUnwindSafe(|| calls.start_call(caller, owned))).is_err() {
                    tracing::error!("a module call panicked in the base; the module gets an error");
                    refuse(&answered, id, "the base failed while handling the call");
                }
            }
            None => refuse(&caller, id, "the base is not ready for calls yet"),
        }
    })
}

extern "C" fn next_completion(ctx: HostCtx) -> ROption<Completion<'static>> {
    guarded(RNone, || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let view = shared.mail.completions.take(|done| {
            let view =
                Completion { id: done.id, status: done.status, payload: RSlice::from_slice(&done.payload) };
            // SAFETY: the payload stays held in its mailbox (heap data, unmoved and unmodified)
            // until the module's next `next_completion` on this instance (or until the instance
            // is torn down after its thread was joined). The ABI documents exactly that lifetime
            // for `Completion`.
            unsafe { std::mem::transmute::<Completion<'_>, Completion<'static>>(view) }
        });
        view.map_or(RNone, RSome)
    })
}

extern "C" fn register_metric(ctx: HostCtx, kind: MetricKind, name: RStr<'_>, help: RStr<'_>) -> u64 {
    guarded(0, || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let (Some(id), Some(calls)) = (shared.tags.get(), shared.calls.get().and_then(Weak::upgrade)) else {
            return 0;
        };
        let mut metrics = lock(&shared.module_metrics);
        if let Some(at) = metrics.iter().position(|m| m.name == name.as_str()) {
            return if metrics[at].kind == kind { at as u64 + 1 } else { 0 };
        }
        match calls.register_metric(id, kind, name.as_str(), help.as_str()) {
            Some(metric) => {
                metrics.push(metric);
                metrics.len() as u64
            }
            None => 0,
        }
    })
}

extern "C" fn record_metric(ctx: HostCtx, metric: u64, value: f64) {
    guarded((), || {
        // SAFETY: the module only holds tokens the base gave it through `host_for`.
        let shared = unsafe { shared(ctx) };
        let metrics = lock(&shared.module_metrics);
        if let Some(metric) = metric.checked_sub(1).and_then(|at| metrics.get(at as usize)) {
            metric.record(value);
        }
    })
}

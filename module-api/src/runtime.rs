//! The module side of an instance: its tokio runtime, the request loop and the panic firewall.
//!
//! The base calls [`run`] on a thread it created for this instance. Everything here runs on
//! that thread (plus whatever threads the module starts and joins). Requests arrive through a
//! host-owned queue; the base signals new work by writing the instance's `eventfd`, which this
//! runtime's reactor watches, so the base never runs module code and the module never runs on a
//! base thread.

use std::{
    future::Future,
    os::fd::{AsRawFd, RawFd},
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use abi_stable::std_types::{RSlice, RStr};
use axum::{Router, body::Body};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use tokio::io::{Interest, unix::AsyncFd};
use tower_service::Service;

use crate::{
    Health, Module,
    abi::{HealthStatus, Host, RequestView, ResponseView, TaskCounters},
    logging,
};

/// How long the module's stop hook may take before the runtime is shut down anyway.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// How long tasks and blocking threads get to finish when the runtime shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

static HOST: OnceLock<Host> = OnceLock::new();
/// This library's task counters (one copy per loaded module library), read by the base.
pub(crate) static TASKS: TaskCounters = TaskCounters { alive: std::sync::atomic::AtomicU64::new(0) };
static STARTED_REPORTED: AtomicBool = AtomicBool::new(false);

/// The host this library was started by, once `run` has begun.
pub(crate) fn host() -> Option<&'static Host> {
    HOST.get()
}

/// Entry point behind [`ModuleRoot::run`](crate::abi::ModuleRoot::run). Never unwinds.
pub fn run<M: Module>(host: Host, make: fn() -> M) {
    let host = HOST.get_or_init(|| host);
    let outcome = catch_unwind(AssertUnwindSafe(|| run_instance(host, make)));
    if let Err(payload) = outcome {
        let message = logging::panic_message(payload.as_ref());
        report_started(host, Err(&format!("the module panicked: {message}")));
    }
}

fn run_instance<M: Module>(host: &'static Host, make: fn() -> M) {
    logging::install(host.max_log_level);
    // Blocking-pool threads take the instance thread's name, so the base can tell whether any
    // of them outlived the runtime's shutdown.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    if let Ok(name) = std::fs::read_to_string("/proc/thread-self/comm") {
        builder.thread_name(name.trim_end());
    }
    // I/O and timers. Note: when the module is compiled with tokio's `signal` (or `process`)
    // feature, tokio builds its signal driver into the I/O stack and allocates a process-global
    // signal registry in this library's statics, which is never freed: measured 24 KB and two
    // file descriptors leaked per load. Modules must not enable those features (README.md).
    let runtime = match builder.enable_io().enable_time().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            report_started(host, Err(&format!("cannot build the module's tokio runtime: {e}")));
            return;
        }
    };
    runtime.block_on(serve(host, make));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
}

async fn serve<M: Module>(host: &'static Host, make: fn() -> M) {
    // SAFETY: the base owns `wake_fd`, keeps it open until it has joined this thread, and this
    // `AsyncFd` is dropped before `run` returns, so the fd stays valid and unchanged for the
    // registration's whole life.
    let registered = unsafe { AsyncFd::register_with_interest(WakeFd(host.wake_fd), Interest::READABLE) };
    let wake = match registered {
        Ok(wake) => wake,
        Err(e) => {
            report_started(host, Err(&format!("cannot watch the base's wake-up fd: {e}")));
            return;
        }
    };
    let module = make();
    let start = tokio::select! {
        biased;
        _ = stop_requested(host, &wake) => {
            report_started(host, Err("the base stopped the module before its start hook finished"));
            return;
        }
        result = module.start() => result,
    };
    if let Err(e) = start {
        report_started(host, Err(&e.to_string()));
        return;
    }
    let router = module.router();
    report_started(host, Ok(()));

    let metrics = tokio::runtime::Handle::current().metrics();
    // The health check in progress: it runs here, next to the request loop, because the
    // module is borrowed (not `Send`, not `'static`).
    let mut check: Option<(u64, HealthCheck<'_>)> = None;
    loop {
        if (host.api.stop_requested())(host.ctx) {
            break;
        }
        let mut took = false;
        while let Some(request) = next_request(host) {
            tokio::spawn(handle(host, router.clone(), request));
            took = true;
        }
        if let Some(id) = take_health_check(host) {
            match check.as_mut() {
                // A hook still running answers the newer check too.
                Some((running, _)) => *running = id,
                None => check = Some((id, Box::pin(CatchUnwind(Box::pin(module.health()))))),
            }
        }
        TASKS.alive.store(metrics.num_alive_tasks() as u64, Ordering::Relaxed);
        if took {
            // A busy module still answers health checks: give the hook one poll per turn.
            if let Some((id, health)) = check.as_mut() {
                let id = *id;
                let answer = std::future::poll_fn(|cx| Poll::Ready(health.as_mut().poll(cx))).await;
                if let Poll::Ready(answer) = answer {
                    report_health(host, id, answer);
                    check = None;
                }
            }
            // Let the handlers just spawned run, then look at the queue again before sleeping.
            tokio::task::yield_now().await;
            continue;
        }
        let signalled = match check.as_mut() {
            None => sleep_until_signalled(host, &wake).await,
            Some((id, health)) => tokio::select! {
                biased;
                answer = health => {
                    report_health(host, *id, answer);
                    check = None;
                    Ok(())
                }
                signalled = sleep_until_signalled(host, &wake) => signalled,
            },
        };
        if signalled.is_err() {
            break;
        }
    }
    drop(check);
    let _ = tokio::time::timeout(STOP_DEADLINE, module.stop()).await;
}

/// A running health hook, with the panic firewall around it.
type HealthCheck<'a> = Pin<Box<dyn Future<Output = Result<Health, String>> + 'a>>;

/// The id of a health check the base asked for, when the base is new enough to ask.
fn take_health_check(host: &Host) -> Option<u64> {
    let take = host.api.take_health_check()?;
    let id = take(host.ctx);
    (id != 0).then_some(id)
}

fn report_health(host: &Host, id: u64, answer: Result<Health, String>) {
    let Some(report) = host.api.report_health() else { return };
    let health =
        answer.unwrap_or_else(|panic| Health::unhealthy(format!("the health hook panicked: {panic}")));
    let status: HealthStatus = health.status;
    report(host.ctx, id, status, RStr::from_str(&health.message));
}

fn report_started(host: &Host, outcome: Result<(), &str>) {
    if STARTED_REPORTED.swap(true, Ordering::SeqCst) {
        if let Err(message) = outcome {
            logging::forward(crate::abi::LogLevel::Error, "pedestal", message, "");
        }
        return;
    }
    let (ok, message) = match outcome {
        Ok(()) => (true, ""),
        Err(message) => (false, message),
    };
    (host.api.started())(host.ctx, ok, RStr::from_str(message));
}

/// Waits until the base has signalled new work (requests or a stop request).
///
/// Readiness is cleared only after the base reports that no wake-up was pending, so a wake-up
/// that races with the clear is never lost.
async fn wait_for_work(host: &Host, wake: &AsyncFd<WakeFd>) -> std::io::Result<()> {
    loop {
        let mut guard = wake.readable().await?;
        if (host.api.ack_wake())(host.ctx) {
            return Ok(());
        }
        guard.clear_ready();
    }
}

/// Tells the base the module is going idle and sleeps until it signals; returns at once if
/// work arrived in the meantime.
async fn sleep_until_signalled(host: &Host, wake: &AsyncFd<WakeFd>) -> std::io::Result<()> {
    if (host.api.idle())(host.ctx) {
        wait_for_work(host, wake).await
    } else {
        tokio::task::yield_now().await;
        Ok(())
    }
}

async fn stop_requested(host: &Host, wake: &AsyncFd<WakeFd>) {
    while !(host.api.stop_requested())(host.ctx) {
        if sleep_until_signalled(host, wake).await.is_err() {
            return;
        }
    }
}

/// A request copied out of the base's view, ready for the module's router.
struct OwnedRequest {
    id: u64,
    request: Result<Request<Body>, String>,
}

fn next_request(host: &Host) -> Option<OwnedRequest> {
    let view = (host.api.next_request())(host.ctx).into_option()?;
    // The view lives until the next `next_request` call on this thread: copy it now.
    Some(OwnedRequest { id: view.id, request: copy_request(&view) })
}

fn copy_request(view: &RequestView<'_>) -> Result<Request<Body>, String> {
    let method = Method::from_bytes(view.method.as_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut builder = Request::builder().method(method).uri(view.path_and_query.as_str());
    for header in view.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_str().as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_bytes(header.value.as_slice()).map_err(|e| e.to_string())?;
        builder = builder.header(name, value);
    }
    builder.body(Body::from(Bytes::copy_from_slice(view.body.as_slice()))).map_err(|e| e.to_string())
}

async fn handle(host: &'static Host, mut router: Router, request: OwnedRequest) {
    let id = request.id;
    let request = match request.request {
        Ok(request) => request,
        Err(message) => {
            fail(host, id, "BAD_REQUEST", &message);
            return;
        }
    };
    let response = CatchUnwind(Box::pin(async move {
        let response = match router.call(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        };
        let (parts, body) = response.into_parts();
        body.collect().await.map(|collected| (parts, collected.to_bytes()))
    }))
    .await;
    match response {
        Ok(Ok((parts, body))) => {
            let headers = crate::header_views(&parts.headers);
            let view = ResponseView {
                request_id: id,
                status: parts.status.as_u16(),
                headers: RSlice::from_slice(&headers),
                body: RSlice::from_slice(&body),
            };
            (host.api.respond())(host.ctx, &view);
        }
        Ok(Err(e)) => fail(host, id, "MODULE_BODY_ERROR", &e.to_string()),
        Err(message) => fail(host, id, "MODULE_PANICKED", &format!("the handler panicked: {message}")),
    }
    // This handler's task is still alive until it returns.
    let alive = tokio::runtime::Handle::current().metrics().num_alive_tasks().saturating_sub(1);
    TASKS.alive.store(alive as u64, Ordering::Relaxed);
}

fn fail(host: &Host, id: u64, code: &str, message: &str) {
    (host.api.fail())(host.ctx, id, RStr::from_str(code), RStr::from_str(message));
}

/// The base's `eventfd`, borrowed: the base owns and closes it.
struct WakeFd(RawFd);

impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The per-request panic firewall: a panic while polling becomes `Err(message)`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(logging::panic_message(payload.as_ref()))),
        }
    }
}

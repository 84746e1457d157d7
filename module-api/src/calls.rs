//! Calls from a module to the base: SPIs other modules implement, and the base's own services.
//!
//! A call is a message, like an SPI call in the other direction: [`call`] hands the base a
//! [`ServiceCall`] with an id this library chose and returns a future; the base answers later
//! with a completion, which the instance's loop (in `runtime.rs`) takes and passes to the waiting
//! future through [`complete_all`]. Any module thread may call; only the instance thread takes
//! completions.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use abi_stable::std_types::{RSlice, RStr};
use tokio::sync::oneshot;

use crate::{
    abi::{Host, ServiceCall, SpiStatus},
    host,
    wire::{SpiError, decode},
};

/// Ids of this library's calls (never 0, unique while the library is loaded).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// The calls waiting for their completion.
static WAITING: Mutex<BTreeMap<u64, oneshot::Sender<Answer>>> = Mutex::new(BTreeMap::new());

/// A completion, copied out of the base's view.
struct Answer {
    status: SpiStatus,
    payload: Vec<u8>,
}

fn waiting() -> MutexGuard<'static, BTreeMap<u64, oneshot::Sender<Answer>>> {
    WAITING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What is being called, for error messages.
struct Called {
    service: String,
    method: String,
    target: String,
}

/// Calls `method` of `service` (an SPI, at declaration `version`, implemented by module
/// `target` or the one the base picks when empty; or a base service) with serialized
/// arguments, and resolves to the serialized result.
pub(crate) fn call(
    service: &str,
    version: &str,
    method: &str,
    target: &str,
    payload: &[u8],
) -> impl Future<Output = Result<Vec<u8>, SpiError>> + Send + 'static {
    let called = Called { service: service.to_owned(), method: method.to_owned(), target: target.to_owned() };
    let started = start(service, version, method, target, payload, true);
    async move {
        let answer = started?.ok_or_else(|| unavailable("no answer expected"))?;
        let answer = answer.await.map_err(|_| {
            SpiError::new(SpiError::MODULE_GONE, "the module is stopping: the call was abandoned")
        })?;
        interpret(answer, &called)
    }
}

/// Starts a call whose answer nobody waits for (the base still completes it; the completion
/// is dropped).
pub(crate) fn notify(service: &str, method: &str, payload: &[u8]) {
    let _ = start(service, "", method, "", payload, false);
}

fn start(
    service: &str,
    version: &str,
    method: &str,
    target: &str,
    payload: &[u8],
    wait: bool,
) -> Result<Option<oneshot::Receiver<Answer>>, SpiError> {
    let host = host::current().ok_or_else(|| unavailable("not running inside a Pedestal base"))?;
    if !host::takes_calls(host) {
        return Err(unavailable("the base is older than interface 1.3.0: it offers no calls from modules"));
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // Registered before the base sees the call: it may complete it at once.
    let answer = wait.then(|| {
        let (sender, receiver) = oneshot::channel();
        waiting().insert(id, sender);
        receiver
    });
    let call = ServiceCall {
        id,
        service: RStr::from_str(service),
        version: RStr::from_str(version),
        method: RStr::from_str(method),
        target: RStr::from_str(target),
        payload: RSlice::from_slice(payload),
    };
    host::call(host, &call);
    Ok(answer)
}

fn unavailable(why: &str) -> SpiError {
    SpiError::new(SpiError::UNAVAILABLE, why)
}

fn interpret(answer: Answer, called: &Called) -> Result<Vec<u8>, SpiError> {
    let Called { service, method, target } = called;
    let target = if target.is_empty() { String::from("the implementation") } else { target.clone() };
    match answer.status {
        SpiStatus::Ok => Ok(answer.payload),
        SpiStatus::Error => Err(decode(&answer.payload).unwrap_or_else(|e| e)),
        SpiStatus::Unknown => Err(SpiError::new(
            SpiError::UNKNOWN_METHOD,
            format!("{target} does not implement {service}.{method}"),
        )),
        SpiStatus::Panicked => Err(SpiError::new(
            SpiError::PANICKED,
            format!("{service}.{method} panicked in {target}: {}", String::from_utf8_lossy(&answer.payload)),
        )),
    }
}

/// Passes every completion the base queued to its waiting call. Instance thread only; returns
/// whether there was any.
pub(crate) fn complete_all(host: &Host) -> bool {
    let mut any = false;
    while let Some(completion) = host::next_completion(host) {
        any = true;
        let answer = Answer { status: completion.status, payload: completion.payload };
        if let Some(waiter) = waiting().remove(&completion.id) {
            let _ = waiter.send(answer);
        }
    }
    any
}

/// Abandons every call still waiting (the instance is stopping): their futures answer
/// `MODULE_GONE`, and nothing of theirs stays in the library's statics.
pub(crate) fn abandon_all() {
    waiting().clear();
}

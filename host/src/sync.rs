//! The synchronisation primitives the runtime's message passing is built from.
//!
//! `mailbox.rs` and `doorbell.rs` take their primitives from here and nowhere else, so the loom
//! model (`host/tests/loom_mailbox.rs`) can compile those two files against a `sync` module of
//! its own, backed by loom's checked types, without building the whole base under `--cfg loom`
//! (tokio's shim pattern, made cheaper).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

pub(crate) use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, Ordering},
};

/// Locks a mutex, ignoring poisoning: every critical section in the base leaves its data
/// consistent, so a panic while holding a lock never leaves it half-written.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A non-blocking, close-on-exec `eventfd`: the wake-up a module's reactor waits on.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    /// Creates one with its counter at zero.
    pub(crate) fn new() -> std::io::Result<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        Ok(Self(eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?))
    }

    /// Adds one to the counter, making the fd readable. A full counter (`EAGAIN`) means the fd
    /// is already readable, which is all a wake-up needs, so errors are ignored.
    pub(crate) fn signal(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Reads (and so resets) the counter; `false` when it was zero.
    pub(crate) fn consume(&self) -> bool {
        let mut count = [0u8; 8];
        matches!(rustix::io::read(&self.0, &mut count), Ok(8))
    }

    /// The descriptor, for the module to register with its reactor.
    pub(crate) fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

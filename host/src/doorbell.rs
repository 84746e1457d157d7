//! The wake-up the base rings when it gives a module work: a "notified" flag in front of an
//! `eventfd`, so a busy module costs no system call per message.
//!
//! The protocol (modelled in `host/tests/loom_mailbox.rs`): a producer first makes its work
//! visible (pushes to a [`Mailbox`](crate::mailbox::Mailbox), sets a flag), then calls
//! [`Doorbell::wake`]. The module, finding nothing to do, calls [`Doorbell::idle`] with a check
//! of every source of work; only when it returns `true` does the module wait on the fd. Since
//! `idle` clears the flag *before* it looks, any work it misses was made visible after the
//! clear, so its producer's `wake` finds the flag clear and writes the fd: no wake-up is lost.
//! And every producer that finds the flag set knows the module will look again before it
//! sleeps, so wake-ups coalesce.

use crate::sync::{AtomicBool, EventFd, Ordering};

/// A notified flag plus the eventfd the module's reactor waits on.
pub(crate) struct Doorbell {
    /// Clear only while the module sleeps (or is about to): a producer that flips it to set
    /// writes the eventfd, every other producer knows the module will see its work.
    notified: AtomicBool,
    fd: EventFd,
}

impl Doorbell {
    /// A doorbell around `fd`, not rung.
    pub(crate) fn new(fd: EventFd) -> Self {
        Self { notified: AtomicBool::new(false), fd }
    }

    /// Tells the module there is work: writes the eventfd only when the module said it is going
    /// to sleep (an awake module looks at its work again before it sleeps).
    pub(crate) fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            self.fd.signal();
        }
    }

    /// The module wants to sleep: returns `true` when it may (the next [`Doorbell::wake`] writes
    /// the fd), `false` when `has_work` found work made visible before the flag was cleared
    /// (the module stays awake, and producers stay quiet).
    pub(crate) fn idle(&self, has_work: impl FnOnce() -> bool) -> bool {
        // Swaps rather than stores: read-modify-writes of one atomic are totally ordered, so the
        // clear and every producer's `wake` fall in one order and a producer after the clear
        // reads it. (On x86 a `SeqCst` store is an `xchg` anyway; loom, which orders plain
        // stores only partially, finds a lost wake-up with `store` here.)
        self.notified.swap(false, Ordering::SeqCst);
        let more = has_work();
        if more {
            self.notified.swap(true, Ordering::SeqCst);
        }
        !more
    }

    /// Consumes a pending wake-up; `false` when there was none.
    pub(crate) fn acknowledge(&self) -> bool {
        self.fd.consume()
    }

    /// The eventfd, as the module registers it with its reactor.
    pub(crate) fn fd(&self) -> &EventFd {
        &self.fd
    }
}

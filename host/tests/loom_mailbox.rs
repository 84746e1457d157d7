//! A loom model of the base → module message protocol: `host/src/mailbox.rs` and
//! `host/src/doorbell.rs`, compiled here against a `sync` module backed by loom's checked
//! primitives (the eventfd modelled as a counter a sleeper waits on), so loom explores every
//! interleaving of the real code within its preemption bound.
//!
//! Two properties, each a model:
//! - no lost wake-up: a module that finds no work and goes to sleep is always woken for work
//!   pushed concurrently (a lost one leaves every thread blocked, which loom reports);
//! - a cancel racing the module's take and answer: the answer reaches its caller, or the
//!   canceller sees the message as taken or not taken, never both and never neither, and a
//!   late answer always finds what the canceller recorded for a taken message.

use loom::{
    sync::{Arc, atomic::AtomicUsize},
    thread,
};

/// The primitives `mailbox.rs` and `doorbell.rs` import as `crate::sync`, backed by loom.
mod sync {
    use loom::sync::Condvar;
    pub(crate) use loom::sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    };

    pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An eventfd: a counter that `signal` adds to and `consume` resets, and that a sleeper
    /// waits on (what the module's reactor does with the real fd).
    pub(crate) struct EventFd {
        count: Mutex<u64>,
        readable: Condvar,
    }

    impl EventFd {
        pub(crate) fn new() -> Self {
            Self { count: Mutex::new(0), readable: Condvar::new() }
        }

        pub(crate) fn signal(&self) {
            *lock(&self.count) += 1;
            self.readable.notify_all();
        }

        pub(crate) fn consume(&self) -> bool {
            std::mem::take(&mut *lock(&self.count)) > 0
        }

        /// Blocks until the counter is non-zero, like the module's reactor on the fd.
        pub(crate) fn wait_readable(&self) {
            let mut count = lock(&self.count);
            while *count == 0 {
                count = self.readable.wait(count).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
    }
}

// Each model uses only part of each file's API.
#[allow(dead_code)]
#[path = "../src/doorbell.rs"]
mod doorbell;
#[allow(dead_code)]
#[path = "../src/mailbox.rs"]
mod mailbox;

use doorbell::Doorbell;
use mailbox::{Cancelled, Mailbox};
use sync::{EventFd, Mutex, Ordering, lock};

/// Loom's exploration, bounded so each model runs in seconds (raise it locally to look deeper).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// The module side of `pedestal_module_api`'s runtime loop: take everything, and when nothing
/// is left say `idle` and, if allowed, sleep on the fd until woken.
fn module_takes(mailbox: &Mailbox<u64, ()>, doorbell: &Doorbell, expected: usize) {
    let mut taken = 0;
    loop {
        while mailbox.take(|message| *message).is_some() {
            taken += 1;
        }
        if taken == expected {
            return;
        }
        if doorbell.idle(|| mailbox.has_work()) {
            doorbell.fd().wait_readable();
            doorbell.acknowledge();
        }
    }
}

#[test]
fn a_module_going_to_sleep_is_always_woken_for_work_pushed_meanwhile() {
    model(|| {
        let mailbox = Arc::new(Mailbox::<u64, ()>::default());
        let doorbell = Arc::new(Doorbell::new(EventFd::new()));
        let producers: Vec<_> = (1..=2u64)
            .map(|id| {
                let (mailbox, doorbell) = (Arc::clone(&mailbox), Arc::clone(&doorbell));
                thread::spawn(move || {
                    mailbox.push(id, id);
                    doorbell.wake();
                })
            })
            .collect();
        // A lost wake-up leaves this waiting on the fd with both producers done: loom fails the
        // model as a deadlock.
        module_takes(&mailbox, &doorbell, 2);
        for producer in producers {
            producer.join().unwrap();
        }
    });
}

/// What the module did with message 1 in the cancel model.
const NOT_SEEN: usize = 0;
const ANSWERED: usize = 1;
const ANSWERED_LATE: usize = 2;

#[test]
fn a_cancel_racing_the_answer_sees_it_delivered_or_taken_or_not_taken_exactly_once() {
    model(|| {
        // The replier: the count of answers delivered through it.
        let delivered = Arc::new(AtomicUsize::new(0));
        let mailbox = Arc::new(Mailbox::<u64, Arc<AtomicUsize>>::default());
        // What the canceller records for a taken message (the base's `timed_out`).
        let timed_out = Arc::new(Mutex::new(None::<u64>));
        mailbox.expect_reply(1, Arc::clone(&delivered)).unwrap();
        mailbox.push(1, 1);

        let module = {
            let (mailbox, timed_out) = (Arc::clone(&mailbox), Arc::clone(&timed_out));
            thread::spawn(move || {
                let Some(id) = mailbox.take(|message| *message) else { return NOT_SEEN };
                match mailbox.replier(id) {
                    Some(replier) => {
                        replier.fetch_add(1, Ordering::SeqCst);
                        ANSWERED
                    }
                    None => {
                        // The late answer must find the canceller's record.
                        assert_eq!(lock(&timed_out).take(), Some(id), "a late answer found no record");
                        ANSWERED_LATE
                    }
                }
            })
        };
        let found = mailbox.cancel(1, |found| {
            if let Cancelled::Taken(_) = &found {
                *lock(&timed_out) = Some(1);
            }
            found
        });
        let module = module.join().unwrap();
        let delivered = delivered.load(Ordering::SeqCst);
        match found {
            Cancelled::Answered => assert_eq!((delivered, module), (1, ANSWERED)),
            Cancelled::Taken(_) => assert_eq!((delivered, module), (0, ANSWERED_LATE)),
            Cancelled::NotTaken => assert_eq!((delivered, module), (0, NOT_SEEN)),
        }
    });
}

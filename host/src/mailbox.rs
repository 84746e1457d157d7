//! One kind of message from the base to a module: the queue, the message whose view the module
//! holds, and the repliers waiting for answers. Requests, SPI calls and completions are each a
//! `Mailbox`; a fourth kind is one more field.
//!
//! Lock order, everywhere: `repliers` before `queue`, and `queue` is let go before `held` is
//! taken. [`Mailbox::cancel`] is the only place that holds two of them at once.

use std::collections::{HashMap, VecDeque};

use crate::sync::{Mutex, lock};

/// Messages of type `M` for the module; answers are sent through repliers of type `R`
/// (`()` for a kind that is never answered).
pub(crate) struct Mailbox<M, R> {
    /// Waiting for the module, oldest first, by id.
    queue: Mutex<VecDeque<(u64, M)>>,
    /// The message whose view the module holds: valid until its next take from this mailbox.
    held: Mutex<Option<M>>,
    /// Repliers of messages handed over and not answered yet; `None` once the mailbox closed.
    repliers: Mutex<Option<HashMap<u64, R>>>,
}

/// What [`Mailbox::cancel`] found.
#[derive(Debug)]
pub(crate) enum Cancelled<R> {
    /// The message was still queued: it is gone, with its replier; the module never sees it.
    NotTaken,
    /// The module took the message and has not answered: here is its replier, so the answer,
    /// when it comes, finds none (the module is still working on it).
    Taken(R),
    /// There was no replier: the module answered already, or the mailbox closed.
    Answered,
}

impl<M, R> Default for Mailbox<M, R> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            held: Mutex::new(None),
            repliers: Mutex::new(Some(HashMap::new())),
        }
    }
}

impl<M, R> Mailbox<M, R> {
    /// Registers the replier for message `id` before the message is pushed; gives it back when
    /// the mailbox closed.
    pub(crate) fn expect_reply(&self, id: u64, replier: R) -> Result<(), R> {
        match lock(&self.repliers).as_mut() {
            Some(repliers) => {
                repliers.insert(id, replier);
                Ok(())
            }
            None => Err(replier),
        }
    }

    /// Queues a message (the caller then rings the doorbell).
    pub(crate) fn push(&self, id: u64, message: M) {
        lock(&self.queue).push_back((id, message));
    }

    /// Hands the oldest message to the module: it becomes the held one (dropping the one held
    /// before), and `view` builds the module's view of it in place. `None` when nothing waits.
    pub(crate) fn take<V>(&self, view: impl FnOnce(&mut M) -> V) -> Option<V> {
        let (_, message) = lock(&self.queue).pop_front()?;
        let mut held = lock(&self.held);
        Some(view(held.insert(message)))
    }

    /// The replier for message `id`, to answer it; `None` when it was cancelled, answered
    /// already or the mailbox closed.
    pub(crate) fn replier(&self, id: u64) -> Option<R> {
        lock(&self.repliers).as_mut().and_then(|repliers| repliers.remove(&id))
    }

    /// Withdraws message `id` (its caller gave up). `then` runs with what was found while the
    /// repliers are still locked, so an answer racing this cancel either reached its caller
    /// before (`Answered`) or finds no replier only after `then` has returned: whatever `then`
    /// records for a `Taken` message is there when the late answer looks for it.
    pub(crate) fn cancel<T>(&self, id: u64, then: impl FnOnce(Cancelled<R>) -> T) -> T {
        let mut repliers = lock(&self.repliers);
        let replier = repliers.as_mut().and_then(|repliers| repliers.remove(&id));
        let mut queue = lock(&self.queue);
        let queued = queue.iter().position(|(queued, _)| *queued == id);
        let message = queued.and_then(|at| queue.remove(at));
        drop(queue);
        let found = match (replier, message) {
            (None, _) => Cancelled::Answered,
            (Some(_), Some(_)) => Cancelled::NotTaken,
            (Some(replier), None) => Cancelled::Taken(replier),
        };
        let outcome = then(found);
        drop(repliers);
        outcome
    }

    /// Whether a message waits for the module.
    pub(crate) fn has_work(&self) -> bool {
        !lock(&self.queue).is_empty()
    }

    /// Refuses new repliers and drops every replier (their callers see the channel closed),
    /// every queued message and the held one. Call only once the module's thread has been
    /// joined: the held message may back a view the module still holds until then.
    pub(crate) fn close(&self) {
        let repliers = lock(&self.repliers).take();
        drop(repliers);
        lock(&self.queue).clear();
        lock(&self.held).take();
    }
}

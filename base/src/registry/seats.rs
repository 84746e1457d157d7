//! Seats held for a same-version replace: between the old build's drain and the new build's
//! routing, the module has no instance to serve it. Requests arriving then wait for the seat
//! (bounded by the start timeout) instead of getting `503 MODULE_UNAVAILABLE`, so rebuilding a
//! version in place (a developer's every edit) fails no request.

use std::sync::Arc;

use tokio::sync::watch;

use super::Registry;
use crate::sync::lock;

/// A held seat: released (waiters go on) when dropped, whatever became of the replace.
pub(crate) struct SeatHold<'a> {
    registry: &'a Registry,
    name: String,
    released: Arc<watch::Sender<bool>>,
}

impl Registry {
    /// Holds `name`'s seat until the returned guard is dropped.
    pub(super) fn hold_seat(&self, name: &str) -> SeatHold<'_> {
        let released = Arc::new(watch::Sender::new(false));
        lock(&self.seats).insert(name.to_owned(), Arc::clone(&released));
        SeatHold { registry: self, name: name.to_owned(), released }
    }

    /// Whether `name`'s seat is held: then a receiver that sees `true` once it is released.
    pub(crate) fn held_seat(&self, name: &str) -> Option<watch::Receiver<bool>> {
        lock(&self.seats).get(name).map(|released| released.subscribe())
    }
}

impl Drop for SeatHold<'_> {
    fn drop(&mut self) {
        let mut seats = lock(&self.registry.seats);
        if seats.get(&self.name).is_some_and(|held| Arc::ptr_eq(held, &self.released)) {
            seats.remove(&self.name);
        }
        drop(seats);
        self.released.send_replace(true);
    }
}

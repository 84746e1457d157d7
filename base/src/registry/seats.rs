//! Seats held for a same-version replace: between the old build's drain and the new build's
//! routing, the module has no instance to serve it. Requests arriving then wait for the seat
//! (bounded by the drain, stop and start timeouts) instead of getting `503 MODULE_UNAVAILABLE`,
//! so rebuilding a version in place (a developer's every edit) fails no request. Keyed by
//! `(name, version)`: two replaces of one module hold two seats.

use std::{collections::HashMap, sync::Arc};

use semver::Version;
use tokio::sync::watch;

use super::Registry;
use crate::sync::lock;

/// The held seats, by `(name, version)`, each with the sender that tells its waiters it is free.
pub(super) type Seats = HashMap<(String, Version), Arc<watch::Sender<bool>>>;

/// A held seat: released (waiters go on) when dropped, whatever became of the replace.
pub(crate) struct SeatHold<'a> {
    registry: &'a Registry,
    seat: (String, Version),
    released: Arc<watch::Sender<bool>>,
}

impl Registry {
    /// Holds the seat of `name@version` until the returned guard is dropped.
    pub(super) fn hold_seat(&self, name: &str, version: &Version) -> SeatHold<'_> {
        let released = Arc::new(watch::Sender::new(false));
        let seat = (name.to_owned(), version.clone());
        lock(&self.seats).insert(seat.clone(), Arc::clone(&released));
        SeatHold { registry: self, seat, released }
    }

    /// Whether a seat of `name` is held: then a receiver that sees `true` once it is released.
    pub(crate) fn held_seat(&self, name: &str) -> Option<watch::Receiver<bool>> {
        lock(&self.seats).iter().find(|((held, _), _)| held == name).map(|(_, released)| released.subscribe())
    }
}

impl Drop for SeatHold<'_> {
    fn drop(&mut self) {
        let mut seats = lock(&self.registry.seats);
        if seats.get(&self.seat).is_some_and(|held| Arc::ptr_eq(held, &self.released)) {
            seats.remove(&self.seat);
        }
        drop(seats);
        self.released.send_replace(true);
    }
}

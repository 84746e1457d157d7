//! How assignment changes reach the desired map: revision-monotonic, so a reordered or
//! duplicated delivery is harmless, and (a testing aid) a chaos layer that reorders, delays and
//! duplicates them on purpose.
//!
//! A module's desired entry is held with the etcd mod revision it came from; a put or a delete
//! older than what is held is ignored. A delete leaves its revision behind (a tombstone), so a
//! put delivered after the delete that followed it cannot bring the module back.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::chaos::{CHAOS_ENV, SplitMix, seed_from_env};

/// The longest a chaos delivery is delayed.
const CHAOS_MAX_DELAY_MS: u64 = 50;
/// One delivery in this many is duplicated.
const CHAOS_DUPLICATE_ONE_IN: u64 = 10;
/// The chaos layer logs its counters every this many deliveries.
const CHAOS_SUMMARY_EVERY: u64 = 25;

/// One change of one module's assignment key, as the watch (or chaos) delivers it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delivery<W> {
    pub(crate) module: String,
    /// The key's mod revision (a delete's: the revision of the delete).
    pub(crate) revision: i64,
    /// What the key now holds; `None`: deleted.
    pub(crate) wanted: Option<W>,
}

/// The desired map and the revision each module's entry (or tombstone) was last set at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DesiredMap<W> {
    pub(crate) entries: BTreeMap<String, W>,
    held: HashMap<String, i64>,
}

impl<W> Default for DesiredMap<W> {
    fn default() -> Self {
        Self { entries: BTreeMap::new(), held: HashMap::new() }
    }
}

impl<W> DesiredMap<W> {
    /// A fresh list read at `revision`: `listed` with their mod revisions. Modules held before
    /// and not listed get a tombstone at `revision` (they were deleted by then).
    pub(crate) fn relist(&mut self, listed: Vec<(String, i64, W)>, revision: i64) {
        let before: Vec<String> = self.entries.keys().cloned().collect();
        self.entries.clear();
        self.held.clear();
        for module in before {
            self.held.insert(module, revision);
        }
        for (module, mod_revision, wanted) in listed {
            self.held.insert(module.clone(), mod_revision);
            self.entries.insert(module, wanted);
        }
    }

    /// Applies `delivery` unless something newer is held for its module: whether it changed
    /// anything it may have (a duplicate of what is held counts as applied).
    pub(crate) fn deliver(&mut self, delivery: Delivery<W>) -> bool {
        if self.held.get(&delivery.module).is_some_and(|held| delivery.revision < *held) {
            return false;
        }
        self.held.insert(delivery.module.clone(), delivery.revision);
        match delivery.wanted {
            Some(wanted) => self.entries.insert(delivery.module, wanted),
            None => self.entries.remove(&delivery.module),
        };
        true
    }
}

/// The chaos layer: deliveries wait 0–50 ms each (so they overtake each other), and one in ten
/// is delivered twice.
#[derive(Debug)]
pub(crate) struct Chaos<W> {
    random: SplitMix,
    pending: Vec<(Instant, Delivery<W>)>,
    delivered: u64,
    duplicated: u64,
    ignored: u64,
}

impl<W: Clone> Chaos<W> {
    /// The layer if [`CHAOS_ENV`] is set (a loud warning then), seeded with its value.
    pub(crate) fn from_env() -> Option<Self> {
        let seed = seed_from_env()?;
        tracing::warn!(
            seed,
            "{CHAOS_ENV} is set: assignment deliveries are delayed, duplicated and reordered on \
             purpose. This is a testing aid; never set it in production"
        );
        Some(Self::new(seed))
    }

    fn new(seed: u64) -> Self {
        Self { random: SplitMix(seed), pending: Vec::new(), delivered: 0, duplicated: 0, ignored: 0 }
    }

    /// Queues `delivery` (maybe twice), each copy due after its own random delay.
    pub(crate) fn push(&mut self, delivery: Delivery<W>, now: Instant) {
        if self.random.below(CHAOS_DUPLICATE_ONE_IN) == 0 {
            self.duplicated += 1;
            let delay = self.delay();
            self.pending.push((now + delay, delivery.clone()));
        }
        let delay = self.delay();
        self.pending.push((now + delay, delivery));
    }

    fn delay(&mut self) -> Duration {
        Duration::from_millis(self.random.below(CHAOS_MAX_DELAY_MS + 1))
    }

    /// When the next queued delivery is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|(due, _)| *due).min()
    }

    /// Delivers into `desired` what is due at `now`, in the order their delays make: whether
    /// anything changed.
    pub(crate) fn deliver_due(&mut self, desired: &mut DesiredMap<W>, now: Instant) -> bool {
        let mut due: Vec<(Instant, Delivery<W>)> = Vec::new();
        let mut index = 0;
        while index < self.pending.len() {
            if self.pending[index].0 <= now {
                due.push(self.pending.swap_remove(index));
            } else {
                index += 1;
            }
        }
        due.sort_by_key(|(at, _)| *at);
        let mut changed = false;
        for (_, delivery) in due {
            let applied = desired.deliver(delivery);
            changed |= applied;
            self.ignored += u64::from(!applied);
            self.delivered += 1;
            if self.delivered.is_multiple_of(CHAOS_SUMMARY_EVERY) {
                tracing::info!(
                    delivered = self.delivered,
                    duplicated = self.duplicated,
                    ignored = self.ignored,
                    "fleet chaos: assignment deliveries so far"
                );
            }
        }
        changed
    }

    /// Forgets what is queued (the session that received it ended; the next one relists).
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(module: &str, revision: i64, value: &str) -> Delivery<String> {
        Delivery { module: module.into(), revision, wanted: Some(value.into()) }
    }

    fn delete(module: &str, revision: i64) -> Delivery<String> {
        Delivery { module: module.into(), revision, wanted: None }
    }

    #[test]
    fn older_puts_and_deletes_are_ignored_and_a_delete_leaves_a_tombstone() {
        let mut map = DesiredMap::default();
        assert!(map.deliver(put("echo", 5, "v5")));
        assert!(!map.deliver(put("echo", 4, "v4")), "older put");
        assert_eq!(map.entries["echo"], "v5");
        assert!(map.deliver(put("echo", 5, "v5")), "a duplicate is harmless");
        assert!(!map.deliver(delete("echo", 3)), "older delete");
        assert_eq!(map.entries["echo"], "v5");
        assert!(map.deliver(delete("echo", 7)));
        assert!(!map.entries.contains_key("echo"));
        assert!(!map.deliver(put("echo", 6, "v6")), "a put from before the delete stays deleted");
        assert!(!map.entries.contains_key("echo"));
        assert!(map.deliver(put("echo", 8, "v8")));
        assert_eq!(map.entries["echo"], "v8");
    }

    #[test]
    fn a_relist_is_authoritative_and_tombstones_what_it_no_longer_lists() {
        let mut map = DesiredMap::default();
        map.deliver(put("echo", 5, "v5"));
        map.deliver(put("hello", 6, "h6"));
        map.relist(vec![("echo".into(), 9, "v9".into())], 10);
        assert_eq!(map.entries.len(), 1);
        assert_eq!(map.entries["echo"], "v9");
        assert!(!map.deliver(put("hello", 6, "h6")), "deleted by the time of the list");
        assert!(!map.deliver(put("echo", 8, "v8")));
    }

    #[test]
    fn chaos_reorders_and_duplicates_but_the_newest_revision_wins() {
        let mut chaos = Chaos::new(42);
        let mut map = DesiredMap::default();
        let start = Instant::now();
        for revision in 1..=200 {
            let module = format!("m{}", revision % 4);
            chaos.push(put(&module, revision, &format!("r{revision}")), start);
        }
        chaos.push(delete("m0", 201), start);
        let mut now = start;
        while let Some(due) = chaos.next_due() {
            now = now.max(due);
            chaos.deliver_due(&mut map, now);
        }
        assert!(chaos.delivered > 201, "some were duplicated: {}", chaos.delivered);
        assert!(chaos.ignored > 0, "some arrived out of order");
        assert!(!map.entries.contains_key("m0"));
        assert_eq!(map.entries["m1"], "r197");
        assert_eq!(map.entries["m2"], "r198");
        assert_eq!(map.entries["m3"], "r199");
        assert!(now <= start + Duration::from_millis(CHAOS_MAX_DELAY_MS));
    }
}

//! The routing table: for each module name, which running instance a request goes to.
//!
//! Immutable once published (the registry swaps in a new table with `arc-swap`), so the request
//! path reads it without a lock. A request goes to the version its `X-Pedestal-Version` header
//! pins, else to a version drawn by the module's traffic weights, else to the active version. A
//! request holds its instance (`Arc`) until it is answered, so a switch never moves a request
//! that already started.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    error::{Error, Subject},
    instance::Instance,
};

/// Module name → its route.
pub type RoutingTable = HashMap<String, Route>;

/// The name of the header that pins a request to one version.
pub const VERSION_HEADER: &str = "x-pedestal-version";

/// Where one module's requests go.
#[derive(Debug)]
pub struct Route {
    /// The version that gets the traffic without weights or a pinned version.
    pub active: Option<Arc<Instance>>,
    /// Every running version a request may pin.
    pub running: Vec<Arc<Instance>>,
    /// A weighted split across versions, when one is set.
    pub split: Option<Split>,
}

/// Traffic weights across running versions: request `n` goes to the version whose cumulative
/// weight range holds `n mod total`, a deterministic interleaving with the exact proportions.
#[derive(Debug)]
pub struct Split {
    /// Each version with the end of its cumulative range.
    targets: Vec<(Arc<Instance>, u64)>,
    total: u64,
    next: AtomicU64,
}

impl Split {
    /// A split over `weighted` (zero weights dropped); `None` when nothing is left. `resume`
    /// continues the request count of the split it replaces, so republishing the table (for any
    /// module) does not restart the cycle at the first version.
    pub fn new(weighted: Vec<(Arc<Instance>, u32)>, resume: Option<&Split>) -> Option<Self> {
        let mut total = 0u64;
        let mut targets = Vec::new();
        // Interleave: spread each version's share over the cycle instead of sending runs.
        for (instance, weight) in weighted.into_iter().filter(|(_, w)| *w > 0) {
            total += u64::from(weight);
            targets.push((instance, total));
        }
        let next = resume.map_or(0, |split| split.next.load(Ordering::Relaxed));
        (total > 0).then(|| Self { targets, total, next: AtomicU64::new(next) })
    }

    fn pick(&self) -> &Arc<Instance> {
        // A stride coprime with the cycle walks every slot once per cycle, interleaving versions.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = (n.wrapping_mul(stride(self.total))) % self.total;
        let index = self.targets.partition_point(|(_, end)| *end <= slot);
        &self.targets[index.min(self.targets.len() - 1)].0
    }
}

/// The largest number below `total / 2 + 1` that is coprime with `total` (at least 1).
fn stride(total: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    (1..=total / 2 + 1).rev().find(|s| gcd(*s, total) == 1).unwrap_or(1)
}

impl Route {
    /// The instance that serves a request with the given `X-Pedestal-Version` value (if any).
    pub fn pick(&self, name: &str, pinned: Option<&str>) -> Result<Arc<Instance>, Error> {
        if let Some(version) = pinned {
            return self.running.iter().find(|i| i.id.version.to_string() == version).cloned().ok_or_else(
                || Error::VersionNotFound {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    running: self.running.iter().map(|i| i.id.version.to_string()).collect(),
                },
            );
        }
        if let Some(split) = &self.split {
            return Ok(Arc::clone(split.pick()));
        }
        self.active.clone().ok_or_else(|| Error::ModuleUnavailable {
            id: Subject::Name(name.to_owned()),
            reason: "no version is active; pin one with the x-pedestal-version header".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_coprime_with_the_cycle() {
        for total in 1..200 {
            let s = stride(total);
            let mut seen: Vec<u64> = (0..total).map(|n| n * s % total).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..total).collect::<Vec<_>>(), "total {total} stride {s}");
        }
    }
}

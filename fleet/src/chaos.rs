//! What the fleet's testing aids share, all off unless their hidden variable is set: the
//! chaos layers' variable ([`CHAOS_ENV`]), its seed and a small seeded generator, and the watch
//! delay ([`WATCH_DELAY_ENV`]). The agent's chaos layer (in `agent/delivery.rs`) delays,
//! duplicates and reorders assignment deliveries; the controller's (in `controller/chaos.rs`)
//! does the same to the leader's reconcile writes.

/// The hidden environment variable that turns the chaos layers on: its value seeds them.
pub(crate) const CHAOS_ENV: &str = "PEDESTAL_FLEET_CHAOS";

/// The hidden environment variable that holds each agent session's assignments watch that many
/// milliseconds after its list (the lease kept alive meanwhile): a test compacts etcd past the
/// list's revision in that gap, so the watch is cancelled by compaction and the agent must
/// relist (without it, a live watch is cancelled by compaction only when etcd finds it too
/// far behind, which a test cannot arrange reliably).
pub(crate) const WATCH_DELAY_ENV: &str = "PEDESTAL_FLEET_WATCH_DELAY_MS";

/// The delay [`WATCH_DELAY_ENV`] asks for, if it is set to a number of milliseconds.
pub(crate) fn watch_delay() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(WATCH_DELAY_ENV).ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// The seed [`CHAOS_ENV`] gives (a number, or any text hashed), or `None` when it is not set.
pub(crate) fn seed_from_env() -> Option<u64> {
    let seed = std::env::var(CHAOS_ENV).ok()?;
    Some(seed.parse::<u64>().unwrap_or_else(|_| {
        seed.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }))
}

/// A small seeded generator (SplitMix64): chaos needs to be reproducible, not secure.
#[derive(Debug)]
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..bound`.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

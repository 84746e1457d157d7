//! What the fleet's chaos layers share (testing aids, off unless [`CHAOS_ENV`] is set): the
//! variable, its seed, and a small seeded generator. The agent's layer (in `agent/delivery.rs`)
//! delays, duplicates and reorders assignment deliveries; the controller's (in
//! `controller/chaos.rs`) does the same to the leader's reconcile writes.

/// The hidden environment variable that turns the chaos layers on: its value seeds them.
pub(crate) const CHAOS_ENV: &str = "PEDESTAL_FLEET_CHAOS";

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

//! The controller's chaos layer (a testing aid, on only with `PEDESTAL_FLEET_CHAOS`): the
//! leader's reconcile writes are delayed, duplicated and answered "unknown" while they still
//! land later, so they reach etcd out of order with the passes that follow. With the write
//! sequence (`Fence::commit_in_sequence`), every stale copy must be refused: the layer counts
//! the copies of committed writes that committed again (`stale_committed`, which must stay 0)
//! and logs its counters, for `tests/tests/fleet_chaos.rs`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use etcd_client::{Client, TxnOp};

use crate::{
    chaos::{CHAOS_ENV, SplitMix, seed_from_env},
    store::{Fence, Outcome},
};

/// The longest a write waits before it is sent.
const MAX_DELAY_MS: u64 = 30;
/// One write in this many is sent again later, after its answer.
const DUPLICATE_ONE_IN: u64 = 4;
/// One write in this many is answered "unknown" at once and sent later.
const LATE_ONE_IN: u64 = 8;
/// The longest a duplicate or late copy waits: several passes (at least 100 ms apart) write
/// meanwhile.
const MAX_LATER_MS: u64 = 400;
/// The counters are logged every this many writes.
const SUMMARY_EVERY: u64 = 25;

/// The layer: a generator and its counters.
#[derive(Debug)]
pub(crate) struct WriteChaos {
    random: Mutex<SplitMix>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    duplicated: AtomicU64,
    late: AtomicU64,
    late_committed: AtomicU64,
    stale_refused: AtomicU64,
    stale_committed: AtomicU64,
}

impl Counters {
    fn log(&self) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // The controller logs plain lines on stderr (`Controller::say`), no tracing.
        eprintln!(
            "pedestal controller: fleet chaos: controller writes so far writes={} duplicated={} late={} \
             late_committed={} stale_refused={} stale_committed={}",
            get(&self.writes),
            get(&self.duplicated),
            get(&self.late),
            get(&self.late_committed),
            get(&self.stale_refused),
            get(&self.stale_committed),
        );
    }
}

/// What the generator decided for one write.
struct Draw {
    delay: Duration,
    duplicate: Option<Duration>,
    late: Option<Duration>,
}

impl WriteChaos {
    /// The layer if `PEDESTAL_FLEET_CHAOS` is set (a loud warning then), seeded with its value.
    pub(crate) fn from_env() -> Option<Self> {
        let seed = seed_from_env()?;
        eprintln!(
            "pedestal controller: {CHAOS_ENV} is set (seed {seed}): the leader's writes are delayed, \
             duplicated and reordered on purpose. This is a testing aid; never set it in production"
        );
        Some(Self { random: Mutex::new(SplitMix(seed)), counters: Arc::default() })
    }

    fn draw(&self) -> Draw {
        let mut random = self.random.lock().unwrap_or_else(|e| e.into_inner());
        let later = |one_in: u64, random: &mut SplitMix| {
            (random.below(one_in) == 0).then(|| Duration::from_millis(10 + random.below(MAX_LATER_MS)))
        };
        let delay = Duration::from_millis(random.below(MAX_DELAY_MS + 1));
        let late = later(LATE_ONE_IN, &mut random);
        let duplicate = if late.is_none() { later(DUPLICATE_ONE_IN, &mut random) } else { None };
        Draw { delay, duplicate, late }
    }

    /// [`Fence::commit_in_sequence`] through the layer: delayed; or answered `Unknown` now and
    /// sent later; or sent, then sent again later (a copy that must be refused if the first
    /// committed).
    pub(crate) async fn commit(
        &self,
        client: &Client,
        fence: &Fence,
        sequence: &str,
        after: i64,
        ops: Vec<TxnOp>,
    ) -> Outcome {
        let draw = self.draw();
        let counters = Arc::clone(&self.counters);
        let writes = counters.writes.fetch_add(1, Ordering::Relaxed) + 1;
        if writes.is_multiple_of(SUMMARY_EVERY) {
            counters.log();
        }
        tokio::time::sleep(draw.delay).await;
        let send_later = |wait: Duration, first: Option<bool>| {
            let (mut client, fence, sequence, ops) =
                (client.clone(), fence.clone(), sequence.to_owned(), ops.clone());
            let counters = Arc::clone(&counters);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let committed = matches!(
                    fence.commit_in_sequence(&mut client, &sequence, after, ops).await,
                    Outcome::Committed(_)
                );
                match first {
                    // A late write: whether it landed is up to what happened meanwhile.
                    None if committed => counters.late_committed.fetch_add(1, Ordering::Relaxed),
                    None => counters.stale_refused.fetch_add(1, Ordering::Relaxed),
                    // A copy of a committed write must never commit again.
                    Some(true) if committed => counters.stale_committed.fetch_add(1, Ordering::Relaxed),
                    Some(true) => counters.stale_refused.fetch_add(1, Ordering::Relaxed),
                    Some(false) => 0,
                };
            });
        };
        if let Some(wait) = draw.late {
            counters.late.fetch_add(1, Ordering::Relaxed);
            send_later(wait, None);
            return Outcome::Unknown(etcd_client::Error::InvalidArgs(
                "fleet chaos: the answer was lost".into(),
            ));
        }
        let outcome = fence.commit_in_sequence(&mut client.clone(), sequence, after, ops.clone()).await;
        if let Some(wait) = draw.duplicate {
            counters.duplicated.fetch_add(1, Ordering::Relaxed);
            send_later(wait, Some(matches!(outcome, Outcome::Committed(_))));
        }
        outcome
    }
}

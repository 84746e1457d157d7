//! Who leads: a lease per controller session and a campaign transaction on the leader key.
//!
//! A session grants a lease (TTL 2 s) and renews it every 500 ms; under it the controller
//! registers `controllers/<id>` and, when the leader key is free (`version(leader) == 0`), puts
//! the leader key. The put's revision is the key's create revision: the term, which every
//! leader write compares ([`crate::store::Fence`]).
//!
//! Stepping down never waits for etcd: [`Leadership::fence`] answers `None` as soon as the
//! last renewal is older than the lease's TTL minus a margin, so a controller whose keep-alives
//! stop getting answers stops writing before its lease can expire. A refused fenced write
//! (another term) steps down at once too. Standbys watch the leader key and campaign as soon
//! as it is deleted.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use tokio::sync::watch;

use super::Controller;
use crate::{
    model::{ControllerRecord, LeaderRecord, now_ms},
    store::{Fence, REQUEST_TIMEOUT},
};

/// The lease's time to live, in seconds.
pub(crate) const LEASE_TTL_SECS: i64 = 2;
/// How often the lease is renewed.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(500);
/// How long before the lease could expire a controller stops acting as leader.
const STEP_DOWN_MARGIN: Duration = Duration::from_millis(600);

/// This controller's view of its own leadership.
pub(crate) struct Leadership {
    term: watch::Sender<Option<Fence>>,
    /// The lease is alive at least until then (the send time of the last answered renewal
    /// plus the TTL).
    valid_until: Mutex<Instant>,
    /// The current session's lease, revoked at shutdown so a standby need not wait out the TTL.
    lease: Mutex<Option<i64>>,
}

impl Leadership {
    pub(crate) fn new() -> Self {
        Self {
            term: watch::Sender::new(None),
            valid_until: Mutex::new(Instant::now()),
            lease: Mutex::new(None),
        }
    }

    /// The fence to write with, if this controller leads and its lease is safely alive.
    pub(crate) fn fence(&self) -> Option<Fence> {
        let valid_until = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        if Instant::now() + STEP_DOWN_MARGIN >= valid_until {
            return None;
        }
        self.term.borrow().clone()
    }

    /// Stops acting as leader (a no-op when not leading).
    pub(crate) fn step_down(&self, why: &str) -> bool {
        let was = self.term.send_replace(None);
        if let Some(fence) = &was {
            eprintln!("pedestal controller: standing by (term {} ended: {why})", fence.term);
        }
        was.is_some()
    }

    /// Ends this controller's part: no longer leading, and its lease (leader key, controller
    /// key) revoked.
    pub(crate) async fn resign(&self, client: &mut etcd_client::Client) {
        self.step_down("shutting down");
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(lease) = lease {
            let _ = tokio::time::timeout(Duration::from_millis(500), client.lease_revoke(lease)).await;
        }
    }

    fn lead(&self, fence: Fence) {
        self.term.send_replace(Some(fence));
    }

    fn renewed(&self, until: Instant) {
        let mut valid_until = self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        if until > *valid_until {
            *valid_until = until;
        }
    }

    async fn deposed(&self) {
        let mut rx = self.term.subscribe();
        let _ = rx.wait_for(|term| term.is_none()).await;
    }
}

/// Runs sessions forever: one ends when its lease is lost, the next starts with a new lease.
pub(crate) async fn run(ctl: Arc<Controller>) {
    loop {
        let outcome = session(&ctl).await;
        if let Err(e) = outcome {
            ctl.say(&format!("etcd session ended: {e:#}; retrying"));
            ctl.reconnect().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn session(ctl: &Controller) -> anyhow::Result<()> {
    let mut client = ctl.client();
    let granted_at = Instant::now();
    let lease = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_grant(LEASE_TTL_SECS, None)).await??.id();
    ctl.leadership.renewed(granted_at + Duration::from_secs(LEASE_TTL_SECS as u64));
    *ctl.leadership.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
    let record = serde_json::to_string(&ControllerRecord { id: ctl.id.clone(), url: ctl.url.clone() })?;
    let options = PutOptions::new().with_lease(lease);
    tokio::time::timeout(REQUEST_TIMEOUT, client.put(ctl.keys.controller(&ctl.id), record, Some(options)))
        .await??;

    let keepalive = async {
        let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = Unanswered::default();
        loop {
            tick.tick().await;
            pending.sent(Instant::now());
            let answered = match keeper.keep_alive().await {
                Ok(()) => tokio::time::timeout(KEEPALIVE_EVERY * 2, answers.message()).await,
                Err(e) => Ok(Err(e)),
            };
            match answered {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    // Answers come back in order: this one is for the oldest send not yet
                    // answered (a late answer is never credited to a newer send).
                    if let Some(until) = pending.answered(Duration::from_secs(answer.ttl() as u64)) {
                        ctl.leadership.renewed(until);
                    }
                }
                Ok(Ok(Some(_))) => anyhow::bail!("lease {lease:x} expired"),
                Ok(Ok(None)) => anyhow::bail!("the keep-alive stream closed"),
                Ok(Err(e)) => anyhow::bail!("keep-alive failed: {e}"),
                Err(_) => {
                    // No answer yet: keep trying while the lease may still be alive; the fence
                    // has already stopped answering when it is close to expiry.
                    if ctl.leadership.fence().is_none() && ctl.leadership.term.borrow().is_some() {
                        ctl.leadership.step_down("keep-alives unanswered");
                    }
                    let valid_until = *ctl.leadership.valid_until.lock().unwrap_or_else(|e| e.into_inner());
                    if Instant::now() >= valid_until {
                        anyhow::bail!("keep-alives unanswered until the lease expired");
                    }
                }
            }
        }
    };
    let campaigns = campaign(ctl, lease);
    let result = tokio::select! {
        r = keepalive => r,
        r = campaigns => r,
    };
    ctl.leadership.step_down("the lease was lost");
    let mut client = ctl.client();
    let _ = tokio::time::timeout(Duration::from_millis(500), client.lease_revoke(lease)).await;
    result
}

/// Campaigns while the session lives: leads until deposed, or waits for the leader key to go.
async fn campaign(ctl: &Controller, lease: i64) -> anyhow::Result<()> {
    let key = ctl.keys.leader();
    let mut client = ctl.client();
    let mut announced: Option<String> = None;
    loop {
        let record = serde_json::to_string(&LeaderRecord {
            id: ctl.id.clone(),
            url: ctl.url.clone(),
            since_ms: now_ms(),
        })?;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), record, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                ctl.say(&format!("campaign failed: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                ctl.say("campaign: etcd did not answer in time");
                continue;
            }
        };
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        if response.succeeded() {
            ctl.leadership.lead(Fence { key: key.clone(), term: revision });
            ctl.say(&format!("leading (term {revision})"));
            ctl.kick.notify_one();
            ctl.leadership.deposed().await;
            // Whatever ended the term (a refused write, keep-alives unanswered), the session
            // ends with it: its lease is revoked, so a leader key it may still hold goes and
            // every controller (this one with a new lease) campaigns afresh.
            return Ok(());
        }
        let held = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| (kv.lease(), kv.create_revision())),
            _ => None,
        });
        if let Some(term) = held.and_then(|(held_lease, created)| our_term(held_lease, created, lease)) {
            // An earlier campaign of this session committed but its answer was lost (a
            // timeout, a broken connection): the key is ours, under our live lease.
            ctl.leadership.lead(Fence { key: key.clone(), term });
            ctl.say(&format!("leading (term {term}; an earlier campaign's answer was lost)"));
            ctl.kick.notify_one();
            ctl.leadership.deposed().await;
            return Ok(());
        }
        let leader = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => {
                get.kvs().first().and_then(|kv| serde_json::from_slice::<LeaderRecord>(kv.value()).ok())
            }
            _ => None,
        });
        let leader_id = leader.map(|l| l.id).unwrap_or_else(|| "?".to_owned());
        if announced.as_deref() != Some(leader_id.as_str()) {
            ctl.say(&format!("standing by (leader {leader_id})"));
            announced = Some(leader_id);
        }
        wait_for_delete(ctl, &key, revision).await;
    }
}

/// The term of a leader key this session holds: one put under `lease` (this session's, which
/// only this session's campaigns use) was a campaign of ours that committed. A key left by an
/// earlier session of this controller holds another lease, soon revoked or expired: not ours.
fn our_term(held_lease: i64, create_revision: i64, lease: i64) -> Option<i64> {
    (held_lease == lease && lease != 0).then_some(create_revision)
}

/// The send times of keep-alives not yet answered, oldest first.
#[derive(Debug, Default)]
struct Unanswered {
    sends: VecDeque<Instant>,
}

impl Unanswered {
    /// At most this many sends are remembered (the lease is long expired by then).
    const MAX: usize = 64;

    fn sent(&mut self, at: Instant) {
        if self.sends.len() == Self::MAX {
            self.sends.pop_back();
        }
        self.sends.push_back(at);
    }

    /// An answer granting `ttl` arrived: the lease lives at least `ttl` past the oldest
    /// unanswered send (never overestimated).
    fn answered(&mut self, ttl: Duration) -> Option<Instant> {
        self.sends.pop_front().map(|sent| sent + ttl)
    }
}

/// Returns when the leader key is deleted after `revision` (or the watch breaks: the caller
/// campaigns again, which reads the key afresh).
async fn wait_for_delete(ctl: &Controller, key: &str, revision: i64) {
    let mut client = ctl.client();
    let options = WatchOptions::new().with_start_revision(revision + 1);
    let Ok(mut stream) = client.watch(key, Some(options)).await else {
        tokio::time::sleep(Duration::from_millis(200)).await;
        return;
    };
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                if message.canceled() || message.events().iter().any(|e| e.event_type() == EventType::Delete)
                {
                    return;
                }
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_answer_is_credited_to_the_oldest_send() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(2);
        let mut pending = Unanswered::default();
        pending.sent(t0);
        // No answer in time; another send; then the late answer to the first arrives.
        pending.sent(t0 + Duration::from_secs(1));
        assert_eq!(pending.answered(ttl), Some(t0 + ttl));
        assert_eq!(pending.answered(ttl), Some(t0 + Duration::from_secs(1) + ttl));
        assert_eq!(pending.answered(ttl), None);
    }

    #[test]
    fn unanswered_sends_are_bounded_and_keep_the_oldest() {
        let t0 = Instant::now();
        let mut pending = Unanswered::default();
        for i in 0..100 {
            pending.sent(t0 + Duration::from_millis(i));
        }
        assert_eq!(pending.sends.len(), Unanswered::MAX);
        assert_eq!(pending.answered(Duration::ZERO), Some(t0));
    }

    #[test]
    fn a_leader_key_under_this_sessions_lease_is_ours() {
        assert_eq!(our_term(7, 42, 7), Some(42));
        assert_eq!(our_term(8, 42, 7), None, "another session's lease");
        assert_eq!(our_term(0, 42, 0), None, "no lease at all");
    }
}

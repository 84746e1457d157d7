//! The leader compacts etcd's history, as Kubernetes' API server does: every base rewrites its
//! status each report interval, so 100 bases add about 150 KiB of history a second, and an etcd
//! never compacted reaches its 2 GiB quota within hours. At each tick the leader compacts to the
//! revision it saw at the tick before, so at least one interval of history stays for watchers
//! that are behind (one further behind is cancelled and relists: the agents do, see
//! `agent/session.rs`). `--compact-every 0` leaves it to etcd's own `--auto-compaction-*`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use super::Controller;
use crate::store::REQUEST_TIMEOUT;

/// Runs forever; compacts only while leading, and a new leader first waits a whole interval.
pub(crate) async fn run(ctl: Arc<Controller>, every: Duration) {
    if every.is_zero() {
        return std::future::pending().await;
    }
    // The revision seen at the last tick while leading (the next compaction's target).
    let mut seen: Option<i64> = None;
    loop {
        tokio::time::sleep(every).await;
        if ctl.leadership.fence().is_none() {
            seen = None;
            continue;
        }
        let mut client = ctl.client();
        let key = ctl.keys.leader();
        let options = etcd_client::GetOptions::new().with_count_only();
        let now = match tokio::time::timeout(REQUEST_TIMEOUT, client.get(key, Some(options))).await {
            Ok(Ok(answer)) => answer.header().map(|h| h.revision()),
            Ok(Err(e)) => {
                ctl.say(&format!("compaction: reading the revision failed: {e}"));
                None
            }
            Err(_) => None,
        };
        let Some(now) = now else { continue };
        if let Some(target) =
            seen.filter(|&target| target > ctl.metrics.compacted.load(Ordering::Relaxed) as i64)
        {
            match tokio::time::timeout(REQUEST_TIMEOUT, client.compact(target, None)).await {
                Ok(Ok(_)) => {
                    ctl.metrics.compacted.store(target as u64, Ordering::Relaxed);
                    ctl.metrics.compactions.fetch_add(1, Ordering::Relaxed);
                    ctl.say(&format!("compacted etcd's history up to revision {target} (now {now})"));
                }
                // Compacted further already (etcd's own auto-compaction, another controller).
                Ok(Err(e)) if e.to_string().contains("compacted") => {
                    ctl.metrics.compacted.store(target as u64, Ordering::Relaxed);
                }
                Ok(Err(e)) => ctl.say(&format!("compaction to revision {target} failed: {e}")),
                Err(_) => ctl.say(&format!("compaction to revision {target}: etcd did not answer in time")),
            }
        }
        seen = Some(now);
    }
}

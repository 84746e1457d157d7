//! The agent's tasks: the etcd session (lease, registration, watches), the reconcile loop and
//! the status reports. They share a [`Context`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use etcd_client::{Client, EventType, GetOptions, KeyValue, PutOptions, WatchOptions};
use pedestal_base::Registry;
use tokio::sync::Notify;

use super::{
    Join, OWNER,
    apply::{self, Applied, AppliedModule, Desired, Nack},
    artifacts::Source,
    delivery::{Chaos, Delivery, DesiredMap},
    forward::EndpointMap,
    report::{self, Meter},
};
use crate::{
    model::{Assignment, BaseRecord, BaseStatus, ControllerRecord, Endpoints, Failure},
    store,
};

/// The base's lease: how long its keys outlive it.
pub(crate) const LEASE_TTL_SECS: i64 = 3;
/// How often the lease is kept alive.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the reconcile loop runs even when nothing changed.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How long a failed assignment waits before it is tried again (a new revision: at once).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long a module whose assignment was deleted keeps serving before it is drained and
/// unloaded: the other bases' endpoint maps stop naming this base in that time, so requests
/// they forward here meanwhile are still answered.
pub(crate) const REMOVE_GRACE: Duration = Duration::from_secs(1);
/// The `reason` a module in its removal grace is reported with.
pub(crate) const UNASSIGNED: &str = "UNASSIGNED";

/// What an assignment key asks for.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per module in the desired map, mostly valid: boxing would save nothing"
)]
enum Wanted {
    /// An assignment to apply.
    Valid(Desired),
    /// A value that cannot be an assignment of this key (unreadable, or naming another
    /// module): never applied, and never a reason to uninstall either. What runs stays, and
    /// the key is NACKed with `ASSIGNMENT_INVALID`.
    Invalid {
        revision: i64,
        /// What the value says, as far as it can be read (for the NACK).
        version: String,
        sha256: String,
        reason: String,
    },
}

/// The modules the fleet applied that no assignment key names any more: those an
/// unassignment uninstalls. A key whose value is invalid still names its module.
fn unassigned(applied: &Applied, desired: &BTreeMap<String, Wanted>) -> Vec<String> {
    applied.modules.keys().filter(|m| !desired.contains_key(*m)).cloned().collect()
}

/// What the agent's tasks share.
struct Context {
    join: Arc<Join>,
    registry: Arc<Registry>,
    endpoints: Arc<EndpointMap>,
    /// The assignments, as last listed and watched (revision-monotonic); `None` until etcd
    /// first answered (until then nothing is installed or uninstalled: fail static).
    desired: Mutex<Option<DesiredMap<Wanted>>>,
    /// The chaos layer between the watch and `desired`, when `PEDESTAL_FLEET_CHAOS` is set.
    chaos: Mutex<Option<Chaos<Wanted>>>,
    /// Modules whose assignment is gone, in their removal grace: since when.
    leaving: Mutex<HashMap<String, Instant>>,
    /// What was applied, as in `fleet-applied.json`.
    applied: Mutex<Applied>,
    /// NACKs, by module.
    failures: Mutex<BTreeMap<String, Failure>>,
    /// When each failed assignment (module, revision) was last tried.
    attempts: Mutex<HashMap<String, (i64, Instant)>>,
    /// Stale assignments already logged.
    stale_logged: Mutex<BTreeSet<(String, i64)>>,
    /// Uninstalls of unassigned modules that failed: the error (logged once) and when.
    removal_failures: Mutex<HashMap<String, (String, Instant)>>,
    /// The live session: a client and the lease the base's keys are under.
    session: Mutex<Option<(Client, i64)>>,
    /// Wakes the reconcile loop.
    reconcile: Notify,
    /// Wakes the reporter.
    report: Notify,
    /// The CPU and request counters of the last report.
    meter: Mutex<Meter>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The agent: waits for the base, then runs its three loops for ever.
pub(crate) async fn run(join: Arc<Join>, endpoints: Arc<EndpointMap>, registry: Arc<Registry>) {
    // The bound addresses are known before the ready line; the restore is done once ready.
    let (traffic, admin) = loop {
        if let Some(addresses) = registry.bound_addresses().filter(|_| registry.is_ready()) {
            break addresses;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let applied = Applied::load(&Applied::path(&registry.config().data_dir));
    // What the fleet applied before a restart is still the fleet's, even before etcd answers.
    for module in applied.modules.keys() {
        registry.set_owner(module, Some(OWNER));
    }
    let record = BaseRecord {
        id: join.base_id.clone(),
        traffic_url: format!("http://{}:{}", join.advertise_host, traffic.port()),
        admin_url: format!("http://{}:{}", join.advertise_host, admin.port()),
        labels: join.labels.clone(),
        capacity: join.capacity,
        interface_version: pedestal_module_api::abi::INTERFACE_VERSION.to_owned(),
        started_ms: crate::model::now_ms(),
    };
    let context = Arc::new(Context {
        join,
        registry,
        endpoints,
        desired: Mutex::new(None),
        chaos: Mutex::new(Chaos::from_env()),
        leaving: Mutex::default(),
        applied: Mutex::new(applied),
        failures: Mutex::default(),
        attempts: Mutex::default(),
        stale_logged: Mutex::default(),
        removal_failures: Mutex::default(),
        session: Mutex::new(None),
        reconcile: Notify::new(),
        report: Notify::new(),
        meter: Mutex::default(),
    });
    tokio::spawn(reconcile_loop(Arc::clone(&context)));
    tokio::spawn(report_loop(Arc::clone(&context)));
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&context, &record, &mut backoff).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(base = %context.join.base_id, "fleet session ended: {e}; retrying"),
        }
        *lock(&context.session) = None;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

type Failed = Box<dyn std::error::Error + Send + Sync>;

/// One session: connect, lease, register, list and watch, until something breaks.
async fn session(context: &Arc<Context>, record: &BaseRecord, backoff: &mut Duration) -> Result<(), Failed> {
    let keys = &context.join.keys;
    let mut client = store::connect(&context.join.endpoints).await?;
    let lease = timed(client.lease_grant(LEASE_TTL_SECS, None)).await?.id();
    let under_lease = || Some(PutOptions::new().with_lease(lease));
    timed(client.put(keys.base(&record.id), serde_json::to_vec(record)?, under_lease())).await?;
    let status = built_status(context).await.ok_or("the status could not be built")?;
    timed(client.put(keys.status(&record.id), serde_json::to_vec(&status)?, under_lease())).await?;
    let (mut keeper, mut kept) = timed(client.lease_keep_alive(lease)).await?;
    *lock(&context.session) = Some((client.clone(), lease));
    tracing::info!(base = %record.id, lease, traffic = %record.traffic_url, "joined the fleet");
    *backoff = Duration::from_millis(100);

    // Assignments: the list, then every change after it.
    let prefix = keys.assignments_of(&record.id);
    let listed = timed(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
    let revision = listed.header().map(|h| h.revision()).unwrap_or_default();
    let listed = listed
        .kvs()
        .iter()
        .filter_map(|kv| {
            parse_assignment(kv, &prefix).map(|(module, wanted)| (module, kv.mod_revision(), wanted))
        })
        .collect();
    // What the previous session queued is older than this list.
    if let Some(chaos) = lock(&context.chaos).as_mut() {
        chaos.clear();
    }
    lock(&context.desired).get_or_insert_with(DesiredMap::default).relist(listed, revision);
    context.reconcile.notify_one();
    if let Some(delay) = crate::chaos::watch_delay() {
        tracing::warn!(
            base = %record.id,
            revision,
            "assignments listed at revision {revision}; their watch starts in {delay:?} ({})",
            crate::chaos::WATCH_DELAY_ENV
        );
        keep_alive_for(&mut keeper, &mut kept, delay).await?;
    }
    let watch = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(revision + 1);
    let mut assignments = timed(client.watch(prefix.as_str(), Some(watch))).await?;

    // Endpoints, for forwarding.
    let endpoints_prefix = keys.all_endpoints();
    let listed = timed(client.get(endpoints_prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
    let revision = listed.header().map(|h| h.revision()).unwrap_or_default();
    let mut all = HashMap::new();
    for kv in listed.kvs() {
        if let Some((module, endpoints)) = parse_endpoints(kv, &endpoints_prefix) {
            all.insert(module, endpoints.endpoints);
        }
    }
    context.endpoints.replace(all);
    let watch = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut endpoints = timed(client.watch(endpoints_prefix.as_str(), Some(watch))).await?;

    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    let mut last_kept = Instant::now();
    loop {
        let chaos_due = lock(&context.chaos).as_ref().and_then(Chaos::next_due);
        tokio::select! {
            () = async {
                match chaos_due {
                    Some(due) => tokio::time::sleep_until(due.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let mut chaos = lock(&context.chaos);
                let mut desired = lock(&context.desired);
                if let (Some(chaos), Some(desired)) = (chaos.as_mut(), desired.as_mut())
                    && chaos.deliver_due(desired, Instant::now())
                {
                    context.reconcile.notify_one();
                }
            }
            _ = tick.tick() => {
                if last_kept.elapsed() > Duration::from_secs(LEASE_TTL_SECS as u64) {
                    return Err(format!("no keep-alive answer for {:?}: the lease may be gone", last_kept.elapsed()).into());
                }
                timed(keeper.keep_alive()).await?;
            }
            answer = kept.message() => match answer? {
                Some(answer) if answer.ttl() > 0 => last_kept = Instant::now(),
                Some(_) => return Err(format!("lease {lease} expired").into()),
                None => return Err("the keep-alive stream ended".into()),
            },
            changes = assignments.message() => {
                let Some(changes) = changes? else { return Err("the assignments watch ended".into()) };
                if changes.compact_revision() > 0 {
                    let compacted = changes.compact_revision();
                    return Err(format!("the assignments watch was cancelled: history compacted at revision {compacted} (relisting)").into());
                }
                if changes.canceled() {
                    return Err(format!("the assignments watch was cancelled ({})", changes.cancel_reason()).into());
                }
                let deliveries = changes.events().iter().filter_map(|event| {
                    let kv = event.kv()?;
                    match event.event_type() {
                        EventType::Put => parse_assignment(kv, &prefix).map(|(module, wanted)| Delivery {
                            module,
                            revision: kv.mod_revision(),
                            wanted: Some(wanted),
                        }),
                        EventType::Delete => {
                            let module = crate::keys::Keys::leaf(kv.key_str().ok()?, &prefix)?;
                            Some(Delivery { module: module.to_owned(), revision: kv.mod_revision(), wanted: None })
                        }
                    }
                });
                let mut chaos = lock(&context.chaos);
                let mut changed = false;
                match chaos.as_mut() {
                    Some(chaos) => deliveries.for_each(|d| chaos.push(d, Instant::now())),
                    None => {
                        let mut guard = lock(&context.desired);
                        let desired = guard.get_or_insert_with(DesiredMap::default);
                        for delivery in deliveries {
                            changed |= desired.deliver(delivery);
                        }
                    }
                }
                drop(chaos);
                if changed {
                    context.reconcile.notify_one();
                }
            }
            changes = endpoints.message() => {
                let Some(changes) = changes? else { return Err("the endpoints watch ended".into()) };
                if changes.compact_revision() > 0 {
                    let compacted = changes.compact_revision();
                    return Err(format!("the endpoints watch was cancelled: history compacted at revision {compacted} (relisting)").into());
                }
                if changes.canceled() {
                    return Err(format!("the endpoints watch was cancelled ({})", changes.cancel_reason()).into());
                }
                for event in changes.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put => {
                            if let Some((module, endpoints)) = parse_endpoints(kv, &endpoints_prefix) {
                                context.endpoints.set(&module, Some(endpoints.endpoints));
                            }
                        }
                        EventType::Delete => {
                            if let Ok(key) = kv.key_str()
                                && let Some(module) = crate::keys::Keys::leaf(key, &endpoints_prefix)
                            {
                                context.endpoints.set(module, None);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Keeps the session's lease alive for `delay` and does nothing else (the testing aid
/// [`crate::chaos::watch_delay`] between the list and the watch).
async fn keep_alive_for(
    keeper: &mut etcd_client::LeaseKeeper,
    kept: &mut etcd_client::LeaseKeepAliveStream,
    delay: Duration,
) -> Result<(), Failed> {
    let until = tokio::time::Instant::now() + delay;
    while tokio::time::Instant::now() < until {
        timed(keeper.keep_alive()).await?;
        match timed(kept.message()).await? {
            Some(answer) if answer.ttl() > 0 => {}
            _ => return Err("the lease ended while the watch waited".into()),
        }
        tokio::time::sleep_until(until.min(tokio::time::Instant::now() + KEEPALIVE_EVERY)).await;
    }
    Ok(())
}

/// An etcd call with the store's deadline: no answer in time is an error (the session starts
/// over and reads everything again).
async fn timed<T>(call: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, Failed> {
    match tokio::time::timeout(store::REQUEST_TIMEOUT, call).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err("etcd did not answer in time".into()),
    }
}

fn parse_assignment(kv: &KeyValue, prefix: &str) -> Option<(String, Wanted)> {
    parse_assignment_value(kv.key_str().ok()?, kv.value(), kv.mod_revision(), prefix)
}

/// What the assignment key `key` (under `prefix`) holding `value` asks for; `None` for a key
/// that is no assignment key (not a module name directly under the prefix).
fn parse_assignment_value(key: &str, value: &[u8], revision: i64, prefix: &str) -> Option<(String, Wanted)> {
    let module = crate::keys::Keys::leaf(key, prefix)?.to_owned();
    let reason = match serde_json::from_slice::<Assignment>(value) {
        Ok(assignment) if assignment.module == module => {
            return Some((module, Wanted::Valid(Desired { assignment, revision })));
        }
        Ok(assignment) => format!("the assignment under {key:?} names module {:?}", assignment.module),
        Err(e) => format!("the assignment under {key:?} is unreadable: {e}"),
    };
    tracing::error!(key, revision, "{reason}: not applied, and what runs stays");
    // As much of it as can be read, for the NACK.
    let loose = serde_json::from_slice::<serde_json::Value>(value).unwrap_or_default();
    let field = |name: &str| loose.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    Some((module, Wanted::Invalid { revision, version: field("version"), sha256: field("sha256"), reason }))
}

fn parse_endpoints(kv: &KeyValue, prefix: &str) -> Option<(String, Endpoints)> {
    let module = crate::keys::Keys::leaf(kv.key_str().ok()?, prefix)?.to_owned();
    match serde_json::from_slice::<Endpoints>(kv.value()) {
        Ok(endpoints) => Some((module, endpoints)),
        Err(e) => {
            tracing::warn!(key = ?kv.key_str(), "unreadable endpoints, ignored: {e}");
            None
        }
    }
}

fn current_status(context: &Context) -> BaseStatus {
    let managed: BTreeSet<String> = {
        let desired = lock(&context.desired);
        let applied = lock(&context.applied);
        desired
            .iter()
            .flat_map(|d| d.entries.keys().cloned())
            .chain(applied.modules.keys().cloned())
            .collect()
    };
    let failures = lock(&context.failures).clone();
    let revision = lock(&context.applied).revision();
    let leaving: BTreeSet<String> = lock(&context.leaving).keys().cloned().collect();
    report::status(
        &context.join.base_id,
        &context.registry,
        &managed,
        &leaving,
        &failures,
        revision,
        &mut lock(&context.meter),
    )
}

/// The status, built on a blocking thread: it reads `/proc` per instance and stats the store.
async fn built_status(context: &Arc<Context>) -> Option<BaseStatus> {
    let context = Arc::clone(context);
    tokio::task::spawn_blocking(move || current_status(&context)).await.ok()
}

/// Writes `status/<id>` under the session's lease at each change signalled (`report`) and at
/// least every `--report-every` ([`super::args::REPORT_EVERY`] by default); the status is
/// built only when it is about to be written.
async fn report_loop(context: Arc<Context>) {
    // When the next write is due without a change.
    let mut due = Instant::now();
    loop {
        tokio::select! {
            _ = context.report.notified() => {}
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let Some((mut client, lease)) = lock(&context.session).clone() else {
            // No session yet: look again shortly (the session writes a status when it starts).
            due = Instant::now() + Duration::from_millis(250);
            continue;
        };
        let Some(status) = built_status(&context).await else { continue };
        let Ok(value) = serde_json::to_vec(&status) else { continue };
        let key = context.join.keys.status(&context.join.base_id);
        match timed(client.put(key, value, Some(PutOptions::new().with_lease(lease)))).await {
            Ok(_) => due = Instant::now() + context.join.report_every,
            Err(e) => {
                tracing::debug!("status not written: {e}");
                due = Instant::now() + Duration::from_millis(250);
            }
        }
    }
}

/// Applies the assignments at each change and every [`RECONCILE_EVERY`].
async fn reconcile_loop(context: Arc<Context>) {
    loop {
        tokio::select! {
            _ = context.reconcile.notified() => {}
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
        reconcile(&context).await;
    }
}

/// One pass: every assignment applied, every module whose assignment went uninstalled.
async fn reconcile(context: &Arc<Context>) {
    let Some(desired) = lock(&context.desired).as_ref().map(|d| d.entries.clone()) else { return };
    let registry = &context.registry;
    let data_dir = registry.config().data_dir.clone();
    for (module, wanted) in &desired {
        let wanted = match wanted {
            Wanted::Valid(wanted) => wanted,
            Wanted::Invalid { revision, version, sha256, reason } => {
                // Bad input never uninstalls: what runs (the fleet's, if it was) stays as is.
                let failure = Failure {
                    version: version.clone(),
                    sha256: sha256.clone(),
                    code: "ASSIGNMENT_INVALID".into(),
                    message: format!("{reason}: not applied; what runs stays"),
                    revision: *revision,
                };
                set_failure(context, module, Some(failure));
                continue;
            }
        };
        if lock(&context.applied).is_stale(module, wanted) {
            let applied = lock(&context.applied).modules.get(module).map(|m| m.revision).unwrap_or_default();
            if lock(&context.stale_logged).insert((module.clone(), wanted.revision)) {
                tracing::warn!(
                    module,
                    revision = wanted.revision,
                    applied,
                    "an assignment older than the one applied: not applied"
                );
            }
            let failure = Failure {
                version: wanted.assignment.version.clone(),
                sha256: wanted.assignment.sha256.clone(),
                code: "ASSIGNMENT_STALE".into(),
                message: format!(
                    "revision {} is older than revision {applied}, already applied: not applied",
                    wanted.revision
                ),
                revision: wanted.revision,
            };
            set_failure(context, module, Some(failure));
            continue;
        }
        registry.set_owner(module, Some(OWNER));
        let check = (Arc::clone(registry), module.clone(), wanted.assignment.clone());
        let satisfied =
            tokio::task::spawn_blocking(move || apply::is_satisfied(&check.0, &check.1, &check.2))
                .await
                .unwrap_or(false);
        if satisfied {
            record_applied(context, module, wanted, &data_dir);
            set_failure(context, module, None);
            continue;
        }
        if let Some((revision, at)) = lock(&context.attempts).get(module)
            && *revision == wanted.revision
            && at.elapsed() < RETRY_AFTER
        {
            continue;
        }
        let assignment = &wanted.assignment;
        let sources = sources_of(context, &assignment.sha256, assignment.url.as_deref()).await;
        let previous_sources = match apply::canary_of(assignment) {
            Some(canary) => {
                sources_of(context, &canary.previous.sha256, canary.previous.url.as_deref()).await
            }
            None => Vec::new(),
        };
        let job =
            (Arc::clone(registry), module.clone(), wanted.assignment.clone(), context.join.token.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            apply::apply(&job.0, &job.1, &job.2, &sources, &previous_sources, &job.3)
        })
        .await
        .unwrap_or_else(|e| {
            Err(Nack { code: "AGENT_FAILED".into(), message: format!("the apply task: {e}") })
        });
        match outcome {
            Ok(()) => {
                lock(&context.attempts).remove(module);
                record_applied(context, module, wanted, &data_dir);
                set_failure(context, module, None);
                // What runs changed: reported at once.
                context.report.notify_one();
            }
            Err(nack) => {
                tracing::warn!(module, revision = wanted.revision, code = %nack.code, "assignment not applied: {}", nack.message);
                lock(&context.attempts).insert(module.clone(), (wanted.revision, Instant::now()));
                let failure = Failure {
                    version: wanted.assignment.version.clone(),
                    sha256: wanted.assignment.sha256.clone(),
                    code: nack.code,
                    message: nack.message,
                    revision: wanted.revision,
                };
                set_failure(context, module, Some(failure));
            }
        }
    }
    // Assignments deleted: what the fleet applied and no longer wants goes.
    let gone = unassigned(&lock(&context.applied), &desired);
    lock(&context.removal_failures).retain(|m, _| gone.contains(m));
    let in_grace = {
        let mut leaving = lock(&context.leaving);
        leaving.retain(|m, _| gone.contains(m));
        let now = Instant::now();
        let mut in_grace = BTreeSet::new();
        for module in &gone {
            let since = *leaving.entry(module.clone()).or_insert_with(|| {
                tracing::info!(%module, "assignment deleted: serving for {REMOVE_GRACE:?} more, then unloaded");
                // Reported as leaving at once; looked at again when the grace ends.
                context.report.notify_one();
                let context = Arc::clone(context);
                tokio::spawn(async move {
                    tokio::time::sleep(REMOVE_GRACE).await;
                    context.reconcile.notify_one();
                });
                now
            });
            if now.duration_since(since) < REMOVE_GRACE {
                in_grace.insert(module.clone());
            }
        }
        in_grace
    };
    for module in gone.into_iter().filter(|m| !in_grace.contains(m)) {
        // A failed uninstall is tried again after a while, not at every pass.
        if lock(&context.removal_failures).get(&module).is_some_and(|(_, at)| at.elapsed() < RETRY_AFTER) {
            continue;
        }
        let job = (Arc::clone(registry), module.clone());
        let outcome =
            tokio::task::spawn_blocking(move || apply::remove(&job.0, &job.1)).await.unwrap_or_else(|e| {
                Err(Nack { code: "AGENT_FAILED".into(), message: format!("the remove task: {e}") })
            });
        match outcome {
            Ok(()) => {
                lock(&context.removal_failures).remove(&module);
                lock(&context.leaving).remove(&module);
                registry.set_owner(&module, None);
                let mut applied = lock(&context.applied);
                applied.modules.remove(&module);
                applied.save(&Applied::path(&data_dir));
                drop(applied);
                set_failure(context, &module, None);
                context.report.notify_one();
            }
            Err(nack) => {
                let error = format!("{}: {}", nack.code, nack.message);
                let mut failures = lock(&context.removal_failures);
                // Logged once per distinct error; retried every RETRY_AFTER.
                if failures.get(&module).is_none_or(|(last, _)| *last != error) {
                    tracing::warn!(%module, code = %nack.code, "cannot uninstall an unassigned module (retrying every {RETRY_AFTER:?}): {}", nack.message);
                }
                failures.insert(module, (error, Instant::now()));
            }
        }
    }
    // NACKs of assignments that are gone are gone too.
    let stale: Vec<String> =
        lock(&context.failures).keys().filter(|m| !desired.contains_key(*m)).cloned().collect();
    for module in stale {
        // Never applied (it only failed): nothing to uninstall, and no longer the fleet's.
        if !lock(&context.applied).modules.contains_key(&module) {
            registry.set_owner(&module, None);
        }
        set_failure(context, &module, None);
    }
}

fn record_applied(context: &Context, module: &str, wanted: &Desired, data_dir: &std::path::Path) {
    let record = AppliedModule {
        revision: wanted.revision,
        version: wanted.assignment.version.clone(),
        sha256: wanted.assignment.sha256.clone(),
    };
    let mut applied = lock(&context.applied);
    if applied.modules.get(module) != Some(&record) {
        applied.modules.insert(module.to_owned(), record);
        applied.save(&Applied::path(data_dir));
        drop(applied);
        context.report.notify_one();
    }
}

fn set_failure(context: &Context, module: &str, failure: Option<Failure>) {
    let mut failures = lock(&context.failures);
    let changed = match failure {
        Some(failure) => failures.insert(module.to_owned(), failure.clone()).as_ref() != Some(&failure),
        None => failures.remove(module).is_some(),
    };
    drop(failures);
    if changed {
        context.report.notify_one();
    }
}

/// Where the bytes with `sha256` may be: peers listing the hash, live controllers, `url`.
async fn sources_of(context: &Context, sha256: &str, url: Option<&str>) -> Vec<Source> {
    let mut sources = Vec::new();
    let session = lock(&context.session).clone();
    if let Some((mut client, _)) = session {
        let keys = &context.join.keys;
        let prefix = GetOptions::new().with_prefix();
        let statuses = timed(client.get(keys.statuses(), Some(prefix.clone()))).await;
        let bases = timed(client.get(keys.bases(), Some(prefix.clone()))).await;
        if let (Ok(statuses), Ok(bases)) = (statuses, bases) {
            let urls: HashMap<String, String> = bases
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<BaseRecord>(kv.value()).ok())
                .map(|b| (b.id, b.traffic_url))
                .collect();
            for status in
                statuses.kvs().iter().filter_map(|kv| serde_json::from_slice::<BaseStatus>(kv.value()).ok())
            {
                if status.base_id != context.join.base_id
                    && status.artifacts.iter().any(|a| a == sha256)
                    && let Some(url) = urls.get(&status.base_id)
                {
                    sources.push(Source::Peer(url.clone()));
                }
            }
        }
        if let Ok(controllers) = timed(client.get(keys.controllers(), Some(prefix))).await {
            for controller in controllers
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<ControllerRecord>(kv.value()).ok())
            {
                sources.push(Source::Controller(controller.url));
            }
        }
    }
    if let Some(url) = url {
        sources.push(Source::External(url.to_owned()));
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/pedestal/assign/b1/";

    fn applied(modules: &[&str]) -> Applied {
        let mut applied = Applied::default();
        for module in modules {
            applied.modules.insert(
                (*module).to_owned(),
                AppliedModule { revision: 7, version: "1.0.0".into(), sha256: "00".repeat(32) },
            );
        }
        applied
    }

    fn assignment(module: &str) -> Vec<u8> {
        serde_json::to_vec(&Assignment {
            module: module.into(),
            version: "2.0.0".into(),
            sha256: "11".repeat(32),
            url: None,
            limits: None,
            config: Default::default(),
            generation: 1,
            canary: None,
        })
        .unwrap()
    }

    #[test]
    fn a_malformed_assignment_is_invalid_and_never_uninstalls_what_runs() {
        let applied = applied(&["echo", "hello", "gone"]);
        let mut desired = BTreeMap::new();
        for (module, value) in
            [("echo", b"{not json".to_vec()), ("hello", assignment("other")), ("fine", assignment("fine"))]
        {
            let key = format!("{PREFIX}{module}");
            let (name, wanted) = parse_assignment_value(&key, &value, 9, PREFIX).unwrap();
            assert_eq!(name, module);
            desired.insert(name, wanted);
        }
        assert!(matches!(&desired["echo"], Wanted::Invalid { revision: 9, .. }));
        match &desired["hello"] {
            Wanted::Invalid { version, sha256, reason, .. } => {
                assert_eq!(version, "2.0.0");
                assert_eq!(*sha256, "11".repeat(32));
                assert!(reason.contains("\"other\""), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&desired["fine"], Wanted::Valid(d) if d.revision == 9));
        // Only the module whose key is gone is uninstalled.
        assert_eq!(unassigned(&applied, &desired), ["gone"]);
        // A key that is no assignment key is nothing.
        assert!(parse_assignment_value("/pedestal/assign/b1/a/b", b"{}", 1, PREFIX).is_none());
    }
}

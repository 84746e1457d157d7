//! The leader's loop: read everything at one revision, plan, write the difference, fenced.
//!
//! Level-triggered: a pass reads the whole prefix in one range request (one consistent
//! snapshot), so what it plans from never mixes two moments; a write whose outcome is unknown
//! is simply re-read by the next pass. Passes run when a watched key changes (debounced about
//! 20 ms) and at least every second. A placement whose content did not change is not
//! rewritten (bases report every two seconds; their `at_ms` moves, the plan does not).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use etcd_client::{GetOptions, TxnOp, WatchOptions};

use super::Controller;
use crate::{
    keys::Keys,
    model::{
        ArtifactRecord, Assignment, BaseRecord, BaseStatus, ControllerRecord, CordonRecord, Endpoint,
        Endpoints, LeaderRecord, PlacementRecord, RolloutCommand, RolloutRecord, ScaleRecord, SpecRecord,
        now_ms,
    },
    rollout,
    schedule::{self, Directives, Plan},
    store::{Fence, Outcome, REQUEST_TIMEOUT},
};

/// etcd refuses transactions of more than 128 operations by default (each of a pass's also
/// puts the write sequence: 121 at most).
const MAX_OPS_PER_TXN: usize = 120;
/// A transaction's keys and values stay under this (etcd refuses requests over 1.5 MiB by
/// default).
const MAX_BYTES_PER_TXN: usize = 1 << 20;
/// The least time from the end of one pass to the start of the next: bases report every
/// second each, so at 100 bases the status events alone would otherwise run a full read
/// 100 times a second.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(100);
/// How long changes gather before a pass.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// A pass at least this often, changes or not.
const RESYNC: Duration = Duration::from_secs(1);

/// Everything under the prefix, at one revision.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The revision read at.
    pub(crate) revision: i64,
    /// The leader key's value and create revision (the term).
    pub(crate) leader: Option<(LeaderRecord, i64)>,
    pub(crate) controllers: BTreeMap<String, ControllerRecord>,
    /// Specs with their key's mod revision.
    pub(crate) specs: BTreeMap<String, SpecRecord>,
    pub(crate) spec_revisions: BTreeMap<String, i64>,
    pub(crate) artifacts: BTreeMap<String, ArtifactRecord>,
    pub(crate) bases: BTreeMap<String, BaseRecord>,
    pub(crate) statuses: BTreeMap<String, BaseStatus>,
    pub(crate) assignments: BTreeMap<String, BTreeMap<String, Assignment>>,
    /// Every key under `assign/`, parseable or not (a malformed one is deleted by a pass).
    pub(crate) assignment_keys: BTreeSet<String>,
    pub(crate) placements: BTreeMap<String, PlacementRecord>,
    pub(crate) endpoints: BTreeMap<String, Endpoints>,
    /// Range requests the read took.
    pub(crate) pages: u32,
    /// The mod revision of the leader's write sequence key (0: never written).
    pub(crate) sequence: i64,
    /// Cordoned bases, by id (live or not).
    pub(crate) cordons: BTreeMap<String, CordonRecord>,
    /// Autoscaled counts, by module.
    pub(crate) scales: BTreeMap<String, ScaleRecord>,
    /// Rollout records, by module.
    pub(crate) rollouts: BTreeMap<String, RolloutRecord>,
    /// Finished rollouts, by module then the generation that started them.
    pub(crate) past_rollouts: BTreeMap<String, BTreeMap<u64, RolloutRecord>>,
    /// Pending rollout commands, by module, oldest first.
    pub(crate) commands: BTreeMap<String, Vec<RolloutCommand>>,
    /// Every key under `commands/`, parseable or not, by module.
    pub(crate) command_keys: BTreeMap<String, BTreeSet<String>>,
}

/// Keys per range request of a snapshot read.
const PAGE_KEYS: i64 = 1000;
/// The largest range answer accepted (a page of 1000 keys of large base reports).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The end of the range of keys starting with `prefix`: its last byte below 0xff, plus one.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Snapshot {
    /// Reads the whole prefix at one revision, in pages of [`PAGE_KEYS`] keys: the first page
    /// fixes the revision, the others read at it, so the snapshot is one moment however large
    /// the fleet (a single range of 1000 modules' keys outgrows gRPC's 4 MiB default answer).
    pub(crate) async fn read(
        client: &mut etcd_client::Client,
        keys: &Keys,
    ) -> Result<Self, etcd_client::Error> {
        Self::read_paged(client, keys, PAGE_KEYS).await
    }

    /// [`Snapshot::read`] with `page` keys per range request.
    async fn read_paged(
        client: &mut etcd_client::Client,
        keys: &Keys,
        page: i64,
    ) -> Result<Self, etcd_client::Error> {
        let mut kv = client.kv_client().max_decoding_message_size(MAX_ANSWER_BYTES);
        let end = prefix_end(keys.prefix());
        let mut snapshot = Snapshot::default();
        let mut from = keys.prefix().as_bytes().to_vec();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
            if snapshot.revision > 0 {
                options = options.with_revision(snapshot.revision);
            }
            let response = tokio::time::timeout(REQUEST_TIMEOUT, kv.get(from.clone(), Some(options)))
                .await
                .map_err(|_| etcd_client::Error::InvalidArgs("etcd did not answer in time".into()))??;
            if snapshot.revision == 0 {
                snapshot.revision = response.header().map(|h| h.revision()).unwrap_or_default();
            }
            for kv in response.kvs() {
                let Ok(key) = kv.key_str() else { continue };
                snapshot.add(keys, key, kv.value(), kv.create_revision(), kv.mod_revision());
            }
            snapshot.pages += 1;
            match response.kvs().last() {
                Some(last) if response.more() => {
                    // The next page starts just after the last key read.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(snapshot)
    }

    fn add(&mut self, keys: &Keys, key: &str, value: &[u8], create_revision: i64, mod_revision: i64) {
        fn parse<T: serde::de::DeserializeOwned>(value: &[u8]) -> Option<T> {
            serde_json::from_slice(value).ok()
        }
        if key == keys.leader() {
            self.leader = parse(value).map(|l| (l, create_revision));
        } else if key == keys.sequence() {
            self.sequence = mod_revision;
        } else if let Some(id) = Keys::leaf(key, &keys.controllers()) {
            parse(value).map(|c| self.controllers.insert(id.to_owned(), c));
        } else if let Some(name) = Keys::leaf(key, &keys.specs()) {
            if let Some(spec) = parse(value) {
                self.specs.insert(name.to_owned(), spec);
                self.spec_revisions.insert(name.to_owned(), mod_revision);
            }
        } else if let Some(sha) = Keys::leaf(key, &keys.artifacts()) {
            parse(value).map(|a| self.artifacts.insert(sha.to_owned(), a));
        } else if let Some(id) = Keys::leaf(key, &keys.bases()) {
            if let Some(base) = parse::<BaseRecord>(value) {
                if base.id == id {
                    self.bases.insert(id.to_owned(), base);
                } else {
                    mismatched(key, &base.id);
                }
            }
        } else if let Some(id) = Keys::leaf(key, &keys.statuses()) {
            if let Some(status) = parse::<BaseStatus>(value) {
                if status.base_id == id {
                    self.statuses.insert(id.to_owned(), status);
                } else {
                    mismatched(key, &status.base_id);
                }
            }
        } else if let Some(rest) = key.strip_prefix(&keys.assignments()) {
            self.assignment_keys.insert(key.to_owned());
            if let Some((base, module)) = rest.split_once('/')
                && let Some(assignment) = parse(value)
            {
                self.assignments.entry(base.to_owned()).or_default().insert(module.to_owned(), assignment);
            }
        } else if let Some(module) = Keys::leaf(key, &keys.placements()) {
            parse(value).map(|p| self.placements.insert(module.to_owned(), p));
        } else if let Some(module) = Keys::leaf(key, &keys.all_endpoints()) {
            parse(value).map(|e| self.endpoints.insert(module.to_owned(), e));
        } else if let Some(base) = Keys::leaf(key, &keys.cordons()) {
            parse(value).map(|c| self.cordons.insert(base.to_owned(), c));
        } else if let Some(module) = Keys::leaf(key, &keys.scales()) {
            parse(value).map(|r| self.scales.insert(module.to_owned(), r));
        } else if let Some(module) = Keys::leaf(key, &keys.rollouts()) {
            parse(value).map(|r| self.rollouts.insert(module.to_owned(), r));
        } else if let Some(rest) = key.strip_prefix(&keys.all_rollout_history()) {
            if let Some((module, _)) = rest.split_once('/')
                && let Some(record) = parse::<RolloutRecord>(value)
            {
                self.past_rollouts.entry(module.to_owned()).or_default().insert(record.generation, record);
            }
        } else if let Some(rest) = key.strip_prefix(&keys.all_commands())
            && let Some((module, _)) = rest.split_once('/')
        {
            self.command_keys.entry(module.to_owned()).or_default().insert(key.to_owned());
            if let Some(command) = parse::<RolloutCommand>(value) {
                let pending = self.commands.entry(module.to_owned()).or_default();
                pending.push(command);
                pending.sort_by(|a, b| (a.at_ms, &a.id).cmp(&(b.at_ms, &b.id)));
            }
        }
    }

    /// The plan for this snapshot, now.
    #[cfg(test)]
    pub(crate) fn plan(&self) -> Plan {
        self.plan_at(now_ms())
    }

    /// The plan for this snapshot at `now` (which the autoscaler's cooldowns count from).
    pub(crate) fn plan_at(&self, now: u64) -> Plan {
        let directives = Directives { cordons: self.cordons.clone(), scales: self.decide_scales(now) };
        let mut plan = schedule::place_directed(
            &self.specs,
            &self.bases,
            &self.statuses,
            &self.assignments,
            &directives,
        );
        plan.scales = directives.scales;
        plan
    }

    /// Every autoscaled spec's scale record after this pass (see [`crate::autoscale::decide`]),
    /// measured on the bases it is assigned to now.
    pub(crate) fn decide_scales(&self, now: u64) -> BTreeMap<String, ScaleRecord> {
        let mut scales = BTreeMap::new();
        for (name, record) in &self.specs {
            let placed: BTreeSet<String> = self
                .assignments
                .iter()
                .filter(|(_, modules)| modules.contains_key(name))
                .map(|(base, _)| base.clone())
                .collect();
            let decided =
                crate::autoscale::decide(&record.spec, self.scales.get(name), &self.statuses, &placed, now);
            if let Some(decided) = decided {
                scales.insert(name.clone(), decided);
            }
        }
        scales
    }
}

/// Runs every spec's rollout over `plan` (which bases) and makes it say which release each base
/// runs and where each release is served. Returns the rollout writes: records, history,
/// consumed commands, and the keys of deleted specs' rollouts; they go in one fenced
/// transaction of their own, before the assignments, so a command is applied exactly once.
pub(crate) fn roll(
    keys: &Keys,
    snapshot: &Snapshot,
    plan: &mut Plan,
    metrics: &dyn rollout::Metrics,
    now: u64,
    controller: &str,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for (module, spec) in &snapshot.specs {
        let placed: Vec<String> = plan.placements.get(module).map(|p| p.bases.clone()).unwrap_or_default();
        let decision = rollout::advance(&rollout::Input {
            spec,
            record: snapshot.rollouts.get(module),
            placed: &placed,
            statuses: &snapshot.statuses,
            current: &snapshot.assignments,
            commands: snapshot.commands.get(module).map_or(&[], Vec::as_slice),
            metrics,
            now_ms: now,
            controller,
        });
        if snapshot.rollouts.get(module) != Some(&decision.record) {
            changes.push(Change::Put(keys.rollout(module), json(&decision.record)));
        }
        if let Some(retired) = &decision.retired {
            changes.push(Change::Put(keys.rollout_history_entry(module, retired.generation), json(retired)));
            let mut kept: BTreeSet<u64> =
                snapshot.past_rollouts.get(module).map(|p| p.keys().copied().collect()).unwrap_or_default();
            kept.insert(retired.generation);
            let excess = kept.len().saturating_sub(rollout::MAX_PAST_ROLLOUTS);
            for generation in kept.into_iter().take(excess) {
                changes.push(Change::Delete(keys.rollout_history_entry(module, generation)));
            }
        }
        for id in &decision.consumed {
            changes.push(Change::Delete(keys.command(module, id)));
        }
        for modules in plan.assignments.values_mut() {
            modules.remove(module);
        }
        for (base, assignment) in decision.assignments {
            plan.assignments.entry(base).or_default().insert(module.clone(), assignment);
        }
        let mut endpoints = Vec::new();
        for base in &placed {
            let Some(record) = snapshot.bases.get(base) else { continue };
            for release in rollout::releases(&decision.record) {
                if schedule::serves(snapshot.statuses.get(base), module, &release.version, &release.sha256) {
                    endpoints.push(Endpoint {
                        base_id: base.clone(),
                        traffic_url: record.traffic_url.clone(),
                        version: release.version.clone(),
                    });
                }
            }
        }
        plan.endpoints.insert(module.clone(), Endpoints { module: module.clone(), endpoints });
    }
    plan.assignments.retain(|_, modules| !modules.is_empty());
    for module in snapshot.rollouts.keys().filter(|m| !snapshot.specs.contains_key(*m)) {
        changes.push(Change::Delete(keys.rollout(module)));
    }
    for (module, command_keys) in &snapshot.command_keys {
        if !snapshot.specs.contains_key(module) {
            changes.extend(command_keys.iter().cloned().map(Change::Delete));
        }
    }
    changes
}

/// A base's record or status naming another base than its key is skipped (everything is
/// keyed by the key's id): said once per key and id, not on every read.
fn mismatched(key: &str, id: &str) {
    static SAID: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if said.len() < 10_000 && said.insert((key.to_owned(), id.to_owned())) {
        eprintln!("pedestal controller: ignoring {key}: its record names base {id:?}, not its key's");
    }
}

/// One write a pass makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Put(String, String),
    Delete(String),
}

/// What must change in etcd to make `snapshot` hold `plan`; placements are stamped `now`.
pub(crate) fn diff(keys: &Keys, snapshot: &Snapshot, plan: &Plan, now: u64) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut planned_keys = BTreeSet::new();
    for (base, modules) in &plan.assignments {
        for (module, assignment) in modules {
            let key = keys.assignment(base, module);
            planned_keys.insert(key.clone());
            if snapshot.assignments.get(base).and_then(|m| m.get(module)) != Some(assignment) {
                changes.push(Change::Put(key, json(assignment)));
            }
        }
    }
    for key in &snapshot.assignment_keys {
        if !planned_keys.contains(key) {
            changes.push(Change::Delete(key.clone()));
        }
    }

    for (module, placement) in &plan.placements {
        let same = snapshot
            .placements
            .get(module)
            .is_some_and(|old| PlacementRecord { at_ms: 0, ..old.clone() } == *placement);
        if !same {
            changes.push(Change::Put(
                keys.placement(module),
                json(&PlacementRecord { at_ms: now, ..placement.clone() }),
            ));
        }
    }
    for module in snapshot.placements.keys().filter(|m| !plan.placements.contains_key(*m)) {
        changes.push(Change::Delete(keys.placement(module)));
    }

    for (module, endpoints) in &plan.endpoints {
        if snapshot.endpoints.get(module) != Some(endpoints) {
            changes.push(Change::Put(keys.endpoints(module), json(endpoints)));
        }
    }
    for module in snapshot.endpoints.keys().filter(|m| !plan.endpoints.contains_key(*m)) {
        changes.push(Change::Delete(keys.endpoints(module)));
    }

    // Scale records: written when a decision changed one, deleted with their spec (or when the
    // spec stops autoscaling).
    for (module, scale) in &plan.scales {
        if snapshot.scales.get(module) != Some(scale) {
            changes.push(Change::Put(keys.scale(module), json(scale)));
        }
    }
    for module in snapshot.scales.keys().filter(|m| !plan.scales.contains_key(*m)) {
        changes.push(Change::Delete(keys.scale(module)));
    }
    changes
}

/// The bytes of keys and values `changes` send.
fn bytes_of(changes: &[Change]) -> usize {
    changes.iter().map(Change::size).sum()
}

impl Change {
    /// Its key's and value's bytes.
    fn size(&self) -> usize {
        match self {
            Change::Put(key, value) => key.len() + value.len(),
            Change::Delete(key) => key.len(),
        }
    }
}

/// `changes` cut into transactions of at most [`MAX_OPS_PER_TXN`] operations and about
/// [`MAX_BYTES_PER_TXN`] of keys and values (a single larger change goes alone).
pub(crate) fn chunks(changes: &[Change]) -> Vec<&[Change]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, change) in changes.iter().enumerate() {
        let size = change.size();
        if i > start && (i - start == MAX_OPS_PER_TXN || bytes + size > MAX_BYTES_PER_TXN) {
            out.push(&changes[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < changes.len() {
        out.push(&changes[start..]);
    }
    out
}

fn ops_of(changes: &[Change]) -> Vec<TxnOp> {
    changes
        .iter()
        .map(|change| match change {
            Change::Put(key, value) => TxnOp::put(key.clone(), value.clone(), None),
            Change::Delete(key) => TxnOp::delete(key.clone(), None),
        })
        .collect()
}

/// A model document as etcd holds it.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("model types serialise")
}

/// The loop: waits for a kick or the resync tick, then passes if leading.
pub(crate) async fn run(ctl: Arc<Controller>) {
    let mut last_end: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ctl.kick.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(RESYNC) => {}
        }
        // Kicks arriving meanwhile leave one permit: one pass after the pause covers them all.
        if let Some(end) = last_end {
            tokio::time::sleep_until(end + MIN_PASS_INTERVAL).await;
        }
        let Some(fence) = ctl.leadership.fence() else { continue };
        if let Err(e) = pass(&ctl, &fence).await {
            ctl.say(&format!("reconcile pass failed: {e}"));
            ctl.reconnect().await;
        }
        last_end = Some(tokio::time::Instant::now());
    }
}

/// One pass: read, plan, write the diff.
pub(crate) async fn pass(ctl: &Controller, fence: &Fence) -> Result<(), etcd_client::Error> {
    let mut client = ctl.client();
    let snapshot = Snapshot::read(&mut client, &ctl.keys).await?;
    if snapshot.leader.as_ref().map(|(_, term)| *term) != Some(fence.term) {
        ctl.leadership.step_down("the leader key is not this term's");
        return Ok(());
    }
    let now = now_ms();
    let mut plan = snapshot.plan_at(now);
    let rollout_changes = {
        let mut samples = ctl.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.ingest(snapshot.statuses.values(), now);
        roll(&ctl.keys, &snapshot, &mut plan, &*samples, now, &ctl.id)
    };
    let changes = diff(&ctl.keys, &snapshot, &plan, now);
    ctl.metrics.passes.fetch_add(1, Ordering::Relaxed);
    ctl.metrics.snapshot_pages.store(u64::from(snapshot.pages), Ordering::Relaxed);
    let (mut txns, mut ops) = (0, 0);
    if changes.is_empty() && rollout_changes.is_empty() {
        return Ok(());
    }
    // The rollout records first, alone: the assignments below follow from them, and a command
    // is deleted in the same transaction that applies it. Every transaction continues the
    // write sequence from the one before (the first from what the snapshot read), so a pass
    // planned from a state another write has since changed commits nothing more.
    let mut after = snapshot.sequence;
    let batches = std::iter::once(rollout_changes.as_slice())
        .filter(|c| !c.is_empty())
        .chain(chunks(&changes))
        .collect::<Vec<_>>();
    for chunk in batches {
        // The fence can have lapsed while the previous chunk was in flight.
        if ctl.leadership.fence().as_ref() != Some(fence) {
            return Ok(());
        }
        match write(ctl, &mut client, fence, after, ops_of(chunk)).await {
            Outcome::Committed(revision) => {
                after = revision;
                txns += 1;
                ops += chunk.len();
                ctl.metrics.max_txn_ops.fetch_max(chunk.len() as u64 + 1, Ordering::Relaxed);
                ctl.metrics.max_txn_bytes.fetch_max(bytes_of(chunk) as u64, Ordering::Relaxed);
            }
            Outcome::Refused => {
                ctl.leadership.step_down("a fenced write was refused");
                return Ok(());
            }
            Outcome::Stale => {
                ctl.metrics.stale.fetch_add(1, Ordering::Relaxed);
                ctl.say("a write was planned from a state that has changed since; planning again");
                ctl.kick.notify_one();
                break;
            }
            Outcome::Unknown(e) => {
                ctl.say(&format!("a fenced write's outcome is unknown ({e}); the next pass reads back"));
                break;
            }
        }
    }
    ctl.metrics.txns.fetch_add(txns, Ordering::Relaxed);
    ctl.metrics.ops.fetch_add(ops as u64, Ordering::Relaxed);
    ctl.say(&format!("pass at revision {}: {ops} ops in {txns} txns", snapshot.revision));
    Ok(())
}

/// One transaction of a pass, in the leader's write sequence (through the chaos layer when it
/// is on).
async fn write(
    ctl: &Controller,
    client: &mut etcd_client::Client,
    fence: &Fence,
    after: i64,
    ops: Vec<TxnOp>,
) -> Outcome {
    let sequence = ctl.keys.sequence();
    match &ctl.chaos {
        Some(chaos) => chaos.commit(client, fence, &sequence, after, ops).await,
        None => fence.commit_in_sequence(client, &sequence, after, ops).await,
    }
}

/// Watches the prefix and kicks the reconcile loop (specs, bases, status, assign changes) and
/// the artifact mirror (artifacts, controllers). Re-watches after any break. The leader's own
/// writes to `placement/` and `endpoints/` kick nothing (a pass plans from the inputs; what it
/// wrote is its output); its `assign/` writes do, harmlessly (the next pass finds no diff).
pub(crate) async fn watch(ctl: Arc<Controller>) {
    let keys = &ctl.keys;
    let planned = [
        keys.specs(),
        keys.bases(),
        keys.statuses(),
        keys.assignments(),
        keys.leader(),
        keys.cordons(),
        keys.all_commands(),
    ];
    let mirrored = [keys.artifacts(), keys.controllers()];
    loop {
        let mut client = ctl.client();
        let Ok(mut stream) = client.watch(keys.prefix(), Some(WatchOptions::new().with_prefix())).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Some(message)) = stream.message().await {
            if message.canceled() {
                break;
            }
            for event in message.events() {
                let Some(key) = event.kv().and_then(|kv| kv.key_str().ok()) else { continue };
                if planned.iter().any(|p| key.starts_with(p.as_str())) {
                    ctl.kick.notify_one();
                }
                if mirrored.iter().any(|p| key.starts_with(p.as_str())) {
                    ctl.kick_artifacts.notify_one();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Capacity, Placement, Resources, Spec};

    fn snapshot_with(keys: &Keys, entries: &[(&str, String)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (key, value) in entries {
            snapshot.add(keys, &format!("{}{key}", keys.prefix()), value.as_bytes(), 1, 1);
        }
        snapshot
    }

    fn spec() -> SpecRecord {
        SpecRecord {
            spec: Spec {
                name: "a".into(),
                version: "1.0.0".into(),
                sha256: "b".repeat(64),
                url: None,
                replicas: Some(1),
                peer: false,
                selector: BTreeMap::new(),
                placement: Placement::Spread,
                resources: Resources::default(),
                limits: None,
                config: Default::default(),
                interface_version: None,
                rollout: None,
                autoscale: None,
            },
            generation: 1,
            changed_ms: 0,
        }
    }

    fn base() -> BaseRecord {
        BaseRecord {
            id: "b1".into(),
            traffic_url: "http://b1".into(),
            admin_url: "http://b1a".into(),
            labels: BTreeMap::new(),
            capacity: Capacity { memory_bytes: 1 << 30, cpu_millis: 1000, max_modules: 8 },
            interface_version: "1.3.0".into(),
            started_ms: 1,
        }
    }

    #[test]
    fn a_settled_fleet_needs_no_writes_and_placements_ignore_their_stamp() {
        let keys = Keys::new("/t/");
        let first = snapshot_with(
            &keys,
            &[("specs/a", json(&spec())), ("bases/b1", json(&base())), ("assign/gone/a", "{}".into())],
        );
        let changes = diff(&keys, &first, &first.plan(), 5);
        assert!(
            changes
                .contains(&Change::Put("/t/assign/b1/a".into(), json(&first.plan().assignments["b1"]["a"])))
        );
        assert!(changes.contains(&Change::Delete("/t/assign/gone/a".into())), "{changes:?}");
        assert_eq!(changes.len(), 4, "assignment, stale assignment, placement, endpoints: {changes:?}");

        let plan = first.plan();
        let placement = PlacementRecord { at_ms: 5, ..plan.placements["a"].clone() };
        let settled = snapshot_with(
            &keys,
            &[
                ("specs/a", json(&spec())),
                ("bases/b1", json(&base())),
                ("assign/b1/a", json(&plan.assignments["b1"]["a"])),
                ("placement/a", json(&placement)),
                ("endpoints/a", json(&plan.endpoints["a"])),
            ],
        );
        assert_eq!(diff(&keys, &settled, &settled.plan(), 99), []);
    }

    #[test]
    fn records_naming_another_base_than_their_key_are_skipped() {
        let keys = Keys::new("/t/");
        let status = BaseStatus { base_id: "b2".into(), ..Default::default() };
        let snapshot = snapshot_with(&keys, &[("bases/b9", json(&base())), ("status/b1", json(&status))]);
        assert!(snapshot.bases.is_empty(), "bases/b9 holds b1's record");
        assert!(snapshot.statuses.is_empty(), "status/b1 holds b2's report");
        let good = snapshot_with(&keys, &[("bases/b1", json(&base()))]);
        assert_eq!(good.bases.keys().collect::<Vec<_>>(), ["b1"]);
    }

    #[test]
    fn a_prefix_range_ends_after_its_last_byte() {
        assert_eq!(prefix_end("/p/"), b"/p0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paged_read_is_one_snapshot_of_the_prefix_only() {
        let etcd = crate::store::local_etcd::start();
        let mut client = crate::store::connect(std::slice::from_ref(&etcd.url)).await.expect("etcd");
        let keys = Keys::new("/t/");
        for i in 0..25 {
            let mut record = spec();
            record.spec.name = format!("m{i:02}");
            client.put(keys.spec(&record.spec.name), json(&record), None).await.expect("a put");
        }
        // Beside the prefix, on both sides of its range: never read.
        client.put("/t", "x", None).await.expect("a put");
        client.put("/t0", "x", None).await.expect("a put");
        client.put(keys.base("b1"), json(&base()), None).await.expect("a put");
        let paged = Snapshot::read_paged(&mut client, &keys, 7).await.expect("a paged read");
        let whole = Snapshot::read_paged(&mut client, &keys, 0).await.expect("one read");
        assert_eq!(paged.pages, 4, "26 keys in pages of 7");
        assert_eq!(whole.pages, 1);
        assert_eq!(paged.specs, whole.specs);
        assert_eq!(paged.specs.len(), 25);
        assert_eq!(paged.bases.keys().collect::<Vec<_>>(), ["b1"]);
        assert_eq!(paged.revision, whole.revision);
        // Pages after the first read at the first one's revision: a later write is not in it.
        let revision = paged.revision;
        client.put(keys.base("b2"), json(&BaseRecord { id: "b2".into(), ..base() }), None).await.unwrap();
        let mut kv = client.kv_client();
        let at = kv
            .get(keys.prefix(), Some(GetOptions::new().with_prefix().with_revision(revision)))
            .await
            .expect("a read at the snapshot's revision");
        assert_eq!(at.kvs().len(), 26);
    }

    #[test]
    fn transactions_are_cut_by_operations_and_by_bytes() {
        let small: Vec<Change> = (0..250).map(|i| Change::Delete(format!("/t/assign/b/{i}"))).collect();
        let cut: Vec<usize> = chunks(&small).iter().map(|c| c.len()).collect();
        assert_eq!(cut, [MAX_OPS_PER_TXN, MAX_OPS_PER_TXN, 250 - 2 * MAX_OPS_PER_TXN]);

        let big = "x".repeat(400 << 10);
        let large: Vec<Change> = (0..5).map(|i| Change::Put(format!("/t/k{i}"), big.clone())).collect();
        let cut = chunks(&large);
        assert_eq!(cut.iter().map(|c| c.len()).collect::<Vec<_>>(), [2, 2, 1]);
        let huge = vec![Change::Put("/t/h".into(), "y".repeat(2 << 20)), Change::Delete("/t/d".into())];
        assert_eq!(chunks(&huge).iter().map(|c| c.len()).collect::<Vec<_>>(), [1, 1]);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn a_deleted_spec_removes_its_keys() {
        let keys = Keys::new("/t/");
        let plan = snapshot_with(&keys, &[("specs/a", json(&spec())), ("bases/b1", json(&base()))]).plan();
        let orphaned = snapshot_with(
            &keys,
            &[
                ("bases/b1", json(&base())),
                ("assign/b1/a", json(&plan.assignments["b1"]["a"])),
                ("placement/a", json(&plan.placements["a"])),
                ("endpoints/a", json(&plan.endpoints["a"])),
            ],
        );
        let changes = diff(&keys, &orphaned, &orphaned.plan(), 1);
        assert_eq!(
            changes,
            [
                Change::Delete("/t/assign/b1/a".into()),
                Change::Delete("/t/placement/a".into()),
                Change::Delete("/t/endpoints/a".into())
            ]
        );
    }

    #[test]
    fn a_scale_record_is_written_on_change_only_and_deleted_with_its_spec() {
        let keys = Keys::new("/t/");
        let mut scaled = spec();
        scaled.spec.autoscale = Some(crate::model::Autoscale {
            min: 1,
            max: 3,
            target_cpu: Some(0.5),
            target_rps: None,
            cooldown_ms: 1_000,
        });
        let first = snapshot_with(&keys, &[("specs/a", json(&scaled)), ("bases/b1", json(&base()))]);
        let plan = first.plan_at(10);
        let record = plan.scales["a"].clone();
        assert_eq!(record.replicas, 1);
        assert!(diff(&keys, &first, &plan, 10).contains(&Change::Put("/t/scale/a".into(), json(&record))));

        let settled = snapshot_with(
            &keys,
            &[("specs/a", json(&scaled)), ("bases/b1", json(&base())), ("scale/a", json(&record))],
        );
        let later = settled.plan_at(99_000);
        assert!(
            !diff(&keys, &settled, &later, 99_000)
                .iter()
                .any(|c| matches!(c, Change::Put(k, _) if k == "/t/scale/a")),
            "nothing measured, nothing changed: no write"
        );

        let orphaned = snapshot_with(&keys, &[("bases/b1", json(&base())), ("scale/a", json(&record))]);
        assert_eq!(diff(&keys, &orphaned, &orphaned.plan_at(1), 1), [Change::Delete("/t/scale/a".into())]);
    }
}

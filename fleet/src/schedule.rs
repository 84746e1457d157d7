//! The scheduler: a pure function from what etcd holds (specs, live bases, their reports, the
//! assignments in force) to what it should hold (assignments, placements, endpoints).
//!
//! The rules, in order:
//! - **Eligible** = a live base (its `bases/<id>` key exists) whose labels carry the spec's
//!   selector, whose interface version is compatible with the module's (same major, and a minor
//!   at least the module's when the spec says which it was built against), with room under
//!   `max_modules`, memory and CPU.
//! - **Need** of one replica = the largest heap and CPU any base measures for the module, else
//!   the spec's declared `resources`. **Used** of a base = the needs of what it is assigned plus
//!   the measured use of what it runs unmanaged.
//! - **Stability**: a replica already assigned to a base that still matches (live, selector,
//!   interface) stays there, even when a emptier base joins or its measured use grew. Only scale
//!   down removes kept replicas: from the base with the most modules, then the least free memory,
//!   then the newest registration, then the greatest id.
//! - **New replicas**: `spread` takes the base with the fewest modules, then the most free
//!   memory, then the smallest id; `pack` the base with the most modules that still fits, then
//!   the smallest id. `peer` wants every matching base.
//! - Fewer fit than wanted: `unschedulable`, with a reason counting why the others do not fit;
//!   what fits is placed, and every pass tries again.
//! - **Cordoned** bases (`cordons/<base>`) take no new replica; what they run stays. **Draining**
//!   bases' replicas move make-before-break: a replacement is placed on another base (a surge
//!   beyond `wanted`), and a serving replica on the draining base is dropped only while at
//!   least `wanted` replicas serve without it, so a module never has fewer serving replicas
//!   than before (one that does not serve is dropped once replaced). With nowhere to go, it
//!   stays, and the placement's reason says so. `peer` modules want every matching base but
//!   the cordoned ones, so a draining base's replica just goes once the others serve.
//! - **Autoscaled** specs want their scale record's count (see [`crate::autoscale`]).
//!
//! Deterministic: everything is walked in id order, so two controllers planning the same
//! snapshot write the same keys.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    Assignment, BaseRecord, BaseStatus, CordonRecord, Endpoint, Endpoints, Placement, PlacementRecord,
    Resources, ScaleRecord, SpecRecord,
};

/// What operators and the autoscaler decided, besides the specs: cordoned bases and autoscaled
/// counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directives {
    /// By base id (a cordon may name a base that is not live).
    pub cordons: BTreeMap<String, CordonRecord>,
    /// By module name: the count an autoscaled spec wants.
    pub scales: BTreeMap<String, ScaleRecord>,
}

impl Directives {
    fn cordoned(&self, base: &str) -> bool {
        self.cordons.contains_key(base)
    }

    fn draining(&self, base: &str) -> bool {
        self.cordons.get(base).is_some_and(|c| c.drain)
    }

    /// The replicas `record` wants: its autoscaled count, else `replicas`; `peer` aside.
    fn wanted(&self, record: &SpecRecord) -> u32 {
        let spec = &record.spec;
        match &spec.autoscale {
            Some(autoscale) => match self.scales.get(&spec.name) {
                Some(scale) => scale.replicas.clamp(autoscale.min, autoscale.max.max(autoscale.min)),
                None => crate::autoscale::starting_count(autoscale, spec),
            },
            None => spec.replicas.unwrap_or(0),
        }
    }
}

/// What the fleet should hold after a pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// By base id, then module name.
    pub assignments: BTreeMap<String, BTreeMap<String, Assignment>>,
    /// By module name; `at_ms` is left 0 for the caller to stamp when it writes.
    pub placements: BTreeMap<String, PlacementRecord>,
    /// By module name.
    pub endpoints: BTreeMap<String, Endpoints>,
    /// Autoscaled specs' scale records, by module name (the caller fills them in: see
    /// [`crate::autoscale::decide`]).
    pub scales: BTreeMap<String, ScaleRecord>,
}

/// Places every spec, with no cordon and no autoscaled count. `current` is the assignments in
/// force, by base id then module name.
pub fn place(
    specs: &BTreeMap<String, SpecRecord>,
    bases: &BTreeMap<String, BaseRecord>,
    statuses: &BTreeMap<String, BaseStatus>,
    current: &BTreeMap<String, BTreeMap<String, Assignment>>,
) -> Plan {
    place_directed(specs, bases, statuses, current, &Directives::default())
}

/// Places every spec under `directives` (cordons, autoscaled counts).
pub fn place_directed(
    specs: &BTreeMap<String, SpecRecord>,
    bases: &BTreeMap<String, BaseRecord>,
    statuses: &BTreeMap<String, BaseStatus>,
    current: &BTreeMap<String, BTreeMap<String, Assignment>>,
    directives: &Directives,
) -> Plan {
    let needs: BTreeMap<&str, Resources> =
        specs.iter().map(|(name, record)| (name.as_str(), need(record, statuses))).collect();
    let mut loads: BTreeMap<&str, Load> =
        bases.keys().map(|id| (id.as_str(), Load::unmanaged(statuses.get(id), specs))).collect();
    let mut chosen: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();

    // Phase 1: keep what is assigned and still matches, so no spec's new replicas can take the
    // room a kept replica of a later spec holds.
    for (base_id, modules) in current {
        let Some(base) = bases.get(base_id) else { continue };
        for module in modules.keys() {
            let Some(record) = specs.get(module) else { continue };
            if matches(&record.spec, base).is_ok() {
                chosen.entry(module.as_str()).or_default().insert(base_id.as_str());
                loads.get_mut(base_id.as_str()).expect("a load per base").add(needs[module.as_str()]);
            }
        }
    }

    let mut plan = Plan::default();
    for (name, record) in specs {
        let spec = &record.spec;
        let need = needs[name.as_str()];
        let on = chosen.entry(name.as_str()).or_default();
        // Bases are named by their key's id throughout (`loads`, `chosen`, the plan), never by
        // the record's own `id` field, so a record disagreeing with its key cannot miss a load.
        let matching: Vec<(&str, &BaseRecord)> =
            bases.iter().map(|(id, b)| (id.as_str(), b)).filter(|(_, b)| matches(spec, b).is_ok()).collect();
        // A peer module runs on every matching base that is not cordoned, and stays on the
        // cordoned ones that run it and are not draining.
        let wanted = if spec.peer {
            matching
                .iter()
                .filter(|(id, _)| !directives.cordoned(id) || (on.contains(id) && !directives.draining(id)))
                .count() as u32
        } else {
            directives.wanted(record)
        };
        // Replicas on draining bases are set aside while the rest is planned, then kept as
        // long as they are needed.
        let moving: BTreeSet<&str> = on.iter().copied().filter(|id| directives.draining(id)).collect();
        on.retain(|id| !moving.contains(id));

        // Scale down: drop kept replicas beyond what is wanted, the most loaded first.
        while on.len() > wanted as usize {
            let victim = on
                .iter()
                .copied()
                .max_by_key(|id| {
                    let load = &loads[id];
                    (
                        load.modules,
                        std::cmp::Reverse(load.free_memory(&bases[*id])),
                        bases[*id].started_ms,
                        *id,
                    )
                })
                .expect("more replicas than wanted means at least one");
            on.remove(victim);
            loads.get_mut(victim).expect("a load per base").remove(need);
        }

        // Scale up: the best bases with room, one replica each.
        let mut unfit = Unfit::default();
        if (on.len() as u32) < wanted {
            let mut candidates: Vec<(&str, &BaseRecord)> = Vec::new();
            for &(id, base) in &matching {
                if on.contains(id) {
                    continue;
                }
                if directives.cordoned(id) {
                    unfit.count(Why::Cordoned);
                    continue;
                }
                match loads[id].room_for(base, need) {
                    Ok(()) => candidates.push((id, base)),
                    Err(why) => unfit.count(why),
                }
            }
            candidates.sort_by(|&(ia, a), &(ib, b)| {
                let (la, lb) = (&loads[ia], &loads[ib]);
                match spec.placement {
                    Placement::Spread => la
                        .modules
                        .cmp(&lb.modules)
                        .then_with(|| lb.free_memory(b).cmp(&la.free_memory(a)))
                        .then_with(|| ia.cmp(ib)),
                    Placement::Pack => lb.modules.cmp(&la.modules).then_with(|| ia.cmp(ib)),
                }
            });
            for (id, _) in candidates.into_iter().take(wanted as usize - on.len()) {
                on.insert(id);
                loads.get_mut(id).expect("a load per base").add(need);
            }
        }
        for (_, base) in bases.iter().filter(|(id, _)| !on.contains(id.as_str())) {
            if let Err(why) = matches(spec, base) {
                unfit.count(why);
            }
        }

        // Draining replicas: those still needed to make up `wanted` stay (nowhere else fits);
        // the others have a replacement and go once enough replicas serve without them.
        let elsewhere = on.len() as u32;
        let is_serving = |id: &str| serves(statuses.get(id), name, &spec.version, &spec.sha256);
        let mut serving_count = on.iter().chain(moving.iter()).filter(|id| is_serving(id)).count() as u32;
        let mut staying: Vec<&str> = Vec::new();
        let mut waiting = 0u32;
        let mut surplus = (elsewhere + moving.len() as u32).saturating_sub(wanted);
        // Non-serving draining replicas first: dropping them costs no serving replica.
        let mut order: Vec<&str> = moving.iter().copied().collect();
        order.sort_by_key(|id| (is_serving(id), *id));
        for id in order {
            if surplus == 0 {
                staying.push(id);
                continue;
            }
            if !is_serving(id) {
                surplus -= 1;
            } else if serving_count > wanted {
                serving_count -= 1;
                surplus -= 1;
            } else {
                waiting += 1;
                staying.push(id);
            }
        }
        let stuck = staying.len() as u32 - waiting;
        for id in &staying {
            on.insert(id);
        }
        for id in moving.iter().filter(|id| !on.contains(*id)) {
            loads.get_mut(id).expect("a load per base").remove(need);
        }

        let placed = elsewhere + stuck;
        let reason = if placed < wanted {
            Some(unfit.reason(placed, wanted, matching.len(), spec, need, bases.is_empty()))
        } else if stuck > 0 {
            Some(format!(
                "{stuck} {} on draining {}: no other base fits{}",
                plural(stuck, "replica stays", "replicas stay"),
                plural(stuck, "base", "bases"),
                unfit
                    .reason(elsewhere, wanted, matching.len(), spec, need, bases.is_empty())
                    .split_once(':')
                    .map(|(_, why)| format!(" ({})", why.trim()))
                    .unwrap_or_default()
            ))
        } else if waiting > 0 {
            Some(format!(
                "moving {waiting} {} off draining {}: waiting for {} serving elsewhere",
                plural(waiting, "replica", "replicas"),
                plural(waiting, "base", "bases"),
                plural(waiting, "its replacement", "their replacements"),
            ))
        } else {
            None
        };
        let state = if placed < wanted { "unschedulable" } else { "placed" };
        let assignment = Assignment {
            module: name.clone(),
            version: spec.version.clone(),
            sha256: spec.sha256.clone(),
            url: spec.url.clone(),
            limits: spec.limits,
            config: spec.config.clone(),
            generation: record.generation,
            canary: None,
        };
        for base_id in on.iter() {
            plan.assignments
                .entry((*base_id).to_owned())
                .or_default()
                .insert(name.clone(), assignment.clone());
        }
        plan.placements.insert(
            name.clone(),
            PlacementRecord {
                module: name.clone(),
                generation: record.generation,
                state: state.to_owned(),
                reason,
                wanted,
                bases: on.iter().map(|b| (*b).to_owned()).collect(),
                at_ms: 0,
            },
        );
        let endpoints = on
            .iter()
            .filter(|base_id| serves(statuses.get(**base_id), name, &spec.version, &spec.sha256))
            .map(|base_id| Endpoint {
                base_id: (*base_id).to_owned(),
                traffic_url: bases[*base_id].traffic_url.clone(),
                version: spec.version.clone(),
            })
            .collect();
        plan.endpoints.insert(name.clone(), Endpoints { module: name.clone(), endpoints });
    }
    plan
}

/// What one replica of `record`'s module needs, per field: the largest measured on any base
/// when that is above 0, else the declared `resources`. A measured 0 means no measurement (a
/// missing heap sample; a module that has run has some heap) or an idle moment (CPU), never
/// that the module needs nothing, so it does not replace what the spec declares.
pub fn need(record: &SpecRecord, statuses: &BTreeMap<String, BaseStatus>) -> Resources {
    let measured = statuses.values().flat_map(|s| &s.modules).filter(|m| m.name == record.spec.name);
    let (mut memory_bytes, mut cpu_millis) = (0, 0);
    for module in measured {
        memory_bytes = memory_bytes.max(module.heap_bytes);
        cpu_millis = cpu_millis.max(module.cpu_millis);
    }
    let declared = record.spec.resources;
    Resources {
        memory_bytes: if memory_bytes > 0 { memory_bytes } else { declared.memory_bytes },
        cpu_millis: if cpu_millis > 0 { cpu_millis } else { declared.cpu_millis },
    }
}

/// What `base` uses by the need rules: its assignments' needs plus its unmanaged modules'
/// measured use, and how many modules that is.
pub fn usage(
    base: &str,
    specs: &BTreeMap<String, SpecRecord>,
    statuses: &BTreeMap<String, BaseStatus>,
    assignments: &BTreeMap<String, BTreeMap<String, Assignment>>,
) -> (Resources, u32) {
    let mut load = Load::unmanaged(statuses.get(base), specs);
    for module in assignments.get(base).into_iter().flat_map(|m| m.keys()) {
        match specs.get(module) {
            Some(record) => load.add(need(record, statuses)),
            None => load.modules += 1,
        }
    }
    (load.used, load.modules)
}

/// Whether the base's report shows `module` serving this version and artifact.
pub fn serves(status: Option<&BaseStatus>, module: &str, version: &str, sha256: &str) -> bool {
    status.is_some_and(|s| {
        s.modules.iter().any(|m| m.name == module && m.version == version && m.sha256 == sha256 && m.serving)
    })
}

/// Why a base cannot take a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Selector,
    Interface,
    Cordoned,
    MaxModules,
    Memory,
    Cpu,
}

/// Whether `base` may run `spec`'s module at all (room aside).
fn matches(spec: &crate::model::Spec, base: &BaseRecord) -> Result<(), Why> {
    if !spec.selector.iter().all(|(k, v)| base.labels.get(k) == Some(v)) {
        return Err(Why::Selector);
    }
    if !interface_compatible(&base.interface_version, spec.interface_version.as_deref()) {
        return Err(Why::Interface);
    }
    Ok(())
}

/// A base hosting interface `base` can load a module built against `module`: same major, and
/// (when known) a minor at least the module's. A base reporting no parseable version hosts
/// nothing.
pub fn interface_compatible(base: &str, module: Option<&str>) -> bool {
    let Ok(base) = semver::Version::parse(base) else { return false };
    match module.map(semver::Version::parse) {
        None => true,
        Some(Ok(module)) => base.major == module.major && base.minor >= module.minor,
        Some(Err(_)) => false,
    }
}

/// A base's load while planning.
#[derive(Debug, Clone, Copy)]
struct Load {
    used: Resources,
    modules: u32,
}

impl Load {
    /// The load of what a base runs that no spec names or that it reports unmanaged.
    fn unmanaged(status: Option<&BaseStatus>, specs: &BTreeMap<String, SpecRecord>) -> Self {
        let mut by_name: BTreeMap<&str, Resources> = BTreeMap::new();
        for module in status.into_iter().flat_map(|s| &s.modules) {
            if module.managed && specs.contains_key(&module.name) {
                continue;
            }
            if module.managed {
                // Fleet-owned but no longer specified: on its way out, counts nothing.
                continue;
            }
            let r = by_name.entry(&module.name).or_insert(Resources { memory_bytes: 0, cpu_millis: 0 });
            r.memory_bytes += module.heap_bytes;
            r.cpu_millis += module.cpu_millis;
        }
        let mut load = Load { used: Resources { memory_bytes: 0, cpu_millis: 0 }, modules: 0 };
        for r in by_name.values() {
            load.add(*r);
        }
        load
    }

    fn add(&mut self, r: Resources) {
        self.used.memory_bytes += r.memory_bytes;
        self.used.cpu_millis += r.cpu_millis;
        self.modules += 1;
    }

    fn remove(&mut self, r: Resources) {
        self.used.memory_bytes = self.used.memory_bytes.saturating_sub(r.memory_bytes);
        self.used.cpu_millis = self.used.cpu_millis.saturating_sub(r.cpu_millis);
        self.modules = self.modules.saturating_sub(1);
    }

    fn free_memory(&self, base: &BaseRecord) -> u64 {
        base.capacity.memory_bytes.saturating_sub(self.used.memory_bytes)
    }

    fn room_for(&self, base: &BaseRecord, need: Resources) -> Result<(), Why> {
        if self.modules >= base.capacity.max_modules {
            Err(Why::MaxModules)
        } else if self.used.memory_bytes + need.memory_bytes > base.capacity.memory_bytes {
            Err(Why::Memory)
        } else if self.used.cpu_millis + need.cpu_millis > base.capacity.cpu_millis {
            Err(Why::Cpu)
        } else {
            Ok(())
        }
    }
}

/// Bases that could not take a replica, by why.
#[derive(Debug, Default)]
struct Unfit {
    selector: u32,
    interface: u32,
    cordoned: u32,
    max_modules: u32,
    memory: u32,
    cpu: u32,
}

impl Unfit {
    fn count(&mut self, why: Why) {
        match why {
            Why::Selector => self.selector += 1,
            Why::Interface => self.interface += 1,
            Why::Cordoned => self.cordoned += 1,
            Why::MaxModules => self.max_modules += 1,
            Why::Memory => self.memory += 1,
            Why::Cpu => self.cpu += 1,
        }
    }

    /// `2 of 3 replicas placed: 5 bases match tier=web; 3 lack memory (need 64 MiB)`.
    fn reason(
        &self,
        placed: u32,
        wanted: u32,
        matching: usize,
        spec: &crate::model::Spec,
        need: Resources,
        no_bases: bool,
    ) -> String {
        let head = format!("{placed} of {wanted} replicas placed");
        if no_bases {
            return format!("{head}: no live base");
        }
        let selector = if spec.selector.is_empty() {
            "no selector".to_owned()
        } else {
            spec.selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
        };
        let mut parts =
            vec![format!("{matching} {} {selector}", plural(matching as u32, "base matches", "bases match"))];
        if self.interface > 0 {
            parts.push(format!(
                "{} {} an incompatible interface version",
                self.interface,
                plural(self.interface, "runs", "run")
            ));
        }
        if self.cordoned > 0 {
            parts.push(format!("{} {} cordoned", self.cordoned, plural(self.cordoned, "is", "are")));
        }
        if self.max_modules > 0 {
            parts.push(format!(
                "{} {} at max_modules",
                self.max_modules,
                plural(self.max_modules, "is", "are")
            ));
        }
        // The need is rounded up coarsely (whole MiB, tens of millicores): it may be measured,
        // and a reason that moved with every status report would rewrite the placement.
        if self.memory > 0 {
            parts.push(format!("{} lack memory (need {} MiB)", self.memory, need.memory_bytes.div_ceil(MIB)));
        }
        if self.cpu > 0 {
            parts.push(format!(
                "{} lack CPU (need {} millicores)",
                self.cpu,
                need.cpu_millis.div_ceil(10) * 10
            ));
        }
        format!("{head}: {}", parts.join("; "))
    }
}

fn plural<'a>(n: u32, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

const MIB: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Capacity, ModuleStatus, Spec};

    fn base(id: &str, labels: &[(&str, &str)], memory_mib: u64, max_modules: u32) -> BaseRecord {
        BaseRecord {
            id: id.to_owned(),
            traffic_url: format!("http://{id}"),
            admin_url: format!("http://{id}-admin"),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            capacity: Capacity { memory_bytes: memory_mib * MIB, cpu_millis: 4000, max_modules },
            interface_version: "1.3.0".to_owned(),
            started_ms: 1,
        }
    }

    fn spec(name: &str, replicas: Option<u32>) -> SpecRecord {
        SpecRecord {
            spec: Spec {
                name: name.to_owned(),
                version: "1.0.0".to_owned(),
                sha256: "a".repeat(64),
                url: None,
                replicas,
                peer: replicas.is_none(),
                selector: BTreeMap::new(),
                placement: Placement::Spread,
                resources: Resources { memory_bytes: 32 * MIB, cpu_millis: 50 },
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

    fn by_id<T, F: Fn(&T) -> String>(items: Vec<T>, id: F) -> BTreeMap<String, T> {
        items.into_iter().map(|t| (id(&t), t)).collect()
    }

    fn specs(items: Vec<SpecRecord>) -> BTreeMap<String, SpecRecord> {
        by_id(items, |s| s.spec.name.clone())
    }

    fn bases(items: Vec<BaseRecord>) -> BTreeMap<String, BaseRecord> {
        by_id(items, |b| b.id.clone())
    }

    fn hosts(plan: &Plan, module: &str) -> Vec<String> {
        plan.placements[module].bases.clone()
    }

    fn running(base_id: &str, module: &str, heap: u64, managed: bool) -> BaseStatus {
        BaseStatus {
            base_id: base_id.to_owned(),
            modules: vec![ModuleStatus {
                name: module.to_owned(),
                version: "1.0.0".to_owned(),
                sha256: "a".repeat(64),
                state: "active".to_owned(),
                serving: true,
                health: "healthy".to_owned(),
                reason: None,
                heap_bytes: heap,
                cpu_millis: 10,
                requests: 0,
                managed,
                server_errors: 0,
                latency_us: Vec::new(),
                rps: 0.0,
                weight: None,
            }],
            ..Default::default()
        }
    }

    fn place_fresh(s: &BTreeMap<String, SpecRecord>, b: &BTreeMap<String, BaseRecord>) -> Plan {
        place(s, b, &BTreeMap::new(), &BTreeMap::new())
    }

    #[test]
    fn spread_takes_the_emptiest_bases_and_pack_the_fullest() {
        let b = bases(vec![base("b1", &[], 1024, 8), base("b2", &[], 1024, 8), base("b3", &[], 1024, 8)]);
        let mut first = spec("a", Some(1));
        first.spec.placement = Placement::Pack;
        let current: BTreeMap<_, _> =
            [("b2".to_owned(), place_fresh(&specs(vec![first.clone()]), &b).assignments["b1"].clone())]
                .into_iter()
                .collect();

        let mut spread = spec("s", Some(2));
        spread.spec.placement = Placement::Spread;
        let plan = place(&specs(vec![first.clone(), spread]), &b, &BTreeMap::new(), &current);
        assert_eq!(hosts(&plan, "a"), ["b2"]);
        assert_eq!(hosts(&plan, "s"), ["b1", "b3"], "spread avoids the base that already runs a module");

        let mut pack = spec("p", Some(2));
        pack.spec.placement = Placement::Pack;
        let plan = place(&specs(vec![first, pack]), &b, &BTreeMap::new(), &current);
        assert_eq!(hosts(&plan, "p"), ["b1", "b2"], "pack fills the base that already runs a module");
    }

    #[test]
    fn the_selector_limits_the_bases() {
        let b = bases(vec![base("b1", &[("tier", "web")], 1024, 8), base("b2", &[("tier", "db")], 1024, 8)]);
        let mut s = spec("web", Some(2));
        s.spec.selector.insert("tier".into(), "web".into());
        let plan = place_fresh(&specs(vec![s]), &b);
        assert_eq!(hosts(&plan, "web"), ["b1"]);
        assert_eq!(plan.placements["web"].state, "unschedulable");
        assert_eq!(
            plan.placements["web"].reason.as_deref(),
            Some("1 of 2 replicas placed: 1 base matches tier=web")
        );
    }

    #[test]
    fn max_modules_is_respected() {
        let b = bases(vec![base("b1", &[], 1024, 1), base("b2", &[], 1024, 1)]);
        let plan = place_fresh(&specs(vec![spec("a", Some(2)), spec("b", Some(1))]), &b);
        assert_eq!(hosts(&plan, "a"), ["b1", "b2"]);
        assert_eq!(plan.placements["b"].state, "unschedulable");
        assert_eq!(
            plan.placements["b"].reason.as_deref(),
            Some("0 of 1 replicas placed: 2 bases match no selector; 2 are at max_modules")
        );
    }

    #[test]
    fn declared_then_measured_needs_fill_a_base() {
        let b = bases(vec![base("b1", &[], 100, 8)]);
        let mut a = spec("a", Some(1));
        a.spec.resources.memory_bytes = 40 * MIB;
        let mut c = spec("c", Some(1));
        c.spec.resources.memory_bytes = 40 * MIB;
        let plan = place_fresh(&specs(vec![a.clone(), c.clone()]), &b);
        assert_eq!(hosts(&plan, "a"), ["b1"]);
        assert_eq!(hosts(&plan, "c"), ["b1"], "80 of 100 MiB declared: both fit");

        // Once a is measured at 64 MiB, c no longer fits beside it.
        let statuses = by_id(vec![running("b1", "a", 64 * MIB, true)], |s| s.base_id.clone());
        let current = BTreeMap::from([("b1".to_owned(), plan.assignments["b1"].clone())]);
        let only_a: BTreeMap<_, _> = [(
            "b1".to_owned(),
            current["b1"].iter().filter(|(m, _)| *m == "a").map(|(m, a)| (m.clone(), a.clone())).collect(),
        )]
        .into_iter()
        .collect();
        let plan = place(&specs(vec![a, c]), &b, &statuses, &only_a);
        assert_eq!(hosts(&plan, "a"), ["b1"]);
        assert!(hosts(&plan, "c").is_empty());
        assert_eq!(
            plan.placements["c"].reason.as_deref(),
            Some("0 of 1 replicas placed: 1 base matches no selector; 1 lack memory (need 40 MiB)")
        );
    }

    #[test]
    fn unmanaged_modules_count_with_their_measured_use() {
        let b = bases(vec![base("b1", &[], 100, 8)]);
        let statuses = by_id(vec![running("b1", "by-hand", 80 * MIB, false)], |s| s.base_id.clone());
        let plan = place(&specs(vec![spec("a", Some(1))]), &b, &statuses, &BTreeMap::new());
        assert!(hosts(&plan, "a").is_empty());
        let (used, modules) = usage("b1", &BTreeMap::new(), &statuses, &BTreeMap::new());
        assert_eq!((used.memory_bytes, modules), (80 * MIB, 1));
    }

    #[test]
    fn an_unschedulable_spec_is_placed_when_a_base_joins() {
        let s = specs(vec![spec("a", Some(2))]);
        let one = bases(vec![base("b1", &[], 1024, 8)]);
        let plan = place_fresh(&s, &one);
        assert_eq!(plan.placements["a"].state, "unschedulable");
        assert_eq!(
            plan.placements["a"].reason.as_deref(),
            Some("1 of 2 replicas placed: 1 base matches no selector")
        );

        let two = bases(vec![base("b1", &[], 1024, 8), base("b2", &[], 1024, 8)]);
        let plan = place(&s, &two, &BTreeMap::new(), &plan.assignments);
        assert_eq!(plan.placements["a"].state, "placed");
        assert_eq!(hosts(&plan, "a"), ["b1", "b2"]);

        let none = place_fresh(&s, &BTreeMap::new());
        assert_eq!(none.placements["a"].reason.as_deref(), Some("0 of 2 replicas placed: no live base"));
    }

    #[test]
    fn a_lost_base_is_replaced_and_a_joining_base_steals_nothing() {
        let s = specs(vec![spec("a", Some(2))]);
        let three = bases(vec![base("b1", &[], 1024, 8), base("b2", &[], 1024, 8), base("b3", &[], 1024, 8)]);
        let plan = place_fresh(&s, &three);
        assert_eq!(hosts(&plan, "a"), ["b1", "b2"]);

        // b1 is gone: its replica moves to b3, b2's stays.
        let without_b1 = bases(vec![base("b2", &[], 1024, 8), base("b3", &[], 1024, 8)]);
        let plan = place(&s, &without_b1, &BTreeMap::new(), &plan.assignments);
        assert_eq!(hosts(&plan, "a"), ["b2", "b3"]);
        assert!(!plan.assignments.contains_key("b1"));

        // An empty base joins (sorting before both): nothing moves.
        let with_b0 =
            bases(vec![base("b0", &[], 1024, 8), base("b2", &[], 1024, 8), base("b3", &[], 1024, 8)]);
        let plan = place(&s, &with_b0, &BTreeMap::new(), &plan.assignments);
        assert_eq!(hosts(&plan, "a"), ["b2", "b3"]);
    }

    #[test]
    fn peer_runs_on_every_matching_base() {
        let b = bases(vec![
            base("b1", &[("tier", "web")], 1024, 8),
            base("b2", &[("tier", "web")], 1024, 8),
            base("b3", &[], 1024, 8),
        ]);
        let mut p = spec("p", None);
        p.spec.selector.insert("tier".into(), "web".into());
        let plan = place_fresh(&specs(vec![p.clone()]), &b);
        assert_eq!(hosts(&plan, "p"), ["b1", "b2"]);
        assert_eq!(plan.placements["p"].wanted, 2);
        assert_eq!(plan.placements["p"].state, "placed");

        let mut full = b.clone();
        full.get_mut("b2").expect("b2").capacity.max_modules = 0;
        let plan = place_fresh(&specs(vec![p]), &full);
        assert_eq!(hosts(&plan, "p"), ["b1"]);
        assert_eq!(
            plan.placements["p"].reason.as_deref(),
            Some("1 of 2 replicas placed: 2 bases match tier=web; 1 is at max_modules")
        );
    }

    #[test]
    fn scale_down_removes_from_the_most_loaded_base() {
        let b = bases(vec![base("b1", &[], 1024, 8), base("b2", &[], 1024, 8), base("b3", &[], 1024, 8)]);
        let plan = place_fresh(&specs(vec![spec("a", Some(3)), spec("z", Some(1))]), &b);
        assert_eq!(hosts(&plan, "z"), ["b1"]);
        let plan = place(
            &specs(vec![spec("a", Some(2)), spec("z", Some(1))]),
            &b,
            &BTreeMap::new(),
            &plan.assignments,
        );
        assert_eq!(hosts(&plan, "a"), ["b2", "b3"], "b1 also runs z: it loses the replica");
        let plan = place(
            &specs(vec![spec("a", Some(1)), spec("z", Some(1))]),
            &b,
            &BTreeMap::new(),
            &plan.assignments,
        );
        assert_eq!(hosts(&plan, "a"), ["b2"], "equal load: the greatest id goes");
    }

    #[test]
    fn interface_versions_must_be_compatible() {
        let mut old = base("old", &[], 1024, 8);
        old.interface_version = "0.9.0".into();
        let mut behind = base("behind", &[], 1024, 8);
        behind.interface_version = "1.2.0".into();
        let b = bases(vec![old, behind, base("now", &[], 1024, 8)]);
        let mut s = spec("a", Some(3));
        s.spec.interface_version = Some("1.3.0".into());
        let plan = place_fresh(&specs(vec![s]), &b);
        assert_eq!(hosts(&plan, "a"), ["now"]);
        assert_eq!(
            plan.placements["a"].reason.as_deref(),
            Some(
                "1 of 3 replicas placed: 1 base matches no selector; 2 run an incompatible interface version"
            )
        );
        assert!(interface_compatible("1.3.0", None));
        assert!(!interface_compatible("garbage", None));
    }

    #[test]
    fn endpoints_are_the_assigned_bases_serving_the_spec() {
        let b = bases(vec![base("b1", &[], 1024, 8), base("b2", &[], 1024, 8)]);
        let s = specs(vec![spec("a", Some(2))]);
        let mut old = running("b2", "a", MIB, true);
        old.modules[0].version = "0.9.0".into();
        let statuses = by_id(vec![running("b1", "a", MIB, true), old], |s| s.base_id.clone());
        let plan = place(&s, &b, &statuses, &BTreeMap::new());
        let ids: Vec<&str> = plan.endpoints["a"].endpoints.iter().map(|e| e.base_id.as_str()).collect();
        assert_eq!(ids, ["b1"]);
        assert_eq!(plan.endpoints["a"].endpoints[0].traffic_url, "http://b1");
    }

    #[test]
    fn a_changed_spec_reassigns_in_place() {
        let b = bases(vec![base("b1", &[], 1024, 8), base("b2", &[], 1024, 8)]);
        let plan = place_fresh(&specs(vec![spec("a", Some(2))]), &b);
        let mut v2 = spec("a", Some(2));
        v2.spec.version = "2.0.0".into();
        v2.generation = 2;
        let plan = place(&specs(vec![v2]), &b, &BTreeMap::new(), &plan.assignments);
        assert_eq!(hosts(&plan, "a"), ["b1", "b2"]);
        assert!(plan.assignments.values().all(|m| m["a"].version == "2.0.0" && m["a"].generation == 2));
    }

    #[test]
    fn a_measured_zero_keeps_the_declared_need() {
        let a = spec("a", Some(1));
        let mut idle = running("b1", "a", 0, true);
        idle.modules[0].cpu_millis = 0;
        let statuses = by_id(vec![idle], |s| s.base_id.clone());
        assert_eq!(need(&a, &statuses), a.spec.resources, "0 heap and idle CPU: declared");

        let mut busy = running("b1", "a", 0, true);
        busy.modules[0].cpu_millis = 300;
        let statuses = by_id(vec![busy, running("b2", "a", 70 * MIB, true)], |s| s.base_id.clone());
        assert_eq!(need(&a, &statuses), Resources { memory_bytes: 70 * MIB, cpu_millis: 300 }, "per field");
    }

    #[test]
    fn an_unschedulable_reason_does_not_move_with_small_measurements() {
        let b = bases(vec![base("b1", &[], 100, 8)]);
        let mut filler = spec("filler", Some(1));
        filler.spec.resources.memory_bytes = 90 * MIB;
        let current = BTreeMap::from([(
            "b1".to_owned(),
            place_fresh(&specs(vec![filler.clone()]), &b).assignments["b1"].clone(),
        )]);
        let reason = |heap: u64| {
            let statuses = by_id(vec![running("b2", "a", heap, true)], |s| s.base_id.clone());
            let plan = place(&specs(vec![filler.clone(), spec("a", Some(1))]), &b, &statuses, &current);
            plan.placements["a"].reason.clone().expect("unschedulable")
        };
        assert_eq!(reason(40 * MIB + 1000), reason(40 * MIB + 9000));
        assert!(reason(40 * MIB + 1000).ends_with("1 lack memory (need 41 MiB)"), "{}", reason(40 * MIB + 1));
    }

    #[test]
    fn a_base_record_naming_another_id_than_its_key_does_not_panic() {
        let mut odd = base("b1", &[], 1024, 8);
        odd.id = "elsewhere".into();
        let b = BTreeMap::from([("b1".to_owned(), odd)]);
        let plan = place_fresh(&specs(vec![spec("a", Some(1))]), &b);
        assert_eq!(hosts(&plan, "a"), ["b1"], "placed by the key's id");
    }

    fn cordons(items: &[(&str, bool)]) -> Directives {
        let cordons = items
            .iter()
            .map(|&(id, drain)| {
                let record = CordonRecord {
                    base_id: id.to_owned(),
                    drain,
                    actor: "ops".to_owned(),
                    reason: None,
                    at_ms: 1,
                };
                (id.to_owned(), record)
            })
            .collect();
        Directives { cordons, scales: BTreeMap::new() }
    }

    /// Statuses of each base serving module `a`.
    fn serving_a(ids: &[&str]) -> BTreeMap<String, BaseStatus> {
        by_id(ids.iter().map(|id| running(id, "a", MIB, true)).collect(), |s| s.base_id.clone())
    }

    fn three() -> BTreeMap<String, BaseRecord> {
        bases(vec![base("b1", &[], 1024, 8), base("b2", &[], 1024, 8), base("b3", &[], 1024, 8)])
    }

    #[test]
    fn a_cordoned_base_gets_no_new_replica_and_is_counted_in_the_reason() {
        let d = cordons(&[("b1", false)]);
        let plan = place_directed(
            &specs(vec![spec("a", Some(2))]),
            &three(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &d,
        );
        assert_eq!(hosts(&plan, "a"), ["b2", "b3"]);
        let plan = place_directed(
            &specs(vec![spec("a", Some(3))]),
            &three(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &d,
        );
        assert_eq!(hosts(&plan, "a"), ["b2", "b3"]);
        assert_eq!(
            plan.placements["a"].reason.as_deref(),
            Some("2 of 3 replicas placed: 3 bases match no selector; 1 is cordoned")
        );
    }

    #[test]
    fn a_cordoned_base_keeps_what_it_runs() {
        let s = specs(vec![spec("a", Some(2))]);
        let before = place_fresh(&s, &three());
        assert_eq!(hosts(&before, "a"), ["b1", "b2"]);
        let plan = place_directed(
            &s,
            &three(),
            &serving_a(&["b1", "b2"]),
            &before.assignments,
            &cordons(&[("b1", false)]),
        );
        assert_eq!(hosts(&plan, "a"), ["b1", "b2"]);
        assert_eq!(plan.placements["a"].state, "placed");
        assert_eq!(plan.placements["a"].reason, None);
    }

    #[test]
    fn a_drain_moves_make_before_break() {
        let s = specs(vec![spec("a", Some(2))]);
        let b = three();
        let drain = cordons(&[("b1", true)]);
        let before = place_fresh(&s, &b);
        assert_eq!(hosts(&before, "a"), ["b1", "b2"]);

        // The replacement on b3 is placed beside b1's, which stays until b3 serves.
        let surge = place_directed(&s, &b, &serving_a(&["b1", "b2"]), &before.assignments, &drain);
        assert_eq!(hosts(&surge, "a"), ["b1", "b2", "b3"]);
        assert_eq!(surge.placements["a"].wanted, 2);
        assert_eq!(
            surge.placements["a"].reason.as_deref(),
            Some("moving 1 replica off draining base: waiting for its replacement serving elsewhere")
        );
        let endpoints: Vec<&str> =
            surge.endpoints["a"].endpoints.iter().map(|e| e.base_id.as_str()).collect();
        assert_eq!(endpoints, ["b1", "b2"], "b1 serves until it goes");

        // b3 reports it still starting: nothing changes.
        let again = place_directed(&s, &b, &serving_a(&["b1", "b2"]), &surge.assignments, &drain);
        assert_eq!(hosts(&again, "a"), ["b1", "b2", "b3"]);

        // b3 serves: b1's replica goes.
        let done = place_directed(&s, &b, &serving_a(&["b1", "b2", "b3"]), &surge.assignments, &drain);
        assert_eq!(hosts(&done, "a"), ["b2", "b3"]);
        assert!(!done.assignments.contains_key("b1"));
        assert_eq!(
            (done.placements["a"].state.as_str(), done.placements["a"].reason.as_deref()),
            ("placed", None)
        );
    }

    #[test]
    fn a_draining_replica_that_does_not_serve_goes_once_replaced() {
        let s = specs(vec![spec("a", Some(2))]);
        let b = three();
        let before = place_fresh(&s, &b);
        // b1 does not serve a (failed): dropping it costs nothing.
        let plan =
            place_directed(&s, &b, &serving_a(&["b2"]), &before.assignments, &cordons(&[("b1", true)]));
        assert_eq!(hosts(&plan, "a"), ["b2", "b3"]);
    }

    #[test]
    fn a_drain_with_nowhere_to_go_keeps_the_replica() {
        let s = specs(vec![spec("a", Some(2))]);
        let two = bases(vec![base("b1", &[], 1024, 8), base("b2", &[], 1024, 8)]);
        let before = place_fresh(&s, &two);
        let plan = place_directed(
            &s,
            &two,
            &serving_a(&["b1", "b2"]),
            &before.assignments,
            &cordons(&[("b1", true)]),
        );
        assert_eq!(hosts(&plan, "a"), ["b1", "b2"]);
        assert_eq!(plan.placements["a"].state, "placed");
        assert_eq!(
            plan.placements["a"].reason.as_deref(),
            Some(
                "1 replica stays on draining base: no other base fits (2 bases match no selector; 1 is cordoned)"
            )
        );
    }

    #[test]
    fn uncordon_makes_a_base_eligible_and_moves_nothing_back() {
        let s = specs(vec![spec("a", Some(2))]);
        let b = three();
        let drain = cordons(&[("b1", true)]);
        let before = place_fresh(&s, &b);
        let surge = place_directed(&s, &b, &serving_a(&["b1", "b2"]), &before.assignments, &drain);
        let done = place_directed(&s, &b, &serving_a(&["b1", "b2", "b3"]), &surge.assignments, &drain);
        assert_eq!(hosts(&done, "a"), ["b2", "b3"]);

        let after = place(&s, &b, &serving_a(&["b2", "b3"]), &done.assignments);
        assert_eq!(hosts(&after, "a"), ["b2", "b3"], "stability: nothing moves back");
        let more = place(
            &specs(vec![spec("a", Some(2)), spec("z", Some(1))]),
            &b,
            &BTreeMap::new(),
            &done.assignments,
        );
        assert_eq!(hosts(&more, "z"), ["b1"], "b1 is eligible again, and the emptiest");
    }

    #[test]
    fn a_peer_module_leaves_a_draining_base_once_the_others_serve() {
        let s = specs(vec![spec("a", None)]);
        let b = three();
        let before = place_fresh(&s, &b);
        assert_eq!(hosts(&before, "a"), ["b1", "b2", "b3"]);
        let drain = cordons(&[("b1", true)]);
        let waiting = place_directed(&s, &b, &serving_a(&["b1"]), &before.assignments, &drain);
        assert_eq!(hosts(&waiting, "a"), ["b1", "b2", "b3"], "b2 and b3 do not serve yet");
        let done = place_directed(&s, &b, &serving_a(&["b1", "b2", "b3"]), &before.assignments, &drain);
        assert_eq!(hosts(&done, "a"), ["b2", "b3"]);
        assert_eq!(done.placements["a"].wanted, 2);
        // Cordoned only: it keeps its replica, and a base that joins later gets one.
        let cordoned =
            place_directed(&s, &b, &BTreeMap::new(), &before.assignments, &cordons(&[("b1", false)]));
        assert_eq!(hosts(&cordoned, "a"), ["b1", "b2", "b3"]);
    }

    #[test]
    fn an_autoscaled_spec_wants_its_scale_record() {
        let mut a = spec("a", Some(1));
        a.spec.autoscale = Some(crate::model::Autoscale {
            min: 1,
            max: 2,
            target_cpu: Some(0.5),
            target_rps: None,
            cooldown_ms: 1_000,
        });
        let s = specs(vec![a]);
        let scale = |replicas| ScaleRecord {
            module: "a".into(),
            replicas,
            changed_ms: 0,
            reason: String::new(),
            lower_since_ms: None,
            lower_peak: 0,
        };
        let with = |replicas| Directives {
            cordons: BTreeMap::new(),
            scales: BTreeMap::from([("a".to_owned(), scale(replicas))]),
        };
        assert_eq!(
            hosts(&place_directed(&s, &three(), &BTreeMap::new(), &BTreeMap::new(), &with(2)), "a").len(),
            2
        );
        // A record beyond the spec's bounds (the spec changed since) is clamped.
        assert_eq!(
            hosts(&place_directed(&s, &three(), &BTreeMap::new(), &BTreeMap::new(), &with(3)), "a").len(),
            2
        );
        // No record yet: the starting count.
        assert_eq!(hosts(&place(&s, &three(), &BTreeMap::new(), &BTreeMap::new()), "a").len(), 1);
    }
}

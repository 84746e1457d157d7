//! The lifecycle's decisions, as pure functions over a snapshot of the module table.
//!
//! Each function answers one question an operation asks under the registry's lock (which
//! version takes the traffic, whether an uninstall leaves a dependent without its SPI, in which
//! order a restore starts the modules) from plain values: no instance, no lock, no clock. The
//! lifecycle (`lifecycle.rs`) takes the snapshot, asks, and applies the answer; the tests at the
//! end of this file ask the same questions of small tables written as text.

use std::collections::BTreeMap;

use semver::Version;

use super::{Versions, compatible};
use crate::{
    error::{Error, Result},
    instance::{ModuleId, State},
};

/// Whether the active version's traffic goes to another version when it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandOver {
    /// The newest other running version takes the traffic (an uninstall).
    ToSuccessor,
    /// Nobody takes it: a new build of the same version takes the seat (a same-version replace),
    /// its share of a split included.
    KeepSeat,
    /// As [`HandOver::ToSuccessor`], but the active version does not leave while another
    /// version runs (`VERSION_ACTIVE`): an uninstall with `keep_active`.
    RefuseActive,
}

/// What an instance is, as far as the lifecycle's decisions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) state: State,
    /// Inside another operation (an install's start, a stop).
    pub(crate) busy: bool,
    /// Taken out of traffic by the unhealthy policy or an operator.
    pub(crate) deactivated: bool,
    pub(crate) provides: Vec<(String, Version)>,
    pub(crate) requires: Vec<(String, Version)>,
}

impl Facts {
    pub(crate) fn of(instance: &crate::instance::Instance) -> Self {
        Self {
            state: instance.state(),
            busy: instance.is_busy(),
            deactivated: instance.is_deactivated(),
            provides: instance.provides.clone(),
            requires: instance.requires.clone(),
        }
    }

    /// Started and not taken out of traffic: it answers requests and SPI calls.
    fn is_serving(&self) -> bool {
        matches!(self.state, State::Active | State::Inactive) && !self.deactivated
    }

    fn provides_compatible(&self, spi: &str, wanted: &Version) -> bool {
        self.provides.iter().any(|(name, version)| name == spi && compatible(version, wanted))
    }
}

/// One module's versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Module {
    pub(crate) versions: BTreeMap<Version, Facts>,
    /// The version the module's traffic goes to.
    pub(crate) active: Option<Version>,
}

impl Module {
    pub(crate) fn of(versions: &Versions) -> Self {
        Self {
            versions: versions.instances.iter().map(|(v, i)| (v.clone(), Facts::of(i))).collect(),
            active: versions.active.clone(),
        }
    }

    /// The active version's facts.
    fn active(&self) -> Option<(&Version, &Facts)> {
        self.active.as_ref().and_then(|v| self.versions.get_key_value(v))
    }
}

/// Every module, by name.
pub(crate) type Table = BTreeMap<String, Module>;

/// A snapshot of the registry's module table.
pub(crate) fn snapshot(modules: &BTreeMap<String, Versions>) -> Table {
    modules.iter().map(|(name, versions)| (name.clone(), Module::of(versions))).collect()
}

/// An implementation an install may count on: module `name` answers calls of `spi` in
/// `version`.
#[derive(Debug, Clone)]
pub(crate) struct Provider {
    pub(crate) name: String,
    pub(crate) spi: String,
    pub(crate) version: Version,
}

/// The version that takes module `name`'s traffic when `version` leaves: the newest other
/// version that is started, inactive, not deactivated and not inside another operation. None
/// when `version` is not the active one (nothing to hand over), or with [`HandOver::KeepSeat`].
pub(crate) fn successor(
    table: &Table,
    name: &str,
    version: &Version,
    hand_over: HandOver,
) -> Option<Version> {
    let module = table.get(name).filter(|m| m.active.as_ref() == Some(version))?;
    if hand_over == HandOver::KeepSeat {
        return None;
    }
    module
        .versions
        .iter()
        .rev()
        .find(|(v, f)| *v != version && f.state == State::Inactive && !f.busy && !f.deactivated)
        .map(|(v, _)| v.clone())
}

/// Refuses (`VERSION_ACTIVE`) to take down module `name`'s active `version` while other
/// versions of it run, with [`HandOver::RefuseActive`].
pub(crate) fn check_keep_active(
    table: &Table,
    name: &str,
    version: &Version,
    hand_over: HandOver,
) -> Result<()> {
    let Some(module) = table.get(name).filter(|m| m.active.as_ref() == Some(version)) else { return Ok(()) };
    let others = module.versions.iter().filter(|(v, f)| *v != version && f.state.is_live()).count();
    if hand_over == HandOver::RefuseActive && others > 0 {
        return Err(Error::VersionActive { id: format!("{name}@{version}"), others });
    }
    Ok(())
}

/// The version a restore hands module's traffic to when the version recorded as active did not
/// come back: the newest started, not deactivated one.
pub(crate) fn restore_fallback(module: &Module) -> Option<Version> {
    module
        .versions
        .iter()
        .rev()
        .find(|(_, f)| f.state == State::Inactive && !f.deactivated)
        .map(|(v, _)| v.clone())
}

/// Refuses to install `name` (with these facts) while an SPI it requires has no compatible
/// implementation among `providers` (`SPI_MISSING`). An SPI it implements itself counts as
/// present; another version of the same module does not.
pub(crate) fn check_requires(id: &ModuleId, facts: &Facts, providers: &[Provider]) -> Result<()> {
    let name = &id.name;
    for (spi, version) in &facts.requires {
        let own = facts.provides_compatible(spi, version);
        let running =
            providers.iter().any(|p| p.name != *name && p.spi == *spi && compatible(&p.version, version));
        if !own && !running {
            return Err(Error::SpiMissing { id: id.clone(), spi: spi.clone(), version: version.to_string() });
        }
    }
    Ok(())
}

/// Refuses to take `name@version` away when a live module requires an SPI it implements and no
/// other compatible implementation would remain (`MODULE_REQUIRED`): the serving active version
/// of another module, or the version of this module that takes over (`successor`).
pub(crate) fn check_dependents(
    table: &Table,
    name: &str,
    version: &Version,
    successor: Option<&Version>,
) -> Result<()> {
    let Some(leaving) = table.get(name).and_then(|m| m.versions.get(version)) else { return Ok(()) };
    // What implements what after it leaves: every other module's active version, and this
    // module's remaining active version (or its successor).
    let remaining: Vec<&Facts> = table
        .iter()
        .filter_map(|(n, m)| m.active().filter(|(v, _)| !(n == name && *v == version)).map(|(_, f)| f))
        .chain(successor.and_then(|s| table.get(name)?.versions.get(s)))
        .filter(|f| f.is_serving())
        .collect();
    let live_others = || {
        table
            .iter()
            .filter(|(n, _)| *n != name)
            .flat_map(|(n, m)| m.versions.iter().map(move |(v, f)| (n, v, f)))
            .filter(|(_, _, f)| f.state.is_live())
    };
    for (_, _, dependent) in live_others() {
        for (spi, wanted) in &dependent.requires {
            if !leaving.provides_compatible(spi, wanted) {
                continue;
            }
            if !remaining.iter().any(|f| f.provides_compatible(spi, wanted)) {
                let mut dependents: Vec<String> = live_others()
                    .filter(|(_, _, f)| f.requires.iter().any(|(s, _)| s == spi))
                    .map(|(n, v, _)| format!("{n}@{v}"))
                    .collect();
                dependents.sort();
                return Err(Error::ModuleRequired {
                    id: ModuleId { name: name.to_owned(), version: version.clone() },
                    spi: spi.clone(),
                    dependents,
                });
            }
        }
    }
    Ok(())
}

/// What a newly started version does about its module's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Activation {
    /// Another version is active and keeps the traffic: the new one waits, inactive.
    Wait,
    /// The new version takes the traffic, from `from` when another version had it (which
    /// clears a split); taking an empty seat (a restart, a same-version replace) keeps it.
    Take { from: Option<Version> },
}

/// Whether a started `name@version` takes the traffic: the first version of a module does, as
/// does one installed with `activate` or by a replace; otherwise the active version keeps it.
pub(crate) fn activation(table: &Table, name: &str, version: &Version, take_traffic: bool) -> Activation {
    let current = table
        .get(name)
        .and_then(Module::active)
        .filter(|(v, f)| f.state == State::Active && *v != version)
        .map(|(v, _)| v.clone());
    match current {
        Some(_) if !take_traffic => Activation::Wait,
        from => Activation::Take { from },
    }
}

/// Refuses a switch to a version that is not started (`NOT_RUNNING`); otherwise the version
/// the traffic moves from (None when none is active, or the target already is).
pub(crate) fn switch_from(table: &Table, name: &str, target: &Version) -> Result<Option<Version>> {
    let module = table.get(name).ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
    let facts =
        module.versions.get(target).ok_or_else(|| Error::NotFound { what: format!("{name}@{target}") })?;
    if !matches!(facts.state, State::Active | State::Inactive) {
        return Err(not_running(name, target, facts.state));
    }
    Ok(module.active().filter(|(v, f)| *v != target && f.state == State::Active).map(|(v, _)| v.clone()))
}

/// Refuses weights naming a version that is not installed (`NOT_FOUND`) or not started
/// (`NOT_RUNNING`), or that are all zero (`BAD_REQUEST`). An empty map is accepted: it goes back
/// to the active version alone.
pub(crate) fn check_weights(table: &Table, name: &str, weights: &BTreeMap<Version, u32>) -> Result<()> {
    let module = table.get(name).ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
    for version in weights.keys() {
        let facts = module
            .versions
            .get(version)
            .ok_or_else(|| Error::NotFound { what: format!("{name}@{version}") })?;
        if !matches!(facts.state, State::Active | State::Inactive) {
            return Err(not_running(name, version, facts.state));
        }
    }
    if !weights.is_empty() && weights.values().all(|w| *w == 0) {
        return Err(Error::BadRequest { message: "at least one weight must be above zero".into() });
    }
    Ok(())
}

fn not_running(name: &str, version: &Version, state: State) -> Error {
    Error::NotRunning { id: ModuleId { name: name.to_owned(), version: version.clone() }, state }
}

/// `items` with every one after the implementations of the SPIs it requires (a stable
/// topological order; an SPI nobody implements is no constraint, and a cycle is broken at one
/// of its implementations). `spis` gives an item's provided and required SPI names.
pub(crate) fn dependency_order<T>(items: Vec<T>, spis: impl Fn(&T) -> (&[String], &[String])) -> Vec<T> {
    let mut left = items;
    let mut ordered: Vec<T> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let ready = left.iter().enumerate().position(|(at, item)| {
            spis(item).1.iter().all(|spi| {
                // Satisfied when no other waiting item implements it.
                !left
                    .iter()
                    .enumerate()
                    .any(|(other_at, other)| other_at != at && spis(other).0.contains(spi))
            })
        });
        // A cycle: start one of its members (an implementation someone waits for), not a
        // dependent outside it; failing that, the first as recorded.
        let in_cycle = || {
            left.iter().position(|item| {
                spis(item).0.iter().any(|spi| left.iter().any(|other| spis(other).1.contains(spi)))
            })
        };
        ordered.push(left.remove(ready.or_else(in_cycle).unwrap_or(0)));
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a table, one instance a line: `name version state [flag...]`, where a flag is
    /// `busy`, `deactivated`, `seat` (the module's active version without being `active`),
    /// `+spi@version` (provides) or `-spi@version` (requires). An `active` instance is its
    /// module's active version.
    fn table(text: &str) -> Table {
        let mut table = Table::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap().to_owned();
            let version = Version::parse(words.next().unwrap()).unwrap();
            let state = match words.next().unwrap() {
                "installing" => State::Installing,
                "starting" => State::Starting,
                "active" => State::Active,
                "inactive" => State::Inactive,
                "draining" => State::Draining,
                "stopping" => State::Stopping,
                "stopped" => State::Stopped,
                "broken" => State::Broken,
                "pinned" => State::Pinned,
                other => panic!("no state {other}"),
            };
            let mut facts =
                Facts { state, busy: false, deactivated: false, provides: Vec::new(), requires: Vec::new() };
            let module = table.entry(name).or_default();
            if state == State::Active {
                module.active = Some(version.clone());
            }
            for flag in words {
                let spi = |s: &str| {
                    let (name, v) = s.split_once('@').unwrap();
                    (name.to_owned(), Version::parse(v).unwrap())
                };
                match flag {
                    "busy" => facts.busy = true,
                    "deactivated" => facts.deactivated = true,
                    "seat" => module.active = Some(version.clone()),
                    provided if provided.starts_with('+') => facts.provides.push(spi(&provided[1..])),
                    required if required.starts_with('-') => facts.requires.push(spi(&required[1..])),
                    other => panic!("no flag {other}"),
                }
            }
            module.versions.insert(version, facts);
        }
        table
    }

    /// The implementations the routing table would hold: each module's serving active version.
    fn routed(table: &Table) -> Vec<Provider> {
        table
            .iter()
            .filter_map(|(name, m)| {
                let (_, f) = m.active().filter(|(_, f)| f.state == State::Active && !f.deactivated)?;
                Some(f.provides.iter().map(|(spi, version)| Provider {
                    name: name.clone(),
                    spi: spi.clone(),
                    version: version.clone(),
                }))
            })
            .flatten()
            .collect()
    }

    fn id(text: &str) -> (String, Version) {
        let (name, version) = text.split_once('@').unwrap();
        (name.to_owned(), Version::parse(version).unwrap())
    }

    fn refusal(error: Error) -> String {
        match error {
            Error::ModuleRequired { spi, dependents, .. } => {
                format!("MODULE_REQUIRED {spi}: {}", dependents.join(", "))
            }
            Error::SpiMissing { spi, version, .. } => format!("SPI_MISSING {spi}@{version}"),
            Error::NotRunning { state, .. } => format!("NOT_RUNNING {state}"),
            Error::NotFound { what } => format!("NOT_FOUND {what}"),
            other => other.code().to_owned(),
        }
    }

    fn or_none(version: Option<Version>) -> String {
        version.map_or("none".to_owned(), |v| v.to_string())
    }

    /// Runs `operation` against `table` and compares what it decided with `expected`.
    /// Operations: `successor a@1.0.0`, `keep-seat a@1.0.0`, `uninstall a@1.0.0` (successor,
    /// then the dependents check), `install a@1.0.0` (the requires check, against the routed
    /// implementations), `add a@1.0.0` / `activate a@1.0.0` (an install without and with
    /// taking the traffic), `switch a@1.0.0`, `weights a 1.0.0=90 1.1.0=10`, `fallback a`,
    /// `order` (the restore's order of every instance in the table).
    fn check(table_text: &str, operation: &str, expected: &str) {
        let table = table(table_text);
        let (verb, argument) = operation.split_once(' ').unwrap_or((operation, ""));
        let found = match verb {
            "successor" | "keep-seat" => {
                let (name, version) = id(argument);
                let hand_over = if verb == "successor" { HandOver::ToSuccessor } else { HandOver::KeepSeat };
                or_none(successor(&table, &name, &version, hand_over))
            }
            "keep-active" => {
                let (name, version) = id(argument);
                match check_keep_active(&table, &name, &version, HandOver::RefuseActive) {
                    Ok(()) => format!(
                        "ok, {} takes over",
                        or_none(successor(&table, &name, &version, HandOver::RefuseActive))
                    ),
                    Err(e) => refusal(e),
                }
            }
            "uninstall" => {
                let (name, version) = id(argument);
                let next = successor(&table, &name, &version, HandOver::ToSuccessor);
                match check_dependents(&table, &name, &version, next.as_ref()) {
                    Ok(()) => format!("ok, {} takes over", or_none(next)),
                    Err(e) => refusal(e),
                }
            }
            "install" => {
                let (name, version) = id(argument);
                let facts = &table[&name].versions[&version];
                let id = ModuleId { name: name.clone(), version: version.clone() };
                match check_requires(&id, facts, &routed(&table)) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => refusal(e),
                }
            }
            "add" | "activate" => {
                let (name, version) = id(argument);
                match activation(&table, &name, &version, verb == "activate") {
                    Activation::Wait => "wait".to_owned(),
                    Activation::Take { from } => format!("take from {}", or_none(from)),
                }
            }
            "switch" => {
                let (name, version) = id(argument);
                match switch_from(&table, &name, &version) {
                    Ok(from) => format!("from {}", or_none(from)),
                    Err(e) => refusal(e),
                }
            }
            "weights" => {
                let mut words = argument.split_whitespace();
                let name = words.next().unwrap();
                let weights = words
                    .map(|w| {
                        let (v, w) = w.split_once('=').unwrap();
                        (Version::parse(v).unwrap(), w.parse().unwrap())
                    })
                    .collect();
                match check_weights(&table, name, &weights) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => refusal(e),
                }
            }
            "fallback" => or_none(restore_fallback(&table[argument])),
            "order" => {
                let items: Vec<(String, Vec<String>, Vec<String>)> = table
                    .iter()
                    .flat_map(|(name, m)| m.versions.values().map(move |f| (name, f)))
                    .map(|(name, f)| {
                        let names =
                            |spis: &[(String, Version)]| spis.iter().map(|(s, _)| s.clone()).collect();
                        (name.clone(), names(&f.provides), names(&f.requires))
                    })
                    .collect();
                let ordered = dependency_order(items, |(_, provides, requires)| (provides, requires));
                ordered.into_iter().map(|(name, _, _)| name).collect::<Vec<_>>().join(" ")
            }
            other => panic!("no operation {other}"),
        };
        assert_eq!(found, expected, "{operation} on\n{table_text}");
    }

    #[test]
    fn successor_is_the_newest_other_inactive_version() {
        check("a 1.0.0 active\na 1.1.0 inactive\na 1.2.0 inactive", "successor a@1.0.0", "1.2.0");
    }

    #[test]
    fn successor_may_be_older() {
        check("a 1.0.0 inactive\na 2.0.0 active", "successor a@2.0.0", "1.0.0");
    }

    #[test]
    fn no_successor_for_a_version_that_is_not_active() {
        check("a 1.0.0 active\na 1.1.0 inactive", "successor a@1.1.0", "none");
    }

    #[test]
    fn no_successor_when_keeping_the_seat() {
        check("a 1.0.0 active\na 1.1.0 inactive", "keep-seat a@1.0.0", "none");
    }

    #[test]
    fn keep_active_refuses_only_the_active_version_while_others_run() {
        check("a 1.0.0 active\na 1.1.0 inactive deactivated", "keep-active a@1.0.0", "VERSION_ACTIVE");
        check("a 1.0.0 active\na 1.1.0 inactive", "keep-active a@1.1.0", "ok, none takes over");
        check("a 1.0.0 active\na 1.1.0 stopped", "keep-active a@1.0.0", "ok, none takes over");
    }

    #[test]
    fn successor_skips_busy_deactivated_and_stopped_versions() {
        check(
            "a 1.0.0 active\na 1.1.0 inactive\na 1.2.0 inactive busy\na 1.3.0 inactive deactivated\na 1.4.0 stopped",
            "successor a@1.0.0",
            "1.1.0",
        );
    }

    #[test]
    fn no_successor_for_an_unknown_module() {
        check("a 1.0.0 active", "successor b@1.0.0", "none");
    }

    #[test]
    fn uninstall_without_dependents_is_allowed() {
        check("a 1.0.0 active +x@1.0.0", "uninstall a@1.0.0", "ok, none takes over");
    }

    #[test]
    fn uninstall_of_the_last_implementation_is_refused_naming_every_dependent() {
        check(
            "a 1.0.0 active +x@1.0.0\nc 1.0.0 active -x@1.0.0\nb 1.0.0 inactive -x@1.0.0\nd 1.0.0 active",
            "uninstall a@1.0.0",
            "MODULE_REQUIRED x: b@1.0.0, c@1.0.0",
        );
    }

    #[test]
    fn uninstall_is_allowed_when_the_successor_implements_the_spi() {
        check(
            "a 1.0.0 active +x@1.0.0\na 1.1.0 inactive +x@1.2.0\nb 1.0.0 active -x@1.0.0",
            "uninstall a@1.0.0",
            "ok, 1.1.0 takes over",
        );
    }

    #[test]
    fn uninstall_is_refused_when_the_successor_implements_another_major() {
        check(
            "a 1.0.0 active +x@1.0.0\na 1.1.0 inactive +x@2.0.0\nb 1.0.0 active -x@1.0.0",
            "uninstall a@1.0.0",
            "MODULE_REQUIRED x: b@1.0.0",
        );
    }

    #[test]
    fn uninstall_is_allowed_when_another_module_implements_the_spi() {
        check(
            "a 1.0.0 active +x@1.0.0\nb 1.0.0 active -x@1.0.0\nc 1.0.0 active +x@1.3.0",
            "uninstall a@1.0.0",
            "ok, none takes over",
        );
    }

    #[test]
    fn a_deactivated_other_implementation_does_not_count() {
        check(
            "a 1.0.0 active +x@1.0.0\nb 1.0.0 active -x@1.0.0\nc 1.0.0 inactive seat deactivated +x@1.0.0",
            "uninstall a@1.0.0",
            "MODULE_REQUIRED x: b@1.0.0",
        );
    }

    #[test]
    fn uninstall_of_an_inactive_implementation_leaves_the_active_one() {
        check(
            "a 1.0.0 active +x@1.0.0\na 0.9.0 inactive +x@1.0.0\nb 1.0.0 active -x@1.0.0",
            "uninstall a@0.9.0",
            "ok, none takes over",
        );
    }

    #[test]
    fn stopped_dependents_do_not_hold_an_implementation() {
        check(
            "a 1.0.0 active +x@1.0.0\nb 1.0.0 stopped -x@1.0.0",
            "uninstall a@1.0.0",
            "ok, none takes over",
        );
    }

    #[test]
    fn a_dependent_of_another_major_does_not_hold_an_implementation() {
        check("a 1.0.0 active +x@1.0.0\nb 1.0.0 active -x@2.0.0", "uninstall a@1.0.0", "ok, none takes over");
    }

    #[test]
    fn the_modules_own_versions_do_not_count_as_dependents() {
        check(
            "a 1.0.0 active +x@1.0.0\na 1.1.0 stopped -x@1.0.0",
            "uninstall a@1.0.0",
            "ok, none takes over",
        );
    }

    #[test]
    fn install_needs_a_routed_implementation() {
        check("a 1.0.0 active +x@1.1.0\nb 1.0.0 installing -x@1.0.0", "install b@1.0.0", "ok");
        check("b 1.0.0 installing -x@1.0.0", "install b@1.0.0", "SPI_MISSING x@1.0.0");
    }

    #[test]
    fn install_refuses_an_implementation_of_another_major() {
        check(
            "a 1.0.0 active +x@2.0.0\nb 1.0.0 installing -x@1.0.0",
            "install b@1.0.0",
            "SPI_MISSING x@1.0.0",
        );
    }

    #[test]
    fn before_1_0_the_minor_must_match_too() {
        check(
            "a 1.0.0 active +x@0.2.0\nb 1.0.0 installing -x@0.1.0",
            "install b@1.0.0",
            "SPI_MISSING x@0.1.0",
        );
        check("a 1.0.0 active +x@0.1.5\nb 1.0.0 installing -x@0.1.0", "install b@1.0.0", "ok");
    }

    #[test]
    fn install_counts_its_own_implementation_but_not_another_version_of_itself() {
        check("b 1.0.0 installing +x@1.0.0 -x@1.0.0", "install b@1.0.0", "ok");
        check(
            "b 0.9.0 active +x@1.0.0\nb 1.0.0 installing -x@1.0.0",
            "install b@1.0.0",
            "SPI_MISSING x@1.0.0",
        );
    }

    #[test]
    fn install_does_not_count_an_inactive_or_deactivated_implementation() {
        check(
            "a 1.0.0 inactive +x@1.0.0\nb 1.0.0 installing -x@1.0.0",
            "install b@1.0.0",
            "SPI_MISSING x@1.0.0",
        );
        check(
            "a 1.0.0 active deactivated +x@1.0.0\nb 1.0.0 installing -x@1.0.0",
            "install b@1.0.0",
            "SPI_MISSING x@1.0.0",
        );
    }

    #[test]
    fn the_first_version_takes_the_traffic() {
        check("a 1.0.0 starting", "add a@1.0.0", "take from none");
    }

    #[test]
    fn a_later_version_waits_unless_activated() {
        check("a 1.0.0 active\na 1.1.0 starting", "add a@1.1.0", "wait");
        check("a 1.0.0 active\na 1.1.0 starting", "activate a@1.1.0", "take from 1.0.0");
    }

    #[test]
    fn an_empty_seat_is_taken_without_a_previous_version() {
        // A deactivated active version gave up the seat; a restart's fresh instance of the same
        // version finds its own seat.
        check("a 1.0.0 inactive\na 1.1.0 starting", "add a@1.1.0", "take from none");
        check("a 1.0.0 starting seat", "add a@1.0.0", "take from none");
    }

    #[test]
    fn switch_moves_the_traffic_from_the_active_version() {
        check("a 1.0.0 active\na 1.1.0 inactive", "switch a@1.1.0", "from 1.0.0");
        check("a 1.0.0 active\na 1.1.0 inactive", "switch a@1.0.0", "from none");
        check("a 1.0.0 inactive\na 1.1.0 inactive", "switch a@1.1.0", "from none");
    }

    #[test]
    fn switch_refuses_a_version_that_is_not_started() {
        check("a 1.0.0 active\na 1.1.0 draining", "switch a@1.1.0", "NOT_RUNNING draining");
        check("a 1.0.0 active", "switch a@2.0.0", "NOT_FOUND a@2.0.0");
        check("a 1.0.0 active", "switch b@1.0.0", "NOT_FOUND module b");
    }

    #[test]
    fn weights_name_started_versions_and_one_above_zero() {
        check("a 1.0.0 active\na 1.1.0 inactive", "weights a 1.0.0=90 1.1.0=10", "ok");
        check("a 1.0.0 active", "weights a", "ok");
        check("a 1.0.0 active\na 1.1.0 inactive", "weights a 1.0.0=0 1.1.0=0", "BAD_REQUEST");
        check("a 1.0.0 active\na 1.1.0 broken", "weights a 1.0.0=90 1.1.0=10", "NOT_RUNNING broken");
        check("a 1.0.0 active", "weights a 1.0.0=90 1.1.0=10", "NOT_FOUND a@1.1.0");
    }

    #[test]
    fn restore_falls_back_to_the_newest_started_version() {
        check("a 1.0.0 inactive\na 1.1.0 inactive\na 1.2.0 broken", "fallback a", "1.1.0");
        check("a 1.0.0 inactive\na 1.1.0 inactive deactivated", "fallback a", "1.0.0");
        check("a 1.0.0 stopped", "fallback a", "none");
    }

    #[test]
    fn restore_starts_implementations_first() {
        check("a 1.0.0 inactive -x@1.0.0\nb 1.0.0 inactive +x@1.0.0", "order", "b a");
        check(
            "a 1.0.0 inactive -x@1.0.0 -y@1.0.0\nb 1.0.0 inactive -y@1.0.0 +x@1.0.0\nc 1.0.0 inactive +y@1.0.0",
            "order",
            "c b a",
        );
    }

    #[test]
    fn restore_order_is_stable_and_ignores_unimplemented_spis() {
        check("a 1.0.0 inactive\nb 1.0.0 inactive -z@1.0.0\nc 1.0.0 inactive", "order", "a b c");
    }

    #[test]
    fn a_cycle_starts_at_an_implementation_someone_waits_for() {
        // Nothing is ready: the cycle of `b` and `c` is broken at `b`, the first implementation
        // someone waits for, which frees `a`, then `c`.
        check(
            "a 1.0.0 inactive -x@1.0.0\nb 1.0.0 inactive +x@1.0.0 -y@1.0.0\nc 1.0.0 inactive +y@1.0.0 -x@1.0.0",
            "order",
            "b a c",
        );
    }

    #[test]
    fn a_module_implementing_what_it_requires_is_ready() {
        check("a 1.0.0 inactive -x@1.0.0\nb 1.0.0 inactive +x@1.0.0 -x@1.0.0", "order", "b a");
    }
}

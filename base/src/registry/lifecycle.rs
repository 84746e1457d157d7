//! The operations that change which modules run and which version gets traffic: install,
//! uninstall, switch, weights, replace, restart, deactivate, and stopping everything at
//! shutdown. This is the face the operations API, the hot-reload watcher and a fleet agent
//! drive; see [`crate::registry`] for the short list.
//!
//! Each operation is straight-line code: take the instance's operation slot, take a snapshot
//! of the module table under the registry's lock, ask `policy.rs` what to do, apply the answer,
//! publish the routing table, record the state. The decisions themselves live in `policy.rs`
//! as pure functions, so they are tested without loading anything.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    thread,
    time::Duration,
};

use semver::Version;

use super::{
    InstallOptions, Installed, Previous, Registry, Strategy,
    durable::Load,
    policy::{self, Activation, HandOver},
};
use crate::{
    elf,
    error::{Error, Result},
    instance::{Instance, State},
    loader,
    routing::RoutingTable,
    sync::lock,
};

/// Whether an uninstall refuses to remove the last implementation of an SPI that other running
/// modules require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dependents {
    /// Refuse (`MODULE_REQUIRED`): the operations API's default.
    #[default]
    Protect,
    /// Remove it anyway (`?force=true`); the dependents' calls then fail with `NOT_IMPLEMENTED`.
    Abandon,
}

/// What a registration does with a live instance of the same identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SameIdentity {
    /// Refuse the new one (`ALREADY_INSTALLED`).
    Refuse,
    /// Drain and unload the running one first (a same-version replace).
    Replace,
}

/// Whether a registration checks that the SPIs the new instance requires are running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requires {
    Check,
    /// An install with `force`, and the restore (which starts implementations first anyway).
    Trust,
}

/// Refuses, from the file's bytes alone, what is not a module of this base's interface major
/// (`NOT_A_MODULE`, `INTERFACE_MISMATCH`), before any of its code could run.
fn check_module(file: &(impl elf::Source + ?Sized)) -> Result<()> {
    let stamp = elf::check_module(file).map_err(|reason| Error::NotAModule { reason })?;
    let base = loader::base_interface();
    if u64::from(stamp.major) != base.major {
        return Err(Error::InterfaceMismatch { module: stamp.to_string(), base: base.to_string() });
    }
    Ok(())
}

impl Registry {
    /// Installs a module from its `.so` bytes and starts it, with the default options. Blocking:
    /// call it off the async runtime. See [`Registry::install_with`].
    pub fn install(&self, bytes: &[u8], name: Option<&str>) -> Result<Arc<Instance>> {
        let options = InstallOptions { name: name.map(str::to_owned), ..InstallOptions::default() };
        Ok(self.install_with(bytes, &options)?.instance)
    }

    /// Installs a module from its `.so` bytes and starts it. Blocking: call it off the async
    /// runtime. The first version of a module becomes active; later ones install inactive unless
    /// `activate` (or the `replace` strategy) says otherwise.
    ///
    /// `name` installs the module under another name than its package's (mounted at `/<name>/`,
    /// logged and accounted as `<name>`): the same artifact can serve many tenants, each its own
    /// instance.
    pub fn install_with(&self, bytes: &[u8], options: &InstallOptions) -> Result<Installed> {
        if bytes.is_empty() {
            return Err(Error::EmptyUpload);
        }
        self.check_install(options)?;
        if bytes.len() as u64 > self.config.max_upload_bytes {
            return Err(Error::PayloadTooLarge {
                size: bytes.len() as u64,
                limit: self.config.max_upload_bytes,
            });
        }
        let digest = crate::signing::sha256(bytes);
        let verified = crate::signing::check(
            "the artifact",
            &digest,
            options.sha256.as_ref(),
            self.trusted_keys.as_ref(),
            options.signature.as_deref(),
        )?;
        // Decided from the bytes alone: nothing is stored, and no code of the library runs.
        check_module(bytes)?;
        let sha256 = hex::encode(digest);
        if !options.retry_quarantined {
            self.refuse_quarantined(&sha256, options.name.as_deref())?;
        }
        let in_use = self.artifacts_in_use.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        *lock(&self.installing).entry(sha256.clone()).or_default() += 1;
        let launched = self.store.put(bytes, digest).and_then(|mut artifact| {
            if let Some(line) = &verified.signature {
                self.store.put_signature(&artifact.sha256, line)?;
            }
            artifact.signed_by = verified.signed_by.map(|id| id.to_string());
            self.launch_artifact(artifact, options, Load::Install)
        });
        drop(in_use);
        {
            let mut installing = lock(&self.installing);
            if let Some(count) = installing.get_mut(&sha256) {
                *count -= 1;
                if *count == 0 {
                    installing.remove(&sha256);
                }
            }
        }
        if launched.is_err() {
            // A refused artifact is deleted now, unless something still needs it (a live
            // instance, a record, a quarantine entry, another upload of the same bytes): it
            // never ran, so no rollback wants it. Not left to the garbage collector, which
            // waits while any install runs: a stream of refused uploads would fill the disk.
            self.remove_refused(&sha256);
        }
        launched
    }

    /// What every install from the API checks before it stores or loads anything: the name it
    /// asks for (`?name=`: it names files and a mount point), its owner, and that the dynamic
    /// loader is not wedged.
    pub(super) fn check_install(&self, options: &InstallOptions) -> Result<()> {
        let name = options.name.as_deref();
        if let Some(name) = name.filter(|n| !crate::ids::is_valid_name(n)) {
            return Err(Error::BadRequest {
                message: format!("{name:?} is not a module name (letters, digits, '-' and '_', at most 64)"),
            });
        }
        if let Some(name) = name {
            self.check_owner(name, !options.refuse_owned)?;
        }
        if let Some(wedged) = loader::wedged() {
            return Err(Error::LoadFailed {
                path: wedged,
                message: "the initialisation of this library never returned and still holds the \
                          dynamic loader's lock, so no module can be loaded; restart the base"
                    .into(),
            });
        }
        Ok(())
    }

    /// Loads, starts and routes a stored artifact, records it in `state.json` and lifts a
    /// quarantine of it. For [`Load::Restore`] it only loads and starts it, leaving it
    /// `inactive`: the restore routes and records everything at its end.
    pub(crate) fn launch_artifact(
        &self,
        artifact: crate::artifact::Artifact,
        options: &InstallOptions,
        load: Load,
    ) -> Result<Installed> {
        let name = options.name.as_deref();
        if let Some(existing) = self.live_instance_of(&artifact.sha256, name) {
            return Err(Error::AlreadyInstalled { id: existing.id.clone() });
        }
        // Every load passes here (uploads, boot modules, the watched directory, restores,
        // retries): the stored file is checked again, piecewise, right before `dlopen` runs its
        // constructors.
        let stored = elf::FileSource::open(&artifact.path)
            .map_err(Error::io(format!("reading {}", artifact.path.display())))?;
        check_module(&stored)?;
        let load_path = self.claim_load_path(&artifact)?;
        let replace = options.strategy == Strategy::Replace;
        let same_identity = if replace { SameIdentity::Replace } else { SameIdentity::Refuse };
        // A restore loads everything first and routes at the end: no check then.
        let requires =
            if load == Load::Install && !options.force { Requires::Check } else { Requires::Trust };
        let mut loading = self.loading(&artifact.sha256, name, load);
        // A replace of the same version unloads the running one before the new one starts.
        let mut replaced_same = None;
        // Held from the old build's drain until the new one is routed (or put back): requests
        // wait for the seat meanwhile.
        let mut seat = None;
        // Load (nothing of the module starts), reserve the identity it turned out to have, then
        // start it, or abandon it when the identity is refused.
        let launched =
            Instance::load(artifact, load_path.clone(), name, &self.config.runtime(), &self.metrics)
                .and_then(|loaded| {
                    let instance = loaded.instance();
                    loading.identify(instance);
                    // The package's name is known only now: an owned module is refused before
                    // anything of it starts.
                    if let Err(e) = self.check_owner(&instance.id.name, !options.refuse_owned) {
                        loaded.abandon();
                        return Err(e);
                    }
                    let log = self.log(&instance.id.name);
                    match self.reserve(instance, same_identity, requires) {
                        Ok(Some((replaced, hold))) => {
                            replaced_same = Some(replaced);
                            seat = Some(hold);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            loaded.abandon();
                            return Err(e);
                        }
                    }
                    loaded.start(log)
                });
        drop(loading);
        let instance = match launched {
            Ok(instance) => instance,
            Err(e) => {
                // No instance to ask (it failed before or during start): look at the mappings.
                if !loader::is_mapped(&load_path) {
                    self.release_load_path(&load_path);
                }
                if let Some(replaced) = &replaced_same
                    && let Some(was_active) = self.release_record(&replaced.id)
                {
                    return Err(self.roll_back_replace(replaced, was_active, options, e));
                }
                return Err(e);
            }
        };
        // It started: lift a quarantine of it now, before the first write that records it (a
        // replace writes once more when it unloads the old version), so no file can name the
        // instance and still quarantine it.
        self.lift_quarantine(&instance.artifact.sha256, &instance.id.name, name);
        self.mark_started(&instance.artifact.sha256);
        self.metrics.count_install();
        if load == Load::Restore {
            // Restoring: `restore` sets the recorded active versions and weights in one step.
            instance.transition(State::Inactive, "restore", "started; restoring the recorded routing");
            instance.end_operation();
            return Ok(Installed { instance, replaced: None });
        }
        let previous = {
            let mut modules = lock(&self.modules);
            let take_traffic = options.activate || replace;
            let (name, version) = (&instance.id.name, &instance.id.version);
            let activation = policy::activation(&policy::snapshot(&modules), name, version, take_traffic);
            let versions = modules.entry(name.clone()).or_default();
            let previous = match activation {
                Activation::Wait => {
                    instance.transition(State::Inactive, "install", "started; another version is active");
                    None
                }
                Activation::Take { from } => {
                    // A same-version replace routed its new build: the one it replaced is what a
                    // rollback returns to (recorded only now, once the replace succeeded).
                    if let Some(replaced) = replaced_same.as_ref().filter(|_| from.is_none()) {
                        versions.previous = Some(Previous::of(replaced));
                    }
                    let current = from.and_then(|v| versions.instances.get(&v)).cloned();
                    if let Some(current) = &current {
                        versions.previous = Some(Previous::of(current));
                        current.transition(
                            State::Inactive,
                            "switch",
                            &format!("{} took the traffic", instance.id),
                        );
                        // Moving the traffic clears a split; taking an empty seat (a restart, a
                        // same-version replace) keeps it.
                        versions.weights = None;
                    }
                    versions.active = Some(version.clone());
                    instance.transition(State::Active, "install", "started and receiving traffic");
                    current
                }
            };
            self.publish(&modules);
            previous
        };
        drop(seat);
        // The new build is routed: from now on `state.json` records it instead of the one it
        // replaced (the next write below).
        if replaced_same.is_some() {
            self.release_record(&instance.id);
        }
        // Only now, with the instance routed, may another operation (an uninstall) take it.
        instance.end_operation();
        let replaced = match previous.filter(|_| replace && replaced_same.is_none()) {
            Some(previous) => match self.uninstall(&previous.id.name, &previous.id.version) {
                Ok(replaced) => Some(replaced),
                // Someone else is already unloading (or forgot) it: the replace is still done.
                Err(Error::OperationInProgress { .. } | Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => replaced_same,
        };
        self.persist_or_warn();
        Ok(Installed { instance, replaced })
    }

    /// A same-version replace unloaded `replaced` and its successor failed to start (`failure`):
    /// starts the replaced build again from its artifact, so the failed replace changes nothing,
    /// and returns the failure saying so. If even that fails, the removal is recorded (that is
    /// the state now) and the failure says the version is gone.
    fn roll_back_replace(
        &self,
        replaced: &Arc<Instance>,
        was_active: bool,
        options: &InstallOptions,
        failure: Error,
    ) -> Error {
        let restart =
            InstallOptions { name: options.name.clone(), activate: was_active, ..InstallOptions::default() };
        let outcome = self
            .stored_artifact(&replaced.artifact.sha256)
            .and_then(|artifact| self.launch_artifact(artifact, &restart, Load::Install));
        let note = match outcome {
            Ok(_) => {
                tracing::warn!(module = %replaced.id, "the replacing build failed to start; the replaced build runs again");
                "; the build it was to replace was started again".to_owned()
            }
            Err(e) => {
                tracing::error!(module = %replaced.id, "the replacing build failed to start, and so did the replaced build: {e}");
                self.persist_or_warn();
                format!(
                    "; starting the replaced build again failed too ({e}), so {} is not running",
                    replaced.id
                )
            }
        };
        match failure {
            Error::StartFailed { id, message } => Error::StartFailed { id, message: message + &note },
            other => {
                tracing::warn!("{other}{note}");
                other
            }
        }
    }

    /// Makes `name@version` (started, inactive) the active version: one routing-table swap.
    /// Requests already inside the previous version finish there. Clears traffic weights.
    pub fn switch(&self, name: &str, version: &Version) -> Result<(Arc<Instance>, Option<Arc<Instance>>)> {
        let target = self.find(name, version)?;
        if !target.try_begin_operation() {
            return Err(Error::OperationInProgress { id: target.id.clone() });
        }
        let switched = (|| {
            let mut modules = lock(&self.modules);
            let state = target.state();
            if !matches!(state, State::Active | State::Inactive) {
                return Err(Error::NotRunning { id: target.id.clone(), state });
            }
            // A started target is live, so it is the instance the table holds at `version`.
            let from = policy::switch_from(&policy::snapshot(&modules), name, version)?;
            let versions =
                modules.get_mut(name).ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
            let previous = from.and_then(|v| versions.instances.get(&v)).cloned();
            if let Some(previous) = &previous {
                previous.transition(State::Inactive, "switch", &format!("switched to {}", target.id));
                versions.previous = Some(Previous::of(previous));
            }
            target.set_deactivated(false);
            versions.active = Some(version.clone());
            versions.weights = None;
            if state != State::Active {
                target.transition(State::Active, "switch", "switched to; receiving the traffic");
            }
            self.publish(&modules);
            Ok(previous)
        })();
        target.end_operation();
        let previous = switched?;
        self.persist_or_warn();
        Ok((target, previous))
    }

    /// Splits module `name`'s traffic across running versions by weight (`{"1.0.0": 90,
    /// "1.1.0": 10}`); an empty map goes back to the active version alone. Requests pinned with
    /// `x-pedestal-version` are not affected.
    pub fn set_weights(&self, name: &str, weights: BTreeMap<Version, u32>) -> Result<()> {
        let mut modules = lock(&self.modules);
        policy::check_weights(&policy::snapshot(&modules), name, &weights)?;
        let versions =
            modules.get_mut(name).ok_or_else(|| Error::NotFound { what: format!("module {name}") })?;
        versions.weights = (!weights.is_empty()).then_some(weights);
        self.publish(&modules);
        drop(modules);
        self.persist_or_warn();
        Ok(())
    }

    /// Stops and unloads `name@version`. A live instance is drained, stopped and unloaded; an
    /// instance that already ended (stopped, broken) is forgotten. If it was the active version,
    /// the newest other running version takes the traffic.
    pub fn uninstall(&self, name: &str, version: &Version) -> Result<Arc<Instance>> {
        self.take_down(name, version, HandOver::ToSuccessor, Dependents::Abandon)
    }

    /// [`Registry::uninstall`], refused (`MODULE_REQUIRED`) with [`Dependents::Protect`] when
    /// the instance is the last implementation of an SPI other running modules require.
    pub fn uninstall_checked(
        &self,
        name: &str,
        version: &Version,
        dependents: Dependents,
    ) -> Result<Arc<Instance>> {
        self.take_down(name, version, HandOver::ToSuccessor, dependents)
    }

    /// [`Registry::uninstall_checked`], refused (`VERSION_ACTIVE`) when `name@version` has the
    /// traffic while other versions run, rather than handing it over: checked under the
    /// registry's lock, so a concurrent switch cannot slip between the check and the uninstall.
    pub fn uninstall_unless_active(
        &self,
        name: &str,
        version: &Version,
        dependents: Dependents,
    ) -> Result<Arc<Instance>> {
        self.take_down(name, version, HandOver::RefuseActive, dependents)
    }

    /// Drains, stops and unloads `name@version` (or forgets it when it already ended).
    /// `hand_over` says whether another version takes the traffic of an active one. With
    /// [`Dependents::Protect`], refuses (`MODULE_REQUIRED`) to remove the last implementation of
    /// an SPI another running module requires; checked under the registry's lock, with the
    /// version that would take over, so two concurrent uninstalls cannot both pass.
    fn take_down(
        &self,
        name: &str,
        version: &Version,
        hand_over: HandOver,
        dependents: Dependents,
    ) -> Result<Arc<Instance>> {
        let instance = self.find(name, version)?;
        if !instance.state().is_live() {
            // Already ended (broken, or pinned by its threads): out of the listing now.
            self.retire(&instance);
            return Ok(instance);
        }
        if !instance.try_begin_operation() {
            return Err(Error::OperationInProgress { id: instance.id.clone() });
        }
        if !instance.state().is_live() {
            // A concurrent uninstall finished between the check above and taking the lock.
            instance.end_operation();
            return Ok(instance);
        }
        {
            let mut modules = lock(&self.modules);
            let table = policy::snapshot(&modules);
            if let Err(e) = policy::check_keep_active(&table, name, version, hand_over) {
                instance.end_operation();
                return Err(e);
            }
            let successor = policy::successor(&table, name, version, hand_over);
            if dependents == Dependents::Protect
                && let Err(e) = policy::check_dependents(&table, name, version, successor.as_ref())
            {
                instance.end_operation();
                return Err(e);
            }
            let successor = successor.and_then(|v| {
                let next = modules.get(name)?.instances.get(&v)?;
                Some((v, Arc::clone(next)))
            });
            // Without a hand-over (a same-version replace) the new build takes this version's
            // seat, its share of a split included.
            if hand_over != HandOver::KeepSeat
                && let Some(weights) = modules.get_mut(name).and_then(|v| v.weights.as_mut())
            {
                weights.remove(version);
            }
            if let Some(versions) = modules.get_mut(name)
                && versions.active.as_ref() == Some(version)
            {
                versions.active = successor.as_ref().map(|(v, _)| v.clone());
                if successor.is_some() {
                    versions.previous = Some(Previous::of(&instance));
                }
                if let Some((_, next)) = successor {
                    next.transition(State::Active, "uninstall", &format!("took over from {}", instance.id));
                }
            }
            // Out of the routing table (including pinned versions) from this swap on.
            instance.transition(State::Draining, "uninstall", "no new requests; waiting for in-flight ones");
            self.publish(&modules);
        }
        instance.stop(&self.config.runtime(), "uninstall");
        self.services().instance_stopped(&instance);
        if instance.state() == State::Stopped {
            self.metrics.count_unload();
        }
        if !instance.is_mapped() {
            self.release_load_path(&instance.load_path);
        }
        // Uninstalled and unloaded: out of the listing (a pinned one stays there, standing out,
        // until its threads end; a same-version replace puts the new build in its place).
        if hand_over != HandOver::KeepSeat && instance.state() == State::Stopped {
            self.retire(&instance);
        }
        self.persist_or_warn();
        self.collect_garbage();
        Ok(instance)
    }

    /// Stops every live instance (in parallel), for shutdown: each drains for the full
    /// `drain_timeout`.
    pub fn stop_all(&self) {
        self.stop_all_draining(self.config.drain_timeout);
    }

    /// [`Registry::stop_all`] before a worker restart (a memory limit escalated): each instance
    /// drains for the short `restart_drain_timeout` only, since every request still in flight
    /// delays the fresh worker that will serve the traffic queued meanwhile.
    pub(crate) fn stop_all_for_worker_restart(&self) {
        self.stop_all_draining(self.config.restart_drain_timeout);
    }

    fn stop_all_draining(&self, drain: Duration) {
        // What is recorded is what the next start restores: shutdown stops are not changes.
        self.shutting_down.store(true, Ordering::SeqCst);
        self.routes.store(Arc::new(RoutingTable::new()));
        let live: Vec<_> = self.all().into_iter().map(|(i, _)| i).filter(|i| i.state().is_live()).collect();
        thread::scope(|scope| {
            for instance in &live {
                scope.spawn(move || {
                    if instance.try_begin_operation() {
                        if instance.state().is_live() {
                            instance.stop_draining(&self.config.runtime(), drain, "shutdown");
                        } else {
                            instance.end_operation();
                        }
                    }
                });
            }
        });
    }

    /// Registers a freshly loaded instance under its identity, unless a live one holds it (with
    /// [`SameIdentity::Replace`], a live one of the same identity is drained and unloaded
    /// first, and returned).
    fn reserve(
        &self,
        instance: &Arc<Instance>,
        same_identity: SameIdentity,
        requires: Requires,
    ) -> Result<Option<(Arc<Instance>, super::seats::SeatHold<'_>)>> {
        self.check_spis(instance)?;
        if requires == Requires::Check {
            self.check_requires(instance)?;
        }
        let mut replaced = None;
        if same_identity == SameIdentity::Replace {
            let same =
                self.find(&instance.id.name, &instance.id.version).ok().filter(|i| i.state().is_live());
            if let Some(same) = same {
                // The new instance takes this version's seat: no other version takes the traffic
                // in between (requests meanwhile wait for the seat). `state.json` keeps the old
                // build until the new one is routed (or failed).
                self.hold_record(&same);
                let seat = self.hold_seat(&same.id.name, &same.id.version);
                match self.take_down(&same.id.name, &same.id.version, HandOver::KeepSeat, Dependents::Abandon)
                {
                    Ok(same) => replaced = Some((same, seat)),
                    Err(e) => {
                        self.release_record(&same.id);
                        return Err(e);
                    }
                }
            }
        }
        let mut modules = lock(&self.modules);
        let versions = modules.entry(instance.id.name.clone()).or_default();
        if let Some(existing) = versions.instances.get(&instance.id.version) {
            if existing.state().is_live() {
                return Err(Error::AlreadyInstalled { id: instance.id.clone() });
            }
            instance.inherit_history(existing.history());
        }
        versions.instances.insert(instance.id.version.clone(), Arc::clone(instance));
        drop(modules);
        instance.set_limits(self.resolve_limits(instance));
        // Before the start hook runs: the module may call, and reads its configuration.
        instance.attach(self.me.clone());
        self.services().instance_started(instance);
        Ok(replaced)
    }

    /// A live instance of the artifact `sha256` under the name an install would give it (the
    /// package name unless `name` says otherwise), found without loading anything.
    fn live_instance_of(&self, sha256: &str, name: Option<&str>) -> Option<Arc<Instance>> {
        self.all().into_iter().map(|(i, _)| i).find(|i| {
            i.artifact.sha256 == sha256 && i.id.name == name.unwrap_or(&i.package) && i.state().is_live()
        })
    }

    fn claim_load_path(&self, artifact: &crate::artifact::Artifact) -> Result<PathBuf> {
        let mut loaded = lock(&self.loaded_paths);
        if loaded.insert(artifact.path.clone()) {
            return Ok(artifact.path.clone());
        }
        let copy = self.store.private_copy(artifact)?;
        loaded.insert(copy.clone());
        Ok(copy)
    }

    /// Frees a load path for reuse (call only once its library is known to be unmapped), and
    /// deletes it when it was a private copy.
    pub(super) fn release_load_path(&self, path: &Path) {
        lock(&self.loaded_paths).remove(path);
        self.store.remove_private_copy(path);
    }

    /// Takes an instance out of traffic (it stays loaded, `inactive`). Requests to its module
    /// get `503 MODULE_UNAVAILABLE` until a version is active again.
    pub fn deactivate(&self, instance: &Arc<Instance>, reason: &str, message: &str) {
        if !instance.try_begin_operation() {
            // Busy with another operation: take the action on the next sample instead.
            instance.rearm_memory_limit();
            return;
        }
        let mut modules = lock(&self.modules);
        let newly = !instance.is_deactivated();
        instance.set_deactivated(true);
        if instance.state() == State::Active {
            if let Some(versions) = modules.get_mut(&instance.id.name)
                && versions.active.as_ref() == Some(&instance.id.version)
            {
                versions.active = None;
            }
            instance.transition(State::Inactive, reason, message);
        } else if instance.state() == State::Inactive && newly {
            // Already without the module's traffic, but now unreachable by version or weight too:
            // the history says so.
            instance.transition(State::Inactive, reason, message);
        }
        self.publish(&modules);
        drop(modules);
        instance.end_operation();
        self.persist_or_warn();
    }

    /// Stops an instance and starts a fresh one from the same artifact under the same identity;
    /// it takes the traffic back if the old one had it. Blocking.
    pub fn restart(&self, instance: &Arc<Instance>, reason: &str, message: &str) -> Result<Arc<Instance>> {
        if !instance.try_begin_operation() {
            instance.rearm_memory_limit();
            return Err(Error::OperationInProgress { id: instance.id.clone() });
        }
        if !instance.state().is_live() {
            instance.end_operation();
            return Err(Error::NotRunning { id: instance.id.clone(), state: State::Stopped });
        }
        {
            // Keep `active` pointing at this version: the fresh instance takes it over. Out of
            // the routing table from this swap on.
            let modules = lock(&self.modules);
            instance.transition(State::Draining, reason, message);
            self.publish(&modules);
        }
        // A brief drain: the instance is misbehaving (it may still be allocating past its
        // limit), and every moment spent waiting is a moment of 503s for the module.
        lock(&self.restarting).insert(instance.id.name.clone(), reason.to_owned());
        instance.stop_draining(&self.config.runtime(), self.config.restart_drain_timeout, reason);
        self.services().instance_stopped(instance);
        if instance.state() == State::Stopped {
            self.metrics.count_unload();
        }
        if !instance.is_mapped() {
            self.release_load_path(&instance.load_path);
        }
        // From the store, with the signature kept beside it (under `--trusted-keys` an install of
        // the bare bytes would be refused as unsigned), checked again like every load.
        let fresh = self.stored_artifact(&instance.artifact.sha256).and_then(|artifact| {
            let name = (instance.id.name != instance.package).then(|| instance.id.name.clone());
            let options = InstallOptions { name, ..InstallOptions::default() };
            let _in_use = self.artifacts_in_use.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.launch_artifact(artifact, &options, Load::Install).map(|installed| installed.instance)
        });
        lock(&self.restarting).remove(&instance.id.name);
        fresh
    }

    /// Refuses to install `instance` while an SPI it requires has no compatible implementation
    /// running (`SPI_MISSING`). An SPI the instance implements itself counts as present.
    fn check_requires(&self, instance: &Instance) -> Result<()> {
        let providers: Vec<policy::Provider> = instance
            .requires
            .iter()
            .flat_map(|(spi, _)| {
                self.implementors_for_calls(spi).into_iter().filter_map(move |i| {
                    let version = i.provided_version(spi)?.clone();
                    Some(policy::Provider { name: i.id.name.clone(), spi: spi.clone(), version })
                })
            })
            .collect();
        let facts = policy::Facts::of(instance);
        policy::check_requires(&instance.id, &facts, &providers)
    }
}

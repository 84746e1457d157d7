//! The hand-over of the listening sockets from the supervisor to its worker: the supervisor
//! clears close-on-exec on the two sockets it bound, so the worker inherits them at the same
//! descriptor numbers, and names those numbers in `PEDESTAL_LISTEN_FDS`. No code runs between
//! `fork` and `exec` (no `pre_exec`): inheriting a descriptor is what `exec` does by default.
//! The worker then removes the hand-over variables from its environment
//! ([`forget_environment`]).

use std::{
    net::TcpListener,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use rustix::io::{FdFlags, fcntl_setfd};

/// The environment variable naming the inherited descriptors: `TRAFFIC,OPERATIONS`.
pub(crate) const LISTEN_FDS: &str = "PEDESTAL_LISTEN_FDS";

/// Set once the inherited descriptors were taken: a second take would own them twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Makes `listener` survive `exec` (the supervisor's two sockets are the only descriptors it
/// leaves open to its worker); returns its number for [`LISTEN_FDS`].
pub(crate) fn share(listener: &TcpListener) -> std::io::Result<RawFd> {
    use std::os::fd::AsRawFd;
    fcntl_setfd(listener, FdFlags::empty())?;
    Ok(listener.as_raw_fd())
}

/// The traffic and operations listeners the supervisor handed over, if this process is its
/// worker; each once. They are close-on-exec again, so processes the worker (or a module) starts
/// do not hold the base's ports.
pub(crate) fn take() -> anyhow::Result<Option<(TcpListener, TcpListener)>> {
    // As read at the worker's start: the variable itself is gone by now.
    let Some(value) = super::handover().listen_fds.clone() else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        anyhow::bail!("the inherited listeners ({LISTEN_FDS}) were already taken by this process");
    }
    let numbers: Vec<RawFd> = value
        .split(',')
        .map(|n| n.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("{LISTEN_FDS}={value:?} is not two descriptor numbers"))?;
    let [traffic, admin] = numbers[..] else {
        anyhow::bail!("{LISTEN_FDS}={value:?} must name two descriptors: traffic,operations");
    };
    if traffic < 3 || admin < 3 || traffic == admin {
        anyhow::bail!("{LISTEN_FDS}={value:?} names standard streams or one descriptor twice");
    }
    Ok(Some((adopt(traffic, "traffic")?, adopt(admin, "operations")?)))
}

fn adopt(fd: RawFd, what: &str) -> anyhow::Result<TcpListener> {
    // SAFETY: the supervisor set `PEDESTAL_LISTEN_FDS` for this very `exec` and left exactly
    // these descriptors open; nothing else in this process knows their numbers, and `TAKEN`
    // guarantees they are adopted once, so this `OwnedFd` is their only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl_setfd(&owned, FdFlags::CLOEXEC)
        .map_err(|e| anyhow::anyhow!("the inherited {what} descriptor {fd} is not open: {e}"))?;
    let listener = TcpListener::from(owned);
    // A descriptor that is not a bound socket fails here rather than at the first accept.
    listener.local_addr().map_err(|e| {
        anyhow::anyhow!("the inherited {what} descriptor {fd} is not a listening socket: {e}")
    })?;
    Ok(listener)
}

/// Removes `names` from this process's environment, so that neither its modules nor the
/// processes they start find them, if this process is still single-threaded (as it is at the
/// top of `main`, where [`supervise`](super::supervise) runs); otherwise leaves them, with a
/// warning naming `what` they are.
pub(crate) fn forget_environment<S: AsRef<str>>(names: &[S], what: &str) {
    let present: Vec<&str> =
        names.iter().map(AsRef::as_ref).filter(|name| std::env::var_os(name).is_some()).collect();
    if present.is_empty() {
        return;
    }
    // Every entry of `/proc/self/task` is one thread of this process.
    let threads = std::fs::read_dir("/proc/self/task").map(Iterator::count);
    if !matches!(threads, Ok(1)) {
        tracing::warn!(
            ?threads,
            variables = ?present,
            "the process is not single-threaded (`pedestal_base::supervise` should run first in \
             `main`): {what} stay in its environment, where every module can read them"
        );
        return;
    }
    let names = present;
    for name in names {
        // SAFETY: this process has one thread (checked just above, and no thread can start
        // in between: only this thread could start one), so no other thread reads or writes
        // the environment while it changes.
        unsafe { std::env::remove_var(name) };
    }
}

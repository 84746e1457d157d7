//! The base's system glue that needs `unsafe`: which shared object an address belongs to
//! (`dladdr`), adopting the listening sockets a supervisor handed over as inherited descriptors,
//! and unsetting environment variables while the process is single-threaded. Each function
//! carries the check that makes its `unsafe` sound, so its callers need none.

use std::{
    net::TcpListener,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use rustix::io::{FdFlags, fcntl_setfd};

/// The load address of the shared object containing `address`, if any.
pub fn object_base(address: usize) -> Option<usize> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::uninit();
    // SAFETY: `dladdr` only inspects the address and writes `info` on success.
    let found = unsafe { libc::dladdr(address as *const libc::c_void, info.as_mut_ptr()) };
    if found == 0 {
        return None;
    }
    // SAFETY: `dladdr` returned non-zero, so it initialised `info`.
    Some(unsafe { info.assume_init() }.dli_fbase as usize)
}

/// The environment variable a supervisor names the descriptors it handed over in:
/// `TRAFFIC,OPERATIONS`.
pub const LISTEN_FDS: &str = "PEDESTAL_LISTEN_FDS";

/// [`LISTEN_FDS`] as this process was started with it, read once: the value stays known after
/// [`forget_environment`] removed the variable (which reads it first).
pub fn inherited_listen_fds() -> Option<&'static str> {
    static VALUE: OnceLock<Option<String>> = OnceLock::new();
    VALUE.get_or_init(|| std::env::var(LISTEN_FDS).ok()).as_deref()
}

/// Set once the inherited descriptors were taken: a second take would own them twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Adopts the traffic and operations listeners this process inherited, as named by
/// [`LISTEN_FDS`] in its environment at start (`None` when it names none), once per process.
/// They are close-on-exec again, so processes the worker (or a module) starts do not hold the
/// base's ports. The numbers come only from the environment the process was started with, never
/// from a caller: that is what lets this be a safe function.
pub fn adopt_listeners() -> anyhow::Result<Option<(TcpListener, TcpListener)>> {
    let Some(value) = inherited_listen_fds() else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        anyhow::bail!("the inherited listeners (PEDESTAL_LISTEN_FDS) were already taken by this process");
    }
    let numbers: Vec<RawFd> = value
        .split(',')
        .map(|n| n.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("PEDESTAL_LISTEN_FDS={value:?} is not two descriptor numbers"))?;
    let [traffic, admin] = numbers[..] else {
        anyhow::bail!("PEDESTAL_LISTEN_FDS={value:?} must name two descriptors: traffic,operations");
    };
    if traffic < 3 || admin < 3 || traffic == admin {
        anyhow::bail!("PEDESTAL_LISTEN_FDS={value:?} names standard streams or one descriptor twice");
    }
    Ok(Some((adopt(traffic, "traffic")?, adopt(admin, "operations")?)))
}

fn adopt(fd: RawFd, what: &str) -> anyhow::Result<TcpListener> {
    // SAFETY: `fd` comes from `PEDESTAL_LISTEN_FDS` in the environment this process was
    // started with (never from a caller): whoever `exec`ed it (the supervisor) set it for this
    // very `exec` and left exactly these descriptors open for it to own, as systemd's
    // `LISTEN_FDS` does; nothing else in this process knows their numbers, and `TAKEN`
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
/// top of `main`, where `pedestal_base::supervise` runs); otherwise leaves them, with a
/// warning naming `what` they are.
pub fn forget_environment<S: AsRef<str>>(names: &[S], what: &str) {
    // Read before it can be removed: the inherited descriptors stay adoptable.
    let _ = inherited_listen_fds();
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

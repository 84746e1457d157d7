//! The hand-over of the listening sockets from the supervisor to its worker: the supervisor
//! clears close-on-exec on the two sockets it bound, so the worker inherits them at the same
//! descriptor numbers, and names those numbers in `PEDESTAL_LISTEN_FDS`. No code runs between
//! `fork` and `exec` (no `pre_exec`): inheriting a descriptor is what `exec` does by default.
//! The worker then removes the hand-over variables from its environment
//! ([`forget_environment`]). The two `unsafe` steps (adopting the descriptors, unsetting the
//! variables) are `crate::sys`'s, with the checks that make them sound.

use std::{net::TcpListener, os::fd::RawFd};

use rustix::io::{FdFlags, fcntl_setfd};

pub(crate) use crate::sys::LISTEN_FDS;

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
    crate::sys::adopt_listeners()
}

pub(crate) use crate::sys::forget_environment;

//! Reclaims the pthread keys module libraries create, which would otherwise run out.
//!
//! Measured here: every loaded module's copy of Rust's std creates a pthread key the first time
//! a thread calls `thread::current()` (tokio does, when it builds the module's runtime), to run
//! thread-exit cleanup, and never deletes it: its `static` lives in the library. glibc has 1024
//! keys per process, so after about a thousand module loads the next one aborted the base with
//! "fatal runtime error: out of TLS keys".
//!
//! So the base defines `pthread_key_create` itself. A dynamically exported definition in the
//! executable comes first in symbol lookup, so module libraries bind to it (the binary must
//! export the symbol: `pedestal-base`'s build script does it for `pedestal`; a custom base adds
//! `-Wl,--export-dynamic-symbol=pthread_key_create` to its link arguments, see
//! [`keys_are_reclaimable`]). It forwards to glibc's `__pthread_key_create` and remembers each
//! key created on an instance thread or a thread it started (they carry the instance thread's
//! `pdl-<n>` name). Once every one of those threads is gone, [`release`] deletes the keys: no
//! thread is left to run their destructors.
//!
//! ABI glue: one of the base's three `unsafe` files.

use std::{
    ffi::{c_int, c_void},
    sync::{Mutex, PoisonError},
};

type Destructor = Option<unsafe extern "C" fn(*mut c_void)>;

unsafe extern "C" {
    /// glibc's public alias of its key allocator (also used by libgcc); never interposed.
    fn __pthread_key_create(key: *mut libc::pthread_key_t, destructor: Destructor) -> c_int;
}

/// Keys created on module threads, with the instance number of their thread name.
static MODULE_KEYS: Mutex<Vec<(u64, libc::pthread_key_t)>> = Mutex::new(Vec::new());

/// The process's `pthread_key_create`: glibc's, plus bookkeeping for keys made by module code.
///
/// # Safety
/// Same contract as POSIX `pthread_key_create`: `key` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_key_create(key: *mut libc::pthread_key_t, destructor: Destructor) -> c_int {
    // SAFETY: forwarded unchanged under the caller's contract.
    let result = unsafe { __pthread_key_create(key, destructor) };
    if result == 0
        && let Some(instance) = current_instance_thread()
    {
        // SAFETY: glibc just wrote the new key through `key`.
        let created = unsafe { *key };
        MODULE_KEYS.lock().unwrap_or_else(PoisonError::into_inner).push((instance, created));
    }
    result
}

/// Deletes the keys created by the threads of instance thread `pdl-<instance>`. Call only once
/// none of those threads is alive.
pub(crate) fn release(instance: u64) -> usize {
    let mut keys = MODULE_KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut released = 0;
    keys.retain(|&(owner, key)| {
        if owner != instance {
            return true;
        }
        // SAFETY: the key was created by `pthread_key_create` above and every thread that could
        // hold a value for it has exited, so no destructor call can be pending.
        unsafe { libc::pthread_key_delete(key) };
        released += 1;
        false
    });
    released
}

/// Whether module libraries bind to the base's `pthread_key_create` (so their keys can be
/// reclaimed). False when the base binary was linked without exporting the symbol.
pub fn keys_are_reclaimable() -> bool {
    // SAFETY: `dlsym` with a NUL-terminated name and the default handle has no other
    // preconditions; the result is only compared, never called.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"pthread_key_create".as_ptr()) };
    std::ptr::eq(found.cast_const().cast::<()>(), pthread_key_create as *const ())
}

/// The `<n>` of the calling thread's `pdl-<n>` name, read without allocating (this runs inside
/// the key allocator, possibly while a thread is being set up).
fn current_instance_thread() -> Option<u64> {
    let mut name = [0u8; 32];
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/proc/thread-self/comm".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: reads at most `name.len()` bytes into `name`, from the descriptor opened above.
    let read = unsafe { libc::read(fd, name.as_mut_ptr().cast(), name.len()) };
    // SAFETY: `fd` is open and owned here.
    unsafe { libc::close(fd) };
    let name = name.get(..usize::try_from(read).ok()?)?;
    let digits = name.strip_prefix(b"pdl-")?;
    let digits = digits.strip_suffix(b"\n").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

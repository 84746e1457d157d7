//! Reclaims the pthread keys module libraries create, which would otherwise run out.
//!
//! Measured here: every loaded module's copy of Rust's std creates a pthread key the first time
//! a thread calls `thread::current()` (tokio does, when it builds the module's runtime), to run
//! thread-exit cleanup, and never deletes it: its `static` lives in the library. glibc has 1024
//! keys per process, so after about a thousand module loads the next one aborted the base with
//! "fatal runtime error: out of TLS keys".
//!
//! So the base defines `pthread_key_create` and `pthread_key_delete` itself. Dynamically
//! exported definitions in the executable come first in symbol lookup, so module libraries bind
//! to them (the binary must export the symbols: `pedestal-base`'s build script does it for
//! `pedestal`; a custom base adds the same link arguments, see [`keys_are_reclaimable`]). They
//! forward to glibc and keep a table of live keys with their destructors. When a module is
//! unloaded, after every one of its threads is gone, [`release`] deletes the keys whose
//! destructor is code *inside that library*: nobody else can use such a key (its destructor is
//! about to be unmapped), and no thread is left to run it. Keys of shared libraries a module
//! happened to initialise first (their destructors live elsewhere) are left alone.
//!
//! ABI glue: one of the base's three `unsafe` files.

use std::{
    collections::HashMap,
    ffi::{c_int, c_void},
    sync::{Mutex, OnceLock, PoisonError},
};

use crate::sys::object_base;

type Destructor = Option<unsafe extern "C" fn(*mut c_void)>;

unsafe extern "C" {
    /// glibc's public alias of its key allocator (also used by libgcc); never interposed.
    fn __pthread_key_create(key: *mut libc::pthread_key_t, destructor: Destructor) -> c_int;
}

/// Live keys created through [`pthread_key_create`] that have a destructor.
static KEYS: Mutex<Option<HashMap<libc::pthread_key_t, KeyOwner>>> = Mutex::new(None);

/// A key's destructor, and (once looked up) the load address of the object it lives in.
struct KeyOwner {
    destructor: usize,
    object: Option<usize>,
}

/// The process's `pthread_key_create`: glibc's, plus a record of the key's destructor.
///
/// # Safety
/// Same contract as POSIX `pthread_key_create`: `key` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_key_create(key: *mut libc::pthread_key_t, destructor: Destructor) -> c_int {
    // SAFETY: forwarded unchanged under the caller's contract.
    let result = unsafe { __pthread_key_create(key, destructor) };
    if result == 0
        && let Some(destructor) = destructor
    {
        // SAFETY: glibc just wrote the new key through `key`.
        let created = unsafe { *key };
        let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
        keys.get_or_insert_with(HashMap::new)
            .insert(created, KeyOwner { destructor: destructor as usize, object: None });
    }
    result
}

/// The process's `pthread_key_delete`: glibc's, and the key leaves the table (so a key number
/// reused later is never mistaken for the old one).
///
/// # Safety
/// Same contract as POSIX `pthread_key_delete`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_key_delete(key: libc::pthread_key_t) -> c_int {
    if let Some(keys) = KEYS.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
        keys.remove(&key);
    }
    // SAFETY: forwarded unchanged under the caller's contract.
    unsafe { real_delete()(key) }
}

/// The live keys whose destructor is code in the object loaded at `base`, with their
/// destructors. Call before that library is closed.
///
/// Lock order: `dladdr` and `dlsym` take glibc's loader lock, and a library constructor running
/// under `dlopen` (which holds that lock) may call `pthread_key_create` (which takes `KEYS`). So
/// nothing here calls into the loader while holding `KEYS`.
pub(crate) fn owned_by(base: usize) -> Vec<(libc::pthread_key_t, usize)> {
    let unknown: Vec<(libc::pthread_key_t, usize)> = {
        let keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(keys) = keys.as_ref() else { return Vec::new() };
        keys.iter().filter(|(_, owner)| owner.object.is_none()).map(|(k, o)| (*k, o.destructor)).collect()
    };
    // Each key's object is looked up once and remembered: while a key lives, its destructor's
    // library stays loaded, so the answer cannot change. (A failed lookup is not remembered.)
    let looked_up: Vec<_> = unknown.into_iter().map(|(k, d)| (k, d, object_base(d))).collect();
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(keys) = keys.as_mut() else { return Vec::new() };
    for (key, destructor, object) in looked_up {
        if let (Some(owner), Some(object)) = (keys.get_mut(&key), object)
            && owner.destructor == destructor
        {
            owner.object = Some(object);
        }
    }
    keys.iter()
        .filter(|(_, owner)| owner.object == Some(base))
        .map(|(key, owner)| (*key, owner.destructor))
        .collect()
}

/// Deletes the given keys, each only if it is still live with the same destructor (a library
/// may have deleted its own key while it was closed, and the number may have been reused).
/// Call once the library they belong to is gone and none of its threads is alive.
pub(crate) fn delete_unchanged(owned: &[(libc::pthread_key_t, usize)]) {
    let delete = real_delete();
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(keys) = keys.as_mut() else { return };
    for (key, destructor) in owned {
        if keys.get(key).is_some_and(|owner| owner.destructor == *destructor) {
            keys.remove(key);
            // SAFETY: a live key (it is in the table), whose destructor was in a library that is
            // gone and whose threads have all exited; deleting it calls no destructor and takes
            // no loader lock.
            unsafe { delete(*key) };
        }
    }
}

/// Whether module libraries bind to the base's key functions (so their keys can be reclaimed).
/// False when the base binary was linked without exporting the symbols.
pub fn keys_are_reclaimable() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(look_up_key_functions)
}

/// Looked up once: `dlsym` takes the loader lock, which a stuck library initialiser may hold.
fn look_up_key_functions() -> bool {
    // SAFETY: `dlsym` with NUL-terminated names and the default handle has no other
    // preconditions; the results are only compared, never called.
    let (create, delete) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"pthread_key_create".as_ptr()),
            libc::dlsym(libc::RTLD_DEFAULT, c"pthread_key_delete".as_ptr()),
        )
    };
    // Resolve glibc's delete now, outside any lock (see `release`).
    real_delete();
    std::ptr::eq(create.cast_const().cast::<()>(), pthread_key_create as *const ())
        && std::ptr::eq(delete.cast_const().cast::<()>(), pthread_key_delete as *const ())
}

type Delete = unsafe extern "C" fn(libc::pthread_key_t) -> c_int;

/// glibc's `pthread_key_delete` (the next definition after the executable's).
fn real_delete() -> Delete {
    static REAL: OnceLock<Delete> = OnceLock::new();
    *REAL.get_or_init(|| {
        // SAFETY: a NUL-terminated name; glibc defines the symbol, so the result is non-null
        // and has this type.
        unsafe {
            let found = libc::dlsym(libc::RTLD_NEXT, c"pthread_key_delete".as_ptr());
            assert!(!found.is_null(), "glibc exports pthread_key_delete");
            std::mem::transmute::<*mut c_void, Delete>(found)
        }
    })
}

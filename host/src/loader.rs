//! Opening, checking and closing module libraries. With `host.rs`, the only `unsafe` in the base.
//!
//! The sequence follows the facts recorded in DESIGN.md: `RawLibrary::load_at` (never
//! abi_stable's leaking `RootModule::load_from*`), the interface stamp read as plain data, a
//! semver check, a layout check with a fresh `CheckingGlobals` (abi_stable's process-wide cache
//! points into unloaded libraries), and only then the root-module constructor.
//!
//! Architecture Invariant: everything in this file that runs module code (constructors, the
//! root-module initializer) is called on the instance's own thread, never on a base thread.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use abi_stable::{
    StableAbi,
    abi_stability::abi_checking::{CheckingGlobals, check_layout_compatibility_with_globals},
    library::{RawLibrary, lib_header_from_raw_library},
};
use pedestal_module_api::{
    HeapCounters, HeapSnapshot,
    abi::{
        Host, INTERFACE_VERSION, InterfaceStamp, ModuleLimits, ModuleRootRef, RESERVED_SPI_PREFIX, SpiDecl,
        TaskCounters,
    },
};
use semver::Version;

use crate::{
    error::{Error, Result},
    sync::lock,
    sys::object_base,
    tls_keys,
};

/// What a module says about itself, read at load time.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The module's name (its package name).
    pub name: String,
    /// The module's own version.
    pub version: Version,
    /// The interface version it was built against.
    pub interface: Version,
    /// The limits it declares (`None` when built against an interface older than 1.1).
    pub limits: Option<ModuleLimits>,
    /// The SPIs it implements, with the version of the declaration it was built against (none
    /// before interface 1.2).
    pub provides: Vec<(String, Version)>,
    /// The SPIs it calls, with the versions it was built against.
    pub requires: Vec<(String, Version)>,
}

/// An open module library and its root module.
///
/// Field order matters: fields drop in declaration order, and the library handle must be the
/// last thing dropped, after everything that points into it. The handle is shared with the
/// [`Counters`] handed out for it, so the library stays mapped while any of them lives; it is
/// closed where its last owner drops it (see [`Library::unload`]).
pub struct Library {
    root: ModuleRootRef,
    raw: Arc<RawLibrary>,
}

/// A module's heap and task counters, which live in its library's static memory. The handle
/// owns a share of the library, so reading them is sound for as long as it exists: no safe code
/// can hold them past an unload. Reading costs what reading a plain reference does.
///
/// Ownership: the base's, on any thread. Drop it before [`Library::unload`], which closes the
/// library only when it holds the last share; a handle that outlives its library's owner closes
/// it through [`Counters::unload`].
pub struct Counters {
    heap: &'static HeapCounters,
    tasks: Option<&'static TaskCounters>,
    // Last: it keeps `heap` and `tasks` mapped.
    library: Arc<RawLibrary>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl Counters {
    /// # Safety
    ///
    /// `heap` and `tasks` must point into the library that `library` keeps open. The
    /// `'static` lifetimes are a private convenience: the references never leave this handle
    /// except as values copied out of them, and the handle keeps their memory mapped.
    unsafe fn new(
        heap: &'static HeapCounters,
        tasks: Option<&'static TaskCounters>,
        library: Arc<RawLibrary>,
    ) -> Self {
        Self { heap, tasks, library }
    }

    /// The module's heap right now.
    pub fn heap(&self) -> HeapSnapshot {
        self.heap.snapshot()
    }

    /// Tasks alive on the module's runtime (`None` when built against an interface older than
    /// 1.1).
    pub fn tasks(&self) -> Option<u64> {
        self.tasks.map(|t| t.alive.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Closes the library this handle keeps open, when the [`Library`] itself is gone already
    /// (its thread unwound and dropped it), exactly as [`Library::unload`] would: off the
    /// calling thread, within `timeout`.
    pub fn unload(self, path: &Path, timeout: Duration) -> Unload {
        let inside = std::ptr::from_ref(self.heap) as usize;
        let Self { library, .. } = self;
        close_elsewhere(library, inside, path, timeout)
    }
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library").finish_non_exhaustive()
    }
}

/// The base's interface version.
pub fn base_interface() -> Version {
    Version::parse(INTERFACE_VERSION).expect("the crate version is semver")
}

/// Opens and checks the library at `path`. Call on the instance's thread: it runs the library's
/// constructors and root-module initializer.
///
/// The registry has already read the same file's interface stamp without loading it
/// (`elf::check_module`), so a library that is not a module never gets here; the stamp checks
/// below are the second line, on what `dlsym` really finds.
pub fn open(path: &Path) -> Result<(Library, Manifest)> {
    let raw = RawLibrary::load_at(path)
        .map_err(|e| Error::LoadFailed { path: path.to_owned(), message: e.to_string() })?;
    let interface = read_stamp(&raw)?;
    let base = base_interface();
    if interface.major != base.major {
        return Err(Error::InterfaceMismatch { module: interface.to_string(), base: base.to_string() });
    }

    // SAFETY: the header is only used while `raw` is open: it is dropped at the end of this
    // function, and the root module it yields is stored next to `raw` in `Library`.
    let header = unsafe { lib_header_from_raw_library(&raw) }.map_err(|e| Error::NotAModule {
        reason: format!("the abi_stable library header is missing or invalid: {e}"),
    })?;
    let module_layout = header.layout().ok_or_else(|| Error::NotAModule {
        reason: "the library exports its root module without a layout to check".into(),
    })?;
    let base_layout = <ModuleRootRef as StableAbi>::LAYOUT;
    // The checker expects the older side's layout first: a module built against an older minor
    // has fewer prefix fields, and the base must accept it.
    let (expected, found) =
        if interface < base { (module_layout, base_layout) } else { (base_layout, module_layout) };
    check_layout_compatibility_with_globals(expected, found, &CheckingGlobals::new()).map_err(|e| {
        Error::AbiMismatch { module: interface.to_string(), base: base.to_string(), details: e.to_string() }
    })?;
    // SAFETY: the layout was checked just above, with a checker that keeps no state across
    // libraries.
    let root = unsafe { header.init_root_module_with_unchecked_layout::<ModuleRootRef>() }
        .map_err(|e| Error::LoadFailed { path: path.to_owned(), message: e.to_string() })?;

    let name = root.name().as_str().to_owned();
    if !crate::ids::is_valid_name(&name) {
        return Err(Error::NotAModule { reason: format!("invalid module name {name:?}") });
    }
    let version = Version::parse(root.version().as_str()).map_err(|e| Error::NotAModule {
        reason: format!("module version {:?} is not semver: {e}", root.version().as_str()),
    })?;
    let limits = root.limits();
    let provides = spi_decls(root.provides().map(|p| p.as_slice()).unwrap_or_default(), "implements")?;
    let requires = spi_decls(root.requires().map(|p| p.as_slice()).unwrap_or_default(), "requires")?;
    let raw = Arc::new(raw);
    Ok((Library { root, raw }, Manifest { name, version, interface, limits, provides, requires }))
}

/// SPI declarations read from a root module, checked: semver versions, no reserved names.
fn spi_decls(decls: &[SpiDecl], what: &str) -> Result<Vec<(String, Version)>> {
    decls
        .iter()
        .map(|spi| {
            let name = spi.name.as_str();
            if name.starts_with(RESERVED_SPI_PREFIX) {
                return Err(Error::NotAModule {
                    reason: format!("it {what} SPI {name:?}, a name reserved for the base's own services"),
                });
            }
            let version = Version::parse(spi.version.as_str()).map_err(|e| Error::NotAModule {
                reason: format!(
                    "SPI {name} has a version {:?} that is not semver: {e}",
                    spi.version.as_str()
                ),
            })?;
            Ok((name.to_owned(), version))
        })
        .collect()
}

impl Library {
    /// Runs the module until it stops. Call on the instance's thread.
    pub fn run(&self, host: Host) {
        (self.root.run())(host);
    }

    /// The module's heap and task counters, as a handle that keeps the library open.
    pub fn counters(&self) -> Counters {
        // SAFETY: both accessors return addresses of statics inside this library, and the
        // handle shares `raw`, which keeps it open.
        unsafe { Counters::new(self.root.heap(), self.root.tasks(), Arc::clone(&self.raw)) }
    }

    /// The library's load address.
    pub fn load_base(&self) -> usize {
        crate::sys::object_base(std::ptr::from_ref(self.root.heap()) as usize)
            .expect("the heap counters are in the library")
    }

    /// Unloads the library on a short-lived thread of its own and reports what became of it.
    ///
    /// Everything that takes glibc's loader lock happens there — finding the pthread keys whose
    /// destructors live in the library, `dlclose` (which runs the library's ELF destructors, so
    /// never on a base thread), the `RTLD_NOLOAD` check — and the caller waits at most
    /// `timeout`: a library initialiser stuck in another thread holds that lock, and the base
    /// must answer rather than hang. The keys are deleted only once the library is gone.
    pub fn unload(self, path: &Path, timeout: Duration) -> Unload {
        // Every `Counters` of it must be gone, or `dlclose` would not run here (the caller's
        // order of drops is wrong). In a release build, keep the library for good rather than
        // let that `Counters` close it later, on whatever thread drops it, after the instance
        // was reported pinned.
        debug_assert_eq!(Arc::strong_count(&self.raw), 1, "a `Counters` outlives its library's unload");
        if Arc::strong_count(&self.raw) != 1 {
            std::mem::forget(self);
            return Unload::StillLoaded;
        }
        let inside = std::ptr::from_ref(self.root.heap()) as usize;
        // `root` is a plain pointer into the library; nothing to drop before the handle.
        let Self { raw, .. } = self;
        close_elsewhere(raw, inside, path, timeout)
    }
}

/// Drops `library` (its last share, normally, which closes it) on a short-lived thread of its
/// own, and reports what became of it (see [`Library::unload`]). `inside` is an address inside
/// the library: its load address is looked up on that thread too, since `dladdr` takes the
/// loader lock.
fn close_elsewhere(library: Arc<RawLibrary>, inside: usize, path: &Path, timeout: Duration) -> Unload {
    let (done, outcome) = mpsc::sync_channel(1);
    let path = path.to_owned();
    let (hand_over, library_rx) = mpsc::sync_channel::<Arc<RawLibrary>>(1);
    let closer = std::thread::Builder::new().name("pedestal-close".into()).spawn(move || {
        let Ok(library) = library_rx.recv() else { return };
        let keys = object_base(inside).map(tls_keys::owned_by).unwrap_or_default();
        drop(library);
        let still_loaded = is_loaded(&path);
        if !still_loaded {
            tls_keys::delete_unchanged(&keys);
        }
        let _ = done.send(still_loaded);
    });
    // If no closer can take the library, keep it open rather than close it on this base
    // thread.
    if closer.is_err() {
        std::mem::forget(library);
        return Unload::StillLoaded;
    }
    if let Err(mpsc::SendError(library)) = hand_over.send(library) {
        std::mem::forget(library);
        return Unload::StillLoaded;
    }
    match outcome.recv_timeout(timeout) {
        Ok(false) => Unload::Unmapped,
        Ok(true) => Unload::StillLoaded,
        Err(_) => Unload::LoaderBusy,
    }
}

/// What became of a library after [`Library::unload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unload {
    /// Closed and forgotten by the dynamic loader (so unmapped).
    Unmapped,
    /// Still loaded: a thread holds a thread-local destructor in it, or it could not be closed.
    StillLoaded,
    /// The dynamic loader did not answer in time: another library's initialiser holds its lock.
    LoaderBusy,
}

fn read_stamp(raw: &RawLibrary) -> Result<Version> {
    // SAFETY: the symbol is read as the address of a `#[repr(C)]` plain-data static; it is only
    // dereferenced after the null check, while `raw` is open, and copied out.
    let stamp: Option<InterfaceStamp> = unsafe {
        raw.get::<*const InterfaceStamp>(InterfaceStamp::SYMBOL)
            .ok()
            .and_then(|symbol| (*symbol).as_ref().copied())
    };
    let stamp = stamp.ok_or_else(|| Error::NotAModule {
        reason: "the shared library does not export `pedestal_interface_stamp`: \
                 it was not built with pedestal_module_api::export_module!"
            .into(),
    })?;
    if stamp.magic != InterfaceStamp::MAGIC {
        return Err(Error::NotAModule { reason: "the interface stamp has the wrong magic bytes".into() });
    }
    Ok(Version::new(stamp.major.into(), stamp.minor.into(), stamp.patch.into()))
}

/// Whether the file at `path` is still mapped into this process (after `dlclose`, a library may
/// stay mapped: glibc keeps it while a live thread holds a thread-local destructor it registered).
///
/// Compares device and inode, not path text: a relative or symlinked data directory, or a file
/// replaced since, would fool a string match.
pub fn is_mapped(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    let device = format!("{:02x}:{:02x}", libc::major(meta.dev()), libc::minor(meta.dev()));
    let inode = meta.ino().to_string();
    let Ok(maps) = fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    maps.lines().any(|line| {
        let mut fields = line.split_ascii_whitespace().skip(3);
        fields.next() == Some(device.as_str()) && fields.next() == Some(inode.as_str())
    })
}

/// Whether the dynamic loader still has the library at `path` loaded (after `dlclose` it keeps
/// one while a live thread holds a thread-local destructor it registered). Asks glibc with
/// `RTLD_NOLOAD`, which costs microseconds, where reading `/proc/self/maps` cost milliseconds
/// with a thousand modules loaded; glibc unmaps a library exactly when it forgets it.
pub fn is_loaded(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `RTLD_NOLOAD` never loads (so runs no constructor); it only returns a handle to an
    // object already loaded, which is released again at once.
    unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
    }
    true
}

/// Hands memory the unloaded module freed back to the system. glibc keeps freed memory of its
/// per-thread arenas for reuse; after an unload most of it would sit there unused.
pub fn return_freed_memory() {
    // SAFETY: `malloc_trim` only releases free memory; any thread may call it at any time.
    unsafe { libc::malloc_trim(0) };
}

/// Caps glibc's malloc arenas at `arenas` (0 leaves glibc's default, eight per core). glibc
/// gives a thread that meets a locked arena a new one, up to the cap, and never returns an
/// arena: on a base whose module threads come and go with every install, each new arena is
/// another ~1.7 MiB of RSS kept for good. Call before the runtime starts its threads. Returns
/// whether glibc accepted the value.
pub fn limit_malloc_arenas(arenas: u32) -> bool {
    if arenas == 0 {
        return true;
    }
    let Ok(arenas) = libc::c_int::try_from(arenas) else {
        return false;
    };
    // SAFETY: `mallopt` only sets an allocator parameter; glibc serialises it against
    // allocations in other threads, and none have started yet when the base calls this.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

/// The library whose initialisation never returned, if any: it holds glibc's loader lock, so
/// every later `dlopen` and `dlclose` in the process would block.
pub fn wedged() -> Option<PathBuf> {
    lock(&WEDGED).clone()
}

/// Records that the initialisation of `path` never returned.
pub fn mark_wedged(path: &Path) {
    *lock(&WEDGED) = Some(path.to_owned());
}

static WEDGED: Mutex<Option<PathBuf>> = Mutex::new(None);

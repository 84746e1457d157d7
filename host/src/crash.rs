//! Crash attribution: which module killed the process, written down as the process dies, so the
//! next start can quarantine it (`registry/crashes.rs`) instead of loading it again.
//!
//! A module runs in the base's address space: an `abort()`, a wild write, a stack overflow or a
//! panic Rust cannot unwind kills the whole process, and nothing a dying process does can be
//! trusted beyond a few system calls. So everything the signal handler needs is prepared ahead:
//!
//! - **The table**: a fixed static array of slots, one per live (or pinned) instance, holding its
//!   instance number (from its thread's `pdl-<n>` name), the address range of its library and
//!   its identity pre-formatted as record text. Writers publish a slot under a per-slot sequence
//!   number (odd while writing), so the handler — which never allocates, locks or waits — can
//!   tell a half-written slot from a stable one.
//! - **The file**: `<data-dir>/crashes.log`, opened (append, 0600) when the handler is installed.
//! - **The handler** for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT, on an alternate signal
//!   stack: it reads the thread's name with `prctl(PR_GET_NAME)`, else matches the interrupted
//!   instruction and the faulting address against the library ranges, formats one line into a
//!   stack buffer (`record.rs`), `write(2)`s and `fsync`s it, then hands the signal to the
//!   handler that was there before (Rust's, which reports stack overflows) or to the default
//!   action, so the process still dies of the original signal.
//!
//! Architecture Invariant: the signal handler only makes async-signal-safe calls (`prctl`,
//! `clock_gettime`, `write`, `fsync`, `sigaction`, `raise`) and reads the table with atomic loads.

mod policy;
mod record;

use std::{
    ffi::c_void,
    fs::{self, OpenOptions},
    io,
    os::{
        fd::IntoRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering, fence},
    },
};

pub use policy::{Crash, Ledger};
pub use policy::{Policy, Verdict};
pub use record::CrashRecord;
pub use record::now_ms;

use record::{Access, By, Line, RawCrash};

/// The file crash records are appended to, in the data directory.
pub(crate) const LOG_FILE: &str = "crashes.log";
/// Where `crashes.log` goes when it is rotated.
const OLD_LOG_FILE: &str = "crashes.log.old";
/// The ledger of processed records.
const LEDGER_FILE: &str = "crashes.json";
/// `crashes.log` is rotated at start once it is this large and fully processed.
const ROTATE_AT_BYTES: u64 = 1024 * 1024;

/// The signals caught: the ways native code kills a process by itself.
const SIGNALS: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT];

/// Size of an instance thread's alternate signal stack. Rust gives each thread 8 KiB, and the
/// kernel's signal frame alone takes `AT_MINSIGSTKSZ` (3376 bytes on these machines, with
/// AVX-512 state): a stack overflow runs Rust's handler inside ours and then `abort()`s, which
/// delivers SIGABRT on the same stack, two frames deep. Measured on Rust's 8 KiB stack: the record
/// was written, but the SIGABRT found no room and the process died of SIGSEGV instead.
const ALT_STACK_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// The table.

/// Slots available; instances beyond it run normally but are not attributed.
const SLOTS: usize = 4096;
/// Bytes of pre-formatted identity per slot.
const IDENTITY_BYTES: usize = 512;
const IDENTITY_WORDS: usize = IDENTITY_BYTES / 8;

struct Slot {
    /// The instance number `n` of `pdl-<n>`; 0 when free. Claimed with a compare-and-swap.
    instance: AtomicU64,
    /// Even when stable, odd while a writer changes the fields below.
    seq: AtomicU64,
    /// The library's mapped range `[start, end)`; `0..0` until `dlopen` returned.
    start: AtomicUsize,
    end: AtomicUsize,
    identity_len: AtomicUsize,
    /// The identity bytes, eight per word (atomics, so a concurrent read is never a data race).
    identity: [AtomicU64; IDENTITY_WORDS],
}

impl Slot {
    const fn new() -> Self {
        Self {
            instance: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            identity_len: AtomicUsize::new(0),
            identity: [const { AtomicU64::new(0) }; IDENTITY_WORDS],
        }
    }

    /// Runs `write` with the sequence odd (writers of one slot wait for each other; the handler
    /// never waits).
    fn write(&self, write: impl FnOnce(&Self)) {
        loop {
            let seq = self.seq.load(Ordering::Relaxed);
            if seq.is_multiple_of(2)
                && self.seq.compare_exchange_weak(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                break;
            }
            std::hint::spin_loop();
        }
        fence(Ordering::Release);
        write(self);
        self.seq.fetch_add(1, Ordering::Release);
    }

    fn set_identity(&self, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(IDENTITY_BYTES)];
        for (i, word) in self.identity.iter().enumerate() {
            let mut chunk = [0u8; 8];
            let from = (i * 8).min(bytes.len());
            let to = (from + 8).min(bytes.len());
            chunk[..to - from].copy_from_slice(&bytes[from..to]);
            word.store(u64::from_ne_bytes(chunk), Ordering::Relaxed);
        }
        self.identity_len.store(bytes.len(), Ordering::Relaxed);
    }

    /// A consistent copy of the slot, or `None` when it stayed mid-write over a few tries (the
    /// handler cannot wait for a writer: it may have interrupted it).
    fn read(&self, identity: &mut [u8; IDENTITY_BYTES]) -> Option<SlotView> {
        for _ in 0..8 {
            let before = self.seq.load(Ordering::Acquire);
            if !before.is_multiple_of(2) {
                continue;
            }
            let view = SlotView {
                instance: self.instance.load(Ordering::Relaxed),
                start: self.start.load(Ordering::Relaxed),
                end: self.end.load(Ordering::Relaxed),
                identity_len: self.identity_len.load(Ordering::Relaxed).min(IDENTITY_BYTES),
            };
            for (i, word) in self.identity.iter().enumerate() {
                identity[i * 8..i * 8 + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some(view);
            }
        }
        None
    }
}

#[derive(Clone, Copy)]
struct SlotView {
    instance: u64,
    start: usize,
    end: usize,
    identity_len: usize,
}

static TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
/// Whether the table filled up once (warned about once).
static TABLE_FULL_WARNED: AtomicBool = AtomicBool::new(false);

/// An instance's slot in the crash table. Copyable: it is only an index. Released only once the
/// instance's library is verified unmapped; a pinned instance keeps its slot forever (its code
/// may still run).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CrashSlot(Option<usize>);

/// Claims a slot for the instance whose thread will be named `thread_name` (`pdl-<n>`), before the
/// thread starts: a crash in the library's constructors is attributed too (by artifact and
/// install name; the module's name and version come with the manifest, see
/// [`CrashSlot::identify`]).
pub(crate) fn register(thread_name: &str, sha256: &str, install_name: Option<&str>) -> CrashSlot {
    let Some(instance) = instance_number(thread_name.as_bytes()) else { return CrashSlot(None) };
    let identity = record::identity(None, None, sha256, install_name);
    for (index, slot) in TABLE.iter().enumerate() {
        if slot.instance.compare_exchange(0, instance, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            slot.write(|slot| {
                slot.start.store(0, Ordering::Relaxed);
                slot.end.store(0, Ordering::Relaxed);
                slot.set_identity(&identity);
            });
            return CrashSlot(Some(index));
        }
    }
    if !TABLE_FULL_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "the crash table is full ({SLOTS} instances): crashes of newer instances are not attributed"
        );
    }
    CrashSlot(None)
}

impl CrashSlot {
    /// Records the module's name and version, once its manifest is read.
    pub(crate) fn identify(self, name: &str, version: &str, sha256: &str, install_name: Option<&str>) {
        let Some(index) = self.0 else { return };
        let identity = record::identity(Some(name), Some(version), sha256, install_name);
        TABLE[index].write(|slot| slot.set_identity(&identity));
    }

    /// Records the address range of the library loaded at `load_base` (its `PT_LOAD` segments),
    /// once `dlopen` returned. Runs `dl_iterate_phdr`, so never in the handler.
    pub(crate) fn set_library(self, load_base: usize) {
        let Some(index) = self.0 else { return };
        let Some((start, end)) = library_range(load_base) else { return };
        TABLE[index].write(|slot| {
            slot.start.store(start, Ordering::Relaxed);
            slot.end.store(end, Ordering::Relaxed);
        });
    }

    /// Frees the slot. Call only once the library is verified unmapped: until then its code may
    /// still run, and a crash in it must still be attributed.
    pub(crate) fn release(self) {
        let Some(index) = self.0 else { return };
        let slot = &TABLE[index];
        slot.write(|slot| {
            slot.start.store(0, Ordering::Relaxed);
            slot.end.store(0, Ordering::Relaxed);
            slot.identity_len.store(0, Ordering::Relaxed);
        });
        slot.instance.store(0, Ordering::Release);
    }
}

/// Slots in use (live and pinned instances) and the table's capacity.
pub fn slots_in_use() -> (usize, usize) {
    (TABLE.iter().filter(|slot| slot.instance.load(Ordering::Relaxed) != 0).count(), SLOTS)
}

/// `n` of a `pdl-<n>` thread name (the bytes up to the first NUL).
fn instance_number(name: &[u8]) -> Option<u64> {
    let name = name.split(|b| *b == 0).next()?;
    let digits = name.strip_prefix(b"pdl-")?;
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(digit - b'0');
    }
    (n != 0).then_some(n)
}

/// The lowest and highest address of the `PT_LOAD` segments of the object loaded at `load_base`.
fn library_range(load_base: usize) -> Option<(usize, usize)> {
    struct Search {
        base: usize,
        found: Option<(usize, usize)>,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: `dl_iterate_phdr` passes a valid `info` for the duration of the call, and
        // `data` is the `Search` handed to it below, which outlives the iteration.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
        if info.dlpi_addr as usize != search.base || info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers of this object.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let loads = headers.iter().filter(|h| h.p_type == libc::PT_LOAD);
        let start = loads.clone().map(|h| h.p_vaddr as usize).min();
        let end = loads.map(|h| (h.p_vaddr + h.p_memsz) as usize).max();
        if let (Some(start), Some(end)) = (start, end) {
            search.found = Some((search.base + start, search.base + end));
        }
        1
    }
    let mut search = Search { base: load_base, found: None };
    // SAFETY: `visit` matches the callback type and only reads what it is given; `search` lives
    // until `dl_iterate_phdr` returns.
    unsafe { libc::dl_iterate_phdr(Some(visit), std::ptr::from_mut(&mut search).cast()) };
    search.found
}

// ---------------------------------------------------------------------------------------------
// The handler.

/// The pre-opened `crashes.log`, or -1.
static FD: AtomicI32 = AtomicI32::new(-1);
/// When the handler was installed (unix milliseconds): with the pid, tells processes apart.
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
/// Set by the first crash: one record per process (Rust's stack-overflow report ends in an
/// `abort()` whose SIGABRT comes back here).
static RECORDED: AtomicBool = AtomicBool::new(false);
/// The handlers installed before ours, per entry of [`SIGNALS`].
static PREVIOUS: [OnceLock<libc::sigaction>; SIGNALS.len()] = [const { OnceLock::new() }; SIGNALS.len()];

/// Installs the crash handler (once per process) and opens `<data_dir>/crashes.log` for it
/// (again, when called with another data directory: the newest one gets the records). Rotates
/// the file first when it is large and every record in it has been processed.
pub fn install(data_dir: &Path) -> io::Result<()> {
    rotate_if_processed(data_dir);
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(data_dir.join(LOG_FILE))?;
    let previous = FD.swap(file.into_raw_fd(), Ordering::AcqRel);
    if previous >= 0 {
        // SAFETY: `previous` came from `into_raw_fd` above (an earlier call) and nothing else
        // owns it. A handler running right now may still write to it; the worst case is that
        // record going to the previous data directory.
        unsafe { libc::close(previous) };
    }
    let _ = STARTED_MS.compare_exchange(0, record::now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| result = install_handlers());
    result
}

fn install_handlers() -> io::Result<()> {
    for (i, &signo) in SIGNALS.iter().enumerate() {
        // SAFETY: an all-zero `sigaction` is a valid value (no handler, empty mask, no flags),
        // and every field that matters is set below before it is used.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_fatal_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `action.sa_mask` is a valid signal set owned by this frame.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: as above.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call; the handler is an `extern "C"` function
        // of the `SA_SIGINFO` signature that lives for the whole process.
        if unsafe { libc::sigaction(signo, &action, &mut previous) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = PREVIOUS[i].set(previous);
    }
    Ok(())
}

/// Set once the first crash's record is written (and synced).
static WRITTEN: AtomicBool = AtomicBool::new(false);
/// The thread writing the first record (its kernel thread id).
static WRITER: AtomicI32 = AtomicI32::new(0);

/// The handler. Writes one record (the first time), then passes the signal on.
extern "C" fn on_fatal_signal(signo: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: `gettid` has no arguments and cannot fail; it is async-signal-safe.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    if !RECORDED.swap(true, Ordering::AcqRel) {
        WRITER.store(tid, Ordering::Release);
        write_record(signo, info, context);
        WRITTEN.store(true, Ordering::Release);
    } else if WRITER.load(Ordering::Acquire) != tid {
        // Another thread crashed at the same time and is writing the record: passing this signal
        // on now would kill the process under that write. Wait for it (bounded: 2 s), with
        // `nanosleep`, which is async-signal-safe. The writer itself (a fault inside the
        // handler) never waits for itself.
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
        for _ in 0..2000 {
            if WRITTEN.load(Ordering::Acquire) {
                break;
            }
            // SAFETY: `pause` is a valid timespec; the remainder pointer may be null.
            unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
        }
    }
    pass_on(signo, info, context);
}

fn write_record(signo: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let fd = FD.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    let mut thread = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (the name with its NUL) into `thread`.
    unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr() as libc::c_ulong, 0, 0, 0) };
    let thread_len = thread.iter().position(|b| *b == 0).unwrap_or(thread.len());
    let (pc, sp, access) = registers(context);
    let faulting = matches!(signo, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE);
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO` handler; `si_addr` is
    // meaningful for the fault signals only, and read only for them.
    let (code, addr, sender) = unsafe {
        let info = &*info;
        // `si_pid` is set for signals sent with `kill`/`tgkill` (`si_code <= 0`).
        (info.si_code, faulting.then(|| info.si_addr() as usize), (info.si_code <= 0).then(|| info.si_pid()))
    };
    // A signal another process sent (`kill -SEGV <pid>`) lands on whatever thread the kernel
    // picks: it is not that thread's module's crash. `abort()` is sent by this process itself.
    // SAFETY: `getpid` is async-signal-safe and cannot fail.
    let external = sender.is_some_and(|pid| pid != unsafe { libc::getpid() });

    // Which instance: the thread's name first, else the addresses against the library ranges.
    let mut identity = [0u8; IDENTITY_BYTES];
    let named = instance_number(&thread[..thread_len]).filter(|_| !external);
    let mut found: Option<(By, SlotView)> = None;
    for slot in &TABLE {
        let instance = slot.instance.load(Ordering::Acquire);
        if instance == 0 {
            continue;
        }
        if named == Some(instance)
            && let Some(view) = slot.read(&mut identity).filter(|v| v.instance == instance)
        {
            found = Some((By::Thread, view));
            break;
        }
    }
    if found.is_none() && !external {
        for slot in &TABLE {
            if slot.instance.load(Ordering::Acquire) == 0 {
                continue;
            }
            let Some(view) = slot.read(&mut identity) else { continue };
            let inside = |a: usize| view.start <= a && a < view.end;
            if view.instance != 0 && (inside(pc) || addr.is_some_and(inside)) {
                found = Some((By::Address, view));
                break;
            }
        }
    }
    let (by, instance, identity_len) = match found {
        Some((by, view)) => (by, view.instance, view.identity_len),
        None => (By::Unknown, 0, 0),
    };

    let crash = RawCrash {
        // Asked now, not remembered: a forked child that crashes before `exec` is not the base.
        // SAFETY: `getpid` is async-signal-safe and cannot fail.
        pid: unsafe { libc::getpid() } as u32,
        started_ms: STARTED_MS.load(Ordering::Relaxed),
        time_ms: clock_ms(),
        signo,
        code,
        addr,
        pc,
        sp,
        access: if faulting { access } else { None },
        thread: &thread[..thread_len],
        by,
        instance,
        identity: &identity[..identity_len],
    };
    let mut buf = [0u8; 1024];
    let mut line = Line::new(&mut buf);
    record::write(&mut line, &crash);
    let mut bytes = line.bytes();
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid buffer; `write(2)` is async-signal-safe.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if written <= 0 {
            break;
        }
        bytes = &bytes[written as usize..];
    }
    // SAFETY: `fsync(2)` is async-signal-safe; the record must survive a power cut right after.
    unsafe { libc::fsync(fd) };
}

/// Hands the signal to the handler installed before ours, or to the default action, so the
/// process dies as it would have without us (Rust's handler prints "thread '…' has overflowed its
/// stack" and aborts; the default action ends the process with the signal and exit status
/// 128 + signal).
fn pass_on(signo: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let previous = SIGNALS.iter().position(|s| *s == signo).and_then(|i| PREVIOUS[i].get());
    if let Some(previous) = previous {
        let handler = previous.sa_sigaction;
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: an `SA_SIGINFO` handler has this signature; it gets the arguments the
                // kernel gave us.
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                    unsafe { std::mem::transmute(handler) };
                handler(signo, info, context);
            } else {
                // SAFETY: a plain handler takes the signal number only.
                let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
                handler(signo);
            }
            // It returned: for a fault, returning re-runs the faulting instruction, which
            // faults again with whatever the previous handler left installed (Rust's resets the
            // default action).
            return;
        }
    }
    // SAFETY: an all-zero `sigaction` is the default action with an empty mask.
    let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
    default.sa_sigaction = libc::SIG_DFL;
    // SAFETY: `sigaction` and `raise` are async-signal-safe. The signal is blocked while this
    // handler runs, so the raised one is delivered — with the default action — as it returns;
    // a fault would also fault again when the instruction re-runs.
    unsafe {
        libc::sigaction(signo, &default, std::ptr::null_mut());
        libc::raise(signo);
    }
}

/// The interrupted instruction and stack pointers, and what kind of access faulted.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn registers(context: *mut c_void) -> (usize, usize, Option<Access>) {
    if context.is_null() {
        return (0, 0, None);
    }
    // SAFETY: for an `SA_SIGINFO` handler the third argument is the interrupted `ucontext_t`.
    let gregs = unsafe { &(*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let (pc, sp, err) = (
        gregs[libc::REG_RIP as usize] as usize,
        gregs[libc::REG_RSP as usize] as usize,
        gregs[libc::REG_ERR as usize] as u64,
    );
    // The page-fault error code: bit 1 set for a write, bit 4 for an instruction fetch.
    let access = if err & 0x10 != 0 {
        Access::Execute
    } else if err & 0x2 != 0 {
        Access::Write
    } else {
        Access::Read
    };
    (pc, sp, Some(access))
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn registers(context: *mut c_void) -> (usize, usize, Option<Access>) {
    if context.is_null() {
        return (0, 0, None);
    }
    // SAFETY: for an `SA_SIGINFO` handler the third argument is the interrupted `ucontext_t`.
    let mcontext = unsafe { &(*context.cast::<libc::ucontext_t>()).uc_mcontext };
    (mcontext.pc as usize, mcontext.sp as usize, None)
}

#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
fn registers(_context: *mut c_void) -> (usize, usize, Option<Access>) {
    (0, 0, None)
}

fn clock_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `clock_gettime` is async-signal-safe and writes `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

// ---------------------------------------------------------------------------------------------
// The alternate signal stack of instance threads.

/// A larger alternate signal stack for the calling (instance) thread, replacing Rust's 8 KiB one
/// for as long as it lives (see [`ALT_STACK_BYTES`]). Without any, a stack overflow could not run
/// a handler at all: the kernel would kill the process without a record.
pub(crate) struct AlternateStack {
    map: *mut c_void,
    len: usize,
    previous: libc::stack_t,
}

impl AlternateStack {
    /// Installs it on the calling thread; `None` (keeping Rust's) when memory is refused.
    pub(crate) fn install() -> Option<Self> {
        let page = 4096;
        let len = ALT_STACK_BYTES + page;
        // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the lowest page of our own mapping becomes a guard page, so a handler that
        // overflows this stack faults instead of writing below it.
        unsafe { libc::mprotect(map, page, libc::PROT_NONE) };
        // SAFETY: the stack starts above the guard page and lies inside the mapping.
        let stack = libc::stack_t {
            ss_sp: unsafe { map.cast::<u8>().add(page) }.cast(),
            ss_flags: 0,
            ss_size: ALT_STACK_BYTES,
        };
        let mut previous = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: 0, ss_size: 0 };
        // SAFETY: `stack` describes memory this value owns until it restores `previous` in
        // `drop`, on the same thread (the value is not `Send`).
        if unsafe { libc::sigaltstack(&stack, &mut previous) } != 0 {
            // SAFETY: the mapping was never handed out.
            unsafe { libc::munmap(map, len) };
            return None;
        }
        Some(Self { map, len, previous })
    }
}

impl Drop for AlternateStack {
    fn drop(&mut self) {
        let previous = if self.previous.ss_flags & libc::SS_DISABLE != 0 {
            libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 }
        } else {
            libc::stack_t { ss_flags: 0, ..self.previous }
        };
        // SAFETY: same thread as `install` (not `Send`), and not running on this stack (no
        // signal handler is active in ordinary code): give Rust's stack back, then unmap ours.
        unsafe {
            libc::sigaltstack(&previous, std::ptr::null_mut());
            libc::munmap(self.map, self.len);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the records back.

/// Records appended to `crashes.log` since the ledger's offset, and the offset after them.
/// Only complete lines are consumed; a rotated file (another inode) is read from its start.
pub fn read_new(data_dir: &Path, ledger: &Ledger) -> (Vec<CrashRecord>, u64, u64) {
    let path = data_dir.join(LOG_FILE);
    let Ok(bytes) = fs::read(&path) else { return (Vec::new(), 0, 0) };
    let inode = fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
    let offset =
        if ledger.inode == inode && ledger.offset <= bytes.len() as u64 { ledger.offset as usize } else { 0 };
    let complete = bytes[offset..].iter().rposition(|b| *b == b'\n').map_or(offset, |i| offset + i + 1);
    let records = record::parse_all(&String::from_utf8_lossy(&bytes[offset..complete]));
    (records, complete as u64, inode)
}

/// Every record in `crashes.log` (and its rotated predecessor), processed or not.
pub fn read_all(data_dir: &Path) -> Vec<CrashRecord> {
    [OLD_LOG_FILE, LOG_FILE]
        .iter()
        .filter_map(|file| fs::read(data_dir.join(file)).ok())
        .flat_map(|bytes| record::parse_all(&String::from_utf8_lossy(&bytes)))
        .collect()
}

/// The crash of process `pid`, if it recorded one: with `alive_at` (a time the process is known
/// to have been running, say a marker file's modification time), only a record of the process
/// that was running then, so a reused pid is not mistaken for it. A process killed with SIGKILL
/// (or by the OOM killer) records nothing.
pub fn crash_of_process(
    data_dir: &Path,
    pid: u32,
    alive_at: Option<std::time::SystemTime>,
) -> Option<CrashRecord> {
    // File times come from the kernel's coarse clock, a few milliseconds behind the one the
    // handler reads: allow a second either way.
    const SLACK_MS: u64 = 1000;
    let alive_ms =
        alive_at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64);
    read_all(data_dir).into_iter().rfind(|r| {
        r.pid == pid && alive_ms.is_none_or(|t| r.started_ms <= t + SLACK_MS && t <= r.time_ms + SLACK_MS)
    })
}

fn ledger_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LEDGER_FILE)
}

/// Reads `<data-dir>/crashes.json` (empty when missing or unreadable).
pub fn load_ledger(data_dir: &Path) -> Ledger {
    fs::read(ledger_path(data_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Writes `<data-dir>/crashes.json` atomically.
pub fn save_ledger(data_dir: &Path, ledger: &Ledger) -> crate::error::Result<()> {
    let bytes = serde_json::to_vec_pretty(ledger).expect("the ledger serializes");
    crate::private::write_atomically(&ledger_path(data_dir), &bytes, true)
}

/// Moves a large `crashes.log` whose records were all processed to `crashes.log.old`, so the
/// file stays bounded (records are a few hundred bytes; a crash loop adds one per restart).
fn rotate_if_processed(data_dir: &Path) {
    let path = data_dir.join(LOG_FILE);
    let Ok(meta) = fs::metadata(&path) else { return };
    let ledger = load_ledger(data_dir);
    if meta.len() < ROTATE_AT_BYTES || ledger.inode != meta.ino() || ledger.offset < meta.len() {
        return;
    }
    if fs::rename(&path, data_dir.join(OLD_LOG_FILE)).is_ok() {
        // The next read sees another inode and starts at 0; saving is only tidiness.
        let _ = save_ledger(data_dir, &Ledger { offset: 0, inode: 0, ..ledger });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_numbers_come_from_pdl_names_only() {
        assert_eq!(instance_number(b"pdl-1"), Some(1));
        assert_eq!(instance_number(b"pdl-4711\0\0\0"), Some(4711));
        assert_eq!(instance_number(b"pdl-"), None);
        assert_eq!(instance_number(b"pdl-0"), None);
        assert_eq!(instance_number(b"pdl-1x"), None);
        assert_eq!(instance_number(b"tokio-runtime-w"), None);
    }

    #[test]
    fn a_slot_reads_back_what_was_published_and_is_freed() {
        let slot = register("pdl-999999", "ab12", Some("tenant"));
        slot.identify("fx-a", "1.2.3", "ab12", Some("tenant"));
        let index = slot.0.expect("a free slot");
        let mut identity = [0u8; IDENTITY_BYTES];
        let view = TABLE[index].read(&mut identity).expect("stable");
        assert_eq!(view.instance, 999_999);
        assert_eq!(
            &identity[..view.identity_len],
            b" module=fx-a version=1.2.3 sha256=ab12 install=tenant".as_slice()
        );
        slot.release();
        assert_eq!(TABLE[index].instance.load(Ordering::Acquire), 0);
    }

    #[test]
    fn new_records_are_read_once_and_a_torn_tail_waits_for_its_end() {
        let dir = std::env::temp_dir().join(format!("pedestal-crash-read-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let line = |pid: u32| {
            let mut buf = [0u8; 1024];
            let mut line = Line::new(&mut buf);
            let crash = RawCrash {
                pid,
                started_ms: 1,
                time_ms: 2,
                signo: libc::SIGABRT,
                code: -6,
                addr: None,
                pc: 0,
                sp: 0,
                access: None,
                thread: b"pdl-1",
                by: By::Thread,
                instance: 1,
                identity: &record::identity(Some("m"), Some("1.0.0"), "ab", None),
            };
            record::write(&mut line, &crash);
            line.bytes().to_vec()
        };
        let path = dir.join(LOG_FILE);
        fs::write(&path, [line(1), line(2)].concat()).unwrap();
        let mut ledger = Ledger::default();
        let (records, offset, inode) = read_new(&dir, &ledger);
        assert_eq!(records.iter().map(|r| r.pid).collect::<Vec<_>>(), [1, 2]);
        (ledger.offset, ledger.inode) = (offset, inode);
        assert!(read_new(&dir, &ledger).0.is_empty(), "processed records are not read again");

        // A record cut short (its writer died) is not consumed until a newline ends it.
        let third = line(3);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        io::Write::write_all(&mut file, &third[..20]).unwrap();
        let (records, offset, _) = read_new(&dir, &ledger);
        assert!(records.is_empty());
        assert_eq!(offset, ledger.offset);
        io::Write::write_all(&mut file, &line(4)).unwrap();
        let (records, ..) = read_new(&dir, &ledger);
        assert_eq!(records.iter().map(|r| r.pid).collect::<Vec<_>>(), [4]);

        // A rotated file (another inode) is read from its start.
        fs::rename(&path, dir.join(OLD_LOG_FILE)).unwrap();
        fs::write(&path, line(5)).unwrap();
        let (records, ..) = read_new(&dir, &ledger);
        assert_eq!(records.iter().map(|r| r.pid).collect::<Vec<_>>(), [5]);
        assert_eq!(crash_of_process(&dir, 4, None).map(|r| r.pid), Some(4));
        let alive = |secs: u64| Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(crash_of_process(&dir, 4, alive(0)).map(|r| r.pid), Some(4), "alive then");
        assert_eq!(crash_of_process(&dir, 4, alive(1_000_000)), None, "a later process with the same pid");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_range_of_a_loaded_library_holds_its_code() {
        // libc is loaded in every test process; find it through one of its functions.
        let address = libc::write as *const () as usize;
        let base = crate::sys::object_base(address).expect("libc is a shared object");
        let (start, end) = library_range(base).expect("found");
        assert!(start <= address && address < end, "{start:#x}..{end:#x} does not hold {address:#x}");
    }
}

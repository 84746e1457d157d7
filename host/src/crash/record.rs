//! The crash record: one line of `<data-dir>/crashes.log`, written by the signal handler and read
//! back by the next process.
//!
//! ```text
//! pedestal-crash v1 pid=41 started=1764620706123 time=1764620707456 signal=SIGSEGV signo=11 code=1
//!   addr=0x0 pc=0x7f3a12c4 sp=0x7f3a0ff8 access=write hint=null-pointer thread=pdl-3 by=thread
//!   instance=3 module=fx-crashy version=0.1.0 sha256=ab12… install=-
//! ```
//!
//! (one line in the file). Values never contain spaces: module names, versions and hashes are
//! validated at install, and the thread name is sanitized. `-` means unknown. Unknown keys are
//! ignored when reading, so later versions may add fields.
//!
//! The writer ([`Line`]) formats into a caller-provided buffer without allocating or locking, so
//! the signal handler can use it; everything else here runs in ordinary code.

#![deny(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// First word of every record line (a torn line is recovered from its last occurrence).
pub(crate) const MAGIC: &str = "pedestal-crash";
const FORMAT: &str = "v1";

/// How a crash was tied to a module instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum By {
    /// The crashing thread carried an instance thread's `pdl-<n>` name.
    Thread,
    /// The interrupted instruction or the faulting address lies in a loaded module library.
    Address,
    /// Neither: a base thread, or a thread a module renamed that crashed outside its library.
    Unknown,
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            Self::Thread => "thread",
            Self::Address => "address",
            Self::Unknown => "unknown",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "thread" => Self::Thread,
            "address" => Self::Address,
            _ => Self::Unknown,
        }
    }
}

/// What kind of memory access faulted (x86_64 page faults report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    Execute,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Execute => "exec",
        }
    }
}

/// What the handler knows about a crash, as plain numbers and bytes (no allocation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawCrash<'a> {
    pub(crate) pid: u32,
    /// When the crashed process installed the handler (unix milliseconds).
    pub(crate) started_ms: u64,
    pub(crate) time_ms: u64,
    pub(crate) signo: i32,
    pub(crate) code: i32,
    /// The faulting address (for SIGSEGV, SIGBUS, SIGILL and SIGFPE only).
    pub(crate) addr: Option<usize>,
    pub(crate) pc: usize,
    pub(crate) sp: usize,
    pub(crate) access: Option<Access>,
    pub(crate) thread: &'a [u8],
    pub(crate) by: By,
    /// The instance number of the matched slot (0: none).
    pub(crate) instance: u64,
    /// The pre-formatted identity of the matched slot (see [`identity`]), or empty.
    pub(crate) identity: &'a [u8],
}

/// A fixed buffer being filled with one line. Never allocates; text beyond the buffer is cut off
/// (the final newline always fits).
pub(crate) struct Line<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Line<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// The bytes written so far.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn byte(&mut self, b: u8) {
        // The last byte is kept for the newline.
        if self.len + 1 < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn text(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    /// Printable ASCII other than space as is, anything else as `?` (thread names are free text).
    fn sanitized(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            self.byte(b'-');
        }
        for &b in bytes {
            self.byte(if b.is_ascii_graphic() { b } else { b'?' });
        }
    }

    fn decimal(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.text(&digits[i..]);
    }

    fn signed(&mut self, n: i64) {
        if n < 0 {
            self.byte(b'-');
        }
        self.decimal(n.unsigned_abs());
    }

    fn hex(&mut self, n: u64) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.text(b"0x");
        let mut started = false;
        for shift in (0..16).rev() {
            let digit = ((n >> (shift * 4)) & 0xf) as usize;
            if digit != 0 || started || shift == 0 {
                started = true;
                self.byte(DIGITS[digit]);
            }
        }
    }

    fn key(&mut self, key: &[u8]) {
        self.byte(b' ');
        self.text(key);
        self.byte(b'=');
    }

    fn end(&mut self) {
        self.buf[self.len.min(self.buf.len() - 1)] = b'\n';
        self.len = (self.len + 1).min(self.buf.len());
    }
}

/// Formats `crash` as one record line into `line`. Async-signal-safe: no allocation, no locks.
pub(crate) fn write(line: &mut Line<'_>, crash: &RawCrash<'_>) {
    line.text(MAGIC.as_bytes());
    line.byte(b' ');
    line.text(FORMAT.as_bytes());
    line.key(b"pid");
    line.decimal(crash.pid.into());
    line.key(b"started");
    line.decimal(crash.started_ms);
    line.key(b"time");
    line.decimal(crash.time_ms);
    line.key(b"signal");
    line.text(signal_name(crash.signo).as_bytes());
    line.key(b"signo");
    line.signed(crash.signo.into());
    line.key(b"code");
    line.signed(crash.code.into());
    line.key(b"addr");
    match crash.addr {
        Some(addr) => line.hex(addr as u64),
        None => line.byte(b'-'),
    }
    line.key(b"pc");
    line.hex(crash.pc as u64);
    line.key(b"sp");
    line.hex(crash.sp as u64);
    line.key(b"access");
    line.text(crash.access.map_or("-", Access::as_str).as_bytes());
    line.key(b"hint");
    line.text(hint(crash.signo, crash.addr, crash.sp).unwrap_or("-").as_bytes());
    line.key(b"thread");
    line.sanitized(crash.thread);
    line.key(b"by");
    line.text(crash.by.as_str().as_bytes());
    line.key(b"instance");
    line.decimal(crash.instance);
    if crash.identity.is_empty() {
        line.text(b" module=- version=- sha256=- install=-");
    } else {
        line.text(crash.identity);
    }
    line.end();
}

/// The identity part of a record (` module=… version=… sha256=… install=…`), formatted once when
/// an instance registers (and again when its manifest is read), so the handler only copies it.
pub(crate) fn identity(
    module: Option<&str>,
    version: Option<&str>,
    sha256: &str,
    install: Option<&str>,
) -> Vec<u8> {
    let value = |v: Option<&str>| {
        v.filter(|v| !v.is_empty())
            .map(|v| v.chars().map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect::<String>())
            .unwrap_or_else(|| "-".into())
    };
    format!(
        " module={} version={} sha256={} install={}",
        value(module),
        value(version),
        value(Some(sha256)),
        value(install)
    )
    .into_bytes()
}

/// `null-pointer` for a fault in the first page, `stack-overflow` for a SIGSEGV within 64 KiB of
/// the stack pointer (a probable overflow: the guard page sits just below the stack), `abort` for
/// SIGABRT.
pub(crate) fn hint(signo: i32, addr: Option<usize>, sp: usize) -> Option<&'static str> {
    const PAGE: usize = 4096;
    const NEAR_SP: usize = 64 * 1024;
    match (signo, addr) {
        (libc::SIGABRT, _) => Some("abort"),
        (libc::SIGSEGV | libc::SIGBUS, Some(addr)) if addr < PAGE => Some("null-pointer"),
        (libc::SIGSEGV, Some(addr)) if sp != 0 && addr.abs_diff(sp) <= NEAR_SP => Some("stack-overflow"),
        _ => None,
    }
}

/// The name of one of the signals the handler catches.
pub(crate) fn signal_name(signo: i32) -> &'static str {
    match signo {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGABRT => "SIGABRT",
        _ => "SIG?",
    }
}

/// A crash record read back from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashRecord {
    /// The crashed process.
    pub pid: u32,
    /// When that process started (installed its handler), unix milliseconds.
    pub started_ms: u64,
    /// When it crashed, unix milliseconds.
    pub time_ms: u64,
    /// `SIGSEGV`, `SIGABRT`, ...
    pub signal: String,
    /// The signal's number.
    pub signo: i32,
    /// `si_code`.
    pub code: i32,
    /// The faulting address, for memory and instruction faults.
    pub addr: Option<u64>,
    /// The interrupted instruction.
    pub pc: u64,
    /// The interrupted stack pointer.
    pub sp: u64,
    /// `read`, `write` or `exec`, when the fault says.
    pub access: Option<String>,
    /// `null-pointer`, `stack-overflow`, `abort`.
    pub hint: Option<String>,
    /// The crashing thread's name.
    pub thread: String,
    /// `thread`, `address` or `unknown`.
    pub by: String,
    /// The module's name as installed, when known.
    pub module: Option<String>,
    /// Its version, when known.
    pub version: Option<String>,
    /// The artifact.
    pub sha256: Option<String>,
    /// The name it was installed under (`?name=`), if any.
    pub install_name: Option<String>,
}

impl CrashRecord {
    /// Parses one line of the file; `None` for anything that is not a complete record. A line
    /// torn by a process that died while writing, and continued by the next record, is read from
    /// its last record start.
    pub fn parse(line: &str) -> Option<Self> {
        let start = line.rfind(MAGIC)?;
        let mut words = line[start..].split_ascii_whitespace();
        if words.next() != Some(MAGIC) || words.next() != Some(FORMAT) {
            return None;
        }
        let mut fields = std::collections::HashMap::new();
        for word in words {
            let (key, value) = word.split_once('=')?;
            fields.insert(key, value);
        }
        let text = |key: &str| fields.get(key).copied().filter(|v| *v != "-").map(str::to_owned);
        let number = |key: &str| fields.get(key).and_then(|v| v.parse::<u64>().ok());
        let signed = |key: &str| fields.get(key).and_then(|v| v.parse::<i32>().ok());
        let hex =
            |key: &str| fields.get(key).and_then(|v| u64::from_str_radix(v.strip_prefix("0x")?, 16).ok());
        Some(Self {
            pid: u32::try_from(number("pid")?).ok()?,
            started_ms: number("started")?,
            time_ms: number("time")?,
            signal: text("signal")?,
            signo: signed("signo")?,
            code: signed("code").unwrap_or(0),
            addr: hex("addr"),
            pc: hex("pc").unwrap_or(0),
            sp: hex("sp").unwrap_or(0),
            access: text("access"),
            hint: text("hint"),
            thread: text("thread").unwrap_or_default(),
            by: By::parse(fields.get("by").copied().unwrap_or_default()).as_str().to_owned(),
            module: text("module"),
            version: text("version"),
            sha256: text("sha256"),
            install_name: text("install"),
        })
    }

    /// Whether the crash was tied to a module (its artifact is known).
    pub fn is_attributed(&self) -> bool {
        self.by != By::Unknown.as_str() && self.sha256.is_some()
    }

    /// The name the module was installed under: its module name, else the install name.
    pub fn name(&self) -> Option<&str> {
        self.module.as_deref().or(self.install_name.as_deref())
    }

    /// `SIGSEGV (null-pointer write at 0x0)`, `SIGABRT (abort)`, `SIGSEGV (stack overflow at
    /// 0x7f…)`.
    pub fn describe(&self) -> String {
        let addr = self.addr.map(|a| format!("{a:#x}"));
        let what = match (self.hint.as_deref(), addr) {
            (Some("abort"), _) => Some("abort".to_owned()),
            (Some("null-pointer"), Some(addr)) => Some(match self.access.as_deref() {
                Some("write") => format!("null-pointer write at {addr}"),
                Some("read") => format!("null-pointer read at {addr}"),
                _ => format!("null-pointer access at {addr}"),
            }),
            (Some("stack-overflow"), Some(addr)) => Some(format!("stack overflow at {addr}")),
            (_, Some(addr)) => Some(match (self.signo, self.access.as_deref()) {
                (libc::SIGSEGV, Some(access)) => format!("invalid {access} at {addr}"),
                (libc::SIGSEGV, None) => format!("invalid memory access at {addr}"),
                (libc::SIGBUS, _) => format!("bus error at {addr}"),
                (libc::SIGILL, _) => format!("illegal instruction at {addr}"),
                (libc::SIGFPE, _) => format!("arithmetic fault at {addr}"),
                _ => format!("at {addr}"),
            }),
            (_, None) => None,
        };
        match what {
            Some(what) => format!("{} ({what})", self.signal),
            None => self.signal.clone(),
        }
    }

    /// The crash time, RFC 3339.
    pub fn at(&self) -> String {
        rfc3339(self.time_ms)
    }
}

/// Unix milliseconds as RFC 3339.
pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Now, in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Every complete record in `text` (lines that are not records are skipped).
pub(crate) fn parse_all(text: &str) -> Vec<CrashRecord> {
    text.lines().filter_map(CrashRecord::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(crash: &RawCrash<'_>) -> String {
        let mut buf = [0u8; 1024];
        let mut line = Line::new(&mut buf);
        write(&mut line, crash);
        String::from_utf8(line.bytes().to_vec()).unwrap()
    }

    fn crash<'a>(signo: i32, addr: Option<usize>, identity: &'a [u8]) -> RawCrash<'a> {
        RawCrash {
            pid: 4242,
            started_ms: 1_764_620_706_123,
            time_ms: 1_764_620_707_456,
            signo,
            code: 1,
            addr,
            pc: 0x7f3a_12c4,
            sp: 0x7ffd_0000_1000,
            access: Some(Access::Write),
            thread: b"pdl-3",
            by: By::Thread,
            instance: 3,
            identity,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let identity = identity(Some("fx-crashy"), Some("0.1.0"), "ab12", Some("tenant-a"));
        let text = format(&crash(libc::SIGSEGV, Some(0), &identity));
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "{text:?}");
        let record = CrashRecord::parse(&text).expect("parses");
        assert_eq!(
            record,
            CrashRecord {
                pid: 4242,
                started_ms: 1_764_620_706_123,
                time_ms: 1_764_620_707_456,
                signal: "SIGSEGV".into(),
                signo: 11,
                code: 1,
                addr: Some(0),
                pc: 0x7f3a_12c4,
                sp: 0x7ffd_0000_1000,
                access: Some("write".into()),
                hint: Some("null-pointer".into()),
                thread: "pdl-3".into(),
                by: "thread".into(),
                module: Some("fx-crashy".into()),
                version: Some("0.1.0".into()),
                sha256: Some("ab12".into()),
                install_name: Some("tenant-a".into()),
            }
        );
        assert!(record.is_attributed());
        assert_eq!(record.describe(), "SIGSEGV (null-pointer write at 0x0)");
        assert_eq!(record.at(), "2025-12-01T20:25:07.456Z");
    }

    #[test]
    fn unknown_parts_and_odd_thread_names_survive() {
        let mut raw = crash(libc::SIGABRT, None, b"");
        raw.thread = b"my worker\x01";
        raw.by = By::Unknown;
        raw.instance = 0;
        let record = CrashRecord::parse(&format(&raw)).unwrap();
        assert_eq!(record.thread, "my?worker?");
        assert!(!record.is_attributed());
        assert_eq!((record.addr, &record.module, &record.sha256), (None, &None, &None));
        assert_eq!(record.describe(), "SIGABRT (abort)");
    }

    #[test]
    fn a_torn_line_is_read_from_its_last_record_and_junk_is_skipped() {
        let whole = format(&crash(libc::SIGBUS, Some(0x1234_5678), b""));
        let torn = format!("garbage\n{}{}not a record\n", &whole[..40], whole);
        let records = parse_all(&torn);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].describe(), "SIGBUS (bus error at 0x12345678)");
    }

    #[test]
    fn a_long_identity_is_cut_but_the_line_still_ends() {
        let identity = vec![b'x'; 4000];
        let text = format(&crash(libc::SIGILL, Some(0x10_0000), &identity));
        assert_eq!(text.len(), 1024);
        assert!(text.ends_with('\n'));
    }

    fn check(signo: i32, addr: Option<usize>, sp: usize, expected: Option<&str>) {
        assert_eq!(hint(signo, addr, sp), expected, "signal {signo} addr {addr:?} sp {sp:#x}");
    }

    #[test]
    fn hints() {
        check(libc::SIGSEGV, Some(0), 0x7000_0000, Some("null-pointer"));
        check(libc::SIGSEGV, Some(8), 0x7000_0000, Some("null-pointer"));
        check(libc::SIGSEGV, Some(0x7000_0000 - 0x40), 0x7000_0000, Some("stack-overflow"));
        check(libc::SIGSEGV, Some(0x1_0000_0000), 0x7000_0000, None);
        check(libc::SIGBUS, Some(0x7000_0000), 0x7000_0000, None);
        check(libc::SIGABRT, None, 0x7000_0000, Some("abort"));
        check(libc::SIGILL, Some(0x10), 0x7000_0000, None);
    }
}

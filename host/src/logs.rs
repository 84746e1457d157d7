//! Each module's own log: a rotated file under `<data-dir>/logs/`, the recent lines in memory
//! for `?tail=`, and a broadcast of new lines for `?follow=true`.
//!
//! Lines are written by the host callbacks on the module's own threads, tagged from the
//! instance's context token: a module can only ever write to its own log.

use std::{
    collections::VecDeque,
    fs::{self, File},
    io::{BufWriter, Write},
    path::PathBuf,
    str::FromStr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use pedestal_module_api::abi::LogLevel;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::sync::lock;

/// How lines are written to module log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `time LEVEL name@version target: message fields`
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (expected text or json)")),
        }
    }
}

/// One line a module logged.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    /// RFC 3339 time.
    pub at: String,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: &'static str,
    /// The module's name (as installed).
    pub module: String,
    /// The module's version.
    pub version: String,
    /// The module-side target.
    pub target: String,
    /// The message.
    pub message: String,
    /// Other fields, `key=value` separated by spaces.
    pub fields: String,
    #[serde(skip)]
    severity: LogLevel,
}

impl LogLine {
    /// A line stamped now.
    pub fn new(
        level: LogLevel,
        module: &str,
        version: &str,
        target: &str,
        message: &str,
        fields: &str,
    ) -> Self {
        Self {
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            level: level_name(level),
            module: module.to_owned(),
            version: version.to_owned(),
            target: target.to_owned(),
            message: message.to_owned(),
            fields: fields.to_owned(),
            severity: level,
        }
    }

    /// Whether the line is at least as severe as `min`.
    pub fn at_least(&self, min: LogLevel) -> bool {
        self.severity <= min
    }
}

/// Parses `error`, `warn`, `info`, `debug` or `trace`.
pub fn parse_level(level: &str) -> Option<LogLevel> {
    Some(match level.to_ascii_lowercase().as_str() {
        "error" => LogLevel::Error,
        "warn" | "warning" => LogLevel::Warn,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

/// Lines kept in memory for `?tail=`.
pub const RECENT_LINES: usize = 1000;
/// Rotated files kept besides the current one.
const KEEP_ROTATED: usize = 3;

/// One module's log.
#[derive(Debug)]
pub struct ModuleLog {
    path: PathBuf,
    format: LogFormat,
    max_bytes: u64,
    file: Mutex<Option<(BufWriter<File>, u64)>>,
    recent: Mutex<VecDeque<LogLine>>,
    live: broadcast::Sender<LogLine>,
    echo: EchoBucket,
    /// Lines kept off the base's stderr by the echo limit: ever, and since the last report.
    not_echoed: AtomicU64,
    unreported: AtomicU64,
}

/// The token bucket that limits how many of a module's lines the base echoes to its stderr:
/// `per_sec` tokens a second, up to a burst of [`ECHO_BURST_SECONDS`] seconds' worth.
#[derive(Debug)]
struct EchoBucket {
    per_sec: u32,
    /// Tokens left, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

/// The echo limit's burst, in seconds of its rate (200 lines/s: bursts of 1000 lines).
const ECHO_BURST_SECONDS: f64 = 5.0;

impl EchoBucket {
    fn new(per_sec: u32) -> Self {
        Self { per_sec, state: Mutex::new((f64::from(per_sec) * ECHO_BURST_SECONDS, Instant::now())) }
    }

    /// Takes a token at `now`, if one is left (always, without a limit).
    fn take(&self, now: Instant) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let rate = f64::from(self.per_sec);
        let mut state = lock(&self.state);
        let (tokens, counted) = &mut *state;
        *tokens = (*tokens + now.saturating_duration_since(*counted).as_secs_f64() * rate)
            .min(rate * ECHO_BURST_SECONDS);
        *counted = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl ModuleLog {
    /// The log of module `name`, in `dir/<name>.log`, rotated past `max_bytes`.
    pub fn new(dir: PathBuf, name: &str, format: LogFormat, max_bytes: u64) -> Self {
        let (live, _) = broadcast::channel(1024);
        Self {
            path: dir.join(format!("{name}.log")),
            format,
            max_bytes,
            file: Mutex::new(None),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_LINES)),
            live,
            echo: EchoBucket::new(0),
            not_echoed: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    /// Limits the echo of this log's lines on the base's stderr to `per_sec` lines a second
    /// (with a burst of five seconds' worth); `0` echoes every line.
    pub fn with_echo_limit(mut self, per_sec: u32) -> Self {
        self.echo = EchoBucket::new(per_sec);
        self
    }

    /// Whether the next line may be echoed on the base's stderr. The module's own log keeps
    /// every line either way; a line that may not is counted.
    pub fn may_echo(&self) -> bool {
        if self.echo.take(Instant::now()) {
            return true;
        }
        self.not_echoed.fetch_add(1, Ordering::Relaxed);
        self.unreported.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// How many lines the echo limit kept off the base's stderr.
    pub fn not_echoed(&self) -> u64 {
        self.not_echoed.load(Ordering::Relaxed)
    }

    /// How many lines were kept off the base's stderr since the last call.
    pub fn take_unechoed(&self) -> u64 {
        self.unreported.swap(0, Ordering::Relaxed)
    }

    /// The current file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends a line to the file, the recent lines and the followers.
    pub fn write(&self, line: LogLine) {
        let text = match self.format {
            LogFormat::Text => {
                let mut text = format!(
                    "{} {:>5} {}@{} {}: {}",
                    line.at,
                    line.level.to_uppercase(),
                    line.module,
                    line.version,
                    line.target,
                    line.message
                );
                if !line.fields.is_empty() {
                    text.push(' ');
                    text.push_str(&line.fields);
                }
                text
            }
            LogFormat::Json => serde_json::to_string(&line).unwrap_or_default(),
        };
        if let Err(e) = self.append(&text) {
            tracing::warn!(path = %self.path.display(), "cannot write a module log line: {e}");
        }
        {
            let mut recent = lock(&self.recent);
            if recent.len() == RECENT_LINES {
                recent.pop_front();
            }
            recent.push_back(line.clone());
        }
        let _ = self.live.send(line);
    }

    /// The last `n` lines (at most [`RECENT_LINES`]) at least as severe as `min`, oldest first.
    pub fn tail(&self, n: usize, min: LogLevel) -> Vec<LogLine> {
        let recent = lock(&self.recent);
        let mut lines: Vec<LogLine> =
            recent.iter().rev().filter(|l| l.at_least(min)).take(n).cloned().collect();
        lines.reverse();
        lines
    }

    /// New lines as they are written.
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }

    fn append(&self, text: &str) -> std::io::Result<()> {
        let mut file = lock(&self.file);
        if file.as_ref().is_some_and(|(_, written)| *written + text.len() as u64 + 1 > self.max_bytes) {
            if let Some((mut writer, _)) = file.take() {
                writer.flush()?;
            }
            self.rotate()?;
        }
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                crate::private::create_dir(dir)?;
            }
            let opened = crate::private::options().create(true).append(true).open(&self.path)?;
            let written = opened.metadata()?.len();
            *file = Some((BufWriter::new(opened), written));
        }
        let (writer, written) = file.as_mut().expect("opened above");
        writeln!(writer, "{text}")?;
        // Flushed per line: a crash must not lose what a module said last.
        writer.flush()?;
        *written += text.len() as u64 + 1;
        Ok(())
    }

    /// `<name>.log` → `<name>.log.1` → … → `<name>.log.<KEEP_ROTATED>` (the oldest is dropped).
    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = fs::remove_file(numbered(KEEP_ROTATED));
        for n in (1..KEEP_ROTATED).rev() {
            let _ = fs::rename(numbered(n), numbered(n + 1));
        }
        fs::rename(&self.path, numbered(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_keeps_recent_lines_and_filters_by_level() {
        let dir = std::env::temp_dir().join(format!("pedestal-logs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let log = ModuleLog::new(dir.clone(), "m", LogFormat::Text, 200);
        for i in 0..20 {
            let level = if i % 5 == 0 { LogLevel::Warn } else { LogLevel::Info };
            log.write(LogLine::new(level, "m", "1.0.0", "t", &format!("line {i}"), ""));
        }
        assert!(dir.join("m.log.1").exists() && dir.join("m.log").exists());
        assert!(!dir.join("m.log.4").exists(), "keeps at most {KEEP_ROTATED} rotated files");
        let warnings: Vec<_> = log.tail(10, LogLevel::Warn).into_iter().map(|l| l.message).collect();
        assert_eq!(warnings, ["line 0", "line 5", "line 10", "line 15"]);
        assert_eq!(log.tail(2, LogLevel::Trace).last().unwrap().message, "line 19");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_echo_bucket_allows_a_burst_then_its_rate() {
        let bucket = EchoBucket::new(10);
        let start = Instant::now();
        let taken = |at: Instant, tries: usize| (0..tries).filter(|_| bucket.take(at)).count();
        assert_eq!(taken(start, 80), 50, "a burst of five seconds' worth");
        assert_eq!(taken(start + std::time::Duration::from_secs(1), 80), 10, "then ten a second");
        assert_eq!(taken(start + std::time::Duration::from_secs(100), 80), 50, "never more than a burst");
        let unlimited = EchoBucket::new(0);
        assert!((0..10_000).all(|_| unlimited.take(start)));
    }
}

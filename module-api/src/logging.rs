//! Forwards a module's `tracing` events, `log` records and panics to the base.
//!
//! A cdylib has its own copy of `tracing`'s and `log`'s global state, so a module's events never
//! reach the base's subscriber on their own. The SDK installs a small subscriber and logger as
//! the module's globals; each event is formatted on the module side and handed to the base's
//! `log` callback as borrowed strings, which the base re-emits tagged `module` and `version`.

use std::{
    fmt::{self, Write as _},
    panic::PanicHookInfo,
    sync::atomic::{AtomicU64, Ordering},
};

use tracing_core::{
    Event, Level, LevelFilter, Metadata, Subscriber,
    field::{Field, Visit},
    span,
};

use crate::{abi::LogLevel, host};

/// Installs the forwarding subscriber, logger and panic hook. Called once per loaded library.
pub(crate) fn install(max: LogLevel) {
    // Failure means the module set its own global subscriber or logger first: keep theirs.
    let _ = tracing::subscriber::set_global_default(Forwarder { max: level_filter(max) });
    if log::set_logger(&LOG_BRIDGE).is_ok() {
        log::set_max_level(log_filter(max));
    }
    std::panic::set_hook(Box::new(forward_panic));
}

/// Sends one record to the base.
pub(crate) fn forward(level: LogLevel, target: &str, message: &str, fields: &str) {
    if let Some(host) = host::current() {
        host::log(host, level, target, message, fields);
    }
}

fn forward_panic(info: &PanicHookInfo<'_>) {
    let message = panic_message(info.payload());
    let location =
        info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
    if let Some(host) = host::current() {
        host::panicked(host, &message, &location);
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

struct Forwarder {
    max: LevelFilter,
}

impl Subscriber for Forwarder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _span: &span::Attributes<'_>) -> span::Id {
        // Spans are not forwarded yet; ids only need to be unique and non-zero.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        span::Id::from_u64(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut visitor = FieldText::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        forward(level_of(*meta.level()), meta.target(), &visitor.message, &visitor.fields);
    }

    fn enter(&self, _span: &span::Id) {}

    fn exit(&self, _span: &span::Id) {}
}

#[derive(Default)]
struct FieldText {
    message: String,
    fields: String,
}

impl Visit for FieldText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.push(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.push(field, format_args!("{value:?}"));
        }
    }
}

impl FieldText {
    fn push(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={}", field.name(), value);
    }
}

struct LogBridge;

static LOG_BRIDGE: LogBridge = LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = match record.level() {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Trace => LogLevel::Trace,
        };
        let message = record.args().to_string();
        forward(level, record.target(), &message, "");
    }

    fn flush(&self) {}
}

fn level_of(level: Level) -> LogLevel {
    match level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        Level::DEBUG => LogLevel::Debug,
        Level::TRACE => LogLevel::Trace,
    }
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

fn log_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

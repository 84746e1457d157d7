//! Metrics a module defines, exported by the base on its `/metrics` endpoint with the
//! instance's `module` and `version` labels, next to the base's own per-module series.
//!
//! ```ignore
//! use pedestal_module_api::metrics::{Counter, Histogram};
//! let orders = Counter::new("shop_orders_total", "Orders placed")?;
//! orders.inc();
//! Histogram::new("shop_basket_items", "Items per basket")?.record(3.0);
//! ```
//!
//! Recording is one call into the base (no allocation, no lock held by the module). Create a
//! metric once (in the start hook, or lazily) and keep it: creating it again returns the same
//! series.

use crate::{abi::MetricKind, host, wire::SpiError};

fn register(kind: MetricKind, name: &str, help: &str) -> Result<u64, SpiError> {
    let host = host::current()
        .ok_or_else(|| SpiError::new(SpiError::UNAVAILABLE, "not running inside a Pedestal base"))?;
    let registered = host::register_metric(host, kind, name, help).ok_or_else(|| {
        SpiError::new(
            SpiError::UNAVAILABLE,
            "the base is older than interface 1.3.0: it exports no module metrics",
        )
    })?;
    match registered {
        0 => Err(SpiError::new(
            "METRIC_REFUSED",
            format!(
                "the base refused metric {name:?}: not a Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*), \
                 reserved (pedestal_...), or already registered with another kind"
            ),
        )),
        handle => Ok(handle),
    }
}

fn record(handle: u64, value: f64) {
    if let Some(host) = host::current() {
        host::record_metric(host, handle, value);
    }
}

/// A monotonic total.
#[derive(Debug, Clone, Copy)]
pub struct Counter(u64);

impl Counter {
    /// Registers (or finds) counter `name`; `help` is its description.
    pub fn new(name: &str, help: &str) -> Result<Self, SpiError> {
        register(MetricKind::Counter, name, help).map(Self)
    }

    /// Adds one.
    pub fn inc(&self) {
        record(self.0, 1.0);
    }

    /// Adds `value`, rounded to a whole number (counters count whole units; a negative value
    /// is ignored).
    pub fn add(&self, value: f64) {
        record(self.0, value);
    }
}

/// A level that goes up and down.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(u64);

impl Gauge {
    /// Registers (or finds) gauge `name`; `help` is its description.
    pub fn new(name: &str, help: &str) -> Result<Self, SpiError> {
        register(MetricKind::Gauge, name, help).map(Self)
    }

    /// Sets the level.
    pub fn set(&self, value: f64) {
        record(self.0, value);
    }
}

/// A distribution of observations (exported as a summary with quantiles, a sum and a count).
/// A histogram that observes nothing for ten minutes leaves the export until registered again.
#[derive(Debug, Clone, Copy)]
pub struct Histogram(u64);

impl Histogram {
    /// Registers (or finds) histogram `name`; `help` is its description.
    pub fn new(name: &str, help: &str) -> Result<Self, SpiError> {
        register(MetricKind::Histogram, name, help).map(Self)
    }

    /// Records one observation.
    pub fn record(&self, value: f64) {
        record(self.0, value);
    }
}

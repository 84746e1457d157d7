//! What the runtime needs to know of the base's configuration: the timeouts of an instance's
//! start, drain and stop, the level of the module's log, whether requests are counted, and the
//! defaults of its limits. A plain value the base builds from its `Config`
//! (`Config::runtime`), so the runtime never reads the config (which sits above it).

use std::time::Duration;

use pedestal_module_api::abi::LogLevel;

use crate::limits::LimitDefaults;

/// The runtime's settings, copied out of the base's `Config`.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeSettings {
    /// How long a module may take to hand over its manifest, and then to start.
    pub start_timeout: Duration,
    /// How long an uninstall waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How long a stop waits for the module's thread.
    pub stop_timeout: Duration,
    /// The most verbose level a module's log lines are forwarded at.
    pub module_log_level: LogLevel,
    /// Whether requests are counted at the boundary (`--no-request-accounting` turns it off).
    pub request_accounting: bool,
    /// The base's own values for limits nobody else set.
    pub limits: LimitDefaults,
}

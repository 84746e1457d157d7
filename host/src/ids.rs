//! Identities: a module's `name@version`, what makes a valid module name, the stored
//! artifact an instance was loaded from, and an instance's state. A leaf: the runtime, the
//! control layer, the edge and the error type all name modules, artifacts and states the same
//! way.

use std::{fmt, path::PathBuf};

use semver::Version;
use serde::Serialize;

/// A module identity: `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModuleId {
    /// The module's name.
    pub name: String,
    /// The module's own version.
    pub version: Version,
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Whether `name` can name a module (and its mount point `/<name>/`).
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One stored artifact.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Lower-case hex sha256 of the bytes.
    pub sha256: String,
    /// Where the bytes are stored.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The id of the trusted key whose signature of it the base verified (`--trusted-keys`).
    pub signed_by: Option<String>,
}

/// Where an instance is in its life. See ARCHITECTURE.md for the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Loading and checking the library.
    Installing,
    /// Running the module's start hook.
    Starting,
    /// Started and receiving its module's traffic.
    Active,
    /// Started but another version of the module receives the traffic.
    Inactive,
    /// No new traffic; waiting for in-flight requests.
    Draining,
    /// Stop requested; waiting for the module's thread.
    Stopping,
    /// Stopped and unmapped.
    Stopped,
    /// Failed to start; cleaned up and unmapped.
    Broken,
    /// Could not be unloaded; the library (or a thread in it) stays in the process.
    Pinned,
}

impl State {
    /// Whether the instance still occupies its identity.
    pub fn is_live(self) -> bool {
        !matches!(self, Self::Stopped | Self::Broken | Self::Pinned)
    }
}

impl State {
    /// The state's name as the API spells it (`active`, `pinned`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Installing => "installing",
            Self::Starting => "starting",
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Draining => "draining",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Broken => "broken",
            Self::Pinned => "pinned",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    /// The name is the one the API's JSON uses for the state, so an error's text and the
    /// state views agree.
    #[test]
    fn a_state_is_named_as_it_serializes() {
        use State::*;
        for state in [Installing, Starting, Active, Inactive, Draining, Stopping, Stopped, Broken, Pinned] {
            let json = serde_json::to_value(state).unwrap();
            assert_eq!(json.as_str(), Some(state.as_str()));
            assert_eq!(state.to_string(), format!("{state:?}").to_lowercase());
        }
    }
}

//! Identities: a module's `name@version`, what makes a valid module name, and the stored
//! artifact an instance was loaded from. A leaf: the runtime, the control layer and the edge
//! all name modules and artifacts the same way.

use std::{fmt, path::PathBuf};

use semver::Version;

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

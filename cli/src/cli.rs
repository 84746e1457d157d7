//! The `pedestal` binary's subcommands besides `serve` (part of the binary, not the library).
//!
//! - `keygen`, `sign` (`cli/keys.rs`): signing keys and detached signatures of modules.
//! - `install` (`cli/install.rs`): a minimal client of the operations API.

pub mod install;
pub mod keys;

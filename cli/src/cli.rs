//! The `pedestal` binary's subcommands besides `serve` (part of the binary, not the library).
//!
//! - `keygen`, `sign` (`cli/keys.rs`): signing keys and detached signatures of modules.
//! - `install` (`cli/install.rs`) and the operator's commands for one running base
//!   (`cli/ops.rs`: `ls`, `show`, `switch`, `traffic`, `rm`, `retry`, `limits`, `rollback`,
//!   `health`, `spis`, `call`; `cli/logs.rs`: `logs`; `cli/top.rs`: `top`), all clients of its
//!   operations API through `cli/admin.rs` (address, token, `--output`, errors as the API's
//!   `CODE: message`). `cli/answers.rs` reads the API's answers, `cli/views.rs` renders them
//!   with the tables and units of `pedestal_fleet::render`, which `pedestal fleet` prints with
//!   too.

pub mod admin;
mod answers;
pub mod install;
pub mod keys;
pub mod logs;
pub mod ops;
pub mod top;
mod views;

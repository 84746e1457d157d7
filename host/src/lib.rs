//! Pedestal's runtime layer and the leaves under it: what it takes to load, run and unload one
//! module instance (the loader, the host callbacks, the instance's mailboxes and doorbell, the
//! pthread-key table, the crash handler), and the plain pieces everything above shares (the
//! error type, identities, limits, stats, logs, the ELF check, the data directory's file
//! modes).
//!
//! An implementation crate of `pedestal-base`: a custom base depends on `pedestal-base`, which
//! re-exports what it needs from here. Being a crate of its own is what keeps the layers
//! pointing one way: nothing here can name the registry, the services or the HTTP edge, because
//! cargo does not let this crate depend on the one that holds them. The runtime reaches the
//! control layer only through [`calls::ModuleCalls`], a trait it defines.
//!
//! The modules are public so that `pedestal-base` can use them; their API is `pedestal-base`'s
//! business, not a stable one of its own.

// Architecture Invariant: all of the base's `unsafe` lives in this crate, in the glue modules
// allowed below (the ABI glue `loader`, `host`, `tls_keys`; the crash handler `crash`; the system
// glue `sys`), every block with a `// SAFETY:` comment. Every other module is checked by this
// lint, and `pedestal-base` forbids `unsafe` outright.
#![deny(unsafe_code)]

pub mod calls;
#[allow(unsafe_code)]
pub mod crash;
pub mod doorbell;
pub mod elf;
pub mod error;
pub mod health;
#[allow(unsafe_code)]
pub mod host;
pub mod ids;
pub mod instance;
pub mod limits;
#[allow(unsafe_code)]
pub mod loader;
pub mod logs;
pub mod mailbox;
pub mod private;
pub mod settings;
pub mod stats;
pub mod sync;
#[allow(unsafe_code)]
pub mod sys;
#[allow(unsafe_code)]
pub mod tls_keys;

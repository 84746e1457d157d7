//! The one crate both the Pedestal base and its modules link.
//!
//! For **module authors** it is the whole SDK: implement [`Module`] (a router plus optional
//! start and stop hooks) and export it with [`export_module!`]. Ordinary `axum` handlers,
//! `tokio` timers and tasks, and `tracing`/`log` calls work as usual; the SDK runs the module on
//! its own tokio runtime, forwards its logs to the base tagged with the module's name and
//! version, turns panics into `500` responses, and counts its heap.
//!
//! ```no_run
//! use pedestal_module_api::{Module, export_module};
//! use axum::{Router, routing::get};
//!
//! struct Greeter;
//!
//! impl Module for Greeter {
//!     fn router(&self) -> Router {
//!         Router::new().route("/hello", get(|| async { "hello\n" }))
//!     }
//! }
//!
//! export_module!(Greeter);
//! ```
//!
//! Build it as a `cdylib` and deploy it with `cargo xtask deploy`; it answers at
//! `/<package name>/hello`.
//!
//! For **the base**, [`abi`] is the stable interface: the types, the module entry points and the
//! host callbacks, with their ownership and threading rules.

#![deny(missing_docs)]

// The crate's files form layers, each importing only from the layers before it (enforced by
// `tests/layers.rs`): `abi` → `wire`, `alloc` → `host` → `calls`, `service` → the author's
// API (`module`, `spi`, `kv`, `events`, `config`, `metrics`, `logging`) → `runtime` → this
// file, the crate's public face and `export_module!`.
pub mod abi;
mod alloc;
mod calls;
pub mod config;
pub mod events;
mod host;
pub mod kv;
mod logging;
pub mod metrics;
mod module;
mod runtime;
mod service;
pub mod spi;
pub mod wire;

pub use abi::{HealthStatus, HeapCounters, HeapSnapshot, MemoryAction, ModuleLimits};
pub use axum;
pub use module::{Health, Module, StartError};
pub use serde;
pub use serde_json;
pub use spi::{Remote, Spi, SpiError};
pub use tokio;
pub use tracing;
pub use wire::header_views;

/// Exports a [`Module`] from a `cdylib` crate: the only thing a module needs besides its code.
///
/// Takes an expression that builds the module (a unit struct's name is enough) and, optionally,
/// the limits the module declares for itself (its manifest; the base's configuration and
/// operations API can override them), the SPIs it implements and the SPIs it calls (their `id`
/// markers, see [`spi!`]):
///
/// ```ignore
/// export_module!(
///     Search,
///     limits = ModuleLimits::new().max_concurrent_requests(64).request_timeout_ms(500),
///     provides = [ranker_spi::RankerSpi],
///     requires = [tokenizer_spi::TokenizerSpi],
/// );
/// ```
///
/// A module is installed only while a compatible implementation of each SPI it `requires` runs
/// (`SPI_MISSING` otherwise, unless the install is forced), and the base refuses to unload the
/// last implementation of an SPI a running module requires (`MODULE_REQUIRED`, unless forced).
///
/// It installs the counting allocator as the library's global allocator and exports the
/// interface stamp and the root module the base loads. The module's name and version are its
/// Cargo package's.
#[macro_export]
macro_rules! export_module {
    (@stamp $stamp:expr, $module:expr, $limits:expr) => {
        $crate::export_module!(@stamp $stamp, $module, $limits, [], []);
    };
    (@stamp $stamp:expr, $module:expr, $limits:expr, [$($spi:path),*]) => {
        $crate::export_module!(@stamp $stamp, $module, $limits, [$($spi),*], []);
    };
    (@stamp $stamp:expr, $module:expr, $limits:expr, [$($spi:path),*], [$($required:path),*]) => {
        #[global_allocator]
        static __PEDESTAL_ALLOCATOR: $crate::__private::CountingAllocator =
            $crate::__private::CountingAllocator;

        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static pedestal_interface_stamp: $crate::abi::InterfaceStamp = $stamp;

        extern "C" fn __pedestal_run(host: $crate::abi::Host) {
            // Closures, so the module's own type (not `impl Module`) meets the SPI traits.
            $crate::__private::run(host, || $module, |module, spi, method, payload| {
                $(
                    if spi == <$spi as $crate::spi::Spi>::NAME {
                        return <$spi as $crate::spi::Provide<_>>::dispatch(module, method, payload);
                    }
                )*
                let _ = (module, method, payload);
                None
            })
        }

        const __PEDESTAL_PROVIDES: &[$crate::abi::SpiDecl] = &[
            $($crate::abi::SpiDecl::new(<$spi as $crate::spi::Spi>::NAME, <$spi as $crate::spi::Spi>::VERSION)),*
        ];

        const __PEDESTAL_REQUIRES: &[$crate::abi::SpiDecl] = &[
            $($crate::abi::SpiDecl::new(<$required as $crate::spi::Spi>::NAME, <$required as $crate::spi::Spi>::VERSION)),*
        ];

        fn __pedestal_root_module() -> $crate::abi::ModuleRootRef {
            const LIMITS: $crate::ModuleLimits = $limits;
            $crate::__private::root_module(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                __pedestal_run,
                LIMITS,
                __PEDESTAL_PROVIDES,
                __PEDESTAL_REQUIRES,
            )
        }

        extern "C" fn __pedestal_load_root_module() -> $crate::__private::RootModuleResult {
            $crate::__private::call_root_module_loader(__pedestal_root_module)
        }

        /// abi_stable's library header, under the symbol name abi_stable 0.11 looks up.
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __PEDESTAL_LIB_HEADER: $crate::__private::LibHeader =
            $crate::__private::lib_header(__pedestal_load_root_module);
    };
    (
        $module:expr
        $(, limits = $limits:expr)?
        $(, provides = [$($spi:path),* $(,)?])?
        $(, requires = [$($required:path),* $(,)?])?
        $(,)?
    ) => {
        $crate::export_module!(
            @stamp $crate::abi::InterfaceStamp::CURRENT,
            $module,
            $crate::__limits_or_none!($($limits)?),
            [$($($spi),*)?],
            [$($($required),*)?]
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __limits_or_none {
    () => {
        $crate::ModuleLimits::new()
    };
    ($limits:expr) => {
        $limits
    };
}

#[doc(hidden)]
pub mod __private {
    //! Support for [`export_module!`](crate::export_module); not part of the public API.

    pub use abi_stable::library::{LibHeader, RootModuleResult};

    use crate::abi::{Host, ModuleLimits, ModuleRoot, ModuleRootRef, SpiDecl};
    pub use crate::{alloc::CountingAllocator, runtime::run};
    use abi_stable::{
        library::CheckTypeLayout,
        prefix_type::PrefixTypeTrait,
        std_types::{RSlice, RStr},
    };

    /// Builds the library header that points abi_stable at the module's root-module loader.
    pub const fn lib_header(loader: extern "C" fn() -> RootModuleResult) -> LibHeader {
        // SAFETY: `loader` is `__pedestal_load_root_module`, which returns the erased
        // `PrefixRef` of a `ModuleRootRef`, exactly what `from_constructor::<ModuleRootRef>`
        // requires.
        unsafe { LibHeader::from_constructor::<ModuleRootRef>(loader, CheckTypeLayout::Yes) }
    }

    /// Calls the root-module constructor with abi_stable's panic handling.
    pub fn call_root_module_loader(make: fn() -> ModuleRootRef) -> RootModuleResult {
        abi_stable::library::__call_root_module_loader(make)
    }

    /// The root module of a library: its identity, heap counters, run entry point, declared
    /// limits, task counters, and the SPIs it implements and calls.
    pub fn root_module(
        name: &'static str,
        version: &'static str,
        run: extern "C" fn(Host),
        limits: ModuleLimits,
        provides: &'static [SpiDecl],
        requires: &'static [SpiDecl],
    ) -> ModuleRootRef {
        ModuleRoot {
            name: RStr::from_str(name),
            version: RStr::from_str(version),
            heap: &crate::alloc::HEAP,
            run,
            limits,
            tasks: &crate::runtime::TASKS,
            provides: RSlice::from_slice(provides),
            requires: RSlice::from_slice(requires),
        }
        .leak_into_prefix()
    }
}

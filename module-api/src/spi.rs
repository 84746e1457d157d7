//! SPIs: interfaces a base defines and modules implement, declared once with [`spi!`](crate::spi!)
//! in a crate both sides depend on.
//!
//! ```ignore
//! pedestal_module_api::spi! {
//!     /// Ranks documents for a query.
//!     #[spi(name = "ranker", version = "1.1.0", id = RankerSpi)]
//!     pub trait Ranker {
//!         /// Scores the documents.
//!         async fn rank(&self, query: Query) -> Result<Ranked, SpiError>;
//!         /// Added in 1.1.0, with a default: modules built against 1.0.0 still work.
//!         async fn describe(&self) -> Result<String, SpiError> { Ok("a ranker".into()) }
//!     }
//! }
//! ```
//!
//! A module implements the trait and exports it with `export_module!(M, provides = [RankerSpi])`.
//! The base (or another module) calls implementations through `Remote<RankerSpi>`, which
//! implements the same trait. A call is a message: the arguments are serialized (JSON), queued
//! on the implementing module's instance like a request, run on the module's own runtime, and
//! the result comes back the same way. So the module's code never runs on a caller's thread, and
//! a panic or error inside it comes back as an [`SpiError`].
//!
//! **Evolution** within a major version: add methods with a default body, and add struct fields
//! with `#[serde(default)]`. A caller built against the newer declaration calling a module built
//! against the older one gets `UNKNOWN_METHOD` for the new method and runs its default body
//! instead (on the caller's side, through the same remote); an older caller never calls it; and
//! unknown fields are ignored, missing ones take their default.

use std::{fmt, future::Future, pin::Pin, rc::Rc, sync::Arc};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use crate::wire::{SpiError, decode, decode_args, encode};
use crate::{calls, service::Service};

/// An SPI's identity, implemented by the marker type [`spi!`](crate::spi!) generates.
pub trait Spi: 'static {
    /// The SPI's name (unique within a base).
    const NAME: &'static str;
    /// The semver version of this declaration.
    const VERSION: &'static str;
}

/// Modules ask `pedestal.spis` which modules implement an SPI; the base never pushes to it.
pub(crate) const SERVICE: Service = Service::called_only("pedestal.spis");

/// A boxed future that is `Send`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed future that stays on the module's thread.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// How a caller reaches one implementation: the base implements it for module instances.
pub trait Transport: Send + Sync {
    /// Calls `method` of SPI `spi` with serialized arguments; returns the serialized result.
    fn call(
        &self,
        spi: &'static str,
        method: &'static str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, SpiError>>;

    /// Which module (`name@version`) answers, for logs and selectors.
    fn target(&self) -> String;
}

/// A remote implementation of SPI `S`: it implements the SPI's trait by calling the module.
pub struct Remote<S: Spi> {
    transport: Arc<dyn Transport>,
    spi: std::marker::PhantomData<fn() -> S>,
}

impl<S: Spi> Clone for Remote<S> {
    fn clone(&self) -> Self {
        Self { transport: Arc::clone(&self.transport), spi: std::marker::PhantomData }
    }
}

impl<S: Spi> fmt::Debug for Remote<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("spi", &S::NAME).field("target", &self.transport.target()).finish()
    }
}

impl<S: Spi> Remote<S> {
    /// A remote reached through `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self { transport, spi: std::marker::PhantomData }
    }

    /// The implementing module, `name@version`.
    pub fn target(&self) -> String {
        self.transport.target()
    }

    #[doc(hidden)]
    pub async fn __call<R: DeserializeOwned>(
        &self,
        method: &'static str,
        payload: Vec<u8>,
    ) -> Result<R, SpiError> {
        let bytes = self.transport.call(S::NAME, method, payload).await?;
        decode(&bytes)
    }
}

/// Reaches an implementation from inside a module, through the base.
struct HostTransport {
    /// The implementing module's name; empty for the one the base picks.
    target: String,
    /// The version of the declaration this module was built against.
    version: &'static str,
}

impl Transport for HostTransport {
    fn call(
        &self,
        spi: &'static str,
        method: &'static str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, SpiError>> {
        Box::pin(calls::call(spi, self.version, method, &self.target, &payload))
    }

    fn target(&self) -> String {
        if self.target.is_empty() { String::from("(picked by the base)") } else { self.target.clone() }
    }
}

/// From inside a module: the implementation of SPI `S` by module `module` (its active
/// version). The handle is resolved at each call, so it follows upgrades and switches; a call
/// while no compatible version of `module` runs answers `SPI_NOT_IMPLEMENTED` (or
/// `SPI_INCOMPATIBLE`).
pub fn implementation<S: Spi>(module: &str) -> Remote<S> {
    Remote::new(Arc::new(HostTransport { target: module.to_owned(), version: S::VERSION }))
}

/// From inside a module: whichever compatible implementation of SPI `S` the base picks at each
/// call (the first by module name). For an SPI with one implementation.
pub fn any<S: Spi>() -> Remote<S> {
    Remote::new(Arc::new(HostTransport { target: String::new(), version: S::VERSION }))
}

/// One implementation of an SPI, as [`implementations`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Implementor {
    /// The module's name.
    pub module: String,
    /// The active version of the module.
    pub version: String,
    /// The version of the SPI declaration it implements.
    pub spi_version: String,
}

/// From inside a module: every compatible implementation of SPI `S` running now (the active
/// version of each module implementing it), in module-name order.
pub async fn implementations<S: Spi>() -> Result<Vec<(Implementor, Remote<S>)>, SpiError> {
    let query = encode(&(S::NAME, S::VERSION))?;
    let found: Vec<Implementor> = decode(&calls::call(SERVICE.name, "", "implementors", "", &query).await?)?;
    Ok(found.into_iter().map(|i| (i.clone(), implementation::<S>(&i.module))).collect())
}

/// Dispatches calls of SPI `Self` to a module of type `M` that implements it (generated by
/// [`spi!`](crate::spi!)).
pub trait Provide<M>: Spi {
    /// Runs `method` on `module` with the serialized arguments; `None` when the method is
    /// unknown.
    fn dispatch(
        module: Rc<M>,
        method: &str,
        payload: &[u8],
    ) -> Option<LocalBoxFuture<'static, Result<Vec<u8>, SpiError>>>;
}

/// Declares an SPI: the trait, its identity marker, the remote client and the module-side
/// dispatch. See the [module documentation](crate::spi).
#[macro_export]
macro_rules! spi {
    (
        $(#[doc = $doc:expr])*
        #[spi(name = $name:literal, version = $version:literal, id = $id:ident)]
        $vis:vis trait $trait:ident {
            $(
                $(#[doc = $mdoc:expr])*
                async fn $method:ident(&$this:ident $(, $arg:ident : $argty:ty)* $(,)?) -> Result<$ok:ty, $err:ty> $body:tt
            )*
        }
    ) => {
        $(#[doc = $doc])*
        #[allow(async_fn_in_trait)]
        $vis trait $trait: 'static {
            $(
                $crate::__spi_trait_method! { $(#[doc = $mdoc])* $method ($this, $($arg : $argty),*) -> $ok, $err ; $body }
            )*
        }

        #[doc = concat!("The identity of the `", $name, "` SPI (version ", $version, "); `Remote<", stringify!($id), ">` calls it.")]
        #[derive(Debug, Clone, Copy)]
        $vis struct $id;

        impl $crate::spi::Spi for $id {
            const NAME: &'static str = $name;
            const VERSION: &'static str = $version;
        }

        impl $trait for $crate::spi::Remote<$id> {
            $(
                $crate::__spi_remote_method! { $method ($this, $($arg : $argty),*) -> $ok, $err ; $body }
            )*
        }

        impl<M: $trait> $crate::spi::Provide<M> for $id {
            fn dispatch(
                module: ::std::rc::Rc<M>,
                method: &str,
                payload: &[u8],
            ) -> ::std::option::Option<$crate::spi::LocalBoxFuture<'static, ::std::result::Result<::std::vec::Vec<u8>, $crate::spi::SpiError>>> {
                match method {
                    $(
                        stringify!($method) => {
                            let args: ::std::result::Result<($($argty,)*), _> = $crate::spi::decode_args(payload);
                            ::std::option::Option::Some(::std::boxed::Box::pin(async move {
                                let ($($arg,)*) = args?;
                                let value = <M as $trait>::$method(&*module $(, $arg)*).await?;
                                $crate::spi::encode(&value)
                            }))
                        }
                    )*
                    _ => ::std::option::Option::None,
                }
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __spi_trait_method {
    ($(#[doc = $mdoc:expr])* $method:ident ($this:ident, $($arg:ident : $argty:ty),*) -> $ok:ty, $err:ty ; ;) => {
        $(#[doc = $mdoc])*
        async fn $method(&$this $(, $arg: $argty)*) -> ::std::result::Result<$ok, $err>;
    };
    ($(#[doc = $mdoc:expr])* $method:ident ($this:ident, $($arg:ident : $argty:ty),*) -> $ok:ty, $err:ty ; { $($body:tt)* }) => {
        $(#[doc = $mdoc])*
        async fn $method(&$this $(, $arg: $argty)*) -> ::std::result::Result<$ok, $err> {
            $($body)*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __spi_remote_method {
    ($method:ident ($this:ident, $($arg:ident : $argty:ty),*) -> $ok:ty, $err:ty ; ;) => {
        async fn $method(&$this $(, $arg: $argty)*) -> ::std::result::Result<$ok, $err> {
            let payload = $crate::spi::encode(&($(&$arg,)*))?;
            $this.__call(stringify!($method), payload).await
        }
    };
    ($method:ident ($this:ident, $($arg:ident : $argty:ty),*) -> $ok:ty, $err:ty ; { $($body:tt)* }) => {
        async fn $method(&$this $(, $arg: $argty)*) -> ::std::result::Result<$ok, $err> {
            let payload = $crate::spi::encode(&($(&$arg,)*))?;
            match $this.__call(stringify!($method), payload).await {
                // Implemented by a module built against an older declaration: the default body,
                // here, over the same remote.
                ::std::result::Result::Err(e) if e.is_unknown_method() => { $($body)* }
                other => other,
            }
        }
    };
}

//! The module side of one base service, declared where the service's SDK lives.
//!
//! Each service file (`kv.rs`, `events.rs`, `config.rs`, the SPI lookup in `spi.rs`) declares one
//! [`Service`]: its reserved name, the messages the base pushes to it and how to forget what an
//! instance left in the library's statics. `runtime.rs` walks the table of them; adding a
//! service is a file and one line in that table, with no string matching in the runtime.
//!
//! Layer: beside `calls.rs`, below the services that declare themselves with it.

use crate::wire::SpiError;

/// What the SDK knows of one base service.
pub(crate) struct Service {
    /// The reserved name (`pedestal.…`) the service is called and pushed under.
    pub(crate) name: &'static str,
    /// The methods the base pushes to this library under `name`, as SPI calls.
    pub(crate) pushes: &'static [Push],
    /// Forgets what the instance left behind (it is stopping).
    pub(crate) reset: fn(),
}

/// One message the base pushes to a service's module side.
pub(crate) struct Push {
    /// The method's name.
    pub(crate) method: &'static str,
    /// Takes the payload.
    pub(crate) handle: PushHandler,
}

/// Takes a push's payload; an error is answered to the base as a serialized [`SpiError`].
pub(crate) type PushHandler = fn(&[u8]) -> Result<(), SpiError>;

impl Service {
    /// A service the base never pushes to and that keeps nothing per instance.
    pub(crate) const fn called_only(name: &'static str) -> Self {
        Self { name, pushes: &[], reset: || {} }
    }

    /// The handler of push `method`, if this service takes it.
    pub(crate) fn push(&self, method: &str) -> Option<PushHandler> {
        self.pushes.iter().find(|push| push.method == method).map(|push| push.handle)
    }
}

//! The base agent: `pedestal serve --fleet URLS --base-id ID ...` joins a base to a fleet.
//!
//! The agent runs on the base's own runtime, beside its servers, and talks to etcd only:
//!
//! - [`session`]: one etcd session at a time: a 3 s lease kept alive every second, the base's
//!   `bases/<id>` and `status/<id>` keys under it, and watches of `assign/<id>/` and
//!   `endpoints/` (get, then watch from the next revision). A lost lease or a broken watch
//!   ends the session; the next one starts over (new lease, fresh lists), with a backoff of at
//!   most a second. The base serves whatever happens to etcd (fail static).
//! - [`apply`]: reconciles what the assignments want with what the registry runs,
//!   level-triggered (at each change and every second), on blocking threads.
//! - [`artifacts`]: finds the bytes of an assignment (the base's store, peers, controllers,
//!   the assignment's URL) and serves this base's store to peers.
//! - [`forward`]: sends requests for modules this base does not run to a base that does.
//! - [`report`]: what `status/<id>` says.
//! - [`delivery`]: the revision-monotonic desired map (and the chaos layer, a testing aid).
//! - [`logs`]: a module's log on this base, for `fleet logs`.
//!
//! ```no_run
//! # async fn run(join: pedestal_fleet::agent::JoinArgs) -> anyhow::Result<()> {
//! use pedestal_base::{Base, Config};
//!
//! let join = join.resolve()?.expect("--fleet given");
//! let agent = pedestal_fleet::agent::Agent::new(join);
//! let base = agent.prepare(Base::builder(Config::default())).build()?;
//! agent.spawn(std::sync::Arc::clone(base.registry()));
//! base.serve().await
//! # }
//! ```

use std::sync::Arc;

use pedestal_base::{BaseBuilder, Registry};

mod apply;
mod args;
mod artifacts;
mod delivery;
mod forward;
mod logs;
mod report;
mod session;

pub use args::{Join, JoinArgs, JoinError, parse_labels, parse_size};
pub(crate) use logs::LOGS_PATH;

/// The owner the agent marks the modules it applies with ([`Registry::set_owner`]).
pub const OWNER: &str = "fleet";

/// The header a forwarding base adds: its id. A request carrying it is never forwarded again.
pub const FORWARDED_BY: &str = "x-pedestal-forwarded-by";

/// The header every module answer of a fleet base carries: the id of the base that served it.
pub const BASE_HEADER: &str = "x-pedestal-base";

/// A base's agent, before and after it starts.
#[derive(Debug, Clone)]
pub struct Agent {
    join: Arc<Join>,
    endpoints: Arc<forward::EndpointMap>,
}

impl Agent {
    /// An agent for the base `join` describes.
    pub fn new(join: Join) -> Self {
        Self { join: Arc::new(join), endpoints: Arc::default() }
    }

    /// What the agent adds to the base: `GET /.pedestal/artifacts/{sha256}` on the traffic port
    /// (its store, for peers; fleet token required), `GET /.pedestal/logs/{module}` (a module's
    /// log, for the controllers' `fleet logs`; fleet token required), the forwarding of requests for modules it
    /// does not run, and the `x-pedestal-base` header on module answers.
    pub fn prepare(&self, builder: BaseBuilder) -> BaseBuilder {
        let token = self.join.token.clone();
        let logs_token = token.clone();
        let header = http::HeaderValue::from_str(&self.join.base_id).expect("a valid id is a header value");
        builder
            .routes_with(move |registry| artifacts::routes(registry, token))
            .routes_with(move |registry| logs::routes(registry, logs_token))
            .fallback(forward::fallback(Arc::clone(&self.join), Arc::clone(&self.endpoints)))
            .module_header(http::HeaderName::from_static(BASE_HEADER), header)
    }

    /// Starts the agent on the current tokio runtime: it waits until the base has bound its
    /// ports and is ready, then joins the fleet. Never ends on its own.
    pub fn spawn(&self, registry: Arc<Registry>) {
        let (join, endpoints) = (Arc::clone(&self.join), Arc::clone(&self.endpoints));
        // A forwarded request waits for its answer as long as a module may take, plus a margin
        // for the other base's own timeout answer to arrive.
        endpoints.set_response_timeout(registry.config().request_timeout + std::time::Duration::from_secs(5));
        tokio::spawn(session::run(join, endpoints, registry));
    }
}

//! The Pedestal fleet: many bases, one desired state in etcd, a leader-elected scheduler, and
//! modules placed by what they really use.
//!
//! - [`agent`]: `pedestal serve --fleet ...` joins a base to a fleet.
//! - [`controller`]: `pedestal controller ...`, the scheduler and the fleet API.
//! - [`cli`]: `pedestal fleet ...`, the operator's client of a controller; [`render`]: the
//!   tables, colours and units it prints with (the base's own commands use them too).
//! - [`client`]: a blocking client of the fleet API; [`spec`]: the spec file of `apply`.
//! - [`model`] and [`keys`]: what lives in etcd, and where.
//! - [`schedule`]: the pure placement function the leading controller runs; [`autoscale`]: the
//!   pure replica-count decision of autoscaled specs.
//! - [`rollout`]: the pure rollout state machine: which release each placed base runs.

pub mod agent;
pub mod autoscale;
mod chaos;
pub mod cli;
pub mod client;
pub mod controller;
pub mod keys;
pub mod model;
pub mod render;
pub mod rollout;
pub mod schedule;
pub mod spec;
pub mod store;
pub mod token;

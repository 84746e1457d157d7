//! `GET /api/v1/samples`: the recent per-second samples of every live instance (requests/s,
//! 5xx/s, p50/p99, heap, CPU), for the console's charts and `pedestal top`.

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::{Routes, answer, params::Params};
use crate::registry::{InstanceSamples, Registry};

pub(super) fn routes() -> Routes {
    Routes::new().route(routes!(samples))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SampleQuery {
    /// Only this module's instances.
    module: Option<String>,
    /// Only samples taken after this time (milliseconds since the Unix epoch): a poller asks for
    /// what is new since its last answer.
    since_ms: Option<u64>,
}

/// What `GET /api/v1/samples` answers.
#[derive(Serialize, ToSchema)]
struct SamplesView {
    /// How far apart the samples are.
    interval_ms: u64,
    /// How many an instance keeps.
    kept: usize,
    instances: Vec<InstanceSamples>,
}

/// `GET /api/v1/samples[?module=NAME][&since_ms=T]`: every live instance (or one module's), each
/// with its samples oldest first.
#[utoipa::path(get, path = "/api/v1/samples", tag = "samples", operation_id = "list_samples", params(SampleQuery),
    responses((status = 200, description = "Each live instance's recent per-second samples.", body = SamplesView)))]
async fn samples(
    State(registry): State<Arc<Registry>>,
    Params(query): Params<SampleQuery>,
) -> axum::Json<serde_json::Value> {
    let instances = registry.samples(query.module.as_deref(), query.since_ms.unwrap_or(0));
    answer(&SamplesView {
        interval_ms: crate::registry::SAMPLE_INTERVAL_MS,
        kept: crate::registry::SAMPLES_KEPT,
        instances,
    })
}

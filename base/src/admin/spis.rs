//! SPIs: what the base declares and which running modules implement or require what, and calls
//! of an SPI method from the operations API.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, State},
    http::HeaderMap,
};
use pedestal_module_api::SpiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{
    IntoParams, ToSchema,
    openapi::{ObjectBuilder, Type},
};
use utoipa_axum::routes;

use super::{
    Routes, answer,
    gate::require_json,
    json_errors::ErrorBody,
    params::{NoParams, Params},
};
use crate::{error::Error, error_response::Answer, instance::State as InstanceState, registry::Registry};

pub(super) fn routes() -> Routes {
    Routes::new().route(routes!(list_spis)).route(routes!(call_spi))
}

/// `GET /api/v1/spis`.
#[derive(Serialize, ToSchema)]
struct SpiList {
    /// The SPIs the base declares, `name` → version.
    declared: BTreeMap<String, String>,
    /// Per SPI, the running modules that implement it.
    implemented: BTreeMap<String, Vec<Implementation>>,
    /// Per SPI, the running modules that call it.
    required: BTreeMap<String, Vec<Requirement>>,
}

/// A running module implementing an SPI.
#[derive(Serialize, ToSchema)]
struct Implementation {
    module: String,
    spi_version: String,
    active: bool,
}

/// A running module calling an SPI.
#[derive(Serialize, ToSchema)]
struct Requirement {
    module: String,
    spi_version: String,
}

/// `GET /api/v1/spis`: the SPIs the base declares, and which running modules implement what.
#[utoipa::path(get, path = "/api/v1/spis", tag = "spis",
    responses((status = 200, description = "The declared SPIs, and the running modules that implement and require them.", body = SpiList)))]
async fn list_spis(State(registry): State<Arc<Registry>>, _: Params<NoParams>) -> Json<Value> {
    let declared = registry.declared_spis().into_iter().map(|(n, v)| (n, v.to_string())).collect();
    let mut implemented: BTreeMap<String, Vec<Implementation>> = BTreeMap::new();
    let mut required: BTreeMap<String, Vec<Requirement>> = BTreeMap::new();
    for (instance, active) in registry.all() {
        if !matches!(instance.state(), InstanceState::Active | InstanceState::Inactive) {
            continue;
        }
        for (spi, version) in &instance.provides {
            implemented.entry(spi.clone()).or_default().push(Implementation {
                module: instance.id.to_string(),
                spi_version: version.to_string(),
                active,
            });
        }
        for (spi, version) in &instance.requires {
            required
                .entry(spi.clone())
                .or_default()
                .push(Requirement { module: instance.id.to_string(), spi_version: version.to_string() });
        }
    }
    answer(&SpiList { declared, implemented, required })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SpiTarget {
    /// Only this module's implementation (default: every implementation).
    module: Option<String>,
}

/// One implementation's answer to an SPI call: its result, or (in a fan-out) its typed error.
#[derive(Serialize, ToSchema)]
struct SpiAnswer {
    /// `name@version` of the implementation.
    module: String,
    /// The result as JSON (`null` when it is not JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    /// The implementation's typed error (in a fan-out).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = spi_error_schema)]
    error: Option<SpiError>,
}

/// `SpiError`'s schema: the type is `pedestal-module-api`'s, which modules link, so it carries
/// no OpenAPI derive of its own.
fn spi_error_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .property("code", ObjectBuilder::new().schema_type(Type::String).description(Some("A stable code.")))
        .property(
            "message",
            ObjectBuilder::new().schema_type(Type::String).description(Some("What happened.")),
        )
        .required("code")
        .required("message")
}

/// A fan-out's answers, in module order.
#[derive(Serialize, ToSchema)]
struct SpiAnswers {
    results: Vec<SpiAnswer>,
}

/// `POST /api/v1/spis/{spi}/{method}[?module=NAME]` with the arguments as a JSON array: calls
/// the method on one module's implementation, or on every implementation (fan-out, answered in
/// module order). Errors are the SPI's typed errors (`MODULE_GONE`, `SPI_PANICKED`, the
/// implementation's own code...); in a fan-out each implementation's error is in its answer.
#[utoipa::path(post, path = "/api/v1/spis/{spi}/{method}", tag = "spis",
    params(("spi", description = "The SPI's name."), ("method", description = "The method to call."), SpiTarget),
    request_body(content = Vec<Value>, description = "The method's arguments, as a JSON array (none: `[]`)."),
    responses(
        (status = 200, description = "With `module`: that implementation's answer; without: every implementation's, in module order.",
            content((SpiAnswer = "application/json"), (SpiAnswers = "application/json"))),
        (status = 400, description = "`BAD_PAYLOAD`: the arguments or the result do not (de)serialize as the method's types.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: a body that is not `application/json`.", body = ErrorBody),
        (status = 501, description = "`UNKNOWN_METHOD`: the module does not implement that method.", body = ErrorBody),
        (status = 502, description = "`SPI_PANICKED`, or the implementation's own error code.", body = ErrorBody),
        (status = 503, description = "`SPI_NOT_IMPLEMENTED`: no running module implements it; `MODULE_GONE`.", body = ErrorBody),
        (status = 504, description = "`SPI_TIMEOUT`: no answer within the implementation's request timeout.", body = ErrorBody),
    ))]
async fn call_spi(
    State(registry): State<Arc<Registry>>,
    Path((spi, method)): Path<(String, String)>,
    Params(target): Params<SpiTarget>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer<Json<Value>> {
    require_json(&headers, &body)?;
    let payload = if body.is_empty() { b"[]".to_vec() } else { body.to_vec() };
    let mut targets = registry.implementors(&spi);
    if let Some(module) = &target.module {
        targets.retain(|i| &i.id.name == module);
    }
    if targets.is_empty() {
        return Err(Error::Spi(SpiError::new(
            SpiError::NOT_IMPLEMENTED,
            format!(
                "no running module implements {spi}{}",
                target.module.map(|m| format!(" as {m}")).unwrap_or_default()
            ),
        ))
        .into());
    }
    let calls = targets.iter().map(|instance| {
        let (spi, method, payload) = (spi.clone(), method.clone(), payload.clone());
        async move {
            let timeout = instance.limits().request_timeout();
            let outcome = instance.call_spi(spi, method, payload, timeout).await;
            (instance.id.to_string(), outcome)
        }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let decode = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
    if target.module.is_some() {
        let (module, outcome) = outcomes.into_iter().next().expect("one target");
        let result = outcome.map_err(Error::Spi)?;
        return Ok(answer(&SpiAnswer { module, result: Some(decode(&result)), error: None }));
    }
    let results = outcomes
        .into_iter()
        .map(|(module, outcome)| match outcome {
            Ok(result) => SpiAnswer { module, result: Some(decode(&result)), error: None },
            Err(e) => SpiAnswer { module, result: None, error: Some(e) },
        })
        .collect();
    Ok(answer(&SpiAnswers { results }))
}

//! `GET /api/v1/openapi.json`: the operations API as an OpenAPI 3.1 document, generated from the
//! handlers rather than written beside them. Each handler's `#[utoipa::path]` gives its method,
//! path, parameters, body and answers; the views it answers with derive `ToSchema` beside
//! `Serialize` (here and in `pedestal-host`), so a field cannot reach an answer and miss the
//! document. [`Routes`] takes an API route only with its description, and the test below checks
//! that the router and the document name the same (method, path) pairs.
//!
//! What the front door does to every request is added here, once, instead of on each handler:
//! the bearer token (each operation's `security`, asked of the gate's own rule) and the refusals
//! that come before any handler runs.

use std::sync::OnceLock;

use axum::{
    Json,
    body::Body,
    extract::Request,
    http::{Method, StatusCode},
};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, Ref, RefOr, ResponseBuilder,
        path::{Operation, PathItem},
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
    },
};
use utoipa_axum::routes;

use super::{
    Routes, gate,
    json_errors::ErrorBody,
    params::{NoParams, Params},
};

pub(super) fn routes() -> Routes {
    Routes::new().route(routes!(openapi))
}

/// `GET /api/v1/openapi.json`: this document. Behind the token like the routes it describes
/// (ARCHITECTURE.md, "The operations API's document").
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of the operations API.", body = Object)))]
async fn openapi(_: Params<NoParams>) -> Json<&'static OpenApi> {
    Json(document())
}

/// The document, made once from the routes it describes (the router itself is made from its own
/// copy of them, by `admin::router`).
fn document() -> &'static OpenApi {
    static DOCUMENT: OnceLock<OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(|| super::routes().into_document())
}

/// The name of the bearer token's security scheme.
const BEARER: &str = "bearer";

/// The routes' operations as a document: its info, the token's scheme, and on each operation
/// what the front door adds.
pub(super) fn completed(mut document: OpenApi) -> OpenApi {
    document.info = InfoBuilder::new()
        .title("Pedestal operations API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Install, inspect, switch and uninstall the modules of one Pedestal base. Every error \
             is `{code, message, details}` (`ErrorBody`); every operation needs \
             `Authorization: Bearer <token>` unless its `security` says otherwise.",
        ))
        .license(Some(LicenseBuilder::new().name("Apache-2.0").identifier(Some("Apache-2.0")).build()))
        .build();
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The operations token: `--admin-token`, `--admin-token-file`, \
                     `PEDESTAL_ADMIN_TOKEN`, or the one the base generated into \
                     `<data-dir>/admin-token`.",
                ))
                .build(),
        ),
    );
    components.schemas.insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    for (path, item) in &mut document.paths.paths {
        for (method, operation) in operations(item) {
            add_front_door(&method, path, operation);
        }
    }
    document
}

/// The operations of a path, with their methods.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (Method, &mut Operation)> {
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::OPTIONS, &mut item.options),
        (Method::HEAD, &mut item.head),
        (Method::PATCH, &mut item.patch),
        (Method::TRACE, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|operation| (method, operation)))
}

/// What the gate, the query-string parser and the restore guard answer on `method path` before
/// its handler runs, and whether the gate asks for the token there.
fn add_front_door(method: &Method, path: &str, operation: &mut Operation) {
    let open = |metrics_public| {
        let request = Request::builder()
            .method(method)
            .uri(example_path(path))
            .body(Body::empty())
            .expect("a method and a path make a request");
        gate::is_open(&request, metrics_public)
    };
    let bearer = SecurityRequirement::new(BEARER, Vec::<String>::new());
    let needs_token = !open(false);
    operation.security = Some(match (needs_token, open(true)) {
        (false, _) => Vec::new(),
        // Open with `--metrics-public`: the token, or nothing.
        (true, true) => vec![bearer, SecurityRequirement::default()],
        (true, false) => vec![bearer],
    });
    let refusals = [
        (
            StatusCode::BAD_REQUEST,
            "`BAD_REQUEST`: a query parameter the route does not take (`details.unknown_parameters`), \
             or one whose value does not parse.",
        ),
        (
            StatusCode::FORBIDDEN,
            "`HOST_NOT_ALLOWED`: a `Host` the API does not answer to; `CROSS_ORIGIN`: a browser sent \
             it for another site.",
        ),
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "`HEADERS_TOO_LARGE`: header fields over 64 KiB."),
    ];
    let token_refusals = [
        (StatusCode::UNAUTHORIZED, "`UNAUTHORIZED`: no token, or a wrong one."),
        (
            StatusCode::TOO_MANY_REQUESTS,
            "`TOO_MANY_ATTEMPTS`: too many wrong tokens from this client; refused until `Retry-After`.",
        ),
    ];
    let change_refusals = [
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "`UNSUPPORTED_MEDIA_TYPE`: a body typed `text/plain` or as a form.",
        ),
        (StatusCode::SERVICE_UNAVAILABLE, "`NOT_READY`: the base is still restoring its recorded state."),
    ];
    let changes = *method != Method::GET;
    let all = refusals
        .iter()
        .chain(token_refusals.iter().filter(|_| needs_token))
        .chain(change_refusals.iter().filter(|_| changes));
    for (status, description) in all {
        add_refusal(operation, *status, description);
    }
}

/// Adds an error answer to `operation`, or its `description` to the one it already has there.
fn add_refusal(operation: &mut Operation, status: StatusCode, description: &str) {
    let responses = &mut operation.responses.responses;
    match responses.get_mut(status.as_str()) {
        Some(RefOr::T(response)) => response.description = format!("{} {description}", response.description),
        Some(RefOr::Ref(_)) => {}
        None => {
            let body = ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build();
            let response =
                ResponseBuilder::new().description(description).content("application/json", body).build();
            responses.insert(status.as_str().to_owned(), RefOr::T(response));
        }
    }
}

/// A concrete path for a path template: each `{parameter}` by a value of its kind.
pub(super) fn example_path(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some("id") => "0".to_owned(),
            Some("version") => "0.0.0".to_owned(),
            Some("sha256") => "0".repeat(64),
            Some(_) => "openapi-example".to_owned(),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::{body::to_bytes, response::Response};
    use serde_json::Value;
    use tower_service::Service;

    use super::*;
    use crate::{config::Config, registry::Registry};

    /// The methods each path is asked with. Not `HEAD`: axum answers it with the `GET` handler,
    /// and a document lists the `GET`.
    const METHODS: [Method; 7] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
    ];

    /// Whether the router found a route for the request: anything but its own `404` (no route)
    /// and `405` (the route, not with that method).
    async fn routed(response: Response) -> bool {
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap_or_default();
        let no_route = status == StatusCode::NOT_FOUND && json["message"] == "route not found";
        !no_route && status != StatusCode::METHOD_NOT_ALLOWED
    }

    /// Every path the router was given, asked with every method (and a query parameter no route
    /// takes, so no handler acts), reaches a handler exactly when the document has that
    /// operation: the router serves no route the document lacks, and the document names none the
    /// router does not serve. The console's pages are the one exception, each `GET` only and open
    /// without a token.
    #[tokio::test]
    async fn the_document_names_exactly_the_routes_the_router_serves() {
        let data = tempfile::tempdir().unwrap();
        let config = Config { data_dir: data.path().to_owned(), ..Config::default() };
        let routes = super::super::routes();
        let (paths, pages) = (routes.paths.clone(), routes.pages.clone());
        let document = routes.clone().into_document();
        let mut router = routes.into_router().with_state(Registry::new(config).unwrap());

        let mut documented = BTreeSet::new();
        for (path, mut item) in document.paths.paths.clone() {
            for (method, _) in operations(&mut item) {
                documented.insert((method.to_string(), path.clone()));
            }
        }
        let described: BTreeSet<String> = documented.iter().map(|(_, path)| path.clone()).collect();
        assert_eq!(&described | &pages, paths, "every path the router was given is described or a page");
        assert!(described.is_disjoint(&pages), "a page is not described");

        let (mut served, mut served_pages) = (BTreeSet::new(), BTreeSet::new());
        for path in &paths {
            for method in METHODS {
                let uri = format!("{}?openapi_probe=1", example_path(path));
                let request = Request::builder().method(&method).uri(uri).body(Body::empty()).unwrap();
                let response = router.call(request).await.unwrap();
                if routed(response).await {
                    let pair = (method.to_string(), path.clone());
                    if pages.contains(path) {
                        served_pages.insert(pair)
                    } else {
                        served.insert(pair)
                    };
                }
            }
        }
        let undescribed: Vec<_> = served.difference(&documented).collect();
        assert!(undescribed.is_empty(), "served, but not in the document: {undescribed:?}");
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(unserved.is_empty(), "in the document, but not served: {unserved:?}");
        let open_gets: BTreeSet<_> = pages
            .iter()
            .filter(|page| {
                let request = Request::builder().uri(page.as_str()).body(Body::empty()).unwrap();
                gate::is_open(&request, false)
            })
            .map(|page| ("GET".to_owned(), page.clone()))
            .collect();
        assert_eq!(served_pages, open_gets, "a page answers GET only, and without a token");
    }

    #[test]
    fn the_front_door_is_in_the_document() {
        let document = super::super::routes().into_document();
        let operation = |method: &str, path: &str| {
            let item = &document.paths.paths[path];
            let operation = match method {
                "get" => &item.get,
                "post" => &item.post,
                _ => unreachable!(),
            };
            serde_json::to_value(operation.as_ref().unwrap()).unwrap()
        };
        // The gate's rule decides who needs the token.
        assert_eq!(operation("get", "/api/v1/ready")["security"], serde_json::json!([]));
        assert_eq!(operation("get", "/metrics")["security"], serde_json::json!([{"bearer": []}, {}]));
        let install = operation("post", "/api/v1/modules");
        assert_eq!(install["security"], serde_json::json!([{"bearer": []}]));
        for status in ["400", "401", "403", "415", "429", "431", "503"] {
            assert!(install["responses"][status].is_object(), "install answers {status}: {install}");
        }
        // A `GET` changes nothing, so the restore guard never refuses one.
        assert!(operation("get", "/api/v1/modules")["responses"].get("503").is_none());
        assert!(operation("get", "/api/v1/ready")["responses"].get("401").is_none());
    }

    #[test]
    fn example_paths_fill_each_parameter_with_a_value_of_its_kind() {
        assert_eq!(example_path("/api/v1/modules/{name}/{version}"), "/api/v1/modules/openapi-example/0.0.0");
        assert_eq!(example_path("/api/v1/operations/{id}"), "/api/v1/operations/0");
        assert_eq!(example_path("/metrics"), "/metrics");
    }
}

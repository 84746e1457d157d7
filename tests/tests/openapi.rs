//! `GET /api/v1/openapi.json`, fetched from a real base: a structurally valid OpenAPI 3.1
//! document (every `$ref` resolves, every path parameter is declared, every operation has an
//! id, a tag and answers), behind the token like the rest of the API; and every operation it
//! names is served by a handler of the real base, not answered by the router's "no route"
//! `404` or its `405`. That the router serves no route the document lacks is checked in
//! `pedestal-base` (`admin::openapi`), where the router can be asked for every path it has.

use std::collections::BTreeSet;

use pedestal_tests::TestBase;
use serde_json::{Value, json};

/// The methods an OpenAPI path item may hold, as its keys spell them.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn document(base: &TestBase) -> Value {
    let reply = base.admin_get("/api/v1/openapi.json");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.header("content-type").is_some_and(|t| t.starts_with("application/json")));
    reply.json
}

/// Every `(method, path template, operation)` of the document.
fn operations(document: &Value) -> Vec<(&'static str, &str, &Value)> {
    let paths = document["paths"].as_object().expect("paths is an object");
    let mut all = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                all.push((method, path.as_str(), operation));
            }
        }
    }
    all
}

/// Every `$ref` in `value`, with where it was found.
fn references<'a>(value: &'a Value, at: String, found: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => found.push((at.clone(), target)),
                    _ => references(inner, format!("{at}/{key}"), found),
                }
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                references(inner, format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// A concrete path for a template: each `{parameter}` by a value of its kind (a number for an
/// operation id, semver for a version, 64 hex digits for a sha256), naming nothing that exists.
fn example_path(template: &str) -> String {
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

#[test]
fn the_document_is_openapi_3_1_and_every_reference_resolves() {
    let base = TestBase::start();
    let without_token = base.admin_without_token("GET", "/api/v1/openapi.json", &[], None);
    assert_eq!((without_token.status, without_token.code()), (401, "UNAUTHORIZED"));
    let document = document(&base);

    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", document["openapi"]);
    for field in ["title", "version"] {
        assert!(document["info"][field].as_str().is_some_and(|v| !v.is_empty()), "info.{field}");
    }
    let mut references_found = Vec::new();
    references(&document, String::new(), &mut references_found);
    assert!(!references_found.is_empty(), "the views are components, referenced");
    for (at, target) in &references_found {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("{at}: {target} is not local"));
        assert!(document.pointer(pointer).is_some(), "{at}: {target} resolves to nothing");
    }
    let schemes = document["components"]["securitySchemes"].as_object().expect("security schemes");
    assert_eq!(
        (&schemes["bearer"]["type"], &schemes["bearer"]["scheme"]),
        (&json!("http"), &json!("bearer"))
    );

    let operations = operations(&document);
    assert!(operations.len() >= 25, "{} operations", operations.len());
    let mut ids = BTreeSet::new();
    let mut refusals_only = Vec::new();
    for (method, path, operation) in &operations {
        let at = format!("{method} {path}");
        assert!(path.starts_with('/'), "{at}");
        let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{at}: no operationId"));
        assert!(ids.insert(id), "{at}: operationId {id} twice");
        assert!(operation["tags"].as_array().is_some_and(|t| !t.is_empty()), "{at}: no tag");
        let responses = operation["responses"].as_object().unwrap_or_else(|| panic!("{at}: no responses"));
        if !responses.keys().any(|status| status.starts_with('2')) {
            refusals_only.push(at.clone());
        }
        for (status, response) in responses {
            assert!(response["description"].is_string(), "{at} {status}: no description");
            // Readiness answers its `503` with `{"ready": false}`; every other error is the one body.
            let is_error = status.starts_with('4') || status.starts_with('5');
            if is_error && !(*path == "/api/v1/ready" && status == "503") {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/ErrorBody",
                    "{at} {status}: not the error body"
                );
            }
        }
        // Each `{parameter}` of the path is declared, in the path, required.
        let declared: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path" && p["required"] == true)
            .filter_map(|p| p["name"].as_str())
            .collect();
        let in_template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        assert_eq!(declared, in_template, "{at}: path parameters");
        // Every security requirement names a scheme the document defines.
        for requirement in operation["security"].as_array().unwrap_or_else(|| panic!("{at}: no security")) {
            for scheme in requirement.as_object().expect("a requirement is an object").keys() {
                assert!(schemes.contains_key(scheme), "{at}: unknown security scheme {scheme}");
            }
        }
    }
    // Only the uninstall without a version never succeeds: it answers which versions there are.
    assert_eq!(refusals_only, ["delete /api/v1/modules/{name}"]);
    // The gate's rule, as the document states it: only readiness answers without the token.
    let open: Vec<_> = operations
        .iter()
        .filter(|(_, _, operation)| operation["security"] == json!([]))
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    assert_eq!(open, ["get /api/v1/ready"]);
    let error = &document["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], json!(["code", "message", "details"]), "{error}");
}

/// Each operation of the document, sent to a real base with its method and example path
/// parameters, reaches a handler. The request carries a query parameter no route takes, so every
/// handler refuses it (`400 BAD_REQUEST` naming it) before it acts: no `POST` or `DELETE` here
/// changes anything.
#[test]
fn every_operation_the_document_names_is_served() {
    let base = TestBase::start();
    let document = document(&base);
    for (method, path, _) in operations(&document) {
        let uri = format!("{}?openapi_probe=1", example_path(path));
        let reply = base.admin(&method.to_uppercase(), &uri, &[], None);
        let at = format!("{method} {uri}: {} {}", reply.status, reply.body);
        assert!(!(reply.status == 404 && reply.json["message"] == "route not found"), "no route for {at}");
        assert_ne!(reply.status, 405, "no such method for {at}");
        assert_eq!((reply.status, reply.code()), (400, "BAD_REQUEST"), "{at}");
        assert_eq!(reply.json["details"]["unknown_parameters"], json!(["openapi_probe"]), "{at}");
    }
    // Nothing was installed, published or changed.
    let modules = base.admin_get("/api/v1/modules").json;
    assert_eq!(modules["modules"], json!([]), "{modules}");
}

//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::middleware::API_KEY_HEADER;
use super::{extensions, routes, sessions};

/// The API description served at `GET /openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "goose-api", description = "An AI agent daemon behind an HTTP API"),
    paths(
        routes::health,
        routes::ready,
        routes::provider_config,
        routes::config_status,
        routes::config_reload,
        routes::metrics,
        routes::prometheus_metrics,
        sessions::start,
        sessions::reply,
        sessions::summarize,
        sessions::end,
        sessions::list,
        sessions::get,
        sessions::delete,
        sessions::session_reply,
        sessions::cancel,
        extensions::list_names,
        extensions::list,
        extensions::show,
        extensions::add,
        extensions::remove,
        extensions::call_tool,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes, &EdgeResponses),
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(API_KEY_HEADER))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Routes served from memory, without the request timeout. Every other route can time out,
/// so keep this list in step with the router in `http.rs`.
const IN_MEMORY_PATHS: [&str; 8] = [
    "/health",
    "/ready",
    "/provider/config",
    "/metrics",
    "/metrics/prometheus",
    "/extensions/list",
    "/extensions",
    "/extensions/{name}",
];

/// Adds the error responses of the middleware and the extractors to every operation that can
/// return them, so that each handler documents only the errors of its own.
struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            let operations = [&mut item.get, &mut item.post, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                add_edge_responses(path, operation);
            }
        }
    }
}

fn add_edge_responses(path: &str, operation: &mut Operation) {
    let authenticated = operation.security.is_some();
    let has_body = operation.request_body.is_some();
    let has_parameters = operation
        .parameters
        .as_ref()
        .is_some_and(|parameters| !parameters.is_empty());
    let mut edge = Vec::new();
    if authenticated {
        edge.push(("401", "Missing or invalid key"));
        edge.push((
            "429",
            "Over the key's request rate or, for a turn, over a limit on concurrent turns",
        ));
    }
    if has_parameters {
        edge.push(("400", "Invalid path or query parameter"));
    }
    if has_body {
        edge.push(("400", "The body is not valid JSON"));
        edge.push(("413", "The body is larger than limits.max_body_bytes"));
        edge.push(("415", "The body is not declared as application/json"));
        edge.push(("422", "The body does not have the documented shape"));
    }
    if !IN_MEMORY_PATHS.contains(&path) {
        if has_body {
            edge.push((
                "408",
                "The body was incomplete when limits.request_timeout_secs passed",
            ));
        }
        edge.push((
            "503",
            "The handler did not respond within limits.request_timeout_secs",
        ));
    }
    edge.push((
        "500",
        "Internal error. The body names no cause, which the daemon logs with the request id",
    ));
    for (status, description) in edge {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    }
}

fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    let body = Content::new(Some(Ref::from_schema_name("ErrorBody")));
    ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build()
        .into()
}

/// Serves the OpenAPI document.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(path: &str, method: &str) -> serde_json::Value {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        document["paths"][path][method].clone()
    }

    fn statuses(operation: &serde_json::Value) -> Vec<String> {
        operation["responses"]
            .as_object()
            .map(|responses| responses.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn turn_documents_edge_errors() {
        let start = statuses(&operation("/session/start", "post"));
        for status in [
            "200", "400", "401", "408", "413", "415", "422", "429", "500", "503",
        ] {
            assert!(start.contains(&status.to_owned()), "{status} in {start:?}");
        }
    }

    #[test]
    fn in_memory_route_has_no_timeout() {
        let provider = statuses(&operation("/provider/config", "get"));
        assert!(provider.contains(&"401".to_owned()), "{provider:?}");
        assert!(!provider.contains(&"503".to_owned()), "{provider:?}");
        assert!(!provider.contains(&"415".to_owned()), "{provider:?}");
    }

    #[test]
    fn public_route_needs_no_key() {
        let health = statuses(&operation("/health", "get"));
        assert!(!health.contains(&"401".to_owned()), "{health:?}");
    }

    #[test]
    fn session_routes_declare_id_parameter() {
        for (path, method) in [
            ("/sessions/{id}", "get"),
            ("/sessions/{id}", "delete"),
            ("/sessions/{id}/reply", "post"),
            ("/sessions/{id}/cancel", "post"),
        ] {
            let parameters = operation(path, method)["parameters"].clone();
            let declared = parameters.as_array().is_some_and(|parameters| {
                parameters
                    .iter()
                    .any(|parameter| parameter["name"] == "id" && parameter["in"] == "path")
            });
            assert!(declared, "{method} {path}: {parameters}");
        }
    }
}

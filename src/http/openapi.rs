//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    modifiers(&SecuritySchemes),
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

/// Serves the OpenAPI document.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

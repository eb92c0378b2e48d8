//! Handlers of the extension routes: list, status, add, remove and direct tool calls.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, CurrentConfig};
use crate::config::ExtensionConfig;
use crate::extensions::{ChangeError, DefinitionProblem, ExtensionStatus};
use crate::tools::{ToolError, ToolOutput, ToolSource};

/// Body of `GET /extensions/list`, the original goose-api shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExtensionNames {
    /// Names of the enabled extensions, sorted.
    pub extensions: Vec<String>,
}

/// Names of the enabled extensions.
#[utoipa::path(get, path = "/extensions/list", tag = "extensions",
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Extension names", body = ExtensionNames),
        (status = 401, description = "Missing or invalid key", body = ErrorBody)))]
pub async fn list_names(State(state): State<AppState>) -> Json<ExtensionNames> {
    Json(ExtensionNames {
        extensions: state.extensions.names(),
    })
}

/// Body of `GET /extensions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExtensionList {
    /// Every defined extension, sorted by name.
    pub extensions: Vec<ExtensionStatus>,
    /// Broken manifests and names defined twice.
    pub problems: Vec<DefinitionProblem>,
}

/// State, tools, restarts and last error of every extension.
#[utoipa::path(get, path = "/extensions", tag = "extensions",
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Extension statuses", body = ExtensionList),
        (status = 401, description = "Missing or invalid key", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Json<ExtensionList> {
    Json(ExtensionList {
        extensions: state.extensions.statuses(),
        problems: state.extensions.problems(),
    })
}

/// State, tools, restarts, last error and stderr tail of one extension.
#[utoipa::path(get, path = "/extensions/{name}", tag = "extensions",
    security(("api_key" = []), ("bearer" = [])),
    params(("name" = String, Path, description = "Extension name")),
    responses(
        (status = 200, description = "Extension status", body = ExtensionStatus),
        (status = 404, description = "No such extension", body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ExtensionStatus>, ApiError> {
    state
        .extensions
        .status(&name)
        .map(Json)
        .ok_or_else(|| not_found(&name))
}

/// Body of `POST /extensions/add`: the original tagged body, an extension definition with
/// its `name`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddRequest {
    /// Extension name.
    pub name: String,
    /// The definition, with the keys of `extensions.<name>`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

/// Body of a successful add or remove, the original goose-api shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExtensionResponse {
    /// Always false on success; failures use the error body.
    pub error: bool,
    /// What was done.
    pub message: String,
}

/// Adds an extension by writing its manifest into the extensions directory. Admin only,
/// and only with `extensions_allow_api_changes: true`.
#[utoipa::path(post, path = "/extensions/add", tag = "extensions",
    security(("api_key" = []), ("bearer" = [])),
    request_body(content = AddRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Manifest written; the server is starting", body = ExtensionResponse),
        (status = 403, description = "Not an admin key, or API changes are off", body = ErrorBody),
        (status = 409, description = "The name exists", body = ErrorBody),
        (status = 422, description = "Invalid definition", body = ErrorBody)))]
pub async fn add(
    State(state): State<AppState>,
    _: ApiChangesAllowed,
    ApiJson(request): ApiJson<AddRequest>,
) -> Result<Json<ExtensionResponse>, ApiError> {
    let config = parse_definition(&request.name, request.config)?;
    let path = state
        .extensions
        .add(&request.name, config)
        .await
        .map_err(change_error)?;
    Ok(Json(ExtensionResponse {
        error: false,
        message: format!(
            "extension {} added as {}; GET /extensions/{} shows its state",
            request.name,
            path.display(),
            request.name
        ),
    }))
}

/// Removes an extension added through the API or the directory by deleting its manifest.
/// The body is the name as a JSON string. Admin only, and only with
/// `extensions_allow_api_changes: true`.
#[utoipa::path(post, path = "/extensions/remove", tag = "extensions",
    security(("api_key" = []), ("bearer" = [])),
    request_body(content = String, content_type = "application/json"),
    responses(
        (status = 200, description = "Removed and stopped", body = ExtensionResponse),
        (status = 403, description = "Not an admin key, or API changes are off", body = ErrorBody),
        (status = 404, description = "No such extension", body = ErrorBody),
        (status = 409, description = "Defined in the config file", body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    _: ApiChangesAllowed,
    ApiJson(name): ApiJson<String>,
) -> Result<Json<ExtensionResponse>, ApiError> {
    state.extensions.remove(&name).await.map_err(change_error)?;
    Ok(Json(ExtensionResponse {
        error: false,
        message: format!("extension {name} removed and stopped"),
    }))
}

/// Calls one tool with a JSON object of arguments and returns its result, so the daemon
/// serves as an authenticated MCP-to-REST gateway.
#[utoipa::path(post, path = "/extensions/{name}/tools/{tool}", tag = "extensions",
    security(("api_key" = []), ("bearer" = [])),
    params(
        ("name" = String, Path, description = "Extension name"),
        ("tool" = String, Path, description = "Tool name within the extension")),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, description = "The tool's result: `content`, a list of parts tagged `type` \
            (text, image or resource), and `is_error`, set when the tool reported a failure", body = Object),
        (status = 404, description = "No such extension or tool", body = ErrorBody),
        (status = 422, description = "Invalid arguments", body = ErrorBody),
        (status = 502, description = "The server failed the call", body = ErrorBody),
        (status = 503, description = "The extension is not running", body = ErrorBody),
        (status = 504, description = "The call exceeded the extension's timeout", body = ErrorBody)))]
pub async fn call_tool(
    State(state): State<AppState>,
    ApiPath((name, tool)): ApiPath<(String, String)>,
    ApiJson(arguments): ApiJson<serde_json::Value>,
) -> Result<Json<ToolOutput>, ApiError> {
    // Dropping this handler's future, when the client disconnects, drops the call, which
    // cancels it on the server.
    let output = state
        .extensions
        .call(&name, &tool, arguments, CancellationToken::new())
        .await
        .map_err(tool_error)?;
    Ok(Json(output))
}

/// Evidence that `extensions_allow_api_changes` is on in the request's config snapshot.
/// Handlers take it before the body, so with API changes off an admin request gets 403
/// before its body is read or parsed. The guard's check of a declared `Content-Length`
/// against `limits.max_body_bytes` still comes first.
#[derive(Debug)]
pub struct ApiChangesAllowed;

impl<S: Send + Sync> FromRequestParts<S> for ApiChangesAllowed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let CurrentConfig(snapshot) = CurrentConfig::from_request_parts(parts, state).await?;
        require_api_changes(snapshot.config.extensions_allow_api_changes)?;
        Ok(Self)
    }
}

fn require_api_changes(allowed: bool) -> Result<(), ApiError> {
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "adding and removing extensions through the API is off; set \
             extensions_allow_api_changes: true in the config, or edit the extensions \
             directory"
                .to_owned(),
        ))
    }
}

fn parse_definition(name: &str, value: serde_json::Value) -> Result<ExtensionConfig, ApiError> {
    crate::extensions::manifest::decode(value).map_err(|problems| {
        let items: Vec<String> = problems.iter().map(ToString::to_string).collect();
        ApiError::Unprocessable {
            message: format!("invalid extension {name}: {}", items.join("; ")),
            code: "invalid_extension",
        }
    })
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "extension {name} not found; GET /extensions/list shows the names"
    ))
}

fn change_error(error: ChangeError) -> ApiError {
    match error {
        ChangeError::Invalid { .. } => ApiError::Unprocessable {
            message: error.to_string(),
            code: "invalid_extension",
        },
        ChangeError::Exists { .. } | ChangeError::InConfig(_) => {
            ApiError::Conflict(error.to_string())
        }
        ChangeError::NotFound(name) => not_found(&name),
        ChangeError::Io { .. } => ApiError::Internal(anyhow::Error::new(error)),
    }
}

fn tool_error(error: ToolError) -> ApiError {
    let message = error.to_string();
    match error {
        ToolError::NotFound { .. } => ApiError::NotFound(format!(
            "{message}; GET /extensions/{{name}} lists the tools of a running extension"
        )),
        ToolError::Unavailable { .. } => ApiError::Unavailable(message),
        ToolError::TimedOut { .. } => ApiError::GatewayTimeout(format!(
            "{message}; raise the extension's timeout if the tool needs longer"
        )),
        ToolError::Cancelled => ApiError::Unavailable(message),
        ToolError::InvalidArguments(_) => ApiError::Unprocessable {
            message,
            code: "invalid_arguments",
        },
        ToolError::Failed(_) => ApiError::BadGateway(message),
    }
}

//! Handlers of the daemon's own routes: health, readiness, provider and config status.

use axum::Json;
use axum::extract::State;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{CurrentConfig, OptionalJson};
use crate::config::{PendingRestart, ReloadOutcome};

/// Body of `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// Always `"ok"` while the process serves HTTP.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// goose-api version.
    pub version: &'static str,
}

/// Liveness: answers while the process can serve HTTP.
#[utoipa::path(get, path = "/health", tag = "daemon",
    responses((status = 200, description = "The process is alive", body = HealthResponse)))]
pub async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Body of `GET /ready` when ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyResponse {
    /// Always `"ready"`.
    #[schema(example = "ready")]
    pub status: &'static str,
}

/// Readiness: 503 until start-up is done and again once shutdown begins.
#[utoipa::path(get, path = "/ready", tag = "daemon", responses(
    (status = 200, description = "Accepting work", body = ReadyResponse),
    (status = 503, description = "Starting or shutting down", body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<ReadyResponse>, ApiError> {
    match state.readiness.not_ready_reason() {
        None => Ok(Json(ReadyResponse { status: "ready" })),
        Some(reason) => Err(ApiError::Unavailable(reason.to_owned())),
    }
}

/// Body of `GET /provider/config`, as in the original goose-api.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderConfigResponse {
    /// Provider name.
    #[schema(example = "openai")]
    pub provider: String,
    /// Model name.
    #[schema(example = "gpt-4o")]
    pub model: String,
}

/// The provider and model that the next turn will use. Never includes a credential.
#[utoipa::path(get, path = "/provider/config", tag = "provider",
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Current provider", body = ProviderConfigResponse),
        (status = 401, description = "Missing or invalid key", body = ErrorBody)))]
pub async fn provider_config(CurrentConfig(snapshot): CurrentConfig) -> Response {
    /// [`ProviderConfigResponse`] borrowed from the snapshot, so the hot route copies no
    /// string before serializing.
    #[derive(Serialize)]
    struct Borrowed<'a> {
        provider: &'a str,
        model: &'a str,
    }
    let config = &snapshot.config;
    Json(Borrowed {
        provider: &config.provider,
        model: &config.model,
    })
    .into_response()
}

/// Body of `GET /config/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigStatusResponse {
    /// Generation of the config in use; grows by one per applied reload.
    pub generation: u64,
    /// Config file in use, or null when running on defaults and environment.
    pub file: Option<String>,
    /// When the config in use was loaded, RFC 3339.
    pub loaded_at: String,
    /// Problems of the last rejected edit; null once a valid edit is applied.
    pub last_reload_error: Option<Vec<String>>,
    /// When the last rejected edit was seen, RFC 3339.
    pub last_reload_error_at: Option<String>,
    /// Settings changed in the file that keep their running value until a restart.
    #[schema(value_type = Vec<Object>)]
    pub restart_required: Vec<PendingRestart>,
    /// Reloads applied since start.
    pub reloads_applied: u64,
    /// Reloads rejected since start.
    pub reloads_rejected: u64,
}

/// Config generation, file, last reload error and settings awaiting a restart. Admin only.
#[utoipa::path(get, path = "/config/status", tag = "config",
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Reload status", body = ConfigStatusResponse),
        (status = 401, description = "Missing or invalid key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody)))]
pub async fn config_status(
    State(state): State<AppState>,
    CurrentConfig(snapshot): CurrentConfig,
) -> Json<ConfigStatusResponse> {
    let status = state.config.status();
    Json(ConfigStatusResponse {
        generation: snapshot.generation,
        file: snapshot
            .file
            .as_ref()
            .map(|path| path.display().to_string()),
        loaded_at: humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
        last_reload_error: status.last_error,
        last_reload_error_at: status
            .last_error_at
            .map(|at| humantime::format_rfc3339_seconds(at).to_string()),
        restart_required: status.restart_required,
        reloads_applied: status.applied,
        reloads_rejected: status.rejected,
    })
}

/// Body of `POST /config/reload`; may be omitted.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// Re-read and apply the file even when its content is unchanged.
    #[serde(default)]
    pub force: bool,
}

/// Body of a successful `POST /config/reload`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadResponse {
    /// `applied`, `unchanged`, `no_file` or `empty`.
    #[schema(example = "applied")]
    pub outcome: &'static str,
    /// Generation serving after the reload.
    pub generation: u64,
}

/// Re-reads the config file now, as SIGHUP does. Admin only.
#[utoipa::path(post, path = "/config/reload", tag = "config",
    security(("api_key" = []), ("bearer" = [])),
    request_body(content = Option<ReloadRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "Reload outcome", body = ReloadResponse),
        (status = 422, description = "The file is invalid; the old config stays", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody)))]
pub async fn config_reload(
    State(state): State<AppState>,
    OptionalJson(request): OptionalJson<ReloadRequest>,
) -> Result<Json<ReloadResponse>, ApiError> {
    let force = request.unwrap_or_default().force;
    let handle = state.config.clone();
    let outcome = tokio::task::spawn_blocking(move || handle.reload(force))
        .await
        .map_err(|error| ApiError::Internal(error.into()))?;
    let label = match outcome {
        ReloadOutcome::Applied { .. } => "applied",
        // The file is the one the last attempt rejected, so its problems still stand.
        ReloadOutcome::Unchanged => match state.config.status().last_error {
            Some(problems) => return Err(invalid_config(&problems)),
            None => "unchanged",
        },
        ReloadOutcome::NoFile => "no_file",
        ReloadOutcome::Empty => "empty",
        ReloadOutcome::Rejected(problems) => {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(invalid_config(&list));
        }
    };
    Ok(Json(ReloadResponse {
        outcome: label,
        generation: state.config.current().generation,
    }))
}

fn invalid_config(problems: &[String]) -> ApiError {
    ApiError::Unprocessable {
        message: format!(
            "the config file is invalid and the previous config stays in use: {}",
            problems.join("; ")
        ),
        code: "invalid_config",
    }
}

/// Fallback for paths no route matches.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {}; GET /openapi.json lists the routes",
        uri.path()
    ))
}

/// Fallback for a known path with a method it does not accept.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Body of `GET /metrics`, in the original goose-api shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsResponse {
    /// Stored message count of each live session the caller may see.
    pub session_messages: std::collections::HashMap<String, i64>,
    /// Sessions with live state.
    pub active_sessions: usize,
    /// Tool calls in flight, by extension.
    pub pending_requests: std::collections::HashMap<String, u64>,
}

/// Live sessions and pending tool calls, in the original goose-api shape.
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = MetricsResponse)))]
pub async fn metrics(
    State(state): State<AppState>,
    caller: crate::config::Caller,
) -> Json<MetricsResponse> {
    let (active_sessions, _) = state.sessions.live_counts();
    Json(MetricsResponse {
        session_messages: state.sessions.live_message_counts(&caller),
        active_sessions,
        pending_requests: state.tools.pending(),
    })
}

/// Every metric in the Prometheus text format.
#[utoipa::path(get, path = "/metrics/prometheus", tag = "daemon",
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn prometheus_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = &state.metrics;
    let (live, _running) = state.sessions.live_counts();
    metrics
        .live_sessions
        .set(i64::try_from(live).unwrap_or(i64::MAX));
    let status = state.config.status();
    metrics.set_reload_totals(status.applied, status.rejected);
    metrics.extensions.reset();
    for state_name in ["starting", "running", "failed", "stopped"] {
        metrics.extensions.with_label_values(&[state_name]).set(0);
    }
    for extension in state.extensions.statuses() {
        let label = format!("{:?}", extension.state).to_lowercase();
        metrics
            .extensions
            .with_label_values(&[label.as_str()])
            .inc();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

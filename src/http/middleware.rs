//! Request middleware: config snapshot, authentication, body limit, timeout, error logging.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;
use tracing::Instrument;

use super::AppState;
use super::error::{ApiError, InternalCause};
use crate::config::{Caller, Role, Snapshot};

/// Header that carries the API key, as in the original goose-api.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Header that carries the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Maximum length of a client request id; a longer one is replaced by a new UUID.
const MAX_REQUEST_ID_LENGTH: usize = 128;

/// Rejects requests without a valid key with 401, attaches the [`Caller`], and applies the
/// key's request rate. One middleware does both, because each layer costs a boxed future.
pub async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let snapshot = snapshot_of(&req)?;
    let caller = presented_key(req.headers())
        .and_then(|key| snapshot.keys.authenticate(key))
        .ok_or(ApiError::Unauthorized)?;
    tracing::debug!(key_name = %caller.name, "authenticated");
    req.extensions_mut().insert(caller.clone());
    Ok(super::rate_limit::run_within_rate(&state, &snapshot, &caller, req, next).await)
}

/// Rejects callers whose key is not an admin key with 403. Runs after [`authenticate`].
pub async fn require_admin(caller: Caller, req: Request, next: Next) -> Result<Response, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "this route needs an admin key, and key {:?} has the user role",
            caller.name
        )));
    }
    Ok(next.run(req).await)
}

/// Returns the key from `x-api-key`, else from `Authorization: Bearer`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(API_KEY_HEADER) {
        return value.to_str().ok().map(str::trim);
    }
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Enforces `limits.max_body_bytes`: a declared length over it fails at once with 413, and
/// the body is wrapped so that reading past the limit fails too.
pub async fn limit_body(req: Request, next: Next) -> Result<Response, ApiError> {
    let limit = snapshot_of(&req)?.config.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let capped = usize::try_from(limit).unwrap_or(usize::MAX);
    let req = req.map(|body| Body::new(Limited::new(body, capped)));
    Ok(next.run(req).await)
}

/// Fails a handler that has not produced a response within `limits.request_timeout_secs`.
///
/// Only the time to the response head counts, so a streaming body is not cut off.
pub async fn time_limit(req: Request, next: Next) -> Result<Response, ApiError> {
    let secs = snapshot_of(&req)?.config.limits.request_timeout_secs;
    tokio::time::timeout(Duration::from_secs(secs), next.run(req))
        .await
        .map_err(|_| ApiError::Timeout { secs })
}

/// Runs the per-request edge work in one layer, because each layer costs a boxed future.
///
/// It assigns the request id (the client's `x-request-id`, or a new UUID) and echoes it on
/// the response, and attaches the current config snapshot. It runs the request in a span
/// named by its matched route and records it in the metrics. It logs our own failures at
/// error level, upstream failures at warn level and everything else at debug level.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = request_id_of(&req);
    req.headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.clone());
    req.extensions_mut().insert(state.config.current());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let id_text = request_id.to_str().unwrap_or("-");
    let span = tracing::debug_span!("request", %method, route, request_id = id_text);
    let started = std::time::Instant::now();
    let mut response = next.run(req).instrument(span).await;
    let elapsed = started.elapsed();
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, request_id.clone());
    let status = response.status();
    let metrics = &state.metrics;
    metrics
        .http_requests
        .with_label_values(&[route, method.as_str(), status.as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let cause = response.extensions_mut().remove::<InternalCause>();
    let cause = cause
        .map(|cause| cause.0.to_string())
        .or_else(|| (status == StatusCode::INTERNAL_SERVER_ERROR).then(|| status.to_string()));
    if let Some(cause) = cause {
        tracing::error!(
            request_id = id_text,
            %method,
            route,
            status = status.as_u16(),
            error = %cause,
            "request failed"
        );
    } else if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        // An upstream failure (502, 504) is the provider's or an extension's, not ours.
        tracing::warn!(
            request_id = id_text,
            %method,
            route,
            status = status.as_u16(),
            "request failed upstream"
        );
    } else {
        tracing::debug!(
            request_id = id_text,
            %method,
            route,
            status = status.as_u16(),
            latency_ms,
            "request finished"
        );
    }
    response
}

/// Returns the client's request id if it is a short printable value, else a new UUID.
fn request_id_of(req: &Request) -> HeaderValue {
    let given = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|value| value.len() <= MAX_REQUEST_ID_LENGTH && value.to_str().is_ok());
    match given {
        Some(value) => value.clone(),
        None => {
            let id = uuid::Uuid::new_v4();
            let mut buffer = uuid::Uuid::encode_buffer();
            HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer))
                .unwrap_or_else(|_| HeaderValue::from_static("-"))
        }
    }
}

/// Turns a panic in a handler into a 500 whose cause is logged by [`observe`].
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    ApiError::Internal(anyhow::anyhow!("handler panicked: {detail}")).into_response()
}

fn snapshot_of(req: &Request) -> Result<Arc<Snapshot>, ApiError> {
    req.extensions()
        .get::<Arc<Snapshot>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("config snapshot layer missing")))
}

//! The per-key request rate, checked after authentication on every route that needs a key.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::config::{Caller, Snapshot};
use crate::limits::RateDecision;

/// The key's requests per minute.
pub const LIMIT_HEADER: &str = "x-ratelimit-limit";
/// Requests the key may send right now.
pub const REMAINING_HEADER: &str = "x-ratelimit-remaining";
/// Seconds until the key may send a full burst again.
pub const RESET_HEADER: &str = "x-ratelimit-reset";

/// Counts the request against its key's rate from the current snapshot. Over the rate it
/// returns 429 with `Retry-After`. When the key has a rate, every response carries the
/// `X-RateLimit-*` headers.
/// Runs the request if `caller` is within its request rate, else answers 429; either way
/// the response carries the rate-limit headers. Keys without a rate run unchanged.
pub async fn run_within_rate(
    state: &AppState,
    snapshot: &Snapshot,
    caller: &Caller,
    req: Request,
    next: Next,
) -> Response {
    let limits = snapshot.config.key_limits(&caller.name);
    let Some(per_minute) = limits.requests_per_minute else {
        return next.run(req).await;
    };
    let burst = limits.burst.unwrap_or(per_minute);
    let decision = state.rate_limits.check(&caller.name, per_minute, burst);
    let mut response = if decision.allowed {
        next.run(req).await
    } else {
        state
            .metrics
            .limit_rejections
            .with_label_values(&[caller.name.as_str(), "rate"])
            .inc();
        tracing::debug!(key_name = %caller.name, per_minute, burst, "request over the rate limit");
        ApiError::TooManyRequests {
            message: format!(
                "key {:?} sent more than its {per_minute} requests per minute (burst {burst}); \
                 retry after {} s or raise requests_per_minute of this key in api_keys, or \
                 limits.requests_per_minute",
                caller.name, decision.retry_after_secs
            ),
            retry_after_secs: Some(decision.retry_after_secs),
        }
        .into_response()
    };
    set_headers(response.headers_mut(), &decision);
    response
}

fn set_headers(headers: &mut HeaderMap, decision: &RateDecision) {
    let values = [
        (LIMIT_HEADER, u64::from(decision.limit)),
        (REMAINING_HEADER, u64::from(decision.remaining)),
        (RESET_HEADER, decision.reset_secs),
    ];
    for (name, value) in values {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
}

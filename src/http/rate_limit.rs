//! The per-key request rate, checked after authentication on every route that needs a key.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
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

/// Counts the request against its key's rate from `snapshot`. Returns `None` when the key
/// has no rate, so its responses carry no rate-limit headers.
pub fn decide(state: &AppState, snapshot: &Snapshot, caller: &Caller) -> Option<RateDecision> {
    let limits = snapshot.config.key_limits(&caller.name);
    let per_minute = limits.requests_per_minute?;
    let burst = limits.burst.unwrap_or(per_minute);
    Some(state.rate_limits.check(&caller.name, per_minute, burst))
}

/// The 429 for a request over its key's rate, with `Retry-After`; counted in the metrics.
pub fn rejection(state: &AppState, caller: &Caller, decision: &RateDecision) -> Response {
    state
        .metrics
        .limit_rejections
        .with_label_values(&[caller.name.as_str(), "rate"])
        .inc();
    tracing::debug!(
        key_name = %caller.name,
        per_minute = decision.limit,
        burst = decision.burst,
        "request over the rate limit"
    );
    ApiError::TooManyRequests {
        message: format!(
            "key {:?} sent more than its {} requests per minute (burst {}); retry after {} s \
             or raise requests_per_minute of this key in api_keys, or \
             limits.requests_per_minute",
            caller.name, decision.limit, decision.burst, decision.retry_after_secs
        ),
        retry_after_secs: Some(decision.retry_after_secs),
    }
    .into_response()
}

/// Adds the `X-RateLimit-*` headers of `decision`.
pub fn set_headers(headers: &mut HeaderMap, decision: &RateDecision) {
    let values = [
        (LIMIT_HEADER, u64::from(decision.limit)),
        (REMAINING_HEADER, u64::from(decision.remaining)),
        (RESET_HEADER, decision.reset_secs),
    ];
    for (name, value) in values {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
}

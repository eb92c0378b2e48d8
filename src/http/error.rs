//! The one error type of the HTTP API and its JSON body.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `"error"`.
    #[schema(example = "error")]
    pub status: &'static str,
    /// Description of the failure and of the fix.
    pub message: String,
    /// Stable machine-readable code, such as `unauthorized`.
    #[schema(example = "unauthorized")]
    pub code: &'static str,
}

/// Every failure the API reports. Each variant documents its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed, for example the body is not valid JSON.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no API key, or one that no configured key matches.
    #[error(
        "missing or invalid API key; send a configured key in the x-api-key header or as \
         Authorization: Bearer KEY"
    )]
    Unauthorized,
    /// 403: the key is valid but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such route or resource, or one the caller may not see.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// 409: the resource is busy, for example a session already running a turn.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than `limits.max_body_bytes`.
    #[error(
        "request body is larger than the limit of {limit} bytes; send a smaller body or raise \
         limits.max_body_bytes"
    )]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// 415: the body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the body is JSON but not of the expected shape, or a value is invalid.
    #[error("{message}")]
    Unprocessable {
        /// Description of the problem in the body.
        message: String,
        /// Code naming the kind of problem.
        code: &'static str,
    },
    /// 429: a rate or concurrency limit was reached.
    #[error("{message}")]
    TooManyRequests {
        /// The limit reached and when to retry.
        message: String,
        /// Seconds until a retry can succeed.
        retry_after_secs: Option<u64>,
    },
    /// 500: a bug or an unexpected failure. The cause is logged, never sent.
    #[error("internal error; give the operator the x-request-id of this response")]
    Internal(anyhow::Error),
    /// 503: the daemon is starting or shutting down, or a dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// 502: an upstream server, such as the LLM provider or an MCP server, failed the
    /// request.
    #[error("{0}")]
    BadGateway(String),
    /// 504: an upstream server, such as an MCP server, did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// 408: the request body was still incomplete when `limits.request_timeout_secs` passed.
    #[error(
        "request body was incomplete when the timeout of {secs} s passed; send the whole body \
         without pauses, or raise limits.request_timeout_secs for slow clients"
    )]
    BodyTimeout {
        /// The limit in seconds.
        secs: u64,
    },
    /// 503: the handler, with the whole body read, did not respond within
    /// `limits.request_timeout_secs`.
    #[error(
        "request timed out after {secs} s; retry, or raise limits.request_timeout_secs for \
         long turns"
    )]
    Timeout {
        /// The limit in seconds.
        secs: u64,
    },
}

/// The cause of a 5xx response, carried to the logging middleware in response extensions so
/// it is logged once, with the request id.
#[derive(Debug, Clone)]
pub struct InternalCause(pub Arc<String>);

impl ApiError {
    /// Returns the HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_) | Self::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Returns the stable code sent in the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Unprocessable { code, .. } => code,
            Self::TooManyRequests { .. } => "rate_limited",
            Self::Internal(_) => "internal",
            Self::Unavailable(_) => "unavailable",
            Self::BadGateway(_) => "upstream_failed",
            Self::GatewayTimeout(_) => "upstream_timeout",
            Self::Timeout { .. } => "timeout",
        }
    }

    /// Returns a 422 with the generic `invalid_request` code.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::Unprocessable {
            message: message.into(),
            code: "invalid_request",
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        Self::Internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            status: "error",
            message: self.to_string(),
            code: self.code(),
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::Internal(cause) = &self {
            let cause = InternalCause(Arc::new(format!("{cause:#}")));
            response.extensions_mut().insert(cause);
        }
        if let Self::TooManyRequests {
            retry_after_secs: Some(secs),
            ..
        } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[tokio::test]
    async fn internal_error_hides_its_cause() {
        let error = ApiError::Internal(anyhow::anyhow!("database password is hunter2"));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let cause = response.extensions().get::<InternalCause>().cloned();
        assert!(cause.is_some_and(|cause| cause.0.contains("hunter2")));
        let body = body_json(response).await;
        assert_eq!(body["status"], "error");
        assert_eq!(body["code"], "internal");
        assert!(!body.to_string().contains("hunter2"), "{body}");
    }

    #[tokio::test]
    async fn rate_limit_error_sets_retry_after() {
        let error = ApiError::TooManyRequests {
            message: "key alice is over 60 requests per minute".to_owned(),
            retry_after_secs: Some(3),
        };
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(body_json(response).await["code"], "rate_limited");
    }
}

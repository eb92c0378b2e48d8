//! Extractors whose rejections render as [`ApiError`] instead of axum's plain-text bodies.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::config::{Caller, Snapshot};

/// A JSON body. Accepts `application/json` with parameters such as `charset=utf-8`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = body_limit(&req);
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection, limit)),
        }
    }
}

/// A JSON body that may be absent: no body and no `Content-Type` gives `None`, and so does
/// the JSON value `null`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers();
        let declared_empty = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .is_none_or(|value| value.trim() == "0");
        let chunked = headers.contains_key(header::TRANSFER_ENCODING);
        if declared_empty && !chunked && !headers.contains_key(header::CONTENT_TYPE) {
            return Ok(Self(None));
        }
        let ApiJson(value) = ApiJson::<Option<T>>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// A query string. A parameter that is unknown or of the wrong type is a 400 JSON error
/// naming the query and the parameter.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => {
                let detail = rejection.body_text();
                let detail = detail
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&detail);
                Err(ApiError::BadRequest(format!(
                    "invalid query string {:?}: {detail}; GET /openapi.json lists the \
                     parameters of each route",
                    parts.uri.query().unwrap_or_default()
                )))
            }
        }
    }
}

/// Path parameters. A parameter that cannot be decoded, such as one that is not UTF-8
/// after percent-decoding, is a 400 JSON error naming the path.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection(&rejection, parts.uri.path())),
        }
    }
}

fn path_rejection(rejection: &PathRejection, path: &str) -> ApiError {
    let detail = rejection.body_text();
    let detail = detail.strip_prefix("Invalid URL: ").unwrap_or(&detail);
    match rejection {
        PathRejection::FailedToDeserializePathParams(_) => ApiError::BadRequest(format!(
            "invalid path {path:?}: {detail}; percent-encode each path segment as UTF-8"
        )),
        _ => ApiError::Internal(anyhow::anyhow!("path parameters are missing: {detail}")),
    }
}

fn body_limit(req: &Request) -> u64 {
    req.extensions()
        .get::<RequestContext>()
        .map(|context| context.snapshot.config.limits.max_body_bytes)
        .unwrap_or(crate::config::model::DEFAULT_MAX_BODY_BYTES)
}

fn json_rejection(rejection: JsonRejection, limit: u64) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
            "the body must be JSON; send the header Content-Type: application/json".to_owned(),
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable {
            message: format!("invalid request body: {}", rejection.body_text()),
            code: "invalid_body",
        },
        _ => ApiError::BadRequest(format!("malformed request body: {}", rejection.body_text())),
    }
}

/// Values the middleware attaches to a request, as one extension. The extension map of a
/// request contains axum's entries too, and a fourth entry would make it grow.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The config snapshot the request loaded when it started.
    pub snapshot: Arc<Snapshot>,
    /// The key's name and role, once the guard has authenticated the request.
    pub caller: Option<Caller>,
}

fn context(parts: &Parts) -> Result<&RequestContext, ApiError> {
    parts
        .extensions
        .get::<RequestContext>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("request context layer missing")))
}

/// The snapshot the request loaded when it started.
#[derive(Debug, Clone)]
pub struct CurrentConfig(pub Arc<Snapshot>);

impl<S: Send + Sync> FromRequestParts<S> for CurrentConfig {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        context(parts).map(|context| Self(context.snapshot.clone()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        context(parts)?.caller.clone().ok_or(ApiError::Unauthorized)
    }
}

//! Request middleware, as two tower services with futures of their own type.
//!
//! [`ObserveLayer`] wraps every route: request id, config snapshot, span, metrics and the
//! log line. [`GuardLayer`] wraps the routes that need a key: authentication, the key's
//! request rate, the admin check, and for routes that read a body or do I/O the body limit
//! and the timeout. They are hand-written rather than `axum::middleware::from_fn`, which
//! boxes a future and clones the inner service per request and per layer.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;
use pin_project_lite::pin_project;
use prometheus::{Histogram, IntCounter};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use super::AppState;
use super::error::{ApiError, InternalCause};
use super::extract::RequestContext;
use super::rate_limit;
use super::watched_body::WatchedBody;
use crate::config::Role;
use crate::limits::RateDecision;
use crate::metrics::Metrics;

/// Header that carries the API key, as in the original goose-api.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Header that carries the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Maximum length of a client request id; a longer one is replaced by a new UUID.
const MAX_REQUEST_ID_LENGTH: usize = 128;

/// Adds [`Observe`] to every route.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    state: AppState,
}

impl ObserveLayer {
    /// Observes requests with the metrics and config of `state`.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    /// Called once per route, so each route gets its own [`RouteMetrics`].
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
            route_metrics: Arc::new(RouteMetrics {
                metrics: self.state.metrics.clone(),
                duration: OnceLock::new(),
                common: OnceLock::new(),
            }),
        }
    }
}

/// Assigns the request id (the client's `x-request-id`, or a new UUID), which names the
/// request in its span and log line and comes back on the response, and attaches the current config snapshot, which the request keeps to its end.
/// It runs the request in a span named by its matched route and records it in the metrics.
/// It logs our own failures at error level, upstream failures at warn level and everything
/// else at debug level.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    state: AppState,
    route_metrics: Arc<RouteMetrics>,
}

impl<S, B> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let request_id = request_id_of(&req);
        req.extensions_mut().insert(RequestContext {
            snapshot: self.state.config.current(),
            caller: None,
        });
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        let span = {
            let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
            let id_text = request_id.to_str().unwrap_or("-");
            tracing::debug_span!("request", %method, route, request_id = id_text)
        };
        ObserveFuture {
            inner: self.inner.call(req).instrument(span),
            finish: Some(Finish {
                route_metrics: self.route_metrics.clone(),
                request_id,
                route,
                method,
                started: Instant::now(),
            }),
        }
    }
}

pin_project! {
    /// Future of [`Observe`]: the route's future, then the metrics and the log line.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        finish: Option<Finish>,
    }
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(Ok(match this.finish.take() {
            Some(finish) => finish.record(response),
            None => response,
        }))
    }
}

/// State that [`ObserveFuture`] needs once the response is ready.
struct Finish {
    route_metrics: Arc<RouteMetrics>,
    request_id: HeaderValue,
    route: Option<MatchedPath>,
    method: Method,
    started: Instant,
}

impl Finish {
    fn record<B>(self, mut response: Response<B>) -> Response<B> {
        let elapsed = self.started.elapsed();
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let method = &self.method;
        let status = response.status();
        self.route_metrics.record(route, method, status, elapsed);
        let id_text = self.request_id.to_str().unwrap_or("-");
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
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "request finished"
            );
        }
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER, self.request_id);
        response
    }
}

/// The metric children of one route, looked up on its first request rather than on each:
/// a look-up takes the metric vector's lock and hashes the labels.
#[derive(Debug)]
struct RouteMetrics {
    metrics: Arc<Metrics>,
    /// Route label and its latency histogram.
    duration: OnceLock<(String, Histogram)>,
    /// Labels and counter of the first outcome seen, which is the common one of most routes.
    common: OnceLock<(String, Method, StatusCode, IntCounter)>,
}

impl RouteMetrics {
    fn record(&self, route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
        let metrics = &self.metrics;
        let (label, histogram) = self.duration.get_or_init(|| {
            let histogram = metrics.http_duration.with_label_values(&[route]);
            (route.to_owned(), histogram)
        });
        // Each route's instance serves one matched path, and the check only guards that.
        if label == route {
            histogram.observe(elapsed.as_secs_f64());
        } else {
            metrics
                .http_duration
                .with_label_values(&[route])
                .observe(elapsed.as_secs_f64());
        }
        let labels = [route, method.as_str(), status.as_str()];
        let (common_route, common_method, common_status, counter) = self.common.get_or_init(|| {
            let counter = metrics.http_requests.with_label_values(&labels);
            (route.to_owned(), method.clone(), status, counter)
        });
        if common_route == route && common_method == method && *common_status == status {
            counter.inc();
        } else {
            metrics.http_requests.with_label_values(&labels).inc();
        }
    }
}

/// Requirements that a group of routes places on the caller and on the request.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// Role the key must have; a user key passes a user route, an admin key passes both.
    pub role: Role,
    /// Whether the routes read a body or do I/O, and so get the body limit and the timeout.
    pub timed: bool,
}

/// Adds [`Guard`] to a group of routes.
#[derive(Debug, Clone)]
pub struct GuardLayer {
    state: AppState,
    access: Access,
}

impl GuardLayer {
    /// Guards routes with the keys and limits of `state`'s current snapshot.
    pub fn new(state: AppState, access: Access) -> Self {
        Self { state, access }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            state: self.state.clone(),
            access: self.access,
        }
    }
}

/// Rejects a request without a valid key with 401, counts it against its key's request
/// rate (429 over it), rejects a user key on an admin route with 403, and attaches the
/// [`crate::config::Caller`]. On timed routes a declared body over
/// `limits.max_body_bytes` fails at once with 413, reading past it fails too, and a request
/// without a response head within `limits.request_timeout_secs` fails: with 408 while the
/// request body is still incomplete, else with 503. A streaming response body is not cut
/// off. All of this runs before the body is read.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    state: AppState,
    access: Access,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // Split, so the context can be changed while the headers are read.
        let (mut parts, body) = req.into_parts();
        let Some(context) = parts.extensions.get_mut::<RequestContext>() else {
            let missing = anyhow::anyhow!("request context layer missing");
            return GuardFuture::rejected(ApiError::Internal(missing).into_response());
        };
        let snapshot = &context.snapshot;
        let Some(caller) =
            presented_key(&parts.headers).and_then(|key| snapshot.keys.authenticate(key))
        else {
            return GuardFuture::rejected(ApiError::Unauthorized.into_response());
        };
        tracing::debug!(key_name = %caller.name, "authenticated");
        let rate = rate_limit::decide(&self.state, snapshot, &caller);
        if let Some(decision) = rate.as_ref().filter(|decision| !decision.allowed) {
            let mut response = rate_limit::rejection(&self.state, &caller, decision);
            rate_limit::set_headers(response.headers_mut(), decision);
            return GuardFuture::rejected(response);
        }
        let limits = &snapshot.config.limits;
        let (body_limit, timeout_secs) = (limits.max_body_bytes, limits.request_timeout_secs);
        let refusal = if self.access.role == Role::Admin && caller.role != Role::Admin {
            Some(ApiError::Forbidden(format!(
                "this route needs an admin key, and key {:?} has the user role",
                caller.name
            )))
        } else if self.access.timed && declared_length(&parts.headers) > Some(body_limit) {
            Some(ApiError::PayloadTooLarge { limit: body_limit })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let mut response = refusal.into_response();
            if let Some(decision) = &rate {
                rate_limit::set_headers(response.headers_mut(), decision);
            }
            return GuardFuture::rejected(response);
        }
        context.caller = Some(caller);
        let (body, deadline) = if self.access.timed {
            let capped = usize::try_from(body_limit).unwrap_or(usize::MAX);
            let (body, body_ended) = WatchedBody::new(Limited::new(body, capped));
            let deadline = Deadline {
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(timeout_secs))),
                body_ended,
            };
            (Body::new(body), Some(deadline))
        } else {
            (body, None)
        };
        GuardFuture::Running {
            future: self.inner.call(Request::from_parts(parts, body)),
            deadline,
            timeout_secs,
            rate,
        }
    }
}

/// The request timeout of a timed route.
#[derive(Debug)]
pub struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Whether reading the request body has ended, which distinguishes 408 from 503.
    body_ended: Arc<AtomicBool>,
}

impl Deadline {
    /// Returns the timeout error once the deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>, secs: u64) -> Option<ApiError> {
        self.sleep.as_mut().poll(cx).is_ready().then(|| {
            if self.body_ended.load(Ordering::Acquire) {
                ApiError::Timeout { secs }
            } else {
                ApiError::BodyTimeout { secs }
            }
        })
    }
}

pin_project! {
    /// Future of [`Guard`]: a ready rejection, or the route's future under the timeout.
    #[project = GuardProjection]
    pub enum GuardFuture<F> {
        /// The request was refused before the route ran.
        Rejected { response: Option<Response> },
        /// The route runs.
        Running {
            #[pin]
            future: F,
            deadline: Option<Deadline>,
            timeout_secs: u64,
            rate: Option<RateDecision>,
        },
    }
}

impl<F> GuardFuture<F> {
    fn rejected(response: Response) -> Self {
        Self::Rejected {
            response: Some(response),
        }
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProjection::Rejected { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response()))),
            GuardProjection::Running {
                future,
                deadline,
                timeout_secs,
                rate,
            } => {
                let mut response = if let Poll::Ready(Ok(response)) = future.poll(cx) {
                    response
                } else if let Some(error) = deadline
                    .as_mut()
                    .and_then(|deadline| deadline.poll_expired(cx, *timeout_secs))
                {
                    error.into_response()
                } else {
                    return Poll::Pending;
                };
                if let Some(decision) = rate.as_ref() {
                    rate_limit::set_headers(response.headers_mut(), decision);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
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

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
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

/// Turns a panic in a handler into a 500 whose cause is logged by [`Observe`].
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    ApiError::Internal(anyhow::anyhow!("handler panicked: {detail}")).into_response()
}

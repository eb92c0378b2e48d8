//! The HTTP edge: one router with its middleware, built from shared state.

pub mod error;
mod extensions;
pub mod extract;
pub mod middleware;
mod openapi;
pub mod rate_limit;
mod routes;
mod sessions;
mod watched_body;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::http::{HeaderName, HeaderValue, Method};
use axum::routing::{get, post};
use axum::{Router, extract::DefaultBodyLimit};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{ConfigHandle, Role};
use crate::extensions::Registry;
pub use error::ApiError;
use middleware::{Access, GuardLayer, ObserveLayer};
pub use openapi::ApiDoc;

/// State shared by every handler. It sits behind one `Arc`, because middleware clones it
/// per request and each clone of a shared count costs the two cores a cache-line transfer.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// Wraps the services for the router.
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The daemon's subsystems, as handlers see them through [`AppState`].
#[derive(Debug)]
pub struct Services {
    /// The live configuration.
    pub config: ConfigHandle,
    /// Whether the daemon accepts work.
    pub readiness: Readiness,
    /// Sessions and their turns.
    pub sessions: Arc<crate::sessions::SessionManager>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Tools, with calls in flight counted per extension.
    pub tools: Arc<crate::tools::CountingTools>,
    /// The extensions and their tools.
    pub extensions: Registry,
    /// Request rates per key.
    pub rate_limits: Arc<crate::limits::RateLimits>,
}

/// Start-up and shutdown phase, shown by `GET /ready`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    /// Marks start-up as done.
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::SeqCst);
    }

    /// Marks the daemon as shutting down.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }

    /// Returns `None` when ready, else the reason it is not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        match self.0.load(Ordering::SeqCst) {
            READY => None,
            STARTING => Some("goose-api is starting; retry shortly"),
            _ => Some("goose-api is shutting down"),
        }
    }
}

/// Builds the router. CORS is fixed at start; everything else reads the current snapshot
/// on each request.
pub fn router(state: AppState) -> Router {
    let public = Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready));
    // Routes answered from memory need no timer; the others do I/O or run turns.
    let user_instant = Router::new()
        .route("/provider/config", get(routes::provider_config))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(routes::metrics))
        .route("/metrics/prometheus", get(routes::prometheus_metrics))
        .route("/extensions/list", get(extensions::list_names))
        .route("/extensions", get(extensions::list))
        .route("/extensions/{name}", get(extensions::show))
        .route_layer(GuardLayer::new(
            state.clone(),
            Access {
                role: Role::User,
                timed: false,
            },
        ));
    let user_timed = Router::new()
        .route("/session/start", post(sessions::start))
        .route("/session/reply", post(sessions::reply))
        .route("/session/summarize", post(sessions::summarize))
        .route("/session/end", post(sessions::end))
        .route("/sessions", get(sessions::list))
        .route(
            "/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/sessions/{id}/reply", post(sessions::session_reply))
        .route("/sessions/{id}/cancel", post(sessions::cancel))
        .route(
            "/extensions/{name}/tools/{tool}",
            post(extensions::call_tool),
        )
        .route_layer(GuardLayer::new(
            state.clone(),
            Access {
                role: Role::User,
                timed: true,
            },
        ))
        // The guard enforces limits.max_body_bytes, so axum's own default limit is off.
        .route_layer(DefaultBodyLimit::disable());
    let admin = Router::new()
        .route("/config/status", get(routes::config_status))
        .route("/config/reload", post(routes::config_reload))
        .route("/extensions/add", post(extensions::add))
        .route("/extensions/remove", post(extensions::remove))
        .route_layer(GuardLayer::new(
            state.clone(),
            Access {
                role: Role::Admin,
                timed: true,
            },
        ))
        .route_layer(DefaultBodyLimit::disable());

    let origins = state.config.current().config.cors.allowed_origins.clone();
    let edge = ServiceBuilder::new()
        .layer(ObserveLayer::new(state.clone()))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .option_layer(cors_layer(&origins));

    Router::new()
        .merge(public)
        .merge(user_instant)
        .merge(user_timed)
        .merge(admin)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(edge)
        .with_state(state)
}

fn request_id_header() -> HeaderName {
    HeaderName::from_static(middleware::REQUEST_ID_HEADER)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        // Validation rejected origins that are not valid header values.
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::AUTHORIZATION,
            HeaderName::from_static(middleware::API_KEY_HEADER),
        ])
        .expose_headers([request_id_header()]);
    Some(layer)
}

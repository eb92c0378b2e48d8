//! Prometheus metrics of the daemon, kept in a registry of its own.

use std::sync::Arc;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::agent::{CompletionFuture, CompletionRequest, Provider, ProviderError, TextSink};

/// Upper bounds of the latency histograms, in seconds: from fast HTTP routes to long turns.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by matched route, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by matched route.
    pub http_duration: HistogramVec,
    /// Finished turns by outcome.
    pub turns: IntCounterVec,
    /// Provider calls by provider and outcome.
    pub provider_calls: IntCounterVec,
    /// Provider call latency by provider.
    pub provider_duration: HistogramVec,
    /// Tokens by direction, `input` or `output`.
    pub tokens: IntCounterVec,
    /// Tokens by API key name and direction, on this replica.
    pub key_tokens: IntCounterVec,
    /// Requests and turns rejected by a limit, by API key name and limit.
    pub limit_rejections: IntCounterVec,
    /// Tool calls by extension and outcome.
    pub tool_calls: IntCounterVec,
    /// Config reloads by outcome.
    pub config_reloads: IntCounterVec,
    /// Extensions by state.
    pub extensions: IntGaugeVec,
    /// Sessions with live state.
    pub live_sessions: IntGauge,
    /// Turns running now.
    pub running_turns: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("goose_api".to_owned()), None)?;
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
                let metric = HistogramVec::new(opts, labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let metrics = Self {
            http_requests: counter(
                "http_requests_total",
                "HTTP requests",
                &["route", "method", "status"],
            )?,
            http_duration: histogram(
                "http_request_duration_seconds",
                "HTTP request latency",
                &["route"],
            )?,
            turns: counter("turns_total", "Finished agent turns", &["outcome"])?,
            provider_calls: counter(
                "provider_calls_total",
                "LLM provider calls",
                &["provider", "outcome"],
            )?,
            provider_duration: histogram(
                "provider_call_duration_seconds",
                "LLM provider call latency",
                &["provider"],
            )?,
            tokens: counter(
                "tokens_total",
                "Tokens used by provider calls",
                &["direction"],
            )?,
            key_tokens: counter(
                "key_tokens_total",
                "Tokens used by the turns of each API key",
                &["key", "direction"],
            )?,
            limit_rejections: counter(
                "limit_rejections_total",
                "Requests rejected with 429, by key and limit (rate or turns)",
                &["key", "limit"],
            )?,
            tool_calls: counter("tool_calls_total", "Tool calls", &["extension", "outcome"])?,
            config_reloads: counter("config_reloads_total", "Config reloads", &["outcome"])?,
            extensions: IntGaugeVec::new(
                Opts::new("extensions", "Extensions by state"),
                &["state"],
            )?,
            live_sessions: IntGauge::new("live_sessions", "Sessions with live state")?,
            running_turns: IntGauge::new("running_turns", "Turns running now")?,
            registry,
        };
        metrics
            .registry
            .register(Box::new(metrics.extensions.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.live_sessions.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.running_turns.clone()))?;
        Ok(metrics)
    }

    /// Adds a turn's tokens to the counters of key `key`.
    pub fn count_key_tokens(&self, key: &str, usage: crate::agent::Usage) {
        let counts = [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ];
        for (direction, tokens) in counts {
            self.key_tokens
                .with_label_values(&[key, direction])
                .inc_by(tokens);
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let families = self.registry.gather();
        if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Raises the reload counters to the totals kept by the config handle.
    pub fn set_reload_totals(&self, applied: u64, rejected: u64) {
        for (outcome, total) in [("applied", applied), ("rejected", rejected)] {
            let counter = self.config_reloads.with_label_values(&[outcome]);
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }
}

/// A provider that records the calls of another in [`Metrics`].
pub struct MeteredProvider {
    inner: Arc<dyn Provider>,
    metrics: Arc<Metrics>,
    name: String,
}

impl std::fmt::Debug for MeteredProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredProvider")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MeteredProvider {
    /// Wraps `inner`, labelling its metrics with the provider `name`.
    pub fn new(inner: Arc<dyn Provider>, metrics: Arc<Metrics>, name: &str) -> Self {
        Self {
            inner,
            metrics,
            name: name.to_owned(),
        }
    }
}

impl Provider for MeteredProvider {
    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
        on_text: TextSink<'a>,
        cancel: &'a CancellationToken,
    ) -> CompletionFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.complete(request, on_text, cancel).await;
            let outcome = match &result {
                Ok(completion) => {
                    let usage = completion.usage;
                    self.metrics
                        .tokens
                        .with_label_values(&["input"])
                        .inc_by(usage.input_tokens);
                    self.metrics
                        .tokens
                        .with_label_values(&["output"])
                        .inc_by(usage.output_tokens);
                    "ok"
                }
                Err(error) => error_label(error),
            };
            self.metrics
                .provider_calls
                .with_label_values(&[self.name.as_str(), outcome])
                .inc();
            self.metrics
                .provider_duration
                .with_label_values(&[self.name.as_str()])
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

fn error_label(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::Authentication { .. } => "authentication",
        ProviderError::RateLimited { .. } => "rate_limited",
        ProviderError::Server { .. } => "server_error",
        ProviderError::ContextTooLong(_) => "context_too_long",
        ProviderError::Rejected { .. } => "rejected",
        ProviderError::Connection(_) => "connection",
        ProviderError::InvalidResponse(_) => "invalid_response",
        ProviderError::Cancelled => "cancelled",
    }
}

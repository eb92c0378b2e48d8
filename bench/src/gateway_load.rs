//! The load generator of `gateway`: keep-alive HTTP/1.1 connections that each send the
//! same authenticated JSON `POST` of a tool call again as soon as the previous response body
//! has been read. goose-api and mcpo get the same requests from it, apart from the path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use tokio::task::JoinHandle;

use crate::client::{exchange, open_http1};
use crate::load::{MAX_FAILURE_SAMPLES, REQUEST_TIMEOUT};
use crate::stats::Latencies;

/// Pause after a failed connect, so that a server that is down is not retried in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// One tool behind an HTTP route, and the text that a successful response contains.
#[derive(Debug)]
pub struct ToolRoute {
    /// Loopback address of the gateway.
    pub address: SocketAddr,
    path: String,
    host: HeaderValue,
    authorization: HeaderValue,
    body: Bytes,
    expected: String,
}

impl ToolRoute {
    /// Prepares the request once: `POST path` with `Authorization: Bearer api_key` and the
    /// JSON `arguments`. A response counts as successful when its status is 200 and its body
    /// contains `expected`.
    pub fn new(
        address: SocketAddr,
        path: &str,
        api_key: &str,
        arguments: &serde_json::Value,
        expected: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            address,
            path: path.to_owned(),
            host: HeaderValue::from_str(&address.to_string())
                .with_context(|| format!("invalid Host header value {address}"))?,
            authorization: HeaderValue::from_str(&format!("Bearer {api_key}"))
                .context("the API key is not a valid header value")?,
            body: Bytes::from(arguments.to_string()),
            expected: expected.to_owned(),
        })
    }
}

/// One keep-alive connection to a gateway.
#[derive(Debug)]
pub struct Caller {
    sender: SendRequest<Full<Bytes>>,
}

impl Caller {
    /// Connects with TCP_NODELAY and completes the HTTP/1.1 handshake.
    pub async fn open(address: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            sender: open_http1(address).await?,
        })
    }

    /// Sends the route's request and reads the whole body. Returns an error that describes
    /// a transport failure, another status than 200, or a body without the expected text.
    pub async fn call(&mut self, route: &ToolRoute) -> anyhow::Result<()> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(route.path.as_str())
            .header(HOST, route.host.clone())
            .header(AUTHORIZATION, route.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(route.body.clone()))
            .context("while building the request")?;
        let (status, body) = exchange(&mut self.sender, request).await?;
        let text = String::from_utf8_lossy(&body);
        if status != StatusCode::OK || !text.contains(&route.expected) {
            anyhow::bail!("status {status}, body {text}");
        }
        Ok(())
    }
}

/// Totals of one run of calls.
#[derive(Debug, Default)]
pub struct CallReport {
    /// Latencies of the successful calls, from sending the request to reading the last
    /// byte of the response body.
    pub latencies: Latencies,
    /// Calls that failed or got no response within [`REQUEST_TIMEOUT`].
    pub failed: u64,
    /// The first few failures, described.
    pub failure_samples: Vec<String>,
    /// Time from the start of the run until every connection had stopped.
    pub elapsed: Duration,
}

impl CallReport {
    /// Successful calls per second.
    pub fn calls_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends calls on `concurrency` connections for `duration` and returns the totals.
pub async fn run_for(
    route: &Arc<ToolRoute>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<CallReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<JoinHandle<WorkerStats>> = (0..concurrency)
        .map(|_| tokio::spawn(call_until_stopped(Arc::clone(route), Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut merged = WorkerStats::default();
    for worker in workers {
        merged.merge(worker.await.context("a load task failed")?);
    }
    Ok(merged.into_report(started.elapsed()))
}

/// Sends `count` calls one after another on one connection and returns the totals.
pub async fn run_sequential(route: &ToolRoute, count: usize) -> anyhow::Result<CallReport> {
    let mut caller = Caller::open(route.address).await?;
    let mut stats = WorkerStats::default();
    let started = Instant::now();
    for _ in 0..count {
        let sent_at = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, caller.call(route)).await {
            Ok(Ok(())) => stats.latencies.push(sent_at.elapsed()),
            Ok(Err(error)) => {
                stats.record_failure(format!("{error:#}"));
                caller = Caller::open(route.address).await?;
            }
            Err(_) => {
                stats.record_failure(format!("no response within {REQUEST_TIMEOUT:?}"));
                caller = Caller::open(route.address).await?;
            }
        }
    }
    Ok(stats.into_report(started.elapsed()))
}

#[derive(Debug, Default)]
struct WorkerStats {
    latencies: Vec<Duration>,
    failed: u64,
    failure_samples: Vec<String>,
}

impl WorkerStats {
    fn record_failure(&mut self, description: String) {
        self.failed += 1;
        if self.failure_samples.len() < MAX_FAILURE_SAMPLES {
            self.failure_samples.push(description);
        }
    }

    fn merge(&mut self, other: Self) {
        self.latencies.extend(other.latencies);
        self.failed += other.failed;
        self.failure_samples.extend(other.failure_samples);
        self.failure_samples.truncate(MAX_FAILURE_SAMPLES);
    }

    fn into_report(self, elapsed: Duration) -> CallReport {
        CallReport {
            latencies: Latencies::from_unsorted(self.latencies),
            failed: self.failed,
            failure_samples: self.failure_samples,
            elapsed,
        }
    }
}

async fn call_until_stopped(route: Arc<ToolRoute>, stop: Arc<AtomicBool>) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut connection: Option<Caller> = None;
    while !stop.load(Ordering::Relaxed) {
        let caller = match connection.as_mut() {
            Some(open) => open,
            None => match Caller::open(route.address).await {
                Ok(opened) => connection.insert(opened),
                Err(error) => {
                    stats.record_failure(format!("{error:#}"));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            },
        };
        let sent_at = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, caller.call(&route)).await {
            Ok(Ok(())) => stats.latencies.push(sent_at.elapsed()),
            Ok(Err(error)) => {
                stats.record_failure(format!("{error:#}"));
                connection = None;
            }
            Err(_) => {
                stats.record_failure(format!("no response within {REQUEST_TIMEOUT:?}"));
                connection = None;
            }
        }
    }
    stats
}

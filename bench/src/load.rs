//! The load generator: one task per keep-alive HTTP/1.1 connection, each sending the same
//! authenticated GET again as soon as the previous response body has been read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, StatusCode};
use tokio::task::JoinHandle;

use crate::client::{exchange, open_http1};
use crate::stats::Latencies;

/// Path that both the daemon and the bare server serve.
pub const PROVIDER_CONFIG_PATH: &str = "/provider/config";
/// Header that carries the daemon's API key.
const API_KEY_HEADER: &str = "x-api-key";
/// A request without a response by then counts as failed, and its connection is replaced.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed connect, so that a server that is down is not retried in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Failure descriptions kept per run; further failures are only counted.
pub const MAX_FAILURE_SAMPLES: usize = 5;

/// The authenticated `GET /provider/config` that every connection sends.
#[derive(Debug)]
pub struct Target {
    /// Loopback address of the server under test.
    pub address: SocketAddr,
    host: HeaderValue,
    api_key: HeaderValue,
}

impl Target {
    /// Prepares the headers once, so that each request only clones them.
    pub fn new(address: SocketAddr, api_key: &str) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&address.to_string())
            .with_context(|| format!("invalid Host header value {address}"))?;
        let api_key =
            HeaderValue::from_str(api_key).context("the API key is not a valid header value")?;
        Ok(Self {
            address,
            host,
            api_key,
        })
    }
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Empty<Bytes>>,
}

impl Connection {
    /// Connects with TCP_NODELAY and completes the HTTP/1.1 handshake.
    pub async fn open(address: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            sender: open_http1(address).await?,
        })
    }

    /// Sends the target's GET and reads the whole body, so that the connection is free for
    /// the next request.
    pub async fn get(&mut self, target: &Target) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::get(PROVIDER_CONFIG_PATH)
            .header(HOST, target.host.clone())
            .header(API_KEY_HEADER, target.api_key.clone())
            .body(Empty::new())
            .context("while building the request")?;
        exchange(&mut self.sender, request).await
    }
}

/// Totals of one load run.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Latencies of the requests that returned 200.
    pub latencies: Latencies,
    /// Requests that returned another status, or that got no response: a connect or
    /// transport error, or nothing within [`REQUEST_TIMEOUT`].
    pub failed: u64,
    /// The first few failures, described.
    pub failure_samples: Vec<String>,
    /// Time from the start of the run until every connection had stopped.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Requests that returned 200, per second.
    pub fn requests_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Requests sent, failed or not.
    pub fn requests(&self) -> u64 {
        self.latencies.len() as u64 + self.failed
    }

    /// Joins the reports of runs made one after another, adding their elapsed times.
    pub fn merge(reports: Vec<Self>) -> Self {
        let mut samples = Vec::new();
        let mut merged = Self::default();
        for report in reports {
            samples.extend(report.latencies.into_samples());
            merged.failed += report.failed;
            merged.failure_samples.extend(report.failure_samples);
            merged.elapsed += report.elapsed;
        }
        merged.failure_samples.truncate(MAX_FAILURE_SAMPLES);
        merged.latencies = Latencies::from_unsorted(samples);
        merged
    }
}

/// A load run in progress; [`RunningLoad::finish`] stops it.
#[derive(Debug)]
pub struct RunningLoad {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<WorkerStats>>,
    started: Instant,
}

/// Starts `concurrency` connections that send requests to `target` until stopped.
pub fn start(target: &Arc<Target>, concurrency: usize) -> RunningLoad {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers = (0..concurrency)
        .map(|_| tokio::spawn(send_until_stopped(Arc::clone(target), Arc::clone(&stop))))
        .collect();
    RunningLoad {
        stop,
        workers,
        started,
    }
}

/// Sends load for `duration` and returns the totals.
pub async fn run_for(
    target: &Arc<Target>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    let load = start(target, concurrency);
    tokio::time::sleep(duration).await;
    load.finish().await
}

impl RunningLoad {
    /// Stops every connection after its request in flight and merges their totals.
    pub async fn finish(self) -> anyhow::Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        let mut failed = 0;
        let mut failure_samples = Vec::new();
        for worker in self.workers {
            let stats = worker.await.context("a load task failed")?;
            samples.extend(stats.latencies);
            failed += stats.failed;
            failure_samples.extend(stats.failure_samples);
        }
        failure_samples.truncate(MAX_FAILURE_SAMPLES);
        Ok(LoadReport {
            latencies: Latencies::from_unsorted(samples),
            failed,
            failure_samples,
            elapsed: self.started.elapsed(),
        })
    }
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
}

async fn send_until_stopped(target: Arc<Target>, stop: Arc<AtomicBool>) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut connection: Option<Connection> = None;
    while !stop.load(Ordering::Relaxed) {
        let open = match connection.as_mut() {
            Some(open) => open,
            None => match Connection::open(target.address).await {
                Ok(opened) => connection.insert(opened),
                Err(error) => {
                    stats.record_failure(format!("{error:#}"));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            },
        };
        let sent_at = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, open.get(&target)).await {
            Ok(Ok((StatusCode::OK, _))) => stats.latencies.push(sent_at.elapsed()),
            Ok(Ok((status, body))) => stats.record_failure(format!(
                "status {status}, body {}",
                String::from_utf8_lossy(&body)
            )),
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

//! The `mixed` benchmark: many clients at once, each on its own keep-alive connection, send
//! requests over the daemon's routes for a fixed time. Each client walks the cycle of
//! [`Route::CYCLE`], starting at its own position, so every route is in flight at once. The
//! daemon runs against the instant provider with the demo plugin, SQLite and the default
//! limits, which set no request rate, turn limit or connection limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Runtime;

use crate::agent_daemon::{self, API_KEY, AgentConfig, AgentWorkdir, Binaries};
use crate::client::ApiClient;
use crate::mixed_monitor::{self, ProcessPeaks};
use crate::mixed_routes::{Route, check, send};
use crate::process::{ChildProcess, Memory, StopOutcome};
use crate::provider::{InstantProvider, WireFormat};
use crate::stats::Latencies;

/// `store.url` of the daemon, relative to its working directory.
const SQLITE_STORE: &str = "sqlite://sessions.db";
/// A request without a response by then counts as an error, and its connection is replaced.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed connect, so that a server that is down is not retried in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Errors described per run; further ones are only counted.
const MAX_ERROR_SAMPLES: usize = 10;

/// Settings of one `mixed` run.
#[derive(Debug)]
pub struct MixedOptions {
    /// The daemon and the demo plugin.
    pub binaries: Binaries,
    /// Clients at once, each with its own connection and one request in flight.
    pub clients: usize,
    /// Time during which the clients send new requests.
    pub duration: Duration,
}

/// Requests of one route over the run.
#[derive(Debug)]
pub struct RouteResults {
    /// The route.
    pub route: Route,
    /// Latencies of the requests that succeeded.
    pub latencies: Latencies,
    /// Requests that failed: a status other than 2xx, an unexpected body, a transport
    /// error or no response within [`REQUEST_TIMEOUT`].
    pub errors: u64,
}

/// Measurements of one run.
#[derive(Debug)]
pub struct MixedResults {
    /// Per route, in the order of [`Route::CYCLE`].
    pub routes: Vec<RouteResults>,
    /// Connection attempts that failed.
    pub connect_errors: u64,
    /// The first few errors, described.
    pub error_samples: Vec<String>,
    /// Time from the start of the clients until the last one had stopped.
    pub elapsed: Duration,
    /// The daemon's memory at the end: VmRSS now and VmHWM, its peak.
    pub memory: Memory,
    /// Largest numbers of open file descriptors and threads of the daemon seen in the run.
    pub peaks: ProcessPeaks,
    /// `/proc/loadavg` before and after the load.
    pub load_average: (String, String),
    /// Requests that the instant provider served.
    pub provider_requests: u64,
    /// Provider requests that did not match the expected conversation.
    pub provider_unexpected: u64,
    /// Exit status and warnings of the daemon.
    pub stop: StopOutcome,
}

impl MixedResults {
    /// Errors over every route, plus failed connects and unexpected provider requests.
    pub fn total_errors(&self) -> u64 {
        let requests: u64 = self.routes.iter().map(|route| route.errors).sum();
        requests + self.connect_errors + self.provider_unexpected
    }
}

/// Starts the provider and the daemon, runs the clients and stops the daemon.
pub fn run(options: &MixedOptions) -> anyhow::Result<MixedResults> {
    mixed_monitor::ensure_file_limit(options.clients)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    let provider = runtime.block_on(InstantProvider::start())?;
    let workdir = AgentWorkdir::create(
        &options.binaries.plugin,
        &AgentConfig {
            format: WireFormat::Openai,
            provider_base_url: WireFormat::Openai.base_url(provider.address()),
            store_url: SQLITE_STORE.to_owned(),
        },
    )?;
    let mut daemon = workdir.start(&options.binaries.daemon)?;
    let measured = measure(&runtime, options, &mut daemon);
    let stop = daemon.stop()?;
    let measured = measured.with_context(|| {
        format!(
            "goose-api exited with {} and logged {} unexpected lines, the first: {:?}",
            stop.status, stop.log.warnings, stop.log.samples
        )
    })?;
    Ok(MixedResults {
        routes: measured.routes,
        connect_errors: measured.connect_errors,
        error_samples: measured.error_samples,
        elapsed: measured.elapsed,
        memory: measured.memory,
        peaks: measured.peaks,
        load_average: measured.load_average,
        provider_requests: provider.take_totals().requests,
        provider_unexpected: provider.unexpected(),
        stop,
    })
}

struct Measured {
    routes: Vec<RouteResults>,
    connect_errors: u64,
    error_samples: Vec<String>,
    elapsed: Duration,
    memory: Memory,
    peaks: ProcessPeaks,
    load_average: (String, String),
}

fn measure(
    runtime: &Runtime,
    options: &MixedOptions,
    daemon: &mut ChildProcess,
) -> anyhow::Result<Measured> {
    let address = daemon.address();
    let pid = daemon.pid();
    runtime.block_on(async {
        let mut setup = ApiClient::connect(address, API_KEY).await?;
        agent_daemon::wait_for_plugin(&mut setup).await
    })?;
    let load_before = mixed_monitor::load_average()?;
    let monitoring = Arc::new(AtomicBool::new(true));
    let monitor = runtime.spawn(mixed_monitor::watch(pid, Arc::clone(&monitoring)));
    let started = Instant::now();
    let stats = runtime.block_on(run_clients(address, options.clients, options.duration));
    let elapsed = started.elapsed();
    monitoring.store(false, Ordering::Relaxed);
    let peaks = runtime
        .block_on(monitor)
        .context("the monitor task failed")?;
    let stats = stats?;
    let load_after = mixed_monitor::load_average()?;
    daemon.ensure_running()?;
    let memory = crate::process::memory(pid)?;
    Ok(Measured {
        routes: stats.per_route,
        connect_errors: stats.connect_errors,
        error_samples: stats.error_samples,
        elapsed,
        memory,
        peaks,
        load_average: (load_before, load_after),
    })
}

/// Totals merged over every client.
struct MergedStats {
    per_route: Vec<RouteResults>,
    connect_errors: u64,
    error_samples: Vec<String>,
}

async fn run_clients(
    address: SocketAddr,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<MergedStats> {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..clients)
        .map(|index| tokio::spawn(run_client(address, index, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);

    let mut latencies = vec![Vec::new(); Route::CYCLE.len()];
    let mut errors = vec![0; Route::CYCLE.len()];
    let mut connect_errors = 0;
    let mut error_samples = Vec::new();
    for task in tasks {
        let stats = task.await.context("a client task failed")?;
        for (route, samples) in stats.latencies.into_iter().enumerate() {
            latencies[route].extend(samples);
            errors[route] += stats.errors[route];
        }
        connect_errors += stats.connect_errors;
        error_samples.extend(stats.error_samples);
    }
    error_samples.truncate(MAX_ERROR_SAMPLES);

    let per_route = Route::CYCLE
        .iter()
        .zip(latencies.into_iter().zip(errors))
        .map(|(route, (samples, errors))| RouteResults {
            route: *route,
            latencies: Latencies::from_unsorted(samples),
            errors,
        })
        .collect();
    Ok(MergedStats {
        per_route,
        connect_errors,
        error_samples,
    })
}

/// Totals of one client.
#[derive(Debug)]
struct ClientStats {
    latencies: Vec<Vec<Duration>>,
    errors: Vec<u64>,
    connect_errors: u64,
    error_samples: Vec<String>,
}

impl ClientStats {
    fn new() -> Self {
        Self {
            latencies: vec![Vec::new(); Route::CYCLE.len()],
            errors: vec![0; Route::CYCLE.len()],
            connect_errors: 0,
            error_samples: Vec::new(),
        }
    }

    fn record_error(&mut self, route: Option<Route>, description: String) {
        match route {
            Some(route) => self.errors[route.index()] += 1,
            None => self.connect_errors += 1,
        }
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            let label = route.map_or("connect", Route::label);
            self.error_samples.push(format!("{label}: {description}"));
        }
    }
}

/// Sends requests until `stop` is set, starting at position `index` of the cycle. A route
/// that needs a session is replaced by `POST /session/start` while the client has none.
async fn run_client(address: SocketAddr, index: usize, stop: Arc<AtomicBool>) -> ClientStats {
    let mut stats = ClientStats::new();
    let mut connection: Option<ApiClient> = None;
    let mut session: Option<String> = None;
    let mut position = index % Route::CYCLE.len();
    while !stop.load(Ordering::Relaxed) {
        let client = match connection.as_mut() {
            Some(open) => open,
            None => match ApiClient::connect(address, API_KEY).await {
                Ok(opened) => connection.insert(opened),
                Err(error) => {
                    stats.record_error(None, format!("{error:#}"));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            },
        };
        let planned = Route::CYCLE[position];
        let route = match (planned.needs_session(), &session) {
            (true, None) => Route::SessionStart,
            _ => planned,
        };
        let sent_at = Instant::now();
        let response =
            tokio::time::timeout(REQUEST_TIMEOUT, send(client, route, session.as_deref())).await;
        match response {
            Ok(Ok((status, body))) => match check(route, status, &body) {
                Ok(started) => {
                    stats.latencies[route.index()].push(sent_at.elapsed());
                    if started.is_some() {
                        session = started;
                    }
                }
                Err(problem) => stats.record_error(Some(route), problem),
            },
            Ok(Err(error)) => {
                stats.record_error(Some(route), format!("{error:#}"));
                connection = None;
            }
            Err(_) => {
                stats.record_error(
                    Some(route),
                    format!("no response within {REQUEST_TIMEOUT:?}"),
                );
                connection = None;
            }
        }
        if route == planned {
            position = (position + 1) % Route::CYCLE.len();
        }
    }
    stats
}

/// Fails when any request failed, so that a run with errors exits with a failure status
/// after its report.
pub fn ensure_no_errors(results: &MixedResults) -> anyhow::Result<()> {
    let errors = results.total_errors();
    if errors > 0 {
        bail!("{errors} errors during the mixed load; the report lists the first ones");
    }
    Ok(())
}

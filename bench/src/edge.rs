//! The `edge` benchmark. Its phases run one after the other: memory of goose-api at start,
//! then rounds that load the bare axum server and goose-api in turn (never both at once),
//! memory after load, reloads while idle, reloads under load, memory at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::StatusCode;
use tokio::runtime::Runtime;

use crate::hello;
use crate::load::{self, Connection, LoadReport, REQUEST_TIMEOUT, Target};
use crate::process::{self, ChildProcess, Memory, StopOutcome};
use crate::reload::{self, ReloadPlan, ReloadReport};

/// API key in the daemon's config. The bare server ignores it.
const API_KEY: &str = "bench-key-0123456789abcdef";
/// Pause before reading idle memory, so that start-up or closed connections have settled.
const IDLE_SETTLE: Duration = Duration::from_millis(500);

/// Settings of one `edge` run.
#[derive(Debug)]
pub struct EdgeOptions {
    /// goose-api binary.
    pub daemon: PathBuf,
    /// Measured load per server, split over the rounds.
    pub duration: Duration,
    /// Rounds of the comparison; each loads both servers, in alternating order.
    pub rounds: usize,
    /// Unmeasured load before each measured run.
    pub warmup: Duration,
    /// Keep-alive connections, each with one request in flight.
    pub concurrency: usize,
    /// Rename-saves in each reload phase.
    pub reloads: usize,
    /// Pause between polls for a reloaded model.
    pub poll_interval: Duration,
    /// Maximum wait for one reload to be seen.
    pub reload_timeout: Duration,
    /// `limits.header_read_timeout_secs` of the daemon; `None` leaves its default.
    pub header_read_timeout: Option<u64>,
}

/// Measurements of one `edge` run.
#[derive(Debug)]
pub struct EdgeResults {
    /// Load on the bare axum server, all rounds merged.
    pub bare: LoadReport,
    /// Each round of the comparison.
    pub rounds: Vec<Round>,
    /// Everything measured on goose-api.
    pub daemon: DaemonResults,
}

/// Measurements of one goose-api process.
#[derive(Debug)]
pub struct DaemonResults {
    /// Load, after a warm-up, with no reload, all rounds merged.
    pub load: LoadReport,
    /// Memory after start-up, before any request.
    pub memory_at_start: Memory,
    /// Memory after the load, once its connections were closed.
    pub memory_after_load: Memory,
    /// Memory after both reload phases.
    pub memory_at_end: Memory,
    /// Reloads with no other traffic.
    pub reloads_idle: ReloadReport,
    /// Reloads while the load generator runs.
    pub reloads_under_load: ReloadReport,
    /// The load that ran during `reloads_under_load`.
    pub load_during_reloads: LoadReport,
    /// Exit status and stop time of the daemon after SIGTERM.
    pub stop: StopOutcome,
}

/// One round of the comparison: the same load on each server in turn.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// The bare axum server's share.
    pub bare: ServerRound,
    /// goose-api's share.
    pub daemon: ServerRound,
}

impl Round {
    /// goose-api's requests per second over the bare server's.
    pub fn ratio(&self) -> f64 {
        self.daemon.requests_per_second / self.bare.requests_per_second
    }
}

/// Results of one server in one round.
#[derive(Debug, Clone, Copy)]
pub struct ServerRound {
    /// Requests that returned 200, per second.
    pub requests_per_second: f64,
    /// Requests that returned 200.
    pub requests: u64,
    /// CPU time, user and system, that the server process used during its load.
    pub cpu: Duration,
}

/// Runs every phase and stops every child it started, also when a phase fails.
pub fn run(options: &EdgeOptions) -> anyhow::Result<EdgeResults> {
    process::check_daemon_binary(&options.daemon)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    let workdir = tempfile::Builder::new()
        .prefix("goose-api-bench-")
        .tempdir()
        .context("cannot create a temporary directory for the daemon's config")?;
    let config_path = workdir.path().join("config.yaml");
    std::fs::write(&config_path, base_config(options))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let mut daemon = process::start_daemon(&options.daemon, &config_path, workdir.path())?;
    let phases = run_phases(&runtime, options, &mut daemon, &config_path);
    let stop = daemon.stop()?;
    let phases = phases.with_context(|| {
        format!(
            "goose-api exited with {} and logged {} unexpected lines, the first: {:?}",
            stop.status, stop.log.warnings, stop.log.samples
        )
    })?;
    Ok(EdgeResults {
        bare: phases.bare,
        rounds: phases.rounds,
        daemon: DaemonResults {
            load: phases.load,
            memory_at_start: phases.memory_at_start,
            memory_after_load: phases.memory_after_load,
            memory_at_end: phases.memory_at_end,
            reloads_idle: phases.reloads_idle,
            reloads_under_load: phases.reloads_under_load,
            load_during_reloads: phases.load_during_reloads,
            stop,
        },
    })
}

/// Config the daemon starts with. Each rename-save appends a `model` line to it.
fn base_config(options: &EdgeOptions) -> String {
    let mut config = format!("port: 0\napi_key: {API_KEY}\nlog:\n  level: info\n  format: json\n");
    if let Some(seconds) = options.header_read_timeout {
        config.push_str(&format!("limits:\n  header_read_timeout_secs: {seconds}\n"));
    }
    config
}

struct Phases {
    bare: LoadReport,
    rounds: Vec<Round>,
    load: LoadReport,
    memory_at_start: Memory,
    memory_after_load: Memory,
    memory_at_end: Memory,
    reloads_idle: ReloadReport,
    reloads_under_load: ReloadReport,
    load_during_reloads: LoadReport,
}

fn run_phases(
    runtime: &Runtime,
    options: &EdgeOptions,
    daemon: &mut ChildProcess,
    config_path: &Path,
) -> anyhow::Result<Phases> {
    std::thread::sleep(IDLE_SETTLE);
    let memory_at_start = process::memory(daemon.pid())?;
    let target = Arc::new(Target::new(daemon.address(), API_KEY)?);
    runtime.block_on(check_provider_config(&target))?;
    let hello = process::start_hello()?;
    let bare_target = Arc::new(Target::new(hello.address(), API_KEY)?);
    let bare = Server {
        name: "bare axum",
        target: &bare_target,
        pid: hello.pid(),
    };
    let measured = Server {
        name: "goose-api",
        target: &target,
        pid: daemon.pid(),
    };
    let comparison = runtime.block_on(compare(options, &bare, &measured));
    hello.stop()?;
    let Comparison { bare, load, rounds } = comparison?;
    daemon.ensure_running()?;
    std::thread::sleep(IDLE_SETTLE);
    let memory_after_load = process::memory(daemon.pid())?;

    let plan = |label| ReloadPlan {
        config_path: config_path.to_owned(),
        base_config: base_config(options),
        saves: options.reloads,
        poll_interval: options.poll_interval,
        timeout: options.reload_timeout,
        label,
    };
    let reloads_idle = runtime.block_on(reload::run(&plan("idle"), &target))?;
    daemon.ensure_running()?;
    let (reloads_under_load, load_during_reloads) = runtime.block_on(reload_under_load(
        &plan("load"),
        &target,
        options.concurrency,
    ))?;
    daemon.ensure_running()?;
    std::thread::sleep(IDLE_SETTLE);
    let memory_at_end = process::memory(daemon.pid())?;
    Ok(Phases {
        bare,
        rounds,
        load,
        memory_at_start,
        memory_after_load,
        memory_at_end,
        reloads_idle,
        reloads_under_load,
        load_during_reloads,
    })
}

/// Checks, before any load, that the daemon accepts the key and returns the default model.
async fn check_provider_config(target: &Target) -> anyhow::Result<()> {
    let mut connection = Connection::open(target.address).await?;
    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, connection.get(target))
        .await
        .with_context(|| {
            format!("GET /provider/config got no response within {REQUEST_TIMEOUT:?}")
        })??;
    let body = String::from_utf8_lossy(&body);
    if status != StatusCode::OK || body != hello::BODY {
        bail!(
            "GET /provider/config returned {status} with body {body}; expected 200 with {}",
            hello::BODY
        );
    }
    Ok(())
}

/// A server under comparison.
struct Server<'a> {
    name: &'static str,
    target: &'a Arc<Target>,
    pid: u32,
}

struct Comparison {
    bare: LoadReport,
    load: LoadReport,
    rounds: Vec<Round>,
}

/// Warms both servers up, then runs the rounds. Each round loads one server and then the
/// other, and the order alternates, so that a slow spell of the shared machine falls on both.
async fn compare(
    options: &EdgeOptions,
    bare: &Server<'_>,
    daemon: &Server<'_>,
) -> anyhow::Result<Comparison> {
    for server in [bare, daemon] {
        warm_up(server, options).await?;
    }
    let rounds = options.rounds.max(1);
    let share = options.duration / u32::try_from(rounds).unwrap_or(u32::MAX);
    let mut bare_reports = Vec::with_capacity(rounds);
    let mut daemon_reports = Vec::with_capacity(rounds);
    let mut measured = Vec::with_capacity(rounds);
    for index in 0..rounds {
        let (bare_round, daemon_round) = if index.is_multiple_of(2) {
            let first = measure(bare, options.concurrency, share).await?;
            (first, measure(daemon, options.concurrency, share).await?)
        } else {
            let first = measure(daemon, options.concurrency, share).await?;
            (measure(bare, options.concurrency, share).await?, first)
        };
        measured.push(Round {
            bare: bare_round.1,
            daemon: daemon_round.1,
        });
        bare_reports.push(bare_round.0);
        daemon_reports.push(daemon_round.0);
    }
    Ok(Comparison {
        bare: LoadReport::merge(bare_reports),
        load: LoadReport::merge(daemon_reports),
        rounds: measured,
    })
}

async fn warm_up(server: &Server<'_>, options: &EdgeOptions) -> anyhow::Result<()> {
    if options.warmup.is_zero() {
        return Ok(());
    }
    let warmup = load::run_for(server.target, options.concurrency, options.warmup).await?;
    if warmup.failed > 0 {
        eprintln!(
            "goose-api-bench: {} of {} warm-up requests to {} failed, the first: {:?}",
            warmup.failed,
            warmup.requests(),
            server.name,
            warmup.failure_samples
        );
    }
    Ok(())
}

/// Loads one server for `duration` and reads the CPU time its process used meanwhile.
async fn measure(
    server: &Server<'_>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(LoadReport, ServerRound)> {
    let cpu_before = process::cpu_time(server.pid)?;
    let report = load::run_for(server.target, concurrency, duration).await?;
    let cpu = process::cpu_time(server.pid)?.saturating_sub(cpu_before);
    let round = ServerRound {
        requests_per_second: report.requests_per_second(),
        requests: report.latencies.len() as u64,
        cpu,
    };
    Ok((report, round))
}

/// Makes the plan's rename-saves while the load generator runs, and stops the load after
/// the last reload was seen.
async fn reload_under_load(
    plan: &ReloadPlan,
    target: &Arc<Target>,
    concurrency: usize,
) -> anyhow::Result<(ReloadReport, LoadReport)> {
    let load = load::start(target, concurrency);
    let reloads = reload::run(plan, target).await;
    let load = load.finish().await?;
    Ok((reloads?, load))
}

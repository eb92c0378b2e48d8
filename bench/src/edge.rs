//! The `edge` benchmark. Its phases run one after the other, never two servers at once:
//! load on the bare axum server, then on one goose-api process: memory at start, load,
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
    /// Measured load per server.
    pub duration: Duration,
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
}

/// Measurements of one `edge` run.
#[derive(Debug)]
pub struct EdgeResults {
    /// Load on the bare axum server.
    pub bare: LoadReport,
    /// Everything measured on goose-api.
    pub daemon: DaemonResults,
}

/// Measurements of one goose-api process.
#[derive(Debug)]
pub struct DaemonResults {
    /// Load, after a warm-up, with no reload.
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

/// Runs every phase and stops every child it started, also when a phase fails.
pub fn run(options: &EdgeOptions) -> anyhow::Result<EdgeResults> {
    process::check_daemon_binary(&options.daemon)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    let bare = measure_bare(&runtime, options)?;
    let daemon = measure_daemon(&runtime, options)?;
    Ok(EdgeResults { bare, daemon })
}

fn measure_bare(runtime: &Runtime, options: &EdgeOptions) -> anyhow::Result<LoadReport> {
    let server = process::start_hello()?;
    let target = Arc::new(Target::new(server.address(), API_KEY)?);
    let report = runtime.block_on(measure_throughput(&target, options, "bare axum"));
    server.stop()?;
    report
}

fn measure_daemon(runtime: &Runtime, options: &EdgeOptions) -> anyhow::Result<DaemonResults> {
    let workdir = tempfile::Builder::new()
        .prefix("goose-api-bench-")
        .tempdir()
        .context("cannot create a temporary directory for the daemon's config")?;
    let config_path = workdir.path().join("config.yaml");
    std::fs::write(&config_path, base_config())
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let mut daemon = process::start_daemon(&options.daemon, &config_path, workdir.path())?;
    let phases = run_daemon_phases(runtime, options, &mut daemon, &config_path);
    let stop = daemon.stop()?;
    let phases = phases.with_context(|| {
        format!(
            "goose-api exited with {} and logged {} unexpected lines, the first: {:?}",
            stop.status, stop.log.warnings, stop.log.samples
        )
    })?;
    Ok(DaemonResults {
        load: phases.load,
        memory_at_start: phases.memory_at_start,
        memory_after_load: phases.memory_after_load,
        memory_at_end: phases.memory_at_end,
        reloads_idle: phases.reloads_idle,
        reloads_under_load: phases.reloads_under_load,
        load_during_reloads: phases.load_during_reloads,
        stop,
    })
}

/// Config the daemon starts with. Each rename-save appends a `model` line to it.
fn base_config() -> String {
    format!("port: 0\napi_key: {API_KEY}\nlog:\n  level: info\n  format: json\n")
}

struct DaemonPhases {
    load: LoadReport,
    memory_at_start: Memory,
    memory_after_load: Memory,
    memory_at_end: Memory,
    reloads_idle: ReloadReport,
    reloads_under_load: ReloadReport,
    load_during_reloads: LoadReport,
}

fn run_daemon_phases(
    runtime: &Runtime,
    options: &EdgeOptions,
    daemon: &mut ChildProcess,
    config_path: &Path,
) -> anyhow::Result<DaemonPhases> {
    std::thread::sleep(IDLE_SETTLE);
    let memory_at_start = process::memory(daemon.pid())?;
    let target = Arc::new(Target::new(daemon.address(), API_KEY)?);
    runtime.block_on(check_provider_config(&target))?;
    let load = runtime.block_on(measure_throughput(&target, options, "goose-api"))?;
    daemon.ensure_running()?;
    std::thread::sleep(IDLE_SETTLE);
    let memory_after_load = process::memory(daemon.pid())?;

    let plan = |label| ReloadPlan {
        config_path: config_path.to_owned(),
        base_config: base_config(),
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
    Ok(DaemonPhases {
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

/// Runs the warm-up, then the measured load, on one server.
async fn measure_throughput(
    target: &Arc<Target>,
    options: &EdgeOptions,
    server: &str,
) -> anyhow::Result<LoadReport> {
    if !options.warmup.is_zero() {
        let warmup = load::run_for(target, options.concurrency, options.warmup).await?;
        if warmup.failed > 0 {
            eprintln!(
                "goose-api-bench: {} of {} warm-up requests to {server} failed, the first: {:?}",
                warmup.failed,
                warmup.requests(),
                warmup.failure_samples
            );
        }
    }
    load::run_for(target, options.concurrency, options.duration).await
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

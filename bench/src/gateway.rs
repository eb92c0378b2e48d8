//! The `gateway` benchmark: goose-api as an MCP-to-REST gateway. It compares tool calls
//! through `POST /extensions/{name}/tools/{tool}` with the same calls through mcpo, both in
//! front of the same stdio MCP server program. It also times sequential calls through the
//! daemon against direct rmcp client calls, and the time from a manifest dropped into the
//! extensions directory until its tools are listed. Only one gateway runs at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::runtime::Runtime;

use crate::client::ApiClient;
use crate::gateway_direct::{self, ToolCall};
use crate::gateway_load::{self, CallReport, Caller, ToolRoute};
use crate::process::{self, ChildProcess, StopOutcome};
use crate::stats::Latencies;
use crate::{gateway_report, mcpo};

/// API key of both gateways, sent as `Authorization: Bearer`.
pub const API_KEY: &str = "bench-key-0123456789abcdef";
/// Extension name of the MCP server in the daemon's config.
const EXTENSION: &str = "echo";
/// Tool that both gateways call: it returns its `text` argument.
const TOOL: &str = "echo";
/// Text sent to the tool, which every successful response contains.
const ECHO_TEXT: &str = "bench-echo-text";
/// Maximum wait for a gateway to serve its first successful call, and for a removed
/// manifest's extension to disappear.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval between checks while waiting for readiness.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Interval between polls of `GET /extensions/{name}` after a manifest drop.
const DROP_POLL_INTERVAL: Duration = Duration::from_millis(2);
/// A dropped manifest whose tools are not listed by then counts as missed.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of each poll request.
const POLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `goose-api-bench gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Measured load per gateway, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=30))]
    duration: u64,
    /// Unmeasured load before each measured run, in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=10))]
    warmup: u64,
    /// Keep-alive connections, each with one call in flight at a time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Measured sequential calls through the daemon and through the direct rmcp client,
    /// each after a tenth as many unmeasured ones.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    sequential_calls: u32,
    /// Manifests dropped into the extensions directory, one after another.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    drops: u32,
    /// goose-api binary. Default: `goose-api` in the directory of this binary.
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// Stdio MCP server with an `echo` tool. Default: `examples/mcp-test-server` in the
    /// directory of the daemon, which `cargo build --release --example mcp-test-server`
    /// writes.
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
    /// mcpo program. Default: `target/bench-venv/mcpo/bin/mcpo`, which
    /// `bench/mcpo-venv.sh` installs.
    #[arg(long, value_name = "PATH")]
    mcpo: Option<PathBuf>,
}

/// Settings of one `gateway` run.
#[derive(Debug)]
pub struct GatewayOptions {
    /// goose-api binary.
    pub daemon: PathBuf,
    /// The stdio MCP server program.
    pub server: PathBuf,
    /// The mcpo program.
    pub mcpo: PathBuf,
    /// Measured load per gateway.
    pub duration: Duration,
    /// Unmeasured load before it.
    pub warmup: Duration,
    /// Keep-alive connections.
    pub concurrency: usize,
    /// Measured sequential calls per path.
    pub sequential_calls: usize,
    /// Manifest drops.
    pub drops: usize,
}

/// Measurements of one `gateway` run.
#[derive(Debug)]
pub struct GatewayResults {
    /// Concurrent calls through goose-api.
    pub daemon_load: CallReport,
    /// Concurrent calls through mcpo.
    pub mcpo_load: CallReport,
    /// Concurrent calls of the direct rmcp client.
    pub direct_load: CallReport,
    /// Sequential calls through goose-api.
    pub daemon_sequential: CallReport,
    /// Sequential calls of the direct rmcp client.
    pub direct_sequential: Latencies,
    /// Time from each manifest rename to its tools being listed.
    pub drops: Latencies,
    /// Drops whose tools were not listed within the timeout.
    pub missed_drops: usize,
    /// Exit status of goose-api and the lines it logged at WARN or ERROR level.
    pub daemon_stop: StopOutcome,
    /// Exit status of mcpo.
    pub mcpo_stop: StopOutcome,
    /// `/proc/loadavg` before the first and after the last measurement.
    pub load_average: (String, String),
}

/// Runs `goose-api-bench gateway` and prints its report.
pub fn main(args: GatewayArgs) -> anyhow::Result<()> {
    let daemon = match args.daemon {
        Some(path) => path,
        None => std::env::current_exe()
            .context("while locating this binary")?
            .with_file_name("goose-api"),
    };
    process::check_daemon_binary(&daemon)?;
    let server = args
        .server
        .unwrap_or_else(|| daemon.with_file_name("examples").join("mcp-test-server"));
    if !server.is_file() {
        bail!(
            "the MCP test server was not found at {}; build it with `cargo build --release \
             --example mcp-test-server` or pass --server PATH",
            server.display()
        );
    }
    let options = GatewayOptions {
        daemon,
        server,
        mcpo: match args.mcpo {
            Some(path) => path,
            None => mcpo::default_program()?,
        },
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        concurrency: usize::from(args.concurrency),
        sequential_calls: args.sequential_calls as usize,
        drops: args.drops as usize,
    };
    let results = run(&options)?;
    gateway_report::print(&options, &results);
    Ok(())
}

/// Runs the phases: goose-api (load, sequential calls, drops), the direct client
/// (sequential calls, load), mcpo (load).
pub fn run(options: &GatewayOptions) -> anyhow::Result<GatewayResults> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    let load_before = load_average()?;
    let daemon = measure_daemon(&runtime, options)?;
    let call = ToolCall {
        tool: TOOL.to_owned(),
        arguments: echo_arguments()
            .as_object()
            .cloned()
            .context("the tool arguments are not a JSON object")?,
        expected: ECHO_TEXT.to_owned(),
    };
    let direct_sequential = runtime.block_on(gateway_direct::time_calls(
        &options.server,
        &call,
        options.sequential_calls / 10,
        options.sequential_calls,
    ))?;
    let direct_load = runtime.block_on(gateway_direct::run_concurrent(
        &options.server,
        &call,
        options.concurrency,
        options.warmup,
        options.duration,
    ))?;
    let (mcpo_load, mcpo_stop) = measure_mcpo(&runtime, options)?;
    Ok(GatewayResults {
        daemon_load: daemon.load,
        mcpo_load,
        direct_load,
        daemon_sequential: daemon.sequential,
        direct_sequential,
        drops: daemon.drops,
        missed_drops: daemon.missed_drops,
        daemon_stop: daemon.stop,
        mcpo_stop,
        load_average: (load_before, load_average()?),
    })
}

struct DaemonMeasurements {
    load: CallReport,
    sequential: CallReport,
    drops: Latencies,
    missed_drops: usize,
    stop: StopOutcome,
}

fn measure_daemon(
    runtime: &Runtime,
    options: &GatewayOptions,
) -> anyhow::Result<DaemonMeasurements> {
    let workdir = DaemonWorkdir::create(&options.server)?;
    let daemon = process::start_daemon(&options.daemon, &workdir.config, workdir.dir.path())?;
    let path = format!("/extensions/{EXTENSION}/tools/{TOOL}");
    let route = Arc::new(ToolRoute::new(
        daemon.address(),
        &path,
        API_KEY,
        &echo_arguments(),
        &format!("{ECHO_TEXT:?}"),
    )?);
    let measured = runtime.block_on(async {
        wait_until_ready(&route).await?;
        let load = measure_load(&route, options).await?;
        let warmup_calls = options.sequential_calls / 10;
        gateway_load::run_sequential(&route, warmup_calls).await?;
        let sequential = gateway_load::run_sequential(&route, options.sequential_calls).await?;
        let (drops, missed_drops) = time_drops(&daemon, &workdir, options.drops).await?;
        anyhow::Ok((load, sequential, drops, missed_drops))
    });
    let stop = daemon.stop()?;
    let (load, sequential, drops, missed_drops) = measured?;
    Ok(DaemonMeasurements {
        load,
        sequential,
        drops,
        missed_drops,
        stop,
    })
}

fn measure_mcpo(
    runtime: &Runtime,
    options: &GatewayOptions,
) -> anyhow::Result<(CallReport, StopOutcome)> {
    let dir = tempfile::Builder::new()
        .prefix("goose-api-bench-mcpo-")
        .tempdir()
        .context("cannot create a temporary directory for mcpo")?;
    let stderr_file = dir.path().join("mcpo.stderr");
    let mcpo = mcpo::start(&options.mcpo, &options.server, API_KEY, &stderr_file)?;
    let route = Arc::new(ToolRoute::new(
        mcpo.address(),
        &format!("/{TOOL}"),
        API_KEY,
        &echo_arguments(),
        &format!("{ECHO_TEXT:?}"),
    )?);
    let measured = runtime.block_on(async {
        wait_until_ready(&route).await?;
        measure_load(&route, options).await
    });
    let stop = mcpo.stop()?;
    match measured {
        Ok(load) => Ok((load, stop)),
        Err(error) => {
            let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
            Err(error.context(format!("mcpo's stderr:\n{stderr}")))
        }
    }
}

/// Sends the warm-up load, then the measured load, on fresh connections each.
async fn measure_load(
    route: &Arc<ToolRoute>,
    options: &GatewayOptions,
) -> anyhow::Result<CallReport> {
    if !options.warmup.is_zero() {
        gateway_load::run_for(route, options.concurrency, options.warmup).await?;
    }
    gateway_load::run_for(route, options.concurrency, options.duration).await
}

fn echo_arguments() -> Value {
    json!({ "text": ECHO_TEXT })
}

/// Calls the route until one call succeeds, which shows that the gateway's MCP session is up.
async fn wait_until_ready(route: &ToolRoute) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let attempt = match Caller::open(route.address).await {
            Ok(mut caller) => caller.call(route).await,
            Err(error) => Err(error),
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context(format!(
                    "no successful call to {} within {READY_TIMEOUT:?}",
                    route.address
                )));
            }
            Err(_) => tokio::time::sleep(READY_POLL_INTERVAL).await,
        }
    }
}

/// The daemon's working directory: its config and the extensions directory.
struct DaemonWorkdir {
    dir: TempDir,
    config: PathBuf,
    extensions: PathBuf,
    server: PathBuf,
}

impl DaemonWorkdir {
    fn create(server: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("goose-api-bench-")
            .tempdir()
            .context("cannot create a temporary directory for the daemon")?;
        let extensions = dir.path().join("extensions");
        std::fs::create_dir(&extensions)
            .with_context(|| format!("cannot create {}", extensions.display()))?;
        let quote = |text: &str| Value::from(text).to_string();
        let config_text = format!(
            "port: 0\n\
             api_key: {API_KEY}\n\
             extensions_dir: {extensions}\n\
             extensions:\n\
            \x20 {EXTENSION}:\n\
            \x20   type: stdio\n\
            \x20   cmd: {server}\n\
             log:\n\
            \x20 level: info\n\
            \x20 format: json\n",
            extensions = quote(&extensions.to_string_lossy()),
            server = quote(&server.to_string_lossy()),
        );
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, config_text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Self {
            dir,
            config,
            extensions,
            server: server.to_path_buf(),
        })
    }

    /// Writes a manifest of the MCP server outside the extensions directory and renames it
    /// into it, as an operator's `mv` does. Returns the path in the directory.
    fn drop_manifest(&self, name: &str) -> anyhow::Result<PathBuf> {
        let staged = self.dir.path().join(format!("{name}.yaml"));
        let manifest = format!(
            "type: stdio\ncmd: {}\n",
            Value::from(self.server.to_string_lossy())
        );
        std::fs::write(&staged, manifest)
            .with_context(|| format!("cannot write {}", staged.display()))?;
        let target = self.extensions.join(format!("{name}.yaml"));
        std::fs::rename(&staged, &target)
            .with_context(|| format!("cannot rename {} into place", staged.display()))?;
        Ok(target)
    }
}

/// Drops `count` manifests one after another. Times each from the rename until
/// `GET /extensions/{name}` lists the `echo` tool, then deletes the manifest and waits
/// until the extension is gone before the next drop.
async fn time_drops(
    daemon: &ChildProcess,
    workdir: &DaemonWorkdir,
    count: usize,
) -> anyhow::Result<(Latencies, usize)> {
    let mut client = ApiClient::connect(daemon.address(), API_KEY).await?;
    let mut samples = Vec::with_capacity(count);
    let mut missed = 0;
    for index in 0..count {
        let name = format!("dropped{index}");
        let path = format!("/extensions/{name}");
        let manifest = workdir.drop_manifest(&name)?;
        let dropped_at = Instant::now();
        loop {
            if lists_echo(&mut client, &path).await? {
                samples.push(dropped_at.elapsed());
                break;
            }
            if dropped_at.elapsed() >= DROP_TIMEOUT {
                missed += 1;
                break;
            }
            tokio::time::sleep(DROP_POLL_INTERVAL).await;
        }
        std::fs::remove_file(&manifest)
            .with_context(|| format!("cannot delete {}", manifest.display()))?;
        wait_until_gone(&mut client, &path).await?;
    }
    Ok((Latencies::from_unsorted(samples), missed))
}

async fn lists_echo(client: &mut ApiClient, path: &str) -> anyhow::Result<bool> {
    let (status, body) = tokio::time::timeout(POLL_REQUEST_TIMEOUT, client.get(path))
        .await
        .with_context(|| format!("GET {path} got no response within {POLL_REQUEST_TIMEOUT:?}"))??;
    if status != hyper::StatusCode::OK {
        return Ok(false);
    }
    let status: Value = serde_json::from_slice(&body)
        .with_context(|| format!("GET {path} returned a body that is not JSON"))?;
    let tools = status.get("tools").and_then(Value::as_array);
    Ok(tools.is_some_and(|tools| tools.iter().any(|tool| tool == TOOL)))
}

async fn wait_until_gone(client: &mut ApiClient, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let (status, _) = tokio::time::timeout(POLL_REQUEST_TIMEOUT, client.get(path))
            .await
            .with_context(|| {
                format!("GET {path} got no response within {POLL_REQUEST_TIMEOUT:?}")
            })??;
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "GET {path} still returned {status} {READY_TIMEOUT:?} after its manifest was deleted"
            );
        }
        tokio::time::sleep(READY_POLL_INTERVAL).await;
    }
}

/// Reads the first three fields of `/proc/loadavg`: the 1, 5 and 15 minute averages.
fn load_average() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/proc/loadavg").context("cannot read /proc/loadavg")?;
    Ok(text
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" "))
}

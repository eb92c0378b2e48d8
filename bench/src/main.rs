//! Benchmarks of goose-api.
//!
//! `goose-api-bench edge` measures the daemon against a bare axum server, times config
//! reloads, counts requests that fail during reloads under load and reads the daemon's
//! memory. `goose-api-bench hello` is the bare server, which `edge` starts as a child.
//! `turn` times agent turns against an instant provider, and `sessions` measures concurrent
//! sessions, listing and memory per session on SQLite and PostgreSQL. `mixed` runs many
//! concurrent clients over mixed routes and counts errors. `gateway` compares tool calls
//! through the daemon with mcpo and with a direct MCP client.

mod agent_daemon;
mod client;
mod edge;
mod gateway;
mod gateway_direct;
mod gateway_load;
mod gateway_report;
mod hello;
mod load;
mod mcpo;
mod mixed;
mod mixed_monitor;
mod mixed_report;
mod mixed_routes;
mod process;
mod provider;
mod reload;
mod report;
mod seed;
mod sessions;
mod sessions_report;
mod stats;
mod turn;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Benchmarks of goose-api, run against processes and servers on 127.0.0.1 only.
#[derive(Debug, Parser)]
#[command(name = "goose-api-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure requests per second against bare axum, reload latency, requests failed
    /// during reloads under load, and the daemon's resident memory; print a Markdown table.
    Edge(EdgeArgs),
    /// Serve the bare axum baseline on 127.0.0.1 and print its port on stdout.
    Hello,
    /// Time sequential agent turns with one plugin tool call against an instant provider,
    /// per provider wire format; print a Markdown table.
    Turn(TurnArgs),
    /// Measure concurrent one-turn sessions, memory per live session and session listing
    /// on SQLite and PostgreSQL; print a Markdown table.
    Sessions(SessionsArgs),
    /// Run many concurrent clients, each on its own connection, over mixed routes for a
    /// fixed time. Print requests per second, latency and errors per route, and the
    /// daemon's peak memory and open files. Exit with a failure status on any error.
    Mixed(MixedArgs),
    /// Compare tool calls through the daemon with mcpo and with a direct MCP client, and
    /// time manifest drops; print a Markdown table.
    Gateway(gateway::GatewayArgs),
}

/// The binaries that `turn` and `sessions` start.
#[derive(Debug, Args)]
struct AgentBinaryArgs {
    /// goose-api binary to run. Default: `goose-api` in the directory of this binary.
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// Demo plugin library to load as the extension `demo`. Default:
    /// `libgoose_plugin_demo.so` in the directory of the daemon.
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TurnArgs {
    #[command(flatten)]
    binaries: AgentBinaryArgs,
    /// Measured turns per provider format.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    turns: u32,
    /// Unmeasured turns per provider format before the measured ones.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    warmup_turns: u32,
}

#[derive(Debug, Args)]
struct SessionsArgs {
    #[command(flatten)]
    binaries: AgentBinaryArgs,
    /// Sessions started at once in each round, each on its own connection.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=2000))]
    concurrency: u32,
    /// Rounds of concurrent sessions.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Sessions inserted into the store with SQL before the daemon starts.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    stored: u64,
    /// Sessions started one after another for the memory measurement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    memory_sessions: u32,
    /// Timed requests for each of the two listed pages.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    list_requests: u32,
    /// Stored sessions newer than the cursor of the deep page.
    #[arg(long, default_value_t = 90_000)]
    deep_offset: u64,
    /// PostgreSQL database on 127.0.0.1 or localhost in which the run creates a schema of
    /// its own and drops it at the end.
    #[arg(
        long,
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
}

#[derive(Debug, Args)]
struct MixedArgs {
    #[command(flatten)]
    binaries: AgentBinaryArgs,
    /// Clients at once, each with its own keep-alive connection and one request in flight.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    clients: u32,
    /// Time during which the clients send requests, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
}

#[derive(Debug, Args)]
struct EdgeArgs {
    /// Measured load per server, in seconds, split over the rounds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    duration: u64,
    /// Rounds of the throughput comparison; each round loads both servers in turn.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: u16,
    /// Unmeasured load before each measured run, in seconds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=60))]
    warmup: u64,
    /// Keep-alive connections, each with one request in flight at a time.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Rename-saves of the config in each reload phase.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    reloads: u16,
    /// Interval between polls for the reloaded model, in milliseconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1000))]
    poll_interval_ms: u64,
    /// Maximum wait for one reload to be seen before it counts as missed, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=10_000))]
    reload_timeout_ms: u64,
    /// Sets the daemon's `limits.header_read_timeout_secs`, in seconds; 0 turns the limit
    /// off. Default: the daemon's own default.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    header_read_timeout: Option<u64>,
    /// goose-api binary to run. Default: `goose-api` in the directory of this binary.
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Edge(args) => run_edge(args),
        Command::Hello => hello::serve(),
        Command::Turn(args) => run_turn(args),
        Command::Sessions(args) => run_sessions(args),
        Command::Mixed(args) => run_mixed(args),
        Command::Gateway(args) => gateway::main(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("goose-api-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_edge(args: EdgeArgs) -> anyhow::Result<()> {
    let daemon = match args.daemon {
        Some(path) => path,
        None => std::env::current_exe()
            .context("while locating this binary")?
            .with_file_name("goose-api"),
    };
    let options = edge::EdgeOptions {
        daemon,
        duration: Duration::from_secs(args.duration),
        rounds: usize::from(args.rounds),
        warmup: Duration::from_secs(args.warmup),
        concurrency: usize::from(args.concurrency),
        reloads: usize::from(args.reloads),
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        reload_timeout: Duration::from_millis(args.reload_timeout_ms),
        header_read_timeout: args.header_read_timeout,
    };
    let results = edge::run(&options)?;
    report::print(&options, &results);
    Ok(())
}

fn run_turn(args: TurnArgs) -> anyhow::Result<()> {
    let options = turn::TurnOptions {
        binaries: agent_daemon::Binaries::locate(args.binaries.daemon, args.binaries.plugin)?,
        turns: args.turns as usize,
        warmup_turns: args.warmup_turns as usize,
    };
    let results = turn::run(&options)?;
    turn::print(&options, &results);
    Ok(())
}

fn run_sessions(args: SessionsArgs) -> anyhow::Result<()> {
    let options = sessions::SessionsOptions {
        binaries: agent_daemon::Binaries::locate(args.binaries.daemon, args.binaries.plugin)?,
        concurrency: args.concurrency as usize,
        rounds: args.rounds as usize,
        stored: args.stored,
        memory_sessions: args.memory_sessions as usize,
        list_requests: args.list_requests as usize,
        deep_offset: args.deep_offset,
        postgres_url: args.postgres_url,
    };
    let results = sessions::run(&options)?;
    sessions_report::print(&options, &results);
    Ok(())
}

fn run_mixed(args: MixedArgs) -> anyhow::Result<()> {
    let options = mixed::MixedOptions {
        binaries: agent_daemon::Binaries::locate(args.binaries.daemon, args.binaries.plugin)?,
        clients: args.clients as usize,
        duration: Duration::from_secs(args.duration),
    };
    let results = mixed::run(&options)?;
    mixed_report::print(&options, &results);
    mixed::ensure_no_errors(&results)
}

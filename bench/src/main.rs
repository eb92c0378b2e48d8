//! Benchmarks of the goose-api HTTP edge.
//!
//! `goose-api-bench edge` measures the daemon against a bare axum server, times config
//! reloads, counts requests that fail during reloads under load and reads the daemon's
//! memory. `goose-api-bench hello` is the bare server, which `edge` starts as a child.

mod edge;
mod hello;
mod load;
mod process;
mod reload;
mod report;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Benchmarks of the goose-api HTTP edge, run against processes on 127.0.0.1 only.
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
}

#[derive(Debug, Args)]
struct EdgeArgs {
    /// Measured load per server, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    duration: u64,
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
    /// goose-api binary to run. Default: `goose-api` in the directory of this binary.
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Edge(args) => run_edge(args),
        Command::Hello => hello::serve(),
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
        warmup: Duration::from_secs(args.warmup),
        concurrency: usize::from(args.concurrency),
        reloads: usize::from(args.reloads),
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        reload_timeout: Duration::from_millis(args.reload_timeout_ms),
    };
    let results = edge::run(&options)?;
    report::print(&options, &results);
    Ok(())
}

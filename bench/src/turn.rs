//! The `turn` benchmark: the time goose-api adds to one agent turn. For each provider wire
//! format it starts one daemon against the instant provider and sends sequential
//! `POST /session/start` requests, each a turn of two provider requests and one call of the
//! demo plugin's `echo`. Per turn it records the end-to-end latency and the provider
//! server's handler time, and the difference is the daemon's share.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Runtime;

use crate::agent_daemon::{self, AgentConfig, AgentWorkdir, Binaries};
use crate::client::ApiClient;
use crate::process::StopOutcome;
use crate::provider::{InstantProvider, WireFormat};
use crate::report::{describe_exit, p50_p99, thousands};
use crate::stats::Latencies;

/// Provider requests in one turn: the tool call, then the answer after the tool result.
const REQUESTS_PER_TURN: u64 = 2;
/// Failed turns after which a format's run stops early.
const MAX_FAILURES: usize = 10;

/// Settings of one `turn` run.
#[derive(Debug)]
pub struct TurnOptions {
    /// The daemon and the demo plugin.
    pub binaries: Binaries,
    /// Measured turns per format.
    pub turns: usize,
    /// Unmeasured turns before them.
    pub warmup_turns: usize,
}

/// Measurements of one wire format.
#[derive(Debug)]
pub struct FormatResults {
    /// Wire format of the instant provider.
    pub format: WireFormat,
    /// Time from sending `POST /session/start` to reading the last byte of its response.
    pub end_to_end: Latencies,
    /// The provider server's handler time, summed over the turn's requests.
    pub provider: Latencies,
    /// End-to-end latency minus the provider server's time, per turn.
    pub daemon_share: Latencies,
    /// Turns that failed, or made a number of provider requests other than two.
    pub failures: usize,
    /// The first few failures, described.
    pub failure_samples: Vec<String>,
    /// Exit status and warnings of the daemon.
    pub stop: StopOutcome,
}

/// Runs every format, one daemon after the other, and prints the report.
pub fn run(options: &TurnOptions) -> anyhow::Result<Vec<FormatResults>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    let provider = runtime.block_on(InstantProvider::start())?;
    let mut results = Vec::new();
    for format in WireFormat::ALL {
        results.push(measure_format(&runtime, options, &provider, format)?);
    }
    if provider.unexpected() > 0 {
        bail!(
            "the instant provider rejected {} requests, the first: {:?}",
            provider.unexpected(),
            provider.unexpected_samples()
        );
    }
    Ok(results)
}

fn measure_format(
    runtime: &Runtime,
    options: &TurnOptions,
    provider: &InstantProvider,
    format: WireFormat,
) -> anyhow::Result<FormatResults> {
    let workdir = AgentWorkdir::create(
        &options.binaries.plugin,
        &AgentConfig {
            format,
            provider_base_url: format.base_url(provider.address()),
            store_url: "sqlite://sessions.db".to_owned(),
        },
    )?;
    let daemon = workdir.start(&options.binaries.daemon)?;
    let turns = runtime.block_on(run_turns(daemon.address(), options, provider));
    let stop = daemon.stop()?;
    let turns = turns.with_context(|| {
        format!(
            "{}: goose-api exited with {} and logged {} unexpected lines, the first: {:?}",
            format.label(),
            describe_exit(stop.status),
            stop.log.warnings,
            stop.log.samples
        )
    })?;
    Ok(FormatResults {
        format,
        end_to_end: Latencies::from_unsorted(turns.end_to_end),
        provider: Latencies::from_unsorted(turns.provider),
        daemon_share: Latencies::from_unsorted(turns.daemon_share),
        failures: turns.failure_samples.len(),
        failure_samples: turns.failure_samples,
        stop,
    })
}

#[derive(Debug, Default)]
struct TurnSamples {
    end_to_end: Vec<Duration>,
    provider: Vec<Duration>,
    daemon_share: Vec<Duration>,
    failure_samples: Vec<String>,
}

async fn run_turns(
    address: std::net::SocketAddr,
    options: &TurnOptions,
    provider: &InstantProvider,
) -> anyhow::Result<TurnSamples> {
    let mut client = ApiClient::connect(address, agent_daemon::API_KEY).await?;
    agent_daemon::wait_for_plugin(&mut client).await?;
    for index in 0..options.warmup_turns {
        agent_daemon::start_session(&mut client, &format!("warm-up turn {index}"))
            .await
            .map_err(|problem| anyhow::anyhow!("warm-up turn {index} failed: {problem}"))?;
    }
    provider.take_totals();
    let mut samples = TurnSamples::default();
    for index in 0..options.turns {
        let prompt = format!("turn {index}");
        let sent_at = Instant::now();
        let outcome = agent_daemon::start_session(&mut client, &prompt).await;
        let elapsed = sent_at.elapsed();
        let totals = provider.take_totals();
        let problem = match outcome {
            Err(problem) => Some(problem),
            Ok(()) if totals.requests != REQUESTS_PER_TURN => Some(format!(
                "the turn made {} provider requests, expected {REQUESTS_PER_TURN}",
                totals.requests
            )),
            Ok(()) => None,
        };
        if let Some(problem) = problem {
            samples
                .failure_samples
                .push(format!("turn {index}: {problem}"));
            if samples.failure_samples.len() >= MAX_FAILURES {
                break;
            }
            // A failed turn may have broken the connection.
            client = ApiClient::connect(address, agent_daemon::API_KEY).await?;
            continue;
        }
        samples.end_to_end.push(elapsed);
        samples.provider.push(totals.handler_time);
        samples
            .daemon_share
            .push(elapsed.saturating_sub(totals.handler_time));
    }
    Ok(samples)
}

/// Prints the parameters, the results table and notes on stdout.
#[allow(clippy::print_stdout, reason = "the report is the output of `turn`")]
pub fn print(options: &TurnOptions, results: &[FormatResults]) {
    println!("{}", render(options, results));
}

fn render(options: &TurnOptions, results: &[FormatResults]) -> String {
    let mut lines = vec![
        format!(
            "Parameters: {} measured sequential turns per format after {} warm-up turns, \
             one daemon per format, SQLite store.",
            options.turns, options.warmup_turns
        ),
        String::new(),
        "| Provider format | Turns | End to end p50 / p99 | Provider server p50 / p99 | \
         Daemon's share p50 / p99 | Failed turns |"
            .to_owned(),
        "|---|---|---|---|---|---|".to_owned(),
    ];
    for result in results {
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} |",
            result.format.label(),
            thousands(result.end_to_end.len() as u64),
            p50_p99(&result.end_to_end, 2),
            p50_p99(&result.provider, 3),
            p50_p99(&result.daemon_share, 2),
            result.failures,
        ));
    }
    lines.push(String::new());
    for result in results {
        lines.push(format!(
            "{}: goose-api stopped {} ms after SIGTERM with {}{}, and logged {} lines at WARN \
             or ERROR level or outside JSON{}.",
            result.format.label(),
            result.stop.waited.as_millis(),
            describe_exit(result.stop.status),
            if result.stop.killed {
                " after SIGKILL"
            } else {
                ""
            },
            result.stop.log.warnings,
            if result.stop.log.samples.is_empty() {
                String::new()
            } else {
                format!(", the first: {:?}", result.stop.log.samples)
            },
        ));
        if !result.failure_samples.is_empty() {
            lines.push(format!("Failed turns: {:?}", result.failure_samples));
        }
    }
    lines.join("\n")
}

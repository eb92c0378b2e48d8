//! The baseline of the gateways: an rmcp client in this process that starts the MCP server
//! over stdio, as the daemon does, and calls its tool without HTTP in between.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RunningService};
use rmcp::{RoleClient, ServiceExt};
use tokio::process::{Child, Command};

use crate::gateway_load::CallReport;
use crate::load::MAX_FAILURE_SAMPLES;
use crate::stats::Latencies;

/// Maximum wait for the server's initialize handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum wait for one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Maximum wait for the server to exit after its stdin closed, before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed call, so that a server that is gone is not called in a tight loop.
const FAILURE_PAUSE: Duration = Duration::from_millis(10);

/// One call of one tool, and the text its result must contain.
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// Tool name.
    pub tool: String,
    /// Arguments object.
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// Text that a successful result contains.
    pub expected: String,
}

impl ToolCall {
    /// Sends the call through `peer` and checks its result.
    async fn send(&self, peer: &Peer<RoleClient>) -> anyhow::Result<()> {
        let params =
            CallToolRequestParams::new(self.tool.clone()).with_arguments(self.arguments.clone());
        let result = tokio::time::timeout(CALL_TIMEOUT, peer.call_tool(params))
            .await
            .with_context(|| format!("no response within {CALL_TIMEOUT:?}"))?
            .context("the call failed")?;
        let text = result
            .content
            .iter()
            .find_map(|part| part.as_text().map(|text| text.text.as_str()));
        if text.is_none_or(|text| !text.contains(&self.expected)) {
            bail!("the result {result:?} lacks the text {:?}", self.expected);
        }
        Ok(())
    }
}

/// A started MCP server and the client connected to it.
struct DirectClient {
    child: Child,
    client: RunningService<RoleClient, ()>,
}

impl DirectClient {
    async fn start(server: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", server.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let stdin = child.stdin.take().context("the server's stdin")?;
        let client = tokio::time::timeout(HANDSHAKE_TIMEOUT, ().serve((stdout, stdin)))
            .await
            .with_context(|| format!("no initialize response within {HANDSHAKE_TIMEOUT:?}"))?
            .context("the initialize handshake failed")?;
        Ok(Self { child, client })
    }

    /// Closes the client, which closes the server's stdin and so ends a well-behaved
    /// server, and kills the server if it has not exited after [`EXIT_TIMEOUT`].
    async fn stop(mut self) -> anyhow::Result<()> {
        self.client
            .cancel()
            .await
            .context("while closing the MCP client")?;
        if tokio::time::timeout(EXIT_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            self.child
                .kill()
                .await
                .context("while killing the MCP server")?;
        }
        Ok(())
    }
}

/// Starts `server`, makes `warmup` unmeasured and then `count` measured calls one after
/// another, and stops the server.
pub async fn time_calls(
    server: &Path,
    call: &ToolCall,
    warmup: usize,
    count: usize,
) -> anyhow::Result<Latencies> {
    let direct = DirectClient::start(server).await?;
    let peer = direct.client.peer().clone();
    let mut samples = Vec::with_capacity(count);
    for index in 0..warmup + count {
        let sent_at = Instant::now();
        call.send(&peer)
            .await
            .with_context(|| format!("direct call {index} failed"))?;
        if index >= warmup {
            samples.push(sent_at.elapsed());
        }
    }
    direct.stop().await?;
    Ok(Latencies::from_unsorted(samples))
}

/// Starts `server` and keeps `concurrency` calls in flight, for `warmup` unmeasured and
/// then for `duration` measured, and stops the server.
pub async fn run_concurrent(
    server: &Path,
    call: &ToolCall,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<CallReport> {
    let direct = DirectClient::start(server).await?;
    let peer = direct.client.peer().clone();
    if !warmup.is_zero() {
        call_for(&peer, call, concurrency, warmup).await?;
    }
    let report = call_for(&peer, call, concurrency, duration).await?;
    direct.stop().await?;
    Ok(report)
}

async fn call_for(
    peer: &Peer<RoleClient>,
    call: &ToolCall,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<CallReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (peer, call) = (peer.clone(), call.clone());
            tokio::spawn(call_until_stopped(peer, call, Arc::clone(&stop)))
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);

    let mut report = CallReport::default();
    let mut latencies = Vec::new();
    for worker in workers {
        let totals = worker.await.context("a direct call task failed")?;
        latencies.extend(totals.latencies);
        report.failed += totals.failed;
        report.failure_samples.extend(totals.failure_samples);
    }
    report.failure_samples.truncate(MAX_FAILURE_SAMPLES);
    report.latencies = Latencies::from_unsorted(latencies);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Calls of one task of [`call_for`].
#[derive(Debug, Default)]
struct WorkerTotals {
    latencies: Vec<Duration>,
    failed: u64,
    failure_samples: Vec<String>,
}

async fn call_until_stopped(
    peer: Peer<RoleClient>,
    call: ToolCall,
    stop: Arc<AtomicBool>,
) -> WorkerTotals {
    let mut totals = WorkerTotals::default();
    while !stop.load(Ordering::Relaxed) {
        let sent_at = Instant::now();
        match call.send(&peer).await {
            Ok(()) => totals.latencies.push(sent_at.elapsed()),
            Err(error) => {
                totals.failed += 1;
                if totals.failure_samples.len() < MAX_FAILURE_SAMPLES {
                    totals.failure_samples.push(format!("{error:#}"));
                }
                tokio::time::sleep(FAILURE_PAUSE).await;
            }
        }
    }
    totals
}

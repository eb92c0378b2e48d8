//! The baseline of the per-call overhead: an rmcp client in this process that starts the MCP
//! server over stdio, as the daemon does, and calls its tool one call after another.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use tokio::process::Command;

use crate::stats::Latencies;

/// Maximum wait for the server's initialize handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum wait for one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Maximum wait for the server to exit after its stdin closed, before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts `server`, makes `warmup` unmeasured and then `count` measured calls of `tool`
/// with `arguments`, and stops the server. Each result must contain `expected` as text.
pub async fn time_calls(
    server: &Path,
    tool: &str,
    arguments: &serde_json::Value,
    expected: &str,
    warmup: usize,
    count: usize,
) -> anyhow::Result<Latencies> {
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
    let arguments = arguments
        .as_object()
        .cloned()
        .context("the tool arguments must be a JSON object")?;

    let mut samples = Vec::with_capacity(count);
    for index in 0..warmup + count {
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments.clone());
        let sent_at = Instant::now();
        let result = tokio::time::timeout(CALL_TIMEOUT, client.call_tool(params))
            .await
            .with_context(|| format!("call {index} got no response within {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("call {index} failed"))?;
        let elapsed = sent_at.elapsed();
        let text = result
            .content
            .iter()
            .find_map(|part| part.as_text().map(|text| text.text.as_str()));
        if text.is_none_or(|text| !text.contains(expected)) {
            bail!("call {index} returned {result:?}, without the text {expected:?}");
        }
        if index >= warmup {
            samples.push(elapsed);
        }
    }

    // Cancelling the client closes the server's stdin, which ends a well-behaved server.
    client
        .cancel()
        .await
        .context("while closing the MCP client")?;
    if tokio::time::timeout(EXIT_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        child.kill().await.context("while killing the MCP server")?;
    }
    Ok(Latencies::from_unsorted(samples))
}

//! The task that keeps one extension's server running: connect, list tools, follow tool
//! list changes, and restart with exponential backoff after a crash, until stopped.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{self, Connection};
use super::convert;
use super::slot::{Slot, State};

/// Wait before the first restart after a failure.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Maximum wait between restarts, so a fixed server comes back within a minute.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A server that ran this long before crashing starts again from the initial backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Reason a connected server stopped serving.
enum Ended {
    /// The registry asked the supervisor to stop.
    Stopped,
    /// The server exited or the connection failed.
    Closed(String),
}

/// Event that woke a supervisor while its server runs.
enum Wake {
    Stop,
    Closed(String),
    ToolsChanged,
}

/// Runs `slot`'s server until `stop` is cancelled, then stops the server and reaps it.
pub async fn supervise(slot: Arc<Slot>, stop: CancellationToken) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        slot.set_starting();
        let definition = slot.definition();
        tracing::info!(extension = %slot.name, kind = ?definition.config.kind, "starting extension");
        let started = Instant::now();
        let connected = client::connect(
            &slot.name,
            &definition.config,
            &slot.tail,
            &slot.server_group,
            &slot.stdout_overflow,
            &stop,
        );
        match connected.await {
            Ok(mut connection) => {
                let ended = serve(&slot, &mut connection, &stop).await;
                slot.detach(match ended {
                    Ended::Stopped => State::Stopped,
                    Ended::Closed(_) => State::Failed,
                });
                let exit = connection.shutdown().await;
                match ended {
                    Ended::Stopped => {
                        tracing::info!(extension = %slot.name, exit = ?exit, "extension stopped");
                        slot.set_stopped();
                        return;
                    }
                    Ended::Closed(reason) => {
                        slot.set_failed(client::with_stderr(reason, &slot.tail));
                    }
                }
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = INITIAL_BACKOFF;
                }
            }
            Err(_) if stop.is_cancelled() => {
                slot.set_stopped();
                return;
            }
            Err(error) => slot.set_failed(error.0),
        }
        tracing::info!(extension = %slot.name, backoff_secs = backoff.as_secs(), "restarting extension after a backoff");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => {
                slot.set_stopped();
                return;
            }
        }
        slot.count_restart();
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Lists the server's tools, then follows tool list changes until the server ends or
/// `stop` is cancelled.
async fn serve(slot: &Slot, connection: &mut Connection, stop: &CancellationToken) -> Ended {
    let peer = connection.peer();
    match list_tools_unless_stopped(slot, connection, stop).await {
        Ok(tools) => {
            tracing::info!(extension = %slot.name, tools = tools.len(), "extension running");
            slot.set_running(peer, tools);
        }
        Err(ended) => return ended,
    }
    loop {
        let tools_changed = connection.tools_changed.clone();
        let wake = tokio::select! {
            () = stop.cancelled() => Wake::Stop,
            reason = connection.closed() => Wake::Closed(reason),
            () = tools_changed.notified() => Wake::ToolsChanged,
        };
        match wake {
            Wake::Stop => return Ended::Stopped,
            Wake::Closed(reason) => return Ended::Closed(reason),
            Wake::ToolsChanged => match list_tools_unless_stopped(slot, connection, stop).await {
                Ok(tools) => {
                    tracing::info!(extension = %slot.name, tools = tools.len(), "tool list changed");
                    slot.set_tools(tools);
                }
                Err(ended) => return ended,
            },
        }
    }
}

/// Lists the server's tools, giving up when `stop` is cancelled. The listing may take the
/// extension's whole `timeout`, and the registry waits for a stopping extension before it
/// applies any other change.
async fn list_tools_unless_stopped(
    slot: &Slot,
    connection: &Connection,
    stop: &CancellationToken,
) -> Result<Vec<crate::tools::ToolDefinition>, Ended> {
    tokio::select! {
        () = stop.cancelled() => Err(Ended::Stopped),
        listed = list_tools(slot, connection) => listed.map_err(Ended::Closed),
    }
}

async fn list_tools(
    slot: &Slot,
    connection: &Connection,
) -> Result<Vec<crate::tools::ToolDefinition>, String> {
    let limit = Duration::from_secs(slot.definition().config.timeout);
    let listed = tokio::time::timeout(limit, connection.peer().list_all_tools()).await;
    match listed {
        Ok(Ok(tools)) => Ok(tools
            .iter()
            .map(|tool| convert::tool_definition(&slot.name, tool))
            .collect()),
        Ok(Err(error)) => Err(format!("listing the server's tools failed: {error}")),
        Err(_) => Err(format!(
            "the server did not list its tools within {} s",
            limit.as_secs()
        )),
    }
}

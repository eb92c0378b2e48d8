//! Turning SIGINT and SIGTERM into the cancellation of one root token.

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM, logging which one arrived.
///
/// The handlers are installed before this returns, so a signal sent right after start-up
/// is not lost.
pub fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    let mut interrupt =
        signal(SignalKind::interrupt()).context("while installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("while installing the SIGTERM handler")?;
    tokio::spawn(async move {
        let reason = tokio::select! {
            _ = interrupt.recv() => "SIGINT received",
            _ = terminate.recv() => "SIGTERM received",
            _ = token.cancelled() => return,
        };
        tracing::info!(reason, "shutting down");
        token.cancel();
    });
    Ok(())
}

//! The daemon's lifetime: serve until the shutdown token is cancelled, then drain.

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigHandle};
use crate::extensions::Registry;
use crate::http::{self, AppState, Readiness};

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every in-flight request finished within the drain deadline.
    Drained,
    /// The drain deadline passed and the remaining connections were closed.
    DrainTimedOut,
}

/// Serves the API on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// in-flight requests finish within `shutdown.drain_timeout_secs` and stops the subsystems.
pub async fn run(
    config: ConfigHandle,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Stopped> {
    let readiness = Readiness::default();
    let extensions = Registry::start(config.clone());
    let state = AppState {
        config: config.clone(),
        readiness: readiness.clone(),
        extensions: extensions.clone(),
    };
    let watcher = config::spawn_watcher(config.clone(), shutdown.child_token())?;
    let app = http::router(state);
    let stop_accepting = shutdown.clone();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop_accepting.cancelled_owned())
            .await
    });
    readiness.set_ready();
    tracing::info!("ready");

    let finished_early = tokio::select! {
        _ = shutdown.cancelled() => None,
        finished = &mut server => Some(finished),
    };
    if let Some(finished) = finished_early {
        shutdown.cancel();
        extensions.shutdown().await;
        finished
            .context("the HTTP server task failed")?
            .context("the HTTP server failed")?;
        anyhow::bail!("the HTTP server stopped before shutdown was requested");
    }
    readiness.set_draining();
    let deadline = Duration::from_secs(config.current().config.shutdown.drain_timeout_secs);
    let stopped = match tokio::time::timeout(deadline, &mut server).await {
        Ok(finished) => {
            finished
                .context("the HTTP server task failed")?
                .context("the HTTP server failed")?;
            tracing::info!("all in-flight requests finished");
            Stopped::Drained
        }
        Err(_) => {
            server.abort();
            tracing::warn!(
                deadline_secs = deadline.as_secs(),
                "drain deadline passed; closing the remaining connections"
            );
            Stopped::DrainTimedOut
        }
    };
    // Servers stop after the drain, so requests still in flight could use their tools.
    extensions.shutdown().await;
    if let Err(error) = watcher.await {
        tracing::error!(%error, "config watcher task failed");
    }
    Ok(stopped)
}

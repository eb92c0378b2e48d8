//! The daemon's lifetime: serve until the shutdown token is cancelled, then drain.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigHandle};
use crate::extensions::Registry;
use crate::http::{self, AppState, Readiness, Services};
use crate::metrics::Metrics;
use crate::sessions::SessionManager;
use crate::store::Store;
use crate::tls::{self, CertStore, TlsListener};
use crate::tools::CountingTools;

/// Time the extensions get to stop at shutdown, after the HTTP drain. Stopping a stdio
/// server takes up to about 8 s when it ignores its closed stdin and SIGTERM.
const EXTENSIONS_STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Longest time between looks for idle sessions; shorter idle timeouts are checked at half
/// their length.
const MAX_IDLE_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

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
    let watcher = config::spawn_watcher(config.clone(), shutdown.child_token())?;
    let working_dir = std::env::current_dir().context("while reading the working directory")?;
    let store_url = config.current().config.store.url.clone();
    let store = Store::open(store_url.expose(), &working_dir)
        .await
        .with_context(|| format!("cannot open the session store {store_url}"))?;
    let metrics = Arc::new(Metrics::new().context("while registering the metrics")?);
    // TLS is set up before any extension server starts, so that its failure leaves none.
    let (listener, cert_watcher) = match tls_certs(&config, &working_dir)? {
        None => (Bound::Plain(listener), None),
        Some(certs) => {
            let tls_config = certs.server_config()?;
            let watcher = tls::spawn_cert_watcher(certs, config.clone(), shutdown.child_token())?;
            let listener = TlsListener::new(listener, tls_config, shutdown.child_token())
                .context("while starting the TLS listener")?;
            (Bound::Tls(listener), Some(watcher))
        }
    };
    let extensions = Registry::start(config.clone());
    #[cfg(target_os = "linux")]
    crate::extensions::orphans::spawn_sweeper(shutdown.child_token());
    let tools = Arc::new(CountingTools::new(
        Arc::new(extensions.clone()),
        metrics.clone(),
    ));
    let sessions = Arc::new(SessionManager::new(
        store.clone(),
        config.clone(),
        tools.clone(),
        metrics.clone(),
    ));
    let sweeper = spawn_idle_sweeper(sessions.clone(), config.clone(), shutdown.child_token());
    let state = AppState::new(Services {
        config: config.clone(),
        readiness: readiness.clone(),
        sessions: sessions.clone(),
        metrics,
        tools,
        extensions: extensions.clone(),
        rate_limits: Arc::default(),
    });
    let app = http::router(state);
    let mut server = match listener {
        Bound::Plain(listener) => spawn_server(listener, app, config.clone(), shutdown.clone()),
        Bound::Tls(listener) => spawn_server(listener, app, config.clone(), shutdown.clone()),
    };
    readiness.set_ready();
    tracing::info!("ready");

    // The server ends on its own when the token is cancelled, so the token is checked first:
    // an ended server counts as a failure only while shutdown was not requested.
    let finished_early = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        finished = &mut server => Some(finished),
    };
    if let Some(finished) = finished_early {
        shutdown.cancel();
        extensions.shutdown(EXTENSIONS_STOP_DEADLINE).await;
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
    sessions.cancel_all();
    // Servers stop after the drain, so requests still in flight could use their tools.
    extensions.shutdown(EXTENSIONS_STOP_DEADLINE).await;
    if let Err(error) = watcher.await {
        tracing::error!(%error, "config watcher task failed");
    }
    let _ = sweeper.await;
    if let Some(cert_watcher) = cert_watcher {
        let _ = cert_watcher.await;
    }
    store.close().await;
    Ok(stopped)
}

/// The listener the HTTP server accepts on.
enum Bound {
    Plain(TcpListener),
    Tls(TlsListener),
}

/// Loads the TLS certificate when `tls.cert_file` and `tls.key_file` are set; relative
/// paths start at the working directory.
fn tls_certs(
    config: &ConfigHandle,
    working_dir: &std::path::Path,
) -> anyhow::Result<Option<Arc<CertStore>>> {
    let tls = config.current().config.tls.clone();
    let (Some(cert_file), Some(key_file)) = (tls.cert_file, tls.key_file) else {
        return Ok(None);
    };
    let certs = CertStore::load(&working_dir.join(cert_file), &working_dir.join(key_file))?;
    tracing::info!(cert_file = %certs.files()[0].display(), "serving HTTPS");
    Ok(Some(certs))
}

/// Serves `app` on `listener` until `shutdown`, then waits for the open connections to
/// finish their requests. It does what `axum::serve` does, and also gives each connection
/// `limits.header_read_timeout_secs` to send a request's headers, which needs a hyper timer
/// that `axum::serve` does not set. With 0 no timer is armed.
fn spawn_server<L>(
    mut listener: L,
    app: axum::Router,
    config: ConfigHandle,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
{
    tokio::spawn(async move {
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let io = tokio::select! {
                (io, _) = listener.accept() => io,
                () = shutdown.cancelled() => break,
            };
            // Read for each connection, so a changed value applies to the next one.
            let header_timeout = match config.current().config.limits.header_read_timeout_secs {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            };
            let service = TowerToHyperService::new(app.clone());
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let mut builder = ConnectionBuilder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                let mut connection = std::pin::pin!(connection);
                // On shutdown the connection finishes its request in flight, then closes.
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, "connection closed with an error");
                }
            });
        }
        drop(listener);
        connections.close();
        connections.wait().await;
        Ok(())
    })
}

fn spawn_idle_sweeper(
    sessions: Arc<SessionManager>,
    config: ConfigHandle,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let idle = config.current().config.sessions.idle_timeout_secs;
            let interval =
                Duration::from_millis(idle.saturating_mul(500)).min(MAX_IDLE_SWEEP_INTERVAL);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {
                    let released = sessions.release_idle();
                    if released > 0 {
                        tracing::debug!(released, "released idle sessions");
                    }
                }
            }
        }
    })
}

//! Logging with tracing: text or JSON lines on stderr, with a level that reloads live.

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{ConfigHandle, LogConfig, LogFormat};

/// Lets the running daemon change its log filter.
#[derive(Debug, Clone)]
pub struct LogLevelHandle {
    filter: reload::Handle<EnvFilter, Registry>,
}

/// Installs the global subscriber; call once, from `main`.
pub fn init(log: &LogConfig) -> anyhow::Result<LogLevelHandle> {
    let filter = EnvFilter::try_new(&log.level)
        .with_context(|| format!("while parsing log.level {:?}", log.level))?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let writer = std::io::stderr;
    match log.format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
    }
    .context("while installing the log subscriber")?;
    Ok(LogLevelHandle { filter: handle })
}

impl LogLevelHandle {
    /// Starts a task that applies `log.level` from every new config snapshot.
    pub fn follow(self, config: &ConfigHandle, shutdown: CancellationToken) -> JoinHandle<()> {
        let mut snapshots = config.subscribe();
        let mut applied = config.current().config.log.level.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = snapshots.changed() => if changed.is_err() { break },
                }
                let level = snapshots.borrow_and_update().config.log.level.clone();
                if level != applied {
                    self.apply(&level);
                    applied = level;
                }
            }
        })
    }

    fn apply(&self, level: &str) {
        // Validation already parsed this filter, so failure here is not expected.
        match EnvFilter::try_new(level) {
            Ok(filter) => match self.filter.reload(filter) {
                Ok(()) => tracing::info!(level, "log level changed"),
                Err(error) => tracing::error!(%error, "cannot change the log level"),
            },
            Err(error) => tracing::error!(%error, level, "invalid log level"),
        }
    }
}

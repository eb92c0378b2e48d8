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

/// Builds the filter for `log.level`, with the genai crate's own events off unless the level
/// names `genai`. genai logs provider error bodies as they are, and a provider may repeat
/// the request's key or headers there. The daemon logs those failures itself, redacted.
fn log_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(level)?;
    if level.contains("genai") {
        return Ok(filter);
    }
    Ok(filter.add_directive("genai=off".parse()?))
}

/// Installs the global subscriber; call once, from `main`.
pub fn init(log: &LogConfig) -> anyhow::Result<LogLevelHandle> {
    let filter = log_filter(&log.level)
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
        match log_filter(level) {
            Ok(filter) => match self.filter.reload(filter) {
                Ok(()) => tracing::info!(level, "log level changed"),
                Err(error) => tracing::error!(%error, "cannot change the log level"),
            },
            Err(error) => tracing::error!(%error, level, "invalid log level"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genai_events_are_off_unless_named() {
        let filter = log_filter("debug").expect("valid filter");
        assert!(filter.to_string().contains("genai=off"), "{filter}");
        let filter = log_filter("info,genai=debug").expect("valid filter");
        assert!(!filter.to_string().contains("genai=off"), "{filter}");
    }
}

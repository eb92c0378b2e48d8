//! Reload latency: rename-saves of the config file, each followed by polling
//! `GET /provider/config` until it returns the new model.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::StatusCode;

use crate::load::{Connection, MAX_FAILURE_SAMPLES, REQUEST_TIMEOUT, Target};
use crate::stats::Latencies;

/// A reload phase stops early after this many reloads in a row were not seen, because the
/// daemon has then stopped reloading and the rest would only wait out their timeouts.
pub const MAX_CONSECUTIVE_MISSES: usize = 3;

/// Settings of one reload phase.
#[derive(Debug)]
pub struct ReloadPlan {
    /// The daemon's config file.
    pub config_path: PathBuf,
    /// Config text without a `model` key; each save appends a new `model` line.
    pub base_config: String,
    /// Rename-saves to make.
    pub saves: usize,
    /// Pause between two polls.
    pub poll_interval: Duration,
    /// Maximum time from a rename to the new model before the reload counts as missed.
    pub timeout: Duration,
    /// Prefix of the model names, which keeps them unique across phases.
    pub label: &'static str,
}

/// Totals of one reload phase.
#[derive(Debug)]
pub struct ReloadReport {
    /// Time from each rename until a response returned the new model.
    pub latencies: Latencies,
    /// Rename-saves made.
    pub saves: usize,
    /// Saves whose model was not returned within the plan's timeout.
    pub missed: usize,
    /// Whether the phase stopped after [`MAX_CONSECUTIVE_MISSES`] misses in a row.
    pub stopped_early: bool,
    /// Polling requests sent.
    pub polls: u64,
    /// Polls that returned another status than 200 or a body without a model, or that got no
    /// response.
    pub failed_polls: u64,
    /// The first few failed polls, described.
    pub failure_samples: Vec<String>,
}

/// Makes the plan's rename-saves one after the other, waiting for each to be seen.
pub async fn run(plan: &ReloadPlan, target: &Target) -> anyhow::Result<ReloadReport> {
    let mut poller = Poller {
        connection: Connection::open(target.address).await?,
        target,
        polls: 0,
        failed: 0,
        failure_samples: Vec::new(),
    };
    let mut samples = Vec::with_capacity(plan.saves);
    let mut saves = 0;
    let mut missed = 0;
    let mut consecutive_misses = 0;
    while saves < plan.saves && consecutive_misses < MAX_CONSECUTIVE_MISSES {
        let model = format!("bench-{}-{saves}", plan.label);
        let text = format!("{}model: {model}\n", plan.base_config);
        rename_save(&plan.config_path, &text)?;
        let saved_at = Instant::now();
        saves += 1;
        match poller.wait_for_model(&model, saved_at, plan).await? {
            Some(latency) => {
                samples.push(latency);
                consecutive_misses = 0;
            }
            None => {
                missed += 1;
                consecutive_misses += 1;
            }
        }
    }
    Ok(ReloadReport {
        latencies: Latencies::from_unsorted(samples),
        saves,
        missed,
        stopped_early: saves < plan.saves,
        polls: poller.polls,
        failed_polls: poller.failed,
        failure_samples: poller.failure_samples,
    })
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, as editors do.
fn rename_save(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("yaml.tmp");
    std::fs::write(&temporary, text)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| {
        format!(
            "cannot rename {} to {}",
            temporary.display(),
            path.display()
        )
    })
}

/// One keep-alive connection that polls the daemon and counts failed polls.
struct Poller<'a> {
    connection: Connection,
    target: &'a Target,
    polls: u64,
    failed: u64,
    failure_samples: Vec<String>,
}

impl Poller<'_> {
    /// Polls until a response returns `model` and returns the time since `saved_at`, or
    /// `None` once the plan's timeout has passed.
    async fn wait_for_model(
        &mut self,
        model: &str,
        saved_at: Instant,
        plan: &ReloadPlan,
    ) -> anyhow::Result<Option<Duration>> {
        loop {
            self.polls += 1;
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.connection.get(self.target));
            match outcome.await {
                Ok(Ok((StatusCode::OK, body))) => match model_of(&body) {
                    Some(served) if served == model => return Ok(Some(saved_at.elapsed())),
                    Some(_) => {}
                    None => self.record_failure(format!(
                        "200 without a model, body {}",
                        String::from_utf8_lossy(&body)
                    )),
                },
                Ok(Ok((status, body))) => self.record_failure(format!(
                    "status {status}, body {}",
                    String::from_utf8_lossy(&body)
                )),
                Ok(Err(error)) => {
                    self.record_failure(format!("{error:#}"));
                    self.connection = Connection::open(self.target.address).await?;
                }
                Err(_) => {
                    self.record_failure(format!("no response within {REQUEST_TIMEOUT:?}"));
                    self.connection = Connection::open(self.target.address).await?;
                }
            }
            if saved_at.elapsed() >= plan.timeout {
                return Ok(None);
            }
            tokio::time::sleep(plan.poll_interval).await;
        }
    }

    fn record_failure(&mut self, description: String) {
        self.failed += 1;
        if self.failure_samples.len() < MAX_FAILURE_SAMPLES {
            self.failure_samples.push(description);
        }
    }
}

/// Returns the `model` field of a `GET /provider/config` body.
fn model_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("model")?.as_str().map(ToOwned::to_owned)
}

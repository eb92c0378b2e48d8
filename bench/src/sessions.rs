//! The `sessions` benchmark, run on SQLite and on PostgreSQL one after the other. Per
//! backend, the daemon starts once to create its tables and stops, and the stored sessions
//! are inserted with SQL. The daemon then starts again, and the run reads the memory that
//! live sessions take, runs rounds of concurrent one-turn sessions, and times
//! `GET /sessions` on the first page and on a page deep in the cursor.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::agent_daemon::{self, AgentConfig, AgentWorkdir, Binaries, CHECK_TIMEOUT};
use crate::client::ApiClient;
use crate::process::{self, ChildProcess, Memory, StopOutcome};
use crate::provider::{InstantProvider, WireFormat};
use crate::seed::{self, PostgresSchema, SeededSessions};
use crate::stats::Latencies;

/// `store.url` of the SQLite runs, relative to the daemon's working directory.
const SQLITE_STORE: &str = "sqlite://sessions.db";
/// Page size of the timed listings.
pub const PAGE_SIZE: usize = 50;
/// Failures described per phase; further ones are only counted.
const MAX_FAILURE_SAMPLES: usize = 5;
/// Pause before reading memory, so that closed connections and finished tasks have settled.
const SETTLE: Duration = Duration::from_millis(500);
/// Turns before the measured phases, so that connections and caches are warm.
const WARMUP_TURNS: usize = 20;

/// Settings of one `sessions` run.
#[derive(Debug)]
pub struct SessionsOptions {
    /// The daemon and the demo plugin.
    pub binaries: Binaries,
    /// Sessions started at once in each round.
    pub concurrency: usize,
    /// Rounds of concurrent sessions.
    pub rounds: usize,
    /// Sessions inserted into the store before the daemon starts.
    pub stored: u64,
    /// Sessions started one after another for the memory measurement.
    pub memory_sessions: usize,
    /// Timed requests per listing.
    pub list_requests: usize,
    /// Depth of the deep page: seeded sessions newer than its cursor.
    pub deep_offset: u64,
    /// PostgreSQL database in which the run creates and drops its schema.
    pub postgres_url: String,
}

/// Store backend of one daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the daemon's working directory.
    Sqlite,
    /// A schema of its own in the PostgreSQL database.
    Postgres,
}

impl Backend {
    /// Name of the backend in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// Outcomes of a phase that sends requests and counts failures.
#[derive(Debug, Default)]
pub struct Phase {
    /// Latencies of the requests that succeeded.
    pub latencies: Latencies,
    /// Requests that failed.
    pub failed: usize,
    /// The first few failures, described.
    pub failure_samples: Vec<String>,
    /// Wall time of the phase.
    pub elapsed: Duration,
}

/// Measurements of one backend.
#[derive(Debug)]
pub struct BackendResults {
    /// Store backend.
    pub backend: Backend,
    /// The seeded sessions and the time their insert took.
    pub seeded: SeededSessions,
    /// The concurrent one-turn sessions, over every round.
    pub concurrent: Phase,
    /// Live sessions and VmRSS before the memory phase.
    pub memory_before: (u64, Memory),
    /// Live sessions and VmRSS after it.
    pub memory_after: (u64, Memory),
    /// Sessions in the store when the listings ran.
    pub stored_at_listing: u64,
    /// `GET /sessions?limit=50` with no cursor.
    pub first_page: Phase,
    /// `GET /sessions?limit=50` with a cursor deep in the list.
    pub deep_page: Phase,
    /// Provider requests that did not match the expected conversation.
    pub provider_unexpected: u64,
    /// Exit status and warnings of the measured daemon.
    pub stop: StopOutcome,
}

/// Runs SQLite, then PostgreSQL, and drops the PostgreSQL schema also when a phase fails.
pub fn run(options: &SessionsOptions) -> anyhow::Result<Vec<BackendResults>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    let sqlite = measure_backend(&runtime, options, Backend::Sqlite, SQLITE_STORE, None)?;
    let schema = runtime.block_on(PostgresSchema::create(&options.postgres_url))?;
    let store_url = schema.scoped_url();
    let postgres = measure_backend(
        &runtime,
        options,
        Backend::Postgres,
        &store_url,
        Some(schema.name()),
    );
    let dropped = runtime.block_on(schema.drop_schema());
    let postgres = postgres?;
    dropped?;
    Ok(vec![sqlite, postgres])
}

fn measure_backend(
    runtime: &Runtime,
    options: &SessionsOptions,
    backend: Backend,
    store_url: &str,
    schema: Option<&str>,
) -> anyhow::Result<BackendResults> {
    let provider = runtime.block_on(InstantProvider::start())?;
    let workdir = AgentWorkdir::create(
        &options.binaries.plugin,
        &AgentConfig {
            format: WireFormat::Openai,
            provider_base_url: WireFormat::Openai.base_url(provider.address()),
            store_url: store_url.to_owned(),
        },
    )?;
    // The first start applies the migrations, so that the seeded rows use the daemon's own
    // schema.
    let migrating = workdir.start(&options.binaries.daemon)?;
    let first_stop = migrating.stop()?;
    if !first_stop.status.success() {
        bail!(
            "{}: goose-api exited with {} after its first start, logging {:?}",
            backend.label(),
            first_stop.status,
            first_stop.log.samples
        );
    }
    let seed_url = match schema {
        Some(_) => store_url.to_owned(),
        None => format!(
            "sqlite://{}?mode=rw",
            workdir.path().join("sessions.db").display()
        ),
    };
    let seeded = runtime.block_on(seed::insert_sessions(&seed_url, options.stored))?;

    let mut daemon = workdir.start(&options.binaries.daemon)?;
    let phases = run_phases(runtime, options, &mut daemon, &provider, seeded);
    let stop = daemon.stop()?;
    let phases = phases.with_context(|| {
        format!(
            "{}: goose-api exited with {} and logged {} unexpected lines, the first: {:?}",
            backend.label(),
            stop.status,
            stop.log.warnings,
            stop.log.samples
        )
    })?;
    Ok(BackendResults {
        backend,
        seeded,
        concurrent: phases.concurrent,
        memory_before: phases.memory_before,
        memory_after: phases.memory_after,
        stored_at_listing: phases.stored_at_listing,
        first_page: phases.first_page,
        deep_page: phases.deep_page,
        provider_unexpected: provider.unexpected(),
        stop,
    })
}

struct Phases {
    concurrent: Phase,
    memory_before: (u64, Memory),
    memory_after: (u64, Memory),
    stored_at_listing: u64,
    first_page: Phase,
    deep_page: Phase,
}

fn run_phases(
    runtime: &Runtime,
    options: &SessionsOptions,
    daemon: &mut ChildProcess,
    provider: &InstantProvider,
    seeded: SeededSessions,
) -> anyhow::Result<Phases> {
    let address = daemon.address();
    let mut client = runtime.block_on(ApiClient::connect(address, agent_daemon::API_KEY))?;
    runtime.block_on(agent_daemon::wait_for_plugin(&mut client))?;
    for index in 0..WARMUP_TURNS {
        runtime
            .block_on(agent_daemon::start_session(
                &mut client,
                &format!("warm-up {index}"),
            ))
            .map_err(|problem| anyhow::anyhow!("warm-up turn {index} failed: {problem}"))?;
    }

    // Memory is read before the concurrent rounds, because the allocator reuses the memory
    // that their concurrent turns freed, which would hide the growth per session.
    std::thread::sleep(SETTLE);
    let live_before = runtime.block_on(agent_daemon::active_sessions(&mut client))?;
    let memory_before = process::memory(daemon.pid())?;
    let created = runtime.block_on(sequential_sessions(&mut client, options.memory_sessions));
    if created.failed > 0 {
        bail!(
            "{} of {} sessions of the memory phase failed, the first: {:?}",
            created.failed,
            options.memory_sessions,
            created.failure_samples
        );
    }
    std::thread::sleep(SETTLE);
    let live_after = runtime.block_on(agent_daemon::active_sessions(&mut client))?;
    let memory_after = process::memory(daemon.pid())?;

    let concurrent = runtime.block_on(concurrent_rounds(address, options))?;
    daemon.ensure_running()?;

    let stored_at_listing = seeded.count
        + (WARMUP_TURNS + options.concurrency * options.rounds + options.memory_sessions) as u64
        - concurrent.failed as u64;
    let first_path = format!("/sessions?limit={PAGE_SIZE}");
    runtime.block_on(check_first_page(&mut client, &first_path))?;
    let first_page = runtime.block_on(time_listing(
        &mut client,
        &first_path,
        options.list_requests,
        None,
    ));
    let cursor_index = seeded.count.saturating_sub(options.deep_offset);
    if cursor_index < PAGE_SIZE as u64 {
        bail!(
            "--deep-offset {} leaves fewer than {PAGE_SIZE} of {} stored sessions after the \
             cursor; lower it",
            options.deep_offset,
            seeded.count
        );
    }
    let deep_path = format!(
        "/sessions?limit={PAGE_SIZE}&cursor={}",
        seeded.cursor(cursor_index)
    );
    let deep_page = runtime.block_on(time_listing(
        &mut client,
        &deep_path,
        options.list_requests,
        Some(SeededSessions::id(cursor_index - 1)),
    ));
    daemon.ensure_running()?;
    if provider.unexpected() > 0 {
        bail!(
            "the instant provider rejected {} requests, the first: {:?}",
            provider.unexpected(),
            provider.unexpected_samples()
        );
    }
    Ok(Phases {
        concurrent,
        memory_before: (live_before, memory_before),
        memory_after: (live_after, memory_after),
        stored_at_listing,
        first_page,
        deep_page,
    })
}

/// Starts `concurrency` sessions at once, each on its own connection, and waits for all of
/// them before the next round.
async fn concurrent_rounds(
    address: SocketAddr,
    options: &SessionsOptions,
) -> anyhow::Result<Phase> {
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut failure_samples = Vec::new();
    let mut elapsed = Duration::ZERO;
    for round in 0..options.rounds {
        let started = Instant::now();
        let tasks: Vec<_> = (0..options.concurrency)
            .map(|index| {
                tokio::spawn(async move {
                    let prompt = format!("round {round} session {index}");
                    let mut client = ApiClient::connect(address, agent_daemon::API_KEY)
                        .await
                        .map_err(|error| format!("{error:#}"))?;
                    let sent_at = Instant::now();
                    agent_daemon::start_session(&mut client, &prompt).await?;
                    Ok::<_, String>(sent_at.elapsed())
                })
            })
            .collect();
        for task in tasks {
            match task.await.context("a session task panicked")? {
                Ok(latency) => latencies.push(latency),
                Err(problem) => {
                    failed += 1;
                    if failure_samples.len() < MAX_FAILURE_SAMPLES {
                        failure_samples.push(format!("round {round}: {problem}"));
                    }
                }
            }
        }
        elapsed += started.elapsed();
    }
    Ok(Phase {
        latencies: Latencies::from_unsorted(latencies),
        failed,
        failure_samples,
        elapsed,
    })
}

async fn sequential_sessions(client: &mut ApiClient, count: usize) -> Phase {
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    let mut failed = 0;
    let mut failure_samples = Vec::new();
    for index in 0..count {
        let sent_at = Instant::now();
        match agent_daemon::start_session(client, &format!("memory session {index}")).await {
            Ok(()) => latencies.push(sent_at.elapsed()),
            Err(problem) => {
                failed += 1;
                if failure_samples.len() < MAX_FAILURE_SAMPLES {
                    failure_samples.push(problem);
                }
            }
        }
    }
    Phase {
        latencies: Latencies::from_unsorted(latencies),
        failed,
        failure_samples,
        elapsed: started.elapsed(),
    }
}

/// Checks that the first page is full and that its `next_cursor` has the form
/// `<created_at>_<id>` of its last session, which the deep-page cursor imitates.
async fn check_first_page(client: &mut ApiClient, path: &str) -> anyhow::Result<()> {
    let page = client.get_json_ok(path, CHECK_TIMEOUT).await?;
    let sessions = page
        .get("sessions")
        .and_then(Value::as_array)
        .with_context(|| format!("GET {path} has no sessions array"))?;
    let last = sessions
        .last()
        .with_context(|| format!("GET {path} returned no sessions"))?;
    let expected = format!(
        "{}_{}",
        last.get("created_at").and_then(Value::as_i64).unwrap_or(-1),
        last.get("id").and_then(Value::as_str).unwrap_or_default()
    );
    let next_cursor = page.get("next_cursor").and_then(Value::as_str);
    if sessions.len() != PAGE_SIZE || next_cursor != Some(expected.as_str()) {
        bail!(
            "GET {path} returned {} sessions and next_cursor {next_cursor:?}; expected \
             {PAGE_SIZE} and {expected:?}",
            sessions.len()
        );
    }
    Ok(())
}

/// Sends `GET path` `count` times on one connection. A response counts as failed unless it
/// is 200 with a full page, whose first session is `first_id` when given.
async fn time_listing(
    client: &mut ApiClient,
    path: &str,
    count: usize,
    first_id: Option<String>,
) -> Phase {
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    let mut failed = 0;
    let mut failure_samples = Vec::new();
    for _ in 0..count {
        let sent_at = Instant::now();
        let outcome = client.get_json_ok(path, CHECK_TIMEOUT).await;
        let latency = sent_at.elapsed();
        let problem = match outcome {
            Err(error) => Some(format!("{error:#}")),
            Ok(page) => check_page(&page, first_id.as_deref()),
        };
        match problem {
            None => latencies.push(latency),
            Some(problem) => {
                failed += 1;
                if failure_samples.len() < MAX_FAILURE_SAMPLES {
                    failure_samples.push(problem);
                }
            }
        }
    }
    Phase {
        latencies: Latencies::from_unsorted(latencies),
        failed,
        failure_samples,
        elapsed: started.elapsed(),
    }
}

fn check_page(page: &Value, first_id: Option<&str>) -> Option<String> {
    let sessions = page.get("sessions").and_then(Value::as_array);
    let count = sessions.map_or(0, Vec::len);
    if count != PAGE_SIZE {
        return Some(format!(
            "{count} sessions in the page, expected {PAGE_SIZE}"
        ));
    }
    let first = sessions
        .and_then(|sessions| sessions.first())
        .and_then(|session| session.get("id"))
        .and_then(Value::as_str);
    match first_id {
        Some(expected) if first != Some(expected) => Some(format!(
            "the page starts with {first:?}, expected {expected:?}"
        )),
        _ => None,
    }
}

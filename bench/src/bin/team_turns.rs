//! Turns per second of goose-api with an instant provider, on one replica and on three,
//! with a SQLite store and with a PostgreSQL store, in one run.
//!
//! The provider is an OpenAI Chat Completions endpoint served by this harness that returns
//! a completion for every request at once, so the numbers measure the daemon and its store.
//! Three replicas on one SQLite file are measured for comparison only: SQLite has no lock
//! across processes for a session's turns, so that setup is not supported for serving. Each worker owns
//! one session and sends each of its turns to the next replica in turn, so on three replicas
//! every turn continues a session that another replica ran last. Everything runs on
//! 127.0.0.1; the PostgreSQL runs use a schema created for the run and dropped after it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

/// Key of the benchmark's daemons, written into their config files.
const API_KEY: &str = "bench-key-0123456789abcdef";
/// Time allowed for a daemon to start and report its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Measure turns per second on one and three replicas, SQLite against PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "team_turns", about)]
struct Args {
    /// Measured load per configuration, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    duration: u64,
    /// Unmeasured load before each measured run, in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=30))]
    warmup: u64,
    /// Sessions running turns at the same time, one worker each.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// goose-api binary to run. Default: `goose-api` in the directory of this binary.
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// PostgreSQL database for the PostgreSQL runs, which are skipped without it. `psql`
    /// must be on the PATH to create and drop the run's schema.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
}

/// Store of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Totals of one measured run.
#[derive(Debug, Default)]
struct RunReport {
    turns: u64,
    errors: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let daemon = match &args.daemon {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("while locating this binary")?
            .with_file_name("goose-api"),
    };
    // The daemons run in directories of their own, so a relative path must be resolved first.
    let daemon = std::fs::canonicalize(&daemon).with_context(|| {
        format!(
            "goose-api binary {} not found; build it with `cargo build --release` or pass --daemon",
            daemon.display()
        )
    })?;
    let runtime = tokio::runtime::Runtime::new().context("while starting the async runtime")?;
    runtime.block_on(run(args, daemon))
}

async fn run(args: Args, daemon: PathBuf) -> anyhow::Result<()> {
    let provider = serve_instant_provider().await?;
    let mut backends = vec![Backend::Sqlite];
    if args.postgres_url.is_some() {
        backends.push(Backend::Postgres);
    } else {
        eprintln!(
            "PostgreSQL runs skipped: pass --postgres-url or set GOOSE_API_TEST_POSTGRES_URL"
        );
    }
    let mut rows = Vec::new();
    for backend in backends {
        for replicas in [1, 3] {
            eprintln!("running {backend:?} with {replicas} replica(s)");
            let report = measure(&args, &daemon, provider, backend, replicas).await?;
            rows.push((backend, replicas, report));
        }
    }
    print_table(&args, &rows);
    Ok(())
}

/// Starts the replicas on a fresh store, runs the load and stops them.
async fn measure(
    args: &Args,
    daemon: &Path,
    provider: SocketAddr,
    backend: Backend,
    replicas: usize,
) -> anyhow::Result<RunReport> {
    let dir = tempfile::tempdir().context("while creating a temporary directory")?;
    let schema = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(Schema::create(args.postgres_url.as_deref().unwrap_or(""))?),
    };
    let store_url = match &schema {
        None => format!("sqlite://{}", dir.path().join("bench.db").display()),
        Some(schema) => schema.url.clone(),
    };
    let config = format!(
        "port: 0\napi_key: {API_KEY}\nprovider: openai\nmodel: instant\nproviders:\n  openai:\n    \
         base_url: http://{provider}/v1\n    api_key: bench-provider-key\n    stream: false\n\
         store:\n  url: \"{store_url}\"\nlog:\n  level: warn,goose_api=info\n  format: json\n"
    );
    let mut children = Vec::new();
    let mut addresses = Vec::new();
    for index in 0..replicas {
        let workdir = dir.path().join(format!("replica-{index}"));
        std::fs::create_dir_all(&workdir).context("while creating a replica directory")?;
        std::fs::write(workdir.join("config.yaml"), &config).context("while writing a config")?;
        let (child, address) = start_daemon(daemon, &workdir)?;
        children.push(child);
        addresses.push(address);
    }
    let outcome = run_load(args, &addresses).await;
    for child in &mut children {
        stop(child);
    }
    if let Some(schema) = schema {
        schema.drop_schema()?;
    }
    outcome
}

async fn run_load(args: &Args, addresses: &[SocketAddr]) -> anyhow::Result<RunReport> {
    let warmup_end = Instant::now() + Duration::from_secs(args.warmup);
    let end = warmup_end + Duration::from_secs(args.duration);
    let addresses: Arc<[SocketAddr]> = addresses.into();
    let mut workers = Vec::new();
    for worker in 0..usize::from(args.concurrency) {
        let addresses = addresses.clone();
        workers.push(tokio::spawn(async move {
            run_worker(worker, &addresses, warmup_end, end).await
        }));
    }
    let mut total = RunReport::default();
    for worker in workers {
        let report = worker.await.context("a load worker failed")??;
        total.turns += report.turns;
        total.errors += report.errors;
        total.latencies.extend(report.latencies);
    }
    // NOTE: turns that start before the end and finish after it are counted, which
    // overstates the rate by at most one turn per worker.
    total.elapsed = Duration::from_secs(args.duration);
    total.latencies.sort();
    Ok(total)
}

/// Starts one session, then sends turns to the replicas in rotation until `end`. Only turns
/// that start after `warmup_end` are counted.
async fn run_worker(
    worker: usize,
    addresses: &[SocketAddr],
    warmup_end: Instant,
    end: Instant,
) -> anyhow::Result<RunReport> {
    let mut connections = Vec::new();
    for address in addresses {
        connections.push(connect(*address).await?);
    }
    let mut report = RunReport::default();
    let first = worker % addresses.len();
    let started = post(
        &mut connections[first],
        addresses[first],
        "/session/start",
        json!({"prompt": "hello"}),
    )
    .await?;
    let session_id = match started {
        (StatusCode::OK, body) => body["session_id"].as_str().unwrap_or_default().to_owned(),
        (status, body) => bail!("POST /session/start returned {status}: {body}"),
    };
    let mut turn = first;
    while Instant::now() < end {
        turn = (turn + 1) % addresses.len();
        let body = json!({"session_id": session_id, "prompt": "next"});
        let sent = Instant::now();
        let result = post(
            &mut connections[turn],
            addresses[turn],
            "/session/reply",
            body,
        )
        .await;
        if sent < warmup_end {
            continue;
        }
        match result {
            Ok((StatusCode::OK, _)) => {
                report.turns += 1;
                report.latencies.push(sent.elapsed());
            }
            Ok((status, body)) => {
                report.errors += 1;
                eprintln!("turn failed with {status}: {body}");
            }
            Err(error) => {
                report.errors += 1;
                eprintln!("turn failed: {error:#}");
                connections[turn] = connect(addresses[turn]).await?;
            }
        }
    }
    Ok(report)
}

async fn connect(address: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    stream
        .set_nodelay(true)
        .context("while setting TCP_NODELAY")?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {address} failed"))?;
    // A broken connection also fails the next request, which reconnects.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    address: SocketAddr,
    path: &str,
    body: Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let request = Request::post(path)
        .header("host", address.to_string())
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .context("while building the request")?;
    sender
        .ready()
        .await
        .context("the server closed the connection")?;
    let response = sender
        .send_request(request)
        .await
        .context("the request failed")?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("while reading the response body")?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Serves `POST /v1/chat/completions` on 127.0.0.1 with a fixed non-streaming answer.
async fn serve_instant_provider() -> anyhow::Result<SocketAddr> {
    async fn complete() -> axum::Json<Value> {
        axum::Json(json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "instant",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
        }))
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(complete));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("while binding the instant provider")?;
    let address = listener.local_addr().context("while reading its address")?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// Runs the daemon in `workdir` and returns it with the address from its `listening` log.
fn start_daemon(binary: &Path, workdir: &Path) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg("config.yaml")
        .current_dir(workdir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stderr = child
        .stderr
        .take()
        .context("the daemon's stderr was not captured")?;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["level"] == "ERROR" {
                eprintln!("goose-api logged: {line}");
                let _ = sender.send(Err(line));
                continue;
            }
            let address = Some(&entry)
                .filter(|entry| entry["message"] == "listening")
                .and_then(|entry| entry["address"].as_str())
                .and_then(|address| address.parse::<SocketAddr>().ok());
            if let Some(address) = address {
                let _ = sender.send(Ok(address));
            }
        }
    });
    let address = match receiver.recv_timeout(START_TIMEOUT) {
        Ok(Ok(address)) => address,
        Ok(Err(line)) => bail!("goose-api logged an error at start: {line}"),
        Err(_) => bail!("goose-api did not report its address within {START_TIMEOUT:?}"),
    };
    wait_until_ready(address)?;
    Ok((child, address))
}

/// Waits until `GET /ready` returns 200, because the store opens after the port is bound.
fn wait_until_ready(address: SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let request =
                format!("GET /ready HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
            let mut response = String::new();
            let sent = stream.write_all(request.as_bytes());
            if sent.is_ok()
                && stream.read_to_string(&mut response).is_ok()
                && response.starts_with("HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("goose-api at {address} did not become ready within {START_TIMEOUT:?}")
}

fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let _ = child.wait();
}

/// A PostgreSQL schema for one run, created and dropped with `psql`.
struct Schema {
    base_url: String,
    name: String,
    url: String,
}

impl Schema {
    fn create(base_url: &str) -> anyhow::Result<Self> {
        let name = format!("goose_bench_{}_{}", std::process::id(), nanos_now());
        psql(base_url, &format!("CREATE SCHEMA {name}"))?;
        let separator = if base_url.contains('?') { '&' } else { '?' };
        Ok(Self {
            base_url: base_url.to_owned(),
            url: format!("{base_url}{separator}options=-c%20search_path%3D{name}"),
            name,
        })
    }

    fn drop_schema(self) -> anyhow::Result<()> {
        psql(
            &self.base_url,
            &format!("DROP SCHEMA {} CASCADE", self.name),
        )
    }
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

fn psql(url: &str, statement: &str) -> anyhow::Result<()> {
    let output = Command::new("psql")
        .arg(url)
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-qc")
        .arg(statement)
        .output()
        .context("cannot run psql; install the PostgreSQL client or omit --postgres-url")?;
    if !output.status.success() {
        bail!(
            "psql failed on {statement:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (fraction * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[allow(clippy::print_stdout, reason = "the table is the program's output")]
fn print_table(args: &Args, rows: &[(Backend, usize, RunReport)]) {
    println!(
        "Instant provider, {} sessions, {} s measured after {} s warm-up; each turn goes to the \
         next replica.\n",
        args.concurrency, args.duration, args.warmup
    );
    println!("| store | replicas | turns/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|");
    for (backend, replicas, report) in rows {
        let per_second = report.turns as f64 / report.elapsed.as_secs_f64();
        let p50 = percentile(&report.latencies, 0.5).as_secs_f64() * 1000.0;
        let p99 = percentile(&report.latencies, 0.99).as_secs_f64() * 1000.0;
        let store = match backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        };
        println!(
            "| {store} | {replicas} | {per_second:.0} | {p50:.1} | {p99:.1} | {} |",
            report.errors
        );
    }
}

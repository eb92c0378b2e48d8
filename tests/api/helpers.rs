//! Spawns the real `goose-api` binary on port 0 in a temporary directory and talks to it
//! over HTTP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::Value;

/// Admin key written into configs by [`config_with_key`].
pub const ADMIN_KEY: &str = "admin-key-0123456789abcdef";
/// Time allowed for start-up, a reload or an exit before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Returns a minimal config with one admin key, JSON logs and a free port.
pub fn config_with_key(extra: &str) -> String {
    format!("port: 0\napi_key: {ADMIN_KEY}\nlog:\n  format: json\n{extra}")
}

/// How to start a daemon.
#[derive(Debug, Default)]
pub struct Launch {
    /// Files to create in the working directory before start, relative path and content.
    pub files: Vec<(String, String)>,
    /// `--config` argument, relative to the working directory.
    pub config_arg: Option<String>,
    /// Environment variables of the child, which otherwise gets an empty environment.
    pub env: Vec<(String, String)>,
    /// Extra arguments after the program name.
    pub args: Vec<String>,
    /// Working directory to reuse, from [`Daemon::kill_keeping_dir`]; a new one otherwise.
    pub dir: Option<tempfile::TempDir>,
    /// For a daemon serving HTTPS: the PEM certificate its client trusts, issued for
    /// `localhost`.
    pub trusted_cert: Option<String>,
}

impl Launch {
    /// Creates a launch with `config.yaml` containing `config`, passed by `--config`.
    pub fn with_config(config: &str) -> Self {
        Self {
            files: vec![("config.yaml".to_owned(), config.to_owned())],
            config_arg: Some("config.yaml".to_owned()),
            ..Self::default()
        }
    }

    /// Adds an environment variable for the child.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A running daemon. Dropping it kills the process.
pub struct Daemon {
    child: Child,
    /// Address the daemon listens on.
    pub addr: SocketAddr,
    /// Working directory, removed on drop.
    pub dir: tempfile::TempDir,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    /// HTTP client without a default key.
    pub http: reqwest::Client,
    /// `http://ADDRESS`, or `https://localhost:PORT` for a daemon serving HTTPS.
    pub base_url: String,
}

/// A daemon that exited before it was ready.
#[derive(Debug)]
pub struct StartFailure {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// Everything it wrote to stdout.
    pub stdout: String,
}

/// Creates the files of `launch` in its directory, or a new one, and runs the binary there.
pub fn spawn(launch: &mut Launch) -> (Child, tempfile::TempDir) {
    let dir = match launch.dir.take() {
        Some(dir) => dir,
        None => tempfile::tempdir().expect("create a temporary directory"),
    };
    for (name, content) in &launch.files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent directory");
        }
        std::fs::write(&path, content).expect("write a file for the daemon");
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_goose-api"));
    command
        .current_dir(dir.path())
        .env_clear()
        .envs(launch.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(config) = &launch.config_arg {
        command.arg("--config").arg(config);
    }
    command.args(&launch.args);
    let child = command.spawn().expect("start goose-api");
    (child, dir)
}

impl Daemon {
    /// Starts a daemon with `config` as its config file and waits until it listens.
    pub async fn start(config: &str) -> Self {
        Self::launch(Launch::with_config(config)).await
    }

    /// Starts a daemon as `launch` describes and waits until it listens.
    pub async fn launch(launch: Launch) -> Self {
        match Self::try_launch(launch).await {
            Ok(daemon) => daemon,
            Err(failure) => panic!(
                "daemon exited with {} before listening\nstderr:\n{}\nstdout:\n{}",
                failure.status, failure.stderr, failure.stdout
            ),
        }
    }

    /// Starts a daemon, returning its output if it exits before listening.
    pub async fn try_launch(mut launch: Launch) -> Result<Self, StartFailure> {
        let trusted_cert = launch.trusted_cert.take();
        let (mut child, dir) = spawn(&mut launch);
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        collect_lines(
            child.stderr.take().expect("piped stderr"),
            stderr.clone(),
            Some(addr_tx),
        );
        collect_lines(
            child.stdout.take().expect("piped stdout"),
            stdout.clone(),
            None,
        );
        let started = Instant::now();
        let addr = loop {
            if let Ok(addr) = addr_rx.try_recv() {
                break addr;
            }
            if let Some(status) = child.try_wait().expect("poll the daemon") {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(StartFailure {
                    status,
                    stderr: stderr.lock().expect("stderr lines").join("\n"),
                    stdout: stdout.lock().expect("stdout lines").join("\n"),
                });
            }
            assert!(
                started.elapsed() < WAIT,
                "daemon did not report its address"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (http, base_url) = client_for(addr, trusted_cert.as_deref());
        wait_until_ready(&http, &base_url).await;
        Ok(Self {
            child,
            addr,
            dir,
            stderr,
            stdout,
            http,
            base_url,
        })
    }

    /// Returns the URL of `path` on this daemon.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Returns the path of a file in the working directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Sends `GET path` with `key` in `x-api-key`.
    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("x-api-key", key)
            .send()
            .await
            .expect("send GET")
    }

    /// Sends `POST path` with a JSON body and `key`, and returns the status and JSON body
    /// (`Value::Null` when the body is not JSON).
    pub async fn post_value(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let response = self.post_json(path, key, &body).await;
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends `GET path` with `key`, and returns the status and JSON body.
    pub async fn get_value(&self, path: &str, key: &str) -> (StatusCode, Value) {
        let response = self.get(path, key).await;
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Returns the model the daemon reports, with the admin key.
    pub async fn model(&self) -> String {
        let body: Value = self
            .get("/provider/config", ADMIN_KEY)
            .await
            .json()
            .await
            .expect("provider config JSON");
        body["model"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until `GET /provider/config` reports `model`.
    pub async fn wait_for_model(&self, model: &str) {
        let started = Instant::now();
        loop {
            let current = self.model().await;
            if current == model {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "model stayed {current:?}, expected {model:?}; logs:\n{}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Returns `GET /config/status` with the admin key.
    pub async fn config_status(&self) -> Value {
        self.get("/config/status", ADMIN_KEY)
            .await
            .json()
            .await
            .expect("config status JSON")
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lines").join("\n")
    }

    /// Everything the daemon wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        self.stdout.lock().expect("stdout lines").join("\n")
    }

    /// Returns the daemon's process id.
    pub fn child_id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        kill(Pid::from_raw(pid), signal).expect("send signal");
    }

    /// Waits for the daemon to exit and returns its status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                return status;
            }
            assert!(started.elapsed() < WAIT, "daemon did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Daemon {
    /// Kills the daemon with SIGKILL and returns its working directory for a restart.
    pub fn kill_keeping_dir(mut self) -> tempfile::TempDir {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
        let placeholder = tempfile::tempdir().expect("create a temporary directory");
        std::mem::replace(&mut self.dir, placeholder)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a client and base URL for the daemon at `addr`: plain HTTP, or HTTPS to
/// `localhost` trusting only `trusted_cert`.
pub fn client_for(addr: SocketAddr, trusted_cert: Option<&str>) -> (reqwest::Client, String) {
    let builder = reqwest::Client::builder().timeout(WAIT);
    match trusted_cert {
        None => (
            builder.build().expect("build HTTP client"),
            format!("http://{addr}"),
        ),
        Some(pem) => {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).expect("parse the PEM");
            let client = builder
                .tls_certs_only([cert])
                .resolve("localhost", addr)
                .build()
                .expect("build HTTPS client");
            (client, format!("https://localhost:{}", addr.port()))
        }
    }
}

/// Waits until `GET /ready` answers 200: the store is open and the config watcher runs.
async fn wait_until_ready(http: &reqwest::Client, base_url: &str) {
    let started = Instant::now();
    loop {
        let ready = http.get(format!("{base_url}/ready")).send().await;
        if ready.is_ok_and(|response| response.status().is_success()) {
            return;
        }
        assert!(started.elapsed() < WAIT, "daemon did not become ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads lines from `stream` into `lines` on a thread; reports the listening address.
fn collect_lines(
    stream: impl std::io::Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    address: Option<mpsc::Sender<SocketAddr>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(sender) = &address
                && let Some(addr) = listening_address(&line)
            {
                let _ = sender.send(addr);
            }
            lines.lock().expect("output lines").push(line);
        }
    });
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    let value: Value = serde_json::from_str(line).ok()?;
    if value["message"] != "listening" {
        return None;
    }
    value["address"].as_str()?.parse().ok()
}

/// Writes `content` to a temporary file beside `path` and renames it over `path`, as vim
/// and most editors save.
pub fn rename_save(path: &Path, content: &str) {
    let temp = path.with_extension("tmp-save");
    std::fs::write(&temp, content).expect("write temporary file");
    std::fs::rename(&temp, path).expect("rename over the config");
}

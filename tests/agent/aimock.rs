//! Whole conversations against aimock, an npm server that answers the OpenAI, Anthropic and
//! Ollama wire formats from one fixture file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running aimock server. Dropping it stops the process.
pub struct Aimock {
    child: Child,
    /// Base URL such as `http://127.0.0.1:40123`.
    pub url: String,
}

/// Returns the directory of the npm and Python test peers.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("peers")
}

/// Installs the npm and Python test peers once per test binary.
pub fn install_peers() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let status = Command::new("bash")
            .arg(peers_dir().join("install.sh"))
            .status()
            .expect("run tests/peers/install.sh; Node.js and npm must be installed");
        assert!(status.success(), "tests/peers/install.sh failed");
    });
}

impl Aimock {
    /// Starts aimock on a free port of 127.0.0.1 with the fixtures in `fixtures`.
    #[allow(
        dead_code,
        reason = "each test binary that includes this file uses a part of it"
    )]
    pub fn start(fixtures: &Path) -> Self {
        Self::start_with(fixtures, &[])
    }

    /// Starts aimock with extra command-line arguments, such as `--latency`.
    pub fn start_with(fixtures: &Path, extra: &[&str]) -> Self {
        install_peers();
        let cli = peers_dir().join("node_modules/@copilotkit/aimock/dist/cli.js");
        let mut child = Command::new("node")
            .arg(cli)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log-level",
                "info",
                "--fixtures",
            ])
            .arg(fixtures)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aimock with node");
        let stdout = child.stdout.take().expect("aimock stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.split("listening on ").nth(1) {
                    let _ = sender.send(url.trim().to_owned());
                }
            }
        });
        let started = Instant::now();
        let url = loop {
            if let Ok(url) = receiver.recv_timeout(Duration::from_millis(100)) {
                break url;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "aimock did not start"
            );
        };
        Self { child, url }
    }
}

impl Drop for Aimock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! mcpo, Open WebUI's MCP-to-OpenAPI proxy, which `gateway` compares with goose-api. It runs
//! as a child process on 127.0.0.1 with an API key, in front of the same stdio MCP server
//! program as the daemon.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::process::ChildProcess;

/// Location of mcpo that `bench/mcpo-venv.sh` installs, relative to the `target` directory.
const VENV_PROGRAM: &str = "bench-venv/mcpo/bin/mcpo";

/// Returns `target/bench-venv/mcpo/bin/mcpo` for this binary in `target/<profile>/`.
pub fn default_program() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("while locating this binary")?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("this binary is not inside target/<profile>/")?;
    Ok(target.join(VENV_PROGRAM))
}

/// Starts mcpo on a free port of 127.0.0.1, authenticated with `api_key`, in front of the
/// stdio MCP server `server`. Its log level is WARNING, so that it logs no line per request,
/// as goose-api at level info does not. Its stderr goes to `stderr_file`.
pub fn start(
    program: &Path,
    server: &Path,
    api_key: &str,
    stderr_file: &Path,
) -> anyhow::Result<ChildProcess> {
    if !program.is_file() {
        bail!(
            "mcpo was not found at {}; install it with `bash bench/mcpo-venv.sh` or pass \
             --mcpo PATH",
            program.display()
        );
    }
    let port = free_loopback_port()?;
    let stderr = File::create(stderr_file)
        .with_context(|| format!("cannot create {}", stderr_file.display()))?;
    let mut child = Command::new(program)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--api-key", api_key, "--log-level", "WARNING", "--"])
        .arg(server)
        // Python buffers stdout in a pipe, which would hold back the line with the address.
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let stdout = child
        .stdout
        .take()
        .context("mcpo's stdout was not captured")?;
    ChildProcess::wait_for_address("mcpo", child, stdout, mcpo_address, |_| false)
}

/// Returns a port that was free on 127.0.0.1 a moment ago. Another process may take it
/// before mcpo binds it, and mcpo then fails to start, which the run reports.
fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot bind a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Returns the address of mcpo's first stdout line,
/// `Starting MCP OpenAPI Proxy on 127.0.0.1:PORT with command: ...`.
fn mcpo_address(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("Starting MCP OpenAPI Proxy on ")?;
    let (address, _) = rest.split_once(" with ")?;
    address.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_from_start_line() {
        let line = "Starting MCP OpenAPI Proxy on 127.0.0.1:53171 with command: /x/server";
        assert_eq!(
            mcpo_address(line),
            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 53171)))
        );
        assert_eq!(mcpo_address("INFO: other line"), None);
    }
}

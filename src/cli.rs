//! Command line: `serve` (the default) and `check-config`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigHandle, Loaded, Secret, Sources, keys, validate};
use crate::{server, shutdown, telemetry};

/// Exit status for an invalid configuration (EX_USAGE in sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// goose-api: an AI agent daemon behind an authenticated HTTP API.
#[derive(Debug, Parser)]
#[command(name = "goose-api", version, about)]
pub struct Cli {
    /// Config file (YAML, TOML or JSON). Without it, GOOSE_API_CONFIG or a file named
    /// `config`, `config.yaml`, `config.toml` or `config.json` in the working directory.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve,
    /// Load and validate the config, print it with secrets redacted, and exit non-zero
    /// listing every problem if it is invalid.
    CheckConfig,
}

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = match process_sources(cli.config) {
        Ok(sources) => sources,
        Err(error) => {
            eprintln!("goose-api: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = match config::load(&sources) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("goose-api: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => check_config(&loaded),
        Command::Serve => match serve(loaded, sources.env) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "goose-api stopped with an error"
                );
                eprintln!("goose-api: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn process_sources(cli_path: Option<PathBuf>) -> anyhow::Result<Sources> {
    // Variables that are not valid UTF-8 cannot be config values, so they are skipped.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    let working_dir = std::env::current_dir().context("while reading the working directory")?;
    Ok(Sources {
        cli_path,
        env,
        working_dir,
    })
}

#[allow(
    clippy::print_stdout,
    reason = "check-config prints its report on stdout"
)]
fn check_config(loaded: &Loaded) -> ExitCode {
    let file = loaded.file.as_ref().map_or_else(
        || "none (built-in defaults)".to_owned(),
        |p| p.display().to_string(),
    );
    println!("# config file: {file}");
    println!("# secrets are shown as {}", config::REDACTED);
    match serde_yaml::to_string(&loaded.config) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("goose-api: cannot print the config: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(loaded: Loaded, env: HashMap<String, String>) -> anyhow::Result<()> {
    let log_level = telemetry::init(&loaded.config.log)?;
    let generated_key = (!validate::has_keys(&loaded.config)).then(keys::generate_key);
    let address = format!("{}:{}", loaded.config.host, loaded.config.port);
    let file = loaded.file.clone();
    let handle = ConfigHandle::new(loaded, env, generated_key.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        shutdown::cancel_on_signal(shutdown.clone())?;
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}; is another process using it?"))?;
        let local: SocketAddr = listener
            .local_addr()
            .context("while reading the bound address")?;
        log_inventory(&handle, local, file.as_ref(), generated_key.as_ref());
        log_level.follow(&handle, shutdown.clone());
        let stopped = server::run(handle, listener, shutdown).await?;
        tracing::info!(outcome = ?stopped, "goose-api stopped");
        Ok(())
    })
}

#[allow(
    clippy::print_stdout,
    reason = "the generated key is shown once, on stdout, not in logs"
)]
fn log_inventory(
    handle: &ConfigHandle,
    address: SocketAddr,
    file: Option<&PathBuf>,
    generated_key: Option<&Secret>,
) {
    let snapshot = handle.current();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %address,
        config_file = file.map(|path| path.display().to_string()).unwrap_or_else(|| "none".into()),
        keys = snapshot.keys.len(),
        tls = snapshot.config.tls.cert_file.is_some(),
        provider = %snapshot.config.provider,
        model = %snapshot.config.model,
        "listening"
    );
    if let Some(key) = generated_key {
        tracing::warn!("no API key is configured; a key generated for this run is on stdout");
        println!(
            "goose-api: no API key is configured; use this key for this run: {}",
            key.expose()
        );
    }
}

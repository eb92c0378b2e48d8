//! The baseline server: bare axum with one route that returns a fixed body.
//!
//! It serves the same path and the same body as the daemon's `GET /provider/config`, so the
//! two runs differ only in what the daemon does per request: request ids, tracing spans,
//! config snapshot, authentication and body limits.

use std::io::Write;
use std::net::Ipv4Addr;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::load::PROVIDER_CONFIG_PATH;

/// Body of the daemon's `GET /provider/config` with its default config.
pub const BODY: &str = r#"{"provider":"openai","model":"gpt-4o"}"#;

/// Binds 127.0.0.1 on a free port, prints the port on stdout and serves until killed.
#[allow(
    clippy::print_stdout,
    reason = "the edge harness reads the port from the first line on stdout"
)]
pub fn serve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot listen on 127.0.0.1")?;
        let port = listener
            .local_addr()
            .context("while reading the bound address")?
            .port();
        println!("{port}");
        std::io::stdout()
            .flush()
            .context("while writing the port to stdout")?;
        let app = Router::new().route(PROVIDER_CONFIG_PATH, get(provider_config));
        axum::serve(listener, app)
            .await
            .context("the hello server failed")
    })
}

async fn provider_config() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

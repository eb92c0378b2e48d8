//! goose-api: an AI agent daemon behind an authenticated HTTP API.
//!
//! `main` parses the command line and calls [`cli::main`]; tests build a
//! [`config::ConfigHandle`] and call [`server::run`] or [`http::router`] directly.

pub mod agent;
pub mod cli;
pub mod config;
pub mod extensions;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tools;

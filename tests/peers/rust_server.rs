//! An MCP server over stdio for the integration tests, built with rmcp's server feature.
//!
//! Flags: `--banner` prints a non-JSON line on stdout before serving; `--flood N` writes
//! N lines to stderr while serving; `--hang-listing-after-add` makes every `tools/list`
//! request after a call of `add_tool` wait forever.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router};

/// Tool that stays hidden from `tools/list` and calls until `add_tool` reveals it.
const ADDED_TOOL: &str = "added";
/// Interval at which `wait_file` checks for its file.
const WAIT_FILE_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
struct TestServer {
    /// Every tool, built once because building a router generates each tool's JSON schema.
    all_tools: Arc<ToolRouter<Self>>,
    /// Every tool but [`ADDED_TOOL`].
    initial_tools: Arc<ToolRouter<Self>>,
    /// Whether `add_tool` has revealed [`ADDED_TOOL`].
    added: Arc<AtomicBool>,
    /// Whether `tools/list` requests get no response once `add_tool` was called.
    hang_listing_after_add: bool,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// Text to return.
    text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SleepArgs {
    /// Milliseconds to sleep.
    ms: u64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct WaitFileArgs {
    /// File whose creation ends the call.
    path: PathBuf,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EnvArgs {
    /// Variable name.
    name: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct BigArgs {
    /// Bytes of text to return.
    bytes: usize,
}

#[tool_router]
impl TestServer {
    #[tool(description = "Returns its text")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }

    #[tool(description = "Sleeps, and reports a cancellation on stderr")]
    async fn sleep(
        &self,
        Parameters(args): Parameters<SleepArgs>,
        context: RequestContext<RoleServer>,
    ) -> String {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.ms)) => "slept".to_owned(),
            () = context.ct.cancelled() => {
                eprintln!("sleep cancelled");
                "cancelled".to_owned()
            }
        }
    }

    #[tool(description = "Waits until a file exists, and reports the wait on stderr")]
    async fn wait_file(&self, Parameters(args): Parameters<WaitFileArgs>) -> String {
        eprintln!("waiting for {}", args.path.display());
        while !args.path.exists() {
            tokio::time::sleep(WAIT_FILE_POLL).await;
        }
        "file appeared".to_owned()
    }

    #[tool(
        description = "Adds the tool `added` and sends notifications/tools/list_changed \
                          before its own response"
    )]
    async fn add_tool(&self, context: RequestContext<RoleServer>) -> String {
        self.added.store(true, Ordering::Release);
        match context.peer.notify_tool_list_changed().await {
            Ok(()) => "tool added".to_owned(),
            Err(error) => format!("sending the notification failed: {error}"),
        }
    }

    #[tool(description = "Exists only after a call of add_tool")]
    async fn added(&self) -> String {
        "added tool called".to_owned()
    }

    #[tool(description = "Returns an environment variable, or <unset>")]
    async fn env(&self, Parameters(args): Parameters<EnvArgs>) -> String {
        std::env::var(&args.name).unwrap_or_else(|_| "<unset>".to_owned())
    }

    #[tool(description = "Returns that many bytes of text")]
    async fn big(&self, Parameters(args): Parameters<BigArgs>) -> String {
        "x".repeat(args.bytes)
    }

    #[tool(description = "Returns the server's process id")]
    async fn pid(&self) -> String {
        std::process::id().to_string()
    }

    #[tool(description = "Exits the server in the middle of the call")]
    async fn crash(&self) -> String {
        eprintln!("crashing on request");
        std::process::exit(7);
    }
}

impl TestServer {
    fn new(hang_listing_after_add: bool) -> Self {
        let all_tools = Self::tool_router();
        let initial_tools = all_tools.clone().with_disabled(ADDED_TOOL);
        Self {
            all_tools: Arc::new(all_tools),
            initial_tools: Arc::new(initial_tools),
            added: Arc::default(),
            hang_listing_after_add,
        }
    }

    /// Returns the tools this server offers now: every tool but [`ADDED_TOOL`] until
    /// `add_tool` was called.
    fn router(&self) -> &ToolRouter<Self> {
        if self.added.load(Ordering::Acquire) {
            &self.all_tools
        } else {
            &self.initial_tools
        }
    }
}

#[tool_handler(router = self.router())]
impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        if self.hang_listing_after_add && self.added.load(Ordering::Acquire) {
            eprintln!("not answering tools/list");
            std::future::pending::<()>().await;
        }
        Ok(ListToolsResult::with_all_items(self.router().list_all()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--banner") {
        let mut stdout = std::io::stdout();
        writeln!(stdout, "test server 1.0 starting, this line is not JSON")?;
        stdout.flush()?;
    }
    if let Some(index) = args.iter().position(|arg| arg == "--flood") {
        let lines: usize = args
            .get(index + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        std::thread::spawn(move || {
            let mut stderr = std::io::stderr();
            for line in 0..lines {
                let _ = writeln!(stderr, "flood line {line} {}", "y".repeat(200));
            }
            let _ = writeln!(stderr, "flood done");
        });
    }
    let server = TestServer::new(args.iter().any(|arg| arg == "--hang-listing-after-add"));
    let service = server.serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}

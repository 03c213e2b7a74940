//! A real MCP server from the official Rust SDK (rmcp), served over Streamable HTTP on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct AddRequest {
    pub a: i64,
    pub b: i64,
}

#[derive(Debug, Clone)]
pub struct Adder {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Adder {
    #[tool(description = "Add two integers")]
    fn add(&self, Parameters(AddRequest { a, b }): Parameters<AddRequest>) -> String {
        (a + b).to_string()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Adder {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Sessions (`Mcp-Session-Id`) and event-stream answers with priming events.
    Sessions,
    /// Stateless, plain `application/json` answers.
    Json,
}

/// A running server; dropping or stopping it closes every connection, like a process exit would.
pub struct McpServer {
    pub addr: SocketAddr,
    ct: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
}

impl McpServer {
    /// Starts on `addr` (a fresh port when `None`).
    pub async fn start(mode: Mode, addr: Option<SocketAddr>) -> McpServer {
        let ct = CancellationToken::new();
        let config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(mode == Mode::Sessions)
            .with_json_response(mode == Mode::Json)
            .with_sse_keep_alive(None)
            .with_cancellation_token(ct.child_token());
        let service: StreamableHttpService<Adder, LocalSessionManager> = StreamableHttpService::new(
            || Ok(Adder { tool_router: Adder::tool_router() }),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let service = TowerToHyperService::new(service);
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            // Owning the connections here means aborting this task ends them all.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let service = service.clone();
                connections.spawn(async move {
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        McpServer { addr, ct, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Stops the server and closes its connections; returns the address, free to start on again.
    pub async fn stop(self) -> SocketAddr {
        self.ct.cancel();
        self.accept.abort();
        let _ = self.accept.await;
        self.addr
    }
}

//! `uplink demo`: a gateway, a sled and a small MCP tool server in one process on loopback, walked through a
//! real session step by step. Everything goes through the real sockets and the gateway's real HTTP API.

// The demo narrates on standard output: printing is its job.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uplink_proto::sse::SseParser;

use crate::gateway::{GatewayServer, GatewayServerConfig, generate_token};
use crate::sled::{Uplink, UplinkConfig};
use crate::store::MemoryStore;
use uplink_proto::Decision;
use uplink_proto::gateway::ResumeConfig;

/// Every step must finish within this long.
const STEP: Duration = Duration::from_secs(10);

// ── The built-in MCP tool server ─────────────────────────────────────────────────────────────────────────

/// Input of the demo's `word_count` tool.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub(crate) struct CountInput {
    /// The text to count words in.
    pub text: String,
}

/// The demo's MCP server: one tool, `word_count`.
#[derive(Clone)]
pub(crate) struct DemoTools {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl DemoTools {
    /// The server.
    pub(crate) fn new() -> Self {
        DemoTools { tool_router: Self::tool_router() }
    }

    #[tool(description = "Count the words in a text")]
    fn word_count(&self, Parameters(CountInput { text }): Parameters<CountInput>) -> String {
        text.split_whitespace().count().to_string()
    }
}

impl Default for DemoTools {
    fn default() -> Self {
        Self::new()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for DemoTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

async fn start_tools() -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let service: StreamableHttpService<DemoTools, LocalSessionManager> = StreamableHttpService::new(
        || Ok(DemoTools::new()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_sse_keep_alive(None),
    );
    let service = TowerToHyperService::new(service);
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let service = service.clone();
            connections.spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
            while connections.try_join_next().is_some() {}
        }
    });
    Ok((addr, task))
}

// ── A gateway that can be restarted on the same address ──────────────────────────────────────────────────

struct RunningGateway {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A gateway on `listen` that keeps its state in `store` (in this process's memory: a gateway started again on
/// it finds what the last one kept), and holds the requests of sleds that resume across drops and restarts.
async fn start_gateway(
    listen: SocketAddr,
    sled_token: &str,
    admin: &str,
    store: &MemoryStore,
) -> Result<(SocketAddr, RunningGateway), String> {
    let mut config = GatewayServerConfig::new(listen, vec![sled_token.to_owned()], admin);
    config.hub.resume = Some(ResumeConfig::default());
    let server =
        GatewayServer::bind_with_store(config, Some(Box::new(store.clone()))).await.map_err(|e| e.to_string())?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = oneshot::channel::<()>();
    // The demo's store is in memory: its commits cannot fail.
    let task = tokio::spawn(async move {
        let _ = server
            .run(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok((addr, RunningGateway { stop, task }))
}

impl RunningGateway {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

// ── A small client for the admin API ─────────────────────────────────────────────────────────────────────

struct Admin {
    base: String,
    token: String,
}

impl Admin {
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Follows `GET /api/events`; events arrive on the returned channel.
    async fn events(&self) -> Result<mpsc::Receiver<(String, Value)>, String> {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let request = hyper::Request::get(format!("{}/api/events", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("GET /api/events answered {}", response.status()));
        }
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut body = response.into_body();
            let mut parser = SseParser::new(1 << 20);
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                let Ok(events) = parser.push(&data) else { return };
                for e in events {
                    let value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                    if tx.send((e.event, value)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

async fn next_event(rx: &mut mpsc::Receiver<(String, Value)>, kind: &str) -> Result<Value, String> {
    tokio::time::timeout(STEP, async {
        loop {
            match rx.recv().await {
                Some((k, v)) if k == kind => return Ok(v),
                Some(_) => {}
                None => return Err("the event stream ended".to_owned()),
            }
        }
    })
    .await
    .map_err(|_| format!("no `{kind}` event within {STEP:?}"))?
}

// ── The walk-through ─────────────────────────────────────────────────────────────────────────────────────

struct Narrator {
    start: Instant,
}

impl Narrator {
    fn say(&self, text: &str) {
        println!("[{:>7.3}s] {text}", self.start.elapsed().as_secs_f64());
    }
    fn ok(&self, text: &str) {
        self.say(&format!("✓ {text}"));
    }
}

fn check(ok: bool, what: impl Into<String>) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.into()) }
}

/// Runs the demo; `Err` names the step that misbehaved. With `keep_running`, leaves everything up afterwards
/// (printing the URLs and tokens) until `until` completes.
pub(crate) async fn run(keep_running: bool, until: impl std::future::Future<Output = ()>) -> Result<(), String> {
    let n = Narrator { start: Instant::now() };
    let sled_token = generate_token().map_err(|e| e.to_string())?;
    let admin_token = generate_token().map_err(|e| e.to_string())?;

    n.say("starting a local MCP tool server (one tool: word_count)");
    let (tools_addr, tools) = start_tools().await?;
    n.say("starting the gateway");
    let store = MemoryStore::new().map_err(|e| e.to_string())?;
    let (gw_addr, gateway) =
        start_gateway("127.0.0.1:0".parse().map_err(|_| "address")?, &sled_token, &admin_token, &store).await?;
    let admin = Admin { base: format!("http://{gw_addr}"), token: admin_token.clone() };
    let mut events = admin.events().await?;

    n.say("starting the sled");
    let mut config = UplinkConfig::new(format!("ws://{gw_addr}/api/sled-uplink"), "demo");
    config.token = Some(sled_token.clone());
    config.local_mcp_url = format!("http://{tools_addr}/mcp");
    config.sled.permission_timeout = Duration::from_secs(2);
    config.sled.backoff_initial = Duration::from_millis(100);
    config.sled.backoff_max = Duration::from_secs(1);
    let uplink = Uplink::start(config).map_err(|e| e.to_string())?;
    let connected = next_event(&mut events, "sled_connected").await?;
    check(connected["project"] == "demo", format!("unexpected identity {connected}"))?;
    n.ok(&format!("the sled connected and identified itself: {connected}"));

    // MCP through the gateway's HTTP API, the sled, and the local tool server.
    let mcp = |body: &'static str| {
        let admin = &admin;
        // The session-less relay: one message, one answer. MCP clients use `/mcp`, which keeps sessions.
        async move { admin.call("POST", "/api/sleds/demo/rpc", Some(body)).await }
    };
    let (status, body) = mcp(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"uplink-demo","version":"1"}}}"#).await?;
    check(status == 200 && body.contains("serverInfo"), format!("initialize answered {status} {body}"))?;
    let (status, _) = mcp(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await?;
    check(status == 202, format!("notifications/initialized answered {status}"))?;
    let (status, body) = mcp(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#).await?;
    check(status == 200 && body.contains("word_count"), format!("tools/list answered {status} {body}"))?;
    n.ok("MCP tools/list relayed gateway → sled → local tool server and back: word_count");
    let (status, body) = mcp(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"word_count","arguments":{"text":"one uplink to rule them all"}}}"#).await?;
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    check(
        status == 200 && answer["result"]["content"][0]["text"] == "6",
        format!("tools/call answered {status} {body}"),
    )?;
    n.ok("MCP tools/call word_count(\"one uplink to rule them all\") = 6");

    // Permissions: approved, denied, and left to time out.
    for (tool, verdict, want) in [
        ("Bash", Some(true), Decision::Approve),
        ("Write", Some(false), Decision::Deny),
        ("Read", None, Decision::Deny),
    ] {
        let asker = uplink.clone();
        let pending = tokio::spawn(async move { asker.request_permission(tool, &json!({"demo": true})).await });
        let requested = next_event(&mut events, "permission_requested").await?;
        let id = requested["id"].as_str().unwrap_or_default().to_owned();
        match verdict {
            Some(approved) => {
                let (status, _) = admin
                    .call("POST", &format!("/api/permissions/{id}"), Some(&json!({ "approved": approved }).to_string()))
                    .await?;
                check(status == 200, format!("deciding {id} answered {status}"))?;
            }
            None => {
                n.say(&format!("nobody answers the {tool} request; it must be denied at its 2 s deadline"));
                let withdrawn = next_event(&mut events, "permission_withdrawn").await?;
                check(withdrawn["reason"] == "deadline", format!("unexpected withdrawal {withdrawn}"))?;
            }
        }
        let decision = tokio::time::timeout(STEP, pending)
            .await
            .map_err(|_| format!("no decision for {tool}"))?
            .map_err(|e| e.to_string())?;
        check(decision == want, format!("{tool}: expected {want:?}, got {decision:?}"))?;
        n.ok(&format!("permission for {tool}: {decision:?}"));
    }

    // A request waits for a person while the gateway restarts: it survives, and is decided afterwards.
    let asker = uplink.clone();
    let waiting =
        tokio::spawn(async move { asker.request_permission("Edit", &json!({"file_path": "notes.md"})).await });
    let requested = next_event(&mut events, "permission_requested").await?;
    let id = requested["id"].as_str().unwrap_or_default().to_owned();
    n.say(&format!("restarting the gateway on the same address while {id} (Edit) waits for a person"));
    gateway.stop().await;
    drop(events);
    let (_, gateway) = start_gateway(gw_addr, &sled_token, &admin_token, &store).await?;
    let mut events = admin.events().await?;
    let again = next_event(&mut events, "sled_connected").await?;
    check(again["project"] == "demo", format!("unexpected identity {again}"))?;
    n.ok("the sled reconnected to the restarted gateway by itself");
    let resumed = next_event(&mut events, "permission_resumed").await?;
    check(resumed["id"] == id.as_str(), format!("unexpected resumption {resumed}"))?;
    let (status, _) = admin.call("POST", &format!("/api/permissions/{id}"), Some(r#"{"approved":true}"#)).await?;
    check(status == 200, format!("deciding {id} after the restart answered {status}"))?;
    let decision = tokio::time::timeout(STEP, waiting)
        .await
        .map_err(|_| "no decision for the request that waited across the restart".to_owned())?
        .map_err(|e| e.to_string())?;
    check(decision == Decision::Approve, format!("Edit: expected Approve, got {decision:?}"))?;
    n.ok(&format!("{id} waited across the restart under the same id, and was approved afterwards"));

    if keep_running {
        // A second sled, with the default two-minute deadline (the walk-through's is 2 s), serving agents as
        // `uplink sled` does: what the README's walk-through uses.
        let mut config = UplinkConfig::new(format!("ws://{gw_addr}/api/sled-uplink"), "demo-agent");
        config.token = Some(sled_token.clone());
        config.local_mcp_url = format!("http://{tools_addr}/mcp");
        let agent_sled = Uplink::start(config).map_err(|e| e.to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("the sled's local listener: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = tokio_util::sync::CancellationToken::new();
        let policy = uplink_proto::sled::local::LocalPolicy::new(local.to_string());
        let face = tokio::spawn(super::local_server::serve(listener, agent_sled.clone(), policy, stop.clone()));
        println!();
        println!("Everything stays up until Ctrl-C:");
        println!("  console:     http://{gw_addr}/   (sign in with the admin token)");
        println!("  gateway:     http://{gw_addr}   (sleds: ws://{gw_addr}/api/sled-uplink)");
        println!("  agents ask:  http://{local}/permission   MCP approve tool: http://{local}/mcp   (sled demo-agent)");
        println!("  tools:       http://{tools_addr}/mcp   (the sled's local MCP server)");
        println!("  admin token: {admin_token}");
        println!("  sled token:  {sled_token}");
        println!("  try:         curl -H \"Authorization: Bearer {admin_token}\" http://{gw_addr}/api/sleds");
        println!(
            "  and:         curl -H 'content-type: application/json' -d '{{\"tool_name\":\"Bash\",\"tool_input\":{{\"command\":\"ls\"}}}}' http://{local}/permission"
        );
        until.await;
        stop.cancel();
        let _ = face.await;
        agent_sled.shutdown().await;
    }

    uplink.shutdown().await;
    let _ = next_event(&mut events, "sled_disconnected").await?;
    n.ok("the sled shut down: pending work denied, connection closed normally");
    gateway.stop().await;
    tools.abort();
    Ok(())
}

//! MCP relayed through the sled to a real rmcp server: gateway `mcp_request` → sled → local MCP → back.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use uplink_tests::mcp_server::{McpServer, Mode};
use uplink_tests::{GatewayConn, TestGateway};
use uplink_tokio::{Uplink, UplinkConfig};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"uplink-test","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;

fn call(id: u64, a: i64, b: i64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"add","arguments":{"a":a,"b":b}}}).to_string()
}

struct Rig {
    uplink: Uplink,
    conn: GatewayConn,
    next: u32,
}

impl Rig {
    async fn new(mcp_url: String) -> (Rig, TestGateway) {
        Rig::with_budget(mcp_url, uplink_proto::sled::mcp_session::DEFAULT_MAX_INITIALIZE_BYTES).await
    }

    /// With `budget` bytes for the `initialize` requests the sled keeps to renew sessions with.
    async fn with_budget(mcp_url: String, budget: usize) -> (Rig, TestGateway) {
        let gw = TestGateway::bind().await;
        let mut c = UplinkConfig::new(gw.url(), "mcp-proj");
        c.local_mcp_url = mcp_url;
        c.sled.mcp_timeout = Duration::from_secs(5);
        c.sled.max_mcp_initialize_bytes = budget;
        let (uplink, conn) = gw.start_sled(c).await;
        (Rig { uplink, conn, next: 0 }, gw)
    }

    /// Relays one JSON-RPC message through the sled; returns the `mcp_response` payload.
    async fn relay(&mut self, body: &str, session: Option<&str>) -> Value {
        self.next += 1;
        let req_id = format!("m{}", self.next);
        let mut payload = json!({"body": body});
        if let Some(s) = session {
            payload["session"] = json!(s);
        }
        self.conn.send(json!({"type":"mcp_request","req_id":req_id,"payload":payload})).await;
        let response = self.conn.recv_kind("mcp_response").await;
        assert_eq!(response["req_id"], req_id.as_str());
        response["payload"].clone()
    }

    async fn handshake(&mut self, session: Option<&str>) {
        self.handshake_with(INITIALIZE, session).await;
    }

    async fn handshake_with(&mut self, initialize: &str, session: Option<&str>) {
        let init = self.relay(initialize, session).await;
        assert_eq!(init["id"], 1, "{init}");
        assert!(init["result"]["serverInfo"].is_object(), "{init}");
        assert_eq!(self.relay(INITIALIZED, session).await, Value::Null, "a notification is answered with null");
    }

    async fn finish(mut self) {
        let (code, ()) = tokio::join!(self.conn.until_closed(), self.uplink.shutdown());
        assert_eq!(code, Some(1000));
    }
}

fn sum_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {answer}")).to_owned()
}

async fn full_session(mode: Mode) {
    let server = McpServer::start(mode, None).await;
    let (mut rig, _gw) = Rig::new(server.url()).await;
    rig.handshake(None).await;
    let tools = rig.relay(LIST, None).await;
    assert_eq!(tools["id"], 2);
    assert_eq!(tools["result"]["tools"][0]["name"], "add", "{tools}");
    let sum = rig.relay(&call(3, 2, 40), None).await;
    assert_eq!(sum["id"], 3);
    assert_eq!(sum_of(&sum), "42");
    rig.finish().await;
    server.stop().await;
}

#[tokio::test]
async fn a_full_mcp_session_in_session_and_event_stream_mode() {
    full_session(Mode::Sessions).await;
}

#[tokio::test]
async fn a_full_mcp_session_in_json_response_mode() {
    full_session(Mode::Json).await;
}

#[tokio::test]
async fn a_restarted_mcp_server_is_re_initialized_and_the_call_replayed() {
    let server = McpServer::start(Mode::Sessions, None).await;
    let (mut rig, _gw) = Rig::new(server.url()).await;
    rig.handshake(None).await;
    assert_eq!(sum_of(&rig.relay(&call(3, 1, 1), None).await), "2");
    // The local server restarts: our session is unknown to the new process.
    let addr = server.stop().await;
    let server = McpServer::start(Mode::Sessions, Some(addr)).await;
    let sum = rig.relay(&call(4, 20, 3), None).await;
    assert_eq!(sum["id"], 4);
    assert_eq!(sum_of(&sum), "23");
    rig.finish().await;
    server.stop().await;
}

#[tokio::test]
async fn a_session_whose_initialize_is_over_the_budget_is_not_renewed_and_its_caller_told_it_is_gone() {
    let server = McpServer::start(Mode::Sessions, None).await;
    // Room for the ordinary initialize, not for one with a 4 KiB client name.
    let (mut rig, _gw) = Rig::with_budget(server.url(), 2 * INITIALIZE.len()).await;
    let big = INITIALIZE.replace(r#""name":"uplink-test""#, &format!(r#""name":"{}""#, "n".repeat(4096)));
    rig.handshake(Some("small")).await;
    rig.handshake_with(&big, Some("big")).await;
    assert_eq!(sum_of(&rig.relay(&call(3, 1, 1), Some("big")).await), "2", "a session over the budget still works");
    // The local server restarts: both sessions are unknown to the new process.
    let addr = server.stop().await;
    let server = McpServer::start(Mode::Sessions, Some(addr)).await;
    assert_eq!(sum_of(&rig.relay(&call(4, 20, 3), Some("small")).await), "23", "renewed with its kept initialize");
    let gone = rig.relay(&call(5, 1, 2), Some("big")).await;
    assert_eq!(gone["id"], 5, "{gone}");
    assert_eq!(gone["error"]["code"], -32001, "session not found: {gone}");
    // The caller initializes anew, as an MCP client does on 404, and goes on.
    rig.handshake_with(&big, Some("big")).await;
    assert_eq!(sum_of(&rig.relay(&call(6, 2, 2), Some("big")).await), "4");
    rig.finish().await;
    server.stop().await;
}

#[tokio::test]
async fn a_stopped_mcp_server_gives_a_json_rpc_error_with_the_right_id() {
    let server = McpServer::start(Mode::Json, None).await;
    let url = server.url();
    server.stop().await;
    let (mut rig, _gw) = Rig::new(url).await;
    let answer = rig.relay(&call(77, 1, 2), None).await;
    assert_eq!(answer["id"], 77);
    assert_eq!(answer["error"]["code"], -32603);
    assert!(answer["error"]["message"].as_str().unwrap().starts_with("local MCP call failed"), "{answer}");
    // A notification to a dead server still gets exactly one answer: an error without id.
    let answer = rig.relay(INITIALIZED, None).await;
    assert_eq!((answer["id"].clone(), answer["error"]["code"].clone()), (Value::Null, json!(-32603)));
    rig.finish().await;
}

#[tokio::test]
async fn each_gateway_session_gets_its_own_local_session() {
    let server = McpServer::start(Mode::Sessions, None).await;
    let (mut rig, _gw) = Rig::new(server.url()).await;
    rig.handshake(Some("alice")).await;
    assert_eq!(sum_of(&rig.relay(&call(3, 1, 2), Some("alice")).await), "3");
    // "bob" never initialized: the local server refuses him, and alice is unaffected.
    let bob = rig.relay(&call(4, 1, 2), Some("bob")).await;
    assert!(bob["error"].is_object(), "{bob}");
    assert_eq!(bob["id"], 4);
    rig.handshake(Some("bob")).await;
    assert_eq!(sum_of(&rig.relay(&call(5, 5, 5), Some("bob")).await), "10");
    assert_eq!(sum_of(&rig.relay(&call(6, 1, 1), Some("alice")).await), "2");
    rig.finish().await;
    server.stop().await;
}

#[tokio::test]
async fn notifications_server_requests_and_priming_events_on_the_stream_are_not_the_answer() {
    const STREAM: &str = "id: 0\nretry: 3000\ndata:\n\n\
        : keep-alive\n\n\
        event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n\
        data: {\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"roots/list\"}\n\n\
        data: {\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{\"not\":\"ours\"}}\n\n\
        data: {\"jsonrpc\":\"2.0\",\n\
        data:  \"id\":3,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"42\"}]}}\r\n\r\n";
    let server = uplink_tests::CannedHttp::start(200, "text/event-stream", STREAM).await;
    let (mut rig, _gw) = Rig::new(server.url()).await;
    let answer = rig.relay(&call(3, 40, 2), None).await;
    assert_eq!(answer["id"], 3, "{answer}");
    assert_eq!(sum_of(&answer), "42");
    rig.finish().await;
}

#[tokio::test]
async fn garbage_and_error_statuses_from_the_local_endpoint_become_errors_with_the_id() {
    for (status, content_type, body, expect) in [
        (200, "application/json", "<html>oops</html>", "invalid JSON"),
        (500, "text/plain", "boom", "HTTP 500"),
        (200, "text/event-stream", "data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n", "ended without a response"),
        (404, "text/plain", "no such path", "HTTP 404"),
    ] {
        let server = uplink_tests::CannedHttp::start(status, content_type, body).await;
        let (mut rig, _gw) = Rig::new(server.url()).await;
        let answer = rig.relay(&call(11, 1, 1), None).await;
        assert_eq!(answer["id"], 11, "{answer}");
        assert_eq!(answer["error"]["code"], -32603);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expect), "{status}: {message}");
        rig.finish().await;
    }
}

//! Tokens never reach the logs, at any level, through any path: connect failures, refusals, a whole session.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::http::StatusCode;
use uplink_tests::{TestGateway, link_state_where, within};
use uplink_tokio::{Decision, LinkState, Uplink, UplinkConfig};

const TOKEN: &str = "Sup3r-s3cret-t0ken";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn config(url: &str) -> UplinkConfig {
    let mut c = UplinkConfig::new(url, "secret-proj");
    c.token = Some(TOKEN.into());
    c.local_mcp_url = "http://127.0.0.1:9/mcp".into();
    c.sled.backoff_initial = Duration::from_millis(10);
    c.sled.backoff_max = Duration::from_millis(50);
    c
}

// Current-thread runtime: every task runs on this thread, under the thread's default subscriber.
#[tokio::test]
async fn the_token_never_reaches_the_logs_at_trace_level() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            uplink_tokio::SECRET_SAFE_DIRECTIVES
                .iter()
                .fold(tracing_subscriber::EnvFilter::new("trace"), |filter, directive| {
                    filter.add_directive(directive.parse().unwrap())
                }),
        )
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Dependencies log through the `log` crate; the program bridges it, so the test does too.
    let _ = tracing_log::LogTracer::init();

    // 1. Nothing listens: connection refused, with the URL (and token) at hand.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let uplink = Uplink::start(config(&format!("ws://{closed_port}/api/sled-uplink?token={TOKEN}"))).unwrap();
    link_state_where(&uplink, "a failed attempt", |s| matches!(s, LinkState::BackingOff { .. })).await;
    uplink.shutdown().await;

    // 2. Refused handshake, then 3. a whole session: a permission, a failing local MCP call, shutdown.
    let gw = TestGateway::bind().await;
    let uplink = Uplink::start(config(&gw.url())).unwrap();
    gw.refuse(StatusCode::UNAUTHORIZED).await;
    let mut conn = gw.accept().await;
    assert!(conn.uri.contains(TOKEN), "the token does travel, in the handshake only");
    conn.recv_kind("identity").await;
    let asker = uplink.clone();
    let pending =
        tokio::spawn(async move { asker.request_permission("Bash", &json!({"token": "not-the-secret"})).await });
    let req = conn.recv_kind("perm_request").await;
    conn.approve(&req["req_id"], true, false).await;
    assert_eq!(within("the decision", pending).await.unwrap(), Decision::Approve);
    conn.send(json!({"type":"mcp_request","req_id":"m1","payload":{"body":"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}"}})).await;
    let answer = conn.recv_kind("mcp_response").await;
    assert_eq!(answer["payload"]["error"]["code"], -32603);
    let (code, ()) = tokio::join!(conn.until_closed(), uplink.shutdown());
    assert_eq!(code, Some(1000));

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("connecting to the gateway"), "the capture works: {logs}");
    assert!(
        logs.contains("the sled dials its gateway") && logs.contains("token=[redacted]"),
        "which gateway, redacted"
    );
    assert!(logs.contains("tokio_tungstenite"), "dependency logs (through the log crate) are captured too");
    assert!(!logs.contains(TOKEN), "token leaked into the logs:\n{logs}");
}

// Current-thread runtime again: the gateway's tasks run on this thread, under its default subscriber.
#[tokio::test]
async fn peer_strings_reach_the_gateways_logs_escaped_so_they_cannot_forge_lines() {
    use futures_util::SinkExt as _;
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let gw = uplink_tests::RealGateway::start(uplink_proto::gateway::SessionConfig::default(), 1 << 20).await;
    let mut events = uplink_tests::sse(&format!("{}/api/events", gw.base), uplink_tests::ADMIN_TOKEN).await;
    let mut ws = gw.raw_sled().await;
    let evil = "evil\n2026-12-01T00:00:00.000000Z  INFO uplink: forged line \u{1b}[31mred";
    let identity = json!({"type": "identity", "req_id": "identity", "payload": {"project": evil}});
    ws.send(tokio_tungstenite::tungstenite::Message::text(identity.to_string())).await.unwrap();
    assert_eq!(uplink_tests::next_event(&mut events, "sled_connected").await["project"], evil);
    drop(ws);
    uplink_tests::next_event(&mut events, "sled_disconnected").await;
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("sled connected") && logs.contains("sled disconnected"), "the capture works: {logs}");
    assert!(logs.contains(r"evil\n2026"), "the name is there, escaped: {logs}");
    assert!(!logs.lines().any(|l| l.starts_with("2026-12-01T00:00:00.000000Z")), "a forged line: {logs}");
    assert!(!logs.contains('\u{1b}'), "a raw escape reached the logs: {logs}");
}

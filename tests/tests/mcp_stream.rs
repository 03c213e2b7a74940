//! The sled's side of MCP as streams (the `mcp_stream` capability) against a scripted local endpoint: the
//! server's messages within an exchange reach the gateway in order before its answer, a stream that ends early
//! is resumed from its last event id, a cancelled exchange is cancelled upstream, standalone streams, and the
//! end of sessions. The gateway is a raw test gateway, so every frame is seen as sent.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use uplink_tests::{GatewayConn, Reply, ScriptedHttp, Seen, TestGateway};
use uplink_tokio::{Uplink, UplinkConfig};

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow"}}"#;
const ANSWER: &str = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#;

async fn sled(server: &ScriptedHttp) -> (Uplink, GatewayConn, TestGateway) {
    let gw = TestGateway::bind().await;
    let mut c = UplinkConfig::new(gw.url(), "stream-proj");
    c.local_mcp_url = server.url();
    c.sled.mcp_timeout = Duration::from_secs(10);
    let uplink = Uplink::start(c).unwrap();
    let mut conn = gw.accept().await;
    let identity = conn.recv_kind("identity").await;
    assert!(identity["payload"]["capabilities"].as_array().unwrap().contains(&json!("mcp_stream")), "{identity}");
    (uplink, conn, gw)
}

/// Shuts the sled down while the gateway answers its close.
async fn finish(uplink: Uplink, mut conn: GatewayConn) {
    let (code, ()) = tokio::join!(conn.until_closed(), uplink.shutdown());
    assert_eq!(code, Some(1000));
}

fn request(req_id: &str, body: &str, stream: bool) -> Value {
    json!({"type":"mcp_request","req_id":req_id,"payload":{"body":body,"session":"gw-1","stream":stream}})
}

fn sse(events: &[&str]) -> String {
    events.iter().map(|e| format!("event: message\ndata: {e}\n\n")).collect()
}

/// The frames for `req_id`, until its `mcp_response` (heartbeats skipped).
async fn exchange(conn: &mut GatewayConn, req_id: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = conn.recv().await;
        if frame["type"] == "heartbeat" {
            continue;
        }
        assert_eq!(frame["req_id"], req_id, "{frame}");
        let end = frame["type"] == "mcp_response";
        frames.push(frame);
        if end {
            return frames;
        }
    }
}

const PROGRESS: &str =
    r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#;
const SAMPLING: &str = r#"{"jsonrpc":"2.0","id":"srv-1","method":"sampling/createMessage","params":{}}"#;

fn stream_then_answer(seen: &Seen) -> Reply {
    match seen.json()["method"].as_str() {
        Some("tools/call") => Reply::Full(200, "text/event-stream", sse(&[PROGRESS, SAMPLING, ANSWER])),
        _ => Reply::Full(202, "application/json", String::new()),
    }
}

#[tokio::test]
async fn a_streamed_exchange_carries_the_servers_messages_in_order_then_its_answer() {
    let mut server = ScriptedHttp::start(stream_then_answer).await;
    let (uplink, mut conn, _gw) = sled(&server).await;
    conn.send(request("mcp-1", CALL, true)).await;
    let frames = exchange(&mut conn, "mcp-1").await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["mcp_message", "mcp_message", "mcp_response"]);
    assert_eq!(frames[0]["payload"]["method"], "notifications/progress");
    assert_eq!(frames[1]["payload"]["id"], "srv-1");
    assert_eq!(frames[2]["payload"]["id"], 7);
    // The client's answer to the server's request goes back into the same local session.
    let call = server.next_with("POST").await;
    let reply = r#"{"jsonrpc":"2.0","id":"srv-1","result":{"role":"assistant"}}"#;
    conn.send(request("mcp-2", reply, true)).await;
    assert_eq!(exchange(&mut conn, "mcp-2").await[0]["payload"], Value::Null, "202: answered with null");
    let seen = server.next_with("POST").await;
    assert_eq!(seen.json()["id"], "srv-1");
    assert_eq!(seen.header("mcp-session-id"), call.header("mcp-session-id"));
    finish(uplink, conn).await;
}

#[tokio::test]
async fn without_a_stream_the_gateway_sees_only_the_answer_and_the_servers_request_is_refused_at_once() {
    let mut server = ScriptedHttp::start(stream_then_answer).await;
    let (uplink, mut conn, _gw) = sled(&server).await;
    conn.send(request("mcp-1", CALL, false)).await;
    let frames = exchange(&mut conn, "mcp-1").await;
    assert_eq!(frames.len(), 1, "an old gateway sees what it always saw: {frames:?}");
    assert_eq!(frames[0]["payload"]["id"], 7);
    server.next_with("POST").await;
    // The sled answered the server's request itself, so the server does not wait for an answer that cannot come.
    let refusal = server.next_with("POST").await.json();
    assert_eq!((refusal["id"].clone(), refusal["error"]["code"].clone()), (json!("srv-1"), json!(-32601)));
    finish(uplink, conn).await;
}

#[tokio::test]
async fn a_stream_closed_before_its_answer_is_resumed_with_the_last_event_id_after_the_servers_retry() {
    let mut server = ScriptedHttp::start(|seen| match (seen.method.as_str(), seen.header("last-event-id")) {
        ("POST", _) => Reply::Full(200, "text/event-stream", "id: e-1\nretry: 150\ndata:\n\n".into()),
        ("GET", Some("e-1")) => Reply::Full(200, "text/event-stream", format!("id: e-2\ndata: {ANSWER}\n\n")),
        _ => Reply::Full(400, "text/plain", "unexpected".into()),
    })
    .await;
    let (uplink, mut conn, _gw) = sled(&server).await;
    conn.send(request("mcp-1", CALL, true)).await;
    let post = server.next_with("POST").await;
    let started = tokio::time::Instant::now();
    let get = server.next_with("GET").await;
    assert!(started.elapsed() >= Duration::from_millis(140), "the server's retry is honoured: {:?}", started.elapsed());
    assert_eq!(get.header("last-event-id"), Some("e-1"));
    assert_eq!(get.header("mcp-session-id"), post.header("mcp-session-id").or(Some("local-1")));
    let frames = exchange(&mut conn, "mcp-1").await;
    assert_eq!(frames.last().unwrap()["payload"]["id"], 7, "{frames:?}");
    finish(uplink, conn).await;
}

#[tokio::test]
async fn a_cancelled_exchange_is_cancelled_at_the_local_server_and_never_answered() {
    let mut server = ScriptedHttp::start(|seen| match seen.json()["method"].as_str() {
        Some("tools/call") => Reply::Hang(": working\n\n".into()),
        _ => Reply::Full(202, "application/json", String::new()),
    })
    .await;
    let (uplink, mut conn, _gw) = sled(&server).await;
    conn.send(request("mcp-1", CALL, true)).await;
    server.next_with("POST").await;
    conn.send(json!({"type":"mcp_cancel","req_id":"mcp-1","payload":{"reason":"the client went away"}})).await;
    let notice = server.next_with("POST").await.json();
    assert_eq!(
        notice,
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7,"reason":"the client went away"}})
    );
    // The next exchange is answered; nothing for the cancelled one came before it.
    conn.send(request("mcp-2", r#"{"jsonrpc":"2.0","method":"notifications/x"}"#, true)).await;
    assert_eq!(exchange(&mut conn, "mcp-2").await.len(), 1);
    finish(uplink, conn).await;
}

#[tokio::test]
async fn a_standalone_stream_relays_until_it_ends_and_a_server_without_one_says_405() {
    let mut server = ScriptedHttp::start(|seen| match seen.method.as_str() {
        "GET" if seen.header("mcp-session-id") == Some("local-1") => {
            Reply::Full(200, "text/event-stream", sse(&[r#"{"jsonrpc":"2.0","method":"notifications/message"}"#]))
        }
        "GET" => Reply::Full(405, "text/plain", String::new()),
        _ => Reply::Full(
            200,
            "application/json",
            r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25"}}"#.into(),
        ),
    })
    .await;
    let (uplink, mut conn, _gw) = sled(&server).await;
    // Without a local session yet, the GET carries no session id: this server refuses it.
    conn.send(json!({"type":"mcp_listen","req_id":"mcp-1","payload":{"session":"gw-1"}})).await;
    let end = exchange(&mut conn, "mcp-1").await;
    assert_eq!(end[0]["payload"]["error"]["code"], -32601, "{end:?}");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    conn.send(request("mcp-2", init, true)).await;
    exchange(&mut conn, "mcp-2").await;
    conn.send(json!({"type":"mcp_listen","req_id":"mcp-3","payload":{"session":"gw-1"}})).await;
    let frames = exchange(&mut conn, "mcp-3").await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["mcp_message", "mcp_message", "mcp_response"]);
    assert_eq!(frames[0]["payload"], Value::Null, "first: the local server accepted the stream");
    assert_eq!(frames[1]["payload"]["method"], "notifications/message");
    assert_eq!(frames[2]["payload"], Value::Null, "the stream ended");
    while server.seen.try_recv().is_ok() {}
    // The gateway ends the session: the local session is ended too.
    conn.send(json!({"type":"mcp_session_end","req_id":"","payload":{"session":"gw-1"}})).await;
    let delete = server.next_with("DELETE").await;
    assert_eq!(delete.header("mcp-session-id"), Some("local-1"));
    finish(uplink, conn).await;
}

#[tokio::test]
async fn at_shutdown_the_sled_ends_its_local_sessions() {
    let mut server = ScriptedHttp::start(|_| {
        Reply::Full(
            200,
            "application/json",
            r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25"}}"#.into(),
        )
    })
    .await;
    let (uplink, mut conn, _gw) = sled(&server).await;
    conn.send(request("mcp-1", r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#, true)).await;
    exchange(&mut conn, "mcp-1").await;
    finish(uplink, conn).await;
    let delete = server.next_with("DELETE").await;
    assert_eq!(delete.header("mcp-session-id"), Some("local-1"));
}

/// Through the real gateway: an HTTP client that goes away mid-call cancels the call at the local server.
#[tokio::test]
async fn a_client_that_hangs_up_on_the_gateway_cancels_its_call_at_the_local_server() {
    use tokio::io::AsyncWriteExt as _;
    use uplink_tests::{ADMIN_TOKEN, RealGateway, SLED_TOKEN, http_with_headers, next_event, sse};
    let mut server = ScriptedHttp::start(|seen| match seen.json()["method"].as_str() {
        Some("initialize") => Reply::Full(
            200,
            "application/json",
            r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{}}}"#.into(),
        ),
        Some("tools/call") => Reply::Hang(": working\n\n".into()),
        _ => Reply::Full(202, "application/json", String::new()),
    })
    .await;
    let gw = RealGateway::start(uplink_proto::gateway::SessionConfig::default(), 1 << 20).await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let mut c = UplinkConfig::new(&gw.ws, "hang");
    c.token = Some(SLED_TOKEN.into());
    c.local_mcp_url = server.url();
    let uplink = Uplink::start(c).unwrap();
    next_event(&mut events, "sled_connected").await;
    let url = format!("{}/api/sleds/hang/mcp", gw.base);
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let (status, headers, _) = http_with_headers("POST", &url, Some(ADMIN_TOKEN), Some(init), &[]).await;
    assert_eq!(status, 200);
    let session = headers.iter().find(|(n, _)| n == "mcp-session-id").map(|(_, v)| v.clone()).unwrap();
    server.next_with("POST").await;

    // A raw client: it sends the call, then goes away without reading the answer.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /api/sleds/hang/mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nMcp-Session-Id: {session}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{CALL}",
        gw.addr,
        CALL.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let call = server.next_with("POST").await;
    assert_eq!(call.json()["method"], "tools/call");
    drop(tcp);
    let notice = server.next_with("POST").await.json();
    assert_eq!(notice["method"], "notifications/cancelled", "{notice}");
    assert_eq!(notice["params"]["requestId"], 7);
    uplink.shutdown().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_local_answer_over_the_size_limit_is_an_error_and_one_within_it_is_relayed_as_sent() {
    // The sled holds at most `max_message_size` of a local answer: beyond, the call ends with an error for
    // its id instead of a body held whole. Within, the answer arrives as the server wrote it, less the
    // whitespace around it.
    let pad = "x".repeat(8 * 1024);
    let big = format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"pad":"{pad}"}}}}"#);
    let mut server = ScriptedHttp::start(move |seen| match seen.json()["id"].as_i64() {
        Some(7) => Reply::Full(200, "application/json", big.clone()),
        _ => Reply::Full(200, "application/json", format!("\n  {}  \n", ANSWER.replace("7", "8"))),
    })
    .await;
    let gw = TestGateway::bind().await;
    let mut c = UplinkConfig::new(gw.url(), "limit-proj");
    c.local_mcp_url = server.url();
    c.max_message_size = 4096;
    let (uplink, mut conn) = gw.start_sled(c).await;
    conn.send(request("mcp-1", CALL, false)).await;
    let frames = exchange(&mut conn, "mcp-1").await;
    let error = &frames[0]["payload"];
    assert_eq!(error["id"], 7, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("larger than 4096 bytes"), "{error}");
    server.next_with("POST").await;
    conn.send(request("mcp-2", &CALL.replace("7", "8"), false)).await;
    let frames = exchange(&mut conn, "mcp-2").await;
    assert_eq!(frames[0]["payload"], serde_json::from_str::<Value>(&ANSWER.replace("7", "8")).unwrap());
    assert_eq!(frames[0]["payload"].to_string().len(), ANSWER.len(), "relayed without its whitespace");
    finish(uplink, conn).await;
}

//! Hostile input over real sockets, at both ends: floods of garbage, unknown and duplicate frames, deeply
//! nested JSON, huge ids, invalid UTF-8, more requests than allowed, and a hostile admin client. Nothing may
//! panic, grow without bound, approve what nobody approved, leave a request unanswered, or hurt another sled.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use uplink_proto::gateway::SessionConfig;
use uplink_tests::{
    ADMIN_TOKEN, RealGateway, SLED_TOKEN, TestGateway, close_code, http, identify, link_state_where, next_event, sse,
    within,
};
use uplink_tokio::{Decision, LinkState, Uplink, UplinkConfig};

/// Nested arrays deeper than any JSON parser here accepts (serde_json stops at 128 levels).
fn deeply_nested() -> String {
    format!("{}{}", "[".repeat(20_000), "]".repeat(20_000))
}

fn frame(kind: &str, req_id: &str, payload: Value) -> String {
    json!({"type": kind, "req_id": req_id, "payload": payload}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_hostile_frames_never_hurt_the_gateway_or_another_sled() {
    const LIMIT: usize = 100;
    let session = SessionConfig { max_pending_permissions: LIMIT, ..SessionConfig::default() };
    let gw = RealGateway::start_hub(RealGateway::approving(session, &["Bench"]), 64 * 1024).await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let mut c = UplinkConfig::new(&gw.ws, "good");
    c.token = Some(SLED_TOKEN.into());
    let good = Uplink::start(c).unwrap();
    link_state_where(&good, "the good sled", |s| matches!(s, LinkState::Connected { .. })).await;

    let mut evil = gw.raw_sled().await;
    identify(&mut evil, "evil").await;
    loop {
        if next_event(&mut events, "sled_connected").await["project"] == "evil" {
            break;
        }
    }
    let huge_id = "h".repeat(60_000);
    let mut flood: Vec<String> = Vec::new();
    flood.extend((0..2000).map(|_| "{".to_owned()));
    flood.extend((0..2000).map(|i| frame("no_such_type", &i.to_string(), json!(null))));
    let deep: Value = json!({"tool_name": "Write", "tool_input": "placeholder"});
    flood.push(frame("perm_request", "deep", deep).replace("\"placeholder\"", &deeply_nested()));
    flood.push(frame("perm_request", &huge_id, json!({"tool_name": "Write", "tool_input": {}})));
    flood.extend((0..1000).map(|_| frame("perm_request", "dup", json!({"tool_name": "Write", "tool_input": {}}))));
    flood.extend((0..300).map(|i| frame("perm_request", &format!("n-{i}"), json!({"tool_name": "Write"}))));
    for text in flood {
        evil.feed(Message::text(text)).await.unwrap();
    }
    evil.flush().await.unwrap();

    // The deep tool input is valid JSON, but deeper than the gateway accepts: denied at once, never held.
    // The huge id, "dup" (once) and the first 98 of the 300 wait; the other 202 are denied at once: the
    // limit is reached. Repeats of "dup" are ignored.
    let denied = within("the denials", async {
        let mut denied = Vec::new();
        while denied.len() < 203 {
            match evil.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    assert_eq!(v["type"], "perm_response", "{v}");
                    assert_eq!(v["payload"]["approved"], false, "{v}");
                    denied.push(v["req_id"].as_str().unwrap().to_owned());
                }
                Some(Ok(_)) => {}
                other => panic!("the hostile connection ended: {other:?}"),
            }
        }
        denied
    })
    .await;
    let expected: Vec<String> = std::iter::once("deep".to_owned()).chain((98..300).map(|i| format!("n-{i}"))).collect();
    assert_eq!(denied, expected);
    let (_, body) = http("GET", &format!("{}/api/sleds", gw.base), Some(ADMIN_TOKEN), None, &[]).await;
    let sleds: Value = serde_json::from_str(&body).unwrap();
    let evil_entry = sleds["sleds"].as_array().unwrap().iter().find(|s| s["project"] == "evil").unwrap().clone();
    assert_eq!(evil_entry["pending_permissions"], LIMIT, "{evil_entry}");
    assert_eq!(evil_entry["connected"], true);

    // Invalid UTF-8 in a text frame ends that connection only.
    let mut bad = gw.raw_sled().await;
    identify(&mut bad, "bad").await;
    let invalid = Frame::message(vec![b'{', 0xff, b'}'], OpCode::Data(Data::Text), true);
    bad.send(Message::Frame(invalid)).await.unwrap();
    close_code(&mut bad).await;

    // The well-behaved sled never noticed.
    assert_eq!(within("approval", good.request_permission("Bench", &json!({}))).await, Decision::Approve);
    assert!(matches!(good.link_state(), LinkState::Connected { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_gateway_gets_one_answer_per_mcp_request_and_approves_nothing_by_junk() {
    let gateway = TestGateway::bind().await;
    let mut c = UplinkConfig::new(gateway.url(), "target");
    c.token = Some(SLED_TOKEN.into());
    c.local_mcp_url = "http://127.0.0.1:9/rpc".into(); // nothing listens there: every call fails fast
    let uplink = Uplink::start(c).unwrap();
    let mut conn = gateway.accept().await;
    conn.recv_kind("identity").await;
    let asked = {
        let uplink = uplink.clone();
        tokio::spawn(async move { uplink.request_permission("Write", &json!({"file_path": "/etc/passwd"})).await })
    };
    let request = conn.recv_kind("perm_request").await;
    let id = request["req_id"].as_str().unwrap().to_owned();

    // Junk and approvals for ids nobody asked about change nothing.
    for _ in 0..1000 {
        conn.send_text("\u{0}not json").await;
    }
    for i in 0..1000 {
        conn.send_text(&frame("perm_response", &format!("other-{i}"), json!({"approved": true}))).await;
    }
    // An answer whose payload is not an object (here, nested too deep to be anything else) is a denial.
    let unreadable = frame("perm_response", &id, json!("placeholder")).replace("\"placeholder\"", &deeply_nested());
    conn.send_text(&unreadable).await;
    assert_eq!(within("the decision", asked).await.unwrap(), Decision::Deny);
    // MCP requests: distinct ids, one id repeated 300 times, and a huge id; far more than may run at once.
    let huge_id = "m".repeat(60_000);
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    let ids = (0..500).map(|i| format!("m-{i}")).chain((0..300).map(|_| "same".to_owned())).chain([huge_id]);
    for (n, req_id) in ids.enumerate() {
        let body = json!({"jsonrpc": "2.0", "id": n, "method": "ping"}).to_string();
        conn.send_text(&frame("mcp_request", &req_id, json!({"body": body}))).await;
        *sent.entry(req_id).or_default() += 1;
    }

    // Every mcp_request gets exactly one mcp_response: a JSON-RPC error with its own id.
    let total: usize = sent.values().sum();
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    let mut rpc_ids = std::collections::BTreeSet::new();
    while answered.values().sum::<usize>() < total {
        let v = conn.recv().await;
        if v["type"] != "mcp_response" {
            assert_eq!(v["type"], "heartbeat", "{v}");
            continue;
        }
        assert!(v["payload"]["error"]["code"].is_i64(), "{v}");
        assert!(rpc_ids.insert(v["payload"]["id"].as_u64().unwrap()), "two answers to one request: {v}");
        *answered.entry(v["req_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(answered, sent);

    // The link survived all of it: a new request is sent and decided by its answer.
    let asked = {
        let uplink = uplink.clone();
        tokio::spawn(async move { uplink.request_permission("Read", &json!({"file_path": "README.md"})).await })
    };
    let request = conn.recv_kind("perm_request").await;
    let reply = frame("perm_response", request["req_id"].as_str().unwrap(), json!({"approved": true}));
    conn.send_text(&reply).await;
    assert_eq!(within("the decision", asked).await.unwrap(), Decision::Approve);
    uplink.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_refuses_traversal_oversized_bodies_and_slow_clients() {
    let gw = RealGateway::start(SessionConfig::default(), 1 << 20).await;
    for path in [
        "/api/permissions/..%2F..%2Fetc%2Fpasswd",
        "/api/permissions/../../etc/passwd",
        "/api/sleds/..%2F..%2Fetc/rpc",
        "/api/sleds/%00/rpc",
        "/api/sleds/..%2F..%2Fetc/mcp",
        "/api/sleds/%00/mcp",
    ] {
        let (status, body) = http("POST", &format!("{}{path}", gw.base), Some(ADMIN_TOKEN), Some("{}"), &[]).await;
        assert!(status == 404 || status == 400, "{path}: {status} {body}");
    }
    // Bodies over the limit are refused with 413, whatever the route.
    let big = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":"{}"}}"#, "a".repeat(5 << 20));
    for path in ["/api/sleds/anyone/rpc", "/api/sleds/anyone/mcp", "/api/permissions/1-1"] {
        let (status, _) = http("POST", &format!("{}{path}", gw.base), Some(ADMIN_TOKEN), Some(&big), &[]).await;
        assert_eq!(status, 413, "{path}");
    }
    // Clients that send part of their request headers and then nothing, to the admin API or as a WebSocket
    // handshake, are disconnected by the handshake timeout (2 s here, 10 s by default).
    let stuck = |head: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut rest)).await.is_ok()
    };
    let handshake = format!("GET /api/sled-uplink?token={SLED_TOKEN} HTTP/1.1\r\nUpgrade: websocket\r\n");
    let (api, ws) = tokio::join!(stuck("GET /api/sleds HTTP/1.1\r\nHost: x\r\n".to_owned()), stuck(handshake));
    assert!(api && ws, "a slow client held its connection for 20 s (admin API: {api}, handshake: {ws})");
    // A client that sends whole headers but only part of its body is answered 408 within the timeout again.
    for path in ["/api/permissions/1-0", "/api/sleds/anyone/rpc", "/api/sleds/anyone/mcp"] {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"appr"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut response = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut response))
            .await
            .expect("a slow body held its connection for 20 s")
            .unwrap();
        let text = String::from_utf8_lossy(&response[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
    }
}

#[tokio::test]
async fn the_admin_api_answers_wrong_methods_with_allow_and_accepts_the_bearer_scheme_in_any_case() {
    let gw = RealGateway::start(SessionConfig::default(), 1 << 20).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"DELETE /api/permissions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    within("the answer", tcp.read_to_end(&mut response)).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 405"), "{text}");
    assert!(text.contains("\r\nallow: get"), "{text}");
    assert!(text.contains(r#"{"error":"#), "{text}");
    let (status, body) = http(
        "GET",
        &format!("{}/api/sleds", gw.base),
        None,
        None,
        &[("authorization", &format!("bearer {ADMIN_TOKEN}"))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn invalid_utf8_from_the_gateway_ends_the_connection_denies_what_was_in_flight_and_the_sled_reconnects() {
    let gateway = TestGateway::bind().await;
    let mut c = UplinkConfig::new(gateway.url(), "target");
    c.token = Some(SLED_TOKEN.into());
    c.sled.backoff_initial = Duration::from_millis(20);
    let uplink = Uplink::start(c).unwrap();
    let mut conn = gateway.accept().await;
    conn.recv_kind("identity").await;
    let asked = {
        let uplink = uplink.clone();
        tokio::spawn(async move { uplink.request_permission("Write", &json!({})).await })
    };
    conn.recv_kind("perm_request").await;
    conn.send_invalid_utf8().await;
    assert_eq!(within("the decision", asked).await.unwrap(), Decision::Deny);
    let mut again = gateway.accept().await;
    assert_eq!(again.recv().await["type"], "identity");
    uplink.shutdown().await;
}

#[tokio::test]
async fn a_frame_announcing_a_terabyte_is_refused_from_its_header_with_1009() {
    let gw = RealGateway::start(SessionConfig::default(), 64 * 1024).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let handshake = format!(
        "GET /api/sled-uplink?token={SLED_TOKEN} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut response = [0u8; 1024];
    let n = within("the upgrade", tcp.read(&mut response)).await.unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&response[..n]));
    // identity first, then the header of a masked text frame of 2^40 bytes, and no payload at all.
    let identity = br#"{"type":"identity","req_id":"identity","payload":{"project":"tera"}}"#;
    let mut frame = vec![0x81, 0x80 | identity.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(identity);
    frame.extend_from_slice(&[0x81, 0xFF]);
    frame.extend_from_slice(&(1u64 << 40).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    tcp.write_all(&frame).await.unwrap();
    // The gateway answers with a close frame carrying 1009 without waiting for (or buffering) the payload.
    let mut answer = Vec::new();
    within("the close", async {
        let mut buf = [0u8; 256];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let close = answer.windows(4).any(|w| w[0] == 0x88 && w[2..4] == 1009u16.to_be_bytes());
    assert!(close, "no 1009 close frame in {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_that_stops_reading_is_dropped_once_its_queue_fills_and_every_caller_gets_503() {
    let gw = RealGateway::start(SessionConfig::default(), 16 << 20).await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    // Identifies, then never reads again.
    let mut stuck = gw.raw_sled().await;
    identify(&mut stuck, "stuck").await;
    next_event(&mut events, "sled_connected").await;

    // Sixteen requests of almost 4 MiB: more than the socket buffers and the connection's 32 MiB queue
    // together hold. The MCP timeout is a minute, so an answer within the wait below is the queue's doing.
    let pad = "x".repeat((4 << 20) - 1024);
    let url = format!("{}/api/sleds/stuck/rpc", gw.base);
    let callers: Vec<_> = (0..16)
        .map(|i| {
            let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"pad": pad}}).to_string();
            let url = url.clone();
            tokio::spawn(async move { http("POST", &url, Some(ADMIN_TOKEN), Some(&body), &[]).await })
        })
        .collect();
    for caller in callers {
        let (status, body) = caller.await.unwrap();
        assert_eq!(status, 503, "{body}");
    }
    assert_eq!(next_event(&mut events, "sled_disconnected").await["project"], "stuck");
    drop(stuck);
}

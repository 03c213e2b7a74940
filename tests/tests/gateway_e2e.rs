//! `uplink-tokio`'s sled against `uplink gateway`'s server, on loopback, through the admin API and its events.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_proto::gateway::SessionConfig;
use uplink_tests::mcp_server::{McpServer, Mode};
use uplink_tests::{
    ADMIN_TOKEN, RealGateway, SLED_TOKEN, close_code, http, http_with_headers, identify, next_event, sse, within,
};
use uplink_tokio::{Cause, Decision, LinkState, LossReason, Refusal, Uplink, UplinkConfig};

const ADMIN: &str = ADMIN_TOKEN;

type Gw = RealGateway;

async fn start_gateway(session: SessionConfig, max_message_size: usize) -> Gw {
    RealGateway::start(session, max_message_size).await
}

async fn gateway() -> Gw {
    start_gateway(SessionConfig::default(), 1 << 20).await
}

fn sled(gw: &Gw, project: &str, mcp: Option<String>) -> Uplink {
    let mut c = UplinkConfig::new(&gw.ws, project);
    c.token = Some(SLED_TOKEN.into());
    c.local_mcp_url = mcp.unwrap_or_else(|| "http://127.0.0.1:9/mcp".into());
    c.sled.backoff_initial = Duration::from_millis(20);
    c.sled.backoff_max = Duration::from_millis(200);
    Uplink::start(c).unwrap()
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test]
async fn a_sled_identifies_and_is_listed() {
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let uplink = sled(&gw, "alpha", None);
    assert_eq!(next_event(&mut events, "sled_connected").await["project"], "alpha");
    let (status, body) = http("GET", &format!("{}/api/sleds", gw.base), Some(ADMIN), None, &[]).await;
    assert_eq!(status, 200);
    let sleds = parse(&body)["sleds"].clone();
    assert_eq!(sleds.as_array().unwrap().len(), 1);
    assert_eq!(sleds[0]["project"], "alpha");
    assert_eq!((sleds[0]["connected"].clone(), sleds[0]["stale"].clone()), (json!(true), json!(false)));
    uplink.shutdown().await;
    assert_eq!(next_event(&mut events, "sled_disconnected").await["project"], "alpha");
    let (_, body) = http("GET", &format!("{}/api/sleds", gw.base), Some(ADMIN), None, &[]).await;
    assert_eq!(parse(&body)["sleds"][0]["connected"], false);
}

#[tokio::test]
async fn permissions_are_approved_and_denied_through_the_admin_api_and_its_events() {
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let uplink = sled(&gw, "beta", None);
    next_event(&mut events, "sled_connected").await;
    for (body, want) in [
        (r#"{"approved":true}"#, Decision::Approve),
        (r#"{"approved":false,"always_allow":false}"#, Decision::Deny),
        (r#"{"approved":true,"always_allow":true}"#, Decision::AlwaysAllow),
    ] {
        let asker = uplink.clone();
        let pending = tokio::spawn(async move { asker.request_permission("Bash", &json!({"command": "ls"})).await });
        let requested = next_event(&mut events, "permission_requested").await;
        assert_eq!((requested["project"].clone(), requested["tool_name"].clone()), (json!("beta"), json!("Bash")));
        assert_eq!(requested["tool_input"], json!({"command": "ls"}));
        let id = requested["id"].as_str().unwrap().to_owned();
        let (_, list) = http("GET", &format!("{}/api/permissions", gw.base), Some(ADMIN), None, &[]).await;
        assert_eq!(parse(&list)["permissions"][0]["id"], id.as_str());
        let url = format!("{}/api/permissions/{id}", gw.base);
        let (status, _) = http("POST", &url, Some(ADMIN), Some(body), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(within("the decision", pending).await.unwrap(), want);
        let decided = next_event(&mut events, "permission_decided").await;
        assert_eq!(decided["id"], id.as_str());
        // Decided: gone from the list, and a second decision is refused, saying how it ended.
        let (status, refused) = http("POST", &url, Some(ADMIN), Some(body), &[]).await;
        assert_eq!(status, 409, "{refused}");
        assert_eq!(
            (parse(&refused)["ended"].clone(), parse(&refused)["decision"].clone()),
            (json!("decided"), json!(want.as_str()))
        );
    }
    let (_, list) = http("GET", &format!("{}/api/permissions", gw.base), Some(ADMIN), None, &[]).await;
    assert_eq!(parse(&list)["permissions"], json!([]));
    for bad in ["../../etc/passwd", "%2e%2e", "1-999", ""] {
        let (status, _) =
            http("POST", &format!("{}/api/permissions/{bad}", gw.base), Some(ADMIN), Some(r#"{"approved":true}"#), &[])
                .await;
        assert!(status == 404, "{bad}: {status}");
    }
    let (status, body) =
        http("POST", &format!("{}/api/permissions/1-0", gw.base), Some(ADMIN), Some("{nope"), &[]).await;
    assert_eq!(status, 400, "{body}");
    // A contradictory decision is refused, not read as an approval, and the request stays pending.
    let asker = uplink.clone();
    let pending = tokio::spawn(async move { asker.request_permission("Bash", &json!({})).await });
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let url = format!("{}/api/permissions/{id}", gw.base);
    let (status, body) = http("POST", &url, Some(ADMIN), Some(r#"{"approved":false,"always_allow":true}"#), &[]).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = http("POST", &url, Some(ADMIN), Some(r#"{"approved":false}"#), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(within("the decision", pending).await.unwrap(), Decision::Deny);
    uplink.shutdown().await;
}

#[tokio::test]
async fn a_denial_with_a_message_reaches_the_asker_and_the_event_stream() {
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let uplink = sled(&gw, "delta", None);
    next_event(&mut events, "sled_connected").await;
    let asker = uplink.clone();
    let pending = tokio::spawn(async move { asker.ask("Bash", &json!({"command": "psql prod"})).await });
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let url = format!("{}/api/permissions/{id}", gw.base);
    // Longer than a perm_response may carry: refused, and the request stays pending.
    let long = json!({"approved": false, "message": "x".repeat(4097)}).to_string();
    let (status, body) = http("POST", &url, Some(ADMIN), Some(&long), &[]).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        http("POST", &url, Some(ADMIN), Some(r#"{"approved":false,"message":"use staging"}"#), &[]).await;
    assert_eq!(status, 200, "{body}");
    let answer = within("the decision", pending).await.unwrap();
    assert_eq!(
        (answer.decision, answer.cause, answer.message.as_deref()),
        (Decision::Deny, Cause::Response, Some("use staging"))
    );
    let decided = next_event(&mut events, "permission_decided").await;
    assert_eq!((decided["decision"].clone(), decided["message"].clone()), (json!("deny"), json!("use staging")));
    uplink.shutdown().await;
}

#[tokio::test]
async fn a_request_withdrawn_by_the_sled_disappears_and_cannot_be_decided() {
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let mut c = UplinkConfig::new(&gw.ws, "gamma");
    c.token = Some(SLED_TOKEN.into());
    c.sled.permission_timeout = Duration::from_millis(300);
    let uplink = Uplink::start(c).unwrap();
    next_event(&mut events, "sled_connected").await;
    let asker = uplink.clone();
    let pending = tokio::spawn(async move { asker.request_permission("Bash", &json!({})).await });
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let withdrawn = next_event(&mut events, "permission_withdrawn").await;
    // The sled's deadline passed: it says so (`timeout`), and the gateway records it as that.
    assert_eq!((withdrawn["id"].as_str(), withdrawn["reason"].as_str()), (Some(id.as_str()), Some("deadline")));
    assert!(withdrawn["waited_ms"].as_u64().is_some_and(|ms| ms >= 250), "{withdrawn}");
    assert_eq!(within("the decision", pending).await.unwrap(), Decision::Deny);
    let (status, refused) =
        http("POST", &format!("{}/api/permissions/{id}", gw.base), Some(ADMIN), Some(r#"{"approved":true}"#), &[])
            .await;
    assert_eq!((status, parse(&refused)["ended"].clone()), (409, json!("deadline")), "{refused}");
    uplink.shutdown().await;
}

#[tokio::test]
async fn mcp_is_relayed_through_the_gateway_http_api_to_an_rmcp_server_behind_the_sled() {
    let server = McpServer::start(Mode::Sessions, None).await;
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let uplink = sled(&gw, "delta", Some(server.url()));
    next_event(&mut events, "sled_connected").await;
    let url = format!("{}/api/sleds/delta/mcp", gw.base);
    // The gateway mints the session on initialize and names it in the answer.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let (status, headers, body) = http_with_headers("POST", &url, Some(ADMIN), Some(init), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(parse(&body)["result"]["serverInfo"].is_object());
    let session = headers.iter().find(|(n, _)| n == "mcp-session-id").map(|(_, v)| v.clone()).expect("a session id");
    assert_eq!(session.len(), 64, "32 random bytes, hex: {session}");
    let post = |body: String| {
        let (url, session) = (url.clone(), session.clone());
        async move { http("POST", &url, Some(ADMIN), Some(&body), &[("mcp-session-id", &session)]).await }
    };
    let (status, body) = post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.into()).await;
    assert_eq!((status, body.as_str()), (202, ""));
    let (_, body) = post(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#.into()).await;
    assert_eq!(parse(&body)["result"]["tools"][0]["name"], "add");
    let (_, body) = post(
        json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"add","arguments":{"a":20,"b":22}}})
            .to_string(),
    )
    .await;
    assert_eq!(parse(&body)["result"]["content"][0]["text"], "42");

    // Without a session, another session's id, or for a project no sled serves.
    let (status, _) =
        http("POST", &url, Some(ADMIN), Some(r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#), &[]).await;
    assert_eq!(status, 400);
    let other = [("mcp-session-id", "0".repeat(64))];
    let other: Vec<(&str, &str)> = other.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (status, _) =
        http("POST", &url, Some(ADMIN), Some(r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#), &other).await;
    assert_eq!(status, 404);
    let (status, _) = http("POST", &format!("{}/api/sleds/nobody/mcp", gw.base), Some(ADMIN), Some(init), &[]).await;
    assert_eq!(status, 404);
    // A web page elsewhere (DNS rebinding, or a person's cookie) is refused, token or not.
    let (status, body) = http("POST", &url, Some(ADMIN), Some(init), &[("origin", "http://evil.example")]).await;
    assert_eq!((status, parse(&body)["error"]["code"].clone()), (403, json!(-32000)), "{body}");
    let rebound = [("host", "evil.example"), ("origin", "http://evil.example")];
    let (status, _) = http("POST", &url, Some(ADMIN), Some(init), &rebound).await;
    assert_eq!(status, 403, "DNS rebinding: Host and Origin agree, but the name is not the gateway's");
    let own = format!("http://{}", gw.addr);
    let (status, _) = http("POST", &url, Some(ADMIN), Some(init), &[("origin", &own)]).await;
    assert_eq!(status, 200, "a page of the gateway's own origin, by its own address");
    let (status, _) = post("{not json".into()).await;
    assert_eq!(status, 400);
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5 << 20));
    let (status, _) = post(huge).await;
    assert_eq!(status, 413);
    uplink.shutdown().await;
    next_event(&mut events, "sled_disconnected").await;
    let (status, _) = post(r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#.into()).await;
    assert_eq!(status, 503, "known project, not connected");
    server.stop().await;
}

#[tokio::test]
async fn a_session_the_sled_cannot_renew_is_gone_for_its_client_which_initializes_anew() {
    let server = McpServer::start(Mode::Sessions, None).await;
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let mut c = UplinkConfig::new(&gw.ws, "lima");
    c.token = Some(SLED_TOKEN.into());
    c.local_mcp_url = server.url();
    // The sled keeps no initialize: no session of it can be renewed.
    c.sled.max_mcp_initialize_bytes = 0;
    let uplink = Uplink::start(c).unwrap();
    next_event(&mut events, "sled_connected").await;
    let url = format!("{}/api/sleds/lima/mcp", gw.base);
    let open = || async {
        let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
        let (status, headers, body) = http_with_headers("POST", &url, Some(ADMIN), Some(init), &[]).await;
        assert_eq!(status, 200, "{body}");
        let session = headers.iter().find(|(n, _)| n == "mcp-session-id").map(|(_, v)| v.clone()).unwrap();
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let (status, _) = http("POST", &url, Some(ADMIN), Some(note), &[("mcp-session-id", &session)]).await;
        assert_eq!(status, 202);
        session
    };
    let add = |session: String, id: u64| {
        let url = url.clone();
        let body =
            json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"add","arguments":{"a":id,"b":1}}});
        async move { http("POST", &url, Some(ADMIN), Some(&body.to_string()), &[("mcp-session-id", &session)]).await }
    };
    let session = open().await;
    let (status, body) = add(session.clone(), 3).await;
    assert_eq!((status, parse(&body)["result"]["content"][0]["text"].clone()), (200, json!("4")), "{body}");
    // The local server restarts and forgets the session; the sled cannot renew it.
    let addr = server.stop().await;
    let server = McpServer::start(Mode::Sessions, Some(addr)).await;
    let (status, body) = add(session.clone(), 4).await;
    let gone = parse(&body);
    assert_eq!((status, gone["id"].clone(), gone["error"]["code"].clone()), (404, json!(4), json!(-32001)), "{body}");
    // Gone at the gateway too: the same id is unknown now, as a client that got 404 expects.
    let (status, _) = add(session.clone(), 5).await;
    assert_eq!(status, 404);
    // The client initializes anew, and goes on.
    let renewed = open().await;
    assert_ne!(renewed, session);
    let (status, body) = add(renewed, 6).await;
    assert_eq!((status, parse(&body)["result"]["content"][0]["text"].clone()), (200, json!("7")), "{body}");
    uplink.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn tokens_are_checked_before_anything_else() {
    let gw = gateway().await;
    // A sled with a wrong token is refused before the upgrade and backs off on the cap.
    let mut c = UplinkConfig::new(&gw.ws, "intruder");
    c.token = Some("wrong".into());
    c.sled.backoff_initial = Duration::from_millis(50);
    c.sled.backoff_max = Duration::from_millis(300);
    let intruder = Uplink::start(c).unwrap();
    let mut link = intruder.watch_link();
    within("the refusal", async {
        while !matches!(
            *link.borrow_and_update(),
            LinkState::BackingOff { reason: LossReason::Refused(Refusal::Token), .. }
        ) {
            link.changed().await.unwrap();
        }
    })
    .await;
    intruder.shutdown().await;
    // The admin API wants the admin token, and a sled token is not one.
    for token in [None, Some("wrong"), Some(SLED_TOKEN)] {
        for (method, path) in [
            ("GET", "/api/sleds"),
            ("GET", "/api/permissions"),
            ("POST", "/api/permissions/1-0"),
            ("GET", "/api/events"),
        ] {
            let (status, body) = http(method, &format!("{}{path}", gw.base), token, Some("{}"), &[]).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert!(parse(&body)["error"].is_string());
        }
    }
    let (status, _) = http("GET", &format!("{}/nowhere", gw.base), Some(ADMIN), None, &[]).await;
    assert_eq!(status, 404);
    let (status, _) = http("DELETE", &format!("{}/api/sleds", gw.base), Some(ADMIN), None, &[]).await;
    assert_eq!(status, 405);
    // No upgrade headers, right token: 400, not a crash.
    let (status, _) = http("GET", &format!("{}/api/sled-uplink?token={SLED_TOKEN}", gw.base), None, None, &[]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_second_connection_for_a_project_replaces_the_first() {
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let mut first = gw.raw_sled().await;
    identify(&mut first, "epsilon").await;
    next_event(&mut events, "sled_connected").await;
    first.send(Message::text(r#"{"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash"}}"#)).await.unwrap();
    let id = next_event(&mut events, "permission_requested").await["id"].clone();
    let mut second = gw.raw_sled().await;
    identify(&mut second, "epsilon").await;
    assert_eq!(close_code(&mut first).await, Some(4000));
    let withdrawn = next_event(&mut events, "permission_withdrawn").await;
    assert_eq!((withdrawn["id"].clone(), withdrawn["reason"].clone()), (id, json!("connection_lost")));
    let (_, body) = http("GET", &format!("{}/api/sleds", gw.base), Some(ADMIN), None, &[]).await;
    let sleds = parse(&body)["sleds"].clone();
    assert_eq!((sleds.as_array().unwrap().len(), sleds[0]["connected"].clone()), (1, json!(true)));
}

#[tokio::test]
async fn a_silent_sled_is_reported_stale_then_alive() {
    let gw =
        start_gateway(SessionConfig { stale_after: Duration::from_millis(300), ..SessionConfig::default() }, 1 << 20)
            .await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let mut ws = gw.raw_sled().await;
    identify(&mut ws, "zeta").await;
    next_event(&mut events, "sled_connected").await;
    assert_eq!(next_event(&mut events, "sled_stale").await["project"], "zeta");
    let (_, body) = http("GET", &format!("{}/api/sleds", gw.base), Some(ADMIN), None, &[]).await;
    assert_eq!(parse(&body)["sleds"][0]["stale"], true);
    ws.send(Message::text(r#"{"type":"heartbeat","req_id":"","payload":null}"#)).await.unwrap();
    assert_eq!(next_event(&mut events, "sled_alive").await["project"], "zeta");
}

#[tokio::test]
async fn hostile_clients_are_closed_with_the_right_code() {
    let gw =
        start_gateway(SessionConfig { identity_timeout: Duration::from_millis(300), ..SessionConfig::default() }, 4096)
            .await;
    // Garbage first, or anything but identity first: policy violation.
    for first in ["garbage", r#"{"type":"heartbeat","req_id":"","payload":null}"#] {
        let mut ws = gw.raw_sled().await;
        ws.send(Message::text(first)).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(1008), "{first}");
    }
    // Nothing at all: policy violation at the identity deadline.
    let mut ws = gw.raw_sled().await;
    assert_eq!(close_code(&mut ws).await, Some(1008));
    // An oversized frame after identity: 1009.
    let mut ws = gw.raw_sled().await;
    identify(&mut ws, "eta").await;
    ws.send(Message::text("x".repeat(10_000))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
    // Garbage after identity is ignored: the connection lives and still answers MCP.
    let mut ws = gw.raw_sled().await;
    identify(&mut ws, "theta").await;
    for junk in ["{", "[]", r#"{"type":"nope"}"#, r#"{"type":"mcp_response","req_id":"mcp-999"}"#] {
        ws.send(Message::text(junk)).await.unwrap();
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let base = gw.base.clone();
    let relay = tokio::spawn(async move {
        http(
            "POST",
            &format!("{base}/api/sleds/theta/rpc"),
            Some(ADMIN),
            Some(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            &[],
        )
        .await
    });
    let request = within("the relayed request", async {
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "mcp_request" {
                    return v;
                }
            }
        }
    })
    .await;
    let answer =
        json!({"type":"mcp_response","req_id":request["req_id"],"payload":{"jsonrpc":"2.0","id":1,"result":{}}});
    ws.send(Message::text(answer.to_string())).await.unwrap();
    let (status, body) = within("the relay", relay).await.unwrap();
    assert_eq!((status, parse(&body)["id"].clone()), (200, json!(1)));
}

#[tokio::test]
async fn an_mcp_request_the_sled_never_answers_times_out_with_504() {
    let gw =
        start_gateway(SessionConfig { mcp_timeout: Duration::from_millis(300), ..SessionConfig::default() }, 1 << 20)
            .await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let mut ws = gw.raw_sled().await;
    identify(&mut ws, "iota").await;
    next_event(&mut events, "sled_connected").await;
    let (status, body) = http(
        "POST",
        &format!("{}/api/sleds/iota/rpc", gw.base),
        Some(ADMIN),
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"x"}"#),
        &[],
    )
    .await;
    assert_eq!(status, 504, "{body}");
    drop(ws);
}

#[tokio::test]
async fn only_the_most_recently_disconnected_sleds_are_remembered() {
    let mut hub = uplink_proto::gateway::HubConfig::default();
    hub.max_disconnected_sleds = 2;
    let gw = RealGateway::start_hub(hub, 1 << 20).await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let come_and_go = async |events: &mut tokio::sync::mpsc::Receiver<(String, Value)>, project: &str| {
        let mut ws = gw.raw_sled().await;
        identify(&mut ws, project).await;
        assert_eq!(next_event(events, "sled_connected").await["project"], project);
        ws.close(None).await.unwrap();
        assert_eq!(next_event(events, "sled_disconnected").await["project"], project);
    };
    let listed = async || {
        let (status, body) = http("GET", &format!("{}/api/sleds", gw.base), Some(ADMIN), None, &[]).await;
        assert_eq!(status, 200);
        let list: Value = serde_json::from_str(&body).unwrap();
        let mut sleds: Vec<(String, bool)> = list["sleds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["project"].as_str().unwrap().to_owned(), s["connected"].as_bool().unwrap()))
            .collect();
        sleds.sort();
        sleds
    };
    let relay_status = async |project: &str| {
        let url = format!("{}/api/sleds/{project}/rpc", gw.base);
        http("POST", &url, Some(ADMIN), Some(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), &[]).await.0
    };

    // Four sleds come and go: only the last two are remembered.
    for project in ["a", "b", "c", "d"] {
        come_and_go(&mut events, project).await;
    }
    assert_eq!(listed().await, [("c".to_owned(), false), ("d".to_owned(), false)]);
    assert_eq!(relay_status("a").await, 404, "forgotten");
    assert_eq!(relay_status("d").await, 503, "remembered, not connected");

    // A sled that comes back is connected again and not counted as disconnected; when it goes, it is the
    // most recent, and the oldest is forgotten instead.
    let mut c = gw.raw_sled().await;
    identify(&mut c, "c").await;
    next_event(&mut events, "sled_connected").await;
    come_and_go(&mut events, "e").await;
    assert_eq!(listed().await, [("c".to_owned(), true), ("d".to_owned(), false), ("e".to_owned(), false)]);
    c.close(None).await.unwrap();
    next_event(&mut events, "sled_disconnected").await;
    assert_eq!(listed().await, [("c".to_owned(), false), ("e".to_owned(), false)]);
}

#[tokio::test]
async fn a_stopping_gateway_closes_every_sled_with_going_away_and_waits_for_the_handshakes() {
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let mut sleds = Vec::new();
    for project in ["p1", "p2", "p3"] {
        let mut ws = gw.raw_sled().await;
        identify(&mut ws, project).await;
        next_event(&mut events, "sled_connected").await;
        sleds.push(ws);
    }
    // Each sled answers the close as a sled does (the library answers by itself while it is read).
    let closes: Vec<_> =
        sleds.into_iter().map(|mut ws| tokio::spawn(async move { close_code(&mut ws).await })).collect();
    let ws_url = gw.ws.clone();
    gw.stop().await;
    for close in closes {
        assert_eq!(close.await.unwrap(), Some(1001));
    }
    // Nothing listens any more.
    assert!(tokio_tungstenite::connect_async(format!("{ws_url}?token={SLED_TOKEN}")).await.is_err());
}

#[tokio::test]
async fn tool_inputs_are_listed_and_streamed_as_the_json_text_they_arrived_in() {
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    let mut ws = gw.raw_sled().await;
    identify(&mut ws, "zeta").await;
    // Whitespace inside the input, newlines included, is the sled's: kept as it came, and the event stream's
    // framing still holds.
    let input = "{\"command\":\n  \"ls -l\",\r\n \"n\": 1.50}";
    let frame =
        format!(r#"{{"type":"perm_request","req_id":"z1","payload":{{"tool_name":"Bash","tool_input":{input}}}}}"#);
    ws.send(Message::text(frame)).await.unwrap();
    let event = next_event(&mut events, "permission_requested").await;
    assert_eq!(event["tool_input"], json!({"command": "ls -l", "n": 1.5}), "{event}");
    assert_eq!(event["req_id"], "z1");
    let (status, body) = http("GET", &format!("{}/api/permissions", gw.base), Some(ADMIN), None, &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains(input), "the listing holds the input's own text: {body}");
    let listed = parse(&body);
    assert_eq!(listed["permissions"][0]["tool_input"], json!({"command": "ls -l", "n": 1.5}));
    assert_eq!(listed["permissions"][0]["id"], event["id"]);
}

#[tokio::test]
async fn a_local_mcp_answer_too_big_for_a_frame_is_an_error_to_its_caller_and_the_link_stays_up() {
    const LIMIT: usize = 64 << 10;
    let gw = start_gateway(SessionConfig::default(), LIMIT).await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN).await;
    // The local MCP server answers with 100 KiB: within what the sled reads, beyond the gateway's frames.
    let answer: &'static str =
        Box::leak(json!({"jsonrpc":"2.0","id":5,"result":{"pad":"x".repeat(100 << 10)}}).to_string().into_boxed_str());
    let server = uplink_tests::CannedHttp::start(200, "application/json", answer).await;
    let mut c = UplinkConfig::new(&gw.ws, "omega");
    c.token = Some(SLED_TOKEN.into());
    c.local_mcp_url = server.url();
    c.sled.max_frame_bytes = LIMIT;
    let uplink = Uplink::start(c).unwrap();
    next_event(&mut events, "sled_connected").await;
    // Something pending on the same sled, which a dropped link would deny.
    let asker = uplink.clone();
    let pending = tokio::spawn(async move { asker.ask("Bash", &json!({})).await });
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let call = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"dump"}}"#;
    let (status, body) = http("POST", &format!("{}/api/sleds/omega/rpc", gw.base), Some(ADMIN), Some(call), &[]).await;
    assert_eq!(status, 200, "{body}");
    let body = parse(&body);
    assert_eq!(body["id"], 5);
    assert!(body["error"]["message"].as_str().unwrap().contains("frame limit"), "{body}");
    // The link is up: the request is still pending, and decided normally.
    let url = format!("{}/api/permissions/{id}", gw.base);
    let (status, _) = http("POST", &url, Some(ADMIN), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(within("the decision", pending).await.unwrap().decision, Decision::Approve);
    uplink.shutdown().await;
}

//! Trust at the gateway, over real sockets: credentials bound to projects, named principals with roles,
//! reloads that revoke, expiry, the query-token switch, the dead threshold and the event stream's budget.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use uplink_proto::gateway::{ProjectScope, Role, SessionConfig};
use uplink_tests::{RealGateway, close_code, http, identify, next_event, sse, until, within};
use uplink_tokio::gateway::GatewayServerConfig;
use uplink_tokio::gateway::credentials::{AdminPrincipal, Credentials, SledCredential, TokenHash};

const TEAM_A: &str = "token-team-a-0123456789abcdef0123456789abcdef";
const TEAM_B: &str = "token-team-b-0123456789abcdef0123456789abcdef";
const ANA: &str = "token-ana-approver-0123456789abcdef0123456789";
const VIC: &str = "token-vic-viewer-0123456789abcdef0123456789ab";

fn sled(label: &str, token: &str, pattern: &str) -> SledCredential {
    SledCredential::new(label, TokenHash::of(token), ProjectScope::Patterns(vec![pattern.into()]))
}

fn people() -> Vec<AdminPrincipal> {
    vec![
        AdminPrincipal::new("ana", Role::Approver, TokenHash::of(ANA)),
        AdminPrincipal::new("vic", Role::Viewer, TokenHash::of(VIC)),
    ]
}

fn credentials(sleds: Vec<SledCredential>) -> Credentials {
    Credentials::new(sleds, people()).unwrap()
}

async fn gateway_with(sleds: Vec<SledCredential>, tweak: impl FnOnce(&mut GatewayServerConfig)) -> RealGateway {
    let mut config = GatewayServerConfig::with_credentials("127.0.0.1:0".parse().unwrap(), credentials(sleds));
    tweak(&mut config);
    RealGateway::start_config(config).await
}

async fn ask(ws: &mut uplink_tests::RawWs, req_id: &str, input: Value) {
    let frame = json!({"type":"perm_request","req_id":req_id,"payload":{"tool_name":"Bash","tool_input":input}});
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

#[tokio::test]
async fn a_credential_holds_only_its_projects_and_never_displaces_another() {
    let gw = gateway_with(vec![sled("a", TEAM_A, "team-a/*"), sled("b", TEAM_B, "team-b/*")], |_| {}).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut a = gw.raw_sled_with(TEAM_A).await;
    identify(&mut a, "team-a/web").await;
    assert_eq!(next_event(&mut events, "sled_connected").await["project"], "team-a/web");
    // Team B's token can neither claim team A's live project (4009) nor one outside its scope (4003).
    let mut b = gw.raw_sled_with(TEAM_B).await;
    identify(&mut b, "team-a/web").await;
    assert_eq!(close_code(&mut b).await, Some(4003));
    let mut a2 = gw.raw_sled_with(TEAM_A).await;
    identify(&mut a2, "team-a/web").await;
    // The same credential may replace its own live connection (a restarted sled).
    assert_eq!(close_code(&mut a).await, Some(4000));
    let refused = next_event(&mut events, "sled_refused").await;
    assert_eq!((refused["project"].clone(), refused["code"].clone()), (json!("team-a/web"), json!(4003)));
    // An unknown token is refused before any upgrade.
    let (status, _) = http("GET", &format!("{}?token=nope", gw.ws.replace("ws://", "http://")), None, None, &[]).await;
    assert_eq!(status, 401);
    drop(a2);
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_decide_and_a_decision_records_who_made_it() {
    let gw = gateway_with(vec![sled("a", TEAM_A, "team-a/*")], |_| {}).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut ws = gw.raw_sled_with(TEAM_A).await;
    identify(&mut ws, "team-a/web").await;
    ask(&mut ws, "r1", json!({"command": "ls"})).await;
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let (status, list) = http("GET", &format!("{}/api/permissions", gw.base), Some(VIC), None, &[]).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&list).unwrap()["permissions"][0]["id"].clone()),
        (200, json!(id))
    );
    let url = format!("{}/api/permissions/{id}", gw.base);
    let (status, body) = http("POST", &url, Some(VIC), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 403, "{body}");
    for route in ["rpc", "mcp"] {
        let mcp = format!("{}/api/sleds/team-a%2Fweb/{route}", gw.base);
        let (status, _) = http("POST", &mcp, Some(VIC), Some(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), &[]).await;
        assert_eq!(status, 403, "{route}");
    }
    let (status, body) = http("POST", &url, Some(ANA), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["by"].clone()), (200, json!("ana")));
    let decided = next_event(&mut events, "permission_decided").await;
    assert_eq!((decided["id"].clone(), decided["by"].clone()), (json!(id), json!("ana")));
    // No token, or a sled's token, is not a principal.
    for token in [None, Some(TEAM_A)] {
        let (status, _) = http("GET", &format!("{}/api/sleds", gw.base), token, None, &[]).await;
        assert_eq!(status, 401);
    }
}

#[tokio::test]
async fn a_reload_closes_what_it_revokes_and_admits_what_it_adds() {
    let gw = gateway_with(vec![sled("a", TEAM_A, "team-a/*")], |_| {}).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut ws = gw.raw_sled_with(TEAM_A).await;
    identify(&mut ws, "team-a/web").await;
    ask(&mut ws, "r1", json!({})).await;
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    // Team A's credential is revoked and team B's added: A's connection closes with 4010, its request is
    // withdrawn, a decision for it is refused, and its token no longer opens a connection.
    gw.reloader.reload(credentials(vec![sled("b", TEAM_B, "team-b/*")])).await;
    assert_eq!(close_code(&mut ws).await, Some(4010));
    let withdrawn = next_event(&mut events, "permission_withdrawn").await;
    assert_eq!((withdrawn["id"].clone(), withdrawn["reason"].clone()), (json!(id), json!("connection_lost")));
    let (status, _) =
        http("POST", &format!("{}/api/permissions/{id}", gw.base), Some(ANA), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 409);
    let upgrade = |token: &str| format!("{}?token={token}", gw.ws.replace("ws://", "http://"));
    assert_eq!(http("GET", &upgrade(TEAM_A), None, None, &[]).await.0, 401);
    let mut b = gw.raw_sled_with(TEAM_B).await;
    identify(&mut b, "team-b/api").await;
    assert_eq!(next_event(&mut events, "sled_connected").await["project"], "team-b/api");
    // A reload that keeps a credential keeps its connection.
    gw.reloader.reload(credentials(vec![sled("b renamed", TEAM_B, "team-b/*")])).await;
    ask(&mut b, "r2", json!({})).await;
    assert_eq!(next_event(&mut events, "permission_requested").await["project"], "team-b/api");
}

#[tokio::test]
async fn an_expired_credential_is_refused_and_its_connection_closed_when_it_expires() {
    let soon = SystemTime::now() + Duration::from_millis(600);
    let past = SystemTime::now() - Duration::from_secs(1);
    let sleds = vec![sled("a", TEAM_A, "*").expiring(soon), sled("b", TEAM_B, "*").expiring(past)];
    let gw = gateway_with(sleds, |_| {}).await;
    let refused = tokio_tungstenite::connect_async(format!("{}?token={TEAM_B}", gw.ws)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("an expired credential connected: {:?}", other.map(|(_, r)| r.status())),
    }
    let mut ws = gw.raw_sled_with(TEAM_A).await;
    identify(&mut ws, "p").await;
    // Bounded by `within` in close_code; the core's timer closes it at its expiry.
    assert_eq!(close_code(&mut ws).await, Some(4010));
}

#[tokio::test]
async fn the_query_token_can_be_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let gw = gateway_with(vec![sled("a", TEAM_A, "*")], |c| c.accept_query_token = false).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let upgrade = format!("{}?token={TEAM_A}", gw.ws.replace("ws://", "http://"));
    assert_eq!(http("GET", &upgrade, None, None, &[]).await.0, 401);
    let mut request = gw.ws.as_str().into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {TEAM_A}").parse().unwrap());
    let (mut ws, _) =
        within("a connection with a bearer token", tokio_tungstenite::connect_async(request)).await.unwrap();
    identify(&mut ws, "p").await;
    assert_eq!(next_event(&mut events, "sled_connected").await["project"], "p");
}

#[tokio::test]
async fn a_sled_that_vanished_is_closed_at_the_dead_threshold_and_its_requests_cannot_be_approved() {
    let session = SessionConfig {
        stale_after: Duration::from_millis(200),
        ping_interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(500),
        ..SessionConfig::default()
    };
    let gw = gateway_with(vec![sled("a", TEAM_A, "*")], |c| c.hub.session = session).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut ws = gw.raw_sled_with(TEAM_A).await;
    identify(&mut ws, "quiet").await;
    ask(&mut ws, "r1", json!({})).await;
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    // The sled stops reading and answering (as a machine that lost power): no pongs, no frames. The
    // socket stays open, so only the dead threshold can end it.
    let withdrawn = next_event(&mut events, "permission_withdrawn").await;
    assert_eq!((withdrawn["id"].clone(), withdrawn["reason"].clone()), (json!(id), json!("connection_lost")));
    assert_eq!(next_event(&mut events, "sled_disconnected").await["project"], "quiet");
    let url = format!("{}/api/permissions/{id}", gw.base);
    let (status, body) = http("POST", &url, Some(ANA), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ended"], "connection_lost");
    drop(ws);
}

#[tokio::test]
async fn an_event_client_that_stops_reading_is_dropped_at_its_budget() {
    const BUDGET: usize = 256 << 10;
    let gw = gateway_with(vec![sled("a", TEAM_A, "*")], |c| c.max_event_client_bytes = BUDGET).await;
    // A client that sends its request and then never reads.
    let mut stalled = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /api/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {VIC}\r\nAccept: text/event-stream\r\n\r\n",
        gw.addr
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    // A reading client, to know when each event was published.
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    let mut ws = gw.raw_sled_with(TEAM_A).await;
    identify(&mut ws, "big").await;
    next_event(&mut events, "sled_connected").await;
    // 64 requests of 256 KiB each: 16 MiB of events, far more than the stalled client's socket buffers
    // and its budget can hold.
    let pad = "x".repeat(256 << 10);
    for i in 0..64 {
        ask(&mut ws, &format!("r{i}"), json!({ "pad": pad })).await;
        next_event(&mut events, "permission_requested").await;
    }
    // Now read what the stalled client was sent: some events, then `lagged`, then the end of the stream.
    let mut text = Vec::new();
    within("the stalled client's stream to end", async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    text.extend_from_slice(&buf[..n]);
                    // Chunked encoding ends with a zero-length chunk.
                    if text.ends_with(b"\r\n0\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("event: lagged"), "no lagged event in {} bytes", text.len());
    let received = text.matches("event: permission_requested").count();
    assert!(received < 64, "the stalled client got all {received} events");
}

/// Opens `/api/events` over a raw connection; its status, and the connection (kept open by the caller).
async fn open_events(gw: &RealGateway) -> (u16, tokio::net::TcpStream) {
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!("GET /api/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {VIC}\r\n\r\n", gw.addr);
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    within("the status line", tcp.read_exact(&mut head)).await.unwrap();
    (std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap(), tcp)
}

#[tokio::test]
async fn event_clients_are_counted_and_one_too_many_is_refused_until_a_place_frees() {
    let gw = gateway_with(vec![sled("a", TEAM_A, "*")], |c| c.max_event_clients = 2).await;
    let (first, one) = open_events(&gw).await;
    let (second, _two) = open_events(&gw).await;
    assert_eq!((first, second), (200, 200));
    assert_eq!(open_events(&gw).await.0, 503);
    // A client that leaves frees its place (once the gateway has seen it go).
    drop(one);
    until("a freed place", async || (open_events(&gw).await.0 == 200).then_some(())).await;
}

#[tokio::test]
async fn wrong_tokens_past_the_budget_get_429_while_a_right_one_from_the_same_address_still_works() {
    use uplink_tests::http_with_headers;
    const WRONG: &str = "token-wrong-0123456789abcdef0123456789abcdef0";
    let gw = gateway_with(vec![sled("a", TEAM_A, "team-a/*")], |c| {
        c.auth_limit.burst = 3;
        c.auth_limit.refill = Duration::from_millis(200);
    })
    .await;
    let sleds = format!("{}/api/sleds", gw.base);
    for _ in 0..3 {
        assert_eq!(http("GET", &sleds, Some(WRONG), None, &[]).await.0, 401);
    }
    // Past the burst, from this address: 429, told when to come back; every kind of guess counts.
    let (status, headers, _) = http_with_headers("GET", &sleds, Some(WRONG), None, &[]).await;
    assert_eq!(status, 429);
    let retry = headers.iter().find(|(n, _)| n == "retry-after").map(|(_, v)| v.as_str());
    assert_eq!(retry, Some("1"));
    let url = format!("{}?token={WRONG}", gw.ws);
    let upgrade = within("the upgrade's answer", tokio_tungstenite::connect_async(url)).await;
    match upgrade {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("a wrong sled token got {other:?}"),
    }
    let sign_in = format!("{}/console/session", gw.base);
    let origin = [("origin", gw.base.as_str())];
    let (status, _) = http("POST", &sign_in, None, Some(&json!({"token": WRONG}).to_string()), &origin).await;
    assert_eq!(status, 429);
    // A right token is never refused by the budget: nobody can lock a principal or a sled out.
    assert_eq!(http("GET", &sleds, Some(ANA), None, &[]).await.0, 200);
    let mut ws = gw.raw_sled_with(TEAM_A).await;
    identify(&mut ws, "team-a/web").await;
    let (status, _) = http("POST", &sign_in, None, Some(&json!({"token": VIC}).to_string()), &origin).await;
    assert_eq!(status, 200);
    // A refill later, a wrong token is a plain 401 again.
    until("the budget to refill", async || (http("GET", &sleds, Some(WRONG), None, &[]).await.0 == 401).then_some(()))
        .await;
    let (_, metrics) = http("GET", &format!("{}/metrics", gw.base), Some(VIC), None, &[]).await;
    assert!(metrics.contains("uplink_gateway_auth_failures_total{answer=\"429\"}"), "{metrics}");
    gw.stop().await;
}

/// A sled of `project` with `token`, at `gw`.
fn sled_of(gw: &RealGateway, token: &str, project: &str) -> uplink_tokio::Uplink {
    let mut config = uplink_tokio::UplinkConfig::new(&gw.ws, project);
    config.token = Some(token.into());
    uplink_tokio::Uplink::start(config).unwrap()
}

#[tokio::test]
async fn a_refused_sled_denies_its_agents_at_once_with_the_cause() {
    use uplink_tokio::{Cause, Decision, Refusal};
    let gw = gateway_with(vec![sled("a", TEAM_A, "team-a/*")], |_| {}).await;
    let mut events = sse(&format!("{}/api/events", gw.base), VIC).await;
    // A project outside the token's scope: the gateway closes with 4003. The agent's request is denied with
    // the cause as soon as the refusal comes (not after its 120 s deadline; `within` gives far less), and
    // so is every request while the sled backs off.
    let outside = sled_of(&gw, TEAM_A, "team-b/web");
    let asked = within("the refused request's answer", outside.ask("Bash", &json!({"command": "ls"}))).await;
    assert_eq!((asked.decision, asked.cause), (Decision::Deny, Cause::Refused(Refusal::ProjectNotPermitted)));
    assert_eq!(next_event(&mut events, "sled_refused").await["code"], 4003);
    let again = within("the next answer", outside.ask("Bash", &json!({"command": "pwd"}))).await;
    assert_eq!(again.cause, Cause::Refused(Refusal::ProjectNotPermitted));
    assert_eq!(outside.refusal(), Some(Refusal::ProjectNotPermitted));
    outside.shutdown().await;
    // A sled the gateway accepted, whose token is then revoked: what waits is denied at once, as revoked.
    let inside = sled_of(&gw, TEAM_A, "team-a/web");
    assert_eq!(next_event(&mut events, "sled_connected").await["project"], "team-a/web");
    let asking = tokio::spawn({
        let inside = inside.clone();
        async move { inside.ask("Bash", &json!({"command": "make"})).await }
    });
    next_event(&mut events, "permission_requested").await;
    gw.reloader.reload(credentials(vec![sled("b", TEAM_B, "team-b/*")])).await;
    let answer = within("the revoked request's answer", asking).await.unwrap();
    assert_eq!((answer.decision, answer.cause), (Decision::Deny, Cause::Refused(Refusal::Revoked)));
    inside.shutdown().await;
}

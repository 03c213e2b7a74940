//! The sled adapter against a gateway written in the test, over real loopback sockets.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::http::StatusCode;
use uplink_proto::{LinkState, LossReason, Refusal};
use uplink_tests::{TestGateway, link_state_where, within};
use uplink_tokio::{Decision, Uplink, UplinkConfig};

/// Short back-off so reconnections happen within the test's patience.
fn config(url: &str) -> UplinkConfig {
    let mut c = UplinkConfig::new(url, "test-proj");
    c.token = Some("t0ken-s3cret".into());
    c.local_mcp_url = "http://127.0.0.1:9/mcp".into(); // nothing listens on the discard port
    c.sled.backoff_initial = Duration::from_millis(20);
    c.sled.backoff_max = Duration::from_millis(200);
    c
}

/// Asks for a permission in the background; the handle resolves to the decision.
fn ask(uplink: &Uplink, tool: &'static str) -> tokio::task::JoinHandle<Decision> {
    let uplink = uplink.clone();
    tokio::spawn(async move { uplink.request_permission(tool, &json!({"command": "ls"})).await })
}

/// Shuts the uplink down while the gateway side answers the close handshake, as a real gateway would.
async fn shut_down(uplink: &Uplink, conn: &mut uplink_tests::GatewayConn) {
    let (code, ()) = tokio::join!(conn.until_closed(), within("shutdown", uplink.shutdown()));
    assert_eq!(code, Some(1000));
}

#[tokio::test]
async fn identity_first_with_the_token_in_query_and_header_then_decisions() {
    let gw = TestGateway::bind().await;
    let uplink = Uplink::start(config(&gw.url())).unwrap();
    let mut conn = gw.accept().await;
    assert_eq!(conn.uri, "/api/sled-uplink?token=t0ken-s3cret");
    assert_eq!(conn.authorization.as_deref(), Some("Bearer t0ken-s3cret"));
    let identity = conn.recv().await;
    assert_eq!(identity["type"], "identity");
    assert_eq!(identity["payload"]["project"], "test-proj");
    assert_eq!(identity["payload"]["protocol"], 1);

    for (approved, always, want) in
        [(true, false, Decision::Approve), (false, false, Decision::Deny), (true, true, Decision::AlwaysAllow)]
    {
        let pending = ask(&uplink, "Bash");
        let req = conn.recv_kind("perm_request").await;
        assert_eq!(req["payload"], json!({"tool_name": "Bash", "tool_input": {"command": "ls"}}));
        conn.approve(&req["req_id"], approved, always).await;
        assert_eq!(within("the decision", pending).await.unwrap(), want);
    }
    shut_down(&uplink, &mut conn).await;
}

#[tokio::test]
async fn a_drop_mid_request_denies_then_the_sled_reconnects_and_approves() {
    let gw = TestGateway::bind().await;
    let (uplink, mut first) = gw.start_sled(config(&gw.url())).await;
    let pending = ask(&uplink, "Bash");
    first.recv_kind("perm_request").await;
    drop(first); // network failure: no close handshake
    assert_eq!(within("the fail-closed decision", pending).await.unwrap(), Decision::Deny);

    let mut second = gw.accept().await;
    second.recv_kind("identity").await;
    let pending = ask(&uplink, "Write");
    let req = second.recv_kind("perm_request").await;
    second.approve(&req["req_id"], true, false).await;
    assert_eq!(within("the decision", pending).await.unwrap(), Decision::Approve);
    shut_down(&uplink, &mut second).await;
}

#[tokio::test]
async fn a_close_frame_from_the_gateway_is_answered_and_the_sled_reconnects() {
    let gw = TestGateway::bind().await;
    let (uplink, mut first) = gw.start_sled(config(&gw.url())).await;
    let pending = ask(&uplink, "Bash");
    first.recv_kind("perm_request").await;
    first.close().await;
    assert_eq!(within("the fail-closed decision", pending).await.unwrap(), Decision::Deny);
    let mut second = gw.accept().await;
    assert_eq!(second.recv().await["type"], "identity");
    shut_down(&uplink, &mut second).await;
}

#[tokio::test]
async fn a_silent_gateway_is_detected_within_the_idle_timeout() {
    let gw = TestGateway::bind().await;
    let mut c = config(&gw.url());
    c.sled.heartbeat_interval = Duration::from_millis(100);
    c.sled.idle_timeout = Duration::from_millis(300);
    let (uplink, mut silent) = gw.start_sled(c).await;
    let pending = ask(&uplink, "Bash");
    silent.recv_kind("perm_request").await;
    // From here the gateway reads nothing, so it answers no ping: a half-open link.
    let started = tokio::time::Instant::now();
    assert_eq!(within("the fail-closed decision", pending).await.unwrap(), Decision::Deny);
    assert!(started.elapsed() >= Duration::from_millis(150), "detected too early: {:?}", started.elapsed());
    let state = uplink.link_state();
    assert!(
        matches!(state, LinkState::BackingOff { reason: LossReason::IdleTimeout, .. } | LinkState::Connecting { .. }),
        "{state:?}"
    );
    let mut second = gw.accept().await;
    assert_eq!(second.recv().await["type"], "identity");
    drop(silent);
    shut_down(&uplink, &mut second).await;
}

#[tokio::test]
async fn unauthorized_is_reported_and_retried_on_the_back_off_cap() {
    let gw = TestGateway::bind().await;
    let uplink = Uplink::start(config(&gw.url())).unwrap();
    gw.refuse(StatusCode::UNAUTHORIZED).await;
    let state =
        link_state_where(&uplink, "the unauthorized back-off", |s| matches!(s, LinkState::BackingOff { .. })).await;
    match state {
        LinkState::BackingOff { reason, delay } => {
            assert_eq!(reason, LossReason::Refused(Refusal::Token));
            assert!(delay <= Duration::from_millis(200));
        }
        other => panic!("{other:?}"),
    }
    // It does retry, and a later success works.
    let mut conn = gw.accept().await;
    assert_eq!(conn.recv().await["type"], "identity");
    shut_down(&uplink, &mut conn).await;
}

#[tokio::test]
async fn shutdown_denies_pending_work_and_closes_normally() {
    let gw = TestGateway::bind().await;
    let (uplink, mut conn) = gw.start_sled(config(&gw.url())).await;
    let pending = ask(&uplink, "Bash");
    conn.recv_kind("perm_request").await;
    let closer = uplink.clone();
    let shutdown = tokio::spawn(async move { closer.shutdown().await });
    let cancel = conn.recv().await;
    assert_eq!(
        (cancel["type"].as_str(), cancel["payload"]["reason"].as_str()),
        (Some("perm_cancel"), Some("shutdown"))
    );
    assert_eq!(conn.until_closed().await, Some(1000));
    within("shutdown to return", shutdown).await.unwrap();
    assert_eq!(within("the decision", pending).await.unwrap(), Decision::Deny);
    assert_eq!(uplink.link_state(), LinkState::Closed);
    // After shutdown everything is denied at once, and shutting down again returns at once.
    assert_eq!(within("a late request", uplink.request_permission("Bash", &json!({}))).await, Decision::Deny);
    within("a second shutdown", uplink.shutdown()).await;
}

#[tokio::test]
async fn no_gateway_denies_at_once_and_bad_urls_are_refused_at_start() {
    let uplink = Uplink::start(UplinkConfig::new("", "p")).unwrap();
    assert_eq!(uplink.link_state(), LinkState::Disabled);
    assert_eq!(within("a denial", uplink.request_permission("Bash", &json!({}))).await, Decision::Deny);
    uplink.shutdown().await;

    let err = Uplink::start(UplinkConfig::new("http://h/?token=abc", "p")).unwrap_err();
    assert_eq!(err.to_string(), "gateway URL http://h/?token=[redacted] must start with ws:// or wss://");
    let mut c = UplinkConfig::new("ws://h/", "p");
    c.local_mcp_url = "https://h/mcp".into();
    assert!(matches!(Uplink::start(c), Err(uplink_tokio::StartError::McpUrl { .. })));
    let mut c = UplinkConfig::new("ws://h/", "p");
    c.sled.idle_timeout = Duration::ZERO;
    assert!(matches!(Uplink::start(c), Err(uplink_tokio::StartError::Config(_))));
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    assert!(matches!(Uplink::start(UplinkConfig::new("", "p")), Err(uplink_tokio::StartError::NoRuntime)));
}

#[tokio::test]
async fn dropping_every_handle_shuts_the_uplink_down() {
    let gw = TestGateway::bind().await;
    let (uplink, mut conn) = gw.start_sled(config(&gw.url())).await;
    drop(uplink);
    assert_eq!(conn.until_closed().await, Some(1000));
}

#[tokio::test]
async fn an_oversized_message_drops_the_connection_and_binary_frames_are_ignored() {
    let gw = TestGateway::bind().await;
    let mut c = config(&gw.url());
    c.max_message_size = 4096;
    let (uplink, mut first) = gw.start_sled(c).await;
    // Binary frames are not part of the protocol: ignored, the connection lives on.
    first.send_binary(vec![0u8; 64]).await;
    let pending = ask(&uplink, "Bash");
    let req = first.recv_kind("perm_request").await;
    first.approve(&req["req_id"], true, false).await;
    assert_eq!(within("the decision", pending).await.unwrap(), Decision::Approve);
    // A frame over the limit ends the connection (the sled reconnects), and what was in flight is denied.
    let pending = ask(&uplink, "Bash");
    first.recv_kind("perm_request").await;
    first.send_text(&format!(r#"{{"type":"x","payload":"{}"}}"#, "a".repeat(8192))).await;
    assert_eq!(first.until_closed().await, Some(1009), "the sled says why it closes");
    assert_eq!(within("the fail-closed decision", pending).await.unwrap(), Decision::Deny);
    let mut second = gw.accept().await;
    assert_eq!(second.recv().await["type"], "identity");
    shut_down(&uplink, &mut second).await;
}

#[tokio::test]
async fn a_local_mcp_endpoint_that_never_answers_times_out_with_the_request_id() {
    // Accepts connections and reads, but never answers.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = mute.accept().await {
            held.push(tcp);
        }
    });
    let gw = TestGateway::bind().await;
    let mut c = config(&gw.url());
    c.local_mcp_url = format!("http://{mute_addr}/mcp");
    c.sled.mcp_timeout = Duration::from_millis(300);
    let (uplink, mut conn) = gw.start_sled(c).await;
    let started = tokio::time::Instant::now();
    conn.send(json!({"type":"mcp_request","req_id":"slow-1","payload":{"body":"{\"jsonrpc\":\"2.0\",\"id\":\"q9\",\"method\":\"tools/list\"}"}})).await;
    let answer = conn.recv_kind("mcp_response").await;
    assert!(started.elapsed() >= Duration::from_millis(250), "answered before the timeout");
    assert_eq!(answer["req_id"], "slow-1");
    assert_eq!(answer["payload"]["id"], "q9");
    assert_eq!(answer["payload"]["error"]["code"], -32603);
    assert!(answer["payload"]["error"]["message"].as_str().unwrap().contains("timed out"), "{answer}");
    shut_down(&uplink, &mut conn).await;
    hold.abort();
}

#[tokio::test]
async fn a_gateway_that_never_finishes_the_handshake_is_abandoned_after_the_connect_timeout() {
    let gw = TestGateway::bind().await;
    let mut c = config(&gw.url());
    c.sled.connect_timeout = Duration::from_millis(200);
    let uplink = Uplink::start(c).unwrap();
    // Accept TCP, say nothing: a slow-loris gateway.
    let _held = gw.accept_tcp().await;
    let state = link_state_where(&uplink, "the connect timeout", |s| matches!(s, LinkState::BackingOff { .. })).await;
    assert!(matches!(state, LinkState::BackingOff { reason: LossReason::ConnectTimeout, .. }), "{state:?}");
    // The next attempt goes through.
    let mut conn = gw.accept().await;
    assert_eq!(conn.recv().await["type"], "identity");
    shut_down(&uplink, &mut conn).await;
}

#[tokio::test]
async fn a_dropped_request_future_withdraws_the_request_at_the_gateway() {
    let gw = TestGateway::bind().await;
    let (uplink, mut conn) = gw.start_sled(config(&gw.url())).await;
    // The caller gives up (its task is aborted, as when an HTTP client hangs up): its future is dropped.
    let waiting = ask(&uplink, "Bash");
    let request = conn.recv_kind("perm_request").await;
    waiting.abort();
    let cancel = conn.recv_kind("perm_cancel").await;
    assert_eq!(cancel["req_id"], request["req_id"]);
    assert_eq!(cancel["payload"]["reason"], "withdrawn");
    // An approval for it now decides nothing; the next request is served as usual.
    conn.approve(&request["req_id"], true, false).await;
    let next = ask(&uplink, "Read");
    let request = conn.recv_kind("perm_request").await;
    conn.approve(&request["req_id"], true, false).await;
    assert_eq!(within("the next decision", next).await.unwrap(), Decision::Approve);
    shut_down(&uplink, &mut conn).await;
}

//! What an operator sees of a running gateway: `/metrics` (Prometheus text), `/healthz`, `/readyz`.
#![allow(clippy::unwrap_used)]

use futures_util::SinkExt as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::{ADMIN_TOKEN, RealGateway, http, identify, next_event, sse};
use uplink_tokio::gateway::GatewayServerConfig;

fn config() -> GatewayServerConfig {
    let mut config =
        GatewayServerConfig::new("127.0.0.1:0".parse().unwrap(), vec![uplink_tests::SLED_TOKEN.into()], ADMIN_TOKEN);
    config.hub.auto_deny = ["rm".to_owned()].into();
    config
}

/// The value of the sample `name` (with its labels, exactly as written) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_sleds_decisions_refusals_and_relays_and_health_needs_no_token() {
    let gw = RealGateway::start_config(config()).await;
    let base = gw.base.clone();
    assert_eq!(http("GET", &format!("{base}/healthz"), None, None, &[]).await.0, 200);
    assert_eq!(http("GET", &format!("{base}/readyz"), None, None, &[]).await.0, 200);
    assert_eq!(http("GET", &format!("{base}/metrics"), None, None, &[]).await.0, 401, "metrics need a token");
    let mut events = sse(&format!("{base}/api/events"), ADMIN_TOKEN).await;
    // A refusal, a sled, a person's denial, a rule's denial, a relay to nowhere.
    assert!(tokio_tungstenite::connect_async(gw.ws.clone()).await.is_err(), "no token");
    let mut ws = gw.raw_sled().await;
    identify(&mut ws, "web").await;
    next_event(&mut events, "sled_connected").await;
    for (req, tool) in [("r1", "Bash"), ("r2", "rm")] {
        let frame = json!({"type":"perm_request","req_id":req,"payload":{"tool_name":tool,"tool_input":{}}});
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let url = format!("{base}/api/permissions/{id}");
    assert_eq!(http("POST", &url, Some(ADMIN_TOKEN), Some(r#"{"approved":false}"#), &[]).await.0, 200);
    next_event(&mut events, "permission_decided").await;
    let mcp = format!("{base}/api/sleds/nowhere/rpc");
    assert_eq!(
        http("POST", &mcp, Some(ADMIN_TOKEN), Some(r#"{"jsonrpc":"2.0","id":1,"method":"x"}"#), &[]).await.0,
        404
    );

    let (status, text) = http("GET", &format!("{base}/metrics"), Some(ADMIN_TOKEN), None, &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(sample(&text, "uplink_gateway_sleds_connected"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "uplink_gateway_pending_permissions"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, r#"uplink_gateway_decisions_total{outcome="deny",decider="person"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, r#"uplink_gateway_decisions_total{outcome="deny",decider="rule"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"uplink_gateway_connections_refused_total{reason="no_token"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"uplink_gateway_mcp_relays_total{result="unknown_project"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, "uplink_gateway_decision_wait_seconds_count"), Some(1.0), "{text}");
    gw.stop().await;

    // Public metrics: no token needed.
    let mut public = config();
    public.metrics_public = true;
    let gw = RealGateway::start_config(public).await;
    assert_eq!(http("GET", &format!("{}/metrics", gw.base), None, None, &[]).await.0, 200);
    gw.stop().await;
}

#[tokio::test]
async fn the_sleds_metrics_follow_its_link_and_its_permissions() {
    use uplink_tokio::{Decision, LinkState, Uplink, UplinkConfig};
    let hub = RealGateway::approving(uplink_proto::gateway::SessionConfig::default(), &["Read"]);
    let gw = RealGateway::start_hub(hub, uplink_tokio::DEFAULT_MAX_MESSAGE_SIZE).await;
    let mut c = UplinkConfig::new(&gw.ws, "web");
    c.token = Some(uplink_tests::SLED_TOKEN.into());
    let uplink = Uplink::start(c).unwrap();
    uplink_tests::link_state_where(&uplink, "connected", |s| matches!(s, LinkState::Connected { .. })).await;
    assert_eq!(sample(&uplink.metrics(), "uplink_sled_link_up"), Some(1.0));
    assert_eq!(uplink.request_permission("Read", &json!({"file_path": "a"})).await, Decision::Approve);
    let text = uplink.metrics();
    assert_eq!(
        sample(&text, r#"uplink_sled_permissions_total{decision="approve",cause="gateway"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "uplink_sled_permission_seconds_count"), Some(1.0), "{text}");
    gw.kill().await;
    uplink_tests::link_state_where(&uplink, "the link lost", |s| matches!(s, LinkState::BackingOff { .. })).await;
    let text = uplink.metrics();
    assert_eq!(sample(&text, "uplink_sled_link_up"), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"uplink_sled_link_losses_total{reason="disconnected"}"#), Some(1.0), "{text}");
    uplink.shutdown().await;
}

//! `uplink gateway` asked to stop (SIGTERM) drains first (`--drain`): not ready, new sleds refused, an idle
//! sled told at once to come back later (1012), and one with a request pending kept until a person decided
//! it, then told the same; the gateway then exits cleanly. A planned restart denies nothing a person decides
//! in time.
#![allow(clippy::unwrap_used, missing_docs)]

use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::program::Program;
use uplink_tests::{close_code, http, perm_response, raw_sled_at, until};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");

#[tokio::test]
async fn sigterm_drains_an_idle_sled_goes_at_once_a_busy_one_once_its_request_is_decided() {
    let state = uplink_tests::temp_dir();
    let mut gw =
        Program::gateway(UPLINK).args(["--drain", "60s"]).state_dir(state.path()).banner_lines(4).start().await;
    let (base, sled, admin) = (gw.base_url(), gw.sled_token(), gw.admin_token());
    let mut idle = raw_sled_at(&base, &sled, "idle").await;
    let mut busy = raw_sled_at(&base, &sled, "busy").await;
    let ask = json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    busy.send(Message::text(ask.to_string())).await.unwrap();
    let id: String = until("the request to be listed", async || {
        let (_, body) = http("GET", &format!("{base}/api/permissions"), Some(&admin), None, &[]).await;
        let listing: Value = serde_json::from_str(&body).unwrap();
        listing["permissions"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let (status, _) = http("GET", &format!("{base}/readyz"), None, None, &[]).await;
    assert_eq!(status, 200);

    gw.terminate();
    // The idle sled is told to come back (1012); the gateway is no longer ready, and refuses new sleds.
    assert_eq!(close_code(&mut idle).await, Some(1012));
    let (status, body) = http("GET", &format!("{base}/readyz"), None, None, &[]).await;
    assert_eq!(status, 503, "{body}");
    let url = format!("{}/api/sled-uplink?token={sled}", base.replace("http://", "ws://"));
    let refused = tokio_tungstenite::connect_async(url).await;
    assert!(refused.is_err(), "a new sled is refused while draining");

    // The busy sled stays while its request waits; a person still decides it, and it gets exactly that.
    let (status, body) =
        http("POST", &format!("{base}/api/permissions/{id}"), Some(&admin), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(perm_response(&mut busy).await["payload"]["approved"], true);
    assert_eq!(close_code(&mut busy).await, Some(1012));
    assert!(gw.wait().await.success(), "drained, it exits cleanly");
}

#[tokio::test]
async fn with_no_drain_sigterm_stops_at_once_and_what_was_pending_is_denied_at_its_sled() {
    let state = uplink_tests::temp_dir();
    let mut gw = Program::gateway(UPLINK).args(["--drain", "0s"]).state_dir(state.path()).banner_lines(4).start().await;
    let (base, sled, admin) = (gw.base_url(), gw.sled_token(), gw.admin_token());
    let mut busy = raw_sled_at(&base, &sled, "busy").await;
    let ask = json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    busy.send(Message::text(ask.to_string())).await.unwrap();
    until("the request to be listed", async || {
        let (_, body) = http("GET", &format!("{base}/api/permissions"), Some(&admin), None, &[]).await;
        let listing: Value = serde_json::from_str(&body).unwrap();
        listing["permissions"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    gw.terminate();
    assert_eq!(close_code(&mut busy).await, Some(1001));
    assert!(gw.wait().await.success());
}

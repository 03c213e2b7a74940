//! Faults at the socket level: the sled adapter and `uplink gateway`'s server on loopback, with a TCP fault
//! proxy between them. Every scenario checks that nothing is lost or wrongly approved, and prints the
//! detection or recovery time it measured (RELIABILITY.md records them). Timings are shortened; every wait is
//! on an event, bounded.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use uplink_proto::gateway::SessionConfig;
use uplink_tests::proxy::{Fault, FaultProxy};
use uplink_tests::{ADMIN_TOKEN, RealGateway, SLED_TOKEN, http, link_state_where, next_event, sse, within};
use uplink_tokio::{Decision, LinkState, LossReason, Uplink, UplinkConfig};

const HEARTBEAT: Duration = Duration::from_millis(100);
const IDLE: Duration = Duration::from_millis(400);

async fn gateway() -> RealGateway {
    RealGateway::start_hub(RealGateway::approving(SessionConfig::default(), &["Bench"]), 1 << 20).await
}

fn sled(proxy: &FaultProxy, project: &str, backoff: Duration) -> Uplink {
    Uplink::start(sled_config(proxy, project, backoff)).unwrap()
}

fn sled_config(proxy: &FaultProxy, project: &str, backoff: Duration) -> UplinkConfig {
    let mut c = UplinkConfig::new(format!("ws://{}/api/sled-uplink", proxy.addr), project);
    c.token = Some(SLED_TOKEN.into());
    c.local_mcp_url = "http://127.0.0.1:9/mcp".into();
    c.sled.heartbeat_interval = HEARTBEAT;
    c.sled.idle_timeout = IDLE;
    c.sled.backoff_initial = backoff;
    c.sled.backoff_max = backoff * 2;
    c
}

async fn connected(uplink: &Uplink) {
    link_state_where(uplink, "connected", |s| matches!(s, LinkState::Connected { .. })).await;
}

/// A gateway, its event stream, a proxy in front of it and one connected sled behind the proxy.
async fn one_sled(project: &str) -> (RealGateway, tokio::sync::mpsc::Receiver<(String, Value)>, FaultProxy, Uplink) {
    let gw = gateway().await;
    let events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let proxy = FaultProxy::start(gw.addr).await;
    let uplink = sled(&proxy, project, Duration::from_millis(50));
    connected(&uplink).await;
    (gw, events, proxy, uplink)
}

/// Asks for an auto-approved tool; the answer must be an approval.
async fn approved(uplink: &Uplink) {
    assert_eq!(within("approval", uplink.request_permission("Bench", &json!({}))).await, Decision::Approve);
}

/// Approves the request the gateway announced in `requested`, through the admin API.
async fn approve_via_api(gw: &RealGateway, requested: &Value) {
    let url = format!("{}/api/permissions/{}", gw.base, requested["id"].as_str().unwrap());
    let (status, body) = http("POST", &url, Some(ADMIN_TOKEN), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 200, "{body}");
}

/// A request only a person decides (not auto-approved), started in the background.
fn undecided(uplink: &Uplink) -> tokio::task::JoinHandle<Decision> {
    let uplink = uplink.clone();
    tokio::spawn(async move { uplink.request_permission("Write", &json!({"file_path": "/etc/hosts"})).await })
}

/// A port nothing listens on.
async fn dead_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_link_is_detected_within_the_idle_timeout_and_nothing_is_approved_across_it() {
    let gw = gateway().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let proxy = FaultProxy::start(gw.addr).await;
    // A fixed back-off of half a second: the state that says why the link was lost lasts that long, so the
    // test cannot miss it (the link's state is a watch, which keeps only the latest value). With a jittered
    // one it could last a moment, and the next attempt's own failure be all the test sees.
    let mut config = sled_config(&proxy, "hole", Duration::from_millis(500));
    config.sled.backoff_jitter = false;
    let uplink = Uplink::start(config).unwrap();
    connected(&uplink).await;
    approved(&uplink).await;

    // A request reaches the gateway; then the link goes silent both ways, and someone approves it.
    let pending = undecided(&uplink);
    let requested = next_event(&mut events, "permission_requested").await;
    proxy.set(Fault::BlackHole);
    let started = Instant::now();
    // The gateway still thinks the sled is there and takes the decision.
    approve_via_api(&gw, &requested).await;

    let state = link_state_where(&uplink, "idle detection", |s| matches!(s, LinkState::BackingOff { .. })).await;
    let detected = started.elapsed();
    assert!(matches!(state, LinkState::BackingOff { reason: LossReason::IdleTimeout, .. }), "{state:?}");
    // The approval never crossed: the request is denied, not approved.
    assert_eq!(within("the pending request", pending).await.unwrap(), Decision::Deny);
    println!("black hole detected after {detected:?} (idle timeout {IDLE:?}, heartbeat {HEARTBEAT:?})");
    assert!(detected < IDLE + HEARTBEAT * 3, "detected after {detected:?}");

    // Healed: the sled reconnects by itself and is served again.
    proxy.set(Fault::Pass);
    let healed = Instant::now();
    connected(&uplink).await;
    println!("reconnected {:?} after the link healed", healed.elapsed());
    approved(&uplink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_stops_reading_never_stalls_the_sled() {
    let gw = gateway().await;
    let proxy = FaultProxy::start(gw.addr).await;
    // A fixed back-off long enough for the test to see why the link was lost (see the black-hole test).
    let mut config = sled_config(&proxy, "stall", Duration::from_millis(500));
    config.sled.backoff_jitter = false;
    config.sled.permission_timeout = Duration::from_millis(1500);
    let uplink = Uplink::start(config).unwrap();
    connected(&uplink).await;
    approved(&uplink).await;

    // The gateway's side stops reading. The sled is asked for far more than the socket buffers hold, so its
    // writes stop being taken; its timers must still run.
    proxy.set(Fault::Stall);
    let started = Instant::now();
    let input = json!({"content": "x".repeat(256 * 1024)});
    let pending: Vec<_> = (0..64)
        .map(|_| {
            let (uplink, input) = (uplink.clone(), input.clone());
            tokio::spawn(async move { uplink.request_permission("Bench", &input).await })
        })
        .collect();
    let state = link_state_where(&uplink, "idle detection", |s| matches!(s, LinkState::BackingOff { .. })).await;
    let detected = started.elapsed();
    assert!(matches!(state, LinkState::BackingOff { reason: LossReason::IdleTimeout, .. }), "{state:?}");
    // None crossed (the tool is auto-approved, so one that did would be approved). Those sent are denied
    // when the link is dropped; those asked after that wait in the queue, the link still stalled, until
    // their deadline denies them.
    for request in pending {
        assert_eq!(within("a request to a stalled gateway", request).await.unwrap(), Decision::Deny);
    }
    println!("stalled gateway detected after {detected:?} (idle timeout {IDLE:?})");
    assert!(detected < IDLE + HEARTBEAT * 3, "detected after {detected:?}");

    proxy.set(Fault::Pass);
    connected(&uplink).await;
    approved(&uplink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_dies_mid_request_denies_it_at_once_and_a_new_gateway_is_found() {
    // The first gateway must live until the proxy cuts it off: `_gw` keeps it.
    let (_gw, mut events, proxy, uplink) = one_sled("crash").await;
    let pending = undecided(&uplink);
    next_event(&mut events, "permission_requested").await;

    // The gateway's host dies: its connections are reset and nothing answers on its address any more.
    proxy.set_upstream(dead_port().await);
    let attempts_before = proxy.accepted().len();
    let died = Instant::now();
    proxy.cut();
    assert_eq!(within("the pending request", pending).await.unwrap(), Decision::Deny);
    let denied = died.elapsed();
    println!("pending request denied {denied:?} after the gateway died");
    assert!(denied < Duration::from_secs(1), "denied after {denied:?}");
    // While it is down, the sled keeps trying, and a new request waits in the queue.
    link_state_where(&uplink, "a refused attempt", |s| {
        matches!(s, LinkState::BackingOff { reason: LossReason::ConnectFailed, .. })
    })
    .await;
    assert!(proxy.accepted().len() > attempts_before);
    let queued = {
        let uplink = uplink.clone();
        tokio::spawn(async move { uplink.request_permission("Bench", &json!({})).await })
    };

    // A new gateway comes up where the old one was reachable: the sled finds it by itself.
    let gw2 = gateway().await;
    proxy.set_upstream(gw2.addr);
    let restarted = Instant::now();
    connected(&uplink).await;
    println!("reconnected {:?} after the new gateway came up", restarted.elapsed());
    // The queued request is sent on the new connection and decided there.
    assert_eq!(within("the queued request", queued).await.unwrap(), Decision::Approve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_gateway_restart_many_sleds_reconnect_spread_out_by_jitter() {
    const SLEDS: usize = 40;
    const BACKOFF: Duration = Duration::from_millis(1000);
    let gw = gateway().await;
    let proxy = FaultProxy::start(gw.addr).await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let uplinks: Vec<Uplink> = (0..SLEDS).map(|i| sled(&proxy, &format!("fleet-{i}"), BACKOFF)).collect();
    for _ in 0..SLEDS {
        next_event(&mut events, "sled_connected").await;
    }

    // The gateway restarts: every connection is reset, and the new gateway is already listening.
    let gw2 = gateway().await;
    let mut events2 = sse(&format!("{}/api/events", gw2.base), ADMIN_TOKEN).await;
    proxy.set_upstream(gw2.addr);
    let before = proxy.accepted().len();
    proxy.cut();
    let restarted = Instant::now();
    let mut projects = std::collections::BTreeSet::new();
    while projects.len() < SLEDS {
        let event: Value = next_event(&mut events2, "sled_connected").await;
        projects.insert(event["project"].as_str().unwrap().to_owned());
    }
    let recovered = restarted.elapsed();
    let attempts = &proxy.accepted()[before..];
    assert!(attempts.len() >= SLEDS, "{} attempts for {SLEDS} sleds", attempts.len());
    let first = &attempts[..SLEDS];
    let spread = first[SLEDS - 1] - first[0];
    println!("{SLEDS} sleds back after {recovered:?}; their first attempts spread over {spread:?}");
    // Full jitter draws each first delay from 0..=1 s: forty of them within 300 ms has a probability below
    // 1e-19. Lock-step reconnection would put them all within a few milliseconds.
    assert!(spread > Duration::from_millis(300), "attempts within {spread:?}: not spread by jitter");
    assert!(recovered < BACKOFF + Duration::from_secs(2), "recovered after {recovered:?}");
    for u in &uplinks {
        u.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_keeps_its_connection_and_a_throttled_one_delivers_large_requests_intact() {
    let (gw, mut events, proxy, uplink) = one_sled("slow").await;

    // 60 ms each way, for longer than the idle timeout: heartbeats still arrive in time.
    proxy.set(Fault::Delay(Duration::from_millis(60)));
    let started = Instant::now();
    while started.elapsed() < IDLE * 3 {
        approved(&uplink).await;
    }
    assert_eq!(proxy.accepted().len(), 1, "a slow link was mistaken for a dead one");

    // 1 MB/s: a 128 KiB tool input arrives in slices over about 130 ms.
    proxy.set(Fault::Throttle(1_000_000));
    let big: String = (0..128 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let input = json!({ "content": big });
    let pending = {
        let (uplink, input) = (uplink.clone(), input.clone());
        tokio::spawn(async move { uplink.request_permission("Write", &input).await })
    };
    let requested = next_event(&mut events, "permission_requested").await;
    assert_eq!(requested["tool_input"], input, "the input arrived intact");
    approve_via_api(&gw, &requested).await;
    assert_eq!(within("the large request", pending).await.unwrap(), Decision::Approve);
    assert_eq!(proxy.accepted().len(), 1, "the throttled link was dropped");
}

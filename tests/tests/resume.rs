//! Requests that outlive a lost link (the `resume` extension), end to end: the sled adapter and the gateway's
//! server on loopback, with a TCP fault proxy between them that cuts every connection. Every wait is on an
//! event, bounded.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use uplink_proto::gateway::{HubConfig, ResumeConfig, SessionConfig};
use uplink_tests::proxy::FaultProxy;
use uplink_tests::{ADMIN_TOKEN, RealGateway, SLED_TOKEN, http, link_state_where, next_event, sse, within};
use uplink_tokio::{Decision, LinkState, Uplink, UplinkConfig};

/// A gateway that holds requests across a drop (or not), its event stream, a proxy in front of it, and a
/// connected sled behind the proxy that offers `resume`.
async fn setup(resume: bool) -> (RealGateway, tokio::sync::mpsc::Receiver<(String, Value)>, FaultProxy, Uplink) {
    let mut hub = HubConfig::new(SessionConfig::default());
    hub.resume = resume.then(ResumeConfig::default);
    let gw = RealGateway::start_hub(hub, 1 << 20).await;
    let events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let proxy = FaultProxy::start(gw.addr).await;
    let uplink = sled(&proxy);
    link_state_where(&uplink, "connected", |s| matches!(s, LinkState::Connected { .. })).await;
    (gw, events, proxy, uplink)
}

/// A sled process of project "resume" behind `proxy` (each has an incarnation of its own).
fn sled(proxy: &FaultProxy) -> Uplink {
    let mut c = UplinkConfig::new(format!("ws://{}/api/sled-uplink", proxy.addr), "resume");
    c.token = Some(SLED_TOKEN.into());
    c.local_mcp_url = "http://127.0.0.1:9/mcp".into();
    c.sled.backoff_initial = Duration::from_millis(50);
    c.sled.backoff_max = Duration::from_millis(100);
    Uplink::start(c).unwrap()
}

/// A request only a person decides, started in the background.
fn ask(uplink: &Uplink, file: &str) -> tokio::task::JoinHandle<Decision> {
    let (uplink, file) = (uplink.clone(), file.to_owned());
    tokio::spawn(async move { uplink.request_permission("Write", &json!({"file_path": file})).await })
}

/// A request asked of `uplink` and announced by the gateway: the request, and its id there.
async fn asked(
    uplink: &Uplink,
    events: &mut tokio::sync::mpsc::Receiver<(String, Value)>,
) -> (tokio::task::JoinHandle<Decision>, String) {
    let pending = ask(uplink, "/etc/hosts");
    let requested = next_event(events, "permission_requested").await;
    (pending, requested["id"].as_str().unwrap().to_owned())
}

/// Decides `id` through the admin API: its status and body.
async fn decide(gw: &RealGateway, id: &str, approved: bool) -> (u16, Value) {
    let url = format!("{}/api/permissions/{id}", gw.base);
    let body = json!({"approved": approved}).to_string();
    let (status, body) = http("POST", &url, Some(ADMIN_TOKEN), Some(&body), &[]).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A port nothing listens on.
async fn dead_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outlives_a_cut_link_and_is_decided_under_its_first_id() {
    let (gw, mut events, proxy, uplink) = setup(true).await;
    let (pending, id) = asked(&uplink, &mut events).await;

    let cut = Instant::now();
    proxy.cut();
    let held = next_event(&mut events, "permission_held").await;
    assert_eq!(held["id"], id);
    // The sled reconnects by itself and sends the request again: the gateway finds it under the same id.
    let resumed = next_event(&mut events, "permission_resumed").await;
    assert_eq!(resumed["id"], id);
    println!("request pending again {:?} after the link was cut", cut.elapsed());
    let (status, body) = decide(&gw, &id, true).await;
    assert_eq!((status, &body["sled_away"]), (200, &json!(false)), "{body}");
    assert_eq!(within("the request", pending).await.unwrap(), Decision::Approve);
    // Exactly one request reached a person.
    let (_, listed) = http("GET", &format!("{}/api/permissions", gw.base), Some(ADMIN_TOKEN), None, &[]).await;
    assert_eq!(serde_json::from_str::<Value>(&listed).unwrap()["permissions"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_while_the_sled_is_away_reaches_it_when_it_is_back() {
    let (gw, mut events, proxy, uplink) = setup(true).await;
    let (pending, id) = asked(&uplink, &mut events).await;

    // The gateway becomes unreachable: the link is cut and new attempts are refused.
    proxy.set_upstream(dead_port().await);
    proxy.cut();
    next_event(&mut events, "permission_held").await;
    let (_, listed) = http("GET", &format!("{}/api/permissions", gw.base), Some(ADMIN_TOKEN), None, &[]).await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["permissions"][0]["id"], id);
    assert_eq!(listed["permissions"][0]["sled_away"], json!(true));
    // A person denies it meanwhile: the gateway says the sled is away, and keeps the decision.
    let (status, body) = decide(&gw, &id, false).await;
    assert_eq!((status, &body["sled_away"]), (202, &json!(true)), "{body}");
    assert!(!pending.is_finished());

    // The sled comes back within its resume wait: the kept decision is delivered to the request it was made for.
    proxy.set_upstream(gw.addr);
    let delivered = next_event(&mut events, "permission_delivered").await;
    assert_eq!(delivered["id"], id);
    assert_eq!(within("the request", pending).await.unwrap(), Decision::Deny);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_approval_never_reaches_a_sled_that_restarted() {
    let (gw, mut events, proxy, uplink) = setup(true).await;
    let (pending, id) = asked(&uplink, &mut events).await;
    proxy.set_upstream(dead_port().await);
    proxy.cut();
    next_event(&mut events, "permission_held").await;
    let (status, _) = decide(&gw, &id, true).await;
    assert_eq!(status, 202);

    // The sled process is gone (its request denied, fail-closed) and a new one starts: a new incarnation.
    uplink.shutdown().await;
    assert_eq!(within("the request", pending).await.unwrap(), Decision::Deny);
    proxy.set_upstream(gw.addr);
    let again = sled(&proxy);
    let withdrawn = next_event(&mut events, "permission_withdrawn").await;
    assert_eq!(withdrawn["id"], id, "the new incarnation's claim ends what the old one held");
    // Its request for the same thing is a new one, for a person to decide.
    let second = ask(&again, "/etc/hosts");
    let requested = next_event(&mut events, "permission_requested").await;
    assert_ne!(requested["id"], id);
    let (status, _) = decide(&gw, requested["id"].as_str().unwrap(), false).await;
    assert_eq!(status, 200);
    assert_eq!(within("the second request", second).await.unwrap(), Decision::Deny);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resume_on_the_gateway_a_cut_link_denies_at_once() {
    let (_gw, mut events, proxy, uplink) = setup(false).await;
    let pending = ask(&uplink, "/etc/hosts");
    next_event(&mut events, "permission_requested").await;
    let cut = Instant::now();
    proxy.cut();
    assert_eq!(within("the request", pending).await.unwrap(), Decision::Deny);
    let denied = cut.elapsed();
    println!("denied {denied:?} after the cut, without resume");
    assert!(denied < Duration::from_secs(1), "denied after {denied:?}");
    next_event(&mut events, "permission_withdrawn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outlives_a_link_cut_for_five_seconds_and_is_decided_afterwards() {
    let (gw, mut events, proxy, uplink) = setup(true).await;
    let (pending, id) = asked(&uplink, &mut events).await;
    // The link is down for 5 s: the connection is reset and every attempt refused meanwhile.
    proxy.set_upstream(dead_port().await);
    proxy.cut();
    next_event(&mut events, "permission_held").await;
    let outage = Instant::now();
    // The outage itself is the scenario: the sled keeps retrying through it (not a wait for an event).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!pending.is_finished(), "nothing is denied while the link is down");
    proxy.set_upstream(gw.addr);
    let resumed = next_event(&mut events, "permission_resumed").await;
    assert_eq!(resumed["id"], id);
    println!("pending again {:?} after the link came back", outage.elapsed() - Duration::from_secs(5));
    let (status, _) = decide(&gw, &id, true).await;
    assert_eq!(status, 200);
    assert_eq!(within("the request", pending).await.unwrap(), Decision::Approve);
}

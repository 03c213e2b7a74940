//! Scenario tests of a drain (`Hub::drain`): a planned restart that denies nothing that could still be
//! decided. New connections are refused; each connection is closed with 1012 once nothing of it is in flight
//! (at once when idle, unidentified, or keeping its requests across the drop); at the deadline the rest go as
//! at a shutdown.

mod common;

use std::time::Duration;

use common::hub::{HubDriver, closes, events, sent};
use serde_json::json;
use uplink_proto::Decision;
use uplink_proto::gateway::{
    AcceptError, CloseReason, ConnHandle, Credential, CredentialId, HubConfig, HubEvent, HubOutput, PublicPermId,
    ResumeConfig,
};

fn cred() -> Credential {
    Credential::unbound(CredentialId(1))
}

fn ask(h: &mut HubDriver, conn: ConnHandle, req_id: &str) -> PublicPermId {
    let frame =
        json!({"type":"perm_request","req_id":req_id,"payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    h.text(conn, &frame.to_string());
    events(&h.drain())
        .iter()
        .find_map(|e| match e {
            HubEvent::PermissionRequested { id, .. } => Some(*id),
            _ => None,
        })
        .expect("requested")
}

fn withdrawn(outs: &[HubOutput]) -> usize {
    events(outs).iter().filter(|e| matches!(e, HubEvent::PermissionWithdrawn { .. })).count()
}

#[test]
fn idle_and_unidentified_connections_go_at_once_and_new_ones_are_refused() {
    let mut h = HubDriver::with(HubConfig::default());
    let idle = h.identify(cred(), "idle");
    let unidentified = h.hub.accept(h.now, cred()).expect("accepting");
    let busy = h.identify(cred(), "busy");
    h.drain();
    ask(&mut h, busy, "r1");
    let until = h.now + Duration::from_secs(30);
    h.hub.drain(h.now, until);
    let outs = h.drain();
    let mut closed = closes(&outs);
    closed.sort_by_key(|(c, _)| *c);
    assert_eq!(closed, vec![(idle, CloseReason::Restarting), (unidentified, CloseReason::Restarting)]);
    assert_eq!(withdrawn(&outs), 0);
    assert!(!h.hub.is_drained());
    assert_eq!(h.hub.accept(h.now, cred()), Err(AcceptError::ShuttingDown));
    assert_eq!(h.hub.poll_timeout().map(|at| at <= until), Some(true));
}

#[test]
fn a_connection_with_a_request_pending_stays_until_it_is_decided_then_goes_right_after_the_decision() {
    let mut h = HubDriver::with(HubConfig::default());
    let conn = h.identify(cred(), "web");
    h.drain();
    let first = ask(&mut h, conn, "r1");
    let second = ask(&mut h, conn, "r2");
    h.hub.drain(h.now, h.now + Duration::from_secs(30));
    assert!(closes(&h.drain()).is_empty());
    // A person decides the first: still one pending, still open.
    h.hub.decide(h.now, first, Decision::Approve).expect("pending");
    let outs = h.drain();
    assert_eq!(sent(&outs, conn).len(), 1);
    assert!(closes(&outs).is_empty());
    // The sled asks again while it drains: taken as usual.
    let third = ask(&mut h, conn, "r3");
    h.hub.decide(h.now, second, Decision::Deny).expect("pending");
    assert!(closes(&h.drain()).is_empty());
    h.hub.decide(h.now, third, Decision::Approve).expect("pending");
    let outs = h.drain();
    // The decision is sent, then the close: nothing was denied for the restart.
    let order: Vec<&str> = outs
        .iter()
        .filter_map(|o| match o {
            HubOutput::Send { .. } => Some("send"),
            HubOutput::Close { .. } => Some("close"),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["send", "close"]);
    assert_eq!(closes(&outs), vec![(conn, CloseReason::Restarting)]);
    assert_eq!(withdrawn(&outs), 0);
    h.hub.handle_disconnected(h.now, conn);
    assert!(h.hub.is_drained());
}

#[test]
fn at_the_deadline_what_is_left_is_closed_as_at_a_shutdown() {
    let mut h = HubDriver::with(HubConfig::default());
    let conn = h.identify(cred(), "web");
    h.drain();
    ask(&mut h, conn, "r1");
    h.hub.drain(h.now, h.now + Duration::from_secs(20));
    assert!(closes(&h.advance(Duration::from_millis(19_999))).is_empty());
    let outs = h.advance(Duration::from_millis(1));
    assert_eq!(closes(&outs), vec![(conn, CloseReason::ShuttingDown)]);
    assert_eq!(withdrawn(&outs), 1, "what was pending ends as the connection's end");
    assert!(h.hub.is_drained());
    assert_eq!(h.hub.poll_timeout(), None);
}

#[test]
fn a_sled_that_keeps_its_requests_goes_at_once_and_its_requests_are_held() {
    let mut cfg = HubConfig::default();
    cfg.resume = Some(ResumeConfig::default());
    let mut h = HubDriver::with(cfg);
    let conn = h.hub.accept(h.now, cred()).expect("accepting");
    let identity = json!({"type":"identity","req_id":"identity","payload":{"project":"web","capabilities":["resume"],"incarnation":"i1"}});
    h.text(conn, &identity.to_string());
    h.text(conn, r#"{"type":"resumed","req_id":"resumed","payload":{}}"#);
    h.drain();
    let id = ask(&mut h, conn, "r1");
    h.hub.drain(h.now, h.now + Duration::from_secs(30));
    let outs = h.drain();
    assert_eq!(closes(&outs), vec![(conn, CloseReason::Restarting)]);
    assert_eq!(withdrawn(&outs), 0);
    assert!(h.hub.held().any(|held| held.id == id), "held for its return");
}

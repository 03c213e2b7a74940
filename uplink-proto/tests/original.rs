//! Every scenario of the original `sled_uplink.rs` test module, ported to the sans-IO core.

mod common;

use std::time::Duration;

use common::*;
use uplink_proto::{Cause, Decision, Event, Ignored, LinkState, Output, SledConfig};

/// `integration_perm_request_approved_via_uplink`: identity first, then the request; the gateway approves.
#[test]
fn perm_request_approved_via_uplink() {
    let (mut d, _) = Driver::new(config());
    let (conn, outs) = d.connect();
    let identity = &sent(&outs)[0];
    assert_eq!(
        (identity["type"].as_str(), identity["payload"]["project"].as_str()),
        (Some("identity"), Some("test-proj"))
    );
    let (key, outs) = d.request("req-test-1", "Bash");
    let req = &sent(&outs)[0];
    assert_eq!((req["type"].as_str(), req["payload"]["tool_name"].as_str()), (Some("perm_request"), Some("Bash")));
    let outs = d.text(conn, &perm_response(req["req_id"].as_str().unwrap_or_default(), true, false));
    let got = decided(&outs);
    assert_eq!((got[0].key, got[0].decision), (key, Decision::Approve));
}

/// `integration_reconnects_after_disconnect`: the request on the dropped connection is denied; after the 1 s
/// back-off the sled reconnects and the next request is approved; exactly two connections.
#[test]
fn reconnects_after_disconnect() {
    let (mut d, _) = Driver::new(config());
    let (first, _) = d.connect();
    let (k1, _) = d.request("req-drop", "Bash");
    let outs = d.disconnect(first);
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.decision)).collect::<Vec<_>>(), vec![(k1, Decision::Deny)]);
    let outs = d.next_timeout();
    assert_eq!(d.now.as_micros(), 1_000_000, "1 s back-off");
    assert!(outs.iter().any(|o| matches!(o, Output::Connect { .. })));
    let (second, _) = d.connect();
    let (k2, outs) = d.request("req-reconnect", "Write");
    assert_eq!(sent_types(&outs), ["perm_request"]);
    let outs = d.text(second, &perm_response("req-reconnect", true, false));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.decision)).collect::<Vec<_>>(), vec![(k2, Decision::Approve)]);
    assert_eq!(d.sled.stats().connections, 2);
}

/// `on_gateway_text_ignores_unknown_type` and `on_gateway_text_ignores_invalid_json`.
#[test]
fn unknown_type_and_invalid_json_are_ignored() {
    let (mut d, conn) = Driver::connected(config());
    assert_eq!(
        d.text(conn, r#"{"type":"future_type","req_id":"x","payload":{}}"#),
        vec![Output::Event(Event::FrameIgnored(Ignored::UnknownType))]
    );
    assert_eq!(d.text(conn, "not-json"), vec![Output::Event(Event::FrameIgnored(Ignored::Malformed))]);
    assert_eq!(d.sled.pending_permissions(), 0);
    assert_eq!(d.sled.connection(), Some(conn));
}

/// `resolve_perm_response_unknown_req_id_is_noop`.
#[test]
fn unknown_req_id_is_a_noop() {
    let (mut d, conn) = Driver::connected(config());
    assert!(decided(&d.text(conn, &perm_response("missing", true, false))).is_empty());
}

/// `fail_close_all_denies_all_pending`.
#[test]
fn fail_close_denies_all_pending() {
    let (mut d, conn) = Driver::connected(config());
    d.request("a", "Bash");
    d.request("b", "Bash");
    let got = decided(&d.disconnect(conn));
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|x| x.decision == Decision::Deny && x.cause == Cause::ConnectionLost));
}

/// `spawn_uplink_task_noop_when_url_empty`: no gateway, nothing happens (and requests are denied at once).
#[test]
fn no_gateway_does_nothing() {
    let (mut d, outs) = Driver::new(SledConfig::disabled());
    assert_eq!(outs, vec![Output::Event(Event::Link(LinkState::Disabled))]);
    assert!(d.advance(Duration::from_secs(86_400)).is_empty());
}

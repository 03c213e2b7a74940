//! The sled's side of the `resume` extension (PROTOCOL.md, "Requests that outlive the link"): what a drop
//! keeps, when it is sent again, and every way it still ends denied.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use uplink_proto::{Cause, ConnId, Decision, Instant, Output, SledConfig};

const ACCEPTED: &str = r#"{"type":"resume_accepted","req_id":"","payload":{}}"#;

/// Drops `conn`, lets the back-off pass and completes the next attempt: the new connection and its outputs.
fn reconnect(d: &mut Driver, conn: ConnId) -> (ConnId, Vec<Output>) {
    let mut outs = d.disconnect(conn);
    outs.extend(d.next_timeout());
    let (conn, more) = d.connect();
    outs.extend(more);
    (conn, outs)
}

/// Ids of the `perm_request`s in `outs`, in order.
fn requests_sent(outs: &[Output]) -> Vec<String> {
    sent(outs)
        .iter()
        .filter(|f| f["type"] == "perm_request")
        .map(|f| f["req_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn an_accepted_connection_keeps_its_requests_across_a_drop_and_sends_them_again_once_accepted_again() {
    let (mut d, conn) = Driver::connected(config());
    // With nothing kept, an acceptance is answered with `resumed` alone.
    assert_eq!(sent_types(&d.text(conn, ACCEPTED)), ["resumed"]);
    let (k1, _) = d.request("a", "Bash");
    let (k2, _) = d.request("b", "Write");
    let (conn2, outs) = reconnect(&mut d, conn);
    assert!(decided(&outs).is_empty(), "nothing is denied: {outs:?}");
    assert_eq!(d.sled.kept_permissions(), 2);
    // The new connection announces itself; nothing is sent again before the gateway accepts.
    assert_eq!(sent_types(&outs), ["identity"]);
    assert_eq!(sent(&outs)[0]["payload"]["incarnation"], d.sled.incarnation());
    let outs = d.text(conn2, ACCEPTED);
    assert_eq!(sent_types(&outs), ["perm_request", "perm_request", "resumed"]);
    assert_eq!(requests_sent(&outs), ["a", "b"], "the same ids, in their order");
    assert_eq!(sent(&outs)[0]["payload"], json!({"tool_name":"Bash","tool_input":{"command":"ls"}}));
    assert_eq!(d.sled.stats().requests_resent, 2);
    // Decided on the new connection as any request.
    let outs = d.text(conn2, &perm_response("b", true, false));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.decision)).collect::<Vec<_>>(), [(k2, Decision::Approve)]);
    let outs = d.text(conn2, &perm_response("a", false, false));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(k1, Cause::Response)]);
    assert_eq!((d.sled.pending_permissions(), d.sled.kept_bytes()), (0, 0));
}

#[test]
fn a_gateway_that_does_not_accept_has_the_kept_requests_denied_at_once_or_after_the_wait() {
    // Its first frame is something else: a gateway that accepts says so first.
    let (mut d, conn) = Driver::connected(config());
    d.text(conn, ACCEPTED);
    let (k, _) = d.request("a", "Bash");
    let (conn2, _) = reconnect(&mut d, conn);
    let outs = d.text(conn2, &mcp_request("m-1", r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#));
    let got = decided(&outs);
    assert_eq!(
        got.iter().map(|x| (x.key, x.decision, x.cause)).collect::<Vec<_>>(),
        [(k, Decision::Deny, Cause::ConnectionLost)]
    );
    assert!(requests_sent(&outs).is_empty());
    assert_eq!(d.sled.kept_bytes(), 0);

    // Silence: denied when the wait ends, not before.
    let (mut d, conn) = Driver::connected(config());
    d.text(conn, ACCEPTED);
    let (k, _) = d.request("a", "Bash");
    let (_, _) = reconnect(&mut d, conn);
    let connected_at = d.now;
    let outs = d.next_timeout();
    assert_eq!(d.now, connected_at + Duration::from_secs(5));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(k, Cause::ConnectionLost)]);
    assert_eq!(d.sled.pending_permissions(), 0);
}

#[test]
fn without_an_acceptance_on_the_connection_a_drop_denies_as_the_original_did() {
    // Never accepted.
    let (mut d, conn) = Driver::connected(config());
    let (k, _) = d.request("a", "Bash");
    let outs = d.disconnect(conn);
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(k, Cause::ConnectionLost)]);
    // A sled that does not offer it ignores an acceptance and denies on a drop.
    let (mut d, conn) = Driver::connected(SledConfig { resume: false, ..config() });
    let outs = d.text(conn, ACCEPTED);
    assert!(decided(&outs).is_empty());
    let (k, _) = d.request("a", "Bash");
    let outs = d.disconnect(conn);
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(k, Cause::ConnectionLost)]);
    assert_eq!(d.sled.stats().requests_resent, 0);
}

#[test]
fn a_kept_request_keeps_its_deadline() {
    let (mut d, conn) = Driver::connected(config());
    d.text(conn, ACCEPTED);
    let (k, _) = d.request("a", "Bash");
    let deadline = d.now + Duration::from_secs(120);
    let mut outs = d.disconnect(conn);
    // Never reconnected in time: the back-off keeps failing until the deadline passes.
    while d.now < deadline {
        outs = d.next_timeout();
        if let Some(attempt) = d.pending_connect.take() {
            d.sled.handle_connect_failed(d.now, attempt, uplink_proto::ConnectError::Other);
            outs.extend(d.drain());
        }
        if !decided(&outs).is_empty() {
            break;
        }
    }
    assert_eq!(d.now, deadline, "denied at its own deadline, not later nor earlier");
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(k, Cause::Timeout)]);
    assert!(requests_sent(&outs).is_empty() && sent_types(&outs).iter().all(|t| t != "perm_cancel"));
}

#[test]
fn a_drop_before_the_next_acceptance_keeps_what_was_kept_and_denies_what_was_sent_since() {
    let (mut d, conn) = Driver::connected(config());
    d.text(conn, ACCEPTED);
    let (old, _) = d.request("old", "Bash");
    let (conn2, _) = reconnect(&mut d, conn);
    // Sent on the new connection before any acceptance: its gateway may not keep it.
    let (new, outs) = d.request("new", "Bash");
    assert_eq!(requests_sent(&outs), ["new"]);
    let (conn3, outs) = reconnect(&mut d, conn2);
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(new, Cause::ConnectionLost)]);
    let outs = d.text(conn3, ACCEPTED);
    assert_eq!(requests_sent(&outs), ["old"]);
    let outs = d.text(conn3, &perm_response("old", true, false));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.decision)).collect::<Vec<_>>(), [(old, Decision::Approve)]);
}

#[test]
fn the_kept_bytes_have_a_budget_and_a_request_beyond_it_is_denied_by_a_drop() {
    // "a" costs 1 + 4 + 16 bytes (id, tool, input): room for one.
    let cfg = SledConfig { max_resume_bytes: 30, ..config() };
    let (mut d, conn) = Driver::connected(cfg);
    d.text(conn, ACCEPTED);
    let (a, _) = d.request("a", "Bash");
    assert_eq!(d.sled.kept_bytes(), 21);
    let (b, _) = d.request("b", "Bash");
    assert_eq!(d.sled.kept_bytes(), 21, "b is not kept");
    let (conn2, outs) = reconnect(&mut d, conn);
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(b, Cause::ConnectionLost)]);
    let outs = d.text(conn2, ACCEPTED);
    assert_eq!(requests_sent(&outs), ["a"]);
    // Withdrawn while kept, or ended any way: its bytes leave the budget.
    let (mut d, conn) = Driver::connected(SledConfig { max_resume_bytes: 30, ..config() });
    d.text(conn, ACCEPTED);
    let (c, _) = d.request("c", "Bash");
    let (_, _) = reconnect(&mut d, conn);
    d.sled.withdraw(d.now, c);
    let outs = d.drain();
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(c, Cause::Withdrawn)]);
    assert!(sent(&outs).is_empty(), "nothing to cancel on a connection it was not sent on");
    assert_eq!(d.sled.kept_bytes(), 0);
    let _ = a;
}

#[test]
fn shutdown_denies_what_was_kept() {
    let (mut d, conn) = Driver::connected(config());
    d.text(conn, ACCEPTED);
    let (k, _) = d.request("a", "Bash");
    d.disconnect(conn);
    d.sled.shutdown(d.now);
    let outs = d.drain();
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(k, Cause::Shutdown)]);
    assert_eq!((d.sled.pending_permissions(), d.sled.kept_bytes()), (0, 0));
}

#[test]
fn an_acceptance_said_twice_resends_nothing_twice() {
    let (mut d, conn) = Driver::connected(config());
    d.text(conn, ACCEPTED);
    d.request("a", "Bash");
    let (conn2, _) = reconnect(&mut d, conn);
    assert_eq!(requests_sent(&d.text(conn2, ACCEPTED)), ["a"]);
    let outs = d.text(conn2, ACCEPTED);
    assert!(sent(&outs).is_empty(), "{outs:?}");
    // And an acceptance on a connection no longer live changes nothing.
    let before = d.now;
    let outs = d.text(conn, ACCEPTED);
    assert!(actions(&outs).is_empty());
    assert_eq!(d.now, before);
    assert!(d.now > Instant::ZERO);
}

/// A sled whose back-off has grown (three refused attempts), then connected to a gateway that accepted
/// `resume`, with one request sent: the connection, the grown delay and the request.
fn grown_backoff_then_connected() -> (Driver, ConnId, Duration, uplink_proto::PermKey) {
    let (mut d, conn) = Driver::connected(config());
    d.text(conn, ACCEPTED);
    d.disconnect(conn);
    for _ in 0..3 {
        d.next_timeout();
        let conn = d.pending_connect.take().expect("an attempt");
        d.sled.handle_connect_failed(d.now, conn, uplink_proto::ConnectError::Other);
        d.drain();
    }
    let grown = match d.sled.link_state() {
        uplink_proto::LinkState::BackingOff { delay, .. } => delay,
        other => panic!("{other:?}"),
    };
    assert!(grown >= config().backoff_initial * 4, "{grown:?}");
    d.next_timeout();
    let (conn, _) = d.connect();
    d.text(conn, ACCEPTED);
    let (k, _) = d.request("a", "Bash");
    (d, conn, grown, k)
}

#[test]
fn a_gateway_restarting_counts_no_failure_and_its_kept_requests_are_sent_again() {
    // Closed with 1001 by a connection that lived less than the stability window: the back-off grows on.
    let (mut d, conn, grown, _) = grown_backoff_then_connected();
    d.sled.handle_closed(d.now, conn, 1001);
    d.drain();
    assert!(matches!(
        d.sled.link_state(),
        uplink_proto::LinkState::BackingOff { delay, reason: uplink_proto::LossReason::Disconnected, .. } if delay > grown
    ));

    // Closed with 1012, a gateway restarting: the back-off starts afresh, and the request is kept.
    let (mut d, conn, _, k) = grown_backoff_then_connected();
    d.sled.handle_closed(d.now, conn, 1012);
    let outs = d.drain();
    assert!(decided(&outs).is_empty());
    assert!(matches!(
        d.sled.link_state(),
        uplink_proto::LinkState::BackingOff { delay, reason: uplink_proto::LossReason::GatewayRestarting, .. }
            if delay == config().backoff_initial
    ));
    d.next_timeout();
    let (conn, _) = d.connect();
    assert_eq!(requests_sent(&d.text(conn, ACCEPTED)), ["a"]);
    let outs = d.text(conn, &perm_response("a", true, false));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.decision)).collect::<Vec<_>>(), [(k, Decision::Approve)]);
}

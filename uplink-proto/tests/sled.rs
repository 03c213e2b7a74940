//! Scenario tests of the sled machine, one or more per numbered behaviour in PROTOCOL.md, with explicit time.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use uplink_proto::wire::MAX_MESSAGE_BYTES;
use uplink_proto::{
    Cause, ConfigError, ConnectError, Decision, Event, Ignored, Instant, LinkState, LossReason, McpCall, McpListen,
    McpReply, Output, Received, Refusal, Sled, SledConfig,
};

fn call_of(outs: &[Output]) -> McpCall {
    let calls: Vec<&McpCall> = outs
        .iter()
        .filter_map(|o| match o {
            Output::CallMcp(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 1, "{outs:?}");
    calls[0].clone()
}

fn delay_of(outs: &[Output]) -> Duration {
    outs.iter()
        .find_map(|o| match o {
            Output::Event(Event::Link(LinkState::BackingOff { delay, .. })) => Some(*delay),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no back-off in {outs:?}"))
}

// ── 1. Disabled without a gateway ────────────────────────────────────────────────────────────────────────

#[test]
fn b1_disabled_never_connects_and_denies_at_once() {
    let (mut d, outs) = Driver::new(SledConfig::disabled());
    assert_eq!(outs, vec![Output::Event(Event::Link(LinkState::Disabled))]);
    assert_eq!(d.sled.poll_timeout(), None);
    let (key, outs) = d.request("r1", "Bash");
    assert_eq!(decided(&outs).len(), 1);
    assert_eq!(
        (decided(&outs)[0].key, decided(&outs)[0].decision, decided(&outs)[0].cause),
        (key, Decision::Deny, Cause::Disabled)
    );
    assert!(d.secs(3600.0).is_empty());
    assert_eq!(d.sled.link_state(), LinkState::Disabled);
}

// ── 2. identity first, then heartbeats ───────────────────────────────────────────────────────────────────

#[test]
fn b2_identity_is_the_first_frame_and_heartbeats_follow_every_interval() {
    let (mut d, outs) = Driver::new(config());
    assert!(matches!(outs.last(), Some(Output::Connect { .. })), "{outs:?}");
    let (conn, outs) = d.connect();
    let frames = sent(&outs);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "identity");
    assert_eq!(frames[0]["req_id"], "identity");
    assert_eq!(frames[0]["payload"]["project"], "test-proj");
    assert_eq!(frames[0]["payload"]["protocol"], 1);
    assert_eq!(frames[0]["payload"]["capabilities"], json!(["perm_cancel", "mcp_stream", "resume"]));
    assert_eq!(d.sled.poll_timeout(), Some(Instant::from_secs(10)));
    // Nothing before the interval...
    assert!(actions(&d.secs(9.999)).is_empty());
    // ...then a heartbeat and a ping, every 10 s, as long as the gateway answers.
    for n in 1..=5u64 {
        let outs = d.next_timeout();
        assert_eq!(d.now, Instant::from_secs(10 * n));
        assert_eq!(sent(&outs), vec![json!({"type":"heartbeat","req_id":"","payload":null})]);
        assert!(outs.contains(&Output::Ping { conn }));
        d.sled.handle_received(d.now, conn, Received::Pong);
    }
}

#[test]
fn b14_identity_carries_documented_extras() {
    let cfg = SledConfig { sled_version: Some("9.9.9".into()), capabilities: vec!["mcp_session".into()], ..config() };
    let (mut d, _) = Driver::new(cfg.clone());
    let (_, outs) = d.connect();
    let incarnation = d.sled.incarnation().to_owned();
    assert_eq!(incarnation.len(), 16, "{incarnation}");
    assert!(incarnation.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{incarnation}");
    assert_eq!(
        sent(&outs)[0]["payload"],
        json!({"project":"test-proj","protocol":1,"sled_version":"9.9.9","capabilities":["perm_cancel","mcp_stream","resume","mcp_session"],
            "permission_timeout_ms":120_000,"incarnation":incarnation})
    );
    // Another seed, another incarnation; without `resume`, neither the capability nor the incarnation.
    let (other, _) = Driver::new(SledConfig { seed: 1, ..cfg.clone() });
    assert_ne!(other.sled.incarnation(), incarnation);
    let (mut d, _) = Driver::new(SledConfig { resume: false, ..cfg });
    let (_, outs) = d.connect();
    assert_eq!(
        sent(&outs)[0]["payload"],
        json!({"project":"test-proj","protocol":1,"sled_version":"9.9.9","capabilities":["perm_cancel","mcp_stream","mcp_session"],
            "permission_timeout_ms":120_000})
    );
}

// ── 3. perm_request / perm_response ──────────────────────────────────────────────────────────────────────

#[test]
fn b3_each_response_maps_to_its_decision() {
    let cases = [
        (r#"{"approved":true,"always_allow":false}"#, Decision::Approve),
        (r#"{"approved":false,"always_allow":false}"#, Decision::Deny),
        (r#"{"approved":true,"always_allow":true}"#, Decision::AlwaysAllow),
        (r#"{"approved":"yes"}"#, Decision::Deny),
        (r#"{}"#, Decision::Deny),
        (r#"null"#, Decision::Deny),
    ];
    for (payload, want) in cases {
        let (mut d, conn) = Driver::connected(config());
        let (key, outs) = d.request("req-1", "Bash");
        assert_eq!(
            sent(&outs),
            vec![
                json!({"type":"perm_request","req_id":"req-1","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}})
            ]
        );
        assert!(decided(&outs).is_empty());
        let outs = d.text(conn, &format!(r#"{{"type":"perm_response","req_id":"req-1","payload":{payload}}}"#));
        let got = decided(&outs);
        assert_eq!(got.len(), 1, "{payload}");
        assert_eq!(
            (got[0].key, got[0].id.as_str(), got[0].decision, got[0].cause),
            (key, "req-1", want, Cause::Response)
        );
        assert_eq!(d.sled.pending_permissions(), 0);
        // A second response for the same id changes nothing.
        let outs = d.text(conn, &perm_response("req-1", true, true));
        assert!(decided(&outs).is_empty());
        assert_eq!(outs, vec![Output::Event(Event::FrameIgnored(Ignored::UnmatchedResponse))]);
    }
}

#[test]
fn a_persons_message_reaches_the_caller_and_a_long_one_is_cut_at_a_character_boundary() {
    let (mut d, conn) = Driver::connected(config());
    let (_, _) = d.request("m1", "Bash");
    let outs =
        d.text(conn, r#"{"type":"perm_response","req_id":"m1","payload":{"approved":false,"message":"not on main"}}"#);
    let got = decided(&outs);
    assert_eq!(
        (got[0].decision, got[0].cause, got[0].message.as_deref()),
        (Decision::Deny, Cause::Response, Some("not on main"))
    );
    // 4095 ASCII bytes, then a two-byte character that would end past the limit: cut before it.
    let long = format!("{}é{}", "a".repeat(MAX_MESSAGE_BYTES - 1), "b".repeat(100));
    let (_, _) = d.request("m2", "Bash");
    let frame = json!({"type":"perm_response","req_id":"m2","payload":{"approved":false,"message":long}});
    let outs = d.text(conn, &frame.to_string());
    let message = decided(&outs)[0].message.clone().expect("a message");
    assert_eq!(message, "a".repeat(MAX_MESSAGE_BYTES - 1));
    // No message for the other causes, and none when the frame had none.
    let (_, _) = d.request("m3", "Bash");
    let outs = d.text(conn, &perm_response("m3", true, false));
    assert_eq!(decided(&outs)[0].message, None);
    let (_, _) = d.request("m4", "Bash");
    let outs = d.advance(Duration::from_secs(3600));
    let ends = decided(&outs);
    assert!(!ends.is_empty() && ends.iter().all(|x| x.cause != Cause::Response && x.message.is_none()), "{ends:?}");
}

// ── 4. Fail-closed on a lost connection ──────────────────────────────────────────────────────────────────

#[test]
fn b4_in_flight_requests_are_denied_when_the_connection_drops() {
    let (mut d, conn) = Driver::connected(config());
    let (k1, _) = d.request("a", "Bash");
    let (k2, _) = d.request("b", "Write");
    let outs = d.disconnect(conn);
    let got = decided(&outs);
    assert_eq!(
        got.iter().map(|x| (x.key, x.decision, x.cause)).collect::<Vec<_>>(),
        vec![(k1, Decision::Deny, Cause::ConnectionLost), (k2, Decision::Deny, Cause::ConnectionLost)]
    );
    assert!(sent(&outs).is_empty(), "nothing is sent on a dead connection");
    assert_eq!(d.sled.pending_permissions(), 0);
}

// ── 5. MCP relay ─────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn b5_mcp_request_is_relayed_and_answered_with_the_same_req_id() {
    let (mut d, conn) = Driver::connected(config());
    let body = r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#;
    let outs = d.text(conn, &mcp_request("m-1", body));
    let call = call_of(&outs);
    assert_eq!((call.body.as_str(), call.session.as_deref()), (body, None));
    assert!(sent(&outs).is_empty());
    d.sled.handle_mcp_reply(
        d.now,
        call.call,
        McpReply::Response(raw(r#"{"jsonrpc":"2.0","id":4,"result":{"tools":[]}}"#)),
    );
    let outs = d.drain();
    assert_eq!(
        sent(&outs),
        vec![json!({"type":"mcp_response","req_id":"m-1","payload":{"jsonrpc":"2.0","id":4,"result":{"tools":[]}}})]
    );
    // The session extension passes through.
    let outs =
        d.text(conn, &json!({"type":"mcp_request","req_id":"m-2","payload":{"body":body,"session":"s9"}}).to_string());
    assert_eq!(call_of(&outs).session.as_deref(), Some("s9"));
}

#[test]
fn b5_failed_call_becomes_a_json_rpc_error_with_the_request_id() {
    let (mut d, conn) = Driver::connected(config());
    let call = call_of(&d.text(conn, &mcp_request("m-1", r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call"}"#)));
    d.sled.handle_mcp_reply(d.now, call.call, McpReply::Failed("connection refused".into()));
    let frames = sent(&d.drain());
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["req_id"], "m-1");
    assert_eq!(frames[0]["payload"]["id"], "abc");
    assert_eq!(frames[0]["payload"]["error"]["code"], -32603);
    assert_eq!(frames[0]["payload"]["error"]["message"], "local MCP call failed: connection refused");
}

#[test]
fn b5_a_lost_session_that_cannot_be_renewed_is_answered_session_not_found_with_the_request_id() {
    let (mut d, conn) = Driver::connected(config());
    let call = call_of(&d.text(conn, &mcp_request("m-1", r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call"}"#)));
    d.sled.handle_mcp_reply(d.now, call.call, McpReply::SessionLost);
    let frames = sent(&d.drain());
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["req_id"], "m-1");
    assert_eq!(frames[0]["payload"]["id"], "abc");
    assert_eq!(frames[0]["payload"]["error"]["code"], uplink_proto::jsonrpc::SESSION_NOT_FOUND);
    assert_eq!(frames[0]["payload"]["error"]["message"], uplink_proto::sled::SESSION_LOST);
}

#[test]
fn b5_notification_with_no_content_is_answered_with_null() {
    let (mut d, conn) = Driver::connected(config());
    let call = call_of(&d.text(conn, &mcp_request("n-1", r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)));
    d.sled.handle_mcp_reply(d.now, call.call, McpReply::NoContent);
    assert_eq!(sent(&d.drain()), vec![json!({"type":"mcp_response","req_id":"n-1","payload":null})]);
}

// ── 6 and 8. Back-off ────────────────────────────────────────────────────────────────────────────────────

#[test]
fn b6_back_off_without_jitter_is_the_originals_sequence() {
    let (mut d, _) = Driver::new(config());
    let mut delays = Vec::new();
    for _ in 0..9 {
        let conn = d.pending_connect.take().expect("attempt");
        d.sled.handle_connect_failed(d.now, conn, ConnectError::Other);
        let delay = delay_of(&d.drain());
        delays.push(delay.as_secs());
        // The next attempt starts exactly when the delay is over.
        assert_eq!(d.sled.poll_timeout(), Some(d.now + delay));
        let outs = d.next_timeout();
        assert!(outs.iter().any(|o| matches!(o, Output::Connect { .. })));
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
}

#[test]
fn b8_back_off_resets_after_a_stable_connection_only() {
    let (mut d, _) = Driver::new(config());
    // Three failures: 1, 2, 4.
    for _ in 0..3 {
        let conn = d.pending_connect.take().expect("attempt");
        d.sled.handle_connect_failed(d.now, conn, ConnectError::Other);
        d.drain();
        d.next_timeout();
    }
    // A short-lived connection does not reset: next delay is 8.
    let (conn, _) = d.connect();
    d.secs(29.0);
    d.sled.handle_received(d.now, conn, Received::Pong);
    assert_eq!(delay_of(&d.disconnect(conn)).as_secs(), 8);
    d.next_timeout();
    // One that lives the 30 s window does: next delay is 1 again.
    let (conn, _) = d.connect();
    for _ in 0..3 {
        d.secs(10.0);
        d.sled.handle_received(d.now, conn, Received::Pong);
    }
    assert_eq!(delay_of(&d.disconnect(conn)).as_secs(), 1);
}

#[test]
fn b8_jittered_delays_stay_within_bounds_and_depend_only_on_the_seed() {
    let run = |seed: u64| {
        let (mut d, _) = Driver::new(SledConfig { seed, ..SledConfig::new("p") });
        let mut delays = Vec::new();
        for n in 0..12u32 {
            let conn = d.pending_connect.take().expect("attempt");
            d.sled.handle_connect_failed(d.now, conn, ConnectError::Other);
            let delay = delay_of(&d.drain());
            let ceiling = Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60));
            assert!(delay <= ceiling, "attempt {n}: {delay:?} > {ceiling:?}");
            delays.push(delay);
            d.next_timeout();
        }
        delays
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
    // Jitter really spreads: over 12 attempts no two seeds agree, and not every delay is the ceiling.
    assert!(run(5).iter().zip([1u64, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]).any(|(d, c)| d.as_secs() < c));
}

#[test]
fn unauthorized_waits_the_back_off_cap() {
    let (mut d, _) = Driver::new(config());
    let conn = d.pending_connect.take().expect("attempt");
    d.sled.handle_connect_failed(d.now, conn, ConnectError::Unauthorized);
    let outs = d.drain();
    assert_eq!(delay_of(&outs), Duration::from_secs(60));
    assert!(outs.contains(&Output::Event(Event::Link(LinkState::BackingOff {
        delay: Duration::from_secs(60),
        reason: LossReason::Refused(Refusal::Token)
    }))));
}

#[test]
fn a_connect_attempt_that_hangs_is_abandoned() {
    let (mut d, _) = Driver::new(config());
    let conn = d.pending_connect.take().expect("attempt");
    let outs = d.next_timeout();
    assert_eq!(d.now, Instant::from_secs(10));
    assert!(outs.iter().any(|o| matches!(o, Output::Close { conn: c, .. } if *c == conn)));
    assert_eq!(delay_of(&outs), Duration::from_secs(1));
    // The attempt completing late is refused and closed, not adopted.
    d.sled.handle_connected(d.now, conn);
    assert!(d.drain().iter().any(|o| matches!(o, Output::Close { conn: c, .. } if *c == conn)));
    assert_eq!(d.sled.connection(), None);
}

// ── 7. Things that change nothing ────────────────────────────────────────────────────────────────────────

#[test]
fn b7_unknown_ids_unknown_types_and_garbage_change_nothing() {
    let (mut d, conn) = Driver::connected(config());
    let (_, _) = d.request("req-1", "Bash");
    let before = d.sled.poll_timeout();
    for (text, why) in [
        (perm_response("missing", true, false), Ignored::UnmatchedResponse),
        (r#"{"type":"future_type","req_id":"x","payload":{}}"#.to_owned(), Ignored::UnknownType),
        ("not-json".to_owned(), Ignored::Malformed),
        (r#"["perm_response","req-1",{"approved":true}]"#.to_owned(), Ignored::Malformed),
        (r#"{"type":"perm_response","payload":{"approved":true}}"#.to_owned(), Ignored::UnmatchedResponse),
    ] {
        let outs = d.text(conn, &text);
        assert_eq!(outs, vec![Output::Event(Event::FrameIgnored(why))], "{text}");
    }
    d.sled.handle_received(d.now, conn, Received::Binary(b"\x00\x01"));
    assert_eq!(d.drain(), vec![Output::Event(Event::FrameIgnored(Ignored::Binary))]);
    assert_eq!(d.sled.pending_permissions(), 1);
    assert_eq!(d.sled.poll_timeout(), before);
    let s = d.sled.stats();
    assert_eq!((s.unmatched_responses, s.unknown_frames, s.malformed_frames, s.binary_frames), (2, 1, 2, 1));
}

// ── 9. Liveness ──────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn b9_a_silent_gateway_is_closed_after_the_idle_timeout_and_in_flight_work_denied() {
    let (mut d, conn) = Driver::connected(config());
    let (key, _) = d.request("r", "Bash");
    let call = call_of(&d.text(conn, &mcp_request("m", r#"{"id":1}"#)));
    // The request frame at t=0 was the last thing heard. Pings at 10 s and 20 s go unanswered.
    let mut outs = Vec::new();
    while d.now < Instant::from_secs(30) {
        outs.extend(d.next_timeout());
    }
    assert_eq!(d.now, Instant::from_secs(30));
    assert_eq!(outs.iter().filter(|o| matches!(o, Output::Ping { .. })).count(), 2);
    assert!(outs.contains(&Output::Close { conn, code: 1001, reason: "idle timeout" }));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), vec![(key, Cause::ConnectionLost)]);
    assert!(outs.contains(&Output::CancelMcp { call: call.call }));
    assert!(matches!(d.sled.link_state(), LinkState::BackingOff { reason: LossReason::IdleTimeout, .. }));
}

#[test]
fn b9_any_traffic_keeps_the_connection_alive() {
    let (mut d, conn) = Driver::connected(config());
    for _ in 0..20 {
        d.secs(25.0);
        // A heartbeat-ping cycle or an unknown frame: either proves life.
        d.text(conn, r#"{"type":"whatever"}"#);
    }
    assert_eq!(d.sled.connection(), Some(conn));
}

// ── 10. Deadlines, queueing, limits ──────────────────────────────────────────────────────────────────────

#[test]
fn b10_an_unanswered_request_is_denied_at_its_deadline_and_withdrawn() {
    let (mut d, conn) = Driver::connected(config());
    let (key, _) = d.request("r", "Bash");
    let mut outs = Vec::new();
    while d.now < Instant::from_secs(120) {
        d.sled.handle_received(d.now, conn, Received::Pong);
        outs = d.next_timeout();
    }
    assert_eq!(d.now, Instant::from_secs(120));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), vec![(key, Cause::Timeout)]);
    assert!(sent(&outs).contains(&json!({"type":"perm_cancel","req_id":"r","payload":{"reason":"timeout"}})));
    // A response after the deadline is too late.
    assert!(decided(&d.text(conn, &perm_response("r", true, false))).is_empty());
}

#[test]
fn b10_a_late_response_never_approves_even_if_the_timer_was_not_fired() {
    let (mut d, conn) = Driver::connected(SledConfig {
        idle_timeout: Duration::from_secs(500),
        heartbeat_interval: Duration::from_secs(400),
        ..config()
    });
    let (key, _) = d.request("r", "Bash");
    // The caller never called handle_timeout; the response arrives at 121 s.
    d.now = Instant::from_secs(121);
    let outs = d.text(conn, &perm_response("r", true, false));
    assert_eq!(
        decided(&outs).iter().map(|x| (x.key, x.decision, x.cause)).collect::<Vec<_>>(),
        vec![(key, Decision::Deny, Cause::Timeout)]
    );
}

#[test]
fn b10_requests_made_while_disconnected_are_queued_then_sent_and_keep_their_deadline() {
    let (mut d, _) = Driver::new(config());
    let (k1, outs) = d.request("q1", "Bash");
    assert!(actions(&outs).is_empty(), "queued, not decided, not sent: {outs:?}");
    // First attempt fails: still queued, not denied.
    let conn = d.pending_connect.take().expect("attempt");
    d.sled.handle_connect_failed(d.now, conn, ConnectError::Other);
    assert!(decided(&d.drain()).is_empty());
    d.secs(0.5);
    let (k2, _) = d.request("q2", "Write");
    d.next_timeout(); // t = 1 s: second attempt
    let (conn, outs) = d.connect();
    assert_eq!(d.now, Instant::from_secs(1));
    assert_eq!(sent_types(&outs), ["identity", "perm_request", "perm_request"]);
    assert_eq!((sent(&outs)[1]["req_id"].as_str(), sent(&outs)[2]["req_id"].as_str()), (Some("q1"), Some("q2")));
    // q1 was asked at 0 s: denied at 120 s although it was sent at 1 s; q2 half a second later.
    let mut outs = Vec::new();
    while decided(&outs).is_empty() {
        d.sled.handle_received(d.now, conn, Received::Pong);
        outs = d.next_timeout();
    }
    assert_eq!(d.now, Instant::from_secs(120));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), vec![(k1, Cause::Timeout)]);
    let outs = d.next_timeout();
    assert_eq!(d.now, Instant::from_millis(120_500));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), vec![(k2, Cause::Timeout)]);
}

#[test]
fn b10_a_full_queue_and_a_duplicate_id_are_denied_at_once_and_the_earlier_keeps_its_place() {
    let (mut d, conn) = Driver::connected(SledConfig { max_pending_permissions: 2, ..config() });
    let (first, _) = d.request("dup", "Bash");
    let (again, outs) = d.request("dup", "Bash");
    assert_ne!(first, again);
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), vec![(again, Cause::DuplicateId)]);
    assert!(sent(&outs).is_empty());
    d.request("other", "Bash");
    let (full, outs) = d.request("third", "Bash");
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), vec![(full, Cause::QueueFull)]);
    let (empty, outs) = d.request("", "Bash");
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), vec![(empty, Cause::InvalidId)]);
    // The first "dup" is still pending and resolves normally.
    let outs = d.text(conn, &perm_response("dup", true, false));
    assert_eq!(
        decided(&outs).iter().map(|x| (x.key, x.decision)).collect::<Vec<_>>(),
        vec![(first, Decision::Approve)]
    );
}

// ── 11. Decisions come only from the connection the request was sent on ──────────────────────────────────

#[test]
fn b11_a_response_on_another_connection_never_decides() {
    let (mut d, old) = Driver::connected(config());
    d.request("r", "Bash");
    d.disconnect(old);
    let (late, _) = d.request("r", "Bash");
    // Queued: a response on the dead connection, or before it is sent, decides nothing.
    assert!(decided(&d.text(old, &perm_response("r", true, false))).is_empty());
    d.next_timeout();
    let (new, outs) = d.connect();
    assert_eq!(sent_types(&outs), ["identity", "perm_request"]);
    assert!(decided(&d.text(old, &perm_response("r", true, true))).is_empty());
    assert!(d.sled.stats().stale_inputs >= 2);
    let outs = d.text(new, &perm_response("r", true, false));
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.decision)).collect::<Vec<_>>(), vec![(late, Decision::Approve)]);
}

// ── 12. Bounded MCP, exactly one answer ──────────────────────────────────────────────────────────────────

#[test]
fn b12_mcp_calls_are_bounded_and_the_excess_answered_with_its_id() {
    // Without a wait queue, as the original: the excess is answered at once.
    let (mut d, conn) = Driver::connected(SledConfig { max_mcp_waiting: 0, ..config() });
    for n in 0..32 {
        call_of(&d.text(conn, &mcp_request(&format!("m{n}"), &format!(r#"{{"id":{n}}}"#))));
    }
    assert_eq!(d.sled.mcp_calls_in_flight(), 32);
    let outs = d.text(conn, &mcp_request("m32", r#"{"jsonrpc":"2.0","id":"over","method":"x"}"#));
    assert!(!outs.iter().any(|o| matches!(o, Output::CallMcp(_))));
    let frames = sent(&outs);
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0]["req_id"].as_str(), frames[0]["payload"]["id"].as_str()), (Some("m32"), Some("over")));
    assert_eq!(frames[0]["payload"]["error"]["code"], -32603);
}

#[test]
fn b12_unusable_bodies_are_answered_at_once() {
    let (mut d, conn) = Driver::connected(config());
    for (frame, code) in [
        (r#"{"type":"mcp_request","req_id":"a","payload":{}}"#.to_owned(), -32600),
        (r#"{"type":"mcp_request","req_id":"b","payload":{"body":""}}"#.to_owned(), -32600),
        (r#"{"type":"mcp_request","req_id":"c","payload":{"body":{"id":1}}}"#.to_owned(), -32600),
        (r#"{"type":"mcp_request","req_id":"d"}"#.to_owned(), -32600),
        (mcp_request("e", "{not json"), -32700),
    ] {
        let outs = d.text(conn, &frame);
        let frames = sent(&outs);
        assert_eq!(frames.len(), 1, "{frame}");
        assert_eq!(frames[0]["type"], "mcp_response");
        assert_eq!(frames[0]["payload"]["error"]["code"], code, "{frame}");
        assert_eq!(frames[0]["payload"]["id"], serde_json::Value::Null);
    }
    assert_eq!(d.sled.mcp_calls_in_flight(), 0);
    assert_eq!(d.sled.stats().mcp_rejected, 5);
}

#[test]
fn b12_a_slow_call_times_out_once_and_its_late_reply_is_dropped() {
    let (mut d, conn) = Driver::connected(SledConfig { mcp_timeout: Duration::from_secs(5), ..config() });
    let call = call_of(&d.text(conn, &mcp_request("m", r#"{"id":7}"#)));
    let outs = d.next_timeout();
    assert_eq!(d.now, Instant::from_secs(5));
    assert!(outs.contains(&Output::CancelMcp { call: call.call }));
    let frames = sent(&outs);
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0]["req_id"].as_str(), frames[0]["payload"]["id"].as_i64()), (Some("m"), Some(7)));
    d.sled.handle_mcp_reply(d.now, call.call, McpReply::Response(raw("{}")));
    assert!(sent(&d.drain()).is_empty(), "exactly one answer");
    assert_eq!(d.sled.stats().late_mcp_replies, 1);
}

#[test]
fn b12_replies_after_the_connection_died_are_dropped_and_calls_cancelled() {
    let (mut d, conn) = Driver::connected(config());
    let call = call_of(&d.text(conn, &mcp_request("m", r#"{"id":1}"#)));
    let outs = d.disconnect(conn);
    assert!(outs.contains(&Output::CancelMcp { call: call.call }));
    d.next_timeout();
    d.connect();
    d.sled.handle_mcp_reply(d.now, call.call, McpReply::Response(raw("{}")));
    assert!(sent(&d.drain()).is_empty(), "never answered on a newer connection");
}

fn streamed(req_id: &str, body: &str, session: Option<&str>) -> String {
    json!({"type":"mcp_request","req_id":req_id,"payload":{"body":body,"session":session,"stream":true}}).to_string()
}

fn notices(outs: &[Output]) -> Vec<(Option<String>, serde_json::Value)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::NotifyMcp { session, body } => Some((session.clone(), serde_json::from_str(body).expect("JSON"))),
            _ => None,
        })
        .collect()
}

#[test]
fn b12_calls_beyond_the_limit_wait_in_order_with_deadlines_from_arrival_and_the_queue_is_bounded() {
    let cfg = SledConfig { max_mcp_calls: 2, max_mcp_waiting: 2, mcp_timeout: Duration::from_secs(10), ..config() };
    let (mut d, conn) = Driver::connected(cfg);
    let a = call_of(&d.text(conn, &mcp_request("a", r#"{"id":"a"}"#)));
    let b = call_of(&d.text(conn, &mcp_request("b", r#"{"id":"b"}"#)));
    // Two wait, silently; the fifth is answered at once.
    assert!(
        d.text(conn, &mcp_request("c", r#"{"id":"c"}"#))
            .iter()
            .all(|o| !matches!(o, Output::CallMcp(_) | Output::Send { .. }))
    );
    d.secs(4.0);
    assert!(d.text(conn, &mcp_request("w", r#"{"id":"w"}"#)).iter().all(|o| !matches!(o, Output::Send { .. })));
    let over = sent(&d.text(conn, &mcp_request("x", r#"{"id":"x"}"#)));
    assert_eq!(over.len(), 1);
    assert_eq!(over[0]["payload"]["error"]["message"], "sled busy: 2 local MCP calls in flight and 2 waiting");
    assert_eq!((d.sled.mcp_calls_in_flight(), d.sled.mcp_calls_waiting()), (2, 2));
    // A slot frees: the oldest waiting starts.
    d.sled.handle_mcp_reply(d.now, a.call, McpReply::Response(raw(r#"{"id":"a","result":{}}"#)));
    let c = call_of(&d.drain());
    assert_eq!(c.body, r#"{"id":"c"}"#);
    // Its deadline ran from its arrival: it, and b, time out at 10 s; w (arrived at 4 s) still waits then.
    let outs = d.next_timeout();
    assert_eq!(d.now, Instant::from_secs(10));
    let answered: Vec<String> =
        sent(&outs).iter().filter(|f| f["type"] == "mcp_response").map(|f| f["req_id"].to_string()).collect();
    assert_eq!(answered, [r#""b""#, r#""c""#]);
    assert!(outs.contains(&Output::CancelMcp { call: b.call }) && outs.contains(&Output::CancelMcp { call: c.call }));
    // b and c freed their slots: w starts, with 4 s left.
    let w = call_of(&outs);
    assert_eq!(w.body, r#"{"id":"w"}"#);
    d.next_timeout();
    assert_eq!(d.now, Instant::from_secs(14));
    assert_eq!((d.sled.mcp_calls_in_flight(), d.sled.mcp_calls_waiting()), (0, 0));
    assert_eq!(d.sled.stats().mcp_waited, 2);
}

#[test]
fn b12_a_waiting_call_that_times_out_is_answered_and_never_started() {
    let cfg = SledConfig { max_mcp_calls: 1, mcp_timeout: Duration::from_secs(5), ..config() };
    let (mut d, conn) = Driver::connected(cfg);
    let first = call_of(&d.text(conn, &mcp_request("a", r#"{"id":1}"#)));
    d.text(conn, &mcp_request("b", r#"{"id":2}"#));
    let outs = d.next_timeout();
    assert_eq!(sent(&outs).len(), 2, "both answered at their deadline");
    assert!(outs.contains(&Output::CancelMcp { call: first.call }));
    assert!(!outs.iter().any(|o| matches!(o, Output::CallMcp(_))), "a call past its deadline never starts");
}

#[test]
fn stream_messages_are_relayed_in_order_before_the_answer_and_only_for_streams() {
    let (mut d, conn) = Driver::connected(config());
    let call = call_of(&d.text(conn, &streamed("m1", r#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#, Some("s"))));
    let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
    let sampling = r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}"#;
    d.sled.handle_mcp_message(d.now, call.call, &raw(progress));
    d.sled.handle_mcp_message(d.now, call.call, &raw(sampling));
    d.sled.handle_mcp_reply(d.now, call.call, McpReply::Response(raw(r#"{"jsonrpc":"2.0","id":5,"result":{}}"#)));
    let frames = sent(&d.drain());
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap_or_default()).collect();
    assert_eq!(kinds, ["mcp_message", "mcp_message", "mcp_response"]);
    assert!(frames.iter().all(|f| f["req_id"] == "m1"));
    assert_eq!(frames[0]["payload"]["params"]["progress"], 1);
    assert_eq!(frames[1]["payload"]["method"], "sampling/createMessage");
    assert_eq!(d.sled.stats().mcp_messages, 2);
    // A message after the end is dropped.
    d.sled.handle_mcp_message(d.now, call.call, &raw(progress));
    assert!(sent(&d.drain()).is_empty());
}

#[test]
fn without_a_stream_a_request_from_the_server_is_answered_with_an_error_and_notifications_are_dropped() {
    let (mut d, conn) = Driver::connected(config());
    let call = call_of(&d.text(conn, &mcp_request("m1", r#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#)));
    d.sled.handle_mcp_message(d.now, call.call, &raw(r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#));
    d.sled.handle_mcp_message(d.now, call.call, &raw(r#"{"jsonrpc":"2.0","id":"e1","method":"elicitation/create"}"#));
    let outs = d.drain();
    assert!(sent(&outs).is_empty(), "an old gateway sees nothing new");
    let n = notices(&outs);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].1["id"], "e1");
    assert_eq!(n[0].1["error"]["code"], -32601);
    assert_eq!(d.sled.stats().mcp_messages_dropped, 2);
}

#[test]
fn a_message_too_large_for_a_frame_is_not_sent_and_a_request_among_them_is_answered() {
    let (mut d, conn) = Driver::connected(SledConfig { max_frame_bytes: 200, ..config() });
    let call = call_of(&d.text(conn, &streamed("m1", r#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#, None)));
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"sampling/createMessage","params":{{"x":"{}"}}}}"#,
        "y".repeat(300)
    );
    d.sled.handle_mcp_message(d.now, call.call, &raw(&big));
    let outs = d.drain();
    assert!(sent(&outs).is_empty());
    let n = notices(&outs);
    assert_eq!((n[0].1["id"].as_i64(), n[0].1["error"]["code"].as_i64()), (Some(9), Some(-32601)));
}

#[test]
fn a_cancelled_exchange_is_stopped_upstream_told_to_the_server_and_never_answered() {
    let (mut d, conn) = Driver::connected(SledConfig { max_mcp_calls: 1, ..config() });
    let call = call_of(&d.text(conn, &streamed("m1", r#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#, Some("s"))));
    d.text(conn, &streamed("m2", r#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#, Some("s")));
    let outs = d.text(conn, r#"{"type":"mcp_cancel","req_id":"m1","payload":{"reason":"client went away"}}"#);
    assert!(outs.contains(&Output::CancelMcp { call: call.call }));
    let n = notices(&outs);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].0.as_deref(), Some("s"));
    assert_eq!(
        n[0].1,
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5,"reason":"client went away"}})
    );
    // Its slot went to the waiting one.
    assert_eq!(call_of(&outs).body, r#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#);
    d.sled.handle_mcp_reply(d.now, call.call, McpReply::Response(raw(r#"{"id":5}"#)));
    assert!(sent(&d.drain()).is_empty(), "a cancelled exchange gets no mcp_response");
    // A waiting one cancelled is never started; an unknown one is ignored.
    d.text(conn, &streamed("m3", r#"{"jsonrpc":"2.0","id":7,"method":"x"}"#, None));
    let outs = d.text(conn, r#"{"type":"mcp_cancel","req_id":"m3","payload":{}}"#);
    assert!(outs.iter().all(|o| !matches!(o, Output::CancelMcp { .. } | Output::NotifyMcp { .. })));
    assert_eq!(d.sled.mcp_calls_waiting(), 0);
    let outs = d.text(conn, r#"{"type":"mcp_cancel","req_id":"nope","payload":{}}"#);
    assert!(outs.contains(&Output::Event(Event::FrameIgnored(Ignored::UnmatchedCancel))));
    assert_eq!(d.sled.stats().mcp_cancelled, 2);
}

#[test]
fn an_initialize_is_never_cancelled_upstream() {
    let (mut d, conn) = Driver::connected(config());
    let call = call_of(&d.text(conn, &streamed("m1", r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#, Some("s"))));
    let outs = d.text(conn, r#"{"type":"mcp_cancel","req_id":"m1","payload":{}}"#);
    assert!(outs.contains(&Output::CancelMcp { call: call.call }));
    assert!(notices(&outs).is_empty());
}

#[test]
fn a_standalone_stream_relays_until_it_ends_or_its_session_ends_and_is_bounded() {
    let (mut d, conn) = Driver::connected(SledConfig { max_mcp_streams: 1, ..config() });
    let outs = d.text(conn, r#"{"type":"mcp_listen","req_id":"l1","payload":{"session":"s"}}"#);
    let listen = outs
        .iter()
        .find_map(|o| match o {
            Output::ListenMcp(l) => Some(l.clone()),
            _ => None,
        })
        .expect("a GET to open");
    assert_eq!(listen.session.as_deref(), Some("s"));
    // Accepted by the local server: the gateway hears it first, as a message of `null`.
    d.sled.handle_mcp_opened(d.now, listen.call);
    assert_eq!(sent(&d.drain()), vec![json!({"type":"mcp_message","req_id":"l1","payload":null})]);
    // A second is over the budget: ended at once.
    let over = sent(&d.text(conn, r#"{"type":"mcp_listen","req_id":"l2","payload":{"session":"t"}}"#));
    assert_eq!((over[0]["type"].as_str(), over[0]["req_id"].as_str()), (Some("mcp_response"), Some("l2")));
    d.sled.handle_mcp_message(d.now, listen.call, &raw(r#"{"jsonrpc":"2.0","method":"notifications/message"}"#));
    assert_eq!(sent(&d.drain())[0]["type"], "mcp_message");
    // The session ends: the stream ends with it, and the adapter is told to end the local session.
    let outs = d.text(conn, r#"{"type":"mcp_session_end","req_id":"","payload":{"session":"s"}}"#);
    assert!(outs.contains(&Output::CancelMcp { call: listen.call }));
    assert!(outs.contains(&Output::EndMcpSession { session: "s".into() }));
    assert_eq!(sent(&outs), vec![json!({"type":"mcp_response","req_id":"l1","payload":null})]);
    assert_eq!(d.sled.mcp_streams_open(), 0);
    // A local server without a standalone stream: the end says so with -32601.
    let outs = d.text(conn, r#"{"type":"mcp_listen","req_id":"l3","payload":{}}"#);
    let l3 = outs.iter().find_map(|o| if let Output::ListenMcp(l) = o { Some(l.call) } else { None }).expect("GET");
    d.sled.handle_mcp_reply(d.now, l3, McpReply::NoStream);
    assert_eq!(sent(&d.drain())[0]["payload"]["error"]["code"], -32601);
}

fn listen_of(outs: &[Output]) -> McpListen {
    outs.iter().find_map(|o| if let Output::ListenMcp(l) = o { Some(l.clone()) } else { None }).expect("a GET to open")
}

fn calls_of(outs: &[Output]) -> Vec<String> {
    outs.iter().filter_map(|o| if let Output::CallMcp(c) = o { Some(c.body.clone()) } else { None }).collect()
}

#[test]
fn a_sessions_calls_follow_its_stream_to_the_local_server_and_other_sessions_pass() {
    let (mut d, conn) = Driver::connected(config());
    let listen = listen_of(&d.text(conn, r#"{"type":"mcp_listen","req_id":"l1","payload":{"session":"s"}}"#));
    // The gateway sent the stream first: the session's calls wait until the local server opened it.
    let first = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#;
    let second = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    assert!(calls_of(&d.text(conn, &streamed("m1", first, Some("s")))).is_empty(), "after its stream");
    assert!(calls_of(&d.text(conn, &streamed("m2", second, Some("s")))).is_empty());
    // Another session's, and one of no session, do not wait.
    let other = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#;
    assert_eq!(calls_of(&d.text(conn, &streamed("m3", other, Some("t")))), [other]);
    assert_eq!(calls_of(&d.text(conn, &mcp_request("m4", r#"{"id":4}"#))), [r#"{"id":4}"#]);
    assert_eq!((d.sled.mcp_calls_in_flight(), d.sled.mcp_calls_waiting()), (2, 2));
    // Open: the gateway hears so first, then the two calls go, in their order.
    d.sled.handle_mcp_opened(d.now, listen.call);
    let outs = d.drain();
    assert_eq!(sent(&outs), vec![json!({"type":"mcp_message","req_id":"l1","payload":null})]);
    assert_eq!(calls_of(&outs), [first, second]);
    assert_eq!(d.sled.stats().mcp_followed_stream, 2);
    // An open stream holds nothing back.
    assert_eq!(calls_of(&d.text(conn, &streamed("m5", second, Some("s")))), [second]);
}

#[test]
fn a_stream_that_does_not_open_holds_its_sessions_calls_only_so_long() {
    let wait = Duration::from_millis(500);
    let (mut d, conn) = Driver::connected(SledConfig { mcp_stream_open_wait: wait, ..config() });
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#;
    // One that never opens: the call goes at the end of the wait (and not before), its deadline unchanged.
    d.text(conn, r#"{"type":"mcp_listen","req_id":"l1","payload":{"session":"s"}}"#);
    assert!(calls_of(&d.text(conn, &streamed("m1", body, Some("s")))).is_empty());
    assert!(calls_of(&d.advance(wait - Duration::from_millis(1))).is_empty());
    assert_eq!(calls_of(&d.advance(Duration::from_millis(1))), [body]);
    // One that ends without opening (the server has none): the call goes at once.
    let l2 = listen_of(&d.text(conn, r#"{"type":"mcp_listen","req_id":"l2","payload":{"session":"u"}}"#));
    assert!(calls_of(&d.text(conn, &streamed("m2", body, Some("u")))).is_empty());
    d.sled.handle_mcp_reply(d.now, l2.call, McpReply::NoStream);
    assert_eq!(calls_of(&d.drain()), [body]);
    // One the gateway cancels: likewise.
    d.text(conn, r#"{"type":"mcp_listen","req_id":"l3","payload":{"session":"v"}}"#);
    assert!(calls_of(&d.text(conn, &streamed("m3", body, Some("v")))).is_empty());
    assert_eq!(calls_of(&d.text(conn, r#"{"type":"mcp_cancel","req_id":"l3","payload":{}}"#)), [body]);
    // With no room to wait, a call goes ahead as before rather than being refused.
    let (mut d, conn) = Driver::connected(SledConfig { max_mcp_waiting: 0, ..config() });
    d.text(conn, r#"{"type":"mcp_listen","req_id":"l1","payload":{"session":"s"}}"#);
    assert_eq!(calls_of(&d.text(conn, &streamed("m1", body, Some("s")))), [body]);
    // And a lost link forgets every stream: nothing waits on a new connection.
    let (mut d, conn) = Driver::connected(config());
    d.text(conn, r#"{"type":"mcp_listen","req_id":"l1","payload":{"session":"s"}}"#);
    d.text(conn, &streamed("m1", body, Some("s")));
    let outs = d.disconnect(conn);
    assert!(calls_of(&outs).is_empty(), "the waiting call never starts");
    assert_eq!((d.sled.mcp_calls_in_flight(), d.sled.mcp_calls_waiting(), d.sled.mcp_streams_open()), (0, 0, 0));
}

#[test]
fn a_repeated_exchange_id_is_answered_at_once_and_the_first_keeps_it() {
    let (mut d, conn) = Driver::connected(config());
    call_of(&d.text(conn, &mcp_request("m", r#"{"id":1}"#)));
    let outs = d.text(conn, &mcp_request("m", r#"{"id":2}"#));
    assert!(outs.contains(&Output::Event(Event::FrameIgnored(Ignored::DuplicateExchange))));
    assert!(!outs.iter().any(|o| matches!(o, Output::CallMcp(_))));
    // Still one answer per mcp_request: an error with its own id, at once.
    let frames = sent(&outs);
    assert_eq!(
        (frames[0]["payload"]["id"].as_i64(), frames[0]["payload"]["error"]["code"].as_i64()),
        (Some(2), Some(-32600))
    );
}

#[test]
fn losing_the_link_stops_every_call_upstream_and_drops_those_waiting() {
    let (mut d, conn) = Driver::connected(SledConfig { max_mcp_calls: 1, ..config() });
    let call = call_of(&d.text(conn, &streamed("m1", r#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#, Some("s"))));
    d.text(conn, &mcp_request("m2", r#"{"id":6}"#));
    let outs = d.disconnect(conn);
    assert!(outs.contains(&Output::CancelMcp { call: call.call }));
    assert_eq!(notices(&outs)[0].1["params"]["requestId"], 5);
    assert!(!outs.iter().any(|o| matches!(o, Output::CallMcp(_))), "the waiting one never starts");
    assert_eq!((d.sled.mcp_calls_in_flight(), d.sled.mcp_calls_waiting()), (0, 0));
}

// ── 13. Shutdown ─────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn b13_shutdown_denies_answers_closes_and_never_reconnects() {
    let (mut d, conn) = Driver::connected(config());
    let (sent_key, _) = d.request("r", "Bash");
    let call = call_of(&d.text(conn, &mcp_request("m", r#"{"id":2}"#)));
    d.sled.shutdown(d.now);
    let outs = d.drain();
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), vec![(sent_key, Cause::Shutdown)]);
    assert_eq!(sent_types(&outs), ["perm_cancel", "mcp_response"]);
    assert_eq!(sent(&outs)[1]["payload"]["error"]["message"], "sled is shutting down");
    // Answered, then stopped upstream: the local server is told to stop working on it.
    assert!(outs.contains(&Output::CancelMcp { call: call.call }));
    assert!(
        outs.iter().any(|o| matches!(o, Output::NotifyMcp { body, .. } if body.contains("notifications/cancelled")))
    );
    let close = outs.iter().position(|o| *o == Output::Close { conn, code: 1000, reason: "shutdown" });
    let last_send = outs.iter().rposition(|o| matches!(o, Output::Send { .. }));
    assert!(close > last_send, "close comes after the last frame: {outs:?}");
    assert_eq!(d.sled.link_state(), LinkState::Closed);
    assert_eq!(d.sled.poll_timeout(), None);
    let (_, outs) = d.request("after", "Bash");
    assert_eq!(decided(&outs)[0].cause, Cause::Shutdown);
    assert!(d.secs(3600.0).is_empty());
    d.sled.shutdown(d.now);
    assert!(d.drain().is_empty(), "shutdown twice is harmless");
}

#[test]
fn b13_shutdown_while_backing_off_denies_the_queue() {
    let (mut d, _) = Driver::new(config());
    let (key, _) = d.request("q", "Bash");
    let conn = d.pending_connect.take().expect("attempt");
    d.sled.handle_connect_failed(d.now, conn, ConnectError::Other);
    d.drain();
    d.sled.shutdown(d.now);
    let outs = d.drain();
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), vec![(key, Cause::Shutdown)]);
    assert!(sent(&outs).is_empty());
}

// ── 15. A refusal is told at once ────────────────────────────────────────────────────────────────────────

fn causes(outs: &[Output]) -> Vec<(String, Cause)> {
    decided(outs).iter().map(|x| (x.id.clone(), x.cause)).collect()
}

#[test]
fn b15_a_refusal_denies_everything_pending_and_every_request_while_backing_off() {
    let (mut d, conn) = Driver::connected(config());
    let (_, _) = d.request("sent", "Bash");
    d.sled.handle_closed(d.now, conn, 4003);
    let outs = d.drain();
    let refused = Cause::Refused(Refusal::ProjectNotPermitted);
    assert_eq!(causes(&outs), vec![("sent".to_owned(), refused)]);
    assert_eq!(refused.describe(), "this sled's token does not cover its project");
    assert!(outs.contains(&Output::Event(Event::Standing(Some(Refusal::ProjectNotPermitted)))), "{outs:?}");
    // The next attempt waits the cap; meanwhile every request is denied at once, with the cause.
    assert_eq!(delay_of(&outs), Duration::from_secs(60));
    d.secs(59.0);
    let (_, outs) = d.request("while-refused", "Bash");
    assert_eq!(causes(&outs), vec![("while-refused".to_owned(), refused)]);
    assert_eq!(d.sled.refusal(), Some(Refusal::ProjectNotPermitted));
    // The next attempt is made: what is asked while it is under way is sent on it...
    d.secs(1.0);
    let (_, outs) = d.request("during-attempt", "Bash");
    assert!(decided(&outs).is_empty(), "{outs:?}");
    let (conn, outs) = d.connect();
    assert_eq!(sent_types(&outs), ["identity", "perm_request"]);
    // ...and denied with the refusal when it is refused again.
    d.sled.handle_closed(d.now, conn, 4010);
    let outs = d.drain();
    assert_eq!(causes(&outs), vec![("during-attempt".to_owned(), Cause::Refused(Refusal::Revoked))]);
    assert!(outs.contains(&Output::Event(Event::Standing(Some(Refusal::Revoked)))), "{outs:?}");
    // Accepted at last: the gateway's first frame ends the refusal; requests wait for decisions again.
    d.secs(60.0);
    let (conn, _) = d.connect();
    assert_eq!(d.sled.refusal(), Some(Refusal::Revoked), "not accepted yet: nothing came on the connection");
    let outs = d.text(conn, r#"{"type":"resume_accepted","req_id":"","payload":{}}"#);
    assert!(outs.contains(&Output::Event(Event::Standing(None))), "{outs:?}");
    assert_eq!(d.sled.refusal(), None);
    let (_, outs) = d.request("accepted", "Bash");
    assert!(decided(&outs).is_empty());
    assert_eq!(sent_types(&outs), ["perm_request"]);
}

#[test]
fn b15_refusals_at_the_handshake_and_kept_requests() {
    // A wrong path: a 404 at the handshake; queued requests are denied with it at once.
    let (mut d, _) = Driver::new(config());
    let (_, _) = d.request("queued", "Bash");
    let conn = d.pending_connect.take().expect("attempt");
    d.sled.handle_connect_failed(d.now, conn, ConnectError::NotFound);
    let outs = d.drain();
    assert_eq!(causes(&outs), vec![("queued".to_owned(), Cause::Refused(Refusal::NotFound))]);
    assert_eq!(delay_of(&outs), Duration::from_secs(60));
    // Requests kept across a drop for `resume` are denied by a refusal on the next connection too.
    let (mut d, conn) = Driver::connected(config());
    d.text(conn, r#"{"type":"resume_accepted","req_id":"","payload":{}}"#);
    d.request("kept", "Bash");
    d.disconnect(conn);
    assert_eq!(d.sled.kept_permissions(), 1);
    d.next_timeout();
    let (conn, _) = d.connect();
    d.sled.handle_closed(d.now, conn, 4003);
    let outs = d.drain();
    assert_eq!(causes(&outs), vec![("kept".to_owned(), Cause::Refused(Refusal::ProjectNotPermitted))]);
    assert_eq!((d.sled.pending_permissions(), d.sled.kept_bytes()), (0, 0));
}

#[test]
fn b15_a_project_held_elsewhere_backs_off_as_usual_and_a_stable_connection_ends_the_refusal() {
    let (mut d, conn) = Driver::connected(SledConfig { resume: false, ..config() });
    d.sled.handle_closed(d.now, conn, 4009);
    let outs = d.drain();
    assert_eq!(delay_of(&outs), Duration::from_secs(1), "4009 can end by itself: no cap");
    assert_eq!(d.sled.refusal(), Some(Refusal::ProjectHeld));
    d.next_timeout();
    let (conn, _) = d.connect();
    // A gateway that sends nothing (no `resume`): after the stability window the connection counts as accepted.
    let at = d.now + Duration::from_secs(30);
    let mut outs = Vec::new();
    while d.now < at {
        let o = d.next_timeout();
        if o.contains(&Output::Ping { conn }) {
            d.sled.handle_received(d.now, conn, Received::Pong);
        }
        outs.extend(o);
    }
    assert_eq!(d.now, at, "a timer is armed for the stability window");
    assert!(outs.contains(&Output::Event(Event::Standing(None))), "{outs:?}");
    assert_eq!(d.sled.refusal(), None);
    // Other close codes are no refusal.
    for code in [1000, 1001, 1008, 1012, 4000, 4008] {
        let (mut d, conn) = Driver::connected(config());
        d.request("r", "Bash");
        d.sled.handle_closed(d.now, conn, code);
        let outs = d.drain();
        assert_eq!(causes(&outs), vec![("r".to_owned(), Cause::ConnectionLost)], "close {code}");
        assert_eq!(d.sled.refusal(), None);
    }
}

// ── Time handling ────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn early_repeated_and_backwards_timer_calls_are_harmless() {
    let (mut d, conn) = Driver::connected(config());
    d.request("r", "Bash");
    for t in [0, 1, 1, 5, 9] {
        d.sled.handle_timeout(Instant::from_secs(t));
        assert!(actions(&d.drain()).is_empty());
    }
    d.sled.handle_timeout(Instant::from_secs(10));
    assert_eq!(sent_types(&d.drain()), ["heartbeat"]);
    d.sled.handle_timeout(Instant::from_secs(10));
    // Time going backwards is treated as "no time passed".
    d.sled.handle_timeout(Instant::from_secs(3));
    assert!(actions(&d.drain()).is_empty());
    assert_eq!(d.sled.connection(), Some(conn));
}

#[test]
fn config_errors_are_reported() {
    let bad = |f: fn(&mut SledConfig)| {
        let mut c = SledConfig::new("p");
        f(&mut c);
        Sled::new(c, Instant::ZERO).err()
    };
    assert_eq!(bad(|c| c.heartbeat_interval = Duration::ZERO), Some(ConfigError::Zero("heartbeat_interval")));
    assert_eq!(bad(|c| c.idle_timeout = c.heartbeat_interval), Some(ConfigError::IdleNotAboveHeartbeat));
    assert_eq!(bad(|c| c.backoff_max = Duration::from_millis(10)), Some(ConfigError::BackoffMaxBelowInitial));
    assert_eq!(bad(|c| c.max_mcp_calls = 0), Some(ConfigError::Zero("max_mcp_calls")));
    assert_eq!(bad(|c| c.project.clear()), Some(ConfigError::EmptyProject));
    assert_eq!(bad(|_| {}), None);
}

#[test]
fn a_repeated_connected_report_for_the_live_connection_changes_nothing() {
    let (mut d, conn) = Driver::connected(config());
    d.request("r", "Bash");
    d.sled.handle_connected(d.now, conn);
    assert!(d.drain().is_empty(), "the live connection must not be closed or re-identified");
    assert_eq!(d.sled.connection(), Some(conn));
    assert_eq!(d.sled.pending_permissions(), 1);
}

#[test]
fn a_zero_back_off_reconnects_within_the_same_input() {
    // A 1 µs ceiling with jitter draws 0 or 1 µs; whichever it is, nothing due is left for a later call.
    let cfg = SledConfig {
        backoff_initial: Duration::from_micros(1),
        backoff_max: Duration::from_micros(1),
        seed: 3,
        ..SledConfig::new("p")
    };
    let (mut d, _) = Driver::new(cfg);
    for _ in 0..50 {
        let conn = d.pending_connect.take().expect("attempt");
        d.sled.handle_connect_failed(d.now, conn, ConnectError::Other);
        let outs = d.drain();
        if delay_of(&outs).is_zero() {
            assert!(outs.iter().any(|o| matches!(o, Output::Connect { .. })), "{outs:?}");
        } else {
            d.next_timeout();
        }
        assert!(d.sled.poll_timeout().is_some_and(|at| at > d.now), "a due timer was left behind");
    }
}

// ── Reports about the wrong connection, and counters (gaps found by cargo-mutants) ──────────────────────

#[test]
fn reports_naming_another_connection_change_nothing() {
    let (mut d, _) = Driver::new(config());
    let attempt = d.pending_connect.take().expect("attempt");
    let other = uplink_proto::ConnId(attempt.0 + 7);
    // While connecting: success or failure of another attempt is not ours.
    d.sled.handle_connected(d.now, other);
    assert_eq!(d.drain(), vec![Output::Close { conn: other, code: 1000, reason: "stale connection" }]);
    d.sled.handle_connect_failed(d.now, other, ConnectError::Other);
    d.sled.handle_disconnected(d.now, other);
    assert!(d.drain().is_empty());
    assert!(matches!(d.sled.link_state(), LinkState::Connecting { conn, .. } if conn == attempt));
    // Connected: a disconnect or failure for another connection is ignored.
    d.sled.handle_connected(d.now, attempt);
    d.drain();
    d.sled.handle_disconnected(d.now, other);
    d.sled.handle_connect_failed(d.now, attempt, ConnectError::Other);
    assert!(d.drain().is_empty());
    assert_eq!(d.sled.connection(), Some(attempt));
    assert_eq!(d.sled.stats().stale_inputs, 5);
}

#[test]
fn a_disconnect_during_the_attempt_is_a_failed_attempt() {
    let (mut d, _) = Driver::new(config());
    let attempt = d.pending_connect.take().expect("attempt");
    let outs = d.disconnect(attempt);
    assert!(outs.contains(&Output::Event(Event::Link(LinkState::BackingOff {
        delay: Duration::from_secs(1),
        reason: LossReason::ConnectFailed
    }))));
}

#[test]
fn counters_count() {
    let (mut d, _) = Driver::new(config());
    let first = d.pending_connect.take().expect("attempt");
    d.sled.handle_connect_failed(d.now, first, ConnectError::Other);
    d.next_timeout();
    let (conn, _) = d.connect();
    d.request("a", "Bash");
    d.text(conn, &perm_response("a", true, false));
    d.text(conn, r#"{"type":"heartbeat"}"#);
    let s = d.sled.stats().clone();
    assert_eq!((s.connects, s.connections), (2, 1));
    assert_eq!((s.frames_sent, s.frames_received), (2, 2), "identity and perm_request out; two frames in");
    assert_eq!(s.unknown_frames, 1);
}

#[test]
fn a_connected_report_for_another_connection_while_connected_is_refused() {
    let (mut d, live) = Driver::connected(config());
    let other = uplink_proto::ConnId(live.0 + 3);
    d.sled.handle_connected(d.now, other);
    assert_eq!(d.drain(), vec![Output::Close { conn: other, code: 1000, reason: "stale connection" }]);
    d.sled.handle_connected(d.now, live);
    assert!(d.drain().is_empty(), "a repeated report for the live connection changes nothing");
    assert_eq!(d.sled.stats().stale_inputs, 2);
    assert_eq!(d.sled.connection(), Some(live));
}

// ── Wire ids minted by the core ──────────────────────────────────────────────────────────────────────────

#[test]
fn minted_wire_ids_come_from_the_seed_count_up_and_never_repeat() {
    let ids = |seed: u64| {
        let mut cfg = config();
        cfg.seed = seed;
        let mut sled = Sled::new(cfg, Instant::ZERO).expect("valid");
        let input = || uplink_proto::RawValue::from_string("{}".to_owned()).expect("JSON");
        let keys: Vec<_> = (0..3).map(|_| sled.request_permission(Instant::ZERO, "Bash".into(), input())).collect();
        sled.shutdown(Instant::ZERO);
        let mut ids = Vec::new();
        while let Some(out) = sled.poll_output() {
            if let Output::Decided(d) = out {
                assert!(keys.contains(&d.key));
                ids.push(d.id);
            }
        }
        ids
    };
    let a = ids(7);
    assert_eq!(a.len(), 3);
    let prefix = a[0].split_once('-').expect("PREFIX-N").0.to_owned();
    assert!(prefix.len() == 8 && prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{a:?}");
    assert_eq!(a, [format!("{prefix}-1"), format!("{prefix}-2"), format!("{prefix}-3")]);
    assert_eq!(ids(7), a, "the same seed gives the same ids");
    assert_ne!(ids(8)[0].split_once('-').expect("PREFIX-N").0, prefix, "another seed, another prefix");
}

#[test]
fn an_oversized_message_closes_the_connection_with_1009_denies_what_was_in_flight_and_reconnects() {
    let (mut d, _) = Driver::new(config());
    let (conn, _) = d.connect();
    let (key, _) = d.request("r1", "Bash");
    d.sled.handle_too_big(d.now, conn);
    let outs = d.drain();
    assert!(outs.contains(&Output::Close { conn, code: 1009, reason: "message too big" }), "{outs:?}");
    let denied = decided(&outs);
    assert_eq!((denied.len(), denied[0].key, denied[0].cause), (1, key, Cause::ConnectionLost));
    assert!(matches!(
        d.sled.link_state(),
        LinkState::BackingOff { reason: LossReason::MessageTooBig, .. } | LinkState::Connecting { .. }
    ));
    // A report naming a connection that is no longer live changes nothing.
    d.sled.handle_too_big(d.now, conn);
    assert!(d.drain().is_empty());
}

#[test]
fn a_withdrawn_request_is_cancelled_at_the_gateway_denied_once_and_frees_its_place() {
    let mut cfg = config();
    cfg.max_pending_permissions = 1;
    let (mut d, _) = Driver::new(cfg);
    // Queued (not yet sent): withdrawn without a frame.
    let (queued, _) = d.request("q1", "Bash");
    d.sled.withdraw(d.now, queued);
    let outs = d.drain();
    assert!(sent(&outs).is_empty(), "{outs:?}");
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(queued, Cause::Withdrawn)]);
    // Sent: a perm_cancel withdraws it at the gateway, and the one place in the queue is free again.
    let (conn, _) = d.connect();
    let (key, _) = d.request("r1", "Bash");
    d.sled.withdraw(d.now, key);
    let outs = d.drain();
    let frames = sent(&outs);
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0]["type"].as_str(), frames[0]["req_id"].as_str()), (Some("perm_cancel"), Some("r1")));
    assert_eq!(frames[0]["payload"]["reason"], "withdrawn");
    assert_eq!(decided(&outs)[0].cause, Cause::Withdrawn);
    let (again, outs) = d.request("r2", "Bash");
    assert!(decided(&outs).is_empty(), "the queue has room again");
    // A late answer for the withdrawn one decides nothing; withdrawing twice, or a decided key, does nothing.
    d.sled.handle_received(
        d.now,
        conn,
        Received::Text(r#"{"type":"perm_response","req_id":"r1","payload":{"approved":true}}"#),
    );
    d.sled.withdraw(d.now, key);
    let outs = d.drain();
    assert!(decided(&outs).is_empty() && sent(&outs).is_empty(), "{outs:?}");
    assert_eq!(d.sled.pending_permissions(), 1);
    let _ = again;
}

#[test]
fn every_cause_has_a_word_and_a_sentence_of_its_own() {
    use std::collections::BTreeSet;
    let all = [
        Cause::Response,
        Cause::Timeout,
        Cause::ConnectionLost,
        Cause::QueueFull,
        Cause::DuplicateId,
        Cause::InvalidId,
        Cause::Disabled,
        Cause::Shutdown,
        Cause::Withdrawn,
        Cause::TooLarge,
    ];
    let words: BTreeSet<&str> = all.iter().map(|c| c.as_str()).collect();
    let sentences: BTreeSet<&str> = all.iter().map(|c| c.describe()).collect();
    assert_eq!((words.len(), sentences.len()), (all.len(), all.len()));
    assert!(words.iter().all(|w| w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')), "{words:?}");
    assert_eq!(Cause::Disabled.to_string(), "no_gateway");
}

#[test]
fn a_request_too_large_for_a_frame_is_denied_at_once_and_one_that_fits_is_sent() {
    let mut cfg = config();
    cfg.max_frame_bytes = 200;
    let (mut d, conn) = Driver::connected(cfg);
    let frame_for = |pad: usize| {
        let input = raw(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad)));
        let frame =
            uplink_proto::SledFrame::PermRequest { req_id: "r".into(), tool_name: "Bash".into(), tool_input: &input };
        (input.clone(), frame.encode().len())
    };
    // Find the largest input that fits exactly, from the encoder itself.
    let fitting = (0..200).rev().find(|pad| frame_for(*pad).1 <= 200).expect("some input fits");
    let (input, len) = frame_for(fitting);
    assert!(len <= 200);
    let key = d.sled.request_permission_with_id(d.now, "r".into(), "Bash".into(), input);
    let outs = d.drain();
    assert_eq!(sent(&outs).len(), 1, "the fitting request is sent");
    assert!(decided(&outs).is_empty());
    let (input, _) = frame_for(fitting + 1);
    let big = d.sled.request_permission_with_id(d.now, "r2".into(), "Bash".into(), input);
    let outs = d.drain();
    assert!(sent(&outs).is_empty(), "nothing too large is sent");
    assert_eq!(decided(&outs).iter().map(|x| (x.key, x.cause)).collect::<Vec<_>>(), [(big, Cause::TooLarge)]);
    assert_eq!(d.sled.pending_permissions(), 1);
    let _ = (key, conn);
}

#[test]
fn a_local_mcp_answer_too_large_for_a_frame_is_answered_with_an_error_carrying_its_id() {
    let mut cfg = config();
    cfg.max_frame_bytes = 300;
    let (mut d, conn) = Driver::connected(cfg);
    let outs = d.text(
        conn,
        r#"{"type":"mcp_request","req_id":"mcp-1","payload":{"body":"{\"jsonrpc\":\"2.0\",\"id\":41,\"method\":\"tools/call\"}"}}"#,
    );
    let call = call_of(&outs);
    let big = raw(&format!(r#"{{"jsonrpc":"2.0","id":41,"result":{{"pad":"{}"}}}}"#, "x".repeat(400)));
    d.sled.handle_mcp_reply(d.now, call.call, McpReply::Response(big));
    let frames = sent(&d.drain());
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0]["type"].as_str(), frames[0]["req_id"].as_str()), (Some("mcp_response"), Some("mcp-1")));
    assert_eq!(frames[0]["payload"]["id"], 41);
    assert!(frames[0]["payload"]["error"]["message"].as_str().is_some_and(|m| m.contains("frame limit")), "{frames:?}");
    assert_eq!(d.sled.stats().mcp_too_large, 1);
    // The link is untouched.
    assert!(matches!(d.sled.link_state(), LinkState::Connected { .. }));
}

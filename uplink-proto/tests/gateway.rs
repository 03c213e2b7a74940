//! Scenario tests of the gateway session machine, one or more per rule, with explicit time.

use std::time::Duration;

use serde_json::{Value, json};
use uplink_proto::gateway::{
    CloseReason, DecideError, McpFailure, McpId, PermId, SendMcpError, SessionConfig, SessionEvent, SessionIgnored,
    SessionLimit, SessionOutput, SledSession, Withdrawn,
};
use uplink_proto::{Decision, Instant, Received};

const IDENTITY: &str = r#"{"type":"identity","req_id":"identity","payload":{"project":"p1","protocol":1,"sled_version":"9","capabilities":["perm_cancel"]}}"#;

struct G {
    gw: SledSession,
    now: Instant,
}

impl G {
    fn new(cfg: SessionConfig) -> G {
        G { gw: SledSession::new(cfg, Instant::ZERO).expect("valid"), now: Instant::ZERO }
    }
    fn identified(cfg: SessionConfig) -> G {
        let mut g = G::new(cfg);
        g.text(IDENTITY);
        g
    }
    fn drain(&mut self) -> Vec<SessionOutput> {
        std::iter::from_fn(|| self.gw.poll_output()).collect()
    }
    fn text(&mut self, text: &str) -> Vec<SessionOutput> {
        self.gw.handle_received(self.now, Received::Text(text));
        self.drain()
    }
    fn at(&mut self, secs: f64) -> Vec<SessionOutput> {
        self.now = Instant::from_micros((secs * 1e6) as u64);
        self.gw.handle_timeout(self.now);
        self.drain()
    }
    fn perm_request(&mut self, req_id: &str, tool: &str) -> Vec<SessionOutput> {
        self.text(
            &json!({"type":"perm_request","req_id":req_id,"payload":{"tool_name":tool,"tool_input":{"x":1}}})
                .to_string(),
        )
    }
}

fn events(outs: &[SessionOutput]) -> Vec<SessionEvent> {
    outs.iter()
        .filter_map(|o| match o {
            SessionOutput::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn sent(outs: &[SessionOutput]) -> Vec<Value> {
    outs.iter()
        .filter_map(|o| match o {
            SessionOutput::Send(t) => Some(serde_json::from_str(t).expect("JSON")),
            _ => None,
        })
        .collect()
}

fn requested(outs: &[SessionOutput]) -> PermId {
    events(outs)
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::PermissionRequested { perm, .. } => Some(perm),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no request in {outs:?}"))
}

#[test]
fn identity_first_is_announced_with_its_extras_then_heartbeats() {
    let mut g = G::new(SessionConfig::default());
    assert_eq!(g.gw.project(), None);
    let outs = g.text(IDENTITY);
    assert_eq!(
        events(&outs),
        vec![SessionEvent::Identified {
            project: "p1".into(),
            protocol: Some(1),
            sled_version: Some("9".into()),
            capabilities: vec!["perm_cancel".into()],
            incarnation: None,
        }]
    );
    assert_eq!(g.gw.project(), Some("p1"));
    assert_eq!(events(&g.text(r#"{"type":"heartbeat","req_id":"","payload":null}"#)), vec![SessionEvent::Heartbeat]);
    assert_eq!(events(&g.text(IDENTITY)), vec![SessionEvent::FrameIgnored(SessionIgnored::RepeatedIdentity)]);
}

#[test]
fn anything_but_identity_first_closes_with_policy_violation() {
    for first in [
        r#"{"type":"heartbeat","req_id":"","payload":null}"#,
        r#"{"type":"perm_request","req_id":"r","payload":{"tool_name":"Bash"}}"#,
        "garbage",
        r#"{"type":"identity","payload":{}}"#,
        r#"{"type":"future"}"#,
    ] {
        let mut g = G::new(SessionConfig::default());
        let outs = g.text(first);
        assert_eq!(outs[0], SessionOutput::Close(CloseReason::IdentityNotFirst), "{first}");
        assert!(events(&outs).contains(&SessionEvent::Closed));
        assert!(g.gw.is_closed());
        assert_eq!(g.gw.poll_timeout(), None);
        assert!(g.text(IDENTITY).is_empty(), "nothing after close");
    }
}

#[test]
fn no_identity_in_time_closes() {
    let mut g = G::new(SessionConfig::default());
    assert_eq!(g.gw.poll_timeout(), Some(Instant::from_secs(10)));
    assert!(g.at(9.9).is_empty());
    let outs = g.at(10.0);
    assert_eq!(outs[0], SessionOutput::Close(CloseReason::NoIdentity));
}

#[test]
fn pings_go_out_and_silence_is_reported_stale_then_alive() {
    let mut g = G::identified(SessionConfig::default());
    let mut pings = 0;
    let mut stale_at = None;
    while g.now < Instant::from_secs(40) {
        let at = g.gw.poll_timeout().expect("armed");
        g.now = at;
        g.gw.handle_timeout(at);
        for o in g.drain() {
            match o {
                SessionOutput::Ping => pings += 1,
                SessionOutput::Event(SessionEvent::Stale) => stale_at = Some(g.now),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(pings, 3, "15, 30, 45 s");
    assert_eq!(stale_at, Some(Instant::from_secs(30)));
    assert!(g.gw.is_stale());
    g.gw.handle_received(g.now, Received::Pong);
    assert_eq!(events(&g.drain()), vec![SessionEvent::Alive]);
    assert!(!g.gw.is_stale());
}

#[test]
fn a_sled_that_heartbeats_is_never_pinged_and_a_quiet_one_is_pinged_an_interval_after_its_last_frame() {
    let mut g = G::identified(SessionConfig::default());
    let heartbeat = r#"{"type":"heartbeat","req_id":"","payload":null}"#;
    let mut pings = Vec::new();
    // Heartbeats every 10 s, at 5, 15, 25, 35 s: nothing to ping for.
    let mut next_heartbeat = Instant::from_secs(5);
    while g.now < Instant::from_secs(60) {
        let timer = g.gw.poll_timeout().expect("armed");
        if next_heartbeat <= Instant::from_secs(35) && next_heartbeat <= timer {
            g.now = next_heartbeat;
            g.gw.handle_received(g.now, Received::Text(heartbeat));
            next_heartbeat = next_heartbeat + Duration::from_secs(10);
        } else {
            g.now = timer;
            g.gw.handle_timeout(timer);
        }
        for o in g.drain() {
            match o {
                SessionOutput::Ping => pings.push(g.now),
                SessionOutput::Event(SessionEvent::Heartbeat | SessionEvent::Stale) => {}
                other => panic!("{other:?}"),
            }
        }
    }
    // The last heartbeat was at 35 s: pings once it has been quiet for the ping interval (15 s), at 50 s,
    // then at 65 s.
    assert_eq!(pings, vec![Instant::from_secs(50), Instant::from_secs(65)]);
}

#[test]
fn a_permission_is_decided_once_and_a_second_decision_is_refused() {
    let mut g = G::identified(SessionConfig::default());
    let outs = g.perm_request("r1", "Bash");
    let perm = requested(&outs);
    match &events(&outs)[0] {
        SessionEvent::PermissionRequested { req_id, tool_name, tool_input, .. } => {
            assert_eq!((req_id.as_str(), tool_name.as_str(), &**tool_input), ("r1", "Bash", r#"{"x":1}"#));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(g.gw.pending_permissions(), 1);
    g.gw.decide(g.now, perm, Decision::AlwaysAllow).expect("pending");
    assert_eq!(
        sent(&g.drain()),
        vec![json!({"type":"perm_response","req_id":"r1","payload":{"approved":true,"always_allow":true}})]
    );
    assert_eq!(g.gw.decide(g.now, perm, Decision::Deny), Err(DecideError::NotPending));
    assert_eq!(g.gw.decide(g.now, PermId(99), Decision::Approve), Err(DecideError::NotPending));
    assert!(g.drain().is_empty(), "refused decisions send nothing");
}

#[test]
fn a_withdrawn_permission_cannot_be_decided() {
    let mut g = G::identified(SessionConfig::default());
    let perm = requested(&g.perm_request("r1", "Bash"));
    g.at(2.5);
    let outs = g.text(r#"{"type":"perm_cancel","req_id":"r1","payload":{"reason":"timeout"}}"#);
    // `timeout` is the sled's deadline; the event says how long the request waited.
    let waited = Duration::from_millis(2500);
    assert_eq!(events(&outs), vec![SessionEvent::PermissionWithdrawn { perm, reason: Withdrawn::Deadline, waited }]);
    assert_eq!(g.gw.decide(g.now, perm, Decision::Approve), Err(DecideError::NotPending));
    assert_eq!(
        events(&g.text(r#"{"type":"perm_cancel","req_id":"r1"}"#)),
        vec![SessionEvent::FrameIgnored(SessionIgnored::Unmatched)]
    );
    // Any other reason (or none) is a withdrawal.
    for (i, reason) in
        [r#"{"reason":"withdrawn"}"#, r#"{"reason":"shutdown"}"#, "null", r#"{"reason":7}"#].iter().enumerate()
    {
        let perm = requested(&g.perm_request(&format!("w{i}"), "Bash"));
        let outs = g.text(&format!(r#"{{"type":"perm_cancel","req_id":"w{i}","payload":{reason}}}"#));
        let waited = Duration::ZERO;
        assert_eq!(
            events(&outs),
            vec![SessionEvent::PermissionWithdrawn { perm, reason: Withdrawn::Cancelled, waited }],
            "{reason}"
        );
    }
}

#[test]
fn duplicate_and_empty_request_ids_are_ignored_and_the_first_keeps_its_place() {
    let mut g = G::identified(SessionConfig::default());
    let perm = requested(&g.perm_request("r1", "Bash"));
    assert_eq!(
        events(&g.perm_request("r1", "Bash")),
        vec![SessionEvent::FrameIgnored(SessionIgnored::DuplicateRequest)]
    );
    assert_eq!(events(&g.perm_request("", "Bash")), vec![SessionEvent::FrameIgnored(SessionIgnored::DuplicateRequest)]);
    assert_eq!(g.gw.pending_permissions(), 1);
    assert!(g.gw.decide(g.now, perm, Decision::Approve).is_ok());
}

/// The limit a request was reported past, and that nothing was sent for it (the session decides nothing).
fn over(outs: &[SessionOutput]) -> Option<SessionLimit> {
    assert!(sent(outs).is_empty(), "the session answered by itself: {outs:?}");
    events(outs)
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::PermissionRequested { over, .. } => Some(over),
            _ => None,
        })
        .expect("a request")
}

#[test]
fn a_request_past_the_pending_limit_is_reported_with_it_and_the_session_decides_nothing() {
    let cfg = SessionConfig { max_pending_permissions: 1, ..SessionConfig::default() };
    let mut g = G::identified(cfg);
    assert_eq!(over(&g.perm_request("a", "Bash")), None);
    let outs = g.perm_request("b", "Bash");
    assert_eq!(over(&outs), Some(SessionLimit::TooMany));
    assert_eq!(SessionLimit::TooMany.message(), "too many requests from this sled are waiting at the gateway");
    // The application denies it at once; the limit holds again.
    g.gw.decide(g.now, requested(&outs), Decision::Deny).expect("pending");
    assert_eq!(g.gw.pending_permissions(), 1);
}

#[test]
fn mcp_requests_end_exactly_once() {
    let cfg = SessionConfig { mcp_timeout: Duration::from_secs(5), max_pending_mcp: 2, ..SessionConfig::default() };
    let mut g = G::new(cfg);
    assert_eq!(g.gw.send_mcp(g.now, "{}", None, true), Err(SendMcpError::NotIdentified));
    g.text(IDENTITY);
    let a = g.gw.send_mcp(g.now, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, Some("s1"), true).expect("ok");
    assert_eq!(
        sent(&g.drain()),
        vec![
            json!({"type":"mcp_request","req_id":"mcp-0","payload":{"body":"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}","session":"s1"}})
        ]
    );
    let b = g.gw.send_mcp(g.now, "{}", None, true).expect("ok");
    assert_eq!(g.gw.send_mcp(g.now, "{}", None, true), Err(SendMcpError::TooMany));
    let outs = g.text(r#"{"type":"mcp_response","req_id":"mcp-0","payload":{"jsonrpc":"2.0","id":1,"result":{}}}"#);
    assert_eq!(
        events(&outs),
        vec![SessionEvent::McpResponse { id: a, payload: Some(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#.into()) }]
    );
    // Aliases and repeats match nothing.
    for late in
        [r#"{"type":"mcp_response","req_id":"mcp-0","payload":null}"#, r#"{"type":"mcp_response","req_id":"mcp-01"}"#]
    {
        assert_eq!(events(&g.text(late)), vec![SessionEvent::FrameIgnored(SessionIgnored::Unmatched)]);
    }
    let outs = g.at(5.0);
    assert_eq!(events(&outs), vec![SessionEvent::McpFailed { id: b, reason: McpFailure::Timeout }]);
    let c = g.gw.send_mcp(g.now, "{}", None, true).expect("ok");
    g.gw.handle_disconnected(g.now);
    let outs = g.drain();
    assert_eq!(
        events(&outs),
        vec![SessionEvent::McpFailed { id: c, reason: McpFailure::ConnectionLost }, SessionEvent::Closed]
    );
    assert_eq!(g.gw.send_mcp(g.now, "{}", None, true), Err(SendMcpError::Closed));
    assert_ne!(a, McpId(99));
}

#[test]
fn closing_or_losing_the_connection_withdraws_everything_pending() {
    let mut g = G::identified(SessionConfig::default());
    let p1 = requested(&g.perm_request("r1", "Bash"));
    let p2 = requested(&g.perm_request("r2", "Bash"));
    let m = g.gw.send_mcp(g.now, "{}", None, true).expect("ok");
    g.drain();
    g.gw.close(g.now, CloseReason::Replaced);
    let outs = g.drain();
    assert_eq!(outs[0], SessionOutput::Close(CloseReason::Replaced));
    assert_eq!(
        events(&outs),
        vec![
            SessionEvent::PermissionWithdrawn { perm: p1, reason: Withdrawn::ConnectionLost, waited: Duration::ZERO },
            SessionEvent::PermissionWithdrawn { perm: p2, reason: Withdrawn::ConnectionLost, waited: Duration::ZERO },
            SessionEvent::McpFailed { id: m, reason: McpFailure::ConnectionLost },
            SessionEvent::Closed,
        ]
    );
    g.gw.handle_disconnected(g.now);
    assert!(g.drain().is_empty(), "ended once");
}

#[test]
fn garbage_after_identity_is_ignored_not_fatal() {
    let mut g = G::identified(SessionConfig::default());
    assert_eq!(events(&g.text("nope")), vec![SessionEvent::FrameIgnored(SessionIgnored::Malformed)]);
    assert_eq!(events(&g.text(r#"{"type":"x"}"#)), vec![SessionEvent::FrameIgnored(SessionIgnored::UnknownType)]);
    g.gw.handle_received(g.now, Received::Binary(b"b"));
    assert_eq!(events(&g.drain()), vec![SessionEvent::FrameIgnored(SessionIgnored::Binary)]);
    assert!(!g.gw.is_closed());
}

#[test]
fn config_errors_are_reported() {
    let bad = SessionConfig { ping_interval: Duration::ZERO, ..SessionConfig::default() };
    assert!(SledSession::new(bad, Instant::ZERO).is_err());
    let bad = SessionConfig { max_pending_mcp: 0, ..SessionConfig::default() };
    assert!(SledSession::new(bad, Instant::ZERO).is_err());
}

#[test]
fn last_seen_follows_every_frame_and_pong() {
    let mut g = G::identified(SessionConfig::default());
    assert_eq!(g.gw.last_seen(), Instant::ZERO);
    g.at(4.0);
    g.gw.handle_received(g.now, Received::Pong);
    assert_eq!(g.gw.last_seen(), Instant::from_secs(4));
    g.at(7.5);
    g.text(r#"{"type":"heartbeat"}"#);
    assert_eq!(g.gw.last_seen(), Instant::from_millis(7500));
}

#[test]
fn a_sled_silent_past_the_dead_threshold_is_closed_with_4008_and_its_requests_withdrawn() {
    let cfg = SessionConfig { dead_after: Duration::from_secs(90), ..SessionConfig::default() };
    let mut g = G::identified(cfg);
    let perm = requested(&g.perm_request("r1", "Bash"));
    // Pings go unanswered (a sled that vanished without a FIN); stale at 30 s, still open at 89 s.
    g.at(30.0);
    let outs = g.at(89.9);
    assert!(!outs.iter().any(|o| matches!(o, SessionOutput::Close(_))), "{outs:?}");
    assert!(!g.gw.is_closed());
    let outs = g.at(90.0);
    assert!(outs.contains(&SessionOutput::Close(CloseReason::Dead)), "{outs:?}");
    assert_eq!(CloseReason::Dead.code(), 4008);
    let waited = Duration::from_secs(90);
    assert!(events(&outs).contains(&SessionEvent::PermissionWithdrawn {
        perm,
        reason: Withdrawn::ConnectionLost,
        waited
    }));
    assert_eq!(g.gw.decide(g.now, perm, Decision::Approve), Err(DecideError::NotPending));
    // Any traffic keeps a sled alive: a pong at 80 s moves the threshold.
    let mut g = G::identified(SessionConfig::default());
    g.now = Instant::from_micros(80_000_000);
    g.gw.handle_received(g.now, Received::Pong);
    assert!(!g.at(169.0).iter().any(|o| matches!(o, SessionOutput::Close(_))));
    assert!(g.at(170.0).contains(&SessionOutput::Close(CloseReason::Dead)));
    // The threshold cannot be shorter than the stale one.
    let bad = SessionConfig { dead_after: Duration::from_secs(10), ..SessionConfig::default() };
    assert!(SledSession::new(bad, Instant::ZERO).is_err());
}

#[test]
fn a_request_whose_input_nests_too_deep_is_reported_past_the_limit() {
    use uplink_proto::gateway::INPUT_TOO_DEEP;
    use uplink_proto::wire::MAX_INPUT_DEPTH;
    let frame = |req_id: &str, depth: usize| {
        let input = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        format!(
            r#"{{"type":"perm_request","req_id":"{req_id}","payload":{{"tool_name":"Bash","tool_input":{input}}}}}"#
        )
    };
    let mut g = G::identified(SessionConfig::default());
    for (req_id, depth) in [("deeper", MAX_INPUT_DEPTH + 1), ("deepest", 10_000)] {
        let outs = g.text(&frame(req_id, depth));
        assert_eq!(over(&outs), Some(SessionLimit::TooDeep), "{outs:?}");
        assert_eq!(SessionLimit::TooDeep.message(), INPUT_TOO_DEEP);
        assert!(INPUT_TOO_DEEP.contains(&format!(" {MAX_INPUT_DEPTH} levels")), "the message names the limit");
        g.gw.decide(g.now, requested(&outs), Decision::Deny).expect("pending");
        g.drain();
        assert_eq!(g.gw.pending_input_bytes(), 0);
    }
    // At the limit it is a request like any other, held for a person.
    let mut g = G::identified(SessionConfig::default());
    requested(&g.text(&frame("at-limit", MAX_INPUT_DEPTH)));
    assert_eq!(g.gw.pending_permissions(), 1);
}

#[test]
fn a_request_beyond_the_sleds_input_budget_is_reported_past_it_and_the_budget_frees_on_every_end() {
    // Each request here costs 4 (Bash) + 2 (id) + 7 ({"x":1}) = 13 bytes.
    let cfg = SessionConfig { max_pending_input_bytes: 26, ..SessionConfig::default() };
    let mut g = G::identified(cfg);
    let a = requested(&g.perm_request("r1", "Bash"));
    requested(&g.perm_request("r2", "Bash"));
    assert_eq!(g.gw.pending_input_bytes(), 26);
    let outs = g.perm_request("r3", "Bash");
    assert_eq!(over(&outs), Some(SessionLimit::TooLarge));
    assert_eq!(SessionLimit::TooLarge.message(), "the requests from this sled waiting at the gateway are too large");
    g.gw.decide(g.now, requested(&outs), Decision::Deny).expect("pending");
    assert_eq!(g.gw.pending_input_bytes(), 26);
    // Decided, withdrawn by the sled, or ended with the connection: the bytes come back each time.
    g.gw.decide(g.now, a, Decision::Deny).expect("pending");
    assert_eq!(g.gw.pending_input_bytes(), 13);
    g.text(r#"{"type":"perm_cancel","req_id":"r2","payload":{"reason":"timeout"}}"#);
    assert_eq!(g.gw.pending_input_bytes(), 0);
    requested(&g.perm_request("r4", "Bash"));
    g.gw.handle_disconnected(g.now);
    assert_eq!(g.gw.pending_input_bytes(), 0);
}

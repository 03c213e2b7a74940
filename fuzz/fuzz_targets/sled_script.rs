//! The sled machine driven by an arbitrary script of inputs, with the protocol's invariants checked after
//! every step.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uplink_proto::{
    Cause, ConnId, ConnectError, Event, Instant, LinkState, McpCallId, McpReply, Output, RawValue, Received, Sled,
    SledConfig,
};

#[derive(Arbitrary, Debug)]
enum Op {
    Advance(u16),
    ConnectOk,
    ConnectFail(bool),
    Disconnect,
    StaleConn(u8),
    Request(u8),
    Respond {
        id: u8,
        approved: bool,
        always: bool,
        stale: bool,
    },
    McpRequest(u8),
    McpReply(u8, u8),
    Pong,
    Frame(String),
    /// The gateway accepts `resume` on the live connection.
    ResumeAccepted,
    Shutdown,
}

#[derive(Arbitrary, Debug)]
struct Script {
    seed: u64,
    jitter: bool,
    perm_timeout_s: u8,
    max_pending: u8,
    max_mcp: u8,
    no_resume: bool,
    /// The kept requests' byte budget, in units of 8 bytes (0: none kept).
    resume_budget: u8,
    ops: Vec<Op>,
}

const BODIES: [&str; 4] = [r#"{"jsonrpc":"2.0","id":1,"method":"x"}"#, r#"{"jsonrpc":"2.0","method":"n"}"#, "{bad", ""];

fuzz_target!(|script: Script| {
    let cfg = SledConfig {
        seed: script.seed,
        backoff_jitter: script.jitter,
        permission_timeout: Duration::from_secs(u64::from(script.perm_timeout_s.max(1))),
        max_pending_permissions: usize::from(script.max_pending.max(1)),
        max_mcp_calls: usize::from(script.max_mcp.max(1)),
        resume: !script.no_resume,
        max_resume_bytes: usize::from(script.resume_budget) * 8,
        ..SledConfig::new("fuzz")
    };
    let mut now = Instant::ZERO;
    let mut sled = Sled::new(cfg.clone(), now).expect("valid");
    let mut live: Option<ConnId> = None;
    let mut pending_connect: Option<ConnId> = None;
    let mut expect_identity = false;
    let mut decided: BTreeSet<u64> = BTreeSet::new();
    let mut requested: BTreeSet<u64> = BTreeSet::new();
    let mut sent_on: BTreeMap<String, ConnId> = BTreeMap::new();
    let mut mcp_answers: BTreeMap<String, u32> = BTreeMap::new();
    let mut calls: Vec<McpCallId> = Vec::new();
    let mut next_mcp = 0u32;

    for op in script.ops.iter().take(300) {
        let mut responses_now: Vec<(String, ConnId)> = Vec::new();
        match op {
            Op::Advance(ms) => now = now + Duration::from_millis(u64::from(*ms) * 10),
            Op::ConnectOk => {
                if let Some(c) = pending_connect.take() {
                    sled.handle_connected(now, c);
                }
            }
            Op::ConnectFail(auth) => {
                if let Some(c) = pending_connect.take() {
                    let e = if *auth { ConnectError::Unauthorized } else { ConnectError::Other };
                    sled.handle_connect_failed(now, c, e);
                }
            }
            Op::Disconnect => {
                if let Some(c) = live {
                    sled.handle_disconnected(now, c);
                }
            }
            Op::StaleConn(c) => {
                let c = ConnId(u64::from(*c));
                if Some(c) != live {
                    sled.handle_received(
                        now,
                        c,
                        Received::Text(r#"{"type":"perm_response","req_id":"p0","payload":{"approved":true}}"#),
                    );
                }
            }
            Op::Request(n) => {
                let key = sled.request_permission_with_id(
                    now,
                    format!("p{}", n % 8),
                    "Bash".into(),
                    RawValue::from_string("{}".into()).expect("json"),
                );
                assert!(requested.insert(key.0), "key reused");
            }
            Op::Respond { id, approved, always, stale } => {
                let id = format!("p{}", id % 8);
                let conn = if *stale { Some(ConnId(0)).filter(|c| Some(*c) != live) } else { live };
                if let Some(conn) = conn {
                    let text = format!(
                        r#"{{"type":"perm_response","req_id":"{id}","payload":{{"approved":{approved},"always_allow":{always}}}}}"#
                    );
                    responses_now.push((id, conn));
                    sled.handle_received(now, conn, Received::Text(&text));
                }
            }
            Op::McpRequest(b) => {
                if let Some(c) = live {
                    let req_id = format!("m{next_mcp}");
                    next_mcp += 1;
                    mcp_answers.insert(req_id.clone(), 0);
                    // The high bit asks for a stream.
                    let stream = *b >= 128;
                    let text = serde_json::json!({"type":"mcp_request","req_id":req_id,"payload":{"body":BODIES[usize::from(*b) % 4],"stream":stream}}).to_string();
                    sled.handle_received(now, c, Received::Text(&text));
                }
            }
            Op::McpReply(pick, kind) => {
                let call = calls.get(usize::from(*pick)).copied().unwrap_or(McpCallId(u64::from(*pick) + 10_000));
                let reply = match kind % 6 {
                    0 => Some(McpReply::Response(RawValue::from_string(r#"{"ok":1}"#.into()).expect("json"))),
                    1 => Some(McpReply::NoContent),
                    2 => Some(McpReply::NoStream),
                    3 => None,
                    4 => Some(McpReply::SessionLost),
                    _ => Some(McpReply::Failed("x".into())),
                };
                match reply {
                    Some(reply) => sled.handle_mcp_reply(now, call, reply),
                    // A message from the server within the call, which the core relays, answers or drops.
                    None => {
                        let message = r#"{"jsonrpc":"2.0","id":1,"method":"roots/list"}"#;
                        sled.handle_mcp_message(now, call, &RawValue::from_string(message.into()).expect("json"))
                    }
                }
            }
            Op::Pong => {
                if let Some(c) = live {
                    sled.handle_received(now, c, Received::Pong);
                }
            }
            Op::Frame(text) => {
                if let Some(c) = live {
                    sled.handle_received(now, c, Received::Text(text));
                }
            }
            Op::ResumeAccepted => {
                if let Some(c) = live {
                    sled.handle_received(
                        now,
                        c,
                        Received::Text(r#"{"type":"resume_accepted","req_id":"","payload":{}}"#),
                    );
                }
            }
            Op::Shutdown => sled.shutdown(now),
        }
        sled.handle_timeout(now);
        while let Some(out) = sled.poll_output() {
            match out {
                Output::Connect { conn } => {
                    assert_eq!(live, None, "connect while connected");
                    pending_connect = Some(conn);
                }
                Output::Event(Event::Link(LinkState::Connected { conn })) => {
                    live = Some(conn);
                    expect_identity = true;
                }
                Output::Event(Event::Link(LinkState::BackingOff { delay, .. })) => {
                    assert!(delay <= cfg.backoff_max);
                    live = None;
                    pending_connect = None;
                }
                Output::Event(Event::Link(LinkState::Closed)) => live = None,
                Output::Event(_) => {}
                Output::Close { conn, .. } => {
                    if live == Some(conn) {
                        live = None;
                    }
                }
                Output::Ping { conn } => assert_eq!(Some(conn), live),
                Output::Send { conn, text } => {
                    assert_eq!(Some(conn), live, "sent while not connected");
                    let v: serde_json::Value = serde_json::from_str(&text).expect("sent JSON");
                    let kind = v["type"].as_str().expect("type").to_owned();
                    if expect_identity {
                        assert_eq!(kind, "identity");
                        expect_identity = false;
                    }
                    let req_id = v["req_id"].as_str().expect("req_id").to_owned();
                    match kind.as_str() {
                        "perm_request" => {
                            sent_on.insert(req_id, conn);
                        }
                        "mcp_response" => {
                            // Exchanges opened by raw frames (`mcp_listen`) are not tracked here.
                            if let Some(n) = mcp_answers.get_mut(&req_id) {
                                *n += 1;
                                assert_eq!(*n, 1, "two answers for {req_id}");
                            }
                        }
                        "mcp_message" => {
                            if let Some(n) = mcp_answers.get(&req_id) {
                                assert_eq!(*n, 0, "a message for {req_id} after its answer");
                            }
                        }
                        _ => {}
                    }
                }
                Output::Decided(d) => {
                    assert!(requested.contains(&d.key.0));
                    assert!(decided.insert(d.key.0), "decided twice");
                    if d.decision.is_allow() {
                        assert_eq!(d.cause, Cause::Response);
                        let conn = live.expect("approved without a live connection");
                        assert_eq!(sent_on.get(&d.id), Some(&conn));
                        assert!(
                            responses_now.iter().any(|(id, c)| *id == d.id && *c == conn),
                            "approval without a response"
                        );
                    }
                }
                Output::CallMcp(call) => calls.push(call.call),
                Output::ListenMcp(listen) => calls.push(listen.call),
                Output::CancelMcp { .. } | Output::NotifyMcp { .. } | Output::EndMcpSession { .. } => {}
            }
        }
        if let Some(at) = sled.poll_timeout() {
            assert!(at > now, "timer left behind");
        }
        assert!(sled.pending_permissions() <= cfg.max_pending_permissions);
        assert!(sled.mcp_calls_in_flight() <= cfg.max_mcp_calls);
        assert!(sled.kept_bytes() <= cfg.max_resume_bytes, "kept bytes over the budget");
    }
    sled.shutdown(now);
    while let Some(out) = sled.poll_output() {
        if let Output::Decided(d) = out {
            assert!(decided.insert(d.key.0), "decided twice");
        }
    }
    assert_eq!(decided, requested, "every request decided exactly once");
});

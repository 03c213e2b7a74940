//! Property tests: random scripts of inputs and time steps against the sled machine, with the protocol's
//! invariants checked after every step by an independent observer. Case count: `PROPTEST_CASES` (default 256).

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use common::raw;
use proptest::prelude::*;
use serde_json::Value;
use uplink_proto::{
    Cause, ConnId, ConnectError, Decision, Event, Instant, LinkState, LossReason, McpCallId, McpReply, Output, PermKey,
    Received, Refusal, Sled, SledConfig,
};

/// Close codes a gateway may send: normal ends, a restart, a take-over, and the refusals.
const CLOSE_CODES: [u16; 8] = [1000, 1001, 1008, 1012, 4000, 4003, 4009, 4010];

#[derive(Clone, Debug)]
enum Op {
    /// Let time pass (milliseconds) and fire timers.
    Advance(u32),
    /// Jump to the next deadline.
    NextTimeout,
    ConnectOk,
    /// 0: any failure; 1: the token refused (401/403); 2: nothing at the path (404).
    ConnectFail {
        kind: u8,
    },
    Disconnect,
    /// The gateway closes the live connection with one of [`CLOSE_CODES`].
    Closed(u8),
    /// An input naming an old or never-used connection.
    Stale(u8, u8),
    Request(u8),
    /// The caller of the `n`-th key handed out (pending or not) goes away.
    Withdraw(u8),
    /// A `perm_response` for pool id `id` with `flags`, on the live connection or (if `stale`) an old one.
    Respond {
        id: u8,
        flags: u8,
        stale: bool,
    },
    McpRequest {
        body: u8,
        stream: bool,
    },
    McpReply {
        pick: u8,
        kind: u8,
    },
    /// The local server sends a message within a call or stream: a notification, or a request of its own.
    McpMessage {
        pick: u8,
        request: bool,
    },
    /// The gateway cancels an exchange (known, or not).
    McpCancel(u8),
    McpListen,
    McpSessionEnd,
    Pong,
    Garbage(String),
    /// The gateway accepts `resume` on the live connection.
    ResumeAccepted,
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..40_000).prop_map(Op::Advance),
        3 => Just(Op::NextTimeout),
        4 => Just(Op::ConnectOk),
        1 => (0u8..3).prop_map(|kind| Op::ConnectFail { kind }),
        1 => Just(Op::Disconnect),
        1 => (0..CLOSE_CODES.len() as u8).prop_map(Op::Closed),
        1 => (any::<u8>(), 0u8..4).prop_map(|(c, k)| Op::Stale(c, k)),
        5 => (0u8..6).prop_map(Op::Request),
        2 => any::<u8>().prop_map(Op::Withdraw),
        5 => (0u8..6, 0u8..16, prop::bool::weighted(0.2)).prop_map(|(id, flags, stale)| Op::Respond { id, flags, stale }),
        3 => (0u8..5, any::<bool>()).prop_map(|(body, stream)| Op::McpRequest { body, stream }),
        3 => (any::<u8>(), 0u8..5).prop_map(|(pick, kind)| Op::McpReply { pick, kind }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(pick, request)| Op::McpMessage { pick, request }),
        1 => any::<u8>().prop_map(Op::McpCancel),
        1 => Just(Op::McpListen),
        1 => Just(Op::McpSessionEnd),
        2 => Just(Op::Pong),
        1 => prop_oneof![
            ".{0,40}",
            Just(r#"["perm_response","p0",{"approved":true}]"#.to_owned()),
            Just(r#"{"type":"perm_response","req_id":"p1","payload":[true,true]}"#.to_owned()),
            Just(r#"{"type":"mcp_request","req_id":5}"#.to_owned()),
            Just(r#"{"type":"nope"}"#.to_owned()),
        ].prop_map(Op::Garbage),
        2 => Just(Op::ResumeAccepted),
        1 => Just(Op::Shutdown),
    ]
}

fn cfg() -> impl Strategy<Value = SledConfig> {
    (
        (any::<u64>(), any::<bool>(), prop_oneof![Just(1_000_000u64), Just(1u64)]),
        (1u64..130, 1usize..5, 1usize..4, 1u64..70, prop::bool::weighted(0.05)),
        (0usize..4, 1usize..3, any::<bool>(), prop_oneof![Just(16usize << 20), 0usize..80], 1u64..20),
    )
        .prop_map(
            |(
                (seed, jitter, initial_us),
                (perm_s, max_perm, max_mcp, mcp_s, disabled),
                (waiting, streams, resume, resume_bytes, resume_wait_s),
            )| {
                SledConfig {
                    enabled: !disabled,
                    seed,
                    backoff_jitter: jitter,
                    // A 1 µs start makes zero-length jittered delays common.
                    backoff_initial: Duration::from_micros(initial_us),
                    permission_timeout: Duration::from_secs(perm_s),
                    max_pending_permissions: max_perm,
                    max_mcp_calls: max_mcp,
                    max_mcp_waiting: waiting,
                    max_mcp_streams: streams,
                    mcp_timeout: Duration::from_secs(mcp_s),
                    resume,
                    max_resume_bytes: resume_bytes,
                    resume_wait: Duration::from_secs(resume_wait_s),
                    ..SledConfig::new("prop")
                }
            },
        )
}

/// Approve / deny / always-allow from the low bits; the other bits pick odd payload shapes.
fn response_text(id: &str, flags: u8) -> (String, Decision) {
    let (payload, decision) = match flags {
        0 => (r#"{"approved":true,"always_allow":false}"#, Decision::Approve),
        1 => (r#"{"approved":true,"always_allow":true}"#, Decision::AlwaysAllow),
        2 => (r#"{"always_allow":true}"#, Decision::AlwaysAllow),
        3 => (r#"{"approved":false}"#, Decision::Deny),
        4 => (r#"{"approved":"true"}"#, Decision::Deny),
        5 => (r#"[true,true]"#, Decision::Deny),
        6 => (r#"null"#, Decision::Deny),
        7 => (r#"{"approved":1,"always_allow":{}}"#, Decision::Deny),
        _ => (r#"{"approved":true}"#, Decision::Approve),
    };
    (format!(r#"{{"type":"perm_response","req_id":"{id}","payload":{payload}}}"#), decision)
}

const BODIES: [&str; 5] = [
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    r#"{"jsonrpc":"2.0","id":"s","method":"tools/call"}"#,
    "{broken",
    "",
];

/// One MCP exchange, as the observer knows it.
#[derive(Debug)]
struct Exchange {
    end: Option<End>,
    /// The gateway asked for a stream (always, for a standalone stream).
    stream: bool,
    /// Its local call started.
    started: bool,
}

/// How an exchange ended: exactly one of these, once.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum End {
    Answered,
    Cancelled,
    Lost,
}

/// What the observer knows about one permission request.
struct Req {
    id: String,
    asked_at: Instant,
    decided: Option<(Decision, Cause)>,
}

/// Independent observer: drives the machine and checks every output against what it has seen.
struct Check {
    sled: Sled,
    cfg: SledConfig,
    now: Instant,
    trace: Vec<String>,
    /// The connection the observer believes is live, from the machine's own link events.
    live: Option<ConnId>,
    expect_identity: bool,
    pending_connect: Option<ConnId>,
    seen_conns: BTreeSet<ConnId>,
    reqs: BTreeMap<PermKey, Req>,
    /// Keys whose callers went away.
    withdrawn: BTreeSet<PermKey>,
    /// For each wire id: the connection its latest `perm_request` went out on.
    sent_on: BTreeMap<String, ConnId>,
    /// For each wire id: the pending request that owns it (a refused duplicate never does).
    owner: BTreeMap<String, PermKey>,
    /// `perm_response`s fed in this step: (id, connection, decision it means).
    responses_now: Vec<(String, ConnId, Decision)>,
    /// Every exchange (mcp_request or mcp_listen) by req_id.
    mcp: BTreeMap<String, Exchange>,
    calls: BTreeMap<McpCallId, String>,
    /// The exchange fed in this step, until its call starts (or it ends at once).
    mcp_fed_now: Option<String>,
    /// Requests waiting for a call slot, in arrival order (as the observer infers them).
    mcp_waiting: VecDeque<String>,
    next_mcp: u32,
    identities_on_live: u32,
    /// Connections on which the gateway accepted `resume` (the machine offered it).
    accepted: BTreeSet<ConnId>,
    /// The refusal the link is backing off after, from the machine's link events.
    refused: Option<Refusal>,
    /// The gateway's standing as the machine last reported it.
    standing: Option<Refusal>,
    /// This step feeds a refusal (a handshake refused, or a refusal's close code).
    refusing_now: bool,
}

impl Check {
    fn new(cfg: SledConfig) -> Check {
        let sled = Sled::new(cfg.clone(), Instant::ZERO).expect("valid config");
        let mut c = Check {
            sled,
            cfg,
            now: Instant::ZERO,
            trace: Vec::new(),
            live: None,
            expect_identity: false,
            pending_connect: None,
            seen_conns: BTreeSet::new(),
            reqs: BTreeMap::new(),
            withdrawn: BTreeSet::new(),
            sent_on: BTreeMap::new(),
            owner: BTreeMap::new(),
            responses_now: Vec::new(),
            mcp: BTreeMap::new(),
            calls: BTreeMap::new(),
            mcp_fed_now: None,
            mcp_waiting: VecDeque::new(),
            next_mcp: 0,
            identities_on_live: 0,
            accepted: BTreeSet::new(),
            refused: None,
            standing: None,
            refusing_now: false,
        };
        c.drain();
        c
    }

    fn step(&mut self, op: &Op) {
        self.trace.push(format!("@{:?} {op:?}", self.now));
        self.responses_now.clear();
        self.mcp_fed_now = None;
        self.refusing_now = match op {
            Op::ConnectFail { kind } => *kind != 0 && self.pending_connect.is_some(),
            Op::Closed(pick) => {
                self.live.is_some() && Refusal::from_close_code(CLOSE_CODES[usize::from(*pick)]).is_some()
            }
            _ => false,
        };
        match op {
            Op::Advance(ms) => {
                self.now = self.now + Duration::from_millis(u64::from(*ms));
                self.sled.handle_timeout(self.now);
            }
            Op::NextTimeout => {
                if let Some(at) = self.sled.poll_timeout() {
                    assert!(at >= self.now, "poll_timeout {at:?} is before now {:?}", self.now);
                    self.now = at;
                    self.sled.handle_timeout(at);
                }
            }
            Op::ConnectOk => {
                if let Some(conn) = self.pending_connect.take() {
                    self.sled.handle_connected(self.now, conn);
                }
            }
            Op::ConnectFail { kind } => {
                if let Some(conn) = self.pending_connect.take() {
                    let e = match kind {
                        1 => ConnectError::Unauthorized,
                        2 => ConnectError::NotFound,
                        _ => ConnectError::Other,
                    };
                    self.sled.handle_connect_failed(self.now, conn, e);
                }
            }
            Op::Closed(pick) => {
                if let Some(conn) = self.live {
                    self.sled.handle_closed(self.now, conn, CLOSE_CODES[usize::from(*pick)]);
                }
            }
            Op::Disconnect => {
                if let Some(conn) = self.live {
                    self.sled.handle_disconnected(self.now, conn);
                }
            }
            Op::Stale(c, kind) => {
                // Only connections that are not live right now.
                let conn = ConnId(u64::from(*c));
                if Some(conn) != self.live && Some(conn) != self.pending_connect {
                    match kind {
                        0 => self.sled.handle_connected(self.now, conn),
                        1 => self.sled.handle_disconnected(self.now, conn),
                        2 => self.sled.handle_received(
                            self.now,
                            conn,
                            Received::Text(r#"{"type":"perm_response","req_id":"p0","payload":{"approved":true}}"#),
                        ),
                        _ => self.sled.handle_connect_failed(self.now, conn, ConnectError::Other),
                    }
                }
            }
            Op::Request(n) => {
                let id = format!("p{n}");
                let key = self.sled.request_permission_with_id(self.now, id.clone(), "Bash".into(), raw(r#"{"n":1}"#));
                assert!(!self.reqs.contains_key(&key), "key {key:?} reused");
                self.reqs.insert(key, Req { id: id.clone(), asked_at: self.now, decided: None });
                self.drain();
                if self.reqs[&key].decided.is_none() {
                    assert!(self.owner.insert(id, key).is_none(), "two pending requests own one id");
                }
            }
            Op::Withdraw(pick) => {
                let keys: Vec<PermKey> = self.reqs.keys().copied().collect();
                if let Some(&key) = (!keys.is_empty()).then(|| &keys[usize::from(*pick) % keys.len()]) {
                    let was_pending = self.reqs[&key].decided.is_none();
                    self.withdrawn.insert(key);
                    self.sled.withdraw(self.now, key);
                    self.drain();
                    if was_pending {
                        let decided = self.reqs[&key].decided;
                        assert!(
                            matches!(decided, Some((Decision::Deny, Cause::Withdrawn | Cause::Timeout))),
                            "a withdrawn request must end denied at once: {decided:?}"
                        );
                    }
                }
            }
            Op::Respond { id, flags, stale } => {
                let id = format!("p{id}");
                let (text, decision) = response_text(&id, *flags);
                let conn = if *stale {
                    self.seen_conns.iter().next().copied().filter(|c| Some(*c) != self.live)
                } else {
                    self.live
                };
                if let Some(conn) = conn {
                    self.responses_now.push((id, conn, decision));
                    self.sled.handle_received(self.now, conn, Received::Text(&text));
                }
            }
            Op::McpRequest { body, stream } => {
                if let Some(conn) = self.live {
                    let req_id = format!("m{}", self.next_mcp);
                    self.next_mcp += 1;
                    let mut payload = serde_json::json!({"body":BODIES[usize::from(*body)]});
                    if *stream {
                        payload["stream"] = Value::Bool(true);
                    }
                    let text = serde_json::json!({"type":"mcp_request","req_id":req_id,"payload":payload}).to_string();
                    self.mcp.insert(req_id.clone(), Exchange { end: None, stream: *stream, started: false });
                    self.mcp_fed_now = Some(req_id.clone());
                    self.sled.handle_received(self.now, conn, Received::Text(&text));
                    self.drain();
                    // Neither started nor answered: it waits for a slot.
                    if self.mcp_fed_now.take().is_some() && self.mcp[&req_id].end.is_none() {
                        self.mcp_waiting.push_back(req_id);
                    }
                }
            }
            Op::McpListen => {
                if let Some(conn) = self.live {
                    let req_id = format!("m{}", self.next_mcp);
                    self.next_mcp += 1;
                    let text =
                        serde_json::json!({"type":"mcp_listen","req_id":req_id,"payload":{"session":"s"}}).to_string();
                    self.mcp.insert(req_id.clone(), Exchange { end: None, stream: true, started: false });
                    self.mcp_fed_now = Some(req_id.clone());
                    self.sled.handle_received(self.now, conn, Received::Text(&text));
                    self.drain();
                    let e = &self.mcp[&req_id];
                    assert!(e.started || e.end.is_some(), "a listen neither opened nor ended at once");
                }
            }
            Op::McpCancel(pick) => {
                if let Some(conn) = self.live {
                    let req_id = format!("m{}", u32::from(*pick) % (self.next_mcp + 1));
                    let text = serde_json::json!({"type":"mcp_cancel","req_id":req_id,"payload":{"reason":"gone"}})
                        .to_string();
                    let open = self.mcp.get(&req_id).is_some_and(|e| e.end.is_none());
                    if open {
                        // The gateway has ended it on its side: whatever the sled does, no answer may follow.
                        self.mcp.get_mut(&req_id).expect("known").end = Some(End::Cancelled);
                        self.mcp_waiting.retain(|r| *r != req_id);
                    }
                    self.sled.handle_received(self.now, conn, Received::Text(&text));
                }
            }
            Op::McpSessionEnd => {
                if let Some(conn) = self.live {
                    let text = r#"{"type":"mcp_session_end","req_id":"","payload":{"session":"s"}}"#;
                    self.sled.handle_received(self.now, conn, Received::Text(text));
                }
            }
            Op::McpMessage { pick, request } => {
                let known: Vec<McpCallId> = self.calls.keys().copied().collect();
                if !known.is_empty() {
                    let call = known[usize::from(*pick) % known.len()];
                    let message = if *request {
                        r#"{"jsonrpc":"2.0","id":"srv","method":"sampling/createMessage"}"#
                    } else {
                        r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#
                    };
                    self.sled.handle_mcp_message(self.now, call, &raw(message));
                }
            }
            Op::McpReply { pick, kind } => {
                // Mostly calls we know of (live or long gone), sometimes one that never existed.
                let known: Vec<McpCallId> = self.calls.keys().copied().collect();
                let call = if known.is_empty() || *pick > 230 {
                    McpCallId(u64::from(*pick) + 1000)
                } else {
                    known[usize::from(*pick) % known.len()]
                };
                let reply = match kind {
                    0 => McpReply::Response(raw(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)),
                    1 => McpReply::NoContent,
                    2 => McpReply::SessionLost,
                    _ => McpReply::Failed("refused".into()),
                };
                self.sled.handle_mcp_reply(self.now, call, reply);
            }
            Op::Pong => {
                if let Some(conn) = self.live {
                    self.sled.handle_received(self.now, conn, Received::Pong);
                }
            }
            Op::Garbage(text) => {
                if let Some(conn) = self.live {
                    self.sled.handle_received(self.now, conn, Received::Text(text));
                }
            }
            Op::ResumeAccepted => {
                if let Some(conn) = self.live {
                    if self.cfg.resume {
                        self.accepted.insert(conn);
                    }
                    let text = r#"{"type":"resume_accepted","req_id":"","payload":{}}"#;
                    self.sled.handle_received(self.now, conn, Received::Text(text));
                }
            }
            Op::Shutdown => self.sled.shutdown(self.now),
        }
        self.drain();
        self.check_bounds();
    }

    fn drain(&mut self) {
        while let Some(out) = self.sled.poll_output() {
            self.trace.push(format!("  {out:?}"));
            self.observe(out);
        }
    }

    fn observe(&mut self, out: Output) {
        match out {
            Output::Connect { conn } => {
                assert_eq!(self.live, None, "connect while connected");
                assert!(self.seen_conns.insert(conn), "connection id {conn:?} reused");
                self.pending_connect = Some(conn);
            }
            Output::Event(Event::Link(state)) => match state {
                LinkState::Connected { conn } => {
                    assert_eq!(self.pending_connect, None, "attempt still pending when connected");
                    self.live = Some(conn);
                    self.expect_identity = true;
                    self.identities_on_live = 0;
                }
                LinkState::BackingOff { delay, reason } => {
                    self.link_lost();
                    self.live = None;
                    self.pending_connect = None;
                    assert!(delay <= self.cfg.backoff_max, "delay {delay:?} above the cap");
                    if let LossReason::Refused(refusal) = reason {
                        if refusal.waits_the_cap() && !self.cfg.backoff_jitter {
                            assert_eq!(delay, self.cfg.backoff_max, "a refusal waits the cap");
                        }
                        self.refused = Some(refusal);
                    } else {
                        self.refused = None;
                    }
                }
                LinkState::Closed | LinkState::Disabled => {
                    self.link_lost();
                    self.live = None;
                    self.pending_connect = None;
                }
                LinkState::Connecting { .. } => {
                    assert_eq!(self.live, None);
                    self.refused = None;
                }
            },
            Output::Event(Event::FrameIgnored(_)) => {}
            Output::Event(Event::Standing(standing)) => {
                assert_ne!(standing, self.standing, "a standing reported that did not change");
                self.standing = standing;
            }
            Output::Close { conn, .. } => {
                if self.live == Some(conn) {
                    self.live = None;
                }
            }
            Output::Ping { conn } => assert_eq!(Some(conn), self.live, "ping while not connected"),
            Output::Send { conn, text } => {
                assert_eq!(Some(conn), self.live, "frame sent while not connected: {text}");
                let v: Value = serde_json::from_str(&text).expect("sent frames are JSON");
                let kind = v["type"].as_str().expect("type").to_owned();
                let req_id = v["req_id"].as_str().expect("req_id").to_owned();
                assert!(v.get("payload").is_some(), "strict: payload always present");
                if self.expect_identity {
                    assert_eq!(kind, "identity", "first frame after connect");
                    self.expect_identity = false;
                }
                match kind.as_str() {
                    "identity" => {
                        self.identities_on_live += 1;
                        assert_eq!(self.identities_on_live, 1, "second identity on one connection");
                        let offers =
                            v["payload"]["capabilities"].as_array().is_some_and(|c| c.contains(&"resume".into()));
                        assert_eq!(offers, self.cfg.resume, "resume offered as configured");
                        assert_eq!(v["payload"]["incarnation"].is_string(), self.cfg.resume);
                    }
                    "perm_request" => {
                        // Sent again only when kept: its last connection and this one accepted `resume`.
                        if let Some(prev) = self.sent_on.get(&req_id) {
                            assert!(
                                *prev != conn && self.accepted.contains(prev) && self.accepted.contains(&conn),
                                "{req_id} sent again without resume accepted on {prev:?} and {conn:?}"
                            );
                            assert!(self.owner.contains_key(&req_id), "{req_id} sent again after it ended");
                        }
                        self.sent_on.insert(req_id, conn);
                    }
                    "resumed" => {
                        assert!(self.accepted.contains(&conn), "resumed without an acceptance on {conn:?}");
                    }
                    "mcp_response" => {
                        let entry = self.mcp.get_mut(&req_id).expect("mcp_response for an exchange that never came");
                        assert_eq!(entry.end, None, "{req_id} answered after its end");
                        entry.end = Some(End::Answered);
                        self.mcp_waiting.retain(|r| *r != req_id);
                    }
                    "mcp_message" => {
                        let entry = self.mcp.get(&req_id).expect("mcp_message for an exchange that never came");
                        assert_eq!(entry.end, None, "{req_id}: a message after its end");
                        assert!(entry.stream && entry.started, "{req_id}: a message for an exchange not streaming");
                    }
                    "heartbeat" | "perm_cancel" => {}
                    other => panic!("unexpected frame type {other}"),
                }
            }
            Output::Decided(d) => {
                let now = self.now;
                let timeout = self.cfg.permission_timeout;
                let req = self.reqs.get_mut(&d.key).expect("decision for a key never handed out");
                assert_eq!(req.id, d.id);
                assert!(req.decided.is_none(), "second decision for {:?}", d.key);
                req.decided = Some((d.decision, d.cause));
                if let Cause::Refused(refusal) = d.cause {
                    // Only ever as that very refusal comes, or while the link backs off after it.
                    assert_eq!(self.standing, Some(refusal), "denied as refused ({refusal:?}) while not refused");
                    assert!(
                        self.refusing_now || self.refused == Some(refusal),
                        "denied as refused ({refusal:?}) neither as it came nor while backing off after it"
                    );
                }
                if d.cause == Cause::Withdrawn {
                    assert!(self.withdrawn.contains(&d.key), "withdrawn without being withdrawn");
                }
                if d.cause == Cause::Timeout {
                    assert!(now >= req.asked_at + timeout, "timed out early");
                }
                if d.decision.is_allow() {
                    assert_eq!(d.cause, Cause::Response);
                    let conn = self.live.expect("approved while no connection is live");
                    assert_eq!(self.owner.get(&d.id), Some(&d.key), "approved a request that never was pending");
                    assert_eq!(
                        self.sent_on.get(&d.id),
                        Some(&conn),
                        "approved a request not sent on the live connection"
                    );
                    assert!(
                        self.responses_now.iter().any(|(id, c, dec)| *id == d.id && *c == conn && *dec == d.decision),
                        "approval without a matching perm_response on the live connection"
                    );
                }
                if self.owner.get(&d.id) == Some(&d.key) {
                    self.owner.remove(&d.id);
                    self.sent_on.remove(&d.id);
                }
            }
            Output::CallMcp(call) => {
                // The request fed now starts at once, or the oldest waiting one when a slot frees.
                let req_id = match self.mcp_fed_now.take() {
                    Some(r) => r,
                    None => self.mcp_waiting.pop_front().expect("a call without a waiting mcp_request"),
                };
                self.start(call.call, req_id);
            }
            Output::ListenMcp(listen) => {
                let req_id = self.mcp_fed_now.take().expect("a stream without an mcp_listen");
                self.start(listen.call, req_id);
            }
            Output::CancelMcp { call } => {
                let req_id = self.calls.get(&call).expect("cancel of an unknown call").clone();
                let entry = self.mcp.get_mut(&req_id).expect("known request");
                assert!(entry.started, "cancel of a call never started");
            }
            Output::NotifyMcp { body, .. } => {
                let v: Value = serde_json::from_str(&body).expect("notices are JSON");
                assert!(v.get("method").is_some() || v.get("error").is_some(), "a notice or an error answer: {body}");
            }
            Output::EndMcpSession { session } => assert_eq!(session, "s"),
        }
    }

    fn start(&mut self, call: McpCallId, req_id: String) {
        let entry = self.mcp.get_mut(&req_id).expect("known exchange");
        assert_eq!(entry.end, None, "{req_id} started after its end");
        assert!(!entry.started, "{req_id} started twice");
        entry.started = true;
        assert!(self.calls.insert(call, req_id).is_none(), "call id reused");
    }

    /// The live connection is gone: every exchange still open on it ends with it.
    fn link_lost(&mut self) {
        for e in self.mcp.values_mut().filter(|e| e.end.is_none()) {
            e.end = Some(End::Lost);
        }
        self.mcp_waiting.clear();
    }

    fn check_bounds(&self) {
        assert!(self.sled.pending_permissions() <= self.cfg.max_pending_permissions);
        assert!(self.sled.mcp_calls_in_flight() <= self.cfg.max_mcp_calls);
        assert!(self.sled.mcp_calls_waiting() <= self.cfg.max_mcp_waiting);
        assert!(self.sled.mcp_streams_open() <= self.cfg.max_mcp_streams);
        let open = self.mcp.values().filter(|e| e.end.is_none()).count();
        assert_eq!(
            open,
            self.sled.mcp_calls_in_flight() + self.sled.mcp_calls_waiting() + self.sled.mcp_streams_open(),
            "observer and machine disagree on the exchanges open"
        );
        let next = self.sled.poll_timeout();
        if let Some(at) = next {
            assert!(at >= self.now, "deadline {at:?} left behind at {:?}", self.now);
        }
        // Fail-closed: nothing undecided is still waiting on a connection that is gone, unless that
        // connection's gateway accepted `resume` (kept); once the live one accepts, every kept one is sent again.
        let live_accepted = self.live.is_some_and(|c| self.accepted.contains(&c));
        for (key, req) in self.reqs.iter().filter(|(_, r)| r.decided.is_none()) {
            assert_eq!(self.owner.get(&req.id), Some(key), "pending request without its id");
            if let Some(conn) = self.sent_on.get(&req.id)
                && Some(*conn) != self.live
            {
                assert!(self.accepted.contains(conn), "{} outstanding on a dead connection never accepted", req.id);
                assert!(!live_accepted, "{} kept but not sent again on an accepting connection", req.id);
            }
        }
        assert!(self.sled.kept_bytes() <= self.cfg.max_resume_bytes, "kept bytes over the budget");
        // A refused sled holds nothing: every request ends with the refusal, at once while backing off after it.
        if let Some(refusal) = self.refused {
            assert_eq!(self.sled.pending_permissions(), 0, "requests left waiting after a refusal ({refusal:?})");
            assert_eq!(self.sled.refusal(), Some(refusal), "the standing is the refusal while backing off after it");
        }
        assert_eq!(self.sled.refusal(), self.standing, "the standing reported is the machine's");
        if self.sled.pending_permissions() == 0 {
            assert_eq!(self.sled.kept_bytes(), 0, "kept bytes without a request");
        }
        // Nothing undecided is past its deadline, and the timer wakes the caller no later than the earliest one:
        // a driver that honours poll_timeout gets every denial exactly on time.
        for (key, req) in self.reqs.iter().filter(|(_, r)| r.decided.is_none()) {
            let deadline = req.asked_at + self.cfg.permission_timeout;
            assert!(deadline > self.now, "{key:?} still pending past its deadline");
            assert!(next.is_some_and(|at| at <= deadline), "{key:?}: timer {next:?} later than deadline {deadline:?}");
        }
        assert_eq!(self.sled.connection(), self.live, "observer and machine disagree on the live connection");
    }

    /// Shut down and check that everything ended exactly once.
    fn finish(mut self) -> Vec<String> {
        self.step(&Op::Shutdown);
        for (key, req) in &self.reqs {
            assert!(req.decided.is_some(), "{key:?} ({}) never decided", req.id);
        }
        for (req_id, e) in &self.mcp {
            assert!(e.end.is_some(), "{req_id} never ended: {e:?}");
        }
        assert_eq!(self.sled.poll_timeout(), None);
        self.trace
    }
}

fn run(cfg: SledConfig, ops: &[Op]) -> Vec<String> {
    let mut c = Check::new(cfg);
    for op in ops {
        c.step(op);
    }
    c.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { max_shrink_iters: 4096, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_script(cfg in cfg(), ops in prop::collection::vec(op(), 1..150)) {
        run(cfg, &ops);
    }

    #[test]
    fn same_seed_and_inputs_give_the_same_trace(cfg in cfg(), ops in prop::collection::vec(op(), 1..80)) {
        prop_assert_eq!(run(cfg.clone(), &ops), run(cfg, &ops));
    }

    #[test]
    fn arbitrary_text_never_panics(frames in prop::collection::vec(any::<String>(), 1..20)) {
        let mut sled = Sled::new(SledConfig::new("p"), Instant::ZERO).expect("valid");
        sled.handle_connected(Instant::ZERO, ConnId(0));
        for f in &frames {
            sled.handle_received(Instant::ZERO, ConnId(0), Received::Text(f));
        }
        while sled.poll_output().is_some() {}
        prop_assert_eq!(sled.connection(), Some(ConnId(0)));
    }
}

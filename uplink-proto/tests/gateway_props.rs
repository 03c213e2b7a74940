//! Property tests of the gateway session: random frames, commands and time against an independent observer.
//! Case count: `PROPTEST_CASES` (default 256).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use uplink_proto::gateway::{McpFailure, McpId, PermId, SessionConfig, SessionEvent, SessionOutput, SledSession};
use uplink_proto::{Decision, Instant, Received};

#[derive(Clone, Debug)]
enum Op {
    Advance(u32),
    /// With or without the `mcp_stream` capability.
    Identity(bool),
    Heartbeat,
    PermRequest(u8, u8),
    PermCancel(u8),
    McpResponse(u8),
    Garbage(String),
    Pong,
    Decide(u8, u8),
    SendMcp,
    ListenMcp,
    CancelMcp(u8),
    McpMessage(u8),
    Close,
    Disconnect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..20_000).prop_map(Op::Advance),
        2 => any::<bool>().prop_map(Op::Identity),
        2 => Just(Op::Heartbeat),
        5 => (0u8..6, 0u8..4).prop_map(|(r, t)| Op::PermRequest(r, t)),
        2 => (0u8..6).prop_map(Op::PermCancel),
        3 => (0u8..8).prop_map(Op::McpResponse),
        1 => ".{0,30}".prop_map(Op::Garbage),
        2 => Just(Op::Pong),
        4 => (0u8..10, 0u8..3).prop_map(|(p, d)| Op::Decide(p, d)),
        3 => Just(Op::SendMcp),
        1 => Just(Op::ListenMcp),
        2 => (0u8..8).prop_map(Op::CancelMcp),
        2 => (0u8..8).prop_map(Op::McpMessage),
        1 => Just(Op::Close),
        1 => Just(Op::Disconnect),
    ]
}

const TOOLS: [&str; 4] = ["Bash", "Read", "rm", "Write"];

/// What the observer knows a permission's or MCP request's fate to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Pending,
    Ended,
}

struct Check {
    gw: SledSession,
    now: Instant,
    closed: bool,
    identified: bool,
    perms: BTreeMap<PermId, Fate>,
    mcp: BTreeMap<McpId, Fate>,
    max_perm: usize,
    /// The sled listed `mcp_stream`.
    streams: bool,
}

impl Check {
    fn step(&mut self, op: &Op) {
        let now = self.now;
        match op {
            Op::Advance(ms) => {
                self.now = self.now + Duration::from_millis(u64::from(*ms));
                self.gw.handle_timeout(self.now);
            }
            Op::Identity(streams) => {
                if !self.identified {
                    self.streams = *streams;
                }
                let capabilities = if *streams { vec!["perm_cancel", "mcp_stream"] } else { vec!["perm_cancel"] };
                let frame = json!({"type":"identity","req_id":"identity","payload":{"project":"p","capabilities":capabilities}});
                self.text(&frame.to_string())
            }
            Op::Heartbeat => self.text(r#"{"type":"heartbeat","req_id":"","payload":null}"#),
            Op::PermRequest(r, t) => self.text(
                &json!({"type":"perm_request","req_id":format!("r{r}"),"payload":{"tool_name":TOOLS[usize::from(*t)]}})
                    .to_string(),
            ),
            Op::PermCancel(r) => self.text(&json!({"type":"perm_cancel","req_id":format!("r{r}")}).to_string()),
            Op::McpResponse(m) => {
                self.text(&json!({"type":"mcp_response","req_id":format!("mcp-{m}"),"payload":{"ok":1}}).to_string())
            }
            Op::Garbage(g) => self.text(g),
            Op::Pong => self.gw.handle_received(now, Received::Pong),
            Op::Decide(p, d) => {
                let perm = PermId(u64::from(*p));
                let decision = [Decision::Approve, Decision::Deny, Decision::AlwaysAllow][usize::from(*d)];
                let result = self.gw.decide(now, perm, decision);
                // Accepted exactly when the observer knows it is pending.
                let pending = self.perms.get(&perm) == Some(&Fate::Pending);
                assert_eq!(result.is_ok(), pending, "decide({perm:?}) = {result:?}");
                let outs = self.drain();
                if pending {
                    self.perms.insert(perm, Fate::Ended);
                    assert!(matches!(outs.first(), Some(SessionOutput::Send(t)) if t.contains("perm_response")));
                } else {
                    assert!(
                        outs.iter().all(|o| !matches!(o, SessionOutput::Send(_))),
                        "a refused decision sent something"
                    );
                }
            }
            Op::SendMcp => match self.gw.send_mcp(now, r#"{"jsonrpc":"2.0","id":1,"method":"x"}"#, None, true) {
                Ok(id) => {
                    assert!(self.identified && !self.closed);
                    assert!(self.mcp.insert(id, Fate::Pending).is_none(), "id reused");
                }
                Err(_) => assert!(
                    !self.identified
                        || self.closed
                        || self.mcp.values().filter(|f| **f == Fate::Pending).count() >= 256
                ),
            },
            Op::ListenMcp => match self.gw.listen_mcp(now, Some("s")) {
                Ok(id) => {
                    assert!(
                        self.identified && !self.closed && self.streams,
                        "a stream opened with a sled without them"
                    );
                    assert!(self.mcp.insert(id, Fate::Pending).is_none(), "id reused");
                    let outs = self.drain();
                    assert!(matches!(outs.first(), Some(SessionOutput::Send(t)) if t.contains("mcp_listen")));
                }
                Err(_) => assert!(!self.identified || self.closed || !self.streams || self.gw.mcp_streams() >= 64),
            },
            Op::CancelMcp(m) => {
                let id = McpId(u64::from(*m));
                let pending = self.mcp.get(&id) == Some(&Fate::Pending);
                assert_eq!(self.gw.cancel_mcp(now, id, "gone"), pending, "cancel({id:?})");
                let outs = self.drain();
                if pending {
                    let told = outs.iter().any(|o| matches!(o, SessionOutput::Send(t) if t.contains("mcp_cancel")));
                    assert_eq!(told, self.streams, "the sled is told exactly when it relays streams");
                    assert!(outs.iter().any(|o| matches!(
                        o,
                        SessionOutput::Event(SessionEvent::McpFailed { id: i, reason: McpFailure::Cancelled }) if *i == id
                    )));
                }
            }
            Op::McpMessage(m) => self.text(
                &json!({"type":"mcp_message","req_id":format!("mcp-{m}"),"payload":{"jsonrpc":"2.0","method":"n"}})
                    .to_string(),
            ),
            Op::Close => self.gw.close(now, uplink_proto::gateway::CloseReason::Replaced),
            Op::Disconnect => self.gw.handle_disconnected(now),
        }
        let outs = self.drain();
        // The application's part, as the hub's policy plays it: a request past the session's limit is
        // denied at once (the session never decides by itself).
        for o in outs {
            if let SessionOutput::Event(SessionEvent::PermissionRequested { perm, over: Some(_), .. }) = o {
                self.gw.decide(now, perm, Decision::Deny).expect("pending");
                self.perms.insert(perm, Fate::Ended);
            }
        }
        self.drain();
        if let Some(at) = self.gw.poll_timeout() {
            assert!(at > self.now, "a due timer was left behind");
        }
        assert!(self.gw.pending_permissions() <= self.max_perm);
        assert_eq!(self.gw.pending_permissions(), self.perms.values().filter(|f| **f == Fate::Pending).count());
        assert_eq!(
            self.gw.pending_mcp() + self.gw.mcp_streams(),
            self.mcp.values().filter(|f| **f == Fate::Pending).count()
        );
    }

    fn text(&mut self, text: &str) {
        self.gw.handle_received(self.now, Received::Text(text));
    }

    fn drain(&mut self) -> Vec<SessionOutput> {
        let outs: Vec<SessionOutput> = std::iter::from_fn(|| self.gw.poll_output()).collect();
        for o in &outs {
            assert!(!self.closed, "output after Closed: {o:?}");
            match o {
                SessionOutput::Send(t) => {
                    assert!(self.identified, "sent before identity: {t}");
                    serde_json::from_str::<serde_json::Value>(t).expect("sent frames are JSON");
                }
                SessionOutput::Ping => assert!(self.identified),
                SessionOutput::Close(_) => {}
                SessionOutput::Event(e) => match e {
                    SessionEvent::Identified { .. } => {
                        assert!(!self.identified, "identified twice");
                        self.identified = true;
                    }
                    SessionEvent::PermissionRequested { perm, .. } => {
                        assert!(self.identified);
                        assert!(self.perms.insert(*perm, Fate::Pending).is_none(), "perm id reused");
                    }
                    SessionEvent::PermissionWithdrawn { perm, .. } => {
                        assert_eq!(self.perms.insert(*perm, Fate::Ended), Some(Fate::Pending), "ended twice");
                    }
                    SessionEvent::McpResponse { id, .. } | SessionEvent::McpFailed { id, .. } => {
                        assert_eq!(self.mcp.insert(*id, Fate::Ended), Some(Fate::Pending), "MCP request ended twice");
                    }
                    SessionEvent::McpMessage { id, .. } => {
                        assert_eq!(self.mcp.get(id), Some(&Fate::Pending), "a message for an exchange not open");
                    }
                    SessionEvent::Closed => self.closed = true,
                    _ => {}
                },
            }
        }
        outs
    }
}

proptest! {
    #[test]
    fn every_request_ends_exactly_once_and_nothing_follows_the_close(
        ops in prop::collection::vec(op(), 1..120),
        max_perm in 1usize..4,
    ) {
        let cfg = SessionConfig {
            max_pending_permissions: max_perm,
            ..SessionConfig::default()
        };
        let mut c = Check {
            gw: SledSession::new(cfg, Instant::ZERO).expect("valid"),
            now: Instant::ZERO,
            closed: false,
            identified: false,
            perms: BTreeMap::new(),
            mcp: BTreeMap::new(),
            max_perm,
            streams: false,
        };
        for op in &ops {
            c.step(op);
        }
        c.step(&Op::Disconnect);
        prop_assert!(c.closed);
        prop_assert!(c.perms.values().all(|f| *f == Fate::Ended), "a permission never ended");
        prop_assert!(c.mcp.values().all(|f| *f == Fate::Ended), "an MCP request never ended");
    }
}

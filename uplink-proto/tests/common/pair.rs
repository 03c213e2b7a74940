//! A sled machine and a gateway machine run against each other in memory, in virtual time.
//!
//! Everything crossing the "network" is an event in a time-ordered queue with a per-direction latency.
//! The WebSocket libraries' automatic pong is modelled (a ping delivered is answered). Fault hooks: cut
//! the link (both sides see the loss), black-hole it (nothing more arrives, nobody is told), take the
//! gateway down (connections refused), slow local MCP server, approver that never answers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use uplink_proto::gateway::{Gateway, GatewayConfig, GatewayEvent, GatewayOutput, McpId, PermId};
use uplink_proto::{
    ConnId, ConnectError, Decided, Decision, Instant, McpCallId, McpReply, Output, RawValue, Received, Sled, SledConfig,
};

#[derive(Clone, Debug)]
pub enum Wire {
    Text(String),
    Ping,
    Pong,
    /// The connection's end (a close frame or a reset).
    End,
}

#[derive(Debug)]
enum Ev {
    /// The gateway accepts (or refuses) a connection attempt.
    Accept(ConnId),
    ToGateway(ConnId, Wire),
    ToSled(ConnId, Wire),
    McpDone(McpCallId, McpReply),
    Decide(ConnId, PermId, Decision),
}

/// What the simulated local MCP server answers for a body.
pub type McpServer = Box<dyn FnMut(&str) -> McpReply>;
/// What the simulated approver decides for a tool, and after how long (`None`: never).
pub type Approver = Box<dyn FnMut(&str) -> Option<(Decision, Duration)>>;

pub struct Pair {
    pub now: Instant,
    pub sled: Sled,
    pub gw_config: GatewayConfig,
    /// The gateway's session for the connection it has, if any.
    pub gw: Option<(ConnId, Gateway)>,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    pub latency: Duration,
    pub mcp_latency: Duration,
    pub gateway_up: bool,
    /// While true, nothing crosses the link and nobody is told.
    pub blackhole: bool,
    /// Half-open links: frames in that direction vanish (the other direction still works).
    pub drop_to_sled: bool,
    pub drop_to_gateway: bool,
    /// Every frame the gateway sends arrives twice.
    pub duplicate_to_sled: bool,
    /// Every text frame delivered to the sled: (when, connection, text).
    pub delivered_to_sled: Vec<(Instant, ConnId, String)>,
    /// What the approver decided, by the tool's name as asked (the tests use unique names).
    pub approvals: Vec<(String, Decision)>,
    pub mcp_server: McpServer,
    pub approver: Approver,
    /// Everything the sled emitted, in order.
    pub sled_log: Vec<Output>,
    /// Everything the gateway sessions emitted, with the connection.
    pub gw_log: Vec<(ConnId, GatewayOutput)>,
    pub decided: Vec<Decided>,
}

fn echo_mcp() -> McpServer {
    Box::new(|body| {
        let id = match uplink_proto::jsonrpc::body_id(body) {
            uplink_proto::jsonrpc::BodyId::Id(id) => id.get().to_owned(),
            _ => return McpReply::NoContent,
        };
        McpReply::Response(
            RawValue::from_string(format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"echo":true}}}}"#)).expect("JSON"),
        )
    })
}

impl Pair {
    pub fn new(sled: SledConfig, gw_config: GatewayConfig) -> Pair {
        let mut pair = Pair {
            now: Instant::ZERO,
            sled: Sled::new(sled, Instant::ZERO).expect("valid sled config"),
            gw_config,
            gw: None,
            queue: BTreeMap::new(),
            seq: 0,
            latency: Duration::from_millis(5),
            mcp_latency: Duration::from_millis(20),
            gateway_up: true,
            blackhole: false,
            drop_to_sled: false,
            drop_to_gateway: false,
            duplicate_to_sled: false,
            delivered_to_sled: Vec::new(),
            approvals: Vec::new(),
            mcp_server: echo_mcp(),
            approver: Box::new(|_| Some((Decision::Approve, Duration::from_millis(50)))),
            sled_log: Vec::new(),
            gw_log: Vec::new(),
            decided: Vec::new(),
        };
        pair.settle();
        pair
    }

    fn at(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    /// Carries out every pending output of both machines (instantaneous local actions).
    fn settle(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.sled.poll_output() {
                progressed = true;
                self.sled_output(out.clone());
                self.sled_log.push(out);
            }
            while let Some((conn, out)) = self.gw.as_mut().and_then(|(c, g)| g.poll_output().map(|o| (*c, o))) {
                progressed = true;
                self.gw_output(conn, out.clone());
                self.gw_log.push((conn, out));
            }
            if !progressed {
                return;
            }
        }
    }

    fn sled_output(&mut self, out: Output) {
        let lat = self.latency;
        match out {
            Output::Connect { conn } => self.at(lat, Ev::Accept(conn)),
            Output::Send { conn, text } => self.at(lat, Ev::ToGateway(conn, Wire::Text(text))),
            Output::Ping { conn } => self.at(lat, Ev::ToGateway(conn, Wire::Ping)),
            Output::Close { conn, .. } => self.at(lat, Ev::ToGateway(conn, Wire::End)),
            Output::Decided(d) => self.decided.push(d),
            Output::CallMcp(call) => {
                let reply = (self.mcp_server)(&call.body);
                let after = self.mcp_latency;
                self.at(after, Ev::McpDone(call.call, reply));
            }
            Output::CancelMcp { call } => {
                self.queue.retain(|_, ev| !matches!(ev, Ev::McpDone(c, _) if *c == call));
            }
            Output::Event(_) => {}
        }
    }

    fn gw_output(&mut self, conn: ConnId, out: GatewayOutput) {
        let lat = self.latency;
        match out {
            GatewayOutput::Send(text) => {
                if self.duplicate_to_sled {
                    self.at(lat, Ev::ToSled(conn, Wire::Text(text.clone())));
                }
                self.at(lat, Ev::ToSled(conn, Wire::Text(text)));
            }
            GatewayOutput::Ping => self.at(lat, Ev::ToSled(conn, Wire::Ping)),
            GatewayOutput::Close(_) => self.at(lat, Ev::ToSled(conn, Wire::End)),
            GatewayOutput::Event(GatewayEvent::PermissionRequested { perm, tool_name, .. }) => {
                if let Some((decision, after)) = (self.approver)(&tool_name) {
                    self.approvals.push((tool_name.clone(), decision));
                    self.at(after, Ev::Decide(conn, perm, decision));
                }
            }
            GatewayOutput::Event(GatewayEvent::Closed) => {
                if self.gw.as_ref().is_some_and(|(c, _)| *c == conn) {
                    self.gw = None;
                }
            }
            GatewayOutput::Event(_) => {}
        }
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        let lat = self.latency;
        match ev {
            Ev::Accept(conn) => {
                if self.gateway_up && !self.blackhole {
                    if let Some((old_conn, mut old)) = self.gw.take() {
                        // The replaced session ends: its last outputs are part of the record.
                        old.handle_disconnected(now);
                        while let Some(out) = old.poll_output() {
                            self.gw_output(old_conn, out.clone());
                            self.gw_log.push((old_conn, out));
                        }
                    }
                    self.gw = Some((conn, Gateway::new(self.gw_config.clone(), now).expect("valid gateway config")));
                    self.sled.handle_connected(now, conn);
                } else if self.gateway_up {
                    // Black-holed: the attempt hangs; the sled's connect timeout ends it.
                } else {
                    self.sled.handle_connect_failed(now, conn, ConnectError::Other);
                }
            }
            Ev::ToGateway(_, _) | Ev::ToSled(_, _) if self.blackhole => {}
            Ev::ToGateway(_, _) if self.drop_to_gateway => {}
            Ev::ToSled(_, _) if self.drop_to_sled => {}
            Ev::ToGateway(conn, wire) => {
                let Some((c, gw)) = self.gw.as_mut().filter(|(c, _)| *c == conn) else { return };
                let c = *c;
                match wire {
                    Wire::Text(t) => gw.handle_received(now, Received::Text(&t)),
                    Wire::Ping => {
                        gw.handle_received(now, Received::Ping);
                        self.at(lat, Ev::ToSled(c, Wire::Pong));
                    }
                    Wire::Pong => gw.handle_received(now, Received::Pong),
                    Wire::End => gw.handle_disconnected(now),
                }
            }
            Ev::ToSled(conn, wire) => match wire {
                Wire::Text(t) => {
                    self.sled.handle_received(now, conn, Received::Text(&t));
                    self.delivered_to_sled.push((now, conn, t));
                }
                Wire::Ping => {
                    self.sled.handle_received(now, conn, Received::Ping);
                    self.at(lat, Ev::ToGateway(conn, Wire::Pong));
                }
                Wire::Pong => self.sled.handle_received(now, conn, Received::Pong),
                Wire::End => self.sled.handle_disconnected(now, conn),
            },
            Ev::McpDone(call, reply) => self.sled.handle_mcp_reply(now, call, reply),
            Ev::Decide(conn, perm, decision) => {
                if let Some((c, gw)) = self.gw.as_mut()
                    && *c == conn
                {
                    let _ = gw.decide(now, perm, decision);
                }
            }
        }
    }

    /// The earliest moment something happens: a delivery or a machine's timer.
    fn next_wakeup(&self) -> Option<Instant> {
        let queued = self.queue.keys().next().map(|(t, _)| *t);
        let sled = self.sled.poll_timeout();
        let gw = self.gw.as_ref().and_then(|(_, g)| g.poll_timeout());
        [queued, sled, gw].into_iter().flatten().min()
    }

    /// Advances to the next wake-up (if it is no later than `limit`) and handles it. False when idle.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.settle();
        let Some(at) = self.next_wakeup().filter(|at| *at <= limit) else { return false };
        self.now = self.now.max(at);
        let now = self.now;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ev = entry.remove();
            self.deliver(ev);
            self.settle();
        }
        self.sled.handle_timeout(now);
        if let Some((_, gw)) = self.gw.as_mut() {
            gw.handle_timeout(now);
        }
        self.settle();
        true
    }

    /// Runs until `d` from now (bounded: it always ends, since every step advances time or drains work).
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        let mut steps = 0u32;
        while self.step(limit) {
            steps += 1;
            assert!(steps < 1_000_000, "simulation does not settle");
        }
        self.now = limit;
        self.sled.handle_timeout(limit);
        if let Some((_, gw)) = self.gw.as_mut() {
            gw.handle_timeout(limit);
        }
        self.settle();
    }

    // ── Commands and faults ──

    pub fn ask(&mut self, id: &str, tool: &str) -> uplink_proto::PermKey {
        let key = self.sled.request_permission_with_id(
            self.now,
            id.to_owned(),
            tool.to_owned(),
            RawValue::from_string("{}".to_owned()).expect("JSON"),
        );
        self.settle();
        key
    }

    pub fn gateway_mcp(&mut self, body: &str) -> Option<McpId> {
        let now = self.now;
        let id = self.gw.as_mut().and_then(|(_, g)| g.send_mcp(now, body, None).ok());
        self.settle();
        id
    }

    /// A frame arrives at the sled on its current connection (if any), as if the gateway had sent it.
    pub fn inject_to_sled(&mut self, text: &str) {
        if let Some(conn) = self.sled.connection() {
            self.at(Duration::ZERO, Ev::ToSled(conn, Wire::Text(text.to_owned())));
        }
    }

    /// A frame arrives at the gateway's current session, as if the sled had sent it.
    pub fn inject_to_gateway(&mut self, text: &str) {
        if let Some((conn, _)) = self.gw.as_ref() {
            let conn = *conn;
            self.at(Duration::ZERO, Ev::ToGateway(conn, Wire::Text(text.to_owned())));
        }
    }

    /// Both ends see the connection fail (a reset).
    pub fn cut(&mut self) {
        let now = self.now;
        self.queue.retain(|_, ev| !matches!(ev, Ev::ToGateway(..) | Ev::ToSled(..) | Ev::Accept(_)));
        if let Some((conn, mut gw)) = self.gw.take() {
            gw.handle_disconnected(now);
            self.gw = Some((conn, gw));
            self.settle();
            self.sled.handle_disconnected(now, conn);
        }
        self.settle();
    }

    pub fn decision(&self, key: uplink_proto::PermKey) -> Option<&Decided> {
        self.decided.iter().find(|d| d.key == key)
    }

    pub fn gateway_events(&self) -> Vec<GatewayEvent> {
        self.gw_log
            .iter()
            .filter_map(|(_, o)| match o {
                GatewayOutput::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn identified_count(&self) -> usize {
        self.gateway_events().iter().filter(|e| matches!(e, GatewayEvent::Identified { .. })).count()
    }
}

//! A sled machine and the gateway's hub run against each other in memory, in virtual time. Each connection the
//! sled opens is a connection the hub accepts (with the one credential of the sled's token), so
//! reconnection is the hub's replacement rule at work.
//!
//! Everything crossing the "network" is an event in a time-ordered queue with a per-direction latency.
//! The WebSocket libraries' automatic pong is modelled (a ping delivered is answered). Fault hooks: cut
//! the link (both sides see the loss), black-hole it (nothing more arrives, nobody is told), take the
//! gateway down (connections refused), slow local MCP server, approver that never answers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use uplink_proto::gateway::{
    ConnHandle, Credential, CredentialId, HeldRequest, Hub, HubConfig, HubEvent, HubOutput, McpTicket, PublicPermId,
    SessionConfig, Verdict,
};
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
    Decide(PublicPermId, Verdict),
}

/// What the simulated local MCP server answers for a body.
pub type McpServer = Box<dyn FnMut(&str) -> McpReply>;
/// What the simulated approver decides for a tool, and after how long (`None`: never).
pub type Approver = Box<dyn FnMut(&str) -> Option<(Decision, Duration)>>;

pub struct Pair {
    pub now: Instant,
    pub sled: Sled,
    /// The gateway's hub.
    pub hub: Hub,
    /// The hub's handle for each sled connection it accepted, and back.
    handles: BTreeMap<ConnId, ConnHandle>,
    conns: BTreeMap<ConnHandle, ConnId>,
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
    /// Everything the hub emitted.
    pub gw_log: Vec<HubOutput>,
    /// Every text frame delivered to the hub: (when, connection, text).
    pub delivered_to_gateway: Vec<(Instant, ConnId, String)>,
    pub decided: Vec<Decided>,
    /// The hub's configuration, to start another after a crash.
    hub_config: HubConfig,
    /// What an adapter would keep of the hub ([`HubEvent::Resumable`]), and the last reserved handle.
    pub kept: BTreeMap<PublicPermId, HeldRequest>,
    ids_until: u64,
    /// Each decision a person made that the hub acknowledged: (id, decision, when).
    pub acknowledged: Vec<(PublicPermId, Decision, Instant)>,
    /// The tool of each request the hub announced, by public id.
    pub tools: BTreeMap<PublicPermId, String>,
}

/// The message the simulated person sends with every decision on a request for `tool`.
pub fn message_for(tool: &str) -> String {
    format!("about {tool}")
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
    pub fn new(sled: SledConfig, gw_config: SessionConfig) -> Pair {
        Pair::with_hub(sled, HubConfig::new(gw_config))
    }

    /// As [`Pair::new`], with the hub's whole configuration.
    pub fn with_hub(sled: SledConfig, hub_config: HubConfig) -> Pair {
        let mut pair = Pair {
            now: Instant::ZERO,
            sled: Sled::new(sled, Instant::ZERO).expect("valid sled config"),
            hub: Hub::new(hub_config.clone(), Instant::ZERO).expect("valid gateway config"),
            handles: BTreeMap::new(),
            conns: BTreeMap::new(),
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
            delivered_to_gateway: Vec::new(),
            decided: Vec::new(),
            hub_config,
            kept: BTreeMap::new(),
            ids_until: 0,
            acknowledged: Vec::new(),
            tools: BTreeMap::new(),
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
            while let Some(out) = self.hub.poll_output() {
                progressed = true;
                self.gw_output(out.clone());
                self.gw_log.push(out);
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
            // The simulated local server has no sessions and no standalone stream.
            Output::ListenMcp(listen) => {
                let after = self.mcp_latency;
                self.at(after, Ev::McpDone(listen.call, McpReply::NoStream));
            }
            Output::NotifyMcp { .. } | Output::EndMcpSession { .. } => {}
            Output::Event(_) => {}
        }
    }

    fn gw_output(&mut self, out: HubOutput) {
        let lat = self.latency;
        let sled_conn = |p: &Pair, h: &ConnHandle| p.conns.get(h).copied();
        match out {
            HubOutput::Send { conn, text } => {
                let Some(conn) = sled_conn(self, &conn) else { return };
                if self.duplicate_to_sled {
                    self.at(lat, Ev::ToSled(conn, Wire::Text(text.clone())));
                }
                self.at(lat, Ev::ToSled(conn, Wire::Text(text)));
            }
            HubOutput::Ping { conn } => {
                if let Some(conn) = sled_conn(self, &conn) {
                    self.at(lat, Ev::ToSled(conn, Wire::Ping));
                }
            }
            HubOutput::Close { conn, .. } => {
                // The hub has forgotten the connection: the sled sees it end.
                if let Some(c) = self.conns.remove(&conn) {
                    self.handles.remove(&c);
                    self.at(lat, Ev::ToSled(c, Wire::End));
                }
            }
            HubOutput::Event(HubEvent::PermissionRequested { id, tool_name, .. }) => {
                self.tools.insert(id, tool_name.clone());
                if let Some((decision, after)) = (self.approver)(&tool_name) {
                    self.approvals.push((tool_name.clone(), decision));
                    // Every verdict carries words naming its request, so that a message reaching another one shows.
                    let verdict = Verdict::new(decision).with_message(message_for(&tool_name));
                    self.at(after, Ev::Decide(id, verdict));
                }
            }
            HubOutput::Event(HubEvent::SledDisconnected { conn, .. }) => {
                if let Some(c) = self.conns.remove(&conn) {
                    self.handles.remove(&c);
                }
            }
            HubOutput::Event(HubEvent::Resumable { request }) => {
                self.kept.insert(request.id, request);
            }
            HubOutput::Event(HubEvent::ResumableGone { id }) => {
                self.kept.remove(&id);
            }
            HubOutput::Event(HubEvent::IdsReserved { until }) => self.ids_until = until,
            _ => {}
        }
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        let lat = self.latency;
        match ev {
            Ev::Accept(conn) => {
                if self.gateway_up && !self.blackhole {
                    let handle = self.hub.accept(now, Credential::unbound(CredentialId(0))).expect("accepting");
                    self.handles.insert(conn, handle);
                    self.conns.insert(handle, conn);
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
                let Some(&handle) = self.handles.get(&conn) else { return };
                match wire {
                    Wire::Text(t) => {
                        self.hub.handle_received(now, handle, Received::Text(&t));
                        self.delivered_to_gateway.push((now, conn, t));
                    }
                    Wire::Ping => {
                        self.hub.handle_received(now, handle, Received::Ping);
                        self.at(lat, Ev::ToSled(conn, Wire::Pong));
                    }
                    Wire::Pong => self.hub.handle_received(now, handle, Received::Pong),
                    Wire::End => {
                        self.handles.remove(&conn);
                        self.conns.remove(&handle);
                        self.hub.handle_disconnected(now, handle);
                    }
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
            Ev::Decide(id, verdict) => {
                let decision = verdict.decision;
                if self.hub.decide(now, id, verdict).is_ok() {
                    self.acknowledged.push((id, decision, now));
                }
            }
        }
    }

    /// The earliest moment something happens: a delivery or a machine's timer.
    fn next_wakeup(&self) -> Option<Instant> {
        let queued = self.queue.keys().next().map(|(t, _)| *t);
        let sled = self.sled.poll_timeout();
        let gw = self.hub.poll_timeout();
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
        self.hub.handle_timeout(now);
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
        self.hub.handle_timeout(limit);
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

    pub fn gateway_mcp(&mut self, body: &str) -> Option<McpTicket> {
        let now = self.now;
        let project = self.sled.config().project.clone();
        let ticket = self.hub.send_mcp(now, &project, body, None, true).ok();
        self.settle();
        ticket
    }

    /// The sled connection that holds the sled's project at the hub, if any.
    pub fn gateway_conn(&self) -> Option<ConnId> {
        let handle = self.hub.holder(&self.sled.config().project)?;
        self.conns.get(&handle).copied()
    }

    /// A frame arrives at the sled on its current connection (if any), as if the gateway had sent it.
    pub fn inject_to_sled(&mut self, text: &str) {
        if let Some(conn) = self.sled.connection() {
            self.at(Duration::ZERO, Ev::ToSled(conn, Wire::Text(text.to_owned())));
        }
    }

    /// A frame arrives at the gateway's current session, as if the sled had sent it.
    pub fn inject_to_gateway(&mut self, text: &str) {
        if let Some(conn) = self.gateway_conn() {
            self.at(Duration::ZERO, Ev::ToGateway(conn, Wire::Text(text.to_owned())));
        }
    }

    /// Both ends see the connection fail (a reset).
    pub fn cut(&mut self) {
        let now = self.now;
        self.queue.retain(|_, ev| !matches!(ev, Ev::ToGateway(..) | Ev::ToSled(..) | Ev::Accept(_)));
        for (conn, handle) in std::mem::take(&mut self.handles) {
            self.conns.remove(&handle);
            self.hub.handle_disconnected(now, handle);
            self.settle();
            self.sled.handle_disconnected(now, conn);
        }
        self.settle();
    }

    /// The sled process dies (its callers with it) and a new one starts at once with `seed`: a new
    /// incarnation. The gateway sees its connections reset; what the old one asked is gone with it.
    pub fn restart_sled(&mut self, seed: u64) {
        let now = self.now;
        self.queue.retain(|_, ev| !matches!(ev, Ev::ToGateway(..) | Ev::ToSled(..) | Ev::Accept(_) | Ev::McpDone(..)));
        for (_, handle) in std::mem::take(&mut self.handles) {
            self.conns.remove(&handle);
            self.hub.handle_disconnected(now, handle);
            self.settle();
        }
        let cfg = SledConfig { seed, ..self.sled.config().clone() };
        self.sled = Sled::new(cfg, now).expect("valid sled config");
        self.decided.clear();
        self.settle();
    }

    /// The gateway crashes and starts again at once: a new hub, given what an adapter kept of the old one.
    /// Its connections are gone (the sled sees a reset); decisions people are about to make still come,
    /// by public id, to the new one.
    pub fn restart_gateway(&mut self) {
        let now = self.now;
        self.queue.retain(|_, ev| !matches!(ev, Ev::ToGateway(..) | Ev::ToSled(..) | Ev::Accept(_)));
        let conns: Vec<ConnId> = std::mem::take(&mut self.handles).into_keys().collect();
        self.conns.clear();
        self.hub = Hub::new(self.hub_config.clone(), now).expect("valid gateway config");
        self.hub.start_ids_after(self.ids_until);
        self.hub.restore_held(now, self.kept.values().cloned().collect());
        self.settle();
        for conn in conns {
            self.sled.handle_disconnected(now, conn);
        }
        self.settle();
    }

    pub fn decision(&self, key: uplink_proto::PermKey) -> Option<&Decided> {
        self.decided.iter().find(|d| d.key == key)
    }

    pub fn gateway_events(&self) -> Vec<HubEvent> {
        self.gw_log
            .iter()
            .filter_map(|o| match o {
                HubOutput::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn identified_count(&self) -> usize {
        self.gateway_events().iter().filter(|e| matches!(e, HubEvent::SledConnected { .. })).count()
    }
}

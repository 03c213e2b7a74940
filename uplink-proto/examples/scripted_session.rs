//! A whole sled session, scripted, in virtual time: the sans-IO core driven by a simulated gateway and a
//! simulated local MCP server. Prints each step; exits non-zero if any step does not behave as expected.
//!
//! Run it with `cargo run -p uplink-proto --example scripted_session`.
#![allow(clippy::print_stdout)]

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use uplink_proto::{
    ConnId, ConnectError, Decided, Decision, Event, GatewayFrame, Instant, McpReply, Output, RawValue, Received, Sled,
    SledConfig, SledFrame,
};

/// How the simulated gateway behaves right now.
#[derive(Clone, Copy, PartialEq)]
enum Gateway {
    /// Refuses connections.
    Down,
    /// Answers pings and permission requests (denying `Write`, approving the rest).
    Healthy,
    /// Accepts the TCP connection but never sends anything again (a half-open link).
    Silent,
    /// Answers pings but never decides permissions.
    Undecided,
}

struct Sim {
    sled: Sled,
    now: Instant,
    gateway: Gateway,
    /// Frames the gateway will deliver to the sled.
    to_sled: VecDeque<(ConnId, String)>,
    /// Local MCP calls to answer.
    mcp: VecDeque<uplink_proto::McpCall>,
    decided: Vec<Decided>,
}

impl Sim {
    fn log(&self, what: impl AsRef<str>) {
        println!("[{:>8.3}s] {}", self.now.as_micros() as f64 / 1e6, what.as_ref());
    }

    /// Carries out every output; the simulated peers react at once.
    fn drain(&mut self) {
        while let Some(out) = self.sled.poll_output() {
            match out {
                Output::Connect { conn } => {
                    if self.gateway == Gateway::Down {
                        self.log("sled → connect: refused (gateway down)");
                        self.sled.handle_connect_failed(self.now, conn, ConnectError::Other);
                    } else {
                        self.log("sled → connect: WebSocket open");
                        self.sled.handle_connected(self.now, conn);
                    }
                }
                Output::Send { conn, text } => {
                    self.log(format!("sled → gateway: {text}"));
                    self.gateway_sees(conn, &text);
                }
                Output::Ping { conn } => {
                    if matches!(self.gateway, Gateway::Healthy | Gateway::Undecided) {
                        self.sled.handle_received(self.now, conn, Received::Pong);
                    }
                }
                Output::Close { code, reason, .. } => self.log(format!("sled → close {code} ({reason})")),
                Output::Decided(d) => {
                    self.log(format!("decision for {}: {:?} ({:?})", d.id, d.decision, d.cause));
                    self.decided.push(d);
                }
                Output::CallMcp(call) => {
                    self.log(format!("sled → local MCP: POST {}", call.body));
                    self.mcp.push_back(call);
                }
                Output::CancelMcp { call } => self.log(format!("sled → local MCP: cancel call {}", call.0)),
                Output::ListenMcp(listen) => self.log(format!("sled → local MCP: GET stream {}", listen.call.0)),
                Output::NotifyMcp { body, .. } => self.log(format!("sled → local MCP: POST {body}")),
                Output::EndMcpSession { session } => self.log(format!("sled → local MCP: DELETE session {session}")),
                Output::Event(Event::Link(state)) => self.log(format!("link: {state:?}")),
                Output::Event(Event::Standing(refused)) => self.log(format!("standing: refused {refused:?}")),
                Output::Event(Event::FrameIgnored(why)) => self.log(format!("ignored a frame: {why:?}")),
            }
        }
    }

    fn gateway_sees(&mut self, conn: ConnId, text: &str) {
        if self.gateway != Gateway::Healthy {
            return;
        }
        if let Ok(SledFrame::PermRequest { req_id, tool_name, .. }) = SledFrame::decode(text) {
            let decision = if tool_name == "Write" { Decision::Deny } else { Decision::Approve };
            let reply =
                GatewayFrame::PermResponse { req_id: req_id.into_owned().into(), decision, message: None }.encode();
            self.to_sled.push_back((conn, reply));
        }
    }

    /// Runs until `until`: delivers frames, answers MCP calls, fires timers.
    fn run_until(&mut self, until: Instant) {
        loop {
            self.drain();
            if let Some((conn, text)) = self.to_sled.pop_front() {
                self.log(format!("gateway → sled: {text}"));
                self.sled.handle_received(self.now, conn, Received::Text(&text));
                continue;
            }
            if let Some(call) = self.mcp.pop_front() {
                let reply = RawValue::from_string(r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#.into())
                    .expect("valid JSON");
                self.sled.handle_mcp_reply(self.now, call.call, McpReply::Response(reply));
                continue;
            }
            match self.sled.poll_timeout() {
                Some(at) if at <= until => {
                    self.now = at;
                    self.sled.handle_timeout(at);
                }
                _ => break,
            }
        }
        self.now = until;
        self.sled.handle_timeout(until);
        self.drain();
    }

    fn ask(&mut self, id: &str, tool: &str) {
        self.log(format!("agent asks: may I run {tool}? (id {id})"));
        let input = RawValue::from_string(r#"{"command":"ls"}"#.into()).expect("valid JSON");
        self.sled.request_permission_with_id(self.now, id.into(), tool.into(), input);
    }

    fn gateway_sends(&mut self, text: &str) {
        if let Some(conn) = self.sled.connection() {
            self.to_sled.push_back((conn, text.to_owned()));
        }
    }

    fn decision_of(&self, id: &str) -> Option<Decision> {
        self.decided.iter().rev().find(|d| d.id == id).map(|d| d.decision)
    }
}

fn at(secs: f64) -> Instant {
    Instant::from_micros((secs * 1e6) as u64)
}

fn main() -> ExitCode {
    let config = SledConfig {
        backoff_jitter: false, // the original's exact delays, for a readable transcript
        sled_version: Some(env!("CARGO_PKG_VERSION").into()),
        ..SledConfig::new("demo-project")
    };
    let sled = match Sled::new(config, Instant::ZERO) {
        Ok(sled) => sled,
        Err(e) => {
            println!("invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sim = Sim {
        sled,
        now: Instant::ZERO,
        gateway: Gateway::Down,
        to_sled: VecDeque::new(),
        mcp: VecDeque::new(),
        decided: Vec::new(),
    };
    let mut failures = Vec::new();
    let mut expect = |what: &str, ok: bool| {
        println!("{} {what}", if ok { "  ✓" } else { "  ✗" });
        if !ok {
            failures.push(what.to_owned());
        }
    };

    println!("── The gateway is down at first: the sled backs off 1 s and retries ──");
    sim.ask("req-1", "Bash");
    sim.run_until(at(0.5));
    sim.gateway = Gateway::Healthy;
    sim.run_until(at(2.0));
    expect("connected after one failed attempt", sim.sled.stats().connections == 1);
    expect("queued request approved once connected", sim.decision_of("req-1") == Some(Decision::Approve));

    println!("── Permissions: approve and deny ──");
    sim.ask("req-2", "Write");
    sim.run_until(at(3.0));
    expect("Write denied by the gateway", sim.decision_of("req-2") == Some(Decision::Deny));

    println!("── The gateway relays an MCP request to the sled's local MCP endpoint ──");
    sim.gateway_sends(r#"{"type":"mcp_request","req_id":"mcp-1","payload":{"body":"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}"}}"#);
    sim.run_until(at(4.0));
    expect("MCP call answered", sim.sled.mcp_calls_in_flight() == 0 && sim.sled.stats().frames_sent >= 4);

    println!("── Garbage from the gateway is ignored ──");
    sim.gateway_sends("this is not JSON");
    sim.gateway_sends(r#"{"type":"perm_response","req_id":"nobody","payload":{"approved":true}}"#);
    sim.run_until(at(5.0));
    expect("two frames ignored", sim.sled.stats().malformed_frames == 1 && sim.sled.stats().unmatched_responses == 1);

    println!("── Heartbeats every 10 s ──");
    sim.run_until(at(25.0));
    expect("still connected", sim.sled.connection().is_some());

    println!("── The link goes half-open: nothing arrives any more ──");
    sim.gateway = Gateway::Silent;
    sim.ask("req-3", "Bash");
    sim.run_until(at(60.0));
    expect("in-flight request denied when the dead link is detected", sim.decision_of("req-3") == Some(Decision::Deny));
    sim.gateway = Gateway::Healthy;
    sim.run_until(at(70.0));
    expect("reconnected by itself", sim.sled.stats().connections == 2);

    println!("── The gateway never decides: the request times out and is withdrawn ──");
    sim.gateway = Gateway::Undecided;
    sim.ask("req-4", "Bash");
    sim.run_until(at(70.0 + 121.0));
    expect("undecided request denied at its deadline", sim.decision_of("req-4") == Some(Decision::Deny));

    println!("── Shutdown ──");
    sim.ask("req-5", "Bash");
    sim.run_until(sim.now + Duration::from_secs(1));
    sim.sled.shutdown(sim.now);
    sim.drain();
    expect("pending request denied on shutdown", sim.decision_of("req-5") == Some(Decision::Deny));
    expect("no timer left", sim.sled.poll_timeout().is_none());

    if failures.is_empty() {
        println!("All steps behaved as expected.");
        ExitCode::SUCCESS
    } else {
        println!("{} step(s) did not behave as expected: {failures:?}", failures.len());
        ExitCode::FAILURE
    }
}

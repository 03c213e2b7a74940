//! A thin driver for scenario tests: virtual time, output collection, frame helpers.
#![allow(dead_code, unreachable_pub)]

pub mod hub;
pub mod pair;

use std::time::Duration;

use serde_json::Value;
use uplink_proto::{ConnId, Decided, Instant, Output, PermKey, RawValue, Received, Sled, SledConfig};

/// Defaults with jitter off, so delays are exact.
pub fn config() -> SledConfig {
    SledConfig { backoff_jitter: false, ..SledConfig::new("test-proj") }
}

pub fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).expect("valid JSON")
}

pub fn perm_response(id: &str, approved: bool, always_allow: bool) -> String {
    format!(
        r#"{{"type":"perm_response","req_id":"{id}","payload":{{"approved":{approved},"always_allow":{always_allow}}}}}"#
    )
}

pub fn mcp_request(req_id: &str, body: &str) -> String {
    serde_json::json!({"type": "mcp_request", "req_id": req_id, "payload": {"body": body}}).to_string()
}

pub struct Driver {
    pub sled: Sled,
    pub now: Instant,
    /// The attempt the machine asked for last and that was not answered yet.
    pub pending_connect: Option<ConnId>,
}

impl Driver {
    /// A machine at t = 0 s and the outputs of its creation.
    pub fn new(cfg: SledConfig) -> (Driver, Vec<Output>) {
        let sled = Sled::new(cfg, Instant::ZERO).expect("valid config");
        let mut d = Driver { sled, now: Instant::ZERO, pending_connect: None };
        let outs = d.drain();
        (d, outs)
    }

    /// A machine that is already connected (on the returned connection), with the start-up outputs drained.
    pub fn connected(cfg: SledConfig) -> (Driver, ConnId) {
        let (mut d, _) = Driver::new(cfg);
        let (conn, _) = d.connect();
        (d, conn)
    }

    pub fn drain(&mut self) -> Vec<Output> {
        let mut outs = Vec::new();
        while let Some(o) = self.sled.poll_output() {
            if let Output::Connect { conn } = o {
                self.pending_connect = Some(conn);
            }
            outs.push(o);
        }
        outs
    }

    /// Moves virtual time forward by `d` and fires timers.
    pub fn advance(&mut self, d: Duration) -> Vec<Output> {
        self.now = self.now + d;
        self.sled.handle_timeout(self.now);
        self.drain()
    }

    pub fn secs(&mut self, s: f64) -> Vec<Output> {
        self.advance(Duration::from_secs_f64(s))
    }

    /// Jumps to the machine's next deadline and fires it.
    pub fn next_timeout(&mut self) -> Vec<Output> {
        let at = self.sled.poll_timeout().expect("a timer is armed");
        assert!(at >= self.now, "deadline in the past");
        self.now = at;
        self.sled.handle_timeout(at);
        self.drain()
    }

    /// Completes the pending connection attempt.
    pub fn connect(&mut self) -> (ConnId, Vec<Output>) {
        let conn = self.pending_connect.take().expect("a connection attempt is pending");
        self.sled.handle_connected(self.now, conn);
        (conn, self.drain())
    }

    pub fn text(&mut self, conn: ConnId, text: &str) -> Vec<Output> {
        self.sled.handle_received(self.now, conn, Received::Text(text));
        self.drain()
    }

    pub fn request(&mut self, id: &str, tool: &str) -> (PermKey, Vec<Output>) {
        let key =
            self.sled.request_permission_with_id(self.now, id.to_owned(), tool.to_owned(), raw(r#"{"command":"ls"}"#));
        (key, self.drain())
    }

    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Output> {
        self.sled.handle_disconnected(self.now, conn);
        self.drain()
    }
}

/// The frames sent, parsed.
pub fn sent(outs: &[Output]) -> Vec<Value> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { text, .. } => Some(serde_json::from_str(text).expect("sent frames are JSON")),
            _ => None,
        })
        .collect()
}

/// The `type`s of the frames sent.
pub fn sent_types(outs: &[Output]) -> Vec<String> {
    sent(outs).iter().map(|v| v["type"].as_str().unwrap_or("?").to_owned()).collect()
}

pub fn decided(outs: &[Output]) -> Vec<Decided> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Decided(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

/// Everything but events.
pub fn actions(outs: &[Output]) -> Vec<&Output> {
    outs.iter().filter(|o| !matches!(o, Output::Event(_))).collect()
}

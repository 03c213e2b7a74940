//! A thin driver for the hub's scenario tests: virtual time, output collection, the frames a sled sends.

use std::time::Duration;

use serde_json::{Value, json};
use uplink_proto::gateway::{CloseReason, ConnHandle, Credential, Hub, HubConfig, HubEvent, HubOutput};
use uplink_proto::{Instant, Received};

/// A hub on virtual time.
pub struct HubDriver {
    /// The hub under test.
    pub hub: Hub,
    /// The time handed to it.
    pub now: Instant,
}

impl HubDriver {
    /// A hub of `cfg`, at time zero.
    pub fn with(cfg: HubConfig) -> HubDriver {
        HubDriver { hub: Hub::new(cfg, Instant::ZERO).expect("valid"), now: Instant::ZERO }
    }
    /// Everything the hub has to say.
    pub fn drain(&mut self) -> Vec<HubOutput> {
        std::iter::from_fn(|| self.hub.poll_output()).collect()
    }
    /// A frame from `conn`.
    pub fn text(&mut self, conn: ConnHandle, text: &str) {
        self.hub.handle_received(self.now, conn, Received::Text(text));
    }
    /// A sled of `project` connects with `credential` and identifies.
    pub fn identify(&mut self, credential: Credential, project: &str) -> ConnHandle {
        let conn = self.hub.accept(self.now, credential).expect("accepting");
        self.text(conn, &json!({"type":"identity","req_id":"identity","payload":{"project":project}}).to_string());
        conn
    }
    /// Time passes; what the hub has to say then.
    pub fn advance(&mut self, d: Duration) -> Vec<HubOutput> {
        self.now = self.now + d;
        self.hub.handle_timeout(self.now);
        self.drain()
    }
}

/// The events, but for the reservations of public ids.
pub fn events(outs: &[HubOutput]) -> Vec<&HubEvent> {
    outs.iter()
        .filter_map(|o| match o {
            HubOutput::Event(HubEvent::IdsReserved { .. }) => None,
            HubOutput::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// The frames sent to `to`.
pub fn sent(outs: &[HubOutput], to: ConnHandle) -> Vec<Value> {
    outs.iter()
        .filter_map(|o| match o {
            HubOutput::Send { conn, text } if *conn == to => serde_json::from_str(text).ok(),
            _ => None,
        })
        .collect()
}

/// The connections closed, with their reasons.
pub fn closes(outs: &[HubOutput]) -> Vec<(ConnHandle, CloseReason)> {
    outs.iter()
        .filter_map(|o| match o {
            HubOutput::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

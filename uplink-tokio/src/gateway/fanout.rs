//! The event stream's fan-out: the hub task publishes each event once, written as JSON once, and every
//! client's queue holds the same text ([`Fanout`], [`Subscription`]). Each client has a byte budget for what
//! it has not read yet; a client that falls further behind gets a `lagged` item and its stream ends. A
//! client with nothing queued always gets the next event, however large. The number of clients has a budget
//! too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use tokio::sync::mpsc;
use uplink_proto::gateway::HubEvent;

use super::wall::{Wall, stored};
use crate::http::json_string;

/// One event as the clients get it, written once.
pub(crate) struct EventText {
    /// The SSE event's name.
    pub(super) kind: &'static str,
    /// Its JSON data.
    pub(super) data: String,
}

/// What a client's queue holds.
pub(crate) enum Item {
    Event(Arc<EventText>),
    /// The client fell behind its budget: this is the last item.
    Lagged {
        queued: usize,
        budget: usize,
    },
}

struct Client {
    tx: mpsc::UnboundedSender<Item>,
    /// Bytes queued and not yet taken by the client's stream.
    queued: Arc<AtomicUsize>,
}

/// Every client of the event stream, owned by the hub task.
pub(crate) struct Fanout {
    clients: Vec<Client>,
    budget: usize,
    max_clients: usize,
}

/// One client's end: its queue and the count of bytes in it.
pub(crate) struct Subscription {
    rx: mpsc::UnboundedReceiver<Item>,
    queued: Arc<AtomicUsize>,
}

impl Fanout {
    /// No clients yet; at most `max_clients` at once, each with at most `budget` bytes queued.
    pub(crate) fn new(budget: usize, max_clients: usize) -> Fanout {
        Fanout { clients: Vec::new(), budget, max_clients }
    }

    /// A new client, getting every event from now on; `None` when `max_clients` are already listening.
    pub(crate) fn subscribe(&mut self) -> Option<Subscription> {
        self.clients.retain(|c| !c.tx.is_closed());
        if self.clients.len() >= self.max_clients {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        self.clients.push(Client { tx, queued: queued.clone() });
        Some(Subscription { rx, queued })
    }

    /// Whether anyone listens.
    pub(crate) fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Sends `event` to every client within its budget; drops the others, after a `lagged` item, and those
    /// that went away.
    pub(crate) fn publish(&mut self, event: &HubEvent, wall: &Wall) {
        self.clients.retain(|c| !c.tx.is_closed());
        if self.clients.is_empty() {
            return;
        }
        let Some((kind, data)) = event_text(event, wall) else { return };
        let len = data.len();
        let text = Arc::new(EventText { kind, data });
        let budget = self.budget;
        self.clients.retain(|c| {
            let queued = c.queued.load(Ordering::Acquire);
            if queued > 0 && queued + len > budget {
                let _ = c.tx.send(Item::Lagged { queued, budget });
                return false;
            }
            c.queued.fetch_add(len, Ordering::AcqRel);
            c.tx.send(Item::Event(text.clone())).is_ok()
        });
    }
}

impl Subscription {
    /// The next item; `None` once the client was dropped or the hub task ended.
    pub(super) async fn next(&mut self) -> Option<Item> {
        let item = self.rx.recv().await?;
        if let Item::Event(e) = &item {
            self.queued.fetch_sub(e.data.len(), Ordering::AcqRel);
        }
        Some(item)
    }
}

/// An event's SSE name and JSON data; `None` for events not shown on the stream.
pub(super) fn event_text(event: &HubEvent, wall: &Wall) -> Option<(&'static str, String)> {
    Some(match event {
        HubEvent::SledConnected { project, protocol, sled_version, capabilities, .. } => (
            "sled_connected",
            json!({"project": project, "protocol": protocol, "sled_version": sled_version, "capabilities": capabilities})
                .to_string(),
        ),
        HubEvent::SledRefused { project, reason, .. } => (
            "sled_refused",
            json!({"project": project, "code": reason.code(), "reason": reason.text()}).to_string(),
        ),
        HubEvent::SledDisconnected { project, .. } => ("sled_disconnected", json!({"project": project}).to_string()),
        HubEvent::SledStale { project } => ("sled_stale", json!({"project": project}).to_string()),
        HubEvent::SledAlive { project } => ("sled_alive", json!({"project": project}).to_string()),
        HubEvent::PermissionRequested { id, project, req_id, tool_name, tool_input, .. } => (
            "permission_requested",
            format!(
                r#"{{"id":"{id}","project":{},"req_id":{},"tool_name":{},"tool_input":{tool_input}}}"#,
                json_string(project),
                json_string(req_id),
                json_string(tool_name),
            ),
        ),
        HubEvent::PermissionDecided { id, project, verdict, rule, waited, held } => (
            "permission_decided",
            json!({
                "id": id.to_string(),
                "project": project,
                "decision": verdict.decision.as_str(),
                "message": verdict.message.as_deref(),
                "by": verdict.by.as_deref(),
                "rule": rule.map(|r| r.0),
                "waited_ms": crate::http::millis(*waited),
                "held": held,
            })
            .to_string(),
        ),
        HubEvent::PermissionHeld { id, project } => {
            ("permission_held", json!({"id": id.to_string(), "project": project}).to_string())
        }
        HubEvent::PermissionResumed { id, project, .. } => {
            ("permission_resumed", json!({"id": id.to_string(), "project": project}).to_string())
        }
        HubEvent::PermissionDelivered { id, project, .. } => {
            ("permission_delivered", json!({"id": id.to_string(), "project": project}).to_string())
        }
        HubEvent::PermissionAnsweredAgain { id, project, .. } => {
            ("permission_answered_again", json!({"id": id.to_string(), "project": project}).to_string())
        }
        HubEvent::PermissionWithdrawn { id, project, reason, waited } => (
            "permission_withdrawn",
            json!({
                "id": id.to_string(),
                "project": project,
                "reason": reason.as_str(),
                "waited_ms": crate::http::millis(*waited),
            })
            .to_string(),
        ),
        HubEvent::PermissionAutoDecided { project, req_id, tool_name, decision, rule, .. } => (
            "permission_auto_decided",
            json!({
                "project": project,
                "req_id": req_id,
                "tool_name": tool_name,
                "decision": decision.as_str(),
                "rule": rule.map(|r| r.0),
            })
            .to_string(),
        ),
        HubEvent::RuleAdded { rule } => {
            ("rule_added", serde_json::to_string(&stored(rule, wall)).unwrap_or_default())
        }
        HubEvent::RuleRemoved { id, by } => {
            ("rule_removed", json!({"id": id.0, "by": by.as_deref()}).to_string())
        }
        HubEvent::RulesChangedElsewhere { added, removed } => (
            "rules_changed",
            json!({"added": added.iter().map(|r| r.0).collect::<Vec<_>>(),
                   "removed": removed.iter().map(|r| r.0).collect::<Vec<_>>()})
            .to_string(),
        ),
        _ => return None,
    })
}

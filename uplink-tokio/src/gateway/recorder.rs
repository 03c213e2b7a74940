//! The audit log's writer side: [`Recorder`] turns the hub's events into records, in the hub task; and
//! [`record_line`], a record as the API and `uplink audit export` write it.
//!
//! One record per step of a permission's life: `request` (project, the sled credential's label, tool,
//! SHA-256 of the canonical input and the input, or, redacted, `"redacted"` and the input's HMAC-SHA256 under
//! a secret of the store's), then `end` (decided by a named principal,
//! with the rule an "always allow" made; or withdrawn: `cancelled`, `deadline`, `connection_lost`; with how
//! long it waited); or one `auto` record for a request a rule or a budget decided as it arrived (an input
//! nested deeper than the gateway accepts, which is denied so, keeps only the SHA-256 of its text). Rule
//! changes are `rule_added` and `rule_removed`. Sealing and the chain are the store's (`store::audit`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;
use uplink_proto::gateway::{ConnHandle, HeldRequest, HubEvent, PublicPermId};
use uplink_proto::wire::{MAX_INPUT_DEPTH, json_depth};

use super::wall::{Wall, stored, stored_resumable};
use crate::http::millis;
use crate::store::audit::{Sealed, hex, sha256_hex};
use crate::store::{Change, Entry, Orphan};

fn unix_ms_now() -> u64 {
    u64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis())
        .unwrap_or(u64::MAX)
}

/// Turns the hub's events into audit records and rule changes. Owned by the hub task.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// Each open connection's credential label.
    labels: HashMap<ConnHandle, Arc<str>>,
    /// Each pending permission's tool, for its end record (as many as the hub's budgets let be pending).
    tools: HashMap<PublicPermId, String>,
    /// The outcome of each decision made while its sled was away, for the end record of its delivery.
    held_outcomes: HashMap<PublicPermId, &'static str>,
    /// Leave tool inputs out, keeping their keyed hash under this secret of the store's.
    redact: Option<[u8; 32]>,
    wall: Wall,
}

impl Recorder {
    /// A recorder on `wall`'s clock; `redact`: leave tool inputs out, keeping their keyed hash under this
    /// secret of the store's.
    pub(crate) fn new(redact: Option<[u8; 32]>, wall: Wall) -> Recorder {
        Recorder { labels: HashMap::new(), tools: HashMap::new(), held_outcomes: HashMap::new(), redact, wall }
    }

    /// `conn` was accepted with the credential labelled `label`.
    pub(crate) fn opened(&mut self, conn: ConnHandle, label: &str) {
        self.labels.insert(conn, Arc::from(label));
    }

    /// `conn` is gone.
    pub(crate) fn closed(&mut self, conn: ConnHandle) {
        self.labels.remove(&conn);
    }

    /// A restarted gateway holds `request` again: its records name its tool, and say what was decided.
    pub(crate) fn restored(&mut self, request: &HeldRequest) {
        self.tools.insert(request.id, request.tool_name.clone());
        if let Some(verdict) = &request.verdict {
            self.held_outcomes.insert(request.id, verdict.decision.as_str());
        }
    }

    fn input(&self, entry: Entry, tool_input: &Arc<str>) -> Entry {
        // An input nested deeper than the gateway accepts (its request was denied for it) is not kept: no
        // reader of the record could parse it again. Its hash is of its text as it arrived.
        if json_depth(tool_input) > MAX_INPUT_DEPTH {
            return entry
                .with("input_sha256", sha256_hex(&**tool_input))
                .with("input", Value::Null)
                .with("input_not_kept", format!("nested more than {MAX_INPUT_DEPTH} levels deep"));
        }
        // The text the pending request holds, shared: it is parsed once, as the record is written (a parsed
        // tree of a hostile input takes many times its text's size, and a batch holds up to 64 records).
        entry.with_input(tool_input.clone(), self.redact)
    }

    fn label(&self, conn: ConnHandle) -> Value {
        self.labels.get(&conn).map_or(Value::Null, |l| Value::from(&**l))
    }

    /// The records and rule changes `event` makes, appended to `out`.
    pub(crate) fn record(&mut self, event: &HubEvent, out: &mut Vec<Change>) {
        let at = unix_ms_now();
        let entry = match event {
            HubEvent::PermissionRequested { id, project, req_id, tool_name, tool_input, .. } => {
                self.tools.insert(*id, tool_name.clone());
                let mut e = Entry::new(at, "request").with("credential", self.label(id.conn)).with("req_id", &**req_id);
                (e.perm, e.project, e.tool) = (Some(id.to_string()), Some(project.clone()), Some(tool_name.clone()));
                self.input(e, tool_input)
            }
            HubEvent::PermissionAutoDecided {
                conn,
                project,
                req_id,
                tool_name,
                tool_input,
                decision,
                rule,
                message,
                ..
            } => {
                let mut e = Entry::new(at, "auto")
                    .with("credential", self.label(*conn))
                    .with("req_id", &**req_id)
                    .with("decided_by", if rule.is_some() { "rule" } else { "budget" })
                    .with("rule", rule.map(|r| r.0))
                    .with("message", message.as_deref())
                    .with("waited_ms", 0);
                (e.project, e.tool) = (Some(project.clone()), Some(tool_name.clone()));
                e.outcome = Some(decision.as_str().to_owned());
                self.input(e, tool_input)
            }
            HubEvent::PermissionDecided { id, project, verdict, rule, waited, held } => {
                // Decided while its sled is away: a `decided` record now, and the `end` when it is delivered
                // (or when it ends undelivered).
                let kind = if *held { "decided" } else { "end" };
                let mut e = Entry::new(at, kind)
                    .with("decided_by", "person")
                    .with("by", verdict.by.as_deref())
                    .with("message", verdict.message.as_deref())
                    .with("rule_created", rule.map(|r| r.0))
                    .with("waited_ms", millis(*waited));
                let tool = if *held {
                    self.held_outcomes.insert(*id, verdict.decision.as_str());
                    self.tools.get(id).cloned()
                } else {
                    self.tools.remove(id)
                };
                (e.perm, e.project, e.tool) = (Some(id.to_string()), Some(project.clone()), tool);
                e.outcome = Some(verdict.decision.as_str().to_owned());
                e
            }
            HubEvent::PermissionWithdrawn { id, project, reason, waited } => {
                let mut e = Entry::new(at, "end").with("decided_by", "nobody").with("waited_ms", millis(*waited));
                if let Some(undelivered) = self.held_outcomes.remove(id) {
                    e = e.with("undelivered", undelivered);
                }
                (e.perm, e.project, e.tool) = (Some(id.to_string()), Some(project.clone()), self.tools.remove(id));
                e.outcome = Some(reason.as_str().to_owned());
                e
            }
            HubEvent::PermissionHeld { id, project } => {
                let mut e = Entry::new(at, "held").with("why", "its sled's link dropped; it may come back");
                (e.perm, e.project, e.tool) =
                    (Some(id.to_string()), Some(project.clone()), self.tools.get(id).cloned());
                e
            }
            HubEvent::PermissionResumed { id, project, conn } => {
                let mut e = Entry::new(at, "resumed").with("credential", self.label(*conn));
                (e.perm, e.project, e.tool) =
                    (Some(id.to_string()), Some(project.clone()), self.tools.get(id).cloned());
                e
            }
            HubEvent::PermissionDelivered { id, project, conn } => {
                let mut e = Entry::new(at, "end")
                    .with("decided_by", "person")
                    .with("delivered_after_resume", true)
                    .with("credential", self.label(*conn));
                (e.perm, e.project, e.tool) = (Some(id.to_string()), Some(project.clone()), self.tools.remove(id));
                e.outcome = self.held_outcomes.remove(id).map(str::to_owned);
                e
            }
            HubEvent::PermissionAnsweredAgain { id, project, conn } => {
                let mut e = Entry::new(at, "answered_again")
                    .with("why", "its sled asked again: the decision had not reached it")
                    .with("credential", self.label(*conn));
                (e.perm, e.project) = (Some(id.to_string()), Some(project.clone()));
                e
            }
            HubEvent::Resumable { request } => {
                out.push(Change::PutResumable(stored_resumable(request, &self.wall)));
                return;
            }
            HubEvent::ResumableGone { id } => {
                out.push(Change::DeleteResumable(id.to_string()));
                return;
            }
            HubEvent::HeldGiven { ids, to } => {
                out.push(Change::MoveResumables { ids: ids.iter().map(ToString::to_string).collect(), to: *to });
                return;
            }
            HubEvent::IdsReserved { until } => {
                out.push(Change::ReserveIds(*until));
                return;
            }
            // The claim's row goes with the records of its connection's end, in one commit.
            HubEvent::ClaimEnded { project, generation } => {
                out.push(Change::EndClaim { project: project.clone(), generation: *generation });
                return;
            }
            HubEvent::RuleAdded { rule } => {
                let kept = stored(rule, &self.wall);
                let e = Entry::new(at, "rule_added").with("rule", serde_json::to_value(&kept).unwrap_or_default());
                out.push(Change::PutRule(kept));
                e
            }
            HubEvent::RuleRemoved { id, by } => {
                out.push(Change::DeleteRule(id.0));
                Entry::new(at, "rule_removed")
                    .with("rule", id.0)
                    .with("by", by.as_deref())
                    .with("why", if by.is_some() { "removed" } else { "its connection ended" })
            }
            _ => return,
        };
        out.push(Change::Record(entry));
    }
}

/// The record that ends `orphan`, a request that was waiting at a node that died, at `at_ms`: lost with its
/// connection, decided by nobody.
pub(crate) fn lost_with_its_node(orphan: &Orphan, at_ms: u64) -> Entry {
    let mut e = Entry::new(at_ms, "end")
        .with("decided_by", "nobody")
        .with("waited_ms", at_ms.saturating_sub(orphan.at_ms))
        .with("why", format!("the node it waited at (node {}) is gone: its lease lapsed", orphan.node));
    (e.perm, e.project, e.tool) = (Some(orphan.perm.clone()), orphan.project.clone(), orphan.tool.clone());
    e.outcome = Some("connection_lost".to_owned());
    e
}

/// One record as the API and `uplink audit export` write it: `{"seq", "prev", "hash", "record"}` (and
/// `"chain"` first for a chain other than the first), where
/// `record` is the sealed text itself (so that `hash = SHA-256(prev ‖ record)` can be checked from it).
pub(crate) fn record_line(record: &Sealed) -> String {
    let mut line = String::with_capacity(record.text.len() + 200);
    if record.chain != 0 {
        let _ = write!(line, r#"{{"chain":{},"#, record.chain);
    } else {
        line.push('{');
    }
    let _ = write!(
        line,
        r#""seq":{},"prev":"{}","hash":"{}","record":{}}}"#,
        record.seq,
        hex(&record.prev),
        hex(&record.hash),
        record.text
    );
    line
}

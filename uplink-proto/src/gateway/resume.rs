//! Requests that outlive a sled's link: the hub's side of the `resume` extension.
//!
//! A connection whose sled offered `resume` (and named its incarnation) is accepted at its claim
//! ([`ResumeConfig`] on). When it ends, what was pending on it is **held** here ([`HeldRequest`]), under its
//! public id, instead of being withdrawn: it stays listed, may be decided (the verdict is kept, and
//! delivered when the sled comes back), and is found again by its [`ResumeKey`] (credential, project,
//! incarnation, `req_id`) when the sled sends it again on a new connection:
//!
//! ```text
//!  pending on a connection ──drop (accepted)──▶ held ──sent again, same tool and input──▶ pending again (same id)
//!                                                │    (or, decided meanwhile: the decision is delivered at once)
//!                                                ├─ sent again with another tool or input ─▶ the new one is denied;
//!                                                │                                           the held one stays
//!                                                ├─ the sled's `resumed` without it, another incarnation of
//!                                                │  the project, the window or the sled's deadline passing ─▶ ended
//!                                                └─ beyond the budget when held ─▶ ended at once
//! ```
//!
//! A revoked credential's requests are never held. Held requests count toward the fleet's pending-bytes
//! budget, and each project's toward its session limits.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use super::credential::CredentialId;
use super::verdict::Verdict;
use crate::ids::PublicPermId;
use crate::time::Instant;

/// The hub's `resume` settings ([`HubConfig::resume`](super::HubConfig::resume)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResumeConfig {
    /// How long a request is held after its sled's link dropped (or the gateway restarted) before it ends
    /// as `connection_lost`; its sled's own deadline ends it sooner. Also how long a decision sent to a
    /// sled is remembered, to send again if the sled sends its request again. Default 10 min.
    pub window: Duration,
    /// Most decisions remembered per project after they were sent (the oldest is forgotten first; a request
    /// sent again after its decision was forgotten is a new one, for a person). Default 64.
    pub max_answered_per_project: usize,
    /// Most bytes of remembered decisions' requests (tool name, input, id) in all. Default 64 MiB.
    pub max_answered_bytes: usize,
    /// Most requests held in all, whatever their projects (each project's are also within its session
    /// budgets): a credential that may be any project cannot make the hub hold without end by claiming one
    /// project after another. Beyond, a request is not held (it ends as `connection_lost`). Default 65,536.
    pub max_held: usize,
    /// How long after the acceptance the sled has to show that it saw it (its `resumed`, which it sends at
    /// once); what it asks meanwhile is announced only then, or when this passes. Default 5 s.
    pub confirm_within: Duration,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            window: Duration::from_secs(600),
            max_answered_per_project: 64,
            max_answered_bytes: 64 << 20,
            max_held: 65_536,
            confirm_within: Duration::from_secs(5),
        }
    }
}

/// The longest incarnation a sled may name; a longer one is not accepted (the sled then gets the original
/// protocol).
pub const MAX_INCARNATION_BYTES: usize = 64;

/// What names a request across its sled's connections: the sled's credential, its project, its process's
/// incarnation and the request's own id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResumeKey {
    /// The credential of the connection it arrived on.
    pub credential: CredentialId,
    /// The project.
    pub project: String,
    /// The sled process's incarnation.
    pub incarnation: Arc<str>,
    /// The sled's id for it.
    pub req_id: String,
}

/// A request the hub holds for a sled that went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldRequest {
    /// Its public id, the same as while it was pending.
    pub id: PublicPermId,
    /// What names it.
    pub key: ResumeKey,
    /// The tool.
    pub tool_name: String,
    /// The tool's input, as the JSON text it arrived in.
    pub tool_input: Arc<str>,
    /// When it first arrived.
    pub since: Instant,
    /// When its sled denies it, from the timeout the sled announced; `None` when it announced none.
    pub deadline: Option<Instant>,
    /// A decision made while its sled was away, delivered when the sled sends the request again; or, with
    /// `sent`, the decision sent to the sled.
    pub verdict: Option<Verdict>,
    /// The verdict was sent to the sled at least once (it may not have arrived): the request has ended, and
    /// is remembered only to send the same verdict again if the sled sends the request again (after a drop
    /// or a gateway restart). Not listed.
    pub sent: bool,
}

impl HeldRequest {
    /// What it costs the pending-input budgets: tool name, input and id, as a session counts them.
    pub fn bytes(&self) -> usize {
        self.tool_name.len() + self.tool_input.len() + self.key.req_id.len()
    }
}

/// The held requests, by public id and by key, with their ends in order. Each project's count and bytes
/// are kept for its budget.
#[derive(Clone, Debug, Default)]
pub(crate) struct Held {
    entries: BTreeMap<PublicPermId, (HeldRequest, Instant)>,
    by_key: BTreeMap<ResumeKey, PublicPermId>,
    ends: BTreeSet<(Instant, PublicPermId)>,
    /// Each project's count and bytes, and its entries by end.
    per_project: BTreeMap<String, (usize, usize)>,
    by_project: BTreeMap<String, BTreeSet<(Instant, PublicPermId)>>,
    bytes: usize,
}

impl Held {
    /// How many requests are held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held, as the budgets count them.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many requests and bytes `project` has held.
    pub(crate) fn load(&self, project: &str) -> (usize, usize) {
        self.per_project.get(project).copied().unwrap_or_default()
    }

    /// Holds `request` until `ends` (or its deadline, if sooner). A request with the key or id of one held
    /// already replaces nothing: false.
    pub(crate) fn insert(&mut self, request: HeldRequest, ends: Instant) -> bool {
        if self.by_key.contains_key(&request.key) || self.entries.contains_key(&request.id) {
            return false;
        }
        let ends = request.deadline.map_or(ends, |d| d.min(ends));
        let load = self.per_project.entry(request.key.project.clone()).or_default();
        load.0 += 1;
        load.1 += request.bytes();
        self.bytes += request.bytes();
        self.by_key.insert(request.key.clone(), request.id);
        self.ends.insert((ends, request.id));
        self.by_project.entry(request.key.project.clone()).or_default().insert((ends, request.id));
        self.entries.insert(request.id, (request, ends));
        true
    }

    /// The id of `project`'s entry that ends first, if it has any.
    pub(crate) fn first_of(&self, project: &str) -> Option<PublicPermId> {
        self.by_project.get(project).and_then(|e| e.first()).map(|(_, id)| *id)
    }

    /// The id of the entry that ends first.
    pub(crate) fn first(&self) -> Option<PublicPermId> {
        self.ends.first().map(|(_, id)| *id)
    }

    /// The held request `id`.
    pub(crate) fn get(&self, id: PublicPermId) -> Option<&HeldRequest> {
        self.entries.get(&id).map(|(r, _)| r)
    }

    /// The held request named `key`, if any.
    pub(crate) fn find(&self, key: &ResumeKey) -> Option<&HeldRequest> {
        self.by_key.get(key).and_then(|id| self.get(*id))
    }

    /// Keeps `verdict` for the held request `id`, to deliver when its sled comes back.
    pub(crate) fn record(&mut self, id: PublicPermId, verdict: Verdict) -> bool {
        match self.entries.get_mut(&id) {
            Some((request, _)) => {
                request.verdict = Some(verdict);
                true
            }
            None => false,
        }
    }

    /// Lets go of `id`, returning it.
    pub(crate) fn remove(&mut self, id: PublicPermId) -> Option<HeldRequest> {
        let (request, ends) = self.entries.remove(&id)?;
        self.by_key.remove(&request.key);
        self.ends.remove(&(ends, id));
        if let Some(by_end) = self.by_project.get_mut(&request.key.project) {
            by_end.remove(&(ends, id));
            if by_end.is_empty() {
                self.by_project.remove(&request.key.project);
            }
        }
        if let Some(load) = self.per_project.get_mut(&request.key.project) {
            load.0 -= 1;
            load.1 -= request.bytes();
            if load.0 == 0 {
                self.per_project.remove(&request.key.project);
            }
        }
        self.bytes -= request.bytes();
        Some(request)
    }

    /// When the next held request ends.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.ends.first().map(|(at, _)| *at)
    }

    /// A held request whose end has come at `now`, let go.
    pub(crate) fn pop_ended(&mut self, now: Instant) -> Option<HeldRequest> {
        let &(at, id) = self.ends.first()?;
        if at > now {
            return None;
        }
        self.remove(id)
    }

    /// The ids of `project`'s held requests for which `which` holds.
    pub(crate) fn ids_where(&self, project: &str, which: impl Fn(&HeldRequest) -> bool) -> Vec<PublicPermId> {
        let Some(of_project) = self.by_project.get(project) else { return Vec::new() };
        of_project.iter().filter(|(_, id)| self.get(*id).is_some_and(&which)).map(|(_, id)| *id).collect()
    }

    /// Every held request, by public id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &HeldRequest> + '_ {
        self.entries.values().map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ConnHandle, PermId};
    use crate::wire::Decision;

    fn held(conn: u64, project: &str, incarnation: &str, req_id: &str, deadline: Option<u64>) -> HeldRequest {
        HeldRequest {
            id: PublicPermId { conn: ConnHandle(conn), perm: PermId(0) },
            key: ResumeKey {
                credential: CredentialId(1),
                project: project.into(),
                incarnation: incarnation.into(),
                req_id: req_id.into(),
            },
            tool_name: "Bash".into(),
            tool_input: r#"{"command":"ls"}"#.into(),
            since: Instant::ZERO,
            deadline: deadline.map(Instant::from_secs),
            verdict: None,
            sent: false,
        }
    }

    #[test]
    fn held_requests_are_found_both_ways_counted_per_project_and_end_in_order() {
        let mut h = Held::default();
        let a = held(1, "web", "i1", "r1", None);
        let b = held(2, "web", "i1", "r2", Some(5));
        let c = held(3, "api", "i2", "r1", None);
        for r in [&a, &b, &c] {
            assert!(h.insert(r.clone(), Instant::from_secs(10)));
        }
        assert!(!h.insert(held(9, "web", "i1", "r1", None), Instant::from_secs(10)), "the same key twice");
        assert_eq!(h.load("web"), (2, 2 * a.bytes()));
        assert_eq!(h.find(&b.key).map(|r| r.id), Some(b.id));
        assert!(h.record(a.id, Verdict::new(Decision::Approve)));
        assert_eq!(h.get(a.id).and_then(|r| r.verdict.as_ref()).map(|v| v.decision), Some(Decision::Approve));
        // Its deadline ends b first; then the window the others.
        assert_eq!(h.poll_timeout(), Some(Instant::from_secs(5)));
        assert_eq!(h.pop_ended(Instant::from_secs(4)), None);
        assert_eq!(h.pop_ended(Instant::from_secs(5)).map(|r| r.id), Some(b.id));
        assert_eq!(h.ids_where("web", |k| k.key.incarnation.as_ref() == "i1"), [a.id]);
        assert_eq!(h.remove(c.id).map(|r| r.key.project), Some("api".into()));
        assert_eq!((h.iter().count(), h.bytes(), h.load("api")), (1, a.bytes(), (0, 0)));
        assert_eq!(h.pop_ended(Instant::from_secs(10)).map(|r| r.id), Some(a.id));
        assert_eq!((h.iter().count(), h.bytes(), h.poll_timeout()), (0, 0, None));
    }
}

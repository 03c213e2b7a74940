//! The [`Hub`]: every sled connection of one gateway, and the fleet's rules above them.
//!
//! quinn-proto's `Endpoint` owns its `Connection`s and routes to them by handle; the hub does the same for
//! [`SledSession`] sessions. It decides everything that needs more than one connection to decide:
//!
//! - **Claims.** Which connection holds each project. A connection that identifies as a project its
//!   [`Credential`] does not cover is closed ([`CloseReason::ProjectNotPermitted`]). A project held by a live
//!   connection is taken over only by a connection with the same credential (a restarted sled): the old one
//!   is closed with [`CloseReason::Replaced`]. A connection with another credential is refused while the
//!   holder lives ([`CloseReason::ProjectHeld`]):
//!
//!   ```text
//!    identified ──▶ claim ──┬─ covered; free, gone, or held with the same credential ──▶ holds it (an old holder: 4000)
//!                           ├─ not covered by the credential ──────────────────────────▶ closed 4003
//!                           └─ held by a live connection with another credential ──────▶ closed 4009
//!    holder's connection ends ──▶ gone: listed as disconnected until pushed out of the memory of gone sleds
//!   ```
//! - **Public ids and routing.** Each pending permission has a [`PublicPermId`] (`"3-0"`: the connection's
//!   handle and the session's number); a decision names it and reaches exactly that session. An MCP request
//!   names a project and reaches its live connection; its [`McpTicket`] names the answer.
//! - **Memory of gone sleds.** A project whose connection ended stays listed (`connected: false`) until
//!   [`HubConfig::max_disconnected_sleds`] more recent disconnections push it out.
//! - **Listings** of sleds and pending permissions, from the hub's own data. Tool inputs stay the JSON text
//!   they arrived in, shared (`Arc<str>`), never re-parsed.
//! - **Every close**, as a [`CloseReason`].
//! - **Requests that outlive a link** ([`HubConfig::resume`]): a sled that offers `resume` is accepted at
//!   its claim; what is pending when its connection ends is held ([`super::resume`]) under the same public
//!   id, and found again when the sled sends it again.
//!
//! Driving it: the same four kinds of method as the sled. Inputs `handle_*(now, conn, …)`; commands
//! ([`Hub::accept`], [`Hub::decide`], [`Hub::send_mcp`], [`Hub::shutdown`]); outputs drained with
//! [`Hub::poll_output`] until `None`, then [`Hub::poll_timeout`]. Every input first fires the timers that are
//! due. Inputs naming a connection the hub no longer has are ignored.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use super::close::CloseReason;
use super::credential::ProjectScope;
use super::credential::{Credential, CredentialId};
use super::hub_config::{CONFIG_RULE_IDS, HubConfig};
use super::hub_outputs::{
    AcceptError, Decided, HubDecideError, HubEvent, HubOutput, McpAnswer, McpHttp, McpRefused, PermEnd,
    PermissionSummary, RuleRefused, SledSummary,
};
use super::lease::Lease;
use super::mcp_endpoint::{self, EndpointRequest, ExchangeEnd, ExchangeKind, McpEndpoint, Refusal, Route};
use super::policy;
use super::resume::{Held, HeldRequest, ResumeKey};
use super::shared_claims::{ClaimAnswer, Identity, QUEUE_SLACK, SharedClaims};
use super::shared_rules::{self, Removed, RuleIds};
use super::sled_session::{
    DecideError, McpId, PermId, SendMcpError, SessionConfig, SessionConfigError, SessionEvent, SessionOutput,
    SledSession, Withdrawn,
};
use super::verdict::{AlwaysScope, Verdict};
use crate::ids::{ConnHandle, McpTicket, PublicPermId};
use crate::rules::{self, Effect, Request, Rule, RuleId, RuleSet};
use crate::time::Instant;
use crate::wire::Decision;
use crate::wire::Received;

#[derive(Clone, Debug)]
struct Conn {
    session: SledSession,
    credential: Credential,
    /// The project this connection holds, once its claim succeeded.
    project: Option<String>,
    /// Its entry in the hub's timer set.
    timer: Option<Instant>,
    /// Its session's pending input bytes, as last added to the hub's total.
    counted_bytes: usize,
    /// The sled's incarnation, once `resume` is accepted on this connection.
    incarnation: Option<Arc<str>>,
}

#[derive(Clone, Debug)]
struct Project {
    /// The connection holding it; `None` once that connection ended.
    holder: Option<ConnHandle>,
    /// The credential of the connection that holds it (or held it last).
    credential: CredentialId,
    /// When the holder claimed it.
    since: Instant,
    /// Set once disconnected.
    gone: Option<Gone>,
}

#[derive(Copy, Clone, Debug)]
struct Gone {
    /// The place in the order of disconnections.
    seq: u64,
    last_seen: Instant,
    stale: bool,
}

/// Every sled connection of a gateway and the fleet's rules. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Hub {
    cfg: HubConfig,
    /// The sessions' rules: `cfg.session` without the auto flags, which are rules here.
    session_cfg: SessionConfig,
    /// The permission rules in force.
    rules: RuleSet,
    /// The id the next rule made here gets.
    next_rule: u64,
    /// The block rule ids come from, when rules are shared with other gateways ([`super::shared_rules`]).
    rule_ids: Option<RuleIds>,
    /// The rules removed here lately, never put back by a reading from elsewhere.
    removed_rules: Removed,
    now: Instant,
    conns: BTreeMap<ConnHandle, Conn>,
    /// Each connection's next deadline, earliest first.
    timers: BTreeSet<(Instant, ConnHandle)>,
    projects: BTreeMap<String, Project>,
    /// Disconnected projects, oldest first, by their place in the order of disconnections. An entry whose
    /// project has reconnected (or disconnected again since) is out of date and skipped.
    gone_order: VecDeque<(u64, String)>,
    gone_count: usize,
    next_gone: u64,
    next_conn: u64,
    /// Connection handles up to this one are reserved ([`HubEvent::IdsReserved`]).
    reserved_conns: u64,
    shutting_down: bool,
    /// Draining until then ([`Hub::drain`]): each connection is closed once nothing of it is in flight.
    draining: Option<Instant>,
    /// Open connections that have not identified (their claim has not succeeded).
    unidentified: usize,
    /// Pending input bytes across every connection (the sum of their `counted_bytes`).
    pending_bytes: usize,
    /// Recently ended permissions, oldest first, for late decisions.
    ended: BTreeMap<PublicPermId, PermEnd>,
    ended_order: VecDeque<PublicPermId>,
    /// The gateway's MCP endpoint: its client sessions and their exchanges.
    endpoint: McpEndpoint,
    /// Requests held for sleds that went away (`resume`).
    held: Held,
    /// Decisions sent to sleds that resume, remembered to send again to a request that comes again.
    answered: Held,
    /// Requests held once and pending again on a new connection: their public id, and where they are.
    aliases: BTreeMap<PublicPermId, (ConnHandle, PermId)>,
    alias_of: BTreeMap<(ConnHandle, PermId), Alias>,
    /// Requests that arrived while their sled's confirmation of `resume` was awaited: not announced until it
    /// is settled (the sled may deny them at a drop before it saw the acceptance).
    unannounced: BTreeSet<(ConnHandle, PermId)>,
    /// Claims settled with other gateways ([`HubConfig::shared_claims`]).
    shared: Option<SharedClaims>,
    /// The node's lease in its cluster ([`HubConfig::lease`]).
    lease: Option<Lease>,
    out: VecDeque<HubOutput>,
}

/// A request as the hub's events name it.
struct Asked {
    project: String,
    credential: CredentialId,
    req_id: String,
    tool_name: String,
    tool_input: Arc<str>,
}

/// How many connection handles a hub reserves at once ([`HubEvent::IdsReserved`]).
pub const ID_BLOCK: u64 = 1024;

/// A request pending again after it was held: its first public id, arrival and deadline (its sled's deadline
/// never moves; the session on its new connection counts from the request's arrival there).
#[derive(Copy, Clone, Debug)]
struct Alias {
    id: PublicPermId,
    since: Instant,
    deadline: Option<Instant>,
}

/// The message of the denial of a request sent again under the key of a held one, with another tool or
/// input: never decided by what was decided for the one held.
pub const RESUMED_OTHERWISE: &str =
    "a request with this id was already made by this sled with another tool or input; it is not resumed";

impl Hub {
    /// An empty hub at `now`.
    pub fn new(config: HubConfig, now: Instant) -> Result<Hub, SessionConfigError> {
        SledSession::new(config.session.clone(), now)?;
        // The auto flags become rules: the policy has one path.
        let mut rules = config.rules.clone();
        rules.extend(policy::flag_rules(&config.auto_deny, &config.auto_approve));
        let next_rule = rules.iter().map(|r| r.id.0).filter(|&id| id < CONFIG_RULE_IDS).max().map_or(1, |m| m + 1);
        let session_cfg = config.session.clone();
        let endpoint = McpEndpoint::new(config.mcp_endpoint.clone());
        let shared = config.shared_claims.clone().map(SharedClaims::new);
        let lease = config.lease.map(Lease::new);
        Ok(Hub {
            cfg: config,
            session_cfg,
            rules: RuleSet::new(rules),
            next_rule,
            rule_ids: None,
            removed_rules: Removed::default(),
            now,
            conns: BTreeMap::new(),
            timers: BTreeSet::new(),
            projects: BTreeMap::new(),
            gone_order: VecDeque::new(),
            gone_count: 0,
            next_gone: 0,
            next_conn: 0,
            reserved_conns: 0,
            shutting_down: false,
            draining: None,
            unidentified: 0,
            pending_bytes: 0,
            ended: BTreeMap::new(),
            ended_order: VecDeque::new(),
            endpoint,
            held: Held::default(),
            answered: Held::default(),
            aliases: BTreeMap::new(),
            alias_of: BTreeMap::new(),
            unannounced: BTreeSet::new(),
            shared,
            lease,
            out: VecDeque::new(),
        })
    }

    /// Holds `requests` again, as a restarted gateway does with what its store kept (each for the resume
    /// window from `now`, or its sled's deadline if sooner; one whose deadline has passed, or beyond a
    /// project's budget, ends as `connection_lost` at once). Public ids made from now on never take theirs.
    /// Does nothing without [`HubConfig::resume`].
    pub fn restore_held(&mut self, now: Instant, requests: Vec<HeldRequest>) {
        for request in &requests {
            self.start_ids_after(request.id.conn.0);
        }
        self.adopt_held(now, requests);
    }

    /// Holds `requests` that another node of the cluster held and is gone, as [`Hub::restore_held`] does,
    /// but leaves the ids this hub hands out as they are: they are of that node's range, which never meets
    /// this one's. The adapter hands them over with the grant of their project's claim, before the sled's
    /// queued requests are taken up, so that those it sends again find them (and a decision made before that
    /// node died is delivered). Does nothing without [`HubConfig::resume`].
    pub fn adopt_held(&mut self, now: Instant, requests: Vec<HeldRequest>) {
        self.advance(now);
        for request in requests {
            // One this hub holds already (it came back here) stays as it is.
            if self.held.get(request.id).is_some() || self.answered.get(request.id).is_some() {
                continue;
            }
            if request.sent {
                self.remember_answer(request);
            } else {
                self.hold(request);
            }
        }
    }

    /// Gives what this hub holds for the sleds of `project` with `credential` (requests held while their
    /// sled was away, decisions remembered to send again) to node `to` of the cluster, where that sled came
    /// back and whose claim on the project was granted: they leave this hub without ending, and
    /// [`HubEvent::HeldGiven`] says which, for the store to hand them over in the same commit. A person's
    /// decision for one of them from then on goes to `to`. How many were given.
    pub fn give_held(&mut self, now: Instant, project: &str, credential: CredentialId, to: u64) -> usize {
        self.advance(now);
        let of = |h: &HeldRequest| h.key.credential == credential;
        let mut ids = self.held.ids_where(project, of);
        ids.extend(self.answered.ids_where(project, of));
        for id in &ids {
            if self.held.remove(*id).is_none() {
                self.answered.remove(*id);
            }
        }
        if !ids.is_empty() {
            self.event(HubEvent::HeldGiven { ids: ids.clone(), to });
        }
        ids.len()
    }

    /// Makes the connection handles (the first half of every public id) that this hub hands out from now on
    /// greater than `conn`: a restarted gateway passes the last [`HubEvent::IdsReserved`] its predecessor
    /// announced, so that no public id ever names two requests (a person's decision for an old id could
    /// otherwise reach a new request).
    pub fn start_ids_after(&mut self, conn: u64) {
        self.next_conn = self.next_conn.max(conn);
        self.reserved_conns = self.reserved_conns.max(conn);
    }

    /// The requests held for sleds that went away, by public id.
    pub fn held(&self) -> impl Iterator<Item = &HeldRequest> + '_ {
        self.held.iter()
    }

    // ── Getters ──

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// The permission rules in force, the auto flags' included.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Adds `rule` under a new id, which it returns (the id `rule` has is ignored); it applies to requests
    /// from now on. [`HubEvent::RuleAdded`] follows. Refused beyond [`HubConfig::max_rules`] rules (the
    /// configuration's and the auto flags' not counted), and when it would never apply.
    pub fn add_rule(&mut self, now: Instant, rule: Rule) -> Result<RuleId, RuleRefused> {
        self.advance(now);
        if self.is_fenced() {
            return Err(RuleRefused::Fenced);
        }
        // A rule accepted and silently never consulted does not exist.
        if rule.is_expired(self.now) || matches!(&rule.projects, ProjectScope::Patterns(p) if p.is_empty()) {
            return Err(RuleRefused::NeverApplies);
        }
        let counted = self.rules.rules().iter().filter(|r| r.id.0 < CONFIG_RULE_IDS).count();
        if counted >= self.cfg.max_rules {
            return Err(RuleRefused::TooMany);
        }
        let id = self.take_rule_id().ok_or(if self.rule_ids.is_some() {
            RuleRefused::NoIds
        } else {
            RuleRefused::TooMany
        })?;
        let rule = rule.with_id(id);
        self.rules.insert(rule.clone());
        self.event(HubEvent::RuleAdded { rule });
        Ok(id)
    }

    /// From now on, the ids of rules made here come from `ids`, a block drawn from the store this hub
    /// shares with other gateways (what was left of the last is given up; ids at or above
    /// [`CONFIG_RULE_IDS`] are never used). [`HubEvent::RuleIdsWanted`] asks for the next when a quarter is
    /// left ([`super::shared_rules`]).
    pub fn use_rule_ids(&mut self, ids: core::ops::Range<u64>) {
        let (block, next) = RuleIds::of(&ids);
        (self.rule_ids, self.next_rule) = (Some(block), next);
    }

    /// The next rule id, if one is left.
    fn take_rule_id(&mut self) -> Option<RuleId> {
        let Some(block) = &mut self.rule_ids else {
            let id = (self.next_rule < CONFIG_RULE_IDS).then_some(RuleId(self.next_rule));
            self.next_rule += u64::from(id.is_some());
            return id;
        };
        let (id, ask) = block.take(&mut self.next_rule);
        if ask {
            self.event(HubEvent::RuleIdsWanted);
        }
        id
    }

    /// Rules another gateway added (`added`, each with the id it was given there) or removed (`removed`), as
    /// the adapter found them between two readings of the store the gateways share; in force for requests
    /// from now on ([`super::shared_rules`]). A rule this hub has already is kept as it is; only rules made
    /// at run time are added or removed. [`HubEvent::RulesChangedElsewhere`] follows when anything changed.
    /// A fenced hub changes nothing.
    pub fn handle_rules_elsewhere(&mut self, now: Instant, added: Vec<Rule>, removed: Vec<RuleId>) {
        self.advance(now);
        if self.is_fenced() {
            return;
        }
        let (added, removed) = shared_rules::apply_elsewhere(&mut self.rules, &self.removed_rules, added, removed);
        if !added.is_empty() || !removed.is_empty() {
            self.event(HubEvent::RulesChangedElsewhere { added, removed });
        }
    }

    /// Removes the rule `id` on behalf of `by`; whether there was one ([`HubEvent::RuleRemoved`] follows if
    /// so). The configuration's rules and the auto flags' ([`CONFIG_RULE_IDS`] and above) cannot be removed.
    pub fn remove_rule(&mut self, now: Instant, id: RuleId, by: impl Into<Arc<str>>) -> bool {
        self.advance(now);
        if self.is_fenced() || id.0 >= CONFIG_RULE_IDS || !self.rules.remove(id) {
            return false;
        }
        self.removed_rules.note(id);
        self.event(HubEvent::RuleRemoved { id, by: Some(by.into()) });
        true
    }

    /// Open connections, identified or not.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Open connections that have not identified yet.
    pub fn unidentified(&self) -> usize {
        self.unidentified
    }

    /// Bytes of pending permission requests across every connection.
    pub fn pending_input_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Disconnected sleds still listed. Never above [`HubConfig::max_disconnected_sleds`].
    pub fn remembered_disconnected(&self) -> usize {
        self.gone_count
    }

    /// The places kept in the order of disconnections, out-of-date ones included: at most twice the
    /// remembered sleds plus 64.
    pub fn disconnection_log_len(&self) -> usize {
        self.gone_order.len()
    }

    /// Ended permissions remembered for late decisions. Never above [`HubConfig::max_ended_permissions`].
    pub fn remembered_ended(&self) -> usize {
        self.ended.len()
    }

    /// The project `conn` holds, if its claim succeeded and it is still open.
    pub fn project_of(&self, conn: ConnHandle) -> Option<&str> {
        self.conns.get(&conn)?.project.as_deref()
    }

    /// The live connection holding `project`.
    pub fn holder(&self, project: &str) -> Option<ConnHandle> {
        self.projects.get(project)?.holder
    }

    /// The credential `conn` was accepted with.
    pub fn credential_of(&self, conn: ConnHandle) -> Option<&Credential> {
        Some(&self.conns.get(&conn)?.credential)
    }

    /// True once [`Hub::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// True once the hub fenced itself ([`HubConfig::lease`], [`super::lease`]): it acts no more.
    pub fn is_fenced(&self) -> bool {
        self.lease.as_ref().is_some_and(Lease::is_fenced)
    }

    /// Every listed sled, connected or remembered, by project name.
    pub fn sleds(&self, now: Instant) -> Vec<SledSummary> {
        let now = now.max(self.now);
        self.projects
            .iter()
            .map(|(project, p)| {
                let live = p.holder.and_then(|h| self.conns.get(&h));
                match (live, p.gone) {
                    (Some(c), _) => SledSummary {
                        project: project.clone(),
                        connected: true,
                        stale: c.session.is_stale(),
                        connected_for: now.saturating_duration_since(p.since),
                        last_seen_ago: now.saturating_duration_since(c.session.last_seen()),
                        pending_permissions: c.session.pending_permissions(),
                        pending_mcp: c.session.pending_mcp(),
                    },
                    (None, gone) => SledSummary {
                        project: project.clone(),
                        connected: false,
                        stale: gone.is_some_and(|g| g.stale),
                        connected_for: Duration::ZERO,
                        last_seen_ago: gone.map_or(Duration::ZERO, |g| now.saturating_duration_since(g.last_seen)),
                        pending_permissions: self.held.load(project).0,
                        pending_mcp: 0,
                    },
                }
            })
            .collect()
    }

    /// Every pending permission, by public id (connection, then arrival).
    pub fn permissions(&self, now: Instant) -> Vec<PermissionSummary> {
        let now = now.max(self.now);
        let mut list = Vec::new();
        for (conn, c) in &self.conns {
            let Some(project) = &c.project else { continue };
            for (perm, p) in c.session.pending() {
                if self.unannounced.contains(&(*conn, perm)) {
                    continue;
                }
                let alias = self.alias_of.get(&(*conn, perm));
                let since = alias.map_or(p.since, |a| a.since);
                let deadline = alias.map_or(p.deadline, |a| a.deadline);
                list.push(PermissionSummary {
                    id: alias.map_or(PublicPermId { conn: *conn, perm }, |a| a.id),
                    project: project.clone(),
                    req_id: String::from(p.req_id),
                    tool_name: String::from(p.tool_name),
                    tool_input: p.tool_input.clone(),
                    age: now.saturating_duration_since(since),
                    deadline_in: deadline.map(|d| d.saturating_duration_since(now)),
                    held: false,
                    decided: None,
                });
            }
        }
        for h in self.held.iter() {
            list.push(PermissionSummary {
                id: h.id,
                project: h.key.project.clone(),
                req_id: h.key.req_id.clone(),
                tool_name: h.tool_name.clone(),
                tool_input: h.tool_input.clone(),
                age: now.saturating_duration_since(h.since),
                deadline_in: h.deadline.map(|d| d.saturating_duration_since(now)),
                held: true,
                decided: h.verdict.as_ref().map(|v| v.decision),
            });
        }
        list
    }

    // ── Outputs ──

    /// The next thing to do, or `None`. Drain after every input and command.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<HubOutput> {
        self.out.pop_front()
    }

    /// When to call [`Hub::handle_timeout`] next: the earliest deadline of any connection.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let earliest = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let conns = self.timers.first().map(|(at, _)| *at);
        let resume = earliest(self.held.poll_timeout(), self.answered.poll_timeout());
        let lease = earliest(self.lease.as_ref().and_then(Lease::next_time), self.draining);
        earliest(earliest(earliest(conns, self.endpoint.poll_timeout()), resume), lease)
    }

    // ── Inputs ──

    /// Fires every timer due at `now`. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The database's answer to a renewal of the lease ([`HubEvent::LeaseRenewalDue`]) sent at `sent` (the
    /// clock read just before it was sent): `Some(true)` renewed, `Some(false)` the lease is gone (the hub
    /// fences at once), `None` no answer (the database could not be reached: the deadline stays, and the
    /// renewal is due again at the next period). A renewal sent in time counts even when its answer comes
    /// after the old deadline: the database renews only a lease that has not lapsed.
    pub fn handle_lease_renewal(&mut self, now: Instant, sent: Instant, answer: Option<bool>) {
        if let Some(lease) = self.lease.as_mut() {
            let sent = if sent > now { now } else { sent };
            match answer {
                Some(held) => {
                    if !lease.renewed(sent, held) && !lease.is_fenced() {
                        self.fence();
                    }
                }
                None => lease.unanswered(),
            }
        }
        self.advance(now);
    }

    /// The shared table's answer to [`HubEvent::ClaimWanted`] for `conn`'s claim on `project`
    /// ([`HubConfig::shared_claims`]; see [`super::shared_claims`]): granted, it holds the project and what it
    /// sent meanwhile is taken up; held elsewhere with another credential, it is closed with
    /// [`CloseReason::ProjectHeld`]; held elsewhere with its own, the holder is asked to let go
    /// ([`HubEvent::ReleaseWanted`]) and the claim asked again. A grant for a connection that is gone (or no
    /// longer waits) is given back at once ([`HubEvent::ClaimEnded`]).
    pub fn handle_claim_answer(&mut self, now: Instant, conn: ConnHandle, project: &str, answer: ClaimAnswer) {
        self.advance(now);
        let now = self.now;
        let Some(shared) = self.shared.as_mut() else { return };
        let waits = shared.waiting.get(&conn).is_some_and(|w| w.identity.project == project && w.retry_at.is_none());
        if !waits {
            if let ClaimAnswer::Granted { generation } = answer {
                self.event(HubEvent::ClaimEnded { project: project.into(), generation });
            }
            return;
        }
        match answer {
            ClaimAnswer::Granted { generation } => {
                let Some(waiting) = shared.waiting.remove(&conn) else { return };
                shared.granted.insert(conn, (project.into(), generation));
                self.hold_project(conn, waiting.identity);
                for event in waiting.queued {
                    self.on_event(conn, event);
                }
                self.pump(conn);
            }
            ClaimAnswer::Held { credential, node } => {
                let own = self.conns.get(&conn).is_some_and(|c| c.credential.id == credential);
                let Some(waiting) = shared.waiting.get_mut(&conn) else { return };
                if !own || now >= waiting.until {
                    // Still waiting as it closes: what its session ends with was never announced, and is not.
                    self.refuse(conn, project.into(), CloseReason::ProjectHeld);
                    self.pump(conn);
                    return;
                }
                let here = node == shared.config.node;
                waiting.retry_at = Some(now + shared.config.retry_every);
                if here && self.release(now, project, credential) {
                    // Held here: the hub's own takeover (the holder here closed, its claim given back), then
                    // asked again at once, after what gives it back.
                    if let Some(waiting) = self.shared.as_mut().and_then(|s| s.waiting.get_mut(&conn)) {
                        waiting.retry_at = None;
                    }
                    self.event(HubEvent::ClaimWanted { conn, project: project.into(), credential });
                    return;
                }
                if !here {
                    self.event(HubEvent::ReleaseWanted { project: project.into(), node, credential });
                }
                self.reschedule(conn);
            }
        }
    }

    /// Another gateway's connection with `credential` claims `project`, which a connection here holds: when
    /// it holds it with that credential (the sled started again and reached another gateway), it is closed
    /// with [`CloseReason::Replaced`] and its claim given back ([`HubEvent::ClaimEnded`] follows once it has
    /// ended). Whether it was.
    pub fn release(&mut self, now: Instant, project: &str, credential: CredentialId) -> bool {
        self.advance(now);
        let Some(holder) = self.holder(project) else { return false };
        if self.conns.get(&holder).is_none_or(|c| c.credential.id != credential) {
            return false;
        }
        self.close(self.now, holder, CloseReason::Replaced);
        true
    }

    /// A waiting claim's time: asked again after a `Held`, or closed once it has waited its while.
    fn ask_again(&mut self, conn: ConnHandle) {
        let now = self.now;
        let Some(shared) = self.shared.as_mut() else { return };
        let Some(waiting) = shared.waiting.get_mut(&conn) else { return };
        let retrying = waiting.retry_at.take().is_some();
        let project = waiting.identity.project.clone();
        if now >= waiting.until {
            // Still held elsewhere after all this while, or never answered. (Still waiting as it closes: what
            // its session ends with was never announced, and is not.)
            let reason = if retrying { CloseReason::ProjectHeld } else { CloseReason::ClaimUnsettled };
            self.refuse(conn, project, reason);
            return;
        }
        if !retrying {
            return;
        }
        let Some(credential) = self.conns.get(&conn).map(|c| c.credential.id) else { return };
        self.event(HubEvent::ClaimWanted { conn, project, credential });
    }

    /// A message arrived on `conn`.
    pub fn handle_received(&mut self, now: Instant, conn: ConnHandle, message: Received<'_>) {
        self.advance(now);
        let now = self.now;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_received(now, message);
            self.pump(conn);
        }
    }

    /// `conn`'s sled sent a message over the size limit: it is closed with [`CloseReason::MessageTooBig`].
    pub fn handle_too_big(&mut self, now: Instant, conn: ConnHandle) {
        self.close(now, conn, CloseReason::MessageTooBig);
    }

    /// `conn` ended (closed by the sled, reset, a read or write failed). Everything pending on it ends.
    pub fn handle_disconnected(&mut self, now: Instant, conn: ConnHandle) {
        self.advance(now);
        let now = self.now;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_disconnected(now);
            self.pump(conn);
        }
    }

    // ── Commands ──

    /// A sled connection opened (its token matched `credential`). Its identity timeout starts now.
    pub fn accept(&mut self, now: Instant, credential: Credential) -> Result<ConnHandle, AcceptError> {
        self.advance(now);
        if self.shutting_down {
            return Err(AcceptError::ShuttingDown);
        }
        if credential.is_expired(self.now) {
            return Err(AcceptError::Expired);
        }
        if self.conns.len() >= self.cfg.max_connections {
            return Err(AcceptError::TooManyConnections);
        }
        if self.unidentified >= self.cfg.max_unidentified {
            return Err(AcceptError::TooManyUnidentified);
        }
        self.next_conn += 1;
        let conn = ConnHandle(self.next_conn);
        if self.next_conn > self.reserved_conns {
            self.reserved_conns = self.next_conn.saturating_add(ID_BLOCK);
            self.out.push_back(HubOutput::Event(HubEvent::IdsReserved { until: self.reserved_conns }));
        }
        // The configuration was validated by `Hub::new`, so this cannot fail.
        let Ok(session) = SledSession::new(self.session_cfg.clone(), self.now) else {
            return Err(AcceptError::ShuttingDown);
        };
        self.conns.insert(
            conn,
            Conn { session, credential, project: None, timer: None, counted_bytes: 0, incarnation: None },
        );
        self.unidentified += 1;
        self.reschedule(conn);
        Ok(conn)
    }

    /// Sends the application's decision for the pending permission `id` (a [`Decision`] or a [`Verdict`] with
    /// a message for the agent). For an "always allow", returns the allow rule it created, if the request
    /// could be read as one ([`rules::suggest`]). For a request held while its sled is away, the decision is
    /// kept and delivered when the sled sends the request again ([`Decided::held`]).
    pub fn decide(
        &mut self,
        now: Instant,
        id: PublicPermId,
        verdict: impl Into<Verdict>,
    ) -> Result<Decided, HubDecideError> {
        self.advance(now);
        let now = self.now;
        if self.is_fenced() {
            return Err(HubDecideError::Fenced);
        }
        let verdict = verdict.into();
        if verdict.decision == Decision::AlwaysAllow && verdict.always.and_then(|a| a.until).is_some_and(|at| at <= now)
        {
            return Err(HubDecideError::AlwaysExpired);
        }
        if self.held.get(id).is_some() {
            return self.decide_held(id, verdict);
        }
        let refused =
            |hub: &Hub| hub.ended.get(&id).map_or(HubDecideError::NotPending, |end| HubDecideError::Ended(*end));
        // A request pending again after it was held is known by its first id only; one not announced yet, by
        // none.
        if self.alias_of.contains_key(&(id.conn, id.perm)) || self.unannounced.contains(&(id.conn, id.perm)) {
            return Err(refused(self));
        }
        let (conn, perm) = self.route(id);
        let Some(c) = self.conns.get_mut(&conn) else { return Err(refused(self)) };
        let Some(project) = c.project.clone() else { return Err(refused(self)) };
        let Some(asked) = c.session.permission(perm) else { return Err(refused(self)) };
        let since = self.alias_of.get(&(conn, perm)).map_or(asked.since, |a| a.since);
        let waited = now.saturating_duration_since(since);
        let remembered = always_rule(&verdict, asked.tool_name, asked.tool_input, &project, Some(conn));
        // A sled that resumes may not get it (its link or this gateway may go first): remembered, to send
        // again if the request comes again.
        let answer = c.incarnation.clone().map(|incarnation| HeldRequest {
            id,
            key: ResumeKey {
                credential: c.credential.id,
                project: project.clone(),
                incarnation,
                req_id: String::from(asked.req_id),
            },
            tool_name: String::from(asked.tool_name),
            tool_input: asked.tool_input.clone(),
            since,
            deadline: self.alias_of.get(&(conn, perm)).map_or(asked.deadline, |a| a.deadline),
            verdict: Some(verdict.clone()),
            sent: true,
        });
        match c.session.decide(now, perm, verdict.clone()) {
            Ok(()) => {}
            Err(DecideError::MessageTooLong) => return Err(HubDecideError::MessageTooLong),
            Err(DecideError::NotPending) => return Err(refused(self)),
        }
        let rule = remembered.and_then(|rule| self.add_rule(now, rule).ok());
        self.forget_alias(conn, perm);
        self.event(HubEvent::PermissionDecided { id, project, verdict, rule, waited, held: false });
        if let Some(answer) = answer {
            self.remember_answer(answer);
        }
        self.pump(conn);
        Ok(Decided { rule, held: false })
    }

    /// A decision for a request held while its sled is away: kept, and delivered when the sled comes back.
    fn decide_held(&mut self, id: PublicPermId, verdict: Verdict) -> Result<Decided, HubDecideError> {
        let now = self.now;
        let Some(h) = self.held.get(id) else { return Err(HubDecideError::NotPending) };
        if let Some(kept) = &h.verdict {
            return Err(HubDecideError::Ended(PermEnd::Decided(kept.decision)));
        }
        if !verdict.message_fits() {
            return Err(HubDecideError::MessageTooLong);
        }
        let project = h.key.project.clone();
        let waited = now.saturating_duration_since(h.since);
        // No connection to scope a rule to: "this connection" makes none.
        let remembered = always_rule(&verdict, &h.tool_name, &h.tool_input, &project, None);
        self.held.record(id, verdict.clone());
        if let Some(request) = self.held.get(id).cloned() {
            self.event(HubEvent::Resumable { request });
        }
        let rule = remembered.and_then(|rule| self.add_rule(now, rule).ok());
        self.event(HubEvent::PermissionDecided { id, project, verdict, rule, waited, held: true });
        Ok(Decided { rule, held: true })
    }

    /// Sends a JSON-RPC message to `project`'s sled, for its local MCP endpoint. With `stream` and a sled
    /// that relays streams, the local server's messages within the exchange come as [`HubEvent::McpMessage`]
    /// before its end; without, the sled answers the server's own requests with errors.
    pub fn send_mcp(
        &mut self,
        now: Instant,
        project: &str,
        body: &str,
        session: Option<&str>,
        stream: bool,
    ) -> Result<McpTicket, McpRefused> {
        self.mcp_command(now, project, |now, s| s.send_mcp(now, body, session, stream))
    }

    /// Opens the standalone stream of `session` on `project`'s sled ([`SledSession::listen_mcp`]).
    pub fn listen_mcp(&mut self, now: Instant, project: &str, session: Option<&str>) -> Result<McpTicket, McpRefused> {
        self.mcp_command(now, project, |now, s| s.listen_mcp(now, session))
    }

    /// Ends the exchange `ticket`, whose caller went away ([`SledSession::cancel_mcp`]): its
    /// [`HubEvent::McpFailed`] follows. False when it already ended.
    pub fn cancel_mcp(&mut self, now: Instant, ticket: McpTicket, reason: &str) -> bool {
        self.advance(now);
        let now = self.now;
        let Some(c) = self.conns.get_mut(&ticket.conn) else { return false };
        let cancelled = c.session.cancel_mcp(now, ticket.id, reason);
        self.pump(ticket.conn);
        cancelled
    }

    /// Tells `project`'s sled, if connected, that the gateway session `session` ended
    /// ([`SledSession::end_mcp_session`]).
    pub fn end_mcp_session(&mut self, now: Instant, project: &str, session: &str) -> bool {
        self.advance(now);
        self.tell_session_end(project, session)
    }

    /// An HTTP request on the gateway's MCP endpoint, its body text `body`: what the endpoint's policy says it
    /// gets ([`McpEndpoint::route`]), done. An `initialize` opens a session under `drawn`, an id the adapter
    /// drew (32 random bytes, hex; only an `initialize` needs one: [`EndpointRequest::opens_session`]); its
    /// answer opens the session or closes it. A message in a session is relayed in it; a `GET` opens the
    /// session's standalone stream; a `DELETE` ends the session and tells the sled. Each exchange's events
    /// follow with its ticket; an answer that the session is gone ends the session here too
    /// ([`McpAnswer::SessionGone`]).
    pub fn handle_mcp_http(
        &mut self,
        now: Instant,
        request: &EndpointRequest<'_>,
        body: &str,
        drawn: Option<&str>,
    ) -> Result<McpHttp, Refusal> {
        self.advance(now);
        let now = self.now;
        let project = request.project;
        let (ticket, session, kind) = match self.endpoint.route(now, request)? {
            Route::Initialize => {
                let session = drawn.ok_or(mcp_endpoint::NO_SESSION_ID)?;
                if !self.endpoint.open(now, session, project, Arc::from(request.principal)) {
                    return Err(mcp_endpoint::NO_SESSION_ID);
                }
                match self.send_mcp(now, project, body, Some(session), true) {
                    Ok(ticket) => (ticket, String::from(session), ExchangeKind::Initialize),
                    Err(refused) => {
                        self.endpoint.close(session);
                        return Err(mcp_endpoint::refused(refused));
                    }
                }
            }
            Route::Relay { session } => {
                let ticket = self.send_mcp(now, project, body, Some(&session), true).map_err(mcp_endpoint::refused)?;
                (ticket, session, ExchangeKind::InSession)
            }
            Route::Listen { session } => {
                let ticket = self.listen_mcp(now, project, Some(&session)).map_err(mcp_endpoint::refused)?;
                (ticket, session, ExchangeKind::Listen)
            }
            Route::End { session } => {
                self.tell_session_end(project, &session);
                return Ok(McpHttp::Ended);
            }
        };
        self.endpoint.began(now, ticket, &session, kind);
        let new_session = (kind == ExchangeKind::Initialize).then_some(session);
        Ok(McpHttp::Relayed { ticket, new_session })
    }

    /// The admin principal `principal` is gone (its credential was revoked): its MCP sessions end, and their
    /// sleds are told.
    pub fn handle_principal_gone(&mut self, now: Instant, principal: &str) {
        self.advance(now);
        for (session, project) in self.endpoint.close_principal(principal) {
            self.tell_session_end(&project, &session);
        }
    }

    /// The gateway's MCP endpoint: its client sessions.
    pub fn mcp_endpoint(&self) -> &McpEndpoint {
        &self.endpoint
    }

    /// The exchange `ticket` ended with `answer` (`None`: nothing to say, or none at all); true when the answer
    /// ended its session at the endpoint. Its sled, on whose connection it ended (and whose outputs are being
    /// carried out), is told.
    fn endpoint_ended(&mut self, ticket: McpTicket, answer: Option<&str>) -> bool {
        match self.endpoint.ended(self.now, ticket, answer) {
            ExchangeEnd::Done => false,
            ExchangeEnd::SessionGone { session, .. } => {
                let now = self.now;
                if let Some(c) = self.conns.get_mut(&ticket.conn) {
                    c.session.end_mcp_session(now, &session);
                }
                true
            }
        }
    }

    /// Tells `project`'s sled, if connected, that the gateway session `session` ended.
    fn tell_session_end(&mut self, project: &str, session: &str) -> bool {
        let now = self.now;
        let Some(conn) = self.projects.get(project).and_then(|p| p.holder) else { return false };
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        let told = c.session.end_mcp_session(now, session);
        self.pump(conn);
        told
    }

    fn mcp_command(
        &mut self,
        now: Instant,
        project: &str,
        command: impl FnOnce(Instant, &mut SledSession) -> Result<McpId, SendMcpError>,
    ) -> Result<McpTicket, McpRefused> {
        self.advance(now);
        let now = self.now;
        let p = self.projects.get(project).ok_or(McpRefused::UnknownProject)?;
        let conn = p.holder.ok_or(McpRefused::NotConnected)?;
        let c = self.conns.get_mut(&conn).ok_or(McpRefused::NotConnected)?;
        let id = command(now, &mut c.session).map_err(|e| match e {
            SendMcpError::TooMany => McpRefused::TooMany,
            SendMcpError::Unsupported => McpRefused::Unsupported,
            _ => McpRefused::NotConnected,
        })?;
        self.pump(conn);
        Ok(McpTicket { conn, id })
    }

    /// Closes `conn` for `reason`. Everything pending on it ends.
    pub fn close(&mut self, now: Instant, conn: ConnHandle, reason: CloseReason) {
        self.advance(now);
        let now = self.now;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.close(now, reason);
            self.pump(conn);
        }
    }

    /// The gateway is stopping: every connection, identified or not, is closed with
    /// [`CloseReason::ShuttingDown`], and [`Hub::accept`] refuses from now on.
    pub fn shutdown(&mut self, now: Instant) {
        self.advance(now);
        self.close_everything();
    }

    /// The gateway is stopping without denying anything that could still be decided (a planned restart):
    /// new connections are refused from now on; each open connection is closed with
    /// [`CloseReason::Restarting`] (1012: come back, perhaps to another gateway) as soon as nothing of it is
    /// in flight: at once when it has not identified, has nothing pending, or keeps its requests across a
    /// drop (`resume`, and no MCP request in flight); otherwise right after its last request ends (decided,
    /// cancelled, timed out). At `until`, what is left is closed as by [`Hub::shutdown`].
    /// [`Hub::is_drained`] says when every connection is gone.
    pub fn drain(&mut self, now: Instant, until: Instant) {
        self.advance(now);
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.draining = Some(until);
        let conns: Vec<ConnHandle> = self.conns.keys().copied().collect();
        for conn in conns {
            self.pump(conn);
        }
        self.advance(now);
    }

    /// True when no connection is open (a drain is done).
    pub fn is_drained(&self) -> bool {
        self.conns.is_empty()
    }

    /// Closes every connection, identified or not, with [`CloseReason::ShuttingDown`] (or, for a sled that
    /// keeps its requests, [`CloseReason::Restarting`]); refuses new ones from now on.
    fn close_everything(&mut self) {
        let now = self.now;
        self.shutting_down = true;
        self.draining = None;
        let conns: Vec<ConnHandle> = self.conns.keys().copied().collect();
        for conn in conns {
            // A sled known to keep its requests is told to come back: they are held for it.
            let keeps = self.conns.get(&conn).is_some_and(|c| c.session.resume_confirmed());
            self.close(now, conn, if keeps { CloseReason::Restarting } else { CloseReason::ShuttingDown });
        }
    }

    /// The credentials changed (a reload): each live connection takes its credential's new terms by id. One
    /// whose credential is gone, has expired, or no longer covers the project it holds is closed with
    /// [`CloseReason::CredentialRevoked`]; what it had pending is withdrawn, and so is what is held for such a
    /// credential's sled.
    pub fn update_credentials(&mut self, now: Instant, credentials: &[Credential]) {
        self.advance(now);
        let now = self.now;
        let by_id: BTreeMap<CredentialId, &Credential> = credentials.iter().map(|c| (c.id, c)).collect();
        let conns: Vec<ConnHandle> = self.conns.keys().copied().collect();
        for conn in conns {
            let Some(c) = self.conns.get_mut(&conn) else { continue };
            let keeps = match by_id.get(&c.credential.id) {
                Some(new) => {
                    c.credential = (*new).clone();
                    !new.is_expired(now) && c.project.as_deref().is_none_or(|p| new.scope.covers(p))
                }
                None => false,
            };
            if keeps {
                self.reschedule(conn);
            } else {
                c.session.close(now, CloseReason::CredentialRevoked);
                self.pump(conn);
            }
        }
        // Nor is anything held for a credential no longer in force kept for its return.
        let revoked = |h: &&HeldRequest| {
            by_id.get(&h.key.credential).is_none_or(|c| c.is_expired(now) || !c.scope.covers(&h.key.project))
        };
        let gone: Vec<PublicPermId> = self.held.iter().filter(revoked).map(|h| h.id).collect();
        self.end_held(gone, Withdrawn::ConnectionLost);
        let gone: Vec<PublicPermId> = self.answered.iter().filter(revoked).map(|h| h.id).collect();
        self.forget_answers(gone);
    }

    // ── Internals ──

    /// The lease lapsed or is gone: every connection is closed with [`CloseReason::Fenced`], new ones and
    /// decisions are refused, and the one event from here on is [`HubEvent::Fenced`].
    fn fence(&mut self) {
        self.event(HubEvent::Fenced);
        if let Some(lease) = self.lease.as_mut() {
            lease.fence();
        }
        self.shutting_down = true;
        let now = self.now;
        let conns: Vec<ConnHandle> = self.conns.keys().copied().collect();
        for conn in conns {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session.close(now, CloseReason::Fenced);
                self.pump(conn);
            }
        }
    }

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        if let Some(lease) = self.lease.as_mut() {
            if !lease.is_fenced() && lease.lapsed(now) {
                self.fence();
            } else if lease.renewal_due(now) {
                self.event(HubEvent::LeaseRenewalDue);
            }
        }
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if self.shared.as_ref().and_then(|s| s.next_time(conn)).is_some_and(|at| at <= now) {
                self.ask_again(conn);
            }
            let Some(c) = self.conns.get_mut(&conn) else { continue };
            c.timer = None;
            if c.credential.is_expired(now) {
                c.session.close(now, CloseReason::CredentialRevoked);
            } else {
                c.session.handle_timeout(now);
            }
            self.pump(conn);
        }
        // Held requests whose window or deadline has passed end.
        while let Some(h) = self.held.pop_ended(now) {
            let reason =
                if h.deadline.is_some_and(|d| d <= now) { Withdrawn::Deadline } else { Withdrawn::ConnectionLost };
            let waited = now.saturating_duration_since(h.since);
            self.event(HubEvent::ResumableGone { id: h.id });
            self.event(HubEvent::PermissionWithdrawn { id: h.id, project: h.key.project, reason, waited });
        }
        // So do remembered decisions.
        while let Some(h) = self.answered.pop_ended(now) {
            self.event(HubEvent::ResumableGone { id: h.id });
        }
        // The MCP endpoint's sessions idle past their time end; their sleds are told.
        if self.endpoint.poll_timeout().is_some_and(|at| at <= now) {
            for (session, project) in self.endpoint.expire(now) {
                self.tell_session_end(&project, &session);
            }
        }
        // A drain's time is up: what is left is closed.
        if self.draining.is_some_and(|until| until <= now) {
            self.close_everything();
        }
    }

    /// Carries out a session's outputs, then re-files its deadline (or forgets it, once closed).
    fn pump(&mut self, conn: ConnHandle) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else { return };
            let Some(output) = c.session.poll_output() else { break };
            match output {
                SessionOutput::Send(text) => self.out.push_back(HubOutput::Send { conn, text }),
                SessionOutput::Ping => self.out.push_back(HubOutput::Ping { conn }),
                SessionOutput::Close(reason) => self.out.push_back(HubOutput::Close { conn, reason }),
                SessionOutput::Event(event) => self.on_event(conn, event),
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            let bytes = c.session.pending_input_bytes();
            self.pending_bytes = self.pending_bytes - c.counted_bytes + bytes;
            c.counted_bytes = bytes;
        }
        if self.conns.get(&conn).is_some_and(|c| c.session.is_closed()) {
            if let Some(c) = self.conns.remove(&conn) {
                if let Some(at) = c.timer {
                    self.timers.remove(&(at, conn));
                }
                let granted = self.shared.as_mut().and_then(|shared| {
                    shared.waiting.remove(&conn);
                    shared.granted.remove(&conn)
                });
                if let Some((project, generation)) = granted {
                    self.event(HubEvent::ClaimEnded { project, generation });
                }
                if c.project.is_none() {
                    self.unidentified -= 1;
                }
                self.pending_bytes -= c.counted_bytes;
                self.drop_connection_rules(conn);
            }
        } else if self.draining.is_some() && self.nothing_in_flight(conn) {
            let now = self.now;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session.close(now, CloseReason::Restarting);
            }
            self.pump(conn);
        } else {
            self.reschedule(conn);
        }
    }

    /// True when closing `conn` now loses nothing that could still be decided or answered: it has not
    /// identified (or waits for its claim), or has no MCP request in flight and either nothing pending or
    /// its pending requests kept across the drop (`resume`).
    fn nothing_in_flight(&self, conn: ConnHandle) -> bool {
        let Some(c) = self.conns.get(&conn) else { return false };
        let waiting = self.shared.as_ref().is_some_and(|s| s.waiting.contains_key(&conn));
        c.project.is_none()
            || waiting
            || (c.session.pending_mcp() == 0 && (c.session.pending_permissions() == 0 || c.session.resume_confirmed()))
    }

    fn reschedule(&mut self, conn: ConnHandle) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let earliest = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let retry = self.shared.as_ref().and_then(|s| s.next_time(conn));
        let next = earliest(earliest(c.session.poll_timeout(), c.credential.expires), retry);
        if next == c.timer {
            return;
        }
        if let Some(at) = c.timer.take() {
            self.timers.remove(&(at, conn));
        }
        if let Some(at) = next {
            self.timers.insert((at, conn));
            c.timer = Some(at);
        }
    }

    /// A connection ended: the rules made for it alone go with it.
    fn drop_connection_rules(&mut self, conn: ConnHandle) {
        let ids: Vec<RuleId> = self.rules.rules().iter().filter(|r| r.connection == Some(conn)).map(|r| r.id).collect();
        for id in ids {
            self.rules.remove(id);
            self.event(HubEvent::RuleRemoved { id, by: None });
        }
    }

    fn project_name(&self, conn: ConnHandle) -> String {
        self.conns.get(&conn).and_then(|c| c.project.clone()).unwrap_or_default()
    }

    fn on_event(&mut self, conn: ConnHandle, event: SessionEvent) {
        if let Some(waiting) = self.shared.as_mut().and_then(|s| s.waiting.get_mut(&conn)) {
            match event {
                // Nothing of the claim's: taken as they come.
                SessionEvent::Heartbeat
                | SessionEvent::Stale
                | SessionEvent::Alive
                | SessionEvent::FrameIgnored(_)
                | SessionEvent::Closed => {}
                // The rest waits for the claim, within the session's budgets.
                event => {
                    waiting.queued.push_back(event);
                    let budget = self.session_cfg.max_pending_permissions * 2 + QUEUE_SLACK;
                    if waiting.queued.len() > budget
                        && let Some(c) = self.conns.get_mut(&conn)
                    {
                        c.session.close(self.now, CloseReason::FloodedBeforeClaim);
                    }
                    return;
                }
            }
        }
        match event {
            SessionEvent::Identified { project, protocol, sled_version, capabilities, incarnation } => {
                self.claim(conn, project, protocol, sled_version, capabilities, incarnation)
            }
            SessionEvent::Heartbeat => {}
            SessionEvent::PermissionRequested { perm, req_id, tool_name, tool_input, over } => {
                let project = self.project_name(conn);
                let Some(c) = self.conns.get(&conn) else { return };
                let credential = c.credential.id;
                let incarnation = c.incarnation.clone();
                // Looked up only when something of this project is held or remembered (no key built otherwise).
                if let Some(incarnation) = &incarnation
                    && (self.held.load(&project).0 > 0 || self.answered.load(&project).0 > 0)
                {
                    let key = ResumeKey {
                        credential,
                        project: project.clone(),
                        incarnation: incarnation.clone(),
                        req_id: req_id.clone(),
                    };
                    if self.resumed(conn, perm, &key, &tool_name, &tool_input, over.is_some()) {
                        return;
                    }
                }
                let Some(c) = self.conns.get(&conn) else { return };
                let id = PublicPermId { conn, perm };
                // The fleet's budget: what every connection holds, and what is held, this request included.
                let total = self.pending_bytes - c.counted_bytes + c.session.pending_input_bytes() + self.held.bytes();
                let request = Request {
                    connection: Some(conn),
                    project: &project,
                    tool_name: &tool_name,
                    tool_input: &tool_input,
                };
                let fleet_over = total > self.cfg.max_pending_input_bytes;
                if let Some(auto) = policy::decide(self.now, over, fleet_over, &self.rules, &request) {
                    let asked = Asked { project, credential, req_id, tool_name, tool_input };
                    return self.auto_decide(conn, perm, auto, asked);
                }
                // Announced once its sled is known to have seen the acceptance (or is known not to have).
                if c.session.resume_awaited() {
                    self.unannounced.insert((conn, perm));
                    return;
                }
                // Kept, for a restarted gateway to hold it again, once its sled is known to keep it too.
                let confirmed = c.session.resume_confirmed();
                let resumable = incarnation.clone().zip(c.session.permission(perm)).filter(|_| confirmed).map(
                    |(incarnation, asked)| HeldRequest {
                        id,
                        key: ResumeKey { credential, project: project.clone(), incarnation, req_id: req_id.clone() },
                        tool_name: tool_name.clone(),
                        tool_input: tool_input.clone(),
                        since: asked.since,
                        deadline: asked.deadline,
                        verdict: None,
                        sent: false,
                    },
                );
                self.event(HubEvent::PermissionRequested {
                    id,
                    project,
                    credential,
                    req_id,
                    tool_name,
                    tool_input,
                    incarnation,
                });
                if let Some(request) = resumable {
                    self.event(HubEvent::Resumable { request });
                }
            }
            SessionEvent::PermissionWithdrawn { perm, .. } if self.unannounced.remove(&(conn, perm)) => {}
            SessionEvent::PermissionWithdrawn { perm, reason, waited } => {
                let project = self.project_name(conn);
                let (id, first) = self.forget_alias(conn, perm);
                let waited = first.map_or(waited, |a| self.now.saturating_duration_since(a.since));
                if self.conns.get(&conn).is_some_and(|c| c.incarnation.is_some()) {
                    self.event(HubEvent::ResumableGone { id });
                }
                self.event(HubEvent::PermissionWithdrawn { id, project, reason, waited });
            }
            SessionEvent::PermissionHeld { perm, req_id, tool_name, tool_input, since, deadline } => {
                let (id, first) = self.forget_alias(conn, perm);
                let (since, deadline) = first.map_or((since, deadline), |a| (a.since, a.deadline));
                let Some(c) = self.conns.get(&conn) else { return };
                let (Some(project), Some(incarnation)) = (c.project.clone(), c.incarnation.clone()) else { return };
                let key = ResumeKey { credential: c.credential.id, project, incarnation, req_id };
                self.hold(HeldRequest { id, key, tool_name, tool_input, since, deadline, verdict: None, sent: false });
            }
            SessionEvent::ResumeSettled { confirmed } => {
                self.announce(conn);
                // The sled has seen the acceptance: it keeps what it sent on this connection.
                if confirmed {
                    self.keep_pending(conn);
                }
            }
            SessionEvent::Resumed => {
                // The sled sent again everything it kept: what is held for its incarnation and was not is no
                // longer awaited by it.
                let Some(c) = self.conns.get(&conn) else { return };
                let (Some(project), Some(incarnation)) = (c.project.clone(), c.incarnation.clone()) else { return };
                let credential = c.credential.id;
                let of_this = |h: &HeldRequest| h.key.credential == credential && h.key.incarnation == incarnation;
                let gone = self.held.ids_where(&project, of_this);
                self.end_held(gone, Withdrawn::ConnectionLost);
                // Nor is a decision sent on an earlier connection, that it did not send again: it had it.
                let had = self.answered.ids_where(&project, |h| of_this(h) && h.id.conn != conn);
                self.forget_answers(had);
            }
            SessionEvent::McpResponse { id, payload } => {
                let ticket = McpTicket { conn, id };
                let answer = match payload {
                    Some(payload) if self.endpoint_ended(ticket, Some(&payload)) => McpAnswer::SessionGone(payload),
                    Some(payload) => McpAnswer::Response(payload),
                    None => {
                        self.endpoint_ended(ticket, None);
                        McpAnswer::NoContent
                    }
                };
                self.event(HubEvent::McpAnswered { ticket, answer })
            }
            SessionEvent::McpOpened { id } => self.event(HubEvent::McpOpened { ticket: McpTicket { conn, id } }),
            SessionEvent::McpFailed { id, reason } => {
                let ticket = McpTicket { conn, id };
                self.endpoint_ended(ticket, None);
                self.event(HubEvent::McpFailed { ticket, reason })
            }
            SessionEvent::McpMessage { id, payload } => {
                self.event(HubEvent::McpMessage { ticket: McpTicket { conn, id }, payload })
            }
            SessionEvent::Stale => {
                if let Some(project) = self.conns.get(&conn).and_then(|c| c.project.clone()) {
                    self.event(HubEvent::SledStale { project });
                }
            }
            SessionEvent::Alive => {
                if let Some(project) = self.conns.get(&conn).and_then(|c| c.project.clone()) {
                    self.event(HubEvent::SledAlive { project });
                }
            }
            SessionEvent::FrameIgnored(why) => self.event(HubEvent::FrameIgnored { conn, why }),
            SessionEvent::Closed => self.on_closed(conn),
        }
    }

    /// The claim rule: see the [module docs](self).
    fn claim(
        &mut self,
        conn: ConnHandle,
        project: String,
        protocol: Option<u32>,
        sled_version: Option<String>,
        capabilities: Vec<String>,
        incarnation: Option<String>,
    ) {
        let now = self.now;
        let Some(credential) = self.conns.get(&conn).map(|c| c.credential.clone()) else { return };
        let refusal = if !credential.scope.covers(&project) {
            Some(CloseReason::ProjectNotPermitted)
        } else {
            match self.projects.get(&project) {
                Some(p) if p.holder.is_some() && p.credential != credential.id => Some(CloseReason::ProjectHeld),
                _ => None,
            }
        };
        if let Some(reason) = refusal {
            return self.refuse(conn, project, reason);
        }
        let identity = Identity { project, protocol, sled_version, capabilities, incarnation };
        match &mut self.shared {
            // Settled with the other gateways first.
            Some(shared) => {
                let project = identity.project.clone();
                shared.wait(now, conn, identity);
                self.event(HubEvent::ClaimWanted { conn, project, credential: credential.id });
            }
            None => self.hold_project(conn, identity),
        }
    }

    /// Refuses `conn` its claim on `project`, and closes it.
    fn refuse(&mut self, conn: ConnHandle, project: String, reason: CloseReason) {
        self.event(HubEvent::SledRefused { conn, project, reason });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.close(self.now, reason);
        }
    }

    /// `conn`'s claim succeeded: it holds the project (taking it from a holder here, which is closed).
    fn hold_project(&mut self, conn: ConnHandle, identity: Identity) {
        let now = self.now;
        let Identity { project, protocol, sled_version, capabilities, incarnation } = identity;
        let Some(credential) = self.conns.get(&conn).map(|c| c.credential.clone()) else { return };
        let claimed = Project { holder: Some(conn), credential: credential.id, since: now, gone: None };
        let replaced = match self.projects.insert(project.clone(), claimed) {
            Some(old) => {
                if old.gone.is_some() {
                    self.gone_count -= 1;
                }
                old.holder
            }
            None => None,
        };
        let mut resumes: Option<Arc<str>> = None;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.project = Some(project.clone());
            self.unidentified -= 1;
            // `resume`, accepted before anything else is sent on the connection.
            if let Some(incarnation) = incarnation
                && let Some(resume) = &self.cfg.resume
                && c.session.accept_resume(now, resume.confirm_within)
            {
                let incarnation: Arc<str> = Arc::from(incarnation);
                c.incarnation = Some(incarnation.clone());
                resumes = Some(incarnation);
            }
        }
        // What is held for this project and cannot come back on this connection ends: another credential's,
        // another incarnation's, or any when this one does not resume.
        let elsewhere = |h: &HeldRequest| {
            h.key.credential != credential.id || resumes.as_ref().is_none_or(|i| *i != h.key.incarnation)
        };
        let gone = self.held.ids_where(&project, elsewhere);
        self.end_held(gone, Withdrawn::ConnectionLost);
        let gone = self.answered.ids_where(&project, elsewhere);
        self.forget_answers(gone);
        self.event(HubEvent::SledConnected { conn, project, protocol, sled_version, capabilities, replaced });
        // The old holder's end no longer touches the registry: the project is already the new one's.
        if let Some(old) = replaced
            && let Some(c) = self.conns.get_mut(&old)
        {
            c.session.close(now, CloseReason::Replaced);
            self.pump(old);
        }
    }

    fn on_closed(&mut self, conn: ConnHandle) {
        let Some(c) = self.conns.get(&conn) else { return };
        let Some(project) = c.project.clone() else { return };
        let (last_seen, stale) = (c.session.last_seen(), c.session.is_stale());
        let Some(p) = self.projects.get_mut(&project).filter(|p| p.holder == Some(conn)) else { return };
        p.holder = None;
        self.next_gone += 1;
        p.gone = Some(Gone { seq: self.next_gone, last_seen, stale });
        self.gone_order.push_back((self.next_gone, project.clone()));
        self.gone_count += 1;
        self.forget_beyond_bound();
        self.event(HubEvent::SledDisconnected { conn, project });
    }

    /// Forgets the sleds disconnected longest ago beyond the bound, and compacts the order of disconnections.
    fn forget_beyond_bound(&mut self) {
        let current = |projects: &BTreeMap<String, Project>, seq: u64, project: &str| {
            projects.get(project).is_some_and(|p| p.gone.is_some_and(|g| g.seq == seq))
        };
        while self.gone_count > self.cfg.max_disconnected_sleds {
            let Some((seq, oldest)) = self.gone_order.pop_front() else { break };
            if current(&self.projects, seq, &oldest) {
                self.projects.remove(&oldest);
                self.gone_count -= 1;
            }
        }
        // Sleds that reconnect leave out-of-date places behind: drop them before they outnumber the rest.
        if self.gone_order.len() > 2 * self.gone_count + 64 {
            let projects = &self.projects;
            self.gone_order.retain(|(seq, project)| current(projects, *seq, project));
        }
    }

    /// A request arrived on `conn` (which resumes) under `key`: if one is held under it, with the same tool
    /// and input, it is pending again there under its first id (or, decided meanwhile, gets its decision at
    /// once); with another tool or input, the new one is denied and the held one stays. True when handled.
    /// Undecided and `over` its session's limits, the held one ends and the new one is left to the limits.
    fn resumed(
        &mut self,
        conn: ConnHandle,
        perm: PermId,
        key: &ResumeKey,
        tool_name: &str,
        tool_input: &Arc<str>,
        over: bool,
    ) -> bool {
        let now = self.now;
        // Held (waiting, or decided while away), or decided and sent before (and not received).
        let (h, answered) = match (self.held.find(key), self.answered.find(key)) {
            (Some(h), _) => (h, false),
            (None, Some(h)) => (h, true),
            (None, None) => return false,
        };
        let (id, same, decided) =
            (h.id, h.tool_name == tool_name && *h.tool_input == **tool_input, h.verdict.is_some());
        let project = key.project.clone();
        let Some(c) = self.conns.get_mut(&conn) else { return true };
        if !same {
            let verdict = Verdict::new(Decision::Deny).with_message(RESUMED_OTHERWISE);
            if c.session.decide(now, perm, verdict).is_ok() {
                let credential = c.credential.id;
                self.event(HubEvent::PermissionAutoDecided {
                    conn,
                    project,
                    credential,
                    req_id: key.req_id.clone(),
                    tool_name: String::from(tool_name),
                    tool_input: tool_input.clone(),
                    decision: Decision::Deny,
                    rule: None,
                    message: Some(RESUMED_OTHERWISE.into()),
                });
            }
            return true;
        }
        if answered {
            // The same decision again; still remembered, in case this link goes too.
            let verdict = self.answered.get(id).and_then(|h| h.verdict.clone());
            if let Some(verdict) = verdict
                && c.session.decide(now, perm, verdict).is_ok()
            {
                self.event(HubEvent::PermissionAnsweredAgain { id, project, conn });
            }
            // A request it kept came again: the sled has seen the acceptance.
            self.confirm(conn);
            return true;
        }
        if over && !decided {
            self.end_held([id], Withdrawn::ConnectionLost);
            return false;
        }
        let Some(mut h) = self.held.remove(id) else { return true };
        match h.verdict.clone() {
            Some(verdict) => {
                if c.session.decide(now, perm, verdict).is_ok() {
                    self.event(HubEvent::PermissionDelivered { id, project, conn });
                    h.sent = true;
                    self.remember_answer(h);
                } else {
                    self.event(HubEvent::ResumableGone { id });
                }
            }
            None => {
                self.aliases.insert(id, (conn, perm));
                self.alias_of.insert((conn, perm), Alias { id, since: h.since, deadline: h.deadline });
                self.event(HubEvent::PermissionResumed { id, project, conn });
            }
        }
        // A request it kept came again: the sled has seen the acceptance.
        self.confirm(conn);
        true
    }

    /// A request `conn`'s sled kept came again on it: the sled has seen the acceptance.
    fn confirm(&mut self, conn: ConnHandle) {
        if self.conns.get_mut(&conn).is_some_and(|c| c.session.confirm_resume()) {
            self.announce(conn);
            self.keep_pending(conn);
        }
    }

    /// Whether `conn`'s sled saw the acceptance is settled: what it asked meanwhile reaches people now, as if
    /// it arrived now (a rule made meanwhile decides it first).
    fn announce(&mut self, conn: ConnHandle) {
        let waiting: Vec<PermId> =
            self.unannounced.range((conn, PermId(0))..=(conn, PermId(u64::MAX))).map(|(_, p)| *p).collect();
        for perm in waiting {
            let project = self.project_name(conn);
            let now = self.now;
            let Some(c) = self.conns.get_mut(&conn) else { return };
            // One that ended meanwhile stays unannounced: its end, which follows, is not announced either.
            let Some(asked) = c.session.permission(perm) else { continue };
            self.unannounced.remove(&(conn, perm));
            let (req_id, tool_name, tool_input) =
                (String::from(asked.req_id), String::from(asked.tool_name), asked.tool_input.clone());
            let (credential, incarnation) = (c.credential.id, c.incarnation.clone());
            let request =
                Request { connection: Some(conn), project: &project, tool_name: &tool_name, tool_input: &tool_input };
            // Its budgets were checked as it arrived; only the rules may have changed.
            if let Some(auto) = policy::decide(now, None, false, &self.rules, &request) {
                self.auto_decide(conn, perm, auto, Asked { project, credential, req_id, tool_name, tool_input });
                continue;
            }
            let id = PublicPermId { conn, perm };
            self.event(HubEvent::PermissionRequested {
                id,
                project,
                credential,
                req_id,
                tool_name,
                tool_input,
                incarnation,
            });
        }
        // (Called while `conn` is pumped: the answers just decided leave with its other outputs.)
    }

    /// Sends a rule's or a budget's decision for `perm` on `conn`, and says so.
    fn auto_decide(&mut self, conn: ConnHandle, perm: PermId, auto: policy::AutoDecision, asked: Asked) {
        let mut verdict = Verdict::new(auto.decision);
        if let Some(why) = auto.message {
            verdict = verdict.with_message(why);
        }
        let message = verdict.message.clone();
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.session.decide(now, perm, verdict).is_ok() {
            let Asked { project, credential, req_id, tool_name, tool_input } = asked;
            self.event(HubEvent::PermissionAutoDecided {
                conn,
                project,
                credential,
                req_id,
                tool_name,
                tool_input,
                decision: auto.decision,
                rule: auto.rule,
                message,
            });
        }
    }

    /// `conn`'s sled is known to keep what it sends there: each request pending on it that was not kept yet
    /// (all but those sent again, kept from before) is kept now ([`HubEvent::Resumable`]).
    fn keep_pending(&mut self, conn: ConnHandle) {
        let Some(c) = self.conns.get(&conn) else { return };
        let (Some(project), Some(incarnation)) = (c.project.clone(), c.incarnation.clone()) else { return };
        let credential = c.credential.id;
        let requests: Vec<HeldRequest> = c
            .session
            .pending()
            .filter(|(perm, _)| !self.alias_of.contains_key(&(conn, *perm)))
            .map(|(perm, p)| HeldRequest {
                id: PublicPermId { conn, perm },
                key: ResumeKey {
                    credential,
                    project: project.clone(),
                    incarnation: incarnation.clone(),
                    req_id: String::from(p.req_id),
                },
                tool_name: String::from(p.tool_name),
                tool_input: p.tool_input.clone(),
                since: p.since,
                deadline: p.deadline,
                verdict: None,
                sent: false,
            })
            .collect();
        for request in requests {
            self.event(HubEvent::Resumable { request });
        }
    }

    /// Holds `request` for its sled's return, within the project's budget (as its sessions') and the hub's
    /// count of held requests ([`ResumeConfig::max_held`](super::ResumeConfig::max_held)); beyond, or
    /// without `resume`, or past its deadline, it ends as `connection_lost`.
    fn hold(&mut self, request: HeldRequest) {
        let now = self.now;
        let (count, bytes) = self.held.load(&request.key.project);
        let deadline_passed = request.deadline.is_some_and(|d| d <= now);
        let fits = count < self.session_cfg.max_pending_permissions
            && bytes + request.bytes() <= self.session_cfg.max_pending_input_bytes
            && !deadline_passed;
        let (id, project, waited) =
            (request.id, request.key.project.clone(), now.saturating_duration_since(request.since));
        let held = match &self.cfg.resume {
            Some(resume) if fits && self.held.len() < resume.max_held => self.held.insert(request, now + resume.window),
            _ => false,
        };
        if held {
            self.event(HubEvent::PermissionHeld { id, project });
        } else {
            // Its sled has denied it by now if its deadline passed.
            let reason = if deadline_passed { Withdrawn::Deadline } else { Withdrawn::ConnectionLost };
            self.event(HubEvent::ResumableGone { id });
            self.event(HubEvent::PermissionWithdrawn { id, project, reason, waited });
        }
    }

    /// Ends the held requests `ids` for `reason`.
    fn end_held(&mut self, ids: impl IntoIterator<Item = PublicPermId>, reason: Withdrawn) {
        let now = self.now;
        for id in ids {
            if let Some(h) = self.held.remove(id) {
                let waited = now.saturating_duration_since(h.since);
                self.event(HubEvent::ResumableGone { id });
                self.event(HubEvent::PermissionWithdrawn { id, project: h.key.project, reason, waited });
            }
        }
    }

    /// Forgets the remembered decisions `ids`.
    fn forget_answers(&mut self, ids: impl IntoIterator<Item = PublicPermId>) {
        for id in ids {
            if self.answered.remove(id).is_some() {
                self.event(HubEvent::ResumableGone { id });
            }
        }
    }

    /// Remembers a decision sent to a sled that resumes (`answer.sent`), for the window, within the budgets:
    /// the oldest of its project, then the oldest of all, are forgotten first.
    fn remember_answer(&mut self, answer: HeldRequest) {
        let Some(resume) = self.cfg.resume.clone() else { return };
        let project = answer.key.project.clone();
        while self.answered.load(&project).0 >= resume.max_answered_per_project {
            let Some(oldest) = self.answered.first_of(&project) else { break };
            self.forget_answers([oldest]);
        }
        while self.answered.bytes() + answer.bytes() > resume.max_answered_bytes {
            let Some(oldest) = self.answered.first() else { break };
            self.forget_answers([oldest]);
        }
        if resume.max_answered_per_project == 0 || answer.bytes() > resume.max_answered_bytes {
            return;
        }
        let id = answer.id;
        // A sent decision's record replaces the request's, under the same id.
        if self.answered.insert(answer.clone(), self.now + resume.window) {
            self.event(HubEvent::Resumable { request: answer });
        } else {
            self.event(HubEvent::ResumableGone { id });
        }
    }

    /// The public id of `perm` on `conn`, for a request that ends (its first one, and its first arrival, for a
    /// request pending again after it was held: that alias goes).
    fn forget_alias(&mut self, conn: ConnHandle, perm: PermId) -> (PublicPermId, Option<Alias>) {
        match self.alias_of.remove(&(conn, perm)) {
            Some(alias) => {
                self.aliases.remove(&alias.id);
                (alias.id, Some(alias))
            }
            None => (PublicPermId { conn, perm }, None),
        }
    }

    /// Where the request with the public id `id` is pending.
    fn route(&self, id: PublicPermId) -> (ConnHandle, PermId) {
        self.aliases.get(&id).copied().unwrap_or((id.conn, id.perm))
    }

    fn event(&mut self, event: HubEvent) {
        if self.is_fenced() {
            // What a fenced hub does is not for the store: the other nodes end what it held.
            return;
        }
        match &event {
            HubEvent::PermissionDecided { id, verdict, .. } => {
                self.remember_end(*id, PermEnd::Decided(verdict.decision))
            }
            HubEvent::PermissionWithdrawn { id, reason, .. } => self.remember_end(*id, PermEnd::Withdrawn(*reason)),
            _ => {}
        }
        self.out.push_back(HubOutput::Event(event));
    }

    fn remember_end(&mut self, id: PublicPermId, end: PermEnd) {
        if self.cfg.max_ended_permissions == 0 {
            return;
        }
        self.ended.insert(id, end);
        self.ended_order.push_back(id);
        while self.ended_order.len() > self.cfg.max_ended_permissions {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }
}

/// The allow rule a person's "always allow" makes: derived from the request (never from the person's words),
/// in the scope they picked; none for "this connection" without one (a request held while its sled is away).
fn always_rule(
    verdict: &Verdict,
    tool_name: &str,
    tool_input: &str,
    project: &str,
    conn: Option<ConnHandle>,
) -> Option<Rule> {
    if verdict.decision != Decision::AlwaysAllow {
        return None;
    }
    let always = verdict.always.unwrap_or_default();
    let pattern = rules::suggest(tool_name, tool_input)?;
    let author = verdict.by.clone().unwrap_or_else(|| Arc::from("always allow"));
    let mut rule = Rule::new(RuleId(0), Effect::Allow, pattern, author, always.created);
    rule = match always.scope {
        AlwaysScope::Connection => rule.for_connection(conn?).for_projects(ProjectScope::Exactly(project.into())),
        AlwaysScope::Project => rule.for_projects(ProjectScope::Exactly(project.into())),
        AlwaysScope::Everywhere => rule,
    };
    if let Some(at) = always.until {
        rule = rule.expiring(at);
    }
    Some(rule)
}

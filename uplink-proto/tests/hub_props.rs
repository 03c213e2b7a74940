//! Property tests of the gateway's hub: random scripts of connections, frames, decisions, MCP requests,
//! time and faults, checked after every step against a reference model. Case count: `PROPTEST_CASES`
//! (default 256).
//!
//! Invariants:
//! - every permission request and every MCP request ends exactly once, across replacement, refusal,
//!   disconnection, oversize and shutdown; after shutdown nothing is pending;
//! - a decision is accepted exactly when the model says the request is pending;
//! - nothing is approved on the wire without the application's approval of that very request on that
//!   connection, or the auto-approve rule;
//! - no connection holds a project its credential does not cover, no credential displaces another's live
//!   connection, and one connection at most holds each project;
//! - credentials can be revoked (all at once too: the empty set), narrowed and expire at any time: no open
//!   connection ever has a credential that is gone or expired, and no holder one that does not cover its
//!   project;
//! - the connection counts and the pending input bytes (per connection and in total) stay within their
//!   budgets, and the hub's count of bytes is what the listing holds;
//! - the listings of sleds and pending permissions match the model; memory stays within its bounds;
//! - with `resume` on (half the cases): a request is held across a drop only for a connection that accepted
//!   it, found again only by a connection with the same credential, project and incarnation that sent the same
//!   request (tool and input) again, and a decision kept while its sled was away is delivered only to such a
//!   connection; what is held counts toward the budgets, and after shutdown is all that stays.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use uplink_proto::gateway::{
    Always, AlwaysScope, CloseReason, ConnHandle, Credential, CredentialId, HeldRequest, Hub, HubConfig,
    HubDecideError, HubEvent, HubOutput, McpTicket, PermId, ProjectScope, PublicPermId, SessionConfig, Verdict,
};
use uplink_proto::rules::RuleId;
use uplink_proto::{Decision, GatewayFrame, Instant, Received};

#[derive(Clone, Debug)]
enum Op {
    Accept(u8),
    /// Identifies connection `.0` as project `.1`, offering `resume` as incarnation "a" or "b" (`.2` 1 or 2).
    Identify(u8, u8, u8),
    Heartbeat(u8),
    PermRequest(u8, u8, u8),
    PermCancel(u8, u8),
    McpResponse(u8, u8),
    Garbage(u8),
    Decide(u8, u8),
    SendMcp(u8),
    Disconnect(u8),
    TooBig(u8),
    Advance(u32),
    /// Reloads the credentials: which are present (a bit each), whether credential 1 is narrowed to `p`,
    /// and whether credential 0 expires 5 s from now.
    Reload(u8),
    /// A sled reconnects as a real one does: connection `.0`'s credential opens a new connection (the old
    /// one dropped first, or left to be replaced), identifies as the same project and incarnation, sends
    /// again what it sent on the old one, then `resumed`. `.1` twists it: the old one left open, another
    /// incarnation, one request sent again with another input, no `resumed`.
    Reconnect(u8, u8),
    /// The gateway restarts (it was killed): a new hub with the same configuration, given what the adapter
    /// kept of the old one's requests ([`HubEvent::Resumable`]); every connection is gone.
    Restart,
    /// Shuts the hub down when `.0` is below 16: rarely, so that most scripts run long before it (every
    /// script ends with one anyway).
    Shutdown(u8),
    /// Drains the hub for `.0` seconds when `.0` is below 40 (rarely, as a shutdown).
    Drain(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u8..3).prop_map(Op::Accept),
        16 => (any::<u8>(), 0u8..4, 0u8..3).prop_map(|(c, p, i)| Op::Identify(c, p, i)),
        4 => any::<u8>().prop_map(Op::Heartbeat),
        24 => (any::<u8>(), 0u8..4, 0u8..4).prop_map(|(c, r, t)| Op::PermRequest(c, r, t)),
        6 => (any::<u8>(), 0u8..4).prop_map(|(c, r)| Op::PermCancel(c, r)),
        10 => (any::<u8>(), 0u8..6).prop_map(|(c, m)| Op::McpResponse(c, m)),
        2 => any::<u8>().prop_map(Op::Garbage),
        20 => (any::<u8>(), 0u8..5).prop_map(|(p, d)| Op::Decide(p, d)),
        10 => (0u8..4).prop_map(Op::SendMcp),
        6 => any::<u8>().prop_map(Op::Disconnect),
        2 => any::<u8>().prop_map(Op::TooBig),
        // Mostly within the identity timeout (10 s), sometimes past every deadline.
        8 => (0u32..5_000).prop_map(Op::Advance),
        4 => (0u32..40_000).prop_map(Op::Advance),
        // Reloads: any set, every credential back (narrowed or expiring, maybe), and every credential
        // revoked at once (the empty set is a set in force like any other).
        1 => any::<u8>().prop_map(Op::Reload),
        1 => any::<u8>().prop_map(|b| Op::Reload(b | 0b111)),
        1 => Just(Op::Reload(0)),
        10 => (any::<u8>(), any::<u8>()).prop_map(|(c, t)| Op::Reconnect(c, t)),
        2 => Just(Op::Restart),
        1 => any::<u8>().prop_map(Op::Shutdown),
        1 => any::<u8>().prop_map(Op::Drain),
    ]
}

const RESUMED: &str = r#"{"type":"resumed","req_id":"resumed","payload":{}}"#;
const PROJECTS: [&str; 4] = ["p", "q", "q2", "r"];
const TOOLS: [&str; 4] = ["Bash", "Read", "rm", "Write"];
/// The decisions a person makes: approve, deny, and "always allow" in each scope.
const DECISIONS: [(Decision, AlwaysScope); 5] = [
    (Decision::Approve, AlwaysScope::Project),
    (Decision::Deny, AlwaysScope::Project),
    (Decision::AlwaysAllow, AlwaysScope::Project),
    (Decision::AlwaysAllow, AlwaysScope::Connection),
    (Decision::AlwaysAllow, AlwaysScope::Everywhere),
];

/// A rule a person's "always allow" made, as the model expects it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Remembered {
    tool: String,
    project: Option<String>,
    conn: Option<ConnHandle>,
}
const MAX_GONE: usize = 2;
const MAX_CONNECTIONS: usize = 6;
const MAX_UNIDENTIFIED: usize = 3;
const SLED_BYTES: usize = 30;
const TOTAL_BYTES: usize = 45;

fn credentials() -> [Credential; 3] {
    [
        Credential::unbound(CredentialId(0)),
        Credential::unbound(CredentialId(1)),
        Credential::new(CredentialId(2), ProjectScope::Patterns(vec!["q*".into()])),
    ]
}

/// The credential set a reload installs, by index (`None`: revoked).
fn reloaded(bits: u8, now: Instant) -> [Option<Credential>; 3] {
    let mut set = credentials().map(Some);
    for (i, c) in set.iter_mut().enumerate() {
        if bits & (1 << i) == 0 {
            *c = None;
        }
    }
    if bits & 8 != 0
        && let Some(c) = &mut set[1]
    {
        c.scope = ProjectScope::Patterns(vec!["p".into()]);
    }
    if bits & 16 != 0
        && let Some(c) = set[0].take()
    {
        set[0] = Some(c.expiring(now + Duration::from_secs(5)));
    }
    set
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Pending,
    /// Decided while its sled was away (approved or not), not delivered yet.
    Kept(bool),
    Ended,
}

/// What a request was when it first arrived: what must match wherever it is found again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    cred: usize,
    project: String,
    incarnation: Option<String>,
    req_id: String,
    tool: String,
    input: String,
}

struct Model {
    hub: Hub,
    now: Instant,
    /// Every connection accepted, with its credential's index.
    conns: Vec<(ConnHandle, usize)>,
    /// Every permission a person could decide: its fate, `req_id`, project and tool.
    perms: BTreeMap<PublicPermId, (Fate, String, String, String)>,
    /// The rules "always allow" made that are in force, and the one the last such decision must make.
    remembered: BTreeMap<RuleId, Remembered>,
    expect_rule: Option<Remembered>,
    tickets: BTreeMap<McpTicket, Fate>,
    /// Which connection holds each project, by the events seen.
    holders: BTreeMap<String, ConnHandle>,
    /// Projects listed as disconnected, by the events seen (before the bound forgets them).
    ever: BTreeSet<String>,
    /// The credentials in force, by index; a revoked one is `None` (its token no longer authenticates).
    creds: [Option<Credential>; 3],
    /// Whether the hub accepts `resume`.
    resume: bool,
    /// Each request as it first arrived, and the connection it is pending on (`None`: held).
    origins: BTreeMap<PublicPermId, Origin>,
    location: BTreeMap<PublicPermId, Option<ConnHandle>>,
    /// The last `perm_request` sent on each connection under each `req_id`: its tool and input.
    sent: BTreeMap<(ConnHandle, String), (String, String)>,
    /// The incarnation each connection offered; the connections that were sent `resume_accepted`; the
    /// project each claimed.
    offered: BTreeMap<ConnHandle, String>,
    accepted: BTreeSet<ConnHandle>,
    claimed: BTreeMap<ConnHandle, String>,
    /// When each connection accepted `resume`, when the model first sent `resumed` on it, and when the hub
    /// first recognised a request sent again on it: either within the confirmation time of the acceptance
    /// confirms it (the sled is known to have seen the acceptance).
    accepted_at: BTreeMap<ConnHandle, Instant>,
    resumed_sent: BTreeMap<ConnHandle, Instant>,
    recognised: BTreeMap<ConnHandle, Instant>,
    /// What the adapter keeps for a restart, by the events seen; the hub's configuration, to start another.
    kept: BTreeMap<PublicPermId, HeldRequest>,
    cfg: HubConfig,
    /// Requests held again by a restart (their `PermissionHeld` follows), and those that ended before one (a
    /// restarted hub no longer says how).
    restoring: BTreeSet<PublicPermId>,
    forgotten: BTreeSet<PublicPermId>,
    /// The greatest connection handle the hub said it reserved.
    ids_until: u64,
    /// Until when the hub drains, once asked to.
    draining_until: Option<Instant>,
}

impl Model {
    fn new(resume: bool) -> Model {
        let session = SessionConfig {
            max_pending_permissions: 3,
            max_pending_input_bytes: SLED_BYTES,
            max_pending_mcp: 2,
            ..SessionConfig::default()
        };
        let mut cfg = HubConfig::new(session);
        cfg.auto_approve = ["Read".to_owned()].into();
        cfg.auto_deny = ["rm".to_owned()].into();
        cfg.max_disconnected_sleds = MAX_GONE;
        cfg.max_connections = MAX_CONNECTIONS;
        cfg.max_unidentified = MAX_UNIDENTIFIED;
        cfg.max_pending_input_bytes = TOTAL_BYTES;
        if resume {
            let mut r = uplink_proto::gateway::ResumeConfig::default();
            r.window = Duration::from_secs(30);
            cfg.resume = Some(r);
        }
        // A deny rule for one project, beside the auto flags (which are rules too).
        let deny = uplink_proto::rules::Pattern::parse("Bash").expect("valid");
        cfg.rules = vec![
            uplink_proto::rules::Rule::new(
                uplink_proto::rules::RuleId(1),
                uplink_proto::rules::Effect::Deny,
                deny,
                "model",
                0,
            )
            .for_projects(ProjectScope::Patterns(vec!["r".into()])),
        ];
        Model {
            hub: Hub::new(cfg.clone(), Instant::ZERO).expect("valid"),
            cfg,
            now: Instant::ZERO,
            conns: Vec::new(),
            perms: BTreeMap::new(),
            remembered: BTreeMap::new(),
            expect_rule: None,
            tickets: BTreeMap::new(),
            holders: BTreeMap::new(),
            ever: BTreeSet::new(),
            creds: credentials().map(Some),
            resume,
            origins: BTreeMap::new(),
            location: BTreeMap::new(),
            sent: BTreeMap::new(),
            offered: BTreeMap::new(),
            accepted: BTreeSet::new(),
            claimed: BTreeMap::new(),
            accepted_at: BTreeMap::new(),
            resumed_sent: BTreeMap::new(),
            recognised: BTreeMap::new(),
            kept: BTreeMap::new(),
            restoring: BTreeSet::new(),
            forgotten: BTreeSet::new(),
            ids_until: 0,
            draining_until: None,
        }
    }

    fn conn(&self, pick: u8) -> Option<(ConnHandle, usize)> {
        (!self.conns.is_empty()).then(|| self.conns[usize::from(pick) % self.conns.len()])
    }

    /// Sends `text` on a connection: mostly an identified one (none if there is none), so that sleds live long
    /// enough to build up state; a quarter of the time any connection ever accepted (open, closed, or not yet
    /// identified).
    fn text(&mut self, pick: u8, text: &str) -> Option<ConnHandle> {
        let live: Vec<ConnHandle> =
            self.conns.iter().map(|(c, _)| *c).filter(|c| self.hub.project_of(*c).is_some()).collect();
        let conn = match live.get(usize::from(pick) % live.len().max(1)) {
            _ if pick % 4 == 0 => self.conn(pick)?.0,
            Some(conn) => *conn,
            None => return None,
        };
        self.hub.handle_received(self.now, conn, Received::Text(text));
        Some(conn)
    }

    /// Sends `text` on any connection ever accepted.
    fn text_any(&mut self, pick: u8, text: &str) -> Option<ConnHandle> {
        let (conn, _) = self.conn(pick)?;
        self.hub.handle_received(self.now, conn, Received::Text(text));
        Some(conn)
    }

    /// Runs one op; returns the approvals the application gave in it, as (connection, req_id).
    fn apply(&mut self, op: &Op) -> Result<BTreeSet<(ConnHandle, String)>, TestCaseError> {
        let mut approved = BTreeSet::new();
        let now = self.now;
        match op {
            Op::Accept(c) => {
                let cred = usize::from(*c) % 3;
                // Only a credential in force authenticates.
                let Some(credential) = self.creds[cred].clone() else { return Ok(approved) };
                let (open, unidentified) = (self.hub.connections(), self.hub.unidentified());
                match self.hub.accept(now, credential.clone()) {
                    Ok(conn) => {
                        prop_assert!(!self.hub.is_shutting_down() && !credential.is_expired(now));
                        prop_assert!(open < MAX_CONNECTIONS && unidentified < MAX_UNIDENTIFIED);
                        self.conns.push((conn, cred));
                    }
                    Err(e) => prop_assert!(
                        self.hub.is_shutting_down()
                            || credential.is_expired(now)
                            || open >= MAX_CONNECTIONS
                            || unidentified >= MAX_UNIDENTIFIED,
                        "refused: {:?}",
                        e
                    ),
                }
            }
            Op::Identify(c, p, i) => {
                let project = PROJECTS[usize::from(*p)];
                let incarnation = ["", "a", "b"][usize::from(*i)];
                let frame = if incarnation.is_empty() {
                    json!({"type":"identity","req_id":"identity","payload":{"project":project}})
                } else {
                    json!({"type":"identity","req_id":"identity",
                           "payload":{"project":project,"capabilities":["resume"],"incarnation":incarnation}})
                };
                // Mostly an open connection that has not identified yet, so that sleds come up.
                let fresh: Vec<ConnHandle> = self
                    .conns
                    .iter()
                    .map(|(c, _)| *c)
                    .filter(|c| self.hub.credential_of(*c).is_some() && self.hub.project_of(*c).is_none())
                    .collect();
                let to = match fresh.get(usize::from(*c) % fresh.len().max(1)) {
                    Some(conn) if *c % 4 != 0 => {
                        self.hub.handle_received(now, *conn, Received::Text(&frame.to_string()));
                        Some(*conn)
                    }
                    _ => self.text_any(*c, &frame.to_string()),
                };
                if let Some(conn) = to
                    && !incarnation.is_empty()
                {
                    // Only a connection's first identity counts.
                    self.offered.entry(conn).or_insert_with(|| incarnation.to_owned());
                    // Half the time a sled with nothing kept: its `resumed` right away.
                    if c % 2 == 0 {
                        self.hub.handle_received(now, conn, Received::Text(RESUMED));
                        self.resumed_sent.entry(conn).or_insert(now);
                    }
                }
            }
            Op::Heartbeat(c) => {
                self.text(*c, r#"{"type":"heartbeat","req_id":"","payload":null}"#);
            }
            Op::PermRequest(c, r, t) => {
                // The same `req_id` comes with one of two inputs, so that a request sent again may differ.
                let (tool, input) = (TOOLS[usize::from(*t)], json!({"n": t % 2}));
                let frame = json!({"type":"perm_request","req_id":format!("r{r}"),"payload":{"tool_name":tool,"tool_input":input}});
                // Mostly to an identified connection, so that requests pile up against the budgets.
                if let Some(conn) = self.text(*c, &frame.to_string()) {
                    self.sent.insert((conn, format!("r{r}")), (tool.to_owned(), input.to_string()));
                }
            }
            Op::PermCancel(c, r) => {
                self.text(*c, &json!({"type":"perm_cancel","req_id":format!("r{r}")}).to_string());
            }
            Op::McpResponse(c, m) => {
                let frame = json!({"type":"mcp_response","req_id":format!("mcp-{m}"),"payload":{"ok":m}});
                self.text(*c, &frame.to_string());
            }
            Op::Garbage(c) => {
                self.text(*c, "{not json");
            }
            Op::Decide(p, d) => {
                let (decision, scope) = DECISIONS[usize::from(*d)];
                // Mostly a known id (pending or ended), sometimes one that never existed.
                let known: Vec<PublicPermId> = self.perms.keys().copied().collect();
                let id = if known.is_empty() || *p % 7 == 0 {
                    PublicPermId { conn: ConnHandle(u64::from(*p)), perm: PermId(u64::from(*p % 3)) }
                } else {
                    known[usize::from(*p) % known.len()]
                };
                let pending = self.perms.get(&id).filter(|p| p.0 == Fate::Pending).cloned();
                let ended = self.perms.get(&id).is_some_and(|p| p.0 == Fate::Ended);
                let kept = self.perms.get(&id).is_some_and(|p| matches!(p.0, Fate::Kept(_)));
                // Where it is pending now: `None` while held.
                let at = self.location.get(&id).copied().flatten();
                let result = self.hub.decide(now, id, Verdict::new(decision).always(Always::new(scope, 0)));
                prop_assert_eq!(result.is_ok(), pending.is_some(), "decide {} against the model", id);
                // A late decision says how the permission ended (the bound, 4096, exceeds any script here), but
                // for one that ended before a restart.
                if (ended || kept) && !self.forgotten.contains(&id) {
                    prop_assert!(matches!(result, Err(HubDecideError::Ended(_))), "{} ended: {:?}", id, result);
                }
                if let (Ok(decided), Some((_, req_id, project, tool))) = (result, pending) {
                    prop_assert_eq!(decided.held, at.is_none(), "{} decided as held or not against the model", id);
                    if decision.is_allow()
                        && let Some(conn) = at
                    {
                        approved.insert((conn, req_id));
                    }
                    // "Always allow" makes a rule for the tool in the scope picked; for Bash, none (the
                    // model's inputs have no command to derive one from); for "this connection" while its
                    // sled is away, none either.
                    if decision == Decision::AlwaysAllow
                        && tool != "Bash"
                        && (scope != AlwaysScope::Connection || at.is_some())
                    {
                        self.expect_rule = Some(Remembered {
                            tool,
                            project: (scope != AlwaysScope::Everywhere).then_some(project),
                            conn: at.filter(|_| scope == AlwaysScope::Connection),
                        });
                    }
                }
            }
            Op::SendMcp(p) => {
                let project = PROJECTS[usize::from(*p)];
                if let Ok(ticket) = self.hub.send_mcp(now, project, r#"{"jsonrpc":"2.0","id":1}"#, None, true) {
                    prop_assert_eq!(self.holders.get(project), Some(&ticket.conn));
                    prop_assert!(self.tickets.insert(ticket, Fate::Pending).is_none(), "ticket reused");
                }
            }
            Op::Disconnect(c) => {
                if let Some((conn, _)) = self.conn(*c) {
                    self.hub.handle_disconnected(now, conn);
                }
            }
            Op::TooBig(c) => {
                if let Some((conn, _)) = self.conn(*c) {
                    self.hub.handle_too_big(now, conn);
                }
            }
            Op::Advance(ms) => {
                self.now = self.now + Duration::from_millis(u64::from(*ms));
                self.hub.handle_timeout(self.now);
            }
            Op::Reload(bits) => {
                self.creds = reloaded(*bits, now);
                let set: Vec<Credential> = self.creds.iter().flatten().cloned().collect();
                self.hub.update_credentials(now, &set);
            }
            Op::Reconnect(c, twist) => {
                let Some((old, cred)) = self.conn(*c) else { return Ok(approved) };
                let Some(project) = self.claimed.get(&old).cloned() else { return Ok(approved) };
                let Some(credential) = self.creds[cred].clone() else { return Ok(approved) };
                if twist % 3 != 0 {
                    self.hub.handle_disconnected(now, old);
                }
                let Ok(conn) = self.hub.accept(now, credential) else { return Ok(approved) };
                self.conns.push((conn, cred));
                let incarnation = match (self.offered.get(&old).map(String::as_str), twist % 5 == 0) {
                    (Some("a"), true) => Some("b"),
                    (Some(_), true) => Some("a"),
                    (i, _) => i,
                };
                let payload = match incarnation {
                    Some(i) => json!({"project": project, "capabilities": ["resume"], "incarnation": i}),
                    None => json!({"project": project}),
                };
                let identity = json!({"type":"identity","req_id":"identity","payload":payload});
                self.hub.handle_received(now, conn, Received::Text(&identity.to_string()));
                if let Some(i) = incarnation {
                    self.offered.insert(conn, i.to_owned());
                }
                let again: Vec<(String, (String, String))> = self
                    .sent
                    .iter()
                    .filter(|((c, _), _)| *c == old)
                    .map(|((_, r), v)| (r.clone(), v.clone()))
                    .collect();
                for (n, (req_id, (tool, input))) in again.into_iter().enumerate() {
                    let input = if n == 0 && twist % 7 == 0 { r#"{"n":9}"#.to_owned() } else { input };
                    let frame = format!(
                        r#"{{"type":"perm_request","req_id":"{req_id}","payload":{{"tool_name":"{tool}","tool_input":{input}}}}}"#
                    );
                    self.hub.handle_received(now, conn, Received::Text(&frame));
                    self.sent.insert((conn, req_id), (tool, input));
                }
                if twist % 2 == 0 {
                    self.hub.handle_received(now, conn, Received::Text(RESUMED));
                    self.resumed_sent.entry(conn).or_insert(now);
                }
            }
            Op::Restart => {
                self.hub = Hub::new(self.cfg.clone(), now).expect("valid");
                self.draining_until = None;
                // Every connection, claim and MCP request is gone with the old hub, and so are the rules made at
                // run time (the program keeps those in its store; this model does not).
                self.conns.clear();
                (self.claimed, self.offered, self.accepted, self.sent) = Default::default();
                (self.accepted_at, self.resumed_sent, self.recognised) = Default::default();
                self.holders.clear();
                self.remembered.clear();
                self.tickets.values_mut().for_each(|f| *f = Fate::Ended);
                for (id, p) in self.perms.iter_mut() {
                    let kept = self.kept.get(id).filter(|k| !k.sent);
                    match (p.0, kept) {
                        (Fate::Ended, _) => {
                            self.forgotten.insert(*id);
                        }
                        (_, Some(_)) => {
                            self.location.insert(*id, None);
                            self.restoring.insert(*id);
                        }
                        // Pending on a connection that did not resume: its sled denies it at the drop.
                        (_, None) => {
                            p.0 = Fate::Ended;
                            self.forgotten.insert(*id);
                        }
                    }
                }
                let restored: Vec<HeldRequest> = self.kept.values().cloned().collect();
                self.hub.start_ids_after(self.ids_until);
                self.hub.restore_held(now, restored);
            }
            Op::Shutdown(n) => {
                if *n < 16 {
                    self.hub.shutdown(now);
                    self.draining_until = None;
                }
            }
            Op::Drain(n) => {
                if *n < 40 && !self.hub.is_shutting_down() {
                    let until = now + Duration::from_secs(u64::from(*n));
                    self.hub.drain(now, until);
                    self.draining_until = Some(until);
                }
            }
        }
        Ok(approved)
    }

    /// True when `conn` accepted `resume` and its sled is known to have seen it.
    fn confirmed(&self, conn: ConnHandle) -> bool {
        // At any time: one that shows it late keeps from then on what it sent all the same.
        self.accepted_at.contains_key(&conn)
            && (self.resumed_sent.contains_key(&conn) || self.recognised.contains_key(&conn))
    }

    fn cred_of(&self, conn: ConnHandle) -> usize {
        self.conns.iter().find(|(c, _)| *c == conn).map_or(usize::MAX, |(_, i)| *i)
    }

    /// Request `id`, held, was found again on `conn`: only by the same credential, project and incarnation,
    /// on a connection that accepted `resume`, with the same request sent again.
    fn found_again(&self, id: PublicPermId, conn: ConnHandle) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.location.get(&id), Some(&None), "{} found again while not held", id);
        self.same_request(id, conn)
    }

    /// Request `id` came again on `conn`: the same credential, project, incarnation and request.
    fn same_request(&self, id: PublicPermId, conn: ConnHandle) -> Result<(), TestCaseError> {
        prop_assert!(self.resume);
        let origin = &self.origins[&id];
        prop_assert_eq!(self.cred_of(conn), origin.cred, "{} found again by another credential", id);
        prop_assert_eq!(self.claimed.get(&conn), Some(&origin.project), "{} found again in another project", id);
        prop_assert!(self.accepted.contains(&conn), "{} found again on a connection without resume", id);
        prop_assert_eq!(self.offered.get(&conn), origin.incarnation.as_ref(), "{} found by another incarnation", id);
        let again = self.sent.get(&(conn, origin.req_id.clone()));
        prop_assert_eq!(again, Some(&(origin.tool.clone(), origin.input.clone())), "{} found for another request", id);
        Ok(())
    }

    /// Drains the hub and checks every output against the model.
    fn check(&mut self, approved: &BTreeSet<(ConnHandle, String)>) -> Result<(), TestCaseError> {
        let creds: Vec<Credential> =
            self.creds.iter().zip(credentials()).map(|(now, first)| now.clone().unwrap_or(first)).collect();
        let mut auto_approved = BTreeSet::new();
        let mut delivered = BTreeSet::new();
        let mut sent_approvals = Vec::new();
        while let Some(out) = self.hub.poll_output() {
            match out {
                HubOutput::Send { conn, text } => match GatewayFrame::decode(&text) {
                    Ok(GatewayFrame::PermResponse { req_id, decision, .. }) if decision.is_allow() => {
                        sent_approvals.push((conn, req_id.into_owned()));
                    }
                    Ok(GatewayFrame::ResumeAccepted) => {
                        prop_assert!(self.resume && self.offered.contains_key(&conn), "{} accepted unasked", conn.0);
                        prop_assert!(self.accepted.insert(conn), "{} accepted twice", conn.0);
                        self.accepted_at.insert(conn, self.now);
                    }
                    _ => {}
                },
                HubOutput::Event(event) => match event {
                    HubEvent::SledConnected { conn, project, replaced, .. } => {
                        let cred = self.cred_of(conn);
                        prop_assert!(
                            creds[cred].scope.covers(&project),
                            "{} holds {} outside its scope",
                            conn.0,
                            project
                        );
                        match (self.holders.get(&project), replaced) {
                            (None, None) => {}
                            (Some(old), Some(r)) => {
                                prop_assert_eq!(*old, r);
                                prop_assert_eq!(self.cred_of(r), cred, "another credential displaced a live holder");
                            }
                            (old, r) => {
                                prop_assert!(false, "claim of {} by {}: model {:?}, hub {:?}", project, conn.0, old, r)
                            }
                        }
                        self.holders.insert(project.clone(), conn);
                        self.claimed.insert(conn, project.clone());
                        self.ever.insert(project);
                    }
                    HubEvent::SledRefused { conn, project, reason } => {
                        let cred = self.cred_of(conn);
                        match reason {
                            CloseReason::ProjectNotPermitted => prop_assert!(!creds[cred].scope.covers(&project)),
                            CloseReason::ProjectHeld => {
                                let holder = self.holders.get(&project).copied();
                                prop_assert!(holder.is_some_and(|h| self.cred_of(h) != cred));
                            }
                            other => prop_assert!(false, "refused with {:?}", other),
                        }
                    }
                    HubEvent::SledDisconnected { conn, project } => {
                        prop_assert_eq!(self.holders.remove(&project), Some(conn));
                    }
                    HubEvent::PermissionRequested { project, tool_name, .. }
                        if project == "r" && tool_name == "Bash" =>
                    {
                        prop_assert!(false, "a request the deny rule covers reached a person");
                    }
                    HubEvent::PermissionRequested {
                        id, req_id, project, tool_name, tool_input, incarnation, ..
                    } => {
                        prop_assert_eq!(
                            incarnation.as_deref(),
                            self.offered.get(&id.conn).filter(|_| self.accepted.contains(&id.conn)).map(|s| s.as_str())
                        );
                        self.origins.insert(
                            id,
                            Origin {
                                cred: self.cred_of(id.conn),
                                project: project.clone(),
                                incarnation: incarnation.map(|i| i.to_string()),
                                req_id: req_id.clone(),
                                tool: tool_name.clone(),
                                input: tool_input.to_string(),
                            },
                        );
                        self.location.insert(id, Some(id.conn));
                        // No rule a person made covers it.
                        let covered = self.remembered.values().any(|r| {
                            r.tool == tool_name
                                && r.project.as_ref().is_none_or(|p| *p == project)
                                && r.conn.is_none_or(|c| c == id.conn)
                        });
                        prop_assert!(!covered, "{} reached a person though \"always allow\" covers it", id);
                        let entry = (Fate::Pending, req_id, project, tool_name);
                        prop_assert!(self.perms.insert(id, entry).is_none(), "id {} reused", id);
                    }
                    HubEvent::PermissionDecided { id, held, verdict, .. } => {
                        let at = self.location.get(&id).copied().flatten();
                        prop_assert_eq!(held, at.is_none(), "{} decided as held or not", id);
                        let entry = self.perms.get_mut(&id);
                        prop_assert!(entry.as_ref().is_some_and(|p| p.0 == Fate::Pending), "{} ended twice", id);
                        if let Some(p) = entry {
                            p.0 = if held { Fate::Kept(verdict.decision.is_allow()) } else { Fate::Ended };
                        }
                    }
                    HubEvent::PermissionWithdrawn { id, .. } => {
                        let entry = self.perms.get_mut(&id);
                        prop_assert!(entry.as_ref().is_some_and(|p| p.0 != Fate::Ended), "{} ended twice", id);
                        if let Some(p) = entry {
                            p.0 = Fate::Ended;
                        }
                    }
                    HubEvent::PermissionHeld { id, .. } if self.restoring.remove(&id) => {
                        prop_assert!(self.kept.get(&id).is_some_and(|k| !k.sent), "{} held again unkept", id);
                    }
                    HubEvent::PermissionHeld { id, .. } => {
                        prop_assert!(self.resume, "held without resume");
                        let at = self.location.get(&id).copied().flatten();
                        prop_assert!(at.is_some_and(|c| self.confirmed(c)), "{} held from {:?}", id, at);
                        prop_assert_eq!(self.perms.get(&id).map(|p| p.0), Some(Fate::Pending));
                        // Never for a credential no longer in force.
                        prop_assert!(self.creds[self.origins[&id].cred].is_some(), "{} held for a revoked sled", id);
                        self.location.insert(id, None);
                    }
                    HubEvent::PermissionResumed { id, conn, .. } => {
                        self.found_again(id, conn)?;
                        self.recognised.entry(conn).or_insert(self.now);
                        prop_assert_eq!(self.perms.get(&id).map(|p| p.0), Some(Fate::Pending));
                        self.location.insert(id, Some(conn));
                    }
                    HubEvent::Resumable { request } => {
                        prop_assert!(self.resume, "kept without resume");
                        prop_assert!(self.perms.contains_key(&request.id), "kept {} unknown", request.id);
                        self.kept.insert(request.id, request);
                    }
                    HubEvent::ResumableGone { id } => {
                        self.kept.remove(&id);
                    }
                    HubEvent::IdsReserved { until } => {
                        prop_assert!(until > self.ids_until, "reserved {} after {}", until, self.ids_until);
                        self.ids_until = until;
                    }
                    HubEvent::PermissionAnsweredAgain { id, conn, .. } => {
                        self.same_request(id, conn)?;
                        self.recognised.entry(conn).or_insert(self.now);
                        let kept = self.kept.get(&id).filter(|k| k.sent).and_then(|k| k.verdict.as_ref());
                        prop_assert!(kept.is_some(), "{} answered again without a decision sent", id);
                        prop_assert_eq!(self.perms.get(&id).map(|p| p.0), Some(Fate::Ended));
                        if kept.is_some_and(|v| v.decision.is_allow()) {
                            delivered.insert((conn, self.origins[&id].req_id.clone()));
                        }
                    }
                    HubEvent::PermissionDelivered { id, conn, .. } => {
                        self.found_again(id, conn)?;
                        self.recognised.entry(conn).or_insert(self.now);
                        let entry = self.perms.get_mut(&id);
                        let fate = entry.as_ref().map(|p| p.0);
                        prop_assert!(matches!(fate, Some(Fate::Kept(_))), "{} delivered from {:?}", id, fate);
                        if let Some(p) = entry {
                            p.0 = Fate::Ended;
                        }
                        if fate == Some(Fate::Kept(true)) {
                            delivered.insert((conn, self.origins[&id].req_id.clone()));
                        }
                    }
                    HubEvent::RuleAdded { rule } => {
                        let expected = self.expect_rule.take();
                        let made = Remembered {
                            tool: rule.pattern.to_string(),
                            project: match &rule.projects {
                                ProjectScope::Any => None,
                                ProjectScope::Exactly(p) => Some(p.clone()),
                                other => return Err(TestCaseError::fail(format!("scope {other:?}"))),
                            },
                            conn: rule.connection,
                        };
                        prop_assert_eq!(Some(&made), expected.as_ref(), "a rule nobody asked for");
                        prop_assert!(rule.effect == uplink_proto::rules::Effect::Allow);
                        self.remembered.insert(rule.id, made);
                    }
                    HubEvent::RuleRemoved { id, by } => {
                        // Only a connection's own rules go by themselves, once its connection is closed.
                        let gone = self.remembered.remove(&id);
                        prop_assert!(by.is_none());
                        let conn = gone.and_then(|r| r.conn);
                        prop_assert!(conn.is_some_and(|c| self.hub.credential_of(c).is_none()), "{:?} removed", id);
                    }
                    HubEvent::PermissionAutoDecided { project, tool_name, decision, .. }
                        if project == "r" && tool_name == "Bash" =>
                    {
                        prop_assert_eq!(decision, Decision::Deny);
                    }
                    HubEvent::PermissionAutoDecided { conn, req_id, tool_name, decision, rule, project, .. }
                        if decision.is_allow() =>
                    {
                        // The flag, or a rule a person made that covers it.
                        let by_person = rule.and_then(|id| self.remembered.get(&id)).is_some_and(|r| {
                            r.tool == tool_name
                                && r.project.as_ref().is_none_or(|p| *p == project)
                                && r.conn.is_none_or(|c| c == conn)
                        });
                        prop_assert!(tool_name == "Read" || by_person, "approved {} by {:?}", tool_name, rule);
                        auto_approved.insert((conn, req_id));
                    }
                    HubEvent::McpMessage { ticket, .. } => {
                        prop_assert_eq!(self.tickets.get(&ticket), Some(&Fate::Pending), "a message after the end");
                    }
                    HubEvent::McpAnswered { ticket, .. } | HubEvent::McpFailed { ticket, .. } => {
                        let fate = self.tickets.get_mut(&ticket);
                        prop_assert!(fate.as_ref().is_some_and(|f| **f == Fate::Pending), "{:?} ended twice", ticket);
                        if let Some(f) = fate {
                            *f = Fate::Ended;
                        }
                    }
                    _ => {}
                },
                // A drain closes a connection that never took `resume` only once nothing is pending on it.
                HubOutput::Close { conn, reason: CloseReason::Restarting }
                    if self.draining_until.is_some_and(|until| self.now < until) && !self.accepted.contains(&conn) =>
                {
                    let pending: Vec<&PublicPermId> = self
                        .location
                        .iter()
                        .filter(|(id, at)| {
                            **at == Some(conn) && self.perms.get(*id).is_some_and(|p| p.0 == Fate::Pending)
                        })
                        .map(|(id, _)| id)
                        .collect();
                    prop_assert!(pending.is_empty(), "{} drained with {:?} pending", conn.0, pending);
                }
                _ => {}
            }
        }
        prop_assert!(self.expect_rule.is_none(), "\"always allow\" made no rule");
        for sent in &sent_approvals {
            prop_assert!(
                approved.contains(sent) || auto_approved.contains(sent) || delivered.contains(sent),
                "unjustified approval {:?}",
                sent
            );
        }
        // Every connection handle handed out was reserved first.
        prop_assert!(self.conns.iter().all(|(c, _)| c.0 <= self.ids_until), "a handle beyond {}", self.ids_until);
        // Claims: the hub agrees with the model, and every holder's credential covers its project.
        for (project, conn) in &self.holders {
            prop_assert_eq!(self.hub.holder(project), Some(*conn));
            let cred = self.hub.credential_of(*conn).expect("a holder is open");
            prop_assert!(cred.scope.covers(project));
        }
        // One connection per project: a connection that holds a project is its holder (a replaced one is closed).
        for (conn, _) in &self.conns {
            if let Some(project) = self.hub.project_of(*conn) {
                prop_assert_eq!(self.hub.holder(project), Some(*conn), "two connections hold {}", project);
            }
        }
        // Listings.
        let listed: BTreeSet<PublicPermId> = self.hub.permissions(self.now).into_iter().map(|p| p.id).collect();
        let pending: BTreeSet<PublicPermId> =
            self.perms.iter().filter(|(_, p)| p.0 != Fate::Ended).map(|(id, _)| *id).collect();
        prop_assert_eq!(&listed, &pending);
        let held: BTreeSet<PublicPermId> = self.hub.held().map(|h| h.id).collect();
        let away: BTreeSet<PublicPermId> =
            pending.iter().copied().filter(|id| self.location.get(id).is_some_and(Option::is_none)).collect();
        prop_assert_eq!(held, away);
        // What the adapter keeps: every held request as the hub holds it, every request pending for a sled that
        // resumes, and decisions only once sent or made while the sled was away.
        for h in self.hub.held() {
            prop_assert_eq!(self.kept.get(&h.id), Some(h), "{} held but not kept as held", h.id);
        }
        for (id, p) in &self.perms {
            // Held, or pending on a connection whose sled is known to keep it.
            let kept_by_sled = match self.location.get(id) {
                Some(None) => true,
                Some(Some(conn)) => self.confirmed(*conn),
                None => false,
            };
            if p.0 != Fate::Ended && kept_by_sled {
                prop_assert!(self.kept.get(id).is_some_and(|k| !k.sent), "{} pending but not kept", id);
            }
            if p.0 == Fate::Pending && !kept_by_sled {
                prop_assert!(!self.kept.contains_key(id), "{} kept though its sled may not keep it", id);
            }
        }
        for (id, k) in &self.kept {
            let fate = self.perms.get(id).map(|p| p.0);
            prop_assert_eq!(k.sent, fate == Some(Fate::Ended), "{} kept as {:?} while {:?}", id, k, fate);
        }
        let sleds = self.hub.sleds(self.now);
        let connected: BTreeSet<String> = sleds.iter().filter(|s| s.connected).map(|s| s.project.clone()).collect();
        prop_assert_eq!(&connected, &self.holders.keys().cloned().collect::<BTreeSet<_>>());
        let gone = sleds.iter().filter(|s| !s.connected).count();
        prop_assert!(gone <= MAX_GONE && gone == self.hub.remembered_disconnected());
        prop_assert!(sleds.iter().all(|s| self.ever.contains(&s.project)));
        prop_assert!(self.hub.disconnection_log_len() <= 2 * self.hub.remembered_disconnected() + 64);
        // Per connection, the pending counts are within the session limits.
        prop_assert!(sleds.iter().all(|s| s.pending_permissions <= 3 && s.pending_mcp <= 2));
        // Credentials: every open connection's is in force and unexpired, with the terms last loaded.
        for (conn, cred) in &self.conns {
            if let Some(held) = self.hub.credential_of(*conn) {
                prop_assert_eq!(Some(held), self.creds[*cred].as_ref(), "{} kept a revoked credential", conn.0);
                prop_assert!(!held.is_expired(self.now), "{} open with an expired credential", conn.0);
            }
        }
        // A connection's own rules end with it: no rule outlives its connection.
        for rule in self.hub.rules().rules() {
            prop_assert!(rule.connection.is_none_or(|c| self.hub.credential_of(c).is_some()), "{:?} outlived", rule.id);
        }
        // Budgets: connections, and the bytes the listing holds (per connection and in total).
        prop_assert!(self.hub.connections() <= MAX_CONNECTIONS && self.hub.unidentified() <= MAX_UNIDENTIFIED);
        let mut bytes: BTreeMap<Option<ConnHandle>, usize> = BTreeMap::new();
        let mut held_bytes: BTreeMap<String, usize> = BTreeMap::new();
        for p in self.hub.permissions(self.now) {
            let size = p.tool_name.len() + p.tool_input.len() + p.req_id.len();
            match self.location.get(&p.id).copied().flatten() {
                Some(conn) => *bytes.entry(Some(conn)).or_default() += size,
                None => *held_bytes.entry(p.project.clone()).or_default() += size,
            }
        }
        prop_assert!(bytes.values().chain(held_bytes.values()).all(|b| *b <= SLED_BYTES), "{:?}", bytes);
        // The hub counts what is listed, and what is not announced yet (its sled's confirmation awaited).
        prop_assert!(bytes.values().sum::<usize>() <= self.hub.pending_input_bytes());
        if !self.resume {
            prop_assert_eq!(bytes.values().sum::<usize>(), self.hub.pending_input_bytes());
        }
        prop_assert!(self.hub.pending_input_bytes() + held_bytes.values().sum::<usize>() <= TOTAL_BYTES);
        Ok(())
    }
}

proptest! {
    #[test]
    fn every_request_ends_once_claims_hold_and_listings_match_the_model(
        resume in any::<bool>(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut m = Model::new(resume);
        for op in &ops {
            let approved = m.apply(op)?;
            m.check(&approved)?;
        }
        m.hub.shutdown(m.now);
        m.check(&BTreeSet::new())?;
        prop_assert_eq!(m.hub.connections(), 0);
        // What stays after shutdown is what is held for its sled's return (with resume), and nothing else.
        let held: BTreeSet<PublicPermId> = m.hub.held().map(|h| h.id).collect();
        prop_assert!(resume || held.is_empty());
        for (id, p) in &m.perms {
            prop_assert!(p.0 == Fate::Ended || held.contains(id), "{} pending after shutdown", id);
        }
        prop_assert!(m.tickets.values().all(|f| *f == Fate::Ended), "MCP request pending after shutdown");
        prop_assert!(m.holders.is_empty());
        prop_assert!(held.is_empty() || m.hub.poll_timeout().is_some());
        // The window ends them all.
        m.now = m.now + Duration::from_secs(30);
        m.hub.handle_timeout(m.now);
        m.check(&BTreeSet::new())?;
        prop_assert!(m.perms.values().all(|p| p.0 == Fate::Ended), "held past the window");
        prop_assert_eq!(m.hub.poll_timeout(), None);
        prop_assert!(m.kept.is_empty(), "kept past the window: {:?}", m.kept.keys().collect::<Vec<_>>());
    }

    #[test]
    fn the_same_script_gives_the_same_outputs(resume in any::<bool>(), ops in prop::collection::vec(op(), 1..80)) {
        let run = |ops: &[Op]| {
            let mut m = Model::new(resume);
            let mut trace = Vec::new();
            for op in ops {
                let _ = m.apply(op);
                trace.extend(std::iter::from_fn(|| m.hub.poll_output()));
            }
            trace
        };
        prop_assert_eq!(run(&ops), run(&ops));
    }
}

proptest! {
    /// The connection budget under an open-file limit: at least one, never more than the limit (but one),
    /// keeping back at most `OPEN_FILES_KEPT_BACK` and never more than a quarter, and never smaller for a
    /// larger limit.
    #[test]
    fn the_connection_budget_follows_the_open_file_limit(limit in 0u64..4_000_000, more in 0u64..100_000) {
        use uplink_proto::gateway::OPEN_FILES_KEPT_BACK;
        let budget = HubConfig::max_connections_for_open_files(limit) as u64;
        prop_assert!(budget >= 1);
        prop_assert!(budget <= limit.max(1));
        let kept = limit.saturating_sub(budget);
        prop_assert!(kept <= OPEN_FILES_KEPT_BACK && kept <= limit / 4, "limit {limit}, budget {budget}");
        prop_assert!(HubConfig::max_connections_for_open_files(limit + more) as u64 >= budget);
    }
}

#[test]
fn the_connection_budget_at_known_limits() {
    let budget = HubConfig::max_connections_for_open_files;
    assert_eq!(
        (budget(20_000), budget(1_048_576), budget(1024), budget(400), budget(0)),
        (18_976, 1_047_552, 768, 300, 1)
    );
}

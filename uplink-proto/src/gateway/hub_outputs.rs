//! What a [`Hub`](super::Hub) reports and refuses: its outputs ([`HubOutput`], [`HubEvent`]), its listings
//! ([`SledSummary`], [`PermissionSummary`]) and its errors.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use super::close::CloseReason;
use super::credential::CredentialId;
use super::resume::HeldRequest;
use super::sled_session::{McpFailure, SessionIgnored, Withdrawn};
use super::verdict::Verdict;
use crate::ids::{ConnHandle, McpTicket, PublicPermId};
use crate::rules::{Rule, RuleId};
use crate::wire::Decision;

/// Why [`Hub::accept`](super::Hub::accept) refused a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The credential has expired.
    #[error("the credential has expired")]
    Expired,
    /// [`HubConfig::max_connections`](super::HubConfig::max_connections) connections are open.
    #[error("too many connections")]
    TooManyConnections,
    /// [`HubConfig::max_unidentified`](super::HubConfig::max_unidentified) connections have not identified yet.
    #[error("too many connections waiting to identify")]
    TooManyUnidentified,
}

/// How a permission ended, for a decision that comes too late.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PermEnd {
    /// Someone decided it.
    Decided(Decision),
    /// It was withdrawn.
    Withdrawn(Withdrawn),
}

impl core::fmt::Display for PermEnd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PermEnd::Decided(d) => write!(f, "already decided ({d})"),
            PermEnd::Withdrawn(Withdrawn::Cancelled) => f.write_str("withdrawn by the sled"),
            PermEnd::Withdrawn(Withdrawn::Deadline) => f.write_str("withdrawn: its deadline at the sled passed"),
            PermEnd::Withdrawn(Withdrawn::ConnectionLost) => f.write_str("withdrawn: its sled's connection ended"),
        }
    }
}

/// Why [`Hub::decide`](super::Hub::decide) refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubDecideError {
    /// No pending permission has this id, and none that ended recently did: it never existed (or was
    /// forgotten).
    #[error("no pending permission with this id")]
    NotPending,
    /// The permission has ended already; nothing was sent.
    #[error("this permission has ended: {0}")]
    Ended(PermEnd),
    /// The verdict's message is longer than [`MAX_MESSAGE_BYTES`](crate::wire::MAX_MESSAGE_BYTES); nothing
    /// was sent and the request stays pending.
    #[error("the message is longer than {} bytes", crate::wire::MAX_MESSAGE_BYTES)]
    MessageTooLong,
    /// An "always allow" whose rule would end before it began ([`Always::until`](super::Always::until) is
    /// not after now); nothing was sent and the request stays pending.
    #[error("the rule \"always allow\" would make has expired already")]
    AlwaysExpired,
    /// This gateway lost its lease in its cluster ([`super::lease`]) and decides nothing more: decide on
    /// another.
    #[error("this gateway lost its lease and decides nothing more; decide on another")]
    Fenced,
}

/// Why [`Hub::add_rule`](super::Hub::add_rule) refused a rule.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleRefused {
    /// [`HubConfig::max_rules`](super::HubConfig::max_rules) rules are in force.
    #[error("too many rules")]
    TooMany,
    /// It would never apply: it has expired already, or its list of projects is empty.
    #[error("this rule would never apply: it has expired, or names no project")]
    NeverApplies,
    /// This gateway lost its lease in its cluster ([`super::lease`]) and changes nothing more.
    #[error("this gateway lost its lease and changes nothing more; use another")]
    Fenced,
    /// This gateway shares its rules with others and has no rule id left until the next block comes
    /// ([`super::shared_rules`]).
    #[error("no rule id is left until the store hands out more; try again in a moment")]
    NoIds,
}

/// Why [`Hub::send_mcp`](super::Hub::send_mcp) refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum McpRefused {
    /// No sled ever identified as this project, or it was forgotten.
    #[error("unknown project")]
    UnknownProject,
    /// The project's sled is not connected.
    #[error("the sled is not connected")]
    NotConnected,
    /// Too many MCP requests (or streams) in flight on the sled's connection.
    #[error("too many MCP requests in flight for this sled")]
    TooMany,
    /// The sled does not relay MCP streams (a standalone stream needs them).
    #[error("the sled does not relay MCP streams")]
    Unsupported,
}

/// Something to do or to know, drained with [`Hub::poll_output`](super::Hub::poll_output). Not
/// `#[non_exhaustive]`, nor is [`HubEvent`]: an adapter's match names every one, so that one added later
/// cannot be dropped unseen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubOutput {
    /// Send this text frame on `conn`.
    Send {
        /// The connection.
        conn: ConnHandle,
        /// The frame.
        text: String,
    },
    /// Send a WebSocket ping on `conn`.
    Ping {
        /// The connection.
        conn: ConnHandle,
    },
    /// Send what is queued on `conn`, then a close frame for `reason`, then drop it. The hub has forgotten
    /// `conn`: later inputs about it are ignored.
    Close {
        /// The connection.
        conn: ConnHandle,
        /// Why; gives the close code and text.
        reason: CloseReason,
    },
    /// For the application.
    Event(HubEvent),
}

/// Something that happened in the fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    /// A connection identified and now holds `project`.
    SledConnected {
        /// The connection.
        conn: ConnHandle,
        /// The project it holds.
        project: String,
        /// Announced protocol version.
        protocol: Option<u32>,
        /// Announced sled software version.
        sled_version: Option<String>,
        /// Announced extensions.
        capabilities: Vec<String>,
        /// The connection it took the project from (closed with [`CloseReason::Replaced`]).
        replaced: Option<ConnHandle>,
    },
    /// A connection identified as `project` and passed the hub's own checks; with
    /// [`HubConfig::shared_claims`](super::HubConfig::shared_claims), the shared table must settle it: answer
    /// with [`Hub::handle_claim_answer`](super::Hub::handle_claim_answer). Nothing is sent on the connection
    /// until then.
    ClaimWanted {
        /// The connection.
        conn: ConnHandle,
        /// The project it claims.
        project: String,
        /// Its credential.
        credential: CredentialId,
    },
    /// A connection here claims `project`, held at gateway `node` with the same credential: ask that gateway
    /// to let it go ([`Hub::release`](super::Hub::release) there). The claim is asked again meanwhile.
    ReleaseWanted {
        /// The project.
        project: String,
        /// The gateway holding it.
        node: u64,
        /// The credential of both connections.
        credential: CredentialId,
    },
    /// A claim granted by the shared table ended (its connection closed or was replaced), or a grant came for
    /// a connection that no longer waits: give the claim of this generation back (a newer one stays).
    ClaimEnded {
        /// The project.
        project: String,
        /// The claim's generation.
        generation: u64,
    },
    /// The lease ([`HubConfig::lease`](super::HubConfig::lease)) is due for renewal: renew it at the database,
    /// reading the clock just before the renewal is sent, and hand the answer to
    /// [`Hub::handle_lease_renewal`](super::Hub::handle_lease_renewal). Asked once per renewal period; never
    /// two at once.
    LeaseRenewalDue,
    /// The hub fenced itself ([`super::lease`]): its lease lapsed, or the database said it is gone. Every
    /// connection was closed with [`CloseReason::Fenced`], and nothing more is reported for the store: what
    /// it held is for the other nodes to end. The last event a fenced hub gives.
    Fenced,
    /// A connection identified as a project it may not hold, and is closed.
    SledRefused {
        /// The connection.
        conn: ConnHandle,
        /// The project it announced.
        project: String,
        /// Why ([`CloseReason::ProjectNotPermitted`] or [`CloseReason::ProjectHeld`]).
        reason: CloseReason,
    },
    /// The connection holding `project` ended. The project stays listed as disconnected.
    SledDisconnected {
        /// The connection.
        conn: ConnHandle,
        /// The project.
        project: String,
    },
    /// Nothing arrived from the project's sled for the stale threshold.
    SledStale {
        /// The project.
        project: String,
    },
    /// The project's sled spoke again after being stale.
    SledAlive {
        /// The project.
        project: String,
    },
    /// A permission request awaits a decision through [`Hub::decide`](super::Hub::decide).
    PermissionRequested {
        /// Its public id.
        id: PublicPermId,
        /// The project.
        project: String,
        /// The credential of the connection it arrived on.
        credential: CredentialId,
        /// The sled's id for it.
        req_id: String,
        /// The tool.
        tool_name: String,
        /// The tool's input, as the JSON text it arrived in.
        tool_input: Arc<str>,
        /// Its sled's incarnation when `resume` is accepted on its connection: the request may be held
        /// across a drop ([`HubEvent::PermissionHeld`]), and an adapter that keeps state keeps it so that a
        /// restarted gateway holds it again ([`Hub::restore_held`](super::Hub::restore_held)).
        incarnation: Option<Arc<str>>,
    },
    /// A permission request decided by the auto policies or the pending limit, without the application.
    PermissionAutoDecided {
        /// The connection it arrived on.
        conn: ConnHandle,
        /// The project.
        project: String,
        /// The credential of the connection it arrived on.
        credential: CredentialId,
        /// The sled's id for it.
        req_id: String,
        /// The tool.
        tool_name: String,
        /// The tool's input, as the JSON text it arrived in.
        tool_input: Arc<str>,
        /// The decision sent.
        decision: Decision,
        /// The rule that decided; `None` for a budget.
        rule: Option<RuleId>,
        /// The message sent with it, for a denial.
        message: Option<Arc<str>>,
    },
    /// The application's decision was sent.
    PermissionDecided {
        /// Which.
        id: PublicPermId,
        /// The project.
        project: String,
        /// What, and the message sent with it.
        verdict: Verdict,
        /// The allow rule a person's "always allow" created ([`HubEvent::RuleAdded`] came just before);
        /// `None` otherwise, or when the request cannot be read as a rule (a compound Bash command).
        rule: Option<RuleId>,
        /// How long it waited for the decision.
        waited: Duration,
        /// True when its sled was away: the decision is kept, and delivered when the sled sends the request
        /// again ([`HubEvent::PermissionDelivered`]).
        held: bool,
    },
    /// Its sled's connection ended with `resume` accepted: the request is held for the sled's return, still
    /// listed and open to a decision.
    PermissionHeld {
        /// Which.
        id: PublicPermId,
        /// The project.
        project: String,
    },
    /// A held request came back: its sled sent it again, with the same tool and input, on `conn`. It is
    /// pending there under the same id.
    PermissionResumed {
        /// Which.
        id: PublicPermId,
        /// The project.
        project: String,
        /// The connection it is pending on now.
        conn: ConnHandle,
    },
    /// A request whose decision was sent before came again (its sled did not get the decision: the link or
    /// the gateway went away first): the same decision was sent again, on `conn`.
    PermissionAnsweredAgain {
        /// Which.
        id: PublicPermId,
        /// The project.
        project: String,
        /// The connection it was sent on.
        conn: ConnHandle,
    },
    /// What an adapter that keeps state keeps of a request that may come back (`resume`), so that a
    /// restarted gateway gives it to [`Hub::restore_held`](super::Hub::restore_held): it replaces whatever
    /// was kept under the same id. Written before the decision it carries is sent or acknowledged.
    Resumable {
        /// The request, its key, and its decision if it has one.
        request: HeldRequest,
    },
    /// The hub will hand out connection handles up to `until` (it reserves them in blocks): an adapter that
    /// keeps state keeps the last one, before anything is sent, and gives it to a restarted hub
    /// ([`Hub::start_ids_after`](super::Hub::start_ids_after)) so that public ids are never reused.
    IdsReserved {
        /// The greatest handle reserved.
        until: u64,
    },
    /// What was kept under `ids` ([`HubEvent::Resumable`]) was given to node `to` of the cluster, where its
    /// sled came back ([`Hub::give_held`](super::Hub::give_held)): kept there from now on, not ended.
    HeldGiven {
        /// Which.
        ids: Vec<PublicPermId>,
        /// The node that holds them now.
        to: u64,
    },
    /// What was kept under `id` ([`HubEvent::Resumable`]) is no longer needed.
    ResumableGone {
        /// Which.
        id: PublicPermId,
    },
    /// A decision kept while its sled was away was sent to it, on `conn`: the request has ended.
    PermissionDelivered {
        /// Which.
        id: PublicPermId,
        /// The project.
        project: String,
        /// The connection it was sent on.
        conn: ConnHandle,
    },
    /// A permission request ended without a decision.
    PermissionWithdrawn {
        /// Which.
        id: PublicPermId,
        /// The project.
        project: String,
        /// Why.
        reason: Withdrawn,
        /// How long it had waited.
        waited: Duration,
    },
    /// A rule now applies: added through [`Hub::add_rule`](super::Hub::add_rule), or by a person's "always allow".
    RuleAdded {
        /// The rule, with the id the hub gave it.
        rule: Rule,
    },
    /// Rules another gateway added or removed are in force here, or no longer
    /// ([`Hub::handle_rules_elsewhere`](super::Hub::handle_rules_elsewhere)): nothing to keep (the other
    /// gateway kept it), only to show.
    RulesChangedElsewhere {
        /// The rules now in force.
        added: Vec<RuleId>,
        /// The rules no longer in force.
        removed: Vec<RuleId>,
    },
    /// The hub hands rule ids out from a block and a quarter of it is left: draw the next from the shared
    /// store and hand it over with [`Hub::use_rule_ids`](super::Hub::use_rule_ids). Asked once until it comes.
    RuleIdsWanted,
    /// A rule no longer applies: removed through [`Hub::remove_rule`](super::Hub::remove_rule), or its connection ended.
    RuleRemoved {
        /// Which.
        id: RuleId,
        /// Who removed it; `None` when its connection ended.
        by: Option<Arc<str>>,
    },
    /// An MCP exchange's end with the sled's answer.
    McpAnswered {
        /// Which exchange.
        ticket: McpTicket,
        /// What the sled answered.
        answer: McpAnswer,
    },
    /// An MCP request ended without an answer.
    McpFailed {
        /// Which request.
        ticket: McpTicket,
        /// Why.
        reason: McpFailure,
    },
    /// A message from the sled's local MCP server within an exchange, before its end.
    McpMessage {
        /// Which exchange.
        ticket: McpTicket,
        /// The JSON-RPC message text.
        payload: String,
    },
    /// The sled's local server accepted the exchange's stream: a standalone stream is open (its caller can be
    /// answered before any message comes).
    McpOpened {
        /// Which exchange.
        ticket: McpTicket,
    },
    /// A frame from `conn` was ignored.
    FrameIgnored {
        /// The connection.
        conn: ConnHandle,
        /// Why.
        why: SessionIgnored,
    },
}

/// What the sled answered an MCP exchange with ([`HubEvent::McpAnswered`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum McpAnswer {
    /// The JSON-RPC response, as the sled sent it.
    Response(String),
    /// Nothing to say: a notification or a client's response that the local server accepted, or a
    /// standalone stream that ended.
    NoContent,
    /// The answer says the exchange's session is gone (the sled's local server lost it and the sled could
    /// not renew it): the session has ended at the gateway's MCP endpoint too, and the sled was told. Its
    /// client is answered `404` with this JSON-RPC answer, so that it initializes a new session.
    SessionGone(String),
}

/// What an HTTP request on the gateway's MCP endpoint became ([`Hub::handle_mcp_http`](super::Hub::handle_mcp_http)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum McpHttp {
    /// Relayed to the sled: the exchange's messages and end follow as events with `ticket`.
    Relayed {
        /// The exchange.
        ticket: McpTicket,
        /// For an `initialize`: the new session's id, for the client (`Mcp-Session-Id`) with the answer.
        new_session: Option<String>,
    },
    /// The session ended (`DELETE`), here and at the sled: `204`.
    Ended,
}

/// One sled in a listing ([`Hub::sleds`](super::Hub::sleds)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SledSummary {
    /// The project.
    pub project: String,
    /// Whether a live connection holds it.
    pub connected: bool,
    /// Whether it was silent past the stale threshold (at its disconnection, for a disconnected one).
    pub stale: bool,
    /// How long the live connection has held it; zero when disconnected.
    pub connected_for: Duration,
    /// How long ago anything last arrived from it.
    pub last_seen_ago: Duration,
    /// Permission requests pending on its connection.
    pub pending_permissions: usize,
    /// MCP requests in flight on its connection.
    pub pending_mcp: usize,
}

/// One pending permission in a listing ([`Hub::permissions`](super::Hub::permissions)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PermissionSummary {
    /// Its public id.
    pub id: PublicPermId,
    /// The project.
    pub project: String,
    /// The sled's id for it.
    pub req_id: String,
    /// The tool.
    pub tool_name: String,
    /// The tool's input, as the JSON text it arrived in (shared, not copied).
    pub tool_input: Arc<str>,
    /// How long it has waited.
    pub age: Duration,
    /// How long until its sled denies it, if nobody decides first (from the timeout the sled announced);
    /// `None` when the sled announced none.
    pub deadline_in: Option<Duration>,
    /// True while its sled is away and the hub holds it (`resume`).
    pub held: bool,
    /// A decision made while its sled was away, not delivered yet.
    pub decided: Option<Decision>,
}

/// What [`Hub::decide`](super::Hub::decide) did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decided {
    /// The allow rule a person's "always allow" created, if the request could be read as one.
    pub rule: Option<RuleId>,
    /// True when the sled was away: the decision is kept and delivered when it sends the request again.
    pub held: bool,
}

//! How everyone talks to the hub task: one bounded channel of [`HubMsg`]s behind a cheap, cloneable
//! [`HubHandle`], answered through oneshot channels and each connection's own queue; and the caller's end of
//! an MCP exchange ([`McpExchange`]), which cancels it when dropped early.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use uplink_proto::Instant;
use uplink_proto::gateway::{
    AcceptError, AlwaysScope, ClaimAnswer, CloseReason, ConnHandle, CredentialId, Decided, HeldRequest, HubDecideError,
    McpFailure, McpTicket, PermissionSummary, PublicPermId, RuleRefused, SledSummary, Verdict,
};
use uplink_proto::rules::{Rule, RuleId};

use super::credentials::{Credentials, SledCredential};
use super::fanout::Subscription;
use super::mcp_exchange::{MCP_EVENTS, McpAsk, McpEvent, McpOutcome, Sink};
use crate::store::{Change, StoredRule};

/// Messages queued for one sled connection before it counts as stuck (its socket loop has a queue of its
/// own behind this one).
pub(crate) const CONN_QUEUE: usize = 1024;

/// Messages waiting for the hub task before senders wait their turn.
pub(super) const HUB_QUEUE: usize = 4096;

/// What the hub task sends a sled connection's loop.
pub(crate) enum ConnOut {
    /// Queue this frame.
    Frame(Message),
    /// Send what is queued, then this close, and end.
    Close(CloseReason),
}

/// Why a decision was not carried out.
pub(crate) enum DecideFailure {
    /// The hub refused it.
    Hub(HubDecideError),
    /// The store could not write it: nothing was sent, and the gateway is stopping.
    Store,
}

/// One MCP exchange, from its caller's side: its events in order. Dropped before its end (the HTTP client
/// went away), it cancels the exchange at the sled.
pub(crate) struct McpExchange {
    rx: mpsc::Receiver<McpEvent>,
    ticket: Option<McpTicket>,
    new_session: Option<String>,
    ended: bool,
    hub: HubHandle,
}

/// What an exchange's caller reads next: a message of the sled's, the word that its stream opened, or the
/// end.
pub(crate) enum McpNext {
    Message(String),
    Opened,
    End(McpOutcome),
}

impl McpExchange {
    fn new(rx: mpsc::Receiver<McpEvent>, hub: &HubHandle) -> McpExchange {
        McpExchange { rx, ticket: None, new_session: None, ended: false, hub: hub.clone() }
    }

    /// The session an `initialize` opened, once its exchange started (its answer's first event read).
    pub(crate) fn new_session(&self) -> Option<&str> {
        self.new_session.as_deref()
    }

    /// The next message, or the end (after which this is the end again).
    pub(crate) async fn next(&mut self) -> McpNext {
        loop {
            match self.rx.recv().await {
                Some(McpEvent::Started(ticket, session)) => {
                    self.ticket = Some(ticket);
                    self.new_session = session;
                }
                Some(McpEvent::Message(message)) => return McpNext::Message(message),
                Some(McpEvent::Opened) => return McpNext::Opened,
                Some(McpEvent::End(outcome)) => {
                    self.ended = true;
                    return McpNext::End(outcome);
                }
                None => {
                    self.ended = true;
                    return McpNext::End(McpOutcome::Failed(McpFailure::ConnectionLost));
                }
            }
        }
    }
}

impl Drop for McpExchange {
    fn drop(&mut self) {
        // The ticket may be waiting unread, or the end may be (then nothing is left to cancel).
        while let Ok(event) = self.rx.try_recv() {
            match event {
                McpEvent::Started(ticket, _) => self.ticket = Some(ticket),
                McpEvent::End(_) => self.ended = true,
                McpEvent::Message(_) | McpEvent::Opened => {}
            }
        }
        if let (Some(ticket), false) = (self.ticket, self.ended) {
            self.hub.cancel_mcp(ticket);
        }
    }
}

/// What the hub task is asked.
pub(super) enum HubMsg {
    Open {
        credential: SledCredential,
        out: mpsc::Sender<ConnOut>,
        reply: oneshot::Sender<Result<ConnHandle, AcceptError>>,
    },
    Credentials {
        credentials: Arc<Credentials>,
    },
    Received {
        conn: ConnHandle,
        message: Message,
    },
    TooBig {
        conn: ConnHandle,
    },
    Ended {
        conn: ConnHandle,
    },
    Decide {
        id: PublicPermId,
        verdict: Verdict,
        /// For an "always allow": where its rule applies.
        scope: AlwaysScope,
        /// For an "always allow": until when its rule applies, in Unix seconds.
        until: Option<u64>,
        reply: oneshot::Sender<Result<Decided, DecideFailure>>,
    },
    Rules {
        reply: oneshot::Sender<Vec<StoredRule>>,
    },
    AddRule {
        rule: Rule,
        expires: Option<u64>,
        reply: oneshot::Sender<Result<StoredRule, RuleRefused>>,
    },
    RemoveRule {
        id: RuleId,
        by: Arc<str>,
        reply: oneshot::Sender<bool>,
    },
    Mcp {
        project: String,
        body: String,
        session: Option<String>,
        sink: Sink,
    },
    McpHttp {
        ask: Box<McpAsk>,
        sink: mpsc::Sender<McpEvent>,
    },
    CancelMcp {
        ticket: McpTicket,
    },
    /// Changes kept beside the hub's own (console sign-ins, the ends of requests a dead node left); `reply`
    /// once they are written.
    Keep {
        changes: Vec<Change>,
        reply: Option<oneshot::Sender<()>>,
    },
    PrincipalGone {
        name: Arc<str>,
    },
    Sleds {
        reply: oneshot::Sender<Vec<SledSummary>>,
    },
    Permissions {
        reply: oneshot::Sender<Vec<PermissionSummary>>,
    },
    Subscribe {
        reply: oneshot::Sender<Option<Subscription>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// Drain for at most `within`; `done` fires once no connection is left.
    Drain {
        within: std::time::Duration,
        done: oneshot::Sender<()>,
    },
    /// What the cluster's database said ([`FromCluster`]).
    Cluster(FromCluster),
}

/// What a cluster node hears from the database it shares with the others, for the hub.
pub(crate) enum FromCluster {
    /// The answer to a renewal of the node's lease sent at `sent` (`None`: no answer).
    LeaseRenewal { sent: Instant, answer: Option<bool> },
    /// The claims table's answer to `conn`'s claim on `project`, and, with a grant, what nodes now gone held
    /// for the project's sled (held here first).
    ClaimAnswer { conn: ConnHandle, project: String, answer: ClaimAnswer, held: Vec<HeldRequest> },
    /// Another node asked this one to let `project` go, for a sled of `credential`.
    Release { project: String, credential: CredentialId },
    /// The next block of rule ids.
    RuleIds(std::ops::Range<u64>),
    /// Rules other nodes made or removed.
    RulesElsewhere { added: Vec<Rule>, removed: Vec<RuleId> },
    /// Something this node cannot go on with (a rule made elsewhere that does not read here): it stops.
    Unworkable(String),
    /// Another node, where the sleds of `project` with `credential` came back, asks for what this node holds
    /// for them; `given` once that is handed over in the store.
    GiveHeld { project: String, credential: CredentialId, to: u64, given: oneshot::Sender<()> },
}

impl FromCluster {
    /// Hands it to `hub` at `now` (a reply to give once the batch is committed goes to `acks`: a cluster's
    /// node has a store); the reason to stop the gateway, if it is one.
    pub(crate) fn apply<A: From<oneshot::Sender<()>>>(
        self,
        hub: &mut uplink_proto::gateway::Hub,
        now: Instant,
        acks: &mut Vec<A>,
    ) -> Option<String> {
        match self {
            FromCluster::LeaseRenewal { sent, answer } => hub.handle_lease_renewal(now, sent, answer),
            FromCluster::ClaimAnswer { conn, project, answer, held } => {
                hub.adopt_held(now, held);
                hub.handle_claim_answer(now, conn, &project, answer);
            }
            FromCluster::Release { project, credential } => _ = hub.release(now, &project, credential),
            FromCluster::RuleIds(ids) => hub.use_rule_ids(ids),
            FromCluster::RulesElsewhere { added, removed } => hub.handle_rules_elsewhere(now, added, removed),
            FromCluster::Unworkable(why) => return Some(why),
            FromCluster::GiveHeld { project, credential, to, given } => {
                hub.give_held(now, &project, credential, to);
                acks.push(A::from(given));
            }
        }
        None
    }
}

/// A cheap, cloneable way to talk to the hub task. Every call fails soft once the task is gone: a
/// connection is refused, a decision is not pending, an MCP request fails as connection lost.
#[derive(Clone)]
pub(crate) struct HubHandle {
    tx: mpsc::Sender<HubMsg>,
}

impl HubHandle {
    /// The handle of the hub task that reads `tx`'s other end.
    pub(super) fn new(tx: mpsc::Sender<HubMsg>) -> HubHandle {
        HubHandle { tx }
    }

    /// A new sled connection with `credential`; its frames go to `out`.
    pub(crate) async fn open(
        &self,
        credential: SledCredential,
        out: mpsc::Sender<ConnOut>,
    ) -> Result<ConnHandle, AcceptError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(HubMsg::Open { credential, out, reply }).await.is_err() {
            return Err(AcceptError::ShuttingDown);
        }
        answer.await.unwrap_or(Err(AcceptError::ShuttingDown))
    }

    /// The credentials were reloaded: live connections take their new terms, or are closed.
    pub(crate) async fn credentials_changed(&self, credentials: Arc<Credentials>) {
        let _ = self.tx.send(HubMsg::Credentials { credentials }).await;
    }

    /// A message from `conn`'s sled. `false` once the hub task is gone.
    pub(crate) async fn received(&self, conn: ConnHandle, message: Message) -> bool {
        self.tx.send(HubMsg::Received { conn, message }).await.is_ok()
    }

    /// `conn`'s sled sent a message over the size limit.
    pub(crate) async fn too_big(&self, conn: ConnHandle) {
        let _ = self.tx.send(HubMsg::TooBig { conn }).await;
    }

    /// `conn` ended.
    pub(crate) async fn ended(&self, conn: ConnHandle) {
        let _ = self.tx.send(HubMsg::Ended { conn }).await;
    }

    /// Whether the hub task has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// What the cluster's database said.
    pub(crate) async fn cluster_said(&self, said: FromCluster) {
        let _ = self.tx.send(HubMsg::Cluster(said)).await;
    }

    /// Gives node `to` what this hub holds for the sleds of `project` with `credential`
    /// ([`Hub::give_held`](uplink_proto::gateway::Hub::give_held)); true once that is handed over in the
    /// store.
    pub(crate) async fn give_held(&self, project: String, credential: CredentialId, to: u64) -> bool {
        let (given, done) = oneshot::channel();
        self.cluster_said(FromCluster::GiveHeld { project, credential, to, given }).await;
        done.await.is_ok()
    }

    pub(crate) async fn decide(
        &self,
        id: PublicPermId,
        verdict: Verdict,
        scope: AlwaysScope,
        until: Option<u64>,
    ) -> Result<Decided, DecideFailure> {
        let (reply, answer) = oneshot::channel();
        let gone = || DecideFailure::Hub(HubDecideError::NotPending);
        if self.tx.send(HubMsg::Decide { id, verdict, scope, until, reply }).await.is_err() {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// The rules in force, the configuration's included.
    pub(crate) async fn rules(&self) -> Vec<StoredRule> {
        let (reply, answer) = oneshot::channel();
        let _ = self.tx.send(HubMsg::Rules { reply }).await;
        answer.await.unwrap_or_default()
    }

    /// Adds `rule` (until `expires`, Unix seconds); `None` once the task is gone, `Some(Err(_))` when the hub
    /// refuses it.
    pub(crate) async fn add_rule(&self, rule: Rule, expires: Option<u64>) -> Option<Result<StoredRule, RuleRefused>> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(HubMsg::AddRule { rule, expires, reply }).await.ok()?;
        answer.await.ok()
    }

    /// Removes the rule `id` on behalf of `by`; whether there was one.
    pub(crate) async fn remove_rule(&self, id: RuleId, by: Arc<str>) -> bool {
        let (reply, answer) = oneshot::channel();
        let _ = self.tx.send(HubMsg::RemoveRule { id, by, reply }).await;
        answer.await.unwrap_or(false)
    }

    /// Relays one JSON-RPC message to `project`'s sled (the session-less relay) and waits for its answer.
    pub(crate) async fn mcp(&self, project: String, body: String, session: Option<String>) -> McpOutcome {
        let (reply, answer) = oneshot::channel();
        let sink = Sink::Answer(reply);
        if self.tx.send(HubMsg::Mcp { project, body, session, sink }).await.is_err() {
            return McpOutcome::Failed(McpFailure::ConnectionLost);
        }
        answer.await.unwrap_or(McpOutcome::Failed(McpFailure::ConnectionLost))
    }

    /// An HTTP request on the MCP endpoint: the exchange the hub opened for it (or its refusal, or the end of
    /// its session, as its end).
    pub(crate) async fn mcp_http(&self, ask: McpAsk) -> McpExchange {
        let (sink, rx) = mpsc::channel(MCP_EVENTS);
        let _ = self.tx.send(HubMsg::McpHttp { ask: Box::new(ask), sink }).await;
        McpExchange::new(rx, self)
    }

    /// Keeps changes made beside the hub (console sign-ins kept or forgotten, the ends of requests a dead
    /// node left) in the store, in the order of the hub's own; returns once they are written (at once
    /// without a store).
    pub(crate) async fn keep(&self, changes: Vec<Change>) {
        let (reply, written) = oneshot::channel();
        if self.tx.send(HubMsg::Keep { changes, reply: Some(reply) }).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Drains the hub for at most `within` (`Hub::drain`): returns once no connection is left, or the time
    /// is up (then what is left is closed).
    pub(crate) async fn drain(&self, within: std::time::Duration) {
        let (done, drained) = oneshot::channel();
        if self.tx.send(HubMsg::Drain { within, done }).await.is_ok() {
            let _ = tokio::time::timeout(within + std::time::Duration::from_secs(1), drained).await;
        }
    }

    /// Forgets console sign-ins, without waiting for the write (from where nothing can wait).
    pub(crate) fn forget_sessions(&self, changes: Vec<Change>) {
        let _ = self.tx.try_send(HubMsg::Keep { changes, reply: None });
    }

    /// The admin principal `name` is gone: its MCP sessions end.
    pub(crate) async fn principal_gone(&self, name: Arc<str>) {
        let _ = self.tx.send(HubMsg::PrincipalGone { name }).await;
    }

    /// Cancels the exchange `ticket`, whose caller went away; from a `Drop`, so it never waits.
    fn cancel_mcp(&self, ticket: McpTicket) {
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.tx.try_send(HubMsg::CancelMcp { ticket }) {
            let tx = self.tx.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
    }

    pub(crate) async fn sleds(&self) -> Vec<SledSummary> {
        let (reply, answer) = oneshot::channel();
        let _ = self.tx.send(HubMsg::Sleds { reply }).await;
        answer.await.unwrap_or_default()
    }

    pub(crate) async fn permissions(&self) -> Vec<PermissionSummary> {
        let (reply, answer) = oneshot::channel();
        let _ = self.tx.send(HubMsg::Permissions { reply }).await;
        answer.await.unwrap_or_default()
    }

    /// Closes every sled connection (1001) and refuses new ones; returns once the closes are queued.
    pub(crate) async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.tx.send(HubMsg::Shutdown { done }).await.is_ok() {
            let _ = finished.await;
        }
    }

    /// Every event from now on.
    pub(crate) async fn subscribe(&self) -> Option<Subscription> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(HubMsg::Subscribe { reply }).await.ok()?;
        answer.await.ok().flatten()
    }
}

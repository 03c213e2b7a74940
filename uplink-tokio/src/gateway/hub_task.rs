//! The one task that owns the gateway's [`Hub`] and carries out what it asks.
//!
//! Sled connections and HTTP handlers talk to it through one bounded channel ([`HubHandle`]); it answers
//! them through oneshot channels and each connection's own queue. Its loop: drain the hub's outputs and
//! route each; then wait for the next message or the hub's timer; feed it in. No lock is shared with
//! anyone. Listings leave as the hub's own values, and the HTTP side writes them out; events are written
//! here, once each and only while someone listens, so that every client shares one text (`events.rs`).
//!
//! With a store, nothing leaves before it is written: a batch of inputs (up to [`HUB_BATCH`]) is fed in,
//! its outputs are held while the records and rule changes they make are committed in one transaction (by
//! this task itself when a commit only reaches the operating system; on the store's own thread when each
//! commit waits for the disk), and only then are its frames sent, its replies given and its events published.
//! A decision a person saw acknowledged, or a sled received, is on disk. When a commit fails, nothing held
//! is sent (every sled connection is closed, so every pending request ends denied at its sled) and the
//! gateway stops with the store's error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, info, warn};
use uplink_proto::Instant;
use uplink_proto::gateway::mcp_endpoint::{self, Body};
use uplink_proto::gateway::{
    AcceptError, CloseReason, ConnHandle, EndpointRequest, Hub, HubDecideError, HubEvent, HubOutput, McpAnswer,
    McpFailure, McpHttp, McpTicket, Method, PermissionSummary, PublicPermId, Refusal, RuleRefused, SledSummary,
    Verdict,
};
use uplink_proto::rules::{Rule, RuleId};

use super::audit::Recorder;
use super::credentials::{Credentials, SledCredential};
use super::events::{Fanout, Subscription};
use super::rules::{Wall, stored};
use crate::socket_loop::{Clock, received};
use crate::store::{Change, Store, StoreError, StoredRule};
use crate::timer::Deadline;

/// Messages queued for one sled connection before it counts as stuck (its socket loop has a queue of its
/// own behind this one).
pub(crate) const CONN_QUEUE: usize = 1024;

/// Messages waiting for the hub task before senders wait their turn.
const HUB_QUEUE: usize = 4096;

/// Messages the hub task takes in a row before it carries out the hub's outputs.
const HUB_BATCH: usize = 64;

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

/// How an MCP exchange through the hub ended.
pub(crate) enum McpOutcome {
    /// The sled answered.
    Answered(McpAnswer),
    /// It ended without an answer.
    Failed(McpFailure),
    /// It was refused (the endpoint's policy, or no sled to relay to), with the status and error to answer.
    Refused(Refusal),
    /// The session it named ended (`DELETE`).
    SessionEnded,
}

/// What the caller of an MCP exchange hears, in order: its ticket (and a new session's id) unless refused,
/// the sled's messages within it, then its one end.
enum McpEvent {
    Started(McpTicket, Option<String>),
    Message(String),
    Opened,
    End(McpOutcome),
}

/// An HTTP request on the gateway's MCP endpoint, as the hub task takes it: what its
/// [`EndpointRequest`] is made of, owned, its body, and the id drawn for it if it opens a session.
pub(crate) struct McpAsk {
    pub(crate) method: Method,
    pub(crate) project: String,
    pub(crate) principal: Arc<str>,
    pub(crate) session: Option<String>,
    pub(crate) protocol_version: Option<String>,
    pub(crate) accepts_stream: bool,
    /// What the body is, read before it reached the hub task.
    pub(crate) kind: Body,
    pub(crate) body: String,
    pub(crate) drawn: Option<String>,
}

/// Where an exchange's caller hears of it: every event in order, or (one message, one answer) only its end,
/// which costs one allocation less.
enum Sink {
    Events(mpsc::Sender<McpEvent>),
    Answer(oneshot::Sender<McpOutcome>),
}

impl Sink {
    /// The exchange's end. It always fits: a message never takes an events channel's last place.
    fn end(self, outcome: McpOutcome) {
        match self {
            Sink::Events(events) => {
                let _ = events.try_send(McpEvent::End(outcome));
            }
            Sink::Answer(answer) => {
                let _ = answer.send(outcome);
            }
        }
    }
}

/// Room in each exchange's channel. A caller that lets it fill (it reads too slowly) has its exchange
/// cancelled: the last place is kept for the end, so the end always arrives.
const MCP_EVENTS: usize = 64;

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

enum HubMsg {
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
        /// For an "always allow": until when its rule applies, in Unix seconds.
        until: Option<u64>,
        reply: oneshot::Sender<Result<Option<RuleId>, DecideFailure>>,
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
}

/// A cheap, cloneable way to talk to the hub task. Every call fails soft once the task is gone: a
/// connection is refused, a decision is not pending, an MCP request fails as connection lost.
#[derive(Clone)]
pub(crate) struct HubHandle {
    tx: mpsc::Sender<HubMsg>,
}

/// What the hub task starts with, beside the hub.
pub(crate) struct HubTaskConfig {
    pub(crate) epoch: TokioInstant,
    pub(crate) wall: Wall,
    pub(crate) event_client_bytes: usize,
    pub(crate) event_clients: usize,
    /// Where records and rules are written; `None`: nowhere, and nothing waits.
    pub(crate) store: Option<Box<dyn Store>>,
    pub(crate) redact_inputs: bool,
    /// Set to the store's error when a commit fails.
    pub(crate) failed: watch::Sender<Option<String>>,
    /// Counted from the events carried out.
    pub(crate) metrics: Arc<super::metrics::GatewayMetrics>,
    /// Who is told of new pending requests.
    pub(crate) notify: super::notify::NotifyConfig,
}

impl HubHandle {
    /// Starts the hub task (and the store's thread, with a store: then also what tells when the store is
    /// closed, once the task has ended).
    pub(crate) fn spawn(
        hub: Hub,
        config: HubTaskConfig,
    ) -> std::io::Result<(HubHandle, tokio::task::JoinHandle<()>, Option<oneshot::Receiver<()>>)> {
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        let (store, closed) = match config.store.map(StoreLink::start).transpose()? {
            Some((link, closed)) => (Some(link), Some(closed)),
            None => (None, None),
        };
        let task = HubTask {
            hub,
            clock: Clock::new(config.epoch),
            wall: config.wall,
            rx,
            conns: HashMap::new(),
            mcp: HashMap::new(),
            events: Fanout::new(config.event_client_bytes, config.event_clients),
            timer: Deadline::new(),
            done: Vec::new(),
            recorder: store.as_ref().map(|_| Recorder::new(config.redact_inputs, config.wall)),
            store,
            held: Vec::new(),
            changes: Vec::new(),
            acks: Vec::new(),
            failed: config.failed,
            notifier: super::notify::Notifier::start(config.notify, Clock::new(config.epoch), config.metrics.clone()),
            metrics: config.metrics,
        };
        Ok((HubHandle { tx }, tokio::spawn(task.run()), closed))
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

    pub(crate) async fn decide(
        &self,
        id: PublicPermId,
        verdict: Verdict,
        until: Option<u64>,
    ) -> Result<Option<RuleId>, DecideFailure> {
        let (reply, answer) = oneshot::channel();
        let gone = || DecideFailure::Hub(HubDecideError::NotPending);
        if self.tx.send(HubMsg::Decide { id, verdict, until, reply }).await.is_err() {
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

/// A reply held until the batch that made it is committed.
enum Ack {
    Decide(oneshot::Sender<Result<Option<RuleId>, DecideFailure>>, Result<Option<RuleId>, HubDecideError>),
    AddRule(oneshot::Sender<Result<StoredRule, RuleRefused>>, Result<StoredRule, RuleRefused>),
    RemoveRule(oneshot::Sender<bool>, bool),
}

impl Ack {
    /// Gives the reply; after a failed commit, a decision's is the store's failure.
    fn send(self, store_failed: bool) {
        match self {
            Ack::Decide(reply, _) if store_failed => {
                let _ = reply.send(Err(DecideFailure::Store));
            }
            Ack::Decide(reply, result) => {
                let _ = reply.send(result.map_err(DecideFailure::Hub));
            }
            Ack::AddRule(reply, result) => {
                let _ = reply.send(result);
            }
            Ack::RemoveRule(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }
}

type Commit = (Vec<Change>, oneshot::Sender<Result<(), StoreError>>);

/// Where batches are committed, one at a time, in order: in place on the hub task when a commit only hands
/// its pages to the operating system (`Store::waits_for_disk` false: microseconds, fewer than the two
/// thread wake-ups a hand-off costs; the hub waits for each commit either way), or on the store's own
/// thread when a commit waits for the disk, away from the runtime's workers.
enum StoreLink {
    /// Committed by the hub task. The store is dropped before `closed` tells so (fields drop in order).
    InPlace { store: Box<dyn Store>, _closed: Closed },
    /// Committed on the store's thread.
    Thread(mpsc::Sender<Commit>),
}

/// Commits `changes`; a store that panics has failed like one that returns an error, so that the gateway
/// stops with the reason rather than lose its hub task or the store's thread.
fn commit_or_panic(store: &mut Box<dyn Store>, changes: &[Change]) -> Result<(), StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.commit(changes)))
        .unwrap_or_else(|_| Err(StoreError::Database("it panicked in a commit".to_owned())))
}

/// Tells, when dropped, that the store is closed.
struct Closed(Option<oneshot::Sender<()>>);

impl Drop for Closed {
    fn drop(&mut self) {
        if let Some(closed) = self.0.take() {
            let _ = closed.send(());
        }
    }
}

impl StoreLink {
    /// The link, and what tells when the store is closed (once the hub task is done with it).
    fn start(mut store: Box<dyn Store>) -> std::io::Result<(StoreLink, oneshot::Receiver<()>)> {
        let (closed_tx, closed) = oneshot::channel();
        if !store.waits_for_disk() {
            return Ok((StoreLink::InPlace { store, _closed: Closed(Some(closed_tx)) }, closed));
        }
        let (tx, mut rx) = mpsc::channel::<Commit>(1);
        std::thread::Builder::new().name("uplink-store".into()).spawn(move || {
            while let Some((changes, reply)) = rx.blocking_recv() {
                let _ = reply.send(commit_or_panic(&mut store, &changes));
            }
            drop(store);
            let _ = closed_tx.send(());
        })?;
        Ok((StoreLink::Thread(tx), closed))
    }

    async fn commit(&mut self, changes: Vec<Change>) -> Result<(), String> {
        let tx = match self {
            StoreLink::InPlace { store, .. } => return commit_or_panic(store, &changes).map_err(|e| e.to_string()),
            StoreLink::Thread(tx) => tx,
        };
        let (reply, answer) = oneshot::channel();
        tx.send((changes, reply)).await.map_err(|_| "the store's thread ended".to_owned())?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the store's thread ended".to_owned()),
        }
    }
}

struct HubTask {
    hub: Hub,
    clock: Clock,
    wall: Wall,
    rx: mpsc::Receiver<HubMsg>,
    /// Where each connection's frames go.
    conns: HashMap<ConnHandle, mpsc::Sender<ConnOut>>,
    /// Who waits for which MCP exchange's events.
    mcp: HashMap<McpTicket, Sink>,
    events: Fanout,
    timer: Deadline,
    done: Vec<oneshot::Sender<()>>,
    store: Option<StoreLink>,
    recorder: Option<Recorder>,
    /// With a store: outputs waiting for their batch's commit, and what that commit writes.
    held: Vec<HubOutput>,
    changes: Vec<Change>,
    acks: Vec<Ack>,
    failed: watch::Sender<Option<String>>,
    metrics: Arc<super::metrics::GatewayMetrics>,
    notifier: super::notify::Notifier,
}

impl HubTask {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    async fn run(mut self) {
        let mut batch = Vec::with_capacity(HUB_BATCH);
        loop {
            self.drain();
            self.flush().await;
            let at = self.hub.poll_timeout().map(|at| self.clock.at(at));
            self.timer.set(at);
            tokio::select! {
                biased;
                n = self.rx.recv_many(&mut batch, HUB_BATCH) => {
                    if n == 0 {
                        return; // every handle is gone
                    }
                    for msg in batch.drain(..) {
                        self.on_msg(msg);
                        // Outputs leave in the order they were made, before the next input (with a
                        // store, they are held until the batch is committed, in that order).
                        self.drain();
                    }
                }
                () = std::future::poll_fn(|cx| self.timer.poll(cx)) => {
                    let now = self.now();
                    self.hub.handle_timeout(now);
                }
            }
        }
    }

    fn on_msg(&mut self, msg: HubMsg) {
        let now = self.now();
        match msg {
            HubMsg::Open { credential, out, reply } => {
                // The wall clock is read here, where the core's clock is, to place an expiry on it.
                let accepted = self.hub.accept(now, credential.for_core(now, SystemTime::now()));
                if let Ok(conn) = accepted {
                    self.conns.insert(conn, out);
                    if let Some(recorder) = &mut self.recorder {
                        recorder.opened(conn, &credential.label);
                    }
                }
                let _ = reply.send(accepted);
            }
            HubMsg::Credentials { credentials } => {
                self.hub.update_credentials(now, &credentials.for_core(now, SystemTime::now()));
            }
            HubMsg::Received { conn, message } => {
                if let Some(input) = received(&message) {
                    self.hub.handle_received(now, conn, input);
                }
            }
            HubMsg::TooBig { conn } => self.hub.handle_too_big(now, conn),
            HubMsg::Ended { conn } => {
                self.forget(conn);
                self.hub.handle_disconnected(now, conn);
            }
            HubMsg::Decide { id, mut verdict, until, reply } => {
                if let (Some(at), Some(always)) = (until, verdict.always.as_mut()) {
                    *always = always.until(self.wall.instant(at));
                }
                let result = self.hub.decide(now, id, verdict);
                self.ack(Ack::Decide(reply, result));
            }
            HubMsg::Rules { reply } => {
                let _ = reply.send(self.hub.rules().rules().iter().map(|r| stored(r, &self.wall)).collect());
            }
            HubMsg::AddRule { mut rule, expires, reply } => {
                if let Some(at) = expires {
                    rule = rule.expiring(self.wall.instant(at));
                }
                let kept = rule.clone();
                let added = self.hub.add_rule(now, rule).map(|id| stored(&kept.with_id(id), &self.wall));
                self.ack(Ack::AddRule(reply, added));
            }
            HubMsg::RemoveRule { id, by, reply } => {
                let removed = self.hub.remove_rule(now, id, by);
                self.ack(Ack::RemoveRule(reply, removed));
            }
            HubMsg::Mcp { project, body, session, sink } => {
                let sent = self.hub.send_mcp(now, &project, &body, session.as_deref(), false);
                self.opened(sent.map(|ticket| (ticket, None)).map_err(mcp_endpoint::refused), sink);
            }
            HubMsg::McpHttp { ask, sink } => {
                let request = EndpointRequest::new(ask.method, &ask.project, &ask.principal)
                    .session(ask.session.as_deref())
                    .protocol_version(ask.protocol_version.as_deref())
                    .accepts_stream(ask.accepts_stream)
                    .read_body(ask.kind);
                match self.hub.handle_mcp_http(now, &request, &ask.body, ask.drawn.as_deref()) {
                    Ok(McpHttp::Relayed { ticket, new_session }) => {
                        self.opened(Ok((ticket, new_session)), Sink::Events(sink));
                    }
                    Ok(McpHttp::Ended) => Sink::Events(sink).end(McpOutcome::SessionEnded),
                    Err(refusal) => Sink::Events(sink).end(McpOutcome::Refused(refusal)),
                }
            }
            HubMsg::CancelMcp { ticket } => {
                self.hub.cancel_mcp(now, ticket, "the HTTP client went away");
            }
            HubMsg::PrincipalGone { name } => self.hub.handle_principal_gone(now, &name),
            HubMsg::Sleds { reply } => {
                let _ = reply.send(self.hub.sleds(now));
            }
            HubMsg::Permissions { reply } => {
                let _ = reply.send(self.hub.permissions(now));
            }
            HubMsg::Subscribe { reply } => {
                let _ = reply.send(self.events.subscribe());
            }
            HubMsg::Shutdown { done } => {
                self.hub.shutdown(now);
                self.done.push(done);
            }
        }
    }

    /// A reply: given now without a store; with one, once the batch is committed.
    /// An exchange opened (or refused): its caller hears which.
    fn opened(&mut self, opened: Result<(McpTicket, Option<String>), Refusal>, sink: Sink) {
        let gone = match &sink {
            Sink::Events(events) => events.is_closed(),
            Sink::Answer(answer) => answer.is_closed(),
        };
        match opened {
            // Its caller went away before it opened: it ends at once.
            Ok((ticket, _)) if gone => {
                let now = self.now();
                self.hub.cancel_mcp(now, ticket, "the HTTP client went away");
            }
            Ok((ticket, new_session)) => {
                // The channel is new and empty: the ticket always fits.
                if let Sink::Events(events) = &sink {
                    let _ = events.try_send(McpEvent::Started(ticket, new_session));
                }
                self.mcp.insert(ticket, sink);
            }
            Err(refused) => sink.end(McpOutcome::Refused(refused)),
        }
    }

    fn ack(&mut self, ack: Ack) {
        if self.store.is_some() { self.acks.push(ack) } else { ack.send(false) }
    }

    /// Carries out every output of the hub, in order; with a store, holds them and notes what they write.
    fn drain(&mut self) {
        while let Some(output) = self.hub.poll_output() {
            match &mut self.recorder {
                Some(recorder) => {
                    if let HubOutput::Event(event) = &output {
                        recorder.record(event, &mut self.changes);
                    }
                    self.held.push(output);
                }
                None => self.carry_out(output),
            }
        }
        if self.store.is_none() {
            for done in self.done.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// With a store: commits what the held outputs write, then carries them out and gives the replies;
    /// until nothing is held (carrying out can make more, when a stuck connection is dropped).
    async fn flush(&mut self) {
        if self.store.is_none() {
            return;
        }
        while !self.held.is_empty() || !self.acks.is_empty() || !self.done.is_empty() {
            let failed = self.failed.borrow().is_some();
            if !self.changes.is_empty() && !failed {
                let changes = std::mem::take(&mut self.changes);
                if let Some(store) = &mut self.store
                    && let Err(e) = store.commit(changes).await
                {
                    self.fail(e);
                }
            }
            self.changes.clear();
            let failed = self.failed.borrow().is_some();
            for output in std::mem::take(&mut self.held) {
                match output {
                    // After a failed commit nothing it held leaves, but the closes.
                    HubOutput::Send { .. } | HubOutput::Ping { .. } | HubOutput::Event(_) if failed => {}
                    other => self.carry_out(other),
                }
            }
            for ack in std::mem::take(&mut self.acks) {
                ack.send(failed);
            }
            for done in self.done.drain(..) {
                let _ = done.send(());
            }
            self.drain();
        }
    }

    /// A commit failed: nothing more is sent or written; every sled connection is closed (each pending
    /// request ends denied at its sled), and the server stops with the error.
    fn fail(&mut self, why: String) {
        error!(error = %why, "the store failed; nothing held is sent, and the gateway stops");
        self.failed.send_replace(Some(why));
        let now = self.now();
        self.hub.shutdown(now);
    }

    /// Carries out one output of the hub.
    fn carry_out(&mut self, output: HubOutput) {
        {
            match output {
                HubOutput::Send { conn, text } => self.send_to(conn, ConnOut::Frame(Message::text(text))),
                HubOutput::Ping { conn } => self.send_to(conn, ConnOut::Frame(Message::Ping(Default::default()))),
                HubOutput::Close { conn, reason } => {
                    debug!(conn = conn.0, %reason, "closing a sled connection");
                    if let Some(out) = self.forget(conn) {
                        // A connection too far behind to take its close is dropped instead (its queue ends).
                        let _ = out.try_send(ConnOut::Close(reason));
                    }
                }
                HubOutput::Event(event) => self.on_event(event),
            }
        }
    }

    /// `conn` is gone: its queue, and what the recorder kept of it. Returns its queue.
    fn forget(&mut self, conn: ConnHandle) -> Option<mpsc::Sender<ConnOut>> {
        if let Some(recorder) = &mut self.recorder {
            recorder.closed(conn);
        }
        self.conns.remove(&conn)
    }

    fn send_to(&mut self, conn: ConnHandle, out: ConnOut) {
        let Some(tx) = self.conns.get(&conn) else { return };
        if tx.try_send(out).is_err() {
            // Its loop cannot keep up (the sled stopped reading) or has ended: either way it is of no use.
            // Dropping its queue ends the loop, which drops the socket.
            warn!(conn = conn.0, "sled connection cannot take more frames; dropping it");
            self.forget(conn);
            let now = self.now();
            self.hub.handle_disconnected(now, conn);
        }
    }

    fn on_event(&mut self, event: HubEvent) {
        self.metrics.on_event(&event);
        if !self.notifier.is_empty() {
            self.notifier.on_event(&event);
        }
        // MCP outcomes go to their caller only; the answer moves there, uncopied.
        let event = match event {
            HubEvent::McpAnswered { ticket, answer } => {
                if let Some(sink) = self.mcp.remove(&ticket) {
                    sink.end(McpOutcome::Answered(answer));
                }
                return;
            }
            HubEvent::McpOpened { ticket } => {
                if let Some(Sink::Events(sink)) = self.mcp.get(&ticket)
                    && sink.capacity() > 1
                {
                    let _ = sink.try_send(McpEvent::Opened);
                }
                return;
            }
            HubEvent::McpFailed { ticket, reason } => {
                if let Some(sink) = self.mcp.remove(&ticket) {
                    sink.end(McpOutcome::Failed(reason));
                }
                return;
            }
            HubEvent::McpMessage { ticket, payload } => {
                // Only exchanges asked as streams have messages.
                let Some(Sink::Events(sink)) = self.mcp.get(&ticket) else { return };
                if sink.is_closed() || sink.capacity() <= 1 {
                    // Gone, or reading too slowly to keep up: the exchange is cancelled (its end follows).
                    let now = self.now();
                    self.hub.cancel_mcp(now, ticket, "the MCP client reads too slowly");
                } else {
                    let _ = sink.try_send(McpEvent::Message(payload));
                }
                return;
            }
            other => other,
        };
        match &event {
            // Peer strings are logged with Debug, which escapes control characters.
            HubEvent::SledConnected { conn, project, replaced, .. } => {
                info!(project = ?project, conn = conn.0, replaced = ?replaced.map(|r| r.0), "sled connected");
            }
            HubEvent::SledRefused { conn, project, reason } => {
                info!(project = ?project, conn = conn.0, %reason, "sled refused");
            }
            HubEvent::SledDisconnected { conn, project } => {
                info!(project = ?project, conn = conn.0, "sled disconnected");
            }
            HubEvent::FrameIgnored { conn, why } => {
                debug!(conn = conn.0, ?why, "ignored a frame from a sled");
                return;
            }
            // A permission's life, at info (its input only at debug).
            HubEvent::PermissionRequested { id, project, tool_name, tool_input, .. } => {
                info!(%id, project = ?project, tool = ?tool_name, "permission requested; waiting for a person");
                debug!(%id, input = %tool_input, "the request's input");
            }
            HubEvent::PermissionDecided { id, project, verdict, rule, waited } => {
                let by = verdict.by.as_deref().unwrap_or("the application");
                info!(%id, project = ?project, decision = %verdict.decision, by = ?by, rule = ?rule.map(|r| r.0),
                    waited_ms = waited.as_millis(), "permission decided by a person");
            }
            HubEvent::PermissionWithdrawn { id, project, reason, waited } => {
                info!(%id, project = ?project, reason = reason.as_str(), waited_ms = waited.as_millis(),
                    "permission ended without a decision");
            }
            HubEvent::PermissionAutoDecided { project, req_id, tool_name, decision, rule, .. } => match rule {
                Some(rule) => info!(project = ?project, req_id = ?req_id, tool = ?tool_name, %decision,
                    rule = rule.0, "permission decided by a rule"),
                None => info!(project = ?project, req_id = ?req_id, tool = ?tool_name, %decision,
                    "permission denied: the gateway's budget for waiting requests is full"),
            },
            HubEvent::RuleAdded { rule } => {
                info!(rule = rule.id.0, effect = %rule.effect, pattern = %rule.pattern, author = ?rule.author, "rule added");
            }
            HubEvent::RuleRemoved { id, by } => info!(rule = id.0, by = ?by, "rule removed"),
            _ => {}
        }
        if !self.events.is_empty() {
            self.events.publish(&event, &self.wall);
        }
    }
}

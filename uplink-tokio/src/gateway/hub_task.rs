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
//!
//! With a store it also hands out the audit log's head (a [`Checkpoint`]) every so often when it has moved,
//! and once more as it stops: to its log, to a file if asked (one JSON line each, appended) and to the
//! webhooks if asked, places a rewrite of the database does not reach (`uplink audit verify --checkpoints`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, warn};
use uplink_proto::Decision;
use uplink_proto::Instant;
use uplink_proto::gateway::mcp_endpoint;
use uplink_proto::gateway::{
    Always, ConnHandle, EndpointRequest, Hub, HubEvent, HubOutput, McpHttp, McpTicket, Refusal,
};

use super::checkpoints::Checkpoints;
use super::cluster::{Errand, Errands, FENCED};
use super::commit::{Ack, StoreLink};
use super::fanout::Fanout;
use super::hub_handle::{ConnOut, HUB_QUEUE, HubHandle, HubMsg};
use super::mcp_exchange::{McpEvent, McpOutcome, Sink};
use super::recorder::Recorder;
use super::wall::{Wall, stored};
use crate::socket_loop::{Clock, received};
use crate::store::{Change, Store};
use crate::timer::Deadline;

/// Messages the hub task takes in a row before it carries out the hub's outputs.
const HUB_BATCH: usize = 64;

/// What the hub task starts with, beside the hub.
pub(crate) struct HubTaskConfig {
    pub(crate) epoch: TokioInstant,
    pub(crate) wall: Wall,
    pub(crate) event_client_bytes: usize,
    pub(crate) event_clients: usize,
    /// Where records and rules are written; `None`: nowhere, and nothing waits.
    pub(crate) store: Option<Box<dyn Store>>,
    /// Leave tool inputs out of the records, keeping their keyed hash under this secret of the store's.
    pub(crate) redact_inputs: Option<[u8; 32]>,
    /// How often, and where, the audit log's head is handed out.
    pub(crate) checkpoints: super::checkpoints::CheckpointConfig,
    /// Set to the store's error when a commit fails.
    pub(crate) failed: watch::Sender<Option<String>>,
    /// Counted from the events carried out.
    pub(crate) metrics: Arc<super::gateway_metrics::GatewayMetrics>,
    /// Who is told of new pending requests.
    pub(crate) notify: super::notify::NotifyConfig,
    /// The cluster this gateway is a node of, if any: its lease, claims and releases at the database.
    pub(crate) node: Option<super::cluster::Node>,
}

/// Starts the hub task (and the store's thread, with a store: then also what tells when the store is
/// closed, once the task has ended).
pub(crate) fn spawn(
    hub: Hub,
    config: HubTaskConfig,
) -> std::io::Result<(HubHandle, tokio::task::JoinHandle<()>, Option<oneshot::Receiver<()>>)> {
    let (tx, rx) = mpsc::channel(HUB_QUEUE);
    let errands =
        config.node.map(|n| Errands::start(n, HubHandle::new(tx.clone()), Clock::new(config.epoch), config.wall));
    let (store, closed) = match config.store.map(StoreLink::start).transpose()? {
        Some((link, closed)) => (Some(link), Some(closed)),
        None => (None, None),
    };
    // A restarted gateway's records of the requests it holds again name their tools.
    let recorder = store.as_ref().map(|_| {
        let mut recorder = Recorder::new(config.redact_inputs, config.wall);
        hub.held().for_each(|h| recorder.restored(h));
        recorder
    });
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
        recorder,
        checkpoints: Checkpoints::new(config.checkpoints),
        store,
        held: Vec::new(),
        changes: Vec::new(),
        acks: Vec::new(),
        failed: config.failed,
        notifier: super::notify::Notifier::start(config.notify, Clock::new(config.epoch), config.metrics.clone()),
        metrics: config.metrics,
        errands,
        drained: Vec::new(),
    };
    Ok((HubHandle::new(tx), tokio::spawn(task.run()), closed))
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
    checkpoints: Checkpoints,
    failed: watch::Sender<Option<String>>,
    metrics: Arc<super::gateway_metrics::GatewayMetrics>,
    notifier: super::notify::Notifier,
    /// A cluster node's errands at the database.
    errands: Option<Errands>,
    /// Told once a drain is done (no connection left).
    drained: Vec<oneshot::Sender<()>>,
}

impl HubTask {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    async fn run(mut self) {
        let mut batch = Vec::with_capacity(HUB_BATCH);
        let mut checkpoint = tokio::time::interval(self.checkpoints.every());
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.drain();
            self.flush().await;
            if self.hub.is_drained() {
                self.drained.drain(..).for_each(|done| _ = done.send(()));
            }
            if self.store.is_some() && self.checkpoints.overdue(TokioInstant::now()) {
                self.checkpoint().await;
            }
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
                _ = checkpoint.tick(), if self.store.is_some() => self.checkpoint().await,
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
            HubMsg::Decide { id, mut verdict, scope, until, reply } => {
                // An "always allow"'s times, read here, on the one wall clock: when it was made, until when.
                if verdict.decision == Decision::AlwaysAllow {
                    let mut always = Always::new(scope, self.wall.unix_ms(now) / 1000);
                    if let Some(at) = until {
                        always = always.until(self.wall.instant(at));
                    }
                    verdict = verdict.always(always);
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
            HubMsg::Keep { changes, reply } => {
                if self.store.is_some() {
                    self.changes.extend(changes);
                    if let Some(reply) = reply {
                        self.acks.push(Ack::Kept(reply));
                    }
                } else if let Some(reply) = reply {
                    let _ = reply.send(());
                }
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
            HubMsg::Drain { within, done } => {
                self.hub.drain(now, now + within);
                self.drained.push(done);
            }
            HubMsg::Cluster(said) => said.apply(&mut self.hub, now, &mut self.acks).map_or((), |w| self.fail(w)),
        }
    }

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

    /// A reply: given now without a store; with one, once the batch is committed.
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
        while !self.held.is_empty() || !self.acks.is_empty() || !self.done.is_empty() || !self.changes.is_empty() {
            let failed = self.failed.borrow().is_some();
            if !self.changes.is_empty() && !failed {
                let changes = std::mem::take(&mut self.changes);
                if let Some(store) = &mut self.store {
                    match store.commit(changes).await {
                        Ok(head) => self.checkpoints.committed(head),
                        Err(e) => self.fail(e),
                    }
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
            if !self.done.is_empty() && !failed {
                // The last head, handed out as the gateway stops.
                self.checkpoint().await;
            }
            for done in self.done.drain(..) {
                let _ = done.send(());
            }
            self.drain();
        }
    }

    /// Hands out the audit log's head, if it has moved since the last time.
    async fn checkpoint(&mut self) {
        let Some(checkpoint) = self.checkpoints.due(self.wall.unix_ms(self.now())) else { return };
        self.notifier.checkpoint(&checkpoint);
        self.checkpoints.write(checkpoint).await;
    }

    /// A commit failed: nothing more is sent or written; every sled connection is closed (each pending
    /// request ends denied at its sled), and the server stops with the error.
    fn fail(&mut self, why: String) {
        error!(error = %why, "the store failed; nothing held is sent, and the gateway stops");
        self.failed.send_replace(Some(format!("the store failed: {why}")));
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
        if let Some(errand) = Errand::of(&event) {
            let renewal = matches!(errand, Errand::Renew);
            if self.errands.as_ref().is_some_and(|errands| !errands.send(errand)) {
                warn!("the cluster's errands are backed up; one goes unanswered");
                if renewal {
                    let now = self.now();
                    self.hub.handle_lease_renewal(now, now, None);
                }
            }
            return;
        }
        if matches!(event, HubEvent::Fenced) {
            error!("{FENCED}: every sled was closed with 1012, to reconnect to another node; the gateway stops");
            self.failed.send_replace(Some(FENCED.to_owned()));
        }
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
        if super::event_log::log(&event) {
            return;
        }
        if !self.events.is_empty() {
            self.events.publish(&event, &self.wall);
        }
    }
}

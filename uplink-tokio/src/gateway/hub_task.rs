//! The one task that owns the gateway's [`Hub`] and carries out what it asks.
//!
//! Sled connections and HTTP handlers talk to it through one bounded channel ([`HubHandle`]); it answers
//! them through oneshot channels and each connection's own queue. Its loop: drain the hub's outputs and
//! route each; then wait for the next message or the hub's timer; feed it in. No lock is shared with
//! anyone. Listings leave as the hub's own values, and the HTTP side writes them out; events are written
//! here, once each and only while someone listens, so that every client shares one text (`events.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};
use uplink_proto::Instant;
use uplink_proto::gateway::{
    AcceptError, CloseReason, ConnHandle, Hub, HubDecideError, HubEvent, HubOutput, McpFailure, McpRefused, McpTicket,
    PermissionSummary, PublicPermId, SledSummary, Verdict,
};

use super::credentials::{Credentials, SledCredential};
use super::events::{Fanout, Subscription};
use crate::socket_loop::{Clock, received};
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

/// How an MCP request through the hub ended.
pub(crate) enum McpOutcome {
    Answered(String),
    Failed(McpFailure),
    Refused(McpRefused),
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
        reply: oneshot::Sender<Result<(), HubDecideError>>,
    },
    Mcp {
        project: String,
        body: String,
        session: Option<String>,
        reply: oneshot::Sender<McpOutcome>,
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

impl HubHandle {
    /// Starts the hub task.
    pub(crate) fn spawn(
        hub: Hub,
        epoch: TokioInstant,
        event_client_bytes: usize,
        event_clients: usize,
    ) -> (HubHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        let task = HubTask {
            hub,
            clock: Clock::new(epoch),
            rx,
            conns: HashMap::new(),
            mcp: HashMap::new(),
            events: Fanout::new(event_client_bytes, event_clients),
            timer: Deadline::new(),
            done: Vec::new(),
        };
        (HubHandle { tx }, tokio::spawn(task.run()))
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

    pub(crate) async fn decide(&self, id: PublicPermId, verdict: Verdict) -> Result<(), HubDecideError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(HubMsg::Decide { id, verdict, reply }).await.is_err() {
            return Err(HubDecideError::NotPending);
        }
        answer.await.unwrap_or(Err(HubDecideError::NotPending))
    }

    pub(crate) async fn mcp(&self, project: String, body: String, session: Option<String>) -> McpOutcome {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(HubMsg::Mcp { project, body, session, reply }).await.is_err() {
            return McpOutcome::Failed(McpFailure::ConnectionLost);
        }
        answer.await.unwrap_or(McpOutcome::Failed(McpFailure::ConnectionLost))
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

struct HubTask {
    hub: Hub,
    clock: Clock,
    rx: mpsc::Receiver<HubMsg>,
    /// Where each connection's frames go.
    conns: HashMap<ConnHandle, mpsc::Sender<ConnOut>>,
    /// Who waits for which MCP answer.
    mcp: HashMap<McpTicket, oneshot::Sender<McpOutcome>>,
    events: Fanout,
    timer: Deadline,
    done: Vec<oneshot::Sender<()>>,
}

impl HubTask {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    async fn run(mut self) {
        let mut batch = Vec::with_capacity(HUB_BATCH);
        loop {
            self.drain();
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
                        // Outputs leave in the order they were made, before the next input.
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
                self.conns.remove(&conn);
                self.hub.handle_disconnected(now, conn);
            }
            HubMsg::Decide { id, verdict, reply } => {
                let _ = reply.send(self.hub.decide(now, id, verdict));
            }
            HubMsg::Mcp { project, body, session, reply } => {
                match self.hub.send_mcp(now, &project, &body, session.as_deref()) {
                    Ok(ticket) => {
                        self.mcp.insert(ticket, reply);
                    }
                    Err(refused) => {
                        let _ = reply.send(McpOutcome::Refused(refused));
                    }
                }
            }
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

    /// Carries out every output of the hub, in order.
    fn drain(&mut self) {
        while let Some(output) = self.hub.poll_output() {
            match output {
                HubOutput::Send { conn, text } => self.send_to(conn, ConnOut::Frame(Message::text(text))),
                HubOutput::Ping { conn } => self.send_to(conn, ConnOut::Frame(Message::Ping(Default::default()))),
                HubOutput::Close { conn, reason } => {
                    debug!(conn = conn.0, %reason, "closing a sled connection");
                    if let Some(out) = self.conns.remove(&conn) {
                        // A connection too far behind to take its close is dropped instead (its queue ends).
                        let _ = out.try_send(ConnOut::Close(reason));
                    }
                }
                HubOutput::Event(event) => self.on_event(event),
                _ => {}
            }
        }
        for done in self.done.drain(..) {
            let _ = done.send(());
        }
    }

    fn send_to(&mut self, conn: ConnHandle, out: ConnOut) {
        let Some(tx) = self.conns.get(&conn) else { return };
        if tx.try_send(out).is_err() {
            // Its loop cannot keep up (the sled stopped reading) or has ended: either way it is of no use.
            // Dropping its queue ends the loop, which drops the socket.
            warn!(conn = conn.0, "sled connection cannot take more frames; dropping it");
            self.conns.remove(&conn);
            let now = self.now();
            self.hub.handle_disconnected(now, conn);
        }
    }

    fn on_event(&mut self, event: HubEvent) {
        // MCP outcomes go to their caller only; the answer moves there, uncopied.
        let event = match event {
            HubEvent::McpAnswered { ticket, payload } => {
                if let Some(waiter) = self.mcp.remove(&ticket) {
                    let _ = waiter.send(McpOutcome::Answered(payload));
                }
                return;
            }
            HubEvent::McpFailed { ticket, reason } => {
                if let Some(waiter) = self.mcp.remove(&ticket) {
                    let _ = waiter.send(McpOutcome::Failed(reason));
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
            _ => {}
        }
        if !self.events.is_empty() {
            self.events.publish(&event);
        }
    }
}

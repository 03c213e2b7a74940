//! The one task that owns the protocol core and performs what it asks.
//!
//! The loop: drain the core's outputs and carry each out; then wait for whichever comes first of a command
//! from a handle, a frame from the gateway, a dial or local MCP call finishing, or the core's timer; feed it
//! in; repeat. The driver reads and writes the gateway's socket itself, so a frame crosses no task boundary
//! between the socket and the core; only dialling, close handshakes and MCP calls run in tasks of their own.
//! The driver keeps only plumbing: which task serves which connection or call, and who waits for which
//! decision.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, info, warn};
use uplink_proto::{
    Cause, ConnId, ConnectError, Event, Instant, LinkState, LossReason, McpCallId, McpReply, Output, PermKey, Refusal,
    Sled,
};

use super::answer::Answer;
use super::io::{Cmd, Io};
use super::mcp_client::{McpClient, Messages};
use super::metrics::SledMetrics;
use crate::socket_loop::{Clock, Turn, Turns, received};
use crate::timer::Deadline;
use crate::ws::{self, Link, Read, Target};

/// Most withdrawals kept for requests not yet seen.
const EARLY_WITHDRAWALS: usize = 1024;

/// Most of the core's own messages to the local server (cancellations, answers it cannot relay) on their way
/// at once; beyond, one is dropped (and logged): each is advice the server can live without.
const MAX_NOTICES: usize = 64;

/// What woke the driver.
enum Wake {
    Cmd(Option<Cmd>),
    Withdraw(u64),
    Io(Io),
    Timer,
    Read(ConnId, Read),
    WriteFailed(ConnId, String),
}

pub(crate) struct Driver {
    pub(crate) sled: Sled,
    pub(crate) clock: Clock,
    pub(crate) target: Option<Arc<Target>>,
    pub(crate) mcp: Arc<McpClient>,
    pub(crate) cmd_rx: mpsc::Receiver<Cmd>,
    pub(crate) io_tx: mpsc::Sender<Io>,
    pub(crate) io_rx: mpsc::Receiver<Io>,
    pub(crate) reports: LinkReports,
    /// Connections being dialled.
    dials: HashMap<ConnId, JoinHandle<()>>,
    /// Open connections (the core keeps at most one live; a second is only ever on its way out).
    links: Vec<(ConnId, Link)>,
    /// Close handshakes the sled started, finishing in tasks of their own.
    closing: Vec<JoinHandle<()>>,
    /// Who waits for each pending request: its handle's ticket, the answer's way back, and (for the log)
    /// its tool and when it was asked.
    waiters: HashMap<PermKey, (u64, oneshot::Sender<Answer>, String, tokio::time::Instant)>,
    /// The core's key of each pending request, by its handle's ticket.
    tickets: HashMap<u64, PermKey>,
    /// Tickets withdrawn before their request reached the driver (the two come on different channels).
    /// Bounded: past [`EARLY_WITHDRAWALS`] the oldest are forgotten, and such a request simply waits for its
    /// deadline (a withdrawal that raced with its decision also lands here, and is never claimed).
    early_withdrawals: BTreeSet<u64>,
    withdraw_rx: mpsc::UnboundedReceiver<u64>,
    calls: HashMap<McpCallId, AbortHandle>,
    /// The core's own messages to the local server on their way.
    notices: Vec<JoinHandle<()>>,
    done: Vec<oneshot::Sender<()>>,
    timer: Deadline,
    turns: Turns,
    metrics: Arc<SledMetrics>,
}

/// Where the driver publishes what the core says of the link, for the [`Uplink`](super::Uplink) handles.
pub(crate) struct LinkReports {
    /// The link's state.
    pub(crate) link: watch::Sender<LinkState>,
    /// The gateway's standing toward the sled ([`Event::Standing`]).
    pub(crate) standing: watch::Sender<Option<Refusal>>,
}

/// What the [`Uplink`](super::Uplink) handles send the driver: commands, and tickets withdrawn.
pub(crate) struct FromHandles {
    pub(crate) cmd_rx: mpsc::Receiver<Cmd>,
    pub(crate) withdraw_rx: mpsc::UnboundedReceiver<u64>,
}

impl Driver {
    pub(crate) fn new(
        sled: Sled,
        clock: Clock,
        target: Option<Arc<Target>>,
        mcp: Arc<McpClient>,
        handles: FromHandles,
        reports: LinkReports,
        metrics: Arc<SledMetrics>,
    ) -> Self {
        let FromHandles { cmd_rx, withdraw_rx } = handles;
        // Bounded: MCP replies and dial outcomes wait for the driver rather than pile up.
        let (io_tx, io_rx) = mpsc::channel(256);
        Driver {
            sled,
            clock,
            target,
            mcp,
            cmd_rx,
            io_tx,
            io_rx,
            reports,
            dials: HashMap::new(),
            links: Vec::new(),
            closing: Vec::new(),
            waiters: HashMap::new(),
            tickets: HashMap::new(),
            early_withdrawals: BTreeSet::new(),
            withdraw_rx,
            calls: HashMap::new(),
            notices: Vec::new(),
            done: Vec::new(),
            timer: Deadline::new(),
            turns: Turns::default(),
            metrics,
        }
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    pub(crate) async fn run(mut self) {
        loop {
            self.drain();
            if self.sled.link_state() == LinkState::Closed {
                break;
            }
            let next = self.sled.poll_timeout().map(|at| self.clock.at(at));
            self.timer.set(next);
            let wake = std::future::poll_fn(|cx| self.poll_wake(cx)).await;
            self.on_wake(wake);
        }
        self.finish().await;
    }

    /// Waits for the next input, taking turns (see [`Turns`]) between commands, I/O results, the timer and
    /// the sockets, and writing queued frames in write turns.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let mut turns = std::mem::take(&mut self.turns);
        let wake = turns.poll(cx, 5, |turn, cx| match turn {
            Turn::Input(0) => self.cmd_rx.poll_recv(cx).map(Wake::Cmd),
            // The driver holds a sender itself, so this channel never closes.
            Turn::Input(1) => match self.io_rx.poll_recv(cx) {
                Poll::Ready(Some(io)) => Poll::Ready(Wake::Io(io)),
                _ => Poll::Pending,
            },
            Turn::Input(2) => self.timer.poll(cx).map(|()| Wake::Timer),
            Turn::Input(3) => self.poll_reads(cx),
            // Every handle holds a sender: while one lives this does not close, and then commands end it.
            Turn::Input(_) => match self.withdraw_rx.poll_recv(cx) {
                Poll::Ready(Some(ticket)) => Poll::Ready(Wake::Withdraw(ticket)),
                _ => Poll::Pending,
            },
            Turn::Write => self.poll_writes(cx),
        });
        self.turns = turns;
        wake
    }

    fn poll_reads(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let secret = secret(&self.target);
        for (conn, link) in &mut self.links {
            if let Poll::Ready(read) = link.poll_read(cx, secret) {
                return Poll::Ready(Wake::Read(*conn, read));
            }
        }
        Poll::Pending
    }

    /// Writes every connection's queued frames. `Ready` only for a connection whose writing failed.
    fn poll_writes(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let secret = secret(&self.target);
        for (conn, link) in &mut self.links {
            if let Poll::Ready(Err(detail)) = link.poll_write(cx, secret) {
                return Poll::Ready(Wake::WriteFailed(*conn, detail));
            }
        }
        Poll::Pending
    }

    fn on_wake(&mut self, wake: Wake) {
        let now = self.now();
        match wake {
            Wake::Cmd(cmd) => self.on_cmd(now, cmd),
            Wake::Withdraw(ticket) => match self.tickets.get(&ticket) {
                Some(&key) => self.sled.withdraw(now, key),
                // Decided already (its ticket is gone), or not arrived yet: remembered until it does.
                None => {
                    self.early_withdrawals.insert(ticket);
                    if self.early_withdrawals.len() > EARLY_WITHDRAWALS {
                        self.early_withdrawals.pop_first();
                    }
                }
            },
            Wake::Io(io) => self.on_io(now, io),
            Wake::Timer => self.sled.handle_timeout(now),
            Wake::Read(conn, read) => self.on_read(now, conn, read),
            Wake::WriteFailed(conn, detail) => {
                info!(conn = conn.0, %detail, "gateway connection ended");
                self.take_link(conn);
                self.sled.handle_disconnected(now, conn);
            }
        }
    }

    fn on_cmd(&mut self, now: Instant, cmd: Option<Cmd>) {
        match cmd {
            Some(Cmd::Permission { ticket, tool_name, tool_input, reply }) => {
                // A permission's life, at info: asked here, decided in `drain` (its input only at debug).
                info!(tool = %tool_name.escape_debug(), "asking the gateway for permission");
                debug!(tool = %tool_name.escape_debug(), input = %tool_input, "the request's input");
                let (tool, at) = (tool_name.clone(), tokio::time::Instant::now());
                let key = self.sled.request_permission(now, tool_name, tool_input);
                self.waiters.insert(key, (ticket, reply, tool, at));
                self.tickets.insert(ticket, key);
                if self.early_withdrawals.remove(&ticket) {
                    self.sled.withdraw(now, key);
                }
            }
            Some(Cmd::Shutdown { done }) => {
                self.done.push(done);
                self.sled.shutdown(now);
            }
            // Every handle is gone: nobody can ask anything any more.
            None => self.sled.shutdown(now),
        }
    }

    fn on_io(&mut self, now: Instant, io: Io) {
        match io {
            Io::Dialed { conn, result } => {
                if self.dials.remove(&conn).is_none() {
                    // Abandoned while its handshake finished: the core will not adopt it either. Dropping it
                    // ends the TCP connection.
                    return;
                }
                match result {
                    Ok(ws) => {
                        self.links.push((conn, Link::new(ws)));
                        self.sled.handle_connected(now, conn);
                    }
                    Err((error, detail)) => {
                        warn!(conn = conn.0, %detail, "connecting to the gateway failed");
                        self.sled.handle_connect_failed(now, conn, error);
                    }
                }
            }
            Io::Mcp { call, reply } => {
                self.calls.remove(&call);
                self.sled.handle_mcp_reply(now, call, reply);
            }
            Io::McpMessage { call, message } => self.sled.handle_mcp_message(now, call, &message),
            Io::McpOpened { call } => self.sled.handle_mcp_opened(now, call),
        }
    }

    fn on_read(&mut self, now: Instant, conn: ConnId, read: Read) {
        match read {
            Read::Message(message) => {
                if let Some(input) = received(&message) {
                    self.sled.handle_received(now, conn, input);
                }
            }
            Read::ClosedByPeer(detail, code) => {
                info!(conn = conn.0, %detail, "gateway connection ended");
                // The library has queued the answer to the gateway's close; a task of its own sends it.
                if let Some(link) = self.take_link(conn) {
                    drop(link.retire(None));
                }
                // What the close code means (a gateway restarting) is the core's to decide.
                match code {
                    Some(code) => self.sled.handle_closed(now, conn, code),
                    None => self.sled.handle_disconnected(now, conn),
                }
            }
            Read::TooBig(detail) => {
                info!(conn = conn.0, %detail, "gateway connection ended");
                // The core decides what follows: a close with 1009, then the connection is dropped.
                self.sled.handle_too_big(now, conn);
            }
            Read::Ended(detail) => {
                info!(conn = conn.0, %detail, "gateway connection ended");
                self.take_link(conn);
                self.sled.handle_disconnected(now, conn);
            }
        }
    }

    fn take_link(&mut self, conn: ConnId) -> Option<Link> {
        let at = self.links.iter().position(|(c, _)| *c == conn)?;
        Some(self.links.swap_remove(at).1)
    }

    /// Carries out every output of the core, in order.
    fn drain(&mut self) {
        while let Some(output) = self.sled.poll_output() {
            match output {
                Output::Connect { conn } => match &self.target {
                    Some(target) => {
                        self.dials.insert(conn, dial(conn, target.clone(), self.io_tx.clone()));
                    }
                    None => {
                        let now = self.now();
                        self.sled.handle_connect_failed(now, conn, ConnectError::Other);
                    }
                },
                Output::Send { conn, text } => self.send(conn, Message::text(text)),
                Output::Ping { conn } => self.send(conn, Message::Ping(Bytes::new())),
                Output::Close { conn, code, reason } => {
                    if let Some(dial) = self.dials.remove(&conn) {
                        dial.abort();
                    }
                    if let Some(link) = self.take_link(conn) {
                        self.closing.push(link.retire(Some((code, reason))));
                    }
                }
                Output::Decided(d) => {
                    if let Some((ticket, waiter, tool, at)) = self.waiters.remove(&d.key) {
                        let took = at.elapsed();
                        self.metrics.decided(d.decision, d.cause, took);
                        let latency_ms = took.as_millis();
                        info!(id = %d.id, tool = %tool.escape_debug(), decision = %d.decision, cause = %d.cause, latency_ms, "permission decided");
                        self.tickets.remove(&ticket);
                        let _ = waiter.send(Answer { decision: d.decision, cause: d.cause, message: d.message });
                    }
                }
                Output::CallMcp(call) => {
                    self.metrics.mcp_call();
                    let id = call.call;
                    self.spawn_mcp(id, move |mcp, messages| async move { mcp.call(call, messages).await });
                }
                Output::ListenMcp(listen) => {
                    let id = listen.call;
                    self.spawn_mcp(id, move |mcp, messages| async move { mcp.listen(listen, messages).await });
                }
                Output::NotifyMcp { session, body } => {
                    self.notices.retain(|t| !t.is_finished());
                    if self.notices.len() < MAX_NOTICES {
                        self.notices.push(tokio::spawn(self.mcp.notify(session, body)));
                    } else {
                        warn!("too many messages to the local MCP server on their way; one dropped");
                    }
                }
                Output::EndMcpSession { session } => self.mcp.end_session(&session),
                Output::CancelMcp { call } => {
                    if let Some(task) = self.calls.remove(&call) {
                        task.abort();
                    }
                }
                Output::Event(Event::Link(state)) => {
                    match state {
                        LinkState::Disabled => warn!("no gateway configured: every permission request is denied"),
                        LinkState::Connecting { attempt, .. } => info!(attempt, "connecting to the gateway"),
                        LinkState::Connected { .. } => info!("connected to the gateway; identity sent"),
                        LinkState::BackingOff { delay, reason: LossReason::Refused(refusal) } => error!(
                            cause = refusal.describe(),
                            hint = refusal.hint(),
                            project = %self.sled.config().project.escape_debug(),
                            retry_in_ms = delay.as_millis(),
                            "the gateway refused this sled: its agents are denied at once, with this cause, \
                             until it accepts; retrying"
                        ),
                        LinkState::BackingOff { delay, reason } => info!(
                            delay_ms = delay.as_millis(),
                            reason = reason.describe(),
                            "no link to the gateway; reconnecting after a delay"
                        ),
                        LinkState::Closed => info!("the uplink is closed"),
                    }
                    self.metrics.link(&state);
                    self.reports.link.send_replace(state);
                }
                Output::Event(Event::FrameIgnored(why)) => debug!(?why, "ignored a frame from the gateway"),
                Output::Event(Event::Standing(refused)) => {
                    if refused.is_none() {
                        info!("the gateway accepted this sled");
                    }
                    self.reports.standing.send_replace(refused);
                }
            }
        }
        self.closing.retain(|t| !t.is_finished());
    }

    /// Runs one local call or stream in a task of its own: its messages, then its end, come back as I/O.
    fn spawn_mcp<F>(&mut self, id: McpCallId, run: impl FnOnce(Arc<McpClient>, Messages) -> F)
    where
        F: std::future::Future<Output = McpReply> + Send + 'static,
    {
        let io = self.io_tx.clone();
        let work = run(self.mcp.clone(), Messages { call: id, io: io.clone() });
        let task = tokio::spawn(async move {
            let reply = work.await;
            let _ = io.send(Io::Mcp { call: id, reply }).await;
        });
        self.calls.insert(id, task.abort_handle());
    }

    fn send(&mut self, conn: ConnId, message: Message) {
        let queued = self.links.iter_mut().find(|(c, _)| *c == conn).is_some_and(|(_, l)| l.queue(message));
        if !queued {
            // Gone, or so far behind that its queue is full: either way the connection is of no use.
            warn!(conn = conn.0, "gateway connection cannot take more frames; dropping it");
            self.take_link(conn);
            let now = self.now();
            self.sled.handle_disconnected(now, conn);
        }
    }

    /// After shutdown: let close handshakes finish (bounded), stop everything, tell who waits.
    async fn finish(mut self) {
        self.drain();
        // The core closed every connection it had; anything left is closed normally too.
        for (_, link) in std::mem::take(&mut self.links) {
            self.closing.push(link.retire(Some((1000, "shutdown"))));
        }
        let closing = std::mem::take(&mut self.closing);
        let aborts: Vec<AbortHandle> = closing.iter().map(JoinHandle::abort_handle).collect();
        let _ = tokio::time::timeout(ws::CLOSE_GRACE, async {
            for task in closing {
                let _ = task.await;
            }
        })
        .await;
        aborts.iter().for_each(AbortHandle::abort);
        for (_, dial) in self.dials.drain() {
            dial.abort();
        }
        for (_, call) in self.calls.drain() {
            call.abort();
        }
        // The local sessions end with the sled (bounded: the server may be gone).
        self.mcp.end_all(ws::CLOSE_GRACE).await;
        for notice in self.notices.drain(..) {
            notice.abort();
        }
        // Anything still waiting (cannot normally happen: the core decided everything) is denied.
        for (_, (_, waiter, _, _)) in self.waiters.drain() {
            let _ = waiter.send(Answer::denied(Cause::Shutdown));
        }
        for done in self.done.drain(..) {
            let _ = done.send(());
        }
    }
}

/// The token to keep out of error details (a free function: the links are borrowed meanwhile).
fn secret(target: &Option<Arc<Target>>) -> Option<&str> {
    target.as_ref().and_then(|t| t.bearer.as_deref())
}

/// Dials in a task of its own and reports the outcome; aborting the task abandons the attempt.
fn dial(conn: ConnId, target: Arc<Target>, io: mpsc::Sender<Io>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let result = target.dial().await.map(Box::new);
        let _ = io.send(Io::Dialed { conn, result }).await;
    })
}

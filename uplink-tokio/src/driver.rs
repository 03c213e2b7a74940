//! The one task that owns the protocol core and performs what it asks.
//!
//! The loop: drain the core's outputs and carry each out; then wait for whichever comes first of a command
//! from a handle, an I/O event (socket, local MCP call) or the core's timer; feed it in; repeat. The driver
//! keeps only plumbing: which task serves which connection or call, and who waits for which decision.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};
use uplink_proto::{
    ConnId, ConnectError, Decision, Event, Instant, LinkState, McpCallId, McpReply, Output, PermKey, RawValue,
    Received, Sled,
};

use crate::mcp::McpClient;
use crate::ws::{self, Target, WsOut};

/// From a handle to the driver.
pub(crate) enum Cmd {
    Permission { tool_name: String, tool_input: Box<RawValue>, reply: oneshot::Sender<Decision> },
    Shutdown { done: oneshot::Sender<()> },
}

/// From an I/O task to the driver.
pub(crate) enum Io {
    Connected { conn: ConnId, outbox: mpsc::Sender<WsOut>, writer: AbortHandle },
    ConnectFailed { conn: ConnId, error: ConnectError, detail: String },
    Frame { conn: ConnId, message: Message },
    Closed { conn: ConnId, detail: String },
    Mcp { call: McpCallId, reply: McpReply },
}

struct ConnIo {
    /// Set once connected.
    outbox: Option<mpsc::Sender<WsOut>>,
    /// Dials, then reads.
    task: JoinHandle<()>,
    /// Set once connected.
    writer: Option<AbortHandle>,
}

impl ConnIo {
    fn abort(&self) {
        self.task.abort();
        if let Some(w) = &self.writer {
            w.abort();
        }
    }
}

pub(crate) struct Driver {
    pub(crate) sled: Sled,
    pub(crate) epoch: TokioInstant,
    pub(crate) target: Option<Arc<Target>>,
    pub(crate) mcp: Arc<McpClient>,
    pub(crate) cmd_rx: mpsc::Receiver<Cmd>,
    pub(crate) io_tx: mpsc::Sender<Io>,
    pub(crate) io_rx: mpsc::Receiver<Io>,
    pub(crate) link: watch::Sender<LinkState>,
    pub(crate) id_prefix: String,
    conns: HashMap<ConnId, ConnIo>,
    closing: Vec<JoinHandle<()>>,
    waiters: HashMap<PermKey, oneshot::Sender<Decision>>,
    calls: HashMap<McpCallId, AbortHandle>,
    next_id: u64,
    done: Vec<oneshot::Sender<()>>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        sled: Sled,
        epoch: TokioInstant,
        target: Option<Arc<Target>>,
        mcp: Arc<McpClient>,
        cmd_rx: mpsc::Receiver<Cmd>,
        link: watch::Sender<LinkState>,
        id_prefix: String,
    ) -> Self {
        // Bounded: a gateway flooding frames slows its own reader down, not the driver's memory.
        let (io_tx, io_rx) = mpsc::channel(256);
        Driver {
            sled,
            epoch,
            target,
            mcp,
            cmd_rx,
            io_tx,
            io_rx,
            link,
            id_prefix,
            conns: HashMap::new(),
            closing: Vec::new(),
            waiters: HashMap::new(),
            calls: HashMap::new(),
            next_id: 0,
            done: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn deadline(&self, at: Instant) -> TokioInstant {
        self.epoch + std::time::Duration::from_micros(at.as_micros())
    }

    pub(crate) async fn run(mut self) {
        loop {
            self.drain();
            if self.sled.link_state() == LinkState::Closed {
                break;
            }
            let timer = self.sled.poll_timeout().map(|at| self.deadline(at));
            tokio::select! {
                io = self.io_rx.recv() => {
                    // The driver holds a sender itself, so this channel never closes.
                    if let Some(io) = io {
                        self.on_io(io);
                    }
                }
                cmd = self.cmd_rx.recv() => self.on_cmd(cmd),
                () = sleep_until(timer), if timer.is_some() => {
                    let now = self.now();
                    self.sled.handle_timeout(now);
                }
            }
        }
        self.finish().await;
    }

    fn on_cmd(&mut self, cmd: Option<Cmd>) {
        let now = self.now();
        match cmd {
            Some(Cmd::Permission { tool_name, tool_input, reply }) => {
                self.next_id += 1;
                let id = format!("{}-{}", self.id_prefix, self.next_id);
                let key = self.sled.request_permission(now, id, tool_name, tool_input);
                self.waiters.insert(key, reply);
            }
            Some(Cmd::Shutdown { done }) => {
                self.done.push(done);
                self.sled.shutdown(now);
            }
            // Every handle is gone: nobody can ask anything any more.
            None => self.sled.shutdown(now),
        }
    }

    fn on_io(&mut self, io: Io) {
        let now = self.now();
        match io {
            Io::Connected { conn, outbox, writer } => {
                match self.conns.get_mut(&conn) {
                    Some(c) => {
                        c.outbox = Some(outbox);
                        c.writer = Some(writer);
                    }
                    // Abandoned while its handshake finished: the core will not adopt it either.
                    None => writer.abort(),
                }
                self.sled.handle_connected(now, conn);
            }
            Io::ConnectFailed { conn, error, detail } => {
                warn!(conn = conn.0, %detail, "connecting to the gateway failed");
                self.conns.remove(&conn);
                self.sled.handle_connect_failed(now, conn, error);
            }
            Io::Frame { conn, message } => match message {
                Message::Text(text) => self.sled.handle_received(now, conn, Received::Text(text.as_str())),
                Message::Binary(data) => self.sled.handle_received(now, conn, Received::Binary(&data)),
                Message::Ping(_) => self.sled.handle_received(now, conn, Received::Ping),
                Message::Pong(_) => self.sled.handle_received(now, conn, Received::Pong),
                Message::Close(_) | Message::Frame(_) => {}
            },
            Io::Closed { conn, detail } => {
                if let Some(c) = self.conns.remove(&conn) {
                    info!(conn = conn.0, %detail, "gateway connection ended");
                    // The reader may still be answering the gateway's close: give it a moment.
                    self.retire(c, false);
                }
                self.sled.handle_disconnected(now, conn);
            }
            Io::Mcp { call, reply } => {
                self.calls.remove(&call);
                self.sled.handle_mcp_reply(now, call, reply);
            }
        }
    }

    /// Carries out every output of the core, in order.
    fn drain(&mut self) {
        while let Some(output) = self.sled.poll_output() {
            match output {
                Output::Connect { conn } => match &self.target {
                    Some(target) => {
                        let task = tokio::spawn(ws::connection_task(conn, target.clone(), self.io_tx.clone()));
                        self.conns.insert(conn, ConnIo { outbox: None, task, writer: None });
                    }
                    None => {
                        let now = self.now();
                        self.sled.handle_connect_failed(now, conn, ConnectError::Other);
                    }
                },
                Output::Send { conn, text } => self.send(conn, WsOut::Text(text)),
                Output::Ping { conn } => self.send(conn, WsOut::Ping),
                Output::Close { conn, code, reason } => {
                    if let Some(c) = self.conns.remove(&conn) {
                        match &c.outbox {
                            Some(outbox) => {
                                let _ = outbox.try_send(WsOut::Close(code, reason));
                                self.retire(c, true);
                            }
                            None => c.abort(),
                        }
                    }
                }
                Output::Decided(d) => {
                    debug!(id = %d.id, decision = ?d.decision, cause = ?d.cause, "permission decided");
                    if let Some(waiter) = self.waiters.remove(&d.key) {
                        let _ = waiter.send(d.decision);
                    }
                }
                Output::CallMcp(call) => {
                    let mcp = self.mcp.clone();
                    let io = self.io_tx.clone();
                    let id = call.call;
                    let task = tokio::spawn(async move {
                        let reply = mcp.call(call.body, call.session).await;
                        let _ = io.send(Io::Mcp { call: id, reply }).await;
                    });
                    self.calls.insert(id, task.abort_handle());
                }
                Output::CancelMcp { call } => {
                    if let Some(task) = self.calls.remove(&call) {
                        task.abort();
                    }
                }
                Output::Event(Event::Link(state)) => {
                    info!(?state, "uplink state");
                    self.link.send_replace(state);
                }
                Output::Event(Event::FrameIgnored(why)) => debug!(?why, "ignored a frame from the gateway"),
            }
        }
        self.closing.retain(|t| !t.is_finished());
    }

    fn send(&mut self, conn: ConnId, out: WsOut) {
        let queued = self.conns.get(&conn).and_then(|c| c.outbox.as_ref()).is_some_and(|o| o.try_send(out).is_ok());
        if !queued {
            // Gone, or so far behind that its outbox is full: either way the connection is of no use.
            warn!(conn = conn.0, "gateway connection cannot take more frames; dropping it");
            if let Some(c) = self.conns.remove(&conn) {
                c.abort();
            }
            let now = self.now();
            self.sled.handle_disconnected(now, conn);
        }
    }

    /// A connection the core is done with: its tasks get [`ws::CLOSE_GRACE`] to finish a close handshake,
    /// then are stopped, so a dead peer can never leave a task blocked for ever. A shutdown waits (within the
    /// same grace) for the handshakes the sled started (`ours`).
    fn retire(&mut self, c: ConnIo, ours: bool) {
        let reader = c.task.abort_handle();
        let writer = c.writer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ws::CLOSE_GRACE).await;
            reader.abort();
            if let Some(w) = writer {
                w.abort();
            }
        });
        if ours {
            self.closing.push(c.task);
        }
    }

    /// After shutdown: let close handshakes finish (bounded), stop everything, tell who waits.
    async fn finish(mut self) {
        self.drain();
        let closing = std::mem::take(&mut self.closing);
        let aborts: Vec<AbortHandle> = closing.iter().map(JoinHandle::abort_handle).collect();
        let _ = tokio::time::timeout(ws::CLOSE_GRACE, async {
            for task in closing {
                let _ = task.await;
            }
        })
        .await;
        aborts.iter().for_each(AbortHandle::abort);
        for (_, c) in self.conns.drain() {
            c.abort();
        }
        for (_, call) in self.calls.drain() {
            call.abort();
        }
        // Anything still waiting (cannot normally happen: the core decided everything) is denied.
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.send(Decision::Deny);
        }
        for done in self.done.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn sleep_until(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

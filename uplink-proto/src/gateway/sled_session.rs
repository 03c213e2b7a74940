//! One sled connection as the gateway sees it: the [`SledSession`] session machine.
//!
//! A [`Hub`](super::Hub) owns one session per connection and decides what the sessions cannot decide alone
//! (which connection holds a project, public ids, routing). A session can also be driven on its own.
//!
//! Method kinds as on the sled side: getters; inputs `handle_*(now, …)`; commands (`decide`, `send_mcp`,
//! `close`) that return a `Result` when the caller asks for something impossible; outputs drained with
//! [`SledSession::poll_output`], then [`SledSession::poll_timeout`].
//!
//! Rules:
//! - `identity` must be the first frame, within the identity timeout; anything else first, or nothing, closes
//!   the connection with 1008 (policy violation).
//! - The gateway pings a sled it has not heard from for the ping interval, and again at each interval while it
//!   stays quiet; a sled that heartbeats is never pinged. A sled from which nothing (no frame, no pong)
//!   arrived for the stale threshold is reported [`SessionEvent::Stale`], and [`SessionEvent::Alive`] once it
//!   speaks again.
//! - Each permission request gets a [`PermId`] and ends exactly once: decided by the application, withdrawn
//!   by the sled (`perm_cancel`), or withdrawn because the connection ended. The session decides nothing by
//!   itself: a request past one of its limits ([`SessionLimit`]: an input nested deeper than
//!   [`wire::MAX_INPUT_DEPTH`], too many or too large pending) is reported with that limit, for the
//!   application to deny at once (the hub's policy does).
//! - Each MCP exchange (a request, or a standalone stream) ends exactly once: its `mcp_response`, a timeout
//!   (requests only), [`SledSession::cancel_mcp`], or the connection's end. With a sled that lists the
//!   `mcp_stream` capability, the local server's messages within an exchange arrive before its end as
//!   [`SessionEvent::McpMessage`].
//! - A decision for a permission that is unknown or already ended is refused with an error, never sent.
//! - With the `resume` extension ([`SledSession::accept_resume`], which the hub calls at the claim of a
//!   sled that offered it), once the sled is known to have seen the acceptance (its `resumed`, or
//!   [`SledSession::confirm_resume`]), the connection's end hands what was pending to the application
//!   ([`SessionEvent::PermissionHeld`]) instead of withdrawing it, unless its credential was revoked.

use alloc::borrow::Cow;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use super::close::CloseReason;
use super::resume::MAX_INCARNATION_BYTES;
use super::verdict::Verdict;
pub use crate::ids::{McpId, PermId};
use crate::pending::PendingTable;
use crate::time::Instant;
use crate::wire::Received;
use crate::wire::{self, DecodeError, GatewayFrame, RawValue, SledFrame};

/// Everything that shapes a [`SledSession`] session. [`SessionConfig::default`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// `identity` must arrive within this long after the connection opens. Default 10 s.
    pub identity_timeout: Duration,
    /// A sled silent for this long is reported stale. Default 30 s (three heartbeat intervals).
    pub stale_after: Duration,
    /// A sled silent for this long is gone: its connection is closed ([`CloseReason::Dead`]) and what it
    /// had pending is withdrawn, without waiting for TCP to notice. Default 90 s; at least `stale_after`.
    pub dead_after: Duration,
    /// A sled from which nothing arrived for this long is pinged, and again at this interval while it stays
    /// quiet. Default 15 s: one and a half heartbeat intervals, so that a sled that heartbeats (every 10 s)
    /// is never pinged, however its frames are delayed on the way.
    pub ping_interval: Duration,
    /// An MCP request without a response after this long fails with [`McpFailure::Timeout`]. Default 60 s.
    pub mcp_timeout: Duration,
    /// Most permission requests pending on one connection; beyond, a request is denied at once. Default 1024.
    pub max_pending_permissions: usize,
    /// Most bytes of pending permission requests (tool name, input and id) on one connection; a request
    /// that would go beyond is denied at once. Default 32 MiB.
    pub max_pending_input_bytes: usize,
    /// Most MCP requests in flight on one connection; beyond, [`SledSession::send_mcp`] refuses. Default 256.
    pub max_pending_mcp: usize,
    /// Most standalone MCP streams open on one connection; beyond, [`SledSession::listen_mcp`] refuses.
    /// Default 64.
    pub max_mcp_streams: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            identity_timeout: Duration::from_secs(10),
            stale_after: Duration::from_secs(30),
            dead_after: Duration::from_secs(90),
            ping_interval: Duration::from_secs(15),
            mcp_timeout: Duration::from_secs(60),
            max_pending_permissions: 1024,
            max_pending_input_bytes: 32 << 20,
            max_pending_mcp: 256,
            max_mcp_streams: 64,
        }
    }
}

impl SessionConfig {
    fn validate(&self) -> Result<(), SessionConfigError> {
        for (name, d) in [
            ("identity_timeout", self.identity_timeout),
            ("stale_after", self.stale_after),
            ("dead_after", self.dead_after),
            ("ping_interval", self.ping_interval),
            ("mcp_timeout", self.mcp_timeout),
        ] {
            if d.is_zero() {
                return Err(SessionConfigError::Zero(name));
            }
        }
        if self.max_pending_permissions == 0 {
            return Err(SessionConfigError::Zero("max_pending_permissions"));
        }
        if self.max_pending_mcp == 0 {
            return Err(SessionConfigError::Zero("max_pending_mcp"));
        }
        if self.max_pending_input_bytes == 0 {
            return Err(SessionConfigError::Zero("max_pending_input_bytes"));
        }
        if self.dead_after < self.stale_after {
            return Err(SessionConfigError::DeadBeforeStale);
        }
        Ok(())
    }
}

/// A [`SessionConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionConfigError {
    /// A duration or limit that must be positive is zero.
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    /// `dead_after` is shorter than `stale_after`.
    #[error("`dead_after` must be at least `stale_after`")]
    DeadBeforeStale,
}

/// Why a permission request ended without a decision.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Withdrawn {
    /// The sled sent `perm_cancel` (its caller went away, or it shut down).
    Cancelled,
    /// The sled sent `perm_cancel` with the reason `timeout`: its deadline passed, and it denied the call.
    Deadline,
    /// The connection ended.
    ConnectionLost,
}

impl Withdrawn {
    /// The reason's word: `cancelled`, `deadline` or `connection_lost`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Withdrawn::Cancelled => "cancelled",
            Withdrawn::Deadline => "deadline",
            Withdrawn::ConnectionLost => "connection_lost",
        }
    }

    /// The reason a `perm_cancel` gives, read: `timeout` is the sled's deadline, anything else a withdrawal.
    pub fn from_cancel(reason: &str) -> Withdrawn {
        if reason == "timeout" { Withdrawn::Deadline } else { Withdrawn::Cancelled }
    }
}

/// Why an MCP request failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum McpFailure {
    /// No response within the MCP timeout.
    Timeout,
    /// The connection ended first.
    ConnectionLost,
    /// The application cancelled it ([`SledSession::cancel_mcp`]): its caller went away.
    Cancelled,
}

/// Why a received frame was ignored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SessionIgnored {
    /// Not a JSON envelope, or a known type with an unusable payload.
    Malformed,
    /// A `type` the gateway does not know.
    UnknownType,
    /// A binary frame.
    Binary,
    /// A second `identity`.
    RepeatedIdentity,
    /// A `perm_request` whose id is empty or already pending.
    DuplicateRequest,
    /// An `mcp_response` or `perm_cancel` matching nothing pending.
    Unmatched,
}

/// Something that happened on the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The sled identified itself.
    Identified {
        /// Project name.
        project: String,
        /// Announced protocol version.
        protocol: Option<u32>,
        /// Announced sled software version.
        sled_version: Option<String>,
        /// Announced extensions.
        capabilities: Vec<String>,
        /// The sled process's incarnation, when it offered `resume` (listed the capability and named an
        /// incarnation of 1 to [`MAX_INCARNATION_BYTES`] bytes).
        incarnation: Option<String>,
    },
    /// A heartbeat arrived.
    Heartbeat,
    /// A permission request for the application to decide with [`SledSession::decide`]. One past a limit
    /// of the session's (`over`) is pending like any other: the session never decides by itself, and the
    /// application (the hub's policy) denies it at once.
    PermissionRequested {
        /// The gateway's id for it.
        perm: PermId,
        /// The sled's id for it.
        req_id: String,
        /// The tool.
        tool_name: String,
        /// The tool's input: the JSON text exactly as it arrived, shared with the session's pending table.
        tool_input: Arc<str>,
        /// The session's limit it is past, if any.
        over: Option<SessionLimit>,
    },
    /// The connection ended with `resume` accepted: this request is handed to the application to hold
    /// until its sled sends it again (instead of [`SessionEvent::PermissionWithdrawn`]).
    PermissionHeld {
        /// Which.
        perm: PermId,
        /// The sled's id for it.
        req_id: String,
        /// The tool.
        tool_name: String,
        /// The tool's input, as the JSON text it arrived in.
        tool_input: Arc<str>,
        /// When it arrived.
        since: Instant,
        /// When its sled denies it, from the timeout it announced.
        deadline: Option<Instant>,
    },
    /// The sled sent `resumed` on a connection that accepted `resume`: it has sent again every request it
    /// kept; held requests of its incarnation it did not send are no longer awaited.
    Resumed,
    /// Whether the sled saw the acceptance is settled: `confirmed` (its `resumed` arrived first), or not
    /// (nothing showed it in time: the connection goes on without holding anything across a drop).
    /// [`SledSession::confirm_resume`] settles it too, without this event.
    ResumeSettled {
        /// True when confirmed.
        confirmed: bool,
    },
    /// A permission request ended without a decision.
    PermissionWithdrawn {
        /// Which.
        perm: PermId,
        /// Why.
        reason: Withdrawn,
        /// How long it waited.
        waited: Duration,
    },
    /// The answer to an MCP request, or the end of a standalone stream: the exchange's end.
    McpResponse {
        /// Which request.
        id: McpId,
        /// The JSON-RPC response as the sled sent it; `None` when the sled sent `null`: a notification or a
        /// client's response that the local server accepted (no content), or a standalone stream that ended.
        payload: Option<String>,
    },
    /// A message from the sled's local MCP server within an exchange, before its end (`mcp_message`).
    McpMessage {
        /// Which exchange.
        id: McpId,
        /// The JSON-RPC message, as the sled sent it.
        payload: String,
    },
    /// The sled's local server accepted the exchange's stream (an `mcp_message` whose payload is `null`): a
    /// standalone stream is open, and its caller can be answered before any message comes.
    McpOpened {
        /// Which exchange.
        id: McpId,
    },
    /// An MCP request ended without an answer.
    McpFailed {
        /// Which request.
        id: McpId,
        /// Why.
        reason: McpFailure,
    },
    /// Nothing arrived for the stale threshold.
    Stale,
    /// The sled spoke again after being stale.
    Alive,
    /// A frame was ignored.
    FrameIgnored(SessionIgnored),
    /// The connection is over (closed by either side); no more outputs follow except those already queued.
    Closed,
}

/// Something to do, drained with [`SledSession::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOutput {
    /// Send this text frame.
    Send(String),
    /// Send a WebSocket ping.
    Ping,
    /// Send a close frame with this reason's code and text, then drop the connection.
    Close(CloseReason),
    /// For the application.
    Event(SessionEvent),
}

/// Why [`SledSession::decide`] refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// No pending permission has this id: never existed, already decided, or withdrawn.
    #[error("no pending permission request with this id")]
    NotPending,
    /// The verdict's message is longer than [`MAX_MESSAGE_BYTES`](crate::wire::MAX_MESSAGE_BYTES); the
    /// request stays pending.
    #[error("the message is longer than {} bytes", crate::wire::MAX_MESSAGE_BYTES)]
    MessageTooLong,
}

/// Why [`SledSession::send_mcp`] refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendMcpError {
    /// The sled has not identified itself yet.
    #[error("the sled has not identified itself yet")]
    NotIdentified,
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
    /// Too many MCP requests in flight on this connection.
    #[error("too many MCP requests in flight")]
    TooMany,
    /// The sled does not relay MCP as streams (its `identity` lacks the `mcp_stream` capability).
    #[error("the sled does not relay MCP streams")]
    Unsupported,
}

/// A connection's state. Every transition is in this file:
///
/// ```text
///  new ──▶ AwaitingIdentity ──identity──▶ Identified { project } ──┐ (the hub then claims the project:
///               │                                                 │  closed 4003 or 4009 when it cannot)
///               │ another frame first: 1008                       │ sled gone · too big 1009 · dead 4008 ·
///               │ no identity in time: 1008                       │ closed by the hub (replaced 4000,
///               ▼                                                 │ revoked 4010, shutdown 1001, …)
///             Closed ◀────────────────────────────────────────────┘ (what was pending is withdrawn, once)
/// ```
#[derive(Clone, Debug)]
enum State {
    AwaitingIdentity {
        deadline: Instant,
    },
    /// `streams`: the sled listed the `mcp_stream` capability; `resume`: what it offered of `resume`.
    Identified {
        project: String,
        streams: bool,
        resume: Resume,
    },
    Closed,
}

/// What a sled offered of the `resume` extension, whether it was accepted, and whether the sled is known to
/// have seen the acceptance. Only then does it keep what it sent on the connection across a drop: before, it
/// denies it at a drop, and so nothing is held.
#[derive(Clone, Debug)]
enum Resume {
    NotOffered,
    Offered(Arc<str>),
    Accepted { incarnation: Arc<str>, confirm: Confirm },
}

/// Whether the sled is known to have seen the acceptance.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Confirm {
    /// Not yet: its `resumed` (which it sends right after the acceptance) is awaited until then.
    Awaited(Instant),
    /// Its `resumed` arrived, or a request it kept came again.
    Confirmed,
    /// Nothing came in time: the connection carries on as without the extension's holding.
    Never,
}

/// A permission request awaiting the application's decision, as [`SledSession::pending`] shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingPermission<'a> {
    /// The sled's id for it.
    pub req_id: &'a str,
    /// The tool.
    pub tool_name: &'a str,
    /// The tool's input, as the JSON text it arrived in (never re-parsed); clone it to keep it.
    pub tool_input: &'a Arc<str>,
    /// When it arrived.
    pub since: Instant,
    /// When the sled denies it if nobody decides (from the timeout it announced in its `identity`);
    /// `None` when it announced none.
    pub deadline: Option<Instant>,
}

/// The message of the denial of a `perm_request` whose input nests deeper than [`wire::MAX_INPUT_DEPTH`].
pub const INPUT_TOO_DEEP: &str = "the request's tool input nests arrays and objects more than 64 levels deep, \
     deeper than the gateway accepts";

/// A limit of the session's that a permission request is past: it must be denied at once
/// ([`SessionEvent::PermissionRequested`]'s `over`), with [`SessionLimit::message`] for the agent.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SessionLimit {
    /// Its input nests deeper than [`wire::MAX_INPUT_DEPTH`].
    TooDeep,
    /// [`SessionConfig::max_pending_permissions`] were pending already.
    TooMany,
    /// It would take the session past [`SessionConfig::max_pending_input_bytes`].
    TooLarge,
}

impl SessionLimit {
    /// What the agent is told.
    pub fn message(self) -> &'static str {
        match self {
            SessionLimit::TooDeep => INPUT_TOO_DEEP,
            SessionLimit::TooMany => "too many requests from this sled are waiting at the gateway",
            SessionLimit::TooLarge => "the requests from this sled waiting at the gateway are too large",
        }
    }
}

/// What a session keeps of a permission request, beside its wire id.
#[derive(Clone, Debug)]
struct Asked {
    tool_name: String,
    tool_input: Arc<str>,
    since: Instant,
}

impl Asked {
    /// What a pending request costs the input budget: its tool's name and input and its id.
    fn bytes(tool_name: &str, tool_input: &str, req_id: &str) -> usize {
        tool_name.len() + tool_input.len() + req_id.len()
    }
}

/// One sled connection as the gateway sees it.
#[derive(Clone, Debug)]
pub struct SledSession {
    cfg: SessionConfig,
    now: Instant,
    state: State,
    last_seen: Instant,
    stale: bool,
    next_ping: Instant,
    /// Permission requests awaiting a decision, by id and by the sled's `req_id`; they have no deadline here
    /// (the sled keeps it).
    perms: PendingTable<PermId, Asked>,
    /// The bytes `perms` holds, as [`Asked::bytes`] counts them.
    pending_bytes: usize,
    /// MCP requests awaiting a response, with their deadlines.
    mcp: PendingTable<McpId, ()>,
    /// Standalone MCP streams open: no deadline.
    mcp_streams: PendingTable<McpId, ()>,
    /// The last [`McpId`] given, to requests and streams alike.
    next_mcp: u64,
    out: VecDeque<SessionOutput>,
    /// How long the sled waits for each decision, as its `identity` said.
    sled_timeout: Option<Duration>,
}

impl SledSession {
    /// A session for a connection that just opened at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Result<SledSession, SessionConfigError> {
        config.validate()?;
        let mcp_timeout = config.mcp_timeout;
        Ok(SledSession {
            state: State::AwaitingIdentity { deadline: now + config.identity_timeout },
            next_ping: now + config.ping_interval,
            cfg: config,
            now,
            last_seen: now,
            stale: false,
            perms: PendingTable::new(None),
            pending_bytes: 0,
            mcp: PendingTable::new(Some(mcp_timeout)),
            mcp_streams: PendingTable::new(None),
            next_mcp: 0,
            out: VecDeque::new(),
            sled_timeout: None,
        })
    }

    // ── Getters ──

    /// Bytes of pending permission requests (tool names, inputs and ids), as the input budget counts them.
    pub fn pending_input_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The project, once identified.
    pub fn project(&self) -> Option<&str> {
        match &self.state {
            State::Identified { project, .. } => Some(project),
            _ => None,
        }
    }

    /// True once the connection is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True while the sled is silent past the stale threshold.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// When anything last arrived from the sled.
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }

    /// Permission requests awaiting a decision.
    pub fn pending_permissions(&self) -> usize {
        self.perms.len()
    }

    /// The permission requests awaiting a decision, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = (PermId, PendingPermission<'_>)> + '_ {
        self.perms.iter().map(|(id, p)| {
            let asked = &p.value;
            let view = PendingPermission {
                req_id: &p.wire,
                tool_name: &asked.tool_name,
                tool_input: &asked.tool_input,
                since: asked.since,
                deadline: self.sled_timeout.map(|t| asked.since.saturating_add(t)),
            };
            (id, view)
        })
    }

    /// The permission request `perm`, while it awaits a decision.
    pub fn permission(&self, perm: PermId) -> Option<PendingPermission<'_>> {
        self.perms.get(perm).map(|p| PendingPermission {
            req_id: &p.wire,
            tool_name: &p.value.tool_name,
            tool_input: &p.value.tool_input,
            since: p.value.since,
            deadline: self.sled_timeout.map(|t| p.value.since.saturating_add(t)),
        })
    }

    /// MCP requests awaiting a response.
    pub fn pending_mcp(&self) -> usize {
        self.mcp.len()
    }

    /// Standalone MCP streams open.
    pub fn mcp_streams(&self) -> usize {
        self.mcp_streams.len()
    }

    /// True when the sled relays MCP exchanges as streams (it listed the `mcp_stream` capability).
    pub fn relays_streams(&self) -> bool {
        matches!(self.state, State::Identified { streams: true, .. })
    }

    // ── Outputs ──

    /// The next thing to do, or `None`. Drain after every input and command.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        self.out.pop_front()
    }

    /// When to call [`SledSession::handle_timeout`] next; `None` once closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = match self.state {
            State::Closed => return None,
            State::AwaitingIdentity { deadline } => deadline,
            State::Identified { ref resume, .. } => {
                let ping = self.next_ping.min(self.last_seen + self.cfg.dead_after);
                let link = if self.stale { ping } else { ping.min(self.last_seen + self.cfg.stale_after) };
                match resume {
                    Resume::Accepted { confirm: Confirm::Awaited(by), .. } => link.min(*by),
                    _ => link,
                }
            }
        };
        Some(self.mcp.poll_timeout().map_or(link, |m| m.min(link)))
    }

    // ── Inputs ──

    /// Fires what is due. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// A message arrived from the sled.
    pub fn handle_received(&mut self, now: Instant, message: Received<'_>) {
        self.advance(now);
        if self.is_closed() {
            return;
        }
        self.last_seen = self.now;
        if self.stale {
            self.stale = false;
            self.event(SessionEvent::Alive);
        }
        let text = match message {
            Received::Text(text) => text,
            Received::Binary(_) => return self.ignored(SessionIgnored::Binary),
            Received::Ping | Received::Pong => return,
        };
        let frame = SledFrame::decode(text);
        if let State::AwaitingIdentity { .. } = self.state {
            return match frame {
                Ok(SledFrame::Identity(id)) => {
                    let streams = id.capabilities.iter().any(|c| c == wire::MCP_STREAM_CAPABILITY);
                    let incarnation = id
                        .incarnation
                        .filter(|i| !i.is_empty() && i.len() <= MAX_INCARNATION_BYTES)
                        .filter(|_| id.capabilities.iter().any(|c| c == wire::RESUME_CAPABILITY));
                    let resume = match &incarnation {
                        Some(i) => Resume::Offered(Arc::from(&**i)),
                        None => Resume::NotOffered,
                    };
                    self.state = State::Identified { project: id.project.clone().into_owned(), streams, resume };
                    self.sled_timeout = id.permission_timeout_ms.map(Duration::from_millis);
                    self.event(SessionEvent::Identified {
                        project: id.project.into_owned(),
                        protocol: id.protocol,
                        sled_version: id.sled_version.map(Cow::into_owned),
                        capabilities: id.capabilities.into_iter().map(Cow::into_owned).collect(),
                        incarnation: incarnation.map(Cow::into_owned),
                    });
                }
                _ => self.close_with(CloseReason::IdentityNotFirst),
            };
        }
        match frame {
            Ok(SledFrame::Identity(_)) => self.ignored(SessionIgnored::RepeatedIdentity),
            Ok(SledFrame::Heartbeat) => self.event(SessionEvent::Heartbeat),
            Ok(SledFrame::PermRequest { req_id, tool_name, tool_input }) => {
                self.on_perm_request(req_id.into_owned(), tool_name.into_owned(), tool_input)
            }
            Ok(SledFrame::PermCancel { req_id, reason }) => match self.perms.take_by_wire_if(&req_id, |_| true) {
                Some((perm, p)) => {
                    self.pending_bytes -= Asked::bytes(&p.value.tool_name, &p.value.tool_input, &p.wire);
                    let waited = self.now.saturating_duration_since(p.value.since);
                    let reason = Withdrawn::from_cancel(&reason);
                    self.event(SessionEvent::PermissionWithdrawn { perm, reason, waited });
                }
                None => self.ignored(SessionIgnored::Unmatched),
            },
            Ok(SledFrame::McpResponse { req_id, payload }) => {
                // One search of each table: the exchange is taken out if it is in flight.
                let ended = mcp_id_of(&req_id)
                    .filter(|id| self.mcp.remove(*id).is_some() || self.mcp_streams.remove(*id).is_some());
                match ended {
                    Some(id) => {
                        let payload = (payload.get() != "null").then(|| String::from(payload.get()));
                        self.event(SessionEvent::McpResponse { id, payload });
                    }
                    None => self.ignored(SessionIgnored::Unmatched),
                }
            }
            Ok(SledFrame::McpMessage { req_id, payload }) => {
                let open = mcp_id_of(&req_id).filter(|id| self.mcp.contains(*id) || self.mcp_streams.contains(*id));
                match open {
                    Some(id) if payload.get() == "null" => self.event(SessionEvent::McpOpened { id }),
                    Some(id) => self.event(SessionEvent::McpMessage { id, payload: String::from(payload.get()) }),
                    None => self.ignored(SessionIgnored::Unmatched),
                }
            }
            // Only meaningful after this gateway's `resume_accepted`.
            Ok(SledFrame::Resumed) if self.resume_accepted().is_some() => {
                if self.confirm_resume() {
                    self.event(SessionEvent::ResumeSettled { confirmed: true });
                }
                self.event(SessionEvent::Resumed);
            }
            Ok(SledFrame::Resumed) | Err(DecodeError::UnknownType) => self.ignored(SessionIgnored::UnknownType),
            Err(DecodeError::Malformed | DecodeError::BadPayload) => self.ignored(SessionIgnored::Malformed),
        }
    }

    /// The connection ended. Everything pending ends with it (or, with `resume` accepted, is held).
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.advance(now);
        if !self.is_closed() {
            self.end(true);
        }
    }

    /// Accepts the `resume` extension the sled offered: `resume_accepted` is sent, and from now on the
    /// connection's end hands what was pending to the application ([`SessionEvent::PermissionHeld`]).
    /// False (nothing sent) when the sled did not offer it, or it was accepted already.
    /// The sled is expected to show that it saw the acceptance within `confirm_within`
    /// ([`SessionEvent::ResumeSettled`]).
    pub fn accept_resume(&mut self, now: Instant, confirm_within: Duration) -> bool {
        self.advance(now);
        let State::Identified { resume, .. } = &mut self.state else { return false };
        let Resume::Offered(incarnation) = resume else { return false };
        let confirm = Confirm::Awaited(now + confirm_within);
        *resume = Resume::Accepted { incarnation: incarnation.clone(), confirm };
        self.out.push_back(SessionOutput::Send(GatewayFrame::ResumeAccepted.encode()));
        true
    }

    /// The sled's incarnation, once `resume` is accepted.
    pub fn resume_accepted(&self) -> Option<&Arc<str>> {
        match &self.state {
            State::Identified { resume: Resume::Accepted { incarnation, .. }, .. } => Some(incarnation),
            _ => None,
        }
    }

    /// The sled has seen the acceptance (the application recognised a request it kept, sent again; its
    /// `resumed` does the same): from now on the connection's end hands what is pending to the application.
    /// True when this confirmed it (it was awaited, or its time had passed: a sled that shows it saw the
    /// acceptance late keeps from then on what it sent on the connection all the same). The application
    /// hears of it from its own call, not from an event.
    pub fn confirm_resume(&mut self) -> bool {
        match &mut self.state {
            State::Identified {
                resume: Resume::Accepted { confirm: confirm @ (Confirm::Awaited(_) | Confirm::Never), .. },
                ..
            } => {
                *confirm = Confirm::Confirmed;
                true
            }
            _ => false,
        }
    }

    /// True once `resume` is accepted and the sled is known to have seen it ([`SledSession::confirm_resume`]).
    pub fn resume_confirmed(&self) -> bool {
        matches!(&self.state, State::Identified { resume: Resume::Accepted { confirm: Confirm::Confirmed, .. }, .. })
    }

    /// True while `resume` is accepted and the sled's confirmation is awaited: what it asks meanwhile may be
    /// denied by it at a drop.
    pub fn resume_awaited(&self) -> bool {
        matches!(&self.state, State::Identified { resume: Resume::Accepted { confirm: Confirm::Awaited(_), .. }, .. })
    }

    // ── Commands ──

    /// Sends the application's decision for `perm` (a [`Decision`](crate::wire::Decision) or a [`Verdict`] with a
    /// message).
    pub fn decide(&mut self, now: Instant, perm: PermId, verdict: impl Into<Verdict>) -> Result<(), DecideError> {
        self.advance(now);
        let verdict = verdict.into();
        if !self.perms.contains(perm) {
            return Err(DecideError::NotPending);
        }
        if !verdict.message_fits() {
            return Err(DecideError::MessageTooLong);
        }
        let taken = self.perms.remove(perm).ok_or(DecideError::NotPending)?;
        self.pending_bytes -= Asked::bytes(&taken.value.tool_name, &taken.value.tool_input, &taken.wire);
        let req_id = taken.wire;
        let message = verdict.message.as_deref().map(Cow::Borrowed);
        let text =
            GatewayFrame::PermResponse { req_id: Cow::Borrowed(&req_id), decision: verdict.decision, message }.encode();
        self.out.push_back(SessionOutput::Send(text));
        Ok(())
    }

    /// Sends a JSON-RPC message for the sled's local MCP endpoint; exactly one of
    /// [`SessionEvent::McpResponse`] or [`SessionEvent::McpFailed`] with the returned id follows.
    ///
    /// With `stream` and a sled that relays streams, the request asks for one, and the local server's
    /// messages within it arrive first as [`SessionEvent::McpMessage`].
    pub fn send_mcp(
        &mut self,
        now: Instant,
        body: &str,
        session: Option<&str>,
        stream: bool,
    ) -> Result<McpId, SendMcpError> {
        self.advance(now);
        let stream = stream && self.identified()?;
        self.identified()?;
        if self.mcp.len() >= self.cfg.max_pending_mcp {
            return Err(SendMcpError::TooMany);
        }
        let id = self.mint_mcp();
        self.mcp.insert(id, self.now, String::new(), ());
        let req_id = format!("mcp-{}", id.0);
        let text = GatewayFrame::McpRequest {
            req_id: Cow::Owned(req_id),
            body: Some(Cow::Borrowed(body)),
            session: session.map(Cow::Borrowed),
            stream,
        }
        .encode();
        self.out.push_back(SessionOutput::Send(text));
        Ok(id)
    }

    /// Opens the standalone stream of `session`'s local session (`mcp_listen`): its messages arrive as
    /// [`SessionEvent::McpMessage`], its end as one [`SessionEvent::McpResponse`] (or
    /// [`SessionEvent::McpFailed`]). It has no deadline. Refused with a sled that does not relay streams.
    pub fn listen_mcp(&mut self, now: Instant, session: Option<&str>) -> Result<McpId, SendMcpError> {
        self.advance(now);
        if !self.identified()? {
            return Err(SendMcpError::Unsupported);
        }
        if self.mcp_streams.len() >= self.cfg.max_mcp_streams {
            return Err(SendMcpError::TooMany);
        }
        let id = self.mint_mcp();
        self.mcp_streams.insert(id, self.now, String::new(), ());
        let text = GatewayFrame::McpListen {
            req_id: Cow::Owned(format!("mcp-{}", id.0)),
            session: session.map(Cow::Borrowed),
        }
        .encode();
        self.out.push_back(SessionOutput::Send(text));
        Ok(id)
    }

    /// Ends the exchange `id` because its caller went away: [`SessionEvent::McpFailed`] with
    /// [`McpFailure::Cancelled`] follows, and a sled that relays streams is told (`mcp_cancel`) so that it
    /// stops the local call. False when `id` is not in flight (it already ended).
    pub fn cancel_mcp(&mut self, now: Instant, id: McpId, reason: &str) -> bool {
        self.advance(now);
        if self.mcp.remove(id).is_none() && self.mcp_streams.remove(id).is_none() {
            return false;
        }
        if self.relays_streams() {
            let text = GatewayFrame::McpCancel {
                req_id: Cow::Owned(format!("mcp-{}", id.0)),
                reason: Some(Cow::Borrowed(reason)),
            }
            .encode();
            self.out.push_back(SessionOutput::Send(text));
        }
        self.event(SessionEvent::McpFailed { id, reason: McpFailure::Cancelled });
        true
    }

    /// Tells a sled that relays streams that the gateway session `session` ended (`mcp_session_end`), so
    /// that it ends its local session; nothing for other sleds. True when told.
    pub fn end_mcp_session(&mut self, now: Instant, session: &str) -> bool {
        self.advance(now);
        if !self.relays_streams() {
            return false;
        }
        let text = GatewayFrame::McpSessionEnd { session: Cow::Borrowed(session) }.encode();
        self.out.push_back(SessionOutput::Send(text));
        true
    }

    /// Closes the connection (for example because another connection replaced it). Everything pending ends.
    pub fn close(&mut self, now: Instant, reason: CloseReason) {
        self.advance(now);
        if !self.is_closed() {
            self.close_with(reason);
        }
    }

    // ── Internals ──

    /// Whether the sled relays streams, once identified; an error before or after.
    fn identified(&self) -> Result<bool, SendMcpError> {
        match self.state {
            State::Closed => Err(SendMcpError::Closed),
            State::AwaitingIdentity { .. } => Err(SendMcpError::NotIdentified),
            State::Identified { streams, .. } => Ok(streams),
        }
    }

    fn mint_mcp(&mut self) -> McpId {
        let id = McpId(self.next_mcp);
        self.next_mcp += 1;
        id
    }

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        match self.state {
            State::Closed => return,
            State::AwaitingIdentity { deadline } if deadline <= now => {
                return self.close_with(CloseReason::NoIdentity);
            }
            State::AwaitingIdentity { .. } => {}
            State::Identified { .. } => {
                if self.last_seen + self.cfg.dead_after <= now {
                    return self.close_with(CloseReason::Dead);
                }
                if let State::Identified {
                    resume: Resume::Accepted { confirm: confirm @ Confirm::Awaited(_), .. }, ..
                } = &mut self.state
                    && matches!(confirm, Confirm::Awaited(by) if *by <= now)
                {
                    *confirm = Confirm::Never;
                    self.event(SessionEvent::ResumeSettled { confirmed: false });
                }
                if !self.stale && self.last_seen + self.cfg.stale_after <= now {
                    self.stale = true;
                    self.event(SessionEvent::Stale);
                }
                if self.next_ping <= now {
                    // A sled heard from within the interval needs no ping: its heartbeats prove it alive. Only
                    // a quiet one is pinged, and again at each interval while it stays quiet.
                    let due = self.last_seen + self.cfg.ping_interval;
                    if due > now {
                        self.next_ping = due;
                    } else {
                        self.next_ping = now + self.cfg.ping_interval;
                        self.out.push_back(SessionOutput::Ping);
                    }
                }
            }
        }
        while let Some((id, _)) = self.mcp.pop_expired(now) {
            self.event(SessionEvent::McpFailed { id, reason: McpFailure::Timeout });
        }
    }

    fn on_perm_request(&mut self, req_id: String, tool_name: String, tool_input: &RawValue) {
        if req_id.is_empty() || self.perms.contains_wire(&req_id) {
            return self.ignored(SessionIgnored::DuplicateRequest);
        }
        // Past a limit, it is still reported, for the application (the hub's policy) to deny at once: the
        // session never decides by itself. An input nested deeper than every reader of it can parse is never
        // shown or approved.
        let over = if wire::json_depth(tool_input.get()) > wire::MAX_INPUT_DEPTH {
            Some(SessionLimit::TooDeep)
        } else if self.perms.len() >= self.cfg.max_pending_permissions {
            Some(SessionLimit::TooMany)
        } else if self.pending_bytes + Asked::bytes(&tool_name, tool_input.get(), &req_id)
            > self.cfg.max_pending_input_bytes
        {
            Some(SessionLimit::TooLarge)
        } else {
            None
        };
        let perm = self.perms.mint();
        let tool_input: Arc<str> = Arc::from(tool_input.get());
        let asked = Asked { tool_name: tool_name.clone(), tool_input: tool_input.clone(), since: self.now };
        self.pending_bytes += Asked::bytes(&asked.tool_name, &asked.tool_input, &req_id);
        self.perms.insert(perm, self.now, req_id.clone(), asked);
        self.event(SessionEvent::PermissionRequested { perm, req_id, tool_name, tool_input, over });
    }

    fn close_with(&mut self, reason: CloseReason) {
        self.out.push_back(SessionOutput::Close(reason));
        // A revoked credential's requests are never held for later.
        self.end(reason != CloseReason::CredentialRevoked);
    }

    /// The connection is over: fail everything pending, once; or, with `resume` accepted and `hold`, hand
    /// it to the application to hold.
    fn end(&mut self, hold: bool) {
        let hold = hold && self.resume_confirmed();
        self.state = State::Closed;
        let now = self.now;
        for (perm, p) in self.perms.drain() {
            if hold {
                let deadline = self.sled_timeout.map(|t| p.value.since.saturating_add(t));
                let Asked { tool_name, tool_input, since } = p.value;
                self.out.push_back(SessionOutput::Event(SessionEvent::PermissionHeld {
                    perm,
                    req_id: p.wire,
                    tool_name,
                    tool_input,
                    since,
                    deadline,
                }));
                continue;
            }
            let waited = now.saturating_duration_since(p.value.since);
            self.event(SessionEvent::PermissionWithdrawn { perm, reason: Withdrawn::ConnectionLost, waited });
        }
        self.pending_bytes = 0;
        let lost: Vec<McpId> = self.mcp.drain().chain(self.mcp_streams.drain()).map(|(id, _)| id).collect();
        for id in lost {
            self.event(SessionEvent::McpFailed { id, reason: McpFailure::ConnectionLost });
        }
        self.event(SessionEvent::Closed);
    }

    fn event(&mut self, event: SessionEvent) {
        self.out.push_back(SessionOutput::Event(event));
    }

    fn ignored(&mut self, why: SessionIgnored) {
        self.event(SessionEvent::FrameIgnored(why));
    }
}

/// The id an `mcp_response`'s `req_id` names: exactly the text [`SledSession::send_mcp`] sent (so `mcp-01` is not
/// `mcp-1`).
fn mcp_id_of(req_id: &str) -> Option<McpId> {
    let n: u64 = req_id.strip_prefix("mcp-")?.parse().ok()?;
    (format!("mcp-{n}") == req_id).then_some(McpId(n))
}

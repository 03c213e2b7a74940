//! The sled side of the uplink: one machine for the sled's whole lifetime, across reconnections.
//!
//! See the [crate documentation](crate) for the drive loop. Method kinds, as in quinn-proto:
//! - getters (`&self`): [`Sled::link_state`], [`Sled::stats`], [`Sled::pending_permissions`], …
//! - inputs (`handle_*`, each taking `now`): what happened on the socket, the timer, or the local MCP call;
//! - commands (each taking `now`): [`Sled::request_permission`], [`Sled::shutdown`];
//! - outputs: [`Sled::poll_output`] until it returns `None`, then [`Sled::poll_timeout`].
//!
//! Every input first fires the timers that are due at `now`, so a late or missing [`Sled::handle_timeout`] call
//! can delay work but never change a decision: a response that arrives after its request's deadline is
//! ignored, whatever the order in which the caller reports them.
//!
//! The link's states (one `Link` enum; every transition is in this file):
//!
//! ```text
//!            new (enabled)                      shutdown, from any state
//!                 │                                    ▼
//!                 ▼                                 Closed
//!    ┌──────▶ Connecting ──connected──▶ Connected ──┐
//!    │            │  failed, timeout        │ lost, idle timeout, too big
//!    │            ▼                         ▼      │  (what was sent on it is denied)
//!    └──────── BackingOff ◀────────────────────────┘
//!         (jittered delay; reset after a stable connection; the cap after 401/403)
//!
//!    new (disabled) ──▶ Disabled: every request is denied at once
//! ```
//!
//! Each permission request is queued (while there is no connection), then sent on the live connection, then
//! decided exactly once: by the `perm_response` received on that connection, or denied by its deadline, the
//! connection's loss, a full queue, a bad or duplicate id, or shutdown.

use alloc::borrow::{Cow, ToOwned};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use crate::backoff::{Backoff, SplitMix64};
use crate::jsonrpc::{self, BodyId};
use crate::pending::{Pending, PendingTable};
use crate::time::Instant;
use crate::wire::{self, Decision, GatewayFrame, Identity, RawValue, SledFrame};

// ── Configuration ────────────────────────────────────────────────────────────────────────────────────────

/// Everything that shapes a [`Sled`]'s behaviour. [`SledConfig::new`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SledConfig {
    /// `false` when no gateway is configured: the machine never connects and denies every permission request
    /// at once (fail-closed). Default `true`.
    pub enabled: bool,
    /// Project name announced in the `identity` frame.
    pub project: String,
    /// Sled software version announced in the `identity` frame (optional extra).
    pub sled_version: Option<String>,
    /// Extra capabilities announced in the `identity` frame, after the core's own (`perm_cancel`).
    pub capabilities: Vec<String>,
    /// Interval between `heartbeat` frames (each also asks for a WebSocket ping). Default 10 s.
    pub heartbeat_interval: Duration,
    /// A connection on which nothing (no frame, no pong) arrived for this long is closed. Default 30 s. Must
    /// exceed `heartbeat_interval`.
    pub idle_timeout: Duration,
    /// A connection attempt that has neither succeeded nor failed after this long is abandoned. Default 10 s.
    pub connect_timeout: Duration,
    /// First reconnection delay. Default 1 s.
    pub backoff_initial: Duration,
    /// Largest reconnection delay. Default 60 s.
    pub backoff_max: Duration,
    /// Growth factor of the delay per failed attempt. Default 2.
    pub backoff_multiplier: u32,
    /// Full jitter: draw each delay uniformly from `0..=` the exponential value. Default `true`; `false`
    /// reproduces the original implementation's delays exactly.
    pub backoff_jitter: bool,
    /// A connection that lived this long resets the back-off to `backoff_initial`. Default 30 s.
    pub stability_window: Duration,
    /// Seed of the jitter generator. The same seed and the same inputs give the same outputs. Default 0; an
    /// adapter running many sleds should pass a random seed so their reconnections spread out.
    pub seed: u64,
    /// A permission request still undecided after this long is denied (and withdrawn with `perm_cancel`).
    /// Default 120 s.
    pub permission_timeout: Duration,
    /// Most permission requests pending at once (queued while disconnected plus awaiting a response); one more
    /// is denied at once. Default 256.
    pub max_pending_permissions: usize,
    /// A local MCP call that has not replied after this long is answered with a JSON-RPC error and cancelled.
    /// Default 60 s.
    pub mcp_timeout: Duration,
    /// Most local MCP calls in flight at once; an `mcp_request` beyond that waits for a free slot (see
    /// `max_mcp_waiting`). Default 32.
    pub max_mcp_calls: usize,
    /// Most `mcp_request`s waiting for a free call slot, in arrival order; one more is answered at once with a
    /// JSON-RPC error ("sled busy"). A waiting request's deadline runs from its arrival. Default 256; 0 answers
    /// every request beyond `max_mcp_calls` at once, as the original did.
    pub max_mcp_waiting: usize,
    /// Most bytes of bodies waiting for a free call slot; beyond, as a full queue. Default 16 MiB.
    pub max_mcp_waiting_bytes: usize,
    /// Most standalone streams (`mcp_listen`) open at once; one more ends at once with a JSON-RPC error.
    /// Default 16.
    pub max_mcp_streams: usize,
    /// Most bytes of the `initialize` requests the sled keeps, across all its local MCP sessions, to renew a
    /// session its local server lost ([`crate::mcp_session`]). Beyond, the least recently used sessions' are let go
    /// first; a session without its `initialize` that the local server loses is answered
    /// [`McpReply::SessionLost`] (the gateway answers its client `404`, and the client initializes anew).
    /// Default [`crate::mcp_session::DEFAULT_MAX_INITIALIZE_BYTES`] (1 MiB); 0 keeps none.
    pub max_mcp_initialize_bytes: usize,
    /// The largest frame the sled sends: the gateway's message limit. A permission request whose frame would
    /// be larger is denied at once ([`Cause::TooLarge`]), and a local MCP answer that would not fit is
    /// answered with a JSON-RPC error instead, so that the gateway never closes the link over one of them.
    /// Default [`wire::DEFAULT_MAX_FRAME_BYTES`] (16 MiB, the gateway's default).
    pub max_frame_bytes: usize,
}

impl SledConfig {
    /// The defaults, for a sled announcing itself as `project`.
    pub fn new(project: impl Into<String>) -> Self {
        SledConfig {
            enabled: true,
            project: project.into(),
            sled_version: None,
            capabilities: Vec::new(),
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_multiplier: 2,
            backoff_jitter: true,
            stability_window: Duration::from_secs(30),
            seed: 0,
            permission_timeout: Duration::from_secs(120),
            max_pending_permissions: 256,
            mcp_timeout: Duration::from_secs(60),
            max_mcp_calls: 32,
            max_mcp_waiting: 256,
            max_mcp_waiting_bytes: 16 << 20,
            max_mcp_streams: 16,
            max_mcp_initialize_bytes: crate::mcp_session::DEFAULT_MAX_INITIALIZE_BYTES,
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// A configuration with no gateway: the machine stays [`LinkState::Disabled`] and denies everything.
    pub fn disabled() -> Self {
        SledConfig { enabled: false, ..SledConfig::new("") }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_timeout", self.idle_timeout),
            ("connect_timeout", self.connect_timeout),
            ("backoff_initial", self.backoff_initial),
            ("permission_timeout", self.permission_timeout),
            ("mcp_timeout", self.mcp_timeout),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::Zero(name));
        }
        if self.idle_timeout <= self.heartbeat_interval {
            return Err(ConfigError::IdleNotAboveHeartbeat);
        }
        if self.backoff_max < self.backoff_initial {
            return Err(ConfigError::BackoffMaxBelowInitial);
        }
        if self.backoff_multiplier == 0 {
            return Err(ConfigError::Zero("backoff_multiplier"));
        }
        if self.max_pending_permissions == 0 {
            return Err(ConfigError::Zero("max_pending_permissions"));
        }
        if self.max_frame_bytes == 0 {
            return Err(ConfigError::Zero("max_frame_bytes"));
        }
        if self.max_mcp_calls == 0 {
            return Err(ConfigError::Zero("max_mcp_calls"));
        }
        if self.enabled && self.project.is_empty() {
            return Err(ConfigError::EmptyProject);
        }
        Ok(())
    }
}

/// A [`SledConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration or limit that must be positive is zero.
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    /// The idle timeout would expire between two heartbeats of a healthy connection.
    #[error("`idle_timeout` must be greater than `heartbeat_interval`")]
    IdleNotAboveHeartbeat,
    /// The back-off cap is below its first delay.
    #[error("`backoff_max` must be at least `backoff_initial`")]
    BackoffMaxBelowInitial,
    /// An enabled sled must announce a project name.
    #[error("`project` must not be empty")]
    EmptyProject,
}

// ── Identifiers ──────────────────────────────────────────────────────────────────────────────────────────

/// One connection attempt, and the connection it becomes. Never reused by a machine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// One permission request, as the machine knows it. Never reused by a machine, so two requests that carry the
/// same wire id are still told apart.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PermKey(pub u64);

/// One call to the local MCP endpoint. Never reused by a machine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct McpCallId(pub u64);

// ── Inputs ───────────────────────────────────────────────────────────────────────────────────────────────

/// A WebSocket message received on a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A text frame: decoded as a [`GatewayFrame`].
    Text(&'a str),
    /// A binary frame: not part of the protocol, ignored (but proof of life).
    Binary(&'a [u8]),
    /// A ping (the adapter's WebSocket library answers it): proof of life.
    Ping,
    /// A pong: proof of life.
    Pong,
}

/// Why a connection attempt failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConnectError {
    /// The gateway refused the token (HTTP 401 or 403): retrying fast cannot help, so the next attempt waits
    /// the back-off cap.
    Unauthorized,
    /// Anything else: DNS, TCP, TLS, a refused or failed handshake.
    Other,
}

/// What the local MCP endpoint answered.
#[derive(Clone, Debug)]
pub enum McpReply {
    /// The JSON-RPC response; it becomes the `mcp_response` payload as is.
    Response(Box<RawValue>),
    /// Accepted with no body (HTTP 202: the message was a notification); the payload is `null`.
    NoContent,
    /// The call failed (transport error, timeout, non-2xx status, unreadable body); answered with a JSON-RPC
    /// internal error (-32603) carrying this message and the request's `id`.
    Failed(String),
    /// The local endpoint offers no standalone stream (it answered a `GET` with 405). Ends an `mcp_listen`
    /// with a JSON-RPC error -32601; for a call, as [`McpReply::Failed`].
    NoStream,
    /// The local server lost the call's session and it cannot be renewed (no `initialize` kept for it): the
    /// session is gone, as if unknown. Answered with the JSON-RPC error [`jsonrpc::SESSION_NOT_FOUND`]
    /// (-32001) and the request's `id`, which the gateway's MCP endpoint answers with `404`, so that the client
    /// initializes a new session. Ends an `mcp_listen` as [`McpReply::Failed`].
    SessionLost,
}

/// The message of the error answering [`McpReply::SessionLost`].
pub const SESSION_LOST: &str =
    "Session not found: the local MCP server lost this session and the sled kept no initialize to renew it";

// ── Outputs ──────────────────────────────────────────────────────────────────────────────────────────────

/// Something the caller must do or may want to know, drained with [`Sled::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a WebSocket to the gateway; report the outcome with [`Sled::handle_connected`] or
    /// [`Sled::handle_connect_failed`] under the same `conn`.
    Connect {
        /// Names this attempt in every later input about it.
        conn: ConnId,
    },
    /// Send a text frame on `conn`. If the send fails, report [`Sled::handle_disconnected`].
    Send {
        /// The connection to send on; always the live one when emitted.
        conn: ConnId,
        /// The frame's JSON text.
        text: String,
    },
    /// Send a WebSocket ping on `conn`.
    Ping {
        /// The connection to ping.
        conn: ConnId,
    },
    /// Close `conn` with a close frame (best effort) and drop it, or abandon the attempt if still connecting.
    /// The machine already treats it as gone: reporting its end later is harmless.
    Close {
        /// The connection to close.
        conn: ConnId,
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
    /// A permission request is decided. Emitted exactly once per [`Sled::request_permission`] call.
    Decided(Decided),
    /// Call the local MCP endpoint with `body`; report with [`Sled::handle_mcp_reply`].
    CallMcp(McpCall),
    /// Open the standalone stream of a local session (`GET`); report each message it brings with
    /// [`Sled::handle_mcp_message`] and its end with [`Sled::handle_mcp_reply`].
    ListenMcp(McpListen),
    /// Abandon a local MCP call or stream: its answer is no longer wanted (timed out, cancelled by the
    /// gateway, or its connection died). Report nothing more about it.
    CancelMcp {
        /// The call to abandon.
        call: McpCallId,
    },
    /// POST `body` (a notification or a response) in the local session `session`, with that session's
    /// headers; nothing to report back. The machine's own messages: `notifications/cancelled` for a call it
    /// abandoned, and error answers to requests from the local server that the gateway cannot take.
    NotifyMcp {
        /// The gateway-side session (the key of [`McpCall::session`]).
        session: Option<String>,
        /// The JSON-RPC message.
        body: String,
    },
    /// The gateway ended the session `session`: end the local session (`DELETE`) and forget it.
    EndMcpSession {
        /// The gateway-side session.
        session: String,
    },
    /// For logs and metrics; nothing to do.
    Event(Event),
}

/// The decision on one permission request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The key [`Sled::request_permission`] returned.
    pub key: PermKey,
    /// The request's wire id.
    pub id: String,
    /// What was decided. Approvals come only from a `perm_response` on the connection the request was sent on.
    pub decision: Decision,
    /// Why.
    pub cause: Cause,
    /// The person's message for the agent, when the gateway's `perm_response` carried one (at most
    /// [`wire::MAX_MESSAGE_BYTES`]; a longer one is cut at a character boundary). Always `None` for the other
    /// causes.
    pub message: Option<String>,
}

/// Why a permission request ended as it did.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The gateway's `perm_response`.
    Response,
    /// No response before the permission timeout (denied).
    Timeout,
    /// The connection it was sent on was lost (denied).
    ConnectionLost,
    /// Too many requests pending (denied at once).
    QueueFull,
    /// A request with the same id is pending; that one keeps its place (denied at once).
    DuplicateId,
    /// The id is empty (denied at once).
    InvalidId,
    /// No gateway is configured (denied at once).
    Disabled,
    /// The machine is shutting down or shut down (denied).
    Shutdown,
    /// The caller withdrew it ([`Sled::withdraw`]): nobody waits for the answer any more (denied).
    Withdrawn,
    /// Its frame would be larger than [`SledConfig::max_frame_bytes`] (denied at once).
    TooLarge,
}

impl Cause {
    /// The cause's word, for answers to agents and logs: `gateway`, `timeout`, `connection_lost`,
    /// `queue_full`, `duplicate_id`, `invalid_id`, `no_gateway`, `shutdown`, `withdrawn`, `too_large`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::Response => "gateway",
            Cause::Timeout => "timeout",
            Cause::ConnectionLost => "connection_lost",
            Cause::QueueFull => "queue_full",
            Cause::DuplicateId => "duplicate_id",
            Cause::InvalidId => "invalid_id",
            Cause::Disabled => "no_gateway",
            Cause::Shutdown => "shutdown",
            Cause::Withdrawn => "withdrawn",
            Cause::TooLarge => "too_large",
        }
    }

    /// A sentence for a person or an agent: why the request ended as it did.
    pub const fn describe(self) -> &'static str {
        match self {
            Cause::Response => "the gateway decided",
            Cause::Timeout => "no decision came before the permission timeout",
            Cause::ConnectionLost => "the connection to the gateway was lost before a decision came",
            Cause::QueueFull => "too many permission requests are pending on this sled",
            Cause::DuplicateId => "a request with the same id is already pending",
            Cause::InvalidId => "the request id is empty",
            Cause::Disabled => "no gateway is configured on this sled",
            Cause::Shutdown => "the sled is shutting down",
            Cause::Withdrawn => "the request was withdrawn",
            Cause::TooLarge => "the request is larger than the uplink carries",
        }
    }
}

impl core::fmt::Display for Cause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call to make to the local MCP endpoint, with what the core already read of its body, so that the
/// adapter need not parse it again.
#[derive(Clone, Debug)]
pub struct McpCall {
    /// Names the call in [`Sled::handle_mcp_reply`].
    pub call: McpCallId,
    /// The JSON-RPC text to `POST`, exactly as the gateway sent it.
    pub body: String,
    /// The gateway-side client session, when the gateway named one.
    pub session: Option<String>,
    /// The message's JSON-RPC `id` (a string or a number); `None` for a notification.
    pub jsonrpc_id: Option<Box<RawValue>>,
    /// True for an `initialize` request: it starts a new local session.
    pub is_initialize: bool,
}

impl PartialEq for McpCall {
    /// Ids compare by their JSON text.
    fn eq(&self, other: &McpCall) -> bool {
        (self.call, &self.body, &self.session, self.is_initialize)
            == (other.call, &other.body, &other.session, other.is_initialize)
            && self.jsonrpc_id.as_deref().map(RawValue::get) == other.jsonrpc_id.as_deref().map(RawValue::get)
    }
}

impl Eq for McpCall {}

/// A standalone stream to open on the local MCP endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpListen {
    /// Names the stream in [`Sled::handle_mcp_message`] and [`Sled::handle_mcp_reply`].
    pub call: McpCallId,
    /// The gateway-side session whose local session to listen on.
    pub session: Option<String>,
}

/// Something that happened, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The link changed state.
    Link(LinkState),
    /// A frame was received and ignored.
    FrameIgnored(Ignored),
}

/// The state of the link to the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No gateway configured.
    Disabled,
    /// A connection attempt is under way.
    Connecting {
        /// The attempt.
        conn: ConnId,
        /// Failed attempts since the back-off was last reset.
        attempt: u32,
    },
    /// Connected and identified.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// Waiting before the next attempt.
    BackingOff {
        /// How long.
        delay: Duration,
        /// Why the previous connection or attempt ended.
        reason: LossReason,
    },
    /// Shut down; terminal.
    Closed,
}

/// Why a connection or connection attempt ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LossReason {
    /// The attempt failed.
    ConnectFailed,
    /// The gateway refused the token.
    Unauthorized,
    /// The attempt took longer than the connect timeout.
    ConnectTimeout,
    /// The connection ended (closed by the gateway, reset, or a send failed).
    Disconnected,
    /// Nothing arrived for the idle timeout: the gateway is dead or the link half-open.
    IdleTimeout,
    /// The gateway sent a message over the adapter's size limit; the connection was closed with 1009.
    MessageTooBig,
}

impl LossReason {
    /// The reason's word, for metrics: `connect_failed`, `unauthorized`, `connect_timeout`, `disconnected`,
    /// `idle_timeout`, `message_too_big`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LossReason::ConnectFailed => "connect_failed",
            LossReason::Unauthorized => "unauthorized",
            LossReason::ConnectTimeout => "connect_timeout",
            LossReason::Disconnected => "disconnected",
            LossReason::IdleTimeout => "idle_timeout",
            LossReason::MessageTooBig => "message_too_big",
        }
    }

    /// A few words for a person (logs): why the connection or the attempt ended.
    pub const fn describe(self) -> &'static str {
        match self {
            LossReason::ConnectFailed => "the connection attempt failed",
            LossReason::Unauthorized => "the gateway refused the token",
            LossReason::ConnectTimeout => "the connection attempt timed out",
            LossReason::Disconnected => "the connection ended",
            LossReason::IdleTimeout => "nothing came from the gateway for the idle timeout",
            LossReason::MessageTooBig => "the gateway sent a message over the size limit",
        }
    }
}

/// Why a received frame was ignored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Not a JSON envelope.
    Malformed,
    /// A `type` the sled does not know.
    UnknownType,
    /// A `perm_response` matching no request sent on this connection.
    UnmatchedResponse,
    /// An `mcp_request` whose `req_id` is already in flight: answered at once with an error; the first keeps
    /// the id.
    DuplicateExchange,
    /// An `mcp_cancel` naming no exchange in flight (it may have just ended).
    UnmatchedCancel,

    /// A binary frame.
    Binary,
}

/// Counters since the machine was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connection attempts started.
    pub connects: u64,
    /// Connections established.
    pub connections: u64,
    /// Text frames received on the live connection.
    pub frames_received: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Received frames that were not JSON envelopes.
    pub malformed_frames: u64,
    /// Received frames of an unknown type.
    pub unknown_frames: u64,
    /// `perm_response`s that matched nothing.
    pub unmatched_responses: u64,
    /// Binary frames received.
    pub binary_frames: u64,
    /// Inputs that named a connection which is no longer the live one.
    pub stale_inputs: u64,
    /// Local MCP replies for calls that were already answered or cancelled.
    pub late_mcp_replies: u64,
    /// `mcp_request`s answered at once with an error (no body, invalid JSON, too many calls).
    pub mcp_rejected: u64,
    /// Local MCP answers too large for a frame, answered with an error instead.
    pub mcp_too_large: u64,
    /// `mcp_request`s that waited for a free call slot.
    pub mcp_waited: u64,
    /// Messages from the local server relayed as `mcp_message` frames.
    pub mcp_messages: u64,
    /// Messages from the local server not relayed: the exchange was not a stream, or the message would not
    /// fit in a frame (a request among them is answered with an error).
    pub mcp_messages_dropped: u64,
    /// Exchanges the gateway cancelled.
    pub mcp_cancelled: u64,
}

// ── The machine ──────────────────────────────────────────────────────────────────────────────────────────

#[derive(Clone, Debug)]
enum Link {
    Disabled,
    Connecting { conn: ConnId, deadline: Instant },
    Connected { conn: ConnId, since: Instant, last_rx: Instant, next_heartbeat: Instant },
    BackingOff { until: Instant, delay: Duration, reason: LossReason },
    Closed,
}

/// Where a pending permission request is. A request sent on a connection that ends is denied, never sent
/// again, so what it asks is kept only until it is sent.
#[derive(Clone, Debug)]
enum Stage {
    Queued { tool_name: String, tool_input: Box<RawValue> },
    Sent(ConnId),
}

impl Stage {
    /// The connection it was sent on; `None` while queued.
    fn sent_on(&self) -> Option<ConnId> {
        match self {
            Stage::Sent(conn) => Some(*conn),
            Stage::Queued { .. } => None,
        }
    }
}

/// One `mcp_request` in flight: waiting for a slot, then calling.
#[derive(Clone, Debug)]
struct Call {
    req_id: String,
    jsonrpc_id: Option<Box<RawValue>>,
    session: Option<String>,
    /// The gateway takes the exchange as a stream.
    stream: bool,
    /// An `initialize`: never cancelled upstream (the MCP specification forbids it).
    is_initialize: bool,
    /// While it waits for a free slot: what to call then. `None` once started.
    waiting: Option<Box<McpCall>>,
}

/// One standalone stream (`mcp_listen`) in flight.
#[derive(Clone, Debug)]
struct Listen {
    req_id: String,
    session: Option<String>,
}

/// The sled's side of the uplink. See the [module](self) and [crate] docs.
#[derive(Clone, Debug)]
pub struct Sled {
    cfg: SledConfig,
    /// The latest `now` seen: time never runs backwards inside the machine.
    now: Instant,
    link: Link,
    backoff: Backoff,
    identity_text: String,
    next_conn: u64,
    /// The prefix of the wire ids the machine mints, and the last number used.
    id_prefix: String,
    next_id: u64,
    /// Pending permission requests: by key and by wire id, in arrival (and deadline) order.
    perms: PendingTable<PermKey, Stage>,
    /// `mcp_request`s in flight (calling or waiting), by their `req_id` too, in arrival (and deadline) order.
    calls: PendingTable<McpCallId, Call>,
    /// Calls started and not ended: at most `max_mcp_calls`.
    running: usize,
    /// Calls waiting for a slot, in arrival order, and the bytes of their bodies.
    waiting: VecDeque<McpCallId>,
    waiting_bytes: usize,
    /// Standalone streams open, by their `req_id` too. No deadline.
    streams: PendingTable<McpCallId, Listen>,
    /// The last [`McpCallId`] given, to calls and streams alike.
    next_call: u64,
    out: VecDeque<Output>,
    stats: Stats,
}

const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

impl Sled {
    /// Creates the machine. Unless disabled, its first output is a [`Output::Connect`].
    pub fn new(config: SledConfig, now: Instant) -> Result<Sled, ConfigError> {
        config.validate()?;
        let mut capabilities: Vec<Cow<'_, str>> = Vec::with_capacity(1 + config.capabilities.len());
        capabilities.push(Cow::Borrowed(wire::kind::PERM_CANCEL));
        capabilities.push(Cow::Borrowed(wire::MCP_STREAM_CAPABILITY));
        capabilities.extend(config.capabilities.iter().map(|c| Cow::Borrowed(c.as_str())));
        let identity_text = SledFrame::Identity(Identity {
            project: Cow::Borrowed(&config.project),
            protocol: Some(wire::PROTOCOL_VERSION),
            sled_version: config.sled_version.as_deref().map(Cow::Borrowed),
            capabilities,
            permission_timeout_ms: Some(u64::try_from(config.permission_timeout.as_millis()).unwrap_or(u64::MAX)),
        })
        .encode();
        let backoff = Backoff::new(
            config.backoff_initial,
            config.backoff_max,
            config.backoff_multiplier,
            config.backoff_jitter,
            config.seed,
        );
        // Its own stream of the seed (the back-off's first draw is not reused), so ids do not reveal delays.
        let id_prefix = hex8(SplitMix64::new(config.seed ^ 0x6964_735f_7072_6566).next_u64() as u32);
        let perms = PendingTable::new(Some(config.permission_timeout));
        let calls = PendingTable::new(Some(config.mcp_timeout));
        let streams = PendingTable::new(None);
        let mut sled = Sled {
            link: if config.enabled { Link::Closed } else { Link::Disabled },
            cfg: config,
            now,
            backoff,
            identity_text,
            next_conn: 0,
            id_prefix,
            next_id: 0,
            perms,
            calls,
            running: 0,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            streams,
            next_call: 0,
            out: VecDeque::new(),
            stats: Stats::default(),
        };
        if sled.cfg.enabled {
            sled.start_connect();
        } else {
            sled.emit_link();
        }
        Ok(sled)
    }

    // ── Getters ──

    /// The configuration the machine was built with.
    pub fn config(&self) -> &SledConfig {
        &self.cfg
    }

    /// The link's current state.
    pub fn link_state(&self) -> LinkState {
        match self.link {
            Link::Disabled => LinkState::Disabled,
            Link::Connecting { conn, .. } => LinkState::Connecting { conn, attempt: self.backoff.attempt() },
            Link::Connected { conn, .. } => LinkState::Connected { conn },
            Link::BackingOff { delay, reason, .. } => LinkState::BackingOff { delay, reason },
            Link::Closed => LinkState::Closed,
        }
    }

    /// The live connection, if any.
    pub fn connection(&self) -> Option<ConnId> {
        match self.link {
            Link::Connected { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Permission requests not yet decided (queued or awaiting a response).
    pub fn pending_permissions(&self) -> usize {
        self.perms.len()
    }

    /// Local MCP calls in flight (started, not ended).
    pub fn mcp_calls_in_flight(&self) -> usize {
        self.running
    }

    /// `mcp_request`s waiting for a free call slot.
    pub fn mcp_calls_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Standalone streams open.
    pub fn mcp_streams_open(&self) -> usize {
        self.streams.len()
    }

    // ── Outputs ──

    /// The next thing to do, or `None` when there is nothing more until the next input. Drain it after every
    /// input, then ask [`Sled::poll_timeout`].
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call [`Sled::handle_timeout`] next, or `None` when no timer is armed. Calling earlier is
    /// harmless; calling later delays heartbeats and timeouts.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = match self.link {
            Link::Connecting { deadline, .. } => Some(deadline),
            Link::Connected { last_rx, next_heartbeat, .. } => {
                Some(next_heartbeat.min(last_rx + self.cfg.idle_timeout))
            }
            Link::BackingOff { until, .. } => Some(until),
            Link::Disabled | Link::Closed => None,
        };
        earliest(earliest(link, self.perms.poll_timeout()), self.calls.poll_timeout())
    }

    // ── Inputs ──

    /// Fires every timer due at `now`. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The WebSocket `conn` (from [`Output::Connect`]) is open. Sends `identity`, then every queued request.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        match self.link {
            Link::Connecting { conn: c, .. } if c == conn => {}
            Link::Connected { conn: c, .. } if c == conn => {
                // Reported twice: it is already the live connection.
                self.stats.stale_inputs += 1;
                return;
            }
            _ => {
                // Not the attempt we are waiting for: a connection we no longer want.
                self.stats.stale_inputs += 1;
                self.out.push_back(Output::Close { conn, code: CLOSE_NORMAL, reason: "stale connection" });
                return;
            }
        }
        let now = self.now;
        self.link =
            Link::Connected { conn, since: now, last_rx: now, next_heartbeat: now + self.cfg.heartbeat_interval };
        self.stats.connections += 1;
        self.emit_link();
        self.send(conn, self.identity_text.clone());
        let queued: Vec<PermKey> =
            self.perms.iter().filter(|(_, p)| p.value.sent_on().is_none()).map(|(k, _)| k).collect();
        for key in queued {
            self.send_perm_request(key, conn);
        }
    }

    /// The attempt `conn` failed.
    pub fn handle_connect_failed(&mut self, now: Instant, conn: ConnId, error: ConnectError) {
        self.advance(now);
        match self.link {
            Link::Connecting { conn: c, .. } if c == conn => {
                let reason = match error {
                    ConnectError::Unauthorized => LossReason::Unauthorized,
                    ConnectError::Other => LossReason::ConnectFailed,
                };
                self.lose_link(reason, None);
            }
            _ => self.stats.stale_inputs += 1,
        }
    }

    /// The connection `conn` ended (closed by the peer, reset, a read or a send failed). Denies every request
    /// in flight on it and schedules a reconnection.
    pub fn handle_disconnected(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        match self.link {
            Link::Connected { conn: c, .. } if c == conn => self.lose_link(LossReason::Disconnected, None),
            Link::Connecting { conn: c, .. } if c == conn => self.lose_link(LossReason::ConnectFailed, None),
            _ => self.stats.stale_inputs += 1,
        }
    }

    /// The gateway sent a message on `conn` over the adapter's size limit (the adapter detects it, as the
    /// WebSocket library refuses to read it). The connection is closed with 1009 "message too big", what was
    /// in flight on it is denied, and the machine reconnects after its back-off.
    pub fn handle_too_big(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        match self.link {
            Link::Connected { conn: c, .. } if c == conn => {
                self.lose_link(LossReason::MessageTooBig, Some((conn, CLOSE_MESSAGE_TOO_BIG, "message too big")))
            }
            _ => self.stats.stale_inputs += 1,
        }
    }

    /// A message arrived on `conn`. Anything at all counts as proof that the gateway is alive.
    pub fn handle_received(&mut self, now: Instant, conn: ConnId, message: Received<'_>) {
        self.advance(now);
        let now = self.now;
        match &mut self.link {
            Link::Connected { conn: c, last_rx, .. } if *c == conn => *last_rx = now,
            _ => {
                self.stats.stale_inputs += 1;
                return;
            }
        }
        let text = match message {
            Received::Text(text) => text,
            Received::Binary(_) => {
                self.stats.binary_frames += 1;
                self.ignored(Ignored::Binary);
                return;
            }
            Received::Ping | Received::Pong => return,
        };
        self.stats.frames_received += 1;
        match GatewayFrame::decode(text) {
            Ok(GatewayFrame::PermResponse { req_id, decision, message }) => {
                self.on_perm_response(conn, &req_id, decision, message)
            }
            Ok(GatewayFrame::McpRequest { req_id, body, session, stream }) => {
                self.on_mcp_request(req_id, body, session, stream)
            }
            Ok(GatewayFrame::McpCancel { req_id, reason }) => self.on_mcp_cancel(&req_id, reason.as_deref()),
            Ok(GatewayFrame::McpListen { req_id, session }) => self.on_mcp_listen(req_id, session),
            Ok(GatewayFrame::McpSessionEnd { session }) => self.on_mcp_session_end(session.into_owned()),
            Err(wire::DecodeError::UnknownType) => {
                self.stats.unknown_frames += 1;
                self.ignored(Ignored::UnknownType);
            }
            Err(wire::DecodeError::Malformed | wire::DecodeError::BadPayload) => {
                self.stats.malformed_frames += 1;
                self.ignored(Ignored::Malformed);
            }
        }
    }

    /// The local MCP endpoint sent `message` within the call or stream `call`, before its end: a notification
    /// or a request from the server (or a response on a standalone stream). Relayed as an `mcp_message` when
    /// the gateway takes the exchange as a stream; otherwise a request from the server is answered at once
    /// with an error ([`Output::NotifyMcp`]), so that the server does not wait for an answer that cannot
    /// come, and anything else is dropped. Messages for a call already ended are dropped.
    pub fn handle_mcp_message(&mut self, now: Instant, call: McpCallId, message: &RawValue) {
        self.advance(now);
        let (req_id, session, stream) = match (self.calls.get(call), self.streams.get(call)) {
            (Some(Pending { value: c, .. }), _) if c.waiting.is_none() => (&c.req_id, &c.session, c.stream),
            (_, Some(Pending { value: l, .. })) => (&l.req_id, &l.session, true),
            _ => {
                self.stats.late_mcp_replies += 1;
                return;
            }
        };
        let fits = wire::frame_len(wire::kind::MCP_MESSAGE, req_id, message.get().len()) <= self.cfg.max_frame_bytes;
        if let (true, true, Some(conn)) = (stream, fits, self.connection()) {
            let text = SledFrame::McpMessage { req_id: Cow::Borrowed(req_id), payload: message }.encode();
            self.stats.mcp_messages += 1;
            return self.send(conn, text);
        }
        self.stats.mcp_messages_dropped += 1;
        let probe = jsonrpc::probe(message.get());
        if let (true, BodyId::Id(id)) = (probe.has_method, probe.id) {
            let why = if stream {
                "the request from the MCP server is larger than the uplink's frame limit"
            } else {
                "the uplink's gateway does not relay requests from the MCP server"
            };
            let body = String::from(jsonrpc::error_response(Some(id), jsonrpc::METHOD_NOT_FOUND, why).get());
            let session = session.clone();
            self.out.push_back(Output::NotifyMcp { session, body });
        }
    }

    /// The local MCP endpoint accepted the standalone stream `call` (its `GET` was answered with an event
    /// stream): the gateway is told with an `mcp_message` whose payload is `null`, so that it can answer its
    /// own caller before any message comes. Ignored for anything but an open stream.
    pub fn handle_mcp_opened(&mut self, now: Instant, call: McpCallId) {
        self.advance(now);
        let (Some(Pending { value: l, .. }), Some(conn)) = (self.streams.get(call), self.connection()) else {
            return;
        };
        let text = SledFrame::McpMessage { req_id: Cow::Borrowed(&l.req_id), payload: wire::json_null() }.encode();
        self.send(conn, text);
    }

    /// The local MCP endpoint answered `call`, or the stream `call` ended. Sends the `mcp_response`, unless
    /// the call was already answered (timed out), cancelled, or its connection died, in which case the reply
    /// is dropped.
    pub fn handle_mcp_reply(&mut self, now: Instant, call: McpCallId, reply: McpReply) {
        self.advance(now);
        if let Some(Pending { value: l, .. }) = self.streams.remove(call) {
            let payload = match reply {
                McpReply::Response(_) | McpReply::NoContent => wire::json_null().to_owned(),
                McpReply::NoStream => jsonrpc::error_response(
                    None,
                    jsonrpc::METHOD_NOT_FOUND,
                    "the local MCP server offers no standalone stream",
                ),
                McpReply::Failed(message) => jsonrpc::error_response(
                    None,
                    jsonrpc::INTERNAL_ERROR,
                    &format!("local MCP stream failed: {message}"),
                ),
                McpReply::SessionLost => jsonrpc::error_response(
                    None,
                    jsonrpc::INTERNAL_ERROR,
                    &format!("local MCP stream failed: {SESSION_LOST}"),
                ),
            };
            return self.send_mcp_response(&l.req_id, &payload);
        }
        let started = self.calls.get(call).is_some_and(|p| p.value.waiting.is_none());
        let Some(c) = started.then(|| self.take_call(call)).flatten() else {
            self.stats.late_mcp_replies += 1;
            return;
        };
        self.start_waiting();
        let payload = match reply {
            McpReply::Response(raw) => raw,
            McpReply::NoContent => wire::json_null().to_owned(),
            McpReply::NoStream => jsonrpc::error_response(
                c.jsonrpc_id.as_deref(),
                jsonrpc::INTERNAL_ERROR,
                "local MCP call failed: local MCP endpoint answered HTTP 405 Method Not Allowed",
            ),
            McpReply::Failed(message) => jsonrpc::error_response(
                c.jsonrpc_id.as_deref(),
                jsonrpc::INTERNAL_ERROR,
                &format!("local MCP call failed: {message}"),
            ),
            McpReply::SessionLost => {
                jsonrpc::error_response(c.jsonrpc_id.as_deref(), jsonrpc::SESSION_NOT_FOUND, SESSION_LOST)
            }
        };
        if !self.fits(&c.req_id, &payload) {
            // The gateway would close the link over it: the caller gets an error with its id instead.
            self.stats.mcp_too_large += 1;
            let message = format!(
                "the local MCP answer ({} bytes) is larger than the uplink's frame limit ({} bytes)",
                payload.get().len(),
                self.cfg.max_frame_bytes
            );
            let error = jsonrpc::error_response(c.jsonrpc_id.as_deref(), jsonrpc::INTERNAL_ERROR, &message);
            return self.send_mcp_response(&c.req_id, &error);
        }
        self.send_mcp_response(&c.req_id, &payload);
    }

    // ── Commands ──

    /// Asks the gateway to decide whether the tool call `tool_name(tool_input)` may run, under a wire id the
    /// machine mints: `PREFIX-N`, where `PREFIX` is eight hex digits drawn from [`SledConfig::seed`] and `N`
    /// counts up, so ids never repeat within a machine and differ between machines seeded differently.
    ///
    /// Returns the request's key; exactly one [`Output::Decided`] with that key follows, possibly at once.
    pub fn request_permission(&mut self, now: Instant, tool_name: String, tool_input: Box<RawValue>) -> PermKey {
        self.next_id += 1;
        let id = request_id(&self.id_prefix, self.next_id);
        self.request_permission_with_id(now, id, tool_name, tool_input)
    }

    /// As [`Sled::request_permission`], under the caller's own wire id: unique among pending requests, and
    /// best never reused (a gateway may confuse a late answer to an old request with a new one of the same
    /// id). An empty id, or one already pending, is denied at once.
    pub fn request_permission_with_id(
        &mut self,
        now: Instant,
        id: String,
        tool_name: String,
        tool_input: Box<RawValue>,
    ) -> PermKey {
        self.advance(now);
        let key = self.perms.mint();
        let refused = match self.link {
            Link::Disabled => Some(Cause::Disabled),
            Link::Closed => Some(Cause::Shutdown),
            _ if id.is_empty() => Some(Cause::InvalidId),
            _ if self.perms.contains_wire(&id) => Some(Cause::DuplicateId),
            _ if self.perms.len() >= self.cfg.max_pending_permissions => Some(Cause::QueueFull),
            _ if wire::frame_len(
                wire::kind::PERM_REQUEST,
                &id,
                wire::perm_request_payload_len(&tool_name, tool_input.get()),
            ) > self.cfg.max_frame_bytes =>
            {
                Some(Cause::TooLarge)
            }
            _ => None,
        };
        if let Some(cause) = refused {
            self.out.push_back(Output::Decided(Decided { key, id, decision: Decision::Deny, cause, message: None }));
            return key;
        }
        self.perms.insert(key, self.now, id, Stage::Queued { tool_name, tool_input });
        if let Some(conn) = self.connection() {
            self.send_perm_request(key, conn);
        }
        key
    }

    /// Withdraws the pending request `key`: whoever asked is gone (an HTTP client hung up, a tool call was
    /// cancelled, a future was dropped). If it was sent on the live connection, a `perm_cancel` (reason
    /// `withdrawn`) tells the gateway, which stops listing it; it is denied with [`Cause::Withdrawn`]. A key
    /// already decided is left alone (its one decision has been emitted).
    pub fn withdraw(&mut self, now: Instant, key: PermKey) {
        self.advance(now);
        let Some(perm) = self.perms.remove(key) else { return };
        if let (Some(sent_on), Some(live)) = (perm.value.sent_on(), self.connection())
            && sent_on == live
        {
            let text = SledFrame::PermCancel { req_id: Cow::Borrowed(&perm.wire), reason: Cow::Borrowed("withdrawn") }
                .encode();
            self.send(live, text);
        }
        self.deny(key, perm.wire, Cause::Withdrawn);
    }

    /// Shuts down for good: denies every pending request (withdrawing those sent with `perm_cancel`), answers
    /// every MCP call in flight with an error, closes the connection normally, and never reconnects.
    pub fn shutdown(&mut self, now: Instant) {
        self.advance(now);
        match self.link {
            Link::Closed => return,
            Link::Connected { conn, .. } => {
                self.deny_all(Cause::Shutdown, Some(conn));
                let answers: Vec<(String, Box<RawValue>)> = self
                    .calls
                    .iter()
                    .map(|(_, p)| {
                        let c = &p.value;
                        let e = jsonrpc::error_response(
                            c.jsonrpc_id.as_deref(),
                            jsonrpc::INTERNAL_ERROR,
                            "sled is shutting down",
                        );
                        (c.req_id.clone(), e)
                    })
                    .chain(self.streams.iter().map(|(_, p)| (p.value.req_id.clone(), wire::json_null().to_owned())))
                    .collect();
                for (req_id, payload) in answers {
                    self.send_mcp_response(&req_id, &payload);
                }
                self.out.push_back(Output::Close { conn, code: CLOSE_NORMAL, reason: "shutdown" });
            }
            Link::Connecting { conn, .. } => {
                self.deny_all(Cause::Shutdown, None);
                self.out.push_back(Output::Close { conn, code: CLOSE_NORMAL, reason: "shutdown" });
            }
            Link::BackingOff { .. } | Link::Disabled => self.deny_all(Cause::Shutdown, None),
        }
        self.cancel_calls();
        self.link = Link::Closed;
        self.emit_link();
    }

    // ── Internals ──

    /// Moves the clock to `now` (never backwards) and fires what is due.
    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        // Each transition sets its next deadline after `now` (or exactly at `now`, for a zero back-off, which
        // the next turn fires), so this ends within a few turns.
        while self.fire_link_timer(now) {}
        while let Some((key, perm)) = self.perms.pop_expired(now) {
            if let (Some(sent_on), Some(live)) = (perm.value.sent_on(), self.connection()) {
                if sent_on == live {
                    let text =
                        SledFrame::PermCancel { req_id: Cow::Borrowed(&perm.wire), reason: Cow::Borrowed("timeout") }
                            .encode();
                    self.send(live, text);
                }
            }
            self.deny(key, perm.wire, Cause::Timeout);
        }
        while let Some((call, Pending { value: c, .. })) = self.calls.pop_expired(now) {
            self.released(call, &c);
            let message = format!("local MCP call timed out after {} ms", self.cfg.mcp_timeout.as_millis());
            let payload = jsonrpc::error_response(c.jsonrpc_id.as_deref(), jsonrpc::INTERNAL_ERROR, &message);
            self.send_mcp_response(&c.req_id, &payload);
            self.abandon(call, &c, "timeout");
        }
        self.start_waiting();
    }

    /// Fires the link's timer if it is due; true if the state changed and may be due again.
    fn fire_link_timer(&mut self, now: Instant) -> bool {
        match self.link {
            Link::Connecting { conn, deadline } if deadline <= now => {
                self.lose_link(LossReason::ConnectTimeout, Some((conn, CLOSE_GOING_AWAY, "connect timeout")));
                true
            }
            Link::BackingOff { until, .. } if until <= now => {
                self.start_connect();
                true
            }
            Link::Connected { conn, last_rx, .. } if last_rx + self.cfg.idle_timeout <= now => {
                self.lose_link(LossReason::IdleTimeout, Some((conn, CLOSE_GOING_AWAY, "idle timeout")));
                true
            }
            Link::Connected { conn, next_heartbeat, .. } if next_heartbeat <= now => {
                let mut next = next_heartbeat + self.cfg.heartbeat_interval;
                if next <= now {
                    // Called late by a whole interval or more: do not send a burst.
                    next = now + self.cfg.heartbeat_interval;
                }
                if let Link::Connected { next_heartbeat, .. } = &mut self.link {
                    *next_heartbeat = next;
                }
                self.send(conn, SledFrame::Heartbeat.encode());
                self.out.push_back(Output::Ping { conn });
                false
            }
            _ => false,
        }
    }

    fn start_connect(&mut self) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.stats.connects += 1;
        self.link = Link::Connecting { conn, deadline: self.now + self.cfg.connect_timeout };
        self.emit_link();
        self.out.push_back(Output::Connect { conn });
    }

    /// The connection or attempt is gone: fail-close what was in flight, then back off.
    fn lose_link(&mut self, reason: LossReason, close: Option<(ConnId, u16, &'static str)>) {
        if let Some((conn, code, why)) = close {
            self.out.push_back(Output::Close { conn, code, reason: why });
        }
        if let Link::Connected { conn, since, .. } = self.link {
            if self.now.saturating_duration_since(since) >= self.cfg.stability_window {
                self.backoff.reset();
            }
            let lost: Vec<PermKey> =
                self.perms.iter().filter(|(_, p)| p.value.sent_on() == Some(conn)).map(|(k, _)| k).collect();
            for key in lost {
                if let Some(perm) = self.perms.remove(key) {
                    self.deny(key, perm.wire, Cause::ConnectionLost);
                }
            }
            self.cancel_calls();
        }
        if reason == LossReason::Unauthorized {
            self.backoff.saturate();
        }
        let delay = self.backoff.next_delay();
        self.link = Link::BackingOff { until: self.now + delay, delay, reason };
        self.emit_link();
        if delay.is_zero() {
            // Full jitter can draw zero: retry now rather than leave a due timer for a later call.
            self.start_connect();
        }
    }

    /// Denies every pending request; those sent on `live` are withdrawn with `perm_cancel` first.
    fn deny_all(&mut self, cause: Cause, live: Option<ConnId>) {
        for (key, perm) in self.perms.drain() {
            if let Some(conn) = live.filter(|c| perm.value.sent_on() == Some(*c)) {
                let text =
                    SledFrame::PermCancel { req_id: Cow::Borrowed(&perm.wire), reason: Cow::Borrowed("shutdown") }
                        .encode();
                self.send(conn, text);
            }
            self.deny(key, perm.wire, cause);
        }
    }

    /// Abandons every call and stream: the connection they answer on is gone.
    fn cancel_calls(&mut self) {
        for (call, Pending { value: c, .. }) in self.calls.drain() {
            self.abandon(call, &c, "the uplink to the gateway was lost");
        }
        for (call, _) in self.streams.drain() {
            self.out.push_back(Output::CancelMcp { call });
        }
        self.running = 0;
        self.waiting.clear();
        self.waiting_bytes = 0;
    }

    /// `c` (already out of the table) no longer holds a slot or a place in the queue.
    fn released(&mut self, call: McpCallId, c: &Call) {
        match &c.waiting {
            Some(w) => {
                self.waiting_bytes -= w.body.len();
                self.waiting.retain(|k| *k != call);
            }
            None => self.running -= 1,
        }
    }

    /// Takes the call `call` out of the table, releasing its slot or its place in the queue.
    fn take_call(&mut self, call: McpCallId) -> Option<Call> {
        let Pending { value: c, .. } = self.calls.remove(call)?;
        self.released(call, &c);
        Some(c)
    }

    /// Stops `c` (already released) upstream: a started call is abandoned, and the local server is told with
    /// `notifications/cancelled` unless it is an `initialize` or a notification. A waiting one was never sent.
    fn abandon(&mut self, call: McpCallId, c: &Call, reason: &str) {
        if c.waiting.is_some() {
            return;
        }
        self.out.push_back(Output::CancelMcp { call });
        if let (Some(id), false) = (&c.jsonrpc_id, c.is_initialize) {
            let body = jsonrpc::cancelled(id, reason);
            self.out.push_back(Output::NotifyMcp { session: c.session.clone(), body });
        }
    }

    /// Starts waiting calls, oldest first, while slots are free.
    fn start_waiting(&mut self) {
        while self.running < self.cfg.max_mcp_calls {
            let Some(call) = self.waiting.pop_front() else { return };
            let Some(c) = self.calls.get_mut(call) else { continue };
            let Some(next) = c.value.waiting.take() else { continue };
            self.waiting_bytes -= next.body.len();
            self.running += 1;
            self.out.push_back(Output::CallMcp(*next));
        }
    }

    fn on_perm_response(&mut self, conn: ConnId, req_id: &str, decision: Decision, message: Option<Cow<'_, str>>) {
        // Every pending request is sent on the live connection as soon as there is one, so the condition
        // always holds; if that ever broke, the response would be ignored (never approving a request on a
        // connection it was not sent on) and the request would stay pending.
        match self.perms.take_by_wire_if(req_id, |stage| stage.sent_on() == Some(conn)) {
            Some((key, perm)) => {
                let message = message.map(|m| String::from(wire::clip(&m, wire::MAX_MESSAGE_BYTES)));
                self.out.push_back(Output::Decided(Decided {
                    key,
                    id: perm.wire,
                    decision,
                    cause: Cause::Response,
                    message,
                }));
            }
            None => {
                self.stats.unmatched_responses += 1;
                self.ignored(Ignored::UnmatchedResponse);
            }
        }
    }

    fn on_mcp_request(
        &mut self,
        req_id: Cow<'_, str>,
        body: Option<Cow<'_, str>>,
        session: Option<Cow<'_, str>>,
        stream: bool,
    ) {
        let reject = |sled: &mut Sled, id: Option<&RawValue>, code: i32, message: &str| {
            sled.stats.mcp_rejected += 1;
            let payload = jsonrpc::error_response(id, code, message);
            sled.send_mcp_response(&req_id, &payload);
        };
        let Some(body) = body.filter(|b| !b.is_empty()) else {
            return reject(self, None, jsonrpc::INVALID_REQUEST, "mcp_request payload has no string `body`");
        };
        let probe = jsonrpc::probe(&body);
        let jsonrpc_id = match probe.id {
            BodyId::NotJson => {
                return reject(self, None, jsonrpc::PARSE_ERROR, "mcp_request body is not valid JSON");
            }
            BodyId::Id(id) => Some(id),
            BodyId::NoId => None,
        };
        if self.calls.contains_wire(&req_id) || self.streams.contains_wire(&req_id) {
            // Answered at once, so that every `mcp_request` still gets its one answer; the one in flight
            // keeps the id (and is the one an `mcp_cancel` names).
            self.ignored(Ignored::DuplicateExchange);
            let message = "an MCP exchange with this req_id is already in flight";
            return reject(self, jsonrpc_id, jsonrpc::INVALID_REQUEST, message);
        }
        let free = self.running < self.cfg.max_mcp_calls && self.waiting.is_empty();
        if !free
            && (self.waiting.len() >= self.cfg.max_mcp_waiting
                || self.waiting_bytes + body.len() > self.cfg.max_mcp_waiting_bytes)
        {
            let message =
                format!("sled busy: {} local MCP calls in flight and {} waiting", self.running, self.waiting.len());
            return reject(self, jsonrpc_id, jsonrpc::INTERNAL_ERROR, &message);
        }
        self.next_call += 1;
        let call = McpCallId(self.next_call);
        let jsonrpc_id: Option<Box<RawValue>> = jsonrpc_id.map(ToOwned::to_owned);
        let session = session.map(Cow::into_owned);
        let is_initialize = probe.is_initialize;
        let mcp = McpCall {
            call,
            body: body.into_owned(),
            session: session.clone(),
            jsonrpc_id: jsonrpc_id.clone(),
            is_initialize,
        };
        let mut c = Call { req_id: req_id.into_owned(), jsonrpc_id, session, stream, is_initialize, waiting: None };
        if free {
            self.running += 1;
            self.out.push_back(Output::CallMcp(mcp));
        } else {
            self.stats.mcp_waited += 1;
            self.waiting_bytes += mcp.body.len();
            self.waiting.push_back(call);
            c.waiting = Some(Box::new(mcp));
        }
        let wire = c.req_id.clone();
        self.calls.insert(call, self.now, wire, c);
    }

    fn on_mcp_listen(&mut self, req_id: Cow<'_, str>, session: Option<Cow<'_, str>>) {
        let duplicate = self.calls.contains_wire(&req_id) || self.streams.contains_wire(&req_id);
        if duplicate || self.streams.len() >= self.cfg.max_mcp_streams {
            self.stats.mcp_rejected += 1;
            let message = if duplicate {
                String::from("an MCP exchange with this req_id is already in flight")
            } else {
                format!("sled busy: {} standalone MCP streams already open", self.streams.len())
            };
            let payload = jsonrpc::error_response(None, jsonrpc::INTERNAL_ERROR, &message);
            return self.send_mcp_response(&req_id, &payload);
        }
        self.next_call += 1;
        let call = McpCallId(self.next_call);
        let session = session.map(Cow::into_owned);
        self.out.push_back(Output::ListenMcp(McpListen { call, session: session.clone() }));
        let req_id = req_id.into_owned();
        self.streams.insert(call, self.now, req_id.clone(), Listen { req_id, session });
    }

    fn on_mcp_cancel(&mut self, req_id: &str, reason: Option<&str>) {
        if let Some((call, Pending { value: c, .. })) = self.calls.take_by_wire_if(req_id, |_| true) {
            self.stats.mcp_cancelled += 1;
            self.released(call, &c);
            self.abandon(call, &c, reason.unwrap_or("the caller went away"));
            return self.start_waiting();
        }
        if let Some((call, _)) = self.streams.take_by_wire_if(req_id, |_| true) {
            self.stats.mcp_cancelled += 1;
            return self.out.push_back(Output::CancelMcp { call });
        }
        self.ignored(Ignored::UnmatchedCancel);
    }

    fn on_mcp_session_end(&mut self, session: String) {
        // Its standalone streams end with it; its calls run to their answers (the local server may refuse them).
        let streams: Vec<McpCallId> = self
            .streams
            .iter()
            .filter(|(_, l)| l.value.session.as_deref() == Some(&*session))
            .map(|(k, _)| k)
            .collect();
        for call in streams {
            if let Some(Pending { value: l, .. }) = self.streams.remove(call) {
                self.out.push_back(Output::CancelMcp { call });
                self.send_mcp_response(&l.req_id, wire::json_null());
            }
        }
        self.out.push_back(Output::EndMcpSession { session });
    }

    fn send_perm_request(&mut self, key: PermKey, conn: ConnId) {
        let Some(perm) = self.perms.get_mut(key) else {
            return;
        };
        // Only queued requests are sent (by the callers' construction); a sent one is left as it is.
        let stage = core::mem::replace(&mut perm.value, Stage::Sent(conn));
        let Stage::Queued { tool_name, tool_input } = stage else {
            perm.value = stage;
            return;
        };
        let text = SledFrame::PermRequest {
            req_id: Cow::Borrowed(&perm.wire),
            tool_name: Cow::Borrowed(&tool_name),
            tool_input: &tool_input,
        }
        .encode();
        self.send(conn, text);
    }

    fn send_mcp_response(&mut self, req_id: &str, payload: &RawValue) {
        if let Some(conn) = self.connection() {
            let text = SledFrame::McpResponse { req_id: Cow::Borrowed(req_id), payload }.encode();
            self.send(conn, text);
        }
    }

    /// Whether an `mcp_response` for `req_id` carrying `payload` fits in a frame.
    fn fits(&self, req_id: &str, payload: &RawValue) -> bool {
        wire::frame_len(wire::kind::MCP_RESPONSE, req_id, payload.get().len()) <= self.cfg.max_frame_bytes
    }

    fn send(&mut self, conn: ConnId, text: String) {
        self.stats.frames_sent += 1;
        self.out.push_back(Output::Send { conn, text });
    }

    /// Denies `key` for `cause` (every end but a `perm_response`).
    fn deny(&mut self, key: PermKey, id: String, cause: Cause) {
        self.out.push_back(Output::Decided(Decided { key, id, decision: Decision::Deny, cause, message: None }));
    }

    fn emit_link(&mut self) {
        let state = self.link_state();
        self.out.push_back(Output::Event(Event::Link(state)));
    }

    fn ignored(&mut self, why: Ignored) {
        self.out.push_back(Output::Event(Event::FrameIgnored(why)));
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `n` as eight lower-case hex digits.
fn hex8(n: u32) -> String {
    (0..8).rev().map(|i| char::from(b"0123456789abcdef"[((n >> (4 * i)) & 0xf) as usize])).collect()
}

/// `PREFIX-N`, the id of the `n`-th request, without the formatting machinery (this is once per request).
fn request_id(prefix: &str, n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut id = String::with_capacity(prefix.len() + 1 + digits.len() - at);
    id.push_str(prefix);
    id.push('-');
    id.extend(digits[at..].iter().map(|&d| char::from(d)));
    id
}

#[cfg(test)]
mod tests {
    use alloc::format;

    #[test]
    fn request_ids_are_the_prefix_and_the_number_in_decimal() {
        for n in [0, 1, 9, 10, 42, 1_000_000, u64::MAX] {
            assert_eq!(super::request_id("0badcafe", n), format!("0badcafe-{n}"));
        }
        for n in [0, 1, 0xabc, 0xdead_beef, u32::MAX] {
            assert_eq!(super::hex8(n), format!("{n:08x}"));
        }
    }
}

//! What a [`Sled`](super::Sled) asks its adapter to do ([`Output`]) and reports ([`Decided`], [`Event`],
//! [`LinkState`], [`Stats`]).

use alloc::boxed::Box;
use alloc::string::String;
use core::time::Duration;

use super::refusal::Refusal;
use crate::ids::{ConnId, McpCallId, PermKey};
use crate::wire::{Decision, RawValue};

/// Something the caller must do or may want to know, drained with [`Sled::poll_output`](crate::sled::Sled::poll_output).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a WebSocket to the gateway; report the outcome with [`Sled::handle_connected`](crate::sled::Sled::handle_connected) or
    /// [`Sled::handle_connect_failed`](crate::sled::Sled::handle_connect_failed) under the same `conn`.
    Connect {
        /// Names this attempt in every later input about it.
        conn: ConnId,
    },
    /// Send a text frame on `conn`. If the send fails, report [`Sled::handle_disconnected`](crate::sled::Sled::handle_disconnected).
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
    /// A permission request is decided. Emitted exactly once per [`Sled::request_permission`](crate::sled::Sled::request_permission) call.
    Decided(Decided),
    /// Call the local MCP endpoint with `body`; report with [`Sled::handle_mcp_reply`](crate::sled::Sled::handle_mcp_reply).
    CallMcp(McpCall),
    /// Open the standalone stream of a local session (`GET`); report each message it brings with
    /// [`Sled::handle_mcp_message`](crate::sled::Sled::handle_mcp_message) and its end with [`Sled::handle_mcp_reply`](crate::sled::Sled::handle_mcp_reply).
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
    /// The key [`Sled::request_permission`](crate::sled::Sled::request_permission) returned.
    pub key: PermKey,
    /// The request's wire id.
    pub id: String,
    /// What was decided. Approvals come only from a `perm_response` on the connection the request was sent on.
    pub decision: Decision,
    /// Why.
    pub cause: Cause,
    /// The person's message for the agent, when the gateway's `perm_response` carried one (at most
    /// [`crate::wire::MAX_MESSAGE_BYTES`]; a longer one is cut at a character boundary). Always `None` for the other
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
    /// The caller withdrew it ([`Sled::withdraw`](crate::sled::Sled::withdraw)): nobody waits for the answer any more (denied).
    Withdrawn,
    /// Its frame would be larger than [`SledConfig::max_frame_bytes`](crate::sled::SledConfig::max_frame_bytes) (denied at once).
    TooLarge,
    /// The gateway refuses this sled ([`Refusal`]): denied when the refusal came, and at once while the link
    /// backs off after it.
    Refused(Refusal),
}

impl Cause {
    /// The cause's word, for answers to agents and logs: `gateway`, `timeout`, `connection_lost`,
    /// `queue_full`, `duplicate_id`, `invalid_id`, `no_gateway`, `shutdown`, `withdrawn`, `too_large`,
    /// `refused`.
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
            Cause::Refused(_) => "refused",
        }
    }

    /// Whether an agent's own dialog may be offered instead of this denial, where its operator asked for
    /// that (`uplink hook --fallback-to-dialog`): only when the link to the gateway was lost before a
    /// decision came. Never after the gateway's decision, a refusal, a timeout, or any local limit: a person
    /// at the gateway may have said no, or may still be deciding.
    pub const fn lost_the_link(self) -> bool {
        matches!(self, Cause::ConnectionLost)
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
            Cause::Refused(refusal) => refusal.describe(),
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
    /// Names the call in [`Sled::handle_mcp_reply`](crate::sled::Sled::handle_mcp_reply).
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
    /// Names the stream in [`Sled::handle_mcp_message`](crate::sled::Sled::handle_mcp_message) and [`Sled::handle_mcp_reply`](crate::sled::Sled::handle_mcp_reply).
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
    /// The gateway's standing toward this sled changed: refused ([`Refusal`]) since the last refusal, until a
    /// connection shows it was accepted (the gateway sent a frame on it, or it lasted
    /// [`SledConfig::stability_window`](crate::sled::SledConfig::stability_window)); `None` once accepted.
    Standing(Option<Refusal>),
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
    /// Connected; `identity` sent (the gateway may still refuse it: [`Event::Standing`]).
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
    /// The gateway refused this sled ([`Refusal`]): at the handshake, or by closing the connection with a
    /// refusal's code.
    Refused(Refusal),
    /// The attempt took longer than the connect timeout.
    ConnectTimeout,
    /// The connection ended (closed by the gateway, reset, or a send failed).
    Disconnected,
    /// Nothing arrived for the idle timeout: the gateway is dead or the link half-open.
    IdleTimeout,
    /// The gateway sent a message over the adapter's size limit; the connection was closed with 1009.
    MessageTooBig,
    /// The gateway closed the connection to restart (1012): the back-off starts afresh (no failure counted).
    GatewayRestarting,
}

impl LossReason {
    /// The reason's word, for metrics: `connect_failed`, `connect_timeout`, `disconnected`, `idle_timeout`,
    /// `message_too_big`, `gateway_restarting`, or the refusal's own ([`Refusal::as_str`]).
    pub const fn as_str(self) -> &'static str {
        match self {
            LossReason::ConnectFailed => "connect_failed",
            LossReason::Refused(refusal) => refusal.as_str(),
            LossReason::ConnectTimeout => "connect_timeout",
            LossReason::Disconnected => "disconnected",
            LossReason::IdleTimeout => "idle_timeout",
            LossReason::MessageTooBig => "message_too_big",
            LossReason::GatewayRestarting => "gateway_restarting",
        }
    }

    /// A few words for a person (logs): why the connection or the attempt ended.
    pub const fn describe(self) -> &'static str {
        match self {
            LossReason::ConnectFailed => "the connection attempt failed",
            LossReason::Refused(refusal) => refusal.describe(),
            LossReason::ConnectTimeout => "the connection attempt timed out",
            LossReason::Disconnected => "the connection ended",
            LossReason::IdleTimeout => "nothing came from the gateway for the idle timeout",
            LossReason::MessageTooBig => "the gateway sent a message over the size limit",
            LossReason::GatewayRestarting => "the gateway is restarting",
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
    /// Requests sent again after a drop, to a gateway that accepted `resume`.
    pub requests_resent: u64,
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
    /// `mcp_request`s that waited for their session's standalone stream to open at the local server.
    pub mcp_followed_stream: u64,
    /// Messages from the local server relayed as `mcp_message` frames.
    pub mcp_messages: u64,
    /// Messages from the local server not relayed: the exchange was not a stream, or the message would not
    /// fit in a frame (a request among them is answered with an error).
    pub mcp_messages_dropped: u64,
    /// Exchanges the gateway cancelled.
    pub mcp_cancelled: u64,
}

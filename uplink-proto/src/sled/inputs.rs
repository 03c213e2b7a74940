//! What an adapter tells a [`Sled`](super::Sled) beside the frames it reads ([`crate::wire::Received`]): how
//! a connection attempt failed ([`ConnectError`]), and what the local MCP endpoint answered ([`McpReply`]).

use alloc::boxed::Box;
use alloc::string::String;

use crate::wire::RawValue;

/// Why a connection attempt failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConnectError {
    /// The gateway refused the token (HTTP 401 or 403): retrying fast cannot help, so the next attempt waits
    /// the back-off cap.
    Unauthorized,
    /// Nothing answers at the URL's path (HTTP 404): a wrong URL, which retrying fast cannot mend either.
    NotFound,
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
    /// session is gone, as if unknown. Answered with the JSON-RPC error [`crate::jsonrpc::SESSION_NOT_FOUND`]
    /// (-32001) and the request's `id`, which the gateway's MCP endpoint answers with `404`, so that the client
    /// initializes a new session. Ends an `mcp_listen` as [`McpReply::Failed`].
    SessionLost,
}

/// The message of the error answering [`McpReply::SessionLost`].
pub const SESSION_LOST: &str =
    "Session not found: the local MCP server lost this session and the sled kept no initialize to renew it";

//! What reaches the sled's driver task: commands from the handles ([`Cmd`]) and what its I/O tasks report
//! ([`Io`]).

use tokio::sync::oneshot;
use uplink_proto::{ConnId, ConnectError, McpCallId, McpReply, RawValue};

use super::answer::Answer;
use crate::ws;

/// From a handle to the driver.
pub(crate) enum Cmd {
    Permission { ticket: u64, tool_name: String, tool_input: Box<RawValue>, reply: oneshot::Sender<Answer> },
    Shutdown { done: oneshot::Sender<()> },
}

/// From an I/O task to the driver.
pub(crate) enum Io {
    Dialed {
        conn: ConnId,
        result: Result<Box<ws::Ws>, (ConnectError, String)>,
    },
    Mcp {
        call: McpCallId,
        reply: McpReply,
    },
    /// A message from the local server within a call or stream, before its end.
    McpMessage {
        call: McpCallId,
        message: Box<RawValue>,
    },
    /// The local server accepted a standalone stream.
    McpOpened {
        call: McpCallId,
    },
}

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
//! The rooms:
//! - `machine`: the [`Sled`] itself: the link's states (its diagram is there, beside them) and the
//!   permission requests;
//! - `mcp_relay`: the gateway's MCP exchanges with the local endpoint, a sub-machine with its own deadlines
//!   (its diagram is there);
//! - `config`, `inputs`, `outputs`: what shapes the machine, what an adapter tells it, what it asks;
//! - `refusal`: why a gateway refuses the sled, and what a person can do about it;
//! - [`mcp_session`]: the policy for the sled's sessions with its local MCP server, for the adapter to drive;
//! - [`local`]: who may ask the sled's local face (its own agents only).

mod config;
mod inputs;
pub mod local;
mod machine;
mod mcp_relay;
pub mod mcp_session;
mod outputs;
mod refusal;

pub use crate::ids::{ConnId, McpCallId, PermKey};
pub use crate::wire::Received;
pub use config::{ConfigError, SledConfig};
pub use inputs::{ConnectError, McpReply, SESSION_LOST};
pub use machine::Sled;
pub use outputs::{Cause, Decided, Event, Ignored, LinkState, LossReason, McpCall, McpListen, Output, Stats};
pub use refusal::Refusal;

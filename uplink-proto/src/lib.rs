//! # uplink-proto
//!
//! The sans-IO core of the sled ↔ gateway uplink protocol. A *sled* runs coding agents and keeps one
//! WebSocket open to its *gateway*: it announces itself (`identity`), proves it is alive (`heartbeat`), forwards
//! each local permission request (`perm_request`) and resolves it from the gateway's `perm_response`
//! (fail-closed: every doubt is a deny), and replays each `mcp_request` against its local MCP endpoint, answering
//! with an `mcp_response`. The wire format is described in `PROTOCOL.md` and implemented in [`wire`].
//!
//! ## The promise
//!
//! This crate does no I/O, reads no clock and draws no hidden randomness. It is `#![no_std]` (with `alloc`) and
//! `#![forbid(unsafe_code)]`. Every input takes the current time as an [`Instant`] that the caller supplies.
//! Back-off jitter comes from [`SledConfig::seed`]. **The same configuration and the same inputs at the same
//! instants always produce the same outputs**, so the protocol can be tested, simulated and fuzzed without a
//! socket or a sleep.
//!
//! ## How to drive a [`Sled`]
//!
//! - **Inputs**, each with `now`: [`Sled::handle_connected`], [`Sled::handle_connect_failed`],
//!   [`Sled::handle_disconnected`], [`Sled::handle_received`], [`Sled::handle_mcp_message`],
//!   [`Sled::handle_mcp_reply`], [`Sled::handle_timeout`]; **commands**: [`Sled::request_permission`], [`Sled::shutdown`].
//! - **Outputs**: after every input, call [`Sled::poll_output`] until it returns `None` and carry out each
//!   [`Output`] in order (connect, send, ping, close, deliver a decision, call or cancel the local MCP
//!   endpoint). Then ask [`Sled::poll_timeout`] when to call [`Sled::handle_timeout`]. Calling it early or twice is
//!   harmless; calling it late delays heartbeats but never changes a decision, because every input first
//!   fires what is due.
//! - **Connections** are named by the [`ConnId`] of the [`Output::Connect`] that asked for them. An input that
//!   names a connection other than the live one is ignored, so a frame read from a socket that died a moment
//!   ago can never decide anything.
//!
//! An adapter is one loop over the socket, the permission requests, the in-flight MCP calls and one timer.
//! Here it is with the socket and the gateway replaced by a few lines of code that approve every request:
//!
//! ```
//! use uplink_proto::{Decision, GatewayFrame, Instant, McpReply, Output, RawValue, Received, Sled, SledConfig, SledFrame};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut now = Instant::ZERO; // in a real adapter: microseconds since the adapter started
//! let mut sled = Sled::new(SledConfig::new("my-project"), now)?;
//!
//! // An agent asks before the link is up: the request waits in a bounded queue, its deadline running.
//! let input = RawValue::from_string(r#"{"command":"ls"}"#.to_owned())?;
//! let key = sled.request_permission(now, "Bash".into(), input); // its wire id is minted from the seed
//!
//! let mut decision = None;
//! while decision.is_none() {
//!     let mut inbox = Vec::new(); // frames our pretend gateway sends back
//!     // 1. Drain every output, in order.
//!     while let Some(output) = sled.poll_output() {
//!         match output {
//!             // Open the WebSocket; here it opens at once.
//!             Output::Connect { conn } => sled.handle_connected(now, conn),
//!             // Send the frame; here the "gateway" approves every permission request it sees.
//!             Output::Send { conn, text } => {
//!                 if let Ok(SledFrame::PermRequest { req_id, .. }) = SledFrame::decode(&text) {
//!                     let reply = GatewayFrame::PermResponse { req_id, decision: Decision::Approve, message: None };
//!                     inbox.push((conn, reply.encode()));
//!                 }
//!             }
//!             Output::Ping { .. } | Output::Close { .. } => { /* ping or close the socket */ }
//!             // Wake whoever asked.
//!             Output::Decided(d) if d.key == key => decision = Some(d.decision),
//!             Output::Decided(_) => {}
//!             // POST the body to the local MCP endpoint, then report what it answered.
//!             Output::CallMcp(call) => sled.handle_mcp_reply(now, call.call, McpReply::NoContent),
//!             // Open the local session's event stream (GET); report its messages and its end.
//!             Output::ListenMcp(listen) => sled.handle_mcp_reply(now, listen.call, McpReply::NoStream),
//!             Output::CancelMcp { .. } => { /* abort that HTTP call or stream */ }
//!             // POST a notice in a local session; end (DELETE) a local session.
//!             Output::NotifyMcp { .. } | Output::EndMcpSession { .. } => {}
//!             Output::Event(event) => { /* log it */ let _ = event; }
//!         }
//!     }
//!     // 2. Feed what arrived on the socket.
//!     for (conn, text) in &inbox {
//!         sled.handle_received(now, *conn, Received::Text(text));
//!     }
//!     // 3. Nothing arrived? Sleep until the deadline the machine asks for, then fire its timers.
//!     if inbox.is_empty() {
//!         if let Some(at) = sled.poll_timeout() {
//!             now = at;
//!             sled.handle_timeout(now);
//!         }
//!     }
//! }
//! assert_eq!(decision, Some(Decision::Approve));
//!
//! sled.shutdown(now); // deny anything left, close normally, never reconnect
//! # Ok(())
//! # }
//! ```
//!
//! ## Modules
//!
//! - [`sled`]: the sled machine, its configuration, inputs and outputs, its MCP relay; and for its adapter,
//!   the policies of its local MCP sessions ([`sled::mcp_session`]) and of its local face ([`sled::local`]).
//! - [`gateway`]: the gateway side: the [`gateway::Hub`] of all sled connections (claims, routing, public
//!   ids, listings, closes), driven like the sled (`handle_*`, commands, `poll_output`, `poll_timeout`), and
//!   each connection's session, with the state diagram beside its state; and for its adapter, the webhooks'
//!   outbox ([`gateway::outbox`]), the MCP endpoint's policy and the console's sessions.
//! - [`wire`]: the frames of both directions, decoded liberally and encoded strictly.
//! - [`jsonrpc`]: reading a JSON-RPC `id` and building error responses.
//! - [`ids`]: every correlation id, of both sides.
//! - [`sse`]: an incremental `text/event-stream` parser, for adapters that talk to Streamable HTTP MCP servers.
//! - [`time`]: the core's [`Instant`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

extern crate alloc;

mod backoff;
pub mod gateway;
mod glob;
pub mod ids;
pub mod jsonrpc;
mod pending;
pub mod rules;
pub mod sled;
pub mod sse;
pub mod time;
pub mod wire;

pub use sled::{
    Cause, ConfigError, ConnId, ConnectError, Decided, Event, Ignored, LinkState, LossReason, McpCall, McpCallId,
    McpListen, McpReply, Output, PermKey, Received, Refusal, Sled, SledConfig, Stats,
};
pub use time::Instant;
pub use wire::{Decision, GatewayFrame, RawValue, SledFrame};

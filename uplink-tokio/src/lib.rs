//! # uplink-tokio
//!
//! The tokio adapter for [`uplink_proto`]: it performs the I/O that the sans-IO core asks for, and nothing else.
//! Every protocol decision — when to connect, what to send, what a frame means, when to give up — is made
//! by the core. Each side is one task that owns its core machine, as quinn's drivers own theirs:
//!
//! - **The sled** ([`Uplink`], `sled/`): one driver task owns the core's [`Sled`](uplink_proto::Sled), reads
//!   and writes the gateway's WebSocket (tokio-tungstenite, with rustls for `wss://`) in its own loop, and
//!   runs the local MCP calls (hyper, MCP's Streamable HTTP) the core asks for.
//! - **The gateway** ([`gateway`]): one hub task owns the core's [`Hub`](uplink_proto::gateway::Hub); each
//!   sled connection's task only carries its socket; the HTTP API (axum), the console and the webhooks ask
//!   or are told by the hub task. What lasts (rules, the audit log, credentials, the console's sign-ins) is in a
//!   [`store`] (one seam, SQLite or memory), written before anything it records is sent.
//! - **The program** (`cli`, with the `cli` feature): `uplink sled`, `uplink gateway`, `uplink demo`.
//!
//! The two socket loops share their pieces (`socket_loop.rs`, `ws.rs`, `timer.rs`): the clock, turn-taking
//! with write turns, the message-to-input mapping, the one timer.
//!
//! ## Embedding
//!
//! ```no_run
//! use uplink_tokio::{Decision, Uplink, UplinkConfig};
//!
//! # async fn example() -> Result<(), uplink_tokio::StartError> {
//! let mut config = UplinkConfig::new("wss://gateway.example/api/sled-uplink", "my-project");
//! config.token = Some("sled-token".into());
//! config.local_mcp_url = "http://127.0.0.1:3001/mcp".into();
//! let uplink = Uplink::start(config)?;
//!
//! // From any task, any number of times; the handle is cheap to clone.
//! let decision = uplink.request_permission("Bash", &serde_json::json!({"command": "ls"})).await;
//! if decision == Decision::Deny {
//!     // denied by the gateway, or no answer in time, or the gateway unreachable: fail-closed
//! }
//!
//! // Follow the link's state.
//! let mut link = uplink.watch_link();
//! link.changed().await.ok();
//! println!("link: {:?}", *link.borrow());
//!
//! // Deny what is pending, close the socket, stop.
//! uplink.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Coming from the original `sled_uplink.rs`
//!
//! The original took a receiver of `PermissionForward { request_id, tool_name, tool_input, response_tx }`.
//! Keep that channel and forward each request to the handle. Wire ids are now minted by the core from its
//! seed, and never reused.
//!
//! ```no_run
//! # use uplink_tokio::{Decision, Uplink};
//! # struct PermissionForward { tool_name: String, tool_input: serde_json::Value, response_tx: tokio::sync::oneshot::Sender<Decision> }
//! # async fn forward(uplink: Uplink, mut perm_rx: tokio::sync::mpsc::UnboundedReceiver<PermissionForward>) {
//! while let Some(fwd) = perm_rx.recv().await {
//!     let uplink = uplink.clone();
//!     tokio::spawn(async move {
//!         let decision = uplink.request_permission(&fwd.tool_name, &fwd.tool_input).await;
//!         let _ = fwd.response_tx.send(decision); // map to your own decision type here
//!     });
//! }
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

pub use uplink_proto::{self, Cause, Decision, LinkState, LossReason, RawValue, Refusal};

mod accept;
#[cfg(feature = "cli")]
pub mod cli;
pub mod gateway;
mod http;
mod http_client;
#[cfg(feature = "sqlite")]
mod owner_only;
pub mod redact;
mod sled;
mod socket_loop;
pub mod store;
mod timer;
mod ws;

pub use sled::{
    Answer, DEFAULT_LOCAL_MCP_URL, DEFAULT_MAX_MESSAGE_SIZE, McpUrlError, StartError, Uplink, UplinkConfig,
};

pub use redact::SECRET_SAFE_DIRECTIVES;

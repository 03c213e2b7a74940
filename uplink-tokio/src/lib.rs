//! # uplink-tokio
//!
//! The tokio adapter for [`uplink_proto`]: it performs the I/O that the sans-IO core asks for, and nothing else.
//! Every protocol decision — when to connect, what to send, what a frame means, when to give up — is made
//! by the core. This crate holds one task that drives the core. Around it sit the WebSocket to the gateway
//! (tokio-tungstenite, with rustls for `wss://`) and the HTTP client for the sled's local MCP endpoint
//! (hyper, speaking MCP's Streamable HTTP).
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

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
pub use uplink_proto::{self, Decision, LinkState, LossReason, RawValue};
use uplink_proto::{ConfigError, Sled};

mod accept;
mod config;
#[cfg(feature = "cli")]
pub mod demo;
mod driver;
pub mod gateway;
mod http;
#[cfg(feature = "cli")]
pub mod logging;
mod mcp;
pub mod redact;
#[cfg(feature = "cli")]
pub mod sled_server;
mod socket_loop;
mod timer;
mod tls;
mod ws;

pub use config::{DEFAULT_LOCAL_MCP_URL, DEFAULT_MAX_MESSAGE_SIZE, UplinkConfig};

use crate::driver::{Cmd, Driver};
use crate::redact::redact_url;

/// Why an [`Uplink`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Not called from within a tokio runtime.
    #[error("Uplink::start must be called from within a tokio runtime")]
    NoRuntime,
    /// The gateway URL is not a `ws://` or `wss://` URL (shown redacted).
    #[error("gateway URL {0} must start with ws:// or wss://")]
    GatewayUrl(String),
    /// The local MCP URL is unusable.
    #[error("local MCP URL {url}: {why}")]
    McpUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The extra CA file could not be used.
    #[error("CA file {0}")]
    CaFile(String),
    /// TLS could not be set up.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The core refused the configuration.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
}

/// A running uplink. Clone it freely; every clone talks to the same task. When the last clone is dropped the
/// uplink shuts down as if [`Uplink::shutdown`] had been called.
#[derive(Clone, Debug)]
pub struct Uplink {
    cmd: mpsc::Sender<Cmd>,
    link: watch::Receiver<LinkState>,
}

impl Uplink {
    /// Starts the uplink's task on the current tokio runtime. With an empty gateway URL it starts disabled:
    /// every permission request is denied at once, as in the original.
    pub fn start(config: UplinkConfig) -> Result<Uplink, StartError> {
        tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let enabled = !config.gateway_url.trim().is_empty();
        let target = if enabled {
            let url = config.gateway_url.trim();
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(StartError::GatewayUrl(redact_url(url)));
            }
            Some(Arc::new(ws::Target {
                url: config.dial_url(),
                bearer: config.bearer(),
                tls: tls::client_config(config.ca_file.as_deref())?,
                ws_config: ws::Target::ws_config(config.max_message_size),
            }))
        } else {
            None
        };
        let mcp = mcp::McpClient::new(&config.local_mcp_url, config.max_message_size)
            .map_err(|why| StartError::McpUrl { url: redact_url(&config.local_mcp_url), why })?;
        let mut sled_config = config.sled.clone();
        sled_config.enabled = enabled;
        let clock = socket_loop::Clock::new(tokio::time::Instant::now());
        let sled = Sled::new(sled_config, uplink_proto::Instant::ZERO)?;
        let (link_tx, link_rx) = watch::channel(sled.link_state());
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let driver = Driver::new(sled, clock, target, Arc::new(mcp), cmd_rx, link_tx);
        tokio::spawn(driver.run());
        Ok(Uplink { cmd: cmd_tx, link: link_rx })
    }

    /// Asks the gateway whether `tool_name` may run with `tool_input`. Always resolves: a denial, a timeout,
    /// a lost gateway or a shut-down uplink all give [`Decision::Deny`].
    pub async fn request_permission(&self, tool_name: &str, tool_input: &serde_json::Value) -> Decision {
        match serde_json::value::to_raw_value(tool_input) {
            Ok(raw) => self.request_permission_raw(tool_name, raw).await,
            Err(_) => Decision::Deny,
        }
    }

    /// As [`Uplink::request_permission`], with the input already as JSON text.
    pub async fn request_permission_raw(&self, tool_name: &str, tool_input: Box<RawValue>) -> Decision {
        let (reply, decision) = oneshot::channel();
        let cmd = Cmd::Permission { tool_name: tool_name.to_owned(), tool_input, reply };
        if self.cmd.send(cmd).await.is_err() {
            return Decision::Deny;
        }
        decision.await.unwrap_or(Decision::Deny)
    }

    /// The link's state now.
    pub fn link_state(&self) -> LinkState {
        self.link.borrow().clone()
    }

    /// A receiver that sees every change of the link's state.
    pub fn watch_link(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }

    /// Denies everything pending, answers MCP calls in flight, closes the WebSocket normally and stops.
    /// Returns once that is done (the close handshake is given up to two seconds). Calling it again, or on a
    /// stopped uplink, returns at once.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.cmd.send(Cmd::Shutdown { done }).await.is_ok() {
            let _ = finished.await;
        }
    }
}

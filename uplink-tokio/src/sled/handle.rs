//! The [`Uplink`] handle an embedder holds: it starts the driver task, asks it for decisions, withdraws what
//! its callers abandon, and shuts it down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use uplink_proto::sled::mcp_session::{DEFAULT_MAX_SESSIONS, McpSessions};
use uplink_proto::{Cause, Decision, LinkState, RawValue, Refusal, Sled};

use super::answer::{Answer, StartError};
use super::config::UplinkConfig;
use super::driver::{Driver, FromHandles, LinkReports};
use super::io::Cmd;
use super::mcp_client::McpClient;
use super::metrics::SledMetrics;
use super::tls;
use crate::redact::redact_url;
use crate::socket_loop::Clock;
use crate::ws;

/// Withdraws a request when the future waiting for it is dropped before its decision came.
struct WithdrawOnDrop<'a> {
    ticket: u64,
    tx: &'a mpsc::UnboundedSender<u64>,
    decision: oneshot::Receiver<Answer>,
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        // Empty: still undecided (a decision that was received, or a driver that is gone, needs nothing).
        if matches!(self.decision.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            let _ = self.tx.send(self.ticket);
        }
    }
}

/// A running uplink. Clone it freely; every clone talks to the same task. When the last clone is dropped the
/// uplink shuts down as if [`Uplink::shutdown`] had been called.
#[derive(Clone, Debug)]
pub struct Uplink {
    cmd: mpsc::Sender<Cmd>,
    /// Requests whose caller went away, by ticket (unbounded: at most one per request the driver holds).
    withdraw: mpsc::UnboundedSender<u64>,
    tickets: Arc<AtomicU64>,
    link: watch::Receiver<LinkState>,
    standing: watch::Receiver<Option<Refusal>>,
    metrics: Arc<SledMetrics>,
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
            // Which gateway, and as whom: never the token.
            tracing::info!(gateway = %redact_url(url), project = %config.sled.project.escape_debug(), "the sled dials its gateway");
            Some(Arc::new(ws::Target {
                url: config.dial_url(),
                bearer: config.bearer(),
                tls: tls::client_config(config.ca_file.as_deref())?,
                ws_config: ws::Target::ws_config(config.max_message_size),
            }))
        } else {
            None
        };
        let sessions = McpSessions::new(DEFAULT_MAX_SESSIONS, config.sled.max_mcp_initialize_bytes);
        let mcp = McpClient::new(&config.local_mcp_url, config.max_message_size, sessions)
            .map_err(|source| StartError::McpUrl { url: redact_url(&config.local_mcp_url), source })?;
        let mut sled_config = config.sled.clone();
        sled_config.enabled = enabled;
        let clock = Clock::new(tokio::time::Instant::now());
        let sled = Sled::new(sled_config, uplink_proto::Instant::ZERO)?;
        let (link_tx, link_rx) = watch::channel(sled.link_state());
        let (standing_tx, standing_rx) = watch::channel(sled.refusal());
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (withdraw_tx, withdraw_rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(SledMetrics::new());
        let handles = FromHandles { cmd_rx, withdraw_rx };
        let reports = LinkReports { link: link_tx, standing: standing_tx };
        let driver = Driver::new(sled, clock, target, Arc::new(mcp), handles, reports, metrics.clone());
        tokio::spawn(driver.run());
        let tickets = Arc::new(AtomicU64::new(0));
        Ok(Uplink { cmd: cmd_tx, withdraw: withdraw_tx, tickets, link: link_rx, standing: standing_rx, metrics })
    }

    /// Asks the gateway whether `tool_name` may run with `tool_input`. Always resolves: a denial, a timeout,
    /// a lost gateway or a shut-down uplink all give [`Decision::Deny`].
    ///
    /// **Dropping the future withdraws the request**: the core sends `perm_cancel`, the gateway stops
    /// listing it, and a later decision for it is refused there. So a caller who leaves (an HTTP client that
    /// hangs up, a cancelled tool call) frees its place in the queue at once.
    pub async fn request_permission(&self, tool_name: &str, tool_input: &serde_json::Value) -> Decision {
        self.ask(tool_name, tool_input).await.decision
    }

    /// As [`Uplink::request_permission`], with why it ended so: the gateway's decision, or which fail-closed
    /// rule denied it.
    pub async fn ask(&self, tool_name: &str, tool_input: &serde_json::Value) -> Answer {
        match serde_json::value::to_raw_value(tool_input) {
            Ok(raw) => self.ask_raw(tool_name, raw).await,
            // Not representable as JSON text (a map with non-string keys cannot come from JSON): refused.
            Err(_) => Answer::denied(Cause::InvalidId),
        }
    }

    /// As [`Uplink::request_permission`], with the input already as JSON text.
    pub async fn request_permission_raw(&self, tool_name: &str, tool_input: Box<RawValue>) -> Decision {
        self.ask_raw(tool_name, tool_input).await.decision
    }

    /// As [`Uplink::ask`], with the input already as JSON text.
    pub async fn ask_raw(&self, tool_name: &str, tool_input: Box<RawValue>) -> Answer {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let (reply, decision) = oneshot::channel();
        let cmd = Cmd::Permission { ticket, tool_name: tool_name.to_owned(), tool_input, reply };
        if self.cmd.send(cmd).await.is_err() {
            return Answer::denied(Cause::Shutdown);
        }
        // From here the driver has the request: if this future is dropped before the decision, the guard
        // withdraws it.
        let mut guard = WithdrawOnDrop { ticket, tx: &self.withdraw, decision };
        (&mut guard.decision).await.unwrap_or(Answer::denied(Cause::Shutdown))
    }

    /// The uplink's metrics in Prometheus text format: `uplink_sled_link_up`, `uplink_sled_link_losses_total`
    /// by reason, `uplink_sled_permissions_total` by decision and cause, `uplink_sled_permission_seconds`,
    /// `uplink_sled_mcp_calls_total`.
    pub fn metrics(&self) -> String {
        self.metrics.text()
    }

    /// The link's state now.
    pub fn link_state(&self) -> LinkState {
        self.link.borrow().clone()
    }

    /// Why the gateway refuses this sled, from its refusal until a connection shows it was accepted
    /// ([`Refusal`]; the core decides: [`uplink_proto::Event::Standing`]). While the link backs off after a
    /// refusal, every permission request is denied at once with it.
    pub fn refusal(&self) -> Option<Refusal> {
        *self.standing.borrow()
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

//! What the server's tasks share ([`Shared`]): the hub task's handle, the credentials in force, the budgets
//! and tables the routes consult. No protocol state: that lives in the hub task. And the handle that
//! replaces the credentials of a running gateway ([`CredentialsReloader`]).

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use super::auth_budget::AuthBudget;
use super::console_sessions::Sessions;
use super::credentials::Credentials;
use super::gateway_metrics::GatewayMetrics;
use super::hub_handle::HubHandle;
use crate::store::AuditReader;

/// What the server's tasks share. No protocol state: that lives in the hub task.
pub(super) struct Shared {
    pub(super) hub: HubHandle,
    /// This node among the cluster's nodes, when it serves beside them (`--cluster-listen`).
    pub(super) peers: Option<Arc<super::peers::Peers>>,
    /// Becomes true when the server stops: event streams end.
    pub(super) closing: tokio::sync::watch::Sender<bool>,
    /// True while the server drains before it stops: `/readyz` says so, new sleds are refused.
    pub(super) draining: std::sync::atomic::AtomicBool,
    /// Who may connect and who may decide; replaced whole on a reload.
    pub(super) credentials: RwLock<Arc<Credentials>>,
    pub(super) accept_query_token: bool,
    pub(super) ws_config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    pub(super) handshake_timeout: Duration,
    /// The tasks of the sled connections (after their WebSocket upgrade), so that a stopping server can wait
    /// for their close handshakes.
    pub(super) sled_tasks: Mutex<tokio::task::JoinSet<()>>,
    /// The audit log, with a store.
    pub(super) audit: Option<Arc<dyn AuditReader>>,
    /// The console's sessions.
    pub(super) sessions: Sessions,
    /// Whether the gateway serves TLS (the console's cookie is `Secure` then, and its origin `https`).
    pub(super) tls: bool,
    /// What `/metrics` shows.
    pub(super) metrics: Arc<GatewayMetrics>,
    pub(super) metrics_public: bool,
    /// The store's error, once a commit failed (`/readyz`).
    pub(super) store_failed: tokio::sync::watch::Receiver<Option<String>>,
    /// Audit queries running at once (each reads the database on a blocking thread): at most
    /// [`AUDIT_QUERIES`]; more get `503`.
    pub(super) audit_queries: Arc<tokio::sync::Semaphore>,
    /// The gateway's own names beside loopback (its public URL's host, its listen address, those given), by
    /// which a web page may reach the MCP endpoint.
    pub(super) mcp_names: Vec<String>,
    /// Failed authentications per source address.
    pub(super) auth: AuthBudget,
    /// MCP clients' access tokens, with `--oidc-issuer`.
    pub(super) access_tokens: Option<Arc<super::access_tokens::AccessTokens>>,
    /// People's sign-in to the console at the provider, with `--oidc-client-id`.
    pub(super) sign_ins: Option<Arc<super::sign_ins::SignIns>>,
}

/// Most `GET /api/audit` queries at once.
pub const AUDIT_QUERIES: usize = 4;

impl Shared {
    /// The credentials in force (the lock is held only to clone the `Arc`).
    pub(super) fn credentials(&self) -> Arc<Credentials> {
        self.credentials.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Replaces a running gateway's credentials: new connections are checked against the new set at once, and
/// live ones whose credential is gone, expired or narrowed past their project are closed (4010).
#[derive(Clone)]
pub struct CredentialsReloader {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for CredentialsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialsReloader")
    }
}

impl CredentialsReloader {
    /// Puts `credentials` in force.
    pub async fn reload(&self, credentials: Credentials) {
        let credentials = Arc::new(credentials);
        let old = std::mem::replace(
            &mut *self.shared.credentials.write().unwrap_or_else(PoisonError::into_inner),
            credentials.clone(),
        );
        // A principal that is gone takes its MCP sessions with it.
        for gone in old.admins().iter().filter(|a| !credentials.admins().iter().any(|n| n.name == a.name)) {
            self.shared.hub.principal_gone(gone.name.clone()).await;
        }
        self.shared.hub.credentials_changed(credentials).await;
    }
}

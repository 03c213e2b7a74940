//! `uplink gateway`: the gateway side, shaped as quinn shapes its endpoint.
//!
//! - `hub_task`: one task owns the core's [`Hub`] (every session, every fleet
//!   rule) and carries out what it asks.
//! - `upgrade`: a sled's WebSocket upgrade and the loop that carries its socket, one task per connection.
//! - `admin`: the HTTP admin API, talking to the hub task; `rules` and `audit` its rules and audit routes
//!   (and the rules' kept form, and the recorder that turns the hub's events into audit records);
//!   `events` the event stream.
//! - `console`: the web console at `/` and its sessions; `metrics`: `/metrics`, `/healthz`, `/readyz`;
//!   `notify`: the webhooks, each performing the core's outbox.
//! - `mcp`: the MCP endpoint, a Streamable HTTP server over the sleds' relays (the core's `McpEndpoint` says
//!   what each request gets).
//! - [`credentials`]: sled credentials and admin principals, known by their tokens' hashes.
//! - this module: configuration, the listener, TLS, and the server's start and stop.
//!
//! Routes (see PROTOCOL.md for examples):
//! - `GET /api/sled-uplink`: WebSocket upgrade for sleds, after the sled token (`?token=`, unless refused, or
//!   `Authorization: Bearer`) is recognised; `401` before any upgrade otherwise.
//! - Admin, under `Authorization: Bearer <principal's token>`, each route needing its role's right:
//!   `GET /api/sleds`, `GET /api/permissions`, `GET /api/events` (Server-Sent Events) to read;
//!   `POST /api/permissions/{id}`, the MCP endpoint `/api/sleds/{project}/mcp` (`POST`, `GET`, `DELETE`) and
//!   the session-less relay `POST /api/sleds/{project}/rpc` to decide; `GET /api/rules` and
//!   `GET /api/audit` to read, `POST /api/rules` and `DELETE /api/rules/{id}` to manage.
//! - `GET /metrics` (any principal's token, unless public), `GET /healthz`, `GET /readyz` (no token): the
//!   `metrics` module.

mod admin;
mod audit;
mod auth_budget;
mod console;
#[cfg(feature = "cli")]
pub(crate) use audit::record_line as audit_line;
pub mod credentials;
mod events;
mod hub_task;
mod mcp;
mod metrics;
mod notify;
pub mod rules;
mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::Instant as TokioInstant;
use tracing::debug;
use uplink_proto::Instant;
use uplink_proto::gateway::{Hub, HubConfig};

use crate::accept::AcceptBackoff;
use crate::store::{AuditReader, Store, StoreError};
use crate::ws::{CLOSE_GRACE, Target};
pub use console::{MAX_SESSIONS, SESSION_LIFETIME};
use credentials::{Credentials, CredentialsError};
use hub_task::{HubHandle, HubTaskConfig};
pub use notify::{NotifyFormat, Webhook};

/// Default address of `uplink gateway`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8700";

/// How long a stopping gateway waits for its store to close.
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Largest admin request body accepted (`413` beyond).
pub const MAX_ADMIN_BODY: usize = 4 << 20;

/// Default of [`GatewayServerConfig::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Configuration of a [`GatewayServer`], made with [`GatewayServerConfig::new`] (the original's shared
/// tokens) or [`GatewayServerConfig::with_credentials`]. Its `Debug` output hides the tokens.
#[derive(Clone)]
#[non_exhaustive]
pub struct GatewayServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Tokens that sleds may connect with (any of them), each for any project; used when `credentials` is
    /// `None`.
    pub sled_tokens: Vec<String>,
    /// The token of the admin API (the principal `admin`, role `admin`); used when `credentials` is `None`.
    pub admin_token: String,
    /// Sled credentials and admin principals. When set, `sled_tokens` and `admin_token` are not used.
    pub credentials: Option<Credentials>,
    /// Accept a sled's token in the URL (`?token=`), as the original sends it. `true` by default; with
    /// `false`, only `Authorization: Bearer` is accepted (URLs end up in proxies' logs).
    pub accept_query_token: bool,
    /// The hub's rules, every one of the core's: each sled connection's protocol rules (`hub.session`), the
    /// connection budgets (16,384 open, 1,024 unidentified, `uplink gateway` deriving its default from its
    /// open-file limit), the pending-bytes budget across every sled (256 MiB), the permission rules and the
    /// auto flags, the memory of gone sleds and of ended requests, the MCP endpoint's sessions.
    /// [`HubConfig::default`] by default.
    pub hub: HubConfig,
    /// Most bytes of events queued for one `/api/events` client that is not reading; beyond, it gets a
    /// `lagged` event and its stream ends. Default 32 MiB (an event larger than that alone still goes to a
    /// client with nothing queued).
    pub max_event_client_bytes: usize,
    /// Most `/api/events` clients at once; more are answered `503`. Default 64.
    pub max_event_clients: usize,
    /// Names a web page may reach the gateway's MCP endpoint by, beside loopback, the public URL's host and
    /// the listen address (`--allowed-host`). Empty by default.
    pub allowed_hosts: Vec<String>,
    /// Certificate chain and private key (PEM files) to serve HTTPS and `wss://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Largest WebSocket message accepted from a sled.
    pub max_message_size: usize,
    /// A client must finish its TLS handshake, and then send the headers of each HTTP request (a WebSocket
    /// upgrade included), within this long, or it is disconnected (slow-loris clients); and each request's
    /// body within this long again, or it is answered `408`.
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] by default.
    pub handshake_timeout: Duration,
    /// Leave tool inputs out of the audit log (their SHA-256 stays). `false` by default.
    pub audit_redact_inputs: bool,
    /// Serve `/metrics` to anyone who can reach the gateway; by default it needs a principal's token (any
    /// role). `false` by default.
    pub metrics_public: bool,
    /// Where each new pending request is POSTed as JSON (none by default).
    pub notify: Vec<Webhook>,
    /// Also notify how each request ended. `false` by default.
    pub notify_decisions: bool,
    /// The address people reach the gateway (its console) at, for the links in notifications.
    pub public_url: Option<String>,
    /// The budget of failed authentications per source address (20 at once, then one a second; 16,384
    /// addresses remembered): past it, a wrong token gets `429` with `Retry-After` instead of `401`. A right
    /// token is never refused by it.
    pub auth_limit: uplink_proto::gateway::AuthLimitConfig,
}

impl GatewayServerConfig {
    /// A gateway on `listen` for sleds with any of `sled_tokens`, administered with `admin_token`; every
    /// other setting at its default (plain HTTP, 16 MiB messages, the core's session rules).
    pub fn new(listen: SocketAddr, sled_tokens: Vec<String>, admin_token: impl Into<String>) -> GatewayServerConfig {
        GatewayServerConfig {
            listen,
            sled_tokens,
            admin_token: admin_token.into(),
            credentials: None,
            accept_query_token: true,
            hub: HubConfig::default(),
            max_event_client_bytes: 32 << 20,
            max_event_clients: 64,
            allowed_hosts: Vec::new(),
            tls: None,
            max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            audit_redact_inputs: false,
            metrics_public: false,
            notify: Vec::new(),
            notify_decisions: false,
            public_url: None,
            auth_limit: uplink_proto::gateway::AuthLimitConfig::default(),
        }
    }
}

impl GatewayServerConfig {
    /// A gateway on `listen` for the sleds and principals of `credentials`; every other setting at its
    /// default.
    pub fn with_credentials(listen: SocketAddr, credentials: Credentials) -> GatewayServerConfig {
        GatewayServerConfig { credentials: Some(credentials), ..GatewayServerConfig::new(listen, Vec::new(), "") }
    }
}

impl std::fmt::Debug for GatewayServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayServerConfig")
            .field("listen", &self.listen)
            .field("sled_tokens", &format_args!("[{} redacted]", self.sled_tokens.len()))
            .field("admin_token", &"[redacted]")
            .field("credentials", &self.credentials)
            .field("accept_query_token", &self.accept_query_token)
            .field("hub", &self.hub)
            .field("max_event_client_bytes", &self.max_event_client_bytes)
            .field("max_event_clients", &self.max_event_clients)
            .field("tls", &self.tls)
            .field("max_message_size", &self.max_message_size)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("audit_redact_inputs", &self.audit_redact_inputs)
            .field("metrics_public", &self.metrics_public)
            .field("notify", &self.notify.iter().map(|w| crate::redact::redact_url(&w.url)).collect::<Vec<_>>())
            .field("notify_decisions", &self.notify_decisions)
            .field("public_url", &self.public_url)
            .field("auth_limit", &self.auth_limit)
            .finish()
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayStartError {
    /// No sled token, no admin token, or an admin token equal to a sled token.
    #[error("{0}")]
    Tokens(&'static str),
    /// The credentials cannot be used together.
    #[error("credentials: {0}")]
    Credentials(#[from] CredentialsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        error: std::io::Error,
    },
    /// The certificate or key could not be used.
    #[error("TLS: {what}: {source}")]
    Tls {
        /// What was being read or set up (a file, or a step).
        what: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The certificate file holds no certificate.
    #[error("TLS: {0}: no certificate found")]
    NoCertificate(PathBuf),
    /// The handshake timeout is zero: every client would be cut off.
    #[error("the handshake timeout must not be zero")]
    ZeroHandshakeTimeout,
    /// The session rules are invalid.
    #[error("configuration: {0}")]
    Config(#[from] uplink_proto::gateway::SessionConfigError),
    /// The store could not be read.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A kept rule no longer reads.
    #[error("{0}")]
    StoredRule(#[from] rules::BadStoredRule),
    /// A task or thread could not be started.
    #[error("cannot start: {0}")]
    Spawn(std::io::Error),
}

/// Why a running gateway stopped on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayRunError {
    /// A commit to the store failed: nothing it held was sent, and every sled connection was closed.
    #[error("the store failed: {0}")]
    Store(String),
    /// The task that owns the hub ended on its own (a defect: it ends only when told to); every sled
    /// connection was closed.
    #[error("the hub task ended: {0}")]
    Hub(String),
}

/// A random token: 32 bytes from the operating system's secure generator, hex-encoded. Fails only when the
/// generator does; a weak token is never invented instead.
pub fn generate_token() -> Result<String, GatewayStartError> {
    let mut bytes = [0u8; 32];
    let rng = rustls::crypto::ring::default_provider().secure_random;
    rng.fill(&mut bytes).map_err(|_| GatewayStartError::Tokens("the system's secure random generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the server's tasks share. No protocol state: that lives in the hub task.
struct Shared {
    hub: HubHandle,
    /// Becomes true when the server stops: event streams end.
    closing: tokio::sync::watch::Sender<bool>,
    /// Who may connect and who may decide; replaced whole on a reload.
    credentials: RwLock<Arc<Credentials>>,
    accept_query_token: bool,
    ws_config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    handshake_timeout: Duration,
    /// The tasks of the sled connections (after their WebSocket upgrade), so that a stopping server can wait
    /// for their close handshakes.
    sled_tasks: Mutex<tokio::task::JoinSet<()>>,
    /// The audit log, with a store.
    audit: Option<Arc<dyn AuditReader>>,
    /// The console's sessions.
    sessions: console::Sessions,
    /// Whether the gateway serves TLS (the console's cookie is `Secure` then, and its origin `https`).
    tls: bool,
    /// What `/metrics` shows.
    metrics: Arc<metrics::GatewayMetrics>,
    metrics_public: bool,
    /// The store's error, once a commit failed (`/readyz`).
    store_failed: tokio::sync::watch::Receiver<Option<String>>,
    /// Audit queries running at once (each reads the database on a blocking thread): at most
    /// [`AUDIT_QUERIES`]; more get `503`.
    audit_queries: Arc<tokio::sync::Semaphore>,
    /// The gateway's own names beside loopback (its public URL's host, its listen address, those given), by
    /// which a web page may reach the MCP endpoint.
    mcp_names: Vec<String>,
    /// Failed authentications per source address.
    auth: auth_budget::AuthBudget,
}

/// Most `GET /api/audit` queries at once.
pub const AUDIT_QUERIES: usize = 4;

impl Shared {
    /// The credentials in force (the lock is held only to clone the `Arc`).
    fn credentials(&self) -> Arc<Credentials> {
        self.credentials.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Replaces a running gateway's credentials: new connections are checked against the new set at once, and
/// live ones whose credential is gone, expired or narrowed past their project are closed (4010).
#[derive(Clone)]
pub struct CredentialsReloader {
    shared: Arc<Shared>,
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

// ── The server ───────────────────────────────────────────────────────────────────────────────────────────

/// A bound gateway, ready to [`run`](GatewayServer::run).
pub struct GatewayServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    hub_task: tokio::task::JoinHandle<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The store's error, once a commit failed.
    failed: tokio::sync::watch::Receiver<Option<String>>,
    /// Fires once the store is closed (its lock released), after the hub task ends.
    store_closed: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl std::fmt::Debug for GatewayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayServer").field("listener", &self.listener).field("tls", &self.tls.is_some()).finish()
    }
}

impl GatewayServer {
    /// Validates the configuration and binds the listener; no store: rules made at run time and the audit
    /// log last as long as the process.
    pub async fn bind(config: GatewayServerConfig) -> Result<GatewayServer, GatewayStartError> {
        GatewayServer::bind_with_store(config, None).await
    }

    /// Like [`bind`](GatewayServer::bind), with `store` keeping the rules made at run time and the audit
    /// log: its rules join the configuration's, and every decision is written to it before it is sent.
    pub async fn bind_with_store(
        config: GatewayServerConfig,
        mut store: Option<Box<dyn Store>>,
    ) -> Result<GatewayServer, GatewayStartError> {
        let credentials = match config.credentials {
            Some(credentials) => credentials,
            None => {
                if config.sled_tokens.iter().all(|t| t.is_empty()) {
                    return Err(GatewayStartError::Tokens("at least one sled token is required"));
                }
                if config.admin_token.is_empty() {
                    return Err(GatewayStartError::Tokens("an admin token is required"));
                }
                if config.sled_tokens.contains(&config.admin_token) {
                    return Err(GatewayStartError::Tokens("the admin token must differ from every sled token"));
                }
                Credentials::from_tokens(&config.sled_tokens, &config.admin_token)?
            }
        };
        let mut hub_config = config.hub;
        // The core's instant 0 is now, on both clocks.
        let (epoch, wall) = (TokioInstant::now(), rules::Wall::new(Instant::ZERO, SystemTime::now()));
        if let Some(store) = &mut store {
            for kept in store.rules()? {
                hub_config.rules.push(rules::from_stored(&kept, &wall)?);
            }
        }
        let audit = store.as_ref().map(|s| s.reader());
        let hub = Hub::new(hub_config, Instant::ZERO)?;
        if config.handshake_timeout.is_zero() {
            return Err(GatewayStartError::ZeroHandshakeTimeout);
        }
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| GatewayStartError::Bind { addr: config.listen, error })?;
        let (failed_tx, failed) = tokio::sync::watch::channel(None);
        let metrics = Arc::new(metrics::GatewayMetrics::new());
        let public_host = config
            .public_url
            .as_deref()
            .and_then(|u| u.parse::<hyper::Uri>().ok())
            .and_then(|u| u.host().map(str::to_owned));
        let task = HubTaskConfig {
            notify: notify::NotifyConfig {
                webhooks: config.notify,
                decisions: config.notify_decisions,
                public_url: config.public_url,
            },
            metrics: metrics.clone(),
            epoch,
            wall,
            event_client_bytes: config.max_event_client_bytes,
            event_clients: config.max_event_clients,
            store,
            redact_inputs: config.audit_redact_inputs,
            failed: failed_tx,
        };
        let (hub, hub_task, store_closed) = HubHandle::spawn(hub, task).map_err(GatewayStartError::Spawn)?;
        // The gateway's own names, for the MCP endpoint's check of web pages.
        let mut names = config.allowed_hosts.clone();
        if let Some(host) = public_host.as_deref() {
            names.push(host.to_owned());
        }
        if !config.listen.ip().is_unspecified() {
            names.push(match config.listen.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            });
        }
        let shared = Arc::new(Shared {
            hub,
            closing: tokio::sync::watch::Sender::new(false),
            credentials: RwLock::new(Arc::new(credentials)),
            accept_query_token: config.accept_query_token,
            ws_config: Target::ws_config(config.max_message_size),
            handshake_timeout: config.handshake_timeout,
            sled_tasks: Mutex::new(tokio::task::JoinSet::new()),
            audit,
            audit_queries: Arc::new(tokio::sync::Semaphore::new(AUDIT_QUERIES)),
            sessions: console::Sessions::new(crate::socket_loop::Clock::new(epoch)),
            tls: tls.is_some(),
            metrics,
            metrics_public: config.metrics_public,
            store_failed: failed.clone(),
            mcp_names: names,
            auth: auth_budget::AuthBudget::new(crate::socket_loop::Clock::new(epoch), config.auth_limit),
        });
        Ok(GatewayServer { listener, shared, hub_task, tls, failed, store_closed })
    }

    /// A handle that replaces this gateway's credentials while it runs.
    pub fn reloader(&self) -> CredentialsReloader {
        CredentialsReloader { shared: self.shared.clone() }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` completes, or the store fails; then closes every sled connection.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> Result<(), GatewayRunError> {
        let router = admin::router(self.shared.clone());
        let mut connections = tokio::task::JoinSet::new();
        let mut backoff = AcceptBackoff::default();
        let mut failed = self.failed.clone();
        let mut hub_task = self.hub_task;
        // Set when the hub task ended on its own, which only a defect can make it do: the gateway stops then,
        // rather than serve on without its hub.
        let mut hub_ended: Option<String> = None;
        let (hub, ended) = (&mut hub_task, &mut hub_ended);
        // Boxed, so that dropping it after the loop ends its borrows.
        let mut stop = Box::pin(async move {
            tokio::select! {
                () = stop => {}
                _ = failed.wait_for(Option::is_some) => {}
                end = hub => {
                    let why = match end {
                        Err(e) if e.is_panic() => "it panicked",
                        _ => "it returned",
                    };
                    tracing::error!("the hub task ended ({why}): stopping");
                    *ended = Some(why.to_owned());
                }
            }
        });
        while let Some(tcp) = crate::accept::next(&self.listener, &mut backoff, &mut stop).await {
            let router = router.clone();
            let timeout = self.shared.handshake_timeout;
            let tls = self.tls.clone();
            let Ok(peer) = tcp.peer_addr() else { continue };
            connections.spawn(async move {
                match tls {
                    Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_http(TokioIo::new(stream), timeout, router, peer).await,
                        _ => debug!("TLS handshake failed or timed out"),
                    },
                    None => serve_http(TokioIo::new(tcp), timeout, router, peer).await,
                }
            });
            while connections.try_join_next().is_some() {}
        }
        drop(stop);
        // End event streams; the hub closes every sled connection, identified or not (1001, going away) and
        // refuses new ones; give them all a moment to finish their close handshakes, then stop what is left.
        self.shared.closing.send_replace(true);
        self.shared.hub.shutdown().await;
        let mut sleds = std::mem::take(&mut *self.shared.sled_tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while connections.join_next().await.is_some() {}
            while sleds.join_next().await.is_some() {}
        })
        .await;
        connections.abort_all();
        sleds.abort_all();
        hub_task.abort();
        // The store closes once the task is gone (a commit under way finishes first): only then is its
        // directory free for another gateway.
        if let Some(closed) = self.store_closed
            && tokio::time::timeout(STORE_CLOSE_WAIT, closed).await.is_err()
        {
            tracing::warn!("the store did not close within {STORE_CLOSE_WAIT:?}");
        }
        if let Some(why) = hub_ended {
            return Err(GatewayRunError::Hub(why));
        }
        match self.failed.borrow().clone() {
            Some(why) => Err(GatewayRunError::Store(why)),
            None => Ok(()),
        }
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<tokio_rustls::TlsAcceptor, GatewayStartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    fn bad<E: std::error::Error + Send + Sync + 'static>(
        what: impl std::fmt::Display,
    ) -> impl FnOnce(E) -> GatewayStartError {
        move |e| GatewayStartError::Tls { what: what.to_string(), source: Box::new(e) }
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(bad(cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(bad(cert.display()))?;
    if certs.is_empty() {
        return Err(GatewayStartError::NoCertificate(cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(bad(key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(bad("protocol versions"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(bad("certificate and key"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves one connection from `peer`, whose address each request carries as [`axum::extract::ConnectInfo`].
async fn serve_http<S>(io: TokioIo<S>, header_timeout: Duration, router: axum::Router, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let router = router.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
    let service = hyper_util::service::TowerToHyperService::new(router);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Slow-loris clients are cut off.
        .header_read_timeout(header_timeout)
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

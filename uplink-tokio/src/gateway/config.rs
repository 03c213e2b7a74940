//! What a gateway is started with ([`GatewayServerConfig`]), the errors of its start and its run, and the
//! tokens it draws.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use uplink_proto::gateway::HubConfig;

use super::credentials::{Credentials, CredentialsError};
use super::notify::Webhook;
use super::wall::BadStoredRule;
use crate::store::StoreError;

/// Default address of `uplink gateway`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8700";

/// Largest admin request body accepted (`413` beyond).
pub const MAX_ADMIN_BODY: usize = 4 << 20;

/// Default of [`GatewayServerConfig::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Configuration of a [`GatewayServer`](super::GatewayServer), made with [`GatewayServerConfig::new`] (the original's shared
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
    /// Leave tool inputs out of the audit log, keeping their HMAC-SHA256 under a secret of the store's (a
    /// plain hash of a short command would give it away to a guess). `false` by default.
    pub audit_redact_inputs: bool,
    /// How often the audit log's head is handed out (logged, and written to [`audit_checkpoint_file`]) when
    /// it has moved; and once more as the gateway stops. A minute by default.
    ///
    /// [`audit_checkpoint_file`]: GatewayServerConfig::audit_checkpoint_file
    pub audit_checkpoint_every: Duration,
    /// A file each checkpoint of the audit log's head is appended to, as one JSON line
    /// (`uplink audit verify --checkpoints` reads it); best kept where the database's writers cannot write.
    pub audit_checkpoint_file: Option<PathBuf>,
    /// Serve `/metrics` to anyone who can reach the gateway; by default it needs a principal's token (any
    /// role). `false` by default.
    pub metrics_public: bool,
    /// Where each new pending request is POSTed as JSON (none by default).
    pub notify: Vec<Webhook>,
    /// Also notify how each request ended. `false` by default.
    pub notify_decisions: bool,
    /// Also send each checkpoint of the audit log's head to the generic webhooks. `false` by default.
    pub notify_checkpoints: bool,
    /// The address people reach the gateway (its console) at, for the links in notifications.
    pub public_url: Option<String>,
    /// The budget of failed authentications per source address (20 at once, then one a second; 16,384
    /// addresses remembered): past it, a wrong token gets `429` with `Retry-After` instead of `401`. A right
    /// token is never refused by it.
    pub auth_limit: uplink_proto::gateway::AuthLimitConfig,
    /// With a store several gateways share ([`Store::cluster`](crate::store::Store::cluster): PostgreSQL),
    /// the lease this node holds at the database: renewed every fifth of it; the node fences itself (every
    /// sled closed with 1012, to reconnect to another node; then it stops) a tenth of it before it could
    /// lapse. 10 s by default.
    pub lease: Duration,
    /// When asked to stop, first drain for at most this long: not ready, new sleds refused, each sled
    /// closed with 1012 once nothing of it is in flight (at once when it keeps its requests across a drop),
    /// so that a planned restart denies nothing a person could still decide. Zero (the default): stop at
    /// once.
    pub drain: Duration,
    /// With a store several gateways share: the internal listener on which this node's peers reach it
    /// (decisions made at another node for requests held here, and this node's listings). Never to be
    /// reached through the load balancer; calls on it are signed between nodes. With it, the node serves
    /// beside the other nodes; without, it serves alone (it starts only while no other node's lease
    /// holds).
    pub cluster_listen: Option<SocketAddr>,
    /// The `host:port` at which peers reach the internal listener; by default its bound address (which must
    /// then not be a wildcard such as `0.0.0.0`).
    pub cluster_advertise: Option<String>,
    /// An OpenID provider whose access tokens MCP clients may use on the MCP endpoint (the MCP authorization
    /// spec), with the roles people have by their claims. Needs `public_url`.
    pub oidc: Option<super::oidc::OidcConfig>,
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
            max_message_size: crate::sled::DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            audit_redact_inputs: false,
            audit_checkpoint_every: Duration::from_secs(60),
            audit_checkpoint_file: None,
            metrics_public: false,
            notify: Vec::new(),
            notify_decisions: false,
            notify_checkpoints: false,
            public_url: None,
            auth_limit: uplink_proto::gateway::AuthLimitConfig::default(),
            lease: Duration::from_secs(10),
            drain: Duration::ZERO,
            cluster_listen: None,
            cluster_advertise: None,
            oidc: None,
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
            .field("audit_checkpoint_every", &self.audit_checkpoint_every)
            .field("audit_checkpoint_file", &self.audit_checkpoint_file)
            .field("metrics_public", &self.metrics_public)
            .field("lease", &self.lease)
            .field("drain", &self.drain)
            .field("notify", &self.notify.iter().map(|w| crate::redact::redact_url(&w.url)).collect::<Vec<_>>())
            .field("notify_decisions", &self.notify_decisions)
            .field("notify_checkpoints", &self.notify_checkpoints)
            .field("public_url", &self.public_url)
            .field("auth_limit", &self.auth_limit)
            .field("oidc", &self.oidc)
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
    /// The cluster lease is shorter than a second: a node would fence on the first slow renewal.
    #[error("the lease must be at least 1s (it is renewed every fifth of it)")]
    ShortLease,
    /// An internal listener without a store several gateways share, or one whose address its peers could
    /// not use.
    #[error("--cluster-listen: {0}")]
    Cluster(&'static str),
    /// The OpenID provider's settings cannot be used.
    #[error("--oidc-issuer: {0}")]
    Oidc(&'static str),
    /// The session rules are invalid.
    #[error("configuration: {0}")]
    Config(#[from] uplink_proto::gateway::SessionConfigError),
    /// The store could not be read.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A kept rule no longer reads.
    #[error("{0}")]
    StoredRule(#[from] BadStoredRule),
    /// A task or thread could not be started.
    #[error("cannot start: {0}")]
    Spawn(std::io::Error),
}

/// Why a running gateway stopped on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayRunError {
    /// A commit to the store failed ("the store failed: …"), or this cluster node's lease lapsed and it
    /// fenced itself: nothing it held was sent, and every sled connection was closed.
    #[error("{0}")]
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

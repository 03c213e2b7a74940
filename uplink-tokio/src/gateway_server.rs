//! `uplink gateway`: the gateway side on hyper. One task per sled connection drives a
//! [`uplink_proto::gateway::Gateway`] session; a shared hub knows which connection serves which project and
//! which permissions are pending; an HTTP admin API lets people, bots and policies act.
//!
//! Routes (see PROTOCOL.md for examples):
//! - `GET /api/sled-uplink`: WebSocket upgrade for sleds, after the sled token (`?token=` or
//!   `Authorization: Bearer`) is checked in constant time; `401` before any upgrade otherwise.
//! - Admin, under `Authorization: Bearer <admin token>`: `GET /api/sleds`, `POST /api/sleds/{project}/mcp`,
//!   `GET /api/permissions`, `POST /api/permissions/{id}`, `GET /api/events` (Server-Sent Events).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::{debug, info, warn};
use uplink_proto::gateway::{
    CloseReason, Gateway, GatewayConfig, GatewayEvent, GatewayOutput, McpFailure, McpId, PermId, SendMcpError,
    Withdrawn,
};
use uplink_proto::{Decision, Instant, Received};

use crate::timer::Deadline;
use crate::ws::{CLOSE_GRACE, Link, Read, Target, WRITE_BATCH};

/// Default address of `uplink gateway`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8700";

/// Largest admin request body accepted (`413` beyond).
pub const MAX_ADMIN_BODY: usize = 4 << 20;

/// Default of [`GatewayServerConfig::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`GatewayServerConfig::max_disconnected_sleds`].
pub const DEFAULT_MAX_DISCONNECTED_SLEDS: usize = 1024;

/// Configuration of a [`GatewayServer`]. Its `Debug` output hides the tokens.
#[derive(Clone)]
pub struct GatewayServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Tokens that sleds may connect with (any of them).
    pub sled_tokens: Vec<String>,
    /// The token of the admin API; separate from every sled token.
    pub admin_token: String,
    /// Certificate chain and private key (PEM files) to serve HTTPS and `wss://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Largest WebSocket message accepted from a sled.
    pub max_message_size: usize,
    /// The protocol rules of every sled connection: timeouts, limits, auto policies.
    pub session: GatewayConfig,
    /// A client must finish its TLS handshake, and then send the headers of each HTTP request (a WebSocket
    /// upgrade included), within this long, or it is disconnected (slow-loris clients).
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] by default.
    pub handshake_timeout: Duration,
    /// How many disconnected sleds the admin API still lists (`"connected": false`, and `503` for their MCP
    /// route). Beyond it, the one disconnected longest ago is forgotten (then `404`), so that sleds coming
    /// and going under ever new project names cannot grow the gateway's memory without bound.
    /// [`DEFAULT_MAX_DISCONNECTED_SLEDS`] by default.
    pub max_disconnected_sleds: usize,
}

impl std::fmt::Debug for GatewayServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayServerConfig")
            .field("listen", &self.listen)
            .field("sled_tokens", &format_args!("[{} redacted]", self.sled_tokens.len()))
            .field("admin_token", &"[redacted]")
            .field("tls", &self.tls)
            .field("max_message_size", &self.max_message_size)
            .field("session", &self.session)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_disconnected_sleds", &self.max_disconnected_sleds)
            .finish()
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    /// No sled token, no admin token, or an admin token equal to a sled token.
    #[error("{0}")]
    Tokens(&'static str),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The handshake timeout is zero: every client would be cut off.
    #[error("the handshake timeout must not be zero")]
    ZeroHandshakeTimeout,
    /// The session rules are invalid.
    #[error("configuration: {0}")]
    Config(#[from] uplink_proto::gateway::GatewayConfigError),
}

/// A random token: 32 bytes from the operating system's secure generator, hex-encoded. Fails only when the
/// generator does; a weak token is never invented instead.
pub fn generate_token() -> Result<String, GatewayStartError> {
    let mut bytes = [0u8; 32];
    let rng = rustls::crypto::ring::default_provider().secure_random;
    rng.fill(&mut bytes).map_err(|_| GatewayStartError::Tokens("the system's secure random generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

// ── The hub: shared state of the gateway ─────────────────────────────────────────────────────────────────

enum ConnCmd {
    Decide {
        perm: PermId,
        decision: Decision,
        reply: oneshot::Sender<bool>,
    },
    Mcp {
        body: String,
        session: Option<String>,
        reply: oneshot::Sender<McpOutcome>,
    },
    Replace,
    /// The server is stopping.
    Shutdown,
}

enum McpOutcome {
    Response(String),
    Failed(McpFailure),
    Refused(SendMcpError),
}

struct SledEntry {
    conn: u64,
    tx: Option<mpsc::Sender<ConnCmd>>,
    /// Set when its connection ended: the place in the order of disconnections.
    disconnected: Option<u64>,
    connected_at: TokioInstant,
    status: Arc<ConnStatus>,
}

/// What the admin API shows of a connection's session, published by its task after every turn without
/// taking the hub's lock.
#[derive(Default)]
struct ConnStatus {
    pending_permissions: AtomicUsize,
    pending_mcp: AtomicUsize,
    stale: AtomicBool,
    /// Of the last frame or pong, in the hub's clock (microseconds since its epoch).
    last_seen_us: AtomicU64,
}

impl ConnStatus {
    fn publish(&self, session: &Gateway) {
        self.pending_permissions.store(session.pending_permissions(), Ordering::Relaxed);
        self.pending_mcp.store(session.pending_mcp(), Ordering::Relaxed);
        self.stale.store(session.is_stale(), Ordering::Relaxed);
        self.last_seen_us.store(session.last_seen().as_micros(), Ordering::Relaxed);
    }
}

struct PermEntry {
    project: String,
    conn: u64,
    perm: PermId,
    tool_name: String,
    tool_input: String,
    created: TokioInstant,
}

#[derive(Default)]
struct HubState {
    sleds: BTreeMap<String, SledEntry>,
    /// Disconnected sleds, oldest first, by their place in the order of disconnections. An entry whose sled
    /// has reconnected (or disconnected again since) is out of date and skipped.
    disconnected: VecDeque<(u64, String)>,
    /// Sleds listed as disconnected now.
    disconnected_count: usize,
    next_disconnect: u64,
    perms: BTreeMap<String, PermEntry>,
    next_conn: u64,
}

impl HubState {
    /// Records a sled's new connection; returns the entry it replaces.
    fn connected(&mut self, project: String, entry: SledEntry) -> Option<SledEntry> {
        let old = self.sleds.insert(project, entry);
        if old.as_ref().is_some_and(|o| o.disconnected.is_some()) {
            self.disconnected_count -= 1;
        }
        old
    }

    /// Records that `project`'s connection ended, and forgets the sleds disconnected longest ago beyond
    /// `max`.
    fn disconnected(&mut self, project: &str, conn: u64, max: usize) {
        let Some(s) = self.sleds.get_mut(project).filter(|s| s.conn == conn) else { return };
        s.tx = None;
        if s.disconnected.is_none() {
            self.next_disconnect += 1;
            s.disconnected = Some(self.next_disconnect);
            self.disconnected.push_back((self.next_disconnect, project.to_owned()));
            self.disconnected_count += 1;
        }
        let current = |sleds: &BTreeMap<String, SledEntry>, seq: u64, project: &str| {
            sleds.get(project).is_some_and(|s| s.disconnected == Some(seq))
        };
        while self.disconnected_count > max {
            let Some((seq, oldest)) = self.disconnected.pop_front() else { break };
            if current(&self.sleds, seq, &oldest) {
                self.sleds.remove(&oldest);
                self.disconnected_count -= 1;
            }
        }
        // Sleds that reconnect leave out-of-date places behind: drop them before they outnumber the rest.
        if self.disconnected.len() > 2 * self.disconnected_count + 64 {
            let sleds = &self.sleds;
            self.disconnected.retain(|(seq, project)| current(sleds, *seq, project));
        }
    }
}

struct Hub {
    state: Mutex<HubState>,
    events: broadcast::Sender<(String, Value)>,
    /// Becomes true when the server stops: event streams end.
    closing: tokio::sync::watch::Sender<bool>,
    sled_tokens: Vec<String>,
    admin_token: String,
    session: GatewayConfig,
    ws_config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    handshake_timeout: Duration,
    max_disconnected_sleds: usize,
    /// The tasks of the sled connections (after their WebSocket upgrade), so that a stopping server can wait
    /// for their close handshakes.
    sled_tasks: Mutex<tokio::task::JoinSet<()>>,
    epoch: TokioInstant,
}

fn perm_key(conn: u64, perm: PermId) -> String {
    format!("{conn}-{}", perm.0)
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way worse than stale
        // entries, so a poisoned lock is still used.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether any `/api/events` stream is open.
    fn listening(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Sends an event to every `/api/events` stream. The event is only built when a stream is open.
    fn publish(&self, kind: &str, data: impl FnOnce() -> Value) {
        if self.listening() {
            let _ = self.events.send((kind.to_owned(), data()));
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn token_matches(candidates: &[String], given: &str) -> bool {
        // Compare with every candidate, always, in constant time per comparison.
        candidates.iter().fold(false, |found, t| found | bool::from(t.as_bytes().ct_eq(given.as_bytes())))
    }
}

// ── The server ───────────────────────────────────────────────────────────────────────────────────────────

/// A bound gateway, ready to [`run`](GatewayServer::run).
pub struct GatewayServer {
    listener: TcpListener,
    hub: Arc<Hub>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl GatewayServer {
    /// Validates the configuration and binds the listener.
    pub async fn bind(config: GatewayServerConfig) -> Result<GatewayServer, GatewayStartError> {
        if config.sled_tokens.iter().all(|t| t.is_empty()) {
            return Err(GatewayStartError::Tokens("at least one sled token is required"));
        }
        if config.admin_token.is_empty() {
            return Err(GatewayStartError::Tokens("an admin token is required"));
        }
        if config.sled_tokens.contains(&config.admin_token) {
            return Err(GatewayStartError::Tokens("the admin token must differ from every sled token"));
        }
        Gateway::new(config.session.clone(), Instant::ZERO)?;
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
        let (events, _) = broadcast::channel(1024);
        let hub = Arc::new(Hub {
            state: Mutex::new(HubState::default()),
            events,
            closing: tokio::sync::watch::Sender::new(false),
            sled_tokens: config.sled_tokens.into_iter().filter(|t| !t.is_empty()).collect(),
            admin_token: config.admin_token,
            session: config.session,
            ws_config: Target::ws_config(config.max_message_size),
            handshake_timeout: config.handshake_timeout,
            max_disconnected_sleds: config.max_disconnected_sleds,
            sled_tasks: Mutex::new(tokio::task::JoinSet::new()),
            epoch: TokioInstant::now(),
        });
        Ok(GatewayServer { listener, hub, tls })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` completes; then closes every sled connection.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(stop);
        loop {
            let tcp = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        warn!(%e, "accept failed");
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let _ = tcp.set_nodelay(true);
            let hub = self.hub.clone();
            let tls = self.tls.clone();
            connections.spawn(async move {
                match tls {
                    Some(acceptor) => match tokio::time::timeout(hub.handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_http(TokioIo::new(stream), hub).await,
                        _ => debug!("TLS handshake failed or timed out"),
                    },
                    None => serve_http(TokioIo::new(tcp), hub).await,
                }
            });
            while connections.try_join_next().is_some() {}
        }
        // End event streams, ask every identified sled's connection to close (1001, going away), give them all
        // a moment to finish their close handshakes, then stop what is left.
        self.hub.closing.send_replace(true);
        let senders: Vec<mpsc::Sender<ConnCmd>> = self.hub.lock().sleds.values().filter_map(|s| s.tx.clone()).collect();
        for tx in senders {
            // A connection whose commands are backed up is stopped with the rest after the grace.
            let _ = tx.try_send(ConnCmd::Shutdown);
        }
        let mut sleds = std::mem::take(&mut *self.hub.sled_tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while connections.join_next().await.is_some() {}
            while sleds.join_next().await.is_some() {}
        })
        .await;
        connections.abort_all();
        sleds.abort_all();
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<tokio_rustls::TlsAcceptor, GatewayStartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| GatewayStartError::Tls(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(&cert.display().to_string(), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&cert.display().to_string(), &e))?;
    if certs.is_empty() {
        return Err(GatewayStartError::Tls(format!("{}: no certificate found", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&key.display().to_string(), &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate and key", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

use crate::http::{Body, error, json_response, read_limited};

async fn serve_http<S>(io: TokioIo<S>, hub: Arc<Hub>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let header_timeout = hub.handshake_timeout;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let hub = hub.clone();
        async move { Ok::<_, Infallible>(route(request, hub).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Slow-loris clients are cut off.
        .header_read_timeout(header_timeout)
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

fn bearer(request: &Request<Incoming>) -> Option<&str> {
    request.headers().get(AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn query_token(request: &Request<Incoming>) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

async fn route(request: Request<Incoming>, hub: Arc<Hub>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/api/sled-uplink" {
        return sled_upgrade(request, hub);
    }
    if !path.starts_with("/api/") {
        return error(StatusCode::NOT_FOUND, "no such route");
    }
    let authorized = bearer(&request).is_some_and(|t| Hub::token_matches(std::slice::from_ref(&hub.admin_token), t));
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "admin token required (Authorization: Bearer …)");
    }
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    match (request.method().clone(), segments.as_slice()) {
        (Method::GET, ["sleds"]) => list_sleds(&hub),
        (Method::POST, ["sleds", project, "mcp"]) => {
            let project = percent_encoding::percent_decode_str(project).decode_utf8_lossy().into_owned();
            relay_mcp(request, &hub, &project).await
        }
        (Method::GET, ["permissions"]) => list_permissions(&hub),
        (Method::POST, ["permissions", id]) => {
            let id = (*id).to_owned();
            decide(request, &hub, &id).await
        }
        (Method::GET, ["events"]) => events(&hub),
        (_, ["sleds"] | ["sleds", _, "mcp"] | ["permissions"] | ["permissions", _] | ["events"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        }
        _ => error(StatusCode::NOT_FOUND, "no such route"),
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    read_limited(request.into_body(), MAX_ADMIN_BODY).await
}

fn list_sleds(hub: &Hub) -> Response<Body> {
    let now = hub.now().as_micros();
    let state = hub.lock();
    let sleds: Vec<Value> = state
        .sleds
        .iter()
        .map(|(project, s)| {
            json!({
                "project": project,
                "connected": s.tx.is_some(),
                "stale": s.status.stale.load(Ordering::Relaxed),
                "connected_for_ms": if s.tx.is_some() { s.connected_at.elapsed().as_millis() as u64 } else { 0 },
                "last_seen_ms_ago": now.saturating_sub(s.status.last_seen_us.load(Ordering::Relaxed)) / 1000,
                "pending_permissions": s.status.pending_permissions.load(Ordering::Relaxed),
                "pending_mcp": s.status.pending_mcp.load(Ordering::Relaxed),
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "sleds": sleds }))
}

fn list_permissions(hub: &Hub) -> Response<Body> {
    let state = hub.lock();
    let perms: Vec<Value> = state
        .perms
        .iter()
        .map(|(id, p)| {
            let input: Value = serde_json::from_str(&p.tool_input).unwrap_or(Value::Null);
            json!({
                "id": id,
                "project": p.project,
                "tool_name": p.tool_name,
                "tool_input": input,
                "age_ms": p.created.elapsed().as_millis() as u64,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "permissions": perms }))
}

async fn relay_mcp(request: Request<Incoming>, hub: &Hub, project: &str) -> Response<Body> {
    let session = request.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = match read_body(request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return error(StatusCode::BAD_REQUEST, "body must be a UTF-8 JSON-RPC message");
    };
    if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_err() {
        return error(StatusCode::BAD_REQUEST, "body must be a JSON-RPC message");
    }
    let tx = {
        let state = hub.lock();
        match state.sleds.get(project) {
            None => return error(StatusCode::NOT_FOUND, "unknown project"),
            Some(s) => match &s.tx {
                Some(tx) => tx.clone(),
                None => return error(StatusCode::SERVICE_UNAVAILABLE, "the sled is not connected"),
            },
        }
    };
    let (reply, answer) = oneshot::channel();
    if tx.send(ConnCmd::Mcp { body, session, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the sled's connection ended");
    }
    match answer.await {
        Ok(McpOutcome::Response(payload)) if payload == "null" => {
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
        Ok(McpOutcome::Response(payload)) => {
            let mut r = Response::new(Full::new(Bytes::from(payload)).boxed());
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Ok(McpOutcome::Failed(McpFailure::Timeout)) => {
            error(StatusCode::GATEWAY_TIMEOUT, "the sled did not answer in time")
        }
        Ok(McpOutcome::Failed(McpFailure::ConnectionLost)) | Err(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the sled's connection ended before it answered")
        }
        Ok(McpOutcome::Refused(SendMcpError::TooMany)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "too many MCP requests in flight for this sled")
        }
        Ok(McpOutcome::Refused(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the sled is not connected"),
    }
}

async fn decide(request: Request<Incoming>, hub: &Hub, id: &str) -> Response<Body> {
    #[derive(serde::Deserialize)]
    struct Body {
        approved: bool,
        #[serde(default)]
        always_allow: bool,
    }
    let body = match read_body(request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"approved\": bool, \"always_allow\": bool}}: {e}"),
            );
        }
    };
    if body.always_allow && !body.approved {
        // A person (or bot) saying "not approved, but always allow" has made a mistake: never guess an approval.
        return error(StatusCode::BAD_REQUEST, "always_allow requires approved: true");
    }
    let target = {
        let state = hub.lock();
        state.perms.get(id).and_then(|p| {
            let tx = state.sleds.get(&p.project).filter(|s| s.conn == p.conn).and_then(|s| s.tx.clone())?;
            Some((tx, p.perm))
        })
    };
    let Some((tx, perm)) = target else {
        return error(StatusCode::NOT_FOUND, "no pending permission with this id");
    };
    let (reply, answer) = oneshot::channel();
    let decision = Decision::from_flags(body.approved, body.always_allow);
    if tx.send(ConnCmd::Decide { perm, decision, reply }).await.is_err() {
        return error(StatusCode::NOT_FOUND, "no pending permission with this id");
    }
    match answer.await {
        Ok(true) => json_response(StatusCode::OK, &json!({"id": id, "decision": decision_word(decision)})),
        _ => error(StatusCode::NOT_FOUND, "no pending permission with this id"),
    }
}

fn decision_word(d: Decision) -> &'static str {
    match d {
        Decision::Approve => "approve",
        Decision::Deny => "deny",
        Decision::AlwaysAllow => "always_allow",
    }
}

fn events(hub: &Hub) -> Response<Body> {
    let rx = hub.events.subscribe();
    let closing = hub.closing.subscribe();
    let stream = futures_util::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        if *closing.borrow() {
            return None;
        }
        let text = tokio::select! {
            received = tokio::time::timeout(Duration::from_secs(15), rx.recv()) => match received {
                Ok(Ok((kind, data))) => format!("event: {kind}\ndata: {data}\n\n"),
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    format!("event: lagged\ndata: {}\n\n", json!({"missed": n}))
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Err(_) => ": keep-alive\n\n".to_owned(),
            },
            _ = closing.changed() => return None,
        };
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), (rx, closing)))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

// ── Sled connections ─────────────────────────────────────────────────────────────────────────────────────

fn sled_upgrade(request: Request<Incoming>, hub: Arc<Hub>) -> Response<Body> {
    if request.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use GET with a WebSocket upgrade");
    }
    let token = query_token(&request).or_else(|| bearer(&request).map(str::to_owned));
    if !token.is_some_and(|t| Hub::token_matches(&hub.sled_tokens, &t)) {
        return error(StatusCode::UNAUTHORIZED, "sled token required (?token= or Authorization: Bearer)");
    }
    let upgrade = request.headers().get("upgrade").and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(key) = request.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes())) else {
        return error(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return error(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    }
    let task = {
        let hub = hub.clone();
        async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => {
                    let ws =
                        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(hub.ws_config))
                            .await;
                    sled_connection(ws, hub).await;
                }
                Err(e) => debug!(%e, "WebSocket upgrade failed"),
            }
        }
    };
    {
        let mut tasks = hub.sled_tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock that a stopping server takes after setting `closing`: every connection
        // accepted here is one the server waits for.
        if *hub.closing.borrow() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down");
        }
        // Reap the finished ones as new ones come, so the set holds only live connections.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// Drives one sled connection's session: socket in, commands in, timer; outputs out. The socket is read and
/// written from this one loop ([`Link`]): writes never block it, so a sled that stops reading cannot hold up
/// its commands or timers; it fills the queue and is dropped.
async fn sled_connection<S>(ws: WebSocketStream<S>, hub: Arc<Hub>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut session) = Gateway::new(hub.session.clone(), hub.now()) else { return };
    let conn = {
        let mut state = hub.lock();
        state.next_conn += 1;
        state.next_conn
    };
    let (tx, mut rx) = mpsc::channel::<ConnCmd>(64);
    let mut link = Link::new(Box::new(ws));
    let mut project: Option<String> = None;
    let mut waiters: BTreeMap<McpId, oneshot::Sender<McpOutcome>> = BTreeMap::new();
    let status = Arc::new(ConnStatus::default());
    // How the connection ends: with our close frame, answering the sled's, or simply dropped.
    let mut ending: Option<Ending> = None;
    let mut timer = Deadline::new();
    let mut unwritten = 0u32;
    let mut turn = 0u8;
    loop {
        // Carry out every output.
        while let Some(out) = session.poll_output() {
            let message = match out {
                GatewayOutput::Send(text) => Message::text(text),
                GatewayOutput::Ping => Message::Ping(Bytes::new()),
                GatewayOutput::Close(reason) => {
                    ending.get_or_insert(Ending::Close(reason.code(), reason.text()));
                    continue;
                }
                GatewayOutput::Event(event) => {
                    on_event(&hub, conn, &status, &tx, &mut project, &mut waiters, event);
                    continue;
                }
            };
            if !link.queue(message) {
                debug!(conn, "sled stopped reading; dropping it");
                ending.get_or_insert(Ending::Drop);
                session.handle_disconnected(hub.now());
            }
        }
        status.publish(&session);
        if session.is_closed() {
            break;
        }
        timer.set(session.poll_timeout().map(|at| hub.epoch + Duration::from_micros(at.as_micros())));
        // Inputs first; queued frames are written when nothing else is ready, or after a batch of inputs.
        let wake = std::future::poll_fn(|cx| {
            if unwritten >= WRITE_BATCH
                && let Poll::Ready(Err(detail)) = link.poll_write(cx, None)
            {
                return Poll::Ready(ConnWake::WriteFailed(detail));
            }
            // Each source goes first in turn, so a flood on one cannot starve the others.
            let first = turn;
            turn = (turn + 1) % 3;
            for i in 0..3 {
                let ready = match (first + i) % 3 {
                    0 => link.poll_read(cx, None).map(ConnWake::Read),
                    1 => rx.poll_recv(cx).map(ConnWake::Cmd),
                    _ => timer.poll(cx).map(|()| ConnWake::Timer),
                };
                if ready.is_ready() {
                    unwritten += 1;
                    return ready;
                }
            }
            unwritten = 0;
            match link.poll_write(cx, None) {
                Poll::Ready(Err(detail)) => Poll::Ready(ConnWake::WriteFailed(detail)),
                _ => Poll::Pending,
            }
        })
        .await;
        let now = hub.now();
        match wake {
            ConnWake::Read(Read::Message(message)) => match message {
                Message::Text(t) => session.handle_received(now, Received::Text(t.as_str())),
                Message::Binary(b) => session.handle_received(now, Received::Binary(&b)),
                Message::Ping(_) => session.handle_received(now, Received::Ping),
                Message::Pong(_) => session.handle_received(now, Received::Pong),
                Message::Close(_) | Message::Frame(_) => {}
            },
            ConnWake::Read(Read::ClosedByPeer(_)) => {
                ending.get_or_insert(Ending::Answer);
                session.handle_disconnected(now);
            }
            ConnWake::Read(Read::TooBig(detail)) => {
                // Oversized message: tell the sled why (1009) before dropping it.
                debug!(conn, %detail, "sled connection failed");
                ending.get_or_insert(Ending::Close(1009, "message too big"));
                session.handle_disconnected(now);
            }
            ConnWake::Read(Read::Ended(detail)) | ConnWake::WriteFailed(detail) => {
                debug!(conn, %detail, "sled connection failed");
                ending.get_or_insert(Ending::Drop);
                session.handle_disconnected(now);
            }
            ConnWake::Cmd(cmd) => match cmd {
                Some(ConnCmd::Decide { perm, decision, reply }) => {
                    let decided = session.decide(now, perm, decision).is_ok();
                    if decided {
                        let id = perm_key(conn, perm);
                        hub.lock().perms.remove(&id);
                        hub.publish(
                            "permission_decided",
                            || json!({"id": id, "project": project, "decision": decision_word(decision)}),
                        );
                    }
                    let _ = reply.send(decided);
                }
                Some(ConnCmd::Mcp { body, session: s, reply }) => match session.send_mcp(now, &body, s.as_deref()) {
                    Ok(id) => {
                        waiters.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(McpOutcome::Refused(e));
                    }
                },
                Some(ConnCmd::Replace) => session.close(now, CloseReason::Replaced),
                Some(ConnCmd::Shutdown) => session.close(now, CloseReason::ShuttingDown),
                None => {}
            },
            ConnWake::Timer => session.handle_timeout(now),
        }
    }
    match ending {
        Some(Ending::Drop) => {}
        Some(Ending::Answer) => link.finish(None).await,
        Some(Ending::Close(code, reason)) => link.finish(Some((code, reason))).await,
        None => link.finish(Some((1000, ""))).await,
    }
}

/// What woke a gateway connection's loop.
enum ConnWake {
    Read(Read),
    Cmd(Option<ConnCmd>),
    Timer,
    WriteFailed(String),
}

/// How a gateway connection ends.
#[derive(Clone, Copy)]
enum Ending {
    /// Send this close frame (after what is queued) and wait for the sled's answer.
    Close(u16, &'static str),
    /// The sled closed first: send the library's answer.
    Answer,
    /// The socket is of no use: drop it.
    Drop,
}

fn on_event(
    hub: &Hub,
    conn: u64,
    status: &Arc<ConnStatus>,
    tx: &mpsc::Sender<ConnCmd>,
    project: &mut Option<String>,
    waiters: &mut BTreeMap<McpId, oneshot::Sender<McpOutcome>>,
    event: GatewayEvent,
) {
    match event {
        GatewayEvent::Identified { project: name, protocol, sled_version, capabilities } => {
            let replaced = {
                let mut state = hub.lock();
                let now = TokioInstant::now();
                let entry = SledEntry {
                    conn,
                    tx: Some(tx.clone()),
                    disconnected: None,
                    connected_at: now,
                    status: status.clone(),
                };
                state.connected(name.clone(), entry).and_then(|o| o.tx)
            };
            if let Some(old) = replaced {
                let _ = old.try_send(ConnCmd::Replace);
            }
            info!(project = %name, conn, "sled connected");
            hub.publish(
                "sled_connected",
                || json!({"project": name, "protocol": protocol, "sled_version": sled_version, "capabilities": capabilities}),
            );
            *project = Some(name);
        }
        GatewayEvent::Heartbeat | GatewayEvent::FrameIgnored(_) => {}
        GatewayEvent::PermissionRequested { perm, req_id, tool_name, tool_input } => {
            let Some(p) = project.clone() else { return };
            let id = perm_key(conn, perm);
            // Built before the request is registered (which takes its input), and only for a listener.
            let event = hub.listening().then(|| {
                // Input that does not parse (nested too deep) shows as null.
                let input: Value = serde_json::from_str(&tool_input).unwrap_or(Value::Null);
                json!({"id": id, "project": p, "req_id": req_id, "tool_name": tool_name, "tool_input": input})
            });
            hub.lock().perms.insert(
                id,
                PermEntry {
                    project: p,
                    conn,
                    perm,
                    tool_name,
                    tool_input: tool_input.to_string(),
                    created: TokioInstant::now(),
                },
            );
            if let Some(event) = event {
                hub.publish("permission_requested", || event);
            }
        }
        GatewayEvent::PermissionAutoDecided { req_id, tool_name, decision } => hub.publish(
            "permission_auto_decided",
            || json!({"project": project, "req_id": req_id, "tool_name": tool_name, "decision": decision_word(decision)}),
        ),
        GatewayEvent::PermissionWithdrawn { perm, reason } => {
            let id = perm_key(conn, perm);
            hub.lock().perms.remove(&id);
            let reason = match reason {
                Withdrawn::Cancelled => "cancelled",
                Withdrawn::ConnectionLost => "connection_lost",
            };
            hub.publish("permission_withdrawn", || json!({"id": id, "project": project, "reason": reason}));
        }
        GatewayEvent::McpResponse { id, payload } => {
            if let Some(w) = waiters.remove(&id) {
                let _ = w.send(McpOutcome::Response(payload));
            }
        }
        GatewayEvent::McpFailed { id, reason } => {
            if let Some(w) = waiters.remove(&id) {
                let _ = w.send(McpOutcome::Failed(reason));
            }
        }
        GatewayEvent::Stale => hub.publish("sled_stale", || json!({"project": project})),
        GatewayEvent::Alive => hub.publish("sled_alive", || json!({"project": project})),
        GatewayEvent::Closed => {
            if let Some(p) = project.as_deref() {
                let mut state = hub.lock();
                state.disconnected(p, conn, hub.max_disconnected_sleds);
                state.perms.retain(|_, perm| perm.conn != conn);
                drop(state);
                info!(project = %p, conn, "sled disconnected");
                hub.publish("sled_disconnected", || json!({"project": p}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(conn: u64) -> SledEntry {
        SledEntry {
            conn,
            tx: None,
            disconnected: None,
            connected_at: TokioInstant::now(),
            status: Arc::new(ConnStatus::default()),
        }
    }

    #[test]
    fn a_sled_that_comes_and_goes_for_ever_keeps_the_bookkeeping_bounded() {
        let mut state = HubState::default();
        for conn in 0..10_000 {
            let _ = state.connected("flappy".to_owned(), entry(conn));
            state.disconnected("flappy", conn, 4);
            assert!(state.disconnected.len() <= 2 * state.disconnected_count + 65, "{}", state.disconnected.len());
        }
        assert_eq!((state.sleds.len(), state.disconnected_count), (1, 1));
        // A report for a connection that was replaced changes nothing.
        let _ = state.connected("flappy".to_owned(), entry(10_000));
        state.disconnected("flappy", 9_999, 4);
        assert_eq!(state.disconnected_count, 0);
        // Forgetting goes oldest first and keeps the count exact.
        for (conn, project) in ["a", "b", "c", "d", "e", "f"].into_iter().enumerate() {
            let conn = 20_000 + conn as u64;
            let _ = state.connected(project.to_owned(), entry(conn));
            state.disconnected(project, conn, 4);
        }
        let names: Vec<&str> = state.sleds.keys().map(String::as_str).collect();
        assert_eq!(names, ["c", "d", "e", "f", "flappy"]);
        assert_eq!(state.disconnected_count, 4);
    }
}

//! The gateway's MCP endpoint (`/api/sleds/{project}/mcp`) as a Streamable HTTP server (MCP 2025-11-25):
//! its client sessions and what each HTTP request gets, as a pure machine.
//!
//! The hub owns one ([`Hub::handle_mcp_http`](super::Hub::handle_mcp_http)): the adapter reads the request
//! (method, headers, body) into an [`EndpointRequest`], and the hub asks [`McpEndpoint::route`], opens the
//! exchange the [`Route`] says, and keeps the session's state by its answer. Every status a client can see
//! for a reason of the protocol is chosen here. Idle sessions end on time: [`McpEndpoint::poll_timeout`]
//! says when the next one is due.
//!
//! - **Sessions are minted here, on `initialize`.** The id is drawn by the adapter (32 random bytes, hex)
//!   and bound to the admin principal that sent the `initialize` and to the project of the URL. Any other
//!   principal, or the same id under another project, finds no session (`404`, as an unknown id), so one
//!   client can never reach another's session.
//! - **A session ends** on `DELETE`, after [`McpEndpointConfig::idle_timeout`] without a request (an open
//!   standalone stream counts as use), when its `initialize` failed, or when the sled answers that it is
//!   gone ([`session_gone`]: its caller gets `404`). The sled is told (`mcp_session_end`), so that it ends
//!   the local session too.
//! - **Budgets**: [`McpEndpointConfig::max_sessions`] in all and [`McpEndpointConfig::max_per_principal`]
//!   per principal (`503` beyond); one standalone stream per session (`409` for a second).
//!
//! ```text
//!  POST initialize, no session ─▶ Initializing ──answer with result──▶ Open ──DELETE / idle──▶ gone
//!                                      │                                 └── the sled: session gone ──▶ gone (404)
//!                                      └── error answer, failure ──▶ gone          (sled told)
//! ```

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use super::hub_outputs::McpRefused;
use super::sled_session::McpFailure;
use crate::ids::McpTicket;
use crate::jsonrpc::{self, BodyId};
use crate::time::Instant;
use crate::wire::RawValue;

/// The protocol versions the endpoint accepts in `MCP-Protocol-Version`.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The shapes of an [`McpEndpoint`]. [`McpEndpointConfig::default`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpEndpointConfig {
    /// Most sessions open at once. Default 4,096.
    pub max_sessions: usize,
    /// Most sessions one principal holds. Default 256.
    pub max_per_principal: usize,
    /// A session without a request for this long ends. Default 1 h.
    pub idle_timeout: Duration,
}

impl Default for McpEndpointConfig {
    fn default() -> Self {
        McpEndpointConfig { max_sessions: 4096, max_per_principal: 256, idle_timeout: Duration::from_secs(3600) }
    }
}

/// The HTTP method of a request to the endpoint.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `POST`: one JSON-RPC message.
    Post,
    /// `GET`: open the session's standalone stream.
    Get,
    /// `DELETE`: end the session.
    Delete,
}

/// What the adapter read of one HTTP request.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct EndpointRequest<'a> {
    /// The method.
    pub method: Method,
    /// The project in the URL.
    pub project: &'a str,
    /// The authenticated principal's name.
    pub principal: &'a str,
    /// `Mcp-Session-Id`.
    pub session: Option<&'a str>,
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<&'a str>,
    /// True when `Accept` lists `text/event-stream` (or accepts anything).
    pub accepts_stream: bool,
    /// What the body is, for a `POST`.
    pub body: Body,
}

/// What a `POST`'s body is, as far as the endpoint cares. Read when the request is built
/// ([`EndpointRequest::body`]), so that no JSON is read while the adapter holds the endpoint's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// Not JSON (or not UTF-8).
    NotJson,
    /// JSON, but not one message object (a batch, a scalar).
    NotOneMessage,
    /// An `initialize` request.
    Initialize,
    /// Any other message: a request, a notification, a response.
    Message,
}

impl Body {
    /// Reads `text`.
    pub fn read(text: &str) -> Body {
        let probe = jsonrpc::probe(text);
        if probe.id == BodyId::NotJson {
            Body::NotJson
        } else if !crate::wire::is_object(text) {
            Body::NotOneMessage
        } else if probe.is_initialize {
            Body::Initialize
        } else {
            Body::Message
        }
    }
}

impl<'a> EndpointRequest<'a> {
    /// A request of `method` by `principal` to `project`'s endpoint; the rest is filled in with the setters.
    pub fn new(method: Method, project: &'a str, principal: &'a str) -> Self {
        EndpointRequest {
            method,
            project,
            principal,
            session: None,
            protocol_version: None,
            accepts_stream: true,
            body: Body::Message,
        }
    }

    /// With `Mcp-Session-Id`.
    pub fn session(mut self, session: Option<&'a str>) -> Self {
        self.session = session;
        self
    }

    /// With `MCP-Protocol-Version`.
    pub fn protocol_version(mut self, version: Option<&'a str>) -> Self {
        self.protocol_version = version;
        self
    }

    /// Whether `Accept` allows an event stream.
    pub fn accepts_stream(mut self, accepts: bool) -> Self {
        self.accepts_stream = accepts;
        self
    }

    /// With the body, read now ([`Body::read`]).
    pub fn body(mut self, body: &str) -> Self {
        self.body = Body::read(body);
        self
    }

    /// With a body already read.
    pub fn read_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// Whether it would open a session (a `POST` of an `initialize`), so that the adapter draws an id for it.
    pub fn opens_session(&self) -> bool {
        self.method == Method::Post && self.body == Body::Initialize
    }
}

/// A request refused: the HTTP status and a JSON-RPC error for the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// JSON-RPC error code.
    pub code: i32,
    /// The error's message.
    pub message: &'static str,
}

impl Refusal {
    /// The JSON-RPC error body (`id` `null`: a refused request is not read further).
    pub fn body(&self) -> String {
        self.body_for(None)
    }

    /// The JSON-RPC error body answering the request whose id is `id`.
    pub fn body_for(&self, id: Option<&RawValue>) -> String {
        String::from(jsonrpc::error_response(id, self.code, self.message).get())
    }
}

/// What the caller of an exchange that ended without an answer gets.
pub fn failed(reason: McpFailure) -> Refusal {
    match reason {
        McpFailure::Timeout => {
            Refusal { status: 504, code: jsonrpc::INTERNAL_ERROR, message: "the sled did not answer in time" }
        }
        _ => Refusal {
            status: 503,
            code: jsonrpc::INTERNAL_ERROR,
            message: "the sled's connection ended before it answered",
        },
    }
}

/// What the caller of an exchange the hub could not open gets.
pub fn refused(reason: McpRefused) -> Refusal {
    match reason {
        McpRefused::UnknownProject => {
            Refusal { status: 404, code: jsonrpc::INTERNAL_ERROR, message: "unknown project" }
        }
        McpRefused::TooMany => Refusal {
            status: 503,
            code: jsonrpc::INTERNAL_ERROR,
            message: "too many MCP requests in flight for this sled",
        },
        McpRefused::Unsupported => NO_STREAM_HERE,
        _ => Refusal { status: 503, code: jsonrpc::INTERNAL_ERROR, message: "the sled is not connected" },
    }
}

const NO_STREAM_HERE: Refusal =
    Refusal { status: 405, code: jsonrpc::METHOD_NOT_FOUND, message: "the sled does not relay MCP streams" };

/// What a `GET` gets when its standalone stream ended before it opened, with the sled's `mcp_response`
/// payload: `405` when the sled's server offers no standalone stream (the sled's `-32601`), else `502`.
pub fn stream_not_opened(end: &str) -> Refusal {
    #[derive(serde::Deserialize)]
    struct Response {
        error: Option<Error>,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        code: i64,
    }
    let code = crate::wire::object::<Response>(end).and_then(|r| r.error).map(|e| e.code);
    if code == Some(i64::from(jsonrpc::METHOD_NOT_FOUND)) {
        Refusal {
            status: 405,
            code: jsonrpc::METHOD_NOT_FOUND,
            message: "the sled's MCP server offers no standalone stream",
        }
    } else {
        Refusal { status: 502, code: jsonrpc::INTERNAL_ERROR, message: "the sled's MCP server did not open the stream" }
    }
}

/// Whether `answer`, the sled's answer to a message relayed in a session, says the session is gone: a
/// JSON-RPC error [`SESSION_NOT_FOUND`]. The sled answers so when its local server lost the session and it
/// cannot renew it (it kept no `initialize` for it: the sled's budget let it go); a local server may say so
/// itself. The session then ends here too ([`McpEndpoint::close`], and the sled is told), and an answer
/// sent as JSON gets the status `404` with that answer as its body, as for any unknown session: an MCP
/// client that gets `404` for its session starts a new one with `initialize`. To read outside any lock.
pub fn session_gone(answer: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Response {
        error: Option<Error>,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        code: i64,
    }
    let code = crate::wire::object::<Response>(answer).and_then(|r| r.error).map(|e| e.code);
    code == Some(i64::from(SESSION_NOT_FOUND))
}

/// Whether the answer to an `initialize` opens its session (it is a result): to read before
/// [`McpEndpoint::initialized`], outside any lock.
pub fn opens_session(answer: Option<&str>) -> bool {
    answer.is_some_and(jsonrpc::is_result)
}

/// The sled-side session key of the session-less relay (`/rpc`) for `principal`, naming (or not) one of its
/// own sessions: `rpc:PRINCIPAL:NAMED`. The endpoint's own ids are hex, so the two never meet, and no two
/// principals share a key.
pub fn rpc_session(principal: &str, named: Option<&str>) -> String {
    let named = named.unwrap_or_default();
    let mut key = String::with_capacity(5 + principal.len() + named.len());
    key.push_str("rpc:");
    key.push_str(principal);
    key.push(':');
    key.push_str(named);
    key
}

/// The JSON-RPC code for a session that is missing or ended (the official SDKs' `-32001`).
pub const SESSION_NOT_FOUND: i32 = jsonrpc::SESSION_NOT_FOUND;
/// The JSON-RPC code of the refusals that are not about the message itself (the SDKs' `-32000`).
pub const SERVER_ERROR: i32 = -32000;

const NO_SESSION: Refusal =
    Refusal { status: 400, code: SERVER_ERROR, message: "Bad Request: Mcp-Session-Id header is required" };
const UNKNOWN_SESSION: Refusal = Refusal { status: 404, code: SESSION_NOT_FOUND, message: "Session not found" };
const BAD_VERSION: Refusal =
    Refusal { status: 400, code: SERVER_ERROR, message: "Bad Request: Unsupported protocol version" };
const NOT_ONE_MESSAGE: Refusal = Refusal {
    status: 400,
    code: jsonrpc::INVALID_REQUEST,
    message: "Bad Request: the body must be one JSON-RPC message object",
};
/// A body that is not JSON (or not UTF-8, which the adapter finds before it can ask).
pub const NOT_JSON: Refusal = Refusal { status: 400, code: jsonrpc::PARSE_ERROR, message: "Parse error" };
const INIT_IN_SESSION: Refusal = Refusal {
    status: 400,
    code: jsonrpc::INVALID_REQUEST,
    message: "Bad Request: initialize opens a new session; send it without Mcp-Session-Id",
};
const TOO_MANY: Refusal = Refusal { status: 503, code: SERVER_ERROR, message: "Too many MCP sessions open" };
/// An `initialize` for which no new session id was at hand (none drawn, or one already taken).
pub const NO_SESSION_ID: Refusal =
    Refusal { status: 500, code: jsonrpc::INTERNAL_ERROR, message: "no session id could be drawn" };
const TOO_MANY_YOURS: Refusal =
    Refusal { status: 503, code: SERVER_ERROR, message: "Too many MCP sessions open for this principal" };
const NOT_ACCEPTABLE: Refusal =
    Refusal { status: 406, code: SERVER_ERROR, message: "Not Acceptable: Accept must include text/event-stream" };
const ALREADY_LISTENING: Refusal =
    Refusal { status: 409, code: SERVER_ERROR, message: "Conflict: this session's stream is already open" };
/// In a cluster, the node that holds the sled did not take a request carried to it (unreachable, or gone).
pub const HOLDER_UNREACHABLE: Refusal = Refusal {
    status: 503,
    code: jsonrpc::INTERNAL_ERROR,
    message: "the gateway node that holds this sled did not answer",
};
/// In a cluster, the node that holds the sled refused the call carried to it (its check of the node that
/// carried it failed: clocks apart, or not a node of the cluster).
pub const HOLDER_REFUSED: Refusal = Refusal {
    status: 502,
    code: jsonrpc::INTERNAL_ERROR,
    message: "the gateway node that holds this sled refused this node's call",
};
/// A foreign `Origin` (see [`crate::gateway::console::same_origin`]): the adapter refuses it before routing.
pub const FOREIGN_ORIGIN: Refusal = Refusal { status: 403, code: SERVER_ERROR, message: "Forbidden: foreign Origin" };

/// The names a browser page may reach the endpoint by, beside the ones given: loopback.
const LOOPBACK: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

/// Whether a request with `origin` and `host` may reach the endpoint (else [`FOREIGN_ORIGIN`]). A request
/// without `Origin` is not a web page's (the token guards it) and passes. A web page's must be the gateway's
/// own origin ([`same_origin`](super::console::same_origin)) **and** name the gateway by one of its own names:
/// loopback, or one of `names` (its public name, its listen address). So a page on `evil.example` whose name
/// was re-pointed at the gateway (DNS rebinding: `Host` and `Origin` both say `evil.example`) is refused.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, tls: bool, names: &[String]) -> bool {
    if origin.is_none() {
        return true;
    }
    if !super::console::same_origin(origin, host, tls) {
        return false;
    }
    let Some(host) = host else { return false };
    // The name without its port: `[::1]:80` → `[::1]`, `gw.example:8700` → `gw.example`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(host, |(inner, _)| &host[..inner.len() + 2]),
        None => host.split(':').next().unwrap_or(host),
    };
    LOOPBACK.iter().any(|l| l.eq_ignore_ascii_case(name)) || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// What to do with a request the endpoint admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// An `initialize`: draw a session id and call [`McpEndpoint::open`] with it, relay the request in that
    /// session, then [`McpEndpoint::initialized`] or [`McpEndpoint::close`] by its answer.
    Initialize,
    /// Relay the message in `session`. A request is answered with its response, as JSON or as an event
    /// stream; anything else (a notification, a response to the server) with `202` once the sled took it.
    Relay {
        /// The session.
        session: String,
    },
    /// Open `session`'s standalone stream, then report it with [`McpEndpoint::listening`].
    Listen {
        /// The session.
        session: String,
    },
    /// The session ended (`DELETE`): tell the sled, answer `204`.
    End {
        /// The session.
        session: String,
    },
}

#[derive(Clone, Debug)]
struct ClientSession {
    project: String,
    principal: Arc<str>,
    last_use: Instant,
    /// Its `initialize` has been answered with a result.
    open: bool,
    /// A standalone stream is open: its exchange.
    listening: Option<McpTicket>,
}

impl ClientSession {
    /// When it ends for want of use, unless a stream is open.
    fn expires(&self, idle: Duration) -> Option<Instant> {
        self.listening.is_none().then(|| self.last_use + idle)
    }
}

/// What an exchange opened for a [`Route`] is, for what its end does to its session.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// A session's `initialize`: its answer opens the session, or closes it.
    Initialize,
    /// A message in an open session: an answer that the session is gone ([`session_gone`]) ends it.
    InSession,
    /// A session's standalone stream: while it is open the session does not expire.
    Listen,
}

/// What the end of an exchange did to the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeEnd {
    /// Nothing more to do (not an exchange of the endpoint's, or its end changed only the endpoint).
    Done,
    /// The sled answered that the session is gone: it ended here; the sled is to be told, and the client
    /// answered `404` with that answer.
    SessionGone {
        /// The session.
        session: String,
        /// Its project.
        project: String,
    },
}

/// The endpoint's client sessions. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct McpEndpoint {
    cfg: McpEndpointConfig,
    sessions: BTreeMap<String, ClientSession>,
    per_principal: BTreeMap<Arc<str>, usize>,
    /// The sessions that can expire, by when they do.
    by_expiry: BTreeSet<(Instant, String)>,
    /// The exchanges in flight for sessions, with their session and kind.
    exchanges: BTreeMap<McpTicket, (String, ExchangeKind)>,
}

impl McpEndpoint {
    /// No sessions yet.
    pub fn new(config: McpEndpointConfig) -> McpEndpoint {
        McpEndpoint {
            cfg: config,
            sessions: BTreeMap::new(),
            per_principal: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            exchanges: BTreeMap::new(),
        }
    }

    /// Sessions open (or initializing).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when there is no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// What `request` gets at `now`: a route, or a refusal.
    pub fn route(&mut self, now: Instant, request: &EndpointRequest<'_>) -> Result<Route, Refusal> {
        if let Some(version) = request.protocol_version
            && !PROTOCOL_VERSIONS.contains(&version)
        {
            return Err(BAD_VERSION);
        }
        if request.method == Method::Post {
            if request.body == Body::NotJson {
                return Err(NOT_JSON);
            }
            if request.body == Body::NotOneMessage {
                return Err(NOT_ONE_MESSAGE);
            }
            if request.body == Body::Initialize {
                if request.session.is_some() {
                    return Err(INIT_IN_SESSION);
                }
                if self.sessions.len() >= self.cfg.max_sessions {
                    return Err(TOO_MANY);
                }
                if self.per_principal.get(request.principal).copied().unwrap_or(0) >= self.cfg.max_per_principal {
                    return Err(TOO_MANY_YOURS);
                }
                return Ok(Route::Initialize);
            }
            let session = self.find(now, request)?;
            return Ok(Route::Relay { session });
        }
        if request.method == Method::Get && !request.accepts_stream {
            return Err(NOT_ACCEPTABLE);
        }
        let session = self.find(now, request)?;
        match request.method {
            Method::Get if self.sessions.get(&session).is_some_and(|s| s.listening.is_some()) => Err(ALREADY_LISTENING),
            Method::Get => Ok(Route::Listen { session }),
            _ => {
                self.close(&session);
                Ok(Route::End { session })
            }
        }
    }

    /// When the next idle session is due to end ([`McpEndpoint::expire`]), if any can.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    /// The session the request names, if it is the principal's own under this project; marks it used.
    fn find(&mut self, now: Instant, request: &EndpointRequest<'_>) -> Result<String, Refusal> {
        let id = request.session.ok_or(NO_SESSION)?;
        let idle = self.cfg.idle_timeout;
        let found = self.sessions.get(id).is_some_and(|s| {
            s.open
                && s.project == request.project
                && &*s.principal == request.principal
                && (s.listening.is_some() || s.last_use + idle > now)
        });
        if !found {
            return Err(UNKNOWN_SESSION);
        }
        self.touch(now, id, |_| {});
        Ok(String::from(id))
    }

    /// Marks `id` used at `now` after `change`, keeping its place in the expiry order.
    fn touch(&mut self, now: Instant, id: &str, change: impl FnOnce(&mut ClientSession)) {
        let idle = self.cfg.idle_timeout;
        let Some(s) = self.sessions.get_mut(id) else { return };
        if let Some(at) = s.expires(idle) {
            self.by_expiry.remove(&(at, String::from(id)));
        }
        change(s);
        s.last_use = now;
        if let Some(at) = s.expires(idle) {
            self.by_expiry.insert((at, String::from(id)));
        }
    }

    /// Opens the session `id` (drawn by the adapter) for an `initialize` that [`McpEndpoint::route`] admitted.
    /// False when `id` is already taken (draw again).
    pub fn open(&mut self, now: Instant, id: &str, project: &str, principal: Arc<str>) -> bool {
        if self.sessions.contains_key(id) {
            return false;
        }
        *self.per_principal.entry(principal.clone()).or_insert(0) += 1;
        let session =
            ClientSession { project: String::from(project), principal, last_use: now, open: false, listening: None };
        self.by_expiry.insert((now + self.cfg.idle_timeout, String::from(id)));
        self.sessions.insert(String::from(id), session);
        true
    }

    /// The `initialize` of `id` was answered; `opens` is [`opens_session`] of the answer. A result opens the
    /// session: true, and the client gets its id. Anything else (an error, no answer) closes it: false.
    pub fn initialized(&mut self, now: Instant, id: &str, opens: bool) -> bool {
        if opens && self.sessions.contains_key(id) {
            self.touch(now, id, |s| s.open = true);
            return true;
        }
        self.close(id);
        false
    }

    /// The standalone stream `ticket` of `id` opened; a session listening does not expire.
    pub fn listening(&mut self, now: Instant, id: &str, ticket: McpTicket) {
        self.touch(now, id, |s| s.listening = Some(ticket));
    }

    /// The standalone stream `ticket` of `id` ended. Only the stream that holds the place frees it: a late end
    /// of an older one changes nothing.
    pub fn stopped_listening(&mut self, now: Instant, id: &str, ticket: McpTicket) {
        if self.sessions.get(id).is_some_and(|s| s.listening == Some(ticket)) {
            self.touch(now, id, |s| s.listening = None);
        }
    }

    /// The exchange `ticket` began for `session`'s [`Route`], as `kind`. A standalone stream holds the
    /// session's place from now on ([`McpEndpoint::listening`]).
    pub fn began(&mut self, now: Instant, ticket: McpTicket, session: &str, kind: ExchangeKind) {
        if kind == ExchangeKind::Listen {
            self.listening(now, session, ticket);
        }
        self.exchanges.insert(ticket, (String::from(session), kind));
    }

    /// The exchange `ticket` ended at `now`, with `answer` (the sled's JSON-RPC answer; `None` for nothing
    /// to say, or no answer at all): an `initialize` opens its session by it, or closes it; a message in a
    /// session that answers the session is gone ends it; a standalone stream frees its session's place.
    pub fn ended(&mut self, now: Instant, ticket: McpTicket, answer: Option<&str>) -> ExchangeEnd {
        let Some((session, kind)) = self.exchanges.remove(&ticket) else { return ExchangeEnd::Done };
        match kind {
            ExchangeKind::Initialize => {
                self.initialized(now, &session, opens_session(answer));
            }
            ExchangeKind::InSession if answer.is_some_and(session_gone) => {
                if let Some(s) = self.sessions.get(&session) {
                    let project = s.project.clone();
                    self.close(&session);
                    return ExchangeEnd::SessionGone { session, project };
                }
            }
            ExchangeKind::InSession => {}
            ExchangeKind::Listen => self.stopped_listening(now, &session, ticket),
        }
        ExchangeEnd::Done
    }

    /// Ends `id`, if it exists.
    pub fn close(&mut self, id: &str) {
        let Some(s) = self.sessions.remove(id) else { return };
        if let Some(at) = s.expires(self.cfg.idle_timeout) {
            self.by_expiry.remove(&(at, String::from(id)));
        }
        if let Some(n) = self.per_principal.get_mut(&s.principal) {
            *n -= 1;
            if *n == 0 {
                self.per_principal.remove(&s.principal);
            }
        }
    }

    /// Ends every session idle past the timeout at `now` (none listening); returns each with its project, for
    /// the sled to be told. Due when [`McpEndpoint::poll_timeout`] says.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        while let Some((at, id)) = self.by_expiry.first().cloned() {
            if at > now {
                break;
            }
            if let Some(s) = self.sessions.get(&id) {
                gone.push((id.clone(), s.project.clone()));
            }
            self.close(&id);
            self.by_expiry.remove(&(at, id));
        }
        gone
    }

    /// Ends every session `principal` holds (its credential was revoked); returns each with its project.
    pub fn close_principal(&mut self, principal: &str) -> Vec<(String, String)> {
        let gone: Vec<(String, String)> = self
            .sessions
            .iter()
            .filter(|(_, s)| &*s.principal == principal)
            .map(|(id, s)| (id.clone(), s.project.clone()))
            .collect();
        for (id, _) in &gone {
            self.close(id);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    const CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25"}}"#;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ticket(n: u64) -> McpTicket {
        McpTicket { conn: crate::ids::ConnHandle(0), id: crate::ids::McpId(n) }
    }

    fn post<'a>(principal: &'a str, session: Option<&'a str>, body: &'a str) -> EndpointRequest<'a> {
        EndpointRequest::new(Method::Post, "p", principal).session(session).body(body)
    }

    /// Opens a session `id` for `who` through the whole initialize path.
    fn opened(e: &mut McpEndpoint, id: &str, who: &str) {
        assert_eq!(e.route(at(0), &post(who, None, INIT)), Ok(Route::Initialize));
        assert!(e.open(at(0), id, "p", Arc::from(who)));
        assert!(e.initialized(at(0), id, opens_session(Some(RESULT))));
    }

    #[test]
    fn a_session_is_its_principals_and_its_projects_only() {
        let mut e = McpEndpoint::new(McpEndpointConfig::default());
        opened(&mut e, "s1", "alice");
        assert_eq!(e.route(at(1), &post("alice", Some("s1"), CALL)), Ok(Route::Relay { session: "s1".into() }));
        assert_eq!(e.route(at(1), &post("bob", Some("s1"), CALL)), Err(UNKNOWN_SESSION));
        let other_project = EndpointRequest::new(Method::Post, "q", "alice").session(Some("s1")).body(CALL);
        assert_eq!(e.route(at(1), &other_project), Err(UNKNOWN_SESSION));
        assert_eq!(e.route(at(1), &post("alice", None, CALL)), Err(NO_SESSION));
        assert_eq!(e.route(at(1), &post("alice", Some("nope"), CALL)), Err(UNKNOWN_SESSION));
    }

    #[test]
    fn an_answer_that_the_session_is_gone_is_told_from_every_other() {
        let lost = crate::jsonrpc::error_response(None, SESSION_NOT_FOUND, crate::sled::SESSION_LOST);
        assert!(session_gone(lost.get()));
        assert!(session_gone(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32001,"message":"Session not found"}}"#));
        for other in [
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"Session not found"}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"code":-32001}}"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":"-32001"}}"#,
            "null",
            "{",
        ] {
            assert!(!session_gone(other), "{other}");
        }
    }

    #[test]
    fn a_failed_initialize_opens_nothing() {
        let mut e = McpEndpoint::new(McpEndpointConfig::default());
        assert!(e.open(at(0), "s1", "p", Arc::from("a")));
        // Not usable before its answer.
        assert_eq!(e.route(at(0), &post("a", Some("s1"), CALL)), Err(UNKNOWN_SESSION));
        let error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"x"}}"#;
        assert!(!e.initialized(at(0), "s1", opens_session(Some(error))));
        assert!(e.is_empty());
        assert!(e.open(at(0), "s2", "p", Arc::from("a")));
        assert!(!e.initialized(at(0), "s2", opens_session(None)));
        assert!(e.is_empty());
    }

    #[test]
    fn bodies_versions_and_methods_are_checked() {
        let mut e = McpEndpoint::new(McpEndpointConfig::default());
        opened(&mut e, "s", "a");
        assert_eq!(e.route(at(0), &post("a", Some("s"), "{")), Err(NOT_JSON));
        assert_eq!(e.route(at(0), &post("a", Some("s"), "[1]")), Err(NOT_ONE_MESSAGE));
        assert_eq!(e.route(at(0), &post("a", Some("s"), INIT)), Err(INIT_IN_SESSION));
        let old = post("a", Some("s"), CALL).protocol_version(Some("2023-01-01"));
        assert_eq!(e.route(at(0), &old), Err(BAD_VERSION));
        let fine = post("a", Some("s"), CALL).protocol_version(Some("2025-06-18"));
        assert!(e.route(at(0), &fine).is_ok());
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(e.route(at(0), &post("a", Some("s"), note)), Ok(Route::Relay { session: "s".into() }));
        let answer = r#"{"jsonrpc":"2.0","id":"srv-1","result":{}}"#;
        assert_eq!(e.route(at(0), &post("a", Some("s"), answer)), Ok(Route::Relay { session: "s".into() }));
    }

    #[test]
    fn one_stream_per_session_and_delete_ends_it() {
        let mut e = McpEndpoint::new(McpEndpointConfig::default());
        opened(&mut e, "s", "a");
        let get = EndpointRequest::new(Method::Get, "p", "a").session(Some("s"));
        assert_eq!(e.route(at(0), &get.accepts_stream(false)), Err(NOT_ACCEPTABLE));
        assert_eq!(e.route(at(0), &get), Ok(Route::Listen { session: "s".into() }));
        e.listening(at(0), "s", ticket(7));
        assert_eq!(e.route(at(0), &get), Err(ALREADY_LISTENING));
        e.stopped_listening(at(0), "s", ticket(6));
        assert_eq!(e.route(at(0), &get), Err(ALREADY_LISTENING), "an older stream's end changes nothing");
        e.stopped_listening(at(0), "s", ticket(7));
        assert_eq!(e.route(at(0), &get), Ok(Route::Listen { session: "s".into() }));
        let delete = EndpointRequest::new(Method::Delete, "p", "a").session(Some("s"));
        assert_eq!(e.route(at(0), &delete), Ok(Route::End { session: "s".into() }));
        assert_eq!(e.route(at(0), &delete), Err(UNKNOWN_SESSION));
        assert_eq!(e.route(at(0), &post("a", Some("s"), CALL)), Err(UNKNOWN_SESSION));
    }

    #[test]
    fn idle_sessions_expire_unless_listening() {
        let cfg = McpEndpointConfig { idle_timeout: Duration::from_secs(10), ..McpEndpointConfig::default() };
        let mut e = McpEndpoint::new(cfg);
        opened(&mut e, "idle", "a");
        opened(&mut e, "used", "a");
        opened(&mut e, "streaming", "a");
        e.listening(at(0), "streaming", ticket(1));
        assert!(e.route(at(9_000), &post("a", Some("used"), CALL)).is_ok());
        assert_eq!(e.expire(at(10_000)), vec![("idle".into(), "p".into())]);
        assert_eq!(e.route(at(10_000), &post("a", Some("idle"), CALL)), Err(UNKNOWN_SESSION));
        // Past its timeout but not yet expired: refused all the same.
        assert_eq!(e.route(at(19_000), &post("a", Some("used"), CALL)), Err(UNKNOWN_SESSION));
        assert_eq!(e.expire(at(19_000)), vec![("used".into(), "p".into())]);
        assert!(e.route(at(60_000), &post("a", Some("streaming"), CALL)).is_ok());
    }

    #[test]
    fn a_web_page_must_name_the_gateway_by_its_own_name_and_come_from_its_origin() {
        let names = [String::from("gw.example")];
        let ok = |origin: Option<&str>, host: &str| origin_allowed(origin, Some(host), false, &names);
        assert!(ok(None, "anything"), "not a web page: the token guards it");
        assert!(ok(Some("http://localhost:8700"), "localhost:8700"));
        assert!(ok(Some("http://[::1]:8700"), "[::1]:8700"));
        assert!(ok(Some("http://GW.example"), "GW.example"));
        assert!(!ok(Some("http://evil.example"), "evil.example"), "DNS rebinding: Host and Origin agree");
        assert!(!ok(Some("http://evil.example"), "localhost:8700"), "another site's page");
        assert!(!origin_allowed(Some("http://localhost"), None, false, &names));
        assert!(!origin_allowed(Some("http://localhost"), Some("localhost"), true, &names), "the scheme served");
    }

    #[test]
    fn ends_without_an_answer_get_their_statuses_and_a_listen_refused_by_the_server_is_405() {
        assert_eq!(failed(McpFailure::Timeout).status, 504);
        assert_eq!(failed(McpFailure::ConnectionLost).status, 503);
        assert_eq!(failed(McpFailure::Cancelled).status, 503);
        assert_eq!(refused(McpRefused::UnknownProject).status, 404);
        assert_eq!(refused(McpRefused::NotConnected).status, 503);
        assert_eq!(refused(McpRefused::TooMany).status, 503);
        assert_eq!(refused(McpRefused::Unsupported).status, 405);
        let none = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"none"}}"#;
        assert_eq!(stream_not_opened(none).status, 405);
        let broken = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"failed"}}"#;
        assert_eq!(stream_not_opened(broken).status, 502);
        assert_eq!(stream_not_opened("null").status, 502);
        let id = RawValue::from_string("7".into()).expect("JSON");
        assert!(failed(McpFailure::Timeout).body_for(Some(&id)).contains(r#""id":7"#));
    }

    #[test]
    fn the_session_less_relay_keys_sessions_per_principal() {
        assert_eq!(rpc_session("ana", None), "rpc:ana:");
        assert_eq!(rpc_session("ana", Some("x")), "rpc:ana:x");
        assert_ne!(rpc_session("ana", Some("x")), rpc_session("bo", Some("x")));
    }

    #[test]
    fn budgets_hold_in_all_and_per_principal() {
        let cfg = McpEndpointConfig { max_sessions: 3, max_per_principal: 2, ..McpEndpointConfig::default() };
        let mut e = McpEndpoint::new(cfg);
        opened(&mut e, "a1", "a");
        opened(&mut e, "a2", "a");
        assert_eq!(e.route(at(0), &post("a", None, INIT)), Err(TOO_MANY_YOURS));
        opened(&mut e, "b1", "b");
        assert_eq!(e.route(at(0), &post("b", None, INIT)), Err(TOO_MANY));
        assert_eq!(e.close_principal("a").len(), 2);
        assert_eq!(e.route(at(0), &post("a", None, INIT)), Ok(Route::Initialize));
        assert!(!e.open(at(0), "b1", "p", Arc::from("a")), "an id in use is refused");
    }
}

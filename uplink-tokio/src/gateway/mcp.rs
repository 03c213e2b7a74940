//! The gateway's MCP endpoint, `/api/sleds/{project}/mcp`: a Streamable HTTP server (MCP 2025-11-25) in
//! front of each sled's local MCP server.
//!
//! What each request gets (its session, its status, its refusal) is the core's
//! ([`uplink_proto::gateway::McpEndpoint`]); this reads the request, draws session ids, relays through the
//! hub task, and writes the answer as JSON or as an event stream:
//!
//! - `POST` of a request: JSON when the exchange's first event is its answer; otherwise an event stream of
//!   the sled's messages (notifications, the server's own requests) in order, then the response.
//! - `POST` of a notification or of the client's response to a server request: `202`.
//! - `POST initialize` without a session: a new session, its id in `Mcp-Session-Id` once the server answers
//!   with a result.
//! - `GET`: the session's standalone stream (`405` when the sled or its server has none).
//! - `DELETE`: the session ends, here and at the sled; `204`.
//! - A web page's request (it has an `Origin`) must come from the gateway's own origin and name the gateway
//!   by one of its own names (loopback, its public URL's host, its listen address, `--allowed-host`), else
//!   `403`: neither another site nor a DNS-rebound name can drive the endpoint.
//!
//! An HTTP client that goes away cancels its exchange at the sled (and so at the local server). The gateway
//! offers no resumption of its own streams: its events carry no ids.
//!
//! The seed's session-less relay stays at `POST /api/sleds/{project}/rpc`: one JSON-RPC message, one JSON
//! answer, in a session of the principal's own (or the one `Mcp-Session-Id` names, within the principal's).

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method as HttpMethod};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::CONTENT_TYPE;
use uplink_proto::gateway::mcp_endpoint::{self, FOREIGN_ORIGIN, NOT_JSON, Refusal, opens_session, origin_allowed};
use uplink_proto::gateway::{
    Action, EndpointRequest, McpEndpoint, McpEndpointConfig, McpFailure, McpRefused, Method, Route,
};
use uplink_proto::jsonrpc::{self, BodyId};
use uplink_proto::{Instant, RawValue};

use super::admin::Principal;
use super::hub_task::{McpExchange, McpNext, McpOutcome};
use super::{MAX_ADMIN_BODY, Shared};
use crate::http::{header, json_text, read_limited};
use crate::socket_loop::Clock;

const SESSION_HEADER: &str = "mcp-session-id";

/// The endpoint's client sessions: the core's table, locked only around its pure calls.
pub(super) struct Endpoint {
    clock: Clock,
    table: Mutex<McpEndpoint>,
    /// Numbers the standalone streams, so that only the one holding a session's place frees it.
    streams: std::sync::atomic::AtomicU64,
    /// The gateway's own names beside loopback (its public URL's host, its listen address, those given), by
    /// which a web page may reach the endpoint.
    names: Vec<String>,
}

impl Endpoint {
    pub(super) fn new(clock: Clock, config: McpEndpointConfig, names: Vec<String>) -> Endpoint {
        Endpoint { clock, table: Mutex::new(McpEndpoint::new(config)), streams: Default::default(), names }
    }

    fn with<T>(&self, f: impl FnOnce(&mut McpEndpoint, Instant) -> T) -> T {
        let now = self.clock.now();
        f(&mut self.table.lock().unwrap_or_else(PoisonError::into_inner), now)
    }

    /// Ends the sessions idle past their time; returns them with their projects, for the sleds to be told.
    pub(super) fn expire(&self) -> Vec<(String, String)> {
        self.with(|t, now| t.expire(now))
    }

    /// Ends every session of `principal` (its token is gone).
    pub(super) fn close_principal(&self, principal: &str) -> Vec<(String, String)> {
        self.with(|t, _| t.close_principal(principal))
    }
}

/// A refusal as the endpoint writes it: its status and a JSON-RPC error body.
pub(super) fn refused(refusal: Refusal) -> Response {
    json_text(status_of(&refusal), refusal.body())
}

fn status_of(refusal: &Refusal) -> StatusCode {
    StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST)
}

/// `POST`, `GET` and `DELETE` on `/api/sleds/{project}/mcp`.
pub(super) async fn serve(
    principal: Principal,
    State(shared): State<Arc<Shared>>,
    Path(project): Path<String>,
    request: Request,
) -> Response {
    // A sled acts on what its MCP server is asked: as much a decision as a permission.
    if let Some(refusal) = principal.refusal(Action::Decide) {
        return refusal;
    }
    let headers = request.headers().clone();
    if !origin_allowed(header(&headers, "origin"), header(&headers, "host"), shared.tls, &shared.mcp.names) {
        return refused(FOREIGN_ORIGIN);
    }
    // The router sends only these three here.
    let method = match *request.method() {
        HttpMethod::POST => Method::Post,
        HttpMethod::GET => Method::Get,
        _ => Method::Delete,
    };
    let body = if method == Method::Post {
        let bytes = match read_limited(request.into_body(), MAX_ADMIN_BODY, shared.handshake_timeout).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        match String::from_utf8(bytes.to_vec()) {
            Ok(body) => body,
            Err(_) => return refused(NOT_JSON),
        }
    } else {
        String::new()
    };
    let accepts_stream =
        header(&headers, "accept").is_none_or(|a| a.contains("text/event-stream") || a.contains("*/*"));
    let ask = EndpointRequest::new(method, &project, &principal.name)
        .session(header(&headers, SESSION_HEADER))
        .protocol_version(header(&headers, "mcp-protocol-version"))
        .accepts_stream(accepts_stream)
        .body(&body);
    let route = shared.mcp.with(|t, now| t.route(now, &ask));
    let started = std::time::Instant::now();
    let response = match route {
        Err(refusal) => return refused(refusal),
        Ok(Route::Initialize) => initialize(&shared, project, principal.name.clone(), body).await,
        Ok(Route::Relay { session }) => relay(&shared, project, session, body).await,
        Ok(Route::Listen { session }) => listen(&shared, project, session).await,
        Ok(Route::End { session }) => {
            shared.hub.end_mcp_session(project, session).await;
            return StatusCode::NO_CONTENT.into_response();
        }
    };
    shared.metrics.relayed(response.1, started.elapsed());
    response.0
}

/// The request's JSON-RPC id, for the error that may answer it.
pub(super) fn request_id(body: &str) -> Option<Box<RawValue>> {
    match jsonrpc::probe(body).id {
        BodyId::Id(id) => Some(id.to_owned()),
        _ => None,
    }
}

/// A message relayed in `session`. An answer saying the session is gone at the sled
/// ([`mcp_endpoint::session_gone`]) ends the session here too, and the sled is told; sent as JSON, it gets
/// `404`, as for an unknown session, so that the client initializes a new one.
async fn relay(shared: &Arc<Shared>, project: String, session: String, body: String) -> (Response, &'static str) {
    let id = request_id(&body);
    let exchange = shared.hub.mcp_exchange(project.clone(), body, Some(session.clone()), true).await;
    let endpoint = shared.clone();
    let on_end = move |outcome: &McpOutcome| {
        // The answer is read before the lock is taken.
        if let McpOutcome::Answered(answer) = outcome
            && mcp_endpoint::session_gone(answer)
        {
            endpoint.mcp.with(|t, _| t.close(&session));
            tokio::spawn(async move { endpoint.hub.end_mcp_session(project, session).await });
        }
    };
    answer(exchange, id, Some(Box::new(on_end)), Relayed::InSession).await
}

/// An `initialize`: a new session, drawn here and opened in the core, relayed in that session.
async fn initialize(
    shared: &Arc<Shared>,
    project: String,
    principal: Arc<str>,
    body: String,
) -> (Response, &'static str) {
    let mut id = None;
    for _ in 0..3 {
        let Ok(drawn) = super::generate_token() else { break };
        if shared.mcp.with(|t, now| t.open(now, &drawn, &project, principal.clone())) {
            id = Some(drawn);
            break;
        }
    }
    // Sessions idle past their time end now (they are refused already); their sleds are told.
    for (gone, at) in shared.mcp.expire() {
        shared.hub.end_mcp_session(at, gone).await;
    }
    let Some(session) = id else {
        let body = jsonrpc::error_response(
            request_id(&body).as_deref(),
            jsonrpc::INTERNAL_ERROR,
            "no session id could be drawn",
        );
        return (json_text(StatusCode::INTERNAL_SERVER_ERROR, String::from(body.get())), "not_connected");
    };
    let rpc_id = request_id(&body);
    let exchange = shared.hub.mcp_exchange(project, body, Some(session.clone()), true).await;
    let endpoint = shared.clone();
    let opened = session.clone();
    let on_end = move |outcome: &McpOutcome| {
        let answer = match outcome {
            McpOutcome::Answered(payload) => Some(payload.as_str()),
            _ => None,
        };
        // The answer is read before the lock is taken.
        let opens = opens_session(answer);
        endpoint.mcp.with(|t, now| t.initialized(now, &opened, opens));
    };
    let (mut response, result) = answer(exchange, rpc_id, Some(Box::new(on_end)), Relayed::Plain).await;
    // The client learns its session with the answer; a failed initialize opened none (a later request with
    // this id finds nothing).
    if let Ok(value) = HeaderValue::from_str(&session) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    (response, result)
}

/// Called with an exchange's end (an `initialize` opens its session by it).
type OnEnd = Box<dyn FnOnce(&McpOutcome) + Send>;

/// How a relay ended, for the metrics.
pub(super) fn result_of(outcome: &McpOutcome) -> &'static str {
    match outcome {
        McpOutcome::Answered(_) => "answered",
        McpOutcome::Failed(McpFailure::Timeout) => "timeout",
        McpOutcome::Failed(_) => "connection_lost",
        McpOutcome::Refused(McpRefused::UnknownProject) => "unknown_project",
        McpOutcome::Refused(McpRefused::TooMany) => "too_many",
        McpOutcome::Refused(_) => "not_connected",
    }
}

/// What a relayed message was, for the status of its answer.
#[derive(Copy, Clone, PartialEq, Eq)]
pub(super) enum Relayed {
    /// A message in an open session of the endpoint: an answer that the session is gone gets `404`
    /// ([`mcp_endpoint::session_gone`]).
    InSession,
    /// An `initialize`, or a message of the session-less relay (`/rpc`): every answer gets `200`.
    Plain,
}

/// An exchange's end as a status and a JSON-RPC response: the answer itself, or the core's error for how it
/// ended, with `id`.
pub(super) fn end_of(outcome: McpOutcome, id: Option<&RawValue>, relayed: Relayed) -> (StatusCode, String) {
    let error = |refusal: Refusal| (status_of(&refusal), refusal.body_for(id));
    match outcome {
        McpOutcome::Answered(payload) if payload == "null" => (StatusCode::ACCEPTED, String::new()),
        McpOutcome::Answered(payload) if relayed == Relayed::InSession && mcp_endpoint::session_gone(&payload) => {
            (StatusCode::NOT_FOUND, payload)
        }
        McpOutcome::Answered(payload) => (StatusCode::OK, payload),
        McpOutcome::Failed(reason) => error(mcp_endpoint::failed(reason)),
        McpOutcome::Refused(reason) => error(mcp_endpoint::refused(reason)),
    }
}

/// An exchange's end as the HTTP answer to a `POST`: `202` with nothing to say, else the JSON body.
pub(super) fn respond(outcome: McpOutcome, id: Option<&RawValue>, relayed: Relayed) -> Response {
    match end_of(outcome, id, relayed) {
        (StatusCode::ACCEPTED, _) => StatusCode::ACCEPTED.into_response(),
        (status, body) => json_text(status, body),
    }
}

/// Answers a `POST`: as JSON when the exchange's first event is its end, else as an event stream.
async fn answer(
    mut exchange: McpExchange,
    id: Option<Box<RawValue>>,
    on_end: Option<OnEnd>,
    relayed: Relayed,
) -> (Response, &'static str) {
    match exchange.next().await {
        McpNext::End(outcome) => {
            let result = result_of(&outcome);
            if let Some(on_end) = on_end {
                on_end(&outcome);
            }
            (respond(outcome, id.as_deref(), relayed), result)
        }
        McpNext::Message(first) => (event_stream(exchange, Some(first), id, on_end), "answered"),
    }
}

/// One SSE event carrying `data` (a line per line of it).
fn event(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 24);
    out.push_str("event: message\n");
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The rest of an exchange as an event stream: `first`, the messages, then its end (a JSON-RPC response, or
/// an error with `id`). Dropped early (the client went away), it cancels the exchange.
fn event_stream(
    exchange: McpExchange,
    first: Option<String>,
    id: Option<Box<RawValue>>,
    on_end: Option<OnEnd>,
) -> Response {
    struct State {
        exchange: McpExchange,
        first: Option<String>,
        id: Option<Box<RawValue>>,
        on_end: Option<OnEnd>,
        done: bool,
    }
    let state = State { exchange, first, id, on_end, done: false };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        if let Some(first) = s.first.take() {
            return Some((Ok::<Bytes, Infallible>(event(&first)), s));
        }
        match s.exchange.next().await {
            McpNext::Message(m) if m == "null" => Some((Ok(Bytes::from_static(b": open\n\n")), s)),
            McpNext::Message(m) => Some((Ok(event(&m)), s)),
            McpNext::End(outcome) => {
                s.done = true;
                if let Some(on_end) = s.on_end.take() {
                    on_end(&outcome);
                }
                // Within a stream, the status is sent already: only the body counts.
                let (status, body) = end_of(outcome, s.id.as_deref(), Relayed::Plain);
                // A stream's end with nothing to say (a notification, a standalone stream that ended).
                if status == StatusCode::ACCEPTED || body.is_empty() {
                    return None;
                }
                Some((Ok(event(&body)), s))
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// A `GET`: the session's standalone stream, once the sled's server accepted it.
async fn listen(shared: &Arc<Shared>, project: String, session: String) -> (Response, &'static str) {
    let token = shared.mcp.streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared.mcp.with(|t, now| t.listening(now, &session, token));
    let mut exchange = shared.hub.mcp_listen(project, session.clone()).await;
    let endpoint = shared.clone();
    let stop = move |_: &McpOutcome| endpoint.mcp.with(|t, now| t.stopped_listening(now, &session, token));
    match exchange.next().await {
        // The sled's word that its server accepted the stream.
        McpNext::Message(m) if m == "null" => (event_stream(exchange, None, None, Some(Box::new(stop))), "answered"),
        McpNext::Message(first) => (event_stream(exchange, Some(first), None, Some(Box::new(stop))), "answered"),
        McpNext::End(outcome) => {
            stop(&outcome);
            let result = result_of(&outcome);
            let refusal = match &outcome {
                McpOutcome::Answered(end) => mcp_endpoint::stream_not_opened(end),
                McpOutcome::Failed(reason) => mcp_endpoint::failed(*reason),
                McpOutcome::Refused(reason) => mcp_endpoint::refused(*reason),
            };
            (refused(refusal), result)
        }
    }
}

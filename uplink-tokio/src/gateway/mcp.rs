//! The gateway's MCP endpoint, `/api/sleds/{project}/mcp`: a Streamable HTTP server (MCP 2025-11-25) in
//! front of each sled's local MCP server.
//!
//! What each request gets (its session, its status, its refusal) is the core's: the hub owns the endpoint's
//! sessions ([`uplink_proto::gateway::McpEndpoint`], through `Hub::handle_mcp_http`). This reads the request,
//! draws an id for a session an `initialize` opens, hands it to the hub task, and writes what comes back as
//! JSON or as an event stream:
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
//! An HTTP client that goes away cancels its exchange at the sled (and so at the local server). In a cluster,
//! a request for a sled another node holds is carried there whole (`serve_here`), its answer streamed back. The gateway
//! offers no resumption of its own streams: its events carry no ids.
//!
//! The seed's session-less relay stays at `POST /api/sleds/{project}/rpc`: one JSON-RPC message, one JSON
//! answer, in a session of the principal's own (or the one `Mcp-Session-Id` names, within the principal's).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method as HttpMethod};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::CONTENT_TYPE;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use uplink_proto::RawValue;
use uplink_proto::gateway::mcp_endpoint::{self, FOREIGN_ORIGIN, NOT_JSON, Refusal, origin_allowed};
use uplink_proto::gateway::peers::goes_to;
use uplink_proto::gateway::{EndpointRequest, McpAnswer, McpFailure, Method};
use uplink_proto::jsonrpc::{self, BodyId};

use super::config::MAX_ADMIN_BODY;
use super::extract::Principal;
use super::hub_handle::{McpExchange, McpNext};
use super::mcp_auth::McpCaller;
use super::mcp_exchange::{McpAsk, McpOutcome};
use super::peers::{Call, Peers};
use super::shared::Shared;
use crate::http::{error, header, json_text, read_limited};
use crate::store::Peer;

const SESSION_HEADER: &str = "mcp-session-id";

/// A refusal as the endpoint writes it: its status and a JSON-RPC error body.
pub(super) fn refused(refusal: Refusal) -> Response {
    json_text(status_of(&refusal), refusal.body())
}

fn status_of(refusal: &Refusal) -> StatusCode {
    StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST)
}

/// `POST`, `GET` and `DELETE` on `/api/sleds/{project}/mcp`.
pub(super) async fn serve(
    McpCaller(principal): McpCaller,
    State(shared): State<Arc<Shared>>,
    Path(project): Path<String>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    if !origin_allowed(header(&headers, "origin"), header(&headers, "host"), shared.tls, &shared.mcp_names) {
        return refused(FOREIGN_ORIGIN);
    }
    let method = request.method().clone();
    let body = if method == HttpMethod::POST {
        match read_limited(request.into_body(), MAX_ADMIN_BODY, shared.handshake_timeout).await {
            Ok(b) => b,
            Err(r) => return r,
        }
    } else {
        Bytes::new()
    };
    serve_here(&shared, &principal, project, &method, &headers, body, true).await
}

/// The headers a request to the endpoint carries to the node that holds its sled (with the principal, as
/// `uplink-by`, and the role this node found for it, as `uplink-role`), signed with it.
pub(super) const CARRIED: [&str; 5] = ["uplink-by", "uplink-role", SESSION_HEADER, "mcp-protocol-version", "accept"];

/// Serves a request to the endpoint for `principal` at this node's hub: or, `may_forward` and in a cluster,
/// at the node that holds the project's sled, when this node's hub refuses it for want of the sled here
/// (nothing was sent to any sled then); that node's answer is relayed as it comes, streams included, and a
/// client that goes away drops the call there too (which cancels the exchange at the sled).
pub(super) async fn serve_here(
    shared: &Shared,
    principal: &Principal,
    project: String,
    method: &HttpMethod,
    headers: &hyper::HeaderMap,
    bytes: Bytes,
    may_forward: bool,
) -> Response {
    // The routes send these three here (and `HEAD` with `GET`, which is not one of the endpoint's).
    let kind = match *method {
        HttpMethod::POST => Method::Post,
        HttpMethod::GET => Method::Get,
        HttpMethod::DELETE => Method::Delete,
        _ => {
            let mut refused = error(StatusCode::METHOD_NOT_ALLOWED, "the MCP endpoint takes POST, GET and DELETE");
            refused.headers_mut().insert("allow", HeaderValue::from_static("GET, POST, DELETE"));
            return refused;
        }
    };
    let body = match String::from_utf8(bytes.to_vec()) {
        Ok(body) => body,
        Err(_) => return refused(NOT_JSON),
    };
    let accepts_stream = header(headers, "accept").is_none_or(|a| a.contains("text/event-stream") || a.contains("*/*"));
    // The body is read here, not in the hub task.
    let request = EndpointRequest::new(kind, &project, &principal.name)
        .session(header(headers, SESSION_HEADER))
        .protocol_version(header(headers, "mcp-protocol-version"))
        .accepts_stream(accepts_stream)
        .body(&body);
    // Only an `initialize` opens a session, under an id drawn here (randomness is the adapter's).
    let drawn = if request.opens_session() { super::config::generate_token().ok() } else { None };
    let ask = McpAsk {
        method: kind,
        kind: request.body,
        session: request.session.map(str::to_owned),
        protocol_version: request.protocol_version.map(str::to_owned),
        accepts_stream,
        project: project.clone(),
        principal: principal.name.clone(),
        drawn,
        body,
    };
    let id = request_id(&ask.body);
    let started = std::time::Instant::now();
    let mut exchange = shared.hub.mcp_http(ask).await;
    let first = exchange.next().await;
    if let (true, Some(peers), McpNext::End(McpOutcome::Refused(refusal))) = (may_forward, &shared.peers, &first)
        && let Ok(Some(holder)) = peers.holding(project.clone()).await
        && let Some(node) = goes_to(peers.me, refusal.status, Some(holder.node))
    {
        drop(exchange);
        let path = format!("/internal/mcp/{}", utf8_percent_encode(&project, NON_ALPHANUMERIC));
        return forward(peers, &holder, node, principal, &path, method, headers, bytes).await;
    }
    let (response, result) = match kind {
        Method::Get => listen(exchange, first).await,
        Method::Delete => deleted(exchange, first).await,
        Method::Post => answer(exchange, first, id).await,
    };
    shared.metrics.relayed(result, started.elapsed());
    response
}

/// Carries a request to the endpoint (or its session-less relay) to `holder` (node `node`), whose claim
/// holds the project, at `path` of its internal listener: its answer relayed as it comes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    peers: &Peers,
    holder: &Peer,
    node: u64,
    principal: &Principal,
    path: &str,
    method: &HttpMethod,
    headers: &hyper::HeaderMap,
    body: Bytes,
) -> Response {
    let values: Vec<(&str, &str)> = CARRIED
        .iter()
        .map(|name| match *name {
            "uplink-by" => (*name, &*principal.name),
            "uplink-role" => (*name, principal.role.as_str()),
            _ => (*name, header(headers, name).unwrap_or_default()),
        })
        .collect();
    let call = Call { method: method.as_str(), path, carried: &values };
    match peers.send(holder, &call, body).await {
        // The holder refusing this node's call is not the client's refusal.
        Ok(answer) if answer.status() == StatusCode::UNAUTHORIZED => {
            tracing::warn!(node, "the node holding a sled refused this node's call");
            refused(mcp_endpoint::HOLDER_REFUSED)
        }
        Ok(answer) => {
            let (parts, incoming) = answer.into_parts();
            let mut response = Response::new(Body::new(incoming));
            *response.status_mut() = parts.status;
            for name in [CONTENT_TYPE.as_str(), SESSION_HEADER, "cache-control", "allow"] {
                if let Some(value) = parts.headers.get(name) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        Err(why) => {
            tracing::warn!(node, why = %why.escape_debug(), "the node holding a sled did not take an MCP request");
            refused(mcp_endpoint::HOLDER_UNREACHABLE)
        }
    }
}

/// The request's JSON-RPC id, for the error that may answer it.
pub(super) fn request_id(body: &str) -> Option<Box<RawValue>> {
    match jsonrpc::probe(body).id {
        BodyId::Id(id) => Some(id.to_owned()),
        _ => None,
    }
}

/// How a relay ended, for the metrics.
pub(super) fn result_of(outcome: &McpOutcome) -> &'static str {
    match outcome {
        McpOutcome::Answered(_) | McpOutcome::SessionEnded => "answered",
        McpOutcome::Failed(McpFailure::Timeout) => "timeout",
        McpOutcome::Failed(_) => "connection_lost",
        McpOutcome::Refused(refusal) if refusal.status == 404 => "unknown_project",
        McpOutcome::Refused(refusal) if refusal.status == 503 => "too_many",
        McpOutcome::Refused(_) => "not_connected",
    }
}

/// An exchange's end as a status and a JSON-RPC response: the answer itself (`404` with it when the sled
/// says the session is gone), nothing (`202`), or the core's error for how it ended, with `id`.
pub(super) fn end_of(outcome: McpOutcome, id: Option<&RawValue>) -> (StatusCode, String) {
    let error = |refusal: Refusal| (status_of(&refusal), refusal.body_for(id));
    match outcome {
        McpOutcome::Answered(McpAnswer::Response(payload)) => (StatusCode::OK, payload),
        McpOutcome::Answered(McpAnswer::NoContent) => (StatusCode::ACCEPTED, String::new()),
        McpOutcome::Answered(McpAnswer::SessionGone(payload)) => (StatusCode::NOT_FOUND, payload),
        McpOutcome::SessionEnded => (StatusCode::NO_CONTENT, String::new()),
        McpOutcome::Failed(reason) => error(mcp_endpoint::failed(reason)),
        McpOutcome::Refused(refusal) => error(refusal),
    }
}

/// An exchange's end as the HTTP answer to a `POST`: `202` (or `204`) with nothing to say, else the JSON body.
pub(super) fn respond(outcome: McpOutcome, id: Option<&RawValue>) -> Response {
    match end_of(outcome, id) {
        (status @ (StatusCode::ACCEPTED | StatusCode::NO_CONTENT), _) => status.into_response(),
        (status, body) => json_text(status, body),
    }
}

/// Answers a `POST`: as JSON when the exchange's first event is its end, else as an event stream. The
/// client learns a session its `initialize` opened with the answer.
async fn answer(exchange: McpExchange, first: McpNext, id: Option<Box<RawValue>>) -> (Response, &'static str) {
    let session = exchange.new_session().and_then(|s| HeaderValue::from_str(s).ok());
    let (mut response, result) = match first {
        McpNext::End(outcome) => {
            let result = result_of(&outcome);
            (respond(outcome, id.as_deref()), result)
        }
        McpNext::Message(first) => (event_stream(exchange, Some(first), id), "answered"),
        McpNext::Opened => (event_stream(exchange, None, id), "answered"),
    };
    if let Some(session) = session {
        response.headers_mut().insert(SESSION_HEADER, session);
    }
    (response, result)
}

/// Answers a `DELETE`: `204` once the session ended, or the refusal.
async fn deleted(mut exchange: McpExchange, first: McpNext) -> (Response, &'static str) {
    let mut next = first;
    loop {
        if let McpNext::End(outcome) = next {
            let result = result_of(&outcome);
            return (respond(outcome, None), result);
        }
        next = exchange.next().await;
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
fn event_stream(exchange: McpExchange, first: Option<String>, id: Option<Box<RawValue>>) -> Response {
    struct State {
        exchange: McpExchange,
        first: Option<String>,
        id: Option<Box<RawValue>>,
        done: bool,
    }
    let state = State { exchange, first, id, done: false };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        if let Some(first) = s.first.take() {
            return Some((Ok::<Bytes, Infallible>(event(&first)), s));
        }
        match s.exchange.next().await {
            McpNext::Opened => Some((Ok(Bytes::from_static(b": open\n\n")), s)),
            McpNext::Message(m) => Some((Ok(event(&m)), s)),
            McpNext::End(outcome) => {
                s.done = true;
                // Within a stream, the status is sent already: only the body counts.
                let (status, body) = end_of(outcome, s.id.as_deref());
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
async fn listen(exchange: McpExchange, first: McpNext) -> (Response, &'static str) {
    match first {
        // The sled's word that its server accepted the stream.
        McpNext::Opened => (event_stream(exchange, None, None), "answered"),
        McpNext::Message(first) => (event_stream(exchange, Some(first), None), "answered"),
        McpNext::End(outcome) => {
            let result = result_of(&outcome);
            let refusal = match outcome {
                McpOutcome::Answered(McpAnswer::Response(end) | McpAnswer::SessionGone(end)) => {
                    mcp_endpoint::stream_not_opened(&end)
                }
                McpOutcome::Answered(McpAnswer::NoContent) | McpOutcome::SessionEnded => {
                    mcp_endpoint::stream_not_opened("null")
                }
                McpOutcome::Failed(reason) => mcp_endpoint::failed(reason),
                McpOutcome::Refused(refusal) => refusal,
            };
            (refused(refusal), result)
        }
    }
}

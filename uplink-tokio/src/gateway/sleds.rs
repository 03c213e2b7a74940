//! `GET /api/sleds` (the fleet, as the hub lists it) and `POST /api/sleds/{project}/rpc` (the session-less
//! MCP relay).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use hyper::StatusCode;
use serde_json::json;
use uplink_proto::gateway::mcp_endpoint;

use super::config::MAX_ADMIN_BODY;
use super::extract::{Decider, Reader};
use super::shared::Shared;
use crate::http::{header, json_response, millis, read_limited};

/// `GET /api/sleds`.
pub(super) async fn list(_: Reader, State(shared): State<Arc<Shared>>) -> Response {
    let sleds: Vec<serde_json::Value> = shared
        .hub
        .sleds()
        .await
        .into_iter()
        .map(|s| {
            json!({
                "project": s.project,
                "connected": s.connected,
                "stale": s.stale,
                "connected_for_ms": millis(s.connected_for),
                "last_seen_ms_ago": millis(s.last_seen_ago),
                "pending_permissions": s.pending_permissions,
                "pending_mcp": s.pending_mcp,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "sleds": sleds }))
}

/// `POST /api/sleds/{project}/rpc`: the seed's session-less relay, for clients that predate Streamable HTTP
/// sessions. One JSON-RPC message, one JSON answer; never a stream. The local session is the principal's own,
/// or the one `Mcp-Session-Id` names within the principal's, so that no two principals share one.
pub(super) async fn relay_rpc(
    Decider(principal): Decider,
    State(shared): State<Arc<Shared>>,
    Path(project): Path<String>,
    request: Request,
) -> Response {
    let session = Some(mcp_endpoint::rpc_session(&principal.name, header(request.headers(), "mcp-session-id")));
    let body = match read_limited(request.into_body(), MAX_ADMIN_BODY, shared.handshake_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Not UTF-8, or not JSON: the MCP endpoint's parse error.
    let body = match String::from_utf8(body.to_vec()) {
        Ok(body) if mcp_endpoint::Body::read(&body) != mcp_endpoint::Body::NotJson => body,
        _ => return super::mcp::refused(mcp_endpoint::NOT_JSON),
    };
    let id = super::mcp::request_id(&body);
    let started = std::time::Instant::now();
    let outcome = shared.hub.mcp(project, body, session).await;
    shared.metrics.relayed(super::mcp::result_of(&outcome), started.elapsed());
    super::mcp::respond(outcome, id.as_deref())
}

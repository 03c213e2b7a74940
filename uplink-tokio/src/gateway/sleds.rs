//! `GET /api/sleds` (the fleet, as the hub lists it; in a cluster, every live node's) and `POST /api/sleds/{project}/rpc` (the session-less
//! MCP relay).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use bytes::Bytes;
use hyper::StatusCode;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use uplink_proto::gateway::mcp_endpoint;
use uplink_proto::gateway::peers::goes_to;

use super::config::MAX_ADMIN_BODY;
use super::extract::{Decider, Principal, Reader};
use super::mcp_exchange::McpOutcome;
use super::shared::Shared;
use crate::http::{header, json_response, millis, read_limited};

/// `GET /api/sleds`: the sleds this node knows; in a cluster, every live node's, each with its `node`, one
/// entry per project (where its sled is connected, else where it was seen last), and the nodes that did not
/// answer in `unreachable_nodes`.
pub(super) async fn list(_: Reader, State(shared): State<Arc<Shared>>) -> Response {
    let here = local(&shared).await;
    let Some(peers) = shared.peers.as_ref() else {
        return json_response(StatusCode::OK, &json!({ "sleds": here }));
    };
    let mut all: Vec<(u64, Value)> = here.into_iter().map(|s| (peers.me, s)).collect();
    let mut unreachable = Vec::new();
    match peers.ask_all("/internal/sleds").await {
        Ok(answers) => {
            for (node, answer) in answers {
                let listed = answer.and_then(|a| serde_json::from_slice::<Value>(&a).ok());
                match listed.as_ref().and_then(|l| l["sleds"].as_array()) {
                    Some(sleds) => all.extend(sleds.iter().map(|s| (node, s.clone()))),
                    None => unreachable.push(node),
                }
            }
        }
        Err(_) => unreachable.push(0),
    }
    // One per project: connected first, then the one seen last.
    let rank =
        |s: &Value| (!s["connected"].as_bool().unwrap_or(false), s["last_seen_ms_ago"].as_u64().unwrap_or(u64::MAX));
    let mut by_project: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    for (node, sled) in all {
        let project = sled["project"].as_str().unwrap_or_default().to_owned();
        match by_project.get(&project) {
            Some((_, kept)) if rank(kept) <= rank(&sled) => {}
            _ => _ = by_project.insert(project, (node, sled)),
        }
    }
    let sleds: Vec<Value> = by_project
        .into_values()
        .map(|(node, mut sled)| {
            sled["node"] = json!(node);
            sled
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "sleds": sleds, "unreachable_nodes": unreachable }))
}

/// The sleds this node knows, as `GET /api/sleds` lists them.
pub(super) async fn local(shared: &Shared) -> Vec<Value> {
    shared
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
        .collect()
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
    let headers = request.headers().clone();
    let body = match read_limited(request.into_body(), MAX_ADMIN_BODY, shared.handshake_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    relay_rpc_here(&shared, &principal, project, &headers, body, true).await
}

/// The relay of `body` for `principal` at this node's hub; or, `may_forward` and in a cluster, at the node
/// whose claim holds the project when this node's hub refuses it for want of the sled here (as the MCP
/// endpoint does: `mcp::serve_here`).
pub(super) async fn relay_rpc_here(
    shared: &Shared,
    principal: &Principal,
    project: String,
    headers: &hyper::HeaderMap,
    bytes: Bytes,
    may_forward: bool,
) -> Response {
    let session = Some(mcp_endpoint::rpc_session(&principal.name, header(headers, "mcp-session-id")));
    // Not UTF-8, or not JSON: the MCP endpoint's parse error.
    let body = match String::from_utf8(bytes.to_vec()) {
        Ok(body) if mcp_endpoint::Body::read(&body) != mcp_endpoint::Body::NotJson => body,
        _ => return super::mcp::refused(mcp_endpoint::NOT_JSON),
    };
    let id = super::mcp::request_id(&body);
    let started = std::time::Instant::now();
    let outcome = shared.hub.mcp(project.clone(), body, session).await;
    if let (true, Some(peers), McpOutcome::Refused(refusal)) = (may_forward, &shared.peers, &outcome)
        && let Ok(Some(holder)) = peers.holding(project.clone()).await
        && let Some(node) = goes_to(peers.me, refusal.status, Some(holder.node))
    {
        let path = format!("/internal/rpc/{}", utf8_percent_encode(&project, NON_ALPHANUMERIC));
        return super::mcp::forward(peers, &holder, node, principal, &path, &hyper::Method::POST, headers, bytes).await;
    }
    shared.metrics.relayed(super::mcp::result_of(&outcome), started.elapsed());
    super::mcp::respond(outcome, id.as_deref())
}

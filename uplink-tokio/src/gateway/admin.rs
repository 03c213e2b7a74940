//! The admin API: routes under `/api/` that people, bots and policies use, behind the admin token.
//!
//! Handlers ask the hub task and write its answers out as JSON. Tool inputs are spliced in as the JSON text
//! they arrived in (the sled's frame was valid JSON, so they are): never parsed again.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::broadcast;
use uplink_proto::Decision;
use uplink_proto::gateway::{HubEvent, McpFailure, McpRefused, PublicPermId, Withdrawn};

use super::hub_task::McpOutcome;
use super::{MAX_ADMIN_BODY, Shared};
use crate::http::{Body, bearer, error, json_response, json_string, read_limited};

/// Routes one request to the sleds' upgrade or the admin API.
pub(super) async fn route(request: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/api/sled-uplink" {
        return super::upgrade::sled_upgrade(request, shared).await;
    }
    if !path.starts_with("/api/") {
        return error(StatusCode::NOT_FOUND, "no such route");
    }
    let authorized =
        bearer(request.headers()).is_some_and(|t| super::token_matches(std::slice::from_ref(&shared.admin_token), t));
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "admin token required (Authorization: Bearer …)");
    }
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    match (request.method().clone(), segments.as_slice()) {
        (Method::GET, ["sleds"]) => list_sleds(&shared).await,
        (Method::POST, ["sleds", project, "mcp"]) => {
            let project = percent_encoding::percent_decode_str(project).decode_utf8_lossy().into_owned();
            relay_mcp(request, &shared, project).await
        }
        (Method::GET, ["permissions"]) => list_permissions(&shared).await,
        (Method::POST, ["permissions", id]) => {
            let id = (*id).to_owned();
            decide(request, &shared, &id).await
        }
        (Method::GET, ["events"]) => events(&shared),
        (_, ["sleds"] | ["sleds", _, "mcp"] | ["permissions"] | ["permissions", _] | ["events"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        }
        _ => error(StatusCode::NOT_FOUND, "no such route"),
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    read_limited(request.into_body(), MAX_ADMIN_BODY).await
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn list_sleds(shared: &Shared) -> Response<Body> {
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

async fn list_permissions(shared: &Shared) -> Response<Body> {
    let perms = shared.hub.permissions().await;
    let bytes: usize = perms.iter().map(|p| p.tool_input.len() + p.tool_name.len() + p.project.len() + 96).sum();
    let mut body = String::with_capacity(bytes + 20);
    body.push_str(r#"{"permissions":["#);
    for (i, p) in perms.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"id":"{}","project":{},"tool_name":{},"tool_input":{},"age_ms":{}}}"#,
            p.id,
            json_string(&p.project),
            json_string(&p.tool_name),
            p.tool_input,
            millis(p.age),
        );
    }
    body.push_str("]}");
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn relay_mcp(request: Request<Incoming>, shared: &Shared, project: String) -> Response<Body> {
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
    match shared.hub.mcp(project, body, session).await {
        McpOutcome::Answered(payload) if payload == "null" => {
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
        McpOutcome::Answered(payload) => {
            let mut r = Response::new(Full::new(Bytes::from(payload)).boxed());
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        McpOutcome::Failed(McpFailure::Timeout) => {
            error(StatusCode::GATEWAY_TIMEOUT, "the sled did not answer in time")
        }
        McpOutcome::Failed(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the sled's connection ended before it answered")
        }
        McpOutcome::Refused(McpRefused::UnknownProject) => error(StatusCode::NOT_FOUND, "unknown project"),
        McpOutcome::Refused(McpRefused::TooMany) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "too many MCP requests in flight for this sled")
        }
        McpOutcome::Refused(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the sled is not connected"),
    }
}

async fn decide(request: Request<Incoming>, shared: &Shared, id: &str) -> Response<Body> {
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
    let not_pending = || error(StatusCode::NOT_FOUND, "no pending permission with this id");
    let Ok(perm) = id.parse::<PublicPermId>() else { return not_pending() };
    let decision = Decision::from_flags(body.approved, body.always_allow);
    match shared.hub.decide(perm, decision).await {
        Ok(()) => json_response(StatusCode::OK, &json!({"id": id, "decision": decision.as_str()})),
        Err(_) => not_pending(),
    }
}

/// An event's SSE name and JSON data; `None` for events not shown on the stream.
fn event_text(event: &HubEvent) -> Option<(&'static str, String)> {
    let withdrawn = |r: &Withdrawn| match r {
        Withdrawn::Cancelled => "cancelled",
        Withdrawn::ConnectionLost => "connection_lost",
    };
    Some(match event {
        HubEvent::SledConnected { project, protocol, sled_version, capabilities, .. } => (
            "sled_connected",
            json!({"project": project, "protocol": protocol, "sled_version": sled_version, "capabilities": capabilities})
                .to_string(),
        ),
        HubEvent::SledRefused { project, reason, .. } => (
            "sled_refused",
            json!({"project": project, "code": reason.code(), "reason": reason.text()}).to_string(),
        ),
        HubEvent::SledDisconnected { project, .. } => ("sled_disconnected", json!({"project": project}).to_string()),
        HubEvent::SledStale { project } => ("sled_stale", json!({"project": project}).to_string()),
        HubEvent::SledAlive { project } => ("sled_alive", json!({"project": project}).to_string()),
        HubEvent::PermissionRequested { id, project, req_id, tool_name, tool_input } => (
            "permission_requested",
            format!(
                r#"{{"id":"{id}","project":{},"req_id":{},"tool_name":{},"tool_input":{tool_input}}}"#,
                json_string(project),
                json_string(req_id),
                json_string(tool_name),
            ),
        ),
        HubEvent::PermissionDecided { id, project, decision } => (
            "permission_decided",
            json!({"id": id.to_string(), "project": project, "decision": decision.as_str()}).to_string(),
        ),
        HubEvent::PermissionWithdrawn { id, project, reason } => (
            "permission_withdrawn",
            json!({"id": id.to_string(), "project": project, "reason": withdrawn(reason)}).to_string(),
        ),
        HubEvent::PermissionAutoDecided { project, req_id, tool_name, decision, .. } => (
            "permission_auto_decided",
            json!({"project": project, "req_id": req_id, "tool_name": tool_name, "decision": decision.as_str()})
                .to_string(),
        ),
        _ => return None,
    })
}

fn events(shared: &Shared) -> Response<Body> {
    let rx = shared.hub.subscribe();
    let closing = shared.closing.subscribe();
    let stream = futures_util::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        loop {
            if *closing.borrow() {
                return None;
            }
            let text = tokio::select! {
                received = tokio::time::timeout(Duration::from_secs(15), rx.recv()) => match received {
                    Ok(Ok(event)) => match event_text(&event) {
                        Some((kind, data)) => format!("event: {kind}\ndata: {data}\n\n"),
                        None => continue,
                    },
                    Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                        format!("event: lagged\ndata: {}\n\n", json!({"missed": n}))
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                    Err(_) => ": keep-alive\n\n".to_owned(),
                },
                _ = closing.changed() => return None,
            };
            return Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), (rx, closing)));
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

//! The admin API: routes under `/api/` that people, bots and policies use, behind the admin token.
//!
//! Handlers ask the hub task and write its answers out as JSON. Tool inputs are spliced in as the JSON text
//! they arrived in (the sled's frame was valid JSON, so they are): never parsed again.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::StatusCode;
use serde_json::json;
use tokio::sync::broadcast;
use uplink_proto::Decision;
use uplink_proto::gateway::{HubDecideError, HubEvent, McpFailure, McpRefused, PermEnd, PublicPermId, Verdict};
use uplink_proto::wire::MAX_MESSAGE_BYTES;

use super::hub_task::McpOutcome;
use super::{MAX_ADMIN_BODY, Shared};
use crate::http::{bearer, error, json_response, json_string, json_text, read_limited};

/// The gateway's routes: the sleds' upgrade and the admin API. Unknown routes answer `404`, known ones with
/// the wrong method `405` with `Allow`; every error is JSON.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/sled-uplink", get(super::upgrade::sled_upgrade))
        .route("/api/sleds", get(list_sleds))
        .route("/api/sleds/{project}/mcp", post(relay_mcp))
        .route("/api/permissions", get(list_permissions))
        .route("/api/permissions/{id}", post(decide))
        .route("/api/events", get(events))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .with_state(shared)
}

/// A request that carried the admin token (`Authorization: Bearer`, the scheme in any case), compared in
/// constant time. Anything else is refused with `401` before the handler runs.
pub(super) struct Admin;

impl FromRequestParts<Arc<Shared>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Admin, Response> {
        let authorized =
            bearer(&parts.headers).is_some_and(|t| super::token_matches(std::slice::from_ref(&shared.admin_token), t));
        if authorized {
            Ok(Admin)
        } else {
            Err(error(StatusCode::UNAUTHORIZED, "admin token required (Authorization: Bearer …)"))
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn list_sleds(_: Admin, State(shared): State<Arc<Shared>>) -> Response {
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

async fn list_permissions(_: Admin, State(shared): State<Arc<Shared>>) -> Response {
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
    json_text(StatusCode::OK, body)
}

async fn relay_mcp(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Path(project): Path<String>,
    request: Request,
) -> Response {
    let session = request.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = match read_limited(request.into_body(), MAX_ADMIN_BODY, shared.handshake_timeout).await {
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
        McpOutcome::Answered(payload) if payload == "null" => StatusCode::ACCEPTED.into_response(),
        McpOutcome::Answered(payload) => json_text(StatusCode::OK, payload),
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

async fn decide(_: Admin, State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Body) -> Response {
    #[derive(serde::Deserialize)]
    struct Ask {
        approved: bool,
        #[serde(default)]
        always_allow: bool,
        #[serde(default)]
        message: Option<String>,
    }
    let body = match read_limited(body, MAX_ADMIN_BODY, shared.handshake_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ask: Ask = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"approved\": bool, \"always_allow\": bool, \"message\": string}}: {e}"),
            );
        }
    };
    if ask.always_allow && !ask.approved {
        // A person (or bot) saying "not approved, but always allow" has made a mistake: never guess an approval.
        return error(StatusCode::BAD_REQUEST, "always_allow requires approved: true");
    }
    let not_pending = || error(StatusCode::NOT_FOUND, "no pending permission with this id");
    let Ok(perm) = id.parse::<PublicPermId>() else { return not_pending() };
    let decision = Decision::from_flags(ask.approved, ask.always_allow);
    let mut verdict = Verdict::new(decision);
    if let Some(message) = ask.message {
        verdict = verdict.with_message(message);
    }
    match shared.hub.decide(perm, verdict).await {
        Ok(()) => json_response(StatusCode::OK, &json!({"id": id, "decision": decision.as_str()})),
        Err(HubDecideError::MessageTooLong) => {
            error(StatusCode::BAD_REQUEST, &format!("message is longer than {MAX_MESSAGE_BYTES} bytes"))
        }
        // Too late: say how it ended, so that a person knows their click did nothing.
        Err(HubDecideError::Ended(end)) => {
            let error = format!("this permission has ended: {end}");
            let body = match end {
                PermEnd::Decided(d) => json!({"error": error, "ended": "decided", "decision": d.as_str()}),
                PermEnd::Withdrawn(w) => json!({"error": error, "ended": w.as_str()}),
                _ => json!({"error": error, "ended": "ended"}),
            };
            json_response(StatusCode::CONFLICT, &body)
        }
        Err(_) => not_pending(),
    }
}

/// An event's SSE name and JSON data; `None` for events not shown on the stream.
fn event_text(event: &HubEvent) -> Option<(&'static str, String)> {
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
        HubEvent::PermissionDecided { id, project, verdict } => (
            "permission_decided",
            json!({
                "id": id.to_string(),
                "project": project,
                "decision": verdict.decision.as_str(),
                "message": verdict.message.as_deref(),
            })
            .to_string(),
        ),
        HubEvent::PermissionWithdrawn { id, project, reason } => (
            "permission_withdrawn",
            json!({"id": id.to_string(), "project": project, "reason": reason.as_str()}).to_string(),
        ),
        HubEvent::PermissionAutoDecided { project, req_id, tool_name, decision, .. } => (
            "permission_auto_decided",
            json!({"project": project, "req_id": req_id, "tool_name": tool_name, "decision": decision.as_str()})
                .to_string(),
        ),
        _ => return None,
    })
}

async fn events(_: Admin, State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let rx = shared.hub.subscribe();
    let closing = shared.closing.subscribe();
    let stream = futures_util::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        loop {
            if *closing.borrow() {
                return None;
            }
            let event = tokio::select! {
                received = rx.recv() => match received {
                    Ok(event) => match event_text(&event) {
                        Some((kind, data)) => Event::default().event(kind).data(data),
                        None => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(json!({"missed": n}).to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = closing.changed() => return None,
            };
            return Some((Ok::<_, Infallible>(event), (rx, closing)));
        }
    });
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive");
    ([("cache-control", "no-cache")], Sse::new(stream).keep_alive(keep_alive))
}

//! The admin API: routes under `/api/` that people, bots and policies use, each behind a principal's token
//! and its role's right.
//!
//! Handlers ask the hub task and write its answers out as JSON. Tool inputs are spliced in as the JSON text
//! they arrived in (the sled's frame was valid JSON, so they are): never parsed again.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::{get, post};
use hyper::StatusCode;
use serde_json::json;
use uplink_proto::gateway::{
    Action, Always, AlwaysScope, HubDecideError, PermEnd, PublicPermId, Role, Verdict, mcp_endpoint,
};
use uplink_proto::wire::MAX_MESSAGE_BYTES;

use super::hub_task::DecideFailure;
use super::{MAX_ADMIN_BODY, Shared};
use crate::http::{bearer, error, header, json_response, json_string, json_text, millis, read_limited};

/// The gateway's routes: the sleds' upgrade and the admin API. Unknown routes answer `404`, known ones with
/// the wrong method `405` with `Allow`; every error is JSON.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/sled-uplink", get(super::upgrade::sled_upgrade))
        .route("/api/sleds", get(list_sleds))
        .route("/api/sleds/{project}/mcp", post(super::mcp::serve).get(super::mcp::serve).delete(super::mcp::serve))
        .route("/api/sleds/{project}/rpc", post(relay_rpc))
        .route("/api/permissions", get(list_permissions))
        .route("/api/permissions/{id}", post(decide))
        .route("/api/rules", get(super::rules::list).post(super::rules::add))
        .route("/api/rules/{id}", axum::routing::delete(super::rules::remove))
        .route("/api/audit", get(super::audit::list))
        .route("/", get(super::console::page))
        .route("/console/app.js", get(super::console::script))
        .route("/console/style.css", get(super::console::style))
        .route(
            "/console/session",
            get(super::console::whoami).post(super::console::sign_in).delete(super::console::sign_out),
        )
        .route("/metrics", get(super::metrics::metrics))
        .route("/healthz", get(super::metrics::healthz))
        .route("/readyz", get(super::metrics::readyz))
        .route("/api/events", get(super::events::events))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .with_state(shared)
}

/// The admin principal a request's `Authorization: Bearer` token (the scheme in any case) belongs to. A
/// request without a known token is refused with `401` before the handler runs; a handler then asks
/// [`Principal::refusal`] for the right its route needs, which the core's [`Role`] decides (`403`).
pub(super) struct Principal {
    pub(super) name: Arc<str>,
    pub(super) role: Role,
}

impl Principal {
    /// `None` when this principal's role allows `action`; otherwise the `403` to answer.
    pub(super) fn refusal(&self, action: Action) -> Option<Response> {
        if self.role.allows(action) {
            None
        } else {
            Some(error(StatusCode::FORBIDDEN, &format!("the {} role may not do this", self.role)))
        }
    }
}

impl FromRequestParts<Arc<Shared>> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Principal, Response> {
        if let Some(token) = bearer(&parts.headers) {
            let credentials = shared.credentials();
            return match credentials.admin(token) {
                Some(p) => Ok(Principal { name: p.name.clone(), role: p.role }),
                None => Err(shared.auth.refuse(
                    &parts.extensions,
                    &shared.metrics,
                    "admin token required (Authorization: Bearer …)",
                )),
            };
        }
        // The console's cookie, under its CSRF and origin checks.
        match super::console::principal_of(parts, shared) {
            Some(Ok((name, role))) => Ok(Principal { name, role }),
            Some(Err(refused)) => Err(refused),
            None => Err(error(StatusCode::UNAUTHORIZED, "admin token required (Authorization: Bearer …)")),
        }
    }
}

async fn list_sleds(principal: Principal, State(shared): State<Arc<Shared>>) -> Response {
    if let Some(refused) = principal.refusal(Action::Read) {
        return refused;
    }
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

async fn list_permissions(principal: Principal, State(shared): State<Arc<Shared>>) -> Response {
    if let Some(refused) = principal.refusal(Action::Read) {
        return refused;
    }
    let perms = shared.hub.permissions().await;
    let bytes: usize = perms.iter().map(|p| p.tool_input.len() + p.tool_name.len() + p.project.len() + 96).sum();
    let mut body = String::with_capacity(bytes + 20);
    body.push_str(r#"{"permissions":["#);
    for (i, p) in perms.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        // What an "always allow" would make of it, shown before anyone picks it.
        let suggested = uplink_proto::rules::suggest(&p.tool_name, &p.tool_input)
            .map_or_else(|| "null".to_owned(), |r| json_string(&r.to_string()));
        let _ = write!(
            body,
            r#"{{"id":"{}","project":{},"tool_name":{},"tool_input":{},"age_ms":{},"deadline_in_ms":{},"suggested_rule":{}}}"#,
            p.id,
            json_string(&p.project),
            json_string(&p.tool_name),
            p.tool_input,
            millis(p.age),
            p.deadline_in.map_or_else(|| "null".to_owned(), |d| millis(d).to_string()),
            suggested,
        );
    }
    body.push_str("]}");
    json_text(StatusCode::OK, body)
}

/// `POST /api/sleds/{project}/rpc`: the seed's session-less relay, for clients that predate Streamable HTTP
/// sessions. One JSON-RPC message, one JSON answer; never a stream. The local session is the principal's own,
/// or the one `Mcp-Session-Id` names within the principal's, so that no two principals share one.
async fn relay_rpc(
    principal: Principal,
    State(shared): State<Arc<Shared>>,
    Path(project): Path<String>,
    request: Request,
) -> Response {
    // A sled acts on what its MCP server is asked: as much a decision as a permission.
    if let Some(refused) = principal.refusal(Action::Decide) {
        return refused;
    }
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

async fn decide(
    principal: Principal,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    if let Some(refused) = principal.refusal(Action::Decide) {
        return refused;
    }
    #[derive(serde::Deserialize)]
    struct Ask {
        approved: bool,
        #[serde(default)]
        always_allow: bool,
        #[serde(default)]
        message: Option<String>,
        /// For "always allow": `connection`, `project` (the default) or `everywhere`.
        #[serde(default)]
        scope: Option<String>,
        /// For "always allow": until when its rule applies, in Unix seconds.
        #[serde(default)]
        until: Option<u64>,
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
                &format!(
                    "expected {{\"approved\": bool, \"always_allow\": bool, \"message\": string, \"scope\": \"connection\"|\"project\"|\"everywhere\", \"until\": unix seconds}}: {e}"
                ),
            );
        }
    };
    // The core reads the answers: "not approved, but always allow" is a mistake, never an approval.
    let mut verdict = match Verdict::from_answers(ask.approved, ask.always_allow) {
        Ok(v) => v.by(principal.name.clone()),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("{e}: true")),
    };
    let scope = match ask.scope.as_deref().map(str::parse::<AlwaysScope>) {
        None => AlwaysScope::default(),
        Some(Ok(scope)) => scope,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let not_pending = || error(StatusCode::NOT_FOUND, "no pending permission with this id");
    let Ok(perm) = id.parse::<PublicPermId>() else { return not_pending() };
    let decision = verdict.decision;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    verdict = verdict.always(Always::new(scope, created));
    if let Some(message) = ask.message {
        verdict = verdict.with_message(message);
    }
    match shared.hub.decide(perm, verdict, ask.until).await {
        Ok(rule) => json_response(
            StatusCode::OK,
            &json!({"id": id, "decision": decision.as_str(), "by": &*principal.name, "rule": rule.map(|r| r.0)}),
        ),
        Err(DecideFailure::Store) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the decision could not be written, so it was not sent")
        }
        Err(DecideFailure::Hub(HubDecideError::MessageTooLong)) => {
            error(StatusCode::BAD_REQUEST, &format!("message is longer than {MAX_MESSAGE_BYTES} bytes"))
        }
        Err(DecideFailure::Hub(HubDecideError::AlwaysExpired)) => {
            error(StatusCode::BAD_REQUEST, "until is not in the future: the rule would never apply")
        }
        // Too late: say how it ended, so that a person knows their click did nothing.
        Err(DecideFailure::Hub(HubDecideError::Ended(end))) => {
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

//! `GET /api/permissions` (what waits for a person, with the rule "always allow" would make) and
//! `POST /api/permissions/{id}` (a person's decision).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use hyper::StatusCode;
use serde_json::json;
use uplink_proto::gateway::{AlwaysScope, HubDecideError, PermEnd, PublicPermId, Verdict};
use uplink_proto::wire::MAX_MESSAGE_BYTES;

use super::config::MAX_ADMIN_BODY;
use super::extract::{Decider, Reader};
use super::hub_handle::DecideFailure;
use super::shared::Shared;
use crate::http::{error, json_response, json_string, json_text, millis, read_limited};

/// `GET /api/permissions`.
pub(super) async fn list(_: Reader, State(shared): State<Arc<Shared>>) -> Response {
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
            r#"{{"id":"{}","project":{},"tool_name":{},"tool_input":{},"age_ms":{},"deadline_in_ms":{},"suggested_rule":{},"sled_away":{},"decided":{}}}"#,
            p.id,
            json_string(&p.project),
            json_string(&p.tool_name),
            p.tool_input,
            millis(p.age),
            p.deadline_in.map_or_else(|| "null".to_owned(), |d| millis(d).to_string()),
            suggested,
            p.held,
            p.decided.map_or_else(|| "null".to_owned(), |d| json_string(d.as_str())),
        );
    }
    body.push_str("]}");
    json_text(StatusCode::OK, body)
}

/// `POST /api/permissions/{id}`.
pub(super) async fn decide(
    Decider(principal): Decider,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
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
    if let Some(message) = ask.message {
        verdict = verdict.with_message(message);
    }
    // An "always allow"'s times (when it was made, until when it applies) are the hub task's to read.
    match shared.hub.decide(perm, verdict, scope, ask.until).await {
        // Its sled is away: the decision is kept, and delivered when the sled comes back.
        Ok(decided) => json_response(
            if decided.held { StatusCode::ACCEPTED } else { StatusCode::OK },
            &json!({
                "id": id,
                "decision": decision.as_str(),
                "by": &*principal.name,
                "rule": decided.rule.map(|r| r.0),
                "sled_away": decided.held,
            }),
        ),
        Err(DecideFailure::Store) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the decision could not be written, so it was not sent")
        }
        Err(DecideFailure::Hub(HubDecideError::MessageTooLong)) => {
            error(StatusCode::BAD_REQUEST, &format!("message is longer than {MAX_MESSAGE_BYTES} bytes"))
        }
        // This node fenced itself: nothing was decided here; the person decides on another node.
        Err(DecideFailure::Hub(why @ HubDecideError::Fenced)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &why.to_string())
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

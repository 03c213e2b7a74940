//! The rules' HTTP face: `GET /api/rules` (every rule in force), `POST /api/rules` and
//! `DELETE /api/rules/{id}` (rules made at run time). Their kept form is `wall.rs`'s.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use hyper::StatusCode;
use serde_json::json;
use uplink_proto::gateway::{ProjectScope, RuleRefused};
use uplink_proto::rules::{Effect, Pattern, Rule, RuleId};

use super::config::MAX_ADMIN_BODY;
use super::extract::{Manager, Reader};
use super::shared::Shared;
use crate::http::{error, json_response, read_limited};

/// `GET /api/rules`.
pub(super) async fn list(_: Reader, State(shared): State<Arc<Shared>>) -> Response {
    let rules = shared.hub.rules().await;
    json_response(StatusCode::OK, &json!({ "rules": rules }))
}

/// `POST /api/rules`.
pub(super) async fn add(Manager(principal): Manager, State(shared): State<Arc<Shared>>, body: Body) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ask {
        effect: String,
        pattern: String,
        #[serde(default)]
        projects: Option<Vec<String>>,
        #[serde(default)]
        expires: Option<u64>,
    }
    let body = match read_limited(body, MAX_ADMIN_BODY, shared.handshake_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let usage = r#"expected {"effect": "allow"|"ask"|"deny", "pattern": "Bash(npm run test:*)", "projects": ["team/*"]?, "expires": unix seconds?}"#;
    let ask: Ask = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("{usage}: {e}")),
    };
    let Ok(effect) = ask.effect.parse::<Effect>() else {
        return error(StatusCode::BAD_REQUEST, &format!("{usage}: unknown effect {:?}", ask.effect));
    };
    let pattern = match Pattern::parse_for(effect, &ask.pattern) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("pattern {:?}: {e}", ask.pattern)),
    };
    let created = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut rule = Rule::new(RuleId(0), effect, pattern, principal.by(), created);
    if let Some(projects) = ask.projects {
        rule = rule.for_projects(ProjectScope::Patterns(projects));
    }
    match shared.hub.add_rule(rule, ask.expires).await {
        Some(Ok(stored)) => json_response(StatusCode::CREATED, &json!({ "rule": stored })),
        Some(Err(RuleRefused::TooMany)) => {
            error(StatusCode::INSUFFICIENT_STORAGE, "the gateway's budget of rules is full (HubConfig::max_rules)")
        }
        Some(Err(why @ (RuleRefused::Fenced | RuleRefused::NoIds))) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &why.to_string())
        }
        Some(Err(why)) => error(StatusCode::BAD_REQUEST, &why.to_string()),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping"),
    }
}

/// `DELETE /api/rules/{id}`.
pub(super) async fn remove(
    Manager(principal): Manager,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else { return error(StatusCode::NOT_FOUND, "no rule with this id") };
    if shared.hub.remove_rule(RuleId(id), principal.by()).await {
        json_response(StatusCode::OK, &json!({ "removed": id, "by": &*principal.by() }))
    } else {
        error(StatusCode::NOT_FOUND, "no rule with this id (the --auto-approve/--auto-deny rules cannot be removed)")
    }
}

//! The rules' HTTP face (`GET/POST/DELETE /api/rules`) and their kept form: the core's [`Rule`] with
//! its times in Unix seconds ([`StoredRule`]). What a rule means and which one wins is the core's
//! (`uplink_proto::rules`); this module converts and carries.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use hyper::StatusCode;
use serde_json::json;
use uplink_proto::Instant;
use uplink_proto::gateway::{ConnHandle, ProjectScope, RuleRefused};
use uplink_proto::rules::{Effect, Pattern, Rule, RuleId};

use super::admin::Principal;
use super::{MAX_ADMIN_BODY, Shared};
use crate::http::{error, json_response, read_limited};
use crate::store::StoredRule;
use uplink_proto::gateway::Action;

/// The mapping between the core's clock and the wall clock, fixed when the hub task starts: the core's
/// instant 0 is `epoch_ms` Unix milliseconds.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Wall {
    epoch_ms: u64,
}

impl Wall {
    /// The wall clock now is the core's `now`.
    pub(crate) fn new(now: Instant, wall: SystemTime) -> Wall {
        let unix_ms = u64::try_from(wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis())
            .unwrap_or(u64::MAX);
        Wall { epoch_ms: unix_ms.saturating_sub(now.as_micros() / 1000) }
    }

    /// The Unix milliseconds of the core's `at`.
    pub(crate) fn unix_ms(&self, at: Instant) -> u64 {
        self.epoch_ms.saturating_add(at.as_micros() / 1000)
    }

    /// The core's instant at `unix_secs` (the core's 0 for a time before it started).
    pub(crate) fn instant(&self, unix_secs: u64) -> Instant {
        let ms = unix_secs.saturating_mul(1000).saturating_sub(self.epoch_ms);
        Instant::ZERO + Duration::from_millis(ms)
    }
}

/// `rule` as it is kept and shown.
pub(crate) fn stored(rule: &Rule, wall: &Wall) -> StoredRule {
    let (projects, project) = match &rule.projects {
        ProjectScope::Patterns(p) => (Some(p.clone()), None),
        ProjectScope::Exactly(p) => (None, Some(p.clone())),
        _ => (None, None),
    };
    StoredRule {
        id: rule.id.0,
        effect: rule.effect.as_str().to_owned(),
        pattern: rule.pattern.to_string(),
        projects,
        project,
        connection: rule.connection.map(|c| c.0),
        expires: rule.expires.map(|at| wall.unix_ms(at).div_ceil(1000)),
        author: rule.author.to_string(),
        created: rule.created,
    }
}

/// A kept rule that no longer reads.
#[derive(Debug, thiserror::Error)]
#[error("kept rule #{id} ({pattern:?}) does not read: {why}")]
pub struct BadStoredRule {
    id: u64,
    pattern: String,
    why: String,
}

/// The core's rule for a kept one. A rule that no longer reads is an error, never skipped: dropping a deny
/// rule would allow what it denied.
pub(crate) fn from_stored(rule: &StoredRule, wall: &Wall) -> Result<Rule, BadStoredRule> {
    let bad = |why: String| BadStoredRule { id: rule.id, pattern: rule.pattern.clone(), why };
    let effect: Effect = rule.effect.parse().map_err(|e| bad(format!("{e}")))?;
    let pattern = Pattern::parse(&rule.pattern).map_err(|e| bad(format!("{e}")))?;
    let mut core = Rule::new(RuleId(rule.id), effect, pattern, rule.author.as_str(), rule.created);
    core = match (&rule.project, &rule.projects) {
        (Some(p), _) => core.for_projects(ProjectScope::Exactly(p.clone())),
        (None, Some(p)) => core.for_projects(ProjectScope::Patterns(p.clone())),
        (None, None) => core,
    };
    if let Some(c) = rule.connection {
        core = core.for_connection(ConnHandle(c));
    }
    if let Some(at) = rule.expires {
        core = core.expiring(wall.instant(at));
    }
    Ok(core)
}

pub(super) async fn list(principal: Principal, State(shared): State<Arc<Shared>>) -> Response {
    if let Some(refused) = principal.refusal(Action::Read) {
        return refused;
    }
    let rules = shared.hub.rules().await;
    json_response(StatusCode::OK, &json!({ "rules": rules }))
}

pub(super) async fn add(principal: Principal, State(shared): State<Arc<Shared>>, body: Body) -> Response {
    if let Some(refused) = principal.refusal(Action::Manage) {
        return refused;
    }
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
    let pattern = match Pattern::parse(&ask.pattern) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("pattern {:?}: {e}", ask.pattern)),
    };
    let created = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut rule = Rule::new(RuleId(0), effect, pattern, principal.name.clone(), created);
    if let Some(projects) = ask.projects {
        rule = rule.for_projects(ProjectScope::Patterns(projects));
    }
    match shared.hub.add_rule(rule, ask.expires).await {
        Some(Ok(stored)) => json_response(StatusCode::CREATED, &json!({ "rule": stored })),
        Some(Err(RuleRefused::TooMany)) => {
            error(StatusCode::INSUFFICIENT_STORAGE, "the gateway's budget of rules is full (HubConfig::max_rules)")
        }
        Some(Err(why)) => error(StatusCode::BAD_REQUEST, &why.to_string()),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping"),
    }
}

pub(super) async fn remove(
    principal: Principal,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = principal.refusal(Action::Manage) {
        return refused;
    }
    let Ok(id) = id.parse::<u64>() else { return error(StatusCode::NOT_FOUND, "no rule with this id") };
    if shared.hub.remove_rule(RuleId(id), principal.name.clone()).await {
        json_response(StatusCode::OK, &json!({ "removed": id, "by": &*principal.name }))
    } else {
        error(StatusCode::NOT_FOUND, "no rule with this id (the --auto-approve/--auto-deny rules cannot be removed)")
    }
}

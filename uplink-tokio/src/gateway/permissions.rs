//! `GET /api/permissions` (what waits for a person, with the rule "always allow" would make) and
//! `POST /api/permissions/{id}` (a person's decision); in a cluster, across every live node: a listing asks
//! each, and a decision for a request held at another node is carried there (the core's
//! [`route`] says where) and decided by that node.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;
use uplink_proto::gateway::peers::{Route, route};
use uplink_proto::gateway::{AlwaysScope, HubDecideError, PermEnd, PublicPermId, Verdict};
use uplink_proto::wire::{MAX_MESSAGE_BYTES, RawValue};

use super::config::MAX_ADMIN_BODY;
use super::extract::{Decider, Principal, Reader};
use super::hub_handle::DecideFailure;
use super::peers::Peers;
use super::shared::Shared;
use crate::http::{error, json_response, json_string, json_text, millis, read_limited};
use crate::store::Peer;

/// `GET /api/permissions`: what waits here; in a cluster, what waits at every live node, each entry with
/// its `node`, and the nodes that did not answer in `unreachable_nodes` (the listing is then not whole).
pub(super) async fn list(_: Reader, State(shared): State<Arc<Shared>>) -> Response {
    let mut body = String::from(r#"{"permissions":["#);
    let mut listed = write_listing(&shared, shared.peers.as_ref().map(|p| p.me), &mut body).await;
    let Some(peers) = shared.peers.as_ref() else {
        body.push_str("]}");
        return json_text(StatusCode::OK, body);
    };
    let mut unreachable = Vec::new();
    match peers.ask_all("/internal/permissions").await {
        Ok(answers) => {
            for (node, answer) in answers {
                // Each entry taken as the text it is (no tree of it), and checked to be an object.
                #[derive(serde::Deserialize)]
                struct Listed<'a> {
                    #[serde(borrow)]
                    permissions: Vec<&'a RawValue>,
                }
                let entries = answer.as_ref().and_then(|a| serde_json::from_slice::<Listed<'_>>(a).ok());
                let Some(entries) = entries.filter(|l| l.permissions.iter().all(|e| e.get().starts_with('{'))) else {
                    unreachable.push(node);
                    continue;
                };
                for entry in &entries.permissions {
                    if listed > 0 {
                        body.push(',');
                    }
                    listed += 1;
                    push_with_node(&mut body, entry.get(), Some(node));
                }
            }
        }
        // The other nodes are not known: the listing is this node's alone, and says so.
        Err(_) => unreachable.push(0),
    }
    let _ = write!(body, r#"],"unreachable_nodes":{}}}"#, json!(unreachable));
    json_text(StatusCode::OK, body)
}

/// `entry` (a JSON object's text) onto `body`, with the node it waits at first, if any.
fn push_with_node(body: &mut String, entry: &str, node: Option<u64>) {
    match (node, entry.strip_prefix('{').map(str::trim_start)) {
        (Some(node), Some(rest)) if rest.starts_with('}') => _ = write!(body, r#"{{"node":{node}}}"#),
        (Some(node), Some(rest)) => _ = write!(body, r#"{{"node":{node},{rest}"#),
        _ => body.push_str(entry),
    }
}

/// What waits at this node onto `body`, one JSON object each, separated by commas (each with `node` first,
/// if given); how many.
pub(super) async fn write_listing(shared: &Shared, node: Option<u64>, body: &mut String) -> usize {
    let perms = shared.hub.permissions().await;
    let bytes: usize = perms.iter().map(|p| p.tool_input.len() + p.tool_name.len() + p.project.len() + 120).sum();
    body.reserve(bytes + 20);
    for (i, p) in perms.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push('{');
        if let Some(node) = node {
            let _ = write!(body, r#""node":{node},"#);
        }
        // What an "always allow" would make of it, shown before anyone picks it.
        let suggested = uplink_proto::rules::suggest(&p.tool_name, &p.tool_input)
            .map_or_else(|| "null".to_owned(), |r| json_string(&r.to_string()));
        let _ = write!(
            body,
            r#""id":"{}","project":{},"tool_name":{},"tool_input":{},"age_ms":{},"deadline_in_ms":{},"suggested_rule":{},"sled_away":{},"decided":{}}}"#,
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
    perms.len()
}

/// A person's answer to one request, as `POST /api/permissions/{id}` takes it (and as it is carried to the
/// node that holds the request).
#[derive(Clone, serde::Deserialize, serde::Serialize)]
pub(super) struct Ask {
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

/// `POST /api/permissions/{id}`: decided here when it waits here; in a cluster, carried to the node where it
/// waits, whose answer is relayed.
pub(super) async fn decide(
    Decider(principal): Decider,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
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
    let Ok(perm) = id.parse::<PublicPermId>() else { return not_pending() };
    match (decide_here(&shared, principal.by(), perm, ask.clone()).await, &shared.peers) {
        (Some(answer), _) => answer,
        (None, None) => not_pending(),
        (None, Some(peers)) => elsewhere(peers, &principal, perm, &ask).await,
    }
}

fn not_pending() -> Response {
    error(StatusCode::NOT_FOUND, "no pending permission with this id")
}

/// A decision for a request this node does not hold: carried to the node the shared table names.
async fn elsewhere(peers: &Peers, by: &Principal, perm: PublicPermId, ask: &Ask) -> Response {
    let held = match peers.holder(perm.to_string()).await {
        Ok(held) => held,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("where this request waits could not be read ({e}); nothing was decided"),
            );
        }
    };
    // Held nowhere: the live nodes, in case the node that made the id is among them (it knows how it ended).
    let live = match held {
        Some(_) => Vec::new(),
        None => peers.others().await.unwrap_or_default(),
    };
    let to = |node| {
        held.as_ref()
            .filter(|h| h.holder.node == node)
            .and_then(|h| h.internal.clone())
            .or_else(|| live.iter().find(|p| p.node == node).map(|p| p.internal.clone()))
    };
    match route(peers.me, perm, held.as_ref().map(|h| h.holder), |n| live.iter().any(|p| p.node == n)) {
        Route::Unknown => not_pending(),
        Route::Lost => json_response(
            StatusCode::CONFLICT,
            &json!({
                "error": "this permission has ended: the node that held it is gone, and its sled denied it as connection lost",
                "ended": "connection_lost",
            }),
        ),
        Route::Away => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node that held this request is gone; it is kept for its sled, and can be decided once the sled is back at a node; nothing was decided",
        ),
        Route::Peer(node) => {
            let Some(internal) = to(node) else {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("node {node} holds this request and has no internal listener; nothing was decided"),
                );
            };
            let carried = json!({"by": &*by.name, "role": by.role.as_str(), "email": by.email.as_deref(), "ask": ask});
            let body = Bytes::from(carried.to_string());
            let path = format!("/internal/permissions/{perm}");
            match peers.call(&Peer { node, internal }, "POST", &path, body).await {
                // The holder refusing this node's call is not the person's refusal.
                Ok(answer) if answer.status == StatusCode::UNAUTHORIZED => error(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "node {node}, which holds this request, refused this node's call ({}); nothing was decided",
                        String::from_utf8_lossy(&answer.body).escape_debug()
                    ),
                ),
                Ok(answer) => json_text(answer.status, answer.body),
                Err(why) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "node {node}, which holds this request, did not answer ({why}): whether it decided is not known; list the permissions, or decide again (a request decided already answers 409)"
                    ),
                ),
            }
        }
    }
}

/// Decides `perm` by `ask`, made by `by`, when it waits at this node: the answer, or `None` when no request
/// with this id waits here.
pub(super) async fn decide_here(shared: &Shared, by: Arc<str>, perm: PublicPermId, ask: Ask) -> Option<Response> {
    // The core reads the answers: "not approved, but always allow" is a mistake, never an approval.
    let mut verdict = match Verdict::from_answers(ask.approved, ask.always_allow) {
        Ok(v) => v.by(by.clone()),
        Err(e) => return Some(error(StatusCode::BAD_REQUEST, &format!("{e}: true"))),
    };
    let scope = match ask.scope.as_deref().map(str::parse::<AlwaysScope>) {
        None => AlwaysScope::default(),
        Some(Ok(scope)) => scope,
        Some(Err(e)) => return Some(error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let decision = verdict.decision;
    if let Some(message) = ask.message {
        verdict = verdict.with_message(message);
    }
    // An "always allow"'s times (when it was made, until when it applies) are the hub task's to read.
    Some(match shared.hub.decide(perm, verdict, scope, ask.until).await {
        // Its sled is away: the decision is kept, and delivered when the sled comes back.
        Ok(decided) => json_response(
            if decided.held { StatusCode::ACCEPTED } else { StatusCode::OK },
            &json!({
                "id": perm.to_string(),
                "decision": decision.as_str(),
                "by": &*by,
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
        Err(_) => return None,
    })
}

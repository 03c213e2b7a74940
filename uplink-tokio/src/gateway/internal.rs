//! The internal listener (`--cluster-listen`): where the other nodes of a cluster reach this one, never
//! through the load balancer. Every call is signed by the node that makes it ([`Peers::check`]: a call
//! whose tag does not check out, for another node, out of time or seen before gets `401`); the routes:
//!
//! - `GET /internal/permissions`: what waits at this node, for another node's listing.
//! - `GET /internal/sleds`: the sleds this node knows, likewise.
//! - `GET /internal/events`: this node's own events, as `GET /api/events` streams them.
//! - `POST`, `GET`, `DELETE /internal/mcp/{project}`: an MCP request made at another node for a sled held
//!   here, with the principal (`uplink-by`) and the endpoint's headers signed with it: served here, its
//!   answer (a stream too) going back as it comes.
//! - `POST /internal/rpc/{project}`: the session-less relay, likewise.
//! - `POST /internal/held/give`: the calling node, granted a project's claim (its sled came back there),
//!   asks for what this node holds for that project's sleds of a credential (`{"project", "credential"}`):
//!   it leaves this node's hub and is handed over in the store before the answer.
//! - `POST /internal/permissions/{id}`: a decision a person made at another node (`{"by": principal,
//!   "ask": …}` as `POST /api/permissions/{id}` takes it) for a request held here: decided and committed
//!   here, before the sled hears it; never carried further.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use hyper::StatusCode;
use uplink_proto::gateway::{Action, CredentialId, PublicPermId, Role};

use super::config::MAX_ADMIN_BODY;
use super::extract::Principal;
use super::permissions::{Ask, decide_here, write_listing};
use super::shared::Shared;
use crate::http::{error, json_response, json_text, read_limited};

/// Most connections from other nodes at once; one more is closed at once (a peer keeps a few open).
const MAX_CONNECTIONS: usize = 256;

/// Serves the internal listener until the server closes: each connection within the budget, its head read
/// within the handshake timeout (as the public listener's).
pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let router = router(shared.clone());
    let budget = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut closing = shared.closing.subscribe();
    let mut stop = Box::pin(async move {
        let _ = closing.wait_for(|c| *c).await;
    });
    let mut backoff = crate::accept::AcceptBackoff::default();
    while let Some(tcp) = crate::accept::next(&listener, &mut backoff, &mut stop).await {
        let (Ok(permit), Ok(peer)) = (budget.clone().try_acquire_owned(), tcp.peer_addr()) else { continue };
        let (router, timeout) = (router.clone(), shared.handshake_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            crate::http::serve_http(hyper_util::rt::TokioIo::new(tcp), timeout, router, peer).await;
        });
    }
}

/// The internal listener's routes.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/internal/permissions", get(list))
        .route("/internal/sleds", get(sleds))
        .route("/internal/events", get(events))
        .route("/internal/mcp/{project}", post(mcp).get(mcp).delete(mcp))
        .route("/internal/rpc/{project}", post(rpc))
        .route("/internal/held/give", post(give_held))
        .route("/internal/permissions/{id}", post(decide))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(shared)
}

/// A call, once its signature (over the headers named `carried` too) checked out: the node it came from,
/// its head and its body.
async fn checked_with(
    shared: &Shared,
    request: Request,
    carried: &[&str],
) -> Result<(u64, axum::http::request::Parts, Bytes), Response> {
    let Some(peers) = shared.peers.as_ref() else {
        return Err(error(StatusCode::NOT_FOUND, "this node is in no cluster"));
    };
    let (parts, body) = request.into_parts();
    // Who calls, for whom and when are checked before a body is read: a stranger holds nothing here.
    if let Err(why) = peers.precheck(&parts.headers) {
        return Err(error(StatusCode::UNAUTHORIZED, &format!("not a call from a node of this cluster: {why}")));
    }
    let body = read_limited(body, MAX_ADMIN_BODY, shared.handshake_timeout).await?;
    match peers.check(&parts.headers, parts.method.as_str(), parts.uri.path(), carried, &body) {
        Ok(from) => Ok((from, parts, body)),
        Err(why) => {
            tracing::warn!(why = %why.escape_debug(), "a call on the internal listener was refused");
            Err(error(StatusCode::UNAUTHORIZED, &format!("not a call from a node of this cluster: {why}")))
        }
    }
}

/// A call that carries no headers, once its signature checked out: the node it came from, and its body.
async fn checked(shared: &Shared, request: Request) -> Result<(u64, Bytes), Response> {
    checked_with(shared, request, &[]).await.map(|(from, _, body)| (from, body))
}

/// The principal a node carried, if it may decide (and relay MCP): an admin principal known here (the
/// credentials are the cluster's, so both nodes agree but for a change in flight), or an identity of the
/// provider the nodes share, with the role and email the calling node found for it (its call is signed: the
/// nodes vouch for each other's checks).
fn decider(shared: &Shared, name: &str, role: Option<&str>, email: Option<&str>) -> Result<Principal, String> {
    let credentials = shared.credentials();
    let principal = match credentials.admins().iter().find(|a| *a.name == *name) {
        Some(admin) => Principal::admin(admin.name.clone(), admin.role),
        None => {
            match (shared.access_tokens.as_ref().is_some_and(|t| t.vouches_for(name)), role.map(str::parse::<Role>)) {
                (true, Some(Ok(role))) => Principal { name: name.into(), role, email: email.map(Arc::from) },
                _ => return Err("the principal is not known at the node holding this request".to_owned()),
            }
        }
    };
    if !principal.role.allows(Action::Decide) {
        return Err(format!("the {} role may not do this", principal.role));
    }
    Ok(principal)
}

fn carried<'a>(parts: &'a hyper::http::request::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty())
}

/// An MCP request a person made at another node for a sled this node holds: served here as that node's
/// endpoint would (never carried further); its answer streams back.
async fn mcp(State(shared): State<Arc<Shared>>, Path(project): Path<String>, request: Request) -> Response {
    let (_, parts, body) = match checked_with(&shared, request, &super::mcp::CARRIED).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let by = carried(&parts, "uplink-by").unwrap_or_default();
    let principal = match decider(&shared, by, carried(&parts, "uplink-role"), None) {
        Ok(p) => p,
        Err(why) => return error(StatusCode::FORBIDDEN, &why),
    };
    super::mcp::serve_here(&shared, &principal, project, &parts.method, &parts.headers, body, false).await
}

async fn list(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if let Err(refused) = checked(&shared, request).await {
        return refused;
    }
    let mut body = String::from(r#"{"permissions":["#);
    write_listing(&shared, None, &mut body).await;
    body.push_str("]}");
    json_text(StatusCode::OK, body)
}

async fn events(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if let Err(refused) = checked(&shared, request).await {
        return refused;
    }
    super::events::own(&shared).await
}

async fn sleds(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if let Err(refused) = checked(&shared, request).await {
        return refused;
    }
    json_response(StatusCode::OK, &serde_json::json!({ "sleds": super::sleds::local(&shared).await }))
}

/// A session-less MCP relay a person made at another node for a sled held here: served here, never carried
/// further.
async fn rpc(State(shared): State<Arc<Shared>>, Path(project): Path<String>, request: Request) -> Response {
    let (_, parts, body) = match checked_with(&shared, request, &super::mcp::CARRIED).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let by = carried(&parts, "uplink-by").unwrap_or_default();
    match decider(&shared, by, carried(&parts, "uplink-role"), None) {
        Ok(principal) => super::sleds::relay_rpc_here(&shared, &principal, project, &parts.headers, body, false).await,
        Err(why) => error(StatusCode::FORBIDDEN, &why),
    }
}

/// Another node, where the sleds of a project came back (its claim granted there), asks for what this node
/// holds for them: handed over in the store before the answer, so that the asking node then takes it up.
async fn give_held(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    #[derive(serde::Deserialize)]
    struct Give {
        project: String,
        credential: u64,
    }
    let (from, body) = match checked(&shared, request).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let give: Give = match serde_json::from_slice(&body) {
        Ok(g) => g,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("expected {{\"project\", \"credential\"}}: {e}")),
    };
    // Only ever to the node that asks.
    if shared.hub.give_held(give.project, CredentialId(give.credential), from).await {
        json_response(StatusCode::OK, &serde_json::json!({ "given_to": from }))
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "this node could not hand them over")
    }
}

async fn decide(State(shared): State<Arc<Shared>>, Path(id): Path<String>, request: Request<Body>) -> Response {
    #[derive(serde::Deserialize)]
    struct Carried {
        by: String,
        #[serde(default)]
        role: Option<String>,
        #[serde(default)]
        email: Option<String>,
        ask: Ask,
    }
    let (from, body) = match checked(&shared, request).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let carried: Carried = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("expected {{\"by\", \"ask\"}}: {e}")),
    };
    // The node that carried it checked the person; this one checks again.
    let principal = match decider(&shared, &carried.by, carried.role.as_deref(), carried.email.as_deref()) {
        Ok(p) => p,
        Err(why) => return error(StatusCode::FORBIDDEN, &why),
    };
    let not_pending = || error(StatusCode::NOT_FOUND, "no pending permission with this id");
    let Ok(perm) = id.parse::<PublicPermId>() else { return not_pending() };
    tracing::debug!(from, perm = %perm, "a decision made at another node");
    decide_here(&shared, principal.by(), perm, carried.ask).await.unwrap_or_else(not_pending)
}

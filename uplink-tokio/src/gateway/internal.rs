//! The internal listener (`--cluster-listen`): where the other nodes of a cluster reach this one, never
//! through the load balancer. Every call is signed by the node that makes it ([`Peers::check`]: a call
//! whose tag does not check out, for another node, out of time or seen before gets `401`); the routes:
//!
//! - `GET /internal/permissions`: what waits at this node, for another node's listing.
//! - `GET /internal/sleds`: the sleds this node knows, likewise.
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
use uplink_proto::gateway::{Action, PublicPermId};

use super::config::MAX_ADMIN_BODY;
use super::permissions::{Ask, decide_here, write_listing};
use super::shared::Shared;
use crate::http::{error, json_response, json_text, read_limited};

/// The internal listener's routes.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/internal/permissions", get(list))
        .route("/internal/sleds", get(sleds))
        .route("/internal/permissions/{id}", post(decide))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(shared)
}

/// The body of a call, once its signature checked out: the node it came from, and the body.
async fn checked(shared: &Shared, request: Request) -> Result<(u64, Bytes), Response> {
    let Some(peers) = shared.peers.as_ref() else {
        return Err(error(StatusCode::NOT_FOUND, "this node is in no cluster"));
    };
    let (parts, body) = request.into_parts();
    let body = read_limited(body, MAX_ADMIN_BODY, shared.handshake_timeout).await?;
    match peers.check(&parts.headers, parts.method.as_str(), parts.uri.path(), &body) {
        Ok(from) => Ok((from, body)),
        Err(why) => {
            tracing::warn!(why = %why.escape_debug(), "a call on the internal listener was refused");
            Err(error(StatusCode::UNAUTHORIZED, &format!("not a call from a node of this cluster: {why}")))
        }
    }
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

async fn sleds(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if let Err(refused) = checked(&shared, request).await {
        return refused;
    }
    json_response(StatusCode::OK, &serde_json::json!({ "sleds": super::sleds::local(&shared).await }))
}

async fn decide(State(shared): State<Arc<Shared>>, Path(id): Path<String>, request: Request<Body>) -> Response {
    #[derive(serde::Deserialize)]
    struct Carried {
        by: String,
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
    // The node that carried it checked the person; this one checks again that the principal is known here
    // and may decide (the credentials are the cluster's, so both agree but for a change in flight).
    let credentials = shared.credentials();
    let Some(principal) = credentials.admins().iter().find(|a| *a.name == *carried.by) else {
        return error(StatusCode::FORBIDDEN, "the principal is not known at the node holding this request");
    };
    if !principal.role.allows(Action::Decide) {
        return error(StatusCode::FORBIDDEN, &format!("the {} role may not do this", principal.role));
    }
    let not_pending = || error(StatusCode::NOT_FOUND, "no pending permission with this id");
    let Ok(perm) = id.parse::<PublicPermId>() else { return not_pending() };
    tracing::debug!(from, perm = %perm, "a decision made at another node");
    decide_here(&shared, principal.name.clone(), perm, carried.ask).await.unwrap_or_else(not_pending)
}

//! Every route of the gateway's listener, in one place: the sleds' upgrade, the admin API, the MCP endpoint,
//! the console, metrics and health. Unknown routes answer `404`, known ones with the wrong method `405`
//! with `Allow`; every error is JSON.

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};
use hyper::StatusCode;

use super::shared::Shared;
use super::{
    audit, console, console_oidc, events, extract, mcp, mcp_auth, metrics, permissions, rules, sleds, upgrade,
};
use crate::http::error;

/// The gateway's routes: the sleds' upgrade and the admin API. Unknown routes answer `404`, known ones with
/// the wrong method `405` with `Allow`; every error is JSON.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/sled-uplink", get(upgrade::sled_upgrade))
        .route("/api/sleds", get(sleds::list))
        .route("/api/me", get(extract::me))
        .route("/api/sleds/{project}/mcp", post(mcp::serve).get(mcp::serve).delete(mcp::serve))
        .route("/api/sleds/{project}/rpc", post(sleds::relay_rpc))
        .route("/.well-known/oauth-protected-resource/api/sleds/{project}/mcp", get(mcp_auth::metadata))
        .route("/.well-known/oauth-protected-resource/api", get(mcp_auth::api_metadata))
        .route("/api/permissions", get(permissions::list))
        .route("/api/permissions/{id}", post(permissions::decide))
        .route("/api/rules", get(rules::list).post(rules::add))
        .route("/api/rules/{id}", delete(rules::remove))
        .route("/api/audit", get(audit::list))
        .route("/", get(console::page))
        .route("/console/app.js", get(console::script))
        .route("/console/style.css", get(console::style))
        .route("/console/manifest.webmanifest", get(console::manifest))
        .route("/console/icon.svg", get(console::icon_svg))
        .route("/console/icon-192.png", get(console::icon_192))
        .route("/console/icon-512.png", get(console::icon_512))
        .route("/console/session", get(console::whoami).post(console::sign_in).delete(console::sign_out))
        .route("/console/oidc", get(console_oidc::start))
        .route("/console/oidc/callback", get(console_oidc::callback))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        .route("/api/events", get(events::events))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .with_state(shared)
}

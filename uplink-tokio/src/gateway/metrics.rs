//! `/metrics` (the [`GatewayMetrics`](super::gateway_metrics::GatewayMetrics) as text), and the health
//! routes `/healthz` (the process answers) and `/readyz` (listening, and the store, if any, writing).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use hyper::StatusCode;
use uplink_proto::gateway::Action;

use super::shared::Shared;
use crate::http::error;

/// `GET /metrics`: behind a viewer's token, unless the gateway was started with public metrics.
pub(super) async fn metrics(State(shared): State<Arc<Shared>>, parts: axum::http::request::Parts) -> Response {
    if !shared.metrics_public {
        let token = crate::http::bearer(&parts.headers);
        let principal = token.and_then(|t| shared.credentials().admin(t).map(|p| p.role));
        let required = "admin token required (or start with --metrics-public)";
        match principal {
            None if token.is_some() => return shared.auth.refuse(&parts.extensions, &shared.metrics, required),
            None => return error(StatusCode::UNAUTHORIZED, required),
            Some(role) if !role.allows(Action::Read) => return error(StatusCode::FORBIDDEN, "not allowed"),
            Some(_) => {}
        }
    }
    (
        StatusCode::OK,
        [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        shared.metrics.text(),
    )
        .into_response()
}

/// `GET /healthz`: the process answers.
pub(super) async fn healthz() -> Response {
    (StatusCode::OK, [("content-type", "application/json")], r#"{"status":"ok"}"#).into_response()
}

/// `GET /readyz`: listening, and the store (if any) writing; `503` once a commit failed or while stopping.
pub(super) async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let stopping = *shared.closing.borrow() || shared.draining.load(std::sync::atomic::Ordering::Relaxed);
    match (shared.store_failed.borrow().as_deref(), stopping) {
        (Some(why), _) => error(StatusCode::SERVICE_UNAVAILABLE, why),
        (None, true) => error(StatusCode::SERVICE_UNAVAILABLE, "stopping"),
        (None, false) => {
            (StatusCode::OK, [("content-type", "application/json")], r#"{"status":"ready"}"#).into_response()
        }
    }
}

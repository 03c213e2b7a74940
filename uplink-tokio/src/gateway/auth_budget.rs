//! Failed authentications, answered as the core's budget per source address says
//! ([`AuthFailures`]): `401` within it, `429` with `Retry-After` past it. A right token is never refused by
//! it. Each connection's peer address reaches the routes as [`ConnectInfo`], set where the connection is
//! served.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use axum::extract::ConnectInfo;
use axum::http::Extensions;
use axum::response::Response;
use hyper::StatusCode;
use uplink_proto::gateway::{AuthFailures, AuthLimitConfig, AuthRefusal, AuthSource};

use super::gateway_metrics::GatewayMetrics;
use crate::http::error;
use crate::socket_loop::Clock;

/// The peer address a request with `extensions` came from.
pub(super) fn peer(extensions: &Extensions) -> Option<SocketAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| *peer)
}

/// The budget, with the clock it is read on.
pub(super) struct AuthBudget {
    clock: Clock,
    table: Mutex<AuthFailures>,
}

impl AuthBudget {
    pub(super) fn new(clock: Clock, config: AuthLimitConfig) -> AuthBudget {
        AuthBudget { clock, table: Mutex::new(AuthFailures::new(config)) }
    }

    /// A wrong token, cookie or sign-in on a request with `extensions`: `401` with `message`, or `429` once
    /// its source is past its budget.
    pub(super) fn refuse(&self, extensions: &Extensions, metrics: &GatewayMetrics, message: &str) -> Response {
        self.refuse_from(peer(extensions), metrics, message)
    }

    /// The same for a request from `peer` (`None`: not known, `401`).
    pub(super) fn refuse_from(&self, peer: Option<SocketAddr>, metrics: &GatewayMetrics, message: &str) -> Response {
        let Some(peer) = peer else {
            return error(StatusCode::UNAUTHORIZED, message);
        };
        let now = self.clock.now();
        let answer =
            self.table.lock().unwrap_or_else(PoisonError::into_inner).handle_failure(now, AuthSource::of(peer.ip()));
        match answer {
            AuthRefusal::Unauthorized => {
                metrics.auth_failed(false);
                error(StatusCode::UNAUTHORIZED, message)
            }
            AuthRefusal::TooMany { retry_after, first } => {
                metrics.auth_failed(true);
                if first {
                    tracing::warn!(peer = %peer.ip(), "too many failed authentications from this address: answering 429");
                }
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications from this address: try again later",
                );
                response.headers_mut().insert("retry-after", retry_after.as_secs().into());
                response
            }
        }
    }
}

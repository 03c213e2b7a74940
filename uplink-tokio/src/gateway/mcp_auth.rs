//! Who may use the MCP endpoint: an admin principal's token (or console session) whose role may decide, as
//! everywhere in the API, and, with `--oidc-issuer`, an MCP client's access token under the MCP
//! authorization spec (2025-11-25): this gateway is an OAuth 2.1 resource server.
//!
//! - `GET /.well-known/oauth-protected-resource/api/sleds/{project}/mcp`: the endpoint's Protected Resource
//!   Metadata (RFC 9728), naming the issuer as its authorization server.
//! - A request without a token gets `401` with `WWW-Authenticate: Bearer resource_metadata="…",
//!   scope="mcp"`, so that a standard client finds where to get one; a bad token `401` with
//!   `error="invalid_token"` (counted against the address's budget of failed authentications), a good
//!   token that does not allow it `403` with `error="insufficient_scope"`; `503` while the issuer's keys
//!   cannot be had (nothing is decided then).
//! - The token's signature is checked by the issuer's keys (`oidc`); what its claims are worth (issuer,
//!   this very endpoint as audience, lifetime, scope, role) by the core's `AccessCheck` (`access_tokens`). The caller acts as the principal
//!   `ISSUER#SUBJECT`: the endpoint's sessions bind to it. The token itself goes no further than this: the
//!   sled and its local server never see it.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse as _, Response};
use hyper::StatusCode;
use hyper::header::WWW_AUTHENTICATE;
use uplink_proto::gateway::Action;

use super::access_tokens::Refused;
use super::extract::{Principal, allowed};
use super::oidc::BadSignature;
use super::shared::Shared;
use crate::http::{bearer, error, json_response};

/// A caller of the MCP endpoint: an admin principal whose role may decide, or an MCP client with an access
/// token for this very endpoint.
pub(super) struct McpCaller(pub(super) Principal);

impl FromRequestParts<Arc<Shared>> for McpCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<McpCaller, Response> {
        let Some(tokens) = shared.access_tokens.clone() else {
            return allowed(parts, shared, Action::Decide).await.map(McpCaller);
        };
        let Path(project) = Path::<String>::from_request_parts(parts, shared).await.map_err(|r| r.into_response())?;
        let with = |mut response: Response, refusal: Option<(&str, &str)>| {
            response.headers_mut().insert(WWW_AUTHENTICATE, tokens.challenge(&project, refusal));
            response
        };
        let token = match bearer(&parts.headers) {
            // An admin principal's token, as on every route.
            Some(token) if shared.credentials().admin(token).is_some() => {
                return allowed(parts, shared, Action::Decide).await.map(McpCaller);
            }
            Some(token) => token.to_owned(),
            // The console's session, or nothing: a client is told where to get a token.
            None => {
                return allowed(parts, shared, Action::Decide)
                    .await
                    .map(McpCaller)
                    .map_err(|r| if r.status() == StatusCode::UNAUTHORIZED { with(r, None) } else { r });
            }
        };
        let refusal = match tokens.check(&token, &project).await {
            Ok((subject, role)) => return Ok(McpCaller(Principal::person(&subject, role))),
            Err(Refused::Signature(BadSignature::NoKeys(why))) => {
                tracing::warn!(error = %why.escape_debug(), "an access token could not be checked: the issuer's keys are not available");
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "the issuer's keys are not available; try again"));
            }
            Err(Refused::Signature(bad)) => (401, "invalid_token", bad.to_string()),
            Err(Refused::Claims(refusal)) => (refusal.status(), refusal.error_code(), refusal.to_string()),
        };
        let (status, code, description) = refusal;
        // A token that is no good here counts against the address's budget; a good one that does not allow
        // this does not.
        let response = match status {
            401 => shared.auth.refuse(&parts.extensions, &shared.metrics, &description),
            _ => error(StatusCode::FORBIDDEN, &description),
        };
        Err(with(response, Some((code, &description))))
    }
}

/// `GET /.well-known/oauth-protected-resource/api`: the admin API's Protected Resource Metadata; `404`
/// without an issuer.
pub(super) async fn api_metadata(State(shared): State<Arc<Shared>>) -> Response {
    match &shared.access_tokens {
        Some(tokens) => public(json_response(StatusCode::OK, &tokens.api_metadata())),
        None => error(StatusCode::NOT_FOUND, "this gateway takes no OAuth access tokens (no --oidc-issuer)"),
    }
}

/// `GET /.well-known/oauth-protected-resource/api/sleds/{project}/mcp`: the endpoint's Protected Resource
/// Metadata; `404` without an issuer.
pub(super) async fn metadata(State(shared): State<Arc<Shared>>, Path(project): Path<String>) -> Response {
    match &shared.access_tokens {
        Some(tokens) => public(json_response(StatusCode::OK, &tokens.metadata(&project))),
        None => error(StatusCode::NOT_FOUND, "this gateway takes no OAuth access tokens (no --oidc-issuer)"),
    }
}

/// `response` readable by any web page (`Access-Control-Allow-Origin: *`): the metadata is public, and an MCP
/// client running in a browser must read it to find where to sign in. Nothing else of the gateway's is.
fn public(mut response: Response) -> Response {
    response.headers_mut().insert("access-control-allow-origin", hyper::header::HeaderValue::from_static("*"));
    response
}

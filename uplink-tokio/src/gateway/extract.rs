//! Who is asking, for the routes: the admin principal a request's token (or console session) stands for,
//! and one extractor per right its role may have, so that a handler names the right it needs and is never
//! reached without it.
//!
//! - [`Principal`]: a known principal, whatever its role: `401` without one (a wrong token or an unknown
//!   session cookie counts against the address's budget of failed authentications: `429` past it).
//! - [`Reader`], [`Decider`], [`Manager`]: a principal whose role allows reading, deciding (and relaying
//!   MCP, since a sled acts on what its MCP server is asked), managing; `403` for one whose role does not.
//!   The core's [`Role`] decides.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::Response;
use hyper::StatusCode;
use uplink_proto::gateway::{Action, ConsoleRefusal, Role, Vouched};

use super::access_tokens::Refused;
use super::console_sessions::{cookie, refused, request};
use super::credentials::TokenHash;
use super::oidc::BadSignature;
use super::shared::Shared;
use crate::http::{bearer, error};

/// The admin principal a request's `Authorization: Bearer` token (the scheme in any case) belongs to. A
/// request without a known token is refused with `401` before the handler runs; a handler then asks
/// [`Principal::refusal`] for the right its route needs, which the core's [`Role`] decides (`403`).
pub(super) struct Principal {
    pub(super) name: Arc<str>,
    pub(super) role: Role,
    /// A person's verified email, from their identity provider: for reading, never part of the identity.
    pub(super) email: Option<Arc<str>>,
}

impl Principal {
    /// An admin principal of the credentials.
    pub(super) fn admin(name: Arc<str>, role: Role) -> Principal {
        Principal { name, role, email: None }
    }

    /// A person or client an identity provider vouched for: `ISSUER#SUBJECT`, with their email if verified.
    pub(super) fn person(subject: &uplink_proto::gateway::identity::Subject, role: Role) -> Principal {
        Principal { name: subject.principal().into(), role, email: subject.email.as_deref().map(Arc::from) }
    }

    /// Who the record says decided or changed something: the name, and a person's email beside it for
    /// reading (`ISSUER#SUBJECT (EMAIL)`).
    pub(super) fn by(&self) -> Arc<str> {
        match &self.email {
            Some(email) => format!("{} ({email})", self.name).into(),
            None => self.name.clone(),
        }
    }
}

/// A [`Principal`] whose role allows `action`; otherwise the `403` to answer.
pub(super) async fn allowed(parts: &mut Parts, shared: &Arc<Shared>, action: Action) -> Result<Principal, Response> {
    let principal = Principal::from_request_parts(parts, shared).await?;
    if principal.role.allows(action) {
        Ok(principal)
    } else {
        Err(error(StatusCode::FORBIDDEN, &format!("the {} role may not do this", principal.role)))
    }
}

/// A principal that may read: sleds, pending permissions, events, rules, the audit log.
pub(super) struct Reader;

/// A principal that may decide permissions and relay MCP to sleds.
pub(super) struct Decider(pub(super) Principal);

/// A principal that may manage: rules made at run time.
pub(super) struct Manager(pub(super) Principal);

impl FromRequestParts<Arc<Shared>> for Reader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Reader, Response> {
        allowed(parts, shared, Action::Read).await.map(|_| Reader)
    }
}

impl FromRequestParts<Arc<Shared>> for Decider {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Decider, Response> {
        allowed(parts, shared, Action::Decide).await.map(Decider)
    }
}

impl FromRequestParts<Arc<Shared>> for Manager {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Manager, Response> {
        allowed(parts, shared, Action::Manage).await.map(Manager)
    }
}

impl FromRequestParts<Arc<Shared>> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Principal, Response> {
        if let Some(token) = bearer(&parts.headers) {
            let credentials = shared.credentials();
            if let Some(p) = credentials.admin(token) {
                return Ok(Principal::admin(p.name.clone(), p.role));
            }
            // A person's access token for the admin API (`uplink login`), when the gateway takes them.
            if let Some(tokens) = &shared.access_tokens {
                return match tokens.check_api(token).await {
                    Ok((subject, role)) => Ok(Principal::person(&subject, role)),
                    Err(Refused::Signature(BadSignature::NoKeys(_))) => {
                        Err(error(StatusCode::SERVICE_UNAVAILABLE, "the issuer's keys are not available; try again"))
                    }
                    Err(Refused::Claims(why)) if why.status() == 403 => {
                        Err(error(StatusCode::FORBIDDEN, &why.to_string()))
                    }
                    Err(why) => {
                        let said = match why {
                            Refused::Signature(s) => s.to_string(),
                            Refused::Claims(c) => c.to_string(),
                        };
                        Err(shared.auth.refuse(
                            &parts.extensions,
                            &shared.metrics,
                            &format!("neither an admin token nor a good access token: {said}"),
                        ))
                    }
                };
            }
            // A token was sent: saying one is required would not be true.
            return Err(shared.auth.refuse(
                &parts.extensions,
                &shared.metrics,
                "this token is no admin principal's (unknown, mistyped or revoked)",
            ));
        }
        // The console's cookie, under its CSRF and origin checks.
        match principal_of(parts, shared) {
            Some(Ok(principal)) => Ok(principal),
            Some(Err(refused)) => Err(refused),
            None => Err(error(StatusCode::UNAUTHORIZED, "admin token required (Authorization: Bearer …)")),
        }
    }
}

/// The principal a console session stands for on `parts`' request, with the role the credentials give it
/// now: `None` without a session cookie; `Some(Err(_))` with the refusal to answer.
fn principal_of(parts: &Parts, shared: &Shared) -> Option<Result<Principal, Response>> {
    let key = TokenHash::of(cookie(&parts.headers)?).0;
    let safe = matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD);
    let admitted = shared.sessions.with(|s, now| s.admit(now, &key, &request(&parts.headers, safe, shared.tls)));
    let principal = match admitted {
        Ok(p) => p,
        // A cookie no session has is a guess as far as anyone can tell.
        Err(ConsoleRefusal::NoSession) => {
            let message = ConsoleRefusal::NoSession.to_string();
            return Some(Err(shared.auth.refuse(&parts.extensions, &shared.metrics, &message)));
        }
        Err(why) => return Some(Err(refused(why))),
    };
    let credentials = shared.credentials();
    let person = || {
        let Vouched { role, email } = vouched(shared, &key, &principal)?;
        Some(Principal { name: principal.clone(), role, email: email.map(Arc::from) })
    };
    match credentials
        .admins()
        .iter()
        .find(|a| a.name == principal)
        .map(|p| Principal::admin(p.name.clone(), p.role))
        .or_else(person)
    {
        Some(known) => Some(Ok(known)),
        None => {
            shared.sessions.with(|s, _| s.close(&key));
            shared.hub.forget_sessions(vec![crate::store::Change::DeleteSession(key)]);
            Some(Err(error(StatusCode::UNAUTHORIZED, "this principal is no longer known; its sessions have ended")))
        }
    }
}

/// What an identity provider vouched for in the console session `key` of `principal`, when the session was
/// opened by a sign-in there and the principal is an identity of the provider this gateway trusts.
pub(super) fn vouched(shared: &Shared, key: &[u8; 32], principal: &str) -> Option<Vouched> {
    if !shared.access_tokens.as_ref()?.vouches_for(principal) {
        return None;
    }
    shared.sessions.with(|s, now| s.vouched(now, key).cloned())
}

/// `GET /api/me`: who the request's token (or console session) stands for, its role, and a person's
/// verified email (or `null`).
pub(super) async fn me(principal: Principal) -> axum::response::Response {
    crate::http::json_response(
        StatusCode::OK,
        &serde_json::json!({"name": &*principal.name, "role": principal.role.to_string(), "email": principal.email.as_deref(), "version": env!("CARGO_PKG_VERSION")}),
    )
}

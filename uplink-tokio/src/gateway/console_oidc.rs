//! The console's sign-in at the OpenID provider (`--oidc-client-id`): `GET /console/oidc` sends the browser
//! there, `GET /console/oidc/callback` takes it back and opens a console session like a token's sign-in
//! does. What each step checks is `sign_ins` (and, beneath it, the core's `identity`); this reads the request
//! and writes the answers: a redirect, or a short page saying what went wrong.
//!
//! The browser is bound to its sign-in by a cookie of its own (`uplink_oidc`, `HttpOnly`, `SameSite=Lax` so
//! that it comes back with the provider's redirect, only under `/console/oidc`, ten minutes): a callback in
//! another browser (a login CSRF, a code someone else got) finishes nothing.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use hyper::StatusCode;
use hyper::header::{LOCATION, SET_COOKIE};
use serde::Deserialize;
use uplink_proto::gateway::Vouched;
use uplink_proto::gateway::identity::{PendingSignIns, TokenRefusal};

use super::console::open_session;
use super::console_sessions::cookie_named;
use super::shared::Shared;
use super::sign_ins::NotSignedIn;

const BINDING: &str = "uplink_oidc";

/// `GET /console/oidc`: to the provider's sign-in.
pub(super) async fn start(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    let Some(sign_ins) = &shared.sign_ins else {
        return page(StatusCode::NOT_FOUND, "This gateway has no sign-in at an identity provider.");
    };
    // Who begins it: one source beginning sign-ins over and over pushes out only its own (the core's rule).
    let from = super::auth_budget::peer(request.extensions()).map(|peer| peer.ip());
    match sign_ins.begin(from).await {
        Ok((location, binding)) => {
            let secure = if shared.tls { "; Secure" } else { "" };
            let cookie = format!(
                "{BINDING}={binding}; HttpOnly; SameSite=Lax; Path=/console/oidc; Max-Age={}{secure}",
                PendingSignIns::TTL.as_secs()
            );
            (StatusCode::SEE_OTHER, [(LOCATION, location), (SET_COOKIE, cookie)]).into_response()
        }
        Err(why) => {
            tracing::warn!(error = %why.escape_debug(), "a sign-in could not begin: the identity provider");
            page(StatusCode::SERVICE_UNAVAILABLE, "The identity provider cannot be reached now. Try again shortly.")
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /console/oidc/callback`: the provider's answer; a console session, then the console.
pub(super) async fn callback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(back): Query<Callback>,
) -> Response {
    let Some(sign_ins) = &shared.sign_ins else {
        return page(StatusCode::NOT_FOUND, "This gateway has no sign-in at an identity provider.");
    };
    if let Some(error) = back.error {
        let said = back.error_description.unwrap_or_default();
        return page(StatusCode::UNAUTHORIZED, &format!("The identity provider did not sign you in: {error} {said}"));
    }
    let (Some(code), Some(state)) = (back.code, back.state) else {
        return page(StatusCode::BAD_REQUEST, "This is not an answer from the identity provider.");
    };
    let binding = cookie_named(&headers, BINDING);
    let (subject, role) = match sign_ins.finish(&state, &code, binding).await {
        Ok(done) => done,
        Err(why) => {
            let status = match &why {
                NotSignedIn::SignIn(_) => StatusCode::BAD_REQUEST,
                NotSignedIn::Provider(_) => StatusCode::BAD_GATEWAY,
                NotSignedIn::Claims(TokenRefusal::Unmapped | TokenRefusal::Role(_)) => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            let text = match &why {
                NotSignedIn::Claims(TokenRefusal::Unmapped) => {
                    "You are signed in at the identity provider, but no rule gives you a role here: ask an administrator to map your group or address (--oidc-role).".to_owned()
                }
                other => format!("You were not signed in: {other}."),
            };
            tracing::info!(status = status.as_u16(), reason = %why.to_string().escape_debug(), "a sign-in at the identity provider was refused");
            return page(status, &text);
        }
    };
    let principal: Arc<str> = subject.principal().into();
    tracing::info!(principal = %principal.escape_debug(), role = %role, "signed in at the identity provider");
    let vouched = Vouched { role, email: subject.email.clone() };
    let (session, _) = match open_session(&shared, principal, Some(vouched)).await {
        Ok(opened) => opened,
        Err(refused) => return refused,
    };
    let clear = format!("{BINDING}=; HttpOnly; SameSite=Lax; Path=/console/oidc; Max-Age=0");
    let mut response = (StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response();
    response.headers_mut().append(SET_COOKIE, session);
    if let Ok(clear) = clear.parse() {
        response.headers_mut().append(SET_COOKIE, clear);
    }
    response
}

/// A short page of our own saying `text` (escaped), with a way back to the console.
fn page(status: StatusCode, text: &str) -> Response {
    let escaped: String = text
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>uplink: sign-in</title></head><body><main><h1>Sign-in</h1><p id=\"message\">{escaped}</p><p><a href=\"/\">Back to the console</a></p></main></body></html>"
    );
    (
        status,
        [
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ],
        body,
    )
        .into_response()
}

//! The web console at `/`: a page, a script and a style sheet of our own (nothing fetched from elsewhere),
//! and its sessions' HTTP face.
//!
//! A person signs in with their principal's token (`POST /console/session`); the gateway answers with a
//! session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS) and the session's CSRF token, both
//! drawn from the operating system's generator. Which requests a session may make, how long it lasts and how
//! many are kept are the core's ([`ConsoleSessions`]: CSRF token and own origin for anything that changes
//! state); this module reads the headers, hashes the cookie (only hashes are kept), and asks. The session's
//! principal takes its role from the credentials in force at each request: a principal revoked or changed by
//! a reload is revoked or changed in every session at once.
//!
//! With a store, a session is kept there (its cookie's hash, principal, CSRF token and end) before its cookie
//! is handed out, and forgotten there when it ends: a restarted gateway takes its people's sessions back.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse as _, Response};
use hyper::StatusCode;
use serde_json::json;
use uplink_proto::gateway::Vouched;

use super::config::MAX_ADMIN_BODY;
use super::console_sessions::{COOKIE, cookie, refused, request, unix_ms};
use super::credentials::TokenHash;
use super::shared::Shared;
use crate::http::{error, header, json_response, read_limited};
use crate::store::{Change, StoredSession};

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");
/// What makes the console installable as a home-screen app: its manifest and icons (drawn by
/// `scripts/console_icons.py`).
const MANIFEST: &str = r##"{"name":"uplink gateway","short_name":"uplink","description":"Decide what coding agents may do","start_url":"/","scope":"/","display":"standalone","background_color":"#ffffff","theme_color":"#1a7f37","icons":[{"src":"/console/icon.svg","sizes":"any","type":"image/svg+xml"},{"src":"/console/icon-192.png","sizes":"192x192","type":"image/png"},{"src":"/console/icon-512.png","sizes":"512x512","type":"image/png"}]}"##;
const ICON_SVG: &str = include_str!("console/icon.svg");
const ICON_192: &[u8] = include_bytes!("console/icon-192.png");
const ICON_512: &[u8] = include_bytes!("console/icon-512.png");

fn security_headers(content_type: &'static str, body: impl Into<&'static [u8]>) -> Response {
    let body: &'static [u8] = body.into();
    (
        StatusCode::OK,
        [
            ("content-type", content_type),
            (
                "content-security-policy",
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                 manifest-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
            ("cache-control", "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn page() -> Response {
    security_headers("text/html; charset=utf-8", PAGE.as_bytes())
}

pub(super) async fn script() -> Response {
    security_headers("text/javascript; charset=utf-8", SCRIPT.as_bytes())
}

pub(super) async fn style() -> Response {
    security_headers("text/css; charset=utf-8", STYLE.as_bytes())
}

/// `GET /console/manifest.webmanifest`, and the icons it names: the console as a home-screen app.
pub(super) async fn manifest() -> Response {
    security_headers("application/manifest+json", MANIFEST.as_bytes())
}

pub(super) async fn icon_svg() -> Response {
    security_headers("image/svg+xml", ICON_SVG.as_bytes())
}

pub(super) async fn icon_192() -> Response {
    security_headers("image/png", ICON_192)
}

pub(super) async fn icon_512() -> Response {
    security_headers("image/png", ICON_512)
}

/// `POST /console/session` `{"token": …}`: a session for the principal whose token it is.
pub(super) async fn sign_in(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    let peer = super::auth_budget::peer(request.extensions());
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if !uplink_proto::gateway::console::same_origin(header(&headers, "origin"), header(&headers, "host"), shared.tls) {
        return error(StatusCode::FORBIDDEN, "sign in from the console's own origin");
    }
    let body = match read_limited(body, MAX_ADMIN_BODY, shared.handshake_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    #[derive(serde::Deserialize)]
    struct Ask {
        token: String,
    }
    let Ok(ask) = serde_json::from_slice::<Ask>(&body) else {
        return error(StatusCode::BAD_REQUEST, r#"expected {"token": "…"}"#);
    };
    let Some(principal) = shared.credentials().admin(ask.token.trim()).cloned() else {
        return shared.auth.refuse_from(peer, &shared.metrics, "this is not an admin principal's token");
    };
    let (set_cookie, csrf) = match open_session(&shared, principal.name.clone(), None).await {
        Ok(opened) => opened,
        Err(refused) => return refused,
    };
    let who = json!({"name": &*principal.name, "role": principal.role.to_string(), "csrf": csrf});
    let mut response = json_response(StatusCode::OK, &who);
    response.headers_mut().insert("set-cookie", set_cookie);
    response
}

/// Opens a console session for `principal` (with what an identity provider vouched for, for a person who
/// signed in there), kept in the store (if any) before its cookie is handed out: the `Set-Cookie` header
/// that hands it out, and its CSRF token.
pub(super) async fn open_session(
    shared: &Shared,
    principal: Arc<str>,
    vouched: Option<Vouched>,
) -> Result<(HeaderValue, String), Response> {
    let (cookie, csrf) = match (super::config::generate_token(), super::config::generate_token()) {
        (Ok(cookie), Ok(csrf)) => (cookie, csrf),
        (Err(e), _) | (_, Err(e)) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    };
    let key = TokenHash::of(&cookie).0;
    let (role, email) = match &vouched {
        Some(v) => (Some(v.role.to_string()), v.email.clone()),
        None => (None, None),
    };
    // How long it lasts is the core's (a vouched-for one at most an hour): read back, not decided here.
    let (gone, lifetime) = shared.sessions.with(|s, now| {
        let gone = match vouched {
            Some(v) => s.open_vouched(now, key, principal.clone(), csrf.clone(), v),
            None => s.open(now, key, principal.clone(), csrf.clone()),
        };
        (gone, s.left(now, &key).unwrap_or_default())
    });
    let expires_ms = unix_ms(SystemTime::now() + lifetime);
    let kept = StoredSession { key, principal: principal.to_string(), csrf: csrf.clone(), expires_ms, role, email };
    let mut changes = vec![Change::PutSession(kept)];
    changes.extend(gone.into_iter().map(Change::DeleteSession));
    shared.hub.keep(changes).await;
    let secure = if shared.tls { "; Secure" } else { "" };
    let set_cookie =
        format!("{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}", lifetime.as_secs());
    let value =
        HeaderValue::try_from(set_cookie).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    Ok((value, csrf))
}

/// `GET /console/session`: who the session is (and its CSRF token, for a reloaded page); `401` without one.
pub(super) async fn whoami(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    // The page offers the provider's sign-in when there is one.
    let not_signed_in = || {
        json_response(StatusCode::UNAUTHORIZED, &json!({"error": "not signed in", "oidc": shared.sign_ins.is_some()}))
    };
    let Some(key) = cookie(&headers).map(|c| TokenHash::of(c).0) else {
        return not_signed_in();
    };
    let Some((principal, csrf)) = shared.sessions.with(|s, now| s.get(now, &key).map(|(p, c)| (p, c.to_owned())))
    else {
        return not_signed_in();
    };
    let credentials = shared.credentials();
    if let Some(p) = credentials.admins().iter().find(|a| a.name == principal) {
        return json_response(StatusCode::OK, &json!({"name": &*p.name, "role": p.role.to_string(), "csrf": csrf}));
    }
    // A person signed in at the provider: known by their email where it is verified.
    match super::extract::vouched(&shared, &key, &principal) {
        Some(Vouched { role, email }) => {
            let name = email.unwrap_or_else(|| principal.to_string());
            json_response(
                StatusCode::OK,
                &json!({"name": name, "id": &*principal, "role": role.to_string(), "csrf": csrf}),
            )
        }
        None => not_signed_in(),
    }
}

/// `DELETE /console/session`: signs out, under the checks of any request that changes something.
pub(super) async fn sign_out(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(key) = cookie(&headers).map(|c| TokenHash::of(c).0) else {
        return error(StatusCode::UNAUTHORIZED, "not signed in");
    };
    let ended =
        shared.sessions.with(|s, now| s.admit(now, &key, &request(&headers, false, shared.tls)).map(|_| s.close(&key)));
    if let Err(why) = ended {
        return refused(why);
    }
    // Written before the answer: a sign-out never comes undone in a restart.
    shared.hub.keep(vec![Change::DeleteSession(key)]).await;
    let mut response = json_response(StatusCode::OK, &json!({"signed_out": true}));
    if let Ok(value) = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0").parse() {
        response.headers_mut().insert("set-cookie", value);
    }
    response
}

//! The web console at `/`: a page, a script and a style sheet of our own (nothing fetched from elsewhere),
//! and its sessions.
//!
//! A person signs in with their principal's token (`POST /console/session`); the gateway answers with a
//! session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS, 12 h) and the session's CSRF token.
//! The cookie then stands for the token on the API routes, under the same protections a bearer needs none
//! of: a request that changes anything (`POST`, `DELETE`) must carry `X-CSRF-Token` equal to its session's,
//! and an `Origin`, when present, must be the gateway's own. A session is looked up by the SHA-256 of its
//! cookie, names its principal, and takes the principal's role as the credentials say *now*: a principal
//! revoked or changed by a reload is revoked or changed in every session at once. Sessions are budgeted
//! (the oldest are dropped beyond [`MAX_SESSIONS`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse as _, Response};
use hyper::StatusCode;
use serde_json::json;

use super::credentials::TokenHash;
use super::{MAX_ADMIN_BODY, Shared};
use crate::http::{error, json_response, read_limited};

/// Most sessions at once; beyond, the oldest is dropped.
pub const MAX_SESSIONS: usize = 1024;

/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's name.
const COOKIE: &str = "uplink_session";

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

/// What a session knows.
#[derive(Clone, Debug)]
struct Session {
    principal: Arc<str>,
    csrf: String,
    created: Instant,
}

/// The console's sessions, by the SHA-256 of their cookie. The lock is held only to look up or change the
/// table, never across I/O.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    table: Mutex<HashMap<TokenHash, Session>>,
}

impl Sessions {
    fn create(&self, principal: Arc<str>) -> Result<(String, String), String> {
        let cookie = super::generate_token().map_err(|e| e.to_string())?;
        let csrf = super::generate_token().map_err(|e| e.to_string())?;
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.retain(|_, s| s.created.elapsed() < SESSION_LIFETIME);
        while table.len() >= MAX_SESSIONS {
            let Some(oldest) = table.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) else { break };
            table.remove(&oldest);
        }
        table.insert(TokenHash::of(&cookie), Session { principal, csrf: csrf.clone(), created: Instant::now() });
        Ok((cookie, csrf))
    }

    fn get(&self, cookie: &str) -> Option<Session> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.get(&TokenHash::of(cookie)).filter(|s| s.created.elapsed() < SESSION_LIFETIME).cloned()
    }

    fn remove(&self, cookie: &str) {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).remove(&TokenHash::of(cookie));
    }
}

/// The session cookie's value in `headers`, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty()).then_some(value)
    })
}

/// Whether `Origin`, when present, is this gateway itself (the scheme it serves and the `Host` asked for).
fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    let Some(origin) = headers.get("origin") else { return true };
    let (Ok(origin), Some(host)) = (origin.to_str(), headers.get("host").and_then(|h| h.to_str().ok())) else {
        return false;
    };
    origin == format!("{}://{host}", if tls { "https" } else { "http" })
}

/// The principal a console session stands for on `parts`' request: `None` without a session cookie;
/// `Some(Err(_))` when the cookie is stale, its principal gone, or (for a request that changes anything)
/// the CSRF token or the origin is wrong.
pub(super) fn principal_of(
    parts: &Parts,
    shared: &Shared,
) -> Option<Result<(Arc<str>, uplink_proto::gateway::Role), Response>> {
    let cookie = cookie(&parts.headers)?;
    let refused = |why: &str| Some(Err(error(StatusCode::FORBIDDEN, why)));
    let Some(session) = shared.sessions.get(cookie) else {
        return Some(Err(error(StatusCode::UNAUTHORIZED, "the console session has ended; sign in again")));
    };
    let safe = matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD);
    if !safe {
        let csrf = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
        if csrf != Some(session.csrf.as_str()) {
            return refused("a console request that changes anything needs its session's X-CSRF-Token");
        }
        if !same_origin(&parts.headers, shared.tls) {
            return refused("a console request must come from the console's own origin");
        }
    }
    // The role the credentials give the principal now.
    let credentials = shared.credentials();
    match credentials.admins().iter().find(|a| a.name == session.principal) {
        Some(p) => Some(Ok((p.name.clone(), p.role))),
        None => {
            shared.sessions.remove(cookie);
            Some(Err(error(StatusCode::UNAUTHORIZED, "this principal is no longer known; its sessions have ended")))
        }
    }
}

fn security_headers(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            ("content-type", content_type),
            (
                "content-security-policy",
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
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
    security_headers("text/html; charset=utf-8", PAGE)
}

pub(super) async fn script() -> Response {
    security_headers("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    security_headers("text/css; charset=utf-8", STYLE)
}

/// `POST /console/session` `{"token": …}`: a session for the principal whose token it is.
pub(super) async fn sign_in(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    if !same_origin(&headers, shared.tls) {
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
    let credentials = shared.credentials();
    let Some(principal) = credentials.admin(ask.token.trim()).cloned() else {
        return error(StatusCode::UNAUTHORIZED, "this is not an admin principal's token");
    };
    drop(credentials);
    let (cookie, csrf) = match shared.sessions.create(principal.name.clone()) {
        Ok(pair) => pair,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let secure = if shared.tls { "; Secure" } else { "" };
    let set_cookie =
        format!("{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}", SESSION_LIFETIME.as_secs());
    let mut response = json_response(
        StatusCode::OK,
        &json!({"name": &*principal.name, "role": principal.role.to_string(), "csrf": csrf}),
    );
    if let Ok(value) = set_cookie.parse() {
        response.headers_mut().insert("set-cookie", value);
    }
    response
}

/// `GET /console/session`: who the session is (and its CSRF token, for a reloaded page); `401` without one.
pub(super) async fn whoami(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(cookie) = cookie(&headers) else { return error(StatusCode::UNAUTHORIZED, "not signed in") };
    let Some(session) = shared.sessions.get(cookie) else { return error(StatusCode::UNAUTHORIZED, "not signed in") };
    let credentials = shared.credentials();
    match credentials.admins().iter().find(|a| a.name == session.principal) {
        Some(p) => {
            json_response(StatusCode::OK, &json!({"name": &*p.name, "role": p.role.to_string(), "csrf": session.csrf}))
        }
        None => error(StatusCode::UNAUTHORIZED, "not signed in"),
    }
}

/// `DELETE /console/session`: signs out (with the session's CSRF token).
pub(super) async fn sign_out(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(cookie) = cookie(&headers) else { return error(StatusCode::UNAUTHORIZED, "not signed in") };
    let Some(session) = shared.sessions.get(cookie) else { return error(StatusCode::UNAUTHORIZED, "not signed in") };
    let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if csrf != Some(session.csrf.as_str()) || !same_origin(&headers, shared.tls) {
        return error(StatusCode::FORBIDDEN, "signing out needs the session's X-CSRF-Token, from the console's origin");
    }
    shared.sessions.remove(cookie);
    let mut response = json_response(StatusCode::OK, &json!({"signed_out": true}));
    if let Ok(value) = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0").parse() {
        response.headers_mut().insert("set-cookie", value);
    }
    response
}

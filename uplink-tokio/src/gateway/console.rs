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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse as _, Response};
use hyper::StatusCode;
use serde_json::json;
use uplink_proto::gateway::{ConsoleRefusal, ConsoleRequest, ConsoleSessions, Role};

use super::credentials::TokenHash;
use super::{MAX_ADMIN_BODY, Shared};
use crate::http::{error, header, json_response, read_limited};
use crate::socket_loop::Clock;

/// Most sessions at once; beyond, the oldest is dropped.
pub const MAX_SESSIONS: usize = 1024;

/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's name.
const COOKIE: &str = "uplink_session";

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

/// The core's sessions, and the clock it reads them by. The lock is held only around the core's pure calls.
#[derive(Debug)]
pub(crate) struct Sessions {
    table: Mutex<ConsoleSessions>,
    clock: Clock,
}

impl Sessions {
    pub(crate) fn new(clock: Clock) -> Sessions {
        Sessions { table: Mutex::new(ConsoleSessions::new(MAX_SESSIONS, SESSION_LIFETIME)), clock }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ConsoleSessions, uplink_proto::Instant) -> T) -> T {
        let now = self.clock.now();
        f(&mut self.table.lock().unwrap_or_else(PoisonError::into_inner), now)
    }
}

/// The session cookie's value in `headers`, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty()).then_some(value)
    })
}

/// The request's headers as the core's checks read them.
fn request<'a>(headers: &'a HeaderMap, safe: bool, tls: bool) -> ConsoleRequest<'a> {
    ConsoleRequest {
        safe,
        origin: header(headers, "origin"),
        host: header(headers, "host"),
        tls,
        csrf: header(headers, "x-csrf-token"),
    }
}

/// The answer to a refused console request: `401` when there is no live session, `403` otherwise.
fn refused(why: ConsoleRefusal) -> Response {
    let status = if why == ConsoleRefusal::NoSession { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN };
    error(status, &why.to_string())
}

/// The principal a console session stands for on `parts`' request, with the role the credentials give it
/// now: `None` without a session cookie; `Some(Err(_))` with the refusal to answer.
pub(super) fn principal_of(parts: &Parts, shared: &Shared) -> Option<Result<(Arc<str>, Role), Response>> {
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
    match credentials.admins().iter().find(|a| a.name == principal) {
        Some(p) => Some(Ok((p.name.clone(), p.role))),
        None => {
            shared.sessions.with(|s, _| s.close(&key));
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
    let (cookie, csrf) = match (super::generate_token(), super::generate_token()) {
        (Ok(cookie), Ok(csrf)) => (cookie, csrf),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let key = TokenHash::of(&cookie).0;
    shared.sessions.with(|s, now| s.open(now, key, principal.name.clone(), csrf.clone()));
    let secure = if shared.tls { "; Secure" } else { "" };
    let set_cookie =
        format!("{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}", SESSION_LIFETIME.as_secs());
    let who = json!({"name": &*principal.name, "role": principal.role.to_string(), "csrf": csrf});
    let mut response = json_response(StatusCode::OK, &who);
    if let Ok(value) = set_cookie.parse() {
        response.headers_mut().insert("set-cookie", value);
    }
    response
}

/// `GET /console/session`: who the session is (and its CSRF token, for a reloaded page); `401` without one.
pub(super) async fn whoami(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(key) = cookie(&headers).map(|c| TokenHash::of(c).0) else {
        return error(StatusCode::UNAUTHORIZED, "not signed in");
    };
    let Some((principal, csrf)) = shared.sessions.with(|s, now| s.get(now, &key).map(|(p, c)| (p, c.to_owned())))
    else {
        return error(StatusCode::UNAUTHORIZED, "not signed in");
    };
    let credentials = shared.credentials();
    match credentials.admins().iter().find(|a| a.name == principal) {
        Some(p) => json_response(StatusCode::OK, &json!({"name": &*p.name, "role": p.role.to_string(), "csrf": csrf})),
        None => error(StatusCode::UNAUTHORIZED, "not signed in"),
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
    let mut response = json_response(StatusCode::OK, &json!({"signed_out": true}));
    if let Ok(value) = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0").parse() {
        response.headers_mut().insert("set-cookie", value);
    }
    response
}

//! The web console's sessions as the gateway keeps them: the core's [`ConsoleSessions`] (which requests a
//! session may make, how long it lasts, how many are kept) behind a lock held only around its pure calls,
//! and reading a request's cookie and headers for it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use axum::response::Response;
use hyper::StatusCode;
use uplink_proto::gateway::{ConsoleRefusal, ConsoleRequest, ConsoleSessions, Vouched};

use crate::http::{error, header};
use crate::socket_loop::Clock;
use crate::store::StoredSession;

/// Most sessions at once; beyond, the oldest is dropped.
pub const MAX_SESSIONS: usize = 1024;

/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's name.
pub(super) const COOKIE: &str = "uplink_session";

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

    /// Takes back the sessions a store kept, each for the time it had left at `wall_now`.
    pub(crate) fn restore(&self, kept: &[StoredSession], wall_now: SystemTime) {
        let now_ms = unix_ms(wall_now);
        self.with(|table, now| {
            for session in kept {
                let left = Duration::from_millis(session.expires_ms.saturating_sub(now_ms));
                let principal: Arc<str> = session.principal.as_str().into();
                table.restore(now, session.key, principal, session.csrf.clone(), left);
                vouch(table, now, session);
            }
        });
    }

    /// Sign-ins other gateways of the cluster made (`open`) or ended (`closed`), as a reading of the store
    /// found them at `wall_now`: in force here for the time they have left, or no longer (one ended here
    /// lately is never taken back in). Returns the keys of sign-ins let go for them (beyond the budget), for
    /// the store to forget too.
    pub(crate) fn take_in_elsewhere(
        &self,
        open: &[StoredSession],
        closed: &[[u8; 32]],
        wall_now: SystemTime,
    ) -> Vec<[u8; 32]> {
        let now_ms = unix_ms(wall_now);
        self.with(|table, now| {
            for key in closed {
                table.close(key);
            }
            let mut gone = Vec::new();
            for session in open {
                let left = Duration::from_millis(session.expires_ms.saturating_sub(now_ms));
                let principal: Arc<str> = session.principal.as_str().into();
                gone.extend(table.open_elsewhere(now, session.key, principal, session.csrf.clone(), left));
                vouch(table, now, session);
            }
            gone
        })
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut ConsoleSessions, uplink_proto::Instant) -> T) -> T {
        let now = self.clock.now();
        f(&mut self.table.lock().unwrap_or_else(PoisonError::into_inner), now)
    }
}

/// What a provider vouched for in a kept sign-in, attached to it in `table` (in the same turn of the lock
/// as its restoring: never seen without it).
fn vouch(table: &mut ConsoleSessions, now: uplink_proto::Instant, session: &StoredSession) {
    if let Some(role) = session.role.as_deref().and_then(|r| r.parse().ok()) {
        table.vouch(now, &session.key, Vouched { role, email: session.email.clone() });
    }
}

/// `at` in Unix milliseconds, as a kept session's end is written.
pub(super) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The session cookie's value in `headers`, if any.
pub(super) fn cookie(headers: &HeaderMap) -> Option<&str> {
    cookie_named(headers, COOKIE)
}

/// The value of the cookie `name` in `headers`, if any.
pub(super) fn cookie_named<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (n, value) = pair.trim().split_once('=')?;
        (n == name && !value.is_empty()).then_some(value)
    })
}

/// The request's headers as the core's checks read them.
pub(super) fn request<'a>(headers: &'a HeaderMap, safe: bool, tls: bool) -> ConsoleRequest<'a> {
    ConsoleRequest {
        safe,
        origin: header(headers, "origin"),
        host: header(headers, "host"),
        tls,
        csrf: header(headers, "x-csrf-token"),
    }
}

/// The answer to a refused console request: `401` when there is no live session, `403` otherwise.
pub(super) fn refused(why: ConsoleRefusal) -> Response {
    let status = if why == ConsoleRefusal::NoSession { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN };
    error(status, &why.to_string())
}

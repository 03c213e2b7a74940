//! Who may act through the gateway's web console: its sessions and the checks a request with a session
//! cookie must pass. Pure: the adapter draws the cookie and CSRF values from the operating system's
//! generator, hashes cookies (the table holds only hashes), and asks here.
//!
//! - A session names its principal and has a CSRF token; it lasts [`ConsoleSessions::lifetime`], and at
//!   most [`ConsoleSessions::max`] are kept (the oldest is dropped for a new one).
//! - A request that changes anything (not `GET`/`HEAD`) must carry its session's CSRF token, and an
//!   `Origin`, when present, must be the gateway's own ([`same_origin`]). A safe request needs the session
//!   only: the cookie is `SameSite=Strict`, so another site's page never sends it.
//! - What the principal may do is still its [`Role`](super::Role)'s, as the credentials say at that moment.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use core::time::Duration;

use crate::time::Instant;

/// A request as the console's checks read it.
#[derive(Copy, Clone, Debug)]
pub struct ConsoleRequest<'a> {
    /// `GET` or `HEAD`: it changes nothing.
    pub safe: bool,
    /// The `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// The `Host` header, if any.
    pub host: Option<&'a str>,
    /// Whether the gateway serves TLS (its own origin is then `https://`).
    pub tls: bool,
    /// The `X-CSRF-Token` header, if any.
    pub csrf: Option<&'a str>,
}

/// Why a console request was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleRefusal {
    /// No such session, or it has ended (expired, signed out, or dropped for newer ones).
    #[error("the console session has ended; sign in again")]
    NoSession,
    /// A request that changes anything without its session's CSRF token.
    #[error("a console request that changes anything needs its session's X-CSRF-Token")]
    Csrf,
    /// An `Origin` other than the gateway's own.
    #[error("a console request must come from the console's own origin")]
    ForeignOrigin,
}

/// Whether `origin`, when present, is the gateway itself: the scheme it serves and the `host` asked for. An
/// absent `Origin` (a same-origin `GET`, or a client that is not a browser) passes; an `Origin` without a
/// `Host` to compare with does not.
pub fn same_origin(origin: Option<&str>, host: Option<&str>, tls: bool) -> bool {
    let Some(origin) = origin else { return true };
    let Some(host) = host else { return false };
    let scheme = if tls { "https://" } else { "http://" };
    origin.strip_prefix(scheme) == Some(host)
}

#[derive(Clone, Debug)]
struct Session {
    principal: Arc<str>,
    csrf: String,
    created: Instant,
}

/// The console's sessions, by the hash of their cookie. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ConsoleSessions {
    max: usize,
    lifetime: Duration,
    table: BTreeMap<[u8; 32], Session>,
}

impl ConsoleSessions {
    /// No sessions; at most `max` at once, each lasting `lifetime`.
    pub fn new(max: usize, lifetime: Duration) -> ConsoleSessions {
        ConsoleSessions { max: max.max(1), lifetime, table: BTreeMap::new() }
    }

    /// The most sessions kept.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How long a session lasts.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Sessions kept (some may have expired since the last [`ConsoleSessions::open`]).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// A new session at `now` for `principal`, under the cookie hash `key`, with `csrf`; expired sessions
    /// are forgotten, and the oldest beyond the budget.
    pub fn open(&mut self, now: Instant, key: [u8; 32], principal: Arc<str>, csrf: String) {
        let lifetime = self.lifetime;
        self.table.retain(|_, s| now.saturating_duration_since(s.created) < lifetime);
        while self.table.len() >= self.max {
            let Some(oldest) = self.table.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) else { break };
            self.table.remove(&oldest);
        }
        self.table.insert(key, Session { principal, csrf, created: now });
    }

    fn live(&self, now: Instant, key: &[u8; 32]) -> Option<&Session> {
        self.table.get(key).filter(|s| now.saturating_duration_since(s.created) < self.lifetime)
    }

    /// The session `key` at `now`, if live: its principal and CSRF token (for a page that reloads).
    pub fn get(&self, now: Instant, key: &[u8; 32]) -> Option<(Arc<str>, &str)> {
        self.live(now, key).map(|s| (s.principal.clone(), s.csrf.as_str()))
    }

    /// Whether `request`, carrying the cookie hash `key`, may act as its session's principal, which it
    /// returns.
    pub fn admit(
        &self,
        now: Instant,
        key: &[u8; 32],
        request: &ConsoleRequest<'_>,
    ) -> Result<Arc<str>, ConsoleRefusal> {
        let session = self.live(now, key).ok_or(ConsoleRefusal::NoSession)?;
        if !request.safe {
            if request.csrf != Some(session.csrf.as_str()) {
                return Err(ConsoleRefusal::Csrf);
            }
            if !same_origin(request.origin, request.host, request.tls) {
                return Err(ConsoleRefusal::ForeignOrigin);
            }
        }
        Ok(session.principal.clone())
    }

    /// Ends the session `key` (sign-out, or its principal is gone).
    pub fn close(&mut self, key: &[u8; 32]) {
        self.table.remove(key);
    }
}

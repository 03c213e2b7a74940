//! Who may act through the gateway's web console: its sessions and the checks a request with a session
//! cookie must pass. Pure: the adapter draws the cookie and CSRF values from the operating system's
//! generator, hashes cookies (the table holds only hashes), and asks here.
//!
//! - A session names its principal and has a CSRF token; it lasts [`ConsoleSessions::lifetime`], and at
//!   most [`ConsoleSessions::max`] are kept (the one nearest its end is dropped for a new one). Sessions a
//!   store kept come back with the time they had left ([`ConsoleSessions::restore`]); what
//!   [`ConsoleSessions::open`] lets go is returned, for the store to forget too.
//! - A request that changes anything (not `GET`/`HEAD`) must carry its session's CSRF token, and an
//!   `Origin`, when present, must be the gateway's own ([`same_origin`]). A safe request needs the session
//!   only: the cookie is `SameSite=Strict`, so another site's page never sends it.
//! - What the principal may do is still its [`Role`](super::Role)'s, as the credentials say at that moment.
//! - Gateways of a cluster share their sessions through their store: a session another gateway opened or
//!   ended, as a reading of the store found it, is taken in ([`ConsoleSessions::open_elsewhere`],
//!   [`ConsoleSessions::close`]); one this table ended lately ([`CLOSED_KEPT`]) is never taken back in, so a
//!   reading taken before this gateway's own sign-out was committed does not undo it.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
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
    /// When it ends.
    expires: Instant,
    vouched: Option<Vouched>,
}

/// What an identity provider vouched for when a person signed in there (rather than with a principal's
/// token): the role the rules gave them then, and their verified email. A session that carries it acts with
/// that role for at most [`Vouched::LIFETIME`]; then the person signs in again, which reads their groups
/// anew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vouched {
    /// The role the rules gave at sign-in.
    pub role: super::principal::Role,
    /// The verified email, for reading.
    pub email: Option<String>,
}

impl Vouched {
    /// Longest a session a provider vouched for lasts.
    pub const LIFETIME: Duration = Duration::from_secs(3600);
}

/// How many of the sessions it ended a table remembers, so that no reading from elsewhere brings one back.
pub const CLOSED_KEPT: usize = 4096;

/// The console's sessions, by the hash of their cookie. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ConsoleSessions {
    max: usize,
    lifetime: Duration,
    table: BTreeMap<[u8; 32], Session>,
    /// The sessions ended here lately (signed out, dropped, expired), oldest first.
    closed: VecDeque<[u8; 32]>,
    closed_keys: BTreeSet<[u8; 32]>,
}

impl ConsoleSessions {
    /// No sessions; at most `max` at once, each lasting `lifetime`.
    pub fn new(max: usize, lifetime: Duration) -> ConsoleSessions {
        ConsoleSessions {
            max: max.max(1),
            lifetime,
            table: BTreeMap::new(),
            closed: VecDeque::new(),
            closed_keys: BTreeSet::new(),
        }
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
    /// are forgotten, and beyond the budget the one nearest its end. Returns the keys of the sessions it let
    /// go.
    pub fn open(&mut self, now: Instant, key: [u8; 32], principal: Arc<str>, csrf: String) -> Vec<[u8; 32]> {
        let expires = now + self.lifetime;
        self.keep(now, key, Session { principal, csrf, expires, vouched: None })
    }

    /// As [`ConsoleSessions::open`], for a person an identity provider vouched for: it lasts at most
    /// [`Vouched::LIFETIME`].
    pub fn open_vouched(
        &mut self,
        now: Instant,
        key: [u8; 32],
        principal: Arc<str>,
        csrf: String,
        vouched: Vouched,
    ) -> Vec<[u8; 32]> {
        let expires = now + self.lifetime.min(Vouched::LIFETIME);
        self.keep(now, key, Session { principal, csrf, expires, vouched: Some(vouched) })
    }

    /// Attaches what a provider vouched for to the session `key` (one a store kept, or another gateway
    /// opened), bounding it to [`Vouched::LIFETIME`] from `now` at most.
    pub fn vouch(&mut self, now: Instant, key: &[u8; 32], vouched: Vouched) {
        if let Some(s) = self.table.get_mut(key) {
            s.expires = s.expires.min(now + Vouched::LIFETIME);
            s.vouched = Some(vouched);
        }
    }

    /// What a provider vouched for in the live session `key`, if it was opened that way.
    pub fn vouched(&self, now: Instant, key: &[u8; 32]) -> Option<&Vouched> {
        self.live(now, key).and_then(|s| s.vouched.as_ref())
    }

    /// A session a store kept, `left` of its lifetime remaining at `now` (at most the lifetime): as
    /// [`ConsoleSessions::open`], but for its remaining time. One with no time left is not kept.
    pub fn restore(
        &mut self,
        now: Instant,
        key: [u8; 32],
        principal: Arc<str>,
        csrf: String,
        left: Duration,
    ) -> Vec<[u8; 32]> {
        if left.is_zero() {
            return Vec::new();
        }
        let expires = now + left.min(self.lifetime);
        self.keep(now, key, Session { principal, csrf, expires, vouched: None })
    }

    /// A session another gateway of the cluster opened, read from the store they share, with `left` of its
    /// lifetime remaining at `now`: kept as [`ConsoleSessions::restore`] keeps one, unless this table has it
    /// already or ended it lately (then nothing changes). Returns the keys of the sessions it let go.
    pub fn open_elsewhere(
        &mut self,
        now: Instant,
        key: [u8; 32],
        principal: Arc<str>,
        csrf: String,
        left: Duration,
    ) -> Vec<[u8; 32]> {
        if self.table.contains_key(&key) || self.closed_keys.contains(&key) {
            return Vec::new();
        }
        self.restore(now, key, principal, csrf, left)
    }

    fn keep(&mut self, now: Instant, key: [u8; 32], session: Session) -> Vec<[u8; 32]> {
        let mut gone: Vec<[u8; 32]> = self.table.iter().filter(|(_, s)| s.expires <= now).map(|(k, _)| *k).collect();
        for k in &gone {
            self.table.remove(k);
        }
        while self.table.len() >= self.max && !self.table.contains_key(&key) {
            let Some(oldest) = self.table.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) else { break };
            self.table.remove(&oldest);
            gone.push(oldest);
        }
        for k in &gone {
            self.note_closed(*k);
        }
        self.table.insert(key, session);
        gone
    }

    fn note_closed(&mut self, key: [u8; 32]) {
        if self.closed_keys.insert(key) {
            self.closed.push_back(key);
            if self.closed.len() > CLOSED_KEPT
                && let Some(old) = self.closed.pop_front()
            {
                self.closed_keys.remove(&old);
            }
        }
    }

    /// How much of the session `key` is left at `now`, if it is live.
    pub fn left(&self, now: Instant, key: &[u8; 32]) -> Option<Duration> {
        self.live(now, key).map(|s| s.expires.saturating_duration_since(now))
    }

    fn live(&self, now: Instant, key: &[u8; 32]) -> Option<&Session> {
        self.table.get(key).filter(|s| now < s.expires)
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

    /// Ends the session `key` (sign-out, its principal is gone, or another gateway ended it): it is never
    /// taken back in from elsewhere.
    pub fn close(&mut self, key: &[u8; 32]) {
        self.table.remove(key);
        self.note_closed(*key);
    }
}

//! A budget of failed authentications per source address.
//!
//! A gateway that faces the internet answers wrong tokens, session cookies and sign-ins. Tokens are 256-bit
//! random values, so guessing one is hopeless; the budget is there so that a flood of wrong guesses is told
//! to back off (`429` with `Retry-After`) and is seen (metrics, one log line a streak), not to protect the
//! tokens. It never refuses a right token: it only decides how a *failed* attempt is answered, so somebody
//! sending wrong tokens from the same address as a real principal (a NAT, a proxy) cannot lock that
//! principal out.
//!
//! Each source has a bucket of [`AuthLimitConfig::burst`] failures that refills by one every
//! [`AuthLimitConfig::refill`], kept as the generic cell rate algorithm keeps it: one instant a source (when
//! its bucket would be full again). A source whose bucket is full is forgotten, so the table holds only
//! sources that failed recently, and at most [`AuthLimitConfig::max_sources`] of them: beyond, the one
//! closest to full is forgotten first.
//!
//! An IPv4 address is a source of its own; an IPv6 address counts with the rest of its `/64`, which one
//! host often has whole.
//!
//! ```text
//!  failure ──▶ bucket has room ──▶ Unauthorized (401), one taken
//!         └──▶ bucket empty ─────▶ TooMany { retry_after } (429), nothing taken
//! ```

use alloc::collections::{BTreeMap, BTreeSet};
use core::net::IpAddr;
use core::time::Duration;

use crate::time::Instant;

/// Where failed attempts are counted from: an IPv4 address, or an IPv6 `/64`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuthSource([u8; 16]);

impl AuthSource {
    /// The source `ip` counts with: itself for IPv4 (an IPv4-mapped IPv6 address too), its `/64` for IPv6.
    pub fn of(ip: IpAddr) -> AuthSource {
        match ip {
            IpAddr::V4(v4) => AuthSource(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AuthSource(v4.to_ipv6_mapped().octets()),
                None => {
                    let mut octets = v6.octets();
                    octets[8..].fill(0);
                    AuthSource(octets)
                }
            },
        }
    }
}

/// The budget's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthLimitConfig {
    /// Failures a source may make at once before it is told to wait. Default 20.
    pub burst: u32,
    /// How often one more failure is allowed again. Default 1 s (so 60 a minute, after the burst).
    pub refill: Duration,
    /// Most sources remembered at once. Default 16,384.
    pub max_sources: usize,
}

impl Default for AuthLimitConfig {
    fn default() -> AuthLimitConfig {
        AuthLimitConfig { burst: 20, refill: Duration::from_secs(1), max_sources: 16_384 }
    }
}

/// How a failed attempt is answered.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AuthRefusal {
    /// Within the budget: `401`.
    Unauthorized,
    /// Over the budget: `429`, to be tried again after `retry_after` (whole seconds, at least one).
    TooMany {
        /// When the source may fail again.
        retry_after: Duration,
        /// This is the first refusal since the source was last within its budget (log it once).
        first: bool,
    },
}

/// The sources that failed recently, and when each is whole again.
#[derive(Clone, Debug)]
pub struct AuthFailures {
    config: AuthLimitConfig,
    /// Each source's instant of a full bucket, and whether it is being refused.
    sources: BTreeMap<AuthSource, (Instant, bool)>,
    /// The same, ordered by that instant: the first are the ones to forget.
    by_full: BTreeSet<(Instant, AuthSource)>,
}

impl AuthFailures {
    /// No source has failed yet. A `burst` of zero is taken as one, a zero `max_sources` as one.
    pub fn new(mut config: AuthLimitConfig) -> AuthFailures {
        config.burst = config.burst.max(1);
        config.max_sources = config.max_sources.max(1);
        AuthFailures { config, sources: BTreeMap::new(), by_full: BTreeSet::new() }
    }

    /// An attempt from `source` failed at `now` (a wrong token, cookie or sign-in): how to answer it.
    pub fn handle_failure(&mut self, now: Instant, source: AuthSource) -> AuthRefusal {
        self.forget_full(now);
        let (full_at, refusing) = self.sources.get(&source).copied().unwrap_or((now, false));
        let full_at = full_at.max(now);
        // Room for one more: the bucket's debt after it stays within the burst.
        let after = full_at.saturating_add(self.config.refill);
        let limit = now.saturating_add(self.config.refill.saturating_mul(self.config.burst));
        if after <= limit {
            self.set(source, full_at, (after, false));
            return AuthRefusal::Unauthorized;
        }
        // One failure's room comes back once the debt is one refill under the burst again.
        let room_at = after.saturating_duration_since(limit);
        let secs = room_at.as_secs() + u64::from(room_at.subsec_nanos() > 0);
        self.set(source, full_at, (full_at, true));
        AuthRefusal::TooMany { retry_after: Duration::from_secs(secs.max(1)), first: !refusing }
    }

    /// How many sources are remembered.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    fn set(&mut self, source: AuthSource, old: Instant, new: (Instant, bool)) {
        self.by_full.remove(&(old, source));
        if !self.sources.contains_key(&source) && self.sources.len() >= self.config.max_sources {
            // The one closest to full goes first.
            if let Some((_, gone)) = self.by_full.pop_first() {
                self.sources.remove(&gone);
            }
        }
        self.sources.insert(source, new);
        self.by_full.insert((new.0, source));
    }

    fn forget_full(&mut self, now: Instant) {
        while let Some(&(at, source)) = self.by_full.first() {
            if at > now {
                break;
            }
            self.by_full.pop_first();
            self.sources.remove(&source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> AuthSource {
        AuthSource::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    #[test]
    fn a_burst_then_one_a_refill_and_the_wait_is_told() {
        let mut f = AuthFailures::new(AuthLimitConfig { burst: 3, ..AuthLimitConfig::default() });
        let t = Instant::ZERO;
        for _ in 0..3 {
            assert_eq!(f.handle_failure(t, v4(1)), AuthRefusal::Unauthorized);
        }
        let first = f.handle_failure(t, v4(1));
        assert_eq!(first, AuthRefusal::TooMany { retry_after: Duration::from_secs(1), first: true });
        assert_eq!(
            f.handle_failure(t + Duration::from_millis(300), v4(1)),
            AuthRefusal::TooMany { retry_after: Duration::from_secs(1), first: false }
        );
        // Another address is not held back by this one.
        assert_eq!(f.handle_failure(t, v4(2)), AuthRefusal::Unauthorized);
        // A refill later, one more failure is a plain 401, and the next waits again.
        let t = t + Duration::from_secs(1);
        assert_eq!(f.handle_failure(t, v4(1)), AuthRefusal::Unauthorized);
        assert!(matches!(f.handle_failure(t, v4(1)), AuthRefusal::TooMany { first: true, .. }));
        // Whole again after the burst's time: forgotten.
        let t = t + Duration::from_secs(3);
        assert_eq!(f.handle_failure(t, v4(3)), AuthRefusal::Unauthorized);
        assert_eq!(f.tracked(), 1);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_one_closest_to_full() {
        let mut f = AuthFailures::new(AuthLimitConfig { burst: 2, max_sources: 2, ..AuthLimitConfig::default() });
        let t = Instant::ZERO;
        f.handle_failure(t, v4(1));
        f.handle_failure(t, v4(1));
        f.handle_failure(t, v4(2));
        f.handle_failure(t, v4(3));
        assert_eq!(f.tracked(), 2);
        // 1 (deepest in debt) is kept: it is still refused.
        assert!(matches!(f.handle_failure(t, v4(1)), AuthRefusal::TooMany { .. }));
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a = AuthSource::of(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6)));
        let b = AuthSource::of(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9)));
        let c = AuthSource::of(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 3, 4, 5, 6)));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = AuthSource::of(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()));
        assert_eq!(mapped, v4(1));
        assert_ne!(v4(1), v4(2));
    }
}

//! The budget of failed authentications, over random schedules of failures from a few sources: a source
//! never gets more `401`s in a window than its burst and the window's refills allow; it is never held back
//! longer than it was told (`Retry-After`), nor once it has been quiet for a whole burst's time; one source's
//! failures never change how another's are answered; the table stays within its size.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use proptest::prelude::*;
use uplink_proto::Instant;
use uplink_proto::gateway::{AuthFailures, AuthLimitConfig, AuthRefusal, AuthSource};

const REFILL_MS: u64 = 100;

fn source(i: u8) -> AuthSource {
    AuthSource::of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)))
}

fn config(burst: u32, max_sources: usize) -> AuthLimitConfig {
    let mut c = AuthLimitConfig::default();
    c.burst = burst;
    c.refill = Duration::from_millis(REFILL_MS);
    c.max_sources = max_sources;
    c
}

/// A schedule: (milliseconds since the previous failure, which source).
fn schedule() -> impl Strategy<Value = Vec<(u64, u8)>> {
    prop::collection::vec((prop_oneof![3 => 0u64..20, 1 => 0u64..1_000], 0u8..4), 1..300)
}

proptest! {
    #[test]
    fn failures_are_answered_within_the_budget_and_never_held_back_beyond_it(
        burst in 1u32..6,
        steps in schedule(),
    ) {
        let mut all = AuthFailures::new(config(burst, 64));
        // One limiter per source, fed only that source's failures: the answers must be the same.
        let mut alone: BTreeMap<u8, AuthFailures> = BTreeMap::new();
        let mut now = 0u64;
        // Per source: the instants of its 401s, when it was told it may fail again, and its last failure.
        let mut allowed: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
        let mut told: BTreeMap<u8, u64> = BTreeMap::new();
        let mut last: BTreeMap<u8, u64> = BTreeMap::new();
        for (gap, who) in steps {
            now += gap;
            let at = Instant::from_micros(now * 1_000);
            let answer = all.handle_failure(at, source(who));
            let own = alone.entry(who).or_insert_with(|| AuthFailures::new(config(burst, 64)));
            prop_assert_eq!(own.handle_failure(at, source(who)), answer, "another source changed the answer");
            let quiet_since = last.insert(who, now);
            match answer {
                AuthRefusal::Unauthorized => {
                    let times = allowed.entry(who).or_default();
                    times.push(now);
                    // In every window ending now: at most the burst and one per whole refill in it.
                    for (i, start) in times.iter().enumerate() {
                        let in_window = (times.len() - i) as u64;
                        prop_assert!(
                            in_window <= u64::from(burst) + (now - start) / REFILL_MS,
                            "{} failures allowed in {} ms with a burst of {}", in_window, now - start, burst
                        );
                    }
                }
                AuthRefusal::TooMany { retry_after, .. } => {
                    prop_assert!(retry_after >= Duration::from_secs(1));
                    if let Some(&until) = told.get(&who) {
                        prop_assert!(now < until, "held back at {} after being told {}", now, until);
                    }
                    if let Some(since) = quiet_since {
                        prop_assert!(
                            now - since < u64::from(burst) * REFILL_MS,
                            "held back after {} ms of quiet (burst {})", now - since, burst
                        );
                    }
                    told.entry(who).or_insert(now + retry_after.as_millis() as u64);
                }
            }
            if answer == AuthRefusal::Unauthorized {
                told.remove(&who);
            }
            prop_assert!(all.tracked() <= 4);
        }
    }

    #[test]
    fn the_table_never_holds_more_sources_than_its_budget(steps in schedule(), max in 1usize..4) {
        let mut f = AuthFailures::new(config(2, max));
        let mut now = 0u64;
        for (gap, who) in steps {
            now += gap;
            f.handle_failure(Instant::from_micros(now * 1_000), source(who));
            prop_assert!(f.tracked() <= max);
        }
    }
}

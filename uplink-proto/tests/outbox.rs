//! The webhook outbox: scenarios and properties. Every notice ends exactly once (delivered, given up, or
//! refused at the door), in order, never before its back-off, within the budgets.

use std::time::Duration;

use proptest::prelude::*;
use uplink_proto::Instant;
use uplink_proto::gateway::outbox::{Outbox, OutboxConfig, Overflow};

fn cfg() -> OutboxConfig {
    let mut c = OutboxConfig::default();
    c.max_queued = 3;
    c.max_bytes = 10;
    c.max_attempts = 3;
    c.first_delay = Duration::from_secs(1);
    c.max_delay = Duration::from_secs(4);
    c
}

fn at(secs: f64) -> Instant {
    Instant::from_micros((secs * 1e6) as u64)
}

#[test]
fn one_at_a_time_in_order_retried_after_a_back_off_then_given_up() {
    let mut o = Outbox::new(cfg());
    o.push("a".into()).expect("room");
    o.push("b".into()).expect("room");
    assert_eq!(o.poll_send(at(0.0)), Some("a"));
    assert_eq!(o.poll_send(at(0.0)), None, "one in flight");
    o.handle_result(at(0.0), false);
    let retry = o.poll_timeout().expect("a back-off");
    assert!(retry <= at(1.0), "within the first delay: {retry:?}");
    if retry > at(0.0) {
        assert_eq!(o.poll_send(at(0.0)), None, "not before its back-off");
    }
    assert_eq!(o.poll_send(retry), Some("a"), "retried");
    o.handle_result(retry, true);
    assert_eq!(o.poll_send(retry), Some("b"), "the next, at once");
    for _ in 0..3 {
        o.handle_result(at(100.0), false);
        let _ = o.poll_send(at(1000.0));
    }
    let s = o.stats();
    assert_eq!((s.delivered, s.given_up, s.failures, o.len()), (1, 1, 4, 0));
}

#[test]
fn a_full_outbox_refuses_by_count_and_by_bytes() {
    let mut o = Outbox::new(cfg());
    assert_eq!(o.push("0123456789".into()), Ok(()));
    assert_eq!(o.push("x".into()), Err(Overflow), "bytes");
    let mut o = Outbox::new(cfg());
    for n in ["a", "b", "c"] {
        o.push(n.into()).expect("room");
    }
    assert_eq!(o.push("d".into()), Err(Overflow), "count");
    assert_eq!(o.stats().overflowed, 1);
}

#[derive(Clone, Debug)]
enum Op {
    Push(u8),
    Send,
    Result(bool),
    Advance(u16),
}

proptest! {
    #[test]
    fn every_notice_ends_once_in_order_never_early_within_budget(ops in prop::collection::vec(prop_oneof![
        3 => (1u8..5).prop_map(Op::Push),
        3 => Just(Op::Send),
        3 => any::<bool>().prop_map(Op::Result),
        2 => (0u16..5000).prop_map(Op::Advance),
    ], 0..200)) {
        let c = cfg();
        let mut o = Outbox::new(c.clone());
        let mut now = Instant::ZERO;
        let mut next = 0u32;
        let mut sent: Option<String> = None;
        let mut finished: Vec<String> = Vec::new();
        let mut attempts = std::collections::BTreeMap::<String, u32>::new();
        for op in ops {
            match op {
                Op::Push(len) => {
                    let notice = format!("{next:0>width$}", width = usize::from(len));
                    next += 1;
                    let _ = o.push(notice);
                }
                Op::Send => {
                    let due = o.poll_timeout();
                    if let Some(n) = o.poll_send(now) {
                        prop_assert!(sent.is_none(), "two in flight");
                        prop_assert!(due.is_none_or(|d| d <= now), "sent before its back-off");
                        *attempts.entry(n.to_owned()).or_default() += 1;
                        sent = Some(n.to_owned());
                    }
                }
                Op::Result(ok) => {
                    if let Some(n) = sent.take() {
                        o.handle_result(now, ok);
                        if ok || attempts[&n] >= c.max_attempts {
                            finished.push(n);
                        }
                    } else {
                        let before = o.stats();
                        o.handle_result(now, ok);
                        prop_assert_eq!(o.stats(), before, "a result with nothing in flight changed something");
                    }
                }
                Op::Advance(ms) => now = now + Duration::from_millis(u64::from(ms)),
            }
            let s = o.stats();
            prop_assert_eq!(s.pushed, s.delivered + s.given_up + o.len() as u64, "a notice lost or ended twice");
            prop_assert!(o.len() <= c.max_queued && o.bytes() <= c.max_bytes);
            prop_assert!(attempts.values().all(|a| *a <= c.max_attempts));
        }
        // In the order pushed.
        let mut sorted = finished.clone();
        sorted.sort_by_key(|n| n.parse::<u32>().unwrap_or(0));
        prop_assert_eq!(finished, sorted);
    }
}

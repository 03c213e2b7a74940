//! Scenario tests of a cluster node's lease (`HubConfig::lease`): renewals asked for every fifth of the lease,
//! never two at once; the fence a tenth of the lease before the database can let it lapse, before any input
//! is acted on; and a fenced hub closing every connection with 1012 and doing nothing more.

mod common;

use std::time::Duration;

use common::hub::{HubDriver, closes, events, sent};
use serde_json::json;
use uplink_proto::gateway::{
    AcceptError, CloseReason, ConnHandle, Credential, CredentialId, HubConfig, HubDecideError, HubEvent, HubOutput,
    LeaseConfig, PublicPermId, RuleRefused,
};
use uplink_proto::rules::{Effect, Pattern, Rule, RuleId};
use uplink_proto::{Decision, Instant};

const LEASE: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A hub whose node joined at time zero with a lease of 10 s.
fn leased() -> HubDriver {
    let mut cfg = HubConfig::default();
    cfg.lease = Some(LeaseConfig::new(LEASE, Instant::ZERO));
    HubDriver::with(cfg)
}

fn due(outs: &[HubOutput]) -> usize {
    events(outs).iter().filter(|e| matches!(e, HubEvent::LeaseRenewalDue)).count()
}

fn fenced(outs: &[HubOutput]) -> bool {
    events(outs).iter().any(|e| matches!(e, HubEvent::Fenced))
}

/// A sled of `project` with a request pending; its public id.
fn with_request(h: &mut HubDriver, project: &str) -> (ConnHandle, PublicPermId) {
    let conn = h.identify(Credential::unbound(CredentialId(1)), project);
    let frame =
        json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    h.text(conn, &frame.to_string());
    let id = events(&h.drain())
        .iter()
        .find_map(|e| match e {
            HubEvent::PermissionRequested { id, .. } => Some(*id),
            _ => None,
        })
        .expect("requested");
    (conn, id)
}

#[test]
fn renewals_are_asked_for_every_fifth_of_the_lease_never_two_at_once_and_each_moves_the_deadline() {
    let mut h = leased();
    assert_eq!(h.hub.poll_timeout(), Some(Instant::ZERO + ms(2000)), "the first renewal");
    assert_eq!(due(&h.advance(ms(1999))), 0);
    assert_eq!(due(&h.advance(ms(1))), 1, "due at 2 s");
    // Unanswered, it is not asked for again, and the deadline (9 s) is the next time.
    assert_eq!(due(&h.advance(ms(2500))), 0);
    assert_eq!(h.hub.poll_timeout(), Some(Instant::ZERO + ms(9000)));
    // Answered: sent at 2 s, the lease now runs to 2 + 9 s; the next renewal was due at 4 s, so at once.
    let sent_at = Instant::ZERO + ms(2000);
    let now = h.now;
    h.hub.handle_lease_renewal(now, sent_at, Some(true));
    assert_eq!(due(&h.drain()), 1);
    h.hub.handle_lease_renewal(h.now, h.now, Some(true));
    assert_eq!(due(&h.drain()), 0);
    // Renewed at 4.5 s: nothing lapses at 9 s, nor before 4.5 + 9 s, given renewals answered in time.
    for _ in 0..100 {
        let outs = h.advance(ms(500));
        assert!(!fenced(&outs));
        if due(&outs) == 1 {
            let now = h.now;
            h.hub.handle_lease_renewal(now, now, Some(true));
            assert!(!fenced(&h.drain()));
        }
    }
    assert!(!h.hub.is_fenced());
    assert!(h.hub.accept(h.now, Credential::unbound(CredentialId(1))).is_ok());
}

#[test]
fn without_renewals_the_hub_fences_a_tenth_of_the_lease_before_it_ends_and_does_nothing_more() {
    let mut h = leased();
    let (conn, id) = with_request(&mut h, "web");
    let other = h.identify(Credential::unbound(CredentialId(1)), "api");
    h.drain();
    let outs = h.advance(ms(8999));
    assert!(!fenced(&outs) && closes(&outs).is_empty());
    // No answer (the database is unreachable): the deadline stays.
    h.hub.handle_lease_renewal(h.now, Instant::ZERO + ms(2000), None);
    assert!(!fenced(&h.drain()));

    let outs = h.advance(ms(1));
    assert!(fenced(&outs), "fenced at 9 s: {outs:?}");
    let mut closed = closes(&outs);
    closed.sort_by_key(|(c, _)| *c);
    assert_eq!(closed, vec![(conn, CloseReason::Fenced), (other, CloseReason::Fenced)]);
    assert_eq!(
        (CloseReason::Fenced.code(), CloseReason::Fenced.text()),
        (1012, "gateway lost its lease; connect again")
    );
    // Nothing for the store: not the requests' ends, not the sleds' disconnections, nothing after `Fenced`.
    let kinds: Vec<&HubEvent> = events(&outs);
    assert_eq!(kinds.len(), 1, "{kinds:?}");
    assert!(sent(&outs, conn).is_empty());

    assert!(h.hub.is_fenced());
    assert_eq!(h.hub.decide(h.now, id, Decision::Approve), Err(HubDecideError::Fenced));
    assert_eq!(h.hub.accept(h.now, Credential::unbound(CredentialId(1))), Err(AcceptError::ShuttingDown));
    let rule = Rule::new(RuleId(0), Effect::Allow, Pattern::parse("Bash(ls)").expect("valid"), "ana", 0);
    assert_eq!(h.hub.add_rule(h.now, rule), Err(RuleRefused::Fenced));
    // A renewal's answer after the fence changes nothing: fenced for good.
    h.hub.handle_lease_renewal(h.now, h.now, Some(true));
    assert!(h.drain().is_empty());
    assert!(h.advance(Duration::from_secs(60)).is_empty());
    assert_eq!(h.hub.poll_timeout(), None);
}

#[test]
fn a_database_that_says_the_lease_is_gone_fences_at_once() {
    let mut h = leased();
    let (conn, _) = with_request(&mut h, "web");
    assert_eq!(due(&h.advance(ms(2000))), 1);
    h.hub.handle_lease_renewal(h.now, h.now, Some(false));
    let outs = h.drain();
    assert!(fenced(&outs));
    assert_eq!(closes(&outs), vec![(conn, CloseReason::Fenced)]);
}

#[test]
fn a_node_that_wakes_after_its_deadline_fences_before_it_acts_on_what_arrived() {
    let mut h = leased();
    let (conn, id) = with_request(&mut h, "web");
    // Nothing reaches the hub for 20 s (a stopped process); then a person's decision and a sled's frame.
    h.now = h.now + Duration::from_secs(20);
    let decided = h.hub.decide(h.now, id, Decision::Approve);
    assert_eq!(decided, Err(HubDecideError::Fenced));
    let outs = h.drain();
    assert!(fenced(&outs));
    assert!(sent(&outs, conn).is_empty(), "no decision reaches the sled: {outs:?}");
    assert_eq!(closes(&outs), vec![(conn, CloseReason::Fenced)]);
    let frame =
        json!({"type":"perm_request","req_id":"r2","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    h.text(conn, &frame.to_string());
    assert!(h.drain().is_empty());
}

#[test]
fn a_renewal_sent_in_time_counts_though_its_answer_comes_after_the_old_deadline() {
    let mut h = leased();
    let (conn, id) = with_request(&mut h, "web");
    assert_eq!(due(&h.advance(ms(2000))), 1);
    // Sent at 2 s, answered at 9.5 s (no input came in between): the lease runs to 11 s.
    h.now = Instant::ZERO + ms(9500);
    h.hub.handle_lease_renewal(h.now, Instant::ZERO + ms(2000), Some(true));
    let outs = h.drain();
    assert!(!fenced(&outs), "{outs:?}");
    assert_eq!(due(&outs), 1, "the next renewal, overdue, at once");
    assert!(h.hub.decide(h.now, id, Decision::Approve).is_ok());
    assert_eq!(sent(&h.drain(), conn).len(), 1);
    // A time of sending said to be later than now counts as now (9.5 s): the lease runs to 18.5 s.
    h.hub.handle_lease_renewal(h.now, h.now + Duration::from_secs(3600), Some(true));
    h.drain();
    let outs = h.advance(ms(8999));
    assert!(!fenced(&outs));
    assert!(fenced(&h.advance(ms(1))), "lapsed at 18.5 s");
}

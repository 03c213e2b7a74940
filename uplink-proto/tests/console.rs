//! The console's sessions and checks: what a request with a session cookie may do.

use std::sync::Arc;
use std::time::Duration;

use uplink_proto::Instant;
use uplink_proto::gateway::console::same_origin;
use uplink_proto::gateway::{ConsoleRefusal, ConsoleRequest, ConsoleSessions, Role, Vouched};

const HOUR: Duration = Duration::from_secs(3600);

fn get() -> ConsoleRequest<'static> {
    ConsoleRequest { safe: true, origin: None, host: Some("gw:8700"), tls: false, csrf: None }
}

fn post(csrf: Option<&'static str>, origin: Option<&'static str>) -> ConsoleRequest<'static> {
    ConsoleRequest { safe: false, origin, host: Some("gw:8700"), tls: false, csrf }
}

#[test]
fn a_request_that_changes_anything_needs_the_csrf_token_and_the_gateways_own_origin() {
    let mut s = ConsoleSessions::new(8, HOUR);
    s.open(Instant::ZERO, [1; 32], Arc::from("ana"), "c5rf".into());
    let now = Instant::ZERO;
    assert_eq!(s.admit(now, &[1; 32], &get()).as_deref(), Ok("ana"), "reading needs the session only");
    assert_eq!(s.admit(now, &[1; 32], &post(None, None)), Err(ConsoleRefusal::Csrf));
    assert_eq!(s.admit(now, &[1; 32], &post(Some("guess"), None)), Err(ConsoleRefusal::Csrf));
    let evil = post(Some("c5rf"), Some("https://evil.example"));
    assert_eq!(s.admit(now, &[1; 32], &evil), Err(ConsoleRefusal::ForeignOrigin));
    let https = post(Some("c5rf"), Some("https://gw:8700"));
    assert_eq!(s.admit(now, &[1; 32], &https), Err(ConsoleRefusal::ForeignOrigin), "the scheme counts");
    assert_eq!(s.admit(now, &[1; 32], &post(Some("c5rf"), Some("http://gw:8700"))).as_deref(), Ok("ana"));
    assert_eq!(s.admit(now, &[1; 32], &post(Some("c5rf"), None)).as_deref(), Ok("ana"), "no Origin: a non-browser");
    assert_eq!(s.admit(now, &[2; 32], &get()), Err(ConsoleRefusal::NoSession));
    s.close(&[1; 32]);
    assert_eq!(s.admit(now, &[1; 32], &get()), Err(ConsoleRefusal::NoSession), "signed out");
}

#[test]
fn sessions_expire_and_the_oldest_go_beyond_the_budget() {
    let mut s = ConsoleSessions::new(2, HOUR);
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        s.open(Instant::ZERO + Duration::from_secs(i as u64), [i as u8; 32], Arc::from(*name), "x".into());
    }
    assert_eq!(s.len(), 2);
    let now = Instant::ZERO + Duration::from_secs(10);
    assert_eq!(s.admit(now, &[0; 32], &get()), Err(ConsoleRefusal::NoSession), "the oldest went");
    assert_eq!(s.get(now, &[2; 32]).map(|(p, c)| (p.to_string(), c.to_owned())), Some(("c".into(), "x".into())));
    let later = Instant::ZERO + HOUR + Duration::from_secs(3);
    assert_eq!(s.admit(later, &[1; 32], &get()), Err(ConsoleRefusal::NoSession), "expired");
    s.open(later, [9; 32], Arc::from("d"), "y".into());
    assert_eq!(s.len(), 1, "opening forgets the expired");
}

#[test]
fn same_origin_is_the_scheme_served_and_the_host_asked_for() {
    assert!(same_origin(None, None, false));
    assert!(same_origin(Some("https://gw"), Some("gw"), true));
    assert!(!same_origin(Some("http://gw"), Some("gw"), true));
    assert!(!same_origin(Some("http://gw"), None, false), "nothing to compare with");
    assert!(!same_origin(Some("http://gw.evil"), Some("gw"), false));
    assert!(!same_origin(Some("null"), Some("gw"), false));
}

#[test]
fn a_kept_session_comes_back_with_the_time_it_had_left_and_what_goes_is_told() {
    let mut s = ConsoleSessions::new(2, HOUR);
    let now = Instant::ZERO;
    assert!(s.open(now, [1; 32], Arc::from("ana"), "x".into()).is_empty());
    assert_eq!(s.left(now + Duration::from_secs(60), &[1; 32]), Some(HOUR - Duration::from_secs(60)));
    // Restored with ten minutes left: it ends then, not a whole lifetime later.
    assert!(s.restore(now, [2; 32], Arc::from("bob"), "y".into(), Duration::from_secs(600)).is_empty());
    assert_eq!(s.admit(now + Duration::from_secs(599), &[2; 32], &get()).as_deref(), Ok("bob"));
    assert_eq!(s.admit(now + Duration::from_secs(600), &[2; 32], &get()), Err(ConsoleRefusal::NoSession));
    // More than a lifetime left is a lifetime; nothing left is nothing.
    assert!(s.restore(now, [3; 32], Arc::from("cy"), "z".into(), Duration::ZERO).is_empty());
    assert_eq!(s.left(now, &[3; 32]), None);
    // Over the budget, the one nearest its end goes, and is named, so that a store forgets it too.
    let gone = s.restore(now, [4; 32], Arc::from("di"), "w".into(), 2 * HOUR);
    assert_eq!(gone, vec![[2; 32]]);
    assert_eq!(s.left(now, &[4; 32]), Some(HOUR));
    // Expired ones are named as they go.
    let gone = s.open(now + HOUR, [5; 32], Arc::from("ed"), "v".into());
    assert_eq!(gone.len(), 2, "{gone:?}");
}

#[test]
fn a_session_opened_elsewhere_is_taken_in_unless_it_is_here_already_or_was_ended_here() {
    let mut s = ConsoleSessions::new(2, HOUR);
    let now = Instant::ZERO;
    // Opened on another gateway, read from the store: in force here, for the time it has left.
    assert!(s.open_elsewhere(now, [1; 32], Arc::from("ana"), "c1".into(), HOUR / 2).is_empty());
    assert_eq!(s.admit(now, &[1; 32], &get()).as_deref(), Ok("ana"));
    assert_eq!(s.left(now, &[1; 32]), Some(HOUR / 2));
    // Read again (a later reading of the same row): what is here stays as it is.
    s.open_elsewhere(now, [1; 32], Arc::from("bo"), "other".into(), HOUR);
    assert_eq!(s.get(now, &[1; 32]).map(|(p, c)| (p.to_string(), c.to_owned())), Some(("ana".into(), "c1".into())));
    // Signed out here; a reading taken before the sign-out was written does not bring it back.
    s.close(&[1; 32]);
    s.open_elsewhere(now, [1; 32], Arc::from("ana"), "c1".into(), HOUR);
    assert_eq!(s.admit(now, &[1; 32], &get()), Err(ConsoleRefusal::NoSession));
    // Dropped for newer ones here: not brought back either.
    s.open(now, [2; 32], Arc::from("ana"), "c2".into());
    s.open(now + Duration::from_secs(1), [3; 32], Arc::from("ana"), "c3".into());
    let gone = s.open(now + Duration::from_secs(2), [4; 32], Arc::from("ana"), "c4".into());
    assert_eq!(gone, vec![[2; 32]]);
    s.open_elsewhere(now, [2; 32], Arc::from("ana"), "c2".into(), HOUR);
    assert_eq!(s.admit(now, &[2; 32], &get()), Err(ConsoleRefusal::NoSession));
    // Ended elsewhere: closed here.
    s.close(&[4; 32]);
    assert_eq!(s.admit(now, &[4; 32], &get()), Err(ConsoleRefusal::NoSession));
}

#[test]
fn a_sign_in_a_provider_vouched_for_keeps_its_role_for_an_hour_at_most() {
    let mut table = ConsoleSessions::new(8, Duration::from_secs(12 * 3600));
    let t = Instant::from_secs(1000);
    let alice = Vouched { role: Role::Approver, email: Some("alice@example.com".into()) };
    table.open_vouched(t, [1; 32], Arc::from("https://id.example#alice"), "c1".into(), alice.clone());
    table.open(t, [2; 32], Arc::from("ana"), "c2".into());
    assert_eq!(table.vouched(t, &[1; 32]), Some(&alice));
    assert_eq!(table.vouched(t, &[2; 32]), None, "a token's sign-in carries no vouching");
    let hour = t + Vouched::LIFETIME;
    assert!(table.get(t + (Vouched::LIFETIME - Duration::from_secs(1)), &[1; 32]).is_some());
    assert!(table.get(hour, &[1; 32]).is_none(), "then the person signs in again");
    assert_eq!(table.vouched(hour, &[1; 32]), None);
    assert!(table.get(hour, &[2; 32]).is_some(), "a token's sign-in lasts its lifetime");
    // Kept and taken back (a restart, another node): the vouching goes with it, bounded again.
    table.restore(t, [3; 32], Arc::from("https://id.example#bob"), "c3".into(), Duration::from_secs(5 * 3600));
    table.vouch(t, &[3; 32], Vouched { role: Role::Viewer, email: None });
    assert_eq!(table.vouched(t, &[3; 32]).map(|v| v.role), Some(Role::Viewer));
    assert!(table.get(hour, &[3; 32]).is_none(), "never longer than an hour from when it was vouched for here");
    table.vouch(t, &[9; 32], Vouched { role: Role::Admin, email: None });
    assert_eq!(table.vouched(t, &[9; 32]), None, "no session, nothing vouched");
}

//! A cluster node's view of its peers: where a decision for a request it does not hold goes, and which
//! calls from other nodes it lets in.
#![allow(clippy::unwrap_used)]

use uplink_proto::gateway::peers::{
    MAX_PEER_TAGS, PEER_CALL_AGE, PEER_CALL_WITHIN, PEER_CLOCK_AHEAD, Route, goes_to, made_by, route,
};
use uplink_proto::gateway::{Holder, PeerCalls, PeerRefusal, PublicPermId};

#[test]
fn a_decision_goes_to_the_live_holder_and_never_to_a_gone_or_unknown_one() {
    let h = |node, live, kept| Some(Holder { node, live, kept });
    // An id node 3 made.
    let perm: PublicPermId = format!("{}-1", (3u64 << 32) + 5).parse().unwrap();
    assert_eq!(made_by(perm), 3);
    let (alive, dead) = (|_| true, |_| false);
    assert_eq!(route(1, perm, h(1, true, false), alive), Route::Unknown, "this node's own: it ended here");
    assert_eq!(route(1, perm, h(2, true, false), alive), Route::Peer(2), "the holder, whoever made the id");
    assert_eq!(route(1, perm, h(2, true, true), alive), Route::Peer(2), "a live holder decides what it keeps");
    assert_eq!(route(1, perm, h(2, false, true), alive), Route::Away);
    assert_eq!(route(1, perm, h(2, false, false), alive), Route::Lost);
    // Held nowhere: the node that made it says how it ended, if it lives.
    assert_eq!(route(1, perm, None, alive), Route::Peer(3));
    assert_eq!(route(1, perm, None, dead), Route::Unknown);
    assert_eq!(route(3, perm, None, alive), Route::Unknown, "made here, and not here");
}

fn tag(n: u32) -> [u8; 32] {
    let mut t = [0u8; 32];
    t[..4].copy_from_slice(&n.to_be_bytes());
    t
}

#[test]
fn a_call_is_let_in_once_only_for_this_node_and_only_while_its_caller_still_waits() {
    let (age, ahead) = (PEER_CALL_AGE.as_millis() as u64, PEER_CLOCK_AHEAD.as_millis() as u64);
    assert!(PEER_CALL_WITHIN > PEER_CALL_AGE + PEER_CLOCK_AHEAD, "a call given up on is never let in");
    let mut calls = PeerCalls::new(7);
    let now = 1_000_000;
    assert_eq!(calls.admit(now, 8, now, tag(1)), Err(PeerRefusal::NotForMe(8)));
    assert_eq!(calls.admit(now, 7, now - age - 1, tag(1)), Err(PeerRefusal::OutOfWindow));
    assert_eq!(calls.admit(now, 7, now + ahead + 1, tag(1)), Err(PeerRefusal::OutOfWindow));
    assert_eq!(calls.admit(now, 7, now - age, tag(1)), Ok(()), "at the window's edge");
    assert_eq!(calls.admit(now, 7, now + ahead, tag(2)), Ok(()));
    // The same call again, at any time it could still be let in: refused.
    assert_eq!(calls.admit(now, 7, now - age, tag(1)), Err(PeerRefusal::Replayed));
    assert_eq!(calls.admit(now + ahead + age, 7, now + ahead, tag(2)), Err(PeerRefusal::Replayed));
    // Later it is too old anyway, and its tag is forgotten.
    assert_eq!(calls.admit(now + ahead + age + 1, 7, now + ahead, tag(2)), Err(PeerRefusal::OutOfWindow));
    let later = now + 2 * (age + ahead);
    assert_eq!(calls.admit(later, 7, later, tag(3)), Ok(()));
    assert_eq!(calls.remembered(), 1, "the first two left with the window");
}

#[test]
fn more_calls_than_can_be_remembered_are_refused_until_the_window_moves_on() {
    let mut calls = PeerCalls::new(1);
    let now = 5_000_000;
    for n in 0..MAX_PEER_TAGS as u32 {
        assert_eq!(calls.admit(now, 1, now, tag(n)), Ok(()));
    }
    assert_eq!(calls.admit(now, 1, now, tag(u32::MAX)), Err(PeerRefusal::Busy));
    let later = now + PEER_CALL_AGE.as_millis() as u64 + 1;
    assert_eq!(calls.admit(later, 1, later, tag(u32::MAX)), Ok(()));
    assert_eq!(calls.remembered(), 1);
}

#[test]
fn an_mcp_request_goes_to_the_holder_only_when_refused_for_want_of_the_sled_here() {
    assert_eq!(goes_to(1, 404, Some(2)), Some(2), "unknown here, or a session the holder opened");
    assert_eq!(goes_to(1, 503, Some(2)), Some(2), "not connected here");
    assert_eq!(goes_to(1, 503, Some(1)), None, "held here: the refusal stands");
    assert_eq!(goes_to(1, 404, None), None, "held nowhere");
    for status in [400, 403, 405, 406, 409, 500] {
        assert_eq!(goes_to(1, status, Some(2)), None, "{status}: about the request itself");
    }
}

#[test]
fn a_calls_head_is_checked_before_its_body_and_remembers_nothing() {
    let calls = PeerCalls::new(4);
    let now = 9_000_000;
    assert_eq!(calls.check_head(now, 5, now), Err(PeerRefusal::NotForMe(5)));
    assert_eq!(calls.check_head(now, 4, now - PEER_CALL_AGE.as_millis() as u64 - 1), Err(PeerRefusal::OutOfWindow));
    assert_eq!(calls.check_head(now, 4, now), Ok(()));
    assert_eq!(calls.remembered(), 0);
}

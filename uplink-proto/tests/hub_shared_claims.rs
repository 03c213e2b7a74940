//! Scenario tests of claims settled with other gateways (`HubConfig::shared_claims`): a connection waits for
//! the shared table's answer, and nothing is announced, decided or sent for it before the grant; the rule of
//! who may take a project stays the hub's.

mod common;

use std::time::Duration;

use common::hub::{HubDriver, closes, events, sent};
use serde_json::json;
use uplink_proto::gateway::{
    ClaimAnswer, CloseReason, ConnHandle, Credential, CredentialId, HeldRequest, HubConfig, HubEvent, HubOutput,
    PermId, PublicPermId, ResumeConfig, ResumeKey, SharedClaimsConfig, Verdict,
};
use uplink_proto::{Decision, Instant};

fn cred(id: u64) -> Credential {
    Credential::unbound(CredentialId(id))
}

fn shared() -> HubConfig {
    let mut cfg = HubConfig::default();
    cfg.shared_claims = Some(SharedClaimsConfig::default());
    cfg
}

/// The hub's side of shared claims, on the driver.
trait Claims {
    /// A permission request from `conn`.
    fn ask(&mut self, conn: ConnHandle, req_id: &str);
    /// The table's answer to `conn`'s claim; what the hub has to say then.
    fn answer(&mut self, conn: ConnHandle, project: &str, answer: ClaimAnswer) -> Vec<HubOutput>;
}

impl Claims for HubDriver {
    fn ask(&mut self, conn: ConnHandle, req_id: &str) {
        let frame =
            json!({"type":"perm_request","req_id":req_id,"payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
        self.text(conn, &frame.to_string());
    }
    fn answer(&mut self, conn: ConnHandle, project: &str, answer: ClaimAnswer) -> Vec<HubOutput> {
        self.hub.handle_claim_answer(self.now, conn, project, answer);
        self.drain()
    }
}

/// A hub that settles its claims with others.
fn shared_hub() -> HubDriver {
    HubDriver::with(shared())
}

fn wanted(outs: &[HubOutput]) -> Vec<(ConnHandle, String, CredentialId)> {
    events(outs)
        .into_iter()
        .filter_map(|e| match e {
            HubEvent::ClaimWanted { conn, project, credential } => Some((*conn, project.clone(), *credential)),
            _ => None,
        })
        .collect()
}

fn ended(outs: &[HubOutput]) -> Vec<(String, u64)> {
    events(outs)
        .into_iter()
        .filter_map(|e| match e {
            HubEvent::ClaimEnded { project, generation } => Some((project.clone(), *generation)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_claim_waits_for_the_table_and_what_came_meanwhile_is_taken_up_in_order_once_granted() {
    let mut h = shared_hub();
    let conn = h.identify(cred(1), "web");
    assert_eq!(wanted(&h.drain()), vec![(conn, "web".to_owned(), CredentialId(1))]);
    assert_eq!(h.hub.holder("web"), None, "not held before the table answers");
    h.ask(conn, "r1");
    h.ask(conn, "r2");
    h.text(conn, r#"{"type":"perm_cancel","req_id":"r2"}"#);
    let meanwhile = h.drain();
    assert!(events(&meanwhile).is_empty() && sent(&meanwhile, conn).is_empty(), "{meanwhile:?}");
    assert!(h.hub.permissions(h.now).is_empty() && h.hub.sleds(h.now).is_empty());

    let outs = h.answer(conn, "web", ClaimAnswer::Granted { generation: 7 });
    assert_eq!(h.hub.holder("web"), Some(conn));
    let kinds: Vec<&str> = events(&outs)
        .iter()
        .map(|e| match e {
            HubEvent::SledConnected { .. } => "connected",
            HubEvent::PermissionRequested { .. } => "requested",
            HubEvent::PermissionWithdrawn { .. } => "withdrawn",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["connected", "requested", "requested", "withdrawn"], "{outs:?}");
    let listed = h.hub.permissions(h.now);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].req_id, "r1");
    // And it is decided as any other.
    h.hub.decide(h.now, listed[0].id, Decision::Approve).expect("pending");
    let outs = h.drain();
    assert_eq!(sent(&outs, conn)[0]["req_id"], "r1");

    // Its end gives the claim back, by its generation.
    h.hub.handle_disconnected(h.now, conn);
    assert_eq!(ended(&h.drain()), vec![("web".to_owned(), 7)]);
    assert_eq!(h.hub.holder("web"), None);
}

#[test]
fn held_elsewhere_by_another_credential_is_refused_with_4009_and_nothing_it_sent_is_announced() {
    let mut h = shared_hub();
    let conn = h.identify(cred(2), "web");
    h.drain();
    h.ask(conn, "r1");
    let outs = h.answer(conn, "web", ClaimAnswer::Held { credential: CredentialId(1), node: 3 });
    assert_eq!(closes(&outs), vec![(conn, CloseReason::ProjectHeld)]);
    assert!(
        events(&outs).iter().all(|e| matches!(e, HubEvent::SledRefused { reason: CloseReason::ProjectHeld, .. })),
        "{outs:?}"
    );
    assert!(h.hub.permissions(h.now).is_empty() && h.hub.holder("web").is_none());
    assert!(ended(&outs).is_empty(), "nothing was granted, nothing to give back");
}

#[test]
fn held_elsewhere_with_the_same_credential_the_holder_is_asked_to_let_go_and_the_claim_asked_again() {
    let mut h = shared_hub();
    let conn = h.identify(cred(1), "web");
    h.drain();
    let outs = h.answer(conn, "web", ClaimAnswer::Held { credential: CredentialId(1), node: 3 });
    assert!(closes(&outs).is_empty());
    assert!(events(&outs).contains(&&HubEvent::ReleaseWanted {
        project: "web".into(),
        node: 3,
        credential: CredentialId(1)
    }));
    // Not asked again before its time; asked again at it.
    assert!(wanted(&h.advance(Duration::from_millis(200))).is_empty());
    assert_eq!(wanted(&h.advance(Duration::from_millis(50))), vec![(conn, "web".to_owned(), CredentialId(1))]);
    // An answer to the earlier ask that comes late is not taken for this one; the one awaited is.
    let outs = h.answer(conn, "web", ClaimAnswer::Granted { generation: 9 });
    assert_eq!(h.hub.holder("web"), Some(conn));
    assert!(events(&outs).iter().any(|e| matches!(e, HubEvent::SledConnected { .. })));
}

#[test]
fn a_holder_that_never_lets_go_gets_the_claimer_refused_after_the_wait_and_no_answer_at_all_gets_1013() {
    let mut h = shared_hub();
    let conn = h.identify(cred(1), "web");
    h.drain();
    let mut refused = Vec::new();
    for _ in 0..200 {
        let outs = h.answer(conn, "web", ClaimAnswer::Held { credential: CredentialId(1), node: 3 });
        refused.extend(closes(&outs));
        refused.extend(closes(&h.advance(Duration::from_millis(250))));
        if !refused.is_empty() {
            break;
        }
    }
    assert_eq!(refused, vec![(conn, CloseReason::ProjectHeld)]);
    assert!(h.now >= Instant::ZERO + SharedClaimsConfig::default().wait);
    assert!(h.now <= Instant::ZERO + SharedClaimsConfig::default().wait + Duration::from_millis(500));

    let quiet = h.identify(cred(1), "api");
    h.drain();
    assert!(closes(&h.advance(Duration::from_secs(14))).is_empty());
    assert_eq!(closes(&h.advance(Duration::from_secs(1))), vec![(quiet, CloseReason::ClaimUnsettled)]);
    assert_eq!(CloseReason::ClaimUnsettled.code(), 1013);
    // A grant that comes after all that is given back.
    let outs = h.answer(quiet, "api", ClaimAnswer::Granted { generation: 4 });
    assert_eq!(ended(&outs), vec![("api".to_owned(), 4)]);
    assert_eq!(h.hub.holder("api"), None);
}

#[test]
fn a_grant_for_a_connection_that_ended_while_it_waited_is_given_back() {
    let mut h = shared_hub();
    let conn = h.identify(cred(1), "web");
    h.ask(conn, "r1");
    h.hub.handle_disconnected(h.now, conn);
    let outs = h.drain();
    assert!(events(&outs).iter().all(|e| matches!(e, HubEvent::ClaimWanted { .. })), "nothing announced: {outs:?}");
    let outs = h.answer(conn, "web", ClaimAnswer::Granted { generation: 5 });
    assert_eq!(ended(&outs), vec![("web".to_owned(), 5)]);
    assert!(h.hub.sleds(h.now).is_empty());
}

#[test]
fn a_restarted_sled_on_the_same_gateway_replaces_its_old_connection_once_granted() {
    let mut h = shared_hub();
    let old = h.identify(cred(1), "web");
    h.drain();
    h.answer(old, "web", ClaimAnswer::Granted { generation: 1 });
    let new = h.identify(cred(1), "web");
    assert_eq!(wanted(&h.drain()), vec![(new, "web".to_owned(), CredentialId(1))]);
    assert_eq!(h.hub.holder("web"), Some(old), "the old one holds it until the table says otherwise");
    let outs = h.answer(new, "web", ClaimAnswer::Granted { generation: 2 });
    assert_eq!(closes(&outs), vec![(old, CloseReason::Replaced)]);
    assert_eq!(h.hub.holder("web"), Some(new));
    // The old one's claim is given back as it is closed (nothing is sent on it after): its generation, which
    // the new one outranks.
    assert_eq!(ended(&outs), vec![("web".to_owned(), 1)]);
}

#[test]
fn another_credential_here_is_refused_at_once_without_asking_the_table() {
    let mut h = shared_hub();
    let owner = h.identify(cred(1), "web");
    h.drain();
    h.answer(owner, "web", ClaimAnswer::Granted { generation: 1 });
    let thief = h.identify(cred(2), "web");
    let outs = h.drain();
    assert!(wanted(&outs).is_empty());
    assert_eq!(closes(&outs), vec![(thief, CloseReason::ProjectHeld)]);
    let scoped = Credential::new(CredentialId(3), uplink_proto::gateway::ProjectScope::Patterns(vec!["api".into()]));
    let outside = h.identify(scoped, "web");
    let outs = h.drain();
    assert!(wanted(&outs).is_empty());
    assert_eq!(closes(&outs), vec![(outside, CloseReason::ProjectNotPermitted)]);
}

#[test]
fn a_release_closes_the_holder_only_for_its_own_credential() {
    let mut h = shared_hub();
    let conn = h.identify(cred(1), "web");
    h.drain();
    h.answer(conn, "web", ClaimAnswer::Granted { generation: 3 });
    assert!(!h.hub.release(h.now, "web", CredentialId(2)), "another credential takes nothing");
    assert!(closes(&h.drain()).is_empty());
    assert!(!h.hub.release(h.now, "api", CredentialId(1)), "nothing held");
    assert!(h.hub.release(h.now, "web", CredentialId(1)));
    let outs = h.drain();
    assert_eq!(closes(&outs), vec![(conn, CloseReason::Replaced)]);
    // Given back as it is closed: nothing is sent on it after.
    assert_eq!(ended(&outs), vec![("web".to_owned(), 3)]);
    assert_eq!(h.hub.holder("web"), None);
}

#[test]
fn a_sled_that_floods_while_its_claim_waits_is_closed_and_holds_nothing() {
    let mut h = shared_hub();
    let conn = h.identify(cred(1), "web");
    h.drain();
    let mut closed = Vec::new();
    for i in 0..10_000 {
        h.ask(conn, &format!("r{i}"));
        closed.extend(closes(&h.drain()));
        if !closed.is_empty() {
            break;
        }
    }
    assert_eq!(closed, vec![(conn, CloseReason::FloodedBeforeClaim)]);
    assert_eq!(h.hub.connections(), 0, "{:?}", h.hub.connections());
}

#[test]
fn resume_is_accepted_only_once_the_claim_is_granted_and_as_the_first_frame() {
    let mut cfg = shared();
    cfg.resume = Some(ResumeConfig::default());
    let mut h = HubDriver::with(cfg);
    let conn = h.hub.accept(h.now, cred(1)).expect("accepting");
    let identity = json!({"type":"identity","req_id":"identity","payload":{"project":"web","capabilities":["resume"],"incarnation":"i1"}});
    h.text(conn, &identity.to_string());
    h.ask(conn, "r1");
    assert!(sent(&h.drain(), conn).is_empty(), "nothing is sent while the claim waits");
    let outs = h.answer(conn, "web", ClaimAnswer::Granted { generation: 1 });
    let frames = sent(&outs, conn);
    assert_eq!(frames[0]["type"], "resume_accepted", "{frames:?}");
}

#[test]
fn held_here_with_the_same_credential_the_hub_takes_it_over_itself_and_asks_again_at_once() {
    let mut h = shared_hub();
    let old = h.identify(cred(1), "web");
    h.drain();
    h.answer(old, "web", ClaimAnswer::Granted { generation: 1 });
    let new = h.identify(cred(1), "web");
    h.drain();
    // The table says this gateway (node 0) holds it, with the same credential: the old connection is closed
    // and its claim given back, and the claim asked again in the same turn, after it.
    let outs = h.answer(new, "web", ClaimAnswer::Held { credential: CredentialId(1), node: 0 });
    assert_eq!(closes(&outs), vec![(old, CloseReason::Replaced)]);
    let order: Vec<&str> = events(&outs)
        .iter()
        .filter_map(|e| match e {
            HubEvent::ClaimEnded { generation: 1, .. } => Some("given back"),
            HubEvent::ClaimWanted { conn, .. } if *conn == new => Some("asked"),
            HubEvent::ReleaseWanted { .. } => Some("release asked"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["given back", "asked"]);
    h.answer(new, "web", ClaimAnswer::Granted { generation: 2 });
    assert_eq!(h.hub.holder("web"), Some(new));
    // Said held here when nothing here holds it (its end not yet written): asked again in a while, no loop.
    let other = h.identify(cred(1), "api");
    h.drain();
    let outs = h.answer(other, "api", ClaimAnswer::Held { credential: CredentialId(1), node: 0 });
    assert!(wanted(&outs).is_empty() && closes(&outs).is_empty(), "{outs:?}");
    assert_eq!(wanted(&h.advance(Duration::from_millis(250))), vec![(other, "api".to_owned(), CredentialId(1))]);
}

#[test]
fn requests_a_gone_node_held_are_adopted_with_the_grant_and_found_by_what_the_sled_sends_again() {
    let mut cfg = shared();
    cfg.resume = Some(ResumeConfig::default());
    let mut h = HubDriver::with(cfg);
    h.hub.start_ids_after(5 << 32);
    let conn = h.hub.accept(h.now, cred(1)).expect("accepting");
    let identity = json!({"type":"identity","req_id":"identity","payload":{"project":"web","capabilities":["resume"],"incarnation":"i1"}});
    h.text(conn, &identity.to_string());
    h.ask(conn, "r1");
    h.ask(conn, "r2");
    h.drain();
    // Node 9 held r1 (decided while its sled was away) and r2 (waiting), then died: handed over with the
    // grant, under node 9's ids.
    let held = |perm: u64, req_id: &str, verdict: Option<Verdict>| HeldRequest {
        id: PublicPermId { conn: ConnHandle((9 << 32) + 3), perm: PermId(perm) },
        key: ResumeKey {
            credential: CredentialId(1),
            project: "web".into(),
            incarnation: "i1".into(),
            req_id: req_id.into(),
        },
        tool_name: "Bash".into(),
        tool_input: r#"{"command":"ls"}"#.into(),
        since: h.now,
        deadline: None,
        verdict,
        sent: false,
    };
    h.hub.adopt_held(h.now, vec![held(0, "r1", Some(Verdict::new(Decision::Approve))), held(1, "r2", None)]);
    let outs = h.answer(conn, "web", ClaimAnswer::Granted { generation: 1 });
    let frames = sent(&outs, conn);
    assert_eq!(frames[0]["type"], "resume_accepted", "{frames:?}");
    // r1's decision is delivered at once; r2 waits again under node 9's id; nothing is asked anew.
    let answered: Vec<_> = frames.iter().filter(|f| f["type"] == "perm_response").collect();
    assert_eq!(answered.len(), 1, "{frames:?}");
    assert_eq!(
        (answered[0]["req_id"].as_str(), answered[0]["payload"]["approved"].as_bool()),
        (Some("r1"), Some(true))
    );
    h.text(conn, r#"{"type":"resumed","req_id":"resumed","payload":{}}"#);
    let outs = h.advance(Duration::from_secs(6));
    let asked: Vec<_> =
        events(&outs).into_iter().filter(|e| matches!(e, HubEvent::PermissionRequested { .. })).collect();
    assert!(asked.is_empty(), "nothing asked anew: {asked:?}");
    let listed: Vec<String> = h.hub.permissions(h.now).iter().map(|p| p.id.to_string()).collect();
    assert_eq!(listed, [format!("{}-1", (9u64 << 32) + 3)]);
    // The hub's own ids stay in its own range.
    let other = h.identify(cred(1), "api");
    assert!(other.0 > 5 << 32 && other.0 < 6 << 32, "{other:?}");
}

#[test]
fn what_is_held_for_a_project_and_credential_is_given_whole_to_the_node_its_sled_came_back_to() {
    let mut cfg = shared();
    cfg.resume = Some(ResumeConfig::default());
    let mut h = HubDriver::with(cfg);
    let held = |perm: u64, credential: u64, project: &str, sent: bool| HeldRequest {
        id: PublicPermId { conn: ConnHandle((3 << 32) + 1), perm: PermId(perm) },
        key: ResumeKey {
            credential: CredentialId(credential),
            project: project.into(),
            incarnation: "i1".into(),
            req_id: format!("r{perm}"),
        },
        tool_name: "Bash".into(),
        tool_input: r#"{"command":"ls"}"#.into(),
        since: h.now,
        deadline: None,
        verdict: sent.then(|| Verdict::new(Decision::Deny)),
        sent,
    };
    let ours = [held(0, 1, "web", false), held(1, 1, "web", true)];
    let theirs = [held(2, 2, "web", false), held(3, 1, "api", false)];
    h.hub.adopt_held(h.now, ours.iter().chain(&theirs).cloned().collect());
    h.drain();
    assert_eq!(h.hub.give_held(h.now, "web", CredentialId(1), 7), 2);
    let outs = h.drain();
    let given: Vec<_> = events(&outs)
        .into_iter()
        .filter_map(|e| if let HubEvent::HeldGiven { ids, to } = e { Some((ids.clone(), *to)) } else { None })
        .collect();
    assert_eq!(given, [(vec![ours[0].id, ours[1].id], 7)]);
    assert!(
        events(&outs)
            .iter()
            .all(|e| !matches!(e, HubEvent::PermissionWithdrawn { .. } | HubEvent::ResumableGone { .. })),
        "given, not ended: {outs:?}"
    );
    let listed: Vec<_> = h.hub.permissions(h.now).iter().map(|p| p.id).collect();
    assert_eq!(listed, [theirs[0].id, theirs[1].id], "another credential's and another project's stay");
    assert_eq!(
        h.hub.decide(h.now, ours[0].id, Verdict::new(Decision::Approve)).map(|_| ()),
        Err(uplink_proto::gateway::HubDecideError::NotPending),
        "decided where it went"
    );
    // Adopted again (it came back here), it is held once; one held already is not held twice.
    h.hub.adopt_held(h.now, vec![ours[0].clone(), theirs[0].clone()]);
    let listed: Vec<_> = h.hub.permissions(h.now).iter().map(|p| p.id).collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
}

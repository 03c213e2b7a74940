//! Scenario tests of the hub's side of the `resume` extension: requests held across a sled's lost link, found
//! again under the same public id, decided while the sled is away, and ended when they cannot come back.

use std::time::Duration;

use serde_json::json;
use uplink_proto::gateway::{
    Always, AlwaysScope, CloseReason, ConnHandle, Credential, CredentialId, HeldRequest, Hub, HubConfig,
    HubDecideError, HubEvent, HubOutput, PermEnd, PermId, PublicPermId, RESUMED_OTHERWISE, ResumeConfig, ResumeKey,
    Verdict, Withdrawn,
};
use uplink_proto::{Decision, Instant, Received};

struct H {
    hub: Hub,
    now: Instant,
}

fn cred(id: u64) -> Credential {
    Credential::unbound(CredentialId(id))
}

fn resuming() -> HubConfig {
    let mut resume = ResumeConfig::default();
    resume.window = Duration::from_secs(60);
    let mut cfg = HubConfig::default();
    cfg.resume = Some(resume);
    cfg
}

impl H {
    fn with(cfg: HubConfig) -> H {
        H { hub: Hub::new(cfg, Instant::ZERO).expect("valid"), now: Instant::ZERO }
    }
    fn drain(&mut self) -> Vec<HubOutput> {
        std::iter::from_fn(|| self.hub.poll_output()).collect()
    }
    fn text(&mut self, conn: ConnHandle, text: &str) {
        self.hub.handle_received(self.now, conn, Received::Text(text));
    }
    /// A sled of `project` connects with `credential`; `incarnation` offers `resume`.
    /// A sled process connecting with nothing kept: `identity`, then (offering `resume`) its `resumed`
    /// right after the acceptance.
    fn connect(&mut self, credential: Credential, project: &str, incarnation: Option<&str>) -> ConnHandle {
        let conn = self.connect_timed(credential, project, incarnation, None);
        if incarnation.is_some() {
            self.resumed(conn);
        }
        conn
    }
    /// A sled process coming back with what it kept: `identity` only; the test sends its requests again,
    /// and its `resumed`.
    fn reconnect(&mut self, credential: Credential, project: &str, incarnation: &str) -> ConnHandle {
        self.connect_timed(credential, project, Some(incarnation), None)
    }
    fn resumed(&mut self, conn: ConnHandle) {
        self.text(conn, r#"{"type":"resumed","req_id":"resumed","payload":{}}"#);
    }
    /// As `connect`, the sled announcing its permission timeout.
    fn connect_timed(
        &mut self,
        credential: Credential,
        project: &str,
        incarnation: Option<&str>,
        timeout_ms: Option<u64>,
    ) -> ConnHandle {
        let conn = self.hub.accept(self.now, credential).expect("accepting");
        let mut payload = match incarnation {
            Some(i) => json!({"project": project, "capabilities": ["resume"], "incarnation": i}),
            None => json!({"project": project}),
        };
        if let Some(ms) = timeout_ms {
            payload["permission_timeout_ms"] = json!(ms);
        }
        self.text(conn, &json!({"type":"identity","req_id":"identity","payload":payload}).to_string());
        conn
    }
    fn send(&mut self, conn: ConnHandle, req_id: &str, input: &str) {
        let frame = format!(
            r#"{{"type":"perm_request","req_id":"{req_id}","payload":{{"tool_name":"Bash","tool_input":{input}}}}}"#
        );
        self.text(conn, &frame);
    }
    fn ask(&mut self, conn: ConnHandle, req_id: &str, input: &str) -> PublicPermId {
        self.send(conn, req_id, input);
        events(&self.drain())
            .into_iter()
            .find_map(|e| match e {
                HubEvent::PermissionRequested { id, .. } => Some(id),
                _ => None,
            })
            .expect("requested")
    }
    /// Sled "web" (credential 1, incarnation "inc-1") asks `req_id` and drops: the request is held.
    fn held_one(&mut self, req_id: &str, input: &str) -> PublicPermId {
        let conn = self.connect(cred(1), "web", Some("inc-1"));
        let id = self.ask(conn, req_id, input);
        self.hub.handle_disconnected(self.now, conn);
        self.drain();
        id
    }
    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.hub.handle_timeout(self.now);
    }
}

/// A request of sled "web" (credential 1, incarnation "inc-1") as an adapter kept it, `r1` with `input`.
fn kept(id: PublicPermId, input: &str, verdict: Option<Verdict>) -> HeldRequest {
    HeldRequest {
        id,
        key: ResumeKey {
            credential: CredentialId(1),
            project: "web".into(),
            incarnation: "inc-1".into(),
            req_id: "r1".into(),
        },
        tool_name: "Bash".into(),
        tool_input: input.into(),
        since: Instant::ZERO,
        deadline: None,
        verdict,
        sent: false,
    }
}

/// The id of the request `e` announces, if it announces one.
fn requested(e: &HubEvent) -> Option<PublicPermId> {
    match e {
        HubEvent::PermissionRequested { id, .. } => Some(*id),
        _ => None,
    }
}

fn events(outs: &[HubOutput]) -> Vec<HubEvent> {
    outs.iter()
        .filter_map(|o| match o {
            HubOutput::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn sent(outs: &[HubOutput], to: ConnHandle) -> Vec<serde_json::Value> {
    outs.iter()
        .filter_map(|o| match o {
            HubOutput::Send { conn, text } if *conn == to => serde_json::from_str(text).ok(),
            _ => None,
        })
        .collect()
}

fn responses(outs: &[HubOutput], to: ConnHandle) -> Vec<(String, String, Option<String>)> {
    sent(outs, to)
        .into_iter()
        .filter(|v| v["type"] == "perm_response")
        .map(|v| {
            (
                v["req_id"].as_str().unwrap_or_default().to_owned(),
                match (v["payload"]["approved"].as_bool(), v["payload"]["always_allow"].as_bool()) {
                    (Some(true), Some(true)) => "always_allow",
                    (Some(true), _) => "approve",
                    _ => "deny",
                }
                .to_owned(),
                v["payload"]["message"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn accepted(outs: &[HubOutput], to: ConnHandle) -> bool {
    sent(outs, to).iter().any(|v| v["type"] == "resume_accepted")
}

fn withdrawn(outs: &[HubOutput]) -> Vec<(PublicPermId, Withdrawn)> {
    events(outs)
        .into_iter()
        .filter_map(|e| match e {
            HubEvent::PermissionWithdrawn { id, reason, .. } => Some((id, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn resume_is_accepted_only_when_the_sled_offers_it_and_the_hub_allows_it() {
    let mut off = H::with(HubConfig::default());
    let conn = off.connect(cred(1), "web", Some("inc-1"));
    let outs = off.drain();
    assert!(!accepted(&outs, conn), "a hub without resume answers with the original protocol");

    let mut on = H::with(resuming());
    let plain = on.connect(cred(1), "web", None);
    let outs = on.drain();
    assert!(!accepted(&outs, plain), "a sled that does not offer resume is not sent the extension");
    let p = on.ask(plain, "r1", "{}");
    on.hub.handle_disconnected(on.now, plain);
    assert_eq!(withdrawn(&on.drain()), vec![(p, Withdrawn::ConnectionLost)], "nothing held without resume");

    // The capability without an incarnation, or an incarnation without the capability, is not an offer.
    let conn = on.hub.accept(on.now, cred(2)).expect("accepting");
    on.text(conn, r#"{"type":"identity","req_id":"identity","payload":{"project":"api","capabilities":["resume"]}}"#);
    assert!(!accepted(&on.drain(), conn));
    let conn = on.hub.accept(on.now, cred(3)).expect("accepting");
    on.text(conn, r#"{"type":"identity","req_id":"identity","payload":{"project":"db","incarnation":"x"}}"#);
    assert!(!accepted(&on.drain(), conn));

    let conn = on.connect(cred(4), "ops", Some("inc-1"));
    let outs = on.drain();
    assert!(accepted(&outs, conn));
    // Before anything else is sent on the connection.
    let first = sent(&outs, conn).into_iter().next().expect("a frame");
    assert_eq!(first["type"], "resume_accepted");
}

#[test]
fn a_request_is_held_across_a_drop_and_pending_again_under_the_same_id() {
    let mut h = H::with(resuming());
    let a = h.connect(cred(1), "web", Some("inc-1"));
    let id = h.ask(a, "r1", r#"{"command":"ls"}"#);
    h.advance(Duration::from_secs(5));
    h.hub.handle_disconnected(h.now, a);
    let outs = h.drain();
    assert!(withdrawn(&outs).is_empty(), "held, not withdrawn");
    assert!(events(&outs).contains(&HubEvent::PermissionHeld { id, project: "web".into() }));
    let listed = h.hub.permissions(h.now);
    assert_eq!(listed.len(), 1);
    assert!(listed[0].held && listed[0].id == id && listed[0].decided.is_none());
    assert_eq!(h.hub.sleds(h.now)[0].pending_permissions, 1, "the away sled's held requests are counted");

    h.advance(Duration::from_secs(5));
    let b = h.reconnect(cred(1), "web", "inc-1");
    h.send(b, "r1", r#"{"command":"ls"}"#);
    let outs = h.drain();
    assert!(accepted(&outs, b));
    let evs = events(&outs);
    assert!(evs.contains(&HubEvent::PermissionResumed { id, project: "web".into(), conn: b }));
    assert!(!evs.iter().any(|e| matches!(e, HubEvent::PermissionRequested { .. })), "not a new request");
    let listed = h.hub.permissions(h.now);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id, "the same public id");
    assert!(!listed[0].held);
    assert_eq!(listed[0].age, Duration::from_secs(10), "its age counts from its first arrival");

    // Only under that id: the one its new connection gave it is not a way to decide it.
    let raw = PublicPermId { conn: b, perm: id.perm };
    assert_ne!(raw, id);
    assert!(h.hub.decide(h.now, raw, Decision::Approve).is_err());
    let decided = h.hub.decide(h.now, id, Decision::Approve).expect("pending");
    assert!(!decided.held);
    let outs = h.drain();
    assert_eq!(responses(&outs, b), vec![("r1".into(), "approve".into(), None)]);
    assert!(events(&outs).iter().any(|e| matches!(
        e,
        HubEvent::PermissionDecided { id: d, held: false, waited, .. } if *d == id && *waited == Duration::from_secs(10)
    )));
    assert!(h.hub.permissions(h.now).is_empty());
    assert_eq!(
        h.hub.decide(h.now, id, Decision::Deny),
        Err(HubDecideError::Ended(PermEnd::Decided(Decision::Approve)))
    );
}

#[test]
fn a_decision_made_while_the_sled_is_away_is_delivered_when_it_comes_back() {
    let mut h = H::with(resuming());
    let id = h.held_one("r1", r#"{"command":"ls"}"#);
    let decided = h.hub.decide(h.now, id, Verdict::new(Decision::Deny).with_message("not today")).expect("held");
    assert!(decided.held, "kept, not sent");
    let outs = h.drain();
    assert!(outs.iter().all(|o| !matches!(o, HubOutput::Send { .. })));
    assert!(events(&outs).iter().any(|e| matches!(e, HubEvent::PermissionDecided { held: true, .. })));
    let listed = h.hub.permissions(h.now);
    assert_eq!(listed[0].decided, Some(Decision::Deny));
    // A second decision is refused with the first.
    assert_eq!(
        h.hub.decide(h.now, id, Decision::Approve),
        Err(HubDecideError::Ended(PermEnd::Decided(Decision::Deny)))
    );

    let b = h.reconnect(cred(1), "web", "inc-1");
    h.send(b, "r1", r#"{"command":"ls"}"#);
    let outs = h.drain();
    assert_eq!(responses(&outs, b), vec![("r1".into(), "deny".into(), Some("not today".into()))]);
    assert!(events(&outs).contains(&HubEvent::PermissionDelivered { id, project: "web".into(), conn: b }));
    assert!(h.hub.permissions(h.now).is_empty());
    assert!(h.hub.held().next().is_none());
}

#[test]
fn a_request_sent_again_with_another_input_is_denied_and_the_held_one_stays() {
    let mut h = H::with(resuming());
    let id = h.held_one("r1", r#"{"command":"ls"}"#);
    h.hub.decide(h.now, id, Decision::Approve).expect("held");
    h.drain();

    let b = h.reconnect(cred(1), "web", "inc-1");
    h.send(b, "r1", r#"{"command":"rm -rf /"}"#);
    let outs = h.drain();
    assert_eq!(
        responses(&outs, b),
        vec![("r1".into(), "deny".into(), Some(RESUMED_OTHERWISE.into()))],
        "an approval is never applied to another input"
    );
    assert!(h.hub.held().any(|r| r.id == id), "the held one stays");
    // Nor to another tool.
    h.text(b, r#"{"type":"perm_request","req_id":"r1","payload":{"tool_name":"Write","tool_input":{"command":"ls"}}}"#);
    let outs = h.drain();
    assert_eq!(responses(&outs, b), vec![("r1".into(), "deny".into(), Some(RESUMED_OTHERWISE.into()))]);
    // The right one gets its decision.
    h.send(b, "r1", r#"{"command":"ls"}"#);
    assert_eq!(responses(&h.drain(), b), vec![("r1".into(), "approve".into(), None)]);
}

#[test]
fn another_credential_or_incarnation_never_picks_up_a_held_request() {
    let mut h = H::with(resuming());
    let id = h.held_one("r1", "{}");
    h.hub.decide(h.now, id, Decision::Approve).expect("held");
    h.drain();
    // The sled restarted: a new incarnation's claim ends what the old one held.
    let b = h.connect(cred(1), "web", Some("inc-2"));
    let outs = h.drain();
    assert_eq!(withdrawn(&outs), vec![(id, Withdrawn::ConnectionLost)]);
    h.send(b, "r1", "{}");
    let outs = h.drain();
    assert!(responses(&outs, b).is_empty(), "a new request, for a person to decide");
    assert!(events(&outs).iter().any(|e| matches!(e, HubEvent::PermissionRequested { .. })));

    // Another credential claiming the project once it is free ends what is held for the first.
    let mut h = H::with(resuming());
    let id = h.held_one("r1", "{}");
    let _thief = h.connect(cred(2), "web", Some("inc-1"));
    assert_eq!(withdrawn(&h.drain()), vec![(id, Withdrawn::ConnectionLost)]);

    // So does the same credential without resume.
    let mut h = H::with(resuming());
    let id = h.held_one("r1", "{}");
    let _plain = h.connect(cred(1), "web", None);
    assert_eq!(withdrawn(&h.drain()), vec![(id, Withdrawn::ConnectionLost)]);
}

#[test]
fn the_sleds_resumed_ends_what_it_did_not_send_again() {
    let mut h = H::with(resuming());
    let a = h.connect(cred(1), "web", Some("inc-1"));
    let one = h.ask(a, "r1", "{}");
    let two = h.ask(a, "r2", "{}");
    h.hub.handle_disconnected(h.now, a);
    h.drain();
    let b = h.reconnect(cred(1), "web", "inc-1");
    h.send(b, "r2", "{}");
    h.drain();
    h.text(b, r#"{"type":"resumed","req_id":"resumed","payload":{}}"#);
    assert_eq!(withdrawn(&h.drain()), vec![(one, Withdrawn::ConnectionLost)]);
    let listed = h.hub.permissions(h.now);
    assert_eq!(listed.iter().map(|p| (p.id, p.held)).collect::<Vec<_>>(), vec![(two, false)]);
}

#[test]
fn a_resumed_frame_on_a_connection_that_did_not_accept_is_ignored() {
    let mut h = H::with(HubConfig::default());
    let a = h.connect(cred(1), "web", Some("inc-1"));
    h.drain();
    h.text(a, r#"{"type":"resumed","req_id":"resumed","payload":{}}"#);
    assert!(events(&h.drain()).iter().all(|e| matches!(e, HubEvent::FrameIgnored { .. })));
}

#[test]
fn held_requests_end_with_the_window_or_the_sleds_deadline() {
    let mut h = H::with(resuming());
    let id = h.held_one("r1", "{}");
    assert_eq!(h.hub.poll_timeout(), Some(h.now + Duration::from_secs(60)));
    h.advance(Duration::from_secs(59));
    assert!(withdrawn(&h.drain()).is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(withdrawn(&h.drain()), vec![(id, Withdrawn::ConnectionLost)]);
    assert_eq!(
        h.hub.decide(h.now, id, Decision::Approve),
        Err(HubDecideError::Ended(PermEnd::Withdrawn(Withdrawn::ConnectionLost)))
    );

    // A sled that announced a 30 s timeout has denied the request by then: it ends as a deadline.
    let mut h = H::with(resuming());
    let conn = h.connect_timed(cred(1), "web", Some("i"), Some(30000));
    h.resumed(conn);
    let id = h.ask(conn, "r1", "{}");
    h.advance(Duration::from_secs(10));
    h.hub.handle_disconnected(h.now, conn);
    h.drain();
    assert_eq!(h.hub.permissions(h.now)[0].deadline_in, Some(Duration::from_secs(20)));
    h.advance(Duration::from_secs(20));
    assert_eq!(withdrawn(&h.drain()), vec![(id, Withdrawn::Deadline)]);
}

#[test]
fn a_revoked_credentials_requests_are_never_held() {
    let mut h = H::with(resuming());
    let a = h.connect(cred(1), "web", Some("inc-1"));
    let _keep = h.connect(cred(2), "api", None);
    let id = h.ask(a, "r1", "{}");
    h.hub.update_credentials(h.now, &[cred(2)]);
    let outs = h.drain();
    assert_eq!(withdrawn(&outs), vec![(id, Withdrawn::ConnectionLost)]);
    assert!(!events(&outs).iter().any(|e| matches!(e, HubEvent::PermissionHeld { .. })), "not even for a moment");
    assert!(h.hub.held().next().is_none());

    // Nor kept once the credential goes while its sled is away.
    let mut h = H::with(resuming());
    let id = h.held_one("r1", "{}");
    h.hub.update_credentials(h.now, &[cred(2)]);
    assert_eq!(withdrawn(&h.drain()), vec![(id, Withdrawn::ConnectionLost)]);
}

#[test]
fn what_a_project_holds_stays_within_its_session_budget() {
    let mut cfg = resuming();
    cfg.session.max_pending_permissions = 2;
    let mut h = H::with(cfg);
    let a = h.connect(cred(1), "web", Some("inc-1"));
    let one = h.ask(a, "r1", "{}");
    let two = h.ask(a, "r2", "{}");
    h.hub.handle_disconnected(h.now, a);
    h.drain();
    // The sled comes back and sends one of them again (the other not yet), asks one more, and drops again:
    // with one held and two pending, the project has room for two.
    let b = h.reconnect(cred(1), "web", "inc-1");
    h.send(b, "r1", "{}");
    let three = h.ask(b, "r3", "{}");
    h.hub.handle_disconnected(h.now, b);
    let outs = h.drain();
    assert_eq!(withdrawn(&outs), vec![(three, Withdrawn::ConnectionLost)]);
    assert!(events(&outs).contains(&HubEvent::ResumableGone { id: three }), "nor kept");
    let mut held: Vec<PublicPermId> = h.hub.held().map(|r| r.id).collect();
    held.sort();
    assert_eq!(held, vec![one, two]);
}

#[test]
fn requests_sent_before_the_sled_saw_the_acceptance_are_announced_only_once_it_did() {
    let mut h = H::with(resuming());
    // Until the sled's `resumed` (or a request it kept, sent again), it may not have seen the acceptance,
    // and then it denies what it sent at a drop: such a request is not announced yet, so that nobody decides
    // a request its sled has denied, and nobody is asked twice when it sends one again.
    let a = h.reconnect(cred(1), "web", "inc-1");
    h.drain();
    h.send(a, "r1", "{}");
    let outs = h.drain();
    assert!(events(&outs).is_empty(), "nothing announced or kept: {:?}", events(&outs));
    assert!(h.hub.permissions(h.now).is_empty());
    assert!(h.hub.decide(h.now, PublicPermId { conn: a, perm: PermId(0) }, Decision::Approve).is_err());
    // Dropped before that: it ends unannounced.
    h.hub.handle_disconnected(h.now, a);
    let outs = h.drain();
    assert!(
        !events(&outs)
            .iter()
            .any(|e| matches!(e, HubEvent::PermissionWithdrawn { .. } | HubEvent::PermissionHeld { .. }))
    );

    // Its `resumed` announces it, and from then on it is kept, and held at a drop.
    let b = h.reconnect(cred(1), "web", "inc-1");
    h.drain();
    h.send(b, "r2", "{}");
    assert!(events(&h.drain()).is_empty());
    h.resumed(b);
    let evs = events(&h.drain());
    let id = evs.iter().find_map(requested).expect("announced");
    assert!(evs.iter().any(|e| matches!(e, HubEvent::Resumable { request } if request.id == id)));
    h.hub.handle_disconnected(h.now, b);
    assert!(events(&h.drain()).contains(&HubEvent::PermissionHeld { id, project: "web".into() }));

    // A sled that never shows it saw the acceptance has its requests announced when the time for it passes,
    // and nothing of it held.
    let c = h.reconnect(cred(1), "web", "inc-1");
    h.send(c, "r3", "{}");
    assert!(events(&h.drain()).iter().all(|e| !matches!(e, HubEvent::PermissionRequested { .. })));
    h.advance(ResumeConfig::default().confirm_within);
    let evs = events(&h.drain());
    let id = evs.iter().find_map(requested).expect("announced when the time passed");
    assert!(!evs.iter().any(|e| matches!(e, HubEvent::Resumable { .. })));
    h.hub.handle_disconnected(h.now, c);
    assert!(withdrawn(&h.drain()).contains(&(id, Withdrawn::ConnectionLost)));
}

#[test]
fn a_replaced_connections_requests_are_held_for_the_connection_that_replaced_it() {
    let mut h = H::with(resuming());
    let a = h.connect(cred(1), "web", Some("inc-1"));
    let id = h.ask(a, "r1", "{}");
    // The sled's link went half-open; it reconnects while the old connection still looks alive.
    let b = h.reconnect(cred(1), "web", "inc-1");
    let outs = h.drain();
    assert!(withdrawn(&outs).is_empty());
    assert!(events(&outs).contains(&HubEvent::PermissionHeld { id, project: "web".into() }));
    h.send(b, "r1", "{}");
    assert!(events(&h.drain()).contains(&HubEvent::PermissionResumed { id, project: "web".into(), conn: b }));
    h.hub.decide(h.now, id, Decision::Approve).expect("pending");
    assert_eq!(responses(&h.drain(), b), vec![("r1".into(), "approve".into(), None)]);
}

#[test]
fn a_request_pending_again_can_be_held_again_and_keeps_its_first_arrival() {
    let mut h = H::with(resuming());
    let conn = h.connect_timed(cred(1), "web", Some("i"), Some(100000));
    h.resumed(conn);
    let id = h.ask(conn, "r1", "{}");
    h.advance(Duration::from_secs(10));
    h.hub.handle_disconnected(h.now, conn);
    let b = h.connect_timed(cred(1), "web", Some("i"), Some(100000));
    h.send(b, "r1", "{}");
    h.advance(Duration::from_secs(10));
    h.hub.handle_disconnected(h.now, b);
    h.drain();
    let held: Vec<HeldRequest> = h.hub.held().cloned().collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id, id);
    assert_eq!(held[0].since, Instant::ZERO, "its first arrival");
}

#[test]
fn an_always_allow_while_the_sled_is_away_makes_a_rule_only_for_a_scope_that_outlives_the_connection() {
    let mut h = H::with(resuming());
    let a = h.connect(cred(1), "web", Some("inc-1"));
    let id = h.ask(a, "r1", r#"{"command":"ls -la"}"#);
    h.hub.handle_disconnected(h.now, a);
    h.drain();
    let v = Verdict::new(Decision::AlwaysAllow).always(Always::new(AlwaysScope::Connection, 0));
    let decided = h.hub.decide(h.now, id, v).expect("held");
    assert_eq!(decided.rule, None, "no connection to scope it to");
    assert!(decided.held);

    let b = h.connect(cred(1), "web", Some("inc-2"));
    let id = h.ask(b, "r2", r#"{"command":"ls -la"}"#);
    h.hub.handle_disconnected(h.now, b);
    h.drain();
    let v = Verdict::new(Decision::AlwaysAllow).always(Always::new(AlwaysScope::Project, 0));
    let decided = h.hub.decide(h.now, id, v).expect("held");
    assert!(decided.rule.is_some(), "a project rule outlives the connection");
}

#[test]
fn a_restarted_hub_holds_what_it_is_given_and_never_reuses_its_ids() {
    let mut h = H::with(resuming());
    let first = PublicPermId { conn: ConnHandle(41), perm: PermId(0) };
    h.hub.restore_held(h.now, vec![kept(first, r#"{"command":"ls"}"#, None)]);
    assert_eq!(h.hub.permissions(h.now).len(), 1);
    let b = h.reconnect(cred(1), "web", "inc-1");
    assert!(b.0 > 41, "new connections take handles above the restored ids");
    h.send(b, "r1", r#"{"command":"ls"}"#);
    assert!(events(&h.drain()).contains(&HubEvent::PermissionResumed { id: first, project: "web".into(), conn: b }));

    // Without resume, nothing is held.
    let mut off = H::with(HubConfig::default());
    off.hub.restore_held(off.now, h.hub.held().cloned().collect());
    assert!(off.hub.permissions(off.now).is_empty());
}

#[test]
fn a_request_sent_again_beyond_its_sessions_limit_is_denied_and_no_longer_held() {
    let mut cfg = resuming();
    cfg.session.max_pending_permissions = 1;
    let mut h = H::with(cfg);
    let id = h.held_one("r1", "{}");
    let b = h.reconnect(cred(1), "web", "inc-1");
    h.send(b, "r2", "{}");
    h.send(b, "r1", "{}");
    let outs = h.drain();
    assert_eq!(responses(&outs, b).iter().map(|r| (&*r.0, &*r.1)).collect::<Vec<_>>(), vec![("r1", "deny")]);
    assert_eq!(withdrawn(&outs), vec![(id, Withdrawn::ConnectionLost)]);
    assert!(h.hub.held().next().is_none());
    assert!(!events(&outs).iter().any(|e| matches!(e, HubEvent::PermissionResumed { .. })));
}

#[test]
fn a_decision_sent_just_before_a_drop_is_sent_again_when_the_request_comes_again() {
    let mut h = H::with(resuming());
    let a = h.connect(cred(1), "web", Some("inc-1"));
    let id = h.ask(a, "r1", r#"{"command":"ls"}"#);
    h.hub.decide(h.now, id, Decision::Approve).expect("pending");
    assert_eq!(responses(&h.drain(), a), vec![("r1".into(), "approve".into(), None)]);
    // The link dropped before the sled read it: the sled kept the request and sends it again.
    h.hub.handle_disconnected(h.now, a);
    h.drain();
    assert!(h.hub.permissions(h.now).is_empty(), "decided: not listed");
    let b = h.reconnect(cred(1), "web", "inc-1");
    h.send(b, "r1", r#"{"command":"ls"}"#);
    let outs = h.drain();
    assert_eq!(responses(&outs, b), vec![("r1".into(), "approve".into(), None)], "nothing is asked twice");
    let evs = events(&outs);
    assert!(evs.contains(&HubEvent::PermissionAnsweredAgain { id, project: "web".into(), conn: b }));
    assert!(!evs.iter().any(|e| matches!(e, HubEvent::PermissionRequested { .. })));

    // With another input, it is refused, never approved by that decision.
    let c = h.reconnect(cred(1), "web", "inc-1");
    h.send(c, "r1", r#"{"command":"rm -rf /"}"#);
    assert_eq!(responses(&h.drain(), c), vec![("r1".into(), "deny".into(), Some(RESUMED_OTHERWISE.into()))]);

    // Once the sled says it sent again all it kept (without it), the decision is forgotten: it had it.
    h.text(c, r#"{"type":"resumed","req_id":"resumed","payload":{}}"#);
    let outs = h.drain();
    assert!(events(&outs).contains(&HubEvent::ResumableGone { id }));
    h.send(c, "r1", r#"{"command":"ls"}"#);
    let outs = h.drain();
    assert!(responses(&outs, c).is_empty(), "a request a person decides again");
    assert!(events(&outs).iter().any(|e| matches!(e, HubEvent::PermissionRequested { .. })));
}

#[test]
fn what_an_adapter_keeps_follows_each_request_of_a_sled_that_resumes() {
    let mut h = H::with(resuming());
    let a = h.connect(cred(1), "web", Some("inc-1"));
    h.send(a, "r1", "{}");
    let evs = events(&h.drain());
    let kept = evs.iter().find_map(|e| match e {
        HubEvent::Resumable { request } => Some(request.clone()),
        _ => None,
    });
    let kept = kept.expect("kept as it arrives");
    assert_eq!(
        (kept.key.req_id.as_str(), &*kept.key.incarnation, kept.verdict.is_none(), kept.sent),
        ("r1", "inc-1", true, false)
    );
    h.hub.decide(h.now, kept.id, Decision::Deny).expect("pending");
    let evs = events(&h.drain());
    let sent = evs.iter().find_map(|e| match e {
        HubEvent::Resumable { request } => Some(request.clone()),
        _ => None,
    });
    let sent = sent.expect("kept with its decision");
    assert_eq!((sent.id, sent.sent, sent.verdict.map(|v| v.decision)), (kept.id, true, Some(Decision::Deny)));
    // Forgotten after the window.
    h.advance(Duration::from_secs(60));
    assert!(events(&h.drain()).contains(&HubEvent::ResumableGone { id: kept.id }));

    // A sled without resume: nothing is kept.
    let mut h = H::with(resuming());
    let a = h.connect(cred(1), "web", None);
    h.send(a, "r1", "{}");
    assert!(!events(&h.drain()).iter().any(|e| matches!(e, HubEvent::Resumable { .. })));
}

#[test]
fn connection_handles_are_reserved_before_use_and_a_restarted_hub_starts_after_them() {
    let mut h = H::with(HubConfig::default());
    let a = h.hub.accept(h.now, cred(1)).expect("accepting");
    assert_eq!(a, ConnHandle(1));
    let evs = events(&h.drain());
    assert_eq!(evs, vec![HubEvent::IdsReserved { until: 1 + uplink_proto::gateway::ID_BLOCK }]);
    let mut again = H::with(HubConfig::default());
    again.hub.start_ids_after(1 + uplink_proto::gateway::ID_BLOCK);
    let b = again.hub.accept(again.now, cred(1)).expect("accepting");
    assert_eq!(b, ConnHandle(2 + uplink_proto::gateway::ID_BLOCK));
    assert_eq!(events(&again.drain()), vec![HubEvent::IdsReserved { until: 2 + 2 * uplink_proto::gateway::ID_BLOCK }]);
}

#[test]
fn a_restored_decision_that_was_sent_is_not_listed_and_is_sent_again_if_asked_again() {
    let mut h = H::with(resuming());
    let id = PublicPermId { conn: ConnHandle(7), perm: PermId(3) };
    h.hub
        .restore_held(h.now, vec![HeldRequest { sent: true, ..kept(id, "{}", Some(Verdict::new(Decision::Approve))) }]);
    assert!(h.hub.permissions(h.now).is_empty());
    let b = h.reconnect(cred(1), "web", "inc-1");
    h.send(b, "r1", "{}");
    assert_eq!(responses(&h.drain(), b), vec![("r1".into(), "approve".into(), None)]);
}

#[test]
fn a_rule_made_while_a_request_waited_unannounced_decides_it_when_it_would_be_announced() {
    let mut h = H::with(resuming());
    let a = h.reconnect(cred(1), "web", "inc-1");
    h.drain();
    h.send(a, "r1", r#"{"command":"ls"}"#);
    assert!(h.hub.permissions(h.now).is_empty());
    // Meanwhile a person allows `Bash(ls)` everywhere.
    let rule = uplink_proto::rules::Rule::new(
        uplink_proto::rules::RuleId(0),
        uplink_proto::rules::Effect::Allow,
        uplink_proto::rules::Pattern::parse("Bash(ls)").expect("valid"),
        "ana",
        0,
    );
    h.hub.add_rule(h.now, rule).expect("added");
    h.drain();
    h.resumed(a);
    let outs = h.drain();
    assert_eq!(responses(&outs, a), vec![("r1".into(), "approve".into(), None)], "decided by the rule");
    assert!(!events(&outs).iter().any(|e| matches!(e, HubEvent::PermissionRequested { .. })), "never asked");
}

#[test]
fn a_stopping_gateway_tells_a_sled_that_keeps_its_requests_to_come_back_and_holds_them() {
    let mut h = H::with(resuming());
    let keeps = h.connect(cred(1), "web", Some("inc-1"));
    let id = h.ask(keeps, "r1", "{}");
    let plain = h.connect(cred(2), "api", None);
    let other = h.ask(plain, "r1", "{}");
    // Accepted but not confirmed: treated as a sled that does not keep.
    let unconfirmed = h.reconnect(cred(3), "db", "inc-9");
    h.drain();
    h.hub.shutdown(h.now);
    let outs = h.drain();
    let closes: Vec<(ConnHandle, CloseReason)> = outs
        .iter()
        .filter_map(|o| match o {
            HubOutput::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        closes,
        vec![
            (keeps, CloseReason::Restarting),
            (plain, CloseReason::ShuttingDown),
            (unconfirmed, CloseReason::ShuttingDown)
        ]
    );
    assert_eq!((CloseReason::Restarting.code(), CloseReason::ShuttingDown.code()), (1012, 1001));
    assert!(events(&outs).contains(&HubEvent::PermissionHeld { id, project: "web".into() }));
    assert!(withdrawn(&outs).contains(&(other, Withdrawn::ConnectionLost)));
}

#[test]
fn what_the_hub_holds_in_all_stays_within_its_count_whatever_the_projects() {
    let mut cfg = resuming();
    if let Some(resume) = &mut cfg.resume {
        resume.max_held = 1;
    }
    let mut h = H::with(cfg);
    // One credential that may be any project claims one after another, and drops each with a request.
    let a = h.connect(cred(1), "web", Some("inc-1"));
    let first = h.ask(a, "r1", "{}");
    h.hub.handle_disconnected(h.now, a);
    let b = h.connect(cred(1), "api", Some("inc-1"));
    let second = h.ask(b, "r1", "{}");
    h.hub.handle_disconnected(h.now, b);
    let outs = h.drain();
    assert_eq!(withdrawn(&outs), vec![(second, Withdrawn::ConnectionLost)]);
    assert_eq!(h.hub.held().map(|r| r.id).collect::<Vec<_>>(), vec![first]);
}

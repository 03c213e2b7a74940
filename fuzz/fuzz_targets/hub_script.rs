//! The gateway's hub driven by an arbitrary script over several connections and credentials: every
//! permission and MCP request ends exactly once, a decision is accepted exactly when pending, no connection
//! holds a project its credential does not cover, at most one holds each project, and the memory of gone
//! sleds stays bounded; credentials reloaded at any time leave no connection with a revoked or expired one,
//! and the connection and input budgets hold. "Always allow" in any scope makes rules: nothing is approved
//! on the wire but by the application's decision for that request or a rule it made that is in force, and
//! no connection's rule outlives it. With `resume` (half the inputs): identities may offer it, sleds confirm
//! with `resumed`, connections drop and the gateway restarts from what an adapter kept; a decision kept
//! while a sled was away, or sent before a drop, is sent only for the request it was made for.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uplink_proto::gateway::{
    Always, AlwaysScope, ConnHandle, Credential, CredentialId, HeldRequest, Hub, HubConfig, HubEvent, HubOutput,
    McpTicket, PermId, ProjectScope, PublicPermId, ResumeConfig, Verdict,
};
use uplink_proto::{Decision, GatewayFrame, Instant, Received};

#[derive(Arbitrary, Debug)]
enum Op {
    Accept(u8),
    /// Which connection, which project, and whether it offers `resume` (as incarnation "a" or "b").
    Identify(u8, u8, u8),
    /// The sled's `resumed`.
    Resumed(u8),
    /// The gateway restarts from what an adapter kept.
    Restart,
    PermRequest(u8, u8),
    PermCancel(u8, u8),
    McpResponse(u8, u8),
    Frame(u8, String),
    /// Which connection, which permission, and: approve, deny, or "always allow" for the connection, the
    /// project or everywhere.
    Decide(u8, u8, u8),
    SendMcp(u8),
    Disconnect(u8),
    TooBig(u8),
    Advance(u16),
    /// Reload: a bit per credential kept; bit 3 narrows credential 1 to `p`; bit 4 makes credential 0 expire
    /// in a second.
    Reload(u8),
    Shutdown,
}

const PROJECTS: [&str; 3] = ["p", "q", "q2"];

fn credential(i: u8) -> Credential {
    match i % 3 {
        0 => Credential::unbound(CredentialId(0)),
        1 => Credential::unbound(CredentialId(1)),
        _ => Credential::new(CredentialId(2), ProjectScope::Patterns(vec!["q*".into()])),
    }
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (resume, ops) = input;
    let mut cfg = HubConfig::default();
    cfg.session.max_pending_permissions = 3;
    cfg.session.max_pending_mcp = 2;
    cfg.max_disconnected_sleds = 1;
    cfg.max_connections = 6;
    cfg.max_unidentified = 3;
    cfg.session.max_pending_input_bytes = 30;
    cfg.max_pending_input_bytes = 50;
    cfg.max_rules = 4;
    if resume {
        cfg.resume = Some(ResumeConfig::default());
    }
    let mut now = Instant::ZERO;
    let mut hub = Hub::new(cfg.clone(), now).expect("valid");
    // What an adapter keeps for a restart; the decisions kept while a sled was away; the approvals given, by id.
    let mut kept: BTreeMap<PublicPermId, HeldRequest> = BTreeMap::new();
    let mut ids_until = 0u64;
    let mut decided_away: BTreeSet<PublicPermId> = BTreeSet::new();
    let mut allowed: BTreeMap<PublicPermId, String> = BTreeMap::new();
    // Where each request sent again is pending now.
    let mut location: BTreeMap<PublicPermId, ConnHandle> = BTreeMap::new();
    let mut conns: Vec<ConnHandle> = Vec::new();
    let mut perms: BTreeMap<PublicPermId, bool> = BTreeMap::new(); // true = ended
    let mut tickets: BTreeMap<McpTicket, bool> = BTreeMap::new();
    let mut creds: [Option<Credential>; 3] = [0, 1, 2].map(|i| Some(credential(i)));
    // The rules "always allow" made that are in force.
    let mut made: BTreeSet<u64> = BTreeSet::new();
    let pick = |conns: &[ConnHandle], c: u8| (!conns.is_empty()).then(|| conns[usize::from(c) % conns.len()]);
    for op in ops.iter().take(300) {
        // The approvals this step may send: the application's, by (connection, req_id).
        let mut approved: BTreeSet<(ConnHandle, String)> = BTreeSet::new();
        match op {
            Op::Accept(c) => {
                if let Some(credential) = creds[usize::from(*c % 3)].clone()
                    && let Ok(conn) = hub.accept(now, credential)
                {
                    conns.push(conn);
                }
            }
            Op::Identify(c, p, i) => {
                if let Some(conn) = pick(&conns, *c) {
                    let project = PROJECTS[usize::from(*p) % 3];
                    let frame = match i % 3 {
                        0 => format!(r#"{{"type":"identity","payload":{{"project":"{project}"}}}}"#),
                        n => format!(
                            r#"{{"type":"identity","payload":{{"project":"{project}","capabilities":["resume"],"incarnation":"{}"}}}}"#,
                            ["a", "b"][usize::from(n - 1)]
                        ),
                    };
                    hub.handle_received(now, conn, Received::Text(&frame));
                }
            }
            Op::Resumed(c) => {
                if let Some(conn) = pick(&conns, *c) {
                    hub.handle_received(now, conn, Received::Text(r#"{"type":"resumed","payload":{}}"#));
                }
            }
            Op::Restart => {
                hub = Hub::new(cfg.clone(), now).expect("valid");
                hub.start_ids_after(ids_until);
                hub.restore_held(now, kept.values().cloned().collect());
                conns.clear();
                tickets.values_mut().for_each(|ended| *ended = true);
                // What was not kept is gone with the old gateway (its sled denies it at the drop).
                for (id, ended) in perms.iter_mut() {
                    if !kept.get(id).is_some_and(|k| !k.sent) {
                        *ended = true;
                        decided_away.remove(id);
                    }
                }
                made.clear();
            }
            Op::PermRequest(c, r) => {
                if let Some(conn) = pick(&conns, *c) {
                    let frame =
                        format!(r#"{{"type":"perm_request","req_id":"r{}","payload":{{"tool_name":"T"}}}}"#, r % 4);
                    hub.handle_received(now, conn, Received::Text(&frame));
                }
            }
            Op::PermCancel(c, r) => {
                if let Some(conn) = pick(&conns, *c) {
                    let frame = format!(r#"{{"type":"perm_cancel","req_id":"r{}"}}"#, r % 4);
                    hub.handle_received(now, conn, Received::Text(&frame));
                }
            }
            Op::McpResponse(c, m) => {
                if let Some(conn) = pick(&conns, *c) {
                    let frame = format!(r#"{{"type":"mcp_response","req_id":"mcp-{}","payload":1}}"#, m % 4);
                    hub.handle_received(now, conn, Received::Text(&frame));
                }
            }
            Op::Frame(c, text) => {
                if let Some(conn) = pick(&conns, *c) {
                    hub.handle_received(now, conn, Received::Text(text));
                }
            }
            Op::Decide(c, p, how) => {
                let id = PublicPermId { conn: ConnHandle(u64::from(c % 8)), perm: PermId(u64::from(p % 4)) };
                let verdict = match how % 5 {
                    0 => Verdict::new(Decision::Approve),
                    1 => Verdict::new(Decision::Deny),
                    n => {
                        let scope = [AlwaysScope::Connection, AlwaysScope::Project, AlwaysScope::Everywhere]
                            [usize::from(n - 2)];
                        Verdict::new(Decision::AlwaysAllow).always(Always::new(scope, 0))
                    }
                };
                let req_id = hub.permissions(now).into_iter().find(|p| p.id == id).map(|p| p.req_id);
                let allow = verdict.decision.is_allow();
                let result = hub.decide(now, id, verdict);
                let ok = result.is_ok();
                assert_eq!(ok, perms.get(&id) == Some(&false), "decide accepted exactly when pending");
                if let (Ok(decided), true, Some(req_id)) = (result, allow, req_id) {
                    // Sent on the connection it is pending on now (its first one, or where it was sent again).
                    if !decided.held {
                        approved.insert((location.get(&id).copied().unwrap_or(id.conn), req_id.clone()));
                    }
                    allowed.insert(id, req_id);
                }
            }
            Op::SendMcp(p) => {
                if let Ok(ticket) = hub.send_mcp(now, PROJECTS[usize::from(*p) % 3], "{}", None, true) {
                    assert!(tickets.insert(ticket, false).is_none(), "ticket reused");
                }
            }
            Op::Disconnect(c) => {
                if let Some(conn) = pick(&conns, *c) {
                    hub.handle_disconnected(now, conn);
                }
            }
            Op::TooBig(c) => {
                if let Some(conn) = pick(&conns, *c) {
                    hub.handle_too_big(now, conn);
                }
            }
            Op::Advance(ms) => {
                now = now + Duration::from_millis(u64::from(*ms) * 10);
                hub.handle_timeout(now);
            }
            Op::Reload(bits) => {
                for (i, c) in creds.iter_mut().enumerate() {
                    *c = (bits & (1 << i) != 0).then(|| credential(i as u8));
                }
                if bits & 8 != 0
                    && let Some(c) = &mut creds[1]
                {
                    c.scope = ProjectScope::Patterns(vec!["p".into()]);
                }
                if bits & 16 != 0
                    && let Some(c) = creds[0].take()
                {
                    creds[0] = Some(c.expiring(now + Duration::from_secs(1)));
                }
                let set: Vec<Credential> = creds.iter().flatten().cloned().collect();
                hub.update_credentials(now, &set);
            }
            Op::Shutdown => hub.shutdown(now),
        }
        let mut sent = Vec::new();
        while let Some(out) = hub.poll_output() {
            let event = match out {
                HubOutput::Send { conn, text } => {
                    if let Ok(GatewayFrame::PermResponse { req_id, decision, .. }) = GatewayFrame::decode(&text)
                        && decision.is_allow()
                    {
                        sent.push((conn, req_id.into_owned()));
                    }
                    continue;
                }
                HubOutput::Event(event) => event,
                _ => continue,
            };
            match event {
                HubEvent::RuleAdded { rule } => {
                    assert_eq!(rule.effect, uplink_proto::rules::Effect::Allow, "only allow rules are made");
                    made.insert(rule.id.0);
                }
                HubEvent::RuleRemoved { id, .. } => assert!(made.remove(&id.0), "a rule removed twice"),
                HubEvent::PermissionAutoDecided { conn, req_id, decision, rule, .. } if decision.is_allow() => {
                    assert!(rule.is_some_and(|r| made.contains(&r.0)), "approved by no rule in force");
                    approved.insert((conn, req_id));
                }
                HubEvent::PermissionRequested { id, .. } => assert!(perms.insert(id, false).is_none(), "id reused"),
                HubEvent::PermissionDecided { id, held: true, .. } => {
                    assert_eq!(perms.insert(id, true), Some(false), "decided exactly once");
                    decided_away.insert(id);
                }
                HubEvent::PermissionWithdrawn { id, .. } if decided_away.remove(&id) => {}
                HubEvent::PermissionDecided { id, .. } | HubEvent::PermissionWithdrawn { id, .. } => {
                    assert_eq!(perms.insert(id, true), Some(false), "ended exactly once");
                }
                HubEvent::PermissionDelivered { id, conn, .. } | HubEvent::PermissionAnsweredAgain { id, conn, .. } => {
                    assert!(resume, "delivered without resume");
                    if let Some(req_id) = allowed.get(&id) {
                        approved.insert((conn, req_id.clone()));
                    }
                    decided_away.remove(&id);
                }
                HubEvent::PermissionResumed { id, conn, .. } => {
                    location.insert(id, conn);
                }
                HubEvent::Resumable { request } => {
                    assert!(resume && perms.contains_key(&request.id), "kept without resume, or unknown");
                    kept.insert(request.id, request);
                }
                HubEvent::ResumableGone { id } => {
                    kept.remove(&id);
                }
                HubEvent::IdsReserved { until } => {
                    assert!(until > ids_until, "reservations only grow");
                    ids_until = until;
                }
                HubEvent::McpAnswered { ticket, .. } | HubEvent::McpFailed { ticket, .. } => {
                    assert_eq!(tickets.insert(ticket, true), Some(false), "MCP request ended exactly once");
                }
                _ => {}
            }
        }
        for s in &sent {
            assert!(approved.contains(s), "an approval nobody gave: {s:?}");
        }
        for rule in hub.rules().rules() {
            assert!(rule.connection.is_none_or(|c| hub.credential_of(c).is_some()), "a rule outlived its connection");
        }
        assert!(made.len() <= 4, "the rule budget");
        for conn in &conns {
            if let Some(project) = hub.project_of(*conn) {
                assert_eq!(hub.holder(project), Some(*conn), "one holder per project");
                assert!(hub.credential_of(*conn).is_some_and(|c| c.scope.covers(project)), "held outside scope");
            }
        }
        assert!(hub.remembered_disconnected() <= 1);
        for conn in &conns {
            if let Some(held) = hub.credential_of(*conn) {
                assert!(creds.iter().flatten().any(|c| c == held), "a revoked credential kept its connection");
                assert!(!held.is_expired(now), "an expired credential kept its connection");
            }
        }
        assert!(hub.connections() <= 6 && hub.unidentified() <= 3);
        assert!(hub.pending_input_bytes() <= 50);
        for h in hub.held() {
            assert_eq!(kept.get(&h.id), Some(h), "held but not kept as held");
        }
        assert!(conns.iter().all(|c| c.0 <= ids_until), "a handle handed out unreserved");
    }
    hub.shutdown(now);
    while let Some(out) = hub.poll_output() {
        if let HubOutput::Event(HubEvent::PermissionWithdrawn { id, .. }) = out {
            assert_eq!(perms.insert(id, true), Some(false), "ended exactly once");
        }
        if let HubOutput::Event(HubEvent::McpFailed { ticket, .. }) = out {
            assert_eq!(tickets.insert(ticket, true), Some(false), "MCP request ended exactly once");
        }
    }
    let held: BTreeSet<PublicPermId> = hub.held().map(|h| h.id).collect();
    assert!(perms.iter().all(|(id, ended)| *ended || held.contains(id)), "a permission outlived shutdown");
    assert!(tickets.values().all(|ended| *ended), "an MCP request outlived shutdown");
    assert_eq!(hub.connections(), 0);
});

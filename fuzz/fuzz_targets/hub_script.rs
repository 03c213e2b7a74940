//! The gateway's hub driven by an arbitrary script over several connections and credentials: every
//! permission and MCP request ends exactly once, a decision is accepted exactly when pending, no connection
//! holds a project its credential does not cover, at most one holds each project, and the memory of gone
//! sleds stays bounded; credentials reloaded at any time leave no connection with a revoked or expired one,
//! and the connection and input budgets hold.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uplink_proto::gateway::{
    ConnHandle, Credential, CredentialId, Hub, HubConfig, HubEvent, HubOutput, McpTicket, PermId, ProjectScope,
    PublicPermId,
};
use uplink_proto::{Decision, Instant, Received};

#[derive(Arbitrary, Debug)]
enum Op {
    Accept(u8),
    Identify(u8, u8),
    PermRequest(u8, u8),
    PermCancel(u8, u8),
    McpResponse(u8, u8),
    Frame(u8, String),
    Decide(u8, u8, bool),
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

fuzz_target!(|ops: Vec<Op>| {
    let mut cfg = HubConfig::default();
    cfg.session.max_pending_permissions = 3;
    cfg.session.max_pending_mcp = 2;
    cfg.max_disconnected_sleds = 1;
    cfg.max_connections = 6;
    cfg.max_unidentified = 3;
    cfg.session.max_pending_input_bytes = 30;
    cfg.max_pending_input_bytes = 50;
    let mut now = Instant::ZERO;
    let mut hub = Hub::new(cfg, now).expect("valid");
    let mut conns: Vec<ConnHandle> = Vec::new();
    let mut perms: BTreeMap<PublicPermId, bool> = BTreeMap::new(); // true = ended
    let mut tickets: BTreeMap<McpTicket, bool> = BTreeMap::new();
    let mut creds: [Option<Credential>; 3] = [0, 1, 2].map(|i| Some(credential(i)));
    let pick = |conns: &[ConnHandle], c: u8| (!conns.is_empty()).then(|| conns[usize::from(c) % conns.len()]);
    for op in ops.iter().take(300) {
        match op {
            Op::Accept(c) => {
                if let Some(credential) = creds[usize::from(*c % 3)].clone()
                    && let Ok(conn) = hub.accept(now, credential)
                {
                    conns.push(conn);
                }
            }
            Op::Identify(c, p) => {
                if let Some(conn) = pick(&conns, *c) {
                    let project = PROJECTS[usize::from(*p) % 3];
                    let frame = format!(r#"{{"type":"identity","payload":{{"project":"{project}"}}}}"#);
                    hub.handle_received(now, conn, Received::Text(&frame));
                }
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
            Op::Decide(c, p, approve) => {
                let id = PublicPermId { conn: ConnHandle(u64::from(c % 8)), perm: PermId(u64::from(p % 4)) };
                let decision = if *approve { Decision::Approve } else { Decision::Deny };
                let ok = hub.decide(now, id, decision).is_ok();
                assert_eq!(ok, perms.get(&id) == Some(&false), "decide accepted exactly when pending");
            }
            Op::SendMcp(p) => {
                if let Ok(ticket) = hub.send_mcp(now, PROJECTS[usize::from(*p) % 3], "{}", None) {
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
        while let Some(out) = hub.poll_output() {
            let HubOutput::Event(event) = out else { continue };
            match event {
                HubEvent::PermissionRequested { id, .. } => assert!(perms.insert(id, false).is_none(), "id reused"),
                HubEvent::PermissionDecided { id, .. } | HubEvent::PermissionWithdrawn { id, .. } => {
                    assert_eq!(perms.insert(id, true), Some(false), "ended exactly once");
                }
                HubEvent::McpAnswered { ticket, .. } | HubEvent::McpFailed { ticket, .. } => {
                    assert_eq!(tickets.insert(ticket, true), Some(false), "MCP request ended exactly once");
                }
                _ => {}
            }
        }
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
    assert!(perms.values().all(|ended| *ended), "a permission outlived shutdown");
    assert!(tickets.values().all(|ended| *ended), "an MCP request outlived shutdown");
    assert_eq!(hub.connections(), 0);
});

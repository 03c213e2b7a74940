//! The gateway session driven by an arbitrary script: every request ends exactly once, refused decisions send
//! nothing, nothing follows the close.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uplink_proto::gateway::{McpId, PermId, SessionConfig, SessionEvent, SessionOutput, SledSession};
use uplink_proto::{Decision, Instant, Received};

#[derive(Arbitrary, Debug)]
enum Op {
    Advance(u16),
    Identity,
    PermRequest(u8),
    PermCancel(u8),
    McpResponse(u8),
    Frame(String),
    Decide(u8, bool),
    SendMcp,
    Close,
    Disconnect,
}

fuzz_target!(|ops: Vec<Op>| {
    let mut now = Instant::ZERO;
    let mut gw = SledSession::new(
        SessionConfig { max_pending_permissions: 3, max_pending_mcp: 3, ..SessionConfig::default() },
        now,
    )
    .expect("valid");
    let mut perms: BTreeMap<PermId, bool> = BTreeMap::new(); // true = ended
    let mut mcp: BTreeMap<McpId, bool> = BTreeMap::new();
    let mut closed = false;
    for op in ops.iter().take(300) {
        match op {
            Op::Advance(ms) => {
                now = now + Duration::from_millis(u64::from(*ms) * 10);
                gw.handle_timeout(now);
            }
            Op::Identity => gw.handle_received(now, Received::Text(r#"{"type":"identity","payload":{"project":"p"}}"#)),
            Op::PermRequest(r) => gw.handle_received(
                now,
                Received::Text(&format!(
                    r#"{{"type":"perm_request","req_id":"r{}","payload":{{"tool_name":"T"}}}}"#,
                    r % 6
                )),
            ),
            Op::PermCancel(r) => {
                gw.handle_received(now, Received::Text(&format!(r#"{{"type":"perm_cancel","req_id":"r{}"}}"#, r % 6)))
            }
            Op::McpResponse(m) => gw.handle_received(
                now,
                Received::Text(&format!(r#"{{"type":"mcp_response","req_id":"mcp-{}","payload":1}}"#, m % 6)),
            ),
            Op::Frame(t) => gw.handle_received(now, Received::Text(t)),
            Op::Decide(p, approve) => {
                let perm = PermId(u64::from(p % 8));
                let ok = gw.decide(now, perm, if *approve { Decision::Approve } else { Decision::Deny }).is_ok();
                assert_eq!(ok, perms.get(&perm) == Some(&false), "decide accepted exactly when pending");
                if ok {
                    perms.insert(perm, true);
                }
            }
            Op::SendMcp => {
                if let Ok(id) = gw.send_mcp(now, "{}", None, true) {
                    assert!(mcp.insert(id, false).is_none());
                }
            }
            Op::Close => gw.close(now, uplink_proto::gateway::CloseReason::Replaced),
            Op::Disconnect => gw.handle_disconnected(now),
        }
        while let Some(out) = gw.poll_output() {
            assert!(!closed, "output after close: {out:?}");
            match out {
                SessionOutput::Event(SessionEvent::PermissionRequested { perm, .. }) => {
                    assert!(perms.insert(perm, false).is_none())
                }
                SessionOutput::Event(SessionEvent::PermissionWithdrawn { perm, .. }) => {
                    assert_eq!(perms.insert(perm, true), Some(false))
                }
                SessionOutput::Event(SessionEvent::McpResponse { id, .. } | SessionEvent::McpFailed { id, .. }) => {
                    assert_eq!(mcp.insert(id, true), Some(false))
                }
                SessionOutput::Event(SessionEvent::Closed) => closed = true,
                _ => {}
            }
        }
        if let Some(at) = gw.poll_timeout() {
            assert!(at > now);
        }
    }
    gw.handle_disconnected(now);
    while let Some(out) = gw.poll_output() {
        match out {
            SessionOutput::Event(SessionEvent::PermissionWithdrawn { perm, .. }) => {
                assert_eq!(perms.insert(perm, true), Some(false))
            }
            SessionOutput::Event(SessionEvent::McpResponse { id, .. } | SessionEvent::McpFailed { id, .. }) => {
                assert_eq!(mcp.insert(id, true), Some(false))
            }
            _ => {}
        }
    }
    assert!(perms.values().all(|e| *e) && mcp.values().all(|e| *e), "everything ends");
});

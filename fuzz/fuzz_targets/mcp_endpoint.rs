//! The gateway's MCP endpoint policy on arbitrary requests (any method, session id, version header and body,
//! from a few principals to a few projects), with sessions opened and answered as the adapter would: nothing
//! panics, a session is only ever routed for the principal and the project it was opened for, and the
//! session budget holds.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uplink_proto::Instant;
use uplink_proto::gateway::{EndpointRequest, McpEndpoint, McpEndpointConfig, Method, Route};

#[derive(Arbitrary, Debug)]
struct Ask {
    method: u8,
    who: u8,
    project: u8,
    /// A session id of the fuzzer's own, or (when `known` is set) one the endpoint gave.
    session: Option<String>,
    known: Option<u8>,
    version: Option<String>,
    body: String,
    /// Whether an `initialize` it opens is answered with a result.
    answered: bool,
    advance_ms: u16,
}

fuzz_target!(|asks: Vec<Ask>| {
    let cfg = McpEndpointConfig { max_sessions: 8, max_per_principal: 3, idle_timeout: Duration::from_secs(30) };
    let mut e = McpEndpoint::new(cfg.clone());
    let mut owners: BTreeMap<String, (&str, &str)> = BTreeMap::new();
    let mut now = Instant::ZERO;
    for (n, ask) in asks.iter().take(200).enumerate() {
        now = now + Duration::from_millis(u64::from(ask.advance_ms));
        let who = ["ana", "bo", "cy"][usize::from(ask.who) % 3];
        let project = ["p", "q"][usize::from(ask.project) % 2];
        let method = [Method::Post, Method::Get, Method::Delete][usize::from(ask.method) % 3];
        let ids: Vec<String> = owners.keys().cloned().collect();
        let session = match ask.known {
            Some(k) if !ids.is_empty() => Some(ids[usize::from(k) % ids.len()].clone()),
            _ => ask.session.clone(),
        };
        let request = EndpointRequest::new(method, project, who)
            .session(session.as_deref())
            .protocol_version(ask.version.as_deref())
            .body(&ask.body);
        match e.route(now, &request) {
            Ok(Route::Initialize) => {
                let id = format!("id-{n}");
                assert!(e.open(now, &id, project, Arc::from(who)));
                let answer = if ask.answered { r#"{"jsonrpc":"2.0","id":1,"result":{}}"# } else { "{}" };
                if e.initialized(now, &id, uplink_proto::gateway::mcp_endpoint::opens_session(Some(answer))) {
                    owners.insert(id, (who, project));
                }
            }
            Ok(Route::Relay { session: s } | Route::Listen { session: s }) => {
                assert_eq!(owners.get(&s), Some(&(who, project)), "routed for someone else");
            }
            Ok(Route::End { session: s }) => {
                assert_eq!(owners.remove(&s), Some((who, project)), "ended by someone else");
            }
            Err(refusal) => assert!((400..600).contains(&refusal.status)),
        }
        for (id, _) in e.expire(now) {
            owners.remove(&id);
        }
        assert!(e.len() <= cfg.max_sessions);
    }
});

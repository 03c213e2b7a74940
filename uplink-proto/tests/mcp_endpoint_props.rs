//! Property tests of the gateway's MCP endpoint policy (`gateway::McpEndpoint`): random requests from
//! several principals to several projects, sessions opened, answered, listened on, ended and expired, against
//! an independent model. A session is only ever routed for its own principal and project, while it is open
//! and not idle past its time; budgets hold; nothing panics on any header or body.
//! Case count: `PROPTEST_CASES` (default 256).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use uplink_proto::Instant;
use uplink_proto::gateway::{EndpointRequest, McpEndpoint, McpEndpointConfig, Method, Route};

const PRINCIPALS: [&str; 3] = ["ana", "bo", "cy"];
const PROJECTS: [&str; 2] = ["p", "q"];
const BODIES: [&str; 6] = [
    r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
    r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    r#"{"jsonrpc":"2.0","id":"s","result":{}}"#,
    "[1,2]",
    "{not json",
];

#[derive(Clone, Debug)]
enum Op {
    Advance(u32),
    /// A request: method, principal, project, which session id (a known one, or junk), version, body.
    Request {
        method: u8,
        who: u8,
        project: u8,
        session: u8,
        version: u8,
        body: u8,
    },
    /// The pending initialize `n` is answered: with a result, or not.
    Answer {
        n: u8,
        ok: bool,
    },
    Expire,
    ClosePrincipal(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u32..2_000_000).prop_map(Op::Advance),
        8 => (0u8..3, 0u8..3, 0u8..2, 0u8..8, 0u8..4, 0u8..6).prop_map(|(method, who, project, session, version, body)| {
            Op::Request { method, who, project, session, version, body }
        }),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(n, ok)| Op::Answer { n, ok }),
        1 => Just(Op::Expire),
        1 => (0u8..3).prop_map(Op::ClosePrincipal),
    ]
}

/// What the model knows of one session.
#[derive(Clone, Debug)]
struct Known {
    principal: &'static str,
    project: &'static str,
    open: bool,
    last_use: Instant,
    listening: bool,
}

proptest! {
    #[test]
    fn sessions_are_routed_only_for_their_owner_while_open_and_budgets_hold(
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let cfg = McpEndpointConfig { max_sessions: 4, max_per_principal: 2, idle_timeout: Duration::from_secs(1000) };
        let mut e = McpEndpoint::new(cfg.clone());
        let mut now = Instant::ZERO;
        let mut known: BTreeMap<String, Known> = BTreeMap::new();
        let mut pending: Vec<String> = Vec::new();
        let mut next = 0u32;
        for op in &ops {
            match op {
                Op::Advance(ms) => now = now + Duration::from_millis(u64::from(*ms)),
                Op::Expire => {
                    for (id, _) in e.expire(now) {
                        let k = known.remove(&id).expect("an expired session was known");
                        prop_assert!(!k.listening && k.last_use + cfg.idle_timeout <= now);
                    }
                }
                Op::ClosePrincipal(w) => {
                    let who = PRINCIPALS[usize::from(*w)];
                    for (id, _) in e.close_principal(who) {
                        prop_assert_eq!(known.remove(&id).map(|k| k.principal), Some(who));
                    }
                    prop_assert!(known.values().all(|k| k.principal != who));
                    pending.retain(|id| known.contains_key(id));
                }
                Op::Answer { n, ok } => {
                    if pending.is_empty() {
                        continue;
                    }
                    let id = pending.remove(usize::from(*n) % pending.len());
                    let answer = if *ok { r#"{"jsonrpc":"2.0","id":1,"result":{}}"# } else { r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"# };
                    let opened = e.initialized(now, &id, uplink_proto::gateway::mcp_endpoint::opens_session(Some(answer)));
                    prop_assert_eq!(opened, *ok && known.contains_key(&id));
                    if opened {
                        let k = known.get_mut(&id).expect("known");
                        k.open = true;
                        k.last_use = now;
                    } else {
                        known.remove(&id);
                    }
                }
                Op::Request { method, who, project, session, version, body } => {
                    let method = [Method::Post, Method::Get, Method::Delete][usize::from(*method)];
                    let (who, project) = (PRINCIPALS[usize::from(*who)], PROJECTS[usize::from(*project)]);
                    let ids: Vec<String> = known.keys().cloned().collect();
                    let sid = match *session {
                        0 => None,
                        1 => Some("junk".to_owned()),
                        n => (!ids.is_empty()).then(|| ids[usize::from(n) % ids.len()].clone()),
                    };
                    let version = [None, Some("2025-11-25"), Some("2025-03-26"), Some("1999-01-01")][usize::from(*version)];
                    let req = EndpointRequest::new(method, project, who)
                        .session(sid.as_deref())
                        .protocol_version(version)
                        .body(BODIES[usize::from(*body)]);
                    match e.route(now, &req) {
                        Ok(Route::Initialize) => {
                            prop_assert!(method == Method::Post && sid.is_none());
                            let id = format!("s{next}");
                            next += 1;
                            prop_assert!(e.open(now, &id, project, Arc::from(who)));
                            known.insert(id.clone(), Known { principal: who, project, open: false, last_use: now, listening: false });
                            pending.push(id);
                        }
                        Ok(Route::Relay { session } | Route::Listen { session } | Route::End { session }) => {
                            // Only the owner, on its project, of an open session not idle past its time.
                            let k = known.get(&session).cloned().expect("routed to a known session");
                            prop_assert_eq!(Some(&session), sid.as_ref());
                            prop_assert!(k.open && k.principal == who && k.project == project, "{:?} for {} on {}", k, who, project);
                            prop_assert!(k.listening || k.last_use + cfg.idle_timeout > now, "an idle session was routed");
                            let k = known.get_mut(&session).expect("known");
                            k.last_use = now;
                            match method {
                                Method::Delete => {
                                    known.remove(&session);
                                }
                                Method::Get if !k.listening => {
                                    k.listening = true;
                                    e.listening(now, &session, uplink_proto::ids::McpTicket { conn: uplink_proto::ids::ConnHandle(0), id: uplink_proto::ids::McpId(1) });
                                }
                                _ => {}
                            }
                        }
                        Err(refusal) => prop_assert!((400..=503).contains(&refusal.status)),
                    }
                }
            }
            prop_assert_eq!(e.len(), known.len(), "the model and the endpoint disagree on the sessions");
            prop_assert!(e.len() <= cfg.max_sessions);
            for who in PRINCIPALS {
                prop_assert!(known.values().filter(|k| k.principal == who).count() <= cfg.max_per_principal);
            }
        }
    }
}

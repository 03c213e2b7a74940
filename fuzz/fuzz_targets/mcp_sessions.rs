//! The sled's local MCP session policy under arbitrary scripts: calls with any body (an `initialize` or not)
//! in a few sessions, answered in any order with any result and any session id the local server names, and
//! sessions ended: nothing panics, and the table, the kept `initialize` requests (within their byte budget)
//! and the sessions waiting to be ended upstream stay within their bounds.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uplink_proto::sled::mcp_session::{Exchange, McpSessions, PostResult};
use uplink_proto::{McpCall, McpCallId, McpReply, RawValue};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A call in session `key`: its body, and whether it is an `initialize`.
    Begin {
        key: u8,
        body: String,
        initialize: bool,
    },
    /// The next POST of an exchange under way gives this.
    Result {
        pick: u8,
        kind: u8,
        session_id: Option<String>,
        protocol: Option<String>,
    },
    End(u8),
    EndAll,
}

#[derive(Arbitrary, Debug)]
struct Script {
    max_sessions: u8,
    budget: u16,
    ops: Vec<Op>,
}

fuzz_target!(|script: Script| {
    let max = usize::from(script.max_sessions % 8).max(1);
    let budget = usize::from(script.budget);
    let mut s = McpSessions::new(max, budget);
    let mut live: Vec<Exchange> = Vec::new();
    for op in script.ops.iter().take(300) {
        match op {
            Op::Begin { key, body, initialize } => {
                let call = McpCall {
                    call: McpCallId(0),
                    body: body.clone(),
                    session: (*key % 4 != 0).then(|| format!("k{}", key % 4)),
                    jsonrpc_id: None,
                    is_initialize: *initialize,
                };
                let (exchange, _) = s.begin(&call);
                if live.len() < 16 {
                    live.push(exchange);
                }
            }
            Op::Result { pick, kind, session_id, protocol } => {
                if live.is_empty() {
                    continue;
                }
                let at = usize::from(*pick) % live.len();
                let answer = match protocol {
                    Some(v) => {
                        format!(r#"{{"jsonrpc":"2.0","id":0,"result":{{"protocolVersion":{}}}}}"#, serde_json::json!(v))
                    }
                    None => r#"{"jsonrpc":"2.0","id":0,"result":{}}"#.to_owned(),
                };
                let result = match kind % 5 {
                    0 => PostResult::NotFound,
                    1 => PostResult::Failed("x".into()),
                    2 => PostResult::Answer { reply: McpReply::NoContent, session_id: session_id.clone() },
                    3 => PostResult::Answer { reply: McpReply::Failed("y".into()), session_id: session_id.clone() },
                    _ => PostResult::Answer {
                        reply: McpReply::Response(RawValue::from_string(answer).expect("JSON")),
                        session_id: session_id.clone(),
                    },
                };
                let _ = s.handle(&mut live[at], result);
            }
            Op::End(key) => s.end(&format!("k{}", key % 4)),
            Op::EndAll => s.end_all(),
        }
        assert!(s.len() <= max);
        assert!(s.kept_initialize_bytes() <= budget, "{} bytes kept, budget {budget}", s.kept_initialize_bytes());
        let ended = s.take_ended();
        assert!(ended.len() <= max, "{} sessions to end at once", ended.len());
    }
    s.end_all();
    assert_eq!((s.len(), s.kept_initialize_bytes()), (0, 0));
});

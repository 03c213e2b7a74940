//! The sled's local MCP session policy, driven step by step: a session per caller, a fresh session on
//! `initialize`, the protocol version learnt, one renewal of a lost session, a bounded table.

use uplink_proto::mcp_session::{McpSessions, PostBody, PostResult, SessionHeaders, Step};
use uplink_proto::{McpCall, McpCallId, McpReply, RawValue};

fn call(body: &str, session: Option<&str>) -> McpCall {
    let probe = uplink_proto::jsonrpc::probe(body);
    let jsonrpc_id = match probe.id {
        uplink_proto::jsonrpc::BodyId::Id(id) => Some(id.to_owned()),
        _ => None,
    };
    McpCall {
        call: McpCallId(0),
        body: body.to_owned(),
        session: session.map(str::to_owned),
        jsonrpc_id,
        is_initialize: probe.is_initialize,
    }
}

fn response(text: &str) -> McpReply {
    McpReply::Response(RawValue::from_string(text.to_owned()).expect("JSON"))
}

fn answer(text: &str, session_id: Option<&str>) -> PostResult {
    PostResult::Answer { reply: response(text), session_id: session_id.map(str::to_owned) }
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#;
const INIT_OK: &str = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25"}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
const LISTED: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;

fn post(step: &Step) -> (PostBody, SessionHeaders) {
    match step {
        Step::Post { body, headers } => (body.clone(), headers.clone()),
        Step::Done(reply) => panic!("expected a POST, got the end: {reply:?}"),
    }
}

fn done(step: Step) -> String {
    match step {
        Step::Done(McpReply::Response(raw)) => raw.get().to_owned(),
        Step::Done(McpReply::Failed(e)) => format!("failed: {e}"),
        Step::Done(McpReply::NoContent) => "no content".into(),
        Step::Done(McpReply::NoStream) => "no stream".into(),
        Step::Post { body, .. } => panic!("expected the end, got a POST of {body:?}"),
    }
}

fn initialize(s: &mut McpSessions, key: Option<&str>, session_id: &str) {
    let (mut ex, step) = s.begin(&call(INIT, key));
    assert_eq!(post(&step), (PostBody::Call, SessionHeaders::default()), "initialize starts afresh");
    assert_eq!(done(s.handle(&mut ex, answer(INIT_OK, Some(session_id)))), INIT_OK);
}

#[test]
fn each_caller_has_its_own_session_with_the_protocol_version_it_negotiated() {
    let mut s = McpSessions::new(8);
    initialize(&mut s, Some("alice"), "A");
    initialize(&mut s, Some("bob"), "B");
    initialize(&mut s, None, "N");
    for (key, id) in [(Some("alice"), "A"), (Some("bob"), "B"), (None, "N")] {
        let (mut ex, step) = s.begin(&call(LIST, key));
        let (_, headers) = post(&step);
        assert_eq!(headers.session_id.as_deref(), Some(id));
        assert_eq!(headers.protocol_version.as_deref(), Some("2025-11-25"));
        assert_eq!(done(s.handle(&mut ex, answer(LISTED, None))), LISTED);
    }
    // An unknown caller sends no session id; the server's 404 is then its answer, not a lost session.
    let (mut ex, step) = s.begin(&call(LIST, Some("carol")));
    assert_eq!(post(&step).1, SessionHeaders::default());
    assert!(done(s.handle(&mut ex, PostResult::NotFound)).contains("HTTP 404"));
}

#[test]
fn a_lost_session_is_renewed_once_with_the_kept_initialize_then_the_call_is_retried() {
    let mut s = McpSessions::new(8);
    initialize(&mut s, Some("alice"), "old");
    let (mut ex, _) = s.begin(&call(LIST, Some("alice")));
    let step = s.handle(&mut ex, PostResult::NotFound);
    assert_eq!(post(&step), (PostBody::Initialize(INIT.to_owned()), SessionHeaders::default()));
    let step = s.handle(&mut ex, answer(INIT_OK, Some("new")));
    let (body, headers) = post(&step);
    assert_eq!((body, headers.session_id.as_deref()), (PostBody::Initialized, Some("new")));
    let step = s.handle(&mut ex, PostResult::Answer { reply: McpReply::NoContent, session_id: None });
    let (body, headers) = post(&step);
    assert_eq!((body, headers.session_id.as_deref()), (PostBody::Call, Some("new")));
    assert_eq!(done(s.handle(&mut ex, answer(LISTED, None))), LISTED);
    assert_eq!(s.headers("alice").session_id.as_deref(), Some("new"));
    // Lost again right after renewing: an error, not a loop.
    let (mut ex, _) = s.begin(&call(LIST, Some("alice")));
    s.handle(&mut ex, PostResult::NotFound);
    s.handle(&mut ex, answer(INIT_OK, Some("newer")));
    s.handle(&mut ex, PostResult::Answer { reply: McpReply::NoContent, session_id: None });
    assert!(done(s.handle(&mut ex, PostResult::NotFound)).contains("lost again"));
    // Results after the end change nothing.
    assert!(done(s.handle(&mut ex, answer(LISTED, None))).contains("already over"));
}

#[test]
fn renewal_failures_end_the_call_with_an_error_that_says_where() {
    let cases: [(&[PostResult], &str); 4] = [
        (&[PostResult::Failed("refused".into())], "refused"),
        (&[PostResult::Answer { reply: McpReply::Failed("boom".into()), session_id: None }], "re-initializing: boom"),
        (&[PostResult::NotFound], "re-initializing the local MCP session failed"),
        (&[answer(INIT_OK, Some("n")), PostResult::NotFound], "refused its new session"),
    ];
    for (results, want) in cases {
        let mut s = McpSessions::new(8);
        initialize(&mut s, None, "old");
        let (mut ex, _) = s.begin(&call(LIST, None));
        let mut step = s.handle(&mut ex, PostResult::NotFound);
        for r in results.iter().cloned() {
            step = s.handle(&mut ex, r);
        }
        assert!(done(step).contains(want), "{want}");
    }
    // A session never initialized cannot be renewed.
    let mut s = McpSessions::new(8);
    let (mut ex, _) = s.begin(&call(INIT, None));
    s.handle(&mut ex, PostResult::Answer { reply: McpReply::Failed("down".into()), session_id: None });
    assert!(s.headers("").session_id.is_none());
}

#[test]
fn the_least_recently_used_session_is_forgotten_beyond_the_bound() {
    let mut s = McpSessions::new(2);
    initialize(&mut s, Some("a"), "A");
    initialize(&mut s, Some("b"), "B");
    // Using "a" makes "b" the least recently used.
    let (mut ex, _) = s.begin(&call(LIST, Some("a")));
    s.handle(&mut ex, answer(LISTED, None));
    initialize(&mut s, Some("c"), "C");
    assert_eq!(s.len(), 2);
    assert_eq!(s.headers("a").session_id.as_deref(), Some("A"));
    assert_eq!(s.headers("b").session_id, None);
    assert_eq!(s.headers("c").session_id.as_deref(), Some("C"));
    // The forgotten session is ended upstream, once.
    let ended: Vec<Option<String>> = s.take_ended().into_iter().map(|h| h.session_id).collect();
    assert_eq!(ended, [Some("B".to_owned())]);
    assert!(s.take_ended().is_empty());
    for i in 0..1000 {
        initialize(&mut s, Some(&format!("k{i}")), "x");
        assert!(s.len() <= 2);
        assert!(s.take_ended().len() <= 2);
    }
}

#[test]
fn sessions_the_gateway_ends_or_a_shutdown_ends_are_ended_upstream_and_forgotten() {
    let mut s = McpSessions::new(8);
    initialize(&mut s, Some("a"), "A");
    initialize(&mut s, Some("b"), "B");
    initialize(&mut s, Some("c"), "C");
    s.end("a");
    s.end("never-known");
    assert_eq!(s.take_ended().into_iter().map(|h| h.session_id).collect::<Vec<_>>(), [Some("A".to_owned())]);
    assert_eq!(s.headers("a"), SessionHeaders::default());
    // A client that initializes again ends its old local session.
    initialize(&mut s, Some("b"), "B2");
    assert_eq!(s.take_ended().into_iter().map(|h| h.session_id).collect::<Vec<_>>(), [Some("B".to_owned())]);
    s.end_all();
    let mut ended: Vec<Option<String>> = s.take_ended().into_iter().map(|h| h.session_id).collect();
    ended.sort();
    assert_eq!(ended, [Some("B2".to_owned()), Some("C".to_owned())]);
    assert!(s.is_empty());
}

#[test]
fn a_stream_is_resumed_only_from_an_event_id_after_the_servers_retry_a_bounded_number_of_times() {
    use std::time::Duration;
    use uplink_proto::mcp_session::{MAX_RESUMES, MAX_RETRY, resume_after};
    assert_eq!(resume_after(None, Some(500), 0), None, "nothing to resume from");
    assert_eq!(resume_after(Some("e1"), Some(500), 0), Some(Duration::from_millis(500)));
    assert_eq!(resume_after(Some("e1"), None, 0), Some(Duration::from_secs(1)));
    assert_eq!(resume_after(Some("e1"), Some(u64::MAX), 0), Some(MAX_RETRY));
    assert_eq!(resume_after(Some("e1"), Some(0), MAX_RESUMES - 1), Some(Duration::ZERO));
    assert_eq!(resume_after(Some("e1"), Some(0), MAX_RESUMES), None);
}

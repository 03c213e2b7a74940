//! The sled's local MCP session policy, driven step by step: a session per caller, a fresh session on
//! `initialize`, the protocol version learnt, one renewal of a lost session, a bounded table, and a byte
//! budget for the `initialize` requests kept to renew sessions with (with a property test against a model).

use proptest::prelude::*;
use uplink_proto::sled::mcp_session::{
    DEFAULT_MAX_INITIALIZE_BYTES, DEFAULT_MAX_SESSIONS, McpSessions, PostBody, PostResult, SessionHeaders, Step,
};
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
        Step::Done(McpReply::SessionLost) => "session lost".into(),
        Step::Post { body, .. } => panic!("expected the end, got a POST of {body:?}"),
    }
}

fn initialize(s: &mut McpSessions, key: Option<&str>, session_id: &str) {
    initialize_with(s, INIT, key, session_id);
}

fn initialize_with(s: &mut McpSessions, body: &str, key: Option<&str>, session_id: &str) {
    let (mut ex, step) = s.begin(&call(body, key));
    assert_eq!(post(&step), (PostBody::Call, SessionHeaders::default()), "initialize starts afresh");
    assert_eq!(done(s.handle(&mut ex, answer(INIT_OK, Some(session_id)))), INIT_OK);
}

/// An `initialize` request of exactly `len` bytes (at least [`INIT`]'s length), padded in its `params`.
fn init_of(len: usize) -> String {
    let bare = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"pad":""}}"#;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"pad":"{}"}}}}"#,
        "x".repeat(len.saturating_sub(bare.len()))
    );
    assert!(uplink_proto::jsonrpc::probe(&body).is_initialize);
    body
}

#[test]
fn each_caller_has_its_own_session_with_the_protocol_version_it_negotiated() {
    let mut s = McpSessions::new(8, 1 << 20);
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
    let mut s = McpSessions::new(8, 1 << 20);
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
        let mut s = McpSessions::new(8, 1 << 20);
        initialize(&mut s, None, "old");
        let (mut ex, _) = s.begin(&call(LIST, None));
        let mut step = s.handle(&mut ex, PostResult::NotFound);
        for r in results.iter().cloned() {
            step = s.handle(&mut ex, r);
        }
        assert!(done(step).contains(want), "{want}");
    }
    // A session never initialized cannot be renewed.
    let mut s = McpSessions::new(8, 1 << 20);
    let (mut ex, _) = s.begin(&call(INIT, None));
    s.handle(&mut ex, PostResult::Answer { reply: McpReply::Failed("down".into()), session_id: None });
    assert!(s.headers("").session_id.is_none());
}

#[test]
fn the_least_recently_used_session_is_forgotten_beyond_the_bound() {
    let mut s = McpSessions::new(2, 1 << 20);
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
    let mut s = McpSessions::new(8, 1 << 20);
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
    use uplink_proto::sled::mcp_session::{MAX_RESUMES, MAX_RETRY, resume_after};
    assert_eq!(resume_after(None, Some(500), 0), None, "nothing to resume from");
    assert_eq!(resume_after(Some("e1"), Some(500), 0), Some(Duration::from_millis(500)));
    assert_eq!(resume_after(Some("e1"), None, 0), Some(Duration::from_secs(1)));
    assert_eq!(resume_after(Some("e1"), Some(u64::MAX), 0), Some(MAX_RETRY));
    assert_eq!(resume_after(Some("e1"), Some(0), MAX_RESUMES - 1), Some(Duration::ZERO));
    assert_eq!(resume_after(Some("e1"), Some(0), MAX_RESUMES), None);
}

/// The defect: every session kept its whole `initialize` body, so 200 sessions initialized with 512 KiB bodies
/// held 100 MiB (256 × 4 MiB within the sled's own limits). Now what all sessions keep stays within the budget,
/// and the most recently used sessions keep theirs. Measured two ways: the table's own count, and what the
/// sessions actually offer to replay when each is lost (anything replayed must have been kept).
#[test]
fn many_sessions_with_large_initialize_bodies_keep_at_most_the_budget() {
    let mut s = McpSessions::default();
    let big = init_of(512 << 10);
    for i in 0..200 {
        initialize_with(&mut s, &big, Some(&format!("k{i}")), &format!("S{i}"));
        assert!(s.kept_initialize_bytes() <= DEFAULT_MAX_INITIALIZE_BYTES, "{} bytes kept", s.kept_initialize_bytes());
    }
    assert_eq!(s.len(), 200, "the sessions themselves all stay");
    assert!(s.renewable("k199"), "the most recently used session keeps its initialize");
    assert!(!s.renewable("k0"));
    let mut replayable = 0;
    for i in (0..200).rev() {
        let (mut ex, _) = s.begin(&call(LIST, Some(&format!("k{i}"))));
        if let Step::Post { body: PostBody::Initialize(init), .. } = s.handle(&mut ex, PostResult::NotFound) {
            assert_eq!(init, big);
            replayable += init.len();
        }
    }
    assert!(replayable > 0 && replayable <= DEFAULT_MAX_INITIALIZE_BYTES, "{replayable} bytes replayable");
    assert!(s.kept_initialize_bytes() <= DEFAULT_MAX_INITIALIZE_BYTES);
    // The default budget holds an ordinary initialize for every session of the default table.
    let mut s = McpSessions::default();
    let ordinary = init_of(4 << 10);
    for i in 0..DEFAULT_MAX_SESSIONS {
        initialize_with(&mut s, &ordinary, Some(&format!("k{i}")), "S");
    }
    assert!((0..DEFAULT_MAX_SESSIONS).all(|i| s.renewable(&format!("k{i}"))));
    assert_eq!(s.kept_initialize_bytes(), DEFAULT_MAX_SESSIONS * ordinary.len());
}

#[test]
fn the_least_recently_used_sessions_let_their_initialize_go_first_and_one_over_the_budget_is_not_kept() {
    let body = init_of(100);
    let mut s = McpSessions::new(8, 250);
    initialize_with(&mut s, &body, Some("a"), "A");
    initialize_with(&mut s, &body, Some("b"), "B");
    assert_eq!(s.kept_initialize_bytes(), 200);
    // Using "a" makes "b" the least recently used: its initialize goes to make room for "c"'s.
    let (mut ex, _) = s.begin(&call(LIST, Some("a")));
    s.handle(&mut ex, answer(LISTED, None));
    initialize_with(&mut s, &body, Some("c"), "C");
    assert_eq!((s.renewable("a"), s.renewable("b"), s.renewable("c")), (true, false, true));
    assert_eq!(s.kept_initialize_bytes(), 200);
    // "b" still works as a session: its headers are sent as before.
    assert_eq!(s.headers("b").session_id.as_deref(), Some("B"));
    // One larger than the whole budget is not kept, and takes nothing from the others.
    initialize_with(&mut s, &init_of(251), Some("d"), "D");
    assert_eq!((s.renewable("a"), s.renewable("c"), s.renewable("d")), (true, true, false));
    assert_eq!(s.kept_initialize_bytes(), 200);
    // A client that initializes again gets its place back; ending sessions frees their bytes.
    initialize_with(&mut s, &body, Some("b"), "B2");
    assert!(s.renewable("b"));
    assert_eq!(s.kept_initialize_bytes(), 200);
    s.end("b");
    assert_eq!(s.kept_initialize_bytes(), 100);
    s.end_all();
    assert_eq!(s.kept_initialize_bytes(), 0);
    // A budget of 0 keeps none.
    let mut s = McpSessions::new(8, 0);
    initialize(&mut s, Some("a"), "A");
    assert!(!s.renewable("a"));
    assert_eq!(s.kept_initialize_bytes(), 0);
}

#[test]
fn a_lost_session_without_its_initialize_is_forgotten_and_its_caller_told_the_session_is_gone() {
    let mut s = McpSessions::new(8, 0);
    initialize(&mut s, Some("a"), "A");
    let (mut ex, step) = s.begin(&call(LIST, Some("a")));
    assert_eq!(post(&step).1.session_id.as_deref(), Some("A"));
    assert_eq!(done(s.handle(&mut ex, PostResult::NotFound)), "session lost");
    // Forgotten, and ended upstream in case the server still knows it.
    assert_eq!(s.headers("a"), SessionHeaders::default());
    assert_eq!(s.take_ended().into_iter().map(|h| h.session_id).collect::<Vec<_>>(), [Some("A".to_owned())]);
    // The caller's own new initialize starts afresh and works.
    initialize(&mut s, Some("a"), "A2");
    assert_eq!(s.headers("a").session_id.as_deref(), Some("A2"));
    // A late loss of the old session does not forget the session that replaced it.
    let (mut stale, _) = s.begin(&call(LIST, Some("a")));
    initialize(&mut s, Some("a"), "A3");
    assert!(s.take_ended().iter().any(|h| h.session_id.as_deref() == Some("A2")));
    assert_eq!(done(s.handle(&mut stale, PostResult::NotFound)), "session lost");
    assert_eq!(s.headers("a").session_id.as_deref(), Some("A3"));
    assert!(s.take_ended().is_empty());
}

#[test]
fn a_renewal_keeps_the_initialize_it_replays_even_if_the_budget_let_it_go_meanwhile() {
    let body = init_of(100);
    let mut s = McpSessions::new(8, 150);
    initialize_with(&mut s, &body, Some("a"), "A");
    let (mut ex, _) = s.begin(&call(LIST, Some("a")));
    assert_eq!(post(&s.handle(&mut ex, PostResult::NotFound)).0, PostBody::Initialize(body.clone()));
    // While the renewal is under way, another session's initialize takes the budget.
    initialize_with(&mut s, &body, Some("b"), "B");
    assert!(!s.renewable("a"));
    let (next, headers) = post(&s.handle(&mut ex, answer(INIT_OK, Some("A2"))));
    assert_eq!((next, headers.session_id.as_deref()), (PostBody::Initialized, Some("A2")));
    // The renewed session keeps what it replayed (it is the most recent now), within the budget.
    assert!(s.renewable("a"));
    assert!(!s.renewable("b"));
    assert_eq!(s.kept_initialize_bytes(), 100);
    s.handle(&mut ex, PostResult::Answer { reply: McpReply::NoContent, session_id: None });
    assert_eq!(done(s.handle(&mut ex, answer(LISTED, None))), LISTED);
    // And it can be renewed again with the same request.
    let (mut ex, _) = s.begin(&call(LIST, Some("a")));
    assert_eq!(post(&s.handle(&mut ex, PostResult::NotFound)).0, PostBody::Initialize(body));
}

/// One step of a script against the session table.
#[derive(Clone, Debug)]
enum Op {
    /// `key` initializes with a body of this many bytes.
    Initialize(u8, u16),
    /// `key` makes a call that is answered.
    Use(u8),
    /// `key` makes a call, and the local server has lost its session: renewed when it can be.
    Lose(u8),
    /// The gateway ends `key`.
    End(u8),
    EndAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6u8, 66..400u16).prop_map(|(k, n)| Op::Initialize(k, n)),
        3 => (0..6u8).prop_map(Op::Use),
        3 => (0..6u8).prop_map(Op::Lose),
        1 => (0..6u8).prop_map(Op::End),
        1 => Just(Op::EndAll),
    ]
}

/// The reference: sessions in order of use (least recent first), each with its id and the length of its kept
/// `initialize`, if any.
#[derive(Default)]
struct Model {
    max: usize,
    budget: usize,
    sessions: Vec<(String, String, Option<usize>)>,
}

impl Model {
    fn take(&mut self, key: &str) -> Option<(String, String, Option<usize>)> {
        let at = self.sessions.iter().position(|(k, _, _)| k == key)?;
        Some(self.sessions.remove(at))
    }

    fn get(&self, key: &str) -> Option<&(String, String, Option<usize>)> {
        self.sessions.iter().find(|(k, _, _)| k == key)
    }

    fn touch(&mut self, key: &str) {
        if let Some(session) = self.take(key) {
            self.sessions.push(session);
        }
    }

    fn bytes(&self) -> usize {
        self.sessions.iter().filter_map(|(_, _, kept)| *kept).sum()
    }

    /// `key` initialized (or was renewed) as `id` with an `initialize` of `len` bytes.
    fn remember(&mut self, key: &str, id: String, len: usize) {
        self.take(key);
        let kept = (len <= self.budget).then_some(len);
        if kept.is_some() {
            let mut bytes = self.bytes();
            for (_, _, k) in &mut self.sessions {
                if bytes + len <= self.budget {
                    break;
                }
                bytes -= k.take().unwrap_or(0);
            }
        }
        self.sessions.push((key.to_owned(), id, kept));
        while self.sessions.len() > self.max {
            self.sessions.remove(0);
        }
    }
}

fn run(max: usize, budget: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut s = McpSessions::new(max, budget);
    let mut m = Model { max, budget, sessions: Vec::new() };
    let mut ids = 0;
    let mut fresh = || {
        ids += 1;
        format!("S{ids}")
    };
    for op in ops {
        match *op {
            Op::Initialize(k, n) => {
                let (key, id, body) = (format!("k{k}"), fresh(), init_of(usize::from(n)));
                initialize_with(&mut s, &body, Some(&key), &id);
                m.remember(&key, id, body.len());
            }
            Op::Use(k) => {
                let key = format!("k{k}");
                let (mut ex, _) = s.begin(&call(LIST, Some(&key)));
                prop_assert_eq!(done(s.handle(&mut ex, answer(LISTED, None))), LISTED);
                m.touch(&key);
            }
            Op::Lose(k) => {
                let key = format!("k{k}");
                let (mut ex, step) = s.begin(&call(LIST, Some(&key)));
                prop_assert_eq!(post(&step).1.session_id, m.get(&key).map(|(_, id, _)| id.clone()));
                let step = s.handle(&mut ex, PostResult::NotFound);
                match m.get(&key).map(|(_, _, kept)| *kept) {
                    None => prop_assert!(done(step).contains("HTTP 404"), "no session was sent: an error"),
                    Some(None) => {
                        prop_assert_eq!(done(step), "session lost");
                        m.take(&key);
                    }
                    Some(Some(len)) => {
                        let PostBody::Initialize(init) = post(&step).0 else {
                            return Err(TestCaseError::fail("a kept initialize is replayed"));
                        };
                        prop_assert_eq!(init.len(), len);
                        let id = fresh();
                        prop_assert_eq!(post(&s.handle(&mut ex, answer(INIT_OK, Some(&id)))).0, PostBody::Initialized);
                        m.remember(&key, id, len);
                        let accepted = PostResult::Answer { reply: McpReply::NoContent, session_id: None };
                        prop_assert_eq!(post(&s.handle(&mut ex, accepted)).0, PostBody::Call);
                        prop_assert_eq!(done(s.handle(&mut ex, answer(LISTED, None))), LISTED);
                    }
                }
            }
            Op::End(k) => {
                s.end(&format!("k{k}"));
                m.take(&format!("k{k}"));
            }
            Op::EndAll => {
                s.end_all();
                m.sessions.clear();
            }
        }
        s.take_ended();
        prop_assert!(s.kept_initialize_bytes() <= budget);
        prop_assert_eq!(s.kept_initialize_bytes(), m.bytes());
        prop_assert_eq!(s.len(), m.sessions.len());
        for k in 0..6 {
            let key = format!("k{k}");
            prop_assert_eq!(s.headers(&key).session_id, m.get(&key).map(|(_, id, _)| id.clone()), "{}", key);
            prop_assert_eq!(s.renewable(&key), m.get(&key).is_some_and(|(_, _, kept)| kept.is_some()), "{}", key);
        }
    }
    Ok(())
}

proptest! {
    /// Any script of initializations (of any size), calls, losses and ends: the table keeps what the model
    /// keeps, the kept `initialize` requests never exceed the budget, and a lost session is renewed exactly
    /// when its `initialize` is kept.
    #[test]
    fn the_kept_initialize_requests_follow_the_model_and_stay_within_the_budget(
        max in 1..5usize,
        budget in 0..1200usize,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(max, budget, &ops)?;
    }
}

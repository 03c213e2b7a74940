//! The sled's policy for its sessions with the local MCP server (Streamable HTTP), as a pure machine.
//!
//! The adapter makes the HTTP requests; this decides which ones, with which headers, and what their answers
//! mean:
//!
//! - **One local session per gateway session.** An [`McpCall`]'s `session` (none counts as one more) names
//!   the caller's session at the gateway; each keeps its own `Mcp-Session-Id` and `MCP-Protocol-Version`,
//!   learnt from the answer to its `initialize`.
//! - **An `initialize` starts afresh**: it is sent without a session id, and its answer replaces what the
//!   session knew. The request itself is kept, to renew the session with, within a byte budget (below).
//! - **A lost session is renewed once.** A `404` without a JSON-RPC answer, to a request that carried a
//!   session id, means the local server forgot the session (it restarted). The kept `initialize` is sent
//!   again, then `notifications/initialized` in the new session, then the request once more. A second loss
//!   right after is an error.
//! - **A lost session with no `initialize` kept is gone**: it is forgotten (and ended upstream), and the
//!   call is answered [`McpReply::SessionLost`], which the sled sends as the JSON-RPC error
//!   [`jsonrpc::SESSION_NOT_FOUND`]; the gateway answers its client `404`, as for any unknown session, and
//!   an MCP client then initializes a new session itself.
//! - **Bounded.** At most [`McpSessions::new`]'s `max_sessions` sessions are kept; beyond, the least recently
//!   used is forgotten, and ended upstream: [`McpSessions::take_ended`] gives the sessions to `DELETE`, as
//!   [`McpSessions::end`] (the gateway ended the session) and [`McpSessions::end_all`] (shutdown) do. The
//!   kept `initialize` requests of all sessions together hold at most `max_initialize_bytes`
//!   ([`McpSessions::kept_initialize_bytes`]): to keep a new one, those of the least recently used sessions
//!   are let go first (their sessions stay, but can no longer be renewed); one larger than the whole budget
//!   is not kept at all.
//! - **A stream that ends early is resumed** ([`resume_after`]): when an event stream ends before the answer
//!   and the server gave its events ids, the client waits the server's `retry` (bounded) and resumes with a
//!   `GET` carrying `Last-Event-ID`, at most [`MAX_RESUMES`] times in a row.
//!
//! ```text
//! begin ─▶ Calling ──answer──────────────────────────────────────────────▶ Done(answer)
//!            │ 404 with a session id, initialize known      (none kept: forgotten, Done(SessionLost))
//!            ▼
//!       Reinitializing ──answer──▶ Confirming ──accepted──▶ Retrying ──answer──▶ Done(answer)
//!            └── anything else: Done(error) ┘      └── anything else: Done(error) ┘
//! ```
//!
//! Every other failure becomes [`McpReply::Failed`], which the sled machine turns into a JSON-RPC error
//! carrying the request's own id.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use super::inputs::McpReply;
use super::outputs::McpCall;
use crate::jsonrpc;

/// The notification that confirms a (re-)initialized session.
pub const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// Default of [`McpSessions::new`]'s `max_sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 256;

/// Default of [`McpSessions::new`]'s `max_initialize_bytes` (and of the sled's
/// `SledConfig::max_mcp_initialize_bytes`): 1 MiB, room for the 256 sessions' `initialize` requests at 4 KiB
/// each (an ordinary one is a few hundred bytes).
pub const DEFAULT_MAX_INITIALIZE_BYTES: usize = 1 << 20;

/// Most resumptions of one stream in a row without a message between them.
pub const MAX_RESUMES: u32 = 5;

/// The wait before resuming when the server named none.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// The longest wait before resuming, whatever the server asks.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// Whether, and after how long, to resume a stream that ended before its answer: only when the server gave
/// an event id to resume from, for at most [`MAX_RESUMES`] `attempts` in a row; after the server's `retry`
/// (milliseconds) capped at [`MAX_RETRY`], or [`DEFAULT_RETRY`].
pub fn resume_after(last_event_id: Option<&str>, retry_ms: Option<u64>, attempts: u32) -> Option<Duration> {
    last_event_id?;
    if attempts >= MAX_RESUMES {
        return None;
    }
    Some(retry_ms.map_or(DEFAULT_RETRY, |ms| Duration::from_millis(ms).min(MAX_RETRY)))
}

/// The session headers of one POST.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionHeaders {
    /// `Mcp-Session-Id`.
    pub session_id: Option<String>,
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<String>,
}

/// Which body to POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostBody {
    /// The call's own body.
    Call,
    /// The session's kept `initialize` request, to renew it.
    Initialize(String),
    /// [`INITIALIZED`].
    Initialized,
}

/// What to do next for one call.
#[derive(Clone, Debug)]
pub enum Step {
    /// POST this body with these headers, then report with [`McpSessions::handle`].
    Post {
        /// The body.
        body: PostBody,
        /// The session headers.
        headers: SessionHeaders,
    },
    /// The call is over: this is its answer.
    Done(McpReply),
}

/// What one POST gave, as the adapter read it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum PostResult {
    /// An answer (a JSON-RPC response, or none for a notification), with the `Mcp-Session-Id` the server
    /// returned, if any.
    Answer {
        /// The answer.
        reply: McpReply,
        /// The server's `Mcp-Session-Id`.
        session_id: Option<String>,
    },
    /// `404` with no JSON-RPC answer in the body.
    NotFound,
    /// Anything else that went wrong (transport, status, body), described.
    Failed(String),
}

#[derive(Clone, Debug, Default)]
struct Session {
    headers: SessionHeaders,
    /// The `initialize` to renew the session with, while the budget keeps it.
    initialize: Option<String>,
    last_use: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Stage {
    Calling,
    Reinitializing,
    Confirming,
    Retrying,
    Done,
}

/// A POST's result as the policy reads it: with the `protocolVersion` of an answer to an `initialize`, read
/// by [`Exchange::read`].
#[derive(Clone, Debug)]
pub struct Read {
    result: PostResult,
    protocol_version: Option<String>,
}

impl Exchange {
    /// Reads what the policy needs of `result` for this exchange (the only JSON it reads: the protocol
    /// version of an answer to an `initialize`). Touches no shared state.
    pub fn read(&self, result: PostResult) -> Read {
        let initializing = match self.stage {
            Stage::Calling => self.initialize.is_some(),
            Stage::Reinitializing => true,
            _ => false,
        };
        let protocol_version = match &result {
            PostResult::Answer { reply: McpReply::Response(raw), .. } if initializing => {
                jsonrpc::protocol_version(raw.get())
            }
            _ => None,
        };
        Read { result, protocol_version }
    }
}

/// One call's way through the policy. Made by [`McpSessions::begin`], advanced by [`McpSessions::handle`].
#[derive(Clone, Debug)]
pub struct Exchange {
    key: String,
    /// The `initialize` this exchange may keep for its session: the call's body for an `initialize`, the
    /// replayed one while renewing.
    initialize: Option<String>,
    /// The session id the last POST carried.
    sent_session: Option<String>,
    stage: Stage,
}

/// The sled's local MCP sessions. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct McpSessions {
    max: usize,
    /// The budget of the kept `initialize` requests, in bytes.
    max_initialize: usize,
    /// Bytes of the kept `initialize` requests: the sum of their lengths, at most `max_initialize`.
    initialize_bytes: usize,
    sessions: BTreeMap<String, Session>,
    /// Sessions by last use, least recent first.
    by_use: BTreeMap<u64, String>,
    uses: u64,
    /// Local sessions forgotten and not yet ended upstream.
    ended: Vec<SessionHeaders>,
}

impl McpSessions {
    /// No sessions yet; at most `max_sessions` (at least one) kept, whose kept `initialize` requests hold at
    /// most `max_initialize_bytes` together (0 keeps none: no session is renewed).
    pub fn new(max_sessions: usize, max_initialize_bytes: usize) -> McpSessions {
        McpSessions {
            max: max_sessions.max(1),
            max_initialize: max_initialize_bytes,
            initialize_bytes: 0,
            sessions: BTreeMap::new(),
            by_use: BTreeMap::new(),
            uses: 0,
            ended: Vec::new(),
        }
    }

    /// The gateway ended the session `key`: it is forgotten, and ended upstream ([`McpSessions::take_ended`]).
    pub fn end(&mut self, key: &str) {
        if let Some(old) = self.forget(key) {
            self.retire(old.headers);
        }
    }

    /// Shutdown: every session is forgotten and ended upstream.
    pub fn end_all(&mut self) {
        self.by_use.clear();
        self.initialize_bytes = 0;
        for (_, old) in core::mem::take(&mut self.sessions) {
            self.retire(old.headers);
        }
    }

    /// Removes `key`'s session from the table and its accounts; returns it.
    fn forget(&mut self, key: &str) -> Option<Session> {
        let old = self.sessions.remove(key)?;
        self.by_use.remove(&old.last_use);
        self.initialize_bytes -= old.initialize.as_ref().map_or(0, String::len);
        Some(old)
    }

    /// The local sessions to end (`DELETE` with their `Mcp-Session-Id`) since the last call: forgotten beyond
    /// the bound, ended by the gateway, or at shutdown. Only sessions the server named are listed.
    pub fn take_ended(&mut self) -> Vec<SessionHeaders> {
        core::mem::take(&mut self.ended)
    }

    fn retire(&mut self, headers: SessionHeaders) {
        // Bounded with the table: each forgotten session is listed once, until taken.
        if headers.session_id.is_some() && self.ended.len() < self.max {
            self.ended.push(headers);
        }
    }

    /// Sessions kept.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is kept.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The headers `key`'s session sends now (for tests and logs).
    pub fn headers(&self, key: &str) -> SessionHeaders {
        self.sessions.get(key).map(|s| s.headers.clone()).unwrap_or_default()
    }

    /// Whether `key`'s session keeps its `initialize`, so that it can be renewed if the local server loses it.
    pub fn renewable(&self, key: &str) -> bool {
        self.sessions.get(key).is_some_and(|s| s.initialize.is_some())
    }

    /// Bytes held by the kept `initialize` requests of all sessions (the sum of their lengths): never more
    /// than [`McpSessions::new`]'s `max_initialize_bytes`.
    pub fn kept_initialize_bytes(&self) -> usize {
        self.initialize_bytes
    }

    /// Starts `call`: its first POST.
    pub fn begin(&mut self, call: &McpCall) -> (Exchange, Step) {
        let key = call.session.clone().unwrap_or_default();
        let headers = if call.is_initialize { SessionHeaders::default() } else { self.touch(&key) };
        let exchange = Exchange {
            key,
            initialize: call.is_initialize.then(|| call.body.clone()),
            sent_session: headers.session_id.clone(),
            stage: Stage::Calling,
        };
        (exchange, Step::Post { body: PostBody::Call, headers })
    }

    /// What the last POST of `exchange` gave; returns the next step. After [`Step::Done`], further results
    /// are answered with an error and change nothing. The same as [`Exchange::read`], then
    /// [`McpSessions::handle_read`].
    pub fn handle(&mut self, exchange: &mut Exchange, result: PostResult) -> Step {
        let read = exchange.read(result);
        self.handle_read(exchange, read)
    }

    /// As [`McpSessions::handle`], with the result already read ([`Exchange::read`]): an adapter that shares
    /// the sessions behind a lock reads outside it, so that no JSON is read while the lock is held.
    pub fn handle_read(&mut self, exchange: &mut Exchange, read: Read) -> Step {
        let Read { result, protocol_version } = read;
        let fail = |ex: &mut Exchange, message: String| {
            ex.stage = Stage::Done;
            Step::Done(McpReply::Failed(message))
        };
        let lost = matches!(result, PostResult::NotFound) && exchange.sent_session.is_some();
        match (exchange.stage, result) {
            (Stage::Done, _) => Step::Done(McpReply::Failed("the exchange is already over".into())),
            (_, PostResult::Failed(e)) => fail(exchange, e),
            (Stage::Calling, PostResult::Answer { reply, session_id }) => {
                if let Some(init) = exchange.initialize.take() {
                    self.remember(&exchange.key, init, protocol_version, session_id);
                }
                exchange.stage = Stage::Done;
                Step::Done(reply)
            }
            (Stage::Calling, PostResult::NotFound) if lost => {
                match self.sessions.get(&exchange.key).and_then(|s| s.initialize.clone()) {
                    Some(init) => {
                        exchange.stage = Stage::Reinitializing;
                        exchange.sent_session = None;
                        // Carried by the exchange: the budget may let the session's own copy go meanwhile.
                        exchange.initialize = Some(init.clone());
                        Step::Post { body: PostBody::Initialize(init), headers: SessionHeaders::default() }
                    }
                    None => {
                        // Nothing to renew it with: the session is gone. Forgotten (unless it changed since,
                        // renewed or initialized by another call), so that the next `initialize` starts
                        // afresh; the caller is told as if it were unknown.
                        let current = self.sessions.get(&exchange.key).map(|s| &s.headers.session_id);
                        if current == Some(&exchange.sent_session) {
                            self.end(&exchange.key);
                        }
                        exchange.stage = Stage::Done;
                        Step::Done(McpReply::SessionLost)
                    }
                }
            }
            (Stage::Reinitializing, PostResult::Answer { reply: McpReply::Response(_), session_id }) => {
                let init = exchange.initialize.take().unwrap_or_default();
                self.remember(&exchange.key, init, protocol_version, session_id);
                let headers = self.touch(&exchange.key);
                exchange.sent_session = headers.session_id.clone();
                exchange.stage = Stage::Confirming;
                Step::Post { body: PostBody::Initialized, headers }
            }
            (Stage::Reinitializing, PostResult::Answer { reply: McpReply::Failed(e), .. }) => {
                fail(exchange, format!("re-initializing: {e}"))
            }
            (Stage::Reinitializing, _) => fail(exchange, "re-initializing the local MCP session failed".into()),
            (Stage::Confirming, PostResult::Answer { reply: McpReply::Failed(e), .. }) => {
                fail(exchange, format!("confirming re-initialization: {e}"))
            }
            (Stage::Confirming, PostResult::Answer { .. }) => {
                let headers = self.touch(&exchange.key);
                exchange.sent_session = headers.session_id.clone();
                exchange.stage = Stage::Retrying;
                Step::Post { body: PostBody::Call, headers }
            }
            (Stage::Confirming, PostResult::NotFound) => {
                fail(exchange, "local MCP server refused its new session".into())
            }
            (Stage::Retrying, PostResult::Answer { reply, .. }) => {
                exchange.stage = Stage::Done;
                Step::Done(reply)
            }
            (Stage::Retrying, PostResult::NotFound) if lost => {
                fail(exchange, "local MCP session lost again right after re-initializing".into())
            }
            (_, PostResult::NotFound) => fail(exchange, "local MCP endpoint answered HTTP 404 Not Found".into()),
        }
    }

    /// The headers of `key`'s session, marking it used.
    fn touch(&mut self, key: &str) -> SessionHeaders {
        let Some(session) = self.sessions.get_mut(key) else { return SessionHeaders::default() };
        self.by_use.remove(&session.last_use);
        self.uses += 1;
        session.last_use = self.uses;
        self.by_use.insert(self.uses, String::from(key));
        session.headers.clone()
    }

    /// An `initialize` (`init`) was answered with `reply` and `session_id`: that is `key`'s session now.
    fn remember(&mut self, key: &str, init: String, protocol_version: Option<String>, session_id: Option<String>) {
        if let Some(old) = self.forget(key) {
            // Renewed under a new id: the old local session is ended.
            if old.headers.session_id != session_id {
                self.retire(old.headers);
            }
        }
        let initialize = self.keep(init);
        self.uses += 1;
        let session =
            Session { headers: SessionHeaders { session_id, protocol_version }, initialize, last_use: self.uses };
        self.sessions.insert(String::from(key), session);
        self.by_use.insert(self.uses, String::from(key));
        while self.sessions.len() > self.max {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some(old) = self.forget(&oldest) {
                self.retire(old.headers);
            }
        }
    }

    /// Makes room for `init` within the budget, letting go of the kept `initialize` of the least recently
    /// used sessions first, and counts it; `None` (nothing let go) when it alone exceeds the budget.
    fn keep(&mut self, init: String) -> Option<String> {
        if init.len() > self.max_initialize {
            return None;
        }
        let McpSessions { sessions, by_use, initialize_bytes, max_initialize, .. } = self;
        for key in by_use.values() {
            if *initialize_bytes + init.len() <= *max_initialize {
                break;
            }
            if let Some(dropped) = sessions.get_mut(key).and_then(|s| s.initialize.take()) {
                *initialize_bytes -= dropped.len();
            }
        }
        *initialize_bytes += init.len();
        Some(init)
    }
}

impl Default for McpSessions {
    fn default() -> Self {
        McpSessions::new(DEFAULT_MAX_SESSIONS, DEFAULT_MAX_INITIALIZE_BYTES)
    }
}

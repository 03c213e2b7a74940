//! The sled's MCP relay: the gateway's `mcp_request`s and `mcp_listen`s carried out against the local MCP
//! endpoint, a sub-machine of the [`Sled`](crate::sled::Sled) with its own deadlines.
//!
//! - **Calls** (`mcp_request`): at most [`SledConfig::max_mcp_calls`] run at once; more wait in arrival order
//!   in a bounded queue ([`SledConfig::max_mcp_waiting`] requests, [`SledConfig::max_mcp_waiting_bytes`] of
//!   bodies), their deadline running from arrival; beyond, the call is answered at once with an error. Each
//!   call ends exactly once: its answer, its deadline ([`SledConfig::mcp_timeout`]), the gateway's
//!   `mcp_cancel`, or the link's end. A started call that is stopped is cancelled upstream
//!   (`notifications/cancelled`, never for an `initialize`).
//! - **Standalone streams** (`mcp_listen`): at most [`SledConfig::max_mcp_streams`]; no deadline; each ends
//!   with its `mcp_response` (`null` when it simply closed).
//! - **A session's order**: a call of a session whose stream's `mcp_listen` came first waits (in the queue
//!   of calls, its deadline running) until that stream is open at the local server, or ended, or for
//!   [`SledConfig::mcp_stream_open_wait`] at most: the server then has the stream on which to send its own
//!   requests when the call runs, as when the client talks to it directly. Calls of other sessions pass.
//! - **Messages** from the local server within an exchange are relayed as `mcp_message` when the gateway
//!   takes the exchange as a stream; otherwise a request among them is answered at once with an error.
//!
//! ```text
//!  mcp_request ─┬─ a slot free ─────────────▶ Calling ──answer / deadline / mcp_cancel──▶ ended (one mcp_response)
//!               ├─ queue has room ─▶ Waiting ──slot frees, its session's stream open──┘
//!               │                        (deadline, mcp_cancel: ended, never sent)
//!               └─ queue full, duplicate id, bad body ──▶ answered at once with an error
//!  link lost: every call and stream is abandoned (cancelled upstream), no answer
//! ```
//!
//! It speaks only on the live connection the sled hands it ([`Effects`]); it exists for calls on one
//! connection at a time, since the sled abandons everything when its link ends.

use alloc::borrow::{Cow, ToOwned};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::config::SledConfig;
use super::inputs::{McpReply, SESSION_LOST};
use super::outputs::{Event, Ignored, McpCall, McpListen, Output, Stats};
use crate::ids::{ConnId, McpCallId};
use crate::jsonrpc::{self, BodyId};
use crate::pending::{Pending, PendingTable};
use crate::time::Instant;
use crate::wire::{self, RawValue, SledFrame};

/// Where the relay's work goes: the sled's outputs and counters, and the live connection (none while the
/// link is down: nothing is sent then).
pub(super) struct Effects<'a> {
    /// The sled's output queue.
    pub(super) out: &'a mut VecDeque<Output>,
    /// The sled's counters.
    pub(super) stats: &'a mut Stats,
    /// The live connection.
    pub(super) conn: Option<ConnId>,
}

impl Effects<'_> {
    fn send(&mut self, text: String) {
        if let Some(conn) = self.conn {
            self.stats.frames_sent += 1;
            self.out.push_back(Output::Send { conn, text });
        }
    }

    fn respond(&mut self, req_id: &str, payload: &RawValue) {
        self.send(SledFrame::McpResponse { req_id: Cow::Borrowed(req_id), payload }.encode());
    }

    fn ignored(&mut self, why: Ignored) {
        self.out.push_back(Output::Event(Event::FrameIgnored(why)));
    }
}

/// One `mcp_request` in flight: waiting for a slot, then calling.
#[derive(Clone, Debug)]
struct Call {
    req_id: String,
    jsonrpc_id: Option<Box<RawValue>>,
    session: Option<String>,
    /// The gateway takes the exchange as a stream.
    stream: bool,
    /// An `initialize`: never cancelled upstream (the MCP specification forbids it).
    is_initialize: bool,
    /// While it waits for a free slot: what to call then. `None` once started.
    waiting: Option<Box<McpCall>>,
}

/// One standalone stream (`mcp_listen`) in flight.
#[derive(Clone, Debug)]
struct Listen {
    req_id: String,
    session: Option<String>,
    /// While the local stream is opening: until when its session's calls wait for it.
    opening_until: Option<Instant>,
}

/// The relay's limits, from the sled's configuration.
#[derive(Clone, Debug)]
struct Limits {
    calls: usize,
    waiting: usize,
    waiting_bytes: usize,
    streams: usize,
    frame_bytes: usize,
    timeout_ms: u128,
    open_wait: core::time::Duration,
}

/// Every MCP exchange of the sled. See the [module docs](self).
#[derive(Clone, Debug)]
pub(super) struct McpRelay {
    limits: Limits,
    /// `mcp_request`s in flight (calling or waiting), by their `req_id` too, in arrival (and deadline) order.
    calls: PendingTable<McpCallId, Call>,
    /// Calls started and not ended: at most `limits.calls`.
    running: usize,
    /// Calls waiting for a slot, in arrival order, and the bytes of their bodies.
    waiting: VecDeque<McpCallId>,
    waiting_bytes: usize,
    /// Standalone streams open, by their `req_id` too. No deadline.
    streams: PendingTable<McpCallId, Listen>,
    /// Streams still opening, whose session's calls wait for them.
    opening: usize,
    /// The last [`McpCallId`] given, to calls and streams alike.
    next_call: u64,
}

impl McpRelay {
    /// Nothing in flight, within `cfg`'s limits.
    pub(super) fn new(cfg: &SledConfig) -> McpRelay {
        McpRelay {
            limits: Limits {
                calls: cfg.max_mcp_calls,
                waiting: cfg.max_mcp_waiting,
                waiting_bytes: cfg.max_mcp_waiting_bytes,
                streams: cfg.max_mcp_streams,
                frame_bytes: cfg.max_frame_bytes,
                timeout_ms: cfg.mcp_timeout.as_millis(),
                open_wait: cfg.mcp_stream_open_wait,
            },
            calls: PendingTable::new(Some(cfg.mcp_timeout)),
            running: 0,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            streams: PendingTable::new(None),
            opening: 0,
            next_call: 0,
        }
    }

    /// Calls started and not ended.
    pub(super) fn in_flight(&self) -> usize {
        self.running
    }

    /// Calls waiting for a slot.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Standalone streams open.
    pub(super) fn streams_open(&self) -> usize {
        self.streams.len()
    }

    /// The earliest deadline of a call, or of a wait for a stream to open.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let opening =
            (self.opening > 0).then(|| self.streams.iter().filter_map(|(_, l)| l.value.opening_until).min()).flatten();
        match (self.calls.poll_timeout(), opening) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the calls whose deadline is due at `now` with an error, stops waiting for streams that did not
    /// open in time, then starts waiting calls.
    pub(super) fn handle_timeout(&mut self, now: Instant, fx: &mut Effects<'_>) {
        if self.opening > 0 {
            for l in self.streams.values_mut() {
                if l.opening_until.is_some_and(|until| until <= now) {
                    l.opening_until = None;
                    self.opening -= 1;
                }
            }
        }
        while let Some((call, Pending { value: c, .. })) = self.calls.pop_expired(now) {
            self.released(call, &c);
            let message = format!("local MCP call timed out after {} ms", self.limits.timeout_ms);
            let payload = jsonrpc::error_response(c.jsonrpc_id.as_deref(), jsonrpc::INTERNAL_ERROR, &message);
            fx.respond(&c.req_id, &payload);
            abandon(call, &c, "timeout", fx);
        }
        self.start_waiting(fx);
    }

    /// An `mcp_request` arrived at `now`.
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        req_id: Cow<'_, str>,
        body: Option<Cow<'_, str>>,
        session: Option<Cow<'_, str>>,
        stream: bool,
        fx: &mut Effects<'_>,
    ) {
        let reject = |fx: &mut Effects<'_>, id: Option<&RawValue>, code: i32, message: &str| {
            fx.stats.mcp_rejected += 1;
            let payload = jsonrpc::error_response(id, code, message);
            fx.respond(&req_id, &payload);
        };
        let Some(body) = body.filter(|b| !b.is_empty()) else {
            return reject(fx, None, jsonrpc::INVALID_REQUEST, "mcp_request payload has no string `body`");
        };
        let probe = jsonrpc::probe(&body);
        let jsonrpc_id = match probe.id {
            BodyId::NotJson => {
                return reject(fx, None, jsonrpc::PARSE_ERROR, "mcp_request body is not valid JSON");
            }
            BodyId::Id(id) => Some(id),
            BodyId::NoId => None,
        };
        if self.calls.contains_wire(&req_id) || self.streams.contains_wire(&req_id) {
            // Answered at once, so that every `mcp_request` still gets its one answer; the one in flight
            // keeps the id (and is the one an `mcp_cancel` names).
            fx.ignored(Ignored::DuplicateExchange);
            let message = "an MCP exchange with this req_id is already in flight";
            return reject(fx, jsonrpc_id, jsonrpc::INVALID_REQUEST, message);
        }
        let session = session.map(Cow::into_owned);
        let queue_full =
            self.waiting.len() >= self.limits.waiting || self.waiting_bytes + body.len() > self.limits.waiting_bytes;
        // A call follows its session's opening stream while the queue has room for it; with none, it goes
        // ahead as though no stream were opening.
        let behind_stream = !queue_full && self.stream_opening(session.as_deref());
        // Whenever a slot is free, no waiting call can start (each change that could let one start starts
        // it), so a slot free is the call's to take unless it follows its session's stream.
        let free = self.running < self.limits.calls && !behind_stream;
        if !free && queue_full {
            let message =
                format!("sled busy: {} local MCP calls in flight and {} waiting", self.running, self.waiting.len());
            return reject(fx, jsonrpc_id, jsonrpc::INTERNAL_ERROR, &message);
        }
        self.next_call += 1;
        let call = McpCallId(self.next_call);
        let jsonrpc_id: Option<Box<RawValue>> = jsonrpc_id.map(ToOwned::to_owned);
        let is_initialize = probe.is_initialize;
        let mcp = McpCall {
            call,
            body: body.into_owned(),
            session: session.clone(),
            jsonrpc_id: jsonrpc_id.clone(),
            is_initialize,
        };
        let mut c = Call { req_id: req_id.into_owned(), jsonrpc_id, session, stream, is_initialize, waiting: None };
        if free {
            self.running += 1;
            fx.out.push_back(Output::CallMcp(mcp));
        } else {
            if behind_stream {
                fx.stats.mcp_followed_stream += 1;
            } else {
                fx.stats.mcp_waited += 1;
            }
            self.waiting_bytes += mcp.body.len();
            self.waiting.push_back(call);
            c.waiting = Some(Box::new(mcp));
        }
        let wire = c.req_id.clone();
        self.calls.insert(call, now, wire, c);
    }

    /// An `mcp_listen` arrived at `now`.
    pub(super) fn on_listen(
        &mut self,
        now: Instant,
        req_id: Cow<'_, str>,
        session: Option<Cow<'_, str>>,
        fx: &mut Effects<'_>,
    ) {
        let duplicate = self.calls.contains_wire(&req_id) || self.streams.contains_wire(&req_id);
        if duplicate || self.streams.len() >= self.limits.streams {
            fx.stats.mcp_rejected += 1;
            let message = if duplicate {
                String::from("an MCP exchange with this req_id is already in flight")
            } else {
                format!("sled busy: {} standalone MCP streams already open", self.streams.len())
            };
            let payload = jsonrpc::error_response(None, jsonrpc::INTERNAL_ERROR, &message);
            return fx.respond(&req_id, &payload);
        }
        self.next_call += 1;
        let call = McpCallId(self.next_call);
        let session = session.map(Cow::into_owned);
        fx.out.push_back(Output::ListenMcp(McpListen { call, session: session.clone() }));
        let req_id = req_id.into_owned();
        self.opening += 1;
        let opening_until = Some(now + self.limits.open_wait);
        self.streams.insert(call, now, req_id.clone(), Listen { req_id, session, opening_until });
    }

    /// An `mcp_cancel` for `req_id` arrived; ignored (and reported) when nothing in flight has that id.
    pub(super) fn on_cancel(&mut self, req_id: &str, reason: Option<&str>, fx: &mut Effects<'_>) {
        if let Some((call, Pending { value: c, .. })) = self.calls.take_by_wire_if(req_id, |_| true) {
            fx.stats.mcp_cancelled += 1;
            self.released(call, &c);
            abandon(call, &c, reason.unwrap_or("the caller went away"), fx);
            return self.start_waiting(fx);
        }
        if let Some((call, Pending { value: l, .. })) = self.streams.take_by_wire_if(req_id, |_| true) {
            fx.stats.mcp_cancelled += 1;
            fx.out.push_back(Output::CancelMcp { call });
            return self.stream_gone(&l, fx);
        }
        fx.ignored(Ignored::UnmatchedCancel);
    }

    /// An `mcp_session_end` for `session` arrived: its standalone streams end with it; its calls run to their
    /// answers (the local server may refuse them); the local session is ended.
    pub(super) fn on_session_end(&mut self, session: String, fx: &mut Effects<'_>) {
        let streams: Vec<McpCallId> = self
            .streams
            .iter()
            .filter(|(_, l)| l.value.session.as_deref() == Some(&*session))
            .map(|(k, _)| k)
            .collect();
        for call in streams {
            if let Some(Pending { value: l, .. }) = self.streams.remove(call) {
                fx.out.push_back(Output::CancelMcp { call });
                fx.respond(&l.req_id, wire::json_null());
                self.stream_gone(&l, fx);
            }
        }
        fx.out.push_back(Output::EndMcpSession { session });
    }

    /// The local endpoint sent `message` within `call`, before its end. See
    /// [`Sled::handle_mcp_message`](crate::sled::Sled::handle_mcp_message).
    pub(super) fn handle_message(&mut self, call: McpCallId, message: &RawValue, fx: &mut Effects<'_>) {
        let (req_id, session, stream) = match (self.calls.get(call), self.streams.get(call)) {
            (Some(Pending { value: c, .. }), _) if c.waiting.is_none() => (&c.req_id, &c.session, c.stream),
            (_, Some(Pending { value: l, .. })) => (&l.req_id, &l.session, true),
            _ => {
                fx.stats.late_mcp_replies += 1;
                return;
            }
        };
        let fits = wire::frame_len(wire::kind::MCP_MESSAGE, req_id, message.get().len()) <= self.limits.frame_bytes;
        if let (true, true, Some(_)) = (stream, fits, fx.conn) {
            let text = SledFrame::McpMessage { req_id: Cow::Borrowed(req_id), payload: message }.encode();
            fx.stats.mcp_messages += 1;
            return fx.send(text);
        }
        fx.stats.mcp_messages_dropped += 1;
        let probe = jsonrpc::probe(message.get());
        if let (true, BodyId::Id(id)) = (probe.has_method, probe.id) {
            let why = if stream {
                "the request from the MCP server is larger than the uplink's frame limit"
            } else {
                "the uplink's gateway does not relay requests from the MCP server"
            };
            let body = String::from(jsonrpc::error_response(Some(id), jsonrpc::METHOD_NOT_FOUND, why).get());
            let session = session.clone();
            fx.out.push_back(Output::NotifyMcp { session, body });
        }
    }

    /// The local endpoint opened the standalone stream `call`: the gateway hears of it with an `mcp_message`
    /// whose payload is `null`, and its session's calls that waited for it start.
    pub(super) fn handle_opened(&mut self, call: McpCallId, fx: &mut Effects<'_>) {
        if let Some(Pending { value: l, .. }) = self.streams.get_mut(call) {
            let text = SledFrame::McpMessage { req_id: Cow::Borrowed(&l.req_id), payload: wire::json_null() }.encode();
            fx.send(text);
            if l.opening_until.take().is_some() {
                self.opening -= 1;
                self.start_waiting(fx);
            }
        }
    }

    /// The local endpoint answered `call`, or the stream `call` ended: its one `mcp_response`, unless it
    /// already ended (timed out, cancelled, the link lost).
    pub(super) fn handle_reply(&mut self, call: McpCallId, reply: McpReply, fx: &mut Effects<'_>) {
        if let Some(Pending { value: l, .. }) = self.streams.remove(call) {
            let payload = match reply {
                McpReply::Response(_) | McpReply::NoContent => wire::json_null().to_owned(),
                McpReply::NoStream => jsonrpc::error_response(
                    None,
                    jsonrpc::METHOD_NOT_FOUND,
                    "the local MCP server offers no standalone stream",
                ),
                McpReply::Failed(message) => jsonrpc::error_response(
                    None,
                    jsonrpc::INTERNAL_ERROR,
                    &format!("local MCP stream failed: {message}"),
                ),
                McpReply::SessionLost => jsonrpc::error_response(
                    None,
                    jsonrpc::INTERNAL_ERROR,
                    &format!("local MCP stream failed: {SESSION_LOST}"),
                ),
            };
            fx.respond(&l.req_id, &payload);
            return self.stream_gone(&l, fx);
        }
        let started = self.calls.get(call).is_some_and(|p| p.value.waiting.is_none());
        let Some(c) = started.then(|| self.take_call(call)).flatten() else {
            fx.stats.late_mcp_replies += 1;
            return;
        };
        self.start_waiting(fx);
        let payload = match reply {
            McpReply::Response(raw) => raw,
            McpReply::NoContent => wire::json_null().to_owned(),
            McpReply::NoStream => jsonrpc::error_response(
                c.jsonrpc_id.as_deref(),
                jsonrpc::INTERNAL_ERROR,
                "local MCP call failed: local MCP endpoint answered HTTP 405 Method Not Allowed",
            ),
            McpReply::Failed(message) => jsonrpc::error_response(
                c.jsonrpc_id.as_deref(),
                jsonrpc::INTERNAL_ERROR,
                &format!("local MCP call failed: {message}"),
            ),
            McpReply::SessionLost => {
                jsonrpc::error_response(c.jsonrpc_id.as_deref(), jsonrpc::SESSION_NOT_FOUND, SESSION_LOST)
            }
        };
        if wire::frame_len(wire::kind::MCP_RESPONSE, &c.req_id, payload.get().len()) > self.limits.frame_bytes {
            // The gateway would close the link over it: the caller gets an error with its id instead.
            fx.stats.mcp_too_large += 1;
            let message = format!(
                "the local MCP answer ({} bytes) is larger than the uplink's frame limit ({} bytes)",
                payload.get().len(),
                self.limits.frame_bytes
            );
            let error = jsonrpc::error_response(c.jsonrpc_id.as_deref(), jsonrpc::INTERNAL_ERROR, &message);
            return fx.respond(&c.req_id, &error);
        }
        fx.respond(&c.req_id, &payload);
    }

    /// The sled shuts down: every call is answered with an error and every stream with `null`, on the live
    /// connection (then the sled abandons them all: [`McpRelay::abandon_all`]).
    pub(super) fn answer_all(&mut self, fx: &mut Effects<'_>) {
        let answers: Vec<(String, Box<RawValue>)> = self
            .calls
            .iter()
            .map(|(_, p)| {
                let c = &p.value;
                let e =
                    jsonrpc::error_response(c.jsonrpc_id.as_deref(), jsonrpc::INTERNAL_ERROR, "sled is shutting down");
                (c.req_id.clone(), e)
            })
            .chain(self.streams.iter().map(|(_, p)| (p.value.req_id.clone(), wire::json_null().to_owned())))
            .collect();
        for (req_id, payload) in answers {
            fx.respond(&req_id, &payload);
        }
    }

    /// Abandons every call and stream: the connection they answer on is gone.
    pub(super) fn abandon_all(&mut self, fx: &mut Effects<'_>) {
        for (call, Pending { value: c, .. }) in self.calls.drain() {
            abandon(call, &c, "the uplink to the gateway was lost", fx);
        }
        for (call, _) in self.streams.drain() {
            fx.out.push_back(Output::CancelMcp { call });
        }
        self.opening = 0;
        self.running = 0;
        self.waiting.clear();
        self.waiting_bytes = 0;
    }

    /// `c` (already out of the table) no longer holds a slot or a place in the queue.
    fn released(&mut self, call: McpCallId, c: &Call) {
        match &c.waiting {
            Some(w) => {
                self.waiting_bytes -= w.body.len();
                self.waiting.retain(|k| *k != call);
            }
            None => self.running -= 1,
        }
    }

    /// Takes the call `call` out of the table, releasing its slot or its place in the queue.
    fn take_call(&mut self, call: McpCallId) -> Option<Call> {
        let Pending { value: c, .. } = self.calls.remove(call)?;
        self.released(call, &c);
        Some(c)
    }

    /// Whether a standalone stream of `session` is still opening: its calls wait for it.
    fn stream_opening(&self, session: Option<&str>) -> bool {
        self.opening > 0
            && self
                .streams
                .iter()
                .any(|(_, l)| l.value.opening_until.is_some() && l.value.session.as_deref() == session)
    }

    /// The stream `l` (already out of the table) ended: calls that waited for it to open wait no more.
    fn stream_gone(&mut self, l: &Listen, fx: &mut Effects<'_>) {
        if l.opening_until.is_some() {
            self.opening -= 1;
            self.start_waiting(fx);
        }
    }

    /// Starts waiting calls, oldest first, while slots are free; a call whose session's stream is still
    /// opening stays (and so do the later calls of its session), the others pass it.
    fn start_waiting(&mut self, fx: &mut Effects<'_>) {
        let mut at = 0;
        while self.running < self.limits.calls && at < self.waiting.len() {
            let call = self.waiting[at];
            let Some(c) = self.calls.get(call) else {
                self.waiting.remove(at);
                continue;
            };
            if c.value.waiting.is_none() {
                self.waiting.remove(at);
                continue;
            }
            if self.stream_opening(c.value.session.as_deref()) {
                at += 1;
                continue;
            }
            self.waiting.remove(at);
            let Some(next) = self.calls.get_mut(call).and_then(|c| c.value.waiting.take()) else { continue };
            self.waiting_bytes -= next.body.len();
            self.running += 1;
            fx.out.push_back(Output::CallMcp(*next));
        }
    }
}

/// Stops `c` (already released) upstream: a started call is abandoned, and the local server is told with
/// `notifications/cancelled` unless it is an `initialize` or a notification. A waiting one was never sent.
fn abandon(call: McpCallId, c: &Call, reason: &str, fx: &mut Effects<'_>) {
    if c.waiting.is_some() {
        return;
    }
    fx.out.push_back(Output::CancelMcp { call });
    if let (Some(id), false) = (&c.jsonrpc_id, c.is_initialize) {
        let body = jsonrpc::cancelled(id, reason);
        fx.out.push_back(Output::NotifyMcp { session: c.session.clone(), body });
    }
}

//! The sled machine: the link to the gateway and the permission requests of the sled's agents; the MCP
//! exchanges are its sub-machine's ([`McpRelay`]).
//!
//! The link's states (one `Link` enum; every transition is in this file):
//!
//! ```text
//!            new (enabled)                      shutdown, from any state
//!                 │                                    ▼
//!                 ▼                                 Closed
//!    ┌──────▶ Connecting ──connected──▶ Connected ──┐
//!    │            │  failed, timeout        │ lost, idle timeout, too big
//!    │            ▼                         ▼      │  (what was sent on it is denied)
//!    └──────── BackingOff ◀────────────────────────┘
//!         (jittered delay; reset after a stable connection)
//!
//!    refused (401/403 or 404 at the handshake; closed 4003, 4009 or 4010) ──▶ BackingOff, the cap but for 4009:
//!    every request pending is denied with the refusal, and every new one at once until the next attempt
//!
//!    new (disabled) ──▶ Disabled: every request is denied at once
//! ```
//!
//! Each permission request is queued (while there is no connection), then sent on the live connection, then
//! decided exactly once: by the `perm_response` received on that connection, or denied by its deadline, the
//! connection's loss, a full queue, a bad or duplicate id, or shutdown.
//!
//! With the `resume` extension ([`SledConfig::resume`]) a connection's own state says whether its gateway
//! keeps its requests across a drop:
//!
//! ```text
//!   connected ──▶ Waiting ──resume_accepted──▶ Accepted: a drop keeps what was sent here (Kept), and the
//!                  │                                     next connection sends it again once accepted
//!                  └──any other frame first, or resume_wait──▶ Off: what was kept is denied; a drop denies
//! ```
//!
//! A request's life with it: Queued ──send──▶ Sent ──drop, accepted──▶ Kept ──accepted again──▶ Sent; its
//! deadline never moves, and every other end is as above. A request sent on a connection whose gateway had
//! not accepted, or beyond [`SledConfig::max_resume_bytes`], is denied by a drop as without the extension.

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use super::config::{ConfigError, SledConfig};
use super::inputs::{ConnectError, McpReply};
use super::mcp_relay::{Effects, McpRelay};
use super::outputs::{Cause, Decided, Event, Ignored, LinkState, LossReason, Output, Stats};
use super::refusal::Refusal;
use crate::backoff::{Backoff, SplitMix64};
use crate::ids::{ConnId, McpCallId, PermKey};
use crate::pending::PendingTable;
use crate::time::Instant;
use crate::wire::{self, Decision, GatewayFrame, Identity, RawValue, Received, SledFrame};

#[derive(Clone, Debug)]
enum Link {
    Disabled,
    Connecting { conn: ConnId, deadline: Instant },
    Connected { conn: ConnId, since: Instant, last_rx: Instant, next_heartbeat: Instant, resume: Resume },
    BackingOff { until: Instant, delay: Duration, reason: LossReason },
    Closed,
}

/// Whether the live connection's gateway keeps its requests across a drop (extension `resume`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Resume {
    /// Not offered, refused, or not answered in time: a drop denies what was sent on the connection.
    Off,
    /// Offered in `identity`, not answered yet; with requests kept across the last drop, they are denied
    /// at `until` if no answer came (a connection only ever has fewer kept requests than it started with).
    Waiting { until: Option<Instant> },
    /// The gateway sent `resume_accepted`.
    Accepted,
}

/// What a request asks.
#[derive(Clone, Debug)]
struct Asked {
    tool_name: String,
    tool_input: Box<RawValue>,
}

/// Where a pending permission request is.
#[derive(Clone, Debug)]
enum Stage {
    /// Waiting for a connection.
    Queued(Asked),
    /// Sent on `conn`; what it asks is kept to be sent again when `resume` may carry it over a drop.
    Sent { conn: ConnId, kept: Option<Asked> },
    /// Sent on a connection that dropped after its gateway accepted `resume`: waiting for one that accepts.
    Kept(Asked),
}

impl Stage {
    /// The connection it was sent on; `None` while queued or kept.
    fn sent_on(&self) -> Option<ConnId> {
        match self {
            Stage::Sent { conn, .. } => Some(*conn),
            Stage::Queued(_) | Stage::Kept(_) => None,
        }
    }

    /// What it holds toward the budget of kept requests ([`SledConfig::max_resume_bytes`]).
    fn kept(&self) -> Option<&Asked> {
        match self {
            Stage::Sent { kept, .. } => kept.as_ref(),
            Stage::Kept(asked) => Some(asked),
            Stage::Queued(_) => None,
        }
    }
}

/// The bytes a kept request counts toward [`SledConfig::max_resume_bytes`].
fn kept_size(wire: &str, asked: &Asked) -> usize {
    wire.len() + asked.tool_name.len() + asked.tool_input.get().len()
}

/// The sled's side of the uplink. See the [module](crate::sled) and [crate] docs.
#[derive(Clone, Debug)]
pub struct Sled {
    cfg: SledConfig,
    /// The latest `now` seen: time never runs backwards inside the machine.
    now: Instant,
    link: Link,
    backoff: Backoff,
    identity_text: String,
    next_conn: u64,
    /// The prefix of the wire ids the machine mints, and the last number used.
    id_prefix: String,
    next_id: u64,
    /// Pending permission requests: by key and by wire id, in arrival (and deadline) order.
    perms: PendingTable<PermKey, Stage>,
    /// This process's incarnation (sixteen hex digits from the seed), named in `identity` with `resume`.
    incarnation: String,
    /// Bytes of the requests kept to be sent again ([`SledConfig::max_resume_bytes`]).
    kept_bytes: usize,
    /// The gateway's MCP exchanges with the local endpoint.
    mcp: McpRelay,
    /// The last refusal, until a connection shows it was accepted ([`Event::Standing`]).
    refused: Option<Refusal>,
    out: VecDeque<Output>,
    stats: Stats,
}

const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
/// The close code a gateway restarting sends (service restart).
const CLOSE_SERVICE_RESTART: u16 = 1012;
const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

impl Sled {
    /// Creates the machine. Unless disabled, its first output is a [`Output::Connect`].
    pub fn new(config: SledConfig, now: Instant) -> Result<Sled, ConfigError> {
        config.validate()?;
        // Its own stream of the seed, as the ids' prefix below.
        let incarnation = hex16(SplitMix64::new(config.seed ^ 0x696e_6361_726e_6174).next_u64());
        let mut capabilities: Vec<Cow<'_, str>> = Vec::with_capacity(3 + config.capabilities.len());
        capabilities.push(Cow::Borrowed(wire::kind::PERM_CANCEL));
        capabilities.push(Cow::Borrowed(wire::MCP_STREAM_CAPABILITY));
        if config.resume {
            capabilities.push(Cow::Borrowed(wire::RESUME_CAPABILITY));
        }
        capabilities.extend(config.capabilities.iter().map(|c| Cow::Borrowed(c.as_str())));
        let identity_text = SledFrame::Identity(Identity {
            project: Cow::Borrowed(&config.project),
            protocol: Some(wire::PROTOCOL_VERSION),
            sled_version: config.sled_version.as_deref().map(Cow::Borrowed),
            capabilities,
            permission_timeout_ms: Some(u64::try_from(config.permission_timeout.as_millis()).unwrap_or(u64::MAX)),
            incarnation: config.resume.then_some(Cow::Borrowed(incarnation.as_str())),
        })
        .encode();
        let backoff = Backoff::new(
            config.backoff_initial,
            config.backoff_max,
            config.backoff_multiplier,
            config.backoff_jitter,
            config.seed,
        );
        // Its own stream of the seed (the back-off's first draw is not reused), so ids do not reveal delays.
        let id_prefix = hex8(SplitMix64::new(config.seed ^ 0x6964_735f_7072_6566).next_u64() as u32);
        let perms = PendingTable::new(Some(config.permission_timeout));
        let mcp = McpRelay::new(&config);
        let mut sled = Sled {
            link: if config.enabled { Link::Closed } else { Link::Disabled },
            cfg: config,
            now,
            backoff,
            identity_text,
            next_conn: 0,
            id_prefix,
            next_id: 0,
            perms,
            incarnation,
            kept_bytes: 0,
            mcp,
            refused: None,
            out: VecDeque::new(),
            stats: Stats::default(),
        };
        if sled.cfg.enabled {
            sled.start_connect();
        } else {
            sled.emit_link();
        }
        Ok(sled)
    }

    // ── Getters ──

    /// The configuration the machine was built with.
    pub fn config(&self) -> &SledConfig {
        &self.cfg
    }

    /// The link's current state.
    pub fn link_state(&self) -> LinkState {
        match self.link {
            Link::Disabled => LinkState::Disabled,
            Link::Connecting { conn, .. } => LinkState::Connecting { conn, attempt: self.backoff.attempt() },
            Link::Connected { conn, .. } => LinkState::Connected { conn },
            Link::BackingOff { delay, reason, .. } => LinkState::BackingOff { delay, reason },
            Link::Closed => LinkState::Closed,
        }
    }

    /// The live connection, if any.
    pub fn connection(&self) -> Option<ConnId> {
        match self.link {
            Link::Connected { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// Why the gateway refused this sled, from the refusal until a connection shows it was accepted (the
    /// gateway sent a frame on it, or it lasted [`SledConfig::stability_window`]); see [`Event::Standing`].
    pub fn refusal(&self) -> Option<Refusal> {
        self.refused
    }

    /// Counters since creation.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Permission requests not yet decided (queued, awaiting a response, or kept across a drop).
    pub fn pending_permissions(&self) -> usize {
        self.perms.len()
    }

    /// This process's incarnation, named in `identity` when it offers `resume`: sixteen hex digits drawn
    /// from [`SledConfig::seed`] (an adapter seeds each process at random).
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// Requests kept across a drop, waiting for a gateway that accepts `resume`.
    pub fn kept_permissions(&self) -> usize {
        self.perms.iter().filter(|(_, p)| matches!(p.value, Stage::Kept(_))).count()
    }

    /// Bytes of the requests kept to be sent again after a drop ([`SledConfig::max_resume_bytes`]).
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    /// Local MCP calls in flight (started, not ended).
    pub fn mcp_calls_in_flight(&self) -> usize {
        self.mcp.in_flight()
    }

    /// `mcp_request`s waiting for a free call slot.
    pub fn mcp_calls_waiting(&self) -> usize {
        self.mcp.waiting()
    }

    /// Standalone streams open.
    pub fn mcp_streams_open(&self) -> usize {
        self.mcp.streams_open()
    }

    // ── Outputs ──

    /// The next thing to do, or `None` when there is nothing more until the next input. Drain it after every
    /// input, then ask [`Sled::poll_timeout`].
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call [`Sled::handle_timeout`] next, or `None` when no timer is armed. Calling earlier is
    /// harmless; calling later delays heartbeats and timeouts.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = match self.link {
            Link::Connecting { deadline, .. } => Some(deadline),
            Link::Connected { last_rx, next_heartbeat, resume, since, .. } => {
                let mut at = next_heartbeat.min(last_rx + self.cfg.idle_timeout);
                if let Resume::Waiting { until: Some(until) } = resume {
                    at = at.min(until);
                }
                if self.refused.is_some() {
                    at = at.min(since + self.cfg.stability_window);
                }
                Some(at)
            }
            Link::BackingOff { until, .. } => Some(until),
            Link::Disabled | Link::Closed => None,
        };
        earliest(earliest(link, self.perms.poll_timeout()), self.mcp.poll_timeout())
    }

    // ── Inputs ──

    /// Fires every timer due at `now`. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The WebSocket `conn` (from [`Output::Connect`]) is open. Sends `identity`, then every queued request.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        match self.link {
            Link::Connecting { conn: c, .. } if c == conn => {}
            Link::Connected { conn: c, .. } if c == conn => {
                // Reported twice: it is already the live connection.
                self.stats.stale_inputs += 1;
                return;
            }
            _ => {
                // Not the attempt we are waiting for: a connection we no longer want.
                self.stats.stale_inputs += 1;
                self.out.push_back(Output::Close { conn, code: CLOSE_NORMAL, reason: "stale connection" });
                return;
            }
        }
        let now = self.now;
        let kept = self.perms.iter().any(|(_, p)| matches!(p.value, Stage::Kept(_)));
        let resume = match self.cfg.resume {
            true => Resume::Waiting { until: kept.then(|| now + self.cfg.resume_wait) },
            false => Resume::Off,
        };
        self.link = Link::Connected {
            conn,
            since: now,
            last_rx: now,
            next_heartbeat: now + self.cfg.heartbeat_interval,
            resume,
        };
        self.stats.connections += 1;
        self.emit_link();
        self.send(conn, self.identity_text.clone());
        // New requests go now; kept ones wait for the gateway's `resume_accepted`.
        let queued: Vec<PermKey> =
            self.perms.iter().filter(|(_, p)| matches!(p.value, Stage::Queued(_))).map(|(k, _)| k).collect();
        for key in queued {
            self.send_perm_request(key, conn);
        }
    }

    /// The attempt `conn` failed.
    pub fn handle_connect_failed(&mut self, now: Instant, conn: ConnId, error: ConnectError) {
        self.advance(now);
        match self.link {
            Link::Connecting { conn: c, .. } if c == conn => {
                let reason = match error {
                    ConnectError::Unauthorized => LossReason::Refused(Refusal::Token),
                    ConnectError::NotFound => LossReason::Refused(Refusal::NotFound),
                    ConnectError::Other => LossReason::ConnectFailed,
                };
                self.lose_link(reason, None);
            }
            _ => self.stats.stale_inputs += 1,
        }
    }

    /// The connection `conn` ended (closed by the peer, reset, a read or a send failed). Denies every request
    /// in flight on it and schedules a reconnection.
    pub fn handle_disconnected(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        match self.link {
            Link::Connected { conn: c, .. } if c == conn => self.lose_link(LossReason::Disconnected, None),
            Link::Connecting { conn: c, .. } if c == conn => self.lose_link(LossReason::ConnectFailed, None),
            _ => self.stats.stale_inputs += 1,
        }
    }

    /// The gateway closed `conn` with the close code `code`: as [`Sled::handle_disconnected`], but a
    /// gateway that says it is restarting (1012) counts no failure: the back-off starts afresh, so that the
    /// sled is back as soon as the new gateway is (after a short jittered delay, as after any loss); and a
    /// refusal's code (4003, 4009, 4010: [`Refusal::from_close_code`]) denies every request pending with it,
    /// and every new one at once while the link backs off.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId, code: u16) {
        self.advance(now);
        match self.link {
            Link::Connected { conn: c, .. } if c == conn && code == CLOSE_SERVICE_RESTART => {
                self.backoff.reset();
                self.lose_link(LossReason::GatewayRestarting, None);
            }
            Link::Connected { conn: c, .. } if c == conn && Refusal::from_close_code(code).is_some() => {
                if let Some(refusal) = Refusal::from_close_code(code) {
                    self.lose_link(LossReason::Refused(refusal), None);
                }
            }
            _ => self.handle_disconnected(now, conn),
        }
    }

    /// The gateway sent a message on `conn` over the adapter's size limit (the adapter detects it, as the
    /// WebSocket library refuses to read it). The connection is closed with 1009 "message too big", what was
    /// in flight on it is denied, and the machine reconnects after its back-off.
    pub fn handle_too_big(&mut self, now: Instant, conn: ConnId) {
        self.advance(now);
        match self.link {
            Link::Connected { conn: c, .. } if c == conn => {
                self.lose_link(LossReason::MessageTooBig, Some((conn, CLOSE_MESSAGE_TOO_BIG, "message too big")))
            }
            _ => self.stats.stale_inputs += 1,
        }
    }

    /// A message arrived on `conn`. Anything at all counts as proof that the gateway is alive.
    pub fn handle_received(&mut self, now: Instant, conn: ConnId, message: Received<'_>) {
        self.advance(now);
        let now = self.now;
        match &mut self.link {
            Link::Connected { conn: c, last_rx, .. } if *c == conn => *last_rx = now,
            _ => {
                self.stats.stale_inputs += 1;
                return;
            }
        }
        let text = match message {
            Received::Text(text) => text,
            Received::Binary(_) => {
                self.stats.binary_frames += 1;
                self.ignored(Ignored::Binary);
                return;
            }
            Received::Ping | Received::Pong => return,
        };
        self.stats.frames_received += 1;
        let frame = GatewayFrame::decode(text);
        if frame.is_ok() {
            // A gateway speaks on a connection only once it accepted the sled's identity.
            self.set_standing(None);
        }
        if let Ok(GatewayFrame::ResumeAccepted) = frame {
            self.on_resume_accepted(conn);
            return;
        }
        // A gateway that accepts `resume` says so before anything else: any other frame first is a refusal.
        if let Link::Connected { resume: resume @ Resume::Waiting { .. }, .. } = &mut self.link {
            *resume = Resume::Off;
            self.deny_kept();
        }
        match frame {
            Ok(GatewayFrame::ResumeAccepted) => {}
            Ok(GatewayFrame::PermResponse { req_id, decision, message }) => {
                self.on_perm_response(conn, &req_id, decision, message)
            }
            Ok(GatewayFrame::McpRequest { req_id, body, session, stream }) => {
                let now = self.now;
                self.relay(|mcp, fx| mcp.on_request(now, req_id, body, session, stream, fx))
            }
            Ok(GatewayFrame::McpCancel { req_id, reason }) => {
                self.relay(|mcp, fx| mcp.on_cancel(&req_id, reason.as_deref(), fx))
            }
            Ok(GatewayFrame::McpListen { req_id, session }) => {
                let now = self.now;
                self.relay(|mcp, fx| mcp.on_listen(now, req_id, session, fx))
            }
            Ok(GatewayFrame::McpSessionEnd { session }) => {
                self.relay(|mcp, fx| mcp.on_session_end(session.into_owned(), fx))
            }
            Err(wire::DecodeError::UnknownType) => {
                self.stats.unknown_frames += 1;
                self.ignored(Ignored::UnknownType);
            }
            Err(wire::DecodeError::Malformed | wire::DecodeError::BadPayload) => {
                self.stats.malformed_frames += 1;
                self.ignored(Ignored::Malformed);
            }
        }
    }

    /// The local MCP endpoint sent `message` within the call or stream `call`, before its end: a notification
    /// or a request from the server (or a response on a standalone stream). Relayed as an `mcp_message` when
    /// the gateway takes the exchange as a stream; otherwise a request from the server is answered at once
    /// with an error ([`Output::NotifyMcp`]), so that the server does not wait for an answer that cannot
    /// come, and anything else is dropped. Messages for a call already ended are dropped.
    pub fn handle_mcp_message(&mut self, now: Instant, call: McpCallId, message: &RawValue) {
        self.advance(now);
        self.relay(|mcp, fx| mcp.handle_message(call, message, fx));
    }

    /// The local MCP endpoint accepted the standalone stream `call` (its `GET` was answered with an event
    /// stream): the gateway is told with an `mcp_message` whose payload is `null`, so that it can answer its
    /// own caller before any message comes. Ignored for anything but an open stream.
    pub fn handle_mcp_opened(&mut self, now: Instant, call: McpCallId) {
        self.advance(now);
        self.relay(|mcp, fx| mcp.handle_opened(call, fx));
    }

    /// The local MCP endpoint answered `call`, or the stream `call` ended. Sends the `mcp_response`, unless
    /// the call was already answered (timed out), cancelled, or its connection died, in which case the reply
    /// is dropped.
    pub fn handle_mcp_reply(&mut self, now: Instant, call: McpCallId, reply: McpReply) {
        self.advance(now);
        self.relay(|mcp, fx| mcp.handle_reply(call, reply, fx));
    }

    // ── Commands ──

    /// Asks the gateway to decide whether the tool call `tool_name(tool_input)` may run, under a wire id the
    /// machine mints: `PREFIX-N`, where `PREFIX` is eight hex digits drawn from [`SledConfig::seed`] and `N`
    /// counts up, so ids never repeat within a machine and differ between machines seeded differently.
    ///
    /// Returns the request's key; exactly one [`Output::Decided`] with that key follows, possibly at once.
    pub fn request_permission(&mut self, now: Instant, tool_name: String, tool_input: Box<RawValue>) -> PermKey {
        self.next_id += 1;
        let id = request_id(&self.id_prefix, self.next_id);
        self.request_permission_with_id(now, id, tool_name, tool_input)
    }

    /// As [`Sled::request_permission`], under the caller's own wire id: unique among pending requests, and
    /// best never reused (a gateway may confuse a late answer to an old request with a new one of the same
    /// id). An empty id, or one already pending, is denied at once.
    pub fn request_permission_with_id(
        &mut self,
        now: Instant,
        id: String,
        tool_name: String,
        tool_input: Box<RawValue>,
    ) -> PermKey {
        self.advance(now);
        let key = self.perms.mint();
        let refused = match self.link {
            Link::Disabled => Some(Cause::Disabled),
            Link::Closed => Some(Cause::Shutdown),
            Link::BackingOff { reason: LossReason::Refused(refusal), .. } => Some(Cause::Refused(refusal)),
            _ if id.is_empty() => Some(Cause::InvalidId),
            _ if self.perms.contains_wire(&id) => Some(Cause::DuplicateId),
            _ if self.perms.len() >= self.cfg.max_pending_permissions => Some(Cause::QueueFull),
            _ if wire::frame_len(
                wire::kind::PERM_REQUEST,
                &id,
                wire::perm_request_payload_len(&tool_name, tool_input.get()),
            ) > self.cfg.max_frame_bytes =>
            {
                Some(Cause::TooLarge)
            }
            _ => None,
        };
        if let Some(cause) = refused {
            self.out.push_back(Output::Decided(Decided { key, id, decision: Decision::Deny, cause, message: None }));
            return key;
        }
        self.perms.insert(key, self.now, id, Stage::Queued(Asked { tool_name, tool_input }));
        if let Some(conn) = self.connection() {
            self.send_perm_request(key, conn);
        }
        key
    }

    /// Withdraws the pending request `key`: whoever asked is gone (an HTTP client hung up, a tool call was
    /// cancelled, a future was dropped). If it was sent on the live connection, a `perm_cancel` (reason
    /// `withdrawn`) tells the gateway, which stops listing it; it is denied with [`Cause::Withdrawn`]. A key
    /// already decided is left alone (its one decision has been emitted).
    pub fn withdraw(&mut self, now: Instant, key: PermKey) {
        self.advance(now);
        let Some(perm) = self.perms.remove(key) else { return };
        self.release(&perm);
        if let (Some(sent_on), Some(live)) = (perm.value.sent_on(), self.connection())
            && sent_on == live
        {
            let text = SledFrame::PermCancel { req_id: Cow::Borrowed(&perm.wire), reason: Cow::Borrowed("withdrawn") }
                .encode();
            self.send(live, text);
        }
        self.deny(key, perm.wire, Cause::Withdrawn);
    }

    /// Shuts down for good: denies every pending request (withdrawing those sent with `perm_cancel`), answers
    /// every MCP call in flight with an error, closes the connection normally, and never reconnects.
    pub fn shutdown(&mut self, now: Instant) {
        self.advance(now);
        match self.link {
            Link::Closed => return,
            Link::Connected { conn, .. } => {
                self.deny_all(Cause::Shutdown, Some(conn));
                self.relay(McpRelay::answer_all);
                self.out.push_back(Output::Close { conn, code: CLOSE_NORMAL, reason: "shutdown" });
            }
            Link::Connecting { conn, .. } => {
                self.deny_all(Cause::Shutdown, None);
                self.out.push_back(Output::Close { conn, code: CLOSE_NORMAL, reason: "shutdown" });
            }
            Link::BackingOff { .. } | Link::Disabled => self.deny_all(Cause::Shutdown, None),
        }
        self.relay(McpRelay::abandon_all);
        self.link = Link::Closed;
        self.emit_link();
    }

    // ── Internals ──

    /// Moves the clock to `now` (never backwards) and fires what is due.
    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        // Each transition sets its next deadline after `now` (or exactly at `now`, for a zero back-off, which
        // the next turn fires), so this ends within a few turns.
        while self.fire_link_timer(now) {}
        while let Some((key, perm)) = self.perms.pop_expired(now) {
            self.release(&perm);
            if let (Some(sent_on), Some(live)) = (perm.value.sent_on(), self.connection()) {
                if sent_on == live {
                    let text =
                        SledFrame::PermCancel { req_id: Cow::Borrowed(&perm.wire), reason: Cow::Borrowed("timeout") }
                            .encode();
                    self.send(live, text);
                }
            }
            self.deny(key, perm.wire, Cause::Timeout);
        }
        self.relay(|mcp, fx| mcp.handle_timeout(now, fx));
    }

    /// Fires the link's timer if it is due; true if the state changed and may be due again.
    fn fire_link_timer(&mut self, now: Instant) -> bool {
        match self.link {
            Link::Connecting { conn, deadline } if deadline <= now => {
                self.lose_link(LossReason::ConnectTimeout, Some((conn, CLOSE_GOING_AWAY, "connect timeout")));
                true
            }
            Link::BackingOff { until, .. } if until <= now => {
                self.start_connect();
                true
            }
            Link::Connected { since, .. } if self.refused.is_some() && since + self.cfg.stability_window <= now => {
                // Up for as long as a stable connection: the gateway accepted this one.
                self.set_standing(None);
                true
            }
            Link::Connected { conn, last_rx, .. } if last_rx + self.cfg.idle_timeout <= now => {
                self.lose_link(LossReason::IdleTimeout, Some((conn, CLOSE_GOING_AWAY, "idle timeout")));
                true
            }
            Link::Connected { resume: Resume::Waiting { until: Some(until) }, .. } if until <= now => {
                // No answer to the offer: a gateway that does not resume.
                if let Link::Connected { resume, .. } = &mut self.link {
                    *resume = Resume::Off;
                }
                self.deny_kept();
                true
            }
            Link::Connected { conn, next_heartbeat, .. } if next_heartbeat <= now => {
                let mut next = next_heartbeat + self.cfg.heartbeat_interval;
                if next <= now {
                    // Called late by a whole interval or more: do not send a burst.
                    next = now + self.cfg.heartbeat_interval;
                }
                if let Link::Connected { next_heartbeat, .. } = &mut self.link {
                    *next_heartbeat = next;
                }
                self.send(conn, SledFrame::Heartbeat.encode());
                self.out.push_back(Output::Ping { conn });
                false
            }
            _ => false,
        }
    }

    fn start_connect(&mut self) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.stats.connects += 1;
        self.link = Link::Connecting { conn, deadline: self.now + self.cfg.connect_timeout };
        self.emit_link();
        self.out.push_back(Output::Connect { conn });
    }

    /// The connection or attempt is gone: fail-close what was in flight, then back off.
    fn lose_link(&mut self, reason: LossReason, close: Option<(ConnId, u16, &'static str)>) {
        if let Some((conn, code, why)) = close {
            self.out.push_back(Output::Close { conn, code, reason: why });
        }
        if let LossReason::Refused(refusal) = reason {
            // Nothing pending can be decided while the gateway refuses: kept and queued requests too.
            self.set_standing(Some(refusal));
            self.deny_all(Cause::Refused(refusal), None);
        }
        if let Link::Connected { conn, since, resume, .. } = self.link {
            if self.now.saturating_duration_since(since) >= self.cfg.stability_window {
                self.backoff.reset();
            }
            let lost: Vec<PermKey> =
                self.perms.iter().filter(|(_, p)| p.value.sent_on() == Some(conn)).map(|(k, _)| k).collect();
            for key in lost {
                let Some(perm) = self.perms.get_mut(key) else { continue };
                // Kept across the drop when its gateway accepted `resume` and it is within the budget.
                if resume == Resume::Accepted
                    && let Stage::Sent { kept: kept @ Some(_), .. } = &mut perm.value
                    && let Some(asked) = kept.take()
                {
                    perm.value = Stage::Kept(asked);
                    continue;
                }
                if let Some(perm) = self.perms.remove(key) {
                    self.release(&perm);
                    self.deny(key, perm.wire, Cause::ConnectionLost);
                }
            }
            self.relay(McpRelay::abandon_all);
        }
        if let LossReason::Refused(refusal) = reason
            && refusal.waits_the_cap()
        {
            self.backoff.saturate();
        }
        let delay = self.backoff.next_delay();
        self.link = Link::BackingOff { until: self.now + delay, delay, reason };
        self.emit_link();
        if delay.is_zero() {
            // Full jitter can draw zero: retry now rather than leave a due timer for a later call.
            self.start_connect();
        }
    }

    /// Denies every pending request; those sent on `live` are withdrawn with `perm_cancel` first.
    fn deny_all(&mut self, cause: Cause, live: Option<ConnId>) {
        self.kept_bytes = 0;
        for (key, perm) in self.perms.drain() {
            if let Some(conn) = live.filter(|c| perm.value.sent_on() == Some(*c)) {
                let text =
                    SledFrame::PermCancel { req_id: Cow::Borrowed(&perm.wire), reason: Cow::Borrowed("shutdown") }
                        .encode();
                self.send(conn, text);
            }
            self.deny(key, perm.wire, cause);
        }
    }

    fn on_perm_response(&mut self, conn: ConnId, req_id: &str, decision: Decision, message: Option<Cow<'_, str>>) {
        // Every pending request is sent on the live connection as soon as there is one, so the condition
        // always holds; if that ever broke, the response would be ignored (never approving a request on a
        // connection it was not sent on) and the request would stay pending.
        match self.perms.take_by_wire_if(req_id, |stage| stage.sent_on() == Some(conn)) {
            Some((key, perm)) => {
                self.release(&perm);
                let message = message.map(|m| String::from(wire::clip(&m, wire::MAX_MESSAGE_BYTES)));
                self.out.push_back(Output::Decided(Decided {
                    key,
                    id: perm.wire,
                    decision,
                    cause: Cause::Response,
                    message,
                }));
            }
            None => {
                self.stats.unmatched_responses += 1;
                self.ignored(Ignored::UnmatchedResponse);
            }
        }
    }

    fn send_perm_request(&mut self, key: PermKey, conn: ConnId) {
        let Some(perm) = self.perms.get_mut(key) else {
            return;
        };
        // Queued and kept requests are sent (by the callers' construction); a sent one is left as it is.
        let stage = core::mem::replace(&mut perm.value, Stage::Sent { conn, kept: None });
        let (asked, counted) = match stage {
            Stage::Queued(asked) => (asked, false),
            Stage::Kept(asked) => (asked, true),
            sent @ Stage::Sent { .. } => {
                perm.value = sent;
                return;
            }
        };
        let text = SledFrame::PermRequest {
            req_id: Cow::Borrowed(&perm.wire),
            tool_name: Cow::Borrowed(&asked.tool_name),
            tool_input: &asked.tool_input,
        }
        .encode();
        // Kept for a resend while it fits in the budget (a kept one is counted already).
        let size = kept_size(&perm.wire, &asked);
        if counted || (self.cfg.resume && self.kept_bytes + size <= self.cfg.max_resume_bytes) {
            if !counted {
                self.kept_bytes += size;
            }
            perm.value = Stage::Sent { conn, kept: Some(asked) };
        }
        self.send(conn, text);
    }

    /// The gateway accepted `resume` on `conn` (only ever offered by this machine): what was kept across the
    /// last drop is sent again, in its order, under its ids, followed by `resumed`.
    fn on_resume_accepted(&mut self, conn: ConnId) {
        match &mut self.link {
            Link::Connected { resume, .. } if self.cfg.resume && *resume != Resume::Accepted => {
                *resume = Resume::Accepted;
            }
            _ => {
                // Not offered, or said twice.
                self.ignored(Ignored::UnknownType);
                return;
            }
        }
        let kept: Vec<PermKey> =
            self.perms.iter().filter(|(_, p)| matches!(p.value, Stage::Kept(_))).map(|(k, _)| k).collect();
        self.stats.requests_resent += kept.len() as u64;
        for key in kept {
            self.send_perm_request(key, conn);
        }
        self.send(conn, SledFrame::Resumed.encode());
    }

    /// Denies every request kept across a drop: the gateway now reached does not resume.
    fn deny_kept(&mut self) {
        let kept: Vec<PermKey> =
            self.perms.iter().filter(|(_, p)| matches!(p.value, Stage::Kept(_))).map(|(k, _)| k).collect();
        for key in kept {
            if let Some(perm) = self.perms.remove(key) {
                self.release(&perm);
                self.deny(key, perm.wire, Cause::ConnectionLost);
            }
        }
    }

    /// `perm` ended: what it kept leaves the budget.
    fn release(&mut self, perm: &crate::pending::Pending<Stage>) {
        if let Some(asked) = perm.value.kept() {
            self.kept_bytes -= kept_size(&perm.wire, asked);
        }
    }

    /// Runs `f` on the MCP relay, its work going to this machine's outputs on the live connection.
    fn relay<T>(&mut self, f: impl FnOnce(&mut McpRelay, &mut Effects<'_>) -> T) -> T {
        let conn = self.connection();
        let mut fx = Effects { out: &mut self.out, stats: &mut self.stats, conn };
        f(&mut self.mcp, &mut fx)
    }

    fn send(&mut self, conn: ConnId, text: String) {
        self.stats.frames_sent += 1;
        self.out.push_back(Output::Send { conn, text });
    }

    /// Denies `key` for `cause` (every end but a `perm_response`).
    fn deny(&mut self, key: PermKey, id: String, cause: Cause) {
        self.out.push_back(Output::Decided(Decided { key, id, decision: Decision::Deny, cause, message: None }));
    }

    /// Sets the gateway's standing toward this sled, telling the adapter when it changes.
    fn set_standing(&mut self, refused: Option<Refusal>) {
        if self.refused != refused {
            self.refused = refused;
            self.out.push_back(Output::Event(Event::Standing(refused)));
        }
    }

    fn emit_link(&mut self) {
        let state = self.link_state();
        self.out.push_back(Output::Event(Event::Link(state)));
    }

    fn ignored(&mut self, why: Ignored) {
        self.out.push_back(Output::Event(Event::FrameIgnored(why)));
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `n` as sixteen lower-case hex digits.
fn hex16(n: u64) -> String {
    let mut out = hex8((n >> 32) as u32);
    out.push_str(&hex8(n as u32));
    out
}

/// `n` as eight lower-case hex digits.
fn hex8(n: u32) -> String {
    (0..8).rev().map(|i| char::from(b"0123456789abcdef"[((n >> (4 * i)) & 0xf) as usize])).collect()
}

/// `PREFIX-N`, the id of the `n`-th request, without the formatting machinery (this is once per request).
fn request_id(prefix: &str, n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut id = String::with_capacity(prefix.len() + 1 + digits.len() - at);
    id.push_str(prefix);
    id.push('-');
    id.extend(digits[at..].iter().map(|&d| char::from(d)));
    id
}

#[cfg(test)]
mod tests {
    use alloc::format;

    #[test]
    fn request_ids_are_the_prefix_and_the_number_in_decimal() {
        for n in [0, 1, 9, 10, 42, 1_000_000, u64::MAX] {
            assert_eq!(super::request_id("0badcafe", n), format!("0badcafe-{n}"));
        }
        for n in [0, 1, 0xabc, 0xdead_beef, u32::MAX] {
            assert_eq!(super::hex8(n), format!("{n:08x}"));
        }
    }
}

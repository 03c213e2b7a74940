//! The wire format: JSON text frames, each an envelope `{"type": …, "req_id": …, "payload": …}`.
//!
//! Two frame families, one per direction: [`SledFrame`] (sled → gateway) and [`GatewayFrame`]
//! (gateway → sled). Each can be decoded from text and encoded to text, so both ends of the link share this
//! module.
//!
//! Decoding is liberal: a missing `req_id` reads as `""`, a missing or `null` `payload` as absent, unknown
//! envelope fields are ignored, and a frame of a `type` this side does not know is reported as
//! [`DecodeError::UnknownType`] so the caller can ignore it (forward compatibility). Encoding is strict: every
//! frame sent has all three envelope fields, in that order, and valid JSON in its payload.
//!
//! Payloads that are only passed along (`tool_input`, MCP responses) are kept as borrowed [`RawValue`]s: they
//! are checked to be valid JSON but never parsed into a tree or re-serialised.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
pub use serde_json::value::RawValue;

/// The protocol version this crate speaks, announced in the `identity` payload.
pub const PROTOCOL_VERSION: u32 = 1;

/// `req_id` of every `identity` frame.
pub const IDENTITY_REQ_ID: &str = "identity";

/// The largest frame a sled sends by default, in bytes: the limit this crate's gateway accepts by default.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// The longest `perm_response` `message` kept, in bytes: a gateway refuses to send a longer one, and a sled
/// cuts a longer one it receives at the last character boundary before this length.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// The deepest a `perm_request`'s `tool_input` may nest arrays and objects: a deeper one is denied at once
/// by the gateway, with a message that says so. Every reader of an input the gateway keeps (its audit log,
/// its webhook notices, the admin listing's clients, the console's page) parses it into a tree, and serde_json
/// stops at 128 levels; 64 leaves room for the envelopes they wrap it in, and is far beyond any real tool's
/// input. `1` and `"a"` nest 0 levels, `[]` one, `{"a":[1]}` two. See [`json_depth`].
pub const MAX_INPUT_DEPTH: usize = 64;

/// How deep `json` nests arrays and objects: the most `[` and `{` open at once outside strings. `json` is
/// valid JSON text (a [`RawValue`]'s, say); for any other text the count is of the same brackets, and
/// meaningless. One pass, no recursion, no allocation: it reads a 10,000-level input as easily as a flat one.
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut bytes = json.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => {
                // A string: to its closing quote, stepping over each escaped character.
                while let Some(c) = bytes.next() {
                    match c {
                        b'\\' => {
                            bytes.next();
                        }
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    deepest
}

/// A WebSocket message received on a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A text frame: a frame of the protocol ([`GatewayFrame`] at the sled, [`SledFrame`] at the gateway).
    Text(&'a str),
    /// A binary frame: not part of the protocol, ignored (but proof of life).
    Binary(&'a [u8]),
    /// A ping (the adapter's WebSocket library answers it): proof of life.
    Ping,
    /// A pong: proof of life.
    Pong,
}

/// The `type` strings of every frame this crate knows.
pub mod kind {
    /// Sled → gateway: first frame of every connection.
    pub const IDENTITY: &str = "identity";
    /// Sled → gateway: periodic liveness signal.
    pub const HEARTBEAT: &str = "heartbeat";
    /// Sled → gateway: a permission request.
    pub const PERM_REQUEST: &str = "perm_request";
    /// Sled → gateway: withdraw a permission request (extension; older gateways ignore it).
    pub const PERM_CANCEL: &str = "perm_cancel";
    /// Sled → gateway: the answer to an `mcp_request`.
    pub const MCP_RESPONSE: &str = "mcp_response";
    /// Gateway → sled: the decision on a permission request.
    pub const PERM_RESPONSE: &str = "perm_response";
    /// Gateway → sled: a JSON-RPC message for the sled's local MCP endpoint.
    pub const MCP_REQUEST: &str = "mcp_request";
    /// Sled → gateway (extension `mcp_stream`): a message the local MCP server sent within an exchange, before
    /// its `mcp_response`.
    pub const MCP_MESSAGE: &str = "mcp_message";
    /// Gateway → sled (extension `mcp_stream`): the caller of an exchange went away; stop it.
    pub const MCP_CANCEL: &str = "mcp_cancel";
    /// Gateway → sled (extension `mcp_stream`): open a session's standalone stream from the local server.
    pub const MCP_LISTEN: &str = "mcp_listen";
    /// Gateway → sled (extension `mcp_stream`): a gateway session ended; end its local session.
    pub const MCP_SESSION_END: &str = "mcp_session_end";
    /// Gateway → sled (extension `resume`): the gateway keeps this connection's requests across a drop.
    pub const RESUME_ACCEPTED: &str = "resume_accepted";
    /// Sled → gateway (extension `resume`): after a `resume_accepted`, every request the sled kept has been
    /// sent again; the gateway may end those of this sled it still holds that were not.
    pub const RESUMED: &str = "resumed";
}

/// The capability a sled lists in its `identity` when it relays MCP exchanges as streams: it reads
/// `mcp_request`'s `stream` flag and `mcp_cancel`, `mcp_listen` and `mcp_session_end`, and sends
/// `mcp_message`. A gateway uses none of these with a sled that does not list it.
pub const MCP_STREAM_CAPABILITY: &str = "mcp_stream";

/// The capability a sled lists in its `identity` when it can resume its requests across a lost link: it
/// names its process in `incarnation`, and after a gateway's `resume_accepted` on a connection, keeps what it
/// sent there when the link drops and sends it again, under the same ids, once a gateway accepts again. A
/// gateway sends `resume_accepted` only to a sled that lists it.
pub const RESUME_CAPABILITY: &str = "resume";

/// The outcome of a permission request. Written as `approve`, `deny` or `always_allow` ([`Decision::as_str`],
/// `Display`, `FromStr`, serde).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allow this one call.
    Approve,
    /// Refuse the call. Every doubt ends here.
    Deny,
    /// Allow this call and, from now on, calls of the same tool.
    AlwaysAllow,
}

impl Decision {
    /// The `(approved, always_allow)` pair a `perm_response` carries for this decision.
    pub const fn to_flags(self) -> (bool, bool) {
        match self {
            Decision::Approve => (true, false),
            Decision::Deny => (false, false),
            Decision::AlwaysAllow => (true, true),
        }
    }

    /// The decision a `perm_response` carrying these flags means: `always_allow` wins, then `approved`,
    /// otherwise deny.
    pub const fn from_flags(approved: bool, always_allow: bool) -> Decision {
        if always_allow {
            Decision::AlwaysAllow
        } else if approved {
            Decision::Approve
        } else {
            Decision::Deny
        }
    }

    /// True for [`Decision::Approve`] and [`Decision::AlwaysAllow`].
    pub const fn is_allow(self) -> bool {
        !matches!(self, Decision::Deny)
    }

    /// The decision's word: `approve`, `deny` or `always_allow`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
            Decision::AlwaysAllow => "always_allow",
        }
    }
}

impl core::fmt::Display for Decision {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not `approve`, `deny` or `always_allow`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a decision: expected approve, deny or always_allow")]
pub struct BadDecision;

impl core::str::FromStr for Decision {
    type Err = BadDecision;

    fn from_str(s: &str) -> Result<Decision, BadDecision> {
        [Decision::Approve, Decision::Deny, Decision::AlwaysAllow]
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or(BadDecision)
    }
}

/// Why a frame could not be decoded. The protocol ignores such frames; the error says how to count them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, not an object, no string `type`, or a field of the wrong type in the envelope.
    #[error("frame is not a JSON envelope with a string `type`")]
    Malformed,
    /// A well-formed envelope whose `type` this direction does not define.
    #[error("frame type is unknown in this direction")]
    UnknownType,
    /// A known `type` whose payload lacks what that type cannot do without.
    #[error("frame payload is unusable for its type")]
    BadPayload,
}

/// The `identity` payload: who the sled is, plus optional, documented extras.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    /// Project name the sled serves. The only field existing gateways read.
    pub project: Cow<'a, str>,
    /// Protocol version ([`PROTOCOL_VERSION`]); absent from sleds that predate it.
    pub protocol: Option<u32>,
    /// Free-form version of the sled software.
    pub sled_version: Option<Cow<'a, str>>,
    /// Protocol extensions the sled supports, for example `"perm_cancel"`.
    pub capabilities: Vec<Cow<'a, str>>,
    /// How long the sled waits for a decision before it denies (extension): a gateway can show people the
    /// time left. Absent from sleds that predate it; ignored by older gateways.
    pub permission_timeout_ms: Option<u64>,
    /// The sled process's incarnation (extension `resume`): drawn at random when the process starts, so that
    /// a restarted sled's requests are never taken for its predecessor's, whatever their ids.
    pub incarnation: Option<Cow<'a, str>>,
}

/// A frame sent by a sled to its gateway.
#[derive(Clone, Debug)]
pub enum SledFrame<'a> {
    /// First frame of every connection.
    Identity(Identity<'a>),
    /// Periodic liveness signal (`req_id` `""`, payload `null`).
    Heartbeat,
    /// A permission request for one tool call.
    PermRequest {
        /// Correlation id, chosen by the sled and echoed by the gateway.
        req_id: Cow<'a, str>,
        /// The tool the agent wants to call.
        tool_name: Cow<'a, str>,
        /// The tool's input, passed along untouched (`null` when absent).
        tool_input: &'a RawValue,
    },
    /// The sled withdraws a permission request (its deadline passed); extension, ignored by older gateways.
    PermCancel {
        /// The withdrawn request's id.
        req_id: Cow<'a, str>,
        /// Why, for example `"timeout"` or `"shutdown"`.
        reason: Cow<'a, str>,
    },
    /// The answer to an `mcp_request`, or the end of an `mcp_listen` stream: the exchange's one end.
    McpResponse {
        /// The `mcp_request`'s `req_id`, echoed.
        req_id: Cow<'a, str>,
        /// The JSON-RPC response, or `null` when the request was a notification (or the stream ended).
        payload: &'a RawValue,
    },
    /// A message from the local MCP server within an exchange opened with `stream` (extension): a
    /// notification or a request from the server, in the order the server sent them.
    McpMessage {
        /// The exchange's `req_id`.
        req_id: Cow<'a, str>,
        /// The JSON-RPC message, as the local server sent it.
        payload: &'a RawValue,
    },
    /// Every request kept across a drop has been sent again (extension `resume`; only after a
    /// `resume_accepted` on this connection). Its payload is an object reserved for later members (`{}`).
    Resumed,
}

/// A frame sent by a gateway to a sled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayFrame<'a> {
    /// The decision on a permission request.
    PermResponse {
        /// The request's id.
        req_id: Cow<'a, str>,
        /// What the gateway decided. When decoding, anything but a boolean `true` in a flag reads as `false`.
        decision: Decision,
        /// The person's words for the agent (extension): a string `message` in the payload, else `None`.
        message: Option<Cow<'a, str>>,
    },
    /// A JSON-RPC message to replay against the sled's local MCP endpoint.
    McpRequest {
        /// Correlation id, echoed in the `mcp_response`.
        req_id: Cow<'a, str>,
        /// The JSON-RPC text; `None` when the payload has no string `body`.
        body: Option<Cow<'a, str>>,
        /// Optional gateway-side client session (extension): each distinct value gets its own local session.
        session: Option<Cow<'a, str>>,
        /// True when the gateway takes the exchange as a stream (extension `mcp_stream`): the sled sends the
        /// local server's messages within it as `mcp_message` frames before the `mcp_response`. Only the
        /// literal `true` counts.
        stream: bool,
    },
    /// The caller of an exchange (an `mcp_request` or `mcp_listen`) went away (extension `mcp_stream`): the
    /// sled stops it and sends no `mcp_response` for it.
    McpCancel {
        /// The exchange's `req_id`.
        req_id: Cow<'a, str>,
        /// Why, for logs and the local server's `notifications/cancelled`.
        reason: Option<Cow<'a, str>>,
    },
    /// Open the session's standalone stream from the local server (extension `mcp_stream`): its messages come
    /// as `mcp_message` frames, and its end as one `mcp_response`.
    McpListen {
        /// Correlation id of the stream.
        req_id: Cow<'a, str>,
        /// The gateway-side session, as in `mcp_request`.
        session: Option<Cow<'a, str>>,
    },
    /// A gateway session ended (extension `mcp_stream`): the sled ends and forgets its local session.
    McpSessionEnd {
        /// The session, as named in `mcp_request`.
        session: Cow<'a, str>,
    },
    /// The gateway accepts `resume` on this connection (extension `resume`; sent right after it accepts the
    /// `identity`, only to a sled that listed the capability): what the sled sends on it is kept across a
    /// drop, by both sides. Its payload is an object reserved for later members (`{}`).
    ResumeAccepted,
}

// ── Decoding ─────────────────────────────────────────────────────────────────────────────────────────────

/// An envelope as read in one pass: the payload of the frame types the reader asked for is read directly when
/// `type` precedes it (as every sender this crate knows writes it); otherwise it is kept raw and read after.
struct InEnvelope<'a> {
    kind: Cow<'a, str>,
    req_id: Option<Cow<'a, str>>,
    payload: InPayload<'a>,
}

/// The envelope's `payload` member, as far as the envelope reader went.
enum InPayload<'a> {
    /// Missing or `null`.
    Absent,
    /// Kept as text: a frame type read later, or the payload came before `type`.
    Raw(&'a RawValue),
    /// Read directly, leniently, for a `perm_response` or an `mcp_request`.
    Read(Lenient<'a>),
}

impl<'a> InPayload<'a> {
    fn raw(&self) -> Option<&'a RawValue> {
        match self {
            InPayload::Raw(raw) => Some(raw),
            _ => None,
        }
    }
}

/// Reads an object key as one of a list of names (`None` for any other key), without copying it.
struct KeyName(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for KeyName {
    type Value = Option<&'static str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl serde::de::Visitor<'_> for KeyName {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().find(|name| *name == v))
    }
}

/// Which payloads [`EnvelopeSeed`] reads directly instead of keeping them raw.
#[derive(Copy, Clone)]
enum Direct {
    /// None: every payload stays raw (the sled → gateway frames).
    Nothing,
    /// `perm_response` flags and `mcp_request` fields (the gateway → sled frames).
    GatewayFrames,
}

struct EnvelopeSeed(Direct);

impl<'de> serde::de::Visitor<'de> for EnvelopeSeed {
    type Value = InEnvelope<'de>;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a frame envelope object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let mut kind: Option<Cow<'de, str>> = None;
        let mut req_id: Option<Option<Str<'de>>> = None;
        let mut payload: Option<InPayload<'de>> = None;
        while let Some(key) = map.next_key_seed(KeyName(&["type", "req_id", "payload"]))? {
            match key.unwrap_or("") {
                "type" if kind.is_some() => return Err(A::Error::duplicate_field("type")),
                "type" => kind = Some(map.next_value::<Str<'de>>()?.0),
                "req_id" if req_id.is_some() => return Err(A::Error::duplicate_field("req_id")),
                "req_id" => req_id = Some(map.next_value()?),
                "payload" if payload.is_some() => return Err(A::Error::duplicate_field("payload")),
                "payload" => {
                    let object = match self.0 {
                        Direct::GatewayFrames => kind.as_deref().and_then(gateway_payload),
                        Direct::Nothing => None,
                    };
                    payload = Some(match object {
                        Some(object) => InPayload::Read(map.next_value_seed(LenientSeed(object))?),
                        None => map.next_value::<Option<&'de RawValue>>()?.map_or(InPayload::Absent, InPayload::Raw),
                    });
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let kind = kind.ok_or_else(|| A::Error::missing_field("type"))?;
        Ok(InEnvelope { kind, req_id: req_id.flatten().map(|s| s.0), payload: payload.unwrap_or(InPayload::Absent) })
    }
}

/// How the payload of a gateway → sled frame of type `kind` is read; `None` for a type this side does not know.
fn gateway_payload(kind: &str) -> Option<ObjectKind> {
    match kind {
        kind::PERM_RESPONSE => Some(ObjectKind::Flags),
        kind::MCP_REQUEST | kind::MCP_CANCEL | kind::MCP_LISTEN | kind::MCP_SESSION_END => Some(ObjectKind::Mcp),
        kind::RESUME_ACCEPTED => Some(ObjectKind::Skip),
        _ => None,
    }
}

/// Reads a payload kept raw (it came before `type`) by the same rules as one read directly.
fn read_lenient(raw: &RawValue, object: ObjectKind) -> Lenient<'_> {
    use serde::de::DeserializeSeed as _;
    // Raw values are valid JSON: reading one leniently cannot fail.
    LenientSeed(object).deserialize(&mut serde_json::Deserializer::from_str(raw.get())).unwrap_or(Lenient::Other)
}

/// The payload objects read directly.
#[derive(Copy, Clone)]
enum ObjectKind {
    /// Any object: skipped.
    Skip,
    /// `{"approved", "always_allow", "message"}`.
    Flags,
    /// `{"body", "session", "stream", "reason"}`.
    Mcp,
}

/// Any JSON value, read leniently: what the reader cares about, or `Other`. Never fails on well-formed JSON.
enum Lenient<'a> {
    /// The literal `true`.
    True,
    /// A string.
    Str(Cow<'a, str>),
    /// `null`.
    Null,
    /// A `perm_response` payload object; anything but a boolean `true` in a flag reads as `false`, and an
    /// object with a repeated member reads as a denial without a message. `message` is `None` unless a string.
    Flags(Decision, Option<Cow<'a, str>>),
    /// An `mcp_*` payload object. `body` is `None` unless it is a string (and the object has no repeated
    /// member); `session` and `reason` are `None` unless strings; `stream` is true only for the literal `true`.
    Mcp(McpFields<'a>),
    /// Anything else.
    Other,
}

struct LenientSeed(ObjectKind);

impl<'de> serde::de::DeserializeSeed<'de> for LenientSeed {
    type Value = Lenient<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for LenientSeed {
    type Value = Lenient<'de>;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(if v { Lenient::True } else { Lenient::Other })
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Lenient::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Lenient::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Lenient::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Lenient::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Lenient::Null)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Lenient::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Lenient::Str(Cow::Owned(v.into())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Lenient::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Lenient::Other)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Every member's value is read leniently, so that a value of the wrong type never fails the frame.
        let (mut approved, mut always_allow, mut message, mut body, mut session) = (None, None, None, None, None);
        let (mut stream, mut reason) = (None, None);
        let mut repeated = false;
        const KEYS: &[&str] = &["approved", "always_allow", "message", "body", "session", "stream", "reason"];
        while let Some(key) = map.next_key_seed(KeyName(KEYS))? {
            let slot = match (self.0, key.unwrap_or("")) {
                (ObjectKind::Flags, "approved") => &mut approved,
                (ObjectKind::Flags, "always_allow") => &mut always_allow,
                (ObjectKind::Flags, "message") => &mut message,
                (ObjectKind::Mcp, "body") => &mut body,
                (ObjectKind::Mcp, "session") => &mut session,
                (ObjectKind::Mcp, "stream") => &mut stream,
                (ObjectKind::Mcp, "reason") => &mut reason,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value_seed(LenientSeed(ObjectKind::Skip))?;
            repeated |= slot.replace(value).is_some();
        }
        let string = |v: Option<Lenient<'de>>| match v {
            Some(Lenient::Str(s)) => Some(s),
            _ => None,
        };
        Ok(match self.0 {
            ObjectKind::Skip => Lenient::Other,
            ObjectKind::Flags if repeated => Lenient::Flags(Decision::Deny, None),
            ObjectKind::Flags => {
                let is_true = |v: &Option<Lenient<'_>>| matches!(v, Some(Lenient::True));
                Lenient::Flags(Decision::from_flags(is_true(&approved), is_true(&always_allow)), string(message))
            }
            ObjectKind::Mcp if repeated => Lenient::Mcp(McpFields::default()),
            // A `body` of the wrong type makes the whole payload unreadable: there is no body to call with.
            ObjectKind::Mcp => match body {
                None | Some(Lenient::Null | Lenient::Str(_)) => Lenient::Mcp(McpFields {
                    body: string(body),
                    session: string(session),
                    stream: matches!(stream, Some(Lenient::True)),
                    reason: string(reason),
                }),
                Some(_) => Lenient::Mcp(McpFields::default()),
            },
        })
    }
}

/// The members of an `mcp_*` payload object, read leniently.
#[derive(Default)]
struct McpFields<'a> {
    body: Option<Cow<'a, str>>,
    session: Option<Cow<'a, str>>,
    stream: bool,
    reason: Option<Cow<'a, str>>,
}

/// A string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// True when `text` is (or at least starts like) a JSON object.
///
/// Needed because serde's derived structs also accept the array form (`[field1, field2]`): without this check
/// a payload of `[true]` would read as `approved: true`.
pub(crate) fn is_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads a JSON object into `T`; anything else, or an object `T` cannot read, is `None`. The one guard of the
/// crate against the array form.
pub(crate) fn object<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
    if is_object(text) { serde_json::from_str(text).ok() } else { None }
}

fn parse_envelope(text: &str, direct: Direct) -> Result<InEnvelope<'_>, DecodeError> {
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_str(text);
    let env = de.deserialize_map(EnvelopeSeed(direct)).map_err(|_| DecodeError::Malformed)?;
    de.end().map_err(|_| DecodeError::Malformed)?;
    Ok(env)
}

/// Reads one optional field leniently: a value of the wrong type reads as absent.
fn lenient<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

fn lenient_str<'a>(raw: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
    lenient::<Str<'a>>(raw).map(|s| s.0)
}

/// `null`, for absent pass-through payloads.
pub fn json_null() -> &'static RawValue {
    // A literal that is valid JSON: cannot fail.
    match serde_json::from_str::<&'static RawValue>("null") {
        Ok(v) => v,
        Err(_) => unreachable!("`null` is valid JSON"),
    }
}

impl<'a> GatewayFrame<'a> {
    /// Decodes a gateway → sled text frame.
    ///
    /// A `perm_response` always decodes (a payload that is missing, not an object, or has no boolean `true`
    /// flags means [`Decision::Deny`]); an `mcp_request` always decodes (with `body: None` when the payload has
    /// no string `body`), and so do `mcp_cancel` and `mcp_listen`. An `mcp_session_end` without a string
    /// `session` is [`DecodeError::BadPayload`].
    pub fn decode(text: &'a str) -> Result<Self, DecodeError> {
        let env = parse_envelope(text, Direct::GatewayFrames)?;
        let req_id = env.req_id.unwrap_or(Cow::Borrowed(""));
        let object = gateway_payload(&env.kind).ok_or(DecodeError::UnknownType)?;
        if env.kind == kind::RESUME_ACCEPTED {
            return Ok(GatewayFrame::ResumeAccepted);
        }
        let payload = match env.payload {
            InPayload::Read(read) => read,
            InPayload::Raw(raw) => read_lenient(raw, object),
            InPayload::Absent => Lenient::Null,
        };
        Ok(match (object, payload) {
            (ObjectKind::Flags, Lenient::Flags(decision, message)) => {
                GatewayFrame::PermResponse { req_id, decision, message }
            }
            (ObjectKind::Mcp, payload) => {
                // A payload that is missing or not an object reads as one without members.
                let McpFields { body, session, stream, reason } = match payload {
                    Lenient::Mcp(fields) => fields,
                    _ => McpFields::default(),
                };
                match &*env.kind {
                    kind::MCP_CANCEL => GatewayFrame::McpCancel { req_id, reason },
                    kind::MCP_LISTEN => GatewayFrame::McpListen { req_id, session },
                    kind::MCP_SESSION_END => {
                        GatewayFrame::McpSessionEnd { session: session.ok_or(DecodeError::BadPayload)? }
                    }
                    _ => GatewayFrame::McpRequest { req_id, body, session, stream },
                }
            }
            (_, _) => GatewayFrame::PermResponse { req_id, decision: Decision::Deny, message: None },
        })
    }
}

impl<'a> SledFrame<'a> {
    /// Decodes a sled → gateway text frame.
    ///
    /// An `identity` without a string `project`, or a `perm_request` without a string `tool_name`, is
    /// [`DecodeError::BadPayload`]; the optional identity extras read as absent when of the wrong type.
    pub fn decode(text: &'a str) -> Result<Self, DecodeError> {
        let env = parse_envelope(text, Direct::Nothing)?;
        let req_id = env.req_id.unwrap_or(Cow::Borrowed(""));
        let payload = env.payload.raw();
        match &*env.kind {
            kind::IDENTITY => {
                #[derive(Deserialize)]
                struct IdPayload<'a> {
                    #[serde(default, borrow)]
                    project: Option<&'a RawValue>,
                    #[serde(default, borrow)]
                    protocol: Option<&'a RawValue>,
                    #[serde(default, borrow)]
                    sled_version: Option<&'a RawValue>,
                    #[serde(default, borrow)]
                    capabilities: Option<&'a RawValue>,
                    #[serde(default, borrow)]
                    permission_timeout_ms: Option<&'a RawValue>,
                    #[serde(default, borrow)]
                    incarnation: Option<&'a RawValue>,
                }
                let p: IdPayload<'a> = payload.and_then(|p| object(p.get())).ok_or(DecodeError::BadPayload)?;
                let project = lenient_str(p.project).ok_or(DecodeError::BadPayload)?;
                let capabilities = lenient::<Vec<&'a RawValue>>(p.capabilities)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| lenient_str(Some(c)))
                    .collect();
                Ok(SledFrame::Identity(Identity {
                    project,
                    protocol: lenient(p.protocol),
                    sled_version: lenient_str(p.sled_version),
                    capabilities,
                    permission_timeout_ms: lenient(p.permission_timeout_ms),
                    incarnation: lenient_str(p.incarnation),
                }))
            }
            kind::HEARTBEAT => Ok(SledFrame::Heartbeat),
            kind::PERM_REQUEST => {
                #[derive(Deserialize)]
                struct PermPayload<'a> {
                    #[serde(borrow)]
                    tool_name: Cow<'a, str>,
                    #[serde(default, borrow)]
                    tool_input: Option<&'a RawValue>,
                }
                let p: PermPayload<'a> = payload.and_then(|p| object(p.get())).ok_or(DecodeError::BadPayload)?;
                Ok(SledFrame::PermRequest {
                    req_id,
                    tool_name: p.tool_name,
                    tool_input: p.tool_input.unwrap_or_else(|| json_null()),
                })
            }
            kind::PERM_CANCEL => {
                let reason = payload
                    .and_then(|p| object::<ReasonPayload<'a>>(p.get()))
                    .and_then(|r| lenient_str(r.reason))
                    .unwrap_or(Cow::Borrowed(""));
                Ok(SledFrame::PermCancel { req_id, reason })
            }
            kind::MCP_RESPONSE => {
                Ok(SledFrame::McpResponse { req_id, payload: payload.unwrap_or_else(|| json_null()) })
            }
            kind::MCP_MESSAGE => Ok(SledFrame::McpMessage { req_id, payload: payload.ok_or(DecodeError::BadPayload)? }),
            kind::RESUMED => Ok(SledFrame::Resumed),
            _ => Err(DecodeError::UnknownType),
        }
    }
}

#[derive(Deserialize)]
struct ReasonPayload<'a> {
    #[serde(default, borrow)]
    reason: Option<&'a RawValue>,
}

// ── Encoding ─────────────────────────────────────────────────────────────────────────────────────────────

#[derive(Serialize)]
struct OutEnvelope<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    req_id: &'a str,
    payload: P,
}

#[derive(Serialize)]
struct IdentityOut<'a> {
    project: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sled_version: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    capabilities: &'a [Cow<'a, str>],
    #[serde(skip_serializing_if = "Option::is_none")]
    permission_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    incarnation: Option<&'a str>,
}

fn encode_envelope<P: Serialize>(kind: &str, req_id: &str, payload: P) -> String {
    // Every payload here is made of strings, numbers, booleans and already-validated raw JSON: serialising
    // it cannot fail.
    match serde_json::to_string(&OutEnvelope { kind, req_id, payload }) {
        Ok(s) => s,
        Err(_) => unreachable!("serialising an envelope of plain data cannot fail"),
    }
}

/// Writes the frames sent on every request by hand: the same bytes serde_json writes for the envelope (the
/// tests hold the two to each other), in one allocation of the right size, without serde's machinery.
struct Writer(String);

impl Writer {
    /// Starts `{"type":"KIND","req_id":"REQ_ID","payload":`; `rest` is how many more bytes are expected.
    fn envelope(kind: &str, req_id: &str, rest: usize) -> Writer {
        let mut w = Writer(String::with_capacity(34 + kind.len() + req_id.len() + rest));
        w.0.push_str("{\"type\":\"");
        w.0.push_str(kind);
        w.0.push_str("\",\"req_id\":");
        w.string(req_id);
        w.0.push_str(",\"payload\":");
        w
    }

    /// A frame whose payload has at most one member, the string `name` (left out when `None`).
    fn with_one_member(kind: &str, req_id: &str, name: &str, value: Option<&str>) -> String {
        let mut w = Writer::envelope(kind, req_id, 16 + name.len() + value.map_or(0, str::len));
        let mut members = Members::new(&mut w);
        if let Some(value) = value {
            members.next(name).string(value);
        }
        w.raw("}}").done()
    }

    fn raw(&mut self, text: &str) -> &mut Writer {
        self.0.push_str(text);
        self
    }

    /// A JSON string, escaped as serde_json escapes it: `"`, `\` and control characters only.
    fn string(&mut self, text: &str) -> &mut Writer {
        self.0.push('"');
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            // Every byte escaped is ASCII, so `at` is a character boundary.
            self.0.push_str(&text[plain..at]);
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.push_str("\\u00");
                self.0.push(char::from(HEX[usize::from(byte >> 4)]));
                self.0.push(char::from(HEX[usize::from(byte & 0xf)]));
            } else {
                self.0.push_str(escape);
            }
            plain = at + 1;
        }
        self.0.push_str(&text[plain..]);
        self.0.push('"');
        self
    }

    fn done(&mut self) -> String {
        core::mem::take(&mut self.0)
    }
}

/// Writes an object's members one after another: the comma before each but the first. Opens the object; the
/// caller closes it.
struct Members<'w> {
    w: &'w mut Writer,
    first: bool,
}

impl<'w> Members<'w> {
    fn new(w: &'w mut Writer) -> Members<'w> {
        w.raw("{");
        Members { w, first: true }
    }

    /// Writes the next member's name; the caller writes its value on the writer returned.
    fn next(&mut self, name: &str) -> &mut Writer {
        if !core::mem::take(&mut self.first) {
            self.w.raw(",");
        }
        self.w.raw("\"").raw(name).raw("\":")
    }
}

/// How long `text` is once written as a JSON string, quotes included (escaped as [`SledFrame::encode`] and
/// [`GatewayFrame::encode`] escape it).
pub fn json_string_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// How long the encoded frame of type `kind` with this `req_id` and a payload of `payload_len` bytes is:
/// so a sender can tell whether a frame fits before it builds it.
pub fn frame_len(kind: &str, req_id: &str, payload_len: usize) -> usize {
    // {"type":"KIND","req_id":REQ_ID,"payload":PAYLOAD}
    9 + kind.len() + 11 + json_string_len(req_id) + 11 + payload_len + 1
}

/// How long a `perm_request` payload for `tool_name` and `tool_input` (JSON text) is once encoded.
pub fn perm_request_payload_len(tool_name: &str, tool_input: &str) -> usize {
    // {"tool_name":NAME,"tool_input":INPUT}
    13 + json_string_len(tool_name) + 14 + tool_input.len() + 1
}

impl SledFrame<'_> {
    /// Encodes this frame as the text of one WebSocket message.
    pub fn encode(&self) -> String {
        match self {
            SledFrame::Identity(id) => encode_envelope(
                kind::IDENTITY,
                IDENTITY_REQ_ID,
                IdentityOut {
                    project: &id.project,
                    protocol: id.protocol,
                    sled_version: id.sled_version.as_deref(),
                    capabilities: &id.capabilities,
                    permission_timeout_ms: id.permission_timeout_ms,
                    incarnation: id.incarnation.as_deref(),
                },
            ),
            SledFrame::Heartbeat => String::from(r#"{"type":"heartbeat","req_id":"","payload":null}"#),
            SledFrame::PermRequest { req_id, tool_name, tool_input } => {
                let input = tool_input.get();
                Writer::envelope(kind::PERM_REQUEST, req_id, 30 + tool_name.len() + input.len())
                    .raw("{\"tool_name\":")
                    .string(tool_name)
                    .raw(",\"tool_input\":")
                    .raw(input)
                    .raw("}}")
                    .done()
            }
            SledFrame::PermCancel { req_id, reason } => Writer::envelope(kind::PERM_CANCEL, req_id, 16 + reason.len())
                .raw("{\"reason\":")
                .string(reason)
                .raw("}}")
                .done(),
            SledFrame::McpResponse { req_id, payload } => {
                let payload = payload.get();
                Writer::envelope(kind::MCP_RESPONSE, req_id, 1 + payload.len()).raw(payload).raw("}").done()
            }
            SledFrame::McpMessage { req_id, payload } => {
                let payload = payload.get();
                Writer::envelope(kind::MCP_MESSAGE, req_id, 1 + payload.len()).raw(payload).raw("}").done()
            }
            SledFrame::Resumed => Writer::envelope(kind::RESUMED, "", 3).raw("{}}").done(),
        }
    }
}

impl GatewayFrame<'_> {
    /// Encodes this frame as the text of one WebSocket message.
    pub fn encode(&self) -> String {
        match self {
            GatewayFrame::PermResponse { req_id, decision, message } => {
                let flags = match decision.to_flags() {
                    (true, true) => r#"{"approved":true,"always_allow":true"#,
                    (true, false) => r#"{"approved":true,"always_allow":false"#,
                    (false, true) => r#"{"approved":false,"always_allow":true"#,
                    (false, false) => r#"{"approved":false,"always_allow":false"#,
                };
                let rest = flags.len() + 2 + message.as_ref().map_or(0, |m| 13 + m.len());
                let mut w = Writer::envelope(kind::PERM_RESPONSE, req_id, rest);
                w.raw(flags);
                if let Some(message) = message {
                    w.raw(",\"message\":").string(message);
                }
                w.raw("}}").done()
            }
            GatewayFrame::McpRequest { req_id, body, session, stream } => {
                let (body, session) = (body.as_deref(), session.as_deref());
                let rest = 40 + body.map_or(0, str::len) + session.map_or(0, str::len);
                let mut w = Writer::envelope(kind::MCP_REQUEST, req_id, rest);
                let mut members = Members::new(&mut w);
                if let Some(body) = body {
                    members.next("body").string(body);
                }
                if let Some(session) = session {
                    members.next("session").string(session);
                }
                // Written only when set, so that a frame without it is byte for byte the original's.
                if *stream {
                    members.next("stream").raw("true");
                }
                w.raw("}}").done()
            }
            GatewayFrame::McpCancel { req_id, reason } => {
                Writer::with_one_member(kind::MCP_CANCEL, req_id, "reason", reason.as_deref())
            }
            GatewayFrame::McpListen { req_id, session } => {
                Writer::with_one_member(kind::MCP_LISTEN, req_id, "session", session.as_deref())
            }
            GatewayFrame::McpSessionEnd { session } => Writer::envelope(kind::MCP_SESSION_END, "", 16 + session.len())
                .raw("{\"session\":")
                .string(session)
                .raw("}}")
                .done(),
            GatewayFrame::ResumeAccepted => Writer::envelope(kind::RESUME_ACCEPTED, "", 3).raw("{}}").done(),
        }
    }
}

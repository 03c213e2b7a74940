//! The little of JSON-RPC 2.0 the uplink needs: reading a message's `id` and building error responses.

use alloc::boxed::Box;
use alloc::string::String;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::wire::object;

/// Invalid JSON was received.
pub const PARSE_ERROR: i32 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i32 = -32600;
/// Internal error: used for every failure of the local MCP call.
pub const INTERNAL_ERROR: i32 = -32603;
/// The method does not exist or is not available: what the sled answers a request from the local server that
/// the gateway cannot relay, and how it ends a standalone stream the local server does not offer.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// The session is missing or ended (the official MCP SDKs' `-32001`): what the sled answers a call whose local
/// session was lost and cannot be renewed, and what the gateway's MCP endpoint answers (with `404`) for an
/// unknown session.
pub const SESSION_NOT_FOUND: i32 = -32001;

/// What a JSON-RPC message body turned out to be, as far as the uplink cares.
#[derive(Clone, Copy, Debug)]
pub enum BodyId<'a> {
    /// A JSON object with a usable `id` (a string or a number): a request expecting a response.
    Id(&'a RawValue),
    /// Valid JSON without a usable `id`: a notification, a batch, or an `id` of the wrong type.
    NoId,
    /// Not JSON at all.
    NotJson,
}

impl PartialEq for BodyId<'_> {
    /// Ids compare by their JSON text.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (BodyId::Id(a), BodyId::Id(b)) => a.get() == b.get(),
            (BodyId::NoId, BodyId::NoId) | (BodyId::NotJson, BodyId::NotJson) => true,
            _ => false,
        }
    }
}

impl Eq for BodyId<'_> {}

/// Reads the JSON-RPC `id` of `body` without building a tree of the rest.
pub fn body_id(body: &str) -> BodyId<'_> {
    probe(body).id
}

/// What the sled reads of a message before relaying it: its `id`, and whether it is an `initialize` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe<'a> {
    /// Its `id`.
    pub id: BodyId<'a>,
    /// True when `method` is `"initialize"` (however its string is escaped).
    pub is_initialize: bool,
    /// True when the object has a `method` member: a request or a notification, not a response.
    pub has_method: bool,
}

/// Reads `body`'s `id` and whether it is an `initialize` request, in one pass, without building a tree of
/// the rest.
pub fn probe(body: &str) -> Probe<'_> {
    #[derive(Deserialize)]
    struct Fields<'a> {
        #[serde(default, borrow)]
        id: Option<&'a RawValue>,
        #[serde(default, borrow)]
        method: Option<&'a RawValue>,
    }
    // Only an object has an `id`: serde's derived structs would also read the array form `["x"]` as `id: "x"`.
    let fields = object::<Fields<'_>>(body);
    let Some(fields) = fields else {
        // Not an object (a batch, a scalar), or an object we could not read: valid JSON still is forwarded.
        let id =
            if serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok() { BodyId::NoId } else { BodyId::NotJson };
        return Probe { id, is_initialize: false, has_method: false };
    };
    let is_initialize = fields.method.is_some_and(|m| {
        m.get() == "\"initialize\""
            || (m.get().contains('\\') && serde_json::from_str::<String>(m.get()).is_ok_and(|m| m == "initialize"))
    });
    let id = match fields.id {
        Some(id) if is_usable_id(id) => BodyId::Id(id),
        _ => BodyId::NoId,
    };
    Probe { id, is_initialize, has_method: fields.method.is_some() }
}

/// Builds the `notifications/cancelled` notification for the request `id`, with `reason`.
pub fn cancelled(id: &RawValue, reason: &str) -> String {
    #[derive(Serialize)]
    struct Params<'a> {
        #[serde(rename = "requestId")]
        request_id: &'a RawValue,
        reason: &'a str,
    }
    #[derive(Serialize)]
    struct Notice<'a> {
        jsonrpc: &'static str,
        method: &'static str,
        params: Params<'a>,
    }
    let notice =
        Notice { jsonrpc: "2.0", method: "notifications/cancelled", params: Params { request_id: id, reason } };
    match serde_json::to_string(&notice) {
        Ok(text) => text,
        Err(_) => unreachable!("serialising plain data cannot fail"),
    }
}

/// The `result.protocolVersion` of an `initialize` response, when it is a string.
pub fn protocol_version(response: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Response {
        result: Option<Initialized>,
    }
    #[derive(Deserialize)]
    struct Initialized {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    object::<Response>(response)?.result?.protocol_version
}

/// The parts of a JSON-RPC message the sled's MCP client looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shape {
    /// `method`, for requests and notifications.
    pub method: Option<String>,
    /// `id`, when present and not `null`.
    pub id: Option<serde_json::Value>,
    /// True when the message has a `result` or an `error` member (even `null`): it is a response.
    pub is_response: bool,
}

/// The members of a JSON-RPC message object that [`shape`] and [`is_response_to`] look at, unparsed.
#[derive(Deserialize)]
struct Members<'a> {
    #[serde(default, borrow)]
    method: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    result: bool,
    #[serde(default, deserialize_with = "present")]
    error: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// The members of `message`, when it is a JSON object; `id` is `None` when absent or `null`.
fn members(message: &str) -> Option<Members<'_>> {
    // Only an object: serde's derived structs would also read the array form.
    let mut m: Members<'_> = object(message)?;
    m.id = m.id.filter(|id| id.get() != "null");
    Some(m)
}

/// Reads a message's [`Shape`]; `None` when it is not a JSON object, or its `id` is a number no float holds.
pub fn shape(message: &str) -> Option<Shape> {
    let m = members(message)?;
    Some(Shape {
        method: m.method.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()),
        id: match m.id {
            Some(raw) => Some(serde_json::from_str(raw.get()).ok()?),
            None => None,
        },
        is_response: m.result || m.error,
    })
}

/// True when `message` is the JSON-RPC response to the request whose id is `id`: the same JSON text, or an
/// equal JSON value (so `"a"` and `"\u0061"` match, `1` and `1.0` do not, and a number too large for any
/// float still matches itself). With no id, any response matches.
pub fn is_response_to(message: &str, id: Option<&RawValue>) -> bool {
    let Some(m) = members(message).filter(|m| m.result || m.error) else { return false };
    let Some(want) = id else { return true };
    let Some(got) = m.id else { return false };
    let value = |raw: &RawValue| serde_json::from_str::<serde_json::Value>(raw.get()).ok();
    got.get() == want.get() || value(got).is_some_and(|got| value(want) == Some(got))
}

/// True when `message` is a JSON-RPC response with a `result` (and no `error`).
pub fn is_result(message: &str) -> bool {
    members(message).is_some_and(|m| m.result && !m.error)
}

/// JSON-RPC ids are strings or numbers (`null` is allowed but means "unknown").
fn is_usable_id(id: &RawValue) -> bool {
    matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

/// Builds `{"jsonrpc":"2.0","id":<id or null>,"error":{"code":…,"message":…}}`.
pub fn error_response(id: Option<&RawValue>, code: i32, message: &str) -> Box<RawValue> {
    #[derive(Serialize)]
    struct ErrorObject<'a> {
        code: i32,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Response<'a> {
        jsonrpc: &'static str,
        id: Option<&'a RawValue>,
        error: ErrorObject<'a>,
    }
    let text: String =
        match serde_json::to_string(&Response { jsonrpc: "2.0", id, error: ErrorObject { code, message } }) {
            Ok(text) => text,
            Err(_) => unreachable!("serialising plain data cannot fail"),
        };
    match RawValue::from_string(text) {
        Ok(raw) => raw,
        Err(_) => unreachable!("serde_json produced invalid JSON"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_reads_the_id_and_spots_initialize_however_it_is_spelled() {
        let p = probe(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#);
        assert!(p.is_initialize && p.id == BodyId::Id(&RawValue::from_string("1".into()).expect("json")));
        assert!(probe(r#"{"id":"a","method":"\u0069nitialize"}"#).is_initialize);
        for not in [r#"{"id":1,"method":"tools/list"}"#, r#"{"id":1,"method":"initialized"}"#, r#"["initialize"]"#, "{"]
        {
            assert!(!probe(not).is_initialize, "{not}");
        }
        assert_eq!(probe(r#"{"method":"notifications/initialized"}"#).id, BodyId::NoId);
        assert_eq!(probe("[1,2]").id, BodyId::NoId);
        assert_eq!(probe("{oops").id, BodyId::NotJson);
    }

    #[test]
    fn the_protocol_version_is_read_from_an_initialize_result() {
        let reply = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{}}}"#;
        assert_eq!(protocol_version(reply).as_deref(), Some("2025-11-25"));
        for none in
            [r#"{"id":0,"error":{"code":1}}"#, r#"{"result":{"protocolVersion":7}}"#, "null", r#"{"result":null}"#]
        {
            assert_eq!(protocol_version(none), None, "{none}");
        }
    }

    #[test]
    fn reads_ids_of_every_kind() {
        let id = |b| match body_id(b) {
            BodyId::Id(id) => Some(String::from(id.get())),
            _ => None,
        };
        assert_eq!(id(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#).as_deref(), Some("7"));
        assert_eq!(id(r#"{"method":"x","params":{"id":1},"id":"a\"b"}"#).as_deref(), Some(r#""a\"b""#));
        assert_eq!(id(r#"{"id":-1.5e3}"#).as_deref(), Some("-1.5e3"));
        assert_eq!(body_id(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#), BodyId::NoId);
        assert_eq!(body_id(r#"{"id":null}"#), BodyId::NoId);
        assert_eq!(body_id(r#"{"id":{"x":1}}"#), BodyId::NoId);
        assert_eq!(body_id(r#"{"id":true}"#), BodyId::NoId);
        assert_eq!(body_id(r#"[{"id":1}]"#), BodyId::NoId);
        assert_eq!(body_id(r#"{"id":1,"id":2}"#), BodyId::NoId);
        // Found by fuzzing: the array form must not read as an id.
        assert_eq!(body_id(r#" [ "}][ "]"#), BodyId::NoId);
        assert_eq!(body_id(r#"["x", 1]"#), BodyId::NoId);
        assert_eq!(body_id("{not json"), BodyId::NotJson);
        assert_eq!(body_id(""), BodyId::NotJson);
    }

    #[test]
    fn body_ids_compare_by_kind_and_text() {
        let one = body_id(r#"{"id":1}"#);
        assert_eq!(one, body_id(r#"{ "id" : 1 }"#));
        assert_ne!(one, body_id(r#"{"id":2}"#));
        assert_ne!(one, BodyId::NoId);
        assert_ne!(BodyId::NoId, BodyId::NotJson);
        assert_ne!(BodyId::NotJson, one);
    }

    #[test]
    fn shapes_and_response_matching() {
        let s = shape(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#).expect("object");
        assert_eq!((s.method.as_deref(), s.id, s.is_response), (Some("initialize"), Some(serde_json::json!(1)), false));
        let s = shape(r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#).expect("object");
        assert_eq!((s.id, s.is_response), (None, false));
        assert!(shape(r#"{"id":1,"result":null}"#).expect("object").is_response, "a null result still counts");
        assert!(shape("[1]").is_none() && shape("nope").is_none());
        let id = RawValue::from_string(String::from("\"a\"")).expect("json");
        assert!(is_response_to(r#"{"jsonrpc":"2.0","id":"\u0061","result":{}}"#, Some(&id)));
        assert!(is_response_to(r#"{"id":"a","error":{"code":1,"message":"x"}}"#, Some(&id)));
        // Found by the `jsonrpc` fuzz target: an id beyond any float's range is still valid JSON, and a
        // response echoing it is its response.
        let huge = serde_json::from_str::<&RawValue>("7.7E366123").expect("valid JSON");
        assert!(is_response_to(r#"{"id":7.7E366123,"result":{}}"#, Some(huge)));
        assert!(!is_response_to(r#"{"id":7.7E366124,"result":{}}"#, Some(huge)));
        assert!(!is_response_to(r#"{"id":"b","result":{}}"#, Some(&id)));
        assert!(
            !is_response_to(r#"{"id":"a","method":"sampling/createMessage"}"#, Some(&id)),
            "a server request is not the answer"
        );
        assert!(is_response_to(r#"{"id":7,"result":1}"#, None));
    }

    #[test]
    fn error_response_is_valid_json_rpc() {
        let id = RawValue::from_string(String::from("\"x\"")).ok();
        let r = error_response(id.as_deref(), INTERNAL_ERROR, "boom \"quoted\"");
        let v: serde_json::Value = serde_json::from_str(r.get()).expect("valid JSON");
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], "x");
        assert_eq!(v["error"]["code"], -32603);
        assert_eq!(v["error"]["message"], "boom \"quoted\"");
        let r = error_response(None, PARSE_ERROR, "bad");
        assert_eq!(r.get(), r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}"#);
    }
}

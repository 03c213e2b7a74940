//! The wire codec: the original's envelope, liberal decoding, strict encoding, both directions.

use std::borrow::Cow;

use serde_json::{Value, json};
use uplink_proto::wire::{DecodeError, Identity, PROTOCOL_VERSION, json_null};
use uplink_proto::{Decision, GatewayFrame, RawValue, SledFrame};

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).expect("valid JSON")
}

fn value(text: &str) -> Value {
    serde_json::from_str(text).expect("encoder produced valid JSON")
}

#[test]
fn sled_frames_encode_exactly_as_the_original() {
    // Field order and shape match the original's `UplinkEnvelope` serialisation.
    assert_eq!(SledFrame::Heartbeat.encode(), r#"{"type":"heartbeat","req_id":"","payload":null}"#);
    let input = raw(r#"{"command":"echo hello"}"#);
    let req = SledFrame::PermRequest { req_id: "req-1".into(), tool_name: "Bash".into(), tool_input: &input };
    assert_eq!(
        req.encode(),
        r#"{"type":"perm_request","req_id":"req-1","payload":{"tool_name":"Bash","tool_input":{"command":"echo hello"}}}"#
    );
    let old_identity = SledFrame::Identity(Identity {
        project: "test-proj".into(),
        protocol: None,
        sled_version: None,
        capabilities: vec![],
        permission_timeout_ms: None,
        incarnation: None,
    });
    assert_eq!(old_identity.encode(), r#"{"type":"identity","req_id":"identity","payload":{"project":"test-proj"}}"#);
    let resp = raw(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
    assert_eq!(
        SledFrame::McpResponse { req_id: "m1".into(), payload: &resp }.encode(),
        r#"{"type":"mcp_response","req_id":"m1","payload":{"jsonrpc":"2.0","id":1,"result":{}}}"#
    );
}

#[test]
fn gateway_frames_encode_exactly_as_the_original() {
    let approve = GatewayFrame::PermResponse { req_id: "r1".into(), decision: Decision::Approve, message: None };
    assert_eq!(
        approve.encode(),
        r#"{"type":"perm_response","req_id":"r1","payload":{"approved":true,"always_allow":false}}"#
    );
    let mcp =
        GatewayFrame::McpRequest { req_id: "m".into(), body: Some(r#"{"id":1}"#.into()), session: None, stream: false };
    assert_eq!(mcp.encode(), r#"{"type":"mcp_request","req_id":"m","payload":{"body":"{\"id\":1}"}}"#);
}

#[test]
fn every_sled_frame_round_trips() {
    let input = raw(r#"{"nested":[1,2,{"a":"\u00e9\n"}]}"#);
    let resp = raw(r#"{"jsonrpc":"2.0","id":"x","result":null}"#);
    let frames = [
        SledFrame::Identity(Identity {
            project: "p \"quoted\"".into(),
            protocol: Some(PROTOCOL_VERSION),
            sled_version: Some("1.2.3".into()),
            capabilities: vec!["perm_cancel".into(), "mcp_session".into(), "resume".into()],
            permission_timeout_ms: Some(120_000),
            incarnation: Some("0123456789abcdef".into()),
        }),
        SledFrame::Heartbeat,
        SledFrame::Resumed,
        SledFrame::PermRequest { req_id: "r\\1".into(), tool_name: "Write".into(), tool_input: &input },
        SledFrame::PermCancel { req_id: "r2".into(), reason: "timeout".into() },
        SledFrame::McpResponse { req_id: "m1".into(), payload: &resp },
        SledFrame::McpResponse { req_id: "m2".into(), payload: json_null() },
    ];
    for frame in frames {
        let text = frame.encode();
        let back = SledFrame::decode(&text).expect("decodes");
        assert_eq!(back.encode(), text, "round trip of {frame:?}");
    }
}

#[test]
fn every_gateway_frame_round_trips() {
    let frames = [
        GatewayFrame::PermResponse { req_id: "a".into(), decision: Decision::Approve, message: None },
        GatewayFrame::PermResponse { req_id: "b".into(), decision: Decision::Deny, message: None },
        GatewayFrame::PermResponse { req_id: "c".into(), decision: Decision::AlwaysAllow, message: None },
        GatewayFrame::PermResponse {
            req_id: "d".into(),
            decision: Decision::Deny,
            message: Some("not on \"main\"\n\u{1b}[31m, ask Ana".into()),
        },
        GatewayFrame::McpRequest {
            req_id: "m".into(),
            body: Some(r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#.into()),
            session: Some("s-1".into()),
            stream: true,
        },
        GatewayFrame::McpRequest { req_id: "n".into(), body: None, session: None, stream: false },
        GatewayFrame::McpCancel { req_id: "m".into(), reason: None },
        GatewayFrame::McpListen { req_id: "l".into(), session: None },
        GatewayFrame::ResumeAccepted,
    ];
    for frame in frames {
        let text = frame.encode();
        assert_eq!(GatewayFrame::decode(&text), Ok(frame));
    }
}

#[test]
fn the_resume_frames_are_as_documented_and_read_leniently() {
    assert_eq!(GatewayFrame::ResumeAccepted.encode(), r#"{"type":"resume_accepted","req_id":"","payload":{}}"#);
    assert_eq!(SledFrame::Resumed.encode(), r#"{"type":"resumed","req_id":"","payload":{}}"#);
    // Members added later, or none at all, read the same.
    for text in [
        r#"{"type":"resume_accepted","req_id":"","payload":{"window_ms":300000}}"#,
        r#"{"payload":null,"type":"resume_accepted"}"#,
    ] {
        assert_eq!(GatewayFrame::decode(text), Ok(GatewayFrame::ResumeAccepted), "{text}");
    }
    assert!(matches!(SledFrame::decode(r#"{"type":"resumed","req_id":"x","payload":[1]}"#), Ok(SledFrame::Resumed)));
    // An incarnation of the wrong type reads as absent.
    let text = r#"{"type":"identity","req_id":"identity","payload":{"project":"p","incarnation":7}}"#;
    let Ok(SledFrame::Identity(id)) = SledFrame::decode(text) else { panic!("decodes") };
    assert_eq!(id.incarnation, None);
}

fn decision_of(payload: &str) -> Decision {
    let text = format!(r#"{{"type":"perm_response","req_id":"r","payload":{payload}}}"#);
    match GatewayFrame::decode(&text) {
        Ok(GatewayFrame::PermResponse { decision, .. }) => decision,
        other => panic!("{payload}: {other:?}"),
    }
}

#[test]
fn a_perm_response_message_is_read_only_when_it_is_a_string() {
    let message_of = |payload: &str| {
        let text = format!(r#"{{"type":"perm_response","req_id":"r","payload":{payload}}}"#);
        match GatewayFrame::decode(&text) {
            Ok(GatewayFrame::PermResponse { message, .. }) => message.map(|m| m.into_owned()),
            other => panic!("{payload}: {other:?}"),
        }
    };
    assert_eq!(
        message_of(r#"{"approved":false,"message":"use the staging db"}"#).as_deref(),
        Some("use the staging db")
    );
    assert_eq!(message_of(r#"{"message":"caf\u00e9\n"}"#).as_deref(), Some("café\n"));
    for none in [r#"{"approved":false}"#, r#"{"message":null}"#, r#"{"message":7}"#, r#"{"message":["x"]}"#, "null"] {
        assert_eq!(message_of(none), None, "{none}");
    }
    // The original's frames (no message) read as before; a message never changes the decision.
    assert_eq!(decision_of(r#"{"approved":true,"message":"deny"}"#), Decision::Approve);
    assert_eq!(decision_of(r#"{"approved":false,"message":"approve"}"#), Decision::Deny);
}

#[test]
fn perm_response_flags_are_read_fail_closed() {
    assert_eq!(decision_of(r#"{"approved":true,"always_allow":false}"#), Decision::Approve);
    assert_eq!(decision_of(r#"{"approved":true}"#), Decision::Approve);
    assert_eq!(decision_of(r#"{"approved":true,"always_allow":true}"#), Decision::AlwaysAllow);
    // As in the original, always_allow wins even without approved.
    assert_eq!(decision_of(r#"{"always_allow":true}"#), Decision::AlwaysAllow);
    for deny in [
        r#"{"approved":false}"#,
        r#"{}"#,
        r#"{"approved":"true"}"#,
        r#"{"approved":1}"#,
        r#"{"approved":[true]}"#,
        r#"{"approved":{"x":true}}"#,
        r#"{"approved":null,"always_allow":"yes"}"#,
        r#"{"approved":true,"approved":true}"#,
        r#"null"#,
        r#"[true]"#,
        r#"[true,true]"#,
        r#"true"#,
        r#""approved""#,
    ] {
        assert_eq!(decision_of(deny), Decision::Deny, "{deny}");
    }
    // Whitespace around a genuine `true` is still `true`.
    assert_eq!(decision_of("{ \"approved\" :\n true }"), Decision::Approve);
}

#[test]
fn missing_req_id_and_payload_are_tolerated() {
    assert_eq!(
        GatewayFrame::decode(r#"{"type":"perm_response"}"#),
        Ok(GatewayFrame::PermResponse { req_id: "".into(), decision: Decision::Deny, message: None })
    );
    assert_eq!(
        GatewayFrame::decode(r#"{"type":"mcp_request","req_id":null,"extra":[1]}"#),
        Ok(GatewayFrame::McpRequest { req_id: "".into(), body: None, session: None, stream: false })
    );
    assert!(matches!(SledFrame::decode(r#"{"type":"heartbeat"}"#), Ok(SledFrame::Heartbeat)));
}

#[test]
fn mcp_request_body_must_be_a_string() {
    let body = |payload: &str| match GatewayFrame::decode(&format!(
        r#"{{"type":"mcp_request","req_id":"m","payload":{payload}}}"#
    )) {
        Ok(GatewayFrame::McpRequest { body, session, .. }) => (body.map(Cow::into_owned), session.map(Cow::into_owned)),
        other => panic!("{other:?}"),
    };
    assert_eq!(body(r#"{"body":"{}","session":"s"}"#), (Some("{}".to_owned()), Some("s".to_owned())));
    assert_eq!(body(r#"{"body":{"id":1}}"#), (None, None));
    assert_eq!(body(r#"{"body":"x","session":7}"#), (Some("x".to_owned()), None));
    assert_eq!(body(r#""body""#), (None, None));
    assert_eq!(body(r#"["{}","s"]"#), (None, None), "array form of the payload struct");
}

#[test]
fn unknown_types_and_garbage_are_errors_to_ignore() {
    let unknown = [
        r#"{"type":"future_type","req_id":"x","payload":{}}"#,
        r#"{"type":"heartbeat","req_id":"","payload":null}"#, // a sled frame, sent the wrong way
    ];
    for text in unknown {
        assert_eq!(GatewayFrame::decode(text), Err(DecodeError::UnknownType), "{text}");
    }
    assert!(matches!(SledFrame::decode(r#"{"type":"perm_response"}"#), Err(DecodeError::UnknownType)));
    let malformed = [
        "not-json",
        "",
        "null",
        "[]",
        "{}",
        r#"{"type":7}"#,
        r#"{"type":"perm_response","req_id":5}"#,
        "{\"type\":\"x\"} trailing",
        "\u{0}",
        // The array form serde accepts for derived structs must not pass as an envelope.
        r#"["perm_response","r1",{"approved":true}]"#,
    ];
    for text in malformed {
        assert_eq!(GatewayFrame::decode(text), Err(DecodeError::Malformed), "{text:?}");
        assert!(matches!(SledFrame::decode(text), Err(DecodeError::Malformed)), "{text:?}");
    }
}

#[test]
fn gateway_side_decoding_of_identity_and_perm_request() {
    match SledFrame::decode(
        r#"{"type":"identity","req_id":"identity","payload":{"project":"p","protocol":"one","capabilities":["a",2,"b"],"sled_version":9}}"#,
    ) {
        Ok(SledFrame::Identity(id)) => {
            assert_eq!(id.project, "p");
            assert_eq!(id.protocol, None);
            assert_eq!(id.sled_version, None);
            assert_eq!(id.capabilities, vec![Cow::Borrowed("a"), Cow::Borrowed("b")]);
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        r#"{"type":"identity","payload":{}}"#,
        r#"{"type":"identity","payload":{"project":1}}"#,
        r#"{"type":"identity"}"#,
        r#"{"type":"perm_request","req_id":"r","payload":{"tool_input":{}}}"#,
        r#"{"type":"identity","payload":["p"]}"#,
        r#"{"type":"perm_request","req_id":"r","payload":["Bash",{}]}"#,
    ] {
        assert!(matches!(SledFrame::decode(bad), Err(DecodeError::BadPayload)), "{bad}");
    }
    match SledFrame::decode(r#"{"type":"perm_request","req_id":"r","payload":{"tool_name":"Bash"}}"#) {
        Ok(SledFrame::PermRequest { tool_input, .. }) => assert_eq!(tool_input.get(), "null"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pass_through_payloads_are_not_rewritten() {
    // Raw text survives byte for byte: key order, spacing inside, number spelling.
    let text = r#"{"type":"mcp_response","req_id":"m","payload":{"b":1.50,"a":[ 1 , 2 ]}}"#;
    match SledFrame::decode(text) {
        Ok(SledFrame::McpResponse { payload, .. }) => {
            assert_eq!(payload.get(), r#"{"b":1.50,"a":[ 1 , 2 ]}"#)
        }
        other => panic!("{other:?}"),
    }
    let v = value(&SledFrame::McpResponse { req_id: "m".into(), payload: &raw(r#"{"b":1.50}"#) }.encode());
    assert_eq!(v, json!({"type":"mcp_response","req_id":"m","payload":{"b":1.50}}));
}

mod one_pass {
    //! The gateway → sled decoder reads a `perm_response` or `mcp_request` payload in the same pass as the
    //! envelope when `type` comes first, and keeps it raw to read afterwards when it does not. Both paths must
    //! decode every frame the same way.
    use proptest::prelude::*;

    use super::*;

    /// Members a payload may hold: the ones the decoder reads, with values of every type, and others.
    fn member() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("approved"),
            Just("always_allow"),
            Just("message"),
            Just("body"),
            Just("session"),
            Just("other"),
            Just("appr\\u006fved"),
            Just("b\\u006fdy"),
        ];
        let value = prop_oneof![
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("null".to_owned()),
            Just("1".to_owned()),
            Just("[true]".to_owned()),
            Just(r#"{"approved":true}"#.to_owned()),
            Just(r#""{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}""#.to_owned()),
            Just(r#""s-1""#.to_owned()),
            Just(r#""esc\"aped\n""#.to_owned()),
        ];
        (key, value).prop_map(|(k, v)| format!(r#""{k}":{v}"#))
    }

    fn payload() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::collection::vec(member(), 0..5).prop_map(|m| format!("{{{}}}", m.join(","))),
            1 => prop_oneof![Just("null"), Just("true"), Just("[]"), Just("[true,true]"), Just("\"x\""), Just("7")]
                .prop_map(str::to_owned),
        ]
    }

    proptest! {
        #[test]
        fn payload_before_or_after_type_decodes_the_same(
            kind in prop_oneof![Just("perm_response"), Just("mcp_request")],
            payload in payload(),
        ) {
            let type_first = format!(r#"{{"type":"{kind}","req_id":"r-1","payload":{payload}}}"#);
            let payload_first = format!(r#"{{"payload":{payload},"req_id":"r-1","type":"{kind}"}}"#);
            prop_assert_eq!(GatewayFrame::decode(&type_first), GatewayFrame::decode(&payload_first));
        }
    }

    #[test]
    fn both_paths_read_the_flags_and_fields() {
        for text in [
            r#"{"type":"perm_response","req_id":"a","payload":{"approved":true,"always_allow":true}}"#,
            r#"{"payload":{"approved":true,"always_allow":true},"req_id":"a","type":"perm_response"}"#,
        ] {
            assert_eq!(
                GatewayFrame::decode(text),
                Ok(GatewayFrame::PermResponse { req_id: "a".into(), decision: Decision::AlwaysAllow, message: None })
            );
        }
        for text in [
            r#"{"type":"mcp_request","req_id":"m","payload":{"body":"{\"id\":1}","session":"s"}}"#,
            r#"{"payload":{"body":"{\"id\":1}","session":"s"},"req_id":"m","type":"mcp_request"}"#,
        ] {
            assert_eq!(
                GatewayFrame::decode(text),
                Ok(GatewayFrame::McpRequest {
                    req_id: "m".into(),
                    body: Some(r#"{"id":1}"#.into()),
                    session: Some("s".into()),
                    stream: false,
                })
            );
        }
        // A repeated flag (or message) is a denial without a message, a repeated envelope member a malformed
        // frame, on both paths.
        let repeated =
            r#"{"type":"perm_response","req_id":"a","payload":{"approved":true,"message":"x","message":"y"}}"#;
        assert_eq!(
            GatewayFrame::decode(repeated),
            Ok(GatewayFrame::PermResponse { req_id: "a".into(), decision: Decision::Deny, message: None })
        );
        let repeated = r#"{"type":"perm_response","req_id":"a","payload":{"approved":true,"approved":true}}"#;
        assert_eq!(
            GatewayFrame::decode(repeated),
            Ok(GatewayFrame::PermResponse { req_id: "a".into(), decision: Decision::Deny, message: None })
        );
        for twice in [
            r#"{"type":"perm_response","type":"perm_response","payload":{"approved":true}}"#,
            r#"{"type":"perm_response","req_id":"a","req_id":"b","payload":{"approved":true}}"#,
            r#"{"type":"perm_response","req_id":"a","payload":{"approved":false},"payload":{"approved":true}}"#,
        ] {
            assert_eq!(GatewayFrame::decode(twice), Err(DecodeError::Malformed), "{twice}");
        }
        // A repeated `body` (or `session`) makes an mcp_request's payload unreadable: no body to call with.
        let two_bodies = r#"{"type":"mcp_request","req_id":"m","payload":{"body":"{}","body":"{\"id\":1}"}}"#;
        assert_eq!(
            GatewayFrame::decode(two_bodies),
            Ok(GatewayFrame::McpRequest { req_id: "m".into(), body: None, session: None, stream: false })
        );
    }
}

mod hand_written_encoding {
    //! The frames sent on every request are written by hand rather than through serde. They must be the
    //! very bytes serde_json writes for the envelope, which these oracle structs reproduce.
    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;

    #[derive(Serialize)]
    struct Envelope<'a, P> {
        #[serde(rename = "type")]
        kind: &'a str,
        req_id: &'a str,
        payload: P,
    }

    #[derive(Serialize)]
    struct PermRequest<'a> {
        tool_name: &'a str,
        tool_input: &'a RawValue,
    }

    #[derive(Serialize)]
    struct Reason<'a> {
        reason: &'a str,
    }

    #[derive(Serialize)]
    struct Flags<'a> {
        approved: bool,
        always_allow: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
    }

    /// Without `stream`, the original's `mcp_request`; the stream extension adds it, last.
    #[derive(Serialize)]
    struct McpRequest<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<&'a str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        stream: bool,
    }

    fn serde<P: Serialize>(kind: &str, req_id: &str, payload: P) -> String {
        serde_json::to_string(&Envelope { kind, req_id, payload }).expect("plain data serialises")
    }

    /// Any text, and text made of what needs escaping: quotes, backslashes, every control character, DEL
    /// and characters beyond ASCII (which are not escaped).
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[\\x00-\\x20\"\\\\/a\\x7f\u{e9}\u{2028}\u{1F600}]{0,16}"]
    }

    fn raw_json() -> impl Strategy<Value = Box<RawValue>> {
        prop_oneof![
            Just(r#"{"command":"ls -la","n":[1,2.50,-3e7],"ok":true}"#),
            Just("null"),
            Just(r#""\u00e9\n""#),
            Just(r#"{"jsonrpc":"2.0","id":"x","result":{"content":[]}}"#),
        ]
        .prop_map(raw)
    }

    proptest! {
        #[test]
        fn every_hand_written_frame_is_what_serde_json_writes(
            req_id in text(),
            name in text(),
            raw_value in raw_json(),
            body in prop::option::of(text()),
            session in prop::option::of(text()),
            decision in prop_oneof![Just(Decision::Approve), Just(Decision::Deny), Just(Decision::AlwaysAllow)],
        ) {
            let frame = SledFrame::PermRequest { req_id: req_id.as_str().into(), tool_name: name.as_str().into(), tool_input: &raw_value };
            prop_assert_eq!(frame.encode(), serde("perm_request", &req_id, PermRequest { tool_name: &name, tool_input: &raw_value }));
            // The sizes a sender checks before it builds a frame are the encoder's.
            let payload = uplink_proto::wire::perm_request_payload_len(&name, raw_value.get());
            prop_assert_eq!(uplink_proto::wire::frame_len("perm_request", &req_id, payload), frame.encode().len());
            let mcp = SledFrame::McpResponse { req_id: req_id.as_str().into(), payload: &raw_value };
            prop_assert_eq!(uplink_proto::wire::frame_len("mcp_response", &req_id, raw_value.get().len()), mcp.encode().len());
            let frame = SledFrame::PermCancel { req_id: req_id.as_str().into(), reason: name.as_str().into() };
            prop_assert_eq!(frame.encode(), serde("perm_cancel", &req_id, Reason { reason: &name }));
            let frame = SledFrame::McpResponse { req_id: req_id.as_str().into(), payload: &raw_value };
            prop_assert_eq!(frame.encode(), serde("mcp_response", &req_id, &raw_value));
            let (approved, always_allow) = decision.to_flags();
            for message in [None, body.as_deref()] {
                let frame = GatewayFrame::PermResponse { req_id: req_id.as_str().into(), decision, message: message.map(Cow::Borrowed) };
                prop_assert_eq!(frame.encode(), serde("perm_response", &req_id, Flags { approved, always_allow, message }));
            }
            let (body_ref, session_ref) = (body.as_deref(), session.as_deref());
            let request = |stream| GatewayFrame::McpRequest {
                req_id: req_id.as_str().into(),
                body: body_ref.map(Cow::Borrowed),
                session: session_ref.map(Cow::Borrowed),
                stream,
            };
            for stream in [false, true] {
                let oracle = serde("mcp_request", &req_id, McpRequest { body: body_ref, session: session_ref, stream });
                prop_assert_eq!(request(stream).encode(), oracle);
            }
            // Every gateway frame reads back as it was written.
            let frames = [
                request(true),
                GatewayFrame::McpCancel { req_id: req_id.as_str().into(), reason: body.as_deref().map(Cow::Borrowed) },
                GatewayFrame::McpListen { req_id: req_id.as_str().into(), session: session.as_deref().map(Cow::Borrowed) },
                GatewayFrame::McpSessionEnd { session: name.as_str().into() },
            ];
            for frame in frames {
                let text = frame.encode();
                prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
                prop_assert_eq!(GatewayFrame::decode(&text), Ok(frame));
            }
            let message = SledFrame::McpMessage { req_id: req_id.as_str().into(), payload: &raw_value };
            prop_assert_eq!(message.encode(), serde("mcp_message", &req_id, &raw_value));
            prop_assert_eq!(uplink_proto::wire::frame_len("mcp_message", &req_id, raw_value.get().len()), message.encode().len());
        }
    }

    #[test]
    fn the_heartbeat_is_what_serde_json_writes() {
        assert_eq!(SledFrame::Heartbeat.encode(), serde("heartbeat", "", ()));
    }
}

#[test]
fn decisions_have_one_word_each_in_display_fromstr_and_serde() {
    for (d, word) in [(Decision::Approve, "approve"), (Decision::Deny, "deny"), (Decision::AlwaysAllow, "always_allow")]
    {
        assert_eq!((d.as_str(), d.to_string()), (word, word.to_owned()));
        assert_eq!(word.parse::<Decision>(), Ok(d));
        assert_eq!(serde_json::to_string(&d).expect("serialize"), format!("\"{word}\""));
        assert_eq!(serde_json::from_str::<Decision>(&format!("\"{word}\"")).expect("deserialize"), d);
    }
    for bad in ["", "Approve", "allow", "approve ", "always-allow"] {
        assert!(bad.parse::<Decision>().is_err(), "{bad:?}");
    }
}

/// [`json_depth`](uplink_proto::wire::json_depth) and the input depth the gateway accepts.
mod depth {
    use proptest::prelude::*;
    use serde_json::Value;
    use uplink_proto::wire::{MAX_INPUT_DEPTH, json_depth};

    /// The reference: a parsed value's depth, counted on its tree.
    fn depth_of(v: &Value) -> usize {
        match v {
            Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
            Value::Object(members) => 1 + members.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn brackets_in_strings_and_escapes_do_not_count() {
        for (text, depth) in [
            ("1", 0),
            (r#""[{""#, 0),
            ("[]", 1),
            ("{}", 1),
            (r#"{"a":[1]}"#, 2),
            (r#"[[],[[]],[]]"#, 3),
            (r#"{"[[[":"]]]{{{","x":{"y":"\"[\\"}}"#, 2),
            (r#"["\\", [ "\"]]]" ] ]"#, 2),
            (r#"["\u005b\u005b"]"#, 1),
            (" [ { \"k\" : [ ] } ] ", 3),
        ] {
            assert_eq!(json_depth(text), depth, "{text}");
        }
        // Ten thousand levels, read without recursion.
        assert_eq!(json_depth(&nested(10_000)), 10_000);
    }

    #[test]
    fn what_the_gateway_accepts_parses_in_every_envelope_its_readers_put_it_in() {
        // The deepest accepted input, in the deepest wrapping the gateway's readers parse: the admin
        // listing (`{"permissions":[{…,"tool_input":…}]}`) and the audit log's listing
        // (`{"records":[{"record":{…,"input":…}}]}`), each with room to spare; serde_json stops at 128.
        let input = nested(MAX_INPUT_DEPTH);
        for wrapped in [
            format!(r#"{{"permissions":[{{"tool_input":{input}}}]}}"#),
            format!(r#"{{"records":[{{"record":{{"input":{input}}}}}]}}"#),
            format!("{}{input}{}", "[".repeat(32), "]".repeat(32)),
        ] {
            assert!(serde_json::from_str::<Value>(&wrapped).is_ok(), "{wrapped}");
        }
    }

    /// JSON values of any shape, with strings full of brackets, quotes and escapes.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[\\[\\]{}\"\\\\/a\u{e9}\u{1F600}\\x00-\\x1f]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(12, 96, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[\\[\\]{}\"\\\\a]{0,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_scan_counts_what_the_tree_has(v in json()) {
            let depth = depth_of(&v);
            prop_assert_eq!(json_depth(&v.to_string()), depth);
            prop_assert_eq!(json_depth(&serde_json::to_string_pretty(&v).expect("serialize")), depth);
        }

        #[test]
        fn the_scan_agrees_with_serde_jsons_own_limit(v in json(), around in 0usize..160) {
            // `around` levels of arrays and objects around a value: serde_json parses it exactly when it
            // nests fewer than 128 levels.
            let mut text = v.to_string();
            for i in 0..around {
                text = if i % 2 == 0 { format!("[{text}]") } else { format!(r#"{{"k":{text}}}"#) };
            }
            let parsed = serde_json::from_str::<Value>(&text);
            prop_assert_eq!(parsed.is_ok(), json_depth(&text) < 128, "{:?}", parsed.err());
        }
    }
}

//! JSON-RPC helpers on arbitrary text: no panics, and they agree with each other and with serde_json.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uplink_proto::jsonrpc::{self, BodyId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Validity by the JSON grammar (a number like 5e99999 is valid JSON, though no f64 holds it).
    let valid = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    let value = serde_json::from_str::<serde_json::Value>(text).ok();
    match jsonrpc::body_id(text) {
        BodyId::NotJson => assert!(!valid, "valid JSON reported as not JSON: {text:?}"),
        BodyId::NoId => assert!(valid),
        BodyId::Id(id) => {
            assert!(valid, "an id from invalid JSON: {text:?}");
            assert!(text.trim_start().starts_with('{'), "an id from a non-object: {text:?}");
            assert!(matches!(id.get().as_bytes()[0], b'"' | b'-' | b'0'..=b'9'));
            if let (Some(v), Ok(id)) = (value, serde_json::from_str::<serde_json::Value>(id.get())) {
                if let Some(shape) = jsonrpc::shape(text) {
                    assert_eq!(shape.id.as_ref(), Some(&id));
                }
                assert_eq!(v.get("id"), Some(&id));
            }
        }
    }
    // An error response built from any id is valid JSON-RPC.
    if let BodyId::Id(id) = jsonrpc::body_id(text) {
        let r = jsonrpc::error_response(Some(id), jsonrpc::INTERNAL_ERROR, text);
        assert!(jsonrpc::is_response_to(r.get(), Some(id)));
    }
});

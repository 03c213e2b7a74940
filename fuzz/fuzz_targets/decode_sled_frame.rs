//! Sled → gateway frames: arbitrary bytes never panic; whatever decodes re-encodes to something that decodes
//! and re-encodes identically. A `perm_request`'s input depth, as the gateway counts it without parsing
//! (`wire::json_depth`), is the one serde_json finds, and serde_json refuses the input exactly when it is 128
//! or more.
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use uplink_proto::SledFrame;
use uplink_proto::wire::json_depth;

/// The depth of a JSON value as serde_json reads it (every member counts, repeated keys too).
struct Depth(usize);

impl<'de> Deserialize<'de> for Depth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Depth, D::Error> {
        d.deserialize_any(DepthVisitor)
    }
}

struct DepthVisitor;

impl<'de> Visitor<'de> for DepthVisitor {
    type Value = Depth;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Depth, A::Error> {
        let mut deepest = 0;
        while let Some(Depth(d)) = seq.next_element()? {
            deepest = deepest.max(d);
        }
        Ok(Depth(deepest + 1))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Depth, A::Error> {
        let mut deepest = 0;
        while let Some((IgnoredAny, Depth(d))) = map.next_entry()? {
            deepest = deepest.max(d);
        }
        Ok(Depth(deepest + 1))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = SledFrame::decode(text) {
        if let SledFrame::PermRequest { tool_input, .. } = &frame {
            let input = tool_input.get();
            let depth = json_depth(input);
            match serde_json::from_str::<Depth>(input) {
                Ok(Depth(parsed)) => assert_eq!(depth, parsed, "depth of {input:?}"),
                // A number beyond any float is refused too; only the recursion limit says "deep".
                Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
                    assert!(depth >= 128, "depth {depth} of {input:?}")
                }
                Err(_) => {}
            }
        }
        let encoded = frame.encode();
        let again = SledFrame::decode(&encoded).expect("an encoded frame decodes");
        assert_eq!(again.encode(), encoded, "round trip of {text:?}");
    }
});

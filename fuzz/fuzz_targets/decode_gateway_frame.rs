//! Gateway → sled frames: arbitrary bytes never panic; whatever decodes re-encodes to something that decodes
//! to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uplink_proto::GatewayFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = GatewayFrame::decode(text) {
        let encoded = frame.encode();
        let again = GatewayFrame::decode(&encoded).expect("an encoded frame decodes");
        assert_eq!(again, frame, "round trip of {text:?}");
        assert_eq!(again.encode(), encoded, "encoding is stable");
    }
});

//! Sled → gateway frames: arbitrary bytes never panic; whatever decodes re-encodes to something that decodes
//! and re-encodes identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uplink_proto::SledFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = SledFrame::decode(text) {
        let encoded = frame.encode();
        let again = SledFrame::decode(&encoded).expect("an encoded frame decodes");
        assert_eq!(again.encode(), encoded, "round trip of {text:?}");
    }
});

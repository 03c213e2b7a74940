//! The event-stream parser: never panics, stays within its limit, and gives the same events however the
//! stream is split into chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uplink_proto::sse::SseParser;

fuzz_target!(|input: (u16, &[u8])| {
    let (split, data) = input;
    let limit = 4096;
    let whole = SseParser::new(limit).push(data);
    let at = usize::from(split) % (data.len() + 1);
    let mut p = SseParser::new(limit);
    let parts = p.push(&data[..at]).and_then(|mut first| {
        first.extend(p.push(&data[at..])?);
        Ok(first)
    });
    match (whole, parts) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "chunking changed the events");
            assert!(a.iter().all(|e| e.data.len() <= limit + 1));
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("chunking changed the outcome: {a:?} vs {b:?}"),
    }
});

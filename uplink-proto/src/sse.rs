//! An incremental parser for `text/event-stream` (Server-Sent Events), as the WHATWG HTML standard defines it.
//!
//! The sled needs it because an MCP server speaking Streamable HTTP may answer a `POST` with an event stream
//! whose events carry JSON-RPC messages. Feed the body's bytes as they arrive with [`SseParser::push`]; each
//! complete event comes out once. Events without data (priming events, keep-alives) are not reported; comment
//! lines are consumed; `id:` and `retry:` are kept for a client that resumes the stream
//! ([`SseParser::last_event_id`], [`SseParser::retry`]).
//!
//! Memory is bounded: a line or an event's data longer than the configured limit is an error, after which
//! the parser stays failed.

use alloc::string::String;
use alloc::vec::Vec;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, empty when absent (which means `message`).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The stream exceeded the size limit.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event stream line or event larger than {limit} bytes")]
pub struct SseTooLarge {
    /// The limit that was exceeded.
    pub limit: usize,
}

/// Incremental event-stream parser.
#[derive(Clone, Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    event: String,
    /// The previous chunk ended in `\r`: a `\n` starting the next one belongs to that line ending.
    after_cr: bool,
    limit: usize,
    failed: bool,
    /// How many bytes of the UTF-8 byte-order mark opening the stream have been seen (it is skipped), or
    /// `None` once the stream is past its start.
    bom_seen: Option<usize>,
    /// The last `id` field seen (the standard's "last event ID buffer"); empty resets it.
    last_id: Option<String>,
    /// The last valid `retry` field, in milliseconds.
    retry: Option<u64>,
}

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    /// A parser that refuses lines and events larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        SseParser {
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            event: String::new(),
            after_cr: false,
            limit,
            failed: false,
            bom_seen: Some(0),
            last_id: None,
            retry: None,
        }
    }

    /// A parser for the stream that resumes this one: same limit, the same last event id and retry, nothing
    /// half-read.
    pub fn resumed(&self) -> Self {
        SseParser { last_id: self.last_id.clone(), retry: self.retry, ..SseParser::new(self.limit) }
    }

    /// The last event id the stream set, to resume it from (`Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection time the stream asked for, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Feeds the next bytes of the stream; returns the events they complete, in order.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<Vec<SseEvent>, SseTooLarge> {
        let mut events = Vec::new();
        if self.failed {
            return Err(SseTooLarge { limit: self.limit });
        }
        // A byte-order mark is skipped however the stream's first chunks split it. If the stream starts with
        // only part of one, the bytes held back so far are text after all.
        while let (Some(seen), Some((&byte, rest))) = (self.bom_seen, chunk.split_first()) {
            if byte == BOM[seen] {
                chunk = rest;
                self.bom_seen = (seen + 1 < BOM.len()).then_some(seen + 1);
            } else {
                self.bom_seen = None;
                self.feed(&BOM[..seen], &mut events)?;
            }
        }
        self.feed(chunk, &mut events)?;
        Ok(events)
    }

    fn feed(&mut self, chunk: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = core::mem::take(&mut self.line);
                    if let Some(event) = self.process_line(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() >= self.limit {
                        self.failed = true;
                        return Err(SseTooLarge { limit: self.limit });
                    }
                    self.line.push(byte);
                }
            }
            if self.data.len() > self.limit {
                self.failed = true;
                return Err(SseTooLarge { limit: self.limit });
            }
        }
        Ok(())
    }

    fn process_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None; // comment
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = value.into_owned(),
            // An id with a NUL is ignored, as the standard says; an empty one resets the buffer.
            b"id" if !value.contains('\0') => self.last_id = (!value.is_empty()).then(|| value.into_owned()),
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok().or(Some(u64::MAX));
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = core::mem::take(&mut self.event);
        if !core::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent { event, data: core::mem::take(&mut self.data) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<SseEvent> {
        SseParser::new(1 << 20).push(input).expect("within limit")
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent { event: event.into(), data: data.into() }
    }

    /// Asserts that `stream`, split in two at every position, gives `want`.
    fn every_split_gives(stream: &[u8], want: &[SseEvent]) {
        for split in 0..=stream.len() {
            let mut p = SseParser::new(64);
            let mut got = p.push(&stream[..split]).expect("ok");
            got.extend(p.push(&stream[split..]).expect("ok"));
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn parses_events_fields_and_comments() {
        let stream = b": comment\nid: 1\nretry: 100\ndata:\n\nevent: message\ndata: {\"a\":1}\n\ndata: x\ndata:  y\n\n";
        // The first event's data is empty but present: it is an (empty) event, as the standard says.
        assert_eq!(all(stream), vec![ev("", ""), ev("message", "{\"a\":1}"), ev("", "x\n y")]);
    }

    #[test]
    fn the_last_event_id_and_retry_are_kept_for_resuming() {
        let mut p = SseParser::new(64);
        assert_eq!((p.last_event_id(), p.retry()), (None, None));
        assert_eq!(p.push(b"id: e-1\nretry: 500\ndata:\n\n"), Ok(vec![ev("", "")]));
        assert_eq!((p.last_event_id(), p.retry()), (Some("e-1"), Some(500)));
        // A bad retry is ignored, a later id replaces the earlier, an empty one resets it.
        p.push(b"retry: 5x\nid: e-2\n\n").expect("ok");
        assert_eq!((p.last_event_id(), p.retry()), (Some("e-2"), Some(500)));
        p.push(b"id\n\n").expect("ok");
        assert_eq!(p.last_event_id(), None);
    }

    #[test]
    fn priming_events_without_data_are_not_reported() {
        assert_eq!(all(b"id: 0\n\nretry: 3000\n\n: ping\n\n"), vec![]);
        assert_eq!(all(b"event: endpoint\n\n"), vec![]);
    }

    #[test]
    fn every_line_ending_and_any_split_gives_the_same_events() {
        let lf = b"data: one\n\ndata: two\ndata: three\n\n".to_vec();
        let want = all(&lf);
        assert_eq!(want, vec![ev("", "one"), ev("", "two\nthree")]);
        let crlf: Vec<u8> = String::from_utf8(lf.clone()).expect("utf8").replace('\n', "\r\n").into_bytes();
        let cr: Vec<u8> = String::from_utf8(lf.clone()).expect("utf8").replace('\n', "\r").into_bytes();
        for stream in [lf, crlf, cr] {
            // A bare `\r` at the very end is a complete line ending already.
            every_split_gives(&stream, &want);
        }
    }

    #[test]
    fn a_trailing_event_without_blank_line_is_not_dispatched() {
        assert_eq!(all(b"data: unfinished"), vec![]);
        assert_eq!(all(b"data: unfinished\n"), vec![]);
    }

    #[test]
    fn bom_is_skipped_and_invalid_utf8_replaced() {
        assert_eq!(all(b"\xEF\xBB\xBFdata: a\n\n"), vec![ev("", "a")]);
        assert_eq!(all(b"data: \xFF\n\n"), vec![ev("", "\u{FFFD}")]);
        assert_eq!(all(b"field-without-colon\ndata\n\n"), vec![ev("", "")]);
    }

    #[test]
    fn the_limit_is_inclusive_for_lines_and_joined_data() {
        // Lines of exactly 8 bytes and 8 bytes of joined data are within a limit of 8...
        let mut p = SseParser::new(8);
        assert_eq!(
            p.push(
                b"data: 12
data: 12
data: 12

"
            ),
            Ok(vec![ev("", "12\n12\n12")])
        );
        // ...one more line of data is not.
        let mut p = SseParser::new(8);
        assert!(
            p.push(
                b"data: 12
data: 12
data: 12
data: 12
"
            )
            .is_err()
        );
    }

    #[test]
    fn a_bom_counts_only_at_the_very_start() {
        // An empty first chunk does not use up the start.
        let mut p = SseParser::new(64);
        assert_eq!(p.push(b""), Ok(vec![]));
        assert_eq!(p.push(b"\xEF\xBB\xBFdata: a\n\n"), Ok(vec![ev("", "a")]));
        // Later, the same bytes are part of a field name (so not a `data` field).
        assert_eq!(p.push(b"\xEF\xBB\xBFdata: b\n\ndata: c\n\n"), Ok(vec![ev("", "c")]));
    }

    #[test]
    fn a_bom_split_across_chunks_is_still_skipped() {
        // Found by the `sse_parser` fuzz target: a BOM split across the first chunks used to be read as text.
        every_split_gives(b"\xEF\xBB\xBFdata: a\n\n", &[ev("", "a")]);
        // A stream that opens with only part of a BOM keeps those bytes (so no `data` field), split or not.
        every_split_gives(b"\xEF\xBBdata: b\n\ndata: c\n\n", &[ev("", "c")]);
        // Held-back BOM bytes count against the line limit like any other.
        let mut p = SseParser::new(2);
        assert_eq!(p.push(b"\xEF\xBB"), Ok(vec![]));
        assert!(p.push(b"x").is_err());
    }

    #[test]
    fn oversized_lines_and_events_fail_and_stay_failed() {
        let mut p = SseParser::new(8);
        assert_eq!(p.push(b"data: 12345678\n"), Err(SseTooLarge { limit: 8 }));
        assert!(p.push(b"\n").is_err());
        let mut p = SseParser::new(8);
        assert!(p.push(b"data: 1234\ndata: 1234\n").is_err(), "joined data over the limit");
    }
}

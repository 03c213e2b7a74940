//! The audit log's records and the hash chain that links them.
//!
//! Each record is a JSON object written in one canonical form ([`canonical`]: keys sorted, no spaces), and
//! sealed: `hash = SHA-256(prev ‖ text)`, where `prev` is the hash of the record before it (32 zero bytes
//! before the first). The store keeps the hash of the last record (the *head*) beside the log, and, once
//! old records are pruned, the place where the log now starts (the *anchor*). [`verify`] walks the log and
//! finds any record changed, removed, inserted or reordered, and a log cut short of its head.
//!
//! What the chain cannot show: someone able to rewrite the whole file can rewrite the whole chain and its
//! head. `uplink audit verify` prints the head; keep it elsewhere (a ticket, a log shipper) to pin the log
//! up to that point.

use std::sync::Arc;

use serde::Serialize;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// A record before it is sealed: its kind, the columns it is searched by, and the rest.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// `request`, `auto`, `end`, `rule_added` or `rule_removed`.
    pub kind: &'static str,
    /// The permission's public id, for the records of one.
    pub perm: Option<String>,
    /// The project.
    pub project: Option<String>,
    /// The tool.
    pub tool: Option<String>,
    /// How it ended: a decision (`approve`, `deny`, `always_allow`) or a withdrawal (`cancelled`,
    /// `deadline`, `connection_lost`).
    pub outcome: Option<String>,
    /// The tool input of a `request` or `auto` record: written as `input` and `input_sha256`.
    pub input: Option<ToolInput>,
    /// Everything else in the record.
    pub fields: Map<String, Value>,
}

/// A tool input as the sled sent it: JSON text, held without a copy (the pending request shares it) and
/// without being parsed until its record is written. The record then holds `input`, its canonical text
/// (or `"redacted"`), and `input_sha256`, the SHA-256 of that canonical text, in hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolInput {
    /// The JSON text (text that is not JSON is written as `null`).
    pub json: Arc<str>,
    /// Write `"redacted"` in its place (its hash stays).
    pub redacted: bool,
}

impl Entry {
    /// A record of `kind` at `at_ms`, with nothing else yet.
    pub fn new(at_ms: u64, kind: &'static str) -> Entry {
        Entry { at_ms, kind, perm: None, project: None, tool: None, outcome: None, input: None, fields: Map::new() }
    }

    /// The same, with `key` set to `value`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Entry {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    /// The same, with this tool input (`redacted`: its text left out, its hash kept).
    pub fn with_input(mut self, json: Arc<str>, redacted: bool) -> Entry {
        self.input = Some(ToolInput { json, redacted });
        self
    }

    /// The record's text as sealed under `seq`.
    pub fn text(&self, seq: u64) -> String {
        // The record's own fields, beside `fields` (which cannot override them), written as one canonical
        // object without copying `fields` or the input (either can be large): the input is parsed once,
        // straight into the record's text, and its hash taken from there.
        enum Member<'a> {
            Value(&'a Value),
            Input(&'a ToolInput),
            InputHash(&'a ToolInput),
        }
        let own: [(&str, Value); 7] = [
            ("seq", seq.into()),
            ("at_ms", self.at_ms.into()),
            ("kind", self.kind.into()),
            ("perm", self.perm.as_deref().map_or(Value::Null, Value::from)),
            ("project", self.project.as_deref().map_or(Value::Null, Value::from)),
            ("tool", self.tool.as_deref().map_or(Value::Null, Value::from)),
            ("outcome", self.outcome.as_deref().map_or(Value::Null, Value::from)),
        ];
        let mut members: Vec<(&str, Member<'_>)> = own
            .iter()
            .filter(|(key, value)| !value.is_null() || matches!(*key, "seq" | "at_ms" | "kind"))
            .map(|(k, v)| (*k, Member::Value(v)))
            .collect();
        if let Some(input) = &self.input {
            members.extend([("input", Member::Input(input)), ("input_sha256", Member::InputHash(input))]);
        }
        let taken = |key: &str| {
            own.iter().any(|(o, _)| *o == key) || (self.input.is_some() && matches!(key, "input" | "input_sha256"))
        };
        members.extend(self.fields.iter().filter(|(k, _)| !taken(k)).map(|(k, v)| (k.as_str(), Member::Value(v))));
        members.sort_by(|a, b| a.0.cmp(b.0));
        // Room for the input's text as it came (its canonical text is seldom longer), so that a large one is
        // written without the buffer doubling (and being copied) on the way.
        let mut out = Vec::with_capacity(256 + self.input.as_ref().map_or(0, |i| i.json.len()));
        // `input` sorts before `input_sha256`: its hash is taken from the text just written.
        let mut input_hash = None;
        out.push(b'{');
        for (i, (key, member)) in members.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(key, &mut out);
            out.push(b':');
            match member {
                Member::Value(value) => write_canonical(value, &mut out),
                Member::Input(input) if input.redacted => write_json_str("redacted", &mut out),
                Member::Input(input) => {
                    let start = out.len();
                    write_canonical_json(&input.json, &mut out);
                    input_hash = Some(sha256_hex(&out[start..]));
                }
                Member::InputHash(input) => {
                    let hash = input_hash.take().unwrap_or_else(|| {
                        let mut text = Vec::with_capacity(input.json.len());
                        write_canonical_json(&input.json, &mut text);
                        sha256_hex(&text)
                    });
                    write_json_str(&hash, &mut out);
                }
            }
        }
        out.push(b'}');
        into_string(out)
    }
}

/// One sealed record, as kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// Its place in the log, from 1, without gaps.
    pub seq: u64,
    /// The hash of the record before it.
    pub prev: [u8; 32],
    /// `SHA-256(prev ‖ text)`.
    pub hash: [u8; 32],
    /// The canonical text.
    pub text: String,
}

/// Seals `entry` as record `seq`, after the record whose hash is `prev`.
pub fn seal(seq: u64, prev: [u8; 32], entry: &Entry) -> Sealed {
    let text = entry.text(seq);
    let hash = chain_hash(&prev, &text);
    Sealed { seq, prev, hash, text }
}

/// `SHA-256(prev ‖ text)`.
pub fn chain_hash(prev: &[u8; 32], text: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev);
    ctx.update(text.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The SHA-256 of `text`, in hex.
pub fn sha256_hex(text: impl AsRef<[u8]>) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, text.as_ref()).as_ref())
}

/// Bytes in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Text written by this module's writers, which write only UTF-8 (serde_json's and ASCII).
fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A JSON value in its one canonical text: object keys sorted (by their bytes), no whitespace, strings and
/// numbers as serde_json writes them. Two values equal as JSON trees have the same canonical text.
pub fn canonical(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    into_string(out)
}

/// The canonical text (as [`canonical`] writes it) of the JSON text `json`: the same as parsing it into a
/// [`Value`] and writing that, but without the tree, whose nodes can take ten times the text's size (a
/// sled's input of many small members). `null` when `json` is not JSON.
pub fn canonical_json(json: &str) -> String {
    let mut out = Vec::with_capacity(json.len());
    write_canonical_json(json, &mut out);
    into_string(out)
}

fn write_json_str(text: &str, out: &mut Vec<u8>) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(key, out);
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // A scalar written to a Vec cannot fail.
        other => {
            let _ = serde_json::to_writer(out, other);
        }
    }
}

/// Appends the canonical text of the JSON text `json` to `out` (`null` when it is not JSON), parsing it as
/// it goes: what is held beside the text written is the keys of the objects being written and where each
/// member's text ends, and, for an object whose keys came out of order, one copy of its members while they
/// are put in order.
fn write_canonical_json(json: &str, out: &mut Vec<u8>) {
    let start = out.len();
    let mut de = serde_json::Deserializer::from_str(json);
    let written = Canon(out).deserialize(&mut de).is_ok() && de.end().is_ok();
    if !written {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

/// Writes the value it is given in canonical form.
struct Canon<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for Canon<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Canon<'_> {
    /// A number, as [`Value`] holds and writes it (a float that is not finite is `null`).
    fn number(self, value: Value) {
        let _ = serde_json::to_writer(self.0, &value);
    }
}

impl<'de> Visitor<'de> for Canon<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.number(Value::from(v));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.number(Value::from(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.number(Value::from(v));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write_json_str(v, self.0);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.0.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        Canon(self.0).deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push(b'[');
        let mut first = true;
        loop {
            let mark = out.len();
            if !first {
                out.push(b',');
            }
            if seq.next_element_seed(Canon(&mut *out))?.is_none() {
                out.truncate(mark);
                break;
            }
            first = false;
        }
        out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push(b'{');
        let body = out.len();
        // Each member's key as parsed (the order is by its bytes, as a parsed map's is) and where its text
        // ends in `out`: (start of its key in `keys`, end of its text).
        let mut keys = Vec::new();
        let mut members: Vec<(usize, usize)> = Vec::new();
        let mut in_order = true;
        loop {
            let mark = out.len();
            if !members.is_empty() {
                out.push(b',');
            }
            let key = keys.len();
            if map.next_key_seed(Key { out: &mut *out, keys: &mut keys })?.is_none() {
                out.truncate(mark);
                break;
            }
            out.push(b':');
            map.next_value_seed(Canon(&mut *out))?;
            if let Some(&(previous, _)) = members.last() {
                in_order &= keys[previous..key] < keys[key..];
            }
            members.push((key, out.len()));
        }
        if !in_order {
            put_in_order(out, body, &keys, &members);
        }
        out.push(b'}');
        Ok(())
    }
}

/// Rewrites the members of an object, written from `body` on in `out` as they came, in the order of their
/// keys; of members with the same key, the last one stays (as in a parsed map).
fn put_in_order(out: &mut Vec<u8>, body: usize, keys: &[u8], members: &[(usize, usize)]) {
    let key = |i: usize| &keys[members[i].0..members.get(i + 1).map_or(keys.len(), |m| m.0)];
    // Member `i`'s text, in `written` (which starts at `body`): after the comma that ends the one before.
    let text = |i: usize| (if i == 0 { 0 } else { members[i - 1].1 + 1 - body })..members[i].1 - body;
    let mut order: Vec<usize> = (0..members.len()).collect();
    // Stable: members with the same key keep the order they came in.
    order.sort_by(|&a, &b| key(a).cmp(key(b)));
    let written = out.split_off(body);
    let mut first = true;
    for (n, &i) in order.iter().enumerate() {
        if order.get(n + 1).is_some_and(|&next| key(next) == key(i)) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&written[text(i)]);
    }
}

/// Writes an object's key and keeps it (as parsed) for the order.
struct Key<'o> {
    out: &'o mut Vec<u8>,
    keys: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write_json_str(v, self.out);
        self.keys.extend_from_slice(v.as_bytes());
        Ok(())
    }
}

/// Where a log starts: the record before its first (seq 0 and [`GENESIS`] for a log never pruned).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The seq of the last record pruned (0: none).
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

impl Default for Anchor {
    fn default() -> Anchor {
        Anchor { seq: 0, hash: GENESIS }
    }
}

/// A whole chain that checks out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// The first one's seq (the one after the anchor).
    pub first_seq: u64,
    /// The last one's seq.
    pub last_seq: u64,
    /// The last one's hash, in hex: keep it elsewhere to pin the log up to here.
    pub head: String,
}

/// Where the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A record is missing before this seq (or one was inserted).
    #[error("record {found} follows record {after}: records are missing or were inserted")]
    Gap {
        /// The seq before.
        after: u64,
        /// The seq found.
        found: u64,
    },
    /// This record's text or its link to the one before was changed.
    #[error("record {0} was changed: its hash does not match its text and the record before it")]
    Changed(u64),
    /// This record's searchable columns differ from its sealed text.
    #[error("record {0}'s columns differ from its sealed text")]
    Columns(u64),
    /// The log ends before its recorded head.
    #[error("the log ends at record {last}, but its head is record {head}: it was cut short")]
    Truncated {
        /// The last record found.
        last: u64,
        /// The head recorded.
        head: u64,
    },
    /// The head recorded beside the log does not match its last record.
    #[error("the head recorded beside the log does not match record {0}")]
    HeadMismatch(u64),
}

/// Checks `records` (in seq order) against the log's `anchor` and `head`.
pub fn verify(
    anchor: Anchor,
    records: impl IntoIterator<Item = (Sealed, Columns)>,
    head: Option<(u64, [u8; 32])>,
) -> Result<VerifyReport, VerifyError> {
    let (mut last_seq, mut last_hash, mut count) = (anchor.seq, anchor.hash, 0u64);
    for (record, columns) in records {
        if record.seq != last_seq + 1 {
            return Err(VerifyError::Gap { after: last_seq, found: record.seq });
        }
        if record.prev != last_hash || chain_hash(&record.prev, &record.text) != record.hash {
            return Err(VerifyError::Changed(record.seq));
        }
        if !columns.agree(&record) {
            return Err(VerifyError::Columns(record.seq));
        }
        (last_seq, last_hash, count) = (record.seq, record.hash, count + 1);
    }
    match head {
        Some((seq, _)) if seq > last_seq => return Err(VerifyError::Truncated { last: last_seq, head: seq }),
        Some((seq, hash)) if seq != last_seq || hash != last_hash => return Err(VerifyError::HeadMismatch(seq)),
        _ => {}
    }
    Ok(VerifyReport { records: count, first_seq: anchor.seq + 1, last_seq, head: hex(&last_hash) })
}

/// The columns a record is searched by, as kept beside its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Columns {
    /// `at_ms`.
    pub at_ms: u64,
    /// `kind`.
    pub kind: String,
    /// `project`.
    pub project: Option<String>,
    /// `tool`.
    pub tool: Option<String>,
    /// `outcome`.
    pub outcome: Option<String>,
}

impl Columns {
    /// The columns of `entry`.
    pub fn of(entry: &Entry) -> Columns {
        Columns {
            at_ms: entry.at_ms,
            kind: entry.kind.to_owned(),
            project: entry.project.clone(),
            tool: entry.tool.clone(),
            outcome: entry.outcome.clone(),
        }
    }

    fn agree(&self, record: &Sealed) -> bool {
        // Only the searchable fields are read; the rest (a tool input, however deep) is skipped unparsed.
        #[derive(serde::Deserialize)]
        struct Searched {
            at_ms: Option<u64>,
            kind: Option<String>,
            project: Option<String>,
            tool: Option<String>,
            outcome: Option<String>,
        }
        let Ok(r) = serde_json::from_str::<Searched>(&record.text) else { return false };
        r.at_ms == Some(self.at_ms)
            && r.kind.as_deref() == Some(self.kind.as_str())
            && r.project == self.project
            && r.tool == self.tool
            && r.outcome == self.outcome
    }
}

/// The most bytes of records in one page (beside [`AuditQuery::limit`]); a single larger record still
/// makes a page of its own.
pub const MAX_PAGE_BYTES: usize = 8 << 20;

/// Which records to read (`GET /api/audit`): every filter set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this project's.
    pub project: Option<String>,
    /// Only this tool's.
    pub tool: Option<String>,
    /// Only records that end a permission this way.
    pub outcome: Option<String>,
    /// From this time on (Unix milliseconds, inclusive).
    pub since: Option<u64>,
    /// Before this time (Unix milliseconds, exclusive).
    pub until: Option<u64>,
    /// After this seq (the previous page's `next`).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

impl AuditQuery {
    /// The page size asked for, within its bounds.
    pub fn page_size(&self) -> u32 {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

/// One page of records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditPage {
    /// The records, each with its seal.
    pub records: Vec<Sealed>,
    /// The `after` of the next page, when there may be more.
    pub next: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log(n: u64) -> Vec<(Sealed, Columns)> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut entry = Entry::new(1000 + seq, "request").with("n", seq);
                entry.project = Some(format!("p{}", seq % 2));
                let sealed = seal(seq, prev, &entry);
                prev = sealed.hash;
                (sealed, Columns::of(&entry))
            })
            .collect()
    }

    fn head(log: &[(Sealed, Columns)]) -> Option<(u64, [u8; 32])> {
        log.last().map(|(s, _)| (s.seq, s.hash))
    }

    #[test]
    fn canonical_text_sorts_keys_at_every_depth_and_has_no_spaces() {
        let a = json!({"b": [1, {"z": "é\n", "a": null}], "a": 1.5});
        assert_eq!(canonical(&a), r#"{"a":1.5,"b":[1,{"a":null,"z":"é\n"}]}"#);
        let b: Value = serde_json::from_str(r#"{ "a" : 1.5, "b" : [ 1, { "a": null, "z": "é\n" } ] }"#).expect("json");
        assert_eq!(canonical(&a), canonical(&b));
    }

    #[test]
    fn a_records_text_is_the_canonical_form_of_all_its_fields() {
        let mut e =
            Entry::new(7, "end").with("waited_ms", 12).with("by", "ana").with("zeta", json!({"b": 1, "a": [2]}));
        e.perm = Some("3-0".into());
        e.outcome = Some("approve".into());
        // A field may not pose as one of the record's own.
        e.fields.insert("kind".into(), "forged".into());
        let want = json!({"seq": 9, "at_ms": 7, "kind": "end", "perm": "3-0", "outcome": "approve",
            "waited_ms": 12, "by": "ana", "zeta": {"a": [2], "b": 1}});
        assert_eq!(e.text(9), canonical(&want));
    }

    /// The reference: the text parsed into a tree, and the tree written ("null" for text that is not JSON).
    fn through_a_tree(json: &str) -> String {
        canonical(&serde_json::from_str(json).unwrap_or(Value::Null))
    }

    #[test]
    fn an_inputs_canonical_text_is_written_without_its_tree() {
        for json in [
            r#"{"b": [1, {"z": "é\n", "a": null}], "a": 1.5}"#,
            r#" {"b":1,"a":2,"b":3} "#,
            r##"{"\u0022":1,"#":2,"\n":3,"a\u0000":4,"a":5,"\u00e9":6,"é":7}"##,
            r#"[1E2, -0, 0.0, 1e-7, 12345678901234567890, -9223372036854775808, 18446744073709551616, 1.0]"#,
            r#""\ud83d\ude00 \/ \u001f""#,
            r#"{"a":{"c":[{"z":1,"y":2}],"b":{}},"":[]}"#,
            "true",
            "null",
            "[]",
            "{}",
        ] {
            assert_eq!(canonical_json(json), through_a_tree(json), "{json}");
        }
        // Not JSON, as a tree fails to parse it: `null`, with nothing of it written.
        for json in ["", "{", r#"{"a":1}x"#, r#""\ud800""#, "1e400", "[1,]", r#"{"a" 1}"#] {
            assert_eq!(canonical_json(json), "null", "{json}");
            assert_eq!(through_a_tree(json), "null", "{json}");
        }
        // serde_json reads an object whose first key is its raw-value token as the JSON in that member's
        // string; a sled's input is written as the object it is.
        let token = r#"{"$serde_json::private::RawValue":"[1]"}"#;
        assert_eq!(canonical_json(token), token);
    }

    #[test]
    fn a_records_input_is_its_canonical_text_and_hash_or_redacted() {
        let json: Arc<str> = Arc::from(r#"{ "command": "ls", "cwd": "/", "b": [2, 1] }"#);
        let canonical_input = r#"{"b":[2,1],"command":"ls","cwd":"/"}"#;
        let hash = sha256_hex(canonical_input);
        // A field cannot pose as the input or its hash.
        let entry = Entry::new(7, "request").with("input", "forged").with("input_sha256", "forged").with("z", 1);
        let text = entry.clone().with_input(json.clone(), false).text(3);
        let want = serde_json::json!({"seq": 3, "at_ms": 7, "kind": "request", "z": 1, "input_sha256": hash,
            "input": serde_json::from_str::<Value>(canonical_input).expect("json")});
        assert_eq!(text, canonical(&want));
        let redacted = entry.with_input(json, true).text(3);
        let want = serde_json::json!({"seq": 3, "at_ms": 7, "kind": "request", "z": 1, "input_sha256": hash,
            "input": "redacted"});
        assert_eq!(redacted, canonical(&want));
    }

    /// JSON text as a sled may write it: any spacing, keys out of order and repeated, escapes, numbers
    /// spelt every way, and now and then something that is not JSON.
    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        const STRING_PARTS: &[&str] = &[
            "a",
            "b",
            "ab",
            "#",
            "é",
            "😀",
            "\\\"",
            "\\\\",
            "\\n",
            "\\u0061",
            "\\u0022",
            "\\u00e9",
            "\\ud83d\\ude00",
            "\\u001f",
            "\\/",
            "\\ud800",
        ];
        const SPACE: &[&str] = &["", "", " ", "\n\t "];
        let string = proptest::collection::vec(proptest::sample::select(STRING_PARTS), 0..4)
            .prop_map(|parts| format!("\"{}\"", parts.concat()));
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            "-?(0|[1-9][0-9]{0,21})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
            string.clone(),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            let space = proptest::sample::select(SPACE);
            prop_oneof![
                (proptest::collection::vec(inner.clone(), 0..6), space.clone())
                    .prop_map(|(items, s)| format!("[{s}{}{s}]", items.join(&format!("{s},{s}")))),
                (proptest::collection::vec((string.clone(), inner), 0..6), space).prop_map(|(members, s)| {
                    let members: Vec<String> = members.iter().map(|(k, v)| format!("{k}{s}:{s}{v}")).collect();
                    format!("{{{s}{}{s}}}", members.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn an_inputs_canonical_text_is_the_one_its_parsed_tree_has(json in json_text()) {
            proptest::prop_assert_eq!(canonical_json(&json), through_a_tree(&json));
        }
    }

    #[test]
    fn an_untouched_log_verifies_and_names_its_head() {
        let records = log(5);
        let report = verify(Anchor::default(), records.clone(), head(&records)).expect("intact");
        assert_eq!((report.records, report.first_seq, report.last_seq), (5, 1, 5));
        assert_eq!(report.head, hex(&records[4].0.hash));
        assert_eq!(verify(Anchor::default(), Vec::new(), None).map(|r| r.records), Ok(0));
    }

    #[test]
    fn a_record_holding_json_deeper_than_any_parser_allows_still_verifies() {
        // Written by a gateway that kept such an input as a tree: the searchable fields are still read.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let text = format!(r#"{{"at_ms":5,"input":{deep},"kind":"request","project":"p","seq":1,"tool":"Bash"}}"#);
        let sealed = Sealed { seq: 1, prev: GENESIS, hash: chain_hash(&GENESIS, &text), text };
        let columns = Columns {
            at_ms: 5,
            kind: "request".into(),
            project: Some("p".into()),
            tool: Some("Bash".into()),
            outcome: None,
        };
        let head = Some((1, sealed.hash));
        assert_eq!(verify(Anchor::default(), [(sealed.clone(), columns.clone())], head).map(|r| r.records), Ok(1));
        // And a column that disagrees is still found.
        let other = Columns { tool: Some("Write".into()), ..columns };
        assert_eq!(verify(Anchor::default(), [(sealed, other)], head).map(|r| r.records), Err(VerifyError::Columns(1)));
    }

    /// A change to a sealed log, as someone with the file could make it.
    #[derive(Clone, Debug)]
    enum Tamper {
        /// Flip one byte of one record's text.
        Edit { record: usize, at: usize },
        /// Remove one record.
        Remove(usize),
        /// Swap two records' places (and seqs).
        Swap(usize, usize),
        /// Cut this many records off the end.
        Truncate(usize),
        /// Repeat one record after itself.
        Repeat(usize),
    }

    fn tamper() -> impl proptest::strategy::Strategy<Value = Tamper> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<usize>(), any::<usize>()).prop_map(|(record, at)| Tamper::Edit { record, at }),
            any::<usize>().prop_map(Tamper::Remove),
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Tamper::Swap(a, b)),
            (1usize..4).prop_map(Tamper::Truncate),
            any::<usize>().prop_map(Tamper::Repeat),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_change_to_a_sealed_log_is_found_and_an_untouched_one_always_verifies(
            n in 1u64..24,
            tamper in tamper(),
        ) {
            let records = log(n);
            let h = head(&records);
            proptest::prop_assert!(verify(Anchor::default(), records.clone(), h).is_ok());
            let mut changed = records.clone();
            let len = changed.len();
            match tamper {
                Tamper::Edit { record, at } => {
                    let r = &mut changed[record % len].0;
                    let mut bytes = r.text.clone().into_bytes();
                    let i = at % bytes.len();
                    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
                    r.text = String::from_utf8_lossy(&bytes).into_owned();
                }
                Tamper::Remove(i) => {
                    changed.remove(i % len);
                }
                Tamper::Swap(a, b) => {
                    let (a, b) = (a % len, b % len);
                    proptest::prop_assume!(a != b);
                    changed.swap(a, b);
                    let (sa, sb) = (changed[a].0.seq, changed[b].0.seq);
                    changed[a].0.seq = sb;
                    changed[b].0.seq = sa;
                }
                Tamper::Truncate(k) => {
                    changed.truncate(len.saturating_sub(k));
                }
                Tamper::Repeat(i) => {
                    let i = i % len;
                    let again = changed[i].clone();
                    changed.insert(i + 1, again);
                }
            }
            proptest::prop_assert!(verify(Anchor::default(), changed, h).is_err());
        }
    }

    #[test]
    fn every_kind_of_tampering_is_found() {
        let records = log(5);
        let h = head(&records);
        // A changed text.
        let mut changed = records.clone();
        changed[2].0.text = changed[2].0.text.replace("\"n\":3", "\"n\":4");
        assert_eq!(verify(Anchor::default(), changed, h), Err(VerifyError::Changed(3)));
        // A changed text, resealed on its own: the next record's link breaks.
        let mut resealed = records.clone();
        resealed[2].0.text = resealed[2].0.text.replace("\"n\":3", "\"n\":4");
        resealed[2].0.hash = chain_hash(&resealed[2].0.prev, &resealed[2].0.text);
        assert_eq!(verify(Anchor::default(), resealed, h), Err(VerifyError::Changed(4)));
        // A removed record.
        let mut removed = records.clone();
        removed.remove(1);
        assert_eq!(verify(Anchor::default(), removed, h), Err(VerifyError::Gap { after: 1, found: 3 }));
        // Cut short: the head says there was more.
        let short = records[..3].to_vec();
        assert_eq!(verify(Anchor::default(), short, h), Err(VerifyError::Truncated { last: 3, head: 5 }));
        // A column that says something else than the sealed text.
        let mut columns = records.clone();
        columns[0].1.project = Some("elsewhere".into());
        assert_eq!(verify(Anchor::default(), columns, h), Err(VerifyError::Columns(1)));
        // A pruned start is fine with its anchor, and not without.
        let anchor = Anchor { seq: 2, hash: records[1].0.hash };
        assert_eq!(verify(anchor, records[2..].to_vec(), h).map(|r| r.first_seq), Ok(3));
        assert_eq!(verify(Anchor::default(), records[2..].to_vec(), h), Err(VerifyError::Gap { after: 0, found: 3 }));
        // A wrong head.
        assert_eq!(verify(Anchor::default(), records, Some((5, GENESIS))), Err(VerifyError::HeadMismatch(5)));
    }
}

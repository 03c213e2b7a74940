//! A record: what it says before it is sealed ([`Entry`], its tool input [`ToolInput`]), its one canonical
//! text ([`Entry::text`]), and sealed into the chain ([`seal`], [`Sealed`]).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::canonical::{hex, into_string, sha256_hex, write_canonical, write_canonical_json, write_json_str};

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
    /// `Some(key)`: write `"redacted"` in its place, and instead of its SHA-256 (which would confirm a guessed
    /// input to anyone who reads the record) its HMAC-SHA256 under `key`, the store's secret, as
    /// `input_hmac_sha256`: only who holds the store can confirm an input then.
    pub redact: Option<[u8; 32]>,
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

    /// The same, with this tool input, whole (with its SHA-256), or redacted (`redact`: the store's secret,
    /// under which its keyed hash is kept instead).
    pub fn with_input(mut self, json: Arc<str>, redact: Option<[u8; 32]>) -> Entry {
        self.input = Some(ToolInput { json, redact });
        self
    }

    /// The record's text as sealed under `seq` in the first chain (the only one a single writer has).
    pub fn text(&self, seq: u64) -> String {
        self.text_in(0, seq)
    }

    /// The record's text as sealed under `seq` in `chain`: a record of any chain but the first names its
    /// chain (`"chain": n`), so that it cannot be moved to another; one of the first does not, so that a
    /// log with one writer reads as it always did.
    pub fn text_in(&self, chain: u64, seq: u64) -> String {
        // The record's own fields, beside `fields` (which cannot override them), written as one canonical
        // object without copying `fields` or the input (either can be large): the input is parsed once,
        // straight into the record's text, and its hash taken from there.
        enum Member<'a> {
            Value(&'a Value),
            Input(&'a ToolInput),
            InputHash(&'a ToolInput),
        }
        let own: [(&str, Value); 8] = [
            ("chain", if chain == 0 { Value::Null } else { chain.into() }),
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
            let hash = if input.redact.is_some() { "input_hmac_sha256" } else { "input_sha256" };
            members.extend([("input", Member::Input(input)), (hash, Member::InputHash(input))]);
        }
        let taken = |key: &str| {
            own.iter().any(|(o, _)| *o == key)
                || (self.input.is_some() && matches!(key, "input" | "input_sha256" | "input_hmac_sha256"))
        };
        members.extend(self.fields.iter().filter(|(k, _)| !taken(k)).map(|(k, v)| (k.as_str(), Member::Value(v))));
        members.sort_by(|a, b| a.0.cmp(b.0));
        // Room for the input's text as it came (its canonical text is seldom longer), so that a large one is
        // written without the buffer doubling (and being copied) on the way.
        let mut out = Vec::with_capacity(256 + self.input.as_ref().map_or(0, |i| i.json.len()));
        // `input` sorts before `input_sha256` and `input_hmac_sha256`: its hash is taken from the text just
        // written.
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
                Member::Input(input) if input.redact.is_some() => write_json_str("redacted", &mut out),
                Member::Input(input) => {
                    let start = out.len();
                    write_canonical_json(&input.json, &mut out);
                    input_hash = Some(sha256_hex(&out[start..]));
                }
                Member::InputHash(input) => {
                    let hash = match (input_hash.take(), input.redact) {
                        (Some(hash), None) => hash,
                        (_, redact) => {
                            let mut text = Vec::with_capacity(input.json.len());
                            write_canonical_json(&input.json, &mut text);
                            match redact {
                                Some(key) => input_hmac(&key, &text),
                                None => sha256_hex(&text),
                            }
                        }
                    };
                    write_json_str(&hash, &mut out);
                }
            }
        }
        out.push(b'}');
        into_string(out)
    }
}

/// The keyed hash of a redacted input: HMAC-SHA256 of its canonical text under the store's secret `key`, in
/// hex. Who holds the store can confirm a guessed input with it; who only reads the records cannot.
pub fn input_hmac(key: &[u8; 32], canonical_input: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex(ring::hmac::sign(&key, canonical_input).as_ref())
}

/// One sealed record, as kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// Its chain (0: the first, the only one of a log with one writer).
    pub chain: u64,
    /// Its place in its chain, from 1, without gaps.
    pub seq: u64,
    /// The hash of the record before it.
    pub prev: [u8; 32],
    /// `SHA-256(prev ‖ text)`.
    pub hash: [u8; 32],
    /// The canonical text.
    pub text: String,
}

/// Seals `entry` as record `seq` of the first chain, after the record whose hash is `prev`.
pub fn seal(seq: u64, prev: [u8; 32], entry: &Entry) -> Sealed {
    seal_in(0, seq, prev, entry)
}

/// Seals `entry` as record `seq` of `chain`, after the record whose hash is `prev`.
pub fn seal_in(chain: u64, seq: u64, prev: [u8; 32], entry: &Entry) -> Sealed {
    let text = entry.text_in(chain, seq);
    let hash = chain_hash(&prev, &text);
    Sealed { chain, seq, prev, hash, text }
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

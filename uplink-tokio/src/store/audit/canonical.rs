//! One canonical text for any JSON value: object keys sorted (by their bytes), no whitespace, strings and
//! numbers as serde_json writes them ([`canonical`]); and the same straight from JSON text, without a tree
//! ([`canonical_json`]). Hashes in hex.

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

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
pub(super) fn into_string(bytes: Vec<u8>) -> String {
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

pub(super) fn write_json_str(text: &str, out: &mut Vec<u8>) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

pub(super) fn write_canonical(value: &Value, out: &mut Vec<u8>) {
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
pub(super) fn write_canonical_json(json: &str, out: &mut Vec<u8>) {
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

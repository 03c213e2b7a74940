//! The records, their canonical text and the chain, tested.

use super::*;
use std::sync::Arc;

use serde_json::{Value, json};

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
    let mut e = Entry::new(7, "end").with("waited_ms", 12).with("by", "ana").with("zeta", json!({"b": 1, "a": [2]}));
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
    let text = entry.clone().with_input(json.clone(), None).text(3);
    let want = serde_json::json!({"seq": 3, "at_ms": 7, "kind": "request", "z": 1, "input_sha256": hash,
        "input": serde_json::from_str::<Value>(canonical_input).expect("json")});
    assert_eq!(text, canonical(&want));
    // Redacted: no plain hash (a short command is soon guessed from one), but its HMAC under the store's
    // secret, which who holds the store can check a guess against.
    let key = [9u8; 32];
    let redacted = entry.with_input(json, Some(key)).text(3);
    let keyed = input_hmac(&key, canonical_input.as_bytes());
    let want = serde_json::json!({"seq": 3, "at_ms": 7, "kind": "request", "z": 1, "input_hmac_sha256": keyed,
        "input": "redacted"});
    assert_eq!(redacted, canonical(&want));
    assert!(!redacted.contains(&hash), "the plain hash is not kept: {redacted}");
    assert_ne!(keyed, input_hmac(&[8u8; 32], canonical_input.as_bytes()), "another key, another hash");
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
    let report = verify(Anchor::default(), records.clone(), head(&records), &[]).expect("intact");
    assert_eq!((report.records, report.first_seq, report.last_seq), (5, 1, 5));
    assert_eq!(report.head, hex(&records[4].0.hash));
    assert_eq!(verify(Anchor::default(), Vec::new(), None, &[]).map(|r| r.records), Ok(0));
}

#[test]
fn a_record_holding_json_deeper_than_any_parser_allows_still_verifies() {
    // Written by a gateway that kept such an input as a tree: the searchable fields are still read.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let text = format!(r#"{{"at_ms":5,"input":{deep},"kind":"request","project":"p","seq":1,"tool":"Bash"}}"#);
    let sealed = Sealed { chain: 0, seq: 1, prev: GENESIS, hash: chain_hash(&GENESIS, &text), text };
    let columns = Columns {
        at_ms: 5,
        kind: "request".into(),
        project: Some("p".into()),
        tool: Some("Bash".into()),
        outcome: None,
    };
    let head = Some((1, sealed.hash));
    assert_eq!(verify(Anchor::default(), [(sealed.clone(), columns.clone())], head, &[]).map(|r| r.records), Ok(1));
    // And a column that disagrees is still found.
    let other = Columns { tool: Some("Write".into()), ..columns };
    assert_eq!(
        verify(Anchor::default(), [(sealed, other)], head, &[]).map(|r| r.records),
        Err(VerifyError::Columns(1))
    );
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
        proptest::prop_assert!(verify(Anchor::default(), records.clone(), h, &[]).is_ok());
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
        proptest::prop_assert!(verify(Anchor::default(), changed, h, &[]).is_err());
    }
}

#[test]
fn every_kind_of_tampering_is_found() {
    let records = log(5);
    let h = head(&records);
    // A changed text.
    let mut changed = records.clone();
    changed[2].0.text = changed[2].0.text.replace("\"n\":3", "\"n\":4");
    assert_eq!(verify(Anchor::default(), changed, h, &[]), Err(VerifyError::Changed(3)));
    // A changed text, resealed on its own: the next record's link breaks.
    let mut resealed = records.clone();
    resealed[2].0.text = resealed[2].0.text.replace("\"n\":3", "\"n\":4");
    resealed[2].0.hash = chain_hash(&resealed[2].0.prev, &resealed[2].0.text);
    assert_eq!(verify(Anchor::default(), resealed, h, &[]), Err(VerifyError::Changed(4)));
    // A removed record.
    let mut removed = records.clone();
    removed.remove(1);
    assert_eq!(verify(Anchor::default(), removed, h, &[]), Err(VerifyError::Gap { after: 1, found: 3 }));
    // Cut short: the head says there was more.
    let short = records[..3].to_vec();
    assert_eq!(verify(Anchor::default(), short, h, &[]), Err(VerifyError::Truncated { last: 3, head: 5 }));
    // A column that says something else than the sealed text.
    let mut columns = records.clone();
    columns[0].1.project = Some("elsewhere".into());
    assert_eq!(verify(Anchor::default(), columns, h, &[]), Err(VerifyError::Columns(1)));
    // A pruned start is fine with its anchor, and not without.
    let anchor = Anchor { seq: 2, hash: records[1].0.hash };
    assert_eq!(verify(anchor, records[2..].to_vec(), h, &[]).map(|r| r.first_seq), Ok(3));
    assert_eq!(verify(Anchor::default(), records[2..].to_vec(), h, &[]), Err(VerifyError::Gap { after: 0, found: 3 }));
    // A wrong head.
    assert_eq!(verify(Anchor::default(), records, Some((5, GENESIS)), &[]), Err(VerifyError::HeadMismatch(5)));
}

#[test]
fn checkpoints_find_a_log_rewritten_whole_after_them() {
    let records = log(5);
    let pin = |i: usize| Head { chain: 0, seq: records[i].0.seq, hash: records[i].0.hash };
    let (third, fifth) = (pin(2), pin(4));
    let report = verify(Anchor::default(), records.clone(), head(&records), &[third, fifth]).expect("pinned");
    assert_eq!((report.checkpoints, report.pruned_checkpoints), (2, 0));
    // Someone with the database rewrites record 3 and reseals everything after it, head included: the chain
    // alone holds, the checkpoints do not.
    let mut rewritten = records[..2].to_vec();
    let mut prev = rewritten[1].0.hash;
    for (sealed, columns) in &records[2..] {
        let text = sealed.text.replace("\"n\":3", "\"n\":33");
        let hash = chain_hash(&prev, &text);
        rewritten.push((Sealed { chain: 0, seq: sealed.seq, prev, hash, text }, columns.clone()));
        prev = hash;
    }
    let h = head(&rewritten);
    assert!(verify(Anchor::default(), rewritten.clone(), h, &[]).is_ok(), "a whole rewrite holds together");
    assert_eq!(verify(Anchor::default(), rewritten.clone(), h, &[third]), Err(VerifyError::CheckpointMismatch(3)));
    // Rewritten shorter than a checkpoint.
    let short = rewritten[..3].to_vec();
    let h = head(&short);
    assert_eq!(verify(Anchor::default(), short, h, &[fifth]), Err(VerifyError::CheckpointBeyond { seq: 5, last: 3 }));
    // A checkpoint of a record pruned since is not checked; one of the anchor is; all pruned is an error.
    let anchor = Anchor { seq: 3, hash: records[2].0.hash };
    let kept = records[3..].to_vec();
    let first = pin(0);
    let report = verify(anchor, kept.clone(), head(&records), &[first, third]).expect("the anchor is pinned");
    assert_eq!((report.checkpoints, report.pruned_checkpoints), (1, 1));
    assert_eq!(verify(anchor, kept, head(&records), &[first]), Err(VerifyError::CheckpointsPruned { first: 4 }));
    // A checkpoint's line round-trips.
    let line = Checkpoint::of(fifth, 1234);
    assert_eq!(line.head(), Some(fifth));
    assert_eq!(Checkpoint { head: "zz".into(), ..line }.head(), None);
}

//! The embedded store, tested on files of its own.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, params};

use super::schema::{MIGRATIONS, put_meta_pair};
use super::*;
use crate::store::audit::{self, GENESIS};
use crate::store::{AuditQuery, Change, Entry, Store as _, StoreError, StoredRule, VerifyError};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("uplink-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn entry(i: u64) -> Change {
    let mut e = Entry::new(1_000 + i, "request").with("n", i);
    e.project = Some(if i.is_multiple_of(2) { "web" } else { "api" }.into());
    e.tool = Some("Bash".into());
    Change::Record(e)
}

fn rule(id: u64) -> StoredRule {
    StoredRule {
        id,
        effect: "allow".into(),
        pattern: "Bash(git diff *)".into(),
        projects: Some(vec!["team/*".into()]),
        project: None,
        connection: None,
        expires: Some(2_000_000_000),
        author: "ana".into(),
        created: 1_700_000_000,
    }
}

#[test]
fn records_and_rules_survive_a_reopen_and_the_chain_verifies() {
    let d = dir("reopen");
    {
        let mut s = SqliteStore::open(&d, StoreOptions::default()).expect("open");
        s.commit(&[entry(1), entry(2), Change::PutRule(rule(4))]).expect("commit");
        let connection_rule = StoredRule { connection: Some(3), ..rule(5) };
        s.commit(&[entry(3), Change::PutRule(rule(6)), Change::PutRule(connection_rule), Change::DeleteRule(6)])
            .expect("commit");
    }
    let mut s = SqliteStore::open(&d, StoreOptions::default()).expect("reopen");
    assert_eq!(s.load().expect("load").rules, vec![rule(4)], "a connection's rule is not kept");
    s.commit(&[entry(4)]).expect("commit after reopen");
    let reader = s.reader();
    let report = reader.verify().expect("read").expect("intact");
    assert_eq!((report.records, report.last_seq), (4, 4));
    let page = reader.query(&AuditQuery { project: Some("web".into()), ..AuditQuery::default() }).expect("query");
    let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![2, 4]);
    // Pages: two at a time, then the rest.
    let first = reader.query(&AuditQuery { limit: Some(2), ..AuditQuery::default() }).expect("page");
    assert_eq!((first.records.len(), first.next), (2, Some(2)));
    let rest = reader.query(&AuditQuery { after: first.next, limit: Some(2), ..AuditQuery::default() }).expect("page");
    assert_eq!((rest.records.iter().map(|r| r.seq).collect::<Vec<_>>(), rest.next), (vec![3, 4], None));
    let timed = reader.query(&AuditQuery { since: Some(1_002), until: Some(1_004), ..AuditQuery::default() });
    assert_eq!(timed.expect("query").records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_second_gateway_a_newer_schema_a_damaged_file_and_a_locked_one_are_refused() {
    let d = dir("refuse");
    let first = SqliteStore::open(&d, StoreOptions::default()).expect("open");
    assert!(matches!(SqliteStore::open(&d, StoreOptions::default()), Err(StoreError::InUse(_))));
    drop(first);
    // Locked by another program: a write transaction held open.
    let other = Connection::open(d.join(DB_FILE)).expect("open");
    other.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let locked = SqliteStore::open(&d, StoreOptions::default());
    assert!(matches!(locked, Err(StoreError::Locked(_))), "{locked:?}");
    other.execute_batch("COMMIT").expect("unlock");
    // Newer.
    other.pragma_update(None, "user_version", SCHEMA_VERSION + 1).expect("bump");
    drop(other);
    let newer = SqliteStore::open(&d, StoreOptions::default());
    assert!(matches!(newer, Err(StoreError::Newer { found, .. }) if found == SCHEMA_VERSION + 1), "{newer:?}");
    // Damaged: never recreated, left as it was.
    let _ = std::fs::remove_file(d.join(format!("{DB_FILE}-wal")));
    let _ = std::fs::remove_file(d.join(format!("{DB_FILE}-shm")));
    std::fs::write(d.join(DB_FILE), b"this is not a database, it is a text file of some length...........")
        .expect("write");
    let corrupt = SqliteStore::open(&d, StoreOptions::default());
    assert!(matches!(corrupt, Err(StoreError::Corrupt { .. })), "{corrupt:?}");
    assert!(std::fs::read(d.join(DB_FILE)).expect("read").starts_with(b"this is not a database"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_page_holds_at_most_its_byte_budget_and_always_one_record() {
    let d = dir("pages");
    let mut s = SqliteStore::open(&d, StoreOptions::default()).expect("open");
    let big = "x".repeat(audit::MAX_PAGE_BYTES / 2 + 1);
    let changes: Vec<Change> =
        (1..=3).map(|i| Change::Record(Entry::new(i, "request").with("pad", big.as_str()))).collect();
    s.commit(&changes).expect("commit");
    s.commit(&[Change::Record(Entry::new(9, "request").with("pad", "x".repeat(audit::MAX_PAGE_BYTES + 1)))])
        .expect("commit");
    let reader = s.reader();
    let mut query = AuditQuery::default();
    let mut pages = Vec::new();
    loop {
        let page = reader.query(&query).expect("page");
        pages.push(page.records.iter().map(|r| r.seq).collect::<Vec<_>>());
        match page.next {
            Some(n) => query.after = Some(n),
            None => break,
        }
    }
    // Two halves do not fit in one page; a record larger than the budget still has its own.
    assert_eq!(pages, vec![vec![1], vec![2], vec![3], vec![4]]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn records_older_than_the_age_kept_are_pruned_and_the_rest_verifies() {
    let d = dir("age");
    let day = Duration::from_secs(86_400);
    let mut s = SqliteStore::open(&d, StoreOptions { keep_for: Some(day), ..StoreOptions::default() }).expect("open");
    let now_ms =
        u64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_millis())
            .expect("ms");
    let old = now_ms - 2 * 86_400_000;
    let at = [old, old + 1, now_ms - 1000, now_ms];
    s.commit(&at.iter().map(|&ms| Change::Record(Entry::new(ms, "request"))).collect::<Vec<_>>()).expect("commit");
    s.prune_now().expect("prune");
    let report = s.reader().verify().expect("read").expect("intact");
    assert_eq!((report.records, report.first_seq, report.last_seq), (2, 3, 4), "the two old ones went");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_database_of_the_first_schema_is_migrated_and_keeps_its_chain() {
    let d = dir("migrate");
    std::fs::create_dir_all(&d).expect("dir");
    // What the first release wrote: schema 1, with two records sealed by it.
    {
        let conn = Connection::open(d.join(DB_FILE)).expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("schema 1");
        conn.pragma_update(None, "user_version", 1).expect("version");
        let mut head = (0, GENESIS);
        for i in 1..=2 {
            let Change::Record(e) = entry(i) else { unreachable!() };
            let sealed = audit::seal(i, head.1, &e);
            conn.execute(
                "INSERT INTO audit (seq, at_ms, kind, project, tool, outcome, prev, hash, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![i, e.at_ms, e.kind, e.project, e.tool, e.outcome, &sealed.prev[..], &sealed.hash[..], sealed.text],
            )
            .expect("insert");
            head = (i, sealed.hash);
        }
        put_meta_pair(&conn, "head", head).expect("head");
    }
    let mut s = SqliteStore::open(&d, StoreOptions::default()).expect("migrated");
    let version: i64 = s.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    assert_eq!(version, SCHEMA_VERSION);
    let credentials = s.credentials().expect("kept beside");
    assert_eq!(credentials.read().expect("the new table"), (Vec::new(), 0));
    let kept = s.load().expect("load");
    assert!(kept.sessions.is_empty() && kept.input_key != [0; 32], "a secret is drawn for a migrated store");
    assert_eq!(s.reader().input_key().expect("read"), kept.input_key);
    s.commit(&[entry(3)]).expect("commit");
    let report = s.reader().verify().expect("read").expect("the old records still verify");
    assert_eq!((report.records, report.last_seq), (3, 3));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tampering_with_the_file_is_found_and_retention_keeps_the_rest_verifiable() {
    let d = dir("tamper");
    let mut s = SqliteStore::open(&d, StoreOptions { keep_records: Some(3), ..StoreOptions::default() }).expect("open");
    s.commit(&(1..=6).map(entry).collect::<Vec<_>>()).expect("commit");
    s.prune_now().expect("prune");
    let reader = s.reader();
    let report = reader.verify().expect("read").expect("intact after pruning");
    assert_eq!((report.records, report.first_seq, report.last_seq), (3, 4, 6));
    let other = Connection::open(d.join(DB_FILE)).expect("open");
    other.execute("UPDATE audit SET record = replace(record, '\"n\":5', '\"n\":50') WHERE seq = 5", []).expect("edit");
    assert_eq!(reader.verify().expect("read"), Err(VerifyError::Changed(5)));
    other.execute("DELETE FROM audit WHERE seq >= 5", []).expect("cut");
    assert_eq!(reader.verify().expect("read"), Err(VerifyError::Truncated { last: 4, head: 6 }));
    let _ = std::fs::remove_dir_all(&d);
}

//! The audit log on PostgreSQL with several writers: each appends to a chain of its own (taken up where a
//! writer that is gone left one, never while one holds it), cites the others' heads, and the check of the
//! whole log finds a chain dropped or cut short after another cited it.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::time::Duration;

use uplink_tests::postgres::Postgres;
use uplink_tokio::store::postgres::{PostgresOptions, PostgresStore};
use uplink_tokio::store::{AuditQuery, Change, Entry, Store, VerifyError};

/// A writer beside others (not the database's sole writer), citing the others at every commit.
fn writer(url: &str) -> PostgresStore {
    let mut options = PostgresOptions::default();
    options.cite_every = Duration::ZERO;
    PostgresStore::open(url, options).unwrap()
}

fn record(n: u64) -> Change {
    Change::Record(Entry::new(1_700_000_000_000 + n, "request").with("n", n))
}

fn db_of(url: &str) -> String {
    url.split('/').nth(3).unwrap().split('?').next().unwrap().to_owned()
}

#[test]
fn writers_side_by_side_append_to_chains_of_their_own_cite_each_other_and_page_as_one_log() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let (mut a, mut b) = (writer(&url), writer(&url));
    assert_eq!((a.chain(), b.chain()), (Some(0), Some(1)), "the second takes none the first holds");
    a.commit(&[record(1), record(2)]).unwrap();
    // B's first commit cites A's head first; A's next cites B's.
    let head = b.commit(&[record(3)]).unwrap();
    assert_eq!((head.chain, head.seq), (1, 2));
    let head = a.commit(&[record(4)]).unwrap();
    assert_eq!((head.chain, head.seq), (0, 4));
    let report = a.reader().verify().unwrap().unwrap();
    assert_eq!((report.records, report.chains.len(), report.citations), (6, 2, 2));
    assert_eq!(b.reader().verify().unwrap().unwrap().digest, report.digest, "one log, one digest");
    // Pages in the order records were written, each record once, across both chains.
    let (mut seen, mut query) = (Vec::new(), AuditQuery { limit: Some(2), ..AuditQuery::default() });
    loop {
        let page = a.reader().query(&query).unwrap();
        seen.extend(page.records.iter().map(|r| (r.chain, r.seq)));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, [(0, 1), (0, 2), (1, 1), (1, 2), (0, 3), (0, 4)]);
    // A record is found by its chain and seq.
    let cite = a.reader().record(1, 1).unwrap().unwrap();
    assert!(cite.text.contains("\"kind\":\"cite\"") && cite.text.contains("\"chain\":1"), "{}", cite.text);
    assert_eq!(a.reader().record(1, 9).unwrap(), None);
    let digest = report.digest;
    b.commit(&[record(5)]).unwrap();
    assert_ne!(a.reader().verify().unwrap().unwrap().digest, digest, "the digest moves with any chain");
}

#[test]
fn a_chain_cut_short_or_dropped_after_another_cited_it_fails_the_check() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    let (mut a, mut b) = (writer(&url), writer(&url));
    b.commit(&[record(1), record(2)]).unwrap();
    a.commit(&[record(3)]).unwrap();
    let reader = a.reader();
    drop((a, b));
    assert!(reader.verify().unwrap().is_ok());
    // Chain 1's last record taken back, and its head with it: chain 1 alone holds together, but chain 0
    // cited its record 2.
    pg.sql(
        &db,
        "DELETE FROM uplink.audit WHERE chain = 1 AND seq = 2;
         UPDATE uplink.chains c SET head_seq = 1,
           head_hash = (SELECT a.hash FROM uplink.audit a WHERE a.chain = 1 AND a.seq = 1) WHERE id = 1",
    )
    .unwrap();
    assert_eq!(
        reader.verify().unwrap(),
        Err(VerifyError::CitationBeyond { chain: 1, seq: 2, last: 1, by_chain: 0, by_seq: 1 })
    );
    // The whole chain dropped, records and row.
    pg.sql(&db, "DELETE FROM uplink.audit WHERE chain = 1; DELETE FROM uplink.chains WHERE id = 1").unwrap();
    assert_eq!(reader.verify().unwrap(), Err(VerifyError::NoSuchChain { chain: 1, by: "record 1 of chain 0".into() }));
}

#[test]
fn a_chain_is_taken_up_where_a_writer_that_is_gone_left_it_and_never_while_one_holds_it() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    let mut a = writer(&url);
    a.commit(&[record(1), record(2)]).unwrap();
    let b = writer(&url);
    assert_eq!(b.chain(), Some(1), "chain 0 is held");
    drop(a);
    let mut c = writer(&url);
    assert_eq!(c.chain(), Some(0), "given back as its writer stopped");
    assert_eq!(c.commit(&[record(3)]).unwrap().seq, 3, "and taken up at its head");
    // Writers whose connections end without a word (a crash, a lost network) hold nothing any more.
    pg.sql(&db, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        .unwrap();
    assert!(c.commit(&[record(4)]).is_err(), "its connection is gone");
    let mut d = writer(&url);
    assert_eq!(d.chain(), Some(0));
    assert_eq!(d.commit(&[record(5)]).unwrap().seq, 4, "what the crashed writer committed stays; nothing else");
    drop(b);
    let mut e = writer(&url);
    assert_eq!(e.chain(), Some(1));
    e.commit(&[record(6)]).unwrap();
    let report = e.reader().verify().unwrap().unwrap();
    assert_eq!(report.chains.len(), 2, "no third chain was needed");
}

#[test]
fn retention_prunes_every_chain_and_the_log_still_verifies() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let mut options = PostgresOptions::default();
    options.keep_records = Some(2);
    let mut a = PostgresStore::open(&url, options.clone()).unwrap();
    let mut b = PostgresStore::open(&url, options).unwrap();
    a.commit(&[record(1), record(2), record(3)]).unwrap();
    b.commit(&[record(4), record(5), record(6), record(7)]).unwrap();
    a.commit(&[record(8)]).unwrap();
    a.prune_now().unwrap();
    let report = a.reader().verify().unwrap().unwrap();
    let kept: BTreeSet<_> = report.chains.iter().map(|c| (c.chain, c.first_seq, c.last_seq)).collect();
    // Chain 0: four records (its first commit had nothing to cite, and the next came within the minute);
    // chain 1: a citation of chain 0 and four. Each keeps its newest two.
    assert_eq!(kept, BTreeSet::from([(0, 3, 4), (1, 4, 5)]));
    assert_eq!(report.records, 4);
}

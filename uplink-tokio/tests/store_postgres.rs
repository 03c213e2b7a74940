//! What the PostgreSQL store does beyond the seam's conformance suite (which it passes as SQLite does): how
//! it refuses a database it must not use, and how it fails when its database goes away. Each case runs on a
//! throwaway server of its own or a database of its own on the process's server.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use uplink_tests::postgres::Postgres;
use uplink_tokio::store::postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION};
use uplink_tokio::store::{Change, Entry, Store, StoreError};

fn open(url: &str) -> Result<PostgresStore, StoreError> {
    PostgresStore::open(url, PostgresOptions::default())
}

fn record(n: u64) -> Change {
    Change::Record(Entry::new(1_700_000_000_000 + n, "request").with("n", n))
}

#[test]
fn a_database_of_a_newer_schema_is_refused_and_left_as_it_is() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = url.split('/').nth(3).unwrap().split('?').next().unwrap().to_owned();
    let mut store = open(&url).unwrap();
    store.commit(&[record(1)]).unwrap();
    drop(store);
    pg.sql(&db, "UPDATE uplink.meta SET n = n + 1 WHERE key = 'schema_version'").unwrap();
    match open(&url) {
        Err(StoreError::Newer { found, supported, .. }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
    assert!(PostgresStore::credentials_at(&url, None).is_err(), "nor are its credentials used");
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.audit").unwrap(), "1", "nothing was changed");
}

#[test]
fn everything_lives_in_the_uplink_schema_and_nothing_elsewhere() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = url.split('/').nth(3).unwrap().split('?').next().unwrap().to_owned();
    drop(open(&url).unwrap());
    let elsewhere = pg
        .sql(
            &db,
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('uplink', 'pg_catalog', 'information_schema')",
        )
        .unwrap();
    assert_eq!(elsewhere, "0");
    let ours =
        pg.sql(&db, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'uplink'");
    assert_eq!(
        ours.unwrap(),
        "audit,chains,claims,console_sessions,credentials,meta,nodes,pending,releases,resumables,rules"
    );
}

#[test]
fn a_second_store_on_the_same_database_writes_a_chain_of_its_own_and_the_next_takes_up_the_first() {
    let url = Postgres::shared().fresh_database();
    let mut first = open(&url).unwrap();
    first.commit(&[record(1)]).unwrap();
    // Which gateway serves is the cluster's leases' to say; the stores themselves never fork a chain.
    let mut second = open(&url).unwrap();
    assert_eq!((first.chain(), second.chain()), (Some(0), Some(1)));
    assert_eq!(second.commit(&[record(2)]).unwrap().chain, 1);
    let head = first.commit(&[record(3)]).unwrap();
    assert_eq!((head.chain, head.seq), (0, 2));
    drop((first, second));
    // Once they are gone, a store takes up the first chain at once, where it was left (its first commit
    // cites chain 1's head first).
    let mut next = open(&url).unwrap();
    assert_eq!(next.chain(), Some(0));
    assert_eq!(next.commit(&[record(4)]).unwrap().seq, 4);
    let report = next.reader().verify().unwrap().unwrap();
    assert_eq!((report.records, report.citations), (6, 2));
}

#[test]
fn a_database_that_cannot_be_reached_is_said_so_promptly() {
    let pg = Postgres::start().unwrap();
    let url = pg.url("postgres");
    pg.stop_server();
    let started = Instant::now();
    match open(&url) {
        Err(e @ StoreError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("cannot be reached") && text.contains(&pg.socket_dir().display().to_string()),
                "{text}"
            );
        }
        other => panic!("an unreachable database must be said so, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(PostgresStore::credentials_at(&url, None), Err(StoreError::Unreachable { .. })));
}

#[test]
fn a_commit_after_the_database_went_away_fails_and_so_does_every_later_one_and_nothing_is_half_written() {
    let pg = Postgres::start().unwrap();
    let url = pg.url("postgres");
    let mut store = open(&url).unwrap();
    store.commit(&[record(1), record(2)]).unwrap();
    pg.stop_server();
    assert!(store.commit(&[record(3)]).is_err(), "the database is gone");
    pg.start_server().unwrap();
    // The store does not quietly carry on (its gateway stops); what was committed is all there, whole.
    assert!(store.commit(&[record(4)]).is_err(), "a store whose commit failed stays closed");
    drop(store);
    let mut again = open(&url).unwrap();
    let report = again.reader().verify().unwrap().unwrap();
    assert_eq!((report.records, report.last_seq), (2, 2));
    assert_eq!(again.commit(&[record(5)]).unwrap().seq, 3, "the chain goes on from its head");
    assert_eq!(again.credentials().unwrap().version().unwrap(), 0);
}

#[test]
fn a_head_moved_behind_the_writers_back_fails_the_whole_commit_sent_in_one_go() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = url.split('/').nth(3).unwrap().split('?').next().unwrap().to_owned();
    let mut store = open(&url).unwrap();
    store.commit(&[record(1), record(2)]).unwrap();
    // Another writer (or a hand) moves the head: the next commit's statements were sent with its COMMIT,
    // and none of them stays.
    pg.sql(&db, "UPDATE uplink.chains SET head_seq = head_seq + 1 WHERE id = 0").unwrap();
    match store.commit(&[record(3), record(4)]) {
        Err(StoreError::Database(why)) => assert!(why.contains("chain 0 is not where this gateway left it"), "{why}"),
        other => panic!("a moved head must fail the commit, got {other:?}"),
    }
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.audit").unwrap(), "2", "nothing of it was written");
}

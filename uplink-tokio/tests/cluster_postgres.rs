//! The cluster's part of the PostgreSQL store (`PostgresCluster`): nodes joining with leases on the
//! database's clock, renewals that stop for good once a lease lapsed, the claims table (one holder per
//! project, generations that only grow, a lapsed holder's claim given to the next), releases asked of a node,
//! and the fence in every commit of a node whose lease lapsed. On the process's throwaway server, a database
//! per case. Leases run out on the database's clock: the tests wait for that by asking again, bounded.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use uplink_proto::gateway::CredentialId;
use uplink_proto::gateway::Holder;
use uplink_tests::postgres::Postgres;
use uplink_tokio::store::postgres::{PostgresCluster, PostgresOptions, PostgresStore, SCHEMA_VERSION};
use uplink_tokio::store::{Change, ClaimAnswer, ClusterStore, Entry, HeldAt, Store, StoreError};

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(300);

fn cluster(url: &str) -> PostgresCluster {
    PostgresStore::cluster_at(url, None).unwrap()
}

fn db_of(url: &str) -> String {
    url.split('/').nth(3).unwrap().split('?').next().unwrap().to_owned()
}

/// Asks `attempt` until it gives a value, for at most 10 s (a lease's end comes on the database's clock).
fn until<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = attempt() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn granted(answer: Option<ClaimAnswer>) -> u64 {
    match answer {
        Some(ClaimAnswer::Granted { generation }) => generation,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[test]
fn one_holder_per_project_until_its_lease_lapses_then_the_next_with_a_greater_generation() {
    let url = Postgres::shared().fresh_database();
    let (a, b) = (cluster(&url), cluster(&url));
    let node_a = a.join("a:1", None, SHORT).unwrap();
    let node_b = b.join("b:1", None, LONG).unwrap();
    assert_ne!(node_a, node_b);
    let first = granted(a.claim(node_a, 7, "web", 1).unwrap());
    // Held by a live node: who holds it, whatever the credential.
    assert_eq!(
        b.claim(node_b, 9, "web", 1).unwrap(),
        Some(ClaimAnswer::Held { credential: CredentialId(1), node: node_a })
    );
    assert_eq!(
        b.claim(node_b, 9, "web", 2).unwrap(),
        Some(ClaimAnswer::Held { credential: CredentialId(1), node: node_a })
    );
    // Another project is free; credential ids use all 64 bits.
    let big = u64::MAX - 5;
    let api = granted(b.claim(node_b, 10, "api", big).unwrap());
    assert!(api > first);
    assert_eq!(
        a.claim(node_a, 8, "api", 3).unwrap(),
        Some(ClaimAnswer::Held { credential: CredentialId(big), node: node_b })
    );

    // a stops renewing: once its lease lapsed at the database, b's claim wins, with a greater generation.
    let second = until("a's lease to lapse", || match b.claim(node_b, 9, "web", 2).unwrap() {
        Some(ClaimAnswer::Granted { generation }) => Some(generation),
        _ => None,
    });
    assert!(second > api);
    // a's lease is gone for good: no renewal, no claim.
    assert!(!a.renew(node_a, LONG).unwrap().held);
    assert_eq!(a.claim(node_a, 11, "other", 1).unwrap(), None);
    assert_eq!(
        b.claim(node_b, 12, "web", 1).unwrap(),
        Some(ClaimAnswer::Held { credential: CredentialId(2), node: node_b })
    );
    // A node that joins again is a new incarnation, and may claim what is free.
    let again = a.join("a:1", None, LONG).unwrap();
    assert!(again > node_b);
    assert!(granted(a.claim(again, 1, "other", 1).unwrap()) > second);
}

#[test]
fn a_renewal_keeps_the_lease_and_hands_over_the_releases_asked_once() {
    let url = Postgres::shared().fresh_database();
    let (a, b) = (cluster(&url), cluster(&url));
    let node_a = a.join("a:1", None, SHORT).unwrap();
    let node_b = b.join("b:1", None, LONG).unwrap();
    granted(a.claim(node_a, 1, "web", 4).unwrap());
    // Renewed well within its 300 ms for a while: it never lapses, and b is refused all along.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        assert!(a.renew(node_a, SHORT).unwrap().held);
        assert!(matches!(b.claim(node_b, 2, "web", 4).unwrap(), Some(ClaimAnswer::Held { .. })));
        std::thread::sleep(Duration::from_millis(50));
    }
    b.ask_release(node_a, "web", 4).unwrap();
    b.ask_release(node_a, "web", 4).unwrap();
    b.ask_release(node_a, "api", 5).unwrap();
    let mut releases = a.renew(node_a, LONG).unwrap().releases;
    releases.sort();
    assert_eq!(releases, vec![("api".to_owned(), 5), ("web".to_owned(), 4)]);
    assert!(a.renew(node_a, LONG).unwrap().releases.is_empty(), "each is handed over once");
    // Leaving ends the lease and the claims at once.
    a.leave(node_a).unwrap();
    granted(b.claim(node_b, 2, "web", 4).unwrap());
    assert!(!a.renew(node_a, LONG).unwrap().held);
}

#[test]
fn many_nodes_claiming_one_project_at_once_get_exactly_one_grant() {
    let url = Postgres::shared().fresh_database();
    let nodes: Vec<(PostgresCluster, u64)> = (0..8)
        .map(|i| {
            let c = cluster(&url);
            let id = c.join(&format!("n{i}:1"), None, LONG).unwrap();
            (c, id)
        })
        .collect();
    for round in 0..5 {
        let project = format!("p{round}");
        let answers: Vec<Option<ClaimAnswer>> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, (c, id))| {
                    let project = project.clone();
                    s.spawn(move || c.claim(*id, i as u64, &project, 1).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let grants = answers.iter().filter(|a| matches!(a, Some(ClaimAnswer::Granted { .. }))).count();
        assert_eq!(grants, 1, "round {round}: {answers:?}");
        let holder = answers.iter().position(|a| matches!(a, Some(ClaimAnswer::Granted { .. }))).unwrap();
        for a in &answers {
            if let Some(ClaimAnswer::Held { node, .. }) = a {
                assert_eq!(*node, nodes[holder].1);
            }
        }
    }
}

#[test]
fn a_node_whose_lease_lapsed_writes_nothing_and_a_claims_end_removes_only_its_own_generation() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    let mut store = PostgresStore::open(&url, PostgresOptions::default()).unwrap();
    let me = store.cluster().unwrap();
    let other = cluster(&url);
    let node = me.join("me:1", None, Duration::from_millis(400)).unwrap();
    let them = other.join("them:1", None, LONG).unwrap();
    let generation = granted(me.claim(node, 1, "web", 1).unwrap());
    let record = |n: u64| Change::Record(Entry::new(1_700_000_000_000 + n, "request").with("n", n));
    // A claim's end with another generation leaves the row; with its own, removes it.
    store.commit(&[record(1), Change::EndClaim { project: "web".into(), generation: generation + 100 }]).unwrap();
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.claims").unwrap(), "1");
    store.commit(&[record(2), Change::EndClaim { project: "web".into(), generation }]).unwrap();
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.claims").unwrap(), "0");
    granted(other.claim(them, 5, "api", 1).unwrap());
    // The lease lapses (no renewal): the next commit is refused whole, and says why.
    until("the lease to lapse", || (pg.sql(&db, &format!("SELECT uplink.live({node})")).unwrap() == "f").then_some(()));
    match store.commit(&[record(3), Change::EndClaim { project: "api".into(), generation: 0 }]) {
        Err(StoreError::Fenced(place)) => assert!(place.starts_with("postgres://"), "{place}"),
        other => panic!("a commit after the lease lapsed must be refused, got {other:?}"),
    }
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.audit").unwrap(), "2", "nothing of it was written");
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.claims").unwrap(), "1");
}

#[test]
fn a_database_of_the_first_schema_is_migrated_and_joins_and_commits() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    let mut store = PostgresStore::open(&url, PostgresOptions::default()).unwrap();
    store.commit(&[Change::Record(Entry::new(1_700_000_000_000, "request"))]).unwrap();
    drop(store);
    // Back to schema 1, as a gateway of the first release left it.
    pg.sql(
        &db,
        "ALTER TABLE uplink.resumables DROP COLUMN node; DROP TABLE uplink.pending;
         DROP FUNCTION uplink.sessions_changed(); DROP INDEX uplink.console_sessions_by_version;
         ALTER TABLE uplink.console_sessions DROP COLUMN version, DROP COLUMN removed_at;
         DELETE FROM uplink.meta WHERE key = 'sessions_version';
         DROP FUNCTION uplink.rules_changed(); DROP SEQUENCE uplink.rule_ids; DROP INDEX uplink.rules_by_version;
         ALTER TABLE uplink.rules DROP COLUMN version, DROP COLUMN removed_at;
         DELETE FROM uplink.meta WHERE key = 'rules_version';
         INSERT INTO uplink.meta (key, n, hash) SELECT 'head', head_seq, head_hash FROM uplink.chains WHERE id = 0;
         DROP TABLE uplink.chains; DROP SEQUENCE uplink.chain_id; DROP SEQUENCE uplink.chain_writer;
         DROP FUNCTION uplink.move_chain(bigint, bigint, bigint, bytea, bigint, bytea);
         DROP INDEX uplink.audit_cites; DROP INDEX uplink.audit_by_place;
         DROP INDEX uplink.audit_project; DROP INDEX uplink.audit_outcome;
         ALTER TABLE uplink.audit DROP CONSTRAINT audit_pkey, DROP COLUMN chain, DROP COLUMN place, ADD PRIMARY KEY (seq);
         DROP SEQUENCE uplink.audit_place;
         CREATE INDEX audit_project ON uplink.audit (project, seq); CREATE INDEX audit_outcome ON uplink.audit (outcome, seq);
         DROP FUNCTION uplink.fence(bigint); DROP FUNCTION uplink.live(bigint); DROP TABLE uplink.releases;
         DROP TABLE uplink.claims; DROP TABLE uplink.nodes; DROP SEQUENCE uplink.claim_gen;
         UPDATE uplink.meta SET n = 1 WHERE key = 'schema_version'",
    )
    .unwrap();
    let mut store = PostgresStore::open(&url, PostgresOptions::default()).unwrap();
    assert_eq!(
        pg.sql(&db, "SELECT n FROM uplink.meta WHERE key = 'schema_version'").unwrap(),
        SCHEMA_VERSION.to_string()
    );
    let me = store.cluster().unwrap();
    let node = me.join("me:1", None, LONG).unwrap();
    granted(me.claim(node, 1, "web", 1).unwrap());
    // The log so far is the first chain, and goes on from its head.
    let head = store.commit(&[Change::Record(Entry::new(1_700_000_000_001, "request"))]).unwrap();
    assert_eq!((head.chain, head.seq), (0, 2));
    let report = store.reader().verify().unwrap().unwrap();
    assert_eq!((report.records, report.chains.len()), (2, 1));
}

#[test]
fn a_joining_node_clears_what_dead_nodes_left_and_nothing_of_the_live_ones() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    let (dead, live) = (cluster(&url), cluster(&url));
    let gone = dead.join("dead:1", None, SHORT).unwrap();
    let here = live.join("live:1", None, LONG).unwrap();
    granted(dead.claim(gone, 1, "web", 1).unwrap());
    granted(live.claim(here, 2, "api", 1).unwrap());
    live.ask_release(gone, "web", 1).unwrap();
    dead.ask_release(here, "api", 1).unwrap();
    until("the dead node's lease to lapse", || {
        (pg.sql(&db, &format!("SELECT uplink.live({gone})")).unwrap() == "f").then_some(())
    });
    // A node long gone, with nothing left: it goes too.
    pg.sql(&db, "INSERT INTO uplink.nodes (addr, lease_until, ended) VALUES ('old:1', now() - interval '8 days', now() - interval '8 days')")
        .unwrap();
    let third = cluster(&url);
    third.join("third:1", None, LONG).unwrap();
    assert_eq!(pg.sql(&db, "SELECT string_agg(project, ',') FROM uplink.claims").unwrap(), "api");
    assert_eq!(pg.sql(&db, "SELECT string_agg(node::text, ',') FROM uplink.releases").unwrap(), here.to_string());
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.nodes WHERE addr = 'old:1'").unwrap(), "0");
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.nodes").unwrap(), "3", "the dead one stays for now");
    assert_eq!(live.renew(here, LONG).unwrap().releases, vec![("api".to_owned(), 1)]);
}

#[test]
fn rules_changed_by_any_writer_are_read_in_commit_order_removals_included_and_ids_come_in_blocks_of_their_own() {
    use uplink_tokio::store::StoredRule;
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let shared = cluster(&url);
    let (one, two) = (shared.rule_ids().unwrap(), shared.rule_ids().unwrap());
    assert_eq!((one.end - one.start, two.end - two.start), (256, 256));
    assert!(one.end <= two.start, "{one:?} {two:?}");
    let options = PostgresOptions::default();
    let (mut a, mut b) =
        (PostgresStore::open(&url, options.clone()).unwrap(), PostgresStore::open(&url, options).unwrap());
    let rule = |id: u64, pattern: &str| StoredRule {
        id,
        effect: "deny".into(),
        pattern: pattern.into(),
        projects: None,
        project: None,
        connection: None,
        expires: None,
        author: "ana".into(),
        created: 1,
    };
    let nothing = shared.rules_since(0).unwrap();
    assert!(nothing.in_force.is_empty() && nothing.removed.is_empty());
    a.commit(&[Change::PutRule(rule(one.start, "Bash(rm *)"))]).unwrap();
    b.commit(&[Change::PutRule(rule(two.start, "Bash(curl *)"))]).unwrap();
    let first = shared.rules_since(nothing.version).unwrap();
    assert_eq!(first.in_force.iter().map(|r| r.id).collect::<Vec<_>>(), [one.start, two.start]);
    // A removal is read as such (the rule's tombstone), after what was read before.
    b.commit(&[Change::DeleteRule(one.start)]).unwrap();
    let next = shared.rules_since(first.version).unwrap();
    assert!(next.version > first.version);
    assert_eq!((next.in_force.len(), next.removed.clone()), (0, vec![one.start]));
    let none = shared.rules_since(next.version).unwrap();
    assert!(none.in_force.is_empty() && none.removed.is_empty() && none.version == next.version);
    // From the start, each rule as it is now; and a start's rules leave the tombstone out.
    let all = shared.rules_since(0).unwrap();
    assert_eq!((all.in_force.len(), all.removed.len()), (1, 1));
    let kept = a.load().unwrap();
    assert_eq!(kept.rules.iter().map(|r| r.id).collect::<Vec<_>>(), [two.start]);
}

#[test]
fn sign_ins_and_sign_outs_by_any_writer_are_read_in_commit_order_and_a_start_keeps_only_the_live_ones() {
    use uplink_tokio::store::StoredSession;
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let shared = cluster(&url);
    let options = PostgresOptions::default();
    let (mut a, mut b) =
        (PostgresStore::open(&url, options.clone()).unwrap(), PostgresStore::open(&url, options).unwrap());
    let far = 4_000_000_000_000u64;
    let session = |k: u8| StoredSession {
        key: [k; 32],
        principal: "ana".into(),
        csrf: "c".into(),
        expires_ms: far,
        role: None,
        email: None,
    };
    a.commit(&[Change::PutSession(session(1))]).unwrap();
    b.commit(&[Change::PutSession(session(2))]).unwrap();
    let first = shared.sessions_since(0).unwrap();
    assert_eq!(first.open.iter().map(|s| s.key[0]).collect::<Vec<_>>(), [1, 2]);
    b.commit(&[Change::DeleteSession([1; 32])]).unwrap();
    let next = shared.sessions_since(first.version).unwrap();
    assert_eq!((next.open.len(), next.closed.clone()), (0, vec![[1; 32]]));
    assert!(shared.sessions_since(next.version).unwrap().closed.is_empty());
    // Signed in again under the same key (a cookie never repeats, but the store does not mind).
    a.commit(&[Change::PutSession(session(1))]).unwrap();
    assert_eq!(shared.sessions_since(next.version).unwrap().open.len(), 1);
    b.commit(&[Change::DeleteSession([1; 32])]).unwrap();
    assert_eq!(a.load().unwrap().sessions.iter().map(|s| s.key[0]).collect::<Vec<_>>(), [2]);
}

#[test]
fn a_node_joining_alone_is_refused_while_another_lease_holds_and_joins_once_it_lapsed_or_ended() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let (a, b) = (cluster(&url), cluster(&url));
    let first = a.join_alone("a:1", SHORT).unwrap();
    let started = Instant::now();
    match b.join_alone("b:1", LONG) {
        Err(e @ StoreError::NodeLive { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&format!("node {first} at a:1")) && text.contains("in use by another gateway"),
                "{text}"
            );
        }
        other => panic!("a node joining alone must be refused while another is live, got {other:?}"),
    }
    // Not renewed: its lease lapses at the database, and the next joins (the first fences itself).
    let second = loop {
        match b.join_alone("b:1", LONG) {
            Ok(node) => break node,
            Err(StoreError::NodeLive { .. }) => assert!(started.elapsed() < Duration::from_secs(10)),
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(second > first);
    assert!(!a.renew(first, LONG).unwrap().held, "the first is gone for good");
    // Left cleanly: the next may join at once.
    b.leave(second).unwrap();
    let third = cluster(&url).join_alone("c:1", LONG).unwrap();
    assert!(third > second);
    // Nodes joining alone at the same moment: exactly one gets in.
    let url2 = pg.fresh_database();
    let joined: Vec<bool> = (0..6)
        .map(|i| {
            let url = url2.clone();
            std::thread::spawn(move || cluster(&url).join_alone(&format!("n:{i}"), LONG).is_ok())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(joined.iter().filter(|&&j| j).count(), 1, "{joined:?}");
}

#[test]
fn requests_left_waiting_at_a_node_whose_lease_lapsed_are_its_orphans_but_for_those_kept_to_come_back() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let mut store = PostgresStore::open(&url, PostgresOptions::default()).unwrap();
    let me = store.cluster().unwrap();
    let node = me.join_alone("a:1", SHORT).unwrap();
    let asked = |perm: &str| {
        let mut e = Entry::new(1_700_000_000_000, "request");
        (e.perm, e.project, e.tool) = (Some(perm.into()), Some("web".into()), Some("Bash".into()));
        Change::Record(e)
    };
    let ended = |perm: &str| {
        let mut e = Entry::new(1_700_000_000_500, "end");
        e.perm = Some(perm.into());
        Change::Record(e)
    };
    store.commit(&[asked("5-0"), asked("5-1"), asked("5-2"), Change::PutResumable(kept("5-1"))]).unwrap();
    store.commit(&[ended("5-2")]).unwrap();
    let (other, third) = (cluster(&url), cluster(&url));
    let taker = other.join("b:1", None, LONG).unwrap();
    let late = third.join("c:1", None, LONG).unwrap();
    assert!(other.take_orphans(taker).unwrap().is_empty(), "nothing is an orphan while its node lives");
    let started = Instant::now();
    let orphans = loop {
        let orphans = other.take_orphans(taker).unwrap();
        if !orphans.is_empty() {
            break orphans;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the lease lapses");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!((orphans[0].perm.as_str(), orphans[0].node, orphans[0].project.as_deref()), ("5-0", node, Some("web")));
    // Taken: it waits at the taker now, and no other node (nor the taker again) is given it.
    assert!(third.take_orphans(late).unwrap().is_empty());
    assert!(other.take_orphans(taker).unwrap().is_empty());
    assert_eq!(pg.sql(&db_of(&url), "SELECT node FROM uplink.pending WHERE perm = '5-0'").unwrap(), taker.to_string());
}

#[test]
fn a_starting_node_takes_up_the_requests_kept_by_nodes_that_are_gone_and_never_a_live_nodes() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    let node_store = |lease: Duration| {
        let store = PostgresStore::open(&url, PostgresOptions::default()).unwrap();
        let node = store.cluster().unwrap().join("n:1", None, lease).unwrap();
        (store, node)
    };
    let (mut a, a_id) = node_store(SHORT);
    let mut asked = Entry::new(1_700_000_000_000, "request");
    asked.perm = Some("1-0".into());
    a.commit(&[Change::Record(asked), Change::PutResumable(kept("1-0"))]).unwrap();
    let held = |node, live| Some(HeldAt { holder: Holder { node, live, kept: true }, internal: None });
    assert_eq!(a.cluster().unwrap().holder("1-0").unwrap(), held(a_id, true));
    let (mut live, live_id) = node_store(LONG);
    live.commit(&[Change::PutResumable(kept("2-0"))]).unwrap();
    // While a lives, what it keeps is its own.
    let (mut b, b_id) = node_store(LONG);
    assert!(b.load().unwrap().resumables.iter().all(|r| r.id != "1-0" && r.id != "2-0"));
    // Once a's lease lapsed, the next node to start takes a's up; the live node's stays its own.
    let started = Instant::now();
    while pg.sql(&db, "SELECT count(*) FROM uplink.nodes WHERE NOT uplink.live(id)").unwrap() == "0" {
        assert!(started.elapsed() < Duration::from_secs(10), "a's lease lapses");
        std::thread::sleep(Duration::from_millis(50));
    }
    let taken: Vec<String> = b.load().unwrap().resumables.into_iter().map(|r| r.id).collect();
    assert_eq!(taken, ["1-0"]);
    assert_eq!(pg.sql(&db, "SELECT node FROM uplink.resumables WHERE id = '1-0'").unwrap(), b_id.to_string());
    assert_eq!(pg.sql(&db, "SELECT node FROM uplink.resumables WHERE id = '2-0'").unwrap(), live_id.to_string());
    // The table of waiting requests names the node that took it up: decisions made elsewhere go there.
    assert_eq!(b.cluster().unwrap().holder("1-0").unwrap(), held(b_id, true));
    drop(live);
}

#[test]
fn where_a_request_waits_and_which_nodes_listen_for_their_peers() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let mut store = PostgresStore::open(&url, PostgresOptions::default()).unwrap();
    let me = store.cluster().unwrap();
    let node = me.join("a:1", Some("10.0.0.1:7000"), SHORT).unwrap();
    let other = cluster(&url);
    let alone = other.join("b:1", None, LONG).unwrap();
    let third = cluster(&url).join("c:1", Some("10.0.0.3:7000"), LONG).unwrap();
    let mut asked = Entry::new(1_700_000_000_000, "request");
    asked.perm = Some("9-1".into());
    store.commit(&[Change::Record(asked)]).unwrap();
    let at = |live| Some(HeldAt { holder: Holder { node, live, kept: false }, internal: Some("10.0.0.1:7000".into()) });
    assert_eq!(other.holder("9-1").unwrap(), at(true));
    assert_eq!(other.holder("9-2").unwrap(), None);
    // Only live nodes with an internal listener are peers.
    let peers = |c: &PostgresCluster| c.peers().unwrap().into_iter().map(|p| (p.node, p.internal)).collect::<Vec<_>>();
    assert_eq!(peers(&other), [(node, "10.0.0.1:7000".to_owned()), (third, "10.0.0.3:7000".to_owned())]);
    assert_ne!(alone, node);
    let started = Instant::now();
    while other.holder("9-1").unwrap() != at(false) {
        assert!(started.elapsed() < Duration::from_secs(10), "the lease lapses");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(peers(&other), [(third, "10.0.0.3:7000".to_owned())], "a node whose lease lapsed is no peer");
}

/// A request kept to come back, under the public id `id`.
fn kept(id: &str) -> uplink_tokio::store::StoredResumable {
    uplink_tokio::store::StoredResumable {
        id: id.into(),
        credential: 7,
        project: "web".into(),
        incarnation: "0123456789abcdef".into(),
        req_id: format!("r-{id}"),
        tool_name: "Bash".into(),
        tool_input: "{}".into(),
        since_ms: 1_700_000_000_000,
        deadline_ms: None,
        decision: None,
        message: None,
        by: None,
        sent: false,
    }
}

#[test]
fn nodes_taking_over_a_dead_nodes_requests_at_once_each_get_their_own_and_together_all() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let mut store = PostgresStore::open(&url, PostgresOptions::default()).unwrap();
    store.cluster().unwrap().join("dead:1", None, SHORT).unwrap();
    let asked: Vec<Change> = (0..200)
        .map(|i| {
            let mut e = Entry::new(1_700_000_000_000 + i, "request");
            e.perm = Some(format!("7-{i}"));
            Change::Record(e)
        })
        .collect();
    store.commit(&asked).unwrap();
    let takers: Vec<(PostgresCluster, u64)> = (0..4)
        .map(|i| {
            let c = cluster(&url);
            let id = c.join(&format!("t{i}:1"), None, LONG).unwrap();
            (c, id)
        })
        .collect();
    let started = Instant::now();
    while pg.sql(&db_of(&url), "SELECT count(*) FROM uplink.nodes WHERE NOT uplink.live(id)").unwrap() == "0" {
        assert!(started.elapsed() < Duration::from_secs(10), "the dead node's lease lapses");
        std::thread::sleep(Duration::from_millis(50));
    }
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(takers.len()));
    let taken: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = takers
            .iter()
            .map(|(c, id)| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    c.take_orphans(*id).unwrap().into_iter().map(|o| o.perm).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<String> = taken.concat();
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (count, all.len()),
        (200, 200),
        "each taken once, all taken: {:?}",
        taken.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[test]
fn a_granted_node_takes_over_what_gone_nodes_kept_for_that_project_and_credential_only() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    let mut a = PostgresStore::open(&url, PostgresOptions::default()).unwrap();
    a.cluster().unwrap().join("a:1", None, SHORT).unwrap();
    let of = |id: &str, project: &str, credential: u64| {
        let mut r = kept(id);
        (r.project, r.credential) = (project.into(), credential);
        Change::PutResumable(r)
    };
    let mut asked = Entry::new(1_700_000_000_000, "request");
    asked.perm = Some("1-0".into());
    a.commit(&[Change::Record(asked), of("1-0", "web", 7), of("1-1", "api", 7), of("1-2", "web", 8)]).unwrap();
    let (b, c) = (cluster(&url), cluster(&url));
    let (b_id, c_id) = (b.join("b:1", None, LONG).unwrap(), c.join("c:1", None, LONG).unwrap());
    assert!(b.take_held(b_id, "web", 7).unwrap().is_empty(), "never a live node's");
    let started = Instant::now();
    let taken = loop {
        let taken = b.take_held(b_id, "web", 7).unwrap();
        if !taken.is_empty() {
            break taken;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "a's lease lapses");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(taken.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["1-0"]);
    assert_eq!(pg.sql(&db, "SELECT node FROM uplink.pending WHERE perm = '1-0'").unwrap(), b_id.to_string());
    assert!(c.take_held(c_id, "web", 7).unwrap().is_empty(), "taken once");
    assert_eq!(c.take_held(c_id, "web", 8).unwrap().len(), 1, "another credential's is its own");
}

#[test]
fn nodes_joining_a_database_a_single_gateway_served_first_get_ids_past_every_id_it_reserved() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = db_of(&url);
    drop(PostgresStore::open(&url, PostgresOptions::default()).unwrap());
    // Ids reserved by a gateway of the time-of-day era (seconds since 2020 times 4,096), at schema 9.
    let reserved: u64 = (166 << 32) + 5;
    pg.sql(
        &db,
        &format!(
            "UPDATE uplink.meta SET n = {reserved} WHERE key = 'ids_until';
             UPDATE uplink.meta SET n = 9 WHERE key = 'schema_version'"
        ),
    )
    .unwrap();
    let store = PostgresStore::open(&url, PostgresOptions::default()).unwrap();
    let (a, b) = (store.cluster().unwrap(), cluster(&url));
    let first = a.join("a:1", Some("a:2"), LONG).unwrap();
    let second = b.join("b:1", Some("b:2"), LONG).unwrap();
    // Each node's range (its id times 2^32) lies past what was reserved, and the two never meet.
    assert!(first << 32 > reserved && second << 32 > reserved, "{first} {second}");
    assert_ne!(first, second);
}

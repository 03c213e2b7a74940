//! The store seam's conformance suite: what every backend does, run on each (SQLite on files of its own, and
//! the store in memory). A backend is opened again and again on the same keeping (a file, or a clone of the
//! memory store), as a gateway restarting would: what one commit wrote, the next open finds.
//!
//! Beside the cases, a property: random runs of changes and reopens agree with a reference model (the
//! rules, the sign-ins and the records it should hold), and the chain they make verifies, pinned by every
//! head a commit returned.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use uplink_tokio::store::audit::{MAX_PAGE_BYTES, seal};
use uplink_tokio::store::{
    AuditQuery, Change, CredentialRow, Entry, Head, MemoryStore, Store, StoredResumable, StoredRule, StoredSession,
    VerifyError,
};

/// Opens a store on one keeping, again and again.
trait Backend {
    fn open(&self) -> Box<dyn Store>;
}

struct Memory(MemoryStore);

impl Backend for Memory {
    fn open(&self) -> Box<dyn Store> {
        Box::new(self.0.clone())
    }
}

#[cfg(feature = "sqlite")]
struct Sqlite(tempfile_dir::Dir);

#[cfg(feature = "sqlite")]
impl Backend for Sqlite {
    fn open(&self) -> Box<dyn Store> {
        use uplink_tokio::store::sqlite::{SqliteStore, StoreOptions};
        Box::new(SqliteStore::open(self.0.path(), StoreOptions::default()).unwrap())
    }
}

/// A database of its own on the test process's PostgreSQL server.
#[cfg(feature = "postgres")]
struct Postgres {
    url: String,
}

#[cfg(feature = "postgres")]
impl Postgres {
    fn new() -> Postgres {
        Postgres { url: uplink_tests::postgres::Postgres::shared().fresh_database() }
    }
}

#[cfg(feature = "postgres")]
impl Backend for Postgres {
    fn open(&self) -> Box<dyn Store> {
        use uplink_tokio::store::postgres::{PostgresOptions, PostgresStore};
        Box::new(PostgresStore::open(&self.url, PostgresOptions::default()).unwrap())
    }
}

/// A directory of its own, removed when dropped.
#[cfg(feature = "sqlite")]
mod tempfile_dir {
    pub(crate) struct Dir(std::path::PathBuf);
    impl Dir {
        pub(crate) fn new() -> Dir {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("uplink-conformance-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Dir(dir)
        }
        pub(crate) fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Each backend, fresh, by name.
fn backends() -> Vec<(&'static str, Box<dyn Backend>)> {
    let mut all: Vec<(&'static str, Box<dyn Backend>)> =
        vec![("memory", Box::new(Memory(MemoryStore::new().unwrap())))];
    #[cfg(feature = "sqlite")]
    all.push(("sqlite", Box::new(Sqlite(tempfile_dir::Dir::new()))));
    #[cfg(feature = "postgres")]
    all.push(("postgres", Box::new(Postgres::new())));
    all
}

fn now_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn record(at_ms: u64, project: &str, tool: &str, outcome: Option<&str>) -> Change {
    let mut entry = Entry::new(at_ms, if outcome.is_some() { "end" } else { "request" }).with("n", at_ms);
    entry.project = Some(project.to_owned());
    entry.tool = Some(tool.to_owned());
    entry.outcome = outcome.map(str::to_owned);
    Change::Record(entry)
}

fn rule(id: u64, pattern: &str) -> StoredRule {
    StoredRule {
        id,
        effect: "allow".into(),
        pattern: pattern.into(),
        projects: Some(vec!["team-a/*".into()]),
        project: None,
        connection: None,
        expires: Some(2_000_000_000),
        author: "ana".into(),
        created: 1_700_000_000,
    }
}

/// A sign-in; every other one a person an identity provider vouched for (with a role and an email).
fn session(key: u8, expires_ms: u64) -> StoredSession {
    let vouched = key.is_multiple_of(2);
    StoredSession {
        key: [key; 32],
        principal: format!("p{key}"),
        csrf: format!("csrf-{key}"),
        expires_ms,
        role: vouched.then(|| "approver".into()),
        email: vouched.then(|| format!("p{key}@example.com")),
    }
}

#[test]
fn a_fresh_store_keeps_nothing_but_a_secret_drawn_once() {
    for (name, backend) in backends() {
        let kept = backend.open().load().unwrap();
        assert!(kept.rules.is_empty() && kept.sessions.is_empty(), "{name}");
        assert_ne!(kept.input_key, [0; 32], "{name}: a secret is drawn");
        let again = backend.open();
        assert_eq!(again.reader().input_key().unwrap(), kept.input_key, "{name}: the same ever after");
        let mut again = again;
        assert_eq!(again.load().unwrap().input_key, kept.input_key, "{name}");
        let report = again.reader().verify().unwrap().unwrap();
        assert_eq!((report.records, report.last_seq), (0, 0), "{name}: an empty log verifies");
        // Another keeping has another secret.
        let other = backends().into_iter().find(|(n, _)| *n == name).unwrap().1;
        assert_ne!(other.open().load().unwrap().input_key, kept.input_key, "{name}");
    }
}

#[test]
fn records_are_chained_in_order_and_each_commit_says_where_the_head_is() {
    for (name, backend) in backends() {
        let mut store = backend.open();
        let changes = [record(10, "web", "Bash", None), record(11, "web", "Bash", Some("approve"))];
        let head = store.commit(&changes).unwrap();
        assert_eq!(head.seq, 2, "{name}");
        // The head is the chain's: record 1 sealed on the genesis, record 2 on record 1.
        let Change::Record(first) = &changes[0] else { unreachable!() };
        let Change::Record(second) = &changes[1] else { unreachable!() };
        let one = seal(1, [0; 32], first);
        assert_eq!(head.hash, seal(2, one.hash, second).hash, "{name}");
        // A commit without records leaves the head where it is.
        assert_eq!(store.commit(&[Change::DeleteRule(99)]).unwrap(), head, "{name}");
        drop(store);
        // Reopened, the chain goes on.
        let mut store = backend.open();
        let next = store.commit(&[record(12, "api", "Write", None)]).unwrap();
        assert_eq!(next.seq, 3, "{name}");
        let reader = store.reader();
        let report = reader.verify_with(&[head, next]).unwrap().unwrap();
        assert_eq!((report.records, report.last_seq, report.checkpoints), (3, 3, 2), "{name}");
        // A head with another hash, or beyond the log, is found.
        let forged = Head { chain: 0, seq: 2, hash: [1; 32] };
        assert_eq!(reader.verify_with(&[forged]).unwrap(), Err(VerifyError::CheckpointMismatch(2)), "{name}");
        let beyond = Head { chain: 0, seq: 9, hash: [1; 32] };
        assert_eq!(
            reader.verify_with(&[beyond]).unwrap(),
            Err(VerifyError::CheckpointBeyond { seq: 9, last: 3 }),
            "{name}"
        );
    }
}

#[test]
fn rules_are_kept_replaced_and_forgotten_but_never_a_connections_own() {
    for (name, backend) in backends() {
        let mut store = backend.open();
        let own = StoredRule { connection: Some(4), ..rule(3, "Bash(ls)") };
        store
            .commit(&[Change::PutRule(rule(1, "Bash(ls)")), Change::PutRule(rule(2, "Read(*)")), Change::PutRule(own)])
            .unwrap();
        store.commit(&[Change::PutRule(rule(1, "Bash(git *)")), Change::DeleteRule(2)]).unwrap();
        drop(store);
        let kept = backend.open().load().unwrap();
        assert_eq!(kept.rules, vec![rule(1, "Bash(git *)")], "{name}");
    }
}

fn resumable(id: &str, decision: Option<&str>, sent: bool) -> StoredResumable {
    StoredResumable {
        id: id.into(),
        credential: 1 << 63 | 7,
        project: "web".into(),
        incarnation: "0123456789abcdef".into(),
        req_id: format!("req-{id}"),
        tool_name: "Bash".into(),
        tool_input: r#"{"command":"ls \"x\""}"#.into(),
        since_ms: 1_700_000_000_000,
        deadline_ms: Some(1_700_000_120_000),
        decision: decision.map(str::to_owned),
        message: decision.map(|_| "words \u{1F600}".to_owned()),
        by: decision.map(|_| "ana".to_owned()),
        sent,
    }
}

#[test]
fn requests_that_may_come_back_and_the_reserved_ids_are_kept_replaced_and_forgotten() {
    for (name, backend) in backends() {
        let mut store = backend.open();
        assert_eq!((store.load().unwrap().resumables, store.load().unwrap().ids_until), (vec![], 0), "{name}");
        store
            .commit(&[
                Change::PutResumable(resumable("1-0", None, false)),
                Change::PutResumable(resumable("1-1", None, false)),
                Change::PutResumable(resumable("1-2", None, false)),
                Change::ReserveIds(1025),
            ])
            .unwrap();
        // Decided while away; decided and sent; forgotten. The reservation never goes back.
        store
            .commit(&[
                Change::PutResumable(resumable("1-0", Some("approve"), false)),
                Change::PutResumable(resumable("1-1", Some("deny"), true)),
                Change::DeleteResumable("1-2".into()),
                Change::DeleteResumable("9-9".into()),
                Change::ReserveIds(3),
            ])
            .unwrap();
        drop(store);
        let kept = backend.open().load().unwrap();
        assert_eq!(
            kept.resumables,
            vec![resumable("1-0", Some("approve"), false), resumable("1-1", Some("deny"), true)],
            "{name}"
        );
        assert_eq!(kept.ids_until, 1025, "{name}");
    }
}

#[test]
fn sign_ins_are_kept_until_forgotten_or_ended() {
    for (name, backend) in backends() {
        let now = now_ms();
        let mut store = backend.open();
        let (live, ended, forgotten) = (session(1, now + 3_600_000), session(2, now - 1), session(3, now + 60_000));
        store
            .commit(&[
                Change::PutSession(live.clone()),
                Change::PutSession(ended),
                Change::PutSession(forgotten.clone()),
            ])
            .unwrap();
        store.commit(&[Change::DeleteSession(forgotten.key)]).unwrap();
        // Replaced under the same key.
        let moved = StoredSession { csrf: "csrf-new".into(), ..live.clone() };
        store.commit(&[Change::PutSession(moved.clone())]).unwrap();
        drop(store);
        let kept = backend.open().load().unwrap();
        assert_eq!(kept.sessions, vec![moved], "{name}: the ended one is gone at load");
    }
}

#[test]
fn queries_filter_and_page_the_log_and_a_page_keeps_to_its_byte_budget() {
    for (name, backend) in backends() {
        let mut store = backend.open();
        let mut changes = Vec::new();
        for i in 0..10u64 {
            let project = if i % 2 == 0 { "web" } else { "api" };
            let tool = if i % 3 == 0 { "Write" } else { "Bash" };
            let outcome = (i % 4 == 0).then_some("deny");
            changes.push(record(1000 + i, project, tool, outcome));
        }
        store.commit(&changes).unwrap();
        let reader = store.reader();
        let seqs = |q: AuditQuery| reader.query(&q).unwrap().records.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(AuditQuery { project: Some("web".into()), ..AuditQuery::default() }), [1, 3, 5, 7, 9]);
        assert_eq!(seqs(AuditQuery { tool: Some("Write".into()), ..AuditQuery::default() }), [1, 4, 7, 10]);
        assert_eq!(seqs(AuditQuery { outcome: Some("deny".into()), ..AuditQuery::default() }), [1, 5, 9]);
        assert_eq!(seqs(AuditQuery { since: Some(1003), until: Some(1006), ..AuditQuery::default() }), [4, 5, 6]);
        // Pages of three, each after the last.
        let mut query = AuditQuery { limit: Some(3), ..AuditQuery::default() };
        let mut pages = Vec::new();
        loop {
            let page = reader.query(&query).unwrap();
            pages.push(page.records.iter().map(|r| r.seq).collect::<Vec<_>>());
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, [vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9], vec![10]], "{name}");
        // Two records larger than half the budget: a page holds one.
        let big = "x".repeat(MAX_PAGE_BYTES / 2 + 1);
        let mut store = store;
        let large = |at| Change::Record(Entry::new(at, "request").with("pad", big.as_str()));
        store.commit(&[large(2000), large(2001)]).unwrap();
        let page = reader.query(&AuditQuery { after: Some(10), ..AuditQuery::default() }).unwrap();
        assert_eq!((page.records.len(), page.next), (1, Some(11)), "{name}");
    }
}

#[test]
fn credentials_are_replaced_whole_and_their_version_moves_with_each_write() {
    for (name, backend) in backends() {
        let store = backend.open();
        let kept = store.credentials().expect("every backend here keeps credentials");
        assert_eq!(kept.read().unwrap(), (Vec::new(), 0), "{name}: never held any");
        let row = |name: &str| CredentialRow {
            kind: "admin".into(),
            name: name.into(),
            token_sha256: "ab".repeat(32),
            projects: Vec::new(),
            role: Some("approver".into()),
            expires: None,
        };
        let sled = CredentialRow {
            kind: "sled".into(),
            name: "farm".into(),
            token_sha256: "cd".repeat(32),
            projects: vec!["team-a/*".into()],
            role: None,
            expires: Some("2027-01-01T00:00:00Z".into()),
        };
        kept.write(&[row("ana"), sled.clone()]).unwrap();
        let (rows, version) = kept.read().unwrap();
        assert_eq!(version, 1, "{name}");
        let mut names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["ana", "farm"], "{name}");
        assert!(rows.contains(&sled), "{name}: {rows:?}");
        // The empty set is a set: written, its version moves on (a store whose last credential was revoked
        // is not a store that never held any).
        kept.write(&[]).unwrap();
        assert_eq!(kept.read().unwrap(), (Vec::new(), 2), "{name}");
        assert_eq!(kept.version().unwrap(), 2, "{name}");
        drop(store);
        assert_eq!(backend.open().credentials().unwrap().version().unwrap(), 2, "{name}: kept");
    }
}

/// One step of a run against the reference model.
#[derive(Clone, Debug)]
enum Step {
    Commit(Vec<Op>),
    Reopen,
}

#[derive(Clone, Debug)]
enum Op {
    Record(u8),
    PutRule(u8, u8),
    DeleteRule(u8),
    PutSession(u8, bool),
    DeleteSession(u8),
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![
        3 => any::<u8>().prop_map(Op::Record),
        2 => (0..6u8, any::<u8>()).prop_map(|(id, p)| Op::PutRule(id, p)),
        1 => (0..6u8).prop_map(Op::DeleteRule),
        2 => (0..6u8, any::<bool>()).prop_map(|(k, live)| Op::PutSession(k, live)),
        1 => (0..6u8).prop_map(Op::DeleteSession),
    ];
    prop_oneof![5 => proptest::collection::vec(op, 0..6).prop_map(Step::Commit), 1 => Just(Step::Reopen)]
}

/// What a store should hold after a run.
#[derive(Default)]
struct Model {
    rules: BTreeMap<u64, StoredRule>,
    sessions: BTreeMap<[u8; 32], StoredSession>,
    records: Vec<String>,
}

fn run(backend: &dyn Backend, steps: &[Step]) -> Result<(), TestCaseError> {
    let now = now_ms();
    let mut model = Model::default();
    let mut heads = Vec::new();
    let mut store = backend.open();
    for step in steps {
        match step {
            Step::Reopen => {
                drop(store);
                store = backend.open();
            }
            Step::Commit(ops) => {
                let mut changes = Vec::new();
                for op in ops {
                    match *op {
                        Op::Record(n) => {
                            let text = format!("r{}-{n}", model.records.len());
                            model.records.push(text.clone());
                            changes.push(Change::Record(Entry::new(u64::from(n), "request").with("t", text)));
                        }
                        Op::PutRule(id, p) => {
                            let kept = rule(u64::from(id), &format!("Bash(c{p})"));
                            model.rules.insert(kept.id, kept.clone());
                            changes.push(Change::PutRule(kept));
                        }
                        Op::DeleteRule(id) => {
                            model.rules.remove(&u64::from(id));
                            changes.push(Change::DeleteRule(u64::from(id)));
                        }
                        Op::PutSession(k, live) => {
                            let kept = session(k, if live { now + 3_600_000 } else { now - 1 });
                            model.sessions.insert(kept.key, kept.clone());
                            changes.push(Change::PutSession(kept));
                        }
                        Op::DeleteSession(k) => {
                            model.sessions.remove(&[k; 32]);
                            changes.push(Change::DeleteSession([k; 32]));
                        }
                    }
                }
                let head = store.commit(&changes).unwrap();
                prop_assert_eq!(head.seq, model.records.len() as u64);
                if head.seq > 0 {
                    heads.push(head);
                }
            }
        }
    }
    drop(store);
    let mut store = backend.open();
    let kept = store.load().unwrap();
    prop_assert_eq!(kept.rules, model.rules.values().cloned().collect::<Vec<_>>());
    let mut live: Vec<_> = model.sessions.values().filter(|s| s.expires_ms > now).cloned().collect();
    live.sort_by_key(|s| (s.expires_ms, s.key));
    let mut sessions = kept.sessions;
    sessions.sort_by_key(|s| (s.expires_ms, s.key));
    prop_assert_eq!(sessions, live);
    let reader = store.reader();
    let page = reader.query(&AuditQuery { limit: Some(1000), ..AuditQuery::default() }).unwrap();
    let texts: Vec<String> = page
        .records
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.text).unwrap()["t"].as_str().unwrap().to_owned())
        .collect();
    prop_assert_eq!(texts, model.records.clone());
    let report = reader.verify_with(&heads).unwrap();
    prop_assert!(report.is_ok(), "{:?}", report);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_backend_agrees_with_the_model_across_reopens(steps in proptest::collection::vec(step(), 1..12)) {
        for (_, backend) in backends() {
            run(&*backend, &steps)?;
        }
    }
}

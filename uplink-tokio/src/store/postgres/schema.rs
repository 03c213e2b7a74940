//! The database's shape: the schema `uplink`, its version and the steps to it, and the small helpers every
//! room uses (the `meta` table of named numbers and hashes, the check that a database is of this build's
//! schema).

use std::sync::Arc;
use std::time::SystemTime;

use tokio_postgres::{Client, GenericClient};

use super::db::Db;
use crate::store::seam::StoreError;

/// The version of the `uplink` schema this build writes (PostgreSQL's own numbering, apart from SQLite's).
pub const SCHEMA_VERSION: i64 = 11;

/// Each step from version `i` to `i + 1`, run in one transaction.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: everything the embedded store's schema 4 holds. `meta` keeps named pairs: the schema's version,
    // the audit log's head and anchor (seq, hash), the store's secret, the credentials' version, the reserved
    // connection handles.
    "CREATE SCHEMA IF NOT EXISTS uplink;
     CREATE TABLE uplink.meta (key text PRIMARY KEY, n bigint NOT NULL, hash bytea NOT NULL);
     CREATE TABLE uplink.rules (
         id bigint PRIMARY KEY,
         effect text NOT NULL,
         pattern text NOT NULL,
         projects text,
         project text,
         expires bigint,
         author text NOT NULL,
         created bigint NOT NULL
     );
     CREATE TABLE uplink.audit (
         seq bigint PRIMARY KEY,
         at_ms bigint NOT NULL,
         kind text NOT NULL,
         project text,
         tool text,
         outcome text,
         prev bytea NOT NULL,
         hash bytea NOT NULL,
         record text NOT NULL
     );
     CREATE INDEX audit_at ON uplink.audit (at_ms);
     CREATE INDEX audit_project ON uplink.audit (project, seq);
     CREATE INDEX audit_outcome ON uplink.audit (outcome, seq);
     CREATE TABLE uplink.credentials (
         token_sha256 text PRIMARY KEY,
         kind text NOT NULL CHECK (kind IN ('sled', 'admin')),
         name text NOT NULL,
         projects text,
         role text,
         expires text
     );
     CREATE TABLE uplink.console_sessions (
         key bytea PRIMARY KEY,
         principal text NOT NULL,
         csrf text NOT NULL,
         expires_ms bigint NOT NULL
     );
     CREATE TABLE uplink.resumables (id text PRIMARY KEY, record text NOT NULL);",
    // 1 → 2: a cluster's nodes and their leases (on the database's clock), the table of which connection
    // holds each project (with a generation from a sequence: the claim's fencing token), the releases one
    // node asks of another, and the check every commit of a node makes first. `clock_timestamp()`, not
    // `now()`: a transaction's start is not when it checks.
    "CREATE TABLE uplink.nodes (
         id bigserial PRIMARY KEY,
         addr text NOT NULL,
         started timestamptz NOT NULL DEFAULT clock_timestamp(),
         lease_until timestamptz NOT NULL,
         ended timestamptz
     );
     CREATE SEQUENCE uplink.claim_gen;
     CREATE TABLE uplink.claims (
         project text PRIMARY KEY,
         node bigint NOT NULL REFERENCES uplink.nodes (id),
         conn bigint NOT NULL,
         credential bigint NOT NULL,
         gen bigint NOT NULL,
         since timestamptz NOT NULL DEFAULT clock_timestamp()
     );
     CREATE INDEX claims_node ON uplink.claims (node);
     CREATE TABLE uplink.releases (
         node bigint NOT NULL,
         project text NOT NULL,
         credential bigint NOT NULL,
         PRIMARY KEY (node, project)
     );
     CREATE FUNCTION uplink.live(p_node bigint) RETURNS boolean LANGUAGE sql AS
     $$ SELECT EXISTS (SELECT 1 FROM uplink.nodes
                       WHERE id = p_node AND ended IS NULL AND lease_until > clock_timestamp()) $$;
     CREATE FUNCTION uplink.fence(p_node bigint) RETURNS void LANGUAGE plpgsql AS
     $$ BEGIN
          IF NOT uplink.live(p_node) THEN
            RAISE EXCEPTION 'uplink: the lease of node % has lapsed', p_node USING ERRCODE = 'UL001';
          END IF;
        END $$;",
    // 2 → 3: the head's compare-and-set as a statement that fails the transaction when the head is not where
    // the writer left it, so that a commit's statements and its COMMIT can be sent together.
    "CREATE FUNCTION uplink.move_head(p_seq bigint, p_hash bytea, p_was_seq bigint, p_was_hash bytea)
       RETURNS void LANGUAGE plpgsql AS
     $$ BEGIN
          UPDATE uplink.meta SET n = p_seq, hash = p_hash
            WHERE key = 'head' AND n = p_was_seq AND hash = p_was_hash;
          IF NOT FOUND THEN
            RAISE EXCEPTION 'uplink: the audit log''s head is not at seq %', p_was_seq USING ERRCODE = 'UL002';
          END IF;
        END $$;",
    // 3 → 4: one hash chain per writer, so that several gateways write the audit log at once and none waits
    // on another's head. `chains` keeps each chain's head and anchor (moved from `meta`) and the token of
    // the writer that last took it up (held by a session lock: one whose writer is gone is taken up by the
    // next); the log so far is chain 0. Each record gains its chain and its place among every chain's records (the order
    // of pages; not of commits: a sequence's numbers are drawn as records are written).
    "CREATE TABLE uplink.chains (
         id bigint PRIMARY KEY,
         writer bigint,
         started timestamptz NOT NULL DEFAULT clock_timestamp(),
         head_seq bigint NOT NULL DEFAULT 0,
         head_hash bytea NOT NULL,
         anchor_seq bigint NOT NULL DEFAULT 0,
         anchor_hash bytea NOT NULL
     );
     CREATE SEQUENCE uplink.chain_id START 1;
     CREATE SEQUENCE uplink.chain_writer START 1;
     INSERT INTO uplink.chains (id, head_seq, head_hash, anchor_seq, anchor_hash)
       SELECT 0,
              coalesce((SELECT n FROM uplink.meta WHERE key = 'head'), 0),
              coalesce((SELECT hash FROM uplink.meta WHERE key = 'head'), decode(repeat('00', 32), 'hex')),
              coalesce((SELECT n FROM uplink.meta WHERE key = 'anchor'), 0),
              coalesce((SELECT hash FROM uplink.meta WHERE key = 'anchor'), decode(repeat('00', 32), 'hex'));
     DELETE FROM uplink.meta WHERE key IN ('head', 'anchor');
     ALTER TABLE uplink.audit ADD COLUMN chain bigint NOT NULL DEFAULT 0, ADD COLUMN place bigint;
     ALTER TABLE uplink.audit ALTER COLUMN chain DROP DEFAULT;
     UPDATE uplink.audit SET place = seq;
     CREATE SEQUENCE uplink.audit_place;
     SELECT setval('uplink.audit_place', coalesce((SELECT max(seq) FROM uplink.audit), 0) + 1, false);
     ALTER TABLE uplink.audit ALTER COLUMN place SET DEFAULT nextval('uplink.audit_place'),
                              ALTER COLUMN place SET NOT NULL;
     ALTER TABLE uplink.audit DROP CONSTRAINT audit_pkey, ADD PRIMARY KEY (chain, seq);
     CREATE UNIQUE INDEX audit_by_place ON uplink.audit (place);
     DROP INDEX uplink.audit_project;
     DROP INDEX uplink.audit_outcome;
     CREATE INDEX audit_project ON uplink.audit (project, place);
     CREATE INDEX audit_outcome ON uplink.audit (outcome, place);
     CREATE INDEX audit_cites ON uplink.audit (chain, seq) WHERE kind = 'cite';
     DROP FUNCTION uplink.move_head(bigint, bytea, bigint, bytea);
     CREATE FUNCTION uplink.move_chain(p_chain bigint, p_writer bigint, p_seq bigint, p_hash bytea,
                                       p_was_seq bigint, p_was_hash bytea)
       RETURNS void LANGUAGE plpgsql AS
     $$ BEGIN
          UPDATE uplink.chains SET head_seq = p_seq, head_hash = p_hash
            WHERE id = p_chain AND writer = p_writer AND head_seq = p_was_seq AND head_hash = p_was_hash;
          IF NOT FOUND THEN
            RAISE EXCEPTION 'uplink: chain % is not at seq % under this writer', p_chain, p_was_seq
              USING ERRCODE = 'UL002';
          END IF;
        END $$;",
    // 4 → 5: rules shared by every node. Each change to a rule (made, or removed: a removed rule stays a
    // day as a tombstone, so that every node reads its removal) takes the next `rules_version` under that
    // row's lock, so that versions follow the order of commits and a node reading the rules changed since
    // the last version it saw misses none. Rule ids come from a sequence in blocks of 256, one block per
    // node at a time, never the same id twice.
    "ALTER TABLE uplink.rules ADD COLUMN version bigint NOT NULL DEFAULT 0, ADD COLUMN removed_at timestamptz;
     CREATE INDEX rules_by_version ON uplink.rules (version);
     INSERT INTO uplink.meta (key, n, hash) VALUES ('rules_version', 0, '') ON CONFLICT (key) DO NOTHING;
     CREATE SEQUENCE uplink.rule_ids INCREMENT BY 256;
     SELECT setval('uplink.rule_ids', coalesce((SELECT max(id) FROM uplink.rules), 0) + 1, false);
     CREATE FUNCTION uplink.rules_changed() RETURNS bigint LANGUAGE sql AS
     $$ UPDATE uplink.meta SET n = n + 1 WHERE key = 'rules_version' RETURNING n $$;",
    // 5 → 6: console sign-ins shared by every node, as rules are: each change takes the next
    // `sessions_version` under that row's lock, and a sign-out stays a day as a tombstone, so that every
    // node reads it.
    "ALTER TABLE uplink.console_sessions ADD COLUMN version bigint NOT NULL DEFAULT 0,
                                         ADD COLUMN removed_at timestamptz;
     CREATE INDEX console_sessions_by_version ON uplink.console_sessions (version);
     INSERT INTO uplink.meta (key, n, hash) VALUES ('sessions_version', 0, '') ON CONFLICT (key) DO NOTHING;
     CREATE FUNCTION uplink.sessions_changed() RETURNS bigint LANGUAGE sql AS
     $$ UPDATE uplink.meta SET n = n + 1 WHERE key = 'sessions_version' RETURNING n $$;",
    // 6 → 7: the requests waiting for a decision, by node: a row is written in the commit of a request's
    // `request` record and goes with its `end`, so that the requests of a node that died can be ended in
    // the log by the next (as lost with their connection).
    "CREATE TABLE uplink.pending (
         perm text PRIMARY KEY,
         node bigint NOT NULL,
         project text,
         tool text,
         at_ms bigint NOT NULL
     );
     CREATE INDEX pending_by_node ON uplink.pending (node);",
    // 7 → 8: the node that holds each request kept to come back (0: none joined); a node starting takes up
    // those of nodes that are gone, never a live node's.
    "ALTER TABLE uplink.resumables ADD COLUMN node bigint NOT NULL DEFAULT 0;",
    // 8 → 9: where each node's peers reach it (its internal listener, `--cluster-listen`); none for a node
    // that serves alone.
    "ALTER TABLE uplink.nodes ADD COLUMN internal text;",
    // 9 → 10: node ids past every id a gateway reserved before (`ids_until`). A node hands out ids in a range
    // of its own (its id times 2^32); a database a single gateway served first holds ids from the time of
    // day (far beyond the first nodes' ranges), and nodes starting after them all would hand out the same.
    "SELECT setval('uplink.nodes_id_seq',
                   GREATEST((SELECT last_value FROM uplink.nodes_id_seq),
                            coalesce((SELECT n FROM uplink.meta WHERE key = 'ids_until'), 0) / 4294967296 + 1));",
    // 10 → 11: a sign-in an identity provider vouched for keeps the role it gave and the person's email, so
    // that every node acts with them.
    "ALTER TABLE uplink.console_sessions ADD COLUMN IF NOT EXISTS role text, ADD COLUMN IF NOT EXISTS email text;",
];

/// The transaction-scoped lock under which a schema is checked and migrated (two gateways starting at once
/// take turns).
const MIGRATION_LOCK: i64 = 0x7570_6c69_6e6b_0001;

/// How many rule ids a node draws at a time (the sequence `uplink.rule_ids` steps by as many).
pub(super) const RULE_ID_BLOCK: u64 = 256;

/// The transaction-scoped lock a prune takes (one writer prunes at a time; the others skip their turn).
pub(super) const PRUNE_LOCK: i64 = 0x7570_6c69_6e6b_0003;

/// The schema's version in the database `client` is connected to (0: none yet).
pub(super) async fn version(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    let made: bool = client.query_one("SELECT to_regclass('uplink.meta') IS NOT NULL", &[]).await?.get(0);
    if !made {
        return Ok(0);
    }
    let row = client.query_opt("SELECT n FROM uplink.meta WHERE key = 'schema_version'", &[]).await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// The pair kept under `key` in `meta`.
pub(super) async fn pair(
    client: &impl GenericClient,
    key: &str,
) -> Result<Option<(u64, [u8; 32])>, tokio_postgres::Error> {
    let row = client.query_opt("SELECT n, hash FROM uplink.meta WHERE key = $1", &[&key]).await?;
    Ok(row.map(|r| (u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), hash_of(r.get(1)))))
}

/// A 32-byte hash from the database (zeros when it is not 32 bytes: it then fails to verify).
pub(super) fn hash_of(blob: Vec<u8>) -> [u8; 32] {
    let mut h = [0u8; 32];
    if blob.len() == 32 {
        h.copy_from_slice(&blob);
    }
    h
}

/// `n` as the database's `bigint`.
pub(super) fn big(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Database(format!("{n} is beyond what the store keeps (2^63 - 1)")))
}

/// Refuses a schema newer than this build's, and one older (`uplink gateway` migrates it); `Ok` when it is
/// this build's.
pub(super) async fn check(db: &Db, client: &impl GenericClient) -> Result<(), StoreError> {
    match version(client).await.map_err(|e| db.said(&e))? {
        SCHEMA_VERSION => Ok(()),
        found if found > SCHEMA_VERSION => {
            Err(StoreError::Newer { path: db.place().to_owned(), found, supported: SCHEMA_VERSION })
        }
        found => Err(StoreError::Database(format!(
            "{}: schema version {found}; start the gateway once to make or migrate it",
            db.place()
        ))),
    }
}

/// Makes the schema, or migrates it to this build's, each step in a transaction of its own under the
/// migration lock; then draws the store's secret if it has none. Refuses a newer schema.
pub(super) async fn migrate(db: &Arc<Db>, client: &mut Client) -> Result<(), StoreError> {
    loop {
        let tx = client.transaction().await.map_err(|e| db.said(&e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| db.said(&e))?;
        let found = version(&tx).await.map_err(|e| db.said(&e))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::Newer { path: db.place().to_owned(), found, supported: SCHEMA_VERSION });
        }
        if found == SCHEMA_VERSION {
            ensure_meta(db, &tx).await?;
            tx.commit().await.map_err(|e| db.said(&e))?;
            return Ok(());
        }
        let step = MIGRATIONS[usize::try_from(found).unwrap_or(0)];
        tx.batch_execute(step).await.map_err(|e| db.said(&e))?;
        tx.execute(
            "INSERT INTO uplink.meta (key, n, hash) VALUES ('schema_version', $1, '')
             ON CONFLICT (key) DO UPDATE SET n = excluded.n",
            &[&(found + 1)],
        )
        .await
        .map_err(|e| db.said(&e))?;
        tx.commit().await.map_err(|e| db.said(&e))?;
        tracing::info!(store = %db.place(), version = found + 1, "the store's schema was migrated");
    }
}

/// The pairs every store has from its first start: nothing reserved, no credentials' version, and the
/// store's secret (drawn once, the same ever after).
async fn ensure_meta(db: &Db, tx: &impl GenericClient) -> Result<(), StoreError> {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| StoreError::Database("the system's secure random generator failed".to_owned()))?;
    for (name, hash) in [("ids_until", &[][..]), ("credentials_version", &[][..]), ("input_key", &key[..])] {
        tx.execute(
            "INSERT INTO uplink.meta (key, n, hash) VALUES ($1, 0, $2) ON CONFLICT (key) DO NOTHING",
            &[&name, &hash],
        )
        .await
        .map_err(|e| db.said(&e))?;
    }
    Ok(())
}

/// `at` in Unix milliseconds.
pub(super) fn unix_ms(at: SystemTime) -> u64 {
    u64::try_from(at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

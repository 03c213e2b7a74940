//! The cluster's part of the database: nodes and their leases, the table of which connection holds each
//! project, and the releases one node asks of another ([`PostgresCluster`]). Every call runs on a connection
//! of its own (not the readers' pool, where a slow audit query could hold back a renewal), opened again when
//! it was lost. Times are the database's own (`clock_timestamp()`), never a node's.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;
use uplink_proto::gateway::{CredentialId, Holder};

use super::db::Db;
use super::kept::{self, RULE_COLUMNS, SESSION_COLUMNS};
use super::schema::{RULE_ID_BLOCK, big};
use crate::store::seam::{
    ClaimAnswer, ClusterStore, HeldAt, Orphan, Peer, Renewal, RuleChanges, SessionChanges, StoreError, StoredResumable,
};

/// How long a renewal may take before it counts as unanswered: its lease's deadline does not wait for it.
const RENEW_WITHIN: Duration = Duration::from_secs(2);

/// The most changed rows one reading of the rules or the sign-ins takes in.
const CHANGES_AT_ONCE: usize = 10_000;

/// The session lock under which a node joins alone ([`ClusterStore::join_alone`]).
const JOIN_LOCK: i64 = 0x7570_6c69_6e6b_0004;

/// The cluster of gateways sharing a PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresCluster {
    db: Arc<Db>,
    client: Arc<Mutex<Option<Arc<Client>>>>,
}

impl PostgresCluster {
    pub(super) fn of(db: Arc<Db>) -> PostgresCluster {
        PostgresCluster { db, client: Arc::new(Mutex::new(None)) }
    }

    /// Joins as a new node; `alone`: only while no other node's lease holds (under a lock that makes two
    /// joining at once take turns, each looking after the other has joined).
    fn join_with(&self, addr: &str, internal: Option<&str>, lease: Duration, alone: bool) -> Result<u64, StoreError> {
        let (addr, internal) = (addr.to_owned(), internal.map(str::to_owned));
        let joined =
            self.with_client(RENEW_WITHIN.max(Duration::from_secs(10)), move |client: Arc<Client>| async move {
                let insert = "INSERT INTO uplink.nodes (addr, lease_until, internal)
                          SELECT $1, clock_timestamp() + $2::bigint * interval '1 millisecond', $4
                          WHERE NOT $3 OR NOT EXISTS (SELECT 1 FROM uplink.nodes
                                                      WHERE ended IS NULL AND lease_until > clock_timestamp())
                          RETURNING id";
                if alone {
                    client.execute("SELECT pg_advisory_lock($1)", &[&JOIN_LOCK]).await?;
                }
                let row = client.query_opt(insert, &[&addr, &ms(lease), &alone, &internal]).await;
                if alone {
                    // A failed unlock is a lost connection, which lets the lock go with it; the join stands.
                    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&JOIN_LOCK]).await;
                }
                let Some(row) = row? else {
                    let live = client
                        .query_opt(
                            "SELECT id, addr FROM uplink.nodes WHERE ended IS NULL AND lease_until > clock_timestamp()
                         ORDER BY id LIMIT 1",
                            &[],
                        )
                        .await?;
                    return Ok(Err(live.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))));
                };
                // What dead nodes left behind goes as a node joins: their claims (anyone may take them
                // anyway), the releases asked of them, and, a week on, the nodes themselves; and the
                // tombstones of rules removed and sign-ins ended a day ago (every node read them long since).
                client
                    .batch_execute(
                        "DELETE FROM uplink.claims c WHERE NOT uplink.live(c.node);
                     DELETE FROM uplink.releases r WHERE NOT uplink.live(r.node);
                     DELETE FROM uplink.rules WHERE removed_at < clock_timestamp() - interval '1 day';
                     DELETE FROM uplink.console_sessions WHERE removed_at < clock_timestamp() - interval '1 day';
                     DELETE FROM uplink.nodes n
                       WHERE coalesce(n.ended, n.lease_until) < clock_timestamp() - interval '7 days'
                         AND NOT EXISTS (SELECT 1 FROM uplink.claims c WHERE c.node = n.id);",
                    )
                    .await?;
                Ok(Ok(row.get::<_, i64>(0)))
            })?;
        let node = joined.map_err(|live| {
            let (node, addr) = live.unwrap_or_default();
            StoreError::NodeLive { place: self.db.place().to_owned(), node: unbits(node), addr }
        })?;
        self.db.node.store(node, Ordering::Release);
        Ok(unbits(node))
    }

    /// The rows of the versioned table `table` (its `columns`, and whether each was removed) changed since
    /// `version`, in the order of their versions, at most [`CHANGES_AT_ONCE`] (the rest come at the next
    /// reading); and the version they bring the reader to. On the readers' pool: a reading every half second
    /// keeps off the connection renewals go on.
    fn changed_since(
        &self,
        table: &'static str,
        columns: &'static str,
        version: u64,
    ) -> Result<(Vec<(tokio_postgres::Row, bool)>, u64), StoreError> {
        let after = big(version)?;
        let db = self.db.clone();
        self.db.run_within(Duration::from_secs(5), async move {
            let client = db.clone().pooled().await?;
            let sql = format!(
                "SELECT {columns}, removed_at IS NOT NULL, version FROM uplink.{table}
                 WHERE version > $1 ORDER BY version LIMIT {CHANGES_AT_ONCE}"
            );
            let rows = client.query(&sql, &[&after]).await.map_err(|e| db.said(&e))?;
            let mut last = version;
            let rows = rows
                .into_iter()
                .map(|row| {
                    let n = row.len();
                    last = last.max(u64::try_from(row.get::<_, i64>(n - 1)).unwrap_or(0));
                    let removed = row.get::<_, bool>(n - 2);
                    (row, removed)
                })
                .collect();
            Ok((rows, last))
        })
    }

    /// Runs `work` on the cluster's connection (opened, or opened again, as needed), within `within`.
    fn with_client<T, F, Fut>(&self, within: Duration, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        let db = self.db.clone();
        let slot = self.client.clone();
        self.db.run_within(within, async move {
            let client = {
                let mut slot = slot.lock().await;
                match slot.as_ref() {
                    Some(client) if !client.is_closed() => client.clone(),
                    _ => {
                        let client = Arc::new(db.clone().dedicated().await?);
                        *slot = Some(client.clone());
                        client
                    }
                }
            };
            work(client).await.map_err(|e| db.said(&e))
        })
    }
}

/// Milliseconds, as the database's `bigint`.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A credential's or connection's id as a `bigint`, bit for bit (ids drawn from hashes use all 64 bits).
fn bits(n: u64) -> i64 {
    i64::from_ne_bytes(n.to_ne_bytes())
}

/// Back from [`bits`].
fn unbits(n: i64) -> u64 {
    u64::from_ne_bytes(n.to_ne_bytes())
}

impl ClusterStore for PostgresCluster {
    fn join(&self, addr: &str, internal: Option<&str>, lease: Duration) -> Result<u64, StoreError> {
        self.join_with(addr, internal, lease, false)
    }

    fn join_alone(&self, addr: &str, lease: Duration) -> Result<u64, StoreError> {
        self.join_with(addr, None, lease, true)
    }

    fn take_held(&self, node: u64, project: &str, credential: u64) -> Result<Vec<StoredResumable>, StoreError> {
        let (node, project, credential) = (big(node)?, project.to_owned(), credential.to_string());
        let db = self.db.clone();
        let rows = self.with_client(Duration::from_secs(10), move |client: Arc<Client>| async move {
            // A gone node's, or one given to this node already; each taken by one node alone (its row
            // locked; another taker, finding it moved to a live node, skips it); its row of waiting requests
            // follows it.
            client
                .query(
                    "WITH taken AS (UPDATE uplink.resumables SET node = $1
                                    WHERE (node = $1 OR NOT uplink.live(node)) AND uplink.live($1)
                                      AND record::jsonb @> jsonb_build_object('project', $2::text,
                                                                              'credential', $3::text::numeric)
                                    RETURNING id, record),
                          moved AS (UPDATE uplink.pending SET node = $1 WHERE perm IN (SELECT id FROM taken))
                     SELECT record FROM taken ORDER BY id",
                    &[&node, &project, &credential],
                )
                .await
        })?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get(0))
                    .map_err(|e| StoreError::Database(format!("{}: a kept request does not read: {e}", db.place())))
            })
            .collect()
    }

    fn live_holders(&self, node: u64, project: &str, credential: u64) -> Result<Vec<Peer>, StoreError> {
        let (db, node, project, credential) = (self.db.clone(), big(node)?, project.to_owned(), credential.to_string());
        self.db.run_within(Duration::from_secs(5), async move {
            let client = db.clone().pooled().await?;
            let rows = client
                .query(
                    "SELECT DISTINCT n.id, n.internal FROM uplink.resumables r JOIN uplink.nodes n ON n.id = r.node
                     WHERE r.node <> $1 AND uplink.live(r.node) AND n.internal IS NOT NULL
                       AND r.record::jsonb @> jsonb_build_object('project', $2::text, 'credential', $3::text::numeric)",
                    &[&node, &project, &credential],
                )
                .await
                .map_err(|e| db.said(&e))?;
            Ok(rows.iter().map(|r| Peer { node: unbits(r.get(0)), internal: r.get(1) }).collect())
        })
    }

    fn holder(&self, perm: &str) -> Result<Option<HeldAt>, StoreError> {
        let (db, perm) = (self.db.clone(), perm.to_owned());
        self.db.run_within(Duration::from_secs(5), async move {
            let client = db.clone().pooled().await?;
            let row = client
                .query_opt(
                    "SELECT p.node, uplink.live(p.node), n.internal,
                            EXISTS (SELECT 1 FROM uplink.resumables r WHERE r.id = p.perm)
                     FROM uplink.pending p LEFT JOIN uplink.nodes n ON n.id = p.node WHERE p.perm = $1",
                    &[&perm],
                )
                .await
                .map_err(|e| db.said(&e))?;
            Ok(row.map(|r| HeldAt {
                holder: Holder { node: unbits(r.get(0)), live: r.get(1), kept: r.get(3) },
                internal: r.get(2),
            }))
        })
    }

    fn project_holder(&self, project: &str) -> Result<Option<Peer>, StoreError> {
        let (db, project) = (self.db.clone(), project.to_owned());
        self.db.run_within(Duration::from_secs(5), async move {
            let client = db.clone().pooled().await?;
            let row = client
                .query_opt(
                    "SELECT n.id, n.internal FROM uplink.claims c JOIN uplink.nodes n ON n.id = c.node
                     WHERE c.project = $1 AND uplink.live(c.node) AND n.internal IS NOT NULL",
                    &[&project],
                )
                .await
                .map_err(|e| db.said(&e))?;
            Ok(row.map(|r| Peer { node: unbits(r.get(0)), internal: r.get(1) }))
        })
    }

    fn peers(&self) -> Result<Vec<Peer>, StoreError> {
        let db = self.db.clone();
        self.db.run_within(Duration::from_secs(5), async move {
            let client = db.clone().pooled().await?;
            let rows = client
                .query(
                    "SELECT id, internal FROM uplink.nodes
                     WHERE ended IS NULL AND lease_until > clock_timestamp() AND internal IS NOT NULL ORDER BY id",
                    &[],
                )
                .await
                .map_err(|e| db.said(&e))?;
            Ok(rows.iter().map(|r| Peer { node: unbits(r.get(0)), internal: r.get(1) }).collect())
        })
    }

    fn renew(&self, node: u64, lease: Duration) -> Result<Renewal, StoreError> {
        let node = big(node)?;
        self.with_client(RENEW_WITHIN, move |client: Arc<Client>| async move {
            let held: bool = client
                .query_one(
                    "WITH u AS (UPDATE uplink.nodes SET lease_until = clock_timestamp() + $2::bigint * interval '1 millisecond'
                                WHERE id = $1 AND ended IS NULL AND lease_until > clock_timestamp() RETURNING 1)
                     SELECT EXISTS (SELECT 1 FROM u)",
                    &[&node, &ms(lease)],
                )
                .await?
                .get(0);
            let releases = if held {
                client
                    .query("DELETE FROM uplink.releases WHERE node = $1 RETURNING project, credential", &[&node])
                    .await?
                    .iter()
                    .map(|r| (r.get(0), unbits(r.get(1))))
                    .collect()
            } else {
                Vec::new()
            };
            Ok(Renewal { held, releases })
        })
    }

    fn claim(&self, node: u64, conn: u64, project: &str, credential: u64) -> Result<Option<ClaimAnswer>, StoreError> {
        let (node, conn, credential, project) = (big(node)?, bits(conn), bits(credential), project.to_owned());
        self.with_client(RENEW_WITHIN.max(Duration::from_secs(5)), move |client: Arc<Client>| async move {
            // Granted when free, or when its holder's lease has lapsed, and only to a live node; the outer
            // SELECT sees the row as it was before, which names the holder when nothing was granted.
            let row = client
                .query_one(
                    "WITH me AS (SELECT uplink.live($2) AS live),
                     ins AS (
                       INSERT INTO uplink.claims AS c (project, node, conn, credential, gen)
                       SELECT $1, $2, $3, $4, nextval('uplink.claim_gen') FROM me WHERE me.live
                       ON CONFLICT (project) DO UPDATE
                         SET node = excluded.node, conn = excluded.conn, credential = excluded.credential,
                             gen = excluded.gen, since = clock_timestamp()
                         WHERE NOT uplink.live(c.node)
                       RETURNING gen)
                     SELECT (SELECT gen FROM ins), (SELECT live FROM me),
                            (SELECT node FROM uplink.claims WHERE project = $1),
                            (SELECT credential FROM uplink.claims WHERE project = $1)",
                    &[&project, &node, &conn, &credential],
                )
                .await?;
            let (generation, live): (Option<i64>, bool) = (row.get(0), row.get(1));
            let (holder, held_by): (Option<i64>, Option<i64>) = (row.get(2), row.get(3));
            Ok(match (generation, holder, held_by) {
                _ if !live => None,
                (Some(generation), _, _) => Some(ClaimAnswer::Granted { generation: unbits(generation) }),
                (None, Some(holder), Some(held_by)) => {
                    Some(ClaimAnswer::Held { credential: CredentialId(unbits(held_by)), node: unbits(holder) })
                }
                // Given back between the insert's look and the outer one: no answer; the claim asks again.
                (None, _, _) => None,
            })
        })
    }

    fn ask_release(&self, holder: u64, project: &str, credential: u64) -> Result<(), StoreError> {
        let (holder, project, credential) = (big(holder)?, project.to_owned(), bits(credential));
        self.with_client(RENEW_WITHIN.max(Duration::from_secs(5)), move |client: Arc<Client>| async move {
            client
                .execute(
                    "INSERT INTO uplink.releases (node, project, credential) VALUES ($1, $2, $3)
                     ON CONFLICT (node, project) DO UPDATE SET credential = excluded.credential",
                    &[&holder, &project, &credential],
                )
                .await?;
            Ok(())
        })
    }

    fn leave(&self, node: u64) -> Result<(), StoreError> {
        let node = big(node)?;
        self.with_client(Duration::from_secs(5), move |client: Arc<Client>| async move {
            client
                .batch_execute(&format!(
                    "UPDATE uplink.nodes SET ended = clock_timestamp() WHERE id = {node} AND ended IS NULL;
                     DELETE FROM uplink.claims WHERE node = {node};
                     DELETE FROM uplink.releases WHERE node = {node};"
                ))
                .await
        })
    }

    fn rule_ids(&self) -> Result<Range<u64>, StoreError> {
        self.with_client(Duration::from_secs(5), move |client: Arc<Client>| async move {
            let first: i64 = client.query_one("SELECT nextval('uplink.rule_ids')", &[]).await?.get(0);
            let first = u64::try_from(first).unwrap_or(0);
            Ok(first..first + RULE_ID_BLOCK)
        })
    }

    fn rules_since(&self, version: u64) -> Result<RuleChanges, StoreError> {
        let (rows, version) = self.changed_since("rules", RULE_COLUMNS, version)?;
        let mut changes = RuleChanges { in_force: Vec::new(), removed: Vec::new(), version };
        for (row, removed) in &rows {
            let rule = kept::rule(row);
            if *removed { changes.removed.push(rule.id) } else { changes.in_force.push(rule) }
        }
        Ok(changes)
    }

    fn sessions_since(&self, version: u64) -> Result<SessionChanges, StoreError> {
        let (rows, version) = self.changed_since("console_sessions", SESSION_COLUMNS, version)?;
        let mut changes = SessionChanges { open: Vec::new(), closed: Vec::new(), version };
        for (row, removed) in &rows {
            let session = kept::session(row);
            if *removed { changes.closed.push(session.key) } else { changes.open.push(session) }
        }
        Ok(changes)
    }

    fn take_orphans(&self, node: u64) -> Result<Vec<Orphan>, StoreError> {
        let node = big(node)?;
        self.with_client(Duration::from_secs(10), move |client: Arc<Client>| async move {
            // Each row is taken by one node alone (locked, skipped by the others): from then on it waits at
            // the taker, whose commit of its end removes it; a taker that dies leaves it to the next.
            let rows = client
                .query(
                    "WITH o AS (SELECT p.perm, p.node FROM uplink.pending p
                                WHERE p.node <> 0 AND p.node <> $1 AND NOT uplink.live(p.node) AND uplink.live($1)
                                  AND NOT EXISTS (SELECT 1 FROM uplink.resumables r WHERE r.id = p.perm)
                                ORDER BY p.at_ms, p.perm LIMIT 10000 FOR UPDATE SKIP LOCKED),
                          t AS (UPDATE uplink.pending p SET node = $1 FROM o WHERE p.perm = o.perm
                                RETURNING p.perm, o.node, p.project, p.tool, p.at_ms)
                     SELECT * FROM t ORDER BY at_ms, perm",
                    &[&node],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Orphan {
                    perm: r.get(0),
                    node: unbits(r.get(1)),
                    project: r.get(2),
                    tool: r.get(3),
                    at_ms: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                })
                .collect())
        })
    }
}

//! The gateway's writer: [`PostgresStore`], a connection of its own held for as long as the gateway runs,
//! under the database's writer lock; its commits and its retention.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement, Transaction};

use super::cluster::PostgresCluster;
use super::credentials::PostgresCredentials;
use super::db::Db;
use super::kept;
use super::reader::PostgresReader;
use super::schema::{self, WRITER_LOCK, big, pair, unix_ms};
use crate::store::audit::{self, GENESIS, Head};
use crate::store::seam::{AuditReader, Change, ClusterStore, CredentialStore, Kept, Store, StoreError};

/// How long a start waits for the writer's lock that another gateway holds.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A place in the audit log: a seq and its record's hash.
type Pair = (u64, [u8; 32]);

/// Prune at most once in this many commits.
const PRUNE_EVERY: u64 = 512;

/// How the store reaches its database and keeps what it writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Prune audit records older than this.
    pub keep_for: Option<Duration>,
    /// Keep at most this many audit records (the newest).
    pub keep_records: Option<u64>,
    /// A PEM file of further certificate authorities for the server's certificate.
    pub ca_file: Option<PathBuf>,
}

/// The PostgreSQL store. See the [module docs](super).
#[derive(Debug)]
pub struct PostgresStore {
    db: Arc<Db>,
    /// `None` once a commit failed: the store is closed for writing (the gateway stops).
    writer: Option<Writer>,
    options: PostgresOptions,
    commits: u64,
}

/// The writer's connection, its statements and where it left the audit log's head.
struct Writer {
    client: Client,
    head: (u64, [u8; 32]),
    statements: Statements,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("head", &self.head.0).finish_non_exhaustive()
    }
}

/// The writer's statements, prepared once: a batch sends them all without waiting between them.
struct Statements {
    record: Statement,
    put_rule: Statement,
    delete_rule: Statement,
    put_session: Statement,
    delete_session: Statement,
    put_resumable: Statement,
    delete_resumable: Statement,
    reserve_ids: Statement,
    head: Statement,
    end_claim: Statement,
    fence: Statement,
    move_head: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            record: client
                .prepare(
                    "INSERT INTO uplink.audit (seq, at_ms, kind, project, tool, outcome, prev, hash, record)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .await?,
            put_rule: client
                .prepare(
                    "INSERT INTO uplink.rules (id, effect, pattern, projects, project, expires, author, created)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (id) DO UPDATE SET effect = excluded.effect, pattern = excluded.pattern,
                       projects = excluded.projects, project = excluded.project, expires = excluded.expires,
                       author = excluded.author, created = excluded.created",
                )
                .await?,
            delete_rule: client.prepare("DELETE FROM uplink.rules WHERE id = $1").await?,
            put_session: client
                .prepare(
                    "INSERT INTO uplink.console_sessions (key, principal, csrf, expires_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (key) DO UPDATE SET principal = excluded.principal, csrf = excluded.csrf,
                       expires_ms = excluded.expires_ms",
                )
                .await?,
            delete_session: client.prepare("DELETE FROM uplink.console_sessions WHERE key = $1").await?,
            put_resumable: client
                .prepare(
                    "INSERT INTO uplink.resumables (id, record) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                )
                .await?,
            delete_resumable: client.prepare("DELETE FROM uplink.resumables WHERE id = $1").await?,
            reserve_ids: client.prepare("UPDATE uplink.meta SET n = GREATEST(n, $1) WHERE key = 'ids_until'").await?,
            head: client
                .prepare("UPDATE uplink.meta SET n = $1, hash = $2 WHERE key = 'head' AND n = $3 AND hash = $4")
                .await?,
            end_claim: client.prepare("DELETE FROM uplink.claims WHERE project = $1 AND gen = $2").await?,
            fence: client.prepare("SELECT uplink.fence($1)").await?,
            move_head: client.prepare("SELECT uplink.move_head($1, $2, $3, $4)").await?,
        })
    }
}

/// One statement of a batch, with its values owned.
struct Op {
    statement: fn(&Statements) -> &Statement,
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Op {
    fn new(statement: fn(&Statements) -> &Statement, values: Vec<Box<dyn ToSql + Sync + Send>>) -> Op {
        Op { statement, values }
    }

    async fn run(&self, client: &impl GenericClient, statements: &Statements) -> Result<u64, tokio_postgres::Error> {
        let values: Vec<&(dyn ToSql + Sync)> = self.values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
        client.execute((self.statement)(statements), &values).await
    }
}

/// The statements `changes` take, chaining the records from `head`; and where the head is after them.
fn ops(changes: &[Change], mut head: Pair) -> Result<(Vec<Op>, Pair), StoreError> {
    let mut ops = Vec::with_capacity(changes.len());
    for change in changes {
        match change {
            Change::Record(entry) => {
                let sealed = audit::seal(head.0 + 1, head.1, entry);
                ops.push(Op::new(
                    |s| &s.record,
                    vec![
                        Box::new(big(sealed.seq)?),
                        Box::new(big(entry.at_ms)?),
                        Box::new(entry.kind),
                        Box::new(entry.project.clone()),
                        Box::new(entry.tool.clone()),
                        Box::new(entry.outcome.clone()),
                        Box::new(sealed.prev.to_vec()),
                        Box::new(sealed.hash.to_vec()),
                        Box::new(sealed.text),
                    ],
                ));
                head = (sealed.seq, sealed.hash);
            }
            // A connection's own rule ends with the connection: there is nothing to keep.
            Change::PutRule(rule) if rule.connection.is_some() => {}
            Change::PutRule(rule) => {
                let projects = rule.projects.as_ref().map(|p| serde_json::to_string(p).unwrap_or_default());
                ops.push(Op::new(
                    |s| &s.put_rule,
                    vec![
                        Box::new(big(rule.id)?),
                        Box::new(rule.effect.clone()),
                        Box::new(rule.pattern.clone()),
                        Box::new(projects),
                        Box::new(rule.project.clone()),
                        Box::new(rule.expires.map(big).transpose()?),
                        Box::new(rule.author.clone()),
                        Box::new(big(rule.created)?),
                    ],
                ));
            }
            Change::DeleteRule(id) => ops.push(Op::new(|s| &s.delete_rule, vec![Box::new(big(*id)?)])),
            Change::PutSession(s) => ops.push(Op::new(
                |s| &s.put_session,
                vec![
                    Box::new(s.key.to_vec()),
                    Box::new(s.principal.clone()),
                    Box::new(s.csrf.clone()),
                    Box::new(big(s.expires_ms)?),
                ],
            )),
            Change::DeleteSession(key) => ops.push(Op::new(|s| &s.delete_session, vec![Box::new(key.to_vec())])),
            Change::PutResumable(r) => {
                let record = serde_json::to_string(r).map_err(|e| StoreError::Database(e.to_string()))?;
                ops.push(Op::new(|s| &s.put_resumable, vec![Box::new(r.id.clone()), Box::new(record)]));
            }
            Change::DeleteResumable(id) => ops.push(Op::new(|s| &s.delete_resumable, vec![Box::new(id.clone())])),
            Change::ReserveIds(until) => ops.push(Op::new(|s| &s.reserve_ids, vec![Box::new(big(*until)?)])),
            Change::EndClaim { project, generation } => {
                ops.push(Op::new(|s| &s.end_claim, vec![Box::new(project.clone()), Box::new(big(*generation)?)]))
            }
        }
    }
    Ok((ops, head))
}

impl PostgresStore {
    /// Opens the store on the database at `url`, making or migrating its schema, and takes the writer's
    /// lock. Fails when the database cannot be reached, its schema is newer than this build's, or another
    /// gateway writes to it.
    pub fn open(url: &str, options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let db = Db::new(url, options.ca_file.as_deref())?;
        let d = db.clone();
        let writer = db.run(async move {
            let mut client = d.clone().dedicated().await?;
            schema::migrate(&d, &mut client).await?;
            // A gateway that just stopped may still be leaving (the server ends its session a moment after
            // its connection closed): its lock is waited for, briefly.
            let waited = tokio::time::Instant::now();
            loop {
                let locked: bool = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK])
                    .await
                    .map_err(|e| d.said(&e))?
                    .get(0);
                if locked {
                    break;
                }
                if waited.elapsed() > LOCK_WAIT {
                    return Err(StoreError::InUse(d.place().to_owned()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let head = pair(&client, "head").await.map_err(|e| d.said(&e))?.unwrap_or((0, GENESIS));
            let statements = Statements::prepare(&client).await.map_err(|e| d.said(&e))?;
            Ok(Writer { client, head, statements })
        })?;
        Ok(PostgresStore { db, writer: Some(writer), options, commits: 0 })
    }

    /// The credentials of the database at `url`, made or migrated as [`PostgresStore::open`] does, beside
    /// a gateway that writes to it or none.
    pub fn credentials_at(url: &str, ca_file: Option<PathBuf>) -> Result<PostgresCredentials, StoreError> {
        Ok(PostgresCredentials::of(migrated(url, ca_file)?))
    }

    /// The cluster's part of the database at `url` (nodes, leases, claims), made or migrated as
    /// [`PostgresStore::open`] does, for a node that joins beside a writer of its own or none. A node that
    /// joins through this handle fences the commits of no writer: a gateway joins through its own store's
    /// ([`Store::cluster`]).
    pub fn cluster_at(url: &str, ca_file: Option<PathBuf>) -> Result<PostgresCluster, StoreError> {
        Ok(PostgresCluster::of(migrated(url, ca_file)?))
    }

    /// Where the database is (never with a password).
    pub fn place(&self) -> &str {
        self.db.place()
    }

    /// Prunes by the retention settings now (it also happens every few hundred commits).
    pub fn prune_now(&mut self) -> Result<(), StoreError> {
        self.commit_with(&[], true).map(|_| ())
    }

    fn commit_with(&mut self, changes: &[Change], prune: bool) -> Result<Head, StoreError> {
        let closed =
            || StoreError::Database(format!("{}: an earlier commit failed; the store is closed", self.db.place()));
        let (ops, head) = ops(changes, self.writer.as_ref().ok_or_else(closed)?.head)?;
        let mut writer = self.writer.take().ok_or_else(closed)?;
        let prune = prune.then(|| self.options.clone());
        let d = self.db.clone();
        let writer = self.db.run(async move {
            write(&d, &mut writer, ops, head, prune).await?;
            writer.head = head;
            Ok(writer)
        })?;
        let head = writer.head;
        self.writer = Some(writer);
        Ok(Head { seq: head.0, hash: head.1 })
    }
}

/// The database at `url`, its schema made or migrated to this build's.
fn migrated(url: &str, ca_file: Option<PathBuf>) -> Result<Arc<Db>, StoreError> {
    let db = Db::new(url, ca_file.as_deref())?;
    let d = db.clone();
    db.run(async move {
        let mut client = d.clone().dedicated().await?;
        schema::migrate(&d, &mut client).await
    })?;
    Ok(db)
}

/// Writes a batch in one transaction: its statements sent together, then the head moved from where this
/// writer left it (no other writer can have moved it: if one had, nothing is written), then retention.
async fn write(
    db: &Db,
    writer: &mut Writer,
    ops: Vec<Op>,
    head: (u64, [u8; 32]),
    prune: Option<PostgresOptions>,
) -> Result<(), StoreError> {
    let Some(prune) = prune else { return write_at_once(db, writer, ops, head).await };
    let prune = Some(prune);
    let was = writer.head;
    let tx = writer.client.transaction().await.map_err(|e| db.said(&e))?;
    let statements = &writer.statements;
    // A cluster node's lease is checked first, in the transaction: once it has lapsed at the database,
    // nothing of this commit is written (the statements after it fail with it).
    let node = db.node.load(std::sync::atomic::Ordering::Acquire);
    let fence = async {
        if node != 0 {
            tx.execute(&statements.fence, &[&node]).await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    let (fenced, written) =
        futures_util::future::join(fence, try_join_all(ops.iter().map(|op| op.run(&tx, statements)))).await;
    fenced.map_err(|e| db.said(&e))?;
    written.map_err(|e| db.said(&e))?;
    if head != was {
        let moved = tx
            .execute(&statements.head, &[&big(head.0)?, &head.1.to_vec(), &big(was.0)?, &was.1.to_vec()])
            .await
            .map_err(|e| db.said(&e))?;
        if moved != 1 {
            return Err(StoreError::Database(format!(
                "{}: the audit log's head is not where this gateway left it (seq {}); another writer? nothing was written",
                db.place(),
                was.0
            )));
        }
    }
    if let Some(options) = prune {
        prune_log(&tx, &options, head.0).await.map_err(|e| db.said(&e))?;
    }
    tx.commit().await.map_err(|e| db.said(&e))
}

/// Writes a batch in one transaction and one round trip: `BEGIN`, the lease's check (a cluster node), the
/// batch's statements, the head's move from where this writer left it, and `COMMIT`, sent together. Each
/// fails the transaction when it fails (the lease lapsed, the head moved, anything the database refuses),
/// and the `COMMIT` of a failed transaction rolls it back: all or nothing, as with one statement at a time.
async fn write_at_once(db: &Db, writer: &mut Writer, ops: Vec<Op>, head: Pair) -> Result<(), StoreError> {
    let (client, statements, was) = (&writer.client, &writer.statements, writer.head);
    let node = db.node.load(std::sync::atomic::Ordering::Acquire);
    let fence = async {
        if node != 0 {
            client.execute(&statements.fence, &[&node]).await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    let moved = (big(head.0)?, head.1.to_vec(), big(was.0)?, was.1.to_vec());
    let move_head = async {
        if head != was {
            client.execute(&statements.move_head, &[&moved.0, &moved.1, &moved.2, &moved.3]).await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    // Polled in this order, each sends its message at its first poll: the database gets them in this order.
    let (began, fenced, written, head_moved, committed) = futures_util::future::join5(
        client.batch_execute("BEGIN"),
        fence,
        futures_util::future::join_all(ops.iter().map(|op| op.run(client, statements))),
        move_head,
        client.batch_execute("COMMIT"),
    )
    .await;
    began.map_err(|e| db.said(&e))?;
    fenced.map_err(|e| db.said(&e))?;
    for result in written {
        result.map_err(|e| db.said(&e))?;
    }
    head_moved.map_err(|e| match e.as_db_error() {
        Some(d) if d.code().code() == super::db::HEAD_MOVED => StoreError::Database(format!(
            "{}: the audit log's head is not where this gateway left it (seq {}); another writer? nothing was written",
            db.place(),
            was.0
        )),
        _ => db.said(&e),
    })?;
    committed.map_err(|e| db.said(&e))
}

/// Deletes the records retention lets go, and moves the anchor to the last one deleted.
async fn prune_log(tx: &Transaction<'_>, options: &PostgresOptions, head: u64) -> Result<(), tokio_postgres::Error> {
    let mut cut = 0u64;
    if let Some(keep) = options.keep_records {
        cut = cut.max(head.saturating_sub(keep));
    }
    if let Some(age) = options.keep_for {
        let oldest = i64::try_from(
            unix_ms(SystemTime::now()).saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        )
        .unwrap_or(i64::MAX);
        let old: Option<i64> =
            tx.query_one("SELECT MAX(seq) FROM uplink.audit WHERE at_ms < $1", &[&oldest]).await?.get(0);
        cut = cut.max(old.map_or(0, |s| u64::try_from(s).unwrap_or(0)));
    }
    let Ok(cut) = i64::try_from(cut) else { return Ok(()) };
    if cut == 0 {
        return Ok(());
    }
    let Some(last) = tx.query_opt("SELECT hash FROM uplink.audit WHERE seq = $1", &[&cut]).await? else {
        return Ok(());
    };
    let hash: Vec<u8> = last.get(0);
    tx.execute("DELETE FROM uplink.audit WHERE seq <= $1", &[&cut]).await?;
    tx.execute(
        "INSERT INTO uplink.meta (key, n, hash) VALUES ('anchor', $1, $2)
         ON CONFLICT (key) DO UPDATE SET n = excluded.n, hash = excluded.hash",
        &[&cut, &hash],
    )
    .await?;
    Ok(())
}

impl Drop for PostgresStore {
    /// Gives the writer's lock back and waits until the database has it (a gateway started right after
    /// finds it free), for at most two seconds.
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else { return };
        let _ = self.db.run_within(LOCK_WAIT, async move {
            let _ = writer.client.execute("SELECT pg_advisory_unlock($1)", &[&WRITER_LOCK]).await;
            Ok(())
        });
    }
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Kept, StoreError> {
        let d = self.db.clone();
        self.db.run(async move { kept::load(&d).await })
    }

    fn commit(&mut self, changes: &[Change]) -> Result<Head, StoreError> {
        self.commits += 1;
        let prune = self.commits.is_multiple_of(PRUNE_EVERY)
            && (self.options.keep_for.is_some() || self.options.keep_records.is_some());
        self.commit_with(changes, prune)
    }

    fn reader(&self) -> Arc<dyn AuditReader> {
        Arc::new(PostgresReader::of(self.db.clone()))
    }

    fn credentials(&self) -> Option<Arc<dyn CredentialStore>> {
        Some(Arc::new(PostgresCredentials::of(self.db.clone())))
    }

    fn cluster(&self) -> Option<Arc<dyn ClusterStore>> {
        Some(Arc::new(PostgresCluster::of(self.db.clone())))
    }
}

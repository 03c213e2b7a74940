//! The gateway's writer: [`PostgresStore`], a connection of its own held for as long as the gateway runs,
//! appending to its own chain of the audit log (`chains`); its commits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement};

use super::chains::{self, Cited, Held};
use super::cluster::PostgresCluster;
use super::credentials::PostgresCredentials;
use super::db::Db;
use super::kept;
use super::reader::PostgresReader;
use super::schema::{self, big};
use crate::store::audit::Entry;
use crate::store::audit::{self, Head};
use crate::store::seam::{AuditReader, Change, ClusterStore, CredentialStore, Kept, Store, StoreError};

/// How long a store that closes waits for the database to have its chain back.
const GIVE_BACK_WAIT: Duration = Duration::from_secs(2);

/// A place in the audit log: a seq and its record's hash.
type Pair = (u64, [u8; 32]);

/// Prune at most once in this many commits.
const PRUNE_EVERY: u64 = 512;

/// How the store reaches its database and keeps what it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Prune audit records older than this.
    pub keep_for: Option<Duration>,
    /// Keep at most this many audit records (the newest).
    pub keep_records: Option<u64>,
    /// A PEM file of further certificate authorities for the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// How often at most this writer's chain cites the other chains' heads that moved (at its first
    /// commit, then at a commit this long after the last citation). Default: a minute.
    pub cite_every: Duration,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions { keep_for: None, keep_records: None, ca_file: None, cite_every: Duration::from_secs(60) }
    }
}

/// The PostgreSQL store. See the [module docs](super).
#[derive(Debug)]
pub struct PostgresStore {
    db: Arc<Db>,
    /// `None` once a commit failed: the store is closed for writing (the gateway stops).
    writer: Option<Writer>,
    options: PostgresOptions,
    commits: u64,
    /// When the chain last cited the others (`None`: not since the store opened), and what it cited.
    cited_at: Option<std::time::Instant>,
    cited: Cited,
}

/// The writer's connection, its statements and the chain it holds.
struct Writer {
    client: Client,
    held: Held,
    statements: Statements,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("chain", &self.held.chain)
            .field("head", &self.held.head.0)
            .finish_non_exhaustive()
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
    end_claim: Statement,
    put_pending: Statement,
    end_pending: Statement,
    move_resumables: Statement,
    fence: Statement,
    move_chain: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            record: client
                .prepare(
                    "INSERT INTO uplink.audit (chain, seq, at_ms, kind, project, tool, outcome, prev, hash, record)
                     VALUES ($10, $1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .await?,
            put_rule: client
                .prepare(
                    "INSERT INTO uplink.rules (id, effect, pattern, projects, project, expires, author, created, version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, uplink.rules_changed())
                     ON CONFLICT (id) DO UPDATE SET effect = excluded.effect, pattern = excluded.pattern,
                       projects = excluded.projects, project = excluded.project, expires = excluded.expires,
                       author = excluded.author, created = excluded.created, version = excluded.version,
                       removed_at = NULL",
                )
                .await?,
            // Kept a day as a tombstone, so that every node reads that it was removed.
            delete_rule: client
                .prepare(
                    "UPDATE uplink.rules SET removed_at = clock_timestamp(), version = uplink.rules_changed()
                     WHERE id = $1 AND removed_at IS NULL",
                )
                .await?,
            put_session: client
                .prepare(
                    "INSERT INTO uplink.console_sessions (key, principal, csrf, expires_ms, role, email, version)
                     VALUES ($1, $2, $3, $4, $5, $6, uplink.sessions_changed())
                     ON CONFLICT (key) DO UPDATE SET principal = excluded.principal, csrf = excluded.csrf,
                       expires_ms = excluded.expires_ms, role = excluded.role, email = excluded.email,
                       version = excluded.version, removed_at = NULL",
                )
                .await?,
            // Kept a day as a tombstone, so that every node reads the sign-out.
            delete_session: client
                .prepare(
                    "UPDATE uplink.console_sessions SET removed_at = clock_timestamp(),
                       version = uplink.sessions_changed() WHERE key = $1 AND removed_at IS NULL",
                )
                .await?,
            put_resumable: client
                .prepare(
                    "INSERT INTO uplink.resumables (id, record, node) VALUES ($1, $2, $3)
                     ON CONFLICT (id) DO UPDATE SET record = excluded.record, node = excluded.node",
                )
                .await?,
            delete_resumable: client.prepare("DELETE FROM uplink.resumables WHERE id = $1").await?,
            reserve_ids: client.prepare("UPDATE uplink.meta SET n = GREATEST(n, $1) WHERE key = 'ids_until'").await?,
            end_claim: client.prepare("DELETE FROM uplink.claims WHERE project = $1 AND gen = $2").await?,
            put_pending: client
                .prepare(
                    "INSERT INTO uplink.pending (perm, node, project, tool, at_ms) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (perm) DO NOTHING",
                )
                .await?,
            end_pending: client.prepare("DELETE FROM uplink.pending WHERE perm = $1").await?,
            move_resumables: client
                .prepare(
                    "WITH moved AS (UPDATE uplink.resumables SET node = $2 WHERE id = ANY($1::text[]))
                     UPDATE uplink.pending SET node = $2 WHERE perm = ANY($1::text[])",
                )
                .await?,
            fence: client.prepare("SELECT uplink.fence($1)").await?,
            move_chain: client.prepare("SELECT uplink.move_chain($1, $2, $3, $4, $5, $6)").await?,
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

/// The statements `changes` take, chaining the records from `head` in `chain`; and where the head is after
/// them. A `request` record's request is written down as waiting at `node` (0: none joined), and goes with
/// its `end`.
fn ops(changes: &[Change], chain: i64, node: i64, mut head: Pair) -> Result<(Vec<Op>, Pair), StoreError> {
    let mut ops = Vec::with_capacity(changes.len());
    for change in changes {
        match change {
            Change::Record(entry) => {
                match (entry.kind, &entry.perm) {
                    ("request", Some(perm)) => ops.push(Op::new(
                        |s| &s.put_pending,
                        vec![
                            Box::new(perm.clone()),
                            Box::new(node),
                            Box::new(entry.project.clone()),
                            Box::new(entry.tool.clone()),
                            Box::new(big(entry.at_ms)?),
                        ],
                    )),
                    ("end", Some(perm)) => ops.push(Op::new(|s| &s.end_pending, vec![Box::new(perm.clone())])),
                    _ => {}
                }
                let sealed = audit::seal_in(u64::try_from(chain).unwrap_or(0), head.0 + 1, head.1, entry);
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
                        Box::new(chain),
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
                    Box::new(s.role.clone()),
                    Box::new(s.email.clone()),
                ],
            )),
            Change::DeleteSession(key) => ops.push(Op::new(|s| &s.delete_session, vec![Box::new(key.to_vec())])),
            Change::PutResumable(r) => {
                let record = serde_json::to_string(r).map_err(|e| StoreError::Database(e.to_string()))?;
                ops.push(Op::new(|s| &s.put_resumable, vec![Box::new(r.id.clone()), Box::new(record), Box::new(node)]));
            }
            Change::DeleteResumable(id) => ops.push(Op::new(|s| &s.delete_resumable, vec![Box::new(id.clone())])),
            Change::ReserveIds(until) => ops.push(Op::new(|s| &s.reserve_ids, vec![Box::new(big(*until)?)])),
            Change::EndClaim { project, generation } => {
                ops.push(Op::new(|s| &s.end_claim, vec![Box::new(project.clone()), Box::new(big(*generation)?)]))
            }
            Change::MoveResumables { ids, to } => {
                ops.push(Op::new(|s| &s.move_resumables, vec![Box::new(ids.clone()), Box::new(big(*to)?)]))
            }
        }
    }
    Ok((ops, head))
}

impl PostgresStore {
    /// Opens the store on the database at `url`, making or migrating its schema, and takes up a chain of the
    /// audit log (or starts one). Fails when the database cannot be reached or its schema is newer than this
    /// build's. Several stores may write to one database at once (each to its own chain); which gateway
    /// serves is settled by the cluster's leases ([`ClusterStore::join_alone`]).
    pub fn open(url: &str, options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let db = Db::new(url, options.ca_file.as_deref())?;
        let d = db.clone();
        let writer = db.run(async move {
            let mut client = d.clone().dedicated().await?;
            schema::migrate(&d, &mut client).await?;
            let held = chains::take_up(&client).await.map_err(|e| d.said(&e))?;
            let statements = Statements::prepare(&client).await.map_err(|e| d.said(&e))?;
            Ok(Writer { client, held, statements })
        })?;
        Ok(PostgresStore { db, writer: Some(writer), options, commits: 0, cited_at: None, cited: Cited::new() })
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

    /// The chain of the audit log this store appends to.
    pub fn chain(&self) -> Option<u64> {
        self.writer.as_ref().map(|w| u64::try_from(w.held.chain).unwrap_or(0))
    }

    /// Prunes by the retention settings now (it also happens every few hundred commits).
    pub fn prune_now(&mut self) -> Result<(), StoreError> {
        let (keep_for, keep_records) = (self.options.keep_for, self.options.keep_records);
        let d = self.db.clone();
        self.with_writer(move |mut writer| async move {
            let pruned = chains::prune(&mut writer.client, keep_for, keep_records).await.map_err(|e| d.said(&e));
            (writer, pruned)
        })
    }

    /// Runs `work` on the writer's connection; a store whose writer is gone (an earlier commit failed) fails.
    fn with_writer<T, F, Fut>(&mut self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Writer) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Writer, Result<T, StoreError>)> + Send + 'static,
    {
        let writer = self.writer.take().ok_or_else(|| {
            StoreError::Database(format!("{}: an earlier commit failed; the store is closed", self.db.place()))
        })?;
        let (writer, done) = self.db.run(async move { Ok(work(writer).await) })?;
        self.writer = Some(writer);
        done
    }

    /// A `cite` record of the other chains' heads, when one is due and any moved since the last.
    fn citation(&mut self) -> Result<Option<Entry>, StoreError> {
        if self.cited_at.is_some_and(|at| at.elapsed() < self.options.cite_every) {
            return Ok(None);
        }
        let (d, own, mut cited) =
            (self.db.clone(), self.writer.as_ref().map_or(-1, |w| w.held.chain), self.cited.clone());
        let (entry, cited) = self.db.run(async move {
            let client = d.clone().pooled().await?;
            let entry = chains::citation(&**client, own, &mut cited).await.map_err(|e| d.said(&e))?;
            Ok((entry, cited))
        })?;
        (self.cited_at, self.cited) = (Some(std::time::Instant::now()), cited);
        Ok(entry)
    }

    fn commit_with(&mut self, changes: &[Change]) -> Result<Head, StoreError> {
        let place = self.db.place().to_owned();
        let closed = || StoreError::Database(format!("{place}: an earlier commit failed; the store is closed"));
        let (chain, was) = self.writer.as_ref().map(|w| (w.held.chain, w.held.head)).ok_or_else(closed)?;
        let cited;
        let changes = match self.citation()? {
            Some(entry) => {
                cited = [&[Change::Record(entry)][..], changes].concat();
                &cited[..]
            }
            None => changes,
        };
        let node = self.db.node.load(std::sync::atomic::Ordering::Acquire);
        let (ops, head) = ops(changes, chain, node, was)?;
        let mut writer = self.writer.take().ok_or_else(closed)?;
        let d = self.db.clone();
        let writer = self.db.run(async move {
            write_at_once(&d, &mut writer, ops, head).await?;
            writer.held.head = head;
            Ok(writer)
        })?;
        let head = writer.held.head;
        self.writer = Some(writer);
        Ok(Head { chain: u64::try_from(chain).unwrap_or(0), seq: head.0, hash: head.1 })
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

/// Writes a batch in one transaction and one round trip: `BEGIN`, the lease's check (a cluster node), the
/// batch's statements, the chain's head moved from where this writer left it (under its token), and
/// `COMMIT`, sent together. Each fails the transaction when it fails (the lease lapsed, the head moved or
/// the chain was taken up by another writer, anything the database refuses), and the `COMMIT` of a failed
/// transaction rolls it back: all or nothing, as with one statement at a time.
async fn write_at_once(db: &Db, writer: &mut Writer, ops: Vec<Op>, head: Pair) -> Result<(), StoreError> {
    let (client, statements, was) = (&writer.client, &writer.statements, writer.held.head);
    let node = db.node.load(std::sync::atomic::Ordering::Acquire);
    let fence = async {
        if node != 0 {
            client.execute(&statements.fence, &[&node]).await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    let moved = (writer.held.chain, writer.held.token, big(head.0)?, head.1.to_vec(), big(was.0)?, was.1.to_vec());
    let move_chain = async {
        if head != was {
            client
                .execute(&statements.move_chain, &[&moved.0, &moved.1, &moved.2, &moved.3, &moved.4, &moved.5])
                .await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    // Polled in this order, each sends its message at its first poll: the database gets them in this order.
    let (began, fenced, written, head_moved, committed) = futures_util::future::join5(
        client.batch_execute("BEGIN"),
        fence,
        futures_util::future::join_all(ops.iter().map(|op| op.run(client, statements))),
        move_chain,
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
            "{}: the audit log's chain {} is not where this gateway left it (seq {}), or another writer took it up; nothing was written",
            db.place(),
            writer.held.chain,
            was.0
        )),
        _ => db.said(&e),
    })?;
    committed.map_err(|e| db.said(&e))
}

impl Drop for PostgresStore {
    /// Gives the chain back and waits until the database has it (a gateway started right after takes it up),
    /// for at most two seconds.
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else { return };
        let _ = self.db.run_within(GIVE_BACK_WAIT, async move {
            let _ = chains::give_back(&writer.client, &writer.held).await;
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
        let head = self.commit_with(changes)?;
        if prune && let Err(e) = self.prune_now() {
            // What retention would let go stays until the next turn; nothing of the commit is lost.
            tracing::warn!(store = %self.db.place(), error = %e, "pruning the audit log failed; tried again later");
        }
        Ok(head)
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

//! The gateway's writer: [`SqliteStore`], one connection held for as long as the gateway runs, under the
//! directory's lock; its commits, its checkpointer and its retention.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::credentials::SqliteCredentials;
use super::reader::SqliteReader;
use super::schema::{
    BUSY_WAIT, DB_FILE, MIGRATIONS, check, classify, ensure_input_key, hash_of, input_key, meta_pair, put_meta_pair,
    text,
};
use crate::store::audit::{self, GENESIS, Head};
use crate::store::seam::{
    AuditReader, Change, CredentialStore, Kept, Store, StoreError, StoredResumable, StoredRule, StoredSession,
};

/// How often the checkpointer runs.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Prune at most once in this many commits.
const PRUNE_EVERY: u64 = 512;

/// How the store keeps what it writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Wait for the disk on every commit (`synchronous=FULL`): survives a power cut, costs a flush per
    /// batch. Default off (`NORMAL`): survives the process being killed.
    pub full_sync: bool,
    /// Prune audit records older than this.
    pub keep_for: Option<Duration>,
    /// Keep at most this many audit records (the newest).
    pub keep_records: Option<u64>,
}

/// The embedded store. See the [module docs](super).
#[derive(Debug)]
pub struct SqliteStore {
    pub(super) conn: Connection,
    path: PathBuf,
    options: StoreOptions,
    head: (u64, [u8; 32]),
    commits: u64,
    /// Dropped with the store: the checkpointer then runs a last time and ends.
    _checkpointer: std::sync::mpsc::Sender<()>,
    /// Held while the store is open: one gateway per directory.
    _lock: File,
}

/// Checkpoints the WAL of `path` from a connection of its own, every [`CHECKPOINT_EVERY`], until `stop`'s
/// sender is dropped.
fn checkpointer(path: PathBuf, stop: std::sync::mpsc::Receiver<()>) {
    let Ok(conn) = Connection::open(&path) else { return };
    let _ = conn.busy_timeout(BUSY_WAIT);
    loop {
        let ended = matches!(stop.recv_timeout(CHECKPOINT_EVERY), Err(std::sync::mpsc::RecvTimeoutError::Disconnected));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "the store's checkpoint failed; the WAL grows until one succeeds");
        }
        if ended {
            return;
        }
    }
}

/// How long an open waits for the lock of the state directory that another gateway holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SqliteStore {
    /// The credentials of the store in `dir`: when no gateway holds it, it is made (or migrated) as
    /// [`SqliteStore::open`] does; when one does, they are used beside it (that gateway has migrated it).
    pub fn credentials_in(dir: &Path) -> Result<SqliteCredentials, StoreError> {
        // Not waiting for the lock: a running gateway holds it for as long as it runs.
        match SqliteStore::open_waiting(dir, StoreOptions::default(), std::time::Duration::ZERO) {
            Ok(store) => drop(store),
            Err(StoreError::InUse(_)) => {}
            Err(e) => return Err(e),
        }
        SqliteCredentials::beside(dir)
    }

    /// Opens (or creates) the store in `dir`, migrating an older schema.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_waiting(dir, options, LOCK_WAIT)
    }

    /// [`SqliteStore::open`], waiting at most `wait` for the directory's lock.
    fn open_waiting(dir: &Path, options: StoreOptions, wait: std::time::Duration) -> Result<SqliteStore, StoreError> {
        if crate::owner_only::dir(dir)? {
            tracing::warn!(dir = %text(dir), "the state directory is open to others (its files are owner-only): chmod 700 it");
        }
        let lock_path = dir.join(format!("{DB_FILE}.lock"));
        crate::owner_only::file(&lock_path)?;
        let lock = File::options().create(true).truncate(false).write(true).open(&lock_path)?;
        // A gateway that just stopped may still be leaving (or a process forked at that moment holds a copy
        // of its lock until it execs): its lock is waited for, briefly, as on PostgreSQL.
        let waited = std::time::Instant::now();
        while lock.try_lock().is_err() {
            if waited.elapsed() >= wait {
                return Err(StoreError::InUse(text(dir)));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let path = dir.join(DB_FILE);
        // The database holds tool inputs and the credentials' hashes: owner-only, and so are its log and
        // shared-memory files, which SQLite makes with the database's permissions (narrowed here too when an
        // older uplink made them wider).
        crate::owner_only::file(&path)?;
        for suffix in ["-wal", "-shm"] {
            crate::owner_only::narrow_if_there(&dir.join(format!("{DB_FILE}{suffix}")))?;
        }
        let mut conn = Connection::open(&path).map_err(|e| classify(&path, e))?;
        conn.busy_timeout(BUSY_WAIT).map_err(|e| classify(&path, e))?;
        let version = check(&conn, &path)?;
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| classify(&path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!("{}: WAL journal refused ({mode})", text(&path))));
        }
        let sync = if options.full_sync { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", sync).map_err(|e| classify(&path, e))?;
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(|e| classify(&path, e))?;
        for (from, step) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(usize::MAX)) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| classify(&path, e))?;
            tx.execute_batch(step).map_err(|e| classify(&path, e))?;
            tx.pragma_update(None, "user_version", from + 1).map_err(|e| classify(&path, e))?;
            tx.commit().map_err(|e| classify(&path, e))?;
        }
        // The writer's lock, taken once now: a database another program holds is refused at start, not at
        // the first decision; the store's secret is drawn under it, the first time.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| classify(&path, e))?;
        ensure_input_key(&tx)?;
        tx.commit().map_err(|e| classify(&path, e))?;
        let head = meta_pair(&conn, "head").map_err(|e| classify(&path, e))?.unwrap_or((0, GENESIS));
        let (stop, stopped) = std::sync::mpsc::channel();
        let checkpoint_path = path.clone();
        std::thread::Builder::new()
            .name("uplink-checkpoint".into())
            .spawn(move || checkpointer(checkpoint_path, stopped))?;
        Ok(SqliteStore { conn, path, options, head, commits: 0, _checkpointer: stop, _lock: lock })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, changes: &[Change]) -> rusqlite::Result<(u64, [u8; 32])> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut head = self.head;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (seq, at_ms, kind, project, tool, outcome, prev, hash, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for change in changes {
                match change {
                    Change::Record(entry) => {
                        let sealed = audit::seal(head.0 + 1, head.1, entry);
                        insert.execute(params![
                            sealed.seq,
                            entry.at_ms,
                            entry.kind,
                            entry.project,
                            entry.tool,
                            entry.outcome,
                            &sealed.prev[..],
                            &sealed.hash[..],
                            sealed.text,
                        ])?;
                        head = (sealed.seq, sealed.hash);
                    }
                    // A connection's own rule ends with the connection: there is nothing to keep.
                    Change::PutRule(rule) if rule.connection.is_some() => {}
                    Change::PutRule(rule) => {
                        let projects = rule.projects.as_ref().map(|p| serde_json::to_string(p).unwrap_or_default());
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO rules (id, effect, pattern, projects, project, expires, author, created)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )?
                        .execute(params![
                            rule.id,
                            rule.effect,
                            rule.pattern,
                            projects,
                            rule.project,
                            rule.expires,
                            rule.author,
                            rule.created
                        ])?;
                    }
                    Change::DeleteRule(id) => {
                        tx.prepare_cached("DELETE FROM rules WHERE id = ?1")?.execute([id])?;
                    }
                    Change::PutSession(s) => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO console_sessions (key, principal, csrf, expires_ms, role, email)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![
                            &s.key[..],
                            s.principal,
                            s.csrf,
                            s.expires_ms,
                            s.role,
                            s.email
                        ])?;
                    }
                    Change::DeleteSession(key) => {
                        tx.prepare_cached("DELETE FROM console_sessions WHERE key = ?1")?.execute([&key[..]])?;
                    }
                    Change::PutResumable(r) => {
                        let record =
                            serde_json::to_string(r).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
                        tx.prepare_cached("INSERT OR REPLACE INTO resumables (id, record) VALUES (?1, ?2)")?
                            .execute(params![r.id, record])?;
                    }
                    Change::DeleteResumable(id) => {
                        tx.prepare_cached("DELETE FROM resumables WHERE id = ?1")?.execute([id])?;
                    }
                    Change::ReserveIds(until) => {
                        let kept = meta_pair(&tx, "ids_until")?.map_or(0, |(n, _)| n);
                        put_meta_pair(&tx, "ids_until", ((*until).max(kept), [0; 32]))?;
                    }
                    // One gateway on its own file: no cluster's table.
                    Change::EndClaim { .. } | Change::MoveResumables { .. } => {}
                }
            }
        }
        if head != self.head {
            put_meta_pair(&tx, "head", head)?;
        }
        self.commits += 1;
        if self.commits.is_multiple_of(PRUNE_EVERY) {
            prune(&tx, &self.options, head.0)?;
        }
        tx.commit()?;
        Ok(head)
    }

    /// Prunes by the retention settings now (it also happens every few hundred commits).
    pub fn prune_now(&mut self) -> Result<(), StoreError> {
        let tx =
            self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| classify(&self.path, e))?;
        prune(&tx, &self.options, self.head.0).map_err(|e| classify(&self.path, e))?;
        tx.commit().map_err(|e| classify(&self.path, e))
    }
}

/// Deletes the records retention lets go, and moves the anchor to the last one deleted.
fn prune(conn: &Connection, options: &StoreOptions, head: u64) -> rusqlite::Result<()> {
    let mut cut = 0u64;
    if let Some(keep) = options.keep_records {
        cut = cut.max(head.saturating_sub(keep));
    }
    if let Some(age) = options.keep_for {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let oldest = u64::try_from(now.saturating_sub(age).as_millis()).unwrap_or(u64::MAX);
        let old: Option<u64> = conn.query_row("SELECT MAX(seq) FROM audit WHERE at_ms < ?1", [oldest], |r| r.get(0))?;
        cut = cut.max(old.unwrap_or(0));
    }
    if cut == 0 {
        return Ok(());
    }
    let last: Option<Vec<u8>> =
        conn.query_row("SELECT hash FROM audit WHERE seq = ?1", [cut], |r| r.get(0)).optional()?;
    if let Some(hash) = last {
        conn.execute("DELETE FROM audit WHERE seq <= ?1", [cut])?;
        put_meta_pair(conn, "anchor", (cut, hash_of(hash)))?;
    }
    Ok(())
}

impl Store for SqliteStore {
    /// Only with `synchronous=FULL`: in WAL mode with `NORMAL`, a commit writes the log's pages to the
    /// operating system and flushes nothing (checkpoints, which do, run on a thread of their own).
    fn waits_for_disk(&self) -> bool {
        self.options.full_sync
    }

    fn load(&mut self) -> Result<Kept, StoreError> {
        let path = self.path.clone();
        let rules = read_rules(&self.conn).map_err(|e| classify(&path, e))?;
        let now_ms = unix_ms(SystemTime::now());
        // Sign-ins that ended while the gateway was down are forgotten now.
        self.conn
            .execute("DELETE FROM console_sessions WHERE expires_ms <= ?1", [now_ms])
            .map_err(|e| classify(&path, e))?;
        let sessions = read_sessions(&self.conn).map_err(|e| classify(&path, e))?;
        let input_key = input_key(&self.conn)
            .map_err(|e| classify(&path, e))?
            .ok_or_else(|| StoreError::Database(format!("{}: the store's secret is missing", text(&path))))?;
        let resumables = read_resumables(&self.conn).map_err(|e| classify(&path, e))?;
        let ids_until = meta_pair(&self.conn, "ids_until").map_err(|e| classify(&path, e))?.map_or(0, |(n, _)| n);
        Ok(Kept { rules, sessions, input_key, resumables, ids_until })
    }

    fn commit(&mut self, changes: &[Change]) -> Result<Head, StoreError> {
        match self.write(changes) {
            Ok(head) => {
                self.head = head;
                Ok(Head { chain: 0, seq: head.0, hash: head.1 })
            }
            Err(e) => Err(classify(&self.path, e)),
        }
    }

    fn reader(&self) -> Arc<dyn AuditReader> {
        Arc::new(SqliteReader::of(self.path.clone()))
    }

    fn credentials(&self) -> Option<Arc<dyn CredentialStore>> {
        let dir = self.path.parent()?;
        Some(Arc::new(SqliteCredentials::beside(dir).ok()?))
    }
}

/// The requests that may come back. One whose record does not read is an error, never skipped.
fn read_resumables(conn: &Connection) -> rusqlite::Result<Vec<StoredResumable>> {
    let mut stmt = conn.prepare("SELECT record FROM resumables ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        let record: String = r.get(0)?;
        serde_json::from_str(&record)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
    })?;
    rows.collect()
}

fn read_rules(conn: &Connection) -> rusqlite::Result<Vec<StoredRule>> {
    let mut stmt =
        conn.prepare("SELECT id, effect, pattern, projects, project, expires, author, created FROM rules ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        let projects: Option<String> = r.get(3)?;
        Ok(StoredRule {
            id: r.get(0)?,
            effect: r.get(1)?,
            pattern: r.get(2)?,
            projects: projects.and_then(|p| serde_json::from_str(&p).ok()),
            project: r.get(4)?,
            connection: None,
            expires: r.get(5)?,
            author: r.get(6)?,
            created: r.get(7)?,
        })
    })?;
    rows.collect()
}

fn read_sessions(conn: &Connection) -> rusqlite::Result<Vec<StoredSession>> {
    let mut stmt =
        conn.prepare("SELECT key, principal, csrf, expires_ms, role, email FROM console_sessions ORDER BY expires_ms")?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredSession {
            key: hash_of(r.get(0)?),
            principal: r.get(1)?,
            csrf: r.get(2)?,
            expires_ms: r.get(3)?,
            role: r.get(4)?,
            email: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// `at` in Unix milliseconds.
pub(super) fn unix_ms(at: SystemTime) -> u64 {
    u64::try_from(at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

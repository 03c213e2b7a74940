//! The embedded store: one SQLite file, `uplink.db`, in the state directory; nothing to install.
//!
//! - **Journal**: WAL, so that readers (`GET /api/audit`, `uplink audit`) never wait for the writer.
//!   Checkpoints (copying the WAL back into the file, with its disk flushes) run on a thread of their own
//!   every second, never inside a commit: a decision waits for its own write, not for a checkpoint.
//!   `synchronous=NORMAL` by default: a commit is in the operating system's hands when it returns, which
//!   survives the gateway being killed (`kill -9`), not a power cut; [`StoreOptions::full_sync`]
//!   (`--store-sync full`) waits for the disk on every commit.
//! - **One writer**: the gateway takes `uplink.db.lock` for as long as it runs; a second gateway on the same
//!   directory is refused at start ([`StoreError::InUse`]).
//! - **At start**, never a silent re-creation: a file that is not a database or fails SQLite's quick check
//!   ([`StoreError::Corrupt`]), a database locked by another program ([`StoreError::Locked`]), or a schema
//!   newer than this build's ([`StoreError::Newer`]) is refused with that message. Older schemas are
//!   migrated forward, each step in its own transaction (`PRAGMA user_version` is the schema version).
//! - **Retention**: [`StoreOptions::keep_for`] and [`StoreOptions::keep_records`] prune the oldest records;
//!   the anchor moves with them, in the same transaction, so that the rest still verifies.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::audit::{self, Anchor, Columns, GENESIS, Sealed};
use super::audit::{AuditPage, AuditQuery, VerifyError, VerifyReport};
use super::seam::{AuditReader, Change, Store, StoreError, StoredRule};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 2;

/// Each step from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: rules, the audit log, and what is kept beside it (head, anchor).
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
     CREATE TABLE rules (
         id INTEGER PRIMARY KEY,
         effect TEXT NOT NULL,
         pattern TEXT NOT NULL,
         projects TEXT,
         project TEXT,
         expires INTEGER,
         author TEXT NOT NULL,
         created INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE audit (
         seq INTEGER PRIMARY KEY,
         at_ms INTEGER NOT NULL,
         kind TEXT NOT NULL,
         project TEXT,
         tool TEXT,
         outcome TEXT,
         prev BLOB NOT NULL,
         hash BLOB NOT NULL,
         record TEXT NOT NULL
     ) STRICT;
     CREATE INDEX audit_at ON audit (at_ms);
     CREATE INDEX audit_project ON audit (project, seq);
     CREATE INDEX audit_outcome ON audit (outcome, seq);",
    // 1 → 2: the credentials `uplink gateway token …` manages (hashes only), and their version, which a
    // running gateway watches.
    "CREATE TABLE credentials (
         token_sha256 TEXT PRIMARY KEY,
         kind TEXT NOT NULL CHECK (kind IN ('sled', 'admin')),
         name TEXT NOT NULL,
         projects TEXT,
         role TEXT,
         expires TEXT
     ) STRICT;",
];

/// One credential as the store keeps it: a sled credential (`projects`, optionally `expires`, RFC 3339) or
/// an admin principal (`role`), known by its token's SHA-256 in hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRow {
    /// `sled` or `admin`.
    pub kind: String,
    /// The sled credential's label, or the principal's name.
    pub name: String,
    /// The token's SHA-256, 64 hex digits.
    pub token_sha256: String,
    /// A sled credential's projects (names or `*` patterns).
    pub projects: Vec<String>,
    /// A principal's role.
    pub role: Option<String>,
    /// When a sled credential stops working, RFC 3339.
    pub expires: Option<String>,
}

/// The store's credentials in `dir`, opened for `uplink gateway token …` beside a running gateway or none.
#[derive(Debug)]
pub struct CredentialStore {
    conn: Connection,
    path: PathBuf,
}

impl CredentialStore {
    /// Opens the store in `dir`: when no gateway holds it, as [`SqliteStore::open`] does (creating or
    /// migrating it); when one does, beside it (that gateway has migrated it).
    pub fn open(dir: &Path) -> Result<CredentialStore, StoreError> {
        let path = dir.join(DB_FILE);
        match SqliteStore::open(dir, StoreOptions::default()) {
            Ok(store) => {
                drop(store);
            }
            Err(StoreError::InUse(_)) => {}
            Err(e) => return Err(e),
        }
        let conn = Connection::open(&path).map_err(|e| classify(&path, e))?;
        conn.busy_timeout(BUSY_WAIT).map_err(|e| classify(&path, e))?;
        let version = check(&conn, &path)?;
        if version < SCHEMA_VERSION {
            return Err(StoreError::Database(format!("{}: schema version {version}, not migrated", text(&path))));
        }
        Ok(CredentialStore { conn, path })
    }

    /// Every credential kept.
    pub fn read(&self) -> Result<Vec<CredentialRow>, StoreError> {
        read_credentials(&self.conn).map_err(|e| classify(&self.path, e))
    }

    /// Replaces every credential kept with `rows`, in one transaction, and moves the version on.
    pub fn write(&mut self, rows: &[CredentialRow]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| classify(&path, e))?;
        tx.execute("DELETE FROM credentials", []).map_err(|e| classify(&path, e))?;
        for r in rows {
            let projects = (r.kind == "sled").then(|| serde_json::to_string(&r.projects).unwrap_or_default());
            tx.execute(
                "INSERT INTO credentials (token_sha256, kind, name, projects, role, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![r.token_sha256, r.kind, r.name, projects, r.role, r.expires],
            )
            .map_err(|e| classify(&path, e))?;
        }
        let version = credentials_version_of(&tx).map_err(|e| classify(&path, e))? + 1;
        put_meta_pair(&tx, "credentials_version", (version, GENESIS)).map_err(|e| classify(&path, e))?;
        tx.commit().map_err(|e| classify(&path, e))
    }

    /// The credentials' version: it moves on with every [`CredentialStore::write`].
    pub fn version(&self) -> Result<u64, StoreError> {
        credentials_version_of(&self.conn).map_err(|e| classify(&self.path, e))
    }
}

fn credentials_version_of(conn: &Connection) -> rusqlite::Result<u64> {
    Ok(meta_pair(conn, "credentials_version")?.map_or(0, |(v, _)| v))
}

fn read_credentials(conn: &Connection) -> rusqlite::Result<Vec<CredentialRow>> {
    let mut stmt = conn.prepare(
        "SELECT kind, name, token_sha256, projects, role, expires FROM credentials ORDER BY kind DESC, name, token_sha256",
    )?;
    let rows = stmt.query_map([], |r| {
        let projects: Option<String> = r.get(3)?;
        Ok(CredentialRow {
            kind: r.get(0)?,
            name: r.get(1)?,
            token_sha256: r.get(2)?,
            projects: projects.and_then(|p| serde_json::from_str(&p).ok()).unwrap_or_default(),
            role: r.get(4)?,
            expires: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// The database's file name in the state directory.
pub const DB_FILE: &str = "uplink.db";

/// How long a start waits for a database another program has locked.
const BUSY_WAIT: Duration = Duration::from_secs(2);

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

/// The embedded store. See the [module docs](self).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
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

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// The store's error for what the database said about `path`.
fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked(text(path)),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path: text(path), what: e.to_string() }
        }
        _ => StoreError::Database(format!("{}: {e}", text(path))),
    }
}

fn hash_of(blob: Vec<u8>) -> [u8; 32] {
    let mut h = [0u8; 32];
    if blob.len() == 32 {
        h.copy_from_slice(&blob);
    }
    h
}

fn meta_pair(conn: &Connection, key: &str) -> rusqlite::Result<Option<(u64, [u8; 32])>> {
    let value: Option<Vec<u8>> =
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?;
    Ok(value.filter(|v| v.len() == 40).map(|v| {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&v[..8]);
        (u64::from_be_bytes(seq), hash_of(v[8..].to_vec()))
    }))
}

fn put_meta_pair(conn: &Connection, key: &str, (seq, hash): (u64, [u8; 32])) -> rusqlite::Result<()> {
    let mut value = seq.to_be_bytes().to_vec();
    value.extend_from_slice(&hash);
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![key, value])?;
    Ok(())
}

/// Refuses a damaged file or a newer schema; `Ok(version)` otherwise.
fn check(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let quick: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| classify(path, e))?;
    if quick != "ok" {
        return Err(StoreError::Corrupt { path: text(path), what: quick });
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| classify(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Newer { path: text(path), found: version, supported: SCHEMA_VERSION });
    }
    Ok(version)
}

impl SqliteStore {
    /// Opens (or creates) the store in `dir`, migrating an older schema.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        if crate::owner_only::dir(dir)? {
            tracing::warn!(dir = %text(dir), "the state directory is open to others (its files are owner-only): chmod 700 it");
        }
        let lock_path = dir.join(format!("{DB_FILE}.lock"));
        crate::owner_only::file(&lock_path)?;
        let lock = File::options().create(true).truncate(false).write(true).open(&lock_path)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::InUse(text(dir)));
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
        // the first decision.
        conn.execute_batch("BEGIN IMMEDIATE; COMMIT").map_err(|e| classify(&path, e))?;
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

    /// The credentials kept (`uplink gateway token …`), with their version.
    pub fn credentials(&self) -> Result<(Vec<CredentialRow>, u64), StoreError> {
        let rows = read_credentials(&self.conn).map_err(|e| classify(&self.path, e))?;
        let version = credentials_version_of(&self.conn).map_err(|e| classify(&self.path, e))?;
        Ok((rows, version))
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

    fn rules(&mut self) -> Result<Vec<StoredRule>, StoreError> {
        let path = self.path.clone();
        let mut stmt = self
            .conn
            .prepare("SELECT id, effect, pattern, projects, project, expires, author, created FROM rules ORDER BY id")
            .map_err(|e| classify(&path, e))?;
        let rows = stmt
            .query_map([], |r| {
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
            })
            .map_err(|e| classify(&path, e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| classify(&path, e))
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        match self.write(changes) {
            Ok(head) => {
                self.head = head;
                Ok(())
            }
            Err(e) => Err(classify(&self.path, e)),
        }
    }

    fn reader(&self) -> Arc<dyn AuditReader> {
        Arc::new(SqliteReader { path: self.path.clone() })
    }
}

/// Reads a store's audit log through connections of its own, read-only: from the gateway beside its
/// writer, or from `uplink audit` beside a running gateway or none.
#[derive(Clone, Debug)]
pub struct SqliteReader {
    path: PathBuf,
}

impl SqliteReader {
    /// A reader of the store in `dir`, which must exist, and be of a schema this build reads.
    pub fn at(dir: &Path) -> Result<SqliteReader, StoreError> {
        let reader = SqliteReader { path: dir.join(DB_FILE) };
        if !reader.path.exists() {
            return Err(StoreError::Database(format!("{}: no such database", text(&reader.path))));
        }
        let conn = reader.open()?;
        let version = check(&conn, &reader.path)?;
        if version < SCHEMA_VERSION {
            return Err(StoreError::Database(format!(
                "{}: schema version {version}; start the gateway once to migrate it",
                text(&reader.path)
            )));
        }
        Ok(reader)
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| classify(&self.path, e))?;
        conn.busy_timeout(BUSY_WAIT).map_err(|e| classify(&self.path, e))?;
        Ok(conn)
    }

    /// The credentials kept, with their version, read together.
    pub fn credentials(&self) -> Result<(Vec<CredentialRow>, u64), StoreError> {
        let conn = self.open()?;
        conn.execute_batch("BEGIN").map_err(|e| classify(&self.path, e))?;
        let rows = read_credentials(&conn).map_err(|e| classify(&self.path, e))?;
        let version = credentials_version_of(&conn).map_err(|e| classify(&self.path, e))?;
        Ok((rows, version))
    }

    /// The credentials' version alone (cheap: a running gateway polls it).
    pub fn credentials_version(&self) -> Result<u64, StoreError> {
        let conn = self.open()?;
        credentials_version_of(&conn).map_err(|e| classify(&self.path, e))
    }

    /// Every record in order, each to `each`, until it returns `false`.
    pub fn each(&self, mut each: impl FnMut(Sealed) -> bool) -> Result<(), StoreError> {
        let conn = self.open()?;
        let mut stmt = conn
            .prepare("SELECT seq, prev, hash, record FROM audit ORDER BY seq")
            .map_err(|e| classify(&self.path, e))?;
        let mut rows = stmt.query([]).map_err(|e| classify(&self.path, e))?;
        while let Some(row) = rows.next().map_err(|e| classify(&self.path, e))? {
            let sealed = sealed(row).map_err(|e| classify(&self.path, e))?;
            if !each(sealed) {
                break;
            }
        }
        Ok(())
    }
}

fn sealed(row: &rusqlite::Row<'_>) -> rusqlite::Result<Sealed> {
    Ok(Sealed { seq: row.get(0)?, prev: hash_of(row.get(1)?), hash: hash_of(row.get(2)?), text: row.get(3)? })
}

impl AuditReader for SqliteReader {
    fn query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let conn = self.open()?;
        let mut sql = String::from("SELECT seq, prev, hash, record FROM audit WHERE seq > ?1");
        let mut values: Vec<rusqlite::types::Value> =
            vec![i64::try_from(query.after.unwrap_or(0)).unwrap_or(i64::MAX).into()];
        for (column, value) in [("project", &query.project), ("tool", &query.tool), ("outcome", &query.outcome)] {
            if let Some(v) = value {
                values.push(v.clone().into());
                sql.push_str(&format!(" AND {column} = ?{}", values.len()));
            }
        }
        for (op, value) in [(">=", query.since), ("<", query.until)] {
            if let Some(v) = value {
                values.push(i64::try_from(v).unwrap_or(i64::MAX).into());
                sql.push_str(&format!(" AND at_ms {op} ?{}", values.len()));
            }
        }
        let size = query.page_size() as usize;
        sql.push_str(&format!(" ORDER BY seq LIMIT {}", size + 1));
        let mut stmt = conn.prepare(&sql).map_err(|e| classify(&self.path, e))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(values)).map_err(|e| classify(&self.path, e))?;
        // At most `size` records, and at most MAX_PAGE_BYTES of them (but always one): a page of large
        // tool inputs stays a page.
        let (mut records, mut bytes, mut more) = (Vec::new(), 0usize, false);
        while let Some(row) = rows.next().map_err(|e| classify(&self.path, e))? {
            let record = sealed(row).map_err(|e| classify(&self.path, e))?;
            if records.len() == size || (!records.is_empty() && bytes + record.text.len() > audit::MAX_PAGE_BYTES) {
                more = true;
                break;
            }
            bytes += record.text.len();
            records.push(record);
        }
        let next = if more { records.last().map(|r| r.seq) } else { None };
        Ok(AuditPage { records, next })
    }

    fn verify(&self) -> Result<Result<VerifyReport, VerifyError>, StoreError> {
        let conn = self.open()?;
        // One read transaction: the records, the head and the anchor are of the same moment.
        conn.execute_batch("BEGIN").map_err(|e| classify(&self.path, e))?;
        let anchor = meta_pair(&conn, "anchor")
            .map_err(|e| classify(&self.path, e))?
            .map_or_else(Anchor::default, |(seq, hash)| Anchor { seq, hash });
        let head = meta_pair(&conn, "head").map_err(|e| classify(&self.path, e))?;
        let mut stmt = conn
            .prepare("SELECT seq, prev, hash, record, at_ms, kind, project, tool, outcome FROM audit ORDER BY seq")
            .map_err(|e| classify(&self.path, e))?;
        let mut failed = None;
        let rows = stmt
            .query_map([], |r| {
                let columns = Columns {
                    at_ms: r.get(4)?,
                    kind: r.get(5)?,
                    project: r.get(6)?,
                    tool: r.get(7)?,
                    outcome: r.get(8)?,
                };
                Ok((sealed(r)?, columns))
            })
            .map_err(|e| classify(&self.path, e))?;
        let records = rows.map_while(|r| r.map_err(|e| failed = Some(e)).ok());
        let report = audit::verify(anchor, records, head);
        if let Some(e) = failed {
            return Err(classify(&self.path, e));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Entry;

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
        assert_eq!(s.rules().expect("rules"), vec![rule(4)], "a connection's rule is not kept");
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
        let rest =
            reader.query(&AuditQuery { after: first.next, limit: Some(2), ..AuditQuery::default() }).expect("page");
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
        let mut s =
            SqliteStore::open(&d, StoreOptions { keep_for: Some(day), ..StoreOptions::default() }).expect("open");
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
        assert_eq!(s.credentials().expect("the new table").0, Vec::new());
        s.commit(&[entry(3)]).expect("commit");
        let report = s.reader().verify().expect("read").expect("the old records still verify");
        assert_eq!((report.records, report.last_seq), (3, 3));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn tampering_with_the_file_is_found_and_retention_keeps_the_rest_verifiable() {
        let d = dir("tamper");
        let mut s =
            SqliteStore::open(&d, StoreOptions { keep_records: Some(3), ..StoreOptions::default() }).expect("open");
        s.commit(&(1..=6).map(entry).collect::<Vec<_>>()).expect("commit");
        s.prune_now().expect("prune");
        let reader = s.reader();
        let report = reader.verify().expect("read").expect("intact after pruning");
        assert_eq!((report.records, report.first_seq, report.last_seq), (3, 4, 6));
        let other = Connection::open(d.join(DB_FILE)).expect("open");
        other
            .execute("UPDATE audit SET record = replace(record, '\"n\":5', '\"n\":50') WHERE seq = 5", [])
            .expect("edit");
        assert_eq!(reader.verify().expect("read"), Err(VerifyError::Changed(5)));
        other.execute("DELETE FROM audit WHERE seq >= 5", []).expect("cut");
        assert_eq!(reader.verify().expect("read"), Err(VerifyError::Truncated { last: 4, head: 6 }));
        let _ = std::fs::remove_dir_all(&d);
    }
}

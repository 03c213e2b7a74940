//! The database's shape: its schema version and the steps to it, its file's name, and the small helpers every
//! connection uses (reading errors, the `meta` table of pairs, the check at open).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::store::seam::StoreError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 5;

/// Each step from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 2 → 3: the console's sign-ins (their cookies' SHA-256), so that a restart signs nobody out.
    "CREATE TABLE console_sessions (
         key BLOB PRIMARY KEY,
         principal TEXT NOT NULL,
         csrf TEXT NOT NULL,
         expires_ms INTEGER NOT NULL
     ) STRICT;",
    // 3 → 4: requests that may come back after a drop or a restart (`resume`), each its JSON record.
    "CREATE TABLE resumables (id TEXT PRIMARY KEY, record TEXT NOT NULL) STRICT;",
    // 4 → 5: a sign-in an identity provider vouched for keeps the role it gave and the person's email.
    "ALTER TABLE console_sessions ADD COLUMN role TEXT;
     ALTER TABLE console_sessions ADD COLUMN email TEXT;",
];

/// The database's file name in the state directory.
pub const DB_FILE: &str = "uplink.db";

/// How long a start waits for a database another program has locked.
pub(super) const BUSY_WAIT: Duration = Duration::from_secs(2);

pub(super) fn text(path: &Path) -> String {
    path.display().to_string()
}

/// The store's error for what the database said about `path`.
pub(super) fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked(text(path)),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path: text(path), what: e.to_string() }
        }
        _ => StoreError::Database(format!("{}: {e}", text(path))),
    }
}

pub(super) fn hash_of(blob: Vec<u8>) -> [u8; 32] {
    let mut h = [0u8; 32];
    if blob.len() == 32 {
        h.copy_from_slice(&blob);
    }
    h
}

pub(super) fn meta_pair(conn: &Connection, key: &str) -> rusqlite::Result<Option<(u64, [u8; 32])>> {
    let value: Option<Vec<u8>> =
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?;
    Ok(value.filter(|v| v.len() == 40).map(|v| {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&v[..8]);
        (u64::from_be_bytes(seq), hash_of(v[8..].to_vec()))
    }))
}

pub(super) fn put_meta_pair(conn: &Connection, key: &str, (seq, hash): (u64, [u8; 32])) -> rusqlite::Result<()> {
    let mut value = seq.to_be_bytes().to_vec();
    value.extend_from_slice(&hash);
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![key, value])?;
    Ok(())
}

/// Refuses a damaged file or a newer schema; `Ok(version)` otherwise.
pub(super) fn check(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
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

/// The store's secret for keyed hashes ([`Kept::input_key`](crate::store::Kept::input_key)): drawn once, kept in
/// `meta`, read ever after.
pub(super) fn input_key(conn: &Connection) -> rusqlite::Result<Option<[u8; 32]>> {
    Ok(meta_pair(conn, "input_key")?.map(|(_, key)| key))
}

/// Draws the store's secret if it has none yet (in the caller's transaction); returns it.
pub(super) fn ensure_input_key(conn: &Connection) -> Result<[u8; 32], StoreError> {
    if let Some(key) = input_key(conn).map_err(|e| StoreError::Database(e.to_string()))? {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    let rng = rustls::crypto::ring::default_provider().secure_random;
    rng.fill(&mut key).map_err(|_| StoreError::Database("the system's secure random generator failed".into()))?;
    put_meta_pair(conn, "input_key", (0, key)).map_err(|e| StoreError::Database(e.to_string()))?;
    Ok(key)
}

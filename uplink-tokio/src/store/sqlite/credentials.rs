//! The credentials `uplink gateway token …` manages, in the store's `credentials` table, with their version
//! in `meta`: read and written beside a running gateway (which polls the version) or none.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::schema::{BUSY_WAIT, DB_FILE, SCHEMA_VERSION, check, classify, meta_pair, put_meta_pair, text};
use crate::store::audit::GENESIS;
use crate::store::seam::{CredentialRow, CredentialStore, StoreError};

/// The store's credentials in a state directory. Each call opens a connection of its own, so that it can be
/// shared between threads and used beside the gateway's writer.
#[derive(Clone, Debug)]
pub struct SqliteCredentials {
    path: PathBuf,
}

impl SqliteCredentials {
    /// The credentials of the store in `dir`, which must exist and be of this build's schema; nothing is made
    /// ([`SqliteStore::credentials_in`](super::SqliteStore::credentials_in) makes it when no gateway holds it).
    pub fn beside(dir: &Path) -> Result<SqliteCredentials, StoreError> {
        let store = SqliteCredentials { path: dir.join(DB_FILE) };
        if !store.path.exists() {
            return Err(StoreError::Database(format!("{}: no such database", text(&store.path))));
        }
        let version = check(&store.connect(true)?, &store.path)?;
        if version < SCHEMA_VERSION {
            return Err(StoreError::Database(format!(
                "{}: schema version {version}; start the gateway once to migrate it",
                text(&store.path)
            )));
        }
        Ok(store)
    }

    fn connect(&self, read_only: bool) -> Result<Connection, StoreError> {
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| classify(&self.path, e))?;
        conn.busy_timeout(BUSY_WAIT).map_err(|e| classify(&self.path, e))?;
        Ok(conn)
    }
}

impl CredentialStore for SqliteCredentials {
    fn read(&self) -> Result<(Vec<CredentialRow>, u64), StoreError> {
        let conn = self.connect(true)?;
        // One read transaction: the rows and their version are of the same moment.
        conn.execute_batch("BEGIN").map_err(|e| classify(&self.path, e))?;
        let rows = read_credentials(&conn).map_err(|e| classify(&self.path, e))?;
        let version = credentials_version_of(&conn).map_err(|e| classify(&self.path, e))?;
        Ok((rows, version))
    }

    fn version(&self) -> Result<u64, StoreError> {
        credentials_version_of(&self.connect(true)?).map_err(|e| classify(&self.path, e))
    }

    fn write(&self, rows: &[CredentialRow]) -> Result<(), StoreError> {
        let path = &self.path;
        let mut conn = self.connect(false)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| classify(path, e))?;
        tx.execute("DELETE FROM credentials", []).map_err(|e| classify(path, e))?;
        for r in rows {
            let projects = (r.kind == "sled").then(|| serde_json::to_string(&r.projects).unwrap_or_default());
            tx.execute(
                "INSERT INTO credentials (token_sha256, kind, name, projects, role, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![r.token_sha256, r.kind, r.name, projects, r.role, r.expires],
            )
            .map_err(|e| classify(path, e))?;
        }
        let version = credentials_version_of(&tx).map_err(|e| classify(path, e))? + 1;
        put_meta_pair(&tx, "credentials_version", (version, GENESIS)).map_err(|e| classify(path, e))?;
        tx.commit().map_err(|e| classify(path, e))
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

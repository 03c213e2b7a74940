//! Reading the audit log beside the writer: [`SqliteReader`], each call through a read-only connection of
//! its own (`GET /api/audit`, `uplink audit`, beside a running gateway or none).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::schema::{BUSY_WAIT, DB_FILE, SCHEMA_VERSION, check, classify, hash_of, input_key, meta_pair, text};
use crate::store::audit::{
    self, Anchor, AuditPage, AuditQuery, ChainEnds, Columns, Head, Sealed, VerifyError, VerifyReport,
};
use crate::store::seam::{AuditReader, StoreError};

/// Reads a store's audit log through connections of its own, read-only: from the gateway beside its
/// writer, or from `uplink audit` beside a running gateway or none.
#[derive(Clone, Debug)]
pub struct SqliteReader {
    path: PathBuf,
}

impl SqliteReader {
    /// A reader of the database at `path`, opened as it is used.
    pub(super) fn of(path: PathBuf) -> SqliteReader {
        SqliteReader { path }
    }

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
    Ok(Sealed { chain: 0, seq: row.get(0)?, prev: hash_of(row.get(1)?), hash: hash_of(row.get(2)?), text: row.get(3)? })
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
        let records = std::iter::from_fn(|| match rows.next() {
            Ok(Some(row)) => Some(sealed(row).map(|s| (s.seq, s)).map_err(|e| classify(&self.path, e))),
            Ok(None) => None,
            Err(e) => Some(Err(classify(&self.path, e))),
        });
        AuditPage::gather(records, size)
    }

    fn input_key(&self) -> Result<[u8; 32], StoreError> {
        let conn = self.open()?;
        input_key(&conn)
            .map_err(|e| classify(&self.path, e))?
            .ok_or_else(|| StoreError::Database(format!("{}: the store's secret is missing", text(&self.path))))
    }

    fn verify_with(&self, checkpoints: &[Head]) -> Result<Result<VerifyReport, VerifyError>, StoreError> {
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
        let ends = [ChainEnds { chain: 0, anchor, head }];
        let report = audit::verify_chains(&ends, records, &[], checkpoints);
        if let Some(e) = failed {
            return Err(classify(&self.path, e));
        }
        Ok(report)
    }
}

//! Reading the audit log beside the writer: [`PostgresReader`], each call on a connection from the store's
//! pool (`GET /api/audit`, `uplink audit`, beside a running gateway or none).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;

use super::db::Db;
use super::schema::{self, big, hash_of, pair};
use crate::store::audit::{
    self, Anchor, AuditPage, AuditQuery, ChainEnds, Columns, Head, Sealed, VerifyError, VerifyReport,
};
use crate::store::seam::{AuditReader, StoreError};

/// How many records a check of the whole log reads at a time.
const VERIFY_PAGE: i64 = 2000;

/// Reads a PostgreSQL store's audit log. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct PostgresReader {
    db: Arc<Db>,
}

/// A record from a row of `chain, seq, prev, hash, record` (from column `at`).
fn sealed(r: &tokio_postgres::Row, at: usize) -> Sealed {
    Sealed {
        chain: u64::try_from(r.get::<_, i64>(at)).unwrap_or(0),
        seq: u64::try_from(r.get::<_, i64>(at + 1)).unwrap_or(0),
        prev: hash_of(r.get(at + 2)),
        hash: hash_of(r.get(at + 3)),
        text: r.get(at + 4),
    }
}

impl PostgresReader {
    pub(super) fn of(db: Arc<Db>) -> PostgresReader {
        PostgresReader { db }
    }

    /// A reader of the store on the database at `url`, which must be of this build's schema (nothing is made).
    pub fn at(url: &str, ca_file: Option<PathBuf>) -> Result<PostgresReader, StoreError> {
        let db = Db::new(url, ca_file.as_deref())?;
        let d = db.clone();
        db.run(async move {
            let client = d.clone().pooled().await?;
            schema::check(&d, &**client).await
        })?;
        Ok(PostgresReader { db })
    }
}

impl AuditReader for PostgresReader {
    fn query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let mut sql = String::from("SELECT place, chain, seq, prev, hash, record FROM uplink.audit WHERE place > $1");
        let mut values: Vec<Box<dyn ToSql + Sync + Send>> =
            vec![Box::new(i64::try_from(query.after.unwrap_or(0)).unwrap_or(i64::MAX))];
        for (column, value) in [("project", &query.project), ("tool", &query.tool), ("outcome", &query.outcome)] {
            if let Some(v) = value {
                values.push(Box::new(v.clone()));
                sql.push_str(&format!(" AND {column} = ${}", values.len()));
            }
        }
        for (op, value) in [(">=", query.since), ("<", query.until)] {
            if let Some(v) = value {
                values.push(Box::new(i64::try_from(v).unwrap_or(i64::MAX)));
                sql.push_str(&format!(" AND at_ms {op} ${}", values.len()));
            }
        }
        let size = query.page_size() as usize;
        sql.push_str(&format!(" ORDER BY place LIMIT {}", size + 1));
        let d = self.db.clone();
        let rows = self.db.run(async move {
            let client = d.clone().pooled().await?;
            let values: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
            client.query(&sql, &values).await.map_err(|e| d.said(&e))
        })?;
        AuditPage::gather(
            rows.iter().map(|row| Ok((u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), sealed(row, 1)))),
            size,
        )
    }

    fn record(&self, chain: u64, seq: u64) -> Result<Option<Sealed>, StoreError> {
        let (d, chain, seq) = (self.db.clone(), big(chain)?, big(seq)?);
        let row = self.db.run(async move {
            let client = d.clone().pooled().await?;
            client
                .query_opt(
                    "SELECT chain, seq, prev, hash, record FROM uplink.audit WHERE chain = $1 AND seq = $2",
                    &[&chain, &seq],
                )
                .await
                .map_err(|e| d.said(&e))
        })?;
        Ok(row.map(|r| sealed(&r, 0)))
    }

    fn input_key(&self) -> Result<[u8; 32], StoreError> {
        let d = self.db.clone();
        self.db.run(async move {
            let client = d.clone().pooled().await?;
            pair(&**client, "input_key")
                .await
                .map_err(|e| d.said(&e))?
                .map(|(_, key)| key)
                .ok_or_else(|| StoreError::Database(format!("{}: the store's secret is missing", d.place())))
        })
    }

    fn verify_with(&self, checkpoints: &[Head]) -> Result<Result<VerifyReport, VerifyError>, StoreError> {
        // One read-only snapshot: every chain's ends, its citations and its records are of the same moment,
        // read a page at a time on one connection.
        let d = self.db.clone();
        let (client, ends, cites) = self.db.run(async move {
            let client = d.clone().pooled().await?;
            let said = |e: tokio_postgres::Error| d.said(&e);
            client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(said)?;
            let ends = client
                .query("SELECT id, head_seq, head_hash, anchor_seq, anchor_hash FROM uplink.chains ORDER BY id", &[])
                .await
                .map_err(said)?
                .iter()
                .map(|r| {
                    let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
                    ChainEnds {
                        chain: n(0),
                        anchor: Anchor { seq: n(3), hash: hash_of(r.get(4)) },
                        head: Some((n(1), hash_of(r.get(2)))),
                    }
                })
                .collect::<Vec<_>>();
            let cites = client
                .query(
                    "SELECT chain, seq, prev, hash, record FROM uplink.audit WHERE kind = 'cite' ORDER BY chain, seq",
                    &[],
                )
                .await
                .map_err(said)?
                .iter()
                .map(|r| sealed(r, 0))
                .collect::<Vec<_>>();
            Ok((client, ends, cites))
        })?;
        let mut pages =
            Pages { db: &self.db, client: Some(client), after: (-1, 0), buffer: VecDeque::new(), failed: None };
        let report = audit::verify_chains(&ends, &mut pages, &cites, checkpoints);
        if let Some(e) = pages.failed.take() {
            return Err(e);
        }
        pages.finish()?;
        Ok(report)
    }
}

/// Every chain's records in (chain, seq) order, read a page at a time in the snapshot `client` holds. A
/// failed read ends the records and is kept in `failed`; a connection left mid-transaction is closed, never
/// returned to the pool.
struct Pages<'a> {
    db: &'a Arc<Db>,
    client: Option<Object>,
    after: (i64, i64),
    buffer: VecDeque<(Sealed, Columns)>,
    failed: Option<StoreError>,
}

impl Pages<'_> {
    fn fetch(&mut self) -> Result<(), StoreError> {
        let Some(client) = self.client.take() else { return Ok(()) };
        let (d, after) = (self.db.clone(), self.after);
        let (client, rows) = self.db.run(async move {
            let rows = client
                .query(
                    "SELECT chain, seq, prev, hash, record, at_ms, kind, project, tool, outcome FROM uplink.audit
                     WHERE (chain, seq) > ($1, $2) ORDER BY chain, seq LIMIT $3",
                    &[&after.0, &after.1, &VERIFY_PAGE],
                )
                .await
                .map_err(|e| d.said(&e))?;
            Ok((client, rows))
        })?;
        self.client = Some(client);
        for r in &rows {
            let columns = Columns {
                at_ms: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
                kind: r.get(6),
                project: r.get(7),
                tool: r.get(8),
                outcome: r.get(9),
            };
            self.after = (r.get(0), r.get(1));
            self.buffer.push_back((sealed(r, 0), columns));
        }
        Ok(())
    }

    /// Ends the snapshot and gives the connection back.
    fn finish(&mut self) -> Result<(), StoreError> {
        let Some(client) = self.client.take() else { return Ok(()) };
        let d = self.db.clone();
        let client = self.db.run(async move {
            client.batch_execute("COMMIT").await.map_err(|e| d.said(&e))?;
            Ok(client)
        })?;
        drop(client);
        Ok(())
    }
}

impl Iterator for Pages<'_> {
    type Item = (Sealed, Columns);

    fn next(&mut self) -> Option<(Sealed, Columns)> {
        if self.buffer.is_empty()
            && self.failed.is_none()
            && let Err(e) = self.fetch()
        {
            self.failed = Some(e);
        }
        self.buffer.pop_front()
    }
}

impl Drop for Pages<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Still in its transaction: closed rather than handed to the next reader.
            drop(Object::take(client));
        }
    }
}

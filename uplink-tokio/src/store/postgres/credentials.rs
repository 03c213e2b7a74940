//! The credentials `uplink gateway token …` manages, in the `credentials` table, with their version in
//! `meta`: read and written beside a running gateway (which polls the version) or none.

use std::sync::Arc;

use super::db::Db;
use super::schema::{self, pair};
use crate::store::seam::{CredentialRow, CredentialStore, StoreError};

/// The credentials kept in a PostgreSQL store; each call takes a connection from the store's pool.
#[derive(Clone, Debug)]
pub struct PostgresCredentials {
    db: Arc<Db>,
}

impl PostgresCredentials {
    pub(super) fn of(db: Arc<Db>) -> PostgresCredentials {
        PostgresCredentials { db }
    }
}

impl CredentialStore for PostgresCredentials {
    fn read(&self) -> Result<(Vec<CredentialRow>, u64), StoreError> {
        let d = self.db.clone();
        self.db.run(async move {
            let mut client = d.clone().pooled().await?;
            // One transaction: the rows and their version are of the same moment.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(|e| d.said(&e))?;
            schema::check(&d, &*tx).await?;
            let rows = tx
                .query(
                    "SELECT kind, name, token_sha256, projects, role, expires FROM uplink.credentials
                     ORDER BY kind DESC, name, token_sha256",
                    &[],
                )
                .await
                .map_err(|e| d.said(&e))?;
            let rows = rows
                .iter()
                .map(|r| {
                    let projects: Option<String> = r.get(3);
                    CredentialRow {
                        kind: r.get(0),
                        name: r.get(1),
                        token_sha256: r.get(2),
                        projects: projects.and_then(|p| serde_json::from_str(&p).ok()).unwrap_or_default(),
                        role: r.get(4),
                        expires: r.get(5),
                    }
                })
                .collect();
            let version = pair(&*tx, "credentials_version").await.map_err(|e| d.said(&e))?.map_or(0, |(n, _)| n);
            tx.commit().await.map_err(|e| d.said(&e))?;
            Ok((rows, version))
        })
    }

    fn version(&self) -> Result<u64, StoreError> {
        let d = self.db.clone();
        self.db.run(async move {
            let client = d.clone().pooled().await?;
            Ok(pair(&**client, "credentials_version").await.map_err(|e| d.said(&e))?.map_or(0, |(n, _)| n))
        })
    }

    fn write(&self, rows: &[CredentialRow]) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        let d = self.db.clone();
        self.db.run(async move {
            let mut client = d.clone().pooled().await?;
            let tx = client.transaction().await.map_err(|e| d.said(&e))?;
            schema::check(&d, &*tx).await?;
            // The version's row first: two writers take turns on its lock, each replacing the whole.
            tx.execute("UPDATE uplink.meta SET n = n + 1 WHERE key = 'credentials_version'", &[])
                .await
                .map_err(|e| d.said(&e))?;
            tx.execute("DELETE FROM uplink.credentials", &[]).await.map_err(|e| d.said(&e))?;
            for r in &rows {
                let projects = (r.kind == "sled").then(|| serde_json::to_string(&r.projects).unwrap_or_default());
                tx.execute(
                    "INSERT INTO uplink.credentials (token_sha256, kind, name, projects, role, expires)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&r.token_sha256, &r.kind, &r.name, &projects, &r.role, &r.expires],
                )
                .await
                .map_err(|e| d.said(&e))?;
            }
            tx.commit().await.map_err(|e| d.said(&e))
        })
    }
}

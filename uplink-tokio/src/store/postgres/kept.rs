//! What a gateway finds in its PostgreSQL store as it starts ([`Kept`]): the rules made at run time, the
//! console's sign-ins that have not ended, the store's secret, the requests that may come back, and the
//! connection handles reserved.

use std::sync::Arc;
use std::time::SystemTime;

use tokio_postgres::GenericClient;

use super::db::Db;
use super::schema::{big, hash_of, pair, unix_ms};
use crate::store::seam::{Kept, StoreError, StoredResumable, StoredRule, StoredSession};

/// Reads what was kept, on a connection of the readers' pool; sign-ins that ended while no gateway ran
/// are forgotten on the way.
pub(super) async fn load(db: &Arc<Db>) -> Result<Kept, StoreError> {
    let client = db.clone().pooled().await?;
    let said = |e: tokio_postgres::Error| db.said(&e);
    let rules = read_rules(&**client).await.map_err(said)?;
    // Sign-ins that ended while the gateway was down are forgotten now.
    let now = big(unix_ms(SystemTime::now()))?;
    client.execute("DELETE FROM uplink.console_sessions WHERE expires_ms <= $1", &[&now]).await.map_err(said)?;
    let sessions = read_sessions(&**client).await.map_err(said)?;
    let input_key = pair(&**client, "input_key")
        .await
        .map_err(said)?
        .map(|(_, key)| key)
        .ok_or_else(|| StoreError::Database(format!("{}: the store's secret is missing", db.place())))?;
    let node = db.node.load(std::sync::atomic::Ordering::Acquire);
    let resumables = read_resumables(db, &**client, node).await?;
    let ids_until = pair(&**client, "ids_until").await.map_err(said)?.map_or(0, |(n, _)| n);
    Ok(Kept { rules, sessions, input_key, resumables, ids_until })
}

/// The requests that may come back: for a cluster's node (`node`), those it takes up from nodes that are
/// gone (a live node's stay its own; the table of waiting requests names the new node from then on, so
/// that decisions made elsewhere reach it); for a store that joined none, all. One whose record does not read is
/// an error, never skipped.
async fn read_resumables(db: &Db, client: &impl GenericClient, node: i64) -> Result<Vec<StoredResumable>, StoreError> {
    let rows = if node == 0 {
        client.query("SELECT record FROM uplink.resumables ORDER BY id", &[]).await
    } else {
        client
            .query(
                "WITH taken AS (UPDATE uplink.resumables SET node = $1
                                WHERE node = $1 OR node = 0 OR NOT uplink.live(node) RETURNING id, record),
                      moved AS (UPDATE uplink.pending SET node = $1 WHERE perm IN (SELECT id FROM taken))
                 SELECT record FROM taken ORDER BY id",
                &[&node],
            )
            .await
    }
    .map_err(|e| db.said(&e))?;
    rows.iter()
        .map(|r| {
            serde_json::from_str(r.get(0))
                .map_err(|e| StoreError::Database(format!("{}: a kept request does not read: {e}", db.place())))
        })
        .collect()
}

/// The columns [`rule`] reads, in its order.
pub(super) const RULE_COLUMNS: &str = "id, effect, pattern, projects, project, expires, author, created";

async fn read_rules(client: &impl GenericClient) -> Result<Vec<StoredRule>, tokio_postgres::Error> {
    let sql = format!("SELECT {RULE_COLUMNS} FROM uplink.rules WHERE removed_at IS NULL ORDER BY id");
    Ok(client.query(&sql, &[]).await?.iter().map(rule).collect())
}

/// A kept rule from a row of [`RULE_COLUMNS`].
pub(super) fn rule(r: &tokio_postgres::Row) -> StoredRule {
    let projects: Option<String> = r.get(3);
    StoredRule {
        id: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
        effect: r.get(1),
        pattern: r.get(2),
        projects: projects.and_then(|p| serde_json::from_str(&p).ok()),
        project: r.get(4),
        connection: None,
        expires: r.get::<_, Option<i64>>(5).map(|e| u64::try_from(e).unwrap_or(0)),
        author: r.get(6),
        created: u64::try_from(r.get::<_, i64>(7)).unwrap_or(0),
    }
}

async fn read_sessions(client: &impl GenericClient) -> Result<Vec<StoredSession>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM uplink.console_sessions WHERE removed_at IS NULL ORDER BY expires_ms, key"
    );
    Ok(client.query(&sql, &[]).await?.iter().map(session).collect())
}

/// The columns [`session`] reads, in its order.
pub(super) const SESSION_COLUMNS: &str = "key, principal, csrf, expires_ms, role, email";

/// A kept sign-in from a row of [`SESSION_COLUMNS`].
pub(super) fn session(r: &tokio_postgres::Row) -> StoredSession {
    StoredSession {
        key: hash_of(r.get(0)),
        principal: r.get(1),
        csrf: r.get(2),
        expires_ms: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
        role: r.get(4),
        email: r.get(5),
    }
}

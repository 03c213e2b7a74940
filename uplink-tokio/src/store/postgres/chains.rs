//! The audit log's chains on PostgreSQL: one hash chain per writer, so that several gateways append to the
//! log at once and none waits on another's head. A writer takes up a chain that no writer holds (one
//! whose writer stopped, or lost its connection) or starts one ([`take_up`]), cites the other chains'
//! heads in its own every so often ([`citation`]: a chain dropped or rewritten after it was cited no
//! longer verifies), and gives it back as it stops ([`give_back`]).
//! Retention prunes every chain by the same settings ([`prune`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::json;
use tokio_postgres::{Client, GenericClient};

use super::schema::{PRUNE_LOCK, hash_of, unix_ms};
use crate::store::audit::{CITE, Entry, GENESIS, hex};

/// The chain a writer holds: its id, the writer's token, and where its head is.
pub(super) struct Held {
    pub(super) chain: i64,
    pub(super) token: i64,
    pub(super) head: (u64, [u8; 32]),
}

/// The first key of the session locks by which writers hold chains (the second is the chain's id).
const CHAIN_LOCKS: i32 = 0x7570_6c69;

/// Takes up the first chain no writer holds, or starts a new one. A writer holds its chain by a session
/// lock on the database: a writer that stopped, or whose connection ended (a crash, a lost network), holds
/// none, and its chain is taken up where its last commit left it; one merely paused still holds its own,
/// and the next writer starts a chain of its own. The writer's token, drawn fresh, is what each commit
/// moves the chain's head under, so that no two writers can ever both extend one chain.
pub(super) async fn take_up(client: &Client) -> Result<Held, tokio_postgres::Error> {
    let token: i64 = client.query_one("SELECT nextval('uplink.chain_writer')", &[]).await?.get(0);
    let ids: Vec<i64> =
        client.query("SELECT id FROM uplink.chains ORDER BY id", &[]).await?.iter().map(|r| r.get(0)).collect();
    for id in ids {
        let Ok(key) = i32::try_from(id) else { continue };
        let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&CHAIN_LOCKS, &key]).await?.get(0);
        if locked {
            let row = client
                .query_one(
                    "UPDATE uplink.chains SET writer = $1 WHERE id = $2 RETURNING id, head_seq, head_hash",
                    &[&token, &id],
                )
                .await?;
            return Ok(held(&row, token));
        }
    }
    // Every chain is held: a new one, locked before anyone else can know of it.
    let id: i64 = client.query_one("SELECT nextval('uplink.chain_id')", &[]).await?.get(0);
    let key = i32::try_from(id).unwrap_or(i32::MAX);
    client.execute("SELECT pg_advisory_lock($1, $2)", &[&CHAIN_LOCKS, &key]).await?;
    let row = client
        .query_one(
            "INSERT INTO uplink.chains (id, writer, head_hash, anchor_hash) VALUES ($1, $2, $3, $3)
             RETURNING id, head_seq, head_hash",
            &[&id, &token, &GENESIS.to_vec()],
        )
        .await?;
    Ok(held(&row, token))
}

fn held(row: &tokio_postgres::Row, token: i64) -> Held {
    let seq = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
    Held { chain: row.get(0), token, head: (seq, hash_of(row.get(2))) }
}

/// Gives the chain back (when this writer still holds it): the next writer to start takes it up.
pub(super) async fn give_back(client: &Client, held: &Held) -> Result<(), tokio_postgres::Error> {
    client
        .execute("UPDATE uplink.chains SET writer = NULL WHERE id = $1 AND writer = $2", &[&held.chain, &held.token])
        .await?;
    let key = i32::try_from(held.chain).unwrap_or(i32::MAX);
    client.execute("SELECT pg_advisory_unlock($1, $2)", &[&CHAIN_LOCKS, &key]).await.map(|_| ())
}

/// The other chains' heads this writer has cited, by chain.
pub(super) type Cited = BTreeMap<i64, i64>;

/// A `cite` record of the other chains' heads that moved since `cited` (then updated), or `None` when none
/// did.
pub(super) async fn citation(
    client: &impl GenericClient,
    own: i64,
    cited: &mut Cited,
) -> Result<Option<Entry>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT id, head_seq, head_hash FROM uplink.chains WHERE id <> $1 AND head_seq > 0 ORDER BY id", &[&own])
        .await?;
    let mut cites = Vec::new();
    for row in &rows {
        let (chain, seq): (i64, i64) = (row.get(0), row.get(1));
        if cited.get(&chain) != Some(&seq) {
            cites.push(json!({"chain": chain, "seq": seq, "hash": hex(&hash_of(row.get(2)))}));
            cited.insert(chain, seq);
        }
    }
    Ok((!cites.is_empty()).then(|| Entry::new(unix_ms(SystemTime::now()), CITE).with("cites", cites)))
}

/// Deletes the records retention lets go in every chain (older than `keep_for`, beyond each chain's newest
/// `keep_records`), and moves each chain's anchor to the last one deleted: in a transaction of its own, by
/// one writer at a time (another pruning, this one skips).
pub(super) async fn prune(
    client: &mut Client,
    keep_for: Option<std::time::Duration>,
    keep_records: Option<u64>,
) -> Result<(), tokio_postgres::Error> {
    let oldest = match keep_for {
        Some(age) => unix_ms(SystemTime::now()).saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        None => 0,
    };
    let oldest = i64::try_from(oldest).unwrap_or(i64::MAX);
    let keep = keep_records.map_or(i64::MAX, |k| i64::try_from(k).unwrap_or(i64::MAX));
    let tx = client.transaction().await?;
    let ours: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK]).await?.get(0);
    if !ours {
        return Ok(());
    }
    tx.execute(
        "WITH cuts AS (
             SELECT c.id, GREATEST(coalesce((SELECT max(a.seq) FROM uplink.audit a
                                             WHERE a.chain = c.id AND a.at_ms < $1), 0),
                                   c.head_seq - $2) AS seq
             FROM uplink.chains c),
         marks AS (
             SELECT a.chain, a.seq, a.hash FROM uplink.audit a JOIN cuts ON a.chain = cuts.id AND a.seq = cuts.seq),
         gone AS (
             DELETE FROM uplink.audit a USING marks m WHERE a.chain = m.chain AND a.seq <= m.seq)
         UPDATE uplink.chains c SET anchor_seq = m.seq, anchor_hash = m.hash
           FROM marks m WHERE c.id = m.chain AND m.seq > c.anchor_seq",
        &[&oldest, &keep],
    )
    .await?;
    tx.commit().await
}

//! The embedded store: one SQLite file, `uplink.db`, in the state directory; nothing to install.
//!
//! - **Journal**: WAL, so that readers (`GET /api/audit`, `uplink audit`) never wait for the writer.
//!   Checkpoints (copying the WAL back into the file, with its disk flushes) run on a thread of their own
//!   every second, never inside a commit: a decision waits for its own write, not for a checkpoint.
//!   `synchronous=NORMAL` by default: a commit is in the operating system's hands when it returns, which
//!   survives the gateway being killed (`kill -9`), not a power cut; [`StoreOptions::full_sync`]
//!   (`--store-sync full`) waits for the disk on every commit.
//! - **One writer**: the gateway takes `uplink.db.lock` for as long as it runs; a second gateway on the same
//!   directory is refused at start ([`StoreError::InUse`](crate::store::StoreError::InUse)).
//! - **At start**, never a silent re-creation: a file that is not a database or fails SQLite's quick check
//!   ([`StoreError::Corrupt`](crate::store::StoreError::Corrupt)), a database locked by another program ([`StoreError::Locked`](crate::store::StoreError::Locked)), or a schema
//!   newer than this build's ([`StoreError::Newer`](crate::store::StoreError::Newer)) is refused with that message. Older schemas are
//!   migrated forward, each step in its own transaction (`PRAGMA user_version` is the schema version).
//! - **Retention**: [`StoreOptions::keep_for`] and [`StoreOptions::keep_records`] prune the oldest records;
//!   the anchor moves with them, in the same transaction, so that the rest still verifies.
//!
//! The rooms: `schema` (the schema and its steps, the helpers every connection uses), `writer`
//! ([`SqliteStore`]), `reader` ([`SqliteReader`]), `credentials` ([`SqliteCredentials`]).

mod credentials;
mod reader;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

pub use credentials::SqliteCredentials;
pub use reader::SqliteReader;
pub use schema::{DB_FILE, SCHEMA_VERSION};
pub use writer::{SqliteStore, StoreOptions};

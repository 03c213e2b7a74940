//! What the gateway keeps across restarts: its rules, its audit log, its console's sign-ins and the
//! credentials `uplink gateway token …` manages, behind one seam of three small traits (`seam`).
//!
//! - [`Store`]: what the hub task needs: what was kept, once at start ([`Kept`]), and [`Store::commit`],
//!   which writes a batch of [`Change`]s atomically and says where the audit log's head now is. The hub
//!   task holds every frame, reply and event a batch produced until that batch is committed, so a decision
//!   is on disk before it reaches a sled or a person (group commit: one write per batch of inputs, however
//!   many decisions it holds).
//! - [`AuditReader`]: reading the log (`GET /api/audit`, `uplink audit`) beside the writer.
//! - [`CredentialStore`]: the credentials, read and written beside a running gateway.
//! - [`audit`]: the records, their canonical text and the hash chain that links them, its checkpoints, and
//!   the check of it.
//! - `sqlite` (the `sqlite` feature): the embedded store, one SQLite file in WAL mode.
//! - `postgres` (the `postgres` feature): the same on a PostgreSQL database (`--store postgres://…`).
//! - [`memory`]: a store in this process's memory, for embedders and tests.
//!
//! Every backend passes the same conformance suite (`uplink-tokio/tests/store_conformance.rs`); another
//! database (for several gateway nodes) is one more implementation of the seam.

pub mod audit;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
mod seam;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use audit::{AuditPage, AuditQuery, Checkpoint, Entry, Head, VerifyError, VerifyReport};
pub use memory::MemoryStore;
pub use seam::{
    AuditReader, Change, ClaimAnswer, ClusterStore, CredentialRow, CredentialStore, HeldAt, Kept, Orphan, Peer,
    Renewal, RuleChanges, SessionChanges, Store, StoreError, StoredResumable, StoredRule, StoredSession,
};

//! What the gateway keeps across restarts: its rules and its audit log, behind one small trait.
//!
//! - [`Store`]: what the hub task needs: the rules at start, and [`Store::commit`], which writes a batch of
//!   [`Change`]s atomically. The hub task holds every frame, reply and event a batch produced until that
//!   batch is committed, so a decision is on disk before it reaches a sled or a person (group commit: one
//!   write per batch of inputs, however many decisions it holds).
//! - [`AuditReader`]: reading the log (`GET /api/audit`, `uplink audit`) from its own connection, beside the
//!   writer.
//! - [`audit`]: the records, their canonical text and the hash chain that links them, and the check of it.
//! - `sqlite` (the `sqlite` feature): the embedded store, one SQLite file in WAL mode.
//!
//! The seam itself (the traits, what they carry, their errors) is `seam`; another database (for several
//! gateway nodes) is one more implementation of it.

pub mod audit;
mod seam;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use audit::{AuditPage, AuditQuery, Entry, VerifyError, VerifyReport};
pub use seam::{AuditReader, Change, Store, StoreError, StoredRule};

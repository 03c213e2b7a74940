//! The store's seam: what the gateway keeps ([`Change`], [`StoredRule`]), what it needs of a store
//! ([`Store`], [`AuditReader`]), and how a store fails ([`StoreError`]). Every backend is one implementation
//! of these.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::audit::{AuditPage, AuditQuery, Entry, VerifyError, VerifyReport};

/// A rule as it is kept and shown: the core's [`Rule`](uplink_proto::rules::Rule), with times in Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRule {
    /// Its id.
    pub id: u64,
    /// `allow`, `ask` or `deny`.
    pub effect: String,
    /// The pattern, in Claude Code's rule syntax.
    pub pattern: String,
    /// Project patterns (`*` matches any run); `null`: every project.
    pub projects: Option<Vec<String>>,
    /// The one project it was made for (a person's "always allow"), byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The one sled connection it was made for; such a rule ends with its connection and is not kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<u64>,
    /// When it stops applying, in Unix seconds; `null`: never.
    pub expires: Option<u64>,
    /// Who made it.
    pub author: String,
    /// When, in Unix seconds.
    pub created: u64,
}

/// One thing a [`Store::commit`] writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Append this record to the audit log.
    Record(Entry),
    /// Keep this rule (or replace the one with its id).
    PutRule(StoredRule),
    /// Forget the rule with this id.
    DeleteRule(u64),
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another gateway holds this state directory.
    #[error("{0} is in use by another gateway (its lock is held); stop it first, or use another --state-dir")]
    InUse(String),
    /// The database is locked by another program for longer than the wait.
    #[error("the database {0} is locked by another program")]
    Locked(String),
    /// The database was written by a newer uplink.
    #[error("the database {path} has schema version {found}, newer than this uplink's {supported}: upgrade uplink")]
    Newer {
        /// The file.
        path: String,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The file is not a database, or fails its integrity check.
    #[error("the database {path} is damaged ({what}); it was left as it is: restore it from a backup or move it away")]
    Corrupt {
        /// The file.
        path: String,
        /// What the check said.
        what: String,
    },
    /// Anything else the database said.
    #[error("store: {0}")]
    Database(String),
    /// Reading or creating the state directory.
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
}

/// What the hub task needs from a store. Calls come from one thread, in order.
pub trait Store: Send + 'static {
    /// The rules kept, at start.
    fn rules(&mut self) -> Result<Vec<StoredRule>, StoreError>;

    /// Writes `changes` atomically and durably (as configured) before returning: all or nothing.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;

    /// A reader of the audit log, usable from any thread beside the writer.
    fn reader(&self) -> Arc<dyn AuditReader>;

    /// True (the default) when a commit may wait for the disk (a flush per commit) or for another machine:
    /// such a store is committed on a thread of its own, so that no runtime worker waits with it. False when
    /// a commit only hands its pages to the operating system, which takes microseconds: the hub task then
    /// commits in place, sparing each batch the two thread wake-ups a hand-off costs (more than the commit).
    fn waits_for_disk(&self) -> bool {
        true
    }
}

/// Reads the audit log.
pub trait AuditReader: Send + Sync + 'static {
    /// One page of records matching `query`, oldest first.
    fn query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;

    /// Checks the whole chain.
    fn verify(&self) -> Result<Result<VerifyReport, VerifyError>, StoreError>;
}

//! A store in memory: [`MemoryStore`], everything the seam asks kept in this process only. For an embedder
//! that keeps nothing on disk but wants the audit log and the console's sign-ins while it runs, for tests
//! (a gateway "restarted" on a clone of it finds what the last one kept), and as the seam's second backend:
//! the conformance suite (`uplink-tokio/tests/store_conformance.rs`) runs on it as on SQLite.
//!
//! Its lock is held only around work in memory (no I/O under it); a commit applies all its changes or, when
//! one is refused, none.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::audit::{
    self, Anchor, AuditPage, AuditQuery, ChainEnds, Columns, GENESIS, Head, Sealed, VerifyError, VerifyReport,
};
use super::seam::{
    AuditReader, Change, CredentialRow, CredentialStore, Kept, Store, StoreError, StoredResumable, StoredRule,
    StoredSession,
};

/// Everything a [`MemoryStore`] keeps.
#[derive(Debug)]
struct Inner {
    records: Vec<(Sealed, Columns)>,
    head: (u64, [u8; 32]),
    rules: BTreeMap<u64, StoredRule>,
    sessions: BTreeMap<[u8; 32], StoredSession>,
    input_key: [u8; 32],
    credentials: Vec<CredentialRow>,
    credentials_version: u64,
    resumables: BTreeMap<String, StoredResumable>,
    ids_until: u64,
}

/// A store in memory. Clones share what it keeps. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store, its secret for the keyed hashes drawn from the operating system's generator.
    pub fn new() -> Result<MemoryStore, StoreError> {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| StoreError::Database("the system's random generator failed".to_owned()))?;
        Ok(MemoryStore::with_input_key(key))
    }

    /// An empty store with `input_key` as its secret for the keyed hashes.
    pub fn with_input_key(input_key: [u8; 32]) -> MemoryStore {
        let inner = Inner {
            records: Vec::new(),
            head: (0, GENESIS),
            rules: BTreeMap::new(),
            sessions: BTreeMap::new(),
            input_key,
            credentials: Vec::new(),
            credentials_version: 0,
            resumables: BTreeMap::new(),
            ids_until: 0,
        };
        MemoryStore { inner: Arc::new(Mutex::new(inner)) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Kept, StoreError> {
        let now_ms = unix_ms(SystemTime::now());
        Ok(self.with(|inner| {
            // Sign-ins that ended while no gateway ran are forgotten now.
            inner.sessions.retain(|_, s| s.expires_ms > now_ms);
            let mut sessions: Vec<StoredSession> = inner.sessions.values().cloned().collect();
            sessions.sort_by_key(|s| s.expires_ms);
            Kept {
                rules: inner.rules.values().cloned().collect(),
                sessions,
                input_key: inner.input_key,
                resumables: inner.resumables.values().cloned().collect(),
                ids_until: inner.ids_until,
            }
        }))
    }

    fn commit(&mut self, changes: &[Change]) -> Result<Head, StoreError> {
        Ok(self.with(|inner| {
            for change in changes {
                match change {
                    Change::Record(entry) => {
                        let sealed = audit::seal(inner.head.0 + 1, inner.head.1, entry);
                        inner.head = (sealed.seq, sealed.hash);
                        inner.records.push((sealed, Columns::of(entry)));
                    }
                    // A connection's own rule ends with the connection: there is nothing to keep.
                    Change::PutRule(rule) if rule.connection.is_some() => {}
                    Change::PutRule(rule) => {
                        inner.rules.insert(rule.id, rule.clone());
                    }
                    Change::DeleteRule(id) => {
                        inner.rules.remove(id);
                    }
                    Change::PutSession(session) => {
                        inner.sessions.insert(session.key, session.clone());
                    }
                    Change::DeleteSession(key) => {
                        inner.sessions.remove(key);
                    }
                    Change::PutResumable(r) => {
                        inner.resumables.insert(r.id.clone(), r.clone());
                    }
                    Change::DeleteResumable(id) => {
                        inner.resumables.remove(id);
                    }
                    Change::ReserveIds(until) => inner.ids_until = inner.ids_until.max(*until),
                    Change::EndClaim { .. } | Change::MoveResumables { .. } => {}
                }
            }
            Head { chain: 0, seq: inner.head.0, hash: inner.head.1 }
        }))
    }

    fn reader(&self) -> Arc<dyn AuditReader> {
        Arc::new(self.clone())
    }

    fn credentials(&self) -> Option<Arc<dyn CredentialStore>> {
        Some(Arc::new(self.clone()))
    }

    /// A commit is a few writes to memory.
    fn waits_for_disk(&self) -> bool {
        false
    }
}

impl AuditReader for MemoryStore {
    fn query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let size = query.page_size() as usize;
        let matches = |(sealed, columns): &&(Sealed, Columns)| {
            sealed.seq > query.after.unwrap_or(0)
                && query.project.as_ref().is_none_or(|p| columns.project.as_ref() == Some(p))
                && query.tool.as_ref().is_none_or(|t| columns.tool.as_ref() == Some(t))
                && query.outcome.as_ref().is_none_or(|o| columns.outcome.as_ref() == Some(o))
                && query.since.is_none_or(|since| columns.at_ms >= since)
                && query.until.is_none_or(|until| columns.at_ms < until)
        };
        self.with(|inner| {
            let matching = inner.records.iter().filter(matches).map(|(sealed, _)| Ok((sealed.seq, sealed.clone())));
            AuditPage::gather(matching, size)
        })
    }

    fn verify_with(&self, checkpoints: &[Head]) -> Result<Result<VerifyReport, VerifyError>, StoreError> {
        Ok(self.with(|inner| {
            let head = (inner.head.0 > 0).then_some(inner.head);
            let ends = [ChainEnds { chain: 0, anchor: Anchor::default(), head }];
            audit::verify_chains(&ends, inner.records.iter().cloned(), &[], checkpoints)
        }))
    }

    fn input_key(&self) -> Result<[u8; 32], StoreError> {
        Ok(self.with(|inner| inner.input_key))
    }
}

impl CredentialStore for MemoryStore {
    fn read(&self) -> Result<(Vec<CredentialRow>, u64), StoreError> {
        Ok(self.with(|inner| (inner.credentials.clone(), inner.credentials_version)))
    }

    fn version(&self) -> Result<u64, StoreError> {
        Ok(self.with(|inner| inner.credentials_version))
    }

    fn write(&self, rows: &[CredentialRow]) -> Result<(), StoreError> {
        self.with(|inner| {
            inner.credentials = rows.to_vec();
            inner.credentials_version += 1;
        });
        Ok(())
    }
}

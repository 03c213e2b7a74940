//! The audit log's records and the hash chain that links them.
//!
//! Each record is a JSON object written in one canonical form ([`canonical`]: keys sorted, no spaces), and
//! sealed: `hash = SHA-256(prev ‖ text)`, where `prev` is the hash of the record before it (32 zero bytes
//! before the first). The store keeps the hash of the last record (the *head*) beside the log, and, once
//! old records are pruned, the place where the log now starts (the *anchor*). [`verify`] walks the log and
//! finds any record changed, removed, inserted or reordered, and a log cut short of its head.
//!
//! What the chain cannot show: someone able to rewrite the whole file can rewrite the whole chain and its
//! head. `uplink audit verify` prints the head; keep it elsewhere (a ticket, a log shipper) to pin the log
//! up to that point.

mod canonical;
mod chain;
mod citations;
mod query;
mod record;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_chains;

pub use canonical::{canonical, canonical_json, hex, sha256_hex};
pub use chain::{Anchor, ChainReport, Checkpoint, Columns, Head, VerifyError, VerifyReport, verify};
pub use citations::{CITE, ChainEnds, Citation, citations_in, verify_chains};
pub use query::{AuditPage, AuditQuery, MAX_PAGE_BYTES};
pub use record::{Entry, GENESIS, Sealed, ToolInput, chain_hash, input_hmac, seal, seal_in};

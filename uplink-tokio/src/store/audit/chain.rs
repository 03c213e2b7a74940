//! The chain's check: a log's records walked from where it starts ([`Anchor`]) to its head, with the columns
//! they are searched by ([`Columns`]); [`verify`] says where it breaks ([`VerifyError`]) or that it holds
//! ([`VerifyReport`]).

use serde::Serialize;

use super::canonical::hex;
use super::record::{Entry, GENESIS, Sealed, chain_hash};

/// Where a log starts: the record before its first (seq 0 and [`GENESIS`] for a log never pruned).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The seq of the last record pruned (0: none).
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

impl Default for Anchor {
    fn default() -> Anchor {
        Anchor { seq: 0, hash: GENESIS }
    }
}

/// A whole chain that checks out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// The first one's seq (the one after the anchor).
    pub first_seq: u64,
    /// The last one's seq.
    pub last_seq: u64,
    /// The last one's hash, in hex: keep it elsewhere to pin the log up to here.
    pub head: String,
}

/// Where the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A record is missing before this seq (or one was inserted).
    #[error("record {found} follows record {after}: records are missing or were inserted")]
    Gap {
        /// The seq before.
        after: u64,
        /// The seq found.
        found: u64,
    },
    /// This record's text or its link to the one before was changed.
    #[error("record {0} was changed: its hash does not match its text and the record before it")]
    Changed(u64),
    /// This record's searchable columns differ from its sealed text.
    #[error("record {0}'s columns differ from its sealed text")]
    Columns(u64),
    /// The log ends before its recorded head.
    #[error("the log ends at record {last}, but its head is record {head}: it was cut short")]
    Truncated {
        /// The last record found.
        last: u64,
        /// The head recorded.
        head: u64,
    },
    /// The head recorded beside the log does not match its last record.
    #[error("the head recorded beside the log does not match record {0}")]
    HeadMismatch(u64),
}

/// Checks `records` (in seq order) against the log's `anchor` and `head`.
pub fn verify(
    anchor: Anchor,
    records: impl IntoIterator<Item = (Sealed, Columns)>,
    head: Option<(u64, [u8; 32])>,
) -> Result<VerifyReport, VerifyError> {
    let (mut last_seq, mut last_hash, mut count) = (anchor.seq, anchor.hash, 0u64);
    for (record, columns) in records {
        if record.seq != last_seq + 1 {
            return Err(VerifyError::Gap { after: last_seq, found: record.seq });
        }
        if record.prev != last_hash || chain_hash(&record.prev, &record.text) != record.hash {
            return Err(VerifyError::Changed(record.seq));
        }
        if !columns.agree(&record) {
            return Err(VerifyError::Columns(record.seq));
        }
        (last_seq, last_hash, count) = (record.seq, record.hash, count + 1);
    }
    match head {
        Some((seq, _)) if seq > last_seq => return Err(VerifyError::Truncated { last: last_seq, head: seq }),
        Some((seq, hash)) if seq != last_seq || hash != last_hash => return Err(VerifyError::HeadMismatch(seq)),
        _ => {}
    }
    Ok(VerifyReport { records: count, first_seq: anchor.seq + 1, last_seq, head: hex(&last_hash) })
}

/// The columns a record is searched by, as kept beside its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Columns {
    /// `at_ms`.
    pub at_ms: u64,
    /// `kind`.
    pub kind: String,
    /// `project`.
    pub project: Option<String>,
    /// `tool`.
    pub tool: Option<String>,
    /// `outcome`.
    pub outcome: Option<String>,
}

impl Columns {
    /// The columns of `entry`.
    pub fn of(entry: &Entry) -> Columns {
        Columns {
            at_ms: entry.at_ms,
            kind: entry.kind.to_owned(),
            project: entry.project.clone(),
            tool: entry.tool.clone(),
            outcome: entry.outcome.clone(),
        }
    }

    fn agree(&self, record: &Sealed) -> bool {
        // Only the searchable fields are read; the rest (a tool input, however deep) is skipped unparsed.
        #[derive(serde::Deserialize)]
        struct Searched {
            at_ms: Option<u64>,
            kind: Option<String>,
            project: Option<String>,
            tool: Option<String>,
            outcome: Option<String>,
        }
        let Ok(r) = serde_json::from_str::<Searched>(&record.text) else { return false };
        r.at_ms == Some(self.at_ms)
            && r.kind.as_deref() == Some(self.kind.as_str())
            && r.project == self.project
            && r.tool == self.tool
            && r.outcome == self.outcome
    }
}

//! The chain's check: a log's records walked from where it starts ([`Anchor`]) to its head, with the columns
//! they are searched by ([`Columns`]); [`verify`] says where it breaks ([`VerifyError`]) or that it holds
//! ([`VerifyReport`]).
//!
//! What the chain alone cannot show: someone able to rewrite the whole log can rewrite the whole chain and
//! its head. So the gateway hands out checkpoints ([`Checkpoint`]: the head at a moment) to places it cannot
//! rewrite (its log, a file on another volume, the webhooks); a check given them finds a log rewritten after
//! any of them, since the records they pin no longer have their hashes, or are gone.

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

/// Where the chain ends: its last record's place and hash (`0` and [`GENESIS`] for a log with none).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Head {
    /// The last record's seq.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

/// A head as it is handed out to be kept elsewhere: one line of JSON, `{"at_ms", "seq", "head"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// When it was taken, in Unix milliseconds.
    pub at_ms: u64,
    /// The record it pins.
    pub seq: u64,
    /// That record's hash, in hex.
    pub head: String,
}

impl Checkpoint {
    /// The checkpoint of `head`, taken at `at_ms`.
    pub fn of(head: Head, at_ms: u64) -> Checkpoint {
        Checkpoint { at_ms, seq: head.seq, head: hex(&head.hash) }
    }

    /// The head it pins; `None` when its hash is not 64 hex digits.
    pub fn head(&self) -> Option<Head> {
        let bytes = self.head.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut hash = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let digit = |c: u8| char::from(c).to_digit(16);
            hash[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(Head { seq: self.seq, hash })
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
    /// Checkpoints found in the log with their hashes.
    pub checkpoints: u64,
    /// Checkpoints of records pruned since (not checked: nothing is left to compare them with).
    pub pruned_checkpoints: u64,
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
    /// A checkpoint pinned this record with another hash: the log was rewritten since.
    #[error("a checkpoint pinned record {0} with another hash: the log was rewritten after it")]
    CheckpointMismatch(u64),
    /// A checkpoint pinned a record beyond the log's end: it was cut short, or rewritten shorter.
    #[error("a checkpoint pinned record {seq}, but the log ends at record {last}: it was cut short or rewritten")]
    CheckpointBeyond {
        /// The record the checkpoint pinned.
        seq: u64,
        /// The last record found.
        last: u64,
    },
    /// Every checkpoint given pins a record pruned since: none can be checked.
    #[error("every checkpoint given pins a record before the log's start (record {first}): none can be checked")]
    CheckpointsPruned {
        /// The first record kept.
        first: u64,
    },
}

/// Checks `records` (in seq order) against the log's `anchor` and `head`, and against `checkpoints`: each must
/// pin a record of the log with its hash (the anchor's counts), unless that record was pruned since; a log
/// of which every checkpoint was pruned fails, as nothing given could be checked.
pub fn verify(
    anchor: Anchor,
    records: impl IntoIterator<Item = (Sealed, Columns)>,
    head: Option<(u64, [u8; 32])>,
    checkpoints: &[Head],
) -> Result<VerifyReport, VerifyError> {
    let pinned: std::collections::BTreeMap<u64, [u8; 32]> = checkpoints.iter().map(|c| (c.seq, c.hash)).collect();
    let pin = |seq: u64, hash: &[u8; 32]| match pinned.get(&seq) {
        Some(want) if want != hash => Err(VerifyError::CheckpointMismatch(seq)),
        Some(_) => Ok(1u64),
        None => Ok(0),
    };
    let pruned = pinned.range(..anchor.seq).count() as u64;
    let mut checked = if anchor.seq > 0 { pin(anchor.seq, &anchor.hash)? } else { 0 };
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
        checked += pin(record.seq, &record.hash)?;
        (last_seq, last_hash, count) = (record.seq, record.hash, count + 1);
    }
    match head {
        Some((seq, _)) if seq > last_seq => return Err(VerifyError::Truncated { last: last_seq, head: seq }),
        Some((seq, hash)) if seq != last_seq || hash != last_hash => return Err(VerifyError::HeadMismatch(seq)),
        _ => {}
    }
    if let Some((&seq, _)) = pinned.range(last_seq + 1..).next() {
        return Err(VerifyError::CheckpointBeyond { seq, last: last_seq });
    }
    if !pinned.is_empty() && checked == 0 {
        return Err(VerifyError::CheckpointsPruned { first: anchor.seq + 1 });
    }
    Ok(VerifyReport {
        records: count,
        first_seq: anchor.seq + 1,
        last_seq,
        head: hex(&last_hash),
        checkpoints: checked,
        pruned_checkpoints: pruned,
    })
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

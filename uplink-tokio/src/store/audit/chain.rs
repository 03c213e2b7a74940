//! The chain's check: a log's records walked from where it starts ([`Anchor`]) to its head, with the columns
//! they are searched by ([`Columns`]); [`verify`] says where it breaks ([`VerifyError`]) or that it holds
//! ([`VerifyReport`]).
//!
//! What the chain alone cannot show: someone able to rewrite the whole log can rewrite the whole chain and
//! its head. So the gateway hands out checkpoints ([`Checkpoint`]: the head at a moment) to places it cannot
//! rewrite (its log, a file on another volume, the webhooks); a check given them finds a log rewritten after
//! any of them, since the records they pin no longer have their hashes, or are gone.

use std::collections::BTreeMap;

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

/// Where a chain ends: its last record's place and hash (`0` and [`GENESIS`] for a chain with none).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Head {
    /// The chain (0: the first, the only one of a log with one writer).
    pub chain: u64,
    /// The last record's seq.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

/// A head as it is handed out to be kept elsewhere: one line of JSON, `{"at_ms", "seq", "head"}`, and
/// `"chain"` for any chain but the first.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// When it was taken, in Unix milliseconds.
    pub at_ms: u64,
    /// The chain (absent: the first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chain: u64,
    /// The record it pins.
    pub seq: u64,
    /// That record's hash, in hex.
    pub head: String,
}

impl Checkpoint {
    /// The checkpoint of `head`, taken at `at_ms`.
    pub fn of(head: Head, at_ms: u64) -> Checkpoint {
        Checkpoint { at_ms, chain: head.chain, seq: head.seq, head: hex(&head.hash) }
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
        Some(Head { chain: self.chain, seq: self.seq, hash })
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A whole log that checks out: every chain, and every citation of one chain in another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked, in every chain.
    pub records: u64,
    /// The first chain's first record's seq (the one after its anchor).
    pub first_seq: u64,
    /// The first chain's last record's seq.
    pub last_seq: u64,
    /// The first chain's last record's hash, in hex: keep it elsewhere to pin the log up to here.
    pub head: String,
    /// Checkpoints found in the log with their hashes.
    pub checkpoints: u64,
    /// Checkpoints of records pruned since (not checked: nothing is left to compare them with).
    pub pruned_checkpoints: u64,
    /// Each chain, in order (one for a log with one writer).
    pub chains: Vec<ChainReport>,
    /// Citations of one chain's head in another's records that were found to hold (those of records
    /// pruned since are not counted).
    pub citations: u64,
    /// The log's digest: SHA-256 over each chain's `chain seq head\n` (in the chains' order), in hex. Two
    /// checks of a log nothing was added to print the same digest.
    pub digest: String,
}

/// One chain that checks out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// The chain.
    pub chain: u64,
    /// Records checked.
    pub records: u64,
    /// The first one's seq (the one after the anchor).
    pub first_seq: u64,
    /// The last one's seq.
    pub last_seq: u64,
    /// The last one's hash, in hex.
    pub head: String,
}

/// Where the log breaks.
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
    /// What went wrong, in a chain other than the first.
    #[error("chain {chain}: {error}")]
    InChain {
        /// The chain.
        chain: u64,
        /// What went wrong there.
        error: Box<VerifyError>,
    },
    /// Records of a chain the log does not list (inserted), or a checkpoint or citation of one it no longer
    /// lists (the whole chain was dropped).
    #[error("chain {chain} is not among the log's chains, but {by} names it: a chain was dropped or inserted")]
    NoSuchChain {
        /// The chain.
        chain: u64,
        /// What names it: `records`, `a checkpoint`, or the citing record.
        by: String,
    },
    /// A record of one chain cited another chain's head with another hash than that chain's record has
    /// now: that chain was rewritten after the citation.
    #[error(
        "record {by_seq} of chain {by_chain} cited record {seq} of chain {chain} with another hash: chain {chain} was rewritten after it"
    )]
    CitationMismatch {
        /// The chain cited.
        chain: u64,
        /// The record cited.
        seq: u64,
        /// The citing record's chain.
        by_chain: u64,
        /// The citing record.
        by_seq: u64,
    },
    /// A record cited another chain's record beyond where that chain now ends.
    #[error(
        "record {by_seq} of chain {by_chain} cited record {seq} of chain {chain}, which ends at record {last}: chain {chain} was cut short"
    )]
    CitationBeyond {
        /// The chain cited.
        chain: u64,
        /// The record cited.
        seq: u64,
        /// Where that chain ends now.
        last: u64,
        /// The citing record's chain.
        by_chain: u64,
        /// The citing record.
        by_seq: u64,
    },
}

/// Checks one chain's `records` (in seq order) against its `anchor` and `head`, and against `checkpoints`:
/// each must pin a record of the log with its hash (the anchor's counts), unless that record was pruned
/// since; a log of which every checkpoint was pruned fails, as nothing given could be checked.
pub fn verify(
    anchor: Anchor,
    records: impl IntoIterator<Item = (Sealed, Columns)>,
    head: Option<(u64, [u8; 32])>,
    checkpoints: &[Head],
) -> Result<VerifyReport, VerifyError> {
    let mut walk = Walk::new(0, anchor, checkpoints.iter().map(|c| (c.seq, c.hash)).collect(), BTreeMap::new())?;
    for (record, columns) in records {
        walk.step(&record, &columns)?;
    }
    let (report, _, checked, pruned) = walk.end(head)?;
    Ok(VerifyReport::of(vec![report], checked, pruned, 0))
}

pub(super) fn in_chain(chain: u64, error: VerifyError) -> VerifyError {
    if chain == 0 { error } else { VerifyError::InChain { chain, error: Box::new(error) } }
}

impl VerifyReport {
    pub(super) fn of(
        chains: Vec<ChainReport>,
        checkpoints: u64,
        pruned_checkpoints: u64,
        citations: u64,
    ) -> VerifyReport {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for c in &chains {
            digest.update(format!("{} {} {}\n", c.chain, c.last_seq, c.head).as_bytes());
        }
        let (first_seq, last_seq, head) =
            chains.first().map_or((1, 0, hex(&GENESIS)), |c| (c.first_seq, c.last_seq, c.head.clone()));
        VerifyReport {
            records: chains.iter().map(|c| c.records).sum(),
            first_seq,
            last_seq,
            head,
            checkpoints,
            pruned_checkpoints,
            citations,
            digest: hex(digest.finish().as_ref()),
            chains,
        }
    }
}

/// One chain walked from its anchor: where it has got to, the checkpoints that pin it, and the hashes of
/// its records that other chains cite.
pub(super) struct Walk {
    chain: u64,
    anchor: Anchor,
    pinned: BTreeMap<u64, [u8; 32]>,
    checked: u64,
    last_seq: u64,
    last_hash: [u8; 32],
    count: u64,
    found: BTreeMap<u64, Option<[u8; 32]>>,
}

impl Walk {
    pub(super) fn new(
        chain: u64,
        anchor: Anchor,
        pinned: BTreeMap<u64, [u8; 32]>,
        mut found: BTreeMap<u64, Option<[u8; 32]>>,
    ) -> Result<Walk, VerifyError> {
        if anchor.seq > 0
            && let Some(f) = found.get_mut(&anchor.seq)
        {
            *f = Some(anchor.hash);
        }
        let mut walk =
            Walk { chain, anchor, pinned, checked: 0, last_seq: anchor.seq, last_hash: anchor.hash, count: 0, found };
        if anchor.seq > 0 {
            walk.checked = walk.pin(anchor.seq, &anchor.hash)?;
        }
        Ok(walk)
    }

    fn pin(&self, seq: u64, hash: &[u8; 32]) -> Result<u64, VerifyError> {
        match self.pinned.get(&seq) {
            Some(want) if want != hash => Err(VerifyError::CheckpointMismatch(seq)),
            Some(_) => Ok(1),
            None => Ok(0),
        }
    }

    pub(super) fn step(&mut self, record: &Sealed, columns: &Columns) -> Result<(), VerifyError> {
        if record.seq != self.last_seq + 1 {
            return Err(VerifyError::Gap { after: self.last_seq, found: record.seq });
        }
        if record.prev != self.last_hash || chain_hash(&record.prev, &record.text) != record.hash {
            return Err(VerifyError::Changed(record.seq));
        }
        if !columns.agree(record) {
            return Err(VerifyError::Columns(record.seq));
        }
        self.checked += self.pin(record.seq, &record.hash)?;
        if let Some(f) = self.found.get_mut(&record.seq) {
            *f = Some(record.hash);
        }
        (self.last_seq, self.last_hash, self.count) = (record.seq, record.hash, self.count + 1);
        Ok(())
    }

    /// The chain's report, the hashes of its records cited, and its checkpoints checked and pruned.
    #[allow(clippy::type_complexity)]
    pub(super) fn end(
        self,
        head: Option<(u64, [u8; 32])>,
    ) -> Result<(ChainReport, BTreeMap<u64, Option<[u8; 32]>>, u64, u64), VerifyError> {
        match head {
            Some((seq, _)) if seq > self.last_seq => {
                return Err(VerifyError::Truncated { last: self.last_seq, head: seq });
            }
            Some((seq, hash)) if seq != self.last_seq || hash != self.last_hash => {
                return Err(VerifyError::HeadMismatch(seq));
            }
            _ => {}
        }
        if let Some((&seq, _)) = self.pinned.range(self.last_seq + 1..).next() {
            return Err(VerifyError::CheckpointBeyond { seq, last: self.last_seq });
        }
        if !self.pinned.is_empty() && self.checked == 0 {
            return Err(VerifyError::CheckpointsPruned { first: self.anchor.seq + 1 });
        }
        let pruned = self.pinned.range(..self.anchor.seq).count() as u64;
        let report = ChainReport {
            chain: self.chain,
            records: self.count,
            first_seq: self.anchor.seq + 1,
            last_seq: self.last_seq,
            head: hex(&self.last_hash),
        };
        Ok((report, self.found, self.checked, pruned))
    }
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
            #[serde(default)]
            chain: u64,
            at_ms: Option<u64>,
            kind: Option<String>,
            project: Option<String>,
            tool: Option<String>,
            outcome: Option<String>,
        }
        let Ok(r) = serde_json::from_str::<Searched>(&record.text) else { return false };
        r.chain == record.chain
            && r.at_ms == Some(self.at_ms)
            && r.kind.as_deref() == Some(self.kind.as_str())
            && r.project == self.project
            && r.tool == self.tool
            && r.outcome == self.outcome
    }
}

//! A log several writers append to at once, one chain each: where each chain starts and ends
//! ([`ChainEnds`]), the citations of one chain's head in another's records ([`Citation`], in `cite`
//! records), and the check of the whole ([`verify_chains`]), which finds a chain dropped, cut short or
//! rewritten after another cited it.

use std::collections::{BTreeMap, BTreeSet};

use super::chain::{Anchor, Checkpoint, Columns, Head, VerifyError, VerifyReport, Walk, in_chain};
use super::record::Sealed;

/// Where one chain of a log starts and ends, as recorded beside its records.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChainEnds {
    /// The chain.
    pub chain: u64,
    /// Where it starts.
    pub anchor: Anchor,
    /// Where it ends (`None`: nothing recorded).
    pub head: Option<(u64, [u8; 32])>,
}

/// A citation of one chain's head in a record of another: `{"chain", "seq", "hash"}` in a `cite` record's
/// `cites`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Citation {
    /// The chain cited.
    pub chain: u64,
    /// Its record.
    pub seq: u64,
    /// That record's hash, in hex.
    pub hash: String,
}

/// The kind of a record that cites other chains' heads.
pub const CITE: &str = "cite";

/// The citations in `record`, when it is a `cite` record (`None` when its `cites` do not read).
pub fn citations_in(record: &Sealed) -> Option<Vec<Citation>> {
    #[derive(serde::Deserialize)]
    struct Cites {
        kind: String,
        #[serde(default)]
        cites: Vec<Citation>,
    }
    let cites: Cites = serde_json::from_str(&record.text).ok()?;
    Some(if cites.kind == CITE { cites.cites } else { Vec::new() })
}

/// Checks a log of several chains: each chain as [`verify`](super::verify) checks one, from `records` (every chain's in
/// (chain, seq) order), against its [`ChainEnds`] (in chain order) and the `checkpoints` of it; and every
/// citation in `cites` (every `cite` record of the log, read beside the records) against the chain it
/// cites: the record cited must still have the hash cited, unless it was pruned since; a chain cited must
/// still be there, and no shorter than the citation. A chain dropped whole, or rewritten, after another
/// cited it is found this way; one that nothing cited since its last record is pinned only by a digest or
/// checkpoint kept elsewhere.
pub fn verify_chains(
    ends: &[ChainEnds],
    records: impl IntoIterator<Item = (Sealed, Columns)>,
    cites: &[Sealed],
    checkpoints: &[Head],
) -> Result<VerifyReport, VerifyError> {
    let listed: BTreeMap<u64, &ChainEnds> = ends.iter().map(|e| (e.chain, e)).collect();
    if let Some(c) = checkpoints.iter().find(|c| !listed.contains_key(&c.chain)) {
        return Err(VerifyError::NoSuchChain { chain: c.chain, by: "a checkpoint".to_owned() });
    }
    // Every citation; for each chain, the records of it that are cited (their hashes kept as it is walked).
    let mut citations = Vec::new();
    let mut cite_records = BTreeSet::new();
    let mut wanted: BTreeMap<u64, BTreeMap<u64, Option<[u8; 32]>>> = BTreeMap::new();
    for record in cites {
        let list = citations_in(record).ok_or_else(|| in_chain(record.chain, VerifyError::Columns(record.seq)))?;
        cite_records.insert((record.chain, record.seq, record.hash));
        for c in list {
            wanted.entry(c.chain).or_default().insert(c.seq, None);
            citations.push((record.chain, record.seq, c));
        }
    }
    let mut reports = Vec::with_capacity(ends.len());
    let (mut checked, mut pruned) = (0u64, 0u64);
    let mut records = records.into_iter().peekable();
    for end in ends {
        let pins = checkpoints.iter().filter(|c| c.chain == end.chain).map(|c| (c.seq, c.hash)).collect();
        let cited = wanted.remove(&end.chain).unwrap_or_default();
        let mut walk = Walk::new(end.chain, end.anchor, pins, cited).map_err(|e| in_chain(end.chain, e))?;
        while let Some((record, columns)) = records.next_if(|(r, _)| r.chain <= end.chain) {
            if record.chain != end.chain {
                return Err(VerifyError::NoSuchChain { chain: record.chain, by: "records".to_owned() });
            }
            walk.step(&record, &columns).map_err(|e| in_chain(end.chain, e))?;
            // A `cite` record read beside the log that is not this one: the two reads disagree.
            if columns.kind == CITE && !cite_records.remove(&(record.chain, record.seq, record.hash)) {
                return Err(in_chain(end.chain, VerifyError::Columns(record.seq)));
            }
        }
        let (report, found, c, p) = walk.end(end.head).map_err(|e| in_chain(end.chain, e))?;
        (checked, pruned) = (checked + c, pruned + p);
        wanted.insert(end.chain, found);
        reports.push(report);
    }
    if let Some((record, _)) = records.next() {
        return Err(VerifyError::NoSuchChain { chain: record.chain, by: "records".to_owned() });
    }
    if let Some(&(chain, seq, _)) = cite_records.iter().next() {
        // Read as a `cite` record beside the log, but not met in it.
        return Err(in_chain(chain, VerifyError::Columns(seq)));
    }
    let mut held = 0u64;
    for (by_chain, by_seq, c) in citations {
        let (Some(end), Some(report)) = (listed.get(&c.chain), reports.iter().find(|r| r.chain == c.chain)) else {
            return Err(VerifyError::NoSuchChain {
                chain: c.chain,
                by: format!("record {by_seq} of chain {by_chain}"),
            });
        };
        if c.seq > report.last_seq {
            return Err(VerifyError::CitationBeyond {
                chain: c.chain,
                seq: c.seq,
                last: report.last_seq,
                by_chain,
                by_seq,
            });
        }
        if c.seq == 0 || c.seq < end.anchor.seq {
            continue;
        }
        let cited = Checkpoint { at_ms: 0, chain: c.chain, seq: c.seq, head: c.hash }.head().map(|h| h.hash);
        let found = wanted.get(&c.chain).and_then(|f| f.get(&c.seq)).copied().flatten();
        if cited.is_none() || cited != found {
            return Err(VerifyError::CitationMismatch { chain: c.chain, seq: c.seq, by_chain, by_seq });
        }
        held += 1;
    }
    Ok(VerifyReport::of(reports, checked, pruned, held))
}

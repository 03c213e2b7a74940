//! A log of several chains, tested: citations between them, and what their check finds.
#![allow(clippy::unwrap_used)]

use super::*;

use serde_json::{Value, json};

/// A log of several chains as writers append to them: each chain's records, and a `cite` record of the
/// others' heads where asked.
struct Chains {
    records: Vec<Vec<(Sealed, Columns)>>,
}

impl Chains {
    fn new(n: usize) -> Chains {
        Chains { records: vec![Vec::new(); n] }
    }

    fn head(&self, chain: usize) -> (u64, [u8; 32]) {
        self.records[chain].last().map_or((0, GENESIS), |(s, _)| (s.seq, s.hash))
    }

    fn append(&mut self, chain: usize, entry: Entry) {
        let (seq, prev) = self.head(chain);
        let sealed = seal_in(chain as u64, seq + 1, prev, &entry);
        self.records[chain].push((sealed, Columns::of(&entry)));
    }

    fn request(&mut self, chain: usize) {
        let n = self.records[chain].len();
        self.append(chain, Entry::new(1000 + n as u64, "request").with("n", n));
    }

    /// `chain` cites every other chain's head.
    fn cite(&mut self, chain: usize) {
        let cites: Vec<Value> = (0..self.records.len())
            .filter(|&c| c != chain && self.head(c).0 > 0)
            .map(|c| json!({"chain": c, "seq": self.head(c).0, "hash": hex(&self.head(c).1)}))
            .collect();
        self.append(chain, Entry::new(2000, CITE).with("cites", cites));
    }

    fn ends(&self) -> Vec<ChainEnds> {
        (0..self.records.len())
            .map(|c| ChainEnds { chain: c as u64, anchor: Anchor::default(), head: Some(self.head(c)) })
            .collect()
    }

    fn all(&self) -> Vec<(Sealed, Columns)> {
        self.records.iter().flatten().cloned().collect()
    }

    fn cites(&self) -> Vec<Sealed> {
        self.all().into_iter().filter(|(_, c)| c.kind == CITE).map(|(s, _)| s).collect()
    }

    fn verify(&self) -> Result<VerifyReport, VerifyError> {
        verify_chains(&self.ends(), self.all(), &self.cites(), &[])
    }

    /// Rewrites record `seq` of `chain` and reseals the rest of that chain after it.
    fn rewrite(&mut self, chain: usize, seq: u64) {
        let records = &mut self.records[chain];
        let mut prev = records[seq as usize - 2].0.hash;
        for (sealed, _) in &mut records[seq as usize - 1..] {
            if sealed.seq == seq {
                sealed.text = sealed.text.replace("\"kind\"", "\"extra\":1,\"kind\"");
            }
            sealed.prev = prev;
            sealed.hash = chain_hash(&prev, &sealed.text);
            prev = sealed.hash;
        }
    }
}

/// Two writers, each citing the other now and then.
fn two_chains() -> Chains {
    let mut log = Chains::new(2);
    for _ in 0..3 {
        log.request(0);
    }
    log.request(1);
    log.cite(1);
    log.request(0);
    log.cite(0);
    log.request(1);
    log
}

#[test]
fn chains_written_side_by_side_verify_with_their_citations_and_one_digest() {
    let log = two_chains();
    let report = log.verify().expect("intact");
    assert_eq!((report.records, report.chains.len(), report.citations), (8, 2, 2));
    assert_eq!((report.chains[1].first_seq, report.chains[1].last_seq), (1, 3));
    // The digest is of every chain's head: the same log, the same digest; one more record, another.
    assert_eq!(log.verify().unwrap().digest, report.digest);
    let mut more = two_chains();
    more.request(1);
    assert_ne!(more.verify().unwrap().digest, report.digest);
    // A record of chain 1 names its chain in its sealed text; one of chain 0 does not (as with one writer).
    assert!(log.records[1][0].0.text.contains("\"chain\":1"));
    assert!(!log.records[0][0].0.text.contains("\"chain\""));
}

#[test]
fn a_chain_rewritten_dropped_or_cut_short_after_another_cited_it_is_found() {
    // Chain 1 cited chain 0 at seq 3; someone rewrites chain 0 from record 2 on, reseals it, head and all:
    // chain 0 alone holds together, the citation does not.
    let mut log = two_chains();
    log.rewrite(0, 2);
    let mut ends = log.ends();
    ends[0].head = Some(log.head(0));
    assert!(verify(Anchor::default(), log.records[0].clone(), Some(log.head(0)), &[]).is_ok());
    assert_eq!(
        verify_chains(&ends, log.all(), &log.cites(), &[]),
        Err(VerifyError::CitationMismatch { chain: 0, seq: 3, by_chain: 1, by_seq: 2 })
    );
    // Chain 1 dropped whole, its records and its row: chain 0's citation of it names it.
    let log = two_chains();
    let ends = &log.ends()[..1];
    let only_0: Vec<_> = log.records[0].clone();
    let cites: Vec<_> = log.cites().into_iter().filter(|s| s.chain == 0).collect();
    assert_eq!(
        verify_chains(ends, only_0, &cites, &[]),
        Err(VerifyError::NoSuchChain { chain: 1, by: "record 5 of chain 0".into() })
    );
    // Chain 1 cut short before what chain 0 cited of it (its last record and head taken back).
    let mut log = two_chains();
    log.records[1].truncate(1);
    assert_eq!(log.verify(), Err(VerifyError::CitationBeyond { chain: 1, seq: 2, last: 1, by_chain: 0, by_seq: 5 }));
}

#[test]
fn records_out_of_their_chain_or_a_cite_hidden_from_the_check_are_found() {
    let log = two_chains();
    // Records of a chain the log does not list.
    let ends = &log.ends()[..1];
    let cites: Vec<_> = log.cites().into_iter().filter(|s| s.chain == 0).collect();
    assert_eq!(
        verify_chains(ends, log.all(), &cites, &[]),
        Err(VerifyError::NoSuchChain { chain: 1, by: "records".into() })
    );
    // A record moved to another chain's row keeps its sealed chain: its text and its row disagree.
    let mut moved = two_chains();
    moved.records[1][0].0.chain = 0;
    let mut rows: Vec<_> = moved.records[0].clone();
    rows.push(moved.records[1][0].clone());
    let (seq, prev) = moved.head(0);
    rows.last_mut().unwrap().0.seq = seq + 1;
    rows.last_mut().unwrap().0.prev = prev;
    let text = rows.last().unwrap().0.text.clone();
    rows.last_mut().unwrap().0.hash = chain_hash(&prev, &text);
    let ends = [ChainEnds { chain: 0, anchor: Anchor::default(), head: None }];
    let cites: Vec<_> = moved.cites().into_iter().filter(|s| s.chain == 0).collect();
    assert_eq!(verify_chains(&ends, rows, &cites, &[]), Err(VerifyError::Columns(seq + 1)));
    // A `cite` record whose kind column was changed, so that the check's read of citations misses it.
    let mut hidden = two_chains();
    hidden.records[1][1].1.kind = "request".into();
    let cites: Vec<_> = hidden.cites();
    assert_eq!(
        verify_chains(&hidden.ends(), hidden.all(), &cites, &[]),
        Err(VerifyError::InChain { chain: 1, error: Box::new(VerifyError::Columns(2)) })
    );
    // A checkpoint of a chain the log does not have.
    let nowhere = Head { chain: 7, seq: 1, hash: GENESIS };
    assert_eq!(
        verify_chains(&log.ends(), log.all(), &log.cites(), &[nowhere]),
        Err(VerifyError::NoSuchChain { chain: 7, by: "a checkpoint".into() })
    );
}

#[test]
fn a_citation_of_records_pruned_since_is_not_checked_and_checkpoints_pin_each_chain() {
    let log = two_chains();
    // Chain 0 pruned up to record 4: chain 1's citation of its record 3 has nothing left to compare with.
    let mut ends = log.ends();
    ends[0].anchor = Anchor { seq: 4, hash: log.records[0][3].0.hash };
    let kept: Vec<_> = log.all().into_iter().filter(|(s, _)| s.chain != 0 || s.seq > 4).collect();
    let report = verify_chains(&ends, kept, &log.cites(), &[]).expect("intact");
    assert_eq!(report.citations, 1, "chain 0's citation of chain 1 still holds");
    // Checkpoints pin the chain they name, not another.
    let pin = Head { chain: 1, seq: 2, hash: log.records[1][1].0.hash };
    assert_eq!(verify_chains(&log.ends(), log.all(), &log.cites(), &[pin]).map(|r| r.checkpoints), Ok(1));
    let wrong = Head { chain: 0, ..pin };
    assert_eq!(verify_chains(&log.ends(), log.all(), &log.cites(), &[wrong]), Err(VerifyError::CheckpointMismatch(2)));
    let line = Checkpoint::of(pin, 5);
    assert_eq!(serde_json::to_value(&line).unwrap()["chain"], 1);
    assert_eq!(line.head(), Some(pin));
    assert!(serde_json::to_value(Checkpoint::of(wrong, 5)).unwrap().get("chain").is_none());
}

//! `uplink audit verify|export|check-input`: the gateway's audit log, read from its state directory directly
//! (beside a running gateway, or none), read-only.
//!
//! `verify` checks the chain, and with `--checkpoints FILE` (the JSON lines the gateway appended to its
//! `--audit-checkpoint-file`, or its webhooks' `audit_checkpoint` bodies, one a line) or `--expect-head
//! SEQ:HASH` also that the log still holds each head handed out: a whole chain rewritten after one no longer
//! does. `check-input` confirms whether a file holds the very input a redacted record was made for (by its
//! HMAC under the store's secret, which only who can read the store holds).
//!
//! Exit codes: 0 the chain is intact (verify), the records were written (export), the input is the one
//! (check-input); 1 the log could not be read; 3 the chain is broken (verify: what and where is printed), or
//! the input is another (check-input); 2 usage.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::store_at::StoreAt;
use crate::gateway::audit_line;
use crate::store::audit::{canonical_json, input_hmac, sha256_hex};
use crate::store::{AuditQuery, AuditReader, Checkpoint, Head};

/// How a permission ends, as the audit log says: a decision's word or a withdrawal's (the core's words;
/// `outcomes_are_the_cores` below keeps the list whole).
const OUTCOMES: [&str; 6] = ["approve", "deny", "always_allow", "cancelled", "deadline", "connection_lost"];

#[derive(Args)]
pub(super) struct AuditArgs {
    #[command(subcommand)]
    action: AuditAction,
    /// The gateway's state directory (where uplink.db is). Default: $XDG_STATE_HOME/uplink, else
    /// ~/.local/state/uplink.
    #[arg(long, global = true, env = "UPLINK_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The gateway's store on a PostgreSQL database (`uplink gateway --store`) instead of the state
    /// directory's.
    #[arg(long, global = true, env = "UPLINK_STORE", hide_env_values = true, value_name = "URL")]
    store: Option<String>,
    /// A PEM file of certificate authorities for the PostgreSQL server's certificate.
    #[arg(long, global = true, value_name = "FILE")]
    store_ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the hash chain from the first record kept to the head; print the head's hash. With checkpoints,
    /// also that the log still holds each head handed out (a log rewritten after one does not).
    Verify {
        /// A file of checkpoints, one JSON object a line ({"seq", "head", …}): the gateway's
        /// --audit-checkpoint-file, or its webhooks' audit_checkpoint bodies.
        #[arg(long, value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// A head kept elsewhere, as SEQ:HASH (the hash in hex, as verify prints it), or CHAIN:SEQ:HASH for
        /// a chain other than the first.
        #[arg(long, value_name = "[CHAIN:]SEQ:HASH", value_parser = expected_head)]
        expect_head: Vec<Head>,
    },
    /// Say whether a file holds the very tool input of the record SEQ (its canonical text is hashed as the
    /// gateway hashed it: SHA-256, or, for a redacted input, HMAC-SHA256 under the store's secret).
    CheckInput {
        /// The record's seq.
        seq: u64,
        /// The record's chain, in a log several gateways write (`verify` lists them).
        #[arg(long, default_value_t = 0)]
        chain: u64,
        /// The file holding the input's JSON text.
        #[arg(long, value_name = "FILE")]
        input_file: PathBuf,
    },
    /// Write the records as JSON lines, oldest first: {"seq", "prev", "hash", "record"}, and "chain" for a
    /// chain other than the first.
    Export {
        /// Only this project's.
        #[arg(long)]
        project: Option<String>,
        /// Only this tool's.
        #[arg(long)]
        tool: Option<String>,
        /// Only records ending a permission this way (approve, deny, always_allow, cancelled, deadline,
        /// connection_lost).
        #[arg(long, value_parser = OUTCOMES)]
        outcome: Option<String>,
        /// From this time on (RFC 3339, or a duration ago: 24h).
        #[arg(long, value_parser = super::credentials_file::since)]
        since: Option<u64>,
    },
}

pub(super) fn run(args: AuditArgs) -> ExitCode {
    let dir = args.state_dir.unwrap_or_else(super::credentials_file::default_state_dir);
    let reader = match StoreAt::new(args.store, args.store_ca, &dir).and_then(|at| at.reader()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("uplink audit: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.action {
        AuditAction::Verify { checkpoints, mut expect_head } => {
            for file in &checkpoints {
                match read_checkpoints(file) {
                    Ok(heads) => expect_head.extend(heads),
                    Err(e) => {
                        eprintln!("uplink audit: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            verify(&*reader, &expect_head)
        }
        AuditAction::CheckInput { seq, chain, input_file } => check_input(&*reader, chain, seq, &input_file),
        AuditAction::Export { project, tool, outcome, since } => {
            let mut query = AuditQuery { project, tool, outcome, since, limit: Some(1000), ..AuditQuery::default() };
            let mut out = std::io::stdout().lock();
            loop {
                let page = match reader.query(&query) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("uplink audit: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                for record in &page.records {
                    if writeln!(out, "{}", audit_line(record)).is_err() {
                        return ExitCode::FAILURE;
                    }
                }
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => return ExitCode::SUCCESS,
                }
            }
        }
    }
}

fn verify(reader: &dyn AuditReader, heads: &[Head]) -> ExitCode {
    match reader.verify_with(heads) {
        Ok(Ok(report)) => {
            let pinned = match (report.checkpoints, report.pruned_checkpoints) {
                (0, 0) => String::new(),
                (n, 0) => format!("; {n} checkpoints hold"),
                (n, p) => format!("; {n} checkpoints hold ({p} of records pruned since, not checked)"),
            };
            if let [only] = &report.chains[..]
                && only.chain == 0
            {
                println!(
                    "intact: {} records, {} to {}; head {}{pinned}",
                    report.records, report.first_seq, report.last_seq, report.head
                );
                return ExitCode::SUCCESS;
            }
            let cited = match report.citations {
                1 => "; 1 citation between them holds".to_owned(),
                n => format!("; {n} citations between them hold"),
            };
            println!(
                "intact: {} records in {} chains{cited}{pinned}; digest {}",
                report.records,
                report.chains.len(),
                report.digest
            );
            for c in &report.chains {
                println!(
                    "chain {}: {} records, {} to {}; head {}",
                    c.chain, c.records, c.first_seq, c.last_seq, c.head
                );
            }
            ExitCode::SUCCESS
        }
        Ok(Err(broken)) => {
            println!("BROKEN: {broken}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("uplink audit: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `SEQ:HASH`, as `verify` prints a head, or `CHAIN:SEQ:HASH`.
fn expected_head(text: &str) -> Result<Head, String> {
    let (place, hash) = text.rsplit_once(':').ok_or("expected [CHAIN:]SEQ:HASH")?;
    let (chain, seq) = place.split_once(':').unwrap_or(("0", place));
    let chain = chain.trim().parse().map_err(|_| format!("{chain:?} is not a chain"))?;
    let seq = seq.trim().parse().map_err(|_| format!("{seq:?} is not a record's seq"))?;
    Checkpoint { at_ms: 0, chain, seq, head: hash.trim().to_owned() }
        .head()
        .ok_or_else(|| "the hash is not 64 hex digits".into())
}

/// The heads in a file of checkpoints, one JSON object a line (blank lines skipped).
fn read_checkpoints(file: &std::path::Path) -> Result<Vec<Head>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut heads = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: &str| format!("{}: line {}: {why}", file.display(), i + 1);
        let checkpoint: Checkpoint = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        heads.push(checkpoint.head().ok_or_else(|| bad("the head is not 64 hex digits"))?);
    }
    Ok(heads)
}

fn check_input(reader: &dyn AuditReader, chain: u64, seq: u64, input_file: &std::path::Path) -> ExitCode {
    let input = match std::fs::read_to_string(input_file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("uplink audit: {}: {e}", input_file.display());
            return ExitCode::from(2);
        }
    };
    let record = match reader.record(chain, seq) {
        Ok(record) => record,
        Err(e) => {
            eprintln!("uplink audit: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(record) = record else {
        match chain {
            0 => eprintln!("uplink audit: there is no record {seq}"),
            _ => eprintln!("uplink audit: there is no record {seq} in chain {chain}"),
        }
        return ExitCode::FAILURE;
    };
    #[derive(serde::Deserialize)]
    struct Hashes {
        input_sha256: Option<String>,
        input_hmac_sha256: Option<String>,
    }
    let hashes: Hashes =
        serde_json::from_str(&record.text).unwrap_or(Hashes { input_sha256: None, input_hmac_sha256: None });
    let canonical = canonical_json(input.trim_end());
    let same = match (hashes.input_sha256, hashes.input_hmac_sha256) {
        (_, Some(keyed)) => match reader.input_key() {
            Ok(key) => input_hmac(&key, canonical.as_bytes()) == keyed,
            Err(e) => {
                eprintln!("uplink audit: {e}");
                return ExitCode::FAILURE;
            }
        },
        (Some(plain), None) => sha256_hex(canonical.as_bytes()) == plain,
        (None, None) => {
            eprintln!("uplink audit: record {seq} holds no tool input");
            return ExitCode::FAILURE;
        }
    };
    if same {
        println!("record {seq}: the input is the one");
        ExitCode::SUCCESS
    } else {
        println!("record {seq}: the input is another");
        ExitCode::from(3)
    }
}

#[cfg(test)]
mod tests {
    use uplink_proto::gateway::Withdrawn;
    use uplink_proto::wire::Decision;

    #[test]
    fn outcomes_are_the_cores() {
        let decisions = [Decision::Approve, Decision::Deny, Decision::AlwaysAllow].map(Decision::as_str);
        let withdrawals = [Withdrawn::Cancelled, Withdrawn::Deadline, Withdrawn::ConnectionLost].map(Withdrawn::as_str);
        let words: Vec<&str> = decisions.into_iter().chain(withdrawals).collect();
        assert_eq!(words, super::OUTCOMES);
        // Every variant is named above: a new one fails to compile here until it is added.
        let _ = |d: Decision| match d {
            Decision::Approve | Decision::Deny | Decision::AlwaysAllow => (),
        };
        let _ = |w: Withdrawn| match w {
            Withdrawn::Cancelled | Withdrawn::Deadline | Withdrawn::ConnectionLost => (),
        };
    }
}

//! `uplink audit verify|export`: the gateway's audit log, read from its state directory directly (beside a
//! running gateway, or none), read-only.
//!
//! Exit codes: 0 the chain is intact (verify) or the records were written (export); 1 the log could not be
//! read; 3 the chain is broken (verify: what and where is printed); 2 usage.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::gateway::audit_line;
use crate::store::sqlite::SqliteReader;
use crate::store::{AuditQuery, AuditReader as _};

#[derive(Args)]
pub(super) struct AuditArgs {
    #[command(subcommand)]
    action: AuditAction,
    /// The gateway's state directory (where uplink.db is). Default: $XDG_STATE_HOME/uplink, else
    /// ~/.local/state/uplink.
    #[arg(long, global = true, env = "UPLINK_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the hash chain from the first record kept to the head; print the head's hash.
    Verify,
    /// Write the records as JSON lines, oldest first: {"seq", "prev", "hash", "record"}.
    Export {
        /// Only this project's.
        #[arg(long)]
        project: Option<String>,
        /// Only this tool's.
        #[arg(long)]
        tool: Option<String>,
        /// Only records ending a permission this way (approve, deny, always_allow, cancelled, deadline,
        /// connection_lost).
        #[arg(long)]
        outcome: Option<String>,
        /// From this time on (RFC 3339, or a duration ago: 24h).
        #[arg(long, value_parser = super::credentials_file::since)]
        since: Option<u64>,
    },
}

pub(super) fn run(args: AuditArgs) -> ExitCode {
    let dir = args.state_dir.unwrap_or_else(super::credentials_file::default_state_dir);
    let reader = match SqliteReader::at(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("uplink audit: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.action {
        AuditAction::Verify => match reader.verify() {
            Ok(Ok(report)) => {
                println!(
                    "intact: {} records, {} to {}; head {}",
                    report.records, report.first_seq, report.last_seq, report.head
                );
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
        },
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

//! The audit log's checkpoints: its head after the last commit ([`Checkpoints::committed`]), handed out
//! every so often when it has moved, and as the gateway stops, to places a rewrite of the database does not
//! reach: the gateway's log, a file (one JSON line each, appended), the webhooks. `uplink audit verify
//! --checkpoints FILE` then finds a log rewritten after any of them (`store::audit::verify`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use crate::store::{Checkpoint, Head};

/// How often, and where besides the log, the audit log's head is handed out.
#[derive(Clone, Debug)]
pub(crate) struct CheckpointConfig {
    /// How often, when it has moved (at least a second).
    pub(crate) every: Duration,
    /// A file each is appended to, as one JSON line.
    pub(crate) file: Option<PathBuf>,
}

impl Default for CheckpointConfig {
    fn default() -> CheckpointConfig {
        CheckpointConfig { every: Duration::from_secs(60), file: None }
    }
}

/// The head after the last commit, the last one handed out, and when one last was.
pub(super) struct Checkpoints {
    config: CheckpointConfig,
    head: Option<Head>,
    handed_out: Option<Head>,
    last_at: Option<tokio::time::Instant>,
}

impl Checkpoints {
    pub(super) fn new(config: CheckpointConfig) -> Checkpoints {
        Checkpoints { config, head: None, handed_out: None, last_at: None }
    }

    /// Whether a checkpoint is due at `now`: the head moved, and the last was handed out at least
    /// [`Checkpoints::every`] ago. (Read by the hub task at each turn of its loop, so that a gateway too busy
    /// to wake on its interval still hands them out.)
    pub(super) fn overdue(&self, now: tokio::time::Instant) -> bool {
        self.head != self.handed_out && self.last_at.is_none_or(|at| now.saturating_duration_since(at) >= self.every())
    }

    /// How often a checkpoint is due.
    pub(super) fn every(&self) -> Duration {
        self.config.every.max(Duration::from_secs(1))
    }

    /// A commit left the log's head at `head`.
    pub(super) fn committed(&mut self, head: Head) {
        self.head = Some(head);
    }

    /// The head, taken at `at_ms`, when it has moved since it was last handed out; logged.
    pub(super) fn due(&mut self, at_ms: u64) -> Option<Checkpoint> {
        let head = self.head?;
        if self.handed_out == Some(head) {
            return None;
        }
        self.last_at = Some(tokio::time::Instant::now());
        let checkpoint = Checkpoint::of(head, at_ms);
        info!(chain = checkpoint.chain, seq = checkpoint.seq, head = %checkpoint.head, at_ms, "audit checkpoint");
        Some(checkpoint)
    }

    /// Appends `checkpoint` (one [`Checkpoints::due`] gave) to the file, if any; it counts as handed out
    /// once written. A file that cannot be written is logged, and tried again next time.
    pub(super) async fn write(&mut self, checkpoint: Checkpoint) {
        let Some(head) = checkpoint.head() else { return };
        if let Some(file) = self.config.file.clone() {
            let line = serde_json::to_string(&checkpoint).unwrap_or_default();
            let written = tokio::task::spawn_blocking(move || append_line(&file, &line)).await;
            let failed = match written {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                warn!(error = %e, "could not append the audit checkpoint to its file; trying again next time");
                return;
            }
        }
        self.handed_out = Some(head);
    }
}

/// Appends `line` and a newline to `file` (made owner-only when new), and flushes it to the disk.
fn append_line(file: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(file)?;
    out.write_all(format!("{line}\n").as_bytes())?;
    out.sync_data()
}

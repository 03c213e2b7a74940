//! A running gateway's credentials: where they come from, the watch that reloads them, and the receipt that
//! tells `uplink gateway token …` whether its change is in force.
//!
//! The watch reloads on SIGHUP, and when the credentials file's content or the store's credentials version
//! changes (checked every half second, so that a change made at another node of a cluster is in force here
//! within a second; a change of the file is loaded once it has held for [`SETTLE`], so that a file caught
//! half-written by an editor is not taken; the store's version moves only with a whole transaction). Any set that loads is put in force, an empty one too: a
//! revocation always takes effect, the last credential's included. A set that does not load (a file that does
//! not parse, two entries with one token) changes nothing, and the log says why.
//!
//! After every attempt the gateway writes a receipt, `STATE_DIR/credentials.in-force` (owner only): its pid,
//! what it watches, the fingerprint of what it tried, and the error if it refused it. `token add` and
//! `token revoke` read it back after their change: they report success only once the running gateway has the
//! change in force, and fail when it refused it or did not answer in time ([`confirm`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::credentials_file::{self as file, Place};
use super::store_at::StoreAt;
use crate::gateway::CredentialsReloader;
use crate::gateway::credentials::Credentials;
use crate::store::CredentialStore;

/// How often the watch looks for a change.
const EVERY: Duration = Duration::from_millis(500);

/// How long a change must hold before it is loaded.
const SETTLE: Duration = Duration::from_millis(250);

/// How long `token …` waits for a running gateway to confirm its change: a few looks and a settle, with
/// room for a slow machine.
const CONFIRM_WAIT: Duration = Duration::from_secs(8);

/// The receipt's name in the state directory.
const RECEIPT: &str = "credentials.in-force";

/// Where the running gateway's credentials come from.
pub(super) enum Source {
    /// A declarative file (if any) and the store (if on), watched.
    Kept {
        /// The file, as named.
        file: Option<PathBuf>,
        /// The store's credentials.
        store: Option<Arc<dyn CredentialStore>>,
    },
    /// The shared tokens of the command line.
    Tokens,
}

/// What the credentials were made from: the file's content and the store's credentials version. Equal
/// fingerprints, equal credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    /// The SHA-256 of the file's bytes, in hex (`None`: no file, or none readable).
    file_sha256: Option<String>,
    /// The store's credentials version (`None`: no store, or none readable).
    store_version: Option<u64>,
}

impl Fingerprint {
    fn of(file: Option<&Path>, store: Option<&dyn CredentialStore>) -> Fingerprint {
        let file_sha256 = file.and_then(|p| std::fs::read(p).ok()).map(|bytes| {
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
        });
        let store_version = store.and_then(|kept| kept.version().ok());
        Fingerprint { file_sha256, store_version }
    }
}

/// What the credentials a gateway started with were made from, for its [`watch`].
pub(super) struct Loaded(Fingerprint);

/// What a running gateway last did with its credentials.
#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    /// The gateway's process.
    pid: u32,
    /// The file it watches, made absolute.
    file: Option<PathBuf>,
    /// Whether it watches its store's credentials (the store of the state directory the receipt is in, or
    /// the database named with `--store`).
    store: bool,
    /// What it tried last.
    tried: Fingerprint,
    /// Why it refused what it tried; `None`: in force.
    refused: Option<String>,
}

impl Source {
    /// The credentials to put in force now, what was left out because the file wins, and the fingerprint of
    /// what they were made from (taken first: a change made while they are read is seen by the watch).
    pub(super) fn load_first(&self) -> Result<(Credentials, Vec<String>, Loaded), String> {
        let fingerprint = self.fingerprint();
        let (creds, left_out) = self.load()?;
        Ok((creds, left_out, Loaded(fingerprint)))
    }

    /// The credentials in force now, and what was left out because the file wins.
    fn load(&self) -> Result<(Credentials, Vec<String>), String> {
        let Source::Kept { file, store } = self else { return Err("nothing to load".into()) };
        let rows = match store {
            Some(kept) => kept.read().map_err(|e| e.to_string())?.0,
            None => Vec::new(),
        };
        file::load_merged(file.as_deref(), &rows)
    }

    fn fingerprint(&self) -> Fingerprint {
        match self {
            Source::Kept { file, store } => Fingerprint::of(file.as_deref(), store.as_deref()),
            Source::Tokens => Fingerprint::default(),
        }
    }
}

/// Sentences for the log about a set that lets nobody in on one side, with what to do about it.
pub(super) fn warnings(credentials: &Credentials) -> Vec<&'static str> {
    let mut out = Vec::new();
    if credentials.sleds().is_empty() {
        out.push("no sled credential is in force: every sled is refused (401) until one is added (uplink gateway token add --sled --project P)");
    }
    if credentials.admins().is_empty() {
        out.push("no admin principal is in force: nobody can read or decide (401) until one is added (uplink gateway token add --admin NAME --role admin)");
    }
    out
}

/// Watches `source` for the gateway `reloader` belongs to, which started with `loaded`, writing the receipt
/// into `state_dir` (first for what it started with), until the task is dropped; the receipt is removed then.
pub(super) async fn watch(source: Source, loaded: Loaded, state_dir: PathBuf, reloader: CredentialsReloader) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let receipt = Receipts::new(&source, &state_dir);
    let Loaded(mut seen) = loaded;
    receipt.write(&seen, None);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = hup => true,
            _ = tick.tick() => false,
        };
        let mut now = source.fingerprint();
        if !forced {
            if now == seen {
                continue;
            }
            // Loaded once it holds: a file being written is read when it is whole. (The store's version
            // moves with a whole transaction: nothing to wait for.)
            if now.file_sha256 != seen.file_sha256 {
                tokio::time::sleep(SETTLE).await;
                let settled = source.fingerprint();
                if settled != now {
                    continue;
                }
                now = settled;
            }
        }
        seen = now.clone();
        match source.load() {
            Ok((creds, left_out)) => {
                for why in left_out {
                    tracing::warn!("{why}");
                }
                for warning in warnings(&creds) {
                    tracing::warn!("{warning}");
                }
                let (sleds, admins) = (creds.sleds().len(), creds.admins().len());
                reloader.reload(creds).await;
                tracing::info!(sleds, admins, "credentials reloaded");
                receipt.write(&now, None);
            }
            Err(e) => {
                tracing::error!(error = %e, "credentials not reloaded; the previous ones stay in force");
                receipt.write(&now, Some(e));
            }
        }
    }
}

/// The receipt a running gateway keeps in its state directory, removed when dropped.
struct Receipts {
    path: PathBuf,
    file: Option<PathBuf>,
    store: bool,
}

impl Receipts {
    fn new(source: &Source, state_dir: &Path) -> Receipts {
        let (file, store) = match source {
            Source::Kept { file, store } => (file.as_deref().map(absolute), store.is_some()),
            Source::Tokens => (None, false),
        };
        Receipts { path: state_dir.join(RECEIPT), file, store }
    }

    fn write(&self, tried: &Fingerprint, refused: Option<String>) {
        let receipt = Receipt {
            pid: std::process::id(),
            file: self.file.clone(),
            store: self.store,
            tried: tried.clone(),
            refused,
        };
        let text = serde_json::to_string(&receipt).unwrap_or_default();
        if let Err(e) = file::write_private(&self.path, &text) {
            tracing::warn!(error = %e, "cannot write the credentials receipt: `uplink gateway token …` will not see this gateway");
        }
    }
}

impl Drop for Receipts {
    fn drop(&mut self) {
        // Only our own: another gateway may have written one since.
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<Receipt>(&t).ok())
            .is_some_and(|r| r.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| std::path::absolute(path).unwrap_or_else(|_| path.to_owned()))
}

/// Whether process `pid` is alive.
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
        match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            // It exists, as another user's.
            Err(e) => e == rustix::io::Errno::PERM,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}

/// After `token …` changed the credentials at `place`: whether the gateway running on `state_dir` (with its
/// store at `store`) has the change in force. `Ok` with a sentence when it has, or when no running gateway
/// there uses `place` (the change is then in force from its next start); `Err` when it refused it or did not
/// confirm in time. Gateways on other machines that share a PostgreSQL store are not asked: each puts a
/// change in force within seconds.
pub(super) async fn confirm(place: &Place, state_dir: &Path, store: &StoreAt) -> Result<String, String> {
    let path = state_dir.join(RECEIPT);
    let read = || std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<Receipt>(&t).ok());
    let nobody = match store {
        StoreAt::Postgres { .. } if matches!(place, Place::Store(_)) => format!(
            "no gateway runs on {} here; the gateways on {} take it within seconds, and others when they start",
            state_dir.display(),
            store.describe().trim_start_matches("the store at ")
        ),
        _ => format!("no gateway runs on {}: one takes it when it starts", state_dir.display()),
    };
    let Some(first) = read().filter(|r| alive(r.pid)) else { return Ok(nobody) };
    let uses = match place {
        Place::Store(_) => first.store,
        Place::File(file) => first.file.as_deref() == Some(absolute(file).as_path()),
    };
    if !uses {
        return Ok(format!(
            "the gateway running on {} (pid {}) does not use {}: one that does takes it within seconds",
            state_dir.display(),
            first.pid,
            place.describe()
        ));
    }
    let store = if first.store { store.credentials_beside().ok() } else { None };
    let deadline = tokio::time::Instant::now() + CONFIRM_WAIT;
    loop {
        let want = Fingerprint::of(first.file.as_deref(), store.as_deref());
        match read() {
            Some(r) if r.tried == want => {
                return match r.refused {
                    None => Ok(format!("in force at the running gateway (pid {})", r.pid)),
                    Some(why) => Err(format!(
                        "the running gateway (pid {}) refused the credentials, so this change is NOT in force: \
                         {why}; the previous credentials stay in force until it is fixed",
                        r.pid
                    )),
                };
            }
            Some(r) if alive(r.pid) => {}
            _ => return Ok(nobody),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the gateway running on {} (pid {}) has not confirmed this change within {} s, so it may NOT be \
                 in force: see its log, or send it SIGHUP",
                state_dir.display(),
                first.pid,
                CONFIRM_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

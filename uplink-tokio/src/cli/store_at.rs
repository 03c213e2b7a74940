//! Where the gateway's store is: the embedded SQLite file in the state directory (the default), or a
//! PostgreSQL database (`--store postgres://…`), and how each command opens what it needs of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::postgres::{self, PostgresCredentials, PostgresOptions, PostgresReader, PostgresStore};
use crate::store::sqlite::{SqliteCredentials, SqliteReader, SqliteStore, StoreOptions};
use crate::store::{AuditReader, CredentialStore, Store};

/// Where the store is.
#[derive(Clone, Debug)]
pub(super) enum StoreAt {
    /// `uplink.db` in this state directory.
    Dir(PathBuf),
    /// A PostgreSQL database.
    Postgres {
        /// Its URL (perhaps with a password: never printed; [`StoreAt::describe`] leaves it out).
        url: String,
        /// Further certificate authorities for its server's certificate.
        ca_file: Option<PathBuf>,
    },
}

/// How the store keeps what it writes (the gateway's flags).
#[derive(Clone, Debug, Default)]
pub(super) struct Keeping {
    /// `--store-sync full` (the embedded store only).
    pub(super) full_sync: bool,
    /// `--audit-keep`.
    pub(super) keep_for: Option<std::time::Duration>,
    /// `--audit-keep-records`.
    pub(super) keep_records: Option<u64>,
}

impl StoreAt {
    /// From `--store` (a PostgreSQL URL, or nothing: the state directory's) and `--store-ca`.
    pub(super) fn new(store: Option<String>, ca_file: Option<PathBuf>, state_dir: &Path) -> Result<StoreAt, String> {
        match store {
            Some(url) if postgres::is_url(&url) => Ok(StoreAt::Postgres { url, ca_file }),
            Some(_) => Err("--store takes a PostgreSQL URL (postgres://user@host/db); the embedded store is the \
                            state directory's (--state-dir)"
                .into()),
            None if ca_file.is_some() => Err("--store-ca is for a PostgreSQL store (--store postgres://…)".into()),
            None => Ok(StoreAt::Dir(state_dir.to_owned())),
        }
    }

    /// Where it is, for people: never with a password.
    pub(super) fn describe(&self) -> String {
        match self {
            StoreAt::Dir(dir) => format!("the store in {}", dir.display()),
            StoreAt::Postgres { url, .. } => format!("the store at {}", postgres::place_of_url(url)),
        }
    }

    /// The gateway's writer (made, or migrated, as it opens).
    pub(super) fn open(&self, keeping: &Keeping) -> Result<Box<dyn Store>, String> {
        match self {
            StoreAt::Dir(dir) => {
                let options = StoreOptions {
                    full_sync: keeping.full_sync,
                    keep_for: keeping.keep_for,
                    keep_records: keeping.keep_records,
                };
                Ok(Box::new(SqliteStore::open(dir, options).map_err(|e| e.to_string())?))
            }
            StoreAt::Postgres { url, ca_file } => {
                if keeping.full_sync {
                    return Err("--store-sync is the embedded store's: a PostgreSQL server's durability is its own \
                                (synchronous_commit)"
                        .into());
                }
                let options = PostgresOptions {
                    keep_for: keeping.keep_for,
                    keep_records: keeping.keep_records,
                    ca_file: ca_file.clone(),
                    ..PostgresOptions::default()
                };
                Ok(Box::new(PostgresStore::open(url, options).map_err(|e| e.to_string())?))
            }
        }
    }

    /// Its credentials, for `token …`: the store is made (or migrated) first when nothing uses it yet.
    pub(super) fn credentials(&self) -> Result<Arc<dyn CredentialStore>, String> {
        match self {
            StoreAt::Dir(dir) => Ok(Arc::new(SqliteStore::credentials_in(dir).map_err(|e| e.to_string())?)),
            StoreAt::Postgres { url, ca_file } => {
                let kept: PostgresCredentials =
                    PostgresStore::credentials_at(url, ca_file.clone()).map_err(|e| e.to_string())?;
                Ok(Arc::new(kept))
            }
        }
    }

    /// Its credentials, as they are (nothing is made), for a look beside a running gateway.
    pub(super) fn credentials_beside(&self) -> Result<Arc<dyn CredentialStore>, String> {
        match self {
            StoreAt::Dir(dir) => Ok(Arc::new(SqliteCredentials::beside(dir).map_err(|e| e.to_string())?)),
            StoreAt::Postgres { .. } => self.credentials(),
        }
    }

    /// A reader of its audit log (nothing is made).
    pub(super) fn reader(&self) -> Result<Arc<dyn AuditReader>, String> {
        match self {
            StoreAt::Dir(dir) => Ok(Arc::new(SqliteReader::at(dir).map_err(|e| e.to_string())?)),
            StoreAt::Postgres { url, ca_file } => {
                Ok(Arc::new(PostgresReader::at(url, ca_file.clone()).map_err(|e| e.to_string())?))
            }
        }
    }
}

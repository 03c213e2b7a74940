//! The database as the store's other rooms use it: its URL's settings, a pool of connections for the readers,
//! a dedicated connection for the writer, and the small runtime of the store's own that drives them, so that
//! the seam's calls (synchronous: from the store's thread, a blocking task or a command) can wait for the
//! database from any thread, a runtime's worker included.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::seam::StoreError;

/// How long any one call to the database may take (a commit included) before it fails: a database that
/// stopped answering fails the store rather than hold the gateway's decisions without end.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection may take to open, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLSTATE `uplink.fence` raises when a node's lease has lapsed (a class of its own, as PostgreSQL
/// leaves to applications; the schema's function names it too).
pub(super) const NO_LEASE: &str = "UL001";

/// The SQLSTATE `uplink.move_head` raises when the audit log's head is not where the writer left it.
pub(super) const HEAD_MOVED: &str = "UL002";

/// The readers' pool: at most this many connections beside the writer's.
const READERS: usize = 4;

/// The database, as every room of the store reaches it. Dropped, its runtime stops in the background (it
/// may be dropped on a runtime's worker, where waiting is not allowed).
pub(super) struct Db {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// Where it is, for messages: `postgres://user@host:port/db`, never a password.
    place: String,
    /// The cluster node this store is (its id from `uplink_join`), 0 until it joins: from then on every
    /// commit checks the node's lease inside its transaction.
    pub(super) node: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("place", &self.place).finish_non_exhaustive()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Where `config` points, without its password.
fn place_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// Where the database at `url` is, for people: `postgres://user@host:port/db`, never its password; the URL
/// itself with what follows its `@` left out when it does not read.
pub fn place_of_url(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => place_of(&config),
        Err(_) => url.split('@').next_back().map_or_else(String::new, |rest| format!("postgres://…@{rest}")),
    }
}

/// What the database (or the way to it) said, in one line: the server's own words where it gave any.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

impl Db {
    /// The database at `url` (libpq's URL form): nothing is connected yet. `ca_file`: a PEM file of further
    /// certificate authorities for the server's certificate, beside the web's roots.
    pub(super) fn new(url: &str, ca_file: Option<&Path>) -> Result<Arc<Db>, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Database(format!("the store's URL does not read: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("uplink");
        }
        let place = place_of(&config);
        let tls = crate::sled::tls_client_config(ca_file)
            .map_err(|e| StoreError::Database(format!("TLS for {place}: {e}")))?;
        let tls = MakeRustlsConnect::new((*tls).clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("uplink-postgres")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(READERS)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(OPERATION_TIMEOUT))
            .create_timeout(Some(OPERATION_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Database(format!("{place}: {e}")))?;
        Ok(Arc::new(Db { runtime: Some(runtime), handle, pool, config, tls, place, node: 0.into() }))
    }

    /// Where it is, for messages (no password).
    pub(super) fn place(&self) -> &str {
        &self.place
    }

    /// Runs `work` on the store's runtime and waits for it, from any thread; it fails after
    /// [`OPERATION_TIMEOUT`].
    pub(super) fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.run_within(OPERATION_TIMEOUT, work)
    }

    /// [`Db::run`], failing after `within`.
    pub(super) fn run_within<T, F>(&self, within: Duration, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(tokio::time::timeout(within, work).await);
        });
        match rx.recv() {
            Ok(Ok(done)) => done,
            Ok(Err(_)) => Err(StoreError::Database(format!("{}: no answer within {} s", self.place, within.as_secs()))),
            Err(_) => Err(StoreError::Database(format!("{}: the store was closed", self.place))),
        }
    }

    /// A connection from the readers' pool (on the store's runtime).
    pub(super) async fn pooled(self: Arc<Self>) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.unreachable(&e),
            e => StoreError::Database(format!("{}: {e}", self.place)),
        })
    }

    /// A connection of its own (the writer's), driven on the store's runtime until dropped.
    pub(super) async fn dedicated(self: Arc<Self>) -> Result<Client, StoreError> {
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(|e| self.unreachable(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %describe(&e), "the store's database connection ended");
            }
        });
        Ok(client)
    }

    /// The error for a failed connection attempt (or anything the database said on one).
    fn unreachable(&self, e: &tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(_) => self.said(e),
            None => StoreError::Unreachable { place: self.place.clone(), why: describe(e) },
        }
    }

    /// The error for what the database said.
    pub(super) fn said(&self, e: &tokio_postgres::Error) -> StoreError {
        if e.as_db_error().is_none() && e.is_closed() {
            return StoreError::Unreachable { place: self.place.clone(), why: describe(e) };
        }
        if e.as_db_error().is_some_and(|db| db.code().code() == NO_LEASE) {
            return StoreError::Fenced(self.place.clone());
        }
        StoreError::Database(format!("{}: {}", self.place, describe(e)))
    }
}

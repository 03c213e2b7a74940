//! The PostgreSQL store: the same seam as the embedded one, on a database that a gateway reaches over the
//! network (`uplink gateway --store postgres://…`), so that what it keeps lives beside the operator's other
//! databases, with their backups and their replicas.
//!
//! - **Where**: every table in the schema `uplink` of the database the URL names, made at the first start.
//!   The URL is libpq's (`postgresql://user:password@host:port/db?sslmode=require`, or `host=/run/postgresql`
//!   for a Unix socket); TLS through rustls, the server's certificate checked against the web's roots.
//! - **At start**, never a silent re-creation: a database that cannot be reached, or whose `uplink` schema is
//!   newer than this build's ([`StoreError::Newer`](crate::store::StoreError::Newer)), is refused with that
//!   message. Older schemas are migrated forward, each step in its own transaction, under a lock that makes
//!   two gateways starting at once take turns.
//! - **A cluster's nodes** ([`PostgresCluster`]): each gateway on the database joins as a node with a lease
//!   on the database's clock; once it has, each commit first checks that lease in its transaction, so that a
//!   node whose lease lapsed (paused, cut off) writes nothing ([`StoreError::Fenced`](crate::store::StoreError::Fenced)).
//!   Which connection holds each project is settled in the `claims` table.
//! - **Several writers, one chain each**: each store appends to a hash chain of the audit log it holds
//!   (`chains`), taken up where a writer that is gone left it, and moves that chain's head only from where it
//!   left it, so that no fork can be written. Which gateway serves the database is the cluster's to say: for
//!   now one at a time ([`ClusterStore::join_alone`](crate::store::ClusterStore::join_alone)).
//! - **One round trip a commit**: a commit's `BEGIN`, its statements, the head's move and `COMMIT` are sent
//!   together; any that fails (a lapsed lease, a moved head) fails the transaction, and its `COMMIT` then
//!   rolls it back.
//! - **A lost database**: a commit that fails (the database went away, or did not answer within
//!   [`OPERATION_TIMEOUT`]) fails as with SQLite: the gateway stops, and its sleds deny what they asked.
//! - **Retention**: as with SQLite ([`PostgresOptions`]).
//!
//! The rooms: `db` (the connection, the pool and the runtime they run on), `schema` (the schema and its
//! steps), `cluster` ([`PostgresCluster`]), `chains` (the audit log's chains), `writer` ([`PostgresStore`]), `kept` (what a start reads), `reader` ([`PostgresReader`]), `credentials`
//! ([`PostgresCredentials`]).

mod chains;
mod cluster;
mod credentials;
mod db;
mod kept;
mod reader;
mod schema;
mod writer;

pub use cluster::PostgresCluster;
pub use credentials::PostgresCredentials;
pub use db::{OPERATION_TIMEOUT, place_of_url};
pub use reader::PostgresReader;
pub use schema::SCHEMA_VERSION;
pub use writer::{PostgresOptions, PostgresStore};

/// Whether `place` names a PostgreSQL database (`postgres://…` or `postgresql://…`) rather than a directory.
pub fn is_url(place: &str) -> bool {
    place.starts_with("postgres://") || place.starts_with("postgresql://")
}

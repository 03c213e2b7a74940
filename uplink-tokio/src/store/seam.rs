//! The store's seam: everything the gateway keeps, behind three traits that every backend implements.
//!
//! - [`Store`], the gateway's own writer (one per gateway, driven by its hub task): what was kept, read once
//!   at start ([`Kept`]: the rules made at run time, the console's sign-ins, the secret of the keyed hashes),
//!   and [`Store::commit`], which writes a batch of [`Change`]s (audit records, rules, sign-ins) atomically
//!   and says where the audit log's head now is ([`Head`]).
//! - [`AuditReader`]: reading the log beside the writer (`GET /api/audit`, `uplink audit`).
//! - [`CredentialStore`]: the credentials `uplink gateway token …` manages ([`CredentialRow`]: hashes only),
//!   read and written beside a running gateway, which watches their version.
//!
//! How a store fails is [`StoreError`]. The conformance suite every backend passes is
//! `uplink-tokio/tests/store_conformance.rs`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::audit::{AuditPage, AuditQuery, Entry, Head, Sealed, VerifyError, VerifyReport};

/// A rule as it is kept and shown: the core's [`Rule`](uplink_proto::rules::Rule), with times in Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRule {
    /// Its id.
    pub id: u64,
    /// `allow`, `ask` or `deny`.
    pub effect: String,
    /// The pattern, in Claude Code's rule syntax.
    pub pattern: String,
    /// Project patterns (`*` matches any run); `null`: every project.
    pub projects: Option<Vec<String>>,
    /// The one project it was made for (a person's "always allow"), byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The one sled connection it was made for; such a rule ends with its connection and is not kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<u64>,
    /// When it stops applying, in Unix seconds; `null`: never.
    pub expires: Option<u64>,
    /// Who made it.
    pub author: String,
    /// When, in Unix seconds.
    pub created: u64,
}

/// A console sign-in as the store keeps it: its cookie's SHA-256 (never the cookie), its principal, its
/// CSRF token (a reloaded page is given it back), and when it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// The SHA-256 of the session's cookie.
    pub key: [u8; 32],
    /// The admin principal it stands for.
    pub principal: String,
    /// Its CSRF token.
    pub csrf: String,
    /// When it ends, in Unix milliseconds.
    pub expires_ms: u64,
    /// For a person an identity provider vouched for at sign-in (rather than a principal's token): the role
    /// the rules gave them then (`viewer`, `approver`, `admin`), so that every node, and a restarted one,
    /// acts with it.
    pub role: Option<String>,
    /// Such a person's verified email, for reading.
    pub email: Option<String>,
}

/// One credential as the store keeps it: a sled credential (`projects`, optionally `expires`, RFC 3339) or
/// an admin principal (`role`), known by its token's SHA-256 in hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRow {
    /// `sled` or `admin`.
    pub kind: String,
    /// The sled credential's label, or the principal's name.
    pub name: String,
    /// The token's SHA-256, 64 hex digits.
    pub token_sha256: String,
    /// A sled credential's projects (names or `*` patterns).
    pub projects: Vec<String>,
    /// A principal's role.
    pub role: Option<String>,
    /// When a sled credential stops working, RFC 3339.
    pub expires: Option<String>,
}

/// A request that may come back after a drop or a restart (`resume`), as the store keeps it: the hub's
/// [`HeldRequest`](uplink_proto::gateway::HeldRequest) with times in Unix milliseconds. Kept while it is
/// pending for a sled that resumes, held for one that went away, or remembered with the decision sent to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResumable {
    /// Its public id (`3-0`).
    pub id: String,
    /// The sled credential's id (from its token's hash: stable across restarts).
    pub credential: u64,
    /// The project.
    pub project: String,
    /// The sled process's incarnation.
    pub incarnation: String,
    /// The sled's id for it.
    pub req_id: String,
    /// The tool.
    pub tool_name: String,
    /// The tool's input, as the JSON text it arrived in.
    pub tool_input: String,
    /// When it first arrived, in Unix milliseconds.
    pub since_ms: u64,
    /// When its sled denies it, in Unix milliseconds; `null`: it announced no timeout.
    pub deadline_ms: Option<u64>,
    /// The decision made for it, if any: `approve`, `deny` or `always_allow`.
    pub decision: Option<String>,
    /// The words for the agent that came with the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who made the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The decision was sent to the sled at least once.
    pub sent: bool,
}

/// What a store kept, read once as the gateway starts ([`Store::load`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The rules made at run time (a connection's own are never kept).
    pub rules: Vec<StoredRule>,
    /// The console's sign-ins that have not ended.
    pub sessions: Vec<StoredSession>,
    /// The store's secret for the keyed hashes of redacted tool inputs: drawn when the store was made, the
    /// same ever after, never shown.
    pub input_key: [u8; 32],
    /// Requests that may come back ([`StoredResumable`]).
    pub resumables: Vec<StoredResumable>,
    /// The greatest connection handle the last gateway reserved (0: none): public ids start after it.
    pub ids_until: u64,
}

/// One thing a [`Store::commit`] writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Append this record to the audit log.
    Record(Entry),
    /// Keep this console sign-in (or replace the one with its key).
    PutSession(StoredSession),
    /// Forget the console sign-in with this key.
    DeleteSession([u8; 32]),
    /// Keep this rule (or replace the one with its id).
    PutRule(StoredRule),
    /// Forget the rule with this id.
    DeleteRule(u64),
    /// Keep this request that may come back (or replace the one with its id).
    PutResumable(StoredResumable),
    /// Forget the request that may come back with this id.
    DeleteResumable(String),
    /// Connection handles up to this one are reserved: a restarted gateway starts after them.
    ReserveIds(u64),
    /// The requests kept to come back under these ids were given to node `to` of the cluster, where their
    /// sled came back: theirs from now on (and so are their rows of waiting requests). Nothing for a store
    /// that is not a cluster's.
    MoveResumables {
        /// Their public ids.
        ids: Vec<String>,
        /// The node that holds them now.
        to: u64,
    },
    /// A claim on a project, granted by the cluster's table ([`ClusterStore::claim`]), ended: its row goes,
    /// if it is still of this generation. Nothing for a store that is not a cluster's.
    EndClaim {
        /// The project.
        project: String,
        /// The claim's generation.
        generation: u64,
    },
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another gateway holds this state directory.
    #[error("{0} is in use by another gateway (its lock is held); stop it first, or use another --state-dir")]
    InUse(String),
    /// The database is locked by another program for longer than the wait.
    #[error("the database {0} is locked by another program")]
    Locked(String),
    /// The database was written by a newer uplink.
    #[error("the database {path} has schema version {found}, newer than this uplink's {supported}: upgrade uplink")]
    Newer {
        /// The file.
        path: String,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The file is not a database, or fails its integrity check.
    #[error("the database {path} is damaged ({what}); it was left as it is: restore it from a backup or move it away")]
    Corrupt {
        /// The file.
        path: String,
        /// What the check said.
        what: String,
    },
    /// The database server could not be reached (or the connection to it ended).
    #[error("the database {place} cannot be reached: {why}")]
    Unreachable {
        /// Where it is (never with a password).
        place: String,
        /// What the attempt said.
        why: String,
    },
    /// Another gateway's node is live at the database (its lease holds), and this one may only join alone.
    #[error(
        "the database {place} is in use by another gateway (node {node} at {addr}, whose lease holds); one gateway \
         at a time serves a database for now: stop it, or start this one again once its lease has lapsed"
    )]
    NodeLive {
        /// Where the database is.
        place: String,
        /// The live node.
        node: u64,
        /// Where it said it listens.
        addr: String,
    },
    /// This gateway is a cluster node whose lease has lapsed at the database: it may write nothing more.
    #[error("the database {0} says this gateway's lease has lapsed; nothing was written")]
    Fenced(String),
    /// Anything else the database said.
    #[error("store: {0}")]
    Database(String),
    /// Reading or creating the state directory.
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
}

/// What the hub task needs from a store. Calls come from one thread, in order.
pub trait Store: Send + 'static {
    /// What was kept, at start.
    fn load(&mut self) -> Result<Kept, StoreError>;

    /// Writes `changes` atomically and durably (as configured) before returning: all or nothing. Returns
    /// where the audit log's head is after it.
    fn commit(&mut self, changes: &[Change]) -> Result<Head, StoreError>;

    /// A reader of the audit log, usable from any thread beside the writer.
    fn reader(&self) -> Arc<dyn AuditReader>;

    /// The credentials this store keeps, usable from any thread beside the writer; `None` (the default) for a
    /// store that keeps none.
    fn credentials(&self) -> Option<Arc<dyn CredentialStore>> {
        None
    }

    /// The cluster this store's database is shared with (several gateway nodes), or `None` (the default)
    /// for a store of one gateway.
    fn cluster(&self) -> Option<Arc<dyn ClusterStore>> {
        None
    }

    /// True (the default) when a commit may wait for the disk (a flush per commit) or for another machine:
    /// such a store is committed on a thread of its own, so that no runtime worker waits with it. False when
    /// a commit only hands its pages to the operating system, which takes microseconds: the hub task then
    /// commits in place, sparing each batch the two thread wake-ups a hand-off costs (more than the commit).
    fn waits_for_disk(&self) -> bool {
        true
    }
}

/// What a cluster's table said to a claim ([`ClusterStore::claim`]).
pub type ClaimAnswer = uplink_proto::gateway::ClaimAnswer;

/// The answer to a renewal of a node's lease ([`ClusterStore::renew`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewal {
    /// The lease was renewed; false: it had lapsed, for good.
    pub held: bool,
    /// Projects other nodes asked this node to let go (a sled of the same credential came back there):
    /// each with that credential's id. Taken: each is given once.
    pub releases: Vec<(String, u64)>,
}

/// The part of a database that several gateway nodes share: each node's lease, on the database's clock, and
/// the table of which connection holds each project. Calls may come from any thread.
pub trait ClusterStore: Send + Sync + 'static {
    /// Joins as a new node (an incarnation: never an earlier one's id) listening at `addr`, its peers
    /// reaching it at `internal`, with a lease of `lease` from the database's now, beside the nodes already
    /// there. From then on every commit of this store's writer checks the lease inside its transaction
    /// ([`StoreError::Fenced`] once it has lapsed).
    fn join(&self, addr: &str, internal: Option<&str>, lease: std::time::Duration) -> Result<u64, StoreError>;

    /// As [`ClusterStore::join`], but only while no other node's lease holds
    /// ([`StoreError::NodeLive`] otherwise): one gateway at a time serves the database, and the next may
    /// start as soon as the last one's lease lapsed, even if it is merely paused (it fences itself then).
    fn join_alone(&self, addr: &str, lease: std::time::Duration) -> Result<u64, StoreError>;

    /// Renews `node`'s lease for `lease` from the database's now, only if it has not lapsed; and takes the
    /// releases asked of it.
    fn renew(&self, node: u64, lease: std::time::Duration) -> Result<Renewal, StoreError>;

    /// Claims `project` for connection `conn` of `node`, with credential `credential`: granted when the
    /// project is free or its holder's lease has lapsed (and only to a node whose own lease holds), with a
    /// generation greater than every earlier claim's; otherwise who holds it. `None`: `node`'s own lease has
    /// lapsed, and nothing was claimed.
    fn claim(&self, node: u64, conn: u64, project: &str, credential: u64) -> Result<Option<ClaimAnswer>, StoreError>;

    /// Asks `holder` to let `project` go (taken with its next [`ClusterStore::renew`]).
    fn ask_release(&self, holder: u64, project: &str, credential: u64) -> Result<(), StoreError>;

    /// `node` leaves: its lease ends now, and its claims with it.
    fn leave(&self, node: u64) -> Result<(), StoreError>;

    /// A block of rule ids that no other node is ever given (nor this one again).
    fn rule_ids(&self) -> Result<std::ops::Range<u64>, StoreError>;

    /// The rules changed since `version` (0: every rule ever kept, removed ones included while their
    /// tombstones last), each as it is now, in the order of their versions (a bounded number at a time: the
    /// rest come with the next reading); and the version they bring the reader to. Versions follow the
    /// order in which the changes were committed, so that reading from the last version seen misses none.
    fn rules_since(&self, version: u64) -> Result<RuleChanges, StoreError>;

    /// The console sign-ins changed since `version`, as [`ClusterStore::rules_since`] reads rules.
    fn sessions_since(&self, version: u64) -> Result<SessionChanges, StoreError>;

    /// Takes over, for `node` to end as lost with their connection, the requests that were waiting at
    /// nodes whose lease has lapsed, but for those kept to come back (a resuming sled may still send them
    /// again elsewhere): each is given to one taker only, and waits at it until its `end` is committed (a
    /// taker that dies first leaves it to the next). At most 10,000 at a time.
    fn take_orphans(&self, node: u64) -> Result<Vec<Orphan>, StoreError>;

    /// Takes over, for `node`, the requests kept for the sleds of `project` with `credential` (to come back,
    /// `resume`) by nodes now gone, or given to `node` already by live ones, as that project's claim is
    /// granted to `node`: each taken by one node only; the table of waiting requests names `node` for them
    /// from then on.
    fn take_held(&self, node: u64, project: &str, credential: u64) -> Result<Vec<StoredResumable>, StoreError>;

    /// The live nodes other than `node` that keep requests for the sleds of `project` with `credential`
    /// (to ask them to give those up: [`ClusterStore::take_held`] then takes them).
    fn live_holders(&self, node: u64, project: &str, credential: u64) -> Result<Vec<Peer>, StoreError>;

    /// Where the request `perm` (its public id) waits, by the table of waiting requests: `None` when no
    /// node holds it.
    fn holder(&self, perm: &str) -> Result<Option<HeldAt>, StoreError>;

    /// The live node whose claim holds `project`, if it has an internal listener.
    fn project_holder(&self, project: &str) -> Result<Option<Peer>, StoreError>;

    /// The live nodes that have an internal listener, this one among them.
    fn peers(&self) -> Result<Vec<Peer>, StoreError>;
}

/// Where a request waits ([`ClusterStore::holder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldAt {
    /// The node, whether it lives, whether the request is kept for its sled.
    pub holder: uplink_proto::gateway::Holder,
    /// Where that node's peers reach it, if it has an internal listener.
    pub internal: Option<String>,
}

/// A live node with an internal listener ([`ClusterStore::peers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its id.
    pub node: u64,
    /// Where its peers reach it (`host:port`).
    pub internal: String,
}

/// A request that was waiting at a node that is gone ([`ClusterStore::take_orphans`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    /// Its public id.
    pub perm: String,
    /// The node it was waiting at.
    pub node: u64,
    /// Its project.
    pub project: Option<String>,
    /// Its tool.
    pub tool: Option<String>,
    /// When it was asked, in Unix milliseconds.
    pub at_ms: u64,
}

/// The console sign-ins changed since a version ([`ClusterStore::sessions_since`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionChanges {
    /// Sign-ins made (or changed): in force until they expire.
    pub open: Vec<StoredSession>,
    /// The cookie hashes of sign-ins ended.
    pub closed: Vec<[u8; 32]>,
    /// The version these changes bring the reader to.
    pub version: u64,
}

/// The rules changed since a version ([`ClusterStore::rules_since`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleChanges {
    /// Rules made or changed: in force.
    pub in_force: Vec<StoredRule>,
    /// The ids of rules removed.
    pub removed: Vec<u64>,
    /// The version these changes bring the reader to.
    pub version: u64,
}

/// Reads the audit log.
pub trait AuditReader: Send + Sync + 'static {
    /// One page of records matching `query`, oldest first.
    fn query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;

    /// Checks the whole chain.
    fn verify(&self) -> Result<Result<VerifyReport, VerifyError>, StoreError> {
        self.verify_with(&[])
    }

    /// Checks the whole chain, and that each of `checkpoints` (heads kept elsewhere) is a record of it with
    /// that hash ([`verify`](super::audit::verify)).
    fn verify_with(&self, checkpoints: &[Head]) -> Result<Result<VerifyReport, VerifyError>, StoreError>;

    /// Record `seq` of `chain` (0: the first, the only one of a log with one writer), if the log holds it.
    fn record(&self, chain: u64, seq: u64) -> Result<Option<Sealed>, StoreError> {
        if chain != 0 {
            return Ok(None);
        }
        let page = self.query(&AuditQuery { after: seq.checked_sub(1), limit: Some(1), ..AuditQuery::default() })?;
        Ok(page.records.into_iter().find(|r| r.chain == 0 && r.seq == seq))
    }

    /// The store's secret for the keyed hashes of redacted inputs, for one who holds the store to confirm an
    /// input ([`Kept::input_key`]).
    fn input_key(&self) -> Result<[u8; 32], StoreError>;
}

/// The credentials `uplink gateway token …` manages, kept beside a running gateway (which watches their
/// version) or none.
pub trait CredentialStore: Send + Sync + 'static {
    /// Every credential kept, and their version, read together.
    fn read(&self) -> Result<(Vec<CredentialRow>, u64), StoreError>;

    /// Their version alone (cheap: a running gateway polls it): it moves on with every
    /// [`CredentialStore::write`], and is 0 for a store that never held any.
    fn version(&self) -> Result<u64, StoreError>;

    /// Replaces every credential kept with `rows`, in one transaction, and moves the version on.
    fn write(&self, rows: &[CredentialRow]) -> Result<(), StoreError>;
}

//! Claims decided with other gateways: when several gateways serve one fleet (a cluster on one database),
//! which connection holds a project is settled in a table they share, not by one hub alone. The hub asks
//! ([`HubEvent::ClaimWanted`](super::HubEvent::ClaimWanted)); the adapter asks the table and hands the answer
//! back ([`Hub::handle_claim_answer`](super::Hub::handle_claim_answer)); the rule stays the hub's: the same
//! credential takes a project over (a restarted sled, wherever it lands), another is refused while the holder
//! lives.
//!
//! ```text
//!  identified ──▶ local checks (scope: 4003; a live holder here with another credential: 4009)
//!      └──▶ waiting ── ClaimWanted ──▶ answer:
//!             ├─ Granted{generation} ─────────────────────────────────▶ holds it; what arrived meanwhile is
//!             │                                                          taken up in order (a holder here: 4000)
//!             ├─ Held{another credential} ─────────────────────────────▶ closed 4009
//!             ├─ Held{same credential, elsewhere} ── ReleaseWanted ──▶ asked again every `retry_every`
//!             │                                                          until granted, or 4009 after `wait`
//!             └─ Held{same credential, here} ── the holder here closed (4000), its claim given back
//!                                                (ClaimEnded) ──▶ asked again at once
//!  waiting, no answer within `wait` ──▶ closed 1013 (try again later)
//!  waiting, closed ──▶ forgotten (a grant that comes after is given back: ClaimEnded)
//!  holding, closed or replaced ──▶ ClaimEnded{generation}
//! ```
//!
//! While a connection waits, nothing is sent on it by the hub, and what its session reports (requests, their
//! ends, `resumed`) waits with it, bounded by the session's own budgets ([`QUEUE_SLACK`] beyond them closes the
//! connection): nothing is announced, decided or held for a sled before its claim is granted.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use super::credential::CredentialId;
use super::sled_session::SessionEvent;
use crate::ids::ConnHandle;
use crate::time::Instant;

/// How claims are settled with other gateways.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedClaimsConfig {
    /// This gateway's id among the gateways (its node incarnation): a project the table says this gateway
    /// holds is taken over here, by the hub's own rule.
    pub node: u64,
    /// How often a claim on a project held elsewhere with the same credential is asked again (the holder
    /// was asked to let it go). Default 250 ms.
    pub retry_every: Duration,
    /// How long such a claim keeps asking before the connection is refused as if held by another
    /// ([`CloseReason::ProjectHeld`](super::CloseReason::ProjectHeld)): longer than a node's lease, so that
    /// a holder that died has lost it by then. Default 15 s.
    pub wait: Duration,
}

impl SharedClaimsConfig {
    /// The defaults for gateway `node`.
    pub fn for_node(node: u64) -> SharedClaimsConfig {
        SharedClaimsConfig { node, ..SharedClaimsConfig::default() }
    }
}

impl Default for SharedClaimsConfig {
    fn default() -> Self {
        SharedClaimsConfig { node: 0, retry_every: Duration::from_millis(250), wait: Duration::from_secs(15) }
    }
}

/// What the shared table said to a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The project is this connection's, under this generation (greater than every earlier one's: the
    /// fencing token of the claim).
    Granted {
        /// The claim's generation.
        generation: u64,
    },
    /// A live connection elsewhere holds it.
    Held {
        /// Its credential.
        credential: CredentialId,
        /// The gateway (node) that holds it.
        node: u64,
    },
}

/// What a connection waiting for its claim announced, kept for when it is granted.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub(super) project: String,
    pub(super) protocol: Option<u32>,
    pub(super) sled_version: Option<String>,
    pub(super) capabilities: Vec<String>,
    pub(super) incarnation: Option<String>,
}

/// A connection waiting for the table's answer.
#[derive(Clone, Debug)]
pub(super) struct Waiting {
    pub(super) identity: Identity,
    /// Its session's reports since it identified, in order.
    pub(super) queued: VecDeque<SessionEvent>,
    /// When it stops asking.
    pub(super) until: Instant,
    /// When it asks again (`None`: an answer is awaited).
    pub(super) retry_at: Option<Instant>,
}

/// How many reports beyond its session's budgets a waiting connection may queue (an identity's worth of
/// ends, `resumed`, settles) before it is closed as over its budget.
pub const QUEUE_SLACK: usize = 64;

/// The claims of one hub that the shared table settles.
#[derive(Clone, Debug, Default)]
pub(super) struct SharedClaims {
    pub(super) config: SharedClaimsConfig,
    /// Connections waiting for an answer.
    pub(super) waiting: BTreeMap<ConnHandle, Waiting>,
    /// Connections holding a project under a generation.
    pub(super) granted: BTreeMap<ConnHandle, (String, u64)>,
}

impl SharedClaims {
    pub(super) fn new(config: SharedClaimsConfig) -> SharedClaims {
        SharedClaims { config, ..SharedClaims::default() }
    }

    /// `conn` identified as `identity`: it waits, from `now`.
    pub(super) fn wait(&mut self, now: Instant, conn: ConnHandle, identity: Identity) {
        let until = now + self.config.wait;
        self.waiting.insert(conn, Waiting { identity, queued: VecDeque::new(), until, retry_at: None });
    }

    /// When a waiting connection next needs the hub: to ask again, or, with no answer by then, to be closed
    /// ([`CloseReason::ClaimUnsettled`](super::CloseReason::ClaimUnsettled)).
    pub(super) fn next_time(&self, conn: ConnHandle) -> Option<Instant> {
        let waiting = self.waiting.get(&conn)?;
        Some(waiting.retry_at.unwrap_or(waiting.until))
    }
}

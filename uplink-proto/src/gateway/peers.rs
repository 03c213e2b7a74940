//! The other nodes of a cluster, as one node sees them: where a person's decision goes when the request is
//! held elsewhere ([`route`]), where an MCP request for a sled held elsewhere goes ([`goes_to`]), and which
//! calls from another node are let in ([`PeerCalls`]).
//!
//! A person may ask any node. A decision for a request held at another node is carried there over the
//! cluster's internal listener and decided (and committed) by the node that holds it, before its sled
//! hears it; the node asked only relays the answer. Which node holds a request is what the shared table of
//! waiting requests says:
//!
//! ```text
//!  decide(id) ── held here ─────────────────────────────▶ decided here
//!       └─ not here ──▶ the table says:
//!            ├─ nothing, and the node that made the id ──▶ carried there: it knows how it ended (409),
//!            │  lives                                       or that it never was (404)
//!            ├─ nothing ─────────────────────────────────▶ 404 (never existed)
//!            ├─ this node ───────────────────────────────▶ 404 (it ended here just now)
//!            ├─ a live node ─────────────────────────────▶ carried there; its answer relayed
//!            │                                             (no answer: 503, and nothing was decided)
//!            ├─ a node that is gone, kept for its sled ──▶ 503: decided where its sled comes back
//!            └─ a node that is gone ─────────────────────▶ 409: ended as lost with its connection
//! ```
//!
//! Calls between nodes carry the caller's node, the node they are for, the caller's wall-clock time and a
//! tag over all of them and the call itself under a key every node of the cluster derives from the
//! database's secret (the adapter computes and checks the tag). [`PeerCalls`] lets one in only if it is for
//! this node, made at most [`PEER_CALL_AGE`] ago and at most [`PEER_CLOCK_AHEAD`] ahead by this node's
//! clock, and its tag was not seen before (a call recorded and sent again is refused). A caller waits
//! [`PEER_CALL_WITHIN`] for an answer, longer than a call can be let in: a call its caller gave up on (a
//! node paused, a link that held it back) is refused when it arrives at last, never acted on after the
//! caller said it had no answer, as long as the nodes' clocks agree within [`PEER_CLOCK_AHEAD`].

use alloc::collections::BTreeSet;

use crate::ids::PublicPermId;

use core::time::Duration;

/// How long ago (by this node's clock) a call may have been made to be let in; its tag is remembered as
/// long, so that the same call is never let in twice.
pub const PEER_CALL_AGE: Duration = Duration::from_secs(3);

/// How far ahead of this node's clock a call's time may be.
pub const PEER_CLOCK_AHEAD: Duration = Duration::from_secs(1);

/// How long a node waits for another's answer before it says there was none: longer than
/// [`PEER_CALL_AGE`] plus [`PEER_CLOCK_AHEAD`].
pub const PEER_CALL_WITHIN: Duration = Duration::from_secs(5);

/// Most tags remembered at once: beyond, calls are refused until older tags leave the window (a peer
/// sending more than this in [`PEER_CALL_AGE`] is refused, never let in unchecked).
pub const MAX_PEER_TAGS: usize = 1 << 16;

const AGE_MS: u64 = PEER_CALL_AGE.as_millis() as u64;
const AHEAD_MS: u64 = PEER_CLOCK_AHEAD.as_millis() as u64;

/// What the shared table says of a request this node does not hold.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The node it waits at.
    pub node: u64,
    /// That node's lease holds.
    pub live: bool,
    /// It is kept for its sled to come back (the `resume` extension), wherever that is.
    pub kept: bool,
}

/// Where a decision for a request this node does not hold goes ([`route`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Nowhere: no node holds it (`404`).
    Unknown,
    /// To the live node that holds it, over the internal listener.
    Peer(u64),
    /// Nowhere yet: the node that held it is gone and it is kept for its sled, which sends it again where
    /// it comes back (`503`: decide it there, then).
    Away,
    /// Nowhere: the node that held it is gone and so is the request (its sled denied it as connection lost;
    /// `409`).
    Lost,
}

/// The node that made a public id: a cluster's node makes its ids in a range of its own (its id times
/// 2^32), never another's.
pub fn made_by(perm: PublicPermId) -> u64 {
    perm.conn.0 >> 32
}

/// Where a decision for `perm` goes, for a request the hub of node `me` does not hold, which the shared
/// table says `holder` holds; `live(node)` says whether a node's lease holds.
pub fn route(me: u64, perm: PublicPermId, holder: Option<Holder>, live: impl Fn(u64) -> bool) -> Route {
    match holder {
        // The node that made the id remembers how its requests ended.
        None if made_by(perm) != me && live(made_by(perm)) => Route::Peer(made_by(perm)),
        None => Route::Unknown,
        // Ended here between the hub's answer and the table's: as though never found.
        Some(h) if h.node == me => Route::Unknown,
        Some(h) if h.live => Route::Peer(h.node),
        Some(h) if h.kept => Route::Away,
        Some(_) => Route::Lost,
    }
}

/// Where an MCP request goes that this node's hub refused with HTTP `status`, when the claims table says
/// `holder` holds its project: to another node, only for a refusal for want of the sled here (`404`: an
/// unknown project, or a session another node opened; `503`: not connected here). Nothing was sent to any
/// sled then, so carrying it elsewhere repeats nothing.
pub fn goes_to(me: u64, status: u16, holder: Option<u64>) -> Option<u64> {
    holder.filter(|&node| node != me && matches!(status, 404 | 503))
}

/// Why a call from another node was not let in ([`PeerCalls::admit`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    /// Signed for another node (sent to the wrong address, or replayed from another node's traffic).
    #[error("the call is for node {0}, not this one")]
    NotForMe(u64),
    /// Made longer ago than [`PEER_CALL_AGE`] (its caller stops waiting soon after), or further ahead of
    /// this node's clock than [`PEER_CLOCK_AHEAD`].
    #[error("the call is too old (over 3 s), or from over 1 s ahead of this node's clock")]
    OutOfWindow,
    /// The same call was let in before.
    #[error("the call was seen before")]
    Replayed,
    /// Too many calls within the window to remember them all.
    #[error("too many calls from other nodes at once")]
    Busy,
}

/// The calls other nodes made to this one within the window: see the [module docs](self).
#[derive(Clone, Debug)]
pub struct PeerCalls {
    me: u64,
    /// Tags let in, by when each leaves the window (wall-clock milliseconds), soonest first.
    seen: BTreeSet<(u64, [u8; 32])>,
    /// The same tags, to find one.
    tags: BTreeSet<[u8; 32]>,
}

impl PeerCalls {
    /// No call seen yet, at node `me`.
    pub fn new(me: u64) -> PeerCalls {
        PeerCalls { me, seen: BTreeSet::new(), tags: BTreeSet::new() }
    }

    /// A call whose tag checked out, made by a node at its `at_ms` (Unix milliseconds) for node `to`,
    /// arrived at this node's `now_ms`: let in, or why not. A call let in is remembered until it leaves
    /// the window.
    pub fn admit(&mut self, now_ms: u64, to: u64, at_ms: u64, tag: [u8; 32]) -> Result<(), PeerRefusal> {
        self.check_head(now_ms, to, at_ms)?;
        self.forget_before(now_ms);
        if self.tags.contains(&tag) {
            return Err(PeerRefusal::Replayed);
        }
        if self.tags.len() >= MAX_PEER_TAGS {
            return Err(PeerRefusal::Busy);
        }
        // Remembered until its time can no longer be in the window, whatever this clock does next.
        let leaves = at_ms.saturating_add(AGE_MS).max(now_ms);
        self.tags.insert(tag);
        self.seen.insert((leaves, tag));
        Ok(())
    }

    /// Whether a call's head (for node `to`, made at `at_ms`) may be let in at `now_ms`, before its body is
    /// read and its tag checked: a call for another node, or out of the window, is refused without reading
    /// more of it.
    pub fn check_head(&self, now_ms: u64, to: u64, at_ms: u64) -> Result<(), PeerRefusal> {
        if to != self.me {
            return Err(PeerRefusal::NotForMe(to));
        }
        if now_ms.saturating_sub(at_ms) > AGE_MS || at_ms.saturating_sub(now_ms) > AHEAD_MS {
            return Err(PeerRefusal::OutOfWindow);
        }
        Ok(())
    }

    /// Tags remembered.
    pub fn remembered(&self) -> usize {
        self.tags.len()
    }

    fn forget_before(&mut self, now_ms: u64) {
        while let Some(&(leaves, tag)) = self.seen.first() {
            if leaves >= now_ms {
                break;
            }
            self.seen.pop_first();
            self.tags.remove(&tag);
        }
    }
}

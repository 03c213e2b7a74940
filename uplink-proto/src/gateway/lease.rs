//! A gateway node's lease: when several gateways share one database (a cluster), each node lives on a lease
//! the database grants on its own clock, and stops acting for good (it *fences* itself) before the database
//! can consider the lease expired and let another node take what it held.
//!
//! ```text
//!  joined (the join was sent at `joined`)
//!    └─▶ live: deadline = joined + length − length/10
//!          every length/5 ── LeaseRenewalDue ──▶ renewal in flight
//!              ├─ renewed(sent, true)  ──▶ live: deadline = sent + length − length/10
//!              ├─ renewed(_, false)    ──▶ fenced (the database says the lease is gone)
//!              └─ no answer (an error) ──▶ live, deadline unchanged; due again at the next tick
//!          deadline reached (checked before every input) ──▶ fenced: for good
//! ```
//!
//! Why this is safe: the database sets a lease's expiry to *its* now plus `length` when it renews, which is
//! after the node sent the renewal; the node counts from the moment it sent it, on its own clock, and gives
//! up a tenth of `length` before. So as long as the two clocks' rates differ by less than a tenth, the node
//! has fenced before the database lets anyone take its claims. A node paused past its deadline (a stopped
//! process, a long pause of the machine) fences at the first input after it wakes, before acting on it.
//!
//! A fenced hub closes every connection with [`CloseReason::Fenced`](super::CloseReason::Fenced) (1012: the
//! sleds come back, through the load balancer, to another node), refuses new ones and decisions, and reports
//! nothing more for the store: what it held is the other nodes' to end.

use core::time::Duration;

use crate::time::Instant;

/// A node's lease, as [`HubConfig::lease`](super::HubConfig::lease) hands it to the hub.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// How long the database grants the lease from each renewal (10 s by default in a cluster). The hub
    /// renews every fifth of it and fences a tenth of it before it ends.
    pub length: Duration,
    /// When the join that granted the lease was sent (read before it was sent).
    pub joined: Instant,
}

impl LeaseConfig {
    /// A lease of `length`, granted by a join sent at `joined`.
    pub fn new(length: Duration, joined: Instant) -> LeaseConfig {
        LeaseConfig { length, joined }
    }

    /// How often it is renewed: a fifth of its length.
    pub fn renew_every(&self) -> Duration {
        self.length / 5
    }

    /// How long before the database's expiry the node fences: a tenth of its length.
    pub fn margin(&self) -> Duration {
        self.length / 10
    }
}

/// The lease's state, kept by the hub.
#[derive(Clone, Debug)]
pub(crate) struct Lease {
    config: LeaseConfig,
    /// Past this, the node may no longer act.
    deadline: Instant,
    /// When the next renewal is due.
    next_renewal: Instant,
    /// A renewal was asked for and has not been answered.
    in_flight: bool,
    fenced: bool,
}

impl Lease {
    pub(crate) fn new(config: LeaseConfig) -> Lease {
        Lease {
            deadline: config.joined + config.length.saturating_sub(config.margin()),
            next_renewal: config.joined + config.renew_every(),
            in_flight: false,
            fenced: false,
            config,
        }
    }

    /// True once the node has fenced.
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// True when the lease no longer covers `now` (and the node must fence).
    pub(crate) fn lapsed(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The node fences: for good.
    pub(crate) fn fence(&mut self) {
        self.fenced = true;
        self.in_flight = false;
    }

    /// True when a renewal should be asked for at `now` (once per tick, and never two at once).
    pub(crate) fn renewal_due(&mut self, now: Instant) -> bool {
        if self.fenced || self.in_flight || now < self.next_renewal {
            return false;
        }
        self.in_flight = true;
        self.next_renewal = now + self.config.renew_every();
        true
    }

    /// A renewal sent at `sent` was answered: `held` is whether the database renewed it. Returns false when
    /// the node must fence.
    pub(crate) fn renewed(&mut self, sent: Instant, held: bool) -> bool {
        self.in_flight = false;
        if self.fenced || !held {
            return false;
        }
        let until = sent + self.config.length.saturating_sub(self.config.margin());
        if until > self.deadline {
            self.deadline = until;
        }
        true
    }

    /// A renewal went unanswered (the database could not be reached): the deadline stays where it was.
    pub(crate) fn unanswered(&mut self) {
        self.in_flight = false;
    }

    /// The next time the lease needs the hub: its deadline, or the next renewal.
    pub(crate) fn next_time(&self) -> Option<Instant> {
        if self.fenced {
            return None;
        }
        Some(if self.in_flight { self.deadline } else { self.deadline.min(self.next_renewal) })
    }
}

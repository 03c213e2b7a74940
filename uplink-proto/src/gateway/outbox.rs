//! A webhook's outbox: notices waiting to be delivered to one receiver, one at a time, retried with
//! jittered back-off, within a budget. Pure: the adapter performs each delivery and reports its result.
//!
//! ```text
//!   push ──▶ queued ──poll_send──▶ in flight ──handle_result(ok)──▶ delivered
//!              ▲                        │
//!              └── waits its back-off ◀─┘ handle_result(failed), attempts left
//!                                       └──▶ given up                (no attempts left)
//!   push beyond max_queued or max_bytes ──▶ overflowed               (refused at once)
//! ```
//!
//! Every notice pushed ends exactly once: delivered, given up, or overflowed (refused as it came). A slow or
//! dead receiver holds only its own outbox: the queue is bounded by count and bytes, and what does not fit is
//! refused and counted, never waited for.

use alloc::collections::VecDeque;
use alloc::string::String;
use core::time::Duration;

use crate::backoff::Backoff;
use crate::time::Instant;

/// The limits and schedule of an [`Outbox`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// Most notices waiting (the one in flight included). Default 1,024.
    pub max_queued: usize,
    /// Most bytes of notices waiting. Default 4 MiB.
    pub max_bytes: usize,
    /// Deliveries of one notice before it is given up. Default 5.
    pub max_attempts: u32,
    /// The first retry's back-off ceiling (full jitter below it), doubling to [`OutboxConfig::max_delay`].
    /// Default 1 s.
    pub first_delay: Duration,
    /// The longest back-off. Default 60 s.
    pub max_delay: Duration,
    /// Seed of the jitter.
    pub seed: u64,
}

impl Default for OutboxConfig {
    fn default() -> OutboxConfig {
        OutboxConfig {
            max_queued: 1024,
            max_bytes: 4 << 20,
            max_attempts: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            seed: 0x5eed,
        }
    }
}

/// A notice refused because the outbox is full.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the outbox is full")]
pub struct Overflow;

/// Counters since the outbox was made.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Notices accepted by [`Outbox::push`].
    pub pushed: u64,
    /// Notices refused by it: the outbox was full.
    pub overflowed: u64,
    /// Notices the receiver took.
    pub delivered: u64,
    /// Notices given up after [`OutboxConfig::max_attempts`] failed deliveries.
    pub given_up: u64,
    /// Deliveries that failed (each retried or given up).
    pub failures: u64,
}

/// One webhook's outbox. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Outbox {
    cfg: OutboxConfig,
    queue: VecDeque<String>,
    bytes: usize,
    /// The front notice is being delivered.
    in_flight: bool,
    /// Failed deliveries of the front notice.
    attempts: u32,
    /// Not before then (a back-off), for the front notice.
    not_before: Option<Instant>,
    backoff: Backoff,
    stats: OutboxStats,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(cfg: OutboxConfig) -> Outbox {
        let backoff = Backoff::new(cfg.first_delay, cfg.max_delay, 2, true, cfg.seed);
        Outbox {
            cfg,
            queue: VecDeque::new(),
            bytes: 0,
            in_flight: false,
            attempts: 0,
            not_before: None,
            backoff,
            stats: OutboxStats::default(),
        }
    }

    /// Queues `notice`, or refuses it when the outbox is full (by count or bytes).
    pub fn push(&mut self, notice: String) -> Result<(), Overflow> {
        if self.queue.len() >= self.cfg.max_queued || self.bytes + notice.len() > self.cfg.max_bytes {
            self.stats.overflowed += 1;
            return Err(Overflow);
        }
        self.bytes += notice.len();
        self.queue.push_back(notice);
        self.stats.pushed += 1;
        Ok(())
    }

    /// The notice to deliver now, if one is due and none is in flight; the adapter reports how it went with
    /// [`Outbox::handle_result`].
    pub fn poll_send(&mut self, now: Instant) -> Option<&str> {
        if self.in_flight || self.not_before.is_some_and(|at| at > now) {
            return None;
        }
        let front = self.queue.front()?;
        self.in_flight = true;
        self.not_before = None;
        Some(front.as_str())
    }

    /// How the delivery [`Outbox::poll_send`] handed out went: taken by the receiver, or not (it will be
    /// retried after a back-off, or given up after the last attempt). Ignored when none is in flight.
    pub fn handle_result(&mut self, now: Instant, delivered: bool) {
        if !self.in_flight {
            return;
        }
        self.in_flight = false;
        if delivered {
            self.stats.delivered += 1;
            self.finish_front();
            return;
        }
        self.stats.failures += 1;
        self.attempts += 1;
        if self.attempts >= self.cfg.max_attempts {
            self.stats.given_up += 1;
            self.finish_front();
        } else {
            self.not_before = Some(now + self.backoff.next_delay());
        }
    }

    fn finish_front(&mut self) {
        if let Some(done) = self.queue.pop_front() {
            self.bytes -= done.len();
        }
        self.attempts = 0;
        self.not_before = None;
        self.backoff.reset();
    }

    /// When to call [`Outbox::poll_send`] again: the end of a back-off; `None` when nothing waits for time
    /// (empty, in flight, or sendable now).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight || self.queue.is_empty() { None } else { self.not_before }
    }

    /// Notices waiting, the one in flight included.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes of notices waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The counters.
    pub fn stats(&self) -> OutboxStats {
        self.stats
    }
}

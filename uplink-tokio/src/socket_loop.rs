//! What the two loops that carry a WebSocket share: the sled's driver and each gateway connection. Written
//! once, used by both:
//!
//! - [`Clock`]: the core's [`Instant`] (microseconds since the loop's epoch) and back;
//! - [`Turns`]: fair turn-taking between the loop's input sources, and write turns: queued frames are written
//!   when no input is ready, and after [`WRITE_BATCH`] inputs in a row in any case, so a flood of inputs
//!   cannot hold frames back while frames produced together still leave together (one flush each turn);
//! - [`received`]: a WebSocket message as the core's input.
//!
//! The one timer is [`crate::timer::Deadline`]; reading and writing the socket is [`crate::ws::Link`].

use std::task::{Context, Poll};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use uplink_proto::{Instant, Received};

/// Inputs a loop takes in a row before it writes its queued frames anyway.
pub(crate) const WRITE_BATCH: u32 = 64;

/// The loop's clock: the core's instants are microseconds since `epoch`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new(epoch: tokio::time::Instant) -> Clock {
        Clock { epoch }
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// When the core's `at` falls, for the loop's timer.
    pub(crate) fn at(&self, at: Instant) -> tokio::time::Instant {
        self.epoch + Duration::from_micros(at.as_micros())
    }
}

/// What [`Turns::poll`] asks its closure to poll.
pub(crate) enum Turn {
    /// Input source number `n`.
    Input(u8),
    /// Write what is queued; `Ready` only when writing failed.
    Write,
}

/// Turn-taking state of one loop. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Turns {
    first: u8,
    unwritten: u32,
}

impl Turns {
    /// Polls the loop's `sources` input sources (each goes first in turn, so a flood on one cannot starve
    /// the others) and its writes, through `poll`.
    pub(crate) fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        sources: u8,
        mut poll: impl FnMut(Turn, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if self.unwritten >= WRITE_BATCH {
            self.unwritten = 0;
            if let Poll::Ready(failed) = poll(Turn::Write, cx) {
                return Poll::Ready(failed);
            }
        }
        let first = self.first;
        self.first = (self.first + 1) % sources;
        for i in 0..sources {
            if let Poll::Ready(input) = poll(Turn::Input((first + i) % sources), cx) {
                self.unwritten += 1;
                return Poll::Ready(input);
            }
        }
        self.unwritten = 0;
        poll(Turn::Write, cx)
    }
}

/// `message` as the core's input; `None` for close and raw frames, which the link handles itself.
pub(crate) fn received(message: &Message) -> Option<Received<'_>> {
    Some(match message {
        Message::Text(text) => Received::Text(text.as_str()),
        Message::Binary(data) => Received::Binary(data),
        Message::Ping(_) => Received::Ping,
        Message::Pong(_) => Received::Pong,
        Message::Close(_) | Message::Frame(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn sources_take_turns_first_and_writes_come_when_idle_or_after_a_batch() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut turns = Turns::default();
        // Both sources always ready: they alternate going first, and every WRITE_BATCH inputs a write turn.
        let mut log = Vec::new();
        for _ in 0..(2 * WRITE_BATCH + 2) {
            let _ = turns.poll(&mut cx, 2, |turn, _| {
                let step = match turn {
                    Turn::Input(n) => format!("in{n}"),
                    Turn::Write => "write".to_owned(),
                };
                log.push(step);
                match turn {
                    Turn::Input(_) => Poll::Ready(()),
                    Turn::Write => Poll::Pending,
                }
            });
        }
        assert_eq!(log[..3], ["in0", "in1", "in0"]);
        assert_eq!(log.iter().filter(|s| *s == "write").count(), 2);
        assert_eq!(log.iter().position(|s| s == "write"), Some(WRITE_BATCH as usize));
        // Nothing ready: every source is polled, then the writes.
        let mut idle = Vec::new();
        let r: Poll<()> = turns.poll(&mut cx, 3, |turn, _| {
            idle.push(matches!(turn, Turn::Write));
            Poll::Pending
        });
        assert!(r.is_pending());
        assert_eq!(idle, [false, false, false, true]);
    }
}

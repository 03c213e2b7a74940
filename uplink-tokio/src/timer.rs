//! The one timer of a loop that drives a core: armed at the core's next deadline, reset only when that
//! deadline changes, and polled alongside the loop's other sources.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

pub(crate) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Deadline {
    pub(crate) fn new() -> Deadline {
        Deadline { sleep: Box::pin(tokio::time::sleep_until(Instant::now())), armed: false }
    }

    /// Arms the timer for `at`, or disarms it for `None`.
    pub(crate) fn set(&mut self, at: Option<Instant>) {
        match at {
            Some(at) => {
                if !self.armed || self.sleep.deadline() != at {
                    self.sleep.as_mut().reset(at);
                }
                self.armed = true;
            }
            None => self.armed = false,
        }
    }

    /// `Ready` once when an armed deadline passes; a disarmed timer never is.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            return Poll::Pending;
        }
        ready!(self.sleep.as_mut().poll(cx));
        self.armed = false;
        Poll::Ready(())
    }
}

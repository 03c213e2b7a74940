//! Pausing an accept loop after a failed accept (most often: out of file descriptors), so it never spins.

use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::warn;

/// The next connection on `listener` (with `TCP_NODELAY`), pausing after failed accepts; `None` once `stop`
/// completes.
pub(crate) async fn next(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    backoff.succeeded();
                    let _ = tcp.set_nodelay(true);
                    return Some(tcp);
                }
                Err(e) => {
                    // Out of file descriptors, most often: wait before trying again rather than spin.
                    let pause = backoff.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut *stop => return None,
                    }
                }
            },
            () = &mut *stop => return None,
        }
    }
}

/// Pauses between failed accepts: 5 ms doubling to 1 s, reset by a success; one log line per second at most.
#[derive(Default)]
pub(crate) struct AcceptBackoff {
    pause: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    /// A failed accept: how long to pause before the next.
    pub(crate) fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.pause = (self.pause * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let now = Instant::now();
        if self.last_log.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            warn!(%e, pause_ms = self.pause.as_millis() as u64, suppressed = self.suppressed, "accept failed");
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        self.pause
    }

    /// An accept succeeded: the next failure pauses briefly again.
    pub(crate) fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accepts_back_off_to_a_second_and_a_success_resets() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::other("too many open files");
        let pauses: Vec<u128> = (0..12).map(|_| b.failed(&e).as_millis()).collect();
        assert_eq!(pauses[..4], [5, 10, 20, 40]);
        assert_eq!(*pauses.last().unwrap_or(&0), 1000);
        b.succeeded();
        assert_eq!(b.failed(&e), Duration::from_millis(5));
    }
}

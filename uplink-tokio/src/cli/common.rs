//! What the program's commands share: reading a duration, and waiting for the signal to stop.

use std::time::Duration;

/// `500ms`, `10s`, `2m`: a duration as the flags take it.
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write durations like 500ms, 10s, 2m)"))
}

/// Ctrl-C, or SIGTERM on Unix. The handlers are installed when this is called, not when the future is first
/// polled, so call it before announcing readiness: a signal right after the ready line is then a clean
/// shutdown, never the default "terminate".
pub(super) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

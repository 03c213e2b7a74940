//! Logging set-up for the `uplink` program, safe with secrets at every level.
//!
//! One library logs secrets: tungstenite prints the whole client handshake request at TRACE under the log
//! target `tungstenite::handshake::client`. That request carries the sled's token (in `?token=` and
//! `Authorization`). The program's filter therefore always turns that target off, whatever `RUST_LOG` says (it only
//! ever logs handshake internals). Embedders with their own subscriber should do the same.

use tracing_subscriber::EnvFilter;

use crate::SECRET_SAFE_DIRECTIVES;

/// An `EnvFilter` for `spec` (the `RUST_LOG` syntax; `default` when empty or invalid), with
/// [`SECRET_SAFE_DIRECTIVES`] applied last so they always win.
fn filter_or(spec: &str, default: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(default));
    if spec.trim().is_empty() {
        filter = EnvFilter::new(default);
    }
    for directive in SECRET_SAFE_DIRECTIVES {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Installs the program's subscriber: human-readable lines on standard error, filtered by `RUST_LOG`
/// (`default` when unset), with `log` records from dependencies included. Does nothing if one is installed.
pub(crate) fn init(default: &str) {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter_or(&spec, default)).with_writer(std::io::stderr).try_init();
}

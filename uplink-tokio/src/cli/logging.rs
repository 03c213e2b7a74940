//! Logging set-up for the `uplink` program, safe with secrets at every level.
//!
//! One library logs secrets: tungstenite prints the whole client handshake request at TRACE under the log
//! target `tungstenite::handshake::client`. That request carries the sled's token (in `?token=` and
//! `Authorization`). The program's filter therefore always turns that target off, whatever `RUST_LOG` says (it only
//! ever logs handshake internals). Embedders with their own subscriber should do the same.

use tracing_subscriber::EnvFilter;

use crate::redact::SECRET_SAFE_DIRECTIVES;

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

/// How log lines are written.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// A sentence and `key=value` fields, one line each; coloured only on a terminal without `NO_COLOR`.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields` with `message`), for collectors.
    Json,
}

/// Whether text lines get colour: only when standard error is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>).
fn colour(no_color: Option<std::ffi::OsString>, terminal: bool) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the program's subscriber on standard error, filtered by `RUST_LOG` (`default` when unset), with
/// `log` records from dependencies included. Does nothing if one is installed.
pub(crate) fn init(default: &str, format: LogFormat) {
    use std::io::IsTerminal as _;
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let builder = tracing_subscriber::fmt().with_env_filter(filter_or(&spec, default)).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            builder.with_ansi(colour(std::env::var_os("NO_COLOR"), std::io::stderr().is_terminal())).try_init()
        }
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(colour(None, true));
        assert!(colour(Some("".into()), true), "an empty NO_COLOR is unset");
        assert!(!colour(Some("1".into()), true));
        assert!(!colour(None, false), "files and pipes get plain text");
    }
}

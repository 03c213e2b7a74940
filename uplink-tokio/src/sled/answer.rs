//! What the sled's handle answers: how a permission request ended ([`Answer`]), and why an uplink could not
//! start ([`StartError`], [`McpUrlError`]).

use uplink_proto::{Cause, ConfigError, Decision};

/// Why an [`Uplink`](super::Uplink) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Not called from within a tokio runtime.
    #[error("Uplink::start must be called from within a tokio runtime")]
    NoRuntime,
    /// The gateway URL is not a `ws://` or `wss://` URL (shown redacted).
    #[error("gateway URL {0} must start with ws:// or wss://")]
    GatewayUrl(String),
    /// The local MCP URL is unusable.
    #[error("local MCP URL {url}: {source}")]
    McpUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        #[source]
        source: McpUrlError,
    },
    /// The extra CA file could not be read.
    #[error("CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The extra CA file holds no certificate.
    #[error("CA file {0}: no certificate found")]
    NoCaCertificate(std::path::PathBuf),
    /// TLS could not be set up.
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    /// The core refused the configuration.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
}

/// How a permission request ended, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Answer {
    /// The decision; anything but the gateway's approval is [`Decision::Deny`].
    pub decision: Decision,
    /// Why: [`Cause::Response`] when the gateway decided, otherwise the fail-closed rule that denied it.
    pub cause: Cause,
    /// The person's message for the agent, when the gateway sent one with its decision.
    pub message: Option<String>,
}

impl Answer {
    /// A denial for `cause`, without a message.
    pub(crate) const fn denied(cause: Cause) -> Answer {
        Answer { decision: Decision::Deny, cause, message: None }
    }
}

/// Why the local MCP URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpUrlError {
    /// It is not a URL.
    #[error(transparent)]
    Invalid(#[from] hyper::http::uri::InvalidUri),
    /// It is not an `http://` URL with a host (the only kind supported).
    #[error("must be an http:// URL with a host")]
    NotHttp,
}

//! What an [`Uplink`](crate::Uplink) needs to know.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;

use uplink_proto::SledConfig;

use crate::redact::{encode_query_value, redact_url};

/// The sled's own MCP endpoint, as in the original.
pub const DEFAULT_LOCAL_MCP_URL: &str = "http://127.0.0.1:3001/mcp";

/// Largest WebSocket message accepted, by default (16 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Configuration of an [`Uplink`](crate::Uplink), made with [`UplinkConfig::new`]. Its `Debug` output never
/// shows the token.
#[derive(Clone)]
#[non_exhaustive]
pub struct UplinkConfig {
    /// `ws://` or `wss://` URL of the gateway's `/api/sled-uplink` endpoint. Empty: no gateway, every
    /// permission request is denied at once. A `?token=` already in the URL is kept.
    pub gateway_url: String,
    /// The sled's token, sent as the `?token=` query parameter (as the original did) and as
    /// `Authorization: Bearer`.
    pub token: Option<String>,
    /// The sled's local MCP endpoint (`http://` only), where `mcp_request`s are replayed.
    pub local_mcp_url: String,
    /// A PEM file of extra CA certificates trusted for `wss://`, besides the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Largest WebSocket message or frame accepted from the gateway; a larger one closes the connection.
    pub max_message_size: usize,
    /// Everything the protocol core decides with: project name, timings, limits, jitter seed.
    pub sled: SledConfig,
}

impl UplinkConfig {
    /// Defaults for a sled of `project` talking to `gateway_url`, with a random jitter seed.
    pub fn new(gateway_url: impl Into<String>, project: impl Into<String>) -> Self {
        let mut sled = SledConfig::new(project);
        sled.seed = random_seed();
        sled.sled_version = Some(concat!("uplink-tokio/", env!("CARGO_PKG_VERSION")).to_owned());
        sled.capabilities = vec!["mcp_session".to_owned()];
        UplinkConfig {
            gateway_url: gateway_url.into(),
            token: None,
            local_mcp_url: DEFAULT_LOCAL_MCP_URL.to_owned(),
            ca_file: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            sled,
        }
    }

    /// The URL actually dialled: the gateway URL plus `token=` when a token is configured.
    pub(crate) fn dial_url(&self) -> String {
        match self.token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => {
                let sep = if self.gateway_url.contains('?') { '&' } else { '?' };
                format!("{}{sep}token={}", self.gateway_url, encode_query_value(token))
            }
            None => self.gateway_url.clone(),
        }
    }

    /// The token to send as a bearer header: the configured one, or the `token` query parameter of the URL.
    pub(crate) fn bearer(&self) -> Option<String> {
        if let Some(t) = self.token.as_deref().filter(|t| !t.is_empty()) {
            return Some(t.to_owned());
        }
        let query = self.gateway_url.split_once('?')?.1;
        let query = query.split('#').next().unwrap_or(query);
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "token" && !v.is_empty())
                .then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
        })
    }
}

impl fmt::Debug for UplinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UplinkConfig")
            .field("gateway_url", &redact_url(&self.gateway_url))
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("local_mcp_url", &redact_url(&self.local_mcp_url))
            .field("ca_file", &self.ca_file)
            .field("max_message_size", &self.max_message_size)
            .field("sled", &self.sled)
            .finish()
    }
}

/// A seed from the standard library's per-process random keys: enough to spread sleds' reconnections.
pub(crate) fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_goes_into_the_query_and_the_bearer_header() {
        let mut c = UplinkConfig::new("ws://127.0.0.1:8700/api/sled-uplink", "p");
        assert_eq!(c.dial_url(), "ws://127.0.0.1:8700/api/sled-uplink");
        assert_eq!(c.bearer(), None);
        c.token = Some("a b&c".into());
        assert_eq!(c.dial_url(), "ws://127.0.0.1:8700/api/sled-uplink?token=a%20b%26c");
        assert_eq!(c.bearer().as_deref(), Some("a b&c"));
        let old_style = UplinkConfig::new("ws://h/api/sled-uplink?token=x%2By", "p");
        assert_eq!(old_style.dial_url(), "ws://h/api/sled-uplink?token=x%2By");
        assert_eq!(old_style.bearer().as_deref(), Some("x+y"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let mut c = UplinkConfig::new("ws://h/api/sled-uplink?token=in-url-secret", "p");
        c.token = Some("field-secret".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("in-url-secret") && !shown.contains("field-secret"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}

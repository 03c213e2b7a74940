//! Who may ask the sled's local face (`/permission`, `/mcp` on the loopback listener): only its own agents.
//!
//! A web page in the user's browser can reach a loopback port too: a CORS "simple request" (`text/plain`, no
//! preflight), a foreign `Origin`, or a DNS-rebound `Host`. [`LocalPolicy::check`] refuses each of these, and
//! a missing or wrong token when one is configured. The adapter reads the headers and answers with the
//! refusal's status; it decides nothing itself.

use alloc::string::String;
use alloc::vec::Vec;

/// What the sled's local listener accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalPolicy {
    /// `Origin`s allowed to ask (exact, e.g. `http://localhost:5173`). Default: none; a request without an
    /// `Origin` (what agents and command-line clients send) is always allowed.
    pub allowed_origins: Vec<String>,
    /// The address the listener is bound to (`host:port`); `Host` may name it, or a loopback name.
    pub listen: String,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// The parts of a request [`LocalPolicy::check`] looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalRequest<'a> {
    /// `Origin`, if present.
    pub origin: Option<&'a str>,
    /// `Host`, if present.
    pub host: Option<&'a str>,
    /// `Content-Type`, if present.
    pub content_type: Option<&'a str>,
    /// The token of `Authorization: Bearer`, if present.
    pub bearer: Option<&'a str>,
    /// The route takes only a JSON body (`/permission`).
    pub json_only: bool,
}

/// Why a local request is refused; [`LocalRefusal::status`] is the HTTP status to answer with.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocalRefusal {
    /// The token is configured and the request does not carry it (401).
    #[error("a local token is required (Authorization: Bearer …)")]
    Unauthorized,
    /// `Origin` is present and not allowed (403).
    #[error("requests from this Origin are not allowed")]
    ForeignOrigin,
    /// `Host` is neither the listen address nor a loopback name (403): DNS rebinding.
    #[error("this Host is not the sled's local address")]
    ForeignHost,
    /// The body is not declared `application/json` (415).
    #[error("the body must be Content-Type: application/json")]
    NotJson,
}

impl LocalRefusal {
    /// The HTTP status code.
    pub const fn status(self) -> u16 {
        match self {
            LocalRefusal::Unauthorized => 401,
            LocalRefusal::ForeignOrigin | LocalRefusal::ForeignHost => 403,
            LocalRefusal::NotJson => 415,
        }
    }
}

impl LocalPolicy {
    /// A policy for a listener bound to `listen` (`host:port`), with no origin allowed and no token.
    pub fn new(listen: impl Into<String>) -> LocalPolicy {
        LocalPolicy { listen: listen.into(), ..LocalPolicy::default() }
    }

    /// Accepts or refuses `request`. Checked in this order: the token, the `Origin`, the `Host`, the body's
    /// type.
    pub fn check(&self, request: &LocalRequest<'_>) -> Result<(), LocalRefusal> {
        if let Some(token) = &self.token
            && !request.bearer.is_some_and(|given| same_secret(token.as_bytes(), given.as_bytes()))
        {
            return Err(LocalRefusal::Unauthorized);
        }
        if let Some(origin) = request.origin
            && !self.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
        {
            return Err(LocalRefusal::ForeignOrigin);
        }
        if !request.host.is_some_and(|h| self.host_allowed(h)) {
            return Err(LocalRefusal::ForeignHost);
        }
        if request.json_only && !request.content_type.is_some_and(is_json) {
            return Err(LocalRefusal::NotJson);
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim();
        if host.eq_ignore_ascii_case(&self.listen) {
            return true;
        }
        let name = strip_port(host);
        name.eq_ignore_ascii_case(strip_port(&self.listen)) || is_loopback_name(name)
    }
}

/// `host` without a trailing `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `localhost` (and names under it), `127.0.0.0/8` written in dotted decimal, and `[::1]`.
fn is_loopback_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") || lower == "[::1]" {
        return true;
    }
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() == 4
        && parts[0] == "127"
        && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && parts.iter().all(|p| p.parse::<u16>().is_ok_and(|n| n <= 255))
}

/// `application/json`, with parameters allowed (`; charset=utf-8`).
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

//! How a [`Sled`](super::Sled) is shaped: its timings, limits and identity ([`SledConfig`]), and the
//! configurations it refuses ([`ConfigError`]).

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use crate::wire;

/// Everything that shapes a [`Sled`](crate::sled::Sled)'s behaviour. [`SledConfig::new`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SledConfig {
    /// `false` when no gateway is configured: the machine never connects and denies every permission request
    /// at once (fail-closed). Default `true`.
    pub enabled: bool,
    /// Project name announced in the `identity` frame.
    pub project: String,
    /// Sled software version announced in the `identity` frame (optional extra).
    pub sled_version: Option<String>,
    /// Extra capabilities announced in the `identity` frame, after the core's own (`perm_cancel`).
    pub capabilities: Vec<String>,
    /// Interval between `heartbeat` frames (each also asks for a WebSocket ping). Default 10 s.
    pub heartbeat_interval: Duration,
    /// A connection on which nothing (no frame, no pong) arrived for this long is closed. Default 30 s. Must
    /// exceed `heartbeat_interval`.
    pub idle_timeout: Duration,
    /// A connection attempt that has neither succeeded nor failed after this long is abandoned. Default 10 s.
    pub connect_timeout: Duration,
    /// First reconnection delay. Default 1 s.
    pub backoff_initial: Duration,
    /// Largest reconnection delay. Default 60 s.
    pub backoff_max: Duration,
    /// Growth factor of the delay per failed attempt. Default 2.
    pub backoff_multiplier: u32,
    /// Full jitter: draw each delay uniformly from `0..=` the exponential value. Default `true`; `false`
    /// reproduces the original implementation's delays exactly.
    pub backoff_jitter: bool,
    /// A connection that lived this long resets the back-off to `backoff_initial`. Default 30 s.
    pub stability_window: Duration,
    /// Seed of the jitter generator. The same seed and the same inputs give the same outputs. Default 0; an
    /// adapter running many sleds should pass a random seed so their reconnections spread out.
    pub seed: u64,
    /// A permission request still undecided after this long is denied (and withdrawn with `perm_cancel`).
    /// Default 120 s.
    pub permission_timeout: Duration,
    /// Most permission requests pending at once (queued while disconnected plus awaiting a response); one more
    /// is denied at once. Default 256.
    pub max_pending_permissions: usize,
    /// A local MCP call that has not replied after this long is answered with a JSON-RPC error and cancelled.
    /// Default 60 s.
    pub mcp_timeout: Duration,
    /// Most local MCP calls in flight at once; an `mcp_request` beyond that waits for a free slot (see
    /// `max_mcp_waiting`). Default 32.
    pub max_mcp_calls: usize,
    /// Most `mcp_request`s waiting for a free call slot, in arrival order; one more is answered at once with a
    /// JSON-RPC error ("sled busy"). A waiting request's deadline runs from its arrival. Default 256; 0 answers
    /// every request beyond `max_mcp_calls` at once, as the original did.
    pub max_mcp_waiting: usize,
    /// Most bytes of bodies waiting for a free call slot; beyond, as a full queue. Default 16 MiB.
    pub max_mcp_waiting_bytes: usize,
    /// Most standalone streams (`mcp_listen`) open at once; one more ends at once with a JSON-RPC error.
    /// Default 16.
    pub max_mcp_streams: usize,
    /// How long an `mcp_request` waits for its session's standalone stream to open at the local server when
    /// the gateway sent that stream's `mcp_listen` first: a session's calls follow its stream's `GET`, as the
    /// client sent them, so that the server's requests on that stream have somewhere to go. Past this, the
    /// call goes ahead anyway. Default 2 s.
    pub mcp_stream_open_wait: Duration,
    /// Most bytes of the `initialize` requests the sled keeps, across all its local MCP sessions, to renew a
    /// session its local server lost ([`crate::sled::mcp_session`]). Beyond, the least recently used sessions' are let go
    /// first; a session without its `initialize` that the local server loses is answered
    /// [`McpReply::SessionLost`](crate::sled::McpReply::SessionLost) (the gateway answers its client `404`, and the client initializes anew).
    /// Default [`crate::sled::mcp_session::DEFAULT_MAX_INITIALIZE_BYTES`] (1 MiB); 0 keeps none.
    pub max_mcp_initialize_bytes: usize,
    /// The largest frame the sled sends: the gateway's message limit. A permission request whose frame would
    /// be larger is denied at once ([`Cause::TooLarge`](crate::sled::Cause::TooLarge)), and a local MCP answer that would not fit is
    /// answered with a JSON-RPC error instead, so that the gateway never closes the link over one of them.
    /// Default [`wire::DEFAULT_MAX_FRAME_BYTES`] (16 MiB, the gateway's default).
    pub max_frame_bytes: usize,
    /// Offer the `resume` extension ([`wire::RESUME_CAPABILITY`]): on a connection whose gateway accepts it,
    /// requests sent there outlive a lost link and are sent again, under the same ids, once a gateway
    /// accepts again; each keeps its own deadline. Default `true`; `false` sends the original `identity`
    /// (without it) and denies what was sent on a connection when it drops, whatever the gateway.
    pub resume: bool,
    /// Most bytes of sent requests (tool name, input and id) kept to be sent again after a drop; a request
    /// sent beyond is not kept, and a drop denies it as without `resume`. Default 16 MiB.
    pub max_resume_bytes: usize,
    /// After a drop that kept requests, how long a new connection waits for the gateway's `resume_accepted`
    /// before it denies them (a gateway that accepts sends it at once; an older one never does). Default 5 s.
    pub resume_wait: Duration,
}

impl SledConfig {
    /// The defaults, for a sled announcing itself as `project`.
    pub fn new(project: impl Into<String>) -> Self {
        SledConfig {
            enabled: true,
            project: project.into(),
            sled_version: None,
            capabilities: Vec::new(),
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_multiplier: 2,
            backoff_jitter: true,
            stability_window: Duration::from_secs(30),
            seed: 0,
            permission_timeout: Duration::from_secs(120),
            max_pending_permissions: 256,
            mcp_timeout: Duration::from_secs(60),
            max_mcp_calls: 32,
            max_mcp_waiting: 256,
            max_mcp_waiting_bytes: 16 << 20,
            max_mcp_streams: 16,
            mcp_stream_open_wait: Duration::from_secs(2),
            max_mcp_initialize_bytes: super::mcp_session::DEFAULT_MAX_INITIALIZE_BYTES,
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            resume: true,
            max_resume_bytes: 16 << 20,
            resume_wait: Duration::from_secs(5),
        }
    }

    /// A configuration with no gateway: the machine stays [`LinkState::Disabled`](crate::sled::LinkState::Disabled) and denies everything.
    pub fn disabled() -> Self {
        SledConfig { enabled: false, ..SledConfig::new("") }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_timeout", self.idle_timeout),
            ("connect_timeout", self.connect_timeout),
            ("backoff_initial", self.backoff_initial),
            ("permission_timeout", self.permission_timeout),
            ("mcp_timeout", self.mcp_timeout),
            ("resume_wait", self.resume_wait),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::Zero(name));
        }
        if self.idle_timeout <= self.heartbeat_interval {
            return Err(ConfigError::IdleNotAboveHeartbeat);
        }
        if self.backoff_max < self.backoff_initial {
            return Err(ConfigError::BackoffMaxBelowInitial);
        }
        if self.backoff_multiplier == 0 {
            return Err(ConfigError::Zero("backoff_multiplier"));
        }
        if self.max_pending_permissions == 0 {
            return Err(ConfigError::Zero("max_pending_permissions"));
        }
        if self.max_frame_bytes == 0 {
            return Err(ConfigError::Zero("max_frame_bytes"));
        }
        if self.max_mcp_calls == 0 {
            return Err(ConfigError::Zero("max_mcp_calls"));
        }
        if self.enabled && self.project.is_empty() {
            return Err(ConfigError::EmptyProject);
        }
        Ok(())
    }
}

/// A [`SledConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration or limit that must be positive is zero.
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    /// The idle timeout would expire between two heartbeats of a healthy connection.
    #[error("`idle_timeout` must be greater than `heartbeat_interval`")]
    IdleNotAboveHeartbeat,
    /// The back-off cap is below its first delay.
    #[error("`backoff_max` must be at least `backoff_initial`")]
    BackoffMaxBelowInitial,
    /// An enabled sled must announce a project name.
    #[error("`project` must not be empty")]
    EmptyProject,
}

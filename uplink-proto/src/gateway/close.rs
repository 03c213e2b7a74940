//! Every close the gateway makes, with its WebSocket code and reason. The codes live here and nowhere else.

/// Why the gateway closes a sled connection. [`CloseReason::code`] and [`CloseReason::text`] give the close
/// frame; PROTOCOL.md lists them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The first frame was not an `identity` (1008).
    IdentityNotFirst,
    /// No `identity` within the identity timeout (1008).
    NoIdentity,
    /// A newer connection with the same credential took the project over (4000).
    Replaced,
    /// The connection's credential does not cover the project it announced (4003).
    ProjectNotPermitted,
    /// The project is held by a live connection with another credential (4009).
    ProjectHeld,
    /// The sled sent a message over the maximum message size (1009).
    MessageTooBig,
    /// The gateway is stopping (1001).
    ShuttingDown,
    /// The gateway is stopping, and holds what this sled asked for its return: come back (1012, service
    /// restart). Only to a sled known to keep its requests (`resume`, confirmed); any other gets 1001.
    Restarting,
    /// Nothing arrived from the sled for the dead threshold (4008).
    Dead,
    /// The connection's credential was revoked, expired, or no longer covers its project (4010).
    CredentialRevoked,
    /// The sled sent more than its budgets allow while its claim was being settled with the other gateways
    /// of a cluster (1008).
    FloodedBeforeClaim,
    /// The gateway lost its lease in its cluster and stopped acting (1012): the sled comes back, through the
    /// load balancer, to another gateway ([`super::lease`]).
    Fenced,
    /// The shared table did not answer the connection's claim in time (1013, try again later): the sled
    /// comes back, perhaps to another gateway.
    ClaimUnsettled,
}

impl CloseReason {
    /// The WebSocket close code.
    pub const fn code(self) -> u16 {
        match self {
            CloseReason::IdentityNotFirst | CloseReason::NoIdentity | CloseReason::FloodedBeforeClaim => 1008,
            CloseReason::Replaced => 4000,
            CloseReason::ProjectNotPermitted => 4003,
            CloseReason::ProjectHeld => 4009,
            CloseReason::MessageTooBig => 1009,
            CloseReason::ShuttingDown => 1001,
            CloseReason::Restarting => 1012,
            CloseReason::Dead => 4008,
            CloseReason::CredentialRevoked => 4010,
            CloseReason::ClaimUnsettled => 1013,
            CloseReason::Fenced => 1012,
        }
    }

    /// The close frame's reason text.
    pub const fn text(self) -> &'static str {
        match self {
            CloseReason::IdentityNotFirst => "identity must be the first frame",
            CloseReason::NoIdentity => "no identity in time",
            CloseReason::Replaced => "replaced by a newer connection",
            CloseReason::ProjectNotPermitted => "project not permitted for this credential",
            CloseReason::ProjectHeld => "project held by another connection",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::ShuttingDown => "gateway shutting down",
            CloseReason::Restarting => "gateway restarting",
            CloseReason::Dead => "silent past the dead threshold",
            CloseReason::CredentialRevoked => "credential revoked or expired",
            CloseReason::FloodedBeforeClaim => "too much sent before the claim was settled",
            CloseReason::ClaimUnsettled => "the claim was not settled in time; try again",
            CloseReason::Fenced => "gateway lost its lease; connect again",
        }
    }
}

impl core::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} {}", self.code(), self.text())
    }
}

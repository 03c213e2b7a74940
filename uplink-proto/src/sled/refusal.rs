//! Why a gateway refuses this sled ([`Refusal`]): causes that waiting does not mend, where a person must change
//! something (a token, a project name, a URL). After one, the link backs off (at the back-off's cap, but for
//! [`Refusal::ProjectHeld`], which ends when the other sled goes), every request pending is denied with it, and
//! so is every request made until the next attempt: agents learn the cause at once instead of waiting for
//! their permission timeout. The next connection is tried as usual; requests made while it is under way are
//! sent on it, and denied with the refusal if it is refused again.

/// Why the gateway refuses this sled.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The gateway refused the token at the handshake (HTTP 401 or 403), or wanted one and none was given.
    Token,
    /// Nothing answers at the gateway URL's path (HTTP 404 at the handshake).
    NotFound,
    /// The token does not cover the project the sled announced (close 4003).
    ProjectNotPermitted,
    /// The token was revoked or has expired, or no longer covers the project (close 4010).
    Revoked,
    /// Another sled, with another token, holds the project (close 4009).
    ProjectHeld,
}

impl Refusal {
    /// The refusal a gateway's close code means, if it means one.
    pub const fn from_close_code(code: u16) -> Option<Refusal> {
        match code {
            4003 => Some(Refusal::ProjectNotPermitted),
            4009 => Some(Refusal::ProjectHeld),
            4010 => Some(Refusal::Revoked),
            _ => None,
        }
    }

    /// The refusal's word, for metrics and answers: `unauthorized`, `not_found`, `project_not_permitted`,
    /// `revoked`, `project_held`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Token => "unauthorized",
            Refusal::NotFound => "not_found",
            Refusal::ProjectNotPermitted => "project_not_permitted",
            Refusal::Revoked => "revoked",
            Refusal::ProjectHeld => "project_held",
        }
    }

    /// What the gateway refused, for a person or an agent.
    pub const fn describe(self) -> &'static str {
        match self {
            Refusal::Token => "the gateway refused this sled's token",
            Refusal::NotFound => "nothing answers at the gateway URL's path",
            Refusal::ProjectNotPermitted => "this sled's token does not cover its project",
            Refusal::Revoked => "this sled's token was revoked or has expired",
            Refusal::ProjectHeld => "another sled, with another token, holds this project",
        }
    }

    /// What to do about it.
    pub const fn hint(self) -> &'static str {
        match self {
            Refusal::Token => "check the sled's --token (UPLINK_TOKEN): a sled token minted by the gateway",
            Refusal::NotFound => "the gateway's WebSocket path is /api/sled-uplink",
            Refusal::ProjectNotPermitted => {
                "use a token whose project pattern covers this project, or a project name the token covers"
            }
            Refusal::Revoked => "ask the gateway's operator for a new sled token",
            Refusal::ProjectHeld => "stop the other sled, or give this one another project name",
        }
    }

    /// Whether retrying soon is pointless: the next attempt waits the back-off's cap. Only a project held by
    /// another sled can end by itself (when that sled goes).
    pub const fn waits_the_cap(self) -> bool {
        !matches!(self, Refusal::ProjectHeld)
    }
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.describe())
    }
}

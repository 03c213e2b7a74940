//! Who may do what through the gateway's API: each admin principal has a [`Role`], and each route needs an
//! [`Action`]. The adapter authenticates the principal; this module decides what its role allows.

use core::fmt;
use core::str::FromStr;

/// What a principal may do. Each role includes the ones before it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: sleds, pending permissions, events.
    Viewer,
    /// Also decides permissions (and relays MCP requests to sleds, which can act on them).
    Approver,
    /// Also manages credentials and rules.
    Admin,
}

/// What a request through the API asks to do.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// List sleds and permissions, follow events.
    Read,
    /// Decide a permission; send an MCP request to a sled.
    Decide,
    /// Manage credentials and rules.
    Manage,
}

impl Role {
    /// Whether this role may do `action`.
    pub const fn allows(self, action: Action) -> bool {
        let needed = match action {
            Action::Read => Role::Viewer,
            Action::Decide => Role::Approver,
            Action::Manage => Role::Admin,
        };
        self as u8 >= needed as u8
    }

    /// The role's word: `viewer`, `approver` or `admin`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not `viewer`, `approver` or `admin`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a role: expected viewer, approver or admin")]
pub struct BadRole;

impl FromStr for Role {
    type Err = BadRole;

    fn from_str(s: &str) -> Result<Role, BadRole> {
        [Role::Viewer, Role::Approver, Role::Admin].into_iter().find(|r| r.as_str() == s).ok_or(BadRole)
    }
}

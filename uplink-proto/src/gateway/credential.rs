//! Who a connection is: the credential it presented, and which projects that credential may identify as.
//!
//! The adapter checks the token and hands the [`Hub`](super::Hub) the credential it matched; the hub decides
//! what that credential may do with a project (the claim rule, in [`Hub`](super::Hub)'s docs).

use alloc::string::String;
use alloc::vec::Vec;

use crate::time::Instant;

/// Names one credential. Two connections with the same id are the same sled restarting, as far as the
/// claim rule is concerned.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CredentialId(pub u64);

/// The projects a credential may identify as.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProjectScope {
    /// Any project (the original's shared sled token).
    Any,
    /// Projects matching any of these patterns. `*` matches any run of characters (`/` included); every other
    /// character matches itself.
    Patterns(Vec<String>),
    /// This one project, byte for byte (`*` is a character like any other here): the scope of a person's
    /// "always allow" for a project.
    Exactly(String),
}

impl ProjectScope {
    /// Whether `project` is covered.
    pub fn covers(&self, project: &str) -> bool {
        match self {
            ProjectScope::Any => true,
            ProjectScope::Patterns(patterns) => {
                patterns.iter().any(|p| crate::glob::star_match(p.as_bytes(), project.as_bytes()))
            }
            ProjectScope::Exactly(name) => name == project,
        }
    }
}

/// A credential as the hub sees it: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Credential {
    /// Which credential.
    pub id: CredentialId,
    /// What it may identify as.
    pub scope: ProjectScope,
    /// When it stops being valid: connections are refused from then on, and its live ones are closed
    /// ([`CloseReason::CredentialRevoked`](super::CloseReason::CredentialRevoked)). `None`: never.
    pub expires: Option<Instant>,
}

impl Credential {
    /// A credential for `scope`, without expiry.
    pub fn new(id: CredentialId, scope: ProjectScope) -> Credential {
        Credential { id, scope, expires: None }
    }

    /// A credential that may identify as any project.
    pub fn unbound(id: CredentialId) -> Credential {
        Credential::new(id, ProjectScope::Any)
    }

    /// The same credential, valid until `at` only.
    pub fn expiring(mut self, at: Instant) -> Credential {
        self.expires = Some(at);
        self
    }

    /// Whether it has expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

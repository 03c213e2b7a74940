//! The application's answer to one permission request: the decision and what the person said with it.

use alloc::sync::Arc;

use crate::time::Instant;
use crate::wire::{Decision, MAX_MESSAGE_BYTES};

/// Where a person's "always allow" applies from now on: the scope of the allow rule it creates.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum AlwaysScope {
    /// Calls from this sled connection only; the rule ends with the connection.
    Connection,
    /// Calls from this project's sleds (the default).
    #[default]
    Project,
    /// Calls from every project.
    Everywhere,
}

impl AlwaysScope {
    /// `connection`, `project` or `everywhere`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlwaysScope::Connection => "connection",
            AlwaysScope::Project => "project",
            AlwaysScope::Everywhere => "everywhere",
        }
    }
}

impl core::str::FromStr for AlwaysScope {
    type Err = BadScope;

    fn from_str(s: &str) -> Result<AlwaysScope, BadScope> {
        [AlwaysScope::Connection, AlwaysScope::Project, AlwaysScope::Everywhere]
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(BadScope)
    }
}

/// A word that is not `connection`, `project` or `everywhere`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a scope: expected connection, project or everywhere")]
pub struct BadScope;

/// The rule an "always allow" creates: where, until when, and when it was made.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Always {
    /// Where it applies.
    pub scope: AlwaysScope,
    /// When it stops applying; `None`: never.
    pub until: Option<Instant>,
    /// When it was made, in the adapter's own terms (Unix seconds for `uplink gateway`); the rule's
    /// [`created`](crate::rules::Rule::created).
    pub created: u64,
}

impl Always {
    /// An "always allow" for `scope`, made at `created`, without expiry.
    pub const fn new(scope: AlwaysScope, created: u64) -> Always {
        Always { scope, until: None, created }
    }

    /// The same, until `at`.
    pub const fn until(mut self, at: Instant) -> Always {
        self.until = Some(at);
        self
    }
}

/// `always_allow` without `approved`: a contradiction, never read as an approval.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("always_allow requires approved")]
pub struct Contradiction;

/// A decision on one pending permission, as [`Hub::decide`](super::Hub::decide) and
/// [`SledSession::decide`](super::SledSession::decide) take it. A bare [`Decision`] converts into one without a
/// message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verdict {
    /// Approve, deny or always allow.
    pub decision: Decision,
    /// Words for the agent, sent as the `perm_response`'s `message` (at most [`MAX_MESSAGE_BYTES`]).
    pub message: Option<Arc<str>>,
    /// Who decided: the admin principal's name, for events, listings and the record. Never sent to the sled.
    pub by: Option<Arc<str>>,
    /// For [`Decision::AlwaysAllow`]: the rule it creates ([`Always::default`] when `None`: this project,
    /// no expiry). Ignored for other decisions.
    pub always: Option<Always>,
}

impl Verdict {
    /// `decision`, without a message.
    pub const fn new(decision: Decision) -> Verdict {
        Verdict { decision, message: None, by: None, always: None }
    }

    /// The verdict a person's `approved` and `always_allow` answers mean: approve, deny, or always allow
    /// (`always_allow` with `approved`). `always_allow` without `approved` is refused: a person who says
    /// both "no" and "always" has made a mistake, and a mistake never approves.
    pub const fn from_answers(approved: bool, always_allow: bool) -> Result<Verdict, Contradiction> {
        match (approved, always_allow) {
            (false, true) => Err(Contradiction),
            (approved, always) => Ok(Verdict::new(Decision::from_flags(approved, always))),
        }
    }

    /// The same verdict; if it is an "always allow", the rule it creates is `always`.
    pub fn always(mut self, always: Always) -> Verdict {
        self.always = Some(always);
        self
    }

    /// The same verdict with `message` for the agent; an empty message is none.
    pub fn with_message(mut self, message: impl Into<Arc<str>>) -> Verdict {
        let message = message.into();
        self.message = (!message.is_empty()).then_some(message);
        self
    }

    /// The same verdict, decided by the principal `name`.
    pub fn by(mut self, name: impl Into<Arc<str>>) -> Verdict {
        self.by = Some(name.into());
        self
    }

    /// True when the message fits in a `perm_response` ([`MAX_MESSAGE_BYTES`]).
    pub fn message_fits(&self) -> bool {
        self.message.as_ref().is_none_or(|m| m.len() <= MAX_MESSAGE_BYTES)
    }
}

impl From<Decision> for Verdict {
    fn from(decision: Decision) -> Verdict {
        Verdict::new(decision)
    }
}

//! The application's answer to one permission request: the decision and what the person said with it.

use alloc::sync::Arc;

use crate::wire::{Decision, MAX_MESSAGE_BYTES};

/// A decision on one pending permission, as [`Hub::decide`](super::Hub::decide) and
/// [`Gateway::decide`](super::Gateway::decide) take it. A bare [`Decision`] converts into one without a
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
}

impl Verdict {
    /// `decision`, without a message.
    pub const fn new(decision: Decision) -> Verdict {
        Verdict { decision, message: None, by: None }
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

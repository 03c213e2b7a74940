//! The gateway's two clocks side by side ([`Wall`]: the core's instants and Unix time), and the rules'
//! kept form: the core's [`Rule`] with its times in Unix seconds ([`StoredRule`]). What a rule means and
//! which one wins is the core's (`uplink_proto::rules`); this converts.

use std::time::{Duration, SystemTime};

use uplink_proto::Instant;
use uplink_proto::gateway::{ConnHandle, ProjectScope};
use uplink_proto::rules::{Effect, Pattern, Rule, RuleId};

use crate::store::StoredRule;

/// The mapping between the core's clock and the wall clock, fixed when the hub task starts: the core's
/// instant 0 is `epoch_ms` Unix milliseconds.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Wall {
    epoch_ms: u64,
}

impl Wall {
    /// The wall clock now is the core's `now`.
    pub(crate) fn new(now: Instant, wall: SystemTime) -> Wall {
        let unix_ms = u64::try_from(wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis())
            .unwrap_or(u64::MAX);
        Wall { epoch_ms: unix_ms.saturating_sub(now.as_micros() / 1000) }
    }

    /// The Unix milliseconds of the core's `at`.
    pub(crate) fn unix_ms(&self, at: Instant) -> u64 {
        self.epoch_ms.saturating_add(at.as_micros() / 1000)
    }

    /// The core's instant at `unix_secs` (the core's 0 for a time before it started).
    pub(crate) fn instant(&self, unix_secs: u64) -> Instant {
        let ms = unix_secs.saturating_mul(1000).saturating_sub(self.epoch_ms);
        Instant::ZERO + Duration::from_millis(ms)
    }
}

/// `rule` as it is kept and shown.
pub(crate) fn stored(rule: &Rule, wall: &Wall) -> StoredRule {
    let (projects, project) = match &rule.projects {
        ProjectScope::Patterns(p) => (Some(p.clone()), None),
        ProjectScope::Exactly(p) => (None, Some(p.clone())),
        _ => (None, None),
    };
    StoredRule {
        id: rule.id.0,
        effect: rule.effect.as_str().to_owned(),
        pattern: rule.pattern.to_string(),
        projects,
        project,
        connection: rule.connection.map(|c| c.0),
        expires: rule.expires.map(|at| wall.unix_ms(at).div_ceil(1000)),
        author: rule.author.to_string(),
        created: rule.created,
    }
}

/// A kept rule that no longer reads.
#[derive(Debug, thiserror::Error)]
#[error("kept rule #{id} ({pattern:?}) does not read: {why}")]
pub struct BadStoredRule {
    id: u64,
    pattern: String,
    why: String,
}

/// The core's rule for a kept one. A rule that no longer reads is an error, never skipped: dropping a deny
/// rule would allow what it denied.
pub(crate) fn from_stored(rule: &StoredRule, wall: &Wall) -> Result<Rule, BadStoredRule> {
    let bad = |why: String| BadStoredRule { id: rule.id, pattern: rule.pattern.clone(), why };
    let effect: Effect = rule.effect.parse().map_err(|e| bad(format!("{e}")))?;
    let pattern = Pattern::parse(&rule.pattern).map_err(|e| bad(format!("{e}")))?;
    let mut core = Rule::new(RuleId(rule.id), effect, pattern, rule.author.as_str(), rule.created);
    core = match (&rule.project, &rule.projects) {
        (Some(p), _) => core.for_projects(ProjectScope::Exactly(p.clone())),
        (None, Some(p)) => core.for_projects(ProjectScope::Patterns(p.clone())),
        (None, None) => core,
    };
    if let Some(c) = rule.connection {
        core = core.for_connection(ConnHandle(c));
    }
    if let Some(at) = rule.expires {
        core = core.expiring(wall.instant(at));
    }
    Ok(core)
}

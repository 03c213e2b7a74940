//! The gateway's two clocks side by side ([`Wall`]: the core's instants and Unix time), and the kept forms
//! of the core's rules ([`StoredRule`], times in Unix seconds) and of requests that may come back
//! ([`StoredResumable`], Unix milliseconds). What a rule means and which one wins, and what a request that
//! comes back matches, are the core's (`uplink_proto::rules`, `uplink_proto::gateway::resume`); this
//! converts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use uplink_proto::gateway::{ConnHandle, CredentialId, HeldRequest, ProjectScope, ResumeKey, Verdict};
use uplink_proto::rules::{Effect, Pattern, Rule, RuleId};
use uplink_proto::{Decision, Instant};

use crate::store::{StoredResumable, StoredRule};

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
        self.instant_ms(unix_secs.saturating_mul(1000))
    }

    /// The core's instant at `unix_ms` (the core's 0 for a time before it started).
    pub(crate) fn instant_ms(&self, unix_ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(unix_ms.saturating_sub(self.epoch_ms))
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
    let pattern = Pattern::parse_kept(&rule.pattern).map_err(|e| bad(format!("{e}")))?;
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

/// `request` as the store keeps it.
pub(crate) fn stored_resumable(request: &HeldRequest, wall: &Wall) -> StoredResumable {
    let verdict = request.verdict.as_ref();
    StoredResumable {
        id: request.id.to_string(),
        credential: request.key.credential.0,
        project: request.key.project.clone(),
        incarnation: request.key.incarnation.to_string(),
        req_id: request.key.req_id.clone(),
        tool_name: request.tool_name.clone(),
        tool_input: request.tool_input.to_string(),
        since_ms: wall.unix_ms(request.since),
        deadline_ms: request.deadline.map(|d| wall.unix_ms(d)),
        decision: verdict.map(|v| v.decision.as_str().to_owned()),
        message: verdict.and_then(|v| v.message.as_deref().map(str::to_owned)),
        by: verdict.and_then(|v| v.by.as_deref().map(str::to_owned)),
        sent: request.sent,
    }
}

/// The hub's request for a kept one; `None` for one that does not read (it is then not restored: its sled's
/// request, sent again, is a new one for a person).
pub(crate) fn from_stored_resumable(kept: &StoredResumable, wall: &Wall) -> Option<HeldRequest> {
    let verdict = match kept.decision.as_deref() {
        Some(d) => {
            let mut v = Verdict::new(d.parse::<Decision>().ok()?);
            if let Some(m) = &kept.message {
                v = v.with_message(m.as_str());
            }
            if let Some(by) = &kept.by {
                v = v.by(by.as_str());
            }
            Some(v)
        }
        None => None,
    };
    Some(HeldRequest {
        id: kept.id.parse().ok()?,
        key: ResumeKey {
            credential: CredentialId(kept.credential),
            project: kept.project.clone(),
            incarnation: Arc::from(kept.incarnation.as_str()),
            req_id: kept.req_id.clone(),
        },
        tool_name: kept.tool_name.clone(),
        tool_input: Arc::from(kept.tool_input.as_str()),
        since: wall.instant_ms(kept.since_ms),
        deadline: kept.deadline_ms.map(|d| wall.instant_ms(d)),
        verdict,
        sent: kept.sent,
    })
}

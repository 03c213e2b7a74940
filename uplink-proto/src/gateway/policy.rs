//! The hub's automatic decisions: the one place where a permission request is decided without a person.
//!
//! In order, for each request as it arrives:
//! 1. a limit of its session's ([`SessionLimit`]: too deep, too many or too large pending on its connection)
//!    denies it, with the limit's words;
//! 2. the fleet's budget (the pending input bytes across every connection,
//!    [`HubConfig::max_pending_input_bytes`](super::HubConfig::max_pending_input_bytes)) denies it;
//! 3. the rules decide ([`RuleSet::evaluate`]: deny wins, then ask, then allow), the auto flags among them
//!    (each `--auto-deny` and `--auto-approve` tool is a rule authored [`FLAG_AUTHOR`], so that a deny rule
//!    wins over them as over any allow);
//! 4. otherwise a person decides.
//!
//! A denial tells the agent which limit or rule it was; an approval needs no words.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::sled_session::SessionLimit;
use crate::rules::{Effect, Outcome, Pattern, Request, Rule, RuleId, RuleSet};
use crate::time::Instant;
use crate::wire::Decision;

/// The author of the rules that stand for the auto flags ([`HubConfig::auto_approve`](super::HubConfig::auto_approve)
/// and [`HubConfig::auto_deny`](super::HubConfig::auto_deny)).
pub const FLAG_AUTHOR: &str = "--auto-approve/--auto-deny";

/// The first id of the rules that stand for the auto flags: `2000000000`, `2000000001`, …
pub const FLAG_RULE_IDS: u64 = 2_000_000_000;

/// What the agent is told when the fleet's budget denied its request.
pub const FLEET_TOO_LARGE: &str = "the requests waiting at the gateway are too large";

/// A request decided without a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AutoDecision {
    /// The decision.
    pub(crate) decision: Decision,
    /// The rule that made it, if a rule did.
    pub(crate) rule: Option<RuleId>,
    /// What the agent is told, for a denial.
    pub(crate) message: Option<String>,
}

/// The rules that stand for the auto flags: a deny for each of `deny`, then an allow for each of `approve`.
pub(crate) fn flag_rules(deny: &BTreeSet<String>, approve: &BTreeSet<String>) -> Vec<Rule> {
    let flagged = deny.iter().map(|t| (Effect::Deny, t)).chain(approve.iter().map(|t| (Effect::Allow, t)));
    flagged
        .enumerate()
        .map(|(i, (effect, tool))| {
            Rule::new(RuleId(FLAG_RULE_IDS + i as u64), effect, Pattern::tool(tool), FLAG_AUTHOR, 0)
        })
        .collect()
}

/// How `request` is decided without a person at `now`, if it is: past its session's limit `over`, past the
/// fleet's budget (`fleet_over`), or by `rules`. `None`: a person decides.
pub(crate) fn decide(
    now: Instant,
    over: Option<SessionLimit>,
    fleet_over: bool,
    rules: &RuleSet,
    request: &Request<'_>,
) -> Option<AutoDecision> {
    let deny = |rule, message: String| AutoDecision { decision: Decision::Deny, rule, message: Some(message) };
    if let Some(limit) = over {
        return Some(deny(None, String::from(limit.message())));
    }
    if fleet_over {
        return Some(deny(None, String::from(FLEET_TOO_LARGE)));
    }
    match rules.evaluate(now, request) {
        Outcome::Deny(rule) => Some(deny(Some(rule), rule_message(rules, rule))),
        // An approval needs no words (and the hot path no allocation).
        Outcome::Allow(rule) => Some(AutoDecision { decision: Decision::Approve, rule: Some(rule), message: None }),
        Outcome::Ask(_) | Outcome::NoRule => None,
    }
}

/// What the agent is told when the rule `id` denied.
fn rule_message(rules: &RuleSet, id: RuleId) -> String {
    match rules.rules().iter().find(|r| r.id == id) {
        Some(r) if &*r.author == FLAG_AUTHOR => String::from("denied by the gateway's --auto-deny rule for this tool"),
        Some(r) => format!("denied by the gateway's rule #{}: {}", id.0, r.pattern),
        None => format!("denied by the gateway's rule #{}", id.0),
    }
}

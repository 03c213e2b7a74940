//! Rules shared with other gateways: when several gateways serve one fleet (a cluster on one database), a
//! rule made or removed at one is in force at the others too. Two things make that work without a hub
//! waiting on another:
//!
//! - **Ids from blocks**: the rule ids a hub hands out come from blocks the adapter draws from the shared
//!   store ([`Hub::use_rule_ids`]), so that no two gateways ever give one id to two rules. When a quarter of
//!   the block is left, the hub asks for the next ([`HubEvent::RuleIdsWanted`], once until it comes); with
//!   none left, a rule is refused ([`RuleRefused::NoIds`]) and "always allow" approves once without one.
//! - **Changes from elsewhere** ([`Hub::handle_rules_elsewhere`]): what another gateway added or removed, as
//!   the adapter found it between two readings of the shared store. A change is applied as such: a rule
//!   added is put in force unless the hub has it already or removed it lately ([`REMOVED_KEPT`]), a rule
//!   removed is taken out; so a reading taken before one of this hub's own commits never undoes it. The
//!   adapter hands over each rule changed since its last reading as it is now (in force, or removed), in
//!   the order the store committed the changes. The configuration's rules, the auto flags' and a
//!   connection's own are never touched.
//!
//! ```text
//!  use_rule_ids(a..b) ──▶ ids a, a+1, … ──(a quarter left)──▶ RuleIdsWanted ──▶ use_rule_ids(c..d)
//!                                       └─(none left)──▶ add_rule refused: NoIds
//!  handle_rules_elsewhere(added, removed) ──▶ in force from now on ──▶ RulesChangedElsewhere
//! ```
//!
//! [`RuleRefused::NoIds`]: super::RuleRefused::NoIds
//! [`Hub::use_rule_ids`]: super::Hub::use_rule_ids
//! [`Hub::handle_rules_elsewhere`]: super::Hub::handle_rules_elsewhere
//! [`HubEvent::RuleIdsWanted`]: super::HubEvent::RuleIdsWanted

use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::ops::Range;

use super::hub_config::CONFIG_RULE_IDS;
use crate::rules::{Rule, RuleId, RuleSet};

/// The block of rule ids a hub hands out from, when it shares its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RuleIds {
    /// The first id past the block.
    pub(crate) until: u64,
    /// How many ids the block held.
    pub(crate) size: u64,
    /// The next block was asked for, and has not come.
    pub(crate) asked: bool,
}

impl RuleIds {
    /// A block of `ids` (none at or above [`CONFIG_RULE_IDS`]); the next id to hand out is its first.
    pub(crate) fn of(ids: &Range<u64>) -> (RuleIds, u64) {
        let until = ids.end.min(CONFIG_RULE_IDS);
        let next = ids.start.min(until);
        (RuleIds { until, size: until - next, asked: false }, next)
    }

    /// The next id from `next`, if one is left, and whether to ask for the next block now (a quarter left).
    pub(crate) fn take(&mut self, next: &mut u64) -> (Option<RuleId>, bool) {
        if *next >= self.until {
            return (None, false);
        }
        let id = RuleId(*next);
        *next += 1;
        let ask = !self.asked && self.until - *next <= self.size / 4;
        self.asked |= ask;
        (Some(id), ask)
    }
}

/// How many of the rules removed here a hub remembers, so that a reading taken before its removal was
/// committed does not put one back (ids are never given twice, so one removed is never added again).
pub const REMOVED_KEPT: usize = 1024;

/// The rules removed here lately, oldest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Removed {
    order: VecDeque<RuleId>,
    ids: BTreeSet<RuleId>,
}

impl Removed {
    /// `id` was removed here.
    pub(crate) fn note(&mut self, id: RuleId) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > REMOVED_KEPT
                && let Some(old) = self.order.pop_front()
            {
                self.ids.remove(&old);
            }
        }
    }
}

/// Applies another gateway's changes to `rules`: the ids it took out and put in force (only rules made at
/// run time: ids below [`CONFIG_RULE_IDS`], none of a connection's own; a rule `rules` has already is kept
/// as it is, and one removed here lately is not put back).
pub(crate) fn apply_elsewhere(
    rules: &mut RuleSet,
    removed_here: &Removed,
    added: Vec<Rule>,
    removed: Vec<RuleId>,
) -> (Vec<RuleId>, Vec<RuleId>) {
    let shared = |rule: &Rule| rule.id.0 < CONFIG_RULE_IDS && rule.connection.is_none();
    let mut gone = Vec::new();
    for id in removed {
        if rules.rules().iter().any(|r| r.id == id && shared(r)) && rules.remove(id) {
            gone.push(id);
        }
    }
    let mut came = Vec::new();
    for rule in added {
        if shared(&rule) && !removed_here.ids.contains(&rule.id) && !rules.rules().iter().any(|r| r.id == rule.id) {
            came.push(rule.id);
            rules.insert(rule);
        }
    }
    (came, gone)
}

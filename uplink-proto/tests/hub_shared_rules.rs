//! Rules shared with other gateways (`gateway::shared_rules`): rule ids from blocks, the next block asked
//! for once a quarter is left, and changes made elsewhere in force here from the next request on; a property
//! test of three hubs sharing one table of rules through readings taken at any moment, against what each
//! reading must have put in force.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::hub::{HubDriver, events, sent};
use proptest::prelude::*;
use serde_json::json;
use uplink_proto::gateway::{
    CONFIG_RULE_IDS, ConnHandle, Credential, CredentialId, HubConfig, HubEvent, HubOutput, RuleRefused,
};
use uplink_proto::rules::{Effect, Pattern, Rule, RuleId};
use uplink_proto::{Decision, Instant};

fn rule(effect: Effect, pattern: &str) -> Rule {
    Rule::new(RuleId(0), effect, Pattern::parse(pattern).expect("valid"), "ana", 0)
}

/// A Bash call `command` from `conn`: the decision a rule made at once (`None`: a person is asked).
fn bash(h: &mut HubDriver, conn: ConnHandle, req_id: &str, command: &str) -> Option<bool> {
    let frame = json!({"type":"perm_request","req_id":req_id,
        "payload":{"tool_name":"Bash","tool_input":{"command":command}}});
    h.text(conn, &frame.to_string());
    let outs = h.drain();
    sent(&outs, conn).iter().find(|f| f["type"] == "perm_response").map(|f| f["payload"]["approved"] == true)
}

fn wanted(outs: &[HubOutput]) -> usize {
    events(outs).iter().filter(|e| matches!(e, HubEvent::RuleIdsWanted)).count()
}

#[test]
fn rule_ids_come_from_the_block_handed_over_the_next_is_asked_for_once_and_none_left_refuses() {
    let mut h = HubDriver::with(HubConfig::default());
    let conn = h.identify(Credential::unbound(CredentialId(1)), "web");
    h.drain();
    h.hub.use_rule_ids(100..108);
    let mut ids = Vec::new();
    let mut asked = 0;
    for _ in 0..8 {
        ids.push(h.hub.add_rule(h.now, rule(Effect::Deny, "Write")).expect("an id is left").0);
        asked += wanted(&h.drain());
        if ids.len() == 5 {
            assert_eq!(asked, 0, "more than a quarter left");
        }
    }
    assert_eq!(ids, (100..108).collect::<Vec<_>>());
    assert_eq!(asked, 1, "asked once, as a quarter was left");
    assert_eq!(h.hub.add_rule(h.now, rule(Effect::Deny, "Write")), Err(RuleRefused::NoIds));
    // "Always allow" with no id left approves once and makes no rule.
    assert_eq!(bash(&mut h, conn, "r1", "ls"), None);
    let id = h.hub.permissions(h.now)[0].id;
    assert_eq!(h.hub.decide(h.now, id, Decision::AlwaysAllow).map(|d| d.rule), Ok(None));
    h.drain();
    // The next block: its first id, and a new ask when it runs low in turn.
    h.hub.use_rule_ids(300..304);
    assert_eq!(h.hub.add_rule(h.now, rule(Effect::Deny, "Read")), Ok(RuleId(300)));
    assert_eq!(h.hub.add_rule(h.now, rule(Effect::Deny, "Read")), Ok(RuleId(301)));
    assert_eq!(h.hub.add_rule(h.now, rule(Effect::Deny, "Read")), Ok(RuleId(302)));
    assert_eq!(wanted(&h.drain()), 1);
    // A block reaching the configuration's ids stops short of them.
    h.hub.use_rule_ids(CONFIG_RULE_IDS - 1..CONFIG_RULE_IDS + 5);
    assert_eq!(h.hub.add_rule(h.now, rule(Effect::Deny, "Read")), Ok(RuleId(CONFIG_RULE_IDS - 1)));
    assert_eq!(h.hub.add_rule(h.now, rule(Effect::Deny, "Read")), Err(RuleRefused::NoIds));
}

#[test]
fn rules_changed_elsewhere_decide_the_next_requests_and_touch_nothing_else() {
    let mut cfg = HubConfig::default();
    let config_rule =
        Rule::new(RuleId(CONFIG_RULE_IDS + 3), Effect::Deny, Pattern::parse("Bash(rm *)").expect("valid"), "config", 0);
    cfg.rules = vec![config_rule];
    let mut h = HubDriver::with(cfg);
    h.hub.use_rule_ids(1..100);
    let conn = h.identify(Credential::unbound(CredentialId(1)), "web");
    h.drain();
    assert_eq!(bash(&mut h, conn, "r1", "ls -l"), None, "asked: no rule yet");
    h.drain();
    // Another gateway made an allow rule (id 500, from its own block) and a deny rule.
    let allow = rule(Effect::Allow, "Bash(ls *)").with_id(RuleId(500));
    let deny = rule(Effect::Deny, "Bash(curl *)").with_id(RuleId(501));
    h.hub.handle_rules_elsewhere(h.now, vec![allow.clone(), deny], Vec::new());
    let outs = h.drain();
    assert!(
        events(&outs).iter().any(|e| matches!(e, HubEvent::RulesChangedElsewhere { added, removed }
            if added == &[RuleId(500), RuleId(501)] && removed.is_empty())),
        "{outs:?}"
    );
    assert!(!events(&outs).iter().any(|e| matches!(e, HubEvent::RuleAdded { .. })), "nothing to keep here");
    assert_eq!(bash(&mut h, conn, "r2", "ls -a"), Some(true));
    assert_eq!(bash(&mut h, conn, "r3", "curl x"), Some(false));
    // The same again changes nothing; a rule with an id the hub has is kept as it is.
    let other = rule(Effect::Deny, "Bash(ls *)").with_id(RuleId(500));
    h.hub.handle_rules_elsewhere(h.now, vec![other], Vec::new());
    assert!(events(&h.drain()).is_empty());
    assert_eq!(bash(&mut h, conn, "r4", "ls -a"), Some(true));
    // Removed elsewhere: no longer in force. The configuration's rules, and a connection's own, are never
    // taken out from elsewhere.
    let mine = h.hub.add_rule(h.now, rule(Effect::Allow, "Bash(pwd)").for_connection(conn)).expect("added");
    h.drain();
    h.hub.handle_rules_elsewhere(h.now, Vec::new(), vec![RuleId(500), RuleId(CONFIG_RULE_IDS + 3), mine]);
    let outs = h.drain();
    assert!(
        events(&outs)
            .iter()
            .any(|e| matches!(e, HubEvent::RulesChangedElsewhere { removed, .. } if removed == &[RuleId(500)]))
    );
    assert_eq!(bash(&mut h, conn, "r5", "ls -a"), None, "asked again");
    h.drain();
    assert_eq!(bash(&mut h, conn, "r6", "rm x"), Some(false), "the configuration's rule stays");
    assert_eq!(bash(&mut h, conn, "r7", "pwd"), Some(true), "the connection's own stays");
    // A rule of a connection, or beyond the configuration's ids, is never added from elsewhere.
    let theirs = rule(Effect::Allow, "Bash(env)").with_id(RuleId(600)).for_connection(ConnHandle(9));
    let high = rule(Effect::Allow, "Bash(env)").with_id(RuleId(CONFIG_RULE_IDS + 9));
    h.hub.handle_rules_elsewhere(h.now, vec![theirs, high], Vec::new());
    assert!(events(&h.drain()).is_empty());
    assert_eq!(bash(&mut h, conn, "r8", "env"), None);
    let _ = Instant::ZERO + Duration::ZERO;
}

/// What a step of the property test does.
#[derive(Clone, Debug)]
enum Step {
    /// Hub `h` makes a rule.
    Add(usize, bool),
    /// Hub `h` removes the `k`-th rule made at run time it has.
    Remove(usize, usize),
    /// Hub `h`'s changes so far reach the table.
    Commit(usize),
    /// Hub `h`'s adapter reads the table and hands over what changed since its last reading.
    Read(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, any::<bool>()).prop_map(|(h, allow)| Step::Add(h, allow)),
        (0..3usize, 0..6usize).prop_map(|(h, k)| Step::Remove(h, k)),
        (0..3usize).prop_map(Step::Commit),
        (0..3usize).prop_map(Step::Read),
    ]
}

/// The rules made at run time a hub has in force.
fn shared(h: &HubDriver) -> BTreeMap<RuleId, Rule> {
    h.hub.rules().rules().iter().filter(|r| r.id.0 < CONFIG_RULE_IDS).map(|r| (r.id, r.clone())).collect()
}

enum Change {
    Put(Rule),
    Delete(RuleId),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Three hubs share one table of rules: each writes what it makes or removes (committed later, in
    /// order), and reads the table at any moment, handing over each rule changed since its last reading as
    /// it is now (in force, or removed), as the adapter does. No id is ever given to two rules; a rule whose
    /// removal was committed is out of force at every hub once it read the table after that; a rule a
    /// reading found in force is in force at the hub that read it, unless that hub removed it itself (which
    /// no reading puts back, even one taken before the removal was committed); and once everything is
    /// committed and read, every hub has exactly the table's rules.
    #[test]
    fn hubs_sharing_a_table_of_rules_agree_once_they_have_read_it(steps in proptest::collection::vec(step(), 1..60)) {
        let mut hubs: Vec<HubDriver> = (0..3).map(|_| HubDriver::with(HubConfig::default())).collect();
        let mut blocks = 1u64;
        let mut draw = || { let b = blocks..blocks + 4; blocks += 4; b };
        for h in &mut hubs {
            h.hub.use_rule_ids(draw());
        }
        // The table: each rule's last change, with the version it was committed under (None: removed).
        let mut rows: BTreeMap<RuleId, (u64, Option<Rule>)> = BTreeMap::new();
        let mut version = 0u64;
        let mut owner: BTreeMap<RuleId, usize> = BTreeMap::new();
        let mut queued: Vec<Vec<Change>> = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut read_until = [0u64; 3];
        let mut removed_here: Vec<BTreeSet<RuleId>> = vec![BTreeSet::new(); 3];
        let end: Vec<Step> = (0..3).map(Step::Commit).chain((0..3).map(Step::Read)).collect();
        for step in steps.iter().chain(end.iter()) {
            match *step {
                Step::Add(i, allow) => {
                    let h = &mut hubs[i];
                    let effect = if allow { Effect::Allow } else { Effect::Deny };
                    if let Ok(id) = h.hub.add_rule(h.now, rule(effect, "Bash(ls *)")) {
                        prop_assert!(owner.insert(id, i).is_none(), "id {:?} given twice", id);
                        queued[i].push(Change::Put(shared(h)[&id].clone()));
                    }
                    let outs = h.drain();
                    if wanted(&outs) > 0 {
                        h.hub.use_rule_ids(draw());
                    }
                }
                Step::Remove(i, k) => {
                    let h = &mut hubs[i];
                    if let Some(&id) = shared(h).keys().nth(k) {
                        prop_assert!(h.hub.remove_rule(h.now, id, "ana"));
                        removed_here[i].insert(id);
                        queued[i].push(Change::Delete(id));
                    }
                    h.drain();
                }
                Step::Commit(i) => {
                    for change in queued[i].drain(..) {
                        version += 1;
                        match change {
                            Change::Put(rule) => { rows.insert(rule.id, (version, Some(rule))); }
                            Change::Delete(id) => { rows.insert(id, (version, None)); }
                        }
                    }
                }
                Step::Read(i) => {
                    let changed = rows.values().filter(|(v, _)| *v > read_until[i]);
                    let added: Vec<Rule> = changed.clone().filter_map(|(_, r)| r.clone()).collect();
                    let removed: Vec<RuleId> =
                        rows.iter().filter(|(_, (v, r))| *v > read_until[i] && r.is_none()).map(|(id, _)| *id).collect();
                    read_until[i] = version;
                    let h = &mut hubs[i];
                    h.hub.handle_rules_elsewhere(h.now, added, removed);
                    h.drain();
                    let in_force = shared(h);
                    for id in &removed_here[i] {
                        prop_assert!(!in_force.contains_key(id), "hub {} put back {:?}, which it removed itself", i, id);
                    }
                    for (id, (_, rule)) in &rows {
                        match rule {
                            None => prop_assert!(!in_force.contains_key(id), "hub {} still has {:?}, removed and read", i, id),
                            Some(rule) if !removed_here[i].contains(id) => {
                                prop_assert_eq!(in_force.get(id), Some(rule), "hub {} read {:?}", i, id)
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
        }
        let table: BTreeMap<RuleId, Rule> = rows.into_iter().filter_map(|(id, (_, r))| r.map(|r| (id, r))).collect();
        for (i, h) in hubs.iter().enumerate() {
            prop_assert_eq!(&shared(h), &table, "hub {} after everything was committed and read", i);
        }
    }
}

//! Rules parsed from arbitrary text and evaluated on arbitrary requests: nothing panics, a deny rule that
//! matches on its own denies whatever the other rules are, in any order, and whatever a Bash line leaves
//! open, a construct bash can turn into code after it is never approved by an allow rule, not even one
//! matching every simple command.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uplink_proto::Instant;
use uplink_proto::rules::{Effect, Outcome, Pattern, Request, Rule, RuleId, RuleSet};

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<(u8, String)>,
    tool: String,
    command: String,
    raw_input: Option<String>,
}

fuzz_target!(|input: Input| {
    let effects = [Effect::Allow, Effect::Ask, Effect::Deny];
    let rules: Vec<Rule> = input
        .rules
        .iter()
        .take(16)
        .enumerate()
        .filter_map(|(i, (e, text))| {
            let pattern = Pattern::parse(text).ok()?;
            Some(Rule::new(RuleId(i as u64), effects[usize::from(*e) % 3], pattern, "fuzz", 0))
        })
        .collect();
    let tool_input = input.raw_input.unwrap_or_else(|| {
        serde_json::json!({"command": input.command, "file_path": input.command, "url": input.command}).to_string()
    });
    let request = Request { connection: None, project: "p", tool_name: &input.tool, tool_input: &tool_input };
    let all = RuleSet::new(rules.clone());
    let outcome = all.evaluate(Instant::ZERO, &request);
    for r in rules.iter().filter(|r| r.effect == Effect::Deny) {
        if matches!(RuleSet::new(vec![r.clone()]).evaluate(Instant::ZERO, &request), Outcome::Deny(_)) {
            assert!(matches!(outcome, Outcome::Deny(_)), "a matching deny was overridden");
        }
    }
    let mut reversed = rules;
    reversed.reverse();
    assert_eq!(RuleSet::new(reversed).evaluate(Instant::ZERO, &request), outcome, "order changed the outcome");

    let any = Pattern::parse("Bash(**)").expect("a pattern");
    let any = RuleSet::new(vec![Rule::new(RuleId(0), Effect::Allow, any, "fuzz", 0)]);
    for code in ["ls $[x]", "ls \"${!x}\"", "ls ${x@P}", "let x", "printf -v 'a[x]' z", "ls {a[x]}>/dev/null"] {
        // `;` too, since a line ending in a backslash would join the next word to its last.
        let command = format!("{}\n;{code}", input.command);
        let tool_input = serde_json::json!({ "command": command }).to_string();
        let request = Request { connection: None, project: "p", tool_name: "Bash", tool_input: &tool_input };
        let outcome = any.evaluate(Instant::ZERO, &request);
        assert!(!matches!(outcome, Outcome::Allow(_)), "approved: {command:?}");
    }
});

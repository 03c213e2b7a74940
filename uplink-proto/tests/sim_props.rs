//! Properties of the sled and gateway machines together, over random workloads and fault schedules, in
//! the pair harness. A small reference model says what every permission and MCP request may end as; it is
//! checked after every step. Half the cases run with the hub accepting `resume` (the sled always offers
//! it), and their schedules include gateway crashes (a new hub given what an adapter kept) and sled process
//! crashes (a new incarnation, its request ids starting again). Case count:
//! `PROPTEST_CASES` (default 256).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::pair::{Pair, message_for};
use proptest::prelude::*;
use uplink_proto::gateway::{HubConfig, HubEvent, HubOutput, McpTicket, ResumeConfig, SessionConfig};
use uplink_proto::{Cause, Decision, Instant, LinkState, McpReply, PermKey, RawValue, SledConfig};

#[derive(Clone, Debug)]
enum Act {
    Run(u16),
    Ask,
    Flood(u8),
    GatewayMcp,
    McpFlood(u8),
    Cut,
    Blackhole(bool),
    HalfOpen {
        to_sled: bool,
        on: bool,
    },
    GatewayDown,
    GatewayUp,
    McpLatency(u16),
    McpFailing(bool),
    Approver(u8),
    Duplicate(bool),
    StaleResponse(u8),
    Garbage(u8),
    /// The gateway crashes and starts again from what its store kept.
    Restart,
    /// The sled process crashes and a new one starts (a new incarnation), whose request ids start again
    /// at `r1`: a decision for its predecessor's `r1` must never reach it.
    SledRestart,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        8 => (1u16..20_000).prop_map(Act::Run),
        // Short runs, so that cuts and crashes land between a request, its decision and the decision's
        // arrival (the approver takes 30 ms, a frame 5 ms).
        4 => (1u16..60).prop_map(Act::Run),
        5 => Just(Act::Ask),
        1 => (1u8..40).prop_map(Act::Flood),
        3 => Just(Act::GatewayMcp),
        1 => (1u8..60).prop_map(Act::McpFlood),
        1 => Just(Act::Cut),
        1 => any::<bool>().prop_map(Act::Blackhole),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(to_sled, on)| Act::HalfOpen { to_sled, on }),
        1 => Just(Act::GatewayDown),
        2 => Just(Act::GatewayUp),
        1 => (0u16..3000).prop_map(Act::McpLatency),
        1 => any::<bool>().prop_map(Act::McpFailing),
        2 => (0u8..5).prop_map(Act::Approver),
        1 => any::<bool>().prop_map(Act::Duplicate),
        1 => any::<u8>().prop_map(Act::StaleResponse),
        1 => (0u8..4).prop_map(Act::Garbage),
        1 => Just(Act::Restart),
        1 => Just(Act::SledRestart),
    ]
}

const GARBAGE: [&str; 4] =
    ["nope", r#"{"type":"perm_response","payload":[true,true]}"#, r#"{"type":"zz"}"#, r#"["mcp_request"]"#];

struct Sim {
    p: Pair,
    asked: BTreeMap<PermKey, (String, Instant)>,
    /// (connection, the session's id) → the JSON-RPC id sent: ids are per session, so per connection.
    mcp: BTreeMap<McpTicket, u64>,
    next: u64,
    sled_cfg: SledConfig,
    gw_seen: usize,
    resume: bool,
    /// A fault that may swallow frames on a live link (a black hole, a half-open link, garbage) happened.
    lossy: bool,
    /// The gateway was down (refusing connections) at some point: a request may then wait out its deadline.
    was_down: bool,
    /// The current sled process's last request id, and how many processes there were before it.
    req: u64,
    restarts: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim::with_resume(seed, false)
    }

    fn with_resume(seed: u64, resume: bool) -> Sim {
        let sled_cfg = SledConfig {
            seed,
            permission_timeout: Duration::from_secs(30),
            max_pending_permissions: 16,
            mcp_timeout: Duration::from_secs(2),
            ..SledConfig::new("sim")
        };
        let gw_cfg = SessionConfig { mcp_timeout: Duration::from_secs(5), ..SessionConfig::default() };
        let mut hub_cfg = HubConfig::new(gw_cfg);
        hub_cfg.resume = resume.then(ResumeConfig::default);
        let mut p = Pair::with_hub(sled_cfg.clone(), hub_cfg);
        // The MCP server tags each answer with the request's own id, so answers can be matched to requests.
        p.mcp_server = Box::new(|body| match uplink_proto::jsonrpc::body_id(body) {
            uplink_proto::jsonrpc::BodyId::Id(id) => McpReply::Response(
                RawValue::from_string(format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":{{"for":{}}}}}"#,
                    id.get(),
                    id.get()
                ))
                .expect("JSON"),
            ),
            _ => McpReply::NoContent,
        });
        Sim {
            p,
            asked: BTreeMap::new(),
            mcp: BTreeMap::new(),
            next: 0,
            sled_cfg,
            gw_seen: 0,
            resume,
            lossy: false,
            was_down: false,
            req: 0,
            restarts: 0,
        }
    }

    fn ask(&mut self) {
        self.next += 1;
        self.req += 1;
        // Unique tool names let the approver's decision be traced to the request; request ids start again
        // with each sled process.
        let tool = format!("tool{}", self.next);
        let key = self.p.ask(&format!("r{}", self.req), &tool);
        self.asked.insert(key, (tool, self.p.now));
    }

    /// The gateway sends one MCP request, tagged with a unique JSON-RPC id.
    fn apply_mcp(&mut self) {
        self.next += 1;
        let n = self.next;
        if let Some(ticket) = self.p.gateway_mcp(&format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"x"}}"#)) {
            self.mcp.insert(ticket, n);
        }
    }

    fn apply(&mut self, act: &Act) {
        match act {
            Act::Run(ms) => self.p.run_for(Duration::from_millis(u64::from(*ms))),
            Act::Ask => self.ask(),
            Act::Flood(n) => (0..*n).for_each(|_| self.ask()),
            Act::GatewayMcp => self.apply_mcp(),
            Act::McpFlood(n) => (0..*n).for_each(|_| self.apply_mcp()),
            Act::Cut => self.p.cut(),
            Act::Blackhole(on) => {
                self.lossy |= *on;
                self.p.blackhole = *on;
            }
            Act::HalfOpen { to_sled, on } => {
                self.lossy |= *on;
                if *to_sled {
                    self.p.drop_to_sled = *on;
                } else {
                    self.p.drop_to_gateway = *on;
                }
            }
            Act::GatewayDown => {
                self.was_down = true;
                self.p.gateway_up = false;
                self.p.cut();
            }
            Act::GatewayUp => self.p.gateway_up = true,
            Act::McpLatency(ms) => self.p.mcp_latency = Duration::from_millis(u64::from(*ms)),
            Act::McpFailing(on) => {
                if *on {
                    self.p.mcp_server = Box::new(|_| McpReply::Failed("down".into()));
                }
            }
            Act::Approver(mode) => {
                let mode = *mode;
                self.p.approver = Box::new(move |_| match mode {
                    0 => Some((Decision::Approve, Duration::from_millis(30))),
                    1 => Some((Decision::Deny, Duration::from_millis(30))),
                    2 => Some((Decision::AlwaysAllow, Duration::from_secs(10))),
                    3 => Some((Decision::Approve, Duration::from_secs(40))),
                    _ => None,
                });
            }
            Act::Duplicate(on) => self.p.duplicate_to_sled = *on,
            Act::StaleResponse(n) => {
                // An approval for a request that already ended (say, denied when its connection was lost)
                // arrives late, on whatever connection is live now. It must change nothing.
                let ended: Vec<String> = self.p.decided.iter().map(|d| d.id.clone()).collect();
                if !ended.is_empty() {
                    let id = &ended[usize::from(*n) % ended.len()];
                    self.p.inject_to_sled(&format!(
                        r#"{{"type":"perm_response","req_id":"{id}","payload":{{"approved":true,"always_allow":true}}}}"#
                    ));
                }
            }
            Act::SledRestart => {
                // What the old process asked dies with it (its callers too); the model forgets it.
                self.restarts += 1;
                self.req = 0;
                self.asked.clear();
                self.p.restart_sled(self.sled_cfg.seed.wrapping_add(self.restarts));
            }
            Act::Restart => {
                // The MCP requests in flight die with the gateway (and their callers' connections with them).
                let ended: std::collections::BTreeSet<McpTicket> = self
                    .p
                    .gw_log
                    .iter()
                    .filter_map(|o| match o {
                        HubOutput::Event(HubEvent::McpAnswered { ticket, .. } | HubEvent::McpFailed { ticket, .. }) => {
                            Some(*ticket)
                        }
                        _ => None,
                    })
                    .collect();
                self.mcp.retain(|t, _| ended.contains(t));
                self.p.restart_gateway();
            }
            Act::Garbage(g) => {
                self.lossy = true;
                self.p.inject_to_sled(GARBAGE[usize::from(*g)]);
                self.p.inject_to_gateway(GARBAGE[usize::from(*g)]);
            }
        }
        self.check();
    }

    /// The reference model: what each request may have ended as, given what crossed the link.
    fn check(&mut self) {
        let mut decided: BTreeMap<PermKey, usize> = BTreeMap::new();
        for d in &self.p.decided {
            *decided.entry(d.key).or_default() += 1;
            let (tool, asked_at) = &self.asked[&d.key];
            let deadline = *asked_at + self.sled_cfg.permission_timeout;
            // A person's message reaches only the request it was written for, and only with their decision.
            match d.cause {
                Cause::Response => assert_eq!(d.message.as_deref(), Some(message_for(tool).as_str()), "{}", d.id),
                _ => assert_eq!(d.message, None, "{}", d.id),
            }
            if d.decision.is_allow() {
                assert_eq!(d.cause, Cause::Response);
                // The approver approved this very request...
                assert!(
                    self.p.approvals.iter().any(|(t, dec)| t == tool && *dec == d.decision),
                    "{} approved but the approver said {:?}",
                    d.id,
                    self.p.approvals.iter().find(|(t, _)| t == tool)
                );
                // ...and a matching response crossed to the sled before its deadline.
                let crossed = self.p.delivered_to_sled.iter().any(|(at, _, text)| {
                    *at <= deadline
                        && text.contains(&format!(r#""req_id":"{}""#, d.id))
                        && text.contains("perm_response")
                });
                assert!(crossed, "{} approved without a response crossing", d.id);
            }
        }
        assert!(decided.values().all(|n| *n == 1), "a request decided twice");
        // Nothing undecided is past its deadline.
        for (key, (_, asked_at)) in &self.asked {
            if !decided.contains_key(key) {
                assert!(*asked_at + self.sled_cfg.permission_timeout > self.p.now, "{key:?} overdue");
            }
        }
        // MCP at the gateway: exactly one outcome each, and a response is the one produced for that request.
        let mut outcomes: BTreeMap<McpTicket, usize> = BTreeMap::new();
        for out in &self.p.gw_log[self.gw_seen..] {
            if let HubOutput::Event(HubEvent::McpAnswered { ticket, answer }) = out {
                let n = self.mcp[ticket];
                let uplink_proto::gateway::McpAnswer::Response(payload) = answer else {
                    panic!("a call answered without a response: {answer:?}")
                };
                let v: serde_json::Value = serde_json::from_str(payload).expect("JSON payload");
                assert_eq!(v["id"], n, "answer to the wrong request");
            }
        }
        for out in &self.p.gw_log {
            if let HubOutput::Event(HubEvent::McpAnswered { ticket, .. } | HubEvent::McpFailed { ticket, .. }) = out {
                *outcomes.entry(*ticket).or_default() += 1;
            }
        }
        self.gw_seen = self.p.gw_log.len();
        assert!(outcomes.values().all(|n| *n == 1), "an MCP request ended twice");
        // Bounded memory under floods.
        assert!(self.p.sled.pending_permissions() <= self.sled_cfg.max_pending_permissions);
        assert!(self.p.sled.mcp_calls_in_flight() <= self.sled_cfg.max_mcp_calls);
    }

    /// Heal every fault; the sled must be back, identified, within the back-off bound.
    fn heal_and_settle(&mut self) {
        self.p.blackhole = false;
        self.p.drop_to_sled = false;
        self.p.drop_to_gateway = false;
        self.p.gateway_up = true;
        self.p.duplicate_to_sled = false;
        self.p.approver = Box::new(|_| Some((Decision::Approve, Duration::from_millis(30))));
        // Worst case: an idle timeout (30 s) to notice a half-open link, a connect timeout (10 s), then the
        // capped back-off (60 s).
        let bound = self.sled_cfg.idle_timeout
            + self.sled_cfg.connect_timeout
            + self.sled_cfg.backoff_max
            + Duration::from_secs(1);
        self.p.run_for(bound);
        assert!(
            matches!(self.p.sled.link_state(), LinkState::Connected { .. }),
            "not back after healing: {:?}",
            self.p.sled.link_state()
        );
        assert!(self.p.gateway_conn().is_some(), "not identified after healing");
        // Everything asked has been decided by now (deadlines are 30 s).
        let decided: std::collections::BTreeSet<PermKey> = self.p.decided.iter().map(|d| d.key).collect();
        assert_eq!(decided.len(), self.asked.len(), "requests left undecided");
        self.check();
        self.acknowledged_reached_the_sled();
    }

    /// With `resume`, and no fault that swallows frames on a live link: every decision a person was told
    /// was taken (`200`, or `202` while the sled was away) reached its request at the sled; only with the
    /// gateway down for a while may the request end by its own deadline first. Links cut and crashes lose
    /// none.
    fn acknowledged_reached_the_sled(&self) {
        if !self.resume || self.lossy {
            return;
        }
        // Nothing is asked twice: each request reached people once, whatever happened to its link.
        let mut announced: BTreeMap<&String, usize> = BTreeMap::new();
        for e in self.p.gateway_events() {
            if let HubEvent::PermissionRequested { tool_name, .. } = e
                && let Some(tool) = self.asked.values().map(|(t, _)| t).find(|t| **t == tool_name)
            {
                *announced.entry(tool).or_default() += 1;
            }
        }
        assert!(announced.values().all(|n| *n == 1), "asked twice: {announced:?}");
        for (id, decision, at) in &self.p.acknowledged {
            let tool = &self.p.tools[id];
            // One asked by a sled process that has died since is gone with it.
            let Some((key, (_, asked_at))) = self.asked.iter().find(|(_, (t, _))| t == tool) else { continue };
            let deadline = *asked_at + self.sled_cfg.permission_timeout;
            let outcome = self.p.decision(*key).expect("decided");
            match outcome.cause {
                Cause::Response => assert_eq!(outcome.decision, *decision, "{tool}: another decision reached it"),
                Cause::Timeout if self.was_down => {}
                other => panic!("{tool}: acknowledged at {at:?} (deadline {deadline:?}) but ended by {other:?}"),
            }
        }
    }
}

fn trace(seed: u64, resume: bool, acts: &[Act]) -> String {
    let mut sim = Sim::with_resume(seed, resume);
    for a in acts {
        sim.apply(a);
    }
    sim.heal_and_settle();
    format!("{:?}\n{:?}\n{:?}", sim.p.sled_log, sim.p.gw_log, sim.p.decided)
}

proptest! {
    #![proptest_config(ProptestConfig { max_shrink_iters: 2048, ..ProptestConfig::default() })]

    #[test]
    fn outcomes_match_the_model_under_any_fault_schedule(
        seed in any::<u64>(),
        resume in any::<bool>(),
        acts in prop::collection::vec(act(), 1..60),
    ) {
        let mut sim = Sim::with_resume(seed, resume);
        for a in &acts {
            sim.apply(a);
        }
        sim.heal_and_settle();
        // Every MCP request the gateway sent ended, exactly once.
        let ended = sim.p.gw_log.iter().filter(|o| matches!(o, HubOutput::Event(HubEvent::McpAnswered { .. } | HubEvent::McpFailed { .. }))).count();
        prop_assert_eq!(ended, sim.mcp.len());
    }

    #[test]
    fn same_seed_and_schedule_give_the_same_trace_byte_for_byte(
        seed in any::<u64>(),
        resume in any::<bool>(),
        acts in prop::collection::vec(act(), 1..30),
    ) {
        prop_assert_eq!(trace(seed, resume, &acts), trace(seed, resume, &acts));
    }
}

/// A half-open link (the gateway's frames vanish) is detected within the idle timeout.
#[test]
fn half_open_is_detected_within_the_idle_timeout() {
    let mut sim = Sim::new(1);
    sim.p.run_for(Duration::from_secs(1));
    sim.p.drop_to_sled = true;
    let start = sim.p.now;
    let key = sim.p.ask("r-half", "tool-half");
    sim.asked.insert(key, ("tool-half".into(), start));
    while sim.p.decision(key).is_none() {
        sim.p.run_for(Duration::from_millis(100));
    }
    let detected = sim.p.now.saturating_duration_since(start);
    assert!(detected <= sim.sled_cfg.idle_timeout, "took {detected:?}");
    assert_eq!(sim.p.decision(key).map(|d| d.cause), Some(Cause::ConnectionLost));
}

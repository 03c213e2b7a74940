//! The sled and gateway machines against each other in memory, in virtual time.

mod common;

use std::time::Duration;

use common::pair::Pair;
use uplink_proto::gateway::{HubEvent, McpFailure, SessionConfig, Withdrawn};
use uplink_proto::{Cause, Decision, SledConfig};

fn sled() -> SledConfig {
    SledConfig { backoff_jitter: false, ..SledConfig::new("pair") }
}

#[test]
fn a_healthy_link_stays_up_for_hours_with_heartbeats_and_pings() {
    let mut p = Pair::new(sled(), SessionConfig::default());
    p.run_for(Duration::from_secs(4 * 3600));
    assert_eq!(p.identified_count(), 1);
    assert_eq!(p.sled.stats().connections, 1);
    let events = p.gateway_events();
    assert!(!events.iter().any(|e| matches!(e, HubEvent::SledStale { .. })));
    let beats = p.delivered_to_gateway.iter().filter(|(_, _, t)| t.contains(r#""type":"heartbeat""#)).count();
    assert_eq!(beats, 4 * 360 - 1, "one every 10 s (the first 10 s after connecting)");
    assert!(p.hub.sleds(p.now)[0].connected);
}

#[test]
fn a_permission_crosses_the_link_and_is_approved() {
    let mut p = Pair::new(sled(), SessionConfig::default());
    p.run_for(Duration::from_secs(1));
    let key = p.ask("r1", "Bash");
    p.run_for(Duration::from_secs(1));
    let d = p.decision(key).expect("decided");
    assert_eq!((d.decision, d.cause), (Decision::Approve, Cause::Response));
}

#[test]
fn an_mcp_request_crosses_the_link_and_back() {
    let mut p = Pair::new(sled(), SessionConfig::default());
    p.run_for(Duration::from_secs(1));
    let ticket = p.gateway_mcp(r#"{"jsonrpc":"2.0","id":"x","method":"tools/list"}"#).expect("identified");
    p.run_for(Duration::from_secs(1));
    assert!(p.gateway_events().contains(&HubEvent::McpAnswered {
        ticket,
        answer: uplink_proto::gateway::McpAnswer::Response(
            r#"{"jsonrpc":"2.0","id":"x","result":{"echo":true}}"#.to_owned()
        )
    }));
}

#[test]
fn an_undecided_request_is_denied_by_the_sled_and_withdrawn_at_the_gateway() {
    let mut p = Pair::new(sled(), SessionConfig::default());
    p.approver = Box::new(|_| None);
    p.run_for(Duration::from_secs(1));
    let key = p.ask("r1", "Bash");
    p.run_for(Duration::from_secs(125));
    assert_eq!(p.decision(key).map(|d| d.cause), Some(Cause::Timeout));
    assert!(
        p.gateway_events()
            .iter()
            .any(|e| matches!(e, HubEvent::PermissionWithdrawn { reason: Withdrawn::Deadline, .. }))
    );
}

#[test]
fn a_cut_link_fails_everything_on_both_sides_then_the_sled_comes_back() {
    let mut p = Pair::new(sled(), SessionConfig::default());
    p.approver = Box::new(|_| None);
    p.mcp_latency = Duration::from_secs(30);
    p.run_for(Duration::from_secs(1));
    let key = p.ask("r1", "Bash");
    let mcp = p.gateway_mcp(r#"{"jsonrpc":"2.0","id":1,"method":"slow"}"#).expect("identified");
    p.run_for(Duration::from_secs(1));
    p.cut();
    assert_eq!(p.decision(key).map(|d| (d.decision, d.cause)), Some((Decision::Deny, Cause::ConnectionLost)));
    let events = p.gateway_events();
    assert!(
        events.iter().any(|e| matches!(e, HubEvent::PermissionWithdrawn { reason: Withdrawn::ConnectionLost, .. }))
    );
    assert!(events.contains(&HubEvent::McpFailed { ticket: mcp, reason: McpFailure::ConnectionLost }));
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.identified_count(), 2, "reconnected after the 1 s back-off");
}

#[test]
fn a_black_holed_link_is_detected_by_both_sides() {
    let mut p = Pair::new(sled(), SessionConfig::default());
    p.run_for(Duration::from_secs(60));
    p.blackhole = true;
    let key = p.ask("r1", "Bash");
    p.run_for(Duration::from_secs(31));
    assert_eq!(p.decision(key).map(|d| d.cause), Some(Cause::ConnectionLost), "the sled's idle timeout");
    assert!(
        p.gateway_events().iter().any(|e| matches!(e, HubEvent::SledStale { .. })),
        "the gateway reports the silent sled"
    );
    p.blackhole = false;
    p.run_for(Duration::from_secs(30));
    assert_eq!(p.identified_count(), 2);
}

#[test]
fn sled_shutdown_reaches_the_gateway_as_cancels_answers_and_a_close() {
    let mut p = Pair::new(sled(), SessionConfig::default());
    p.approver = Box::new(|_| None);
    p.mcp_latency = Duration::from_secs(30);
    p.run_for(Duration::from_secs(1));
    p.ask("r1", "Bash");
    let mcp = p.gateway_mcp(r#"{"jsonrpc":"2.0","id":5,"method":"slow"}"#).expect("identified");
    p.run_for(Duration::from_secs(1));
    p.sled.shutdown(p.now);
    p.run_for(Duration::from_secs(1));
    let events = p.gateway_events();
    assert!(events.iter().any(|e| matches!(e, HubEvent::PermissionWithdrawn { reason: Withdrawn::Cancelled, .. })));
    let answered = events.iter().any(
        |e| matches!(e, HubEvent::McpAnswered { ticket, answer: uplink_proto::gateway::McpAnswer::Response(payload) } if *ticket == mcp && payload.contains("shutting down")),
    );
    assert!(answered, "{events:?}");
    assert!(matches!(events.last(), Some(HubEvent::SledDisconnected { .. })), "{events:?}");
    p.run_for(Duration::from_secs(600));
    assert_eq!(p.identified_count(), 1, "never reconnects");
}

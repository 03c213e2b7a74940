//! What the gateway logs of the hub's events: a sled's connection and its end, every step of a permission's
//! life (at info; its input only at debug), rule changes. Fields are typed (numbers as numbers, an absent one
//! left out); peer strings are escaped (`escape_debug`: control characters written out, no quotes added).

use tracing::{debug, info};
use uplink_proto::gateway::HubEvent;

/// Logs `event`; true when it is not for anyone else either (an ignored frame).
pub(super) fn log(event: &HubEvent) -> bool {
    match event {
        // Peer strings are escaped: control characters written out.
        HubEvent::SledConnected { conn, project, replaced, .. } => {
            info!(project = %project.escape_debug(), conn = conn.0, replaced = replaced.map(|r| r.0), "sled connected");
        }
        HubEvent::SledRefused { conn, project, reason } => {
            info!(project = %project.escape_debug(), conn = conn.0, %reason, "sled refused");
        }
        HubEvent::SledDisconnected { conn, project } => {
            info!(project = %project.escape_debug(), conn = conn.0, "sled disconnected");
        }
        HubEvent::FrameIgnored { conn, why } => {
            debug!(conn = conn.0, ?why, "ignored a frame from a sled");
            return true;
        }
        // A permission's life, at info (its input only at debug).
        HubEvent::PermissionRequested { id, project, tool_name, tool_input, .. } => {
            info!(%id, project = %project.escape_debug(), tool = %tool_name.escape_debug(), "permission requested; waiting for a person");
            debug!(%id, input = %tool_input, "the request's input");
        }
        HubEvent::PermissionDecided { id, project, verdict, rule, waited, held } => {
            let by = verdict.by.as_deref().unwrap_or("the application");
            let what = if *held {
                "permission decided by a person while its sled is away; delivered when it comes back"
            } else {
                "permission decided by a person"
            };
            info!(%id, project = %project.escape_debug(), decision = %verdict.decision, by = %by.escape_debug(), rule = rule.map(|r| r.0),
                waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX), "{what}");
        }
        HubEvent::PermissionHeld { id, project } => {
            info!(%id, project = %project.escape_debug(), "permission held: its sled's link dropped, and it may come back");
        }
        HubEvent::PermissionResumed { id, project, conn } => {
            info!(%id, project = %project.escape_debug(), conn = conn.0, "permission resumed: its sled sent it again");
        }
        HubEvent::PermissionDelivered { id, project, conn } => {
            info!(%id, project = %project.escape_debug(), conn = conn.0, "held decision delivered to its sled");
        }
        HubEvent::PermissionAnsweredAgain { id, project, conn } => {
            info!(%id, project = %project.escape_debug(), conn = conn.0, "decision sent again: its sled asked again");
        }
        HubEvent::PermissionWithdrawn { id, project, reason, waited } => {
            info!(%id, project = %project.escape_debug(), reason = reason.as_str(), waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                "permission ended without a decision");
        }
        HubEvent::PermissionAutoDecided { project, req_id, tool_name, decision, rule, .. } => match rule {
            Some(rule) => {
                info!(project = %project.escape_debug(), req_id = %req_id.escape_debug(), tool = %tool_name.escape_debug(), %decision,
                rule = rule.0, "permission decided by a rule")
            }
            None => {
                info!(project = %project.escape_debug(), req_id = %req_id.escape_debug(), tool = %tool_name.escape_debug(), %decision,
                "permission denied: the gateway's budget for waiting requests is full")
            }
        },
        HubEvent::RuleAdded { rule } => {
            info!(rule = rule.id.0, effect = %rule.effect, pattern = %rule.pattern, author = %rule.author.escape_debug(), "rule added");
        }
        HubEvent::RuleRemoved { id, by } => {
            info!(rule = id.0, by = by.as_deref().map(|b| tracing::field::display(b.escape_debug())), "rule removed")
        }
        HubEvent::RulesChangedElsewhere { added, removed } => {
            info!(added = ?added.iter().map(|r| r.0).collect::<Vec<_>>(), removed = ?removed.iter().map(|r| r.0).collect::<Vec<_>>(),
                "rules changed on another node are in force here");
        }
        _ => {}
    }
    false
}

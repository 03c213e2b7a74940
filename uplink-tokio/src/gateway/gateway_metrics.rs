//! What `GET /metrics` shows ([`GatewayMetrics`], Prometheus text format, `prometheus-client`). The hub task
//! counts from the hub's events as it carries them out; the upgrade route counts refusals; the MCP route
//! times its relays. Metrics are atomics: counting takes no lock.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use uplink_proto::gateway::HubEvent;

/// Labels: how a permission ended, and who (or what) ended it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Decision {
    /// `approve`, `deny`, `always_allow`, `cancelled`, `deadline`, `connection_lost`.
    outcome: &'static str,
    /// `person`, `rule`, `budget` or `nobody`.
    decider: &'static str,
}

/// Labels: a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// Labels: the status a request got.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answer {
    /// `401` or `429`.
    answer: &'static str,
}

/// Labels: how an MCP relay ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Relay {
    /// `answered`, `timeout`, `connection_lost`, `not_connected`, `unknown_project`, `too_many`.
    result: &'static str,
}

/// The gateway's metrics.
#[derive(Debug)]
pub(crate) struct GatewayMetrics {
    registry: Registry,
    sleds_connected: Gauge,
    sleds_stale: Gauge,
    pending_permissions: Gauge,
    decisions: Family<Decision, Counter>,
    decision_seconds: Histogram,
    mcp_relays: Family<Relay, Counter>,
    mcp_seconds: Histogram,
    refused: Family<Reason, Counter>,
    auth_failures: Family<Answer, Counter>,
    budget_overflows: Family<Reason, Counter>,
    rules_changed: Counter,
    notifications: Family<Relay, Counter>,
}

impl GatewayMetrics {
    pub(crate) fn new() -> GatewayMetrics {
        let mut registry = Registry::with_prefix("uplink_gateway");
        let m = GatewayMetrics {
            sleds_connected: Gauge::default(),
            sleds_stale: Gauge::default(),
            pending_permissions: Gauge::default(),
            decisions: Family::default(),
            // 1 ms to about 9 minutes: a person's decision, or a deadline.
            decision_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            mcp_relays: Family::default(),
            // 100 µs to about 100 s.
            mcp_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 21)),
            refused: Family::default(),
            auth_failures: Family::default(),
            budget_overflows: Family::default(),
            rules_changed: Counter::default(),
            notifications: Family::default(),
            registry: Registry::default(),
        };
        registry.register("sleds_connected", "Sleds connected now", m.sleds_connected.clone());
        registry.register("sleds_stale", "Connected sleds silent past the stale threshold", m.sleds_stale.clone());
        registry.register(
            "pending_permissions",
            "Permission requests waiting for a person",
            m.pending_permissions.clone(),
        );
        registry.register("decisions", "Permission requests ended, by outcome and decider", m.decisions.clone());
        registry.register(
            "decision_wait_seconds",
            "How long requests decided by a person (or ended without a decision) waited",
            m.decision_seconds.clone(),
        );
        registry.register("mcp_relays", "MCP requests relayed to sleds, by result", m.mcp_relays.clone());
        registry.register("mcp_relay_seconds", "How long relayed MCP requests took", m.mcp_seconds.clone());
        registry.register("connections_refused", "Sled connections refused, by reason", m.refused.clone());
        registry.register(
            "auth_failures",
            "Requests with a wrong token, cookie or sign-in, by answer (401, or 429 past the budget per address)",
            m.auth_failures.clone(),
        );
        registry.register("budget_overflows", "Inputs refused by a budget, by budget", m.budget_overflows.clone());
        registry.register("rule_changes", "Rules added or removed at run time", m.rules_changed.clone());
        registry.register(
            "notification_deliveries",
            "Webhook deliveries, by result (a failed one is retried, a few times)",
            m.notifications.clone(),
        );
        GatewayMetrics { registry, ..m }
    }

    /// Counts a failed authentication, answered `429` when `limited`, `401` otherwise.
    pub(crate) fn auth_failed(&self, limited: bool) {
        self.auth_failures.get_or_create(&Answer { answer: if limited { "429" } else { "401" } }).inc();
    }

    /// Counts what `event` says.
    pub(crate) fn on_event(&self, event: &HubEvent) {
        match event {
            HubEvent::SledConnected { .. } => {
                self.sleds_connected.inc();
            }
            HubEvent::SledDisconnected { .. } => {
                self.sleds_connected.dec();
            }
            HubEvent::SledRefused { reason, .. } => {
                self.refused.get_or_create(&Reason { reason: close_reason(reason.code()) }).inc();
            }
            HubEvent::SledStale { .. } => {
                self.sleds_stale.inc();
            }
            HubEvent::SledAlive { .. } => {
                self.sleds_stale.dec();
            }
            HubEvent::PermissionRequested { .. } => {
                self.pending_permissions.inc();
            }
            HubEvent::PermissionDecided { verdict, waited, .. } => {
                self.pending_permissions.dec();
                let outcome = verdict.decision.as_str();
                self.decisions.get_or_create(&Decision { outcome, decider: "person" }).inc();
                self.decision_seconds.observe(waited.as_secs_f64());
            }
            HubEvent::PermissionWithdrawn { reason, waited, .. } => {
                self.pending_permissions.dec();
                self.decisions.get_or_create(&Decision { outcome: reason.as_str(), decider: "nobody" }).inc();
                self.decision_seconds.observe(waited.as_secs_f64());
            }
            HubEvent::PermissionAutoDecided { decision, rule, .. } => {
                let decider = if rule.is_some() { "rule" } else { "budget" };
                self.decisions.get_or_create(&Decision { outcome: decision.as_str(), decider }).inc();
                if rule.is_none() {
                    self.budget_overflows.get_or_create(&Reason { reason: "pending_permissions" }).inc();
                }
            }
            HubEvent::RuleAdded { .. } | HubEvent::RuleRemoved { .. } | HubEvent::RulesChangedElsewhere { .. } => {
                self.rules_changed.inc();
            }
            _ => {}
        }
    }

    /// A sled's connection was refused before the hub saw it, for `reason`.
    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }

    /// An input was refused by `budget`.
    pub(crate) fn overflow(&self, budget: &'static str) {
        self.budget_overflows.get_or_create(&Reason { reason: budget }).inc();
    }

    /// A webhook delivery ended with `result` (`delivered` or `failed`).
    pub(crate) fn notified(&self, result: &'static str) {
        self.notifications.get_or_create(&Relay { result }).inc();
    }

    /// An MCP relay ended with `result` after `took`.
    pub(crate) fn relayed(&self, result: &'static str, took: Duration) {
        self.mcp_relays.get_or_create(&Relay { result }).inc();
        self.mcp_seconds.observe(took.as_secs_f64());
    }

    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The word for a refusal's close code.
fn close_reason(code: u16) -> &'static str {
    match code {
        4003 => "project_not_permitted",
        4009 => "project_held",
        _ => "other",
    }
}

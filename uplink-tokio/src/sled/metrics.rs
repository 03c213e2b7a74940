//! The sled's metrics (Prometheus text format, `prometheus-client`): the link, its losses by reason,
//! permissions by outcome and how long they took, MCP calls. Counted by the driver as it carries out the
//! core's outputs; read with [`Uplink::metrics`](super::Uplink::metrics) (the `uplink sled` program serves
//! them at `/metrics` on its local listener).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use uplink_proto::{Cause, Decision, LinkState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    decision: &'static str,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// The sled's metrics.
#[derive(Debug)]
pub(crate) struct SledMetrics {
    registry: Registry,
    link_up: Gauge,
    link_losses: Family<Reason, Counter>,
    permissions: Family<Outcome, Counter>,
    permission_seconds: Histogram,
    mcp_calls: Counter,
}

impl SledMetrics {
    pub(crate) fn new() -> SledMetrics {
        let mut registry = Registry::with_prefix("uplink_sled");
        let link_up = Gauge::default();
        let link_losses = Family::<Reason, Counter>::default();
        let permissions = Family::<Outcome, Counter>::default();
        let permission_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 22));
        let mcp_calls = Counter::default();
        registry.register("link_up", "1 while connected and identified", link_up.clone());
        registry.register("link_losses", "Connections and attempts that ended, by reason", link_losses.clone());
        registry.register("permissions", "Permission requests ended, by decision and cause", permissions.clone());
        registry.register("permission_seconds", "How long permission requests took", permission_seconds.clone());
        registry.register("mcp_calls", "MCP calls made to the local endpoint", mcp_calls.clone());
        SledMetrics { registry, link_up, link_losses, permissions, permission_seconds, mcp_calls }
    }

    pub(crate) fn link(&self, state: &LinkState) {
        self.link_up.set(i64::from(matches!(state, LinkState::Connected { .. })));
        if let LinkState::BackingOff { reason, .. } = state {
            self.link_losses.get_or_create(&Reason { reason: reason.as_str() }).inc();
        }
    }

    pub(crate) fn decided(&self, decision: Decision, cause: Cause, took: Duration) {
        self.permissions.get_or_create(&Outcome { decision: decision.as_str(), cause: cause.as_str() }).inc();
        self.permission_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn mcp_call(&self) {
        self.mcp_calls.inc();
    }

    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

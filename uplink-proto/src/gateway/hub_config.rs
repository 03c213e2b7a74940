//! What shapes a [`Hub`](super::Hub): its sessions' rules, its budgets, its permission rules and auto flags.

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use super::lease::LeaseConfig;
use super::mcp_endpoint::McpEndpointConfig;
use super::resume::ResumeConfig;
use super::shared_claims::SharedClaimsConfig;
use super::sled_session::SessionConfig;
use crate::rules::Rule;

/// Everything that shapes a [`Hub`](super::Hub).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubConfig {
    /// The rules of every sled connection.
    pub session: SessionConfig,
    /// How many disconnected sleds stay listed; beyond, the one disconnected longest ago is forgotten.
    /// Default 1024.
    pub max_disconnected_sleds: usize,
    /// How many ended permissions are remembered, so that a decision arriving after the end is refused
    /// with the reason ([`HubDecideError::Ended`](super::HubDecideError::Ended)); beyond, the oldest is forgotten. Default 4096.
    pub max_ended_permissions: usize,
    /// Most open connections, identified or not; [`Hub::accept`](super::Hub::accept) refuses beyond. Default 16,384.
    pub max_connections: usize,
    /// Most connections that have not identified yet; [`Hub::accept`](super::Hub::accept) refuses beyond. Default 1024.
    pub max_unidentified: usize,
    /// Most bytes of pending permission requests across every connection (each connection also has its
    /// own [`SessionConfig::max_pending_input_bytes`]); a request that would go beyond is denied at once.
    /// Default 256 MiB.
    pub max_pending_input_bytes: usize,
    /// Most rules made at run time ([`Hub::add_rule`](super::Hub::add_rule) and "always allow": ids below [`CONFIG_RULE_IDS`]);
    /// beyond, [`Hub::add_rule`](super::Hub::add_rule) refuses and an "always allow" approves once without a rule. Default 10,000.
    pub max_rules: usize,
    /// The permission rules, evaluated for every request before a person is asked. The auto flags join
    /// them as rules (authored [`FLAG_AUTHOR`](super::policy::FLAG_AUTHOR)), so that a deny rule wins over them as over any allow.
    pub rules: Vec<Rule>,
    /// Tools whose requests are approved at once, without a person (each a rule, unless a deny rule wins).
    pub auto_approve: BTreeSet<String>,
    /// Tools whose requests are denied at once, without a person. Wins over `auto_approve`.
    pub auto_deny: BTreeSet<String>,
    /// The gateway's MCP endpoint: its session budgets and idle time (4,096 sessions, 256 per principal, 1 h).
    pub mcp_endpoint: McpEndpointConfig,
    /// Accept the `resume` extension from sleds that offer it, holding their requests across a drop
    /// ([`super::resume`]). Default `None`: the original rule, a drop ends what was pending.
    pub resume: Option<ResumeConfig>,
    /// Settle which connection holds each project with other gateways, through a table they share (a
    /// cluster; [`super::shared_claims`]). Default `None`: this hub alone decides.
    pub shared_claims: Option<SharedClaimsConfig>,
    /// The node's lease in its cluster: the hub asks for its renewals and fences itself before it can
    /// lapse at the database ([`super::lease`]). Default `None`: no lease, never fenced.
    pub lease: Option<LeaseConfig>,
}

/// The first id a configuration's own rules should take ([`HubConfig::rules`] named on a command line, say):
/// the hub numbers the rules it makes at run time below it, and never removes a rule at or above it (a
/// configuration's rule comes back with the configuration). Decimal, and well within what JSON numbers
/// carry exactly (2^53).
pub const CONFIG_RULE_IDS: u64 = 1_000_000_000;

/// Open files a gateway keeps back from its sled connections, at most: its listeners, its store's files, HTTP
/// clients, webhooks ([`HubConfig::max_connections_for_open_files`]).
pub const OPEN_FILES_KEPT_BACK: u64 = 1024;

impl HubConfig {
    /// The most connections for a process that may hold `open_files` open files: the limit less what the
    /// gateway keeps for itself ([`OPEN_FILES_KEPT_BACK`], or a quarter of a small limit), and at least one.
    /// Within it, a sled beyond the budget is refused with a reason instead of failing for want of a socket.
    pub fn max_connections_for_open_files(open_files: u64) -> usize {
        let budget = open_files.saturating_sub((open_files / 4).min(OPEN_FILES_KEPT_BACK)).max(1);
        usize::try_from(budget).unwrap_or(usize::MAX)
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            session: SessionConfig::default(),
            max_disconnected_sleds: 1024,
            max_ended_permissions: 4096,
            max_connections: 16_384,
            max_unidentified: 1024,
            max_pending_input_bytes: 256 << 20,
            max_rules: 10_000,
            rules: Vec::new(),
            auto_approve: BTreeSet::new(),
            auto_deny: BTreeSet::new(),
            mcp_endpoint: McpEndpointConfig::default(),
            resume: None,
            shared_claims: None,
            lease: None,
        }
    }
}

impl HubConfig {
    /// The defaults with these session rules.
    pub fn new(session: SessionConfig) -> HubConfig {
        HubConfig { session, ..HubConfig::default() }
    }
}

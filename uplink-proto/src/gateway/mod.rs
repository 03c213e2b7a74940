//! The gateway side of the uplink.
//!
//! - [`Hub`] ([`hub`]): every sled connection of one gateway and the fleet's rules above them: which
//!   connection holds which project, public permission ids, routing of decisions and MCP requests, the
//!   memory of disconnected sleds, listings, every close. An adapter drives one hub. What shapes it is in
//!   [`hub_config`]; what it reports and refuses in [`hub_outputs`].
//! - [`policy`]: the hub's automatic decisions, the one place where a request is decided without a person.
//! - [`SledSession`] ([`sled_session`]): one connection's session: identity first, liveness, the permission
//!   and MCP requests pending on it. The hub owns one per connection. Its state diagram is beside its state.
//! - [`CloseReason`] ([`close`]): every close the gateway makes, with its code.
//! - [`Credential`] ([`credential`]): who a connection is, and which projects it may identify as.
//! - [`Role`] ([`principal`]): what an admin principal may do through the API.
//! - [`Verdict`] ([`verdict`]): the application's decision on one request, with its message for the agent.
//! - [`AuthFailures`] ([`auth_limit`]): the budget of failed authentications per source address, and how
//!   a failure is answered (`401`, or `429` past it).
//! - [`McpEndpoint`] ([`mcp_endpoint`]): the gateway's MCP endpoint as a Streamable HTTP server: client
//!   sessions, their owners, and what each HTTP request gets.
//! - [`ConsoleSessions`] ([`console`]): the web console's sign-ins and the checks on what changes state.
//! - [`identity`]: standard identity: what a token an OpenID provider signed is worth here (an MCP client's
//!   access token, a person's claims), and the role people have by their claims.
//! - [`outbox`]: a webhook's outbox for the gateway's notifications: bounded, retried with jittered back-off.
//! - [`resume`]: requests held for sleds that went away (the `resume` extension), found again when they
//!   come back.
//! - [`shared_claims`]: which connection holds a project, settled with the other gateways of a cluster
//!   through a table they share.
//! - [`lease`]: a cluster node's lease, renewed at the database, and the fence before it can lapse there.
//! - [`peers`]: the other nodes of a cluster: where a decision for a request held elsewhere goes, and which
//!   calls from another node are let in.
//!
//! The state diagrams are beside the states they draw: a connection's in [`sled_session`] (its `State`), a
//! project's claim in [`hub`], and in a cluster in [`shared_claims`]; a node's lease in [`lease`].

pub mod auth_limit;
pub mod close;
pub mod console;
pub mod credential;
pub mod hub;
pub mod hub_config;
pub mod hub_outputs;
pub mod identity;
pub mod lease;
pub mod mcp_endpoint;
pub mod outbox;
pub mod peers;
pub mod policy;
pub mod principal;
pub mod resume;
pub mod shared_claims;
pub mod shared_rules;
pub mod sled_session;
pub mod verdict;

pub use crate::ids::{BadPermId, ConnHandle, McpTicket, PublicPermId};
pub use auth_limit::{AuthFailures, AuthLimitConfig, AuthRefusal, AuthSource};
pub use close::CloseReason;
pub use console::{ConsoleRefusal, ConsoleRequest, ConsoleSessions, Vouched};
pub use credential::{Credential, CredentialId, ProjectScope};
pub use hub::{Hub, ID_BLOCK, RESUMED_OTHERWISE};
pub use hub_config::{CONFIG_RULE_IDS, HubConfig, OPEN_FILES_KEPT_BACK};
pub use hub_outputs::{
    AcceptError, Decided, HubDecideError, HubEvent, HubOutput, McpAnswer, McpHttp, McpRefused, PermEnd,
    PermissionSummary, RuleRefused, SledSummary,
};
pub use lease::LeaseConfig;
pub use mcp_endpoint::{
    EndpointRequest, ExchangeEnd, ExchangeKind, McpEndpoint, McpEndpointConfig, Method, Refusal, Route,
};
pub use peers::{Holder, PeerCalls, PeerRefusal};
pub use policy::{FLAG_AUTHOR, FLAG_RULE_IDS};
pub use principal::{Action, BadRole, Role};
pub use resume::{HeldRequest, MAX_INCARNATION_BYTES, ResumeConfig, ResumeKey};
pub use shared_claims::{ClaimAnswer, SharedClaimsConfig};
pub use sled_session::{
    DecideError, INPUT_TOO_DEEP, McpFailure, McpId, PendingPermission, PermId, SendMcpError, SessionConfig,
    SessionConfigError, SessionEvent, SessionIgnored, SessionLimit, SessionOutput, SledSession, Withdrawn,
};
pub use verdict::{Always, AlwaysScope, BadScope, Contradiction, Verdict};

//! The gateway side of the uplink.
//!
//! - [`Hub`] ([`hub`]): every sled connection of one gateway and the fleet's rules above them: which
//!   connection holds which project, public permission ids, routing of decisions and MCP requests, the
//!   memory of disconnected sleds, listings, every close. An adapter drives one hub.
//! - [`SledSession`] ([`session`]): one connection's session: identity first, liveness, the permission and MCP
//!   requests pending on it. The hub owns one per connection.
//! - [`CloseReason`] ([`close`]): every close the gateway makes, with its code.
//! - [`Credential`] ([`credential`]): who a connection is, and which projects it may identify as.
//! - [`Role`] ([`principal`]): what an admin principal may do through the API.
//! - [`AuthFailures`] ([`auth_limit`]): the budget of failed authentications per source address, and how
//!   a failure is answered (`401`, or `429` past it).
//! - [`Verdict`] ([`verdict`]): the application's decision on one request, with its message for the agent.
//! - [`McpEndpoint`] ([`mcp_endpoint`]): the gateway's MCP endpoint as a Streamable HTTP server: client
//!   sessions, their owners, and what each HTTP request gets.
//!
//! ```text
//!  accept ──▶ AwaitingIdentity ──identity──▶ claim ──┬─ covered, free or same credential ──▶ Identified (holds project)
//!                 │                                   ├─ not covered ─────────────▶ Closed 4003
//!                 │ other frame first: 1008           └─ held by another credential ▶ Closed 4009
//!                 │ no identity in time: 1008
//!                 ▼
//!               Closed ◀── sled gone · too big 1009 · replaced 4000 · shutdown 1001 ── Identified
//! ```

pub mod auth_limit;
pub mod close;
pub mod console;
pub mod credential;
pub mod hub;
pub mod mcp_endpoint;
pub mod outbox;
pub mod policy;
pub mod principal;
pub mod sled_session;
pub mod verdict;

pub use auth_limit::{AuthFailures, AuthLimitConfig, AuthRefusal, AuthSource};
pub use close::CloseReason;
pub use console::{ConsoleRefusal, ConsoleRequest, ConsoleSessions};
pub use credential::{Credential, CredentialId, ProjectScope};
pub use hub::{
    AcceptError, BadPermId, CONFIG_RULE_IDS, ConnHandle, Hub, HubConfig, HubDecideError, HubEvent, HubOutput,
    McpRefused, McpTicket, OPEN_FILES_KEPT_BACK, PermEnd, PermissionSummary, PublicPermId, RuleRefused, SledSummary,
};
pub use mcp_endpoint::{EndpointRequest, McpEndpoint, McpEndpointConfig, Method, Refusal, Route};
pub use policy::{FLAG_AUTHOR, FLAG_RULE_IDS};
pub use principal::{Action, BadRole, Role};
pub use sled_session::{
    DecideError, INPUT_TOO_DEEP, McpFailure, McpId, PendingPermission, PermId, SendMcpError, SessionConfig,
    SessionConfigError, SessionEvent, SessionIgnored, SessionLimit, SessionOutput, SledSession, Withdrawn,
};
pub use verdict::{Always, AlwaysScope, BadScope, Contradiction, Verdict};

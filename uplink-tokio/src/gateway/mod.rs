//! `uplink gateway`: the gateway side, shaped as quinn shapes its endpoint: one task owns the core's
//! [`Hub`](uplink_proto::gateway::Hub) (every session, every fleet rule) and carries out what it asks; each
//! connection's task only carries its socket or its HTTP request.
//!
//! The rooms, in layers whose imports point one way (down):
//! 1. **Routes**: `router` names every route; one file per subject handles it: `upgrade` (a sled's
//!    WebSocket upgrade and the loop that carries its socket), `sleds`, `permissions`, `rules`, `audit`,
//!    `events` (the event stream), `mcp` (the MCP endpoint: a Streamable HTTP server over the sleds'
//!    relays; the core's `McpEndpoint`, owned by the hub, says what each request gets), `console` (the web
//!    console at `/`), `metrics` (`/metrics`, `/healthz`, `/readyz`). `extract` says who asks: a principal,
//!    and one extractor per right its role may have (`Reader`, `Decider`, `Manager`); `mcp_auth` who may
//!    use the MCP endpoint (an admin principal, or an MCP client's OAuth access token) and its Protected
//!    Resource Metadata; `console_oidc` the console's sign-in at the OpenID provider (its redirect and its
//!    callback).
//! 2. **Shared state**: `shared`, what the routes and the server share (the hub task's handle, the
//!    credentials in force, the budgets they consult), and the credentials' reloader.
//! 3. **The hub task**: `hub_handle` (how everyone talks to it, and the caller's end of an MCP exchange),
//!    `hub_task` (its loop), `commit` (the store's group commit), `checkpoints` (the audit log's head, handed
//!    out), `mcp_exchange` (an exchange's events and ends), `event_log` (what it logs).
//! 4. **Leaves**: `recorder` (the hub's events as audit records), `fanout` (the event stream's one text for
//!    every client), `wall` (the two clocks, and the rules' kept form), `notify` (the webhooks, each
//!    performing the core's outbox), `gateway_metrics`, `auth_budget` (failed authentication's budget),
//!    `console_sessions`, [`credentials`] (sled credentials and admin principals, known by their tokens'
//!    hashes), `oidc` (an OpenID provider's keys and a token's signature), `access_tokens` (an MCP
//!    client's access token checked for one endpoint: the signature by `oidc`, the claims by the core),
//!    `sign_ins` (people's sign-ins at the provider, pending and done, and the roles they gave).
//!
//! Beside them: `config` (what a gateway is started with, and its errors) and `server` (the listener, TLS,
//! the server's start and stop).
//!
//! Routes (see PROTOCOL.md for examples):
//! - `GET /api/sled-uplink`: WebSocket upgrade for sleds, after the sled token (`?token=`, unless refused, or
//!   `Authorization: Bearer`) is recognised; `401` before any upgrade otherwise.
//! - Admin, under `Authorization: Bearer <principal's token>`, each route needing its role's right:
//!   `GET /api/sleds`, `GET /api/permissions`, `GET /api/events` (Server-Sent Events) to read;
//!   `POST /api/permissions/{id}`, the MCP endpoint `/api/sleds/{project}/mcp` (`POST`, `GET`, `DELETE`) and
//!   the session-less relay `POST /api/sleds/{project}/rpc` to decide; `GET /api/rules` and
//!   `GET /api/audit` to read, `POST /api/rules` and `DELETE /api/rules/{id}` to manage.
//! - With `--oidc-issuer`, the MCP endpoint also takes that provider's access tokens for it (the MCP
//!   authorization spec), and `GET /.well-known/oauth-protected-resource/api/sleds/{project}/mcp` is its
//!   Protected Resource Metadata (no token).
//! - `GET /api/me` (any principal): who the token or session stands for. With `--oidc-issuer`, a person's
//!   access token for the API (`uplink login`) stands for them on every admin route, and
//!   `GET /.well-known/oauth-protected-resource/api` is the API's metadata (no token).
//! - `GET /metrics` (any principal's token, unless public), `GET /healthz`, `GET /readyz` (no token): the
//!   `metrics` module.

mod access_tokens;
mod audit;
mod auth_budget;
mod checkpoints;
mod cluster;
mod commit;
mod config;
mod console;
mod console_oidc;
mod console_sessions;
pub mod credentials;
mod event_log;
mod events;
mod extract;
mod fanout;
mod gateway_metrics;
mod hub_handle;
mod hub_task;
mod internal;
mod mcp;
mod mcp_auth;
mod mcp_exchange;
mod metrics;
mod notify;
mod oidc;
mod peers;
mod permissions;
mod recorder;
mod router;
mod rules;
mod server;
mod shared;
mod sign_ins;
mod sleds;
mod upgrade;
mod wall;

pub use config::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_LISTEN, GatewayRunError, GatewayServerConfig, GatewayStartError, MAX_ADMIN_BODY,
    generate_token,
};
pub use console_sessions::{MAX_SESSIONS, SESSION_LIFETIME};
pub use notify::{NotifyFormat, Webhook};
pub use oidc::{MAX_TOKEN_BYTES, OidcConfig};
#[cfg(feature = "cli")]
pub(crate) use recorder::record_line as audit_line;
pub use server::GatewayServer;
pub use shared::{AUDIT_QUERIES, CredentialsReloader};
pub use wall::BadStoredRule;

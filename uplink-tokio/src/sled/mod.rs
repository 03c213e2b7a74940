//! The sled side: the [`Uplink`] handle an embedder holds, the driver task that owns the core's
//! [`Sled`](uplink_proto::Sled) and carries out what it asks, and the client of the sled's local MCP
//! endpoint.
//!
//! - `handle`: the [`Uplink`] handle; `answer`: what it answers, and its start's errors;
//! - `driver`: the one task that owns the core's machine and its socket loop; `io`: what reaches it;
//! - `mcp_client`: the client of the local MCP endpoint; `config`, `metrics`, `tls`.

mod answer;
mod config;
mod driver;
mod handle;
mod io;
mod mcp_client;
mod metrics;
mod tls;

pub use answer::{Answer, McpUrlError, StartError};
pub use config::{DEFAULT_LOCAL_MCP_URL, DEFAULT_MAX_MESSAGE_SIZE, UplinkConfig};
pub use handle::Uplink;
pub(crate) use tls::client_config as tls_client_config;

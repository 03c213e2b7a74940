//! The arguments of `uplink gateway` (running it), and how their values are read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use uplink_proto::rules::{Effect, Pattern};

use super::common::duration;
use crate::gateway;

#[derive(Args)]
pub(super) struct RunArgs {
    /// Address to listen on (HTTP API and the sleds' WebSocket endpoint): IP:PORT or NAME:PORT
    /// (localhost:8700). Beyond loopback without TLS, a warning says that tokens would cross in the clear.
    #[arg(long, default_value = gateway::DEFAULT_LISTEN, value_parser = listen_addr)]
    pub(super) listen: SocketAddr,
    /// A shared token sleds may connect with, for any project (repeat for several; the original's way).
    /// Also UPLINK_SLED_TOKENS, comma-separated. Prefer --credentials.
    #[arg(long = "sled-token", env = "UPLINK_SLED_TOKENS", value_delimiter = ',', hide_env_values = true)]
    pub(super) sled_tokens: Vec<String>,
    /// The admin API's shared token (the principal `admin`). Prefer --credentials. Also
    /// UPLINK_GATEWAY_ADMIN_TOKEN (UPLINK_ADMIN_TOKEN is the command-line client's, and is read here only
    /// beside shared sled tokens, with a warning).
    #[arg(long, env = "UPLINK_GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub(super) admin_token: Option<String>,
    /// Accept a sled's token only in `Authorization: Bearer`, never in the URL (`?token=`, which the
    /// original sends, and which proxies log).
    #[arg(long)]
    pub(super) refuse_query_token: bool,
    /// PEM certificate chain to serve HTTPS and wss:// (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub(super) tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(super) tls_key: Option<PathBuf>,
    /// Close a connection whose first frame is not `identity` within this long.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub(super) identity_timeout: Duration,
    /// Report a sled stale when nothing arrived from it for this long.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub(super) stale_after: Duration,
    /// Close a sled's connection when nothing arrived from it for this long (its requests are withdrawn).
    #[arg(long, value_parser = duration, default_value = "90s")]
    pub(super) dead_after: Duration,
    /// Answer 504 when a sled does not answer an MCP request within this long.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub(super) mcp_timeout: Duration,
    /// Approve requests for this tool at once, without the API (repeatable).
    #[arg(long = "auto-approve")]
    pub(super) auto_approve: Vec<String>,
    /// Deny requests for this tool at once, without the API (repeatable; wins over --auto-approve).
    #[arg(long = "auto-deny")]
    pub(super) auto_deny: Vec<String>,
    /// A permission rule, EFFECT PATTERN: `allow Bash(npm run test *)`, `deny Read(~/.ssh/**)`,
    /// `ask Bash(git push *)` (repeatable). Deny wins, then ask, then allow.
    #[arg(long = "rule", value_parser = rule_arg)]
    pub(super) rules: Vec<(Effect, Pattern)>,
    /// Most open sled connections; more are answered 503. Default: the open-file limit (raised at start to
    /// the hard limit) less what the gateway keeps for its own files (1,024, or a quarter of a small limit).
    #[arg(long)]
    pub(super) max_connections: Option<usize>,
    /// Most sled connections that have not identified yet; more are answered 503.
    #[arg(long, default_value_t = 1024)]
    pub(super) max_unidentified: usize,
    /// Most bytes of pending permission requests per sled (suffixes KiB, MiB, GiB); beyond, denied at once.
    #[arg(long, value_parser = bytes, default_value = "32MiB")]
    pub(super) max_sled_pending_bytes: usize,
    /// Most bytes of pending permission requests across all sleds; beyond, denied at once.
    #[arg(long, value_parser = bytes, default_value = "256MiB")]
    pub(super) max_pending_bytes: usize,
    /// Most bytes of events queued for an /api/events client that does not read; beyond, it is dropped.
    #[arg(long, value_parser = bytes, default_value = "32MiB")]
    pub(super) max_event_client_bytes: usize,
    /// Most /api/events clients at once; more are answered 503.
    #[arg(long, default_value_t = 64)]
    pub(super) max_event_clients: usize,
    /// Keep nothing across restarts: no audit log, rules made at run time (by "always allow" or the API)
    /// are forgotten at exit, and so are the requests waiting for people.
    #[arg(long)]
    pub(super) no_store: bool,
    /// How long a request stays held after its sled's link drops, open to a decision, for the sled to send it
    /// again when it reconnects (sleds that offer the `resume` extension; the sled's own deadline ends it
    /// sooner).
    #[arg(long, value_parser = duration, default_value = "10m")]
    pub(super) resume_window: Duration,
    /// Do not accept the `resume` extension: a dropped link ends what its sled had pending, as with the
    /// original gateway.
    #[arg(long)]
    pub(super) no_resume: bool,
    /// How a commit to the store waits: `normal` (survives the gateway being killed) or `full` (also a
    /// power cut; a disk flush per batch of decisions).
    #[arg(long, value_parser = ["normal", "full"], default_value = "normal")]
    pub(super) store_sync: String,
    /// Leave tool inputs out of the audit log, keeping their HMAC-SHA256 under a secret of the store's
    /// (`uplink audit check-input` confirms an input with it; a plain hash would give a short one away).
    #[arg(long)]
    pub(super) audit_redact_inputs: bool,
    /// How often the audit log's head (a checkpoint) is logged, and written to --audit-checkpoint-file, when
    /// it has moved; once more at exit.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub(super) audit_checkpoint_every: Duration,
    /// With --store postgres://…, the lease this node holds at the database among the gateways sharing it:
    /// renewed every fifth of it; a node that cannot renew it (the database unreachable, the process paused)
    /// closes its sleds with 1012 (they reconnect to another node) and stops a tenth of it before it could
    /// lapse, and another node may take its projects once it has. Shorter fails over sooner, and fences
    /// on shorter hiccups of the database.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub(super) lease: Duration,
    /// With --store postgres://…: serve beside the other nodes, reachable by them on this internal listener
    /// (ADDR:PORT): a decision made at another node for a request held here comes in on it, and so does
    /// another node's listing of what waits here. Keep it off the load balancer and on a private network;
    /// calls on it are signed with a key every node derives from the database's secret. Without it, a node
    /// serves alone: it starts only while no other node's lease holds.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(super) cluster_listen: Option<std::net::SocketAddr>,
    /// The HOST:PORT at which the other nodes reach --cluster-listen, when not its address (needed when it
    /// listens on 0.0.0.0 or [::]).
    #[arg(long, value_name = "HOST:PORT", requires = "cluster_listen")]
    pub(super) cluster_advertise: Option<String>,
    /// On SIGTERM, drain for at most this long before stopping: /readyz turns 503, new sleds are refused,
    /// and each sled is closed with 1012 (to reconnect, perhaps to another gateway) once nothing of it is in
    /// flight, so that a planned restart denies nothing a person could still decide; at once for a sled
    /// that keeps its requests across a drop. 0s: stop at once.
    #[arg(long, value_parser = duration, default_value = "25s")]
    pub(super) drain: Duration,
    /// Append each checkpoint of the audit log's head to this file, one JSON line (best on a volume the
    /// database's writers cannot write); `uplink audit verify --checkpoints FILE` checks the log against it.
    #[arg(long, value_name = "FILE")]
    pub(super) audit_checkpoint_file: Option<PathBuf>,
    /// Prune audit records older than this (e.g. 90d).
    #[arg(long, value_parser = duration)]
    pub(super) audit_keep: Option<Duration>,
    /// Keep at most this many audit records, the newest.
    #[arg(long)]
    pub(super) audit_keep_records: Option<u64>,
    /// Serve /metrics without a token (by default any principal's token is needed); /healthz and /readyz
    /// never need one.
    #[arg(long)]
    pub(super) metrics_public: bool,
    /// POST each new pending request as JSON to this URL (repeatable); retried with back-off, never holding
    /// a decision.
    #[arg(long = "notify-webhook")]
    pub(super) notify_webhooks: Vec<String>,
    /// The webhooks' body: generic JSON, or Slack's {"text": …}.
    #[arg(long, value_parser = ["generic", "slack"], default_value = "generic")]
    pub(super) notify_format: String,
    /// Also notify how each request ended.
    #[arg(long)]
    pub(super) notify_decisions: bool,
    /// Also send each checkpoint of the audit log's head to the generic webhooks
    /// ({"event": "audit_checkpoint", "at_ms", "seq", "head"}).
    #[arg(long)]
    pub(super) notify_checkpoints: bool,
    /// The address people reach this gateway at (https://gateway.example), for the links in notifications;
    /// its host is also one of the gateway's own names for the MCP endpoint.
    #[arg(long)]
    pub(super) public_url: Option<String>,
    /// Another name web pages may reach the MCP endpoint by (repeat for several), beside loopback, the
    /// public URL's host and the listen address: a page's request naming any other host is refused (DNS
    /// rebinding).
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub(super) allowed_hosts: Vec<String>,
    /// An OpenID provider (its issuer URL, https:// or loopback http://) whose access tokens MCP clients may
    /// use on the MCP endpoint, under the MCP authorization spec; needs --public-url.
    #[arg(long, value_name = "URL")]
    pub(super) oidc_issuer: Option<String>,
    /// A role people have by their tokens' claims (repeatable): group:NAME=ROLE, email:ADDRESS=ROLE (a
    /// verified email) or sub:SUBJECT=ROLE. Nobody has a role without one.
    #[arg(long = "oidc-role", value_name = "WHO=ROLE", requires = "oidc_issuer")]
    pub(super) oidc_roles: Vec<uplink_proto::gateway::identity::PersonRule>,
    /// The claim that lists a person's groups.
    #[arg(long, value_name = "CLAIM", default_value = "groups", requires = "oidc_issuer")]
    pub(super) oidc_groups_claim: String,
    /// This gateway's client id at the provider: people sign in to the console there (the authorization
    /// code flow with PKCE; register PUBLIC_URL/console/oidc/callback as its redirect URI).
    #[arg(long, value_name = "ID", requires = "oidc_issuer")]
    pub(super) oidc_client_id: Option<String>,
    /// A file holding the client's secret (a confidential client); without, a public client.
    #[arg(long, value_name = "FILE", requires = "oidc_client_id")]
    pub(super) oidc_client_secret_file: Option<std::path::PathBuf>,
    /// A scope to ask for at sign-in beside openid and email (repeatable): groups, at providers that
    /// release the groups claim for it.
    #[arg(long = "oidc-scope", value_name = "SCOPE", requires = "oidc_client_id")]
    pub(super) oidc_scopes: Vec<String>,
    /// The client id `uplink login` signs people in with at the provider (a public client allowed the device
    /// authorization grant); named in the admin API's metadata.
    #[arg(long, value_name = "ID", requires = "oidc_issuer")]
    pub(super) oidc_cli_client_id: Option<String>,
    /// A CA certificate file (PEM) to trust for the provider's https://, beside the web PKI roots.
    #[arg(long, value_name = "FILE", requires = "oidc_issuer")]
    pub(super) oidc_ca_file: Option<std::path::PathBuf>,
}

/// `--listen`: an address, or a name and a port (the name's first address).
fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut addrs = text.to_socket_addrs().map_err(|e| format!("{text:?}: {e} (write IP:PORT or NAME:PORT)"))?;
    addrs.next().ok_or_else(|| format!("{text:?}: the name has no address"))
}

/// `allow Bash(npm run test *)`: an effect, a space, a pattern.
fn rule_arg(text: &str) -> Result<(Effect, Pattern), String> {
    let (effect, pattern) =
        text.trim().split_once(' ').ok_or("write a rule as EFFECT PATTERN, e.g. 'deny Bash(rm *)'")?;
    let effect: Effect = effect.parse().map_err(|e| format!("{e}"))?;
    let pattern = Pattern::parse_for(effect, pattern).map_err(|e| format!("{pattern:?}: {e}"))?;
    Ok((effect, pattern))
}

/// `32MiB`, `64KiB`, `1GiB` or plain bytes.
fn bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "K" => 10,
        "MiB" | "M" => 20,
        "GiB" | "G" => 30,
        _ => return Err(format!("{text:?}: write sizes like 65536, 64KiB, 32MiB, 1GiB")),
    };
    let n: usize = digits.parse().map_err(|_| format!("{text:?}: write sizes like 65536, 64KiB, 32MiB, 1GiB"))?;
    n.checked_mul(1 << shift).filter(|n| *n > 0).ok_or_else(|| format!("{text:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::{bytes, listen_addr};

    #[test]
    fn listen_takes_addresses_and_names() {
        assert_eq!(listen_addr("127.0.0.1:8700").map(|a| a.port()), Ok(8700));
        assert!(listen_addr("localhost:8700").is_ok_and(|a| a.ip().is_loopback() && a.port() == 8700));
        assert!(listen_addr("[::1]:9").is_ok());
        assert!(listen_addr("localhost").is_err_and(|e| e.contains("NAME:PORT")));
    }

    #[test]
    fn sizes_read_with_binary_suffixes() {
        assert_eq!(bytes("65536"), Ok(65536));
        assert_eq!(bytes("64KiB"), Ok(64 << 10));
        assert_eq!(bytes("32MiB"), Ok(32 << 20));
        assert_eq!(bytes("1G"), Ok(1 << 30));
        for bad in ["", "0", "MiB", "1.5MiB", "12 parsecs", "-1", "99999999999999999999GiB"] {
            assert!(bytes(bad).is_err(), "{bad:?}");
        }
    }
}

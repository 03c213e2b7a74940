//! The `uplink` command-line program (feature `cli`; the binary only calls [`main`]).
//!
//! `uplink sled` keeps a sled's uplink to its gateway and serves local permission requests; `uplink gateway`
//! is the other end, with an admin API; `uplink demo` walks through a whole session on loopback. What only
//! the program needs lives here, in private modules: the gateway command and its credentials file, the
//! walk-through, the sled's local server, the admin API's client and `uplink login` (`login`: what the
//! terminal commands act as, kept owner-only), and the logging set-up.
#![allow(clippy::print_stdout)]

mod admin_client;
mod audit_cmd;
mod common;
mod credentials_file;
mod credentials_watch;
mod demo;
mod fleet_cmd;
mod gateway_args;
mod gateway_cmd;
mod hook;
mod local_server;
mod logging;
mod login;
mod open_files;
mod rules_cmd;
mod status;
mod store_at;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::sled::{DEFAULT_LOCAL_MCP_URL, Uplink, UplinkConfig};
use clap::{Args, Parser, Subcommand};
use common::{duration, shutdown_signal};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "uplink",
    version,
    about = "The sled ↔ gateway uplink: permission requests and MCP over one WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to standard error: text (coloured only on a terminal, never with NO_COLOR)
    /// or json (one object per line).
    #[arg(long, global = true, value_enum, default_value = "text", env = "UPLINK_LOG_FORMAT")]
    log_format: logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sled: keep the uplink to the gateway, serve local permission requests, relay MCP requests.
    Sled(SledArgs),
    /// Run a gateway: accept sleds, relay MCP to them, let people and bots decide their permissions.
    Gateway(Box<gateway_cmd::GatewayArgs>),
    /// Walk through a whole session on loopback: a gateway, a sled and an MCP tool server in this process.
    Demo(DemoArgs),
    /// The sleds a running gateway knows (through its admin API).
    Sleds(fleet_cmd::SledsArgs),
    /// The requests waiting at a running gateway: list, approve, deny, watch (through its admin API).
    Permissions(fleet_cmd::PermissionsArgs),
    /// The rules of a running gateway: list, add, remove (through its admin API).
    Rules(rules_cmd::RulesArgs),
    /// The gateway's audit log: verify its hash chain, export it as JSON lines (from its state directory).
    Audit(audit_cmd::AuditArgs),
    /// Sign in to a gateway for the commands above: at its OpenID provider (the device sign-in), or with an
    /// admin token; kept in ~/.config/uplink/login.json, readable by you only.
    Login(login::LoginArgs),
    /// Forget what `uplink login` kept.
    Logout,
    /// Which gateway the commands above talk to, whether it answers, and who they act as there.
    Status(status::StatusArgs),
    /// Claude Code's PermissionRequest hook: reads the hook's event on standard input, asks the local sled,
    /// prints the gateway's decision (fail-closed: anything but its approval is a denial that says why).
    Hook(hook::HookArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// After the walk-through, keep the gateway and the sled running and print their URLs and tokens.
    #[arg(long)]
    keep_running: bool,
}

/// Runs a client command on a small runtime of its own.
fn client_runtime<F: std::future::Future<Output = ExitCode>>(command: impl FnOnce() -> F) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(command()),
        Err(e) => {
            eprintln!("uplink: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct SledArgs {
    /// WebSocket URL of the gateway's /api/sled-uplink endpoint (ws:// or wss://). Also read from
    /// HUSKIES_UPSTREAM_GATEWAY. Without one, every permission request is denied.
    #[arg(long, env = "UPLINK_GATEWAY")]
    gateway: Option<String>,
    /// Project name this sled announces.
    #[arg(long, env = "UPLINK_PROJECT")]
    project: String,
    /// The sled's token for the gateway.
    #[arg(long, env = "UPLINK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The sled's local MCP endpoint, where the gateway's MCP requests are replayed.
    #[arg(long = "mcp", env = "UPLINK_MCP_URL", default_value = DEFAULT_LOCAL_MCP_URL)]
    mcp: String,
    /// Where local agents ask for permission: POST /permission, and the MCP `approve` tool at /mcp.
    #[arg(long, default_value = "127.0.0.1:3002")]
    permission_listen: SocketAddr,
    /// An Origin allowed to ask on the local listener (repeat for several). By default none: requests that
    /// carry an Origin (web pages) are refused with 403.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// A token local agents must send (Authorization: Bearer) on /permission and /mcp.
    #[arg(long, env = "UPLINK_LOCAL_TOKEN", hide_env_values = true)]
    local_token: Option<String>,
    /// Interval between heartbeats (each also pings the gateway).
    #[arg(long, value_parser = duration, default_value = "10s")]
    heartbeat_interval: Duration,
    /// Reconnect when nothing arrived from the gateway for this long.
    #[arg(long, value_parser = duration, default_value = "30s")]
    idle_timeout: Duration,
    /// Deny a permission request the gateway has not decided after this long.
    #[arg(long, value_parser = duration, default_value = "2m")]
    permission_timeout: Duration,
    /// Answer an MCP request with an error when the local endpoint takes longer than this.
    #[arg(long, value_parser = duration, default_value = "60s")]
    mcp_timeout: Duration,
    /// PEM file of extra CA certificates to trust for wss://.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Do not offer the `resume` extension: a lost link denies what was sent on it, whatever the gateway
    /// (by default, a gateway that accepts it keeps the requests across a drop, and the sled sends them again).
    #[arg(long)]
    no_resume: bool,
}

/// Runs the program with the process's arguments: exit code 0 when it did what was asked, 1 when it could
/// not (the reason is printed), 2 for a usage error (clap's).
pub fn main() -> ExitCode {
    // Every file the program makes is its owner's alone, whatever umask it was started with: the state
    // directory holds tool inputs, the credentials' hashes and generated tokens (the store and the
    // credentials file also set their modes themselves, for embedders).
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::RWXG | rustix::fs::Mode::RWXO);
    let cli = Cli::parse();
    // The demo narrates on standard output; its logs stay quiet unless asked for.
    let quiet = matches!(
        cli.command,
        Command::Demo(_)
            | Command::Rules(_)
            | Command::Audit(_)
            | Command::Sleds(_)
            | Command::Permissions(_)
            | Command::Login(_)
            | Command::Logout
            | Command::Status(_)
            | Command::Hook(_)
    );
    logging::init(if quiet { "warn" } else { "info" }, cli.log_format);
    // The audit log is read from its file: no runtime needed.
    let cli = match cli.command {
        Command::Audit(args) => return audit_cmd::run(args),
        command => Cli { command, ..cli },
    };
    // The admin API's clients have exit codes of their own.
    let cli = match cli.command {
        Command::Sleds(args) => return client_runtime(|| fleet_cmd::sleds(args)),
        Command::Permissions(args) => return client_runtime(|| fleet_cmd::permissions(args)),
        Command::Login(args) => return client_runtime(|| login::login(args)),
        Command::Status(args) => return client_runtime(|| status::status(args)),
        Command::Hook(args) => return client_runtime(|| hook::run(args)),
        Command::Logout => {
            return match login::logout() {
                Ok(Some(path)) => {
                    eprintln!("Signed out: {} removed", path.display());
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!("Nothing to sign out of");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("uplink logout: {why}");
                    ExitCode::FAILURE
                }
            };
        }
        command => Cli { command, ..cli },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("uplink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Sled(args) => runtime.block_on(sled(args)),
        Command::Gateway(args) => runtime.block_on(gateway_cmd::run(*args)),
        Command::Demo(args) => runtime.block_on(async {
            let signal = shutdown_signal()?;
            demo::run(args.keep_running, signal).await.map_err(|e| format!("demo failed: {e}"))?;
            println!("The demo behaved as expected.");
            Ok(())
        }),
        Command::Rules(args) => runtime.block_on(rules_cmd::run(args)),
        Command::Audit(_)
        | Command::Sleds(_)
        | Command::Permissions(_)
        | Command::Login(_)
        | Command::Logout
        | Command::Status(_)
        | Command::Hook(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("uplink: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn sled(args: SledArgs) -> Result<(), String> {
    let gateway = args.gateway.or_else(|| std::env::var("HUSKIES_UPSTREAM_GATEWAY").ok()).unwrap_or_default();
    let mut config = UplinkConfig::new(gateway, args.project);
    config.token = args.token;
    config.local_mcp_url = args.mcp;
    config.ca_file = args.ca_file;
    config.sled.heartbeat_interval = args.heartbeat_interval;
    config.sled.idle_timeout = args.idle_timeout;
    config.sled.permission_timeout = args.permission_timeout;
    config.sled.mcp_timeout = args.mcp_timeout;
    config.sled.resume = !args.no_resume;
    if config.gateway_url.is_empty() {
        tracing::warn!("no gateway configured: every permission request will be denied");
    }
    let signal = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.permission_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.permission_listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let uplink = Uplink::start(config).map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let mut policy = uplink_proto::sled::local::LocalPolicy::new(local.to_string());
    policy.allowed_origins = args.allow_origins.clone();
    policy.token = args.local_token.clone().filter(|t| !t.is_empty());
    let server = tokio::spawn(local_server::serve(listener, uplink.clone(), policy, stop.clone()));
    println!("uplink sled: agents ask at http://{local}/permission and MCP http://{local}/mcp");
    signal.await;
    tracing::info!("shutting down");
    uplink.shutdown().await;
    stop.cancel();
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}

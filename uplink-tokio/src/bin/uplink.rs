//! `uplink`: the command-line program of the uplink workspace.
//!
//! `uplink sled` keeps a sled's uplink to its gateway and serves local permission requests.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use uplink_tokio::{DEFAULT_LOCAL_MCP_URL, Uplink, UplinkConfig, logging, sled_server};

#[derive(Parser)]
#[command(
    name = "uplink",
    version,
    about = "The sled ↔ gateway uplink: permission requests and MCP over one WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sled: keep the uplink to the gateway, serve local permission requests, relay MCP requests.
    Sled(SledArgs),
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write durations like 500ms, 10s, 2m)"))
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("uplink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Sled(args) => runtime.block_on(sled(args)),
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
    if config.gateway_url.is_empty() {
        tracing::warn!("no gateway configured: every permission request will be denied");
    }
    let listener = tokio::net::TcpListener::bind(args.permission_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.permission_listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let uplink = Uplink::start(config).map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(sled_server::serve(listener, uplink.clone(), stop.clone()));
    println!("uplink sled: agents ask at http://{local}/permission and MCP http://{local}/mcp");
    wait_for_signal().await;
    tracing::info!("shutting down");
    uplink.shutdown().await;
    stop.cancel();
    let _ = server.await;
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

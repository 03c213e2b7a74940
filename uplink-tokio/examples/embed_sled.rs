//! Embedding the sled in a tokio program: start an uplink, ask for one permission, shut down.
//!
//! `UPLINK_GATEWAY=ws://127.0.0.1:8700/api/sled-uplink UPLINK_TOKEN=… cargo run -p uplink-tokio --example embed_sled`
//! Without `UPLINK_GATEWAY` the uplink starts disabled and the request is denied at once (fail-closed).
#![allow(clippy::print_stdout)]

use uplink_tokio::{Decision, Uplink, UplinkConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = std::env::var("UPLINK_GATEWAY").unwrap_or_default();
    let mut config = UplinkConfig::new(gateway, "my-project");
    config.token = std::env::var("UPLINK_TOKEN").ok();
    config.local_mcp_url = "http://127.0.0.1:3001/mcp".into(); // where the gateway's MCP requests go
    let uplink = Uplink::start(config)?; // needs a tokio runtime; errors, never panics

    // From any task: always resolves, fail-closed.
    let decision = uplink.request_permission("Bash", &serde_json::json!({"command": "ls"})).await;
    match decision {
        Decision::Approve | Decision::AlwaysAllow => println!("allowed: {decision:?}"),
        Decision::Deny => println!("denied"),
    }

    let link = uplink.watch_link(); // Connecting, Connected, BackingOff { delay, reason }, Closed
    println!("link: {:?}", *link.borrow());
    uplink.shutdown().await; // deny what is pending, close normally, stop
    Ok(())
}

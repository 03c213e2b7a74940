//! Every example runs, against a real gateway on loopback.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use tokio::sync::oneshot;
use uplink_tests::program::{self, Program};
use uplink_tests::within;
use uplink_tokio::gateway::{GatewayServer, GatewayServerConfig};
use uplink_tokio::{Decision, Uplink, UplinkConfig};

/// Examples are built by `cargo test` next to the test binaries: `target/<profile>/examples/<name>`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join("examples").join(name);
    assert!(path.exists(), "{} not built; run through `cargo test`", path.display());
    path
}

/// A gateway that approves `Bash` by policy, so examples get an answer without anybody.
async fn gateway() -> (String, oneshot::Sender<()>) {
    let mut config = GatewayServerConfig::new("127.0.0.1:0".parse().unwrap(), vec!["ex-token".into()], "ex-admin");
    config.max_message_size = 1 << 20;
    config.hub.auto_approve = ["Bash".to_owned()].into();
    let server = GatewayServer::bind(config).await.unwrap();
    let url = format!("ws://{}/api/sled-uplink", server.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

async fn run(name: &str, envs: &[(&str, &str)]) -> (i32, String) {
    let out = program::run_within(name, example(name), &[], envs).await;
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn embed_sled_gets_its_permission_from_a_gateway() {
    let (url, _stop) = gateway().await;
    let (code, out) = run("embed_sled", &[("UPLINK_GATEWAY", &url), ("UPLINK_TOKEN", "ex-token")]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("allowed: Approve"), "{out}");
    // Without a gateway: denied at once.
    let (code, out) = run("embed_sled", &[("UPLINK_GATEWAY", "")]).await;
    assert_eq!((code, out.contains("denied")), (0, true), "{out}");
}

#[tokio::test]
async fn blocking_sled_needs_no_async_runtime() {
    let (url, _stop) = gateway().await;
    let (code, out) = run("blocking_sled", &[("UPLINK_GATEWAY", &url), ("UPLINK_TOKEN", "ex-token")]).await;
    assert_eq!(code, 0, "{out}");
    // The request's wire id is the core's own: eight hex digits from the seed, then its number.
    let line = out.lines().find(|l| l.starts_with("decision for ")).unwrap_or_default();
    let id = line.trim_start_matches("decision for ").split(':').next().unwrap_or_default();
    let (prefix, n) = id.split_once('-').unwrap_or_default();
    assert!(prefix.len() == 8 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) && n == "1", "{out}");
    assert!(line.ends_with(": Approve"), "{out}");
}

#[tokio::test]
async fn custom_gateway_decides_by_its_allow_list() {
    let mut gateway =
        Program::new(example("custom_gateway")).args(["127.0.0.1:0", "Read,Grep"]).show_log().start().await;
    let url = gateway.word_after("on ");
    let uplink = Uplink::start(UplinkConfig::new(url, "ex-sled")).unwrap();
    assert_eq!(within("Read", uplink.request_permission("Read", &serde_json::json!({}))).await, Decision::Approve);
    assert_eq!(within("Bash", uplink.request_permission("Bash", &serde_json::json!({}))).await, Decision::Deny);
    uplink.shutdown().await;
    let mut seen = String::new();
    while !seen.contains("gone") {
        seen.push_str(&gateway.line().await);
    }
    assert!(
        seen.contains("sled ex-sled identified") && seen.contains("Read → Approve") && seen.contains("Bash → Deny"),
        "{seen}"
    );
}

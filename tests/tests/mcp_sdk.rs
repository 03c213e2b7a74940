//! The gateway's MCP endpoint against the official TypeScript SDK, end to end: SDK clients talk to
//! `uplink gateway`'s `/api/sleds/{project}/mcp`, through a real sled, to an SDK server with sessions. Progress
//! notifications reach the client, a tool that asks for sampling and one that asks for elicitation complete
//! (the server's requests cross the uplink and the client's answers come back), two clients get sessions of
//! their own (at the gateway and at the local server), and an ended session is gone.
//!
//! The same path with the official Python SDK's client, too.
//!
//! Needs Node and the packages of `tests/js` (`npm ci --prefix tests/js`), and the Python SDK in
//! `tests/python/.venv`; `scripts/test` installs both.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use uplink_proto::gateway::SessionConfig;
use uplink_tests::program::{Program, Running};
use uplink_tests::{ADMIN_TOKEN, RealGateway, SLED_TOKEN, http, next_event, sse};
use uplink_tokio::{Uplink, UplinkConfig};

fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        dir.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
        "the MCP TypeScript SDK is not installed: run `npm ci --prefix tests/js` (scripts/test does)"
    );
    dir
}

/// The SDK server, listening; killed when dropped.
struct SdkServer {
    _node: Running,
    port: u16,
}

impl SdkServer {
    async fn start() -> SdkServer {
        let node = Program::new("node").arg(js_dir().join("server.mjs")).show_log().start().await;
        let port = serde_json::from_str::<Value>(&node.banner[0]).unwrap()["port"].as_u64().unwrap() as u16;
        SdkServer { _node: node, port }
    }
}

/// The SDK server behind a real sled behind a real gateway; the gateway's MCP URL for it.
struct Rig {
    _server: SdkServer,
    gw: RealGateway,
    uplink: Uplink,
    url: String,
}

impl Rig {
    async fn start() -> Rig {
        let server = SdkServer::start().await;
        let gw = RealGateway::start(SessionConfig::default(), 1 << 20).await;
        let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
        let mut c = UplinkConfig::new(&gw.ws, "sdk");
        c.token = Some(SLED_TOKEN.into());
        c.local_mcp_url = format!("http://127.0.0.1:{}/mcp", server.port);
        let uplink = Uplink::start(c).unwrap();
        next_event(&mut events, "sled_connected").await;
        let url = format!("{}/api/sleds/sdk/mcp", gw.base);
        Rig { _server: server, gw, uplink, url }
    }

    /// Runs a client program with the endpoint's URL and the admin token; what it printed, as JSON.
    async fn client(&self, program: &str, script: PathBuf, more: &[&str]) -> Value {
        let run = tokio::process::Command::new(program)
            .arg(script)
            .args([self.url.as_str(), ADMIN_TOKEN])
            .args(more)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the SDK client finishes").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the SDK client failed: {stderr}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{stderr}"))
    }

    async fn stop(self) {
        self.uplink.shutdown().await;
        self.gw.stop().await;
    }
}

#[tokio::test]
async fn the_python_sdk_gets_progress_sampling_and_elicitation_through_the_uplink() {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/.venv/bin/python");
    assert!(
        python.is_file(),
        "the MCP Python SDK is not installed: run `python3 -m venv tests/python/.venv && tests/python/.venv/bin/pip install -r tests/python/requirements.txt` (scripts/test does)"
    );
    let rig = Rig::start().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/client.py");
    let seen = rig.client(python.to_str().unwrap(), script, &[]).await;
    assert_eq!(seen["progress"], serde_json::json!([1.0, 2.0, 3.0]), "{seen}");
    assert_eq!(seen["counted"], "counted to 3");
    assert_eq!(seen["sampled"], "model said: hi from python");
    assert_eq!(seen["elicited"], "accept: python");
    rig.stop().await;
}

#[tokio::test]
async fn sdk_clients_get_progress_sampling_elicitation_and_sessions_of_their_own_through_the_uplink() {
    let rig = Rig::start().await;
    let url = rig.url.clone();
    let seen = rig.client("node", js_dir().join("client.mjs"), &[]).await;

    assert_eq!(seen["progress"], serde_json::json!([1, 2, 3]), "{seen}");
    assert_eq!(seen["counted"], "counted to 3");
    assert_eq!(seen["sampled"], "model said: hi from alice", "a sampling request crossed the uplink both ways");
    assert_eq!(seen["elicited"], "accept: bob", "an elicitation crossed the uplink both ways");
    let sessions: Vec<&str> = seen["sessions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_ne!(sessions[0], sessions[1], "each client has its own gateway session");
    assert!(sessions.iter().all(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())), "{sessions:?}");
    let local = seen["local"].as_array().unwrap();
    assert_ne!(local[0], local[1], "and its own session at the local server");
    // Alice ended her session (DELETE): it is gone. Bob's is not, and it is his alone.
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let post = async |session: &str, token: &str| {
        http(
            "POST",
            &url,
            Some(token),
            Some(list),
            &[("mcp-session-id", session), ("accept", "application/json, text/event-stream")],
        )
        .await
    };
    assert_eq!(post(sessions[0], ADMIN_TOKEN).await.0, 404, "an ended session is gone");
    let (status, body) = post(sessions[1], ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["result"]["tools"].as_array().map(Vec::len),
        Some(7),
        "the server's seven tools"
    );
    // A HEAD is not one of the endpoint's methods: refused, and it ends nothing (it once ended the session,
    // read as a DELETE).
    let (status, _) = http("HEAD", &url, Some(ADMIN_TOKEN), None, &[("mcp-session-id", sessions[1])]).await;
    assert_eq!(status, 405);
    assert_eq!(post(sessions[1], ADMIN_TOKEN).await.0, 200, "the session lives on");

    rig.stop().await;
}

/// A call made right after the client opened its standalone stream reaches the local server after that
/// stream is open there: the server's request on it, not tied to the call, reaches the client every time.
/// (Before the sled kept a session's order, the call could overtake the stream's GET about one run in two;
/// the server then had nowhere to send its request and the call waited until its deadline.)
#[tokio::test]
async fn a_call_right_after_the_standalone_stream_opened_gets_the_servers_request_on_it_every_time() {
    let rig = Rig::start().await;
    let runs = 100;
    let seen = rig.client("node", js_dir().join("aside.mjs"), &[&runs.to_string()]).await;
    let answers = seen["answers"].as_array().unwrap();
    assert_eq!(answers.len(), runs, "{seen}");
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer, &format!("accept: run-{i}"), "run {i} of {runs}: {seen}");
    }
    rig.stop().await;
}

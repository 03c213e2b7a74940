//! `uplink gateway` and `uplink sled` as processes, talking: the README's two-command walk-through.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use uplink_tests::{http, next_event, sse, within};

/// Runs `uplink ARGS`; a gateway without `--state-dir` gets a fresh one of its own (never the user's), under
/// the system's temporary directory (a few hundred kilobytes each).
fn spawn(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut child = Command::new(env!("CARGO_BIN_EXE_uplink"))
        .args(args)
        .env_remove("UPLINK_SLED_TOKENS")
        .env_remove("UPLINK_ADMIN_TOKEN")
        .env_remove("UPLINK_GATEWAY")
        .env_remove("UPLINK_CREDENTIALS")
        .env("UPLINK_STATE_DIR", std::env::temp_dir().join(format!("uplink-cli-{}-spawn-{n}", std::process::id())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    within("a line of output", lines.next_line()).await.unwrap().unwrap()
}

fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split(marker).nth(1).unwrap_or_else(|| panic!("no {marker:?} in {line:?}")).trim()
}

/// A fresh, empty directory for one test.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("uplink-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `uplink` to completion; its standard output.
fn run(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uplink")).args(args).output().unwrap();
    assert!(out.status.success(), "uplink {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args([name, &pid]).status().unwrap().success());
}

fn terminate(child: &Child) {
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

#[tokio::test]
async fn a_gateway_with_generated_tokens_and_a_sled_talk() {
    let state = temp_dir("generated");
    let state_dir = state.to_str().unwrap();
    let (mut gateway, mut out) = spawn(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--auto-deny",
        "rm",
        "--rule",
        "deny Bash(rm *)",
        "--state-dir",
        state_dir,
    ]);
    let base = after(&line(&mut out).await, "listening on ").to_owned();
    let ws = after(&line(&mut out).await, "sleds connect to ").to_owned();
    let sled_token = after(&line(&mut out).await, "(generated):").to_owned();
    let admin = after(&line(&mut out).await, "(generated):").to_owned();
    assert_eq!(sled_token.len(), 64);
    assert_ne!(sled_token, admin);

    let mut events = sse(&format!("{base}/api/events"), &admin).await;
    let (mut sled, mut sled_out) = spawn(&[
        "sled",
        "--gateway",
        &ws,
        "--token",
        &sled_token,
        "--project",
        "demo",
        "--permission-listen",
        "127.0.0.1:0",
    ]);
    let permission_url = after(&line(&mut sled_out).await, "agents ask at ").split(' ').next().unwrap().to_owned();
    assert_eq!(next_event(&mut events, "sled_connected").await["project"], "demo");

    // An agent asks the sled; a person approves through the gateway's API.
    let ask = tokio::spawn({
        let url = permission_url.clone();
        async move { http("POST", &url, None, Some(r#"{"tool_name":"Bash","tool_input":{"command":"ls"}}"#), &[]).await }
    });
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let (status, _) =
        http("POST", &format!("{base}/api/permissions/{id}"), Some(&admin), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 200);
    let (status, body) = within("the agent's answer", ask).await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"decision":"approve","reason":"gateway"}"#));

    // The auto-deny policy answers without anybody, and says so.
    let (_, body) = http("POST", &permission_url, None, Some(r#"{"tool_name":"rm","tool_input":{}}"#), &[]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"decision": "deny", "reason": "gateway", "message": "denied by the gateway's --auto-deny rule for this tool"})
    );

    // A rule given on the command line: a hidden `rm` is denied, with the rule named.
    let ask = r#"{"tool_name":"Bash","tool_input":{"command":"ls; rm -rf ~"}}"#;
    let (_, body) = http("POST", &permission_url, None, Some(ask), &[]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"decision": "deny", "reason": "gateway", "message": "denied by the gateway's rule #1000000001: Bash(rm *)"})
    );

    let (_, body) = http("GET", &format!("{base}/api/sleds"), Some(&admin), None, &[]).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["sleds"][0]["project"], "demo");

    terminate(&sled);
    assert_eq!(next_event(&mut events, "sled_disconnected").await["project"], "demo");
    assert!(within("the sled to exit", sled.wait()).await.unwrap().success());
    terminate(&gateway);
    assert!(within("the gateway to exit", gateway.wait()).await.unwrap().success());

    // Restarted on the same state directory: nothing is generated, and the tokens still work.
    let (mut gateway, mut out) = spawn(&["gateway", "--listen", "127.0.0.1:0", "--state-dir", state_dir]);
    let base = after(&line(&mut out).await, "listening on ").to_owned();
    let _sleds = line(&mut out).await;
    assert!(line(&mut out).await.contains("credentials:"), "the restart generated new tokens");
    let (status, _) = http("GET", &format!("{base}/api/sleds"), Some(&admin), None, &[]).await;
    assert_eq!(status, 200);
    let kept = std::fs::read_to_string(state.join("tokens")).unwrap();
    assert!(kept.contains(&sled_token) && kept.contains(&admin));
    terminate(&gateway);
    assert!(within("the gateway to exit", gateway.wait()).await.unwrap().success());
}

#[tokio::test]
async fn tokens_added_and_revoked_with_the_cli_take_effect_on_sighup() {
    let dir = temp_dir("tokens");
    let file = dir.join("credentials.toml");
    let file = file.to_str().unwrap();
    let sled_a =
        run(&["gateway", "token", "add", "--credentials", file, "--sled", "--project", "team-a/*", "--label", "a"]);
    let viewer = run(&["gateway", "token", "add", "--credentials", file, "--admin", "vic", "--role", "viewer"]);
    let (sled_a, viewer) = (sled_a.trim().to_owned(), viewer.trim().to_owned());
    let listing = run(&["gateway", "token", "ls", "--credentials", file]);
    assert!(listing.contains("team-a/*") && listing.contains("vic") && !listing.contains(&sled_a), "{listing}");

    let (mut gateway, mut out) = spawn(&["gateway", "--listen", "127.0.0.1:0", "--credentials", file]);
    let base = after(&line(&mut out).await, "listening on ").to_owned();
    let ws = after(&line(&mut out).await, "sleds connect to ").to_owned();
    let mut events = sse(&format!("{base}/api/events"), &viewer).await;
    let (sled, _sled_out) = spawn(&[
        "sled",
        "--gateway",
        &ws,
        "--token",
        &sled_a,
        "--project",
        "team-a/web",
        "--permission-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(next_event(&mut events, "sled_connected").await["project"], "team-a/web");
    // The viewer reads, but may not decide.
    let (status, _) =
        http("POST", &format!("{base}/api/permissions/1-0"), Some(&viewer), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 403);

    // Revoked in the file, then SIGHUP: the sled's connection is closed, and it cannot come back. It was the
    // last sled credential: a file without one is a valid set, in force like any other.
    run(&["gateway", "token", "revoke", "--credentials", file, "a"]);
    let approver = run(&["gateway", "token", "add", "--credentials", file, "--admin", "ana", "--role", "approver"]);
    signal(&gateway, "-HUP");
    assert_eq!(next_event(&mut events, "sled_disconnected").await["project"], "team-a/web");
    let (status, _) = http("GET", &format!("{base}/api/sleds"), Some(approver.trim()), None, &[]).await;
    assert_eq!(status, 200, "the principal added with the revocation works");
    terminate(&sled);
    terminate(&gateway);
    assert!(within("the gateway to exit", gateway.wait()).await.unwrap().success());
}

#[tokio::test]
async fn given_tokens_are_used_and_not_printed() {
    let (mut gateway, mut out) =
        spawn(&["gateway", "--listen", "127.0.0.1:0", "--sled-token", "s1", "--admin-token", "adm"]);
    let _listening = line(&mut out).await;
    let _sleds = line(&mut out).await;
    terminate(&gateway);
    assert!(within("exit", gateway.wait()).await.unwrap().success());
    let rest = within("the rest of the output", async {
        let mut rest = String::new();
        while let Ok(Some(l)) = out.next_line().await {
            rest.push_str(&l);
        }
        rest
    })
    .await;
    assert!(!rest.contains("s1") && !rest.contains("adm"), "{rest}");
    // The same token for both roles is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_uplink"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--sled-token", "same", "--admin-token", "same"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must differ"));
}

#[test]
fn a_rule_that_cannot_be_read_is_refused_with_the_reason() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uplink"))
        .args(["gateway", "--rule", "allow Write(src/**)"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("written `Edit("), "{err}");
}

#[tokio::test]
async fn listening_beyond_loopback_without_tls_is_warned_of_and_names_are_accepted() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_uplink"))
        .args(["gateway", "--listen", "0.0.0.0:0", "--sled-token", "s", "--admin-token", "a", "--no-store"])
        .env("UPLINK_STATE_DIR", temp_dir("beyond"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = within("the warning", async {
        loop {
            let line = log.next_line().await.unwrap().expect("the log ended");
            if line.contains("without TLS") {
                return line;
            }
        }
    })
    .await;
    assert!(warned.contains("WARN") && warned.contains("--tls-cert"), "{warned}");
    child.kill().await.unwrap();
    // A name and a port.
    let (mut named, mut out) =
        spawn(&["gateway", "--listen", "localhost:0", "--sled-token", "s", "--admin-token", "a"]);
    let first = line(&mut out).await;
    assert!(
        first.contains("listening on http://127.0.0.1:") || first.contains("listening on http://[::1]:"),
        "{first}"
    );
    named.kill().await.unwrap();
}

#[tokio::test]
async fn a_gateway_whose_output_nobody_reads_serves_on() {
    // Its standard output is a pipe with no reader (a service manager gone, `| head -1`): every line it
    // prints fails, and it serves anyway. Its address is chosen here, since it cannot be read.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let listen = format!("127.0.0.1:{port}");
    let state = std::env::temp_dir().join(format!("uplink-cli-{}-no-reader", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_uplink"))
        .args(["gateway", "--listen", &listen, "--sled-token", "s", "--admin-token", "a"])
        .env_remove("UPLINK_CREDENTIALS")
        .env("UPLINK_STATE_DIR", &state)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    within("the gateway to answer", async {
        loop {
            assert!(child.try_wait().unwrap().is_none(), "the gateway ended");
            if tokio::net::TcpStream::connect(&listen).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let (status, _) = http("GET", &format!("http://{listen}/api/sleds"), Some("a"), None, &[]).await;
    assert_eq!(status, 200);
    assert!(child.try_wait().unwrap().is_none(), "the gateway ended");
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(state);
}

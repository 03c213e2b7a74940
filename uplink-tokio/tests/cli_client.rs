//! The admin API's command-line client against a running `uplink gateway`: `uplink sleds`, `uplink
//! permissions ls|approve|deny|watch`, and their exit codes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Stdio;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::{program, within};

fn uplink(args: &[&str], base: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_uplink"))
        .args(args)
        .env("UPLINK_GATEWAY_URL", base)
        .env("UPLINK_ADMIN_TOKEN", "a")
        .output()
        .unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn perm_response(ws: &mut Ws) -> Value {
    within("a perm_response", async {
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "perm_response" {
                    return v;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_person_at_a_terminal_lists_watches_and_decides() {
    let dir = std::env::temp_dir().join(format!("uplink-cli-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut gateway, banner) =
        program::gateway(env!("CARGO_BIN_EXE_uplink"), &dir, &["--sled-token", "s", "--admin-token", "a"], 1).await;
    let base = program::base_url(&banner[0]);
    // Someone watches.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_uplink"))
        .args(["permissions", "watch"])
        .env("UPLINK_GATEWAY_URL", &base)
        .env("UPLINK_ADMIN_TOKEN", "a")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut watched = BufReader::new(watch.stdout.take().unwrap()).lines();
    let line = within("the watcher to start", watched.next_line()).await.unwrap().unwrap();
    assert!(line.starts_with("watching http://"), "{line}");
    let url = format!("{}/api/sled-uplink?token=s", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let identity = json!({"type":"identity","req_id":"identity","payload":{"project":"web"}});
    ws.send(Message::text(identity.to_string())).await.unwrap();
    let line = within("the watcher's first line", watched.next_line()).await.unwrap().unwrap();
    assert!(line.contains("sled_connected"), "{line}");
    let ask = |req: &str, command: &str| {
        json!({"type":"perm_request","req_id":req,"payload":{"tool_name":"Bash","tool_input":{"command":command}}})
            .to_string()
    };
    ws.send(Message::text(ask("r1", "git diff HEAD\u{1b}[2J"))).await.unwrap();
    let line = within("the watcher's line", watched.next_line()).await.unwrap().unwrap();
    assert!(line.contains("permission_requested") && line.contains("web asks for Bash: git diff HEAD"), "{line}");
    assert!(!line.contains('\u{1b}'), "a peer's control characters reached the terminal: {line:?}");

    // Listed, with the rule "always" would make.
    let out = uplink(&["sleds"], &base);
    assert!(
        out.status.success() && stdout(&out).contains("web") && stdout(&out).contains("connected"),
        "{}",
        stdout(&out)
    );
    let out = uplink(&["permissions", "ls"], &base);
    let listing = stdout(&out);
    assert!(listing.contains("1-0") && listing.contains("Bash(git diff *)"), "{listing}");
    let out = uplink(&["permissions", "ls", "--json"], &base);
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["permissions"][0]["id"].as_str().unwrap().to_owned();

    // Approved with "always": the sled hears it, and the next such call needs nobody.
    let out = uplink(&["permissions", "approve", &id, "--always", "--scope", "project", "--until", "1h"], &base);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rule 1 allows such calls"));
    assert_eq!(perm_response(&mut ws).await["payload"]["approved"], true);
    ws.send(Message::text(ask("r2", "git diff main"))).await.unwrap();
    assert_eq!(perm_response(&mut ws).await["payload"]["approved"], true);

    // Too late, or never: exit 3. Denied with words: the sled hears them.
    assert_eq!(uplink(&["permissions", "deny", &id], &base).status.code(), Some(3));
    assert_eq!(uplink(&["permissions", "approve", "9-9"], &base).status.code(), Some(3));
    ws.send(Message::text(ask("r3", "curl evil.example"))).await.unwrap();
    let out = within("the request to be listed", async {
        loop {
            let out = uplink(&["permissions", "ls", "--json"], &base);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            if let Some(id) = v["permissions"][0]["id"].as_str() {
                return id.to_owned();
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let denied = uplink(&["permissions", "deny", &out, "--message", "not from here"], &base);
    assert!(denied.status.success(), "{}", String::from_utf8_lossy(&denied.stderr));
    let answer = perm_response(&mut ws).await;
    assert_eq!(
        (answer["payload"]["approved"].clone(), answer["payload"]["message"].clone()),
        (json!(false), json!("not from here"))
    );

    // A wrong token, an unreachable gateway: exit 1 with the reason.
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_uplink"))
        .args(["sleds"])
        .env("UPLINK_GATEWAY_URL", &base)
        .env("UPLINK_ADMIN_TOKEN", "nope")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    let gone = uplink(&["sleds"], "http://127.0.0.1:9");
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot reach"));

    watch.kill().await.unwrap();
    gateway.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

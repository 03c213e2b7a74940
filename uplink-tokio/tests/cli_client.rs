//! The admin API's command-line client against a running `uplink gateway`: `uplink sleds`, `uplink
//! permissions ls|approve|deny|watch`, and their exit codes.
#![allow(clippy::unwrap_used, missing_docs)]

use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::program::{self, Program, Running};
use uplink_tests::{perm_response, raw_sled_at, until};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");

/// `uplink ARGS` against the gateway at `base`, with the admin token `a`.
fn uplink(args: &[&str], base: &str) -> std::process::Output {
    program::run(UPLINK, args, &[("UPLINK_GATEWAY_URL", base), ("UPLINK_ADMIN_TOKEN", "a")])
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_person_at_a_terminal_lists_watches_and_decides() {
    let mut gateway = Program::gateway(UPLINK).args(["--sled-token", "s", "--admin-token", "a"]).start().await;
    let base = gateway.base_url();
    // Someone watches.
    let mut watch = Program::uplink(UPLINK, &["permissions", "watch"])
        .env("UPLINK_GATEWAY_URL", &base)
        .env("UPLINK_ADMIN_TOKEN", "a")
        .show_log()
        .start()
        .await;
    let line = &watch.banner[0];
    assert!(line.starts_with("watching http://"), "{line}");
    // And a program watches, one JSON object a line, the first once its stream is open.
    let mut watch_json = Program::uplink(UPLINK, &["permissions", "watch", "--json"])
        .env("UPLINK_GATEWAY_URL", &base)
        .env("UPLINK_ADMIN_TOKEN", "a")
        .start()
        .await;
    let opened: Value = serde_json::from_str(&watch_json.banner[0]).unwrap();
    assert_eq!((&opened["event"], &opened["data"]["gateway"]), (&json!("watching"), &json!(base)), "{opened}");
    let mut ws = raw_sled_at(&base, "s", "web").await;
    let line = watch.line().await;
    assert!(line.contains("sled_connected"), "{line}");
    let event: Value = serde_json::from_str(&watch_json.line().await).unwrap();
    assert_eq!((&event["event"], &event["data"]["project"]), (&json!("sled_connected"), &json!("web")), "{event}");
    let ask = |req: &str, command: &str| {
        json!({"type":"perm_request","req_id":req,"payload":{"tool_name":"Bash","tool_input":{"command":command}}})
            .to_string()
    };
    ws.send(Message::text(ask("r1", "git diff HEAD\u{1b}[2J"))).await.unwrap();
    let line = watch.line().await;
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
    // A wrong base URL is not "no longer pending" (exit 3), and https:// to this plain-HTTP port is told so.
    let out = uplink(&["permissions", "approve", "9-9"], &format!("{base}/uplink"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the gateway's base URL"), "{out:?}");
    let out = uplink(&["sleds"], &base.replace("http://", "https://"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("try http:// instead of https://"), "{out:?}");
    ws.send(Message::text(ask("r3", "curl evil.example"))).await.unwrap();
    let out = until("the request to be listed", async || {
        let out = uplink(&["permissions", "ls", "--json"], &base);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["permissions"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let denied = uplink(&["permissions", "deny", &out, "--message", "not from here"], &base);
    assert!(denied.status.success(), "{}", String::from_utf8_lossy(&denied.stderr));
    let answer = perm_response(&mut ws).await;
    assert_eq!(
        (answer["payload"]["approved"].clone(), answer["payload"]["message"].clone()),
        (json!(false), json!("not from here"))
    );

    // "Always" on a request that cannot be the model of a rule: approved once, and it says no rule was made.
    ws.send(Message::text(ask("r4", "make && make install"))).await.unwrap();
    let compound = until("the compound request to be listed", async || {
        let out = uplink(&["permissions", "ls", "--json"], &base);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["permissions"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let out = uplink(&["permissions", "approve", &compound, "--always"], &base);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && said.contains("approved once; no rule was made"), "{said}");
    assert_eq!(perm_response(&mut ws).await["payload"]["approved"], true);

    // A wrong token, an unreachable gateway: exit 1 with the reason.
    let wrong = program::run(UPLINK, &["sleds"], &[("UPLINK_GATEWAY_URL", &base), ("UPLINK_ADMIN_TOKEN", "nope")]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    let gone = uplink(&["sleds"], "http://127.0.0.1:9");
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot reach"));

    watch.kill().await;
    gateway.kill().await;
}

/// The gateway with `args`, logging at info to a pipe.
async fn logging_gateway(args: &[&str]) -> Running {
    Program::gateway(UPLINK)
        .args(["--sled-token", "sled-secret-0123456789", "--admin-token", "a"])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .log()
        .start()
        .await
}

#[tokio::test]
async fn a_permissions_life_is_logged_at_info_as_json_or_plain_text_and_no_token_ever() {
    for format in ["json", "text"] {
        let mut gateway = logging_gateway(&["--log-format", format]).await;
        let base = gateway.base_url();
        // A refused handshake says why, without the token.
        let bad = format!("{}/api/sled-uplink?token=not-a-token-42", base.replace("http://", "ws://"));
        assert!(tokio_tungstenite::connect_async(bad).await.is_err());
        let mut lines = gateway.log_until("sled refused").await;
        let mut ws = raw_sled_at(&base, "sled-secret-0123456789", "web").await;
        let ask = json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"ls /secret-input"}}});
        ws.send(Message::text(ask.to_string())).await.unwrap();
        lines.extend(gateway.log_until("waiting for a person").await);
        let (status, _) = uplink_tests::http(
            "POST",
            &format!("{base}/api/permissions/1-0"),
            Some("a"),
            Some(r#"{"approved":false,"message":"no"}"#),
            &[],
        )
        .await;
        assert_eq!(status, 200);
        lines.extend(gateway.log_until("permission decided by a person").await);
        let all = lines.join("\n");
        assert!(!all.contains("sled-secret") && !all.contains("not-a-token-42"), "a token in the log:\n{all}");
        assert!(!all.contains("/secret-input"), "an input at info:\n{all}");
        assert!(!all.contains('\u{1b}'), "colour in a pipe:\n{all}");
        let decided = lines.iter().find(|l| l.contains("permission decided by a person")).unwrap();
        if format == "json" {
            for line in &lines {
                let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
            }
            let v: Value = serde_json::from_str(decided).unwrap();
            assert_eq!((v["level"].as_str(), v["fields"]["id"].as_str()), (Some("INFO"), Some("1-0")), "{decided}");
            // Typed fields: strings as they are (no Debug quotes), absent ones left out.
            assert_eq!(
                (v["fields"]["decision"].as_str(), v["fields"]["by"].as_str(), v["fields"]["project"].as_str()),
                (Some("deny"), Some("admin"), Some("web"))
            );
            assert!(v["fields"].get("rule").is_none(), "no rule decided it: {decided}");
            for line in &lines {
                assert!(
                    !line.contains("Some(") && !line.contains("None") && !line.contains("\\\""),
                    "Debug text: {line}"
                );
            }
        } else {
            assert!(
                decided.contains("INFO") && decided.contains("id=1-0") && decided.contains("decision=deny"),
                "{decided}"
            );
            assert!(!all.contains("Connecting {") && !all.contains("ConnHandle("), "a Debug dump:\n{all}");
        }
        gateway.kill().await;
    }
}

#[test]
fn a_bad_effect_scope_or_outcome_is_refused_locally_with_the_choices() {
    let cases: [(&[&str], &str); 3] = [
        (&["rules", "add", "maybe", "Bash(ls)"], "[possible values: allow, ask, deny]"),
        (
            &["permissions", "approve", "1-0", "--always", "--scope", "world"],
            "[possible values: connection, project, everywhere]",
        ),
        (
            &["audit", "export", "--outcome", "foo"],
            "[possible values: approve, deny, always_allow, cancelled, deadline, connection_lost]",
        ),
    ];
    for (args, choices) in cases {
        let out = program::run(UPLINK, args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(choices), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn rules_claude_code_refuses_are_refused_with_the_reason() {
    let mut gateway = Program::gateway(UPLINK).args(["--sled-token", "s", "--admin-token", "a"]).start().await;
    let base = gateway.base_url();
    for (rule, reason) in [
        (["allow", "bash"], "did you mean `Bash`?"),
        (["allow", "mcp__*"], "may only follow `mcp__server__`"),
        (["deny", "Bash()"], "empty parentheses"),
    ] {
        let args = [&["rules", "add"][..], &rule[..]].concat();
        let out = uplink(&args, &base);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{rule:?} was made: {}", stdout(&out));
        assert!(err.contains(reason), "{rule:?}: {err}");
    }
    // What Claude Code takes in a deny rule, uplink takes too.
    let out = uplink(&["rules", "add", "deny", "mcp__*"], &base);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    gateway.kill().await;
}

//! `uplink gateway` and `uplink sled` as processes, talking: the README's two-command walk-through.
#![allow(clippy::unwrap_used, missing_docs)]

use serde_json::{Value, json};
use uplink_tests::program::{self, Program};
use uplink_tests::{http, next_event, sse, until, within};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");

/// Runs `uplink` to completion; its standard output.
fn run(args: &[&str]) -> String {
    let out = program::run(UPLINK, args, &[]);
    assert!(out.status.success(), "uplink {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_gateway_with_generated_tokens_and_a_sled_talk() {
    let state = uplink_tests::temp_dir();
    let mut gateway = Program::gateway(UPLINK)
        .args(["--auto-deny", "rm", "--rule", "deny Bash(rm *)"])
        .state_dir(state.path())
        .banner_lines(4)
        .start()
        .await;
    let (base, ws) = (gateway.base_url(), gateway.ws_url());
    let (sled_token, admin) = (gateway.sled_token(), gateway.admin_token());
    assert_eq!(sled_token.len(), 64);
    assert_ne!(sled_token, admin);

    let mut events = sse(&format!("{base}/api/events"), &admin).await;
    let mut sled =
        Program::sled(UPLINK).args(["--gateway", &ws, "--token", &sled_token, "--project", "demo"]).start().await;
    let permission_url = sled.ask_url();
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

    sled.terminate();
    assert_eq!(next_event(&mut events, "sled_disconnected").await["project"], "demo");
    assert!(sled.wait().await.success());
    assert!(gateway.stop().await.success());

    // Restarted on the same state directory: nothing is generated, and the tokens still work.
    let mut gateway = Program::gateway(UPLINK).state_dir(state.path()).banner_lines(4).start().await;
    let base = gateway.base_url();
    assert!(gateway.banner.iter().all(|l| !l.contains("(generated)")), "the restart generated new tokens");
    assert!(gateway.banner[2].contains("tokens generated at the first start:"), "{:?}", gateway.banner);
    assert!(gateway.banner[3].contains("credentials:"), "{:?}", gateway.banner);
    let (status, _) = http("GET", &format!("{base}/api/sleds"), Some(&admin), None, &[]).await;
    assert_eq!(status, 200);
    let kept = std::fs::read_to_string(state.path().join("tokens")).unwrap();
    assert!(kept.contains(&sled_token) && kept.contains(&admin));
    assert!(gateway.stop().await.success());
}

#[tokio::test]
async fn tokens_added_and_revoked_with_the_cli_take_effect_on_sighup() {
    let dir = uplink_tests::temp_dir();
    let file = dir.path().join("credentials.toml");
    let file = file.to_str().unwrap();
    let sled_a =
        run(&["gateway", "token", "add", "--credentials", file, "--sled", "--project", "team-a/*", "--label", "a"]);
    let viewer = run(&["gateway", "token", "add", "--credentials", file, "--admin", "vic", "--role", "viewer"]);
    let (sled_a, viewer) = (sled_a.trim().to_owned(), viewer.trim().to_owned());
    let listing = run(&["gateway", "token", "ls", "--credentials", file]);
    assert!(listing.contains("team-a/*") && listing.contains("vic") && !listing.contains(&sled_a), "{listing}");

    let mut gateway = Program::gateway(UPLINK).args(["--credentials", file]).start().await;
    let (base, ws) = (gateway.base_url(), gateway.ws_url());
    let mut events = sse(&format!("{base}/api/events"), &viewer).await;
    let sled =
        Program::sled(UPLINK).args(["--gateway", &ws, "--token", &sled_a, "--project", "team-a/web"]).start().await;
    assert_eq!(next_event(&mut events, "sled_connected").await["project"], "team-a/web");
    // The viewer reads, but may not decide.
    let (status, _) =
        http("POST", &format!("{base}/api/permissions/1-0"), Some(&viewer), Some(r#"{"approved":true}"#), &[]).await;
    assert_eq!(status, 403);

    // Revoked in the file, then SIGHUP: the sled's connection is closed, and it cannot come back. It was the
    // last sled credential: a file without one is a valid set, in force like any other.
    run(&["gateway", "token", "revoke", "--credentials", file, "a"]);
    let approver = run(&["gateway", "token", "add", "--credentials", file, "--admin", "ana", "--role", "approver"]);
    gateway.signal("-HUP");
    assert_eq!(next_event(&mut events, "sled_disconnected").await["project"], "team-a/web");
    let (status, _) = http("GET", &format!("{base}/api/sleds"), Some(approver.trim()), None, &[]).await;
    assert_eq!(status, 200, "the principal added with the revocation works");
    sled.terminate();
    assert!(gateway.stop().await.success());
}

#[tokio::test]
async fn given_tokens_are_used_and_not_printed() {
    let mut gateway = Program::gateway(UPLINK).args(["--sled-token", "s1", "--admin-token", "adm"]).start().await;
    assert!(gateway.stop().await.success());
    let rest = gateway.rest().await.concat();
    assert!(!rest.contains("s1") && !rest.contains("adm"), "{rest}");
    // The same token for both roles is refused.
    let state = uplink_tests::temp_dir();
    let out = program::run(
        UPLINK,
        &["gateway", "--listen", "127.0.0.1:0", "--sled-token", "same", "--admin-token", "same"],
        &[("UPLINK_STATE_DIR", state.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must differ"));
}

#[test]
fn a_rule_that_cannot_be_read_is_refused_with_the_reason() {
    let out = program::run(UPLINK, &["gateway", "--rule", "allow Write(src/**)"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("written `Edit("), "{err}");
}

#[tokio::test]
async fn listening_beyond_loopback_without_tls_is_warned_of_and_names_are_accepted() {
    let mut gateway = Program::gateway_on(UPLINK, "0.0.0.0:0")
        .args(["--sled-token", "s", "--admin-token", "a", "--no-store"])
        .log()
        .start()
        .await;
    let warned = gateway.log_until("without TLS").await.pop().unwrap();
    assert!(warned.contains("WARN") && warned.contains("--tls-cert"), "{warned}");
    // Sleds are not told to connect to 0.0.0.0.
    let told = gateway.banner.iter().find(|l| l.contains("sleds connect to")).unwrap();
    assert!(told.contains("ws://THIS-HOST:") && !told.contains("0.0.0.0"), "{told}");
    gateway.kill().await;
    // A name and a port.
    let mut named =
        Program::gateway_on(UPLINK, "localhost:0").args(["--sled-token", "s", "--admin-token", "a"]).start().await;
    let first = &named.banner[0];
    assert!(
        first.contains("listening on http://127.0.0.1:") || first.contains("listening on http://[::1]:"),
        "{first}"
    );
    named.kill().await;
}

#[tokio::test]
async fn a_gateway_whose_output_nobody_reads_serves_on() {
    // Its standard output is a pipe with no reader (a service manager gone, `| head -1`): every line it
    // prints fails, and it serves anyway. Its address is chosen here, since it cannot be read.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut gateway = Program::gateway_on(UPLINK, &listen)
        .args(["--sled-token", "s", "--admin-token", "a"])
        .stdout_unread()
        .start()
        .await;
    until("the gateway to answer", async || {
        assert!(gateway.child.try_wait().unwrap().is_none(), "the gateway ended");
        tokio::net::TcpStream::connect(&listen).await.ok()
    })
    .await;
    let (status, _) = http("GET", &format!("http://{listen}/api/sleds"), Some("a"), None, &[]).await;
    assert_eq!(status, 200);
    assert!(gateway.child.try_wait().unwrap().is_none(), "the gateway ended");
    gateway.kill().await;
}

#[test]
fn an_openid_provider_that_cannot_be_used_is_refused_with_the_reason() {
    let state = uplink_tests::temp_dir();
    let env = [("UPLINK_STATE_DIR", state.path().to_str().unwrap())];
    let base = ["gateway", "--listen", "127.0.0.1:0", "--sled-token", "s", "--admin-token", "a", "--no-store"];
    let refused = |more: &[&str], code: i32, says: &str| {
        let out = program::run(UPLINK, &[&base[..], more].concat(), &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{more:?}: {err}");
        assert!(err.contains(says), "{more:?}: {err}");
    };
    refused(&["--oidc-issuer", "http://id.example", "--public-url", "https://gw.example"], 1, "https:// URL");
    refused(&["--oidc-issuer", "https://id.example"], 1, "needs --public-url");
    refused(&["--oidc-issuer", "https://id.example", "--public-url", "https://gw.example/uplink"], 1, "without a path");
    refused(&["--oidc-issuer", "https://id.example", "--oidc-role", "team:x=admin"], 2, "group:NAME=ROLE");
    refused(&["--oidc-role", "group:x=admin"], 2, "--oidc-issuer");
    refused(&["--oidc-client-id", "uplink"], 2, "--oidc-issuer");
    refused(&["--oidc-issuer", "https://id.example", "--oidc-scope", "groups"], 2, "--oidc-client-id");
    let issuer = ["--oidc-issuer", "https://id.example", "--public-url", "https://gw.example"];
    refused(
        &[&issuer[..], &["--oidc-client-id", "u", "--oidc-client-secret-file", "/nonexistent/secret"]].concat(),
        1,
        "/nonexistent/secret",
    );
}

#[tokio::test]
async fn a_first_start_that_cannot_listen_leaves_its_tokens_where_the_next_start_says() {
    let state = uplink_tests::temp_dir();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let env = [("UPLINK_STATE_DIR", state.path().to_str().unwrap())];
    let out = program::run(UPLINK, &["gateway", "--listen", &taken], &env);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"), "{out:?}");
    drop(held);
    let mut gateway = Program::gateway(UPLINK).state_dir(state.path()).banner_until("credentials:").start().await;
    let said = gateway.banner.join("\n");
    let tokens = state.path().join("tokens");
    assert!(said.contains(&format!("tokens generated at the first start: {}", tokens.display())), "{said}");
    assert!(std::fs::read_to_string(&tokens).unwrap().starts_with("sled "), "the file holds them");
    gateway.kill().await;
}

#[tokio::test]
async fn the_clients_admin_token_in_the_environment_does_not_change_how_a_gateway_runs() {
    let client = "client-token-0123456789abcdef0123456789";
    // Exported for the command-line client: the gateway keeps to its own credentials, and says so.
    let state = uplink_tests::temp_dir();
    let mut gateway = Program::gateway(UPLINK)
        .state_dir(state.path())
        .env("UPLINK_ADMIN_TOKEN", client)
        .banner_until("credentials:")
        .log()
        .start()
        .await;
    gateway.log_until("command-line client's credential").await;
    let base = gateway.base_url();
    let sleds = format!("{base}/api/sleds");
    assert_eq!(http("GET", &sleds, Some(client), None, &[]).await.0, 401);
    assert_eq!(http("GET", &sleds, Some(&gateway.admin_token()), None, &[]).await.0, 200, "its generated token");
    gateway.kill().await;
    // Beside shared sled tokens, the original's way: read as the gateway's, with a warning.
    let mut shared = Program::gateway(UPLINK)
        .args(["--sled-token", "sled-token-0123456789abcdef0123456789"])
        .env("UPLINK_ADMIN_TOKEN", client)
        .log()
        .start()
        .await;
    shared.log_until("name it UPLINK_GATEWAY_ADMIN_TOKEN").await;
    assert_eq!(http("GET", &format!("{}/api/sleds", shared.base_url()), Some(client), None, &[]).await.0, 200);
    shared.kill().await;
    // The gateway's own name for it.
    let mut own = Program::gateway(UPLINK)
        .args(["--sled-token", "sled-token-0123456789abcdef0123456789"])
        .env("UPLINK_GATEWAY_ADMIN_TOKEN", "gateway-token-0123456789abcdef012345")
        .start()
        .await;
    let url = format!("{}/api/sleds", own.base_url());
    assert_eq!(http("GET", &url, Some("gateway-token-0123456789abcdef012345"), None, &[]).await.0, 200);
    own.kill().await;
}

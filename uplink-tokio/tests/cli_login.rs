//! `uplink login` against a real OpenID provider (the tests' `oidc-provider`, `tests/js/oidc.mjs`): the device
//! sign-in at the gateway's provider, the person's part done as a browser would (`tests/js/device-approve.mjs`);
//! the later commands act as that person, renew the access token with the refresh token when it ends, and
//! stop at `uplink logout`. A token login too, and what a wrong one, a refused sign-in and another gateway's
//! URL get.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use uplink_tests::oidc::{Provider, js_dir};
use uplink_tests::program::{self, Program};
use uplink_tests::{free_port, within};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");
const ADMIN: &str = "admin-token-for-the-login-test-0123456789";

/// `uplink ARGS` with `config` as its configuration directory: exit code, stdout, stderr.
fn uplink(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let env = [("XDG_CONFIG_HOME", config.to_str().unwrap())];
    let out = program::run(UPLINK, args, &env);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `uplink login --gateway-url BASE` with the person's part done at the provider as `user` (or refused):
/// its exit code and what it said.
async fn device_login(config: &std::path::Path, base: &str, user: &str, abort: bool) -> (Option<i32>, String) {
    let mut login = tokio::process::Command::new(UPLINK)
        .args(["login", "--gateway-url", base])
        .env("XDG_CONFIG_HOME", config)
        .env_remove("UPLINK_ADMIN_TOKEN")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(login.stderr.take().unwrap()).lines();
    let first = within("the sign-in's instructions", lines.next_line()).await.unwrap().unwrap();
    let url = first.split("open ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_else(|| panic!("{first}"));
    let mut approve = tokio::process::Command::new("node");
    approve.arg(js_dir().join("device-approve.mjs")).args([url, user]);
    if abort {
        approve.arg("abort");
    }
    let approved = within("the person's part", approve.output()).await.unwrap();
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    let mut said = first.clone();
    while let Some(line) = within("what login says", lines.next_line()).await.unwrap() {
        said.push('\n');
        said.push_str(&line);
    }
    let status = within("login to end", login.wait()).await.unwrap();
    (status.code(), said)
}

#[tokio::test]
async fn a_person_signs_in_at_the_terminal_and_the_commands_act_as_them_until_logout() {
    let provider = Provider::start(None).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _gateway = Program::gateway_on(UPLINK, &format!("127.0.0.1:{port}"))
        .args(["--sled-token", "sled-token-for-the-login-test-0123456789", "--admin-token", ADMIN, "--no-store"])
        .args(["--public-url", &base, "--oidc-issuer", &provider.issuer, "--oidc-cli-client-id", "uplink-cli"])
        .args(["--oidc-role", "group:platform-oncall=approver"])
        .start()
        .await;
    let config = uplink_tests::temp_dir();
    let dir = config.path();

    // Nothing kept yet: the commands say what to do.
    let (code, _, err) = uplink(dir, &["sleds"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("run `uplink login`"), "{err}");

    // The device sign-in, as alice.
    let (code, said) = device_login(dir, &base, "alice", false).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("and enter the code"), "{said}");
    let alice = format!("{}#alice", provider.issuer);
    assert!(said.contains(&format!("Signed in to {base} as {alice} (approver)")), "{said}");
    let file = dir.join("uplink/login.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir.join("uplink")).unwrap().permissions().mode() & 0o777, 0o700);
    }
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(kept["oidc"]["resource"], format!("{base}/api"), "a token for the gateway's API alone");
    assert!(kept["oidc"]["refresh_token"].is_string(), "{kept}");

    // `uplink status` says where and as whom.
    let (code, out, err) = uplink(dir, &["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("gateway:    {base} (uplink ")), "{out}");
    assert!(out.contains(&format!("signed in:  {alice} <alice@example.com>, approver")), "{out}");
    assert!(out.contains("credential: the sign-in at the identity provider `uplink login` kept in"), "{out}");

    // The commands act as alice, with her role: she reads, and may not manage.
    let (code, _, err) = uplink(dir, &["sleds"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = uplink(dir, &["rules", "add", "deny", "Bash(curl *)"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("approver role may not"), "{err}");

    // Her access token ends: the next command renews it with the refresh token, and keeps the new one.
    let mut ended = kept.clone();
    ended["oidc"]["expires_at"] = 0.into();
    std::fs::write(&file, ended.to_string()).unwrap();
    let (code, _, err) = uplink(dir, &["sleds"]);
    assert_eq!(code, Some(0), "{err}");
    let renewed: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_ne!(renewed["oidc"]["access_token"], kept["oidc"]["access_token"]);
    assert!(renewed["oidc"]["expires_at"].as_u64().unwrap() > 0);

    // The kept sign-in is for this gateway only.
    let (code, _, err) = uplink(dir, &["sleds", "--gateway-url", "http://127.0.0.1:9"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("the kept sign-in is for"), "{err}");

    // Refused at the provider: said, and nothing kept in its place.
    let before = std::fs::read_to_string(&file).unwrap();
    let (code, said) = device_login(dir, &base, "alice", true).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("refused"), "{said}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    // Signed out: nothing more acts as her.
    let (code, _, err) = uplink(dir, &["logout"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!file.exists());
    let (code, _, err) = uplink(dir, &["sleds"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("run `uplink login`"), "{err}");

    // A token login: checked at once.
    let (code, _, err) = uplink(dir, &["login", "--gateway-url", &base, "--admin-token", ADMIN]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("(admin)"), "{err}");
    let (code, _, err) = uplink(dir, &["sleds"]);
    assert_eq!(code, Some(0), "{err}");
    // Shared flags before or after the subcommand's own.
    for args in [
        ["permissions", "ls", "--admin-token", ADMIN, "--gateway-url", &base],
        ["permissions", "--admin-token", ADMIN, "--gateway-url", &base, "ls"],
    ] {
        let (code, _, err) = uplink(dir, &args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
    let (code, _, err) = uplink(dir, &["login", "--gateway-url", &base, "--admin-token", "wrong"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the gateway refused the credential (401"), "{err}");
    // A wrong token is said to be wrong, not missing.
    let (code, out, _) = uplink(dir, &["status", "--json"]);
    assert_eq!(code, Some(1), "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert!(status["error"].as_str().unwrap().contains("neither an admin token nor a good access token"), "{status}");
    assert_eq!(status["gateway"], base.as_str());
}

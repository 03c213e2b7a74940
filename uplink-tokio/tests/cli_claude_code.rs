//! Claude Code itself asks the gateway: the published CLI (pinned 2.1.332, installed by scripts/test) runs in
//! print mode against a fake Messages API whose model asks to run a command, with uplink as its
//! `PermissionRequest` hook (a `command` hook running `uplink hook`, and an `http` hook at the sled's
//! `/hook`) or as its `--permission-prompt-tool`, and a real gateway and `uplink sled` behind it. What
//! Claude Code did (ran the command or not, with which message, which session rule) is read from its own
//! output, and every answer uplink gave it is checked against Claude Code's own schemas, read from the same
//! binary.
#![allow(clippy::unwrap_used, missing_docs)]

use serde_json::{Value, json};
use std::time::Duration;
use uplink_tests::claude_code::{self, FakeApi};
use uplink_tests::program::{Program, Running};

use uplink_tests::{ADMIN_TOKEN, RealGateway, SLED_TOKEN, http, next_event, sse, within_for};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");

/// What the fake model asks to run: it makes a file, so Claude Code asks for permission.
fn touch() -> Value {
    json!({"command": "touch marker.txt", "description": "make a marker"})
}

/// A real gateway and an `uplink sled` connected to it; the sled's local face.
async fn fleet() -> (RealGateway, Running, String) {
    let gw = RealGateway::start(Default::default(), uplink_tokio::DEFAULT_MAX_MESSAGE_SIZE).await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let sled = Program::sled(UPLINK)
        .args(["--project", "cc", "--gateway", gw.ws.as_str(), "--token", SLED_TOKEN])
        .start()
        .await;
    next_event(&mut events, "sled_connected").await;
    let base = sled.local_url();
    (gw, sled, base)
}

/// A `PermissionRequest` hook for every tool: `hook` (a `command` or `http` hook), failing closed.
fn hook_settings(hook: Value) -> Value {
    json!({"hooks": {"PermissionRequest": [{"matcher": "*", "hooks": [hook]}]}})
}

/// One Claude Code at a time in this file: each maps a 400 MB binary, and three at once on a small machine
/// take longer to start than the tests' usual bounds.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Decides the next request at `gw` with `decision` (the admin API's body); the request's listing. Claude
/// Code starts within the wait (up to a minute on a loaded machine).
async fn decide_next(gw: &RealGateway, events: &mut Events, decision: Value) -> Value {
    let asked = within_for("Claude Code's permission request", Duration::from_secs(60), async {
        loop {
            let (kind, value) = events.recv().await.expect("the event stream is open");
            if kind == "permission_requested" {
                return value;
            }
        }
    })
    .await;
    let url = format!("{}/api/permissions/{}", gw.base, asked["id"].as_str().unwrap());
    let (status, body) = http("POST", &url, Some(ADMIN_TOKEN), Some(&decision.to_string()), &[]).await;
    assert_eq!(status, 200, "{body}");
    asked
}

type Events = tokio::sync::mpsc::Receiver<(String, Value)>;

/// The hook outputs Claude Code got, as JSON.
fn hook_outputs(summary: &Value) -> Vec<Value> {
    summary["hook_responses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["hook_event"] == "PermissionRequest")
        .map(|r| serde_json::from_str(r["stdout"].as_str().unwrap().trim()).unwrap())
        .collect()
}

#[tokio::test]
async fn claude_code_runs_what_the_gateway_approved_and_not_what_it_denied() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (gw, _sled, base) = fleet().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let api = FakeApi::start(&touch()).await;
    let command = format!("{UPLINK} hook --sled {base} --timeout 20s");
    let settings = hook_settings(json!({"type": "command", "command": command, "timeout": 30, "onFailure": "block"}));
    let mut outputs = Vec::new();

    // Approved at the gateway: Claude Code runs it.
    let work = uplink_tests::temp_dir();
    let (summary, asked) = tokio::join!(
        claude_code::run(&api.url, work.path(), &settings, &[]),
        decide_next(&gw, &mut events, json!({"approved": true}))
    );
    assert_eq!(asked["tool_input"]["command"], "touch marker.txt", "{asked}");
    assert!(work.path().join("marker.txt").exists(), "approved, yet not run: {summary}");
    assert_eq!(summary["validation_errors"], json!([]), "{summary}");
    outputs.extend(hook_outputs(&summary));

    // Denied with words: not run, and Claude Code hands the person's words on.
    let work = uplink_tests::temp_dir();
    let (summary, _) = tokio::join!(
        claude_code::run(&api.url, work.path(), &settings, &[]),
        decide_next(&gw, &mut events, json!({"approved": false, "message": "not on a Friday"}))
    );
    assert!(!work.path().join("marker.txt").exists(), "denied, yet run: {summary}");
    assert_eq!(summary["denied_by_hook"], true, "{summary}");
    assert!(
        summary["tool_results"].to_string().contains("not on a Friday"),
        "the words never reached the model: {summary}"
    );
    outputs.extend(hook_outputs(&summary));

    // Always allowed, through the sled's http hook: run, and Claude Code keeps the gateway's rule for its
    // session.
    let work = uplink_tests::temp_dir();
    let http_hook =
        hook_settings(json!({"type": "http", "url": format!("{base}/hook"), "timeout": 30, "onFailure": "block"}));
    let (summary, _) = tokio::join!(
        claude_code::run(&api.url, work.path(), &http_hook, &[]),
        decide_next(&gw, &mut events, json!({"approved": true, "always_allow": true}))
    );
    assert!(work.path().join("marker.txt").exists(), "always allowed, yet not run: {summary}");
    let (_, rules) = http("GET", &format!("{}/api/rules", gw.base), Some(ADMIN_TOKEN), None, &[]).await;
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let made = rules["rules"][0]["pattern"].as_str().expect("the gateway's rule").to_owned();
    let session = summary["session_rules"].as_array().unwrap();
    assert!(
        session.iter().any(|r| r["behavior"] == "allow" && r["rule"] == made.as_str()),
        "Claude Code did not keep the gateway's rule {made} for its session: {summary}"
    );
    // Every answer uplink gave passes Claude Code's own schema for a PermissionRequest hook's output.
    claude_code::validate("hook-output", Some("PermissionRequest"), &outputs).await.unwrap();
}

#[tokio::test]
async fn claude_code_is_denied_with_the_cause_when_the_sled_cannot_be_reached() {
    let _one = ONE_AT_A_TIME.lock().await;
    let api = FakeApi::start(&touch()).await;
    let closed = format!("http://127.0.0.1:{}", uplink_tests::free_port());
    let command = format!("{UPLINK} hook --sled {closed}");
    let settings = hook_settings(json!({"type": "command", "command": command, "timeout": 30}));
    let work = uplink_tests::temp_dir();
    // Even without onFailure "block": the hook itself denies, saying why.
    let summary = claude_code::run(&api.url, work.path(), &settings, &[]).await;
    assert!(!work.path().join("marker.txt").exists(), "run without an approval: {summary}");
    assert_eq!(summary["denied_by_hook"], true, "{summary}");
    assert!(summary["tool_results"].to_string().contains("the sled did not answer"), "{summary}");
    claude_code::validate("hook-output", Some("PermissionRequest"), &hook_outputs(&summary)).await.unwrap();
}

#[tokio::test]
async fn claude_code_takes_the_approve_tools_answers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (gw, _sled, base) = fleet().await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let api = FakeApi::start(&touch()).await;
    let mcp = json!({"mcpServers": {"uplink": {"type": "http", "url": format!("{base}/mcp")}}}).to_string();
    let args = ["--mcp-config", mcp.as_str(), "--permission-prompt-tool", "mcp__uplink__approve"];
    for (decision, runs) in [
        (json!({"approved": true}), true),
        (json!({"approved": false, "message": "ask Ana"}), false),
        (json!({"approved": true, "always_allow": true}), true),
    ] {
        let work = uplink_tests::temp_dir();
        let no_hooks = json!({});
        let (summary, _) = tokio::join!(
            claude_code::run(&api.url, work.path(), &no_hooks, &args),
            decide_next(&gw, &mut events, decision.clone())
        );
        assert_eq!(work.path().join("marker.txt").exists(), runs, "{decision}: {summary}");
        if !runs {
            assert!(summary["tool_results"].to_string().contains("ask Ana"), "{summary}");
        }
        if decision["always_allow"] == true {
            // Claude Code drops a malformed updatedPermissions list silently: its session rule shows it took it.
            let (_, rules) = http("GET", &format!("{}/api/rules", gw.base), Some(ADMIN_TOKEN), None, &[]).await;
            let rules: Value = serde_json::from_str(&rules).unwrap();
            let made = rules["rules"][0]["pattern"].as_str().expect("the gateway's rule").to_owned();
            let session = summary["session_rules"].as_array().unwrap();
            assert!(session.iter().any(|r| r["rule"] == made.as_str()), "{made} not kept by Claude Code: {summary}");
        }
    }
}

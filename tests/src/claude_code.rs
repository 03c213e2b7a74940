//! Claude Code itself, as the oracle for what it takes from uplink: the published CLI, pinned in
//! `tests/claude-code`'s lockfile (installed by scripts/test), run in print mode against a fake Messages API
//! that makes the model ask for one tool call; and Claude Code's own schemas, read from that binary.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::program::{Program, Running};
use crate::within_for;

/// `tests/claude-code`, with Claude Code installed.
pub fn kit_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("claude-code");
    assert!(
        dir.join("node_modules/@anthropic-ai/claude-code-linux-x64/claude").is_file(),
        "Claude Code is not installed: run `npm ci --prefix tests/claude-code --ignore-scripts` (scripts/test does)"
    );
    dir
}

/// The fake Messages API: its model asks for one call of `Bash` with the input given; killed when dropped.
pub struct FakeApi {
    _node: Running,
    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL`.
    pub url: String,
}

impl FakeApi {
    /// An API whose model asks to run `tool_input` (a `Bash` input).
    pub async fn start(tool_input: &Value) -> FakeApi {
        let node = Program::new("node")
            .arg(kit_dir().join("fake-api.mjs"))
            .env("FAKE_TOOL_INPUT", tool_input.to_string())
            .show_log()
            .start()
            .await;
        let banner: Value = serde_json::from_str(&node.banner[0]).unwrap();
        let url = format!("http://127.0.0.1:{}", banner["port"]);
        FakeApi { _node: node, url }
    }
}

/// Runs Claude Code once (`claude -p "run it"`) in `workdir` with `settings` and `extra` arguments, against
/// the fake API at `api` ([`FakeApi::url`]); the kit's summary of what it did (`run.mjs`: hook responses, denials, tool results, validation
/// errors, session rules). Bounded: Claude Code is killed after 60 s, the test fails after 90 s.
pub async fn run(api: &str, workdir: &Path, settings: &Value, extra: &[&str]) -> Value {
    let settings_file = workdir.join(".test-settings.json");
    std::fs::write(&settings_file, settings.to_string()).unwrap();
    let extra = serde_json::to_string(extra).unwrap();
    let mut command = tokio::process::Command::from(crate::program::command("node"));
    command
        .arg(kit_dir().join("run.mjs"))
        .args(["--settings", settings_file.to_str().unwrap(), "--workdir", workdir.to_str().unwrap()])
        .args(["--api", api, "--timeout-secs", "60", "--extra-args", extra.as_str()])
        .kill_on_drop(true);
    let output = within_for("Claude Code's run", std::time::Duration::from_secs(90), command.output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "run.mjs failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("run.mjs printed no summary ({e}): {stdout}"))
}

/// Whether Claude Code's own schema of `kind` (`hook-output`, `prompt-tool-result`,
/// `permission-request-input`) accepts every one of `values`; `Err` with its issues otherwise.
pub async fn validate(kind: &str, event: Option<&str>, values: &[Value]) -> Result<(), String> {
    let dir = tempfile::Builder::new().prefix("uplink-cc-").tempdir().unwrap();
    let mut command = tokio::process::Command::from(crate::program::command("node"));
    command.arg(kit_dir().join("validate.mjs")).arg(kind);
    if let Some(event) = event {
        command.args(["--event", event]);
    }
    for (n, value) in values.iter().enumerate() {
        let file = dir.path().join(format!("{n}.json"));
        std::fs::write(&file, value.to_string()).unwrap();
        command.arg(file);
    }
    command.kill_on_drop(true);
    let output =
        within_for("Claude Code's schema", std::time::Duration::from_secs(60), command.output()).await.unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    match output.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(said),
        _ => panic!("validate.mjs could not check: {said}"),
    }
}

//! Claude Code's `PermissionRequest` hook, answered by the sled: it fires where Claude Code would show its
//! own permission dialog (an interactive session), where the `approve` tool does not apply.
//!
//! - `POST /hook` on the sled's local face (served by `local_server`, with the outputs made here) takes the hook's event (JSON: `tool_name`, `tool_input`, …) and
//!   answers the hook's output: `{"hookSpecificOutput": {"hookEventName": "PermissionRequest", "decision":
//!   {"behavior": "allow" | "deny", …}}}`, with the same rule as the `approve` tool for an always-allow and
//!   the cause for a denial. For a hook of type `http`, no process per call.
//! - `uplink hook` (a hook of type `command`) sends the event it reads on standard input to that route and
//!   prints the answer.
//!
//! Fail-closed: only the gateway's approval allows. An unreadable event, a sled that cannot be reached or
//! answers wrongly, or no answer in time is a denial that says why; with `--fallback-to-dialog`, a sled that
//! cannot be reached, or whose link to the gateway was lost before a decision ([`uplink_proto::Cause::lost_the_link`],
//! the core's rule), gives no decision instead, and Claude Code shows its own dialog. Never after a denial.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::StatusCode;
use serde_json::{Value, json};

/// Largest hook event taken (a `Write` carries the whole file): the uplink's message limit.
pub(crate) const MAX_HOOK_EVENT: usize = crate::sled::DEFAULT_MAX_MESSAGE_SIZE;

/// The one hook event answered.
pub(crate) const EVENT: &str = "PermissionRequest";

/// `uplink hook`'s arguments.
#[derive(clap::Args)]
pub(crate) struct HookArgs {
    /// The sled's local face (its --permission-listen), where the hook asks.
    #[arg(long, env = "UPLINK_SLED_URL", default_value = "http://127.0.0.1:3002")]
    sled: String,
    /// The sled's --local-token, if it has one.
    #[arg(long, env = "UPLINK_LOCAL_TOKEN", hide_env_values = true)]
    local_token: Option<String>,
    /// How long to wait for the decision: a little more than the sled's permission deadline (120 s), and
    /// less than the hook's timeout in Claude Code's settings. Past it, the answer is a denial.
    #[arg(long, default_value = "125s", value_parser = super::common::duration)]
    timeout: Duration,
    /// When the sled cannot be reached, or its link to the gateway was lost before a decision, give no
    /// decision, so that Claude Code shows its own dialog, instead of denying. Never after a denial.
    #[arg(long)]
    fallback_to_dialog: bool,
}

/// The hook's output carrying `decision` (the permission-prompt answer's shape).
pub(crate) fn output(decision: Value) -> Value {
    json!({"hookSpecificOutput": {"hookEventName": EVENT, "decision": decision}})
}

/// A denial saying `why`, as the hook's output.
pub(crate) fn denied(why: &str) -> Value {
    output(json!({"behavior": "deny", "message": format!("Permission denied: {why}")}))
}

/// `uplink hook`: reads the event, asks the sled, prints the hook's output; always exits 0 (Claude Code
/// reads the answer from standard output), but for arguments it cannot take.
pub(crate) async fn run(args: HookArgs) -> ExitCode {
    let answer = ask(&args).await;
    match answer {
        Some(answer) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{answer}");
            let _ = out.flush();
        }
        None => eprintln!("uplink hook: no decision; Claude Code asks you (--fallback-to-dialog)"),
    }
    ExitCode::SUCCESS
}

/// The hook's output, or `None` for no decision (the dialog, where allowed).
async fn ask(args: &HookArgs) -> Option<Value> {
    let mut event = Vec::new();
    // Read before anything else runs on this runtime: blocking here holds nothing up.
    let read = std::io::stdin().lock().take(MAX_HOOK_EVENT as u64 + 1).read_to_end(&mut event);
    let deny = |why: String| {
        eprintln!("uplink hook: {why}");
        Some(denied(&why))
    };
    match read {
        Err(e) => return deny(format!("uplink hook could not read the hook's event: {e}")),
        Ok(n) if n > MAX_HOOK_EVENT => return deny(format!("the hook's event is over {MAX_HOOK_EVENT} bytes")),
        Ok(_) => {}
    }
    let base = args.sled.trim_end_matches('/');
    let path = if args.fallback_to_dialog { "/hook?fallback=dialog" } else { "/hook" };
    let bearer = args.local_token.as_deref().filter(|t| !t.is_empty()).map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    let exchange = async {
        let sent = crate::http_client::send("POST", base, path, &headers, Bytes::from(event), None).await;
        let response = match sent {
            Ok(response) => response,
            // Only a sled that could not be reached at all may leave the decision to the dialog: an
            // exchange that broke after the event was sent may have been decided (and denied).
            Err(e) => return Err((e.starts_with(crate::http_client::UNREACHABLE), e)),
        };
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| (false, format!("{base}/hook: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(args.timeout, exchange).await {
        Err(_) => deny(format!("no decision came from the sled within {:?}", args.timeout)),
        Ok(Err((true, _))) if args.fallback_to_dialog => None,
        Ok(Err((_, why))) => deny(format!("the sled did not answer ({why})")),
        Ok(Ok((status, body))) => {
            let value = serde_json::from_slice::<Value>(&body).ok();
            match value {
                Some(value) if status == StatusCode::OK && value.as_object().is_some_and(|o| o.is_empty()) => {
                    if !args.fallback_to_dialog {
                        return deny("the sled gave no decision".to_owned());
                    }
                    None
                }
                Some(value) if status == StatusCode::OK && value["hookSpecificOutput"]["decision"].is_object() => {
                    Some(value)
                }
                Some(value) if value["error"].is_string() => deny(format!(
                    "the sled refused the question ({status}: {})",
                    value["error"].as_str().unwrap_or_default()
                )),
                _ => deny(format!("the sled answered {status}, not a decision")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_have_claude_codes_shape() {
        assert_eq!(
            denied("why"),
            json!({"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":{"behavior":"deny","message":"Permission denied: why"}}})
        );
    }
}

//! `uplink sleds` and `uplink permissions ls|approve|deny|watch`: a person at a terminal, deciding through
//! a running gateway's admin API.
//!
//! Exit codes: 0 done; 1 the gateway could not be reached, or refused (401, 403, 400: its words are
//! printed); 2 usage; 3 the permission is no longer pending (decided, withdrawn or unknown: 404, 409).

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::admin_client::{AdminArgs, answer};

#[derive(Args)]
pub(super) struct SledsArgs {
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
pub(super) struct PermissionsArgs {
    #[command(subcommand)]
    action: PermissionsAction,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum PermissionsAction {
    /// List the requests waiting for a person.
    Ls {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve the request ID (approver role).
    Approve {
        /// The request's id, as `ls` shows it.
        id: String,
        /// Always allow: also make the rule `ls` suggests, for --scope.
        #[arg(long)]
        always: bool,
        /// Where the rule applies: connection, project or everywhere.
        #[arg(long, default_value = "project", requires = "always", value_parser = ["connection", "project", "everywhere"])]
        scope: String,
        /// Until when the rule applies: an RFC 3339 time, or a duration from now (8h).
        #[arg(long, value_parser = super::credentials_file::expiry, requires = "always")]
        until: Option<SystemTime>,
        /// Words for the agent.
        #[arg(long)]
        message: Option<String>,
    },
    /// Deny the request ID (approver role), optionally saying why to the agent.
    Deny {
        /// The request's id, as `ls` shows it.
        id: String,
        /// Words for the agent.
        #[arg(long)]
        message: Option<String>,
    },
    /// Follow the gateway's events, one line each, until interrupted or the stream ends.
    Watch {
        /// One JSON object a line ({"event": NAME, "data": …}) instead of text; the first,
        /// {"event": "watching", "data": {"gateway": URL}}, once the stream is open.
        #[arg(long)]
        json: bool,
    },
}

/// A peer's string, one line, with its control characters escaped, cut at `max` characters.
fn shown(value: &Value, max: usize) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let escaped: String = text.escape_debug().collect();
    if escaped.chars().count() > max {
        let cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        escaped
    }
}

fn ago(ms: &Value) -> String {
    ms.as_u64().map_or_else(|| "-".into(), |ms| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string())
}

fn sleds_table(sleds: &[Value]) -> String {
    let rows = sleds.iter().map(|s| {
        let state = match (s["connected"].as_bool(), s["stale"].as_bool()) {
            (Some(true), Some(true)) => "stale",
            (Some(true), _) => "connected",
            _ => "gone",
        };
        [
            shown(&s["project"], 32),
            state.to_owned(),
            ago(&s["connected_for_ms"]),
            ago(&s["last_seen_ms_ago"]),
            s["pending_permissions"].as_u64().unwrap_or(0).to_string(),
        ]
    });
    super::common::table(&["PROJECT", "STATE", "UP FOR", "LAST SEEN", "PENDING"], rows)
}

/// A tool input as a person reads it: a Bash command as the command, a path as the path, JSON otherwise.
fn input_line(tool: &str, input: &Value) -> String {
    let text = match (tool, &input["command"], &input["file_path"], &input["url"]) {
        ("Bash", Value::String(c), _, _) => Value::String(c.clone()),
        (_, _, Value::String(p), _) => Value::String(p.clone()),
        (_, _, _, Value::String(u)) => Value::String(u.clone()),
        _ => Value::String(input.to_string()),
    };
    shown(&text, 60)
}

fn permissions_table(perms: &[Value]) -> String {
    let rows = perms.iter().map(|p| {
        let tool = p["tool_name"].as_str().unwrap_or("");
        [
            shown(&p["id"], 10),
            shown(&p["project"], 20),
            shown(&p["tool_name"], 12),
            ago(&p["age_ms"]),
            input_line(tool, &p["tool_input"]),
            if p["suggested_rule"].is_null() { "-".to_owned() } else { shown(&p["suggested_rule"], 40) },
            match (p["sled_away"].as_bool(), p["decided"].as_str()) {
                (Some(true), Some(decided)) => format!("away, {} kept", shown(&json!(decided), 16)),
                (Some(true), None) => "away".to_owned(),
                _ => "here".to_owned(),
            },
        ]
    });
    super::common::table(&["ID", "PROJECT", "TOOL", "WAITING", "INPUT", "ALWAYS WOULD ALLOW", "SLED"], rows)
}

/// Says so when the decision was kept for a sled that is away rather than sent.
fn away(id: &str, answer: &Value) {
    if answer["sled_away"].as_bool() == Some(true) {
        eprintln!("{id}: its sled is away: the decision is kept and sent when it comes back, and never if it does not");
    }
}

/// One line for an event of the stream.
fn event_line(event: &str, data: &Value) -> String {
    let at = humantime::format_rfc3339_seconds(SystemTime::now());
    let what = match event {
        "permission_requested" => format!(
            "{} {} asks for {}: {}",
            shown(&data["id"], 12),
            shown(&data["project"], 40),
            shown(&data["tool_name"], 40),
            input_line(data["tool_name"].as_str().unwrap_or(""), &data["tool_input"])
        ),
        "permission_decided" => format!(
            "{} {} by {}{}{}",
            shown(&data["id"], 12),
            shown(&data["decision"], 20),
            shown(&data["by"], 40),
            data["message"].as_str().map(|m| format!(": {}", shown(&Value::from(m), 80))).unwrap_or_default(),
            if data["held"].as_bool() == Some(true) { " (its sled is away: kept until it comes back)" } else { "" }
        ),
        "permission_withdrawn" => format!("{} ended: {}", shown(&data["id"], 12), shown(&data["reason"], 20)),
        "permission_held" => format!("{} held: its sled is away, it may come back", shown(&data["id"], 12)),
        "permission_resumed" => format!("{} pending again: its sled is back", shown(&data["id"], 12)),
        "permission_delivered" => format!("{} decision sent: its sled is back", shown(&data["id"], 12)),
        "permission_auto_decided" => format!(
            "{} {} for {} by rule {}",
            shown(&data["project"], 40),
            shown(&data["decision"], 20),
            shown(&data["tool_name"], 40),
            shown(&data["rule"], 20)
        ),
        "rule_added" => format!(
            "rule {} added by {}: {} {}",
            shown(&data["id"], 20),
            shown(&data["author"], 40),
            shown(&data["effect"], 8),
            shown(&data["pattern"], 80)
        ),
        _ => shown(data, 120),
    };
    format!("{at} {event:<24} {what}")
}

/// What the program exits with after `result`.
fn exit(result: Result<(), (u16, String)>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((status, why)) => {
            eprintln!("uplink: {why}");
            if matches!(status, 404 | 409) { ExitCode::from(3) } else { ExitCode::FAILURE }
        }
    }
}

fn unreached(why: String) -> (u16, String) {
    (0, why)
}

pub(super) async fn sleds(args: SledsArgs) -> ExitCode {
    let result = async {
        let (status, body) = args.admin.request("GET", "/api/sleds", None).await.map_err(unreached)?;
        let value = answer(status, &body)?;
        if args.json {
            println!("{value}");
        } else {
            print!("{}", sleds_table(value["sleds"].as_array().map_or(&[][..], Vec::as_slice)));
        }
        Ok(())
    };
    exit(result.await)
}

pub(super) async fn permissions(args: PermissionsArgs) -> ExitCode {
    let admin = &args.admin;
    let result = async {
        match args.action {
            PermissionsAction::Ls { json } => {
                let (status, body) = admin.request("GET", "/api/permissions", None).await.map_err(unreached)?;
                let value = answer(status, &body)?;
                if json {
                    println!("{value}");
                } else {
                    print!("{}", permissions_table(value["permissions"].as_array().map_or(&[][..], Vec::as_slice)));
                }
            }
            PermissionsAction::Approve { id, always, scope, until, message } => {
                let until = until.map(|at| at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
                let body = json!({"approved": true, "always_allow": always, "scope": scope, "until": until, "message": message});
                let path = format!("/api/permissions/{id}");
                let (status, text) = admin.request("POST", &path, Some(body.to_string())).await.map_err(unreached)?;
                let value = answer(status, &text)?;
                match value["rule"].as_u64() {
                    Some(rule) => eprintln!("{id}: approved; rule {rule} allows such calls from now on"),
                    None if always => eprintln!(
                        "{id}: approved once; no rule was made: this request is no model for one (a compound or \
                         unreadable command, or one holding a '*'), or the gateway has no room for more rules"
                    ),
                    None => eprintln!("{id}: approved"),
                }
                away(&id, &value);
            }
            PermissionsAction::Deny { id, message } => {
                let body = json!({"approved": false, "message": message});
                let path = format!("/api/permissions/{id}");
                let (status, text) = admin.request("POST", &path, Some(body.to_string())).await.map_err(unreached)?;
                let value = answer(status, &text)?;
                eprintln!("{id}: denied");
                away(&id, &value);
            }
            PermissionsAction::Watch { json } => {
                admin
                    .follow(
                        "/api/events",
                        |url| {
                            if json {
                                println!("{}", json!({"event": "watching", "data": {"gateway": url}}));
                            } else {
                                println!("watching {url} (Ctrl-C to stop)");
                            }
                        },
                        |event, data| {
                            let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                            if json {
                                println!("{}", json!({"event": event, "data": data}));
                            } else {
                                println!("{}", event_line(event, &data));
                            }
                        },
                    )
                    .await
                    .map_err(unreached)?;
            }
        }
        Ok(())
    };
    exit(result.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_strings_are_escaped_and_cut_in_tables() {
        let perms = [
            json!({"id":"1-0","project":"web\u{1b}[31m","tool_name":"Bash","tool_input":{"command":"ls\nrm -rf /"},"age_ms":61_000,"suggested_rule":null}),
        ];
        let table = permissions_table(&perms);
        assert!(!table.contains('\u{1b}') && table.contains("web\\u{1b}[31m"), "{table}");
        assert!(table.contains("ls\\nrm -rf /") && table.contains("1m 1s"), "{table}");
        let long = json!("x".repeat(100));
        assert_eq!(shown(&long, 10).chars().count(), 10);
        let line =
            event_line("permission_decided", &json!({"id":"1-0","decision":"deny","by":"ana","message":"no\r\nway"}));
        assert!(line.contains("1-0 deny by ana: no\\r\\nway"), "{line}");
    }
}

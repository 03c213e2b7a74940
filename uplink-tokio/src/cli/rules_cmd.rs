//! `uplink rules ls|add|rm`: the rules of a running gateway, through its admin API (`/api/rules`).
//!
//! Exit codes: 0 done; 1 the gateway could not be reached or refused (its error is printed); 2 usage.

use std::time::SystemTime;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::admin_client::{AdminArgs, Failure};

#[derive(Args)]
pub(super) struct RulesArgs {
    #[command(subcommand)]
    action: RulesAction,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum RulesAction {
    /// List the rules in force: the configuration's, the flags', and those made at run time.
    Ls {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a rule (admin role): EFFECT (allow, ask, deny) and PATTERN in Claude Code's syntax.
    Add {
        /// allow, ask or deny.
        #[arg(value_parser = ["allow", "ask", "deny"])]
        effect: String,
        /// `Bash(npm run test:*)`, `Read(./src/**)`, `WebFetch(domain:example.com)`, `mcp__server__tool`…
        pattern: String,
        /// A project (or `*` pattern) it applies to (repeatable; default every project).
        #[arg(long = "project")]
        projects: Vec<String>,
        /// When it stops applying: an RFC 3339 time, or a duration from now (30d).
        #[arg(long, value_parser = super::credentials_file::expiry)]
        expires: Option<SystemTime>,
    },
    /// Remove the rule ID (admin role).
    Rm {
        /// The rule's id, as `ls` shows it.
        id: u64,
    },
}

fn answer(status: u16, body: &str) -> Result<Value, Failure> {
    super::admin_client::answer(status, body).map_err(|(_, why)| why)
}

fn unix(at: &Value) -> String {
    match at.as_u64() {
        Some(secs) => {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
        }
        None => "-".into(),
    }
}

/// One line per rule: id, effect, pattern, where, until, by.
fn table(rules: &[Value]) -> String {
    let rows = rules.iter().map(|r| {
        let place = match (&r["connection"], &r["project"], &r["projects"]) {
            (Value::Number(c), _, _) => format!("connection {c}"),
            (_, Value::String(p), _) => format!("project {p}"),
            (_, _, Value::Array(ps)) => ps.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
            _ => "every project".into(),
        };
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        [
            r["id"].to_string(),
            text(&r["effect"]),
            text(&r["pattern"]).escape_debug().to_string(),
            place.escape_debug().to_string(),
            unix(&r["expires"]),
            text(&r["author"]).escape_debug().to_string(),
        ]
    });
    super::common::table(&["ID", "EFFECT", "PATTERN", "WHERE", "UNTIL", "BY"], rows)
}

pub(super) async fn run(args: RulesArgs) -> Result<(), Failure> {
    let admin = &args.admin;
    match args.action {
        RulesAction::Ls { json } => {
            let (status, body) = admin.request("GET", "/api/rules", None).await?;
            let value = answer(status, &body)?;
            if json {
                println!("{}", value);
            } else {
                print!("{}", table(value["rules"].as_array().map_or(&[][..], Vec::as_slice)));
            }
        }
        RulesAction::Add { effect, pattern, projects, expires } => {
            let expires = expires.map(|at| at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
            let mut body = json!({"effect": effect, "pattern": pattern, "expires": expires});
            if !projects.is_empty() {
                body["projects"] = json!(projects);
            }
            let (status, text) = admin.request("POST", "/api/rules", Some(body.to_string())).await?;
            let value = answer(status, &text)?;
            print!("{}", table(std::slice::from_ref(&value["rule"])));
        }
        RulesAction::Rm { id } => {
            let (status, text) = admin.request("DELETE", &format!("/api/rules/{id}"), None).await?;
            answer(status, &text)?;
            eprintln!("rule {id} removed");
        }
    }
    Ok(())
}

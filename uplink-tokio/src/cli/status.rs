//! `uplink status`: which gateway the terminal commands talk to, whether it answers, its version, and who
//! they act as there (the principal, its role, the person's email) with which credential.

use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use super::admin_client::{AdminArgs, answer};

#[derive(Args)]
pub(super) struct StatusArgs {
    /// Print it as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Exit 0 when the gateway answers and knows the credential; 1 otherwise (with what went wrong).
pub(super) async fn status(args: StatusArgs) -> ExitCode {
    let (url, credential) = args.admin.describe();
    let me = match args.admin.request("GET", "/api/me", None).await {
        Ok((status, body)) => answer(status, &body).map_err(|(_, why)| why),
        Err(why) => Err(why),
    };
    let report = json!({
        "gateway": url,
        "client_version": env!("CARGO_PKG_VERSION"),
        "credential": credential,
        "gateway_version": me.as_ref().ok().and_then(|m| m.get("version").cloned()),
        "name": me.as_ref().ok().and_then(|m| m.get("name").cloned()),
        "role": me.as_ref().ok().and_then(|m| m.get("role").cloned()),
        "email": me.as_ref().ok().and_then(|m| m.get("email").cloned()).filter(|e| !e.is_null()),
        "error": me.as_ref().err(),
    });
    if args.json {
        println!("{report}");
    } else {
        print!("{}", text(&report));
    }
    if me.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn text(report: &Value) -> String {
    let s = |k: &str| report[k].as_str().unwrap_or("").escape_debug().to_string();
    let mut out = format!("gateway:    {}", s("gateway"));
    if !s("gateway_version").is_empty() {
        out.push_str(&format!(" (uplink {})", s("gateway_version")));
    }
    out.push('\n');
    if report["error"].is_null() {
        let email = if s("email").is_empty() { String::new() } else { format!(" <{}>", s("email")) };
        out.push_str(&format!("signed in:  {}{email}, {}\n", s("name"), s("role")));
    } else {
        out.push_str(&format!("error:      {}\n", s("error")));
    }
    out.push_str(&format!("credential: {}\n", s("credential")));
    out.push_str(&format!("client:     uplink {}\n", s("client_version")));
    out
}

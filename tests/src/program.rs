//! The `uplink` program as a child process, for the tests that run it (the path is the test's
//! `env!("CARGO_BIN_EXE_uplink")`).

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::within;

/// `uplink gateway` listening on loopback with `args`, its state in `state_dir`, no credentials from the
/// environment; the child and the first `lines` lines it printed (the rest is read and dropped, so that a
/// full pipe never stops it).
pub async fn gateway(exe: &str, state_dir: &Path, args: &[&str], lines: usize) -> (Child, Vec<String>) {
    let mut child = Command::new(exe)
        .args(["gateway", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .env_remove("UPLINK_ADMIN_TOKEN")
        .env_remove("UPLINK_SLED_TOKENS")
        .env_remove("UPLINK_CREDENTIALS")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    while banner.len() < lines {
        banner.push(within("the gateway's banner", out.next_line()).await.unwrap().unwrap());
    }
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    (child, banner)
}

/// The base URL in a gateway's first line.
pub fn base_url(first_line: &str) -> String {
    first_line.split("listening on ").nth(1).unwrap().trim().to_owned()
}

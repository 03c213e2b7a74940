//! The README's walkthrough ("A gateway and a sled, talking"), run as written: its three blocks are read from
//! README.md, the gateway's banner it shows is compared with the one the gateway prints, and its curl lines
//! run in bash against the gateway and the sled it starts. So the walkthrough cannot drift from the program.
//! The only changes made to what the README says: ports of the test's own (the README's 8700 and 3002 are
//! replaced by them), and `<id>` replaced by the first id the gateway lists once the agent's request is in.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use uplink_tests::program::{self, Program};
use uplink_tests::within_for;

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");
/// How the README runs the program.
const CARGO_RUN: &str = "cargo run -p uplink-tokio --features cli --bin uplink -- ";

/// The `sh` blocks of the README's section `heading`, each as its lines.
fn blocks(heading: &str) -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split(heading).nth(1).unwrap_or_else(|| panic!("no {heading:?} in the README"));
    let section = section.split("\n## ").next().unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(lines), _) => lines.push(line.to_owned()),
            (None, _) => {}
        }
    }
    blocks
}

/// The program's arguments in a README command line.
fn args_of(line: &str) -> Vec<String> {
    let rest = line.strip_prefix(CARGO_RUN).unwrap_or_else(|| panic!("not a `{CARGO_RUN}…` line: {line}"));
    rest.split_whitespace().map(String::from).collect()
}

#[tokio::test]
async fn the_readmes_walkthrough_runs_as_written() {
    let blocks = blocks("## A gateway and a sled, talking");
    assert_eq!(blocks.len(), 3, "the walkthrough's three blocks: {blocks:?}");

    // The gateway, and the banner the README shows.
    let (command, shown) = blocks[0].split_first().unwrap();
    let shown: Vec<&str> = shown.iter().map(|l| l.trim_start_matches('#').trim()).collect();
    let mut args = args_of(command);
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    let gateway = Program::uplink(UPLINK, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .banner_lines(shown.len())
        .start()
        .await;
    let base = gateway.base_url();
    let gw_addr = base.trim_start_matches("http://").to_owned();
    let (sled_token, admin_token) = (gateway.sled_token(), gateway.admin_token());
    let state = gateway.state_dir().to_str().unwrap().to_owned();
    let printed: Vec<String> = gateway
        .banner
        .iter()
        .map(|l| {
            l.replace(&gw_addr, "127.0.0.1:8700")
                .replace(&sled_token, "<SLED_TOKEN>")
                .replace(&admin_token, "<ADMIN_TOKEN>")
                .replace(&state, "~/.local/state/uplink")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let shown: Vec<String> = shown.iter().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(printed, shown, "the README's banner is not the gateway's");

    // The sled, as the README starts it (on a port of the test's own).
    assert_eq!(blocks[1].len(), 1, "{:?}", blocks[1]);
    let line =
        blocks[1][0].replace("ws://127.0.0.1:8700", &format!("ws://{gw_addr}")).replace("<SLED_TOKEN>", &sled_token);
    let mut args = args_of(&line);
    args.extend(["--permission-listen".into(), "127.0.0.1:0".into()]);
    let sled = Program::new(UPLINK).args(&args).start().await;
    let local = sled.local_url().trim_start_matches("http://").to_owned();

    // The curl lines, in bash.
    let script = blocks[2]
        .join("\n")
        .replace("<ADMIN_TOKEN>", &admin_token)
        .replace("127.0.0.1:8700", &gw_addr)
        .replace("127.0.0.1:3002", &local)
        .replace("<id>", "$(first_id)");
    let first_id = format!(
        r#"first_id() {{
  for _ in $(seq 100); do
    id=$(curl -s -H "Authorization: Bearer {admin_token}" http://{gw_addr}/api/permissions |
         python3 -c 'import json, sys; p = json.load(sys.stdin)["permissions"]; print(p[0]["id"] if p else "")')
    [ -n "$id" ] && {{ echo "$id"; return; }}
    sleep 0.05
  done
  echo "no request was listed" >&2; return 1
}}"#
    );
    // The agent's curl (the second job) ends with its answer; then every job left (the event stream) is ended.
    let full = format!("{first_id}\n{script}\nwait %2\nkill $(jobs -p) 2>/dev/null\ntrue\n");
    let mut bash = tokio::process::Command::from(program::command("bash"));
    bash.args(["-c", &full]).kill_on_drop(true);
    let out = within_for("the walkthrough's curl lines", Duration::from_secs(60), bash.output()).await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(r#""project":"demo""#), "the sled listed: {said}\n{err}");
    assert!(said.contains("event: permission_requested"), "the events followed: {said}\n{err}");
    assert!(said.contains(r#"{"decision":"approve","reason":"gateway"}"#), "the agent's answer: {said}\n{err}");
    // The approval was answered, and says who decided.
    assert!(said.contains(r#""decision":"approve","#) && said.contains(r#""by":"#), "the approval's answer: {said}");
    assert!(said.contains(r#""jsonrpc":"2.0","id":1,"error""#), "the MCP call's answer: {said}\n{err}");
    drop(sled);
    drop(gateway);
}

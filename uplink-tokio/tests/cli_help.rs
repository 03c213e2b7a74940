//! `--help` of every subcommand and the README's reference tables list the same flags.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;

use uplink_tests::program;

/// `uplink SUBCOMMAND --help`.
fn help(subcommand: &str) -> std::process::Output {
    program::run(env!("CARGO_BIN_EXE_uplink"), &[subcommand, "--help"], &[])
}

fn help_flags(subcommand: &str) -> BTreeSet<String> {
    let out = help(subcommand);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.trim_start().strip_prefix("--").map(|rest| format!("--{}", rest.split([' ', ',']).next().unwrap()))
        })
        .chain(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| {
            // "-h, --help" style lines
            l.trim_start()
                .split(", ")
                .nth(1)
                .and_then(|f| f.strip_prefix("--"))
                .map(|f| format!("--{}", f.split(' ').next().unwrap()))
        }))
        .filter(|f| f != "--help")
        .collect()
}

/// Flags in the first column of the README table under `heading`.
fn readme_flags(heading: &str) -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split(heading).nth(1).unwrap_or_else(|| panic!("no {heading} in the README"));
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .flat_map(|code| code.split(' ').filter(|f| f.starts_with("--")).map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[test]
fn sled_help_and_readme_agree() {
    let help = help_flags("sled");
    assert!(help.contains("--gateway") && help.contains("--permission-listen"), "{help:?}");
    assert_eq!(help, readme_flags("## Running a sled: `uplink sled`"));
}

#[test]
fn gateway_help_and_readme_agree() {
    let help = help_flags("gateway");
    assert!(help.contains("--sled-token") && help.contains("--auto-deny"), "{help:?}");
    assert_eq!(help, readme_flags("## Running a gateway: `uplink gateway`"));
}

#[test]
fn demo_help_and_readme_agree() {
    let help = help_flags("demo");
    assert_eq!(help, BTreeSet::from(["--keep-running".to_owned(), "--log-format".to_owned()]));
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(readme.contains("uplink demo --keep-running"));
}

#[test]
fn the_gateway_listens_on_loopback_unless_told_otherwise() {
    let out = help("gateway");
    let help = String::from_utf8_lossy(&out.stdout);
    let listen = help.split("--listen").nth(1).unwrap();
    let default = listen.split("[default: ").nth(1).unwrap().split(']').next().unwrap();
    let addr: std::net::SocketAddr = default.parse().unwrap();
    assert!(addr.ip().is_loopback(), "default listen address {addr}");
}

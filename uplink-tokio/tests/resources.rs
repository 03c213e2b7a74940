//! The gateway's resources under hostile load. Memory: its peak resident size stays within its budgets plus a
//! fixed overhead while sleds offer more than the budget and the pending list is read repeatedly; with its
//! audit log or without, within four times the inputs in flight, and back near idle once they end. File
//! descriptors: run out, the accept loop backs off instead of spinning. Linux only (it reads `/proc`).
#![allow(clippy::unwrap_used, missing_docs)]
#![cfg(target_os = "linux")]

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::program::{Program, Running};
use uplink_tests::{http, until, within};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");
const MIB: usize = 1 << 20;
/// The fleet's budget for pending input bytes, as given to the gateway.
const BUDGET: usize = 64 * MIB;

/// Peak resident size of `pid` so far, in bytes.
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

#[tokio::test]
async fn peak_memory_stays_within_the_pending_budget_plus_a_fixed_overhead() {
    // With its store, as it runs by default: the audit log's writes count too. Its audit log holds every input
    // it was offered: gone with the test.
    let mut gateway = Program::gateway(UPLINK)
        .args(["--sled-token", "s", "--admin-token", "a"])
        .args(["--max-pending-bytes", "64MiB", "--max-sled-pending-bytes", "16MiB"])
        .start()
        .await;
    let base = gateway.base_url();
    let ws = format!("{}/api/sled-uplink?token=s", base.replace("http://", "ws://"));
    let pid = gateway.pid();
    let idle = peak_rss(pid);

    // Six sleds offer 1 MiB inputs, 20 each: 120 MiB in all, against 16 MiB per sled and 64 MiB in total.
    let input = json!({ "pad": "x".repeat(MIB - 16) }).to_string();
    let mut sleds = Vec::new();
    for s in 0..6 {
        let (mut sled, _) = within("a sled to connect", tokio_tungstenite::connect_async(ws.as_str())).await.unwrap();
        let identity = json!({"type":"identity","req_id":"identity","payload":{"project":format!("p{s}")}});
        sled.send(Message::text(identity.to_string())).await.unwrap();
        for r in 0..20 {
            let frame = format!(
                r#"{{"type":"perm_request","req_id":"r{r}","payload":{{"tool_name":"Bash","tool_input":{input}}}}}"#
            );
            sled.send(Message::text(frame)).await.unwrap();
        }
        sleds.push(sled);
    }
    // Each sled's denials are counted as they arrive; every request ends up pending or denied.
    let denied = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for mut sled in sleds {
        let denied = denied.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = sled.next().await {
                if matches!(&message, Message::Text(t) if t.contains("perm_response")) {
                    denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    let count = || denied.load(std::sync::atomic::Ordering::Relaxed);
    until("every request to be pending or denied", async || {
        // Each look unbounded here: the wait bounds them (a debug build can be slow to answer under this load).
        let (_, sleds) =
            uplink_tests::try_http("GET", &format!("{base}/api/sleds"), Some("a"), None, &[]).await.ok()?;
        let sleds: Value = serde_json::from_str(&sleds).unwrap();
        let pending: u64 =
            sleds["sleds"].as_array().unwrap().iter().map(|s| s["pending_permissions"].as_u64().unwrap()).sum();
        (usize::try_from(pending).unwrap() + count() == 120).then_some(())
    })
    .await;
    let denied = count();
    // The pending list, read again and again while it is full.
    let mut listed_bytes = 0;
    for _ in 0..3 {
        let (status, list) = http("GET", &format!("{base}/api/permissions"), Some("a"), None, &[]).await;
        assert_eq!(status, 200);
        let list: Value = serde_json::from_str(&list).unwrap();
        let perms = list["permissions"].as_array().unwrap();
        listed_bytes = perms.iter().map(|p| p["tool_input"].to_string().len()).sum::<usize>();
        assert_eq!(perms.len() + denied, 120, "every request is listed or denied");
    }
    assert!(listed_bytes <= BUDGET, "{listed_bytes} bytes pending, over the budget");
    assert!(listed_bytes >= BUDGET - 8 * MIB, "the budget was not used: {listed_bytes} bytes");
    let peak = peak_rss(pid);
    // Stored inputs (at most the budget), one listing being written (as much again), frames being read, and
    // the allocator's slack: three budgets and a fixed 48 MiB above the idle process.
    let bound = idle + 3 * BUDGET + 48 * MIB;
    eprintln!("idle {} MiB, peak {} MiB, bound {} MiB", idle / MIB, peak / MIB, bound / MIB);
    assert!(peak <= bound, "peak {} MiB over {} MiB", peak / MIB, bound / MIB);
    readers.iter().for_each(tokio::task::JoinHandle::abort);
    gateway.kill().await;
}

/// Resident size of `pid` now, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

/// A tool input of about 1 MiB made of small members (`{"0":0,"1":0,…}`, not in key order): the shape whose
/// parsed tree takes the most memory for its size (ten times and more).
fn many_small_members() -> String {
    use std::fmt::Write as _;
    let mut input = String::from("{");
    for i in 0u32.. {
        if input.len() >= MIB - 16 {
            break;
        }
        if i > 0 {
            input.push(',');
        }
        let _ = write!(input, r#""{i:x}":0"#);
    }
    input.push('}');
    input
}

/// A client's text frame as it goes on the wire, with the mask `0` (which leaves the payload as it is).
fn masked_text_frame(text: &str, out: &mut Vec<u8>) {
    out.push(0x81); // FIN, text
    match text.len() {
        n if n < 126 => out.push(0x80 | u8::try_from(n).unwrap()),
        n if n < 1 << 16 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&u64::try_from(n).unwrap().to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(text.as_bytes());
}

/// Three sleds send 30 requests each with a 1 MiB input, two of small members, the third a string (90 MiB
/// pending, within the default budgets); then they go, and their requests end. The gateway's peak is within four times the inputs and a
/// fixed overhead, and once they have ended it is back within the fixed overhead of its idle size.
async fn memory_follows_the_inputs_in_flight(name: &str, store: bool) {
    let mut gateway = Program::gateway(UPLINK).args(["--sled-token", "s", "--admin-token", "a"]);
    if !store {
        gateway = gateway.args(["--no-store"]);
    }
    let mut gateway = gateway.start().await;
    let base = gateway.base_url();
    let ws = format!("{}/api/sled-uplink?token=s", base.replace("http://", "ws://"));
    let pid = gateway.pid();
    let idle = rss(pid);
    let pending = || async {
        // Unbounded here: the waits below bound it (a debug build can be slow to answer under this load).
        let (_, sleds) =
            uplink_tests::try_http("GET", &format!("{base}/api/sleds"), Some("a"), None, &[]).await.unwrap();
        let sleds: Value = serde_json::from_str(&sleds).unwrap();
        let sleds = sleds["sleds"].as_array().unwrap().clone();
        let connected = sleds.iter().filter(|s| s["connected"] == true).count();
        (connected, sleds.iter().map(|s| s["pending_permissions"].as_u64().unwrap()).sum::<u64>())
    };

    // Two sleds' inputs are of small members, the third's one long string (each about 1 MiB).
    let inputs = [many_small_members(), many_small_members(), json!({ "pad": "x".repeat(MIB - 16) }).to_string()];
    let (sleds_n, each) = (inputs.len(), 30);
    let mut sleds = Vec::new();
    for s in 0..sleds_n {
        let (mut sled, _) = within("a sled to connect", tokio_tungstenite::connect_async(ws.as_str())).await.unwrap();
        let identity = json!({"type":"identity","req_id":"identity","payload":{"project":format!("p{s}")}});
        sled.send(Message::text(identity.to_string())).await.unwrap();
        sleds.push(sled);
    }
    // The frames are written as they go on the wire, all at once, as a fast sled sends them (a client
    // masking 60 MiB in a debug build would send them one by one, and the gateway would take them one by one).
    for (sled, input) in sleds.iter_mut().zip(&inputs) {
        let mut wire = Vec::new();
        for r in 0..each {
            let frame = format!(
                r#"{{"type":"perm_request","req_id":"r{r}","payload":{{"tool_name":"Bash","tool_input":{input}}}}}"#
            );
            masked_text_frame(&frame, &mut wire);
        }
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = sled.get_mut() else { unreachable!("ws://") };
        tokio::io::AsyncWriteExt::write_all(tcp, &wire).await.unwrap();
    }
    let inputs_bytes = each * inputs.iter().map(String::len).sum::<usize>();
    // What the allocator, the runtime, SQLite's cache and one record being written take beside the inputs.
    let fixed = 32 * MIB;
    let bound = idle + 4 * inputs_bytes + fixed;
    let over = |peak: usize| format!("peak {} MiB over {} MiB (idle {} MiB)", peak / MIB, bound / MIB, idle / MIB);
    // Checked while the requests come in (a debug build takes seconds to take them all in).
    let all = (sleds_n, u64::try_from(sleds_n * each).unwrap());
    let came = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while pending().await != all {
            assert!(peak_rss(pid) <= bound, "{}", over(peak_rss(pid)));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(came.is_ok(), "two minutes on, not every request is pending: {:?}", pending().await);
    let peak = peak_rss(pid);
    eprintln!("{name}: inputs {} MiB; idle {} MiB, peak {} MiB", inputs_bytes / MIB, idle / MIB, peak / MIB);
    assert!(peak <= bound, "{}", over(peak));

    // The sleds go: every request ends (`connection_lost`), and what they held is freed.
    drop(sleds);
    within("every request to end", async {
        while pending().await != (0, 0) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    if store {
        let (status, page) =
            http("GET", &format!("{base}/api/audit?outcome=connection_lost&limit=1000"), Some("a"), None, &[]).await;
        assert_eq!(status, 200, "{page}");
        let page: Value = serde_json::from_str(&page).unwrap();
        assert_eq!(page["records"].as_array().unwrap().len(), sleds_n * each, "every end is in the audit log");
    }
    // What they held goes back to the system as it is freed (the program fixes glibc's mmap threshold).
    let back = tokio::time::timeout(uplink_tests::WAIT, async {
        while rss(pid) > idle + fixed {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let now = rss(pid);
    eprintln!("{name}: after the end {} MiB", now / MIB);
    assert!(back.is_ok(), "after the end, {} MiB resident (idle {} MiB)", now / MIB, idle / MIB);
    if store {
        // The records were written from the inputs' text: the first is a request's, with its canonical input.
        let (status, page) = http("GET", &format!("{base}/api/audit?limit=1"), Some("a"), None, &[]).await;
        assert_eq!(status, 200);
        let page: Value = serde_json::from_str(&page).unwrap();
        let record = &page["records"][0]["record"];
        let input: Value = serde_json::from_str(&inputs[0]).unwrap();
        let canonical = uplink_tokio::store::audit::canonical(&input);
        assert_eq!(record["kind"], "request");
        assert_eq!(record["input_sha256"], uplink_tokio::store::audit::sha256_hex(&canonical).as_str());
        assert_eq!(record["input"], input);
    }
    gateway.kill().await;
}

#[tokio::test]
async fn with_the_audit_store_memory_stays_within_four_times_the_inputs_and_returns_after_they_end() {
    memory_follows_the_inputs_in_flight("store-inputs", true).await;
}

#[tokio::test]
async fn without_a_store_memory_stays_within_four_times_the_inputs_and_returns_after_they_end() {
    memory_follows_the_inputs_in_flight("no-store-inputs", false).await;
}

/// CPU time `pid` has used so far (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `uplink gateway` run by a shell after `limits` (`ulimit …`), its log captured.
async fn gateway_under_limits(limits: &str) -> Running {
    Program::gateway(UPLINK).args(["--sled-token", "s", "--admin-token", "a"]).after_shell(limits).log().start().await
}

#[tokio::test]
async fn out_of_file_descriptors_the_gateway_backs_off_instead_of_spinning() {
    // A gateway allowed 64 open files, then 100 connections that never send a byte: accept fails with
    // EMFILE until the handshake timeout frees them.
    let mut gateway = gateway_under_limits("ulimit -n 64").await;
    let addr = gateway.base_url().trim_start_matches("http://").to_owned();
    let pid = gateway.pid();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Over one second with its descriptors exhausted, a spinning loop burns the whole second (and writes a
    // log line per attempt); backing off, it uses a few milliseconds.
    let before = cpu_ticks(pid);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - before;
    let ticks_per_second = 100; // USER_HZ on Linux
    assert!(used * 4 < ticks_per_second, "the gateway used {used} ticks of CPU in one second");
    drop(held);
    gateway.kill().await;
    let log = gateway.log_rest().await;
    assert!(log.lines().count() < 20, "{} log lines:\n{log}", log.lines().count());
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_one_and_sets_the_connection_budget() {
    // Started with a soft limit of 200 under a hard one of 400 (as many systems start services): the gateway
    // raises its soft limit to 400 and allows 400 - 100 sled connections (a quarter of a small limit is kept
    // for its own files). Sled 301 is refused with 503, not left to fail for want of a descriptor.
    let mut gateway = gateway_under_limits("ulimit -Sn 200 && ulimit -Hn 400").await;
    let base = gateway.base_url();
    let pid = gateway.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((words[3], words[4]), ("400", "400"), "{line}");

    let ws = format!("{}/api/sled-uplink?token=s", base.replace("http://", "ws://"));
    let mut sleds = Vec::new();
    for s in 0..300 {
        let (mut sled, _) = within("a sled to connect", tokio_tungstenite::connect_async(ws.as_str()))
            .await
            .unwrap_or_else(|e| panic!("sled {s}: {e}"));
        let identity = json!({"type":"identity","req_id":"identity","payload":{"project":format!("p{s}")}});
        sled.send(Message::text(identity.to_string())).await.unwrap();
        sleds.push(sled);
    }
    match within("sled 301", tokio_tungstenite::connect_async(ws.as_str())).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("sled 301 was not refused with 503: {:?}", other.map(|_| ())),
    }
    drop(sleds);
    gateway.kill().await;
}

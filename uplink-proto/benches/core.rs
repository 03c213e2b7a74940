//! Frames per second through the sans-IO machines, against the floor of parsing (or writing) the same frame
//! once with serde_json into a borrowed struct, and heap allocations per frame.
//!
//! Run: `cargo bench -p uplink-proto --bench core` (add `-- --quick` for a short run). Each case reports the
//! median time per frame over many rounds, the floor's median measured in the same run, their ratio, and
//! allocations per frame (allocations plus reallocations, counted by a global allocator wrapper).
#![allow(clippy::print_stdout, reason = "a benchmark reports on standard output")]
#![allow(missing_docs, unreachable_pub, reason = "a benchmark binary")]

use std::alloc::System;
use std::borrow::Cow;
use std::hint::black_box;
use std::time::Instant as WallClock;

use serde::{Deserialize, Serialize};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use uplink_proto::gateway::{SessionConfig, SessionEvent, SessionOutput, SledSession};
use uplink_proto::{ConnId, GatewayFrame, Instant, McpCallId, McpReply, Output, RawValue, Received, Sled, SledConfig};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Frames per timed round: also the pending-request limits of the machines under test.
const BATCH: usize = 256;

const TOOL_INPUT: &str = r#"{"command":"cargo test --workspace","description":"Run the tests","timeout":120000}"#;
const MCP_BODY: &str =
    r#"{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}"#;
const MCP_RESULT: &str =
    r#"{"jsonrpc":"2.0","id":17,"result":{"content":[{"type":"text","text":"3"}],"isError":false}}"#;

// ── The floor: one serde_json pass over the same text ────────────────────────────────────────────────────

// The floor only parses: the fields are never read.
#[derive(Deserialize)]
#[allow(dead_code, reason = "parsed, never read")]
struct FloorIn<'a, P> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    req_id: Cow<'a, str>,
    payload: P,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "parsed, never read")]
struct FloorPermResponse {
    approved: bool,
    always_allow: bool,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "parsed, never read")]
struct FloorMcpRequest<'a> {
    #[serde(borrow)]
    body: Cow<'a, str>,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "parsed, never read")]
struct FloorPermRequest<'a> {
    #[serde(borrow)]
    tool_name: Cow<'a, str>,
    #[serde(borrow)]
    tool_input: &'a RawValue,
}

#[derive(Serialize)]
struct FloorOut<'a, P> {
    #[serde(rename = "type")]
    kind: &'a str,
    req_id: &'a str,
    payload: P,
}

fn frame(kind: &str, req_id: &str, payload: &str) -> String {
    format!(r#"{{"type":"{kind}","req_id":"{req_id}","payload":{payload}}}"#)
}

fn mcp_request_payload() -> String {
    serde_json::json!({ "body": MCP_BODY }).to_string()
}

// ── Measuring ────────────────────────────────────────────────────────────────────────────────────────────

struct Measure {
    ns_per_frame: f64,
    allocs_per_frame: f64,
}

/// Runs `setup` (untimed) then `run` (timed, `BATCH` frames) for `rounds` rounds; the median round wins.
fn measure<S>(rounds: usize, mut setup: impl FnMut() -> S, mut run: impl FnMut(&mut S)) -> Measure {
    let mut times = Vec::with_capacity(rounds);
    let mut allocs = 0usize;
    for _ in 0..rounds {
        let mut state = setup();
        let region = Region::new(GLOBAL);
        let start = WallClock::now();
        run(&mut state);
        let elapsed = start.elapsed();
        let change = region.change();
        allocs += change.allocations + change.reallocations;
        times.push(elapsed);
        drop(state);
    }
    times.sort();
    let median = times[times.len() / 2];
    Measure {
        ns_per_frame: median.as_nanos() as f64 / BATCH as f64,
        allocs_per_frame: allocs as f64 / (rounds * BATCH) as f64,
    }
}

/// Times `work` over each of `frames` (no state to set up).
fn each_frame(rounds: usize, frames: &[String], mut work: impl FnMut(&str)) -> Measure {
    measure(
        rounds,
        || (),
        |()| {
            for f in frames {
                work(f);
            }
        },
    )
}

// ── The machines in the state each case needs ────────────────────────────────────────────────────────────

fn connected_sled() -> (Sled, ConnId) {
    let mut cfg = SledConfig::new("bench");
    cfg.max_pending_permissions = BATCH;
    cfg.max_mcp_calls = BATCH;
    let mut sled = Sled::new(cfg, Instant::ZERO).expect("valid config");
    let conn = std::iter::from_fn(|| sled.poll_output())
        .find_map(|out| match out {
            Output::Connect { conn } => Some(conn),
            _ => None,
        })
        .expect("a new sled connects");
    sled.handle_connected(Instant::ZERO, conn);
    while sled.poll_output().is_some() {}
    (sled, conn)
}

fn drain_sled(sled: &mut Sled) {
    while let Some(out) = sled.poll_output() {
        black_box(out);
    }
}

/// A sled with `BATCH` permission requests awaiting their responses, and those responses.
fn sled_awaiting_permissions() -> (Sled, ConnId, Vec<String>) {
    let (mut sled, conn) = connected_sled();
    let frames = (0..BATCH)
        .map(|i| {
            let id = format!("perm-{i}");
            let input = RawValue::from_string(TOOL_INPUT.to_owned()).expect("json");
            sled.request_permission_with_id(Instant::ZERO, id.clone(), "Bash".to_owned(), input);
            frame("perm_response", &id, r#"{"approved":true,"always_allow":false}"#)
        })
        .collect();
    while sled.poll_output().is_some() {}
    (sled, conn, frames)
}

fn mcp_request_frames() -> Vec<String> {
    (0..BATCH).map(|i| frame("mcp_request", &format!("mcp-{i}"), &mcp_request_payload())).collect()
}

/// A sled with `BATCH` local MCP calls in flight, and the replies to give it.
fn sled_with_calls() -> (Sled, Vec<(McpCallId, Box<RawValue>)>) {
    let (mut sled, conn) = connected_sled();
    let mut calls = Vec::new();
    for f in mcp_request_frames() {
        sled.handle_received(Instant::ZERO, conn, Received::Text(&f));
        while let Some(out) = sled.poll_output() {
            if let Output::CallMcp(call) = out {
                calls.push((call.call, RawValue::from_string(MCP_RESULT.to_owned()).expect("json")));
            }
        }
    }
    assert_eq!(calls.len(), BATCH);
    (sled, calls)
}

fn identified_gateway() -> SledSession {
    let cfg = SessionConfig { max_pending_permissions: BATCH, max_pending_mcp: BATCH, ..SessionConfig::default() };
    let mut gw = SledSession::new(cfg, Instant::ZERO).expect("valid config");
    let identity = frame("identity", "identity", r#"{"project":"bench"}"#);
    gw.handle_received(Instant::ZERO, Received::Text(&identity));
    while gw.poll_output().is_some() {}
    gw
}

fn drain_gateway(gw: &mut SledSession) {
    while let Some(out) = gw.poll_output() {
        black_box(out);
    }
}

// ── The cases ────────────────────────────────────────────────────────────────────────────────────────────

struct Case {
    name: &'static str,
    ours: Measure,
    floor: Measure,
    /// Allocations per frame allowed by the target, if the target names one.
    alloc_target: Option<f64>,
}

fn cases(rounds: usize, only: Option<&str>) -> Vec<Case> {
    let want = |name: &str| only.is_none_or(|o| name.contains(o));
    let mut out = Vec::new();

    // Sled: a perm_response is decoded and resolves its pending request.
    let (_, _, frames) = sled_awaiting_permissions();
    if want("sled: perm_response in, decided") {
        out.push(Case {
            name: "sled: perm_response in, decided",
            ours: measure(rounds, sled_awaiting_permissions, |(sled, conn, frames)| {
                for f in frames.iter() {
                    sled.handle_received(Instant::ZERO, *conn, Received::Text(f));
                    drain_sled(sled);
                }
            }),
            floor: each_frame(rounds, &frames, |f| {
                black_box(serde_json::from_str::<FloorIn<'_, FloorPermResponse>>(f).expect("floor parses"));
            }),
            alloc_target: Some(1.0),
        });
    }

    // The codec alone: the same perm_response frames decoded, without the machine's bookkeeping.
    if want("wire: decode perm_response") {
        let (_, _, frames) = sled_awaiting_permissions();
        out.push(Case {
            name: "wire: decode perm_response",
            ours: each_frame(rounds, &frames, |f| {
                black_box(GatewayFrame::decode(f).expect("decodes"));
            }),
            floor: each_frame(rounds, &frames, |f| {
                black_box(serde_json::from_str::<FloorIn<'_, FloorPermResponse>>(f).expect("floor parses"));
            }),
            alloc_target: None,
        });
    }

    if want("wire: decode mcp_request") {
        let frames = mcp_request_frames();
        out.push(Case {
            name: "wire: decode mcp_request",
            ours: each_frame(rounds, &frames, |f| {
                black_box(GatewayFrame::decode(f).expect("decodes"));
            }),
            floor: each_frame(rounds, &frames, |f| {
                black_box(serde_json::from_str::<FloorIn<'_, FloorMcpRequest<'_>>>(f).expect("floor parses"));
            }),
            alloc_target: None,
        });
    }

    // Sled: an mcp_request is decoded and becomes a local MCP call.
    let frames = mcp_request_frames();
    if want("sled: mcp_request in, call emitted") {
        out.push(Case {
            name: "sled: mcp_request in, call emitted",
            ours: measure(
                rounds,
                || (connected_sled(), frames.clone()),
                |((sled, conn), frames)| {
                    for f in frames.iter() {
                        sled.handle_received(Instant::ZERO, *conn, Received::Text(f));
                        drain_sled(sled);
                    }
                },
            ),
            floor: each_frame(rounds, &frames, |f| {
                black_box(serde_json::from_str::<FloorIn<'_, FloorMcpRequest<'_>>>(f).expect("floor parses"));
            }),
            alloc_target: None,
        });
    }

    // Sled: the local MCP reply is written out as an mcp_response.
    let result: Box<RawValue> = RawValue::from_string(MCP_RESULT.to_owned()).expect("json");
    let req_ids: Vec<String> = (0..BATCH).map(|i| format!("mcp-{i}")).collect();
    if want("sled: MCP reply in, mcp_response out") {
        out.push(Case {
            name: "sled: MCP reply in, mcp_response out",
            ours: measure(rounds, sled_with_calls, |(sled, calls)| {
                for (call, reply) in calls.drain(..) {
                    sled.handle_mcp_reply(Instant::ZERO, call, McpReply::Response(reply));
                    drain_sled(sled);
                }
            }),
            floor: measure(
                rounds,
                || (),
                |()| {
                    for id in &req_ids {
                        let out = FloorOut { kind: "mcp_response", req_id: id, payload: &*result };
                        black_box(serde_json::to_string(&out).expect("floor writes"));
                    }
                },
            ),
            alloc_target: None,
        });
    }

    // Sled: the heartbeat timer fires and a heartbeat frame goes out (a pong keeps the link alive).
    if want("sled: heartbeat out") {
        out.push(Case {
            name: "sled: heartbeat out",
            ours: measure(rounds, connected_sled, |(sled, conn)| {
                for _ in 0..BATCH {
                    let at = sled.poll_timeout().expect("a heartbeat is due");
                    sled.handle_timeout(at);
                    drain_sled(sled);
                    sled.handle_received(at, *conn, Received::Pong);
                }
            }),
            floor: measure(
                rounds,
                || (),
                |()| {
                    for _ in 0..BATCH {
                        let out = FloorOut { kind: "heartbeat", req_id: "", payload: () };
                        black_box(serde_json::to_string(&out).expect("floor writes"));
                    }
                },
            ),
            alloc_target: Some(1.0),
        });
    }

    // Gateway: a heartbeat is decoded and reported.
    let heartbeat = frame("heartbeat", "", "null");
    if want("gateway: heartbeat in") {
        out.push(Case {
            name: "gateway: heartbeat in",
            ours: measure(rounds, identified_gateway, |gw| {
                for _ in 0..BATCH {
                    gw.handle_received(Instant::ZERO, Received::Text(&heartbeat));
                    drain_gateway(gw);
                }
            }),
            floor: measure(
                rounds,
                || (),
                |()| {
                    for _ in 0..BATCH {
                        black_box(serde_json::from_str::<FloorIn<'_, ()>>(&heartbeat).expect("floor parses"));
                    }
                },
            ),
            alloc_target: Some(1.0),
        });
    }

    // Gateway: a perm_request is decoded and reported to the application.
    let perm_payload = format!(r#"{{"tool_name":"Bash","tool_input":{TOOL_INPUT}}}"#);
    let frames: Vec<String> = (0..BATCH).map(|i| frame("perm_request", &format!("perm-{i}"), &perm_payload)).collect();
    if want("gateway: perm_request in, reported") {
        out.push(Case {
            name: "gateway: perm_request in, reported",
            ours: measure(rounds, identified_gateway, |gw| {
                for f in &frames {
                    gw.handle_received(Instant::ZERO, Received::Text(f));
                    while let Some(o) = gw.poll_output() {
                        if let SessionOutput::Event(SessionEvent::PermissionRequested { .. }) = &o {
                            black_box(o);
                        }
                    }
                }
            }),
            floor: each_frame(rounds, &frames, |f| {
                black_box(serde_json::from_str::<FloorIn<'_, FloorPermRequest<'_>>>(f).expect("floor parses"));
            }),
            alloc_target: None,
        });
    }

    // Gateway: an mcp_response is decoded and matched to its request.
    let frames: Vec<String> = (1..=BATCH).map(|i| frame("mcp_response", &format!("mcp-{i}"), MCP_RESULT)).collect();
    if want("gateway: mcp_response in, matched") {
        out.push(Case {
            name: "gateway: mcp_response in, matched",
            ours: measure(
                rounds,
                || {
                    let mut gw = identified_gateway();
                    for _ in 0..BATCH {
                        gw.send_mcp(Instant::ZERO, MCP_BODY, None, false).expect("room for it");
                    }
                    while gw.poll_output().is_some() {}
                    gw
                },
                |gw| {
                    for f in &frames {
                        gw.handle_received(Instant::ZERO, Received::Text(f));
                        drain_gateway(gw);
                    }
                },
            ),
            floor: each_frame(rounds, &frames, |f| {
                black_box(serde_json::from_str::<FloorIn<'_, &RawValue>>(f).expect("floor parses"));
            }),
            alloc_target: None,
        });
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only TEXT` runs the cases whose name contains TEXT (for profiling one of them).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(String::as_str);
    let rounds = if quick { 51 } else { 1001 };
    let started = WallClock::now();
    let results = cases(rounds, only);
    println!("uplink-proto core benchmark: {rounds} rounds of {BATCH} frames per case; medians");
    println!(
        "{:<40} {:>10} {:>10} {:>7} {:>9} {:>11} {:>8}",
        "case", "ns/frame", "floor ns", "ratio", "frames/s", "allocs/frame", "floor"
    );
    let mut missed = Vec::new();
    for c in &results {
        let ratio = c.ours.ns_per_frame / c.floor.ns_per_frame;
        println!(
            "{:<40} {:>10.1} {:>10.1} {:>6.2}x {:>9.0} {:>11.2} {:>8.2}",
            c.name,
            c.ours.ns_per_frame,
            c.floor.ns_per_frame,
            ratio,
            1e9 / c.ours.ns_per_frame,
            c.ours.allocs_per_frame,
            c.floor.allocs_per_frame,
        );
        if let Some(limit) = c.alloc_target
            && c.ours.allocs_per_frame > limit
        {
            missed.push(format!("{}: {:.2} allocations per frame (target ≤ {limit})", c.name, c.ours.allocs_per_frame));
        }
        if ratio > 1.3 {
            missed.push(format!("{}: {ratio:.2}x the floor (target ≤ 1.3x)", c.name));
        }
    }
    println!("targets: ≤ 1.3x the floor; ≤ 1 allocation per heartbeat or perm_response");
    if missed.is_empty() {
        println!("all targets met");
    } else {
        for m in &missed {
            println!("target missed: {m}");
        }
    }
    println!("took {:.1?}", started.elapsed());
}

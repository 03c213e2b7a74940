//! Requests that outlive the gateway (`resume`), through the real program: `uplink gateway` killed with
//! `kill -9` (or stopped with SIGTERM) while requests wait for people and decisions wait for their sled, then
//! started again on the same store. The sled is a raw WebSocket client speaking the extension as `uplink
//! sled` does (its `resumed` right after the acceptance, its kept requests before it), so that the test sees
//! every frame.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::program::{Program, Running};
use uplink_tests::{RawWs, http, until, within};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");
const PENDING: usize = 500;
/// Decided while the sled is away (acknowledged with 202, not yet delivered): half approved, half denied.
const KEPT: usize = 100;
/// Decided while the sled was there (acknowledged with 200 and sent), but, as far as the gateway can tell,
/// perhaps not received: the sled sends them again.
const SENT: usize = 50;

async fn gateway(dir: &std::path::Path) -> (Running, String) {
    let gateway =
        Program::gateway(UPLINK).args(["--sled-token", "s", "--admin-token", "a"]).state_dir(dir).start().await;
    let base = gateway.base_url();
    (gateway, base)
}

/// A sled process of incarnation `inc-1` connected to `base`, offering `resume`; returns once the gateway
/// accepted it.
async fn resuming_sled(base: &str) -> RawWs {
    resuming_sled_of(base, "restart").await
}

/// As [`resuming_sled`], for `project`.
async fn resuming_sled_of(base: &str, project: &str) -> RawWs {
    let url = format!("{}/api/sled-uplink?token=s", base.replace("http://", "ws://"));
    let mut ws = within("the sled to connect", tokio_tungstenite::connect_async(url)).await.unwrap().0;
    let identity = json!({"type":"identity","req_id":"identity",
        "payload":{"project":project,"capabilities":["resume"],"incarnation":"inc-1"}});
    ws.send(Message::text(identity.to_string())).await.unwrap();
    let first = next_frame(&mut ws).await;
    assert_eq!(first["type"], "resume_accepted", "{first}");
    ws
}

/// The sled's `resumed`: it has sent again everything it kept (and so has seen the acceptance).
fn resumed() -> Message {
    Message::text(json!({"type":"resumed","req_id":"resumed","payload":{}}).to_string())
}

async fn next_frame(ws: &mut RawWs) -> Value {
    loop {
        match within("a frame", ws.next()).await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

fn request(i: usize) -> String {
    json!({"type":"perm_request","req_id":format!("r{i}"),"payload":{"tool_name":"Bash","tool_input":{"i":i}}})
        .to_string()
}

/// The permissions of project `restart` that `base` lists, by id.
async fn listed_here(base: &str) -> BTreeMap<String, Value> {
    listed(base).await.into_iter().filter(|(_, p)| p["project"] == "restart").collect()
}

/// The permissions `base` lists, by id.
async fn listed(base: &str) -> BTreeMap<String, Value> {
    let (_, body) = http("GET", &format!("{base}/api/permissions"), Some("a"), None, &[]).await;
    let listing: Value = serde_json::from_str(&body).unwrap();
    listing["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_owned(), p.clone()))
        .collect()
}

async fn decide(base: &str, id: &str, approved: bool) -> u16 {
    let body = json!({"approved": approved}).to_string();
    http("POST", &format!("{base}/api/permissions/{id}"), Some("a"), Some(&body), &[]).await.0
}

/// The decisions the sled hears until `n` have come: req_id → approved.
async fn heard(ws: &mut RawWs, n: usize) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    while out.len() < n {
        let frame = next_frame(ws).await;
        if frame["type"] == "perm_response" {
            let req = frame["req_id"].as_str().unwrap().to_owned();
            assert!(out.insert(req.clone(), frame["payload"]["approved"] == true).is_none(), "{req} heard twice");
        }
    }
    out
}

async fn requests_and_decisions_outlive_the_gateway(kill: bool) {
    let tmp = uplink_tests::temp_dir();
    let dir = tmp.path();
    let (mut gw, base) = gateway(dir).await;
    let mut sled = resuming_sled(&base).await;
    sled.send(resumed()).await.unwrap();
    for i in 0..PENDING {
        sled.send(Message::text(request(i))).await.unwrap();
    }
    let before = until("every request to be pending", async || {
        let l = listed(&base).await;
        (l.len() == PENDING).then_some(l)
    })
    .await;
    let id_of: BTreeMap<String, String> =
        before.values().map(|p| (format!("r{}", p["tool_input"]["i"]), p["id"].as_str().unwrap().to_owned())).collect();
    // Another sled (an original one) asks once and is answered: an id that must never name anything else.
    let mut other = uplink_tests::raw_sled_at(&base, "s", "other").await;
    other.send(Message::text(request(0))).await.unwrap();
    let other_id = until("the other sled's request", async || {
        listed(&base).await.into_iter().find(|(_, p)| p["project"] == "other").map(|(id, _)| id)
    })
    .await;
    assert_eq!(decide(&base, &other_id, false).await, 200);
    assert_eq!(heard(&mut other, 1).await.len(), 1);
    drop(other);

    // Some are decided while the sled is there: it hears them (the gateway cannot know that it did).
    let mut expected: BTreeMap<String, bool> = BTreeMap::new();
    for i in 0..SENT {
        assert_eq!(decide(&base, &id_of[&format!("r{i}")], i % 2 == 0).await, 200);
        expected.insert(format!("r{i}"), i % 2 == 0);
    }
    assert_eq!(heard(&mut sled, SENT).await, expected);
    // The sled's link drops; people decide more while it is away: acknowledged, kept.
    drop(sled);
    until("the requests to be held", async || {
        let l = listed(&base).await;
        (l.len() == PENDING - SENT && l.values().all(|p| p["sled_away"] == true)).then_some(())
    })
    .await;
    for i in SENT..SENT + KEPT {
        assert_eq!(decide(&base, &id_of[&format!("r{i}")], i % 2 == 0).await, 202);
        expected.insert(format!("r{i}"), i % 2 == 0);
    }

    // The gateway goes: killed, or stopped. A stop tells a sled that keeps its requests to come back (1012).
    if kill {
        gw.kill().await;
    } else {
        let mut watcher = resuming_sled_of(&base, "watch").await;
        watcher.send(resumed()).await.unwrap();
        // Its request is announced only once its `resumed` was read.
        watcher.send(Message::text(request(0))).await.unwrap();
        until("the watcher's request", async || {
            listed(&base).await.values().any(|p| p["project"] == "watch").then_some(())
        })
        .await;
        let stopping = tokio::spawn(async move { uplink_tests::close_code(&mut watcher).await });
        assert!(gw.stop().await.success());
        assert_eq!(within("the close", stopping).await.unwrap(), Some(1012));
    }
    let (mut gw, base) = gateway(dir).await;

    // At once, before the sled is back: every request still waiting is listed again, under its id, with
    // the decisions kept for it.
    let after = listed_here(&base).await;
    assert_eq!(after.len(), PENDING - SENT, "listed again at once");
    for i in SENT..PENDING {
        let p = &after[&id_of[&format!("r{i}")]];
        assert_eq!(p["sled_away"], true);
        let decided = (i < SENT + KEPT).then_some(if i % 2 == 0 { "approve" } else { "deny" });
        assert_eq!(p["decided"].as_str(), decided, "r{i}");
    }

    // A public id made after the restart names nothing made before it: the first connection's first
    // request has an id of its own.
    let mut other = uplink_tests::raw_sled_at(&base, "s", "other").await;
    other.send(Message::text(request(0))).await.unwrap();
    let new = until("a new request", async || {
        listed(&base).await.into_iter().find(|(_, p)| p["project"] == "other").map(|(id, _)| id)
    })
    .await;
    assert!(!id_of.values().any(|id| *id == new) && new != other_id, "{new} reused after the restart");
    assert_eq!(decide(&base, &new, false).await, 200);
    drop(other);

    // The sled comes back and sends again everything it still waits for, including those it heard (as if it
    // had not: the gateway answers them the same way).
    let mut sled = resuming_sled(&base).await;
    for i in 0..PENDING {
        sled.send(Message::text(request(i))).await.unwrap();
    }
    sled.send(resumed()).await.unwrap();
    assert_eq!(heard(&mut sled, SENT + KEPT).await, expected, "exactly the decisions acknowledged");
    // The rest wait under their first ids, and can be decided.
    let waiting = until("the rest to be pending again", async || {
        let l = listed_here(&base).await;
        (l.len() == PENDING - SENT - KEPT && l.values().all(|p| p["sled_away"] == false)).then_some(l)
    })
    .await;
    let first_ids: BTreeSet<&String> = (SENT + KEPT..PENDING).map(|i| &id_of[&format!("r{i}")]).collect();
    assert_eq!(waiting.keys().collect::<BTreeSet<_>>(), first_ids);
    for i in SENT + KEPT..PENDING {
        assert_eq!(decide(&base, &id_of[&format!("r{i}")], true).await, 200);
    }
    let rest = heard(&mut sled, PENDING - SENT - KEPT).await;
    assert!(rest.values().all(|approved| *approved) && rest.len() == PENDING - SENT - KEPT);
    gw.kill().await;
}

#[tokio::test]
async fn kill_9_with_requests_waiting_and_decisions_undelivered_loses_nothing() {
    requests_and_decisions_outlive_the_gateway(true).await;
}

#[tokio::test]
async fn a_graceful_restart_with_requests_waiting_and_decisions_undelivered_loses_nothing() {
    requests_and_decisions_outlive_the_gateway(false).await;
}

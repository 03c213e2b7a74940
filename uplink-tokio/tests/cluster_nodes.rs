//! Several `uplink gateway` nodes serving one PostgreSQL database side by side (`--cluster-listen`), as the
//! program runs them: a person asks any node; a decision made at one node for a request held at another is
//! carried there over the internal listener, decided and recorded by the node that holds it, and reaches
//! its sled; an MCP request made at one node for a sled held at another is carried there whole; listings
//! (of requests and of sleds) show the whole fleet and say which node did not answer; the internal listener lets in
//! only calls signed by a node of the cluster, while their caller still waits.
#![allow(clippy::unwrap_used, missing_docs)]

use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::postgres::Postgres;
use uplink_tests::program::{self, Program, Running};
use uplink_tests::{http, perm_response, raw_sled_at, until};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");

/// A node of the cluster on `url` with a lease of `lease`, its internal listener on a port of its own.
async fn node(url: &str, dir: &std::path::Path, lease: &str) -> Running {
    Program::gateway(UPLINK)
        .args(["--store", url, "--lease", lease, "--cluster-listen", "127.0.0.1:0"])
        .state_dir(dir)
        .banner_until("  store: ")
        .start()
        .await
}

/// Two nodes with short leases (2 s) on a fresh database, `a` started first.
struct Pair {
    pg: &'static Postgres,
    url: String,
    db: String,
    a: Running,
    b: Running,
    _dirs: [Box<dyn std::any::Any + Send>; 2],
}

impl Pair {
    async fn start() -> Pair {
        let pg = Postgres::shared();
        let url = pg.fresh_database();
        let db = url.split('/').nth(3).unwrap().split('?').next().unwrap().to_owned();
        let (one, two) = (uplink_tests::temp_dir(), uplink_tests::temp_dir());
        let a = node(&url, one.path(), "2s").await;
        let b = node(&url, two.path(), "2s").await;
        Pair { pg, url, db, a, b, _dirs: [Box::new(one), Box::new(two)] }
    }
}

fn ask(req_id: &str, command: &str) -> Message {
    let frame =
        json!({"type":"perm_request","req_id":req_id,"payload":{"tool_name":"Bash","tool_input":{"command":command}}});
    Message::text(frame.to_string())
}

async fn listing(base: &str, admin: &str) -> Value {
    let (status, body) = http("GET", &format!("{base}/api/permissions"), Some(admin), None, &[]).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The listing at `base` once it shows a request.
async fn listed_at(base: &str, admin: &str) -> Value {
    until("the request to be listed at the other node", async || {
        let listed = listing(base, admin).await;
        listed["permissions"][0]["id"].is_string().then_some(listed)
    })
    .await
}

async fn decide(base: &str, admin: &str, id: &str, body: &str) -> (u16, Value) {
    let (status, body) = http("POST", &format!("{base}/api/permissions/{id}"), Some(admin), Some(body), &[]).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_decision_made_at_one_node_reaches_the_sled_held_at_another_and_listings_show_the_fleet() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let (one, two) = (uplink_tests::temp_dir(), uplink_tests::temp_dir());
    let mut a = node(&url, one.path(), "30s").await;
    let (a_base, sled, admin) = (a.base_url(), a.sled_token(), a.admin_token());
    let internal = a.word_after("the cluster's other nodes reach this one at ");
    // The second node starts while the first serves: side by side, with the tokens the first made.
    let mut b = node(&url, two.path(), "30s").await;
    let b_base = b.base_url();
    // A console at b hears what happens at every node.
    let mut events = uplink_tests::sse(&format!("{b_base}/api/events"), &admin).await;

    // A sled at a asks; b lists it, with the node it waits at, and every node answered.
    let mut ws = raw_sled_at(&a_base, &sled, "web").await;
    ws.send(ask("r1", "git status")).await.unwrap();
    let listed = listed_at(&b_base, &admin).await;
    assert_eq!(listed["unreachable_nodes"], json!([]), "{listed}");
    let (id, node_a) = (listed["permissions"][0]["id"].as_str().unwrap().to_owned(), &listed["permissions"][0]["node"]);
    assert_eq!(listing(&a_base, &admin).await["permissions"][0]["node"], *node_a, "the same at the node itself");
    // b's list of sleds has a's sled, connected there.
    let (status, body) = http("GET", &format!("{b_base}/api/sleds"), Some(&admin), None, &[]).await;
    let sleds: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&sleds["sleds"][0]["project"], &sleds["sleds"][0]["connected"], &sleds["sleds"][0]["node"]),
        (&json!("web"), &json!(true), node_a),
        "{sleds}"
    );
    assert_eq!((sleds["sleds"].as_array().unwrap().len(), &sleds["unreachable_nodes"]), (1, &json!([])));
    assert_eq!(listed["permissions"][0]["tool_input"]["command"], "git status");
    let connected = uplink_tests::next_event(&mut events, "sled_connected").await;
    assert_eq!((&connected["project"], &connected["node"]), (&json!("web"), node_a), "{connected}");
    let requested = uplink_tests::next_event(&mut events, "permission_requested").await;
    assert_eq!((&requested["id"], &requested["node"]), (&json!(id), node_a), "{requested}");

    // b's decision is carried to a, which decides it and sends it to its sled.
    let (status, answer) = decide(&b_base, &admin, &id, r#"{"approved":true,"message":"from b"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["decision"].as_str(), answer["by"].as_str()), (Some("approve"), Some("admin")));
    let response = perm_response(&mut ws).await;
    assert_eq!(response["payload"]["approved"], true, "{response}");
    // Decided once: asked again, at either node, it has ended as decided.
    let (status, again) = decide(&b_base, &admin, &id, r#"{"approved":false}"#).await;
    assert_eq!((status, again["ended"].as_str()), (409, Some("decided")), "{again}");
    // An id no node holds is not found, at either.
    assert_eq!(decide(&b_base, &admin, "1-1", r#"{"approved":true}"#).await.0, 404);

    // MCP at b for the sled at a: carried whole to a, whose session it opens; the sled answers there.
    let mcp = format!("{b_base}/api/sleds/web/mcp");
    let accept = ("accept", "application/json, text/event-stream");
    let init = INITIALIZE;
    let call = |body: &'static str, session: Option<String>| {
        let (mcp, admin) = (mcp.clone(), admin.clone());
        tokio::spawn(async move {
            let mut headers = vec![accept];
            let session = session.unwrap_or_default();
            if !session.is_empty() {
                headers.push(("mcp-session-id", session.as_str()));
            }
            uplink_tests::http_with_headers("POST", &mcp, Some(&admin), Some(body), &headers).await
        })
    };
    let asked = call(init, None);
    answer_initialize(&mut ws).await;
    let (status, headers, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let session = headers.iter().find(|(n, _)| n == "mcp-session-id").map(|(_, v)| v.clone()).expect("a session");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["result"]["serverInfo"]["name"], "s", "{body}");
    let asked = call(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#, Some(session.clone()));
    let relayed = answer_mcp(&mut ws, r#"{"tools":[]}"#).await;
    assert_eq!(relayed["method"], "tools/list", "{relayed}");
    let (status, _, body) = asked.await.unwrap();
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["id"].as_i64()), (200, Some(2)), "{body}");
    // The session-less relay likewise.
    let rpc = format!("{b_base}/api/sleds/web/rpc");
    let asked = {
        let (rpc, admin) = (rpc.clone(), admin.clone());
        tokio::spawn(async move {
            http("POST", &rpc, Some(&admin), Some(r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#), &[]).await
        })
    };
    assert_eq!(answer_mcp(&mut ws, "{}").await["method"], "ping");
    let (status, body) = asked.await.unwrap();
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["id"].as_i64()), (200, Some(3)), "{body}");
    // A project no node holds is unknown at b, as on one gateway.
    let (status, _) = http("POST", &format!("{b_base}/api/sleds/none/mcp"), Some(&admin), Some(init), &[accept]).await;
    assert_eq!(status, 404);

    // The internal listener lets in only calls a node of the cluster signed; the public one has no such
    // routes.
    ws.send(ask("r2", "make")).await.unwrap();
    let id2: String = until("the second request to be listed", async || {
        let listed = listing(&b_base, &admin).await;
        listed["permissions"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let carried = json!({"by": "admin", "ask": {"approved": true}}).to_string();
    let forged = [("uplink-node", "1"), ("uplink-to", "1"), ("uplink-at", "1"), ("uplink-tag", &*"0".repeat(64))];
    for headers in [&[][..], &forged[..]] {
        let (status, body) =
            http("POST", &format!("http://{internal}/internal/permissions/{id2}"), None, Some(&carried), headers).await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, _) = http("GET", &format!("http://{internal}/internal/permissions"), None, None, &[]).await;
    assert_eq!(status, 401);
    // A stranger's head is refused before its body is read: nothing of a claimed 4 MB body is waited for.
    let mut stranger = tokio::net::TcpStream::connect(&internal).await.unwrap();
    let head = format!(
        "POST /internal/permissions/{id2} HTTP/1.1\r\nhost: {internal}\r\nuplink-node: 1\r\nuplink-to: 1\r\nuplink-at: 1\r\ncontent-length: 4000000\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stranger, head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    uplink_tests::within("the refusal", tokio::io::AsyncReadExt::read_exact(&mut stranger, &mut answer)).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    let (status, _) = http("GET", &format!("{a_base}/internal/permissions"), Some(&admin), None, &[]).await;
    assert_eq!(status, 404);

    // a paused: b's decision gets no answer (503, after the call's wait), and b's listing says a did not
    // answer. Woken, a refuses the call b gave up on: the request still waits, and is decided now.
    a.signal("-STOP");
    let (decided, listed) =
        tokio::join!(decide(&b_base, &admin, &id2, r#"{"approved":true}"#), listing(&b_base, &admin));
    a.signal("-CONT");
    assert_eq!(decided.0, 503, "{}", decided.1);
    assert!(decided.1["error"].as_str().unwrap().contains("did not answer"), "{}", decided.1);
    assert_eq!(listed["unreachable_nodes"], json!([node_a]), "{listed}");
    let listed = until("a to answer again", async || {
        let listed = listing(&b_base, &admin).await;
        (listed["unreachable_nodes"] == json!([])).then_some(listed)
    })
    .await;
    assert_eq!(listed["permissions"][0]["id"], id2.as_str(), "the call b gave up on decided nothing: {listed}");
    assert_eq!(listed["permissions"][0]["decided"], Value::Null, "{listed}");
    let (status, answer) = decide(&b_base, &admin, &id2, r#"{"approved":false,"message":"not now"}"#).await;
    assert_eq!(status, 200, "{answer}");
    let response = perm_response(&mut ws).await;
    assert_eq!((response["req_id"].as_str(), response["payload"]["approved"].as_bool()), (Some("r2"), Some(false)));

    // Each node wrote its own chain; the log verifies as a whole.
    drop(ws);
    let decided = uplink_tests::next_event(&mut events, "permission_decided").await;
    assert_eq!((&decided["id"], &decided["node"]), (&json!(id), node_a), "{decided}");
    // a stops: b's console is told that a's events no longer come.
    assert!(a.stop().await.success());
    let gone = uplink_tests::next_event(&mut events, "node_unreachable").await;
    assert_eq!(&gone["node"], node_a, "{gone}");
    assert!(b.stop().await.success());
    let verify = program::run_within("uplink", UPLINK, &["audit", "verify", "--store", &url], &[]).await;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

#[tokio::test]
async fn an_internal_listener_needs_a_shared_store_and_an_address_its_peers_can_use() {
    let dir = uplink_tests::temp_dir();
    let state = dir.path().to_str().unwrap();
    let alone = ["gateway", "--listen", "127.0.0.1:0", "--state-dir", state, "--cluster-listen", "127.0.0.1:0"];
    let out = program::run_within("uplink", UPLINK, &alone, &[]).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("--cluster-listen: needs a store the nodes share"), "{said}");
    let url = Postgres::shared().fresh_database();
    let wild =
        ["gateway", "--listen", "127.0.0.1:0", "--state-dir", state, "--store", &url, "--cluster-listen", "0.0.0.0:0"];
    let out = program::run_within("uplink", UPLINK, &wild, &[]).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("--cluster-advertise"), "{said}");
}

#[tokio::test]
async fn what_a_killed_node_left_waiting_ends_once_in_the_log_at_a_node_already_serving() {
    let Pair { pg, url, db, mut a, mut b, _dirs } = Pair::start().await;
    let (a_base, sled, admin) = (a.base_url(), a.sled_token(), a.admin_token());
    // A sled without resume asks at a, which is killed with the request waiting.
    let mut ws = raw_sled_at(&a_base, &sled, "web").await;
    ws.send(ask("r1", "ls")).await.unwrap();
    until("the request to be listed", async || {
        let listed = listing(&b.base_url(), &admin).await;
        listed["permissions"][0]["id"].is_string().then_some(())
    })
    .await;
    a.kill().await;
    // b, serving all along, ends it in the log as lost with its connection once a's lease lapsed: once.
    let lost = "SELECT count(*) FROM uplink.audit WHERE kind = 'end' AND outcome = 'connection_lost'";
    until("the request to end in the log", async || (pg.sql(&db, lost).unwrap() == "1").then_some(())).await;
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM uplink.pending").unwrap(), "0", "nothing left waiting");
    let chain = |kind: &str| pg.sql(&db, &format!("SELECT chain FROM uplink.audit WHERE kind = '{kind}'")).unwrap();
    assert_ne!(chain("end"), chain("request"), "ended by b, in its own chain");
    assert!(b.stop().await.success());
    assert_eq!(pg.sql(&db, lost).unwrap(), "1", "ended exactly once");
    let verify = program::run_within("uplink", UPLINK, &["audit", "verify", "--store", &url], &[]).await;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

/// A raw sled of incarnation `inc-1` offering `resume`, for project `web`, accepted by the node at `base`.
async fn resuming_sled(base: &str, token: &str) -> uplink_tests::RawWs {
    let url = format!("{}/api/sled-uplink?token={token}", base.replace("http://", "ws://"));
    let mut ws = uplink_tests::within("the sled to connect", tokio_tungstenite::connect_async(url)).await.unwrap().0;
    let identity = json!({"type":"identity","req_id":"identity",
        "payload":{"project":"web","capabilities":["resume"],"incarnation":"inc-1"}});
    ws.send(Message::text(identity.to_string())).await.unwrap();
    let first = next_frame(&mut ws).await;
    assert_eq!(first["type"], "resume_accepted", "{first}");
    ws
}

async fn next_frame(ws: &mut uplink_tests::RawWs) -> Value {
    use futures_util::StreamExt as _;
    loop {
        match uplink_tests::within("a frame", ws.next()).await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

/// A client's `initialize`.
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

/// Answers the next `mcp_request` on `ws`, which must be an `initialize`, as a server named `s`.
async fn answer_initialize(ws: &mut uplink_tests::RawWs) {
    let relayed =
        answer_mcp(ws, r#"{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"s","version":"1"}}"#)
            .await;
    assert_eq!(relayed["method"], "initialize", "{relayed}");
}

/// Answers the next `mcp_request` the gateway sends on `ws` with a JSON-RPC result `result`; the request's
/// JSON-RPC body.
async fn answer_mcp(ws: &mut uplink_tests::RawWs, result: &str) -> Value {
    loop {
        let frame = next_frame(ws).await;
        if frame["type"] != "mcp_request" {
            continue;
        }
        let body: Value = serde_json::from_str(frame["payload"]["body"].as_str().unwrap()).unwrap();
        let answer = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, body["id"]);
        let reply = json!({"type":"mcp_response","req_id":frame["req_id"],"payload":serde_json::from_str::<Value>(&answer).unwrap()});
        ws.send(Message::text(reply.to_string())).await.unwrap();
        return body;
    }
}

/// The next frame of type `kind` the gateway sends on `ws` (others are skipped).
async fn frame_of(ws: &mut uplink_tests::RawWs, kind: &str) -> Value {
    loop {
        let frame = next_frame(ws).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// A resuming sled at the node `at` asks twice (`make deploy`, `make test`) and its link drops; a person at
/// the node `deciding` approves the first meanwhile (kept for the sled's return: 202). The ids, by command.
async fn two_held_and_one_decided(at: &str, deciding: &str, sled: &str, admin: &str) -> Vec<(String, String)> {
    let mut ws = resuming_sled(at, sled).await;
    ws.send(resumed()).await.unwrap();
    ws.send(ask("r1", "make deploy")).await.unwrap();
    ws.send(ask("r2", "make test")).await.unwrap();
    let ids = until("both requests to be listed", async || {
        let listed = listing(deciding, admin).await;
        let ids: Vec<(String, String)> = listed["permissions"]
            .as_array()?
            .iter()
            .map(|p| (p["tool_input"]["command"].as_str().unwrap().to_owned(), p["id"].as_str().unwrap().to_owned()))
            .collect();
        (ids.len() == 2).then_some(ids)
    })
    .await;
    let first = ids.iter().find(|(c, _)| c == "make deploy").unwrap().1.clone();
    drop(ws);
    let (status, answer) = until("the requests to be held", async || {
        let (status, answer) = decide(deciding, admin, &first, r#"{"approved":true}"#).await;
        (status != 200 || answer["sled_away"] == true).then_some((status, answer))
    })
    .await;
    assert_eq!((status, answer["sled_away"].as_bool()), (202, Some(true)), "{answer}");
    ids
}

fn resumed() -> Message {
    Message::text(json!({"type":"resumed","req_id":"resumed","payload":{}}).to_string())
}

#[tokio::test]
async fn a_sled_whose_node_died_resumes_at_a_live_node_that_delivers_what_was_decided_and_asks_nothing_twice() {
    let Pair { pg, url, db, mut a, mut b, _dirs } = Pair::start().await;
    let (a_base, sled, admin) = (a.base_url(), a.sled_token(), a.admin_token());
    let b_base = b.base_url();
    // The sled's link drops; a person at b approves r1 meanwhile: kept at a, for the sled's return.
    let ids = two_held_and_one_decided(&a_base, &b_base, &sled, &admin).await;
    let id_of = |command: &str| ids.iter().find(|(c, _)| c == command).unwrap().1.clone();
    // a dies. Once its lease lapsed, the sled comes back at b and sends again what it kept.
    a.kill().await;
    let a_live = "SELECT count(*) FROM uplink.nodes WHERE uplink.live(id)";
    until("a's lease to lapse", async || (pg.sql(&db, a_live).unwrap() == "1").then_some(())).await;
    let mut ws = resuming_sled(&b_base, &sled).await;
    ws.send(ask("r1", "make deploy")).await.unwrap();
    ws.send(ask("r2", "make test")).await.unwrap();
    ws.send(resumed()).await.unwrap();
    // The decision made before a died is delivered; r2 waits at b under its first id; nothing is asked anew.
    let response = next_frame(&mut ws).await;
    assert_eq!((response["req_id"].as_str(), response["payload"]["approved"].as_bool()), (Some("r1"), Some(true)));
    let listed = listing(&b_base, &admin).await;
    let now: Vec<&str> = listed["permissions"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(now, [id_of("make test").as_str()], "{listed}");
    let (status, answer) = decide(&b_base, &admin, &id_of("make test"), r#"{"approved":false}"#).await;
    assert_eq!(status, 200, "{answer}");
    let response = next_frame(&mut ws).await;
    assert_eq!((response["req_id"].as_str(), response["payload"]["approved"].as_bool()), (Some("r2"), Some(false)));
    // Asked once each: two requests in the log, each ended once, none lost.
    let count = |sql: &str| pg.sql(&db, sql).unwrap();
    assert_eq!(count("SELECT count(*) FROM uplink.audit WHERE kind = 'request'"), "2");
    assert_eq!(count("SELECT count(*) FROM uplink.audit WHERE kind = 'end' AND outcome = 'connection_lost'"), "0");
    drop(ws);
    assert!(b.stop().await.success());
    let verify = program::run_within("uplink", UPLINK, &["audit", "verify", "--store", &url], &[]).await;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

#[tokio::test]
async fn an_mcp_stream_made_at_one_node_for_a_sled_at_another_streams_through_and_a_client_gone_cancels_there() {
    let Pair { pg: _, url: _, db: _, a, b, _dirs } = Pair::start().await;
    let (a_base, sled, admin) = (a.base_url(), a.sled_token(), a.admin_token());
    // A sled at a that takes exchanges as streams (`mcp_stream`).
    let url = format!("{}/api/sled-uplink?token={sled}", a_base.replace("http://", "ws://"));
    let mut ws = uplink_tests::within("the sled to connect", tokio_tungstenite::connect_async(url)).await.unwrap().0;
    let identity =
        json!({"type":"identity","req_id":"identity","payload":{"project":"web","capabilities":["mcp_stream"]}});
    ws.send(Message::text(identity.to_string())).await.unwrap();
    until("the sled to be listed", async || {
        let (_, body) = http("GET", &format!("{}/api/sleds", b.base_url()), Some(&admin), None, &[]).await;
        (serde_json::from_str::<Value>(&body).unwrap()["sleds"][0]["connected"] == true).then_some(())
    })
    .await;
    // A call at b, answered by the sled at a with a progress notification, then its result: one event
    // stream at b, in order.
    let mcp = format!("{}/api/sleds/web/mcp", b.base_url());
    let accept = ("accept", "application/json, text/event-stream");
    let init = INITIALIZE;
    let opened = {
        let (mcp, admin) = (mcp.clone(), admin.clone());
        tokio::spawn(
            async move { uplink_tests::http_with_headers("POST", &mcp, Some(&admin), Some(init), &[accept]).await },
        )
    };
    answer_mcp(
        &mut ws,
        r#"{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"s","version":"1"}}"#,
    )
    .await;
    let (status, headers, body) = opened.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let session = headers.iter().find(|(n, _)| n == "mcp-session-id").map(|(_, v)| v.clone()).expect("a session");
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow"}}"#;
    let asked = {
        let session = session.clone();
        let (mcp, admin) = (mcp.clone(), admin.clone());
        tokio::spawn(async move {
            let headers = [accept, ("mcp-session-id", session.as_str())];
            uplink_tests::http_with_headers("POST", &mcp, Some(&admin), Some(body), &headers).await
        })
    };
    let request = frame_of(&mut ws, "mcp_request").await;
    assert_eq!(request["payload"]["stream"], true, "{request}");
    let req_id = request["req_id"].clone();
    let progress =
        json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":0.5}});
    ws.send(Message::text(json!({"type":"mcp_message","req_id":req_id,"payload":progress}).to_string())).await.unwrap();
    let result = json!({"jsonrpc":"2.0","id":7,"result":{"content":[]}});
    ws.send(Message::text(json!({"type":"mcp_response","req_id":req_id,"payload":result}).to_string())).await.unwrap();
    let (status, headers, text) = asked.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(headers.iter().any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream")), "{headers:?}");
    let progress_at = text.find("notifications/progress").expect("the notification streamed");
    let result_at = text.find(r#""result""#).expect("the result streamed");
    assert!(progress_at < result_at, "{text}");

    // Another call at b whose client goes away before any answer: the exchange is cancelled at the sled (b's
    // call to a is dropped with it, and a's exchange with that).
    let (_, addr) = mcp.split_once("://").unwrap();
    let (host, path) = addr.split_once('/').unwrap();
    let mut client = tokio::net::TcpStream::connect(host).await.unwrap();
    let call = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"slow"}}"#;
    let raw = format!(
        "POST /{path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {admin}\r\nmcp-session-id: {session}\r\naccept: application/json, text/event-stream\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{call}",
        call.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut client, raw.as_bytes()).await.unwrap();
    let request = frame_of(&mut ws, "mcp_request").await;
    let req_id = request["req_id"].clone();
    drop(client);
    let cancel = frame_of(&mut ws, "mcp_cancel").await;
    assert_eq!(cancel["req_id"], req_id, "{cancel}");

    // One whose client goes away mid-stream, after the head and a message: the next messages fail to reach
    // it, and b's call to a is dropped with them, so that a cancels the exchange at the sled.
    let mut client = tokio::net::TcpStream::connect(host).await.unwrap();
    let call = call.replace(r#""id":8"#, r#""id":9"#);
    let raw = raw.replace(r#""id":8"#, r#""id":9"#);
    assert!(raw.ends_with(&call));
    tokio::io::AsyncWriteExt::write_all(&mut client, raw.as_bytes()).await.unwrap();
    let request = frame_of(&mut ws, "mcp_request").await;
    let req_id = request["req_id"].clone();
    let message = Message::text(json!({"type":"mcp_message","req_id":req_id,"payload":progress}).to_string());
    ws.send(message.clone()).await.unwrap();
    let mut head = [0u8; 64];
    let n =
        uplink_tests::within("the stream's head", tokio::io::AsyncReadExt::read(&mut client, &mut head)).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    drop(client);
    let cancel = uplink_tests::within("the exchange to be cancelled", async {
        loop {
            ws.send(message.clone()).await.unwrap();
            let next = tokio::time::timeout(std::time::Duration::from_millis(100), next_frame(&mut ws)).await;
            if let Ok(frame) = next
                && frame["type"] == "mcp_cancel"
            {
                return frame;
            }
        }
    })
    .await;
    assert_eq!(cancel["req_id"], req_id, "{cancel}");
}

#[tokio::test]
async fn a_sled_that_comes_back_at_another_live_node_finds_there_what_the_first_held_and_what_was_decided() {
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let db = url.split('/').nth(3).unwrap().split('?').next().unwrap().to_owned();
    let (one, two) = (uplink_tests::temp_dir(), uplink_tests::temp_dir());
    let a = node(&url, one.path(), "30s").await;
    let (a_base, sled, admin) = (a.base_url(), a.sled_token(), a.admin_token());
    let b = node(&url, two.path(), "30s").await;
    let b_base = b.base_url();
    // The link drops (a lives on, holding both); a person approves r1 meanwhile, at a.
    let ids = two_held_and_one_decided(&a_base, &a_base, &sled, &admin).await;
    let id_of = |command: &str| ids.iter().find(|(c, _)| c == command).unwrap().1.clone();
    // The sled comes back at b: b takes over what a held, the decision included.
    let mut ws = resuming_sled(&b_base, &sled).await;
    ws.send(ask("r1", "make deploy")).await.unwrap();
    ws.send(ask("r2", "make test")).await.unwrap();
    ws.send(resumed()).await.unwrap();
    let response = frame_of(&mut ws, "perm_response").await;
    assert_eq!((response["req_id"].as_str(), response["payload"]["approved"].as_bool()), (Some("r1"), Some(true)));
    // r2 waits at b under its first id, listed once in the fleet, and a decision made at a reaches it there.
    let listed = listing(&a_base, &admin).await;
    let entries = listed["permissions"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["id"], id_of("make test").as_str(), "{listed}");
    let b_node = pg.sql(&db, "SELECT node FROM uplink.claims WHERE project = 'web'").unwrap();
    assert_eq!(entries[0]["node"].to_string(), b_node, "{listed}");
    let (status, answer) = decide(&a_base, &admin, &id_of("make test"), r#"{"approved":false}"#).await;
    assert_eq!(status, 200, "{answer}");
    let response = frame_of(&mut ws, "perm_response").await;
    assert_eq!((response["req_id"].as_str(), response["payload"]["approved"].as_bool()), (Some("r2"), Some(false)));
    let count = |sql: &str| pg.sql(&db, sql).unwrap();
    assert_eq!(count("SELECT count(*) FROM uplink.audit WHERE kind = 'request'"), "2", "nothing asked twice");
    assert_eq!(count("SELECT count(*) FROM uplink.audit WHERE kind = 'end' AND outcome = 'connection_lost'"), "0");
    assert_eq!(count("SELECT count(*) FROM uplink.pending"), "0");
    drop((a, b));
}

/// A person an OpenID provider vouched for at one node decides, and relays MCP, for a sled at another: the
/// node that verified them carries their identity and role, signed, and the holder acts as them (it does not
/// know them from its credentials, which name admin principals only).
#[tokio::test]
async fn a_provider_identity_checked_at_one_node_decides_and_relays_for_a_sled_at_another() {
    let provider = uplink_tests::oidc::Provider::start(None).await;
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let (one, two) = (uplink_tests::temp_dir(), uplink_tests::temp_dir());
    let public = "http://uplink.test";
    let oidc = ["--public-url", public, "--oidc-issuer", &provider.issuer, "--oidc-role", "sub:robot=approver"];
    let node = |dir: std::path::PathBuf| {
        Program::gateway(UPLINK)
            .args(["--store", &url, "--lease", "30s", "--cluster-listen", "127.0.0.1:0"])
            .args(oidc)
            .state_dir(dir)
            .banner_until("  store: ")
            .start()
    };
    let a = node(one.path().to_owned()).await;
    let (a_base, sled, admin) = (a.base_url(), a.sled_token(), a.admin_token());
    let b = node(two.path().to_owned()).await;
    let b_base = b.base_url();

    let mut ws = raw_sled_at(&a_base, &sled, "web").await;
    ws.send(ask("r1", "git status")).await.unwrap();
    let listed = listed_at(&b_base, &admin).await;
    let id = listed["permissions"][0]["id"].as_str().unwrap().to_owned();

    // The robot's token for the API, at b, for the request at a.
    let api = provider.robot_token(&format!("{public}/api"), "mcp").await;
    let (status, answer) = decide(&b_base, &api, &id, r#"{"approved":true}"#).await;
    assert_eq!(status, 200, "{answer}");
    let robot = format!("{}#robot", provider.issuer);
    assert_eq!(answer["by"].as_str(), Some(robot.as_str()), "{answer}");
    assert_eq!(perm_response(&mut ws).await["payload"]["approved"], true);

    // The session-less relay with its API token, at b, for the sled at a.
    let rpc = format!("{b_base}/api/sleds/web/rpc");
    let asked = tokio::spawn(async move {
        http("POST", &rpc, Some(&api), Some(r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#), &[]).await
    });
    assert_eq!(answer_mcp(&mut ws, "{}").await["method"], "ping");
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Its token for the MCP endpoint, at b, for the sled at a.
    let endpoint = format!("{b_base}/api/sleds/web/mcp");
    let mcp = provider.robot_token(&format!("{public}/api/sleds/web/mcp"), "mcp").await;
    let init = INITIALIZE;
    let asked = tokio::spawn(async move {
        uplink_tests::http_with_headers(
            "POST",
            &endpoint,
            Some(&mcp),
            Some(init),
            &[("accept", "application/json, text/event-stream")],
        )
        .await
    });
    answer_initialize(&mut ws).await;
    let (status, _, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// A person who signed in to the console at the provider, at one node, is signed in at every node, with the
/// role the sign-in gave: the sign-in is kept in the shared store with what the provider vouched for.
#[tokio::test]
async fn a_console_sign_in_at_the_provider_made_at_one_node_holds_at_another() {
    let public = "http://uplink.test";
    let provider = uplink_tests::oidc::Provider::start(Some(&format!("{public}/console/oidc/callback"))).await;
    let pg = Postgres::shared();
    let url = pg.fresh_database();
    let (one, two) = (uplink_tests::temp_dir(), uplink_tests::temp_dir());
    let oidc = [
        "--public-url",
        public,
        "--oidc-issuer",
        &provider.issuer,
        "--oidc-role",
        "group:platform-oncall=approver",
        "--oidc-client-id",
        "uplink-console",
        "--oidc-scope",
        "groups",
    ];
    let secret = one.path().join("console-secret");
    std::fs::write(&secret, "console-secret").unwrap();
    let node = |dir: std::path::PathBuf| {
        Program::gateway(UPLINK)
            .args(["--store", &url, "--lease", "30s", "--cluster-listen", "127.0.0.1:0"])
            .args(oidc)
            .args(["--oidc-client-secret-file", secret.to_str().unwrap()])
            .state_dir(dir)
            .banner_until("  store: ")
            .start()
    };
    let a = node(one.path().join("a")).await;
    let b = node(two.path().to_owned()).await;
    let (a_base, b_base) = (a.base_url(), b.base_url());

    let (callback, binding, _) = uplink_tests::oidc::console_sign_in_at(&a_base, public, "alice").await;
    let callback = callback.replace(public, &a_base);
    let (status, headers, page) =
        uplink_tests::http_with_headers("GET", &callback, None, None, &[("cookie", &format!("uplink_oidc={binding}"))])
            .await;
    assert_eq!(status, 303, "{page}");
    let cookie = headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("uplink_session="))
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .unwrap();
    // At b, once it has read the sign-in from the store: alice, with her group's role.
    let who = until("the sign-in to hold at the other node", async || {
        let (status, body) =
            http("GET", &format!("{b_base}/console/session"), None, None, &[("cookie", &cookie)]).await;
        (status == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
    })
    .await;
    assert_eq!((&who["name"], &who["role"]), (&json!("alice@example.com"), &json!("approver")), "{who}");
    assert_eq!(who["id"], format!("{}#alice", provider.issuer));
    let (status, body) = http("GET", &format!("{b_base}/api/me"), None, None, &[("cookie", &cookie)]).await;
    assert_eq!(status, 200, "{body}");
}

//! `uplink sled` as a process: driven through `/permission` and the MCP `approve` tool, stopped by SIGTERM.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use uplink_proto::sse::SseParser;
use uplink_tests::program::{self, Program, Running};
use uplink_tests::{GatewayConn, TestGateway, until, within};

const UPLINK: &str = env!("CARGO_BIN_EXE_uplink");

/// `uplink sled` for the project `cli-proj`, with `extra`, its gateway `gw` (given in the environment, as a
/// wrapper script would).
async fn start_sled(gw: &TestGateway, extra: &[&str]) -> Running {
    Program::sled(UPLINK)
        .args(["--project", "cli-proj"])
        .args(extra)
        .env("UPLINK_GATEWAY", gw.url())
        .env("UPLINK_TOKEN", "cli-token")
        .start()
        .await
}

/// A sled started as [`start_sled`] does, connected and identified at `gw`: its local face's URL, and its
/// connection as the gateway sees it.
async fn connected_sled(gw: &TestGateway, extra: &[&str]) -> (Running, String, GatewayConn) {
    let sled = start_sled(gw, extra).await;
    let mut conn = gw.accept().await;
    conn.recv().await;
    let base = sled.local_url();
    (sled, base, conn)
}

async fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, hyper::HeaderMap, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response =
        within("an HTTP answer", client.request(request.body(Full::new(Bytes::from(body.to_owned()))).unwrap()))
            .await
            .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = within("the body", response.into_body().collect()).await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// The JSON-RPC response in an MCP answer, whether sent as JSON or as an event stream.
fn rpc(headers: &hyper::HeaderMap, body: &str) -> Value {
    let is_sse = headers.get("content-type").is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    if !is_sse {
        return serde_json::from_str(body).unwrap();
    }
    let events = SseParser::new(1 << 20).push(body.as_bytes()).unwrap();
    let data = events.into_iter().map(|e| e.data).find(|d| !d.trim().is_empty()).unwrap();
    serde_json::from_str(&data).unwrap()
}

/// Opens an MCP session on the sled's `/mcp` as Claude Code does (initialize, then initialized); its id.
async fn mcp_session(mcp: &str) -> String {
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",
        "capabilities":{},"clientInfo":{"name":"claude","version":"1"}}});
    let (status, headers, body) = post(mcp, &init.to_string(), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(rpc(&headers, &body)["result"]["serverInfo"].is_object());
    let session = headers.get("mcp-session-id").unwrap().to_str().unwrap().to_owned();
    let with_session = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-06-18")];
    let (status, _, _) = post(mcp, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, &with_session).await;
    assert_eq!(status, 202);
    session
}

/// Posts `call` in `session`, in a task of its own (it waits for a decision).
fn call_in_session(mcp: &str, session: &str, call: Value) -> tokio::task::JoinHandle<(u16, hyper::HeaderMap, String)> {
    let (mcp, session) = (mcp.to_owned(), session.to_owned());
    tokio::spawn(async move {
        let headers = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-06-18")];
        post(&mcp, &call.to_string(), &headers).await
    })
}

async fn decide_next(conn: &mut GatewayConn, approved: bool) -> Value {
    let req = conn.recv_kind("perm_request").await;
    conn.approve(&req["req_id"], approved, false).await;
    req
}

#[tokio::test]
async fn permission_endpoint_and_approve_tool_then_sigterm() {
    let gw = TestGateway::bind().await;
    let mut sled = start_sled(&gw, &[]).await;
    let base = sled.local_url();
    let mut conn = gw.accept().await;
    assert_eq!(conn.uri, "/api/sled-uplink?token=cli-token");
    assert_eq!(conn.recv().await["payload"]["project"], "cli-proj");

    // POST /permission, approved by the gateway.
    let url = format!("{base}/permission");
    let ask = tokio::spawn({
        let url = url.clone();
        async move { post(&url, r#"{"tool_name":"Bash","tool_input":{"command":"ls"}}"#, &[]).await }
    });
    let req = decide_next(&mut conn, true).await;
    assert_eq!(req["payload"], json!({"tool_name":"Bash","tool_input":{"command":"ls"}}));
    let (status, _, body) = within("the answer", ask).await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"decision":"approve","reason":"gateway"}"#));

    // Bad requests get a clear 4xx.
    let (status, _, body) = post(&url, "{not json", &[]).await;
    assert_eq!(status, 400);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (status, _, _) = post(&format!("{base}/nowhere"), "{}", &[]).await;
    assert_eq!(status, 404);

    // The MCP approve tool, as Claude Code's --permission-prompt-tool calls it.
    let mcp = format!("{base}/mcp");
    let session = mcp_session(&mcp).await;
    let with_session = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-06-18")];
    let (_, headers, body) = post(&mcp, r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#, &with_session).await;
    assert_eq!(rpc(&headers, &body)["result"]["tools"][0]["name"], "approve");
    for (approved, want) in [(false, "deny"), (true, "allow")] {
        let call = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"approve","arguments":{
            "tool_name":"Write","input":{"file_path":"/tmp/x","content":"hi"},"tool_use_id":"toolu_1"}}});
        let asking = call_in_session(&mcp, &session, call);
        let req = decide_next(&mut conn, approved).await;
        assert_eq!(req["payload"]["tool_name"], "Write");
        let (_, headers, body) = within("the tool result", asking).await.unwrap();
        let answer = rpc(&headers, &body);
        let text = answer["result"]["content"][0]["text"].as_str().unwrap();
        let verdict: Value = serde_json::from_str(text).unwrap();
        assert_eq!(verdict["behavior"], want, "{verdict}");
        if approved {
            assert_eq!(verdict["updatedInput"], json!({"file_path":"/tmp/x","content":"hi"}));
        } else {
            assert_eq!(verdict["message"], "Permission denied by the gateway.");
        }
    }

    // The sled's metrics on its local listener: the link, the three permissions (an approval, a denial,
    // an approval).
    let (status, text) = uplink_tests::http("GET", &format!("{base}/metrics"), None, None, &[]).await;
    assert_eq!(status, 200);
    assert!(text.lines().any(|l| l == "uplink_sled_link_up 1"), "{text}");
    assert!(
        text.lines().any(|l| l == r#"uplink_sled_permissions_total{decision="approve",cause="gateway"} 2"#),
        "{text}"
    );

    // SIGTERM: a normal close, then a clean exit.
    sled.terminate();
    assert_eq!(conn.until_closed().await, Some(1000));
    let status = sled.wait().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn bad_arguments_are_reported_clearly() {
    let out = program::run(UPLINK, &["sled", "--project", "p", "--idle-timeout", "soon"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--idle-timeout") && err.contains("500ms, 10s, 2m"), "{err}");

    let args = ["sled", "--project", "p", "--gateway", "http://not-ws", "--permission-listen", "127.0.0.1:0"];
    let out = program::run(UPLINK, &args, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with ws:// or wss://"));
}

#[tokio::test]
async fn the_demo_walks_through_every_step_and_exits_zero() {
    let out = program::run_within("the demo", UPLINK, &["demo"], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for step in [
        "the sled connected and identified itself",
        "tools/list relayed",
        "word_count(\"one uplink to rule them all\") = 6",
        "permission for Bash: Approve",
        "permission for Write: Deny",
        "permission for Read: Deny",
        "reconnected to the restarted gateway",
        "waited across the restart under the same id, and was approved afterwards",
        "the sled shut down",
        "The demo behaved as expected.",
    ] {
        assert!(text.contains(step), "missing step {step:?} in:\n{text}");
    }
    assert!(out.stderr.is_empty(), "logs stay quiet by default: {}", String::from_utf8_lossy(&out.stderr));
}

/// One raw HTTP/1.1 request to the sled's local listener, headers exactly as given; the status.
async fn raw_status(base: &str, request: String) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    within("the status line", tcp.read_exact(&mut head)).await.unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

fn permission_request(host: &str, extra: &str) -> String {
    let body = r#"{"tool_name":"Bash","tool_input":{"command":"rm -rf ~"}}"#;
    format!(
        "POST /permission HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_web_page_cannot_ask_the_sleds_local_face_and_a_token_is_honoured() {
    let gw = TestGateway::bind().await;
    let (_sled, base, mut conn) = connected_sled(&gw, &["--allow-origin", "http://localhost:5173"]).await;
    let host = base.trim_start_matches("http://").to_owned();
    let json = "Content-Type: application/json\r\n";
    // A CORS simple request (text/plain needs no preflight), a foreign Origin, a DNS-rebound Host.
    assert_eq!(raw_status(&base, permission_request(&host, "Content-Type: text/plain\r\n")).await, 415);
    let page = format!("{json}Origin: https://evil.example\r\n");
    assert_eq!(raw_status(&base, permission_request(&host, &page)).await, 403);
    let rebound = host.replace("127.0.0.1", "evil.example");
    assert_eq!(raw_status(&base, permission_request(&rebound, json)).await, 403);
    // The MCP route too.
    let mcp = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    assert_eq!(raw_status(&base, mcp).await, 403);
    // An allowed Origin opens an MCP session (rmcp's own check agrees with the core's).
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"page","version":"1"}}}"#;
    let (status, _, body) = post(
        &format!("{base}/mcp"),
        init,
        &[("origin", "http://localhost:5173"), ("host", host.replace("127.0.0.1", "localhost").as_str())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // None of those reached the gateway. An allowed Origin and a loopback name do.
    let allowed = format!("{json}Origin: http://localhost:5173\r\n");
    let asked = tokio::spawn(async move { raw_status(&base, permission_request(&host, &allowed)).await });
    let req = decide_next(&mut conn, false).await;
    assert_eq!(req["payload"]["tool_input"]["command"], "rm -rf ~");
    assert_eq!(within("the answer", asked).await.unwrap(), 200);

    // With a local token, a request without it is refused, and one with it goes through.
    let gw = TestGateway::bind().await;
    let (_sled, base, mut conn) = connected_sled(&gw, &["--local-token", "l0cal"]).await;
    let host = base.trim_start_matches("http://").to_owned();
    assert_eq!(raw_status(&base, permission_request(&host, json)).await, 401);
    let metrics = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_status(&base, metrics).await, 401, "the metrics sit behind the local token too");
    let wrong = format!("{json}Authorization: Bearer nope\r\n");
    assert_eq!(raw_status(&base, permission_request(&host, &wrong)).await, 401);
    let with = format!("{json}Authorization: Bearer l0cal\r\n");
    let asked = tokio::spawn(async move { raw_status(&base, permission_request(&host, &with)).await });
    decide_next(&mut conn, true).await;
    assert_eq!(within("the answer", asked).await.unwrap(), 200);
}

#[tokio::test]
async fn an_agent_that_hangs_up_has_its_request_withdrawn() {
    use tokio::io::AsyncWriteExt as _;
    let gw = TestGateway::bind().await;
    let (_sled, base, mut conn) = connected_sled(&gw, &[]).await;
    let host = base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    tcp.write_all(permission_request(&host, "Content-Type: application/json\r\n").as_bytes()).await.unwrap();
    let request = conn.recv_kind("perm_request").await;
    drop(tcp);
    let cancel = conn.recv_kind("perm_cancel").await;
    assert_eq!(
        (cancel["req_id"].clone(), cancel["payload"]["reason"].clone()),
        (request["req_id"].clone(), json!("withdrawn"))
    );
}

#[tokio::test]
async fn a_denial_says_why_it_was_denied() {
    let gw = TestGateway::bind().await;
    let (_sled, base, mut conn) = connected_sled(&gw, &[]).await;
    let url = format!("{base}/permission");
    let asking = tokio::spawn(async move { post(&url, r#"{"tool_name":"Bash","tool_input":{}}"#, &[]).await });
    conn.recv_kind("perm_request").await;
    // The gateway goes away before deciding: fail-closed, and the agent is told so.
    drop(conn);
    let (status, _, body) = within("the answer", asking).await.unwrap();
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({"decision":"deny","reason":"connection_lost"}))
    );
}

#[tokio::test]
async fn a_cancelled_approve_tool_call_withdraws_its_request() {
    let gw = TestGateway::bind().await;
    let (_sled, base, mut conn) = connected_sled(&gw, &[]).await;
    let mcp = format!("{base}/mcp");
    let session = mcp_session(&mcp).await;
    let with_session = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-06-18")];
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"approve","arguments":{
        "tool_name":"Bash","input":{"command":"make deploy"}}}});
    let calling = call_in_session(&mcp, &session, call);
    let request = conn.recv_kind("perm_request").await;
    // The agent gives up on the call.
    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7,"reason":"user interrupted"}});
    post(&mcp, &cancel.to_string(), &with_session).await;
    let withdrawn = conn.recv_kind("perm_cancel").await;
    assert_eq!(
        (withdrawn["req_id"].clone(), withdrawn["payload"]["reason"].clone()),
        (request["req_id"].clone(), json!("withdrawn"))
    );
    calling.abort();
}

#[tokio::test]
async fn a_persons_message_reaches_the_agent_on_both_faces() {
    let gw = TestGateway::bind().await;
    let (_sled, base, mut conn) = connected_sled(&gw, &[]).await;
    let deny_with = |req: &Value| {
        json!({"type":"perm_response","req_id":req["req_id"],
               "payload":{"approved":false,"always_allow":false,"message":"use the staging database"}})
    };
    // POST /permission: the message comes back beside the reason.
    let url = format!("{base}/permission");
    let asking = tokio::spawn(async move { post(&url, r#"{"tool_name":"Bash","tool_input":{}}"#, &[]).await });
    let req = conn.recv_kind("perm_request").await;
    conn.send(deny_with(&req)).await;
    let (status, _, body) = within("the answer", asking).await.unwrap();
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({"decision":"deny","reason":"gateway","message":"use the staging database"}))
    );
    // The approve tool: the deny message carries the person's words.
    let mcp = format!("{base}/mcp");
    let session = mcp_session(&mcp).await;
    let call = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"approve","arguments":{
        "tool_name":"Bash","input":{"command":"psql prod"}}}});
    let calling = call_in_session(&mcp, &session, call);
    let req = conn.recv_kind("perm_request").await;
    conn.send(deny_with(&req)).await;
    let (_, headers, body) = within("the tool result", calling).await.unwrap();
    let text = rpc(&headers, &body)["result"]["content"][0]["text"].as_str().unwrap().to_owned();
    let verdict: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        verdict,
        json!({"behavior":"deny","message":"Permission denied at the gateway: use the staging database"})
    );
}

#[tokio::test]
async fn an_approve_call_whose_mcp_session_ends_withdraws_its_request() {
    let gw = TestGateway::bind().await;
    let (_sled, base, mut conn) = connected_sled(&gw, &[]).await;
    let mcp = format!("{base}/mcp");
    let session = mcp_session(&mcp).await;
    let call = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"approve","arguments":{
        "tool_name":"Bash","input":{"command":"rm -rf build"}}}});
    let calling = call_in_session(&mcp, &session, call);
    let request = conn.recv_kind("perm_request").await;
    // The client ends its session (as a client does on exit): the call's question is withdrawn.
    let delete = format!(
        "DELETE /mcp HTTP/1.1\r\nHost: {}\r\nMcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        base.trim_start_matches("http://")
    );
    let status = raw_status(&base, delete).await;
    assert!((200..300).contains(&status), "DELETE answered {status}");
    // rmcp lets a closed session's running handlers finish for up to 5 s before it cancels them; the
    // cancellation is what withdraws the request.
    let withdrawn = conn.recv_kind("perm_cancel").await;
    assert_eq!(
        (withdrawn["req_id"].clone(), withdrawn["payload"]["reason"].clone()),
        (request["req_id"].clone(), json!("withdrawn"))
    );
    calling.abort();
}

/// The first warning `uplink sled` logs when dialing `gateway` (with `token`, if any).
async fn first_dial_warning(gateway: &str, token: Option<&str>) -> String {
    let token: &[&str] = match token {
        Some(t) => &["--token", t],
        None => &[],
    };
    let mut sled = Program::sled(UPLINK)
        .args(["--project", "p", "--gateway", gateway])
        .args(token)
        .log()
        .banner_lines(0)
        .start()
        .await;
    let warned = sled.log_until_one("a warning", |line| line.contains("WARN") && line.contains("connecting")).await;
    sled.kill().await;
    warned.last().unwrap().clone()
}

#[tokio::test]
async fn a_newcomers_usual_mistakes_are_named_in_the_log() {
    let gw = uplink_tests::RealGateway::start(Default::default(), uplink_tokio::DEFAULT_MAX_MESSAGE_SIZE).await;
    let addr = gw.addr;
    let wrong_path = first_dial_warning(&format!("ws://{addr}/sled-uplink"), Some(uplink_tests::SLED_TOKEN)).await;
    assert!(wrong_path.contains("the gateway's WebSocket path is /api/sled-uplink"), "{wrong_path}");
    let tls_on_plain =
        first_dial_warning(&format!("wss://{addr}/api/sled-uplink"), Some(uplink_tests::SLED_TOKEN)).await;
    assert!(tls_on_plain.contains("try ws://"), "{tls_on_plain}");
    let no_token = first_dial_warning(&format!("ws://{addr}/api/sled-uplink"), None).await;
    assert!(no_token.contains("none was given"), "{no_token}");
    gw.stop().await;
}

#[tokio::test]
async fn the_demo_kept_running_serves_the_console_and_an_agents_local_face() {
    let mut demo = Program::demo(UPLINK).start().await;
    let (console, ask, token) =
        (demo.word_after("console:"), demo.word_after("agents ask:"), demo.word_after("admin token:"));
    let (status, page) = uplink_tests::http("GET", &console, None, None, &[]).await;
    assert!(status == 200 && page.contains("uplink gateway"), "{status}");
    // An agent asks at the sled's local face; a person approves at the gateway; the agent hears it.
    let asked =
        tokio::spawn(async move { post(&ask, r#"{"tool_name":"Bash","tool_input":{"command":"ls"}}"#, &[]).await });
    let base = console.trim_end_matches('/').to_owned();
    let id = until("the request at the gateway", async || {
        let (_, body) = uplink_tests::http("GET", &format!("{base}/api/permissions"), Some(&token), None, &[]).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        let p = v["permissions"].as_array().and_then(|p| p.first())?;
        assert_eq!(p["project"], "demo-agent");
        Some(p["id"].as_str().unwrap().to_owned())
    })
    .await;
    let url = format!("{base}/api/permissions/{id}");
    assert_eq!(uplink_tests::http("POST", &url, Some(&token), Some(r#"{"approved":true}"#), &[]).await.0, 200);
    let (status, _, body) = within("the agent's answer", asked).await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"decision":"approve","reason":"gateway"}"#));
    let status = demo.stop().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_refused_sled_says_why_in_its_log_its_health_and_its_answers() {
    let gw = uplink_tests::RealGateway::start(Default::default(), uplink_tokio::DEFAULT_MAX_MESSAGE_SIZE).await;
    let mut sled = Program::sled(UPLINK)
        .args(["--project", "p", "--gateway", gw.ws.as_str(), "--token", "not-the-token"])
        .log()
        .start()
        .await;
    let refused =
        sled.log_until_one("the refusal's error line", |line| line.contains("ERROR") && line.contains("refused")).await;
    let line = refused.last().unwrap();
    assert!(line.contains("the gateway refused this sled's token") && line.contains("--token"), "{line}");
    let base = sled.local_url();
    let (status, body) = uplink_tests::http("GET", &format!("{base}/healthz"), None, None, &[]).await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, health["link"].clone(), health["refused"]["cause"].clone()),
        (503, json!("backing_off"), json!("unauthorized"))
    );
    // The agent is answered at once (its deadline is 120 s; `post` waits far less), with the cause and a hint.
    let (status, _, body) = post(&format!("{base}/permission"), r#"{"tool_name":"Bash","tool_input":{}}"#, &[]).await;
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, answer["decision"].clone(), answer["reason"].clone()), (200, json!("deny"), json!("refused")));
    assert_eq!(answer["refused"]["cause"], "unauthorized");
    assert!(answer["refused"]["hint"].as_str().unwrap().contains("--token"), "{answer}");
    sled.kill().await;
    gw.stop().await;
}

/// `uplink hook ARGS` with `event` on its standard input: what it printed (parsed, or `None` for nothing) and
/// its log; it always exits 0.
async fn uplink_hook(args: &[&str], event: &str) -> (Option<Value>, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut command = tokio::process::Command::from(program::command(UPLINK));
    command.arg("hook").args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    command.stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(event.as_bytes()).await.unwrap();
    drop(stdin);
    let out = within("uplink hook", child.wait_with_output()).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let printed = (!stdout.trim().is_empty()).then(|| serde_json::from_str(&stdout).unwrap());
    (printed, String::from_utf8(out.stderr).unwrap())
}

/// A `PermissionRequest` event as Claude Code sends it to a hook.
fn permission_event(command: &str) -> String {
    json!({"session_id":"s1","transcript_path":"/tmp/t.jsonl","cwd":"/work","permission_mode":"default",
        "hook_event_name":"PermissionRequest","tool_name":"Bash","tool_input":{"command":command,"description":"d"},
        "permission_suggestions":[{"type":"setMode","mode":"acceptEdits","destination":"session"}]})
    .to_string()
}

fn hook_decision(output: &Option<Value>) -> Value {
    let output = output.as_ref().expect("a decision");
    assert_eq!(output["hookSpecificOutput"]["hookEventName"], "PermissionRequest", "{output}");
    output["hookSpecificOutput"]["decision"].clone()
}

#[tokio::test]
async fn the_permission_hook_allows_only_on_the_gateways_approval_and_says_why_otherwise() {
    let gw = TestGateway::bind().await;
    let (_sled, base, mut conn) = connected_sled(&gw, &[]).await;
    // Approved: allow, and the input as asked is what runs (no updatedInput).
    let asking = tokio::spawn({
        let event = permission_event("make test");
        let base = base.clone();
        async move { uplink_hook(&["--sled", &base], &event).await }
    });
    let asked = decide_next(&mut conn, true).await;
    assert_eq!(asked["payload"]["tool_input"]["command"], "make test");
    let (output, _) = within("the hook's answer", asking).await.unwrap();
    assert_eq!(hook_decision(&output), json!({"behavior":"allow"}));
    // Always allowed: the session rule the approve tool gives, the same the gateway made.
    let asking = tokio::spawn({
        let event = permission_event("git diff HEAD");
        let base = base.clone();
        async move { uplink_hook(&["--sled", &base], &event).await }
    });
    let req = conn.recv_kind("perm_request").await;
    conn.send(json!({"type":"perm_response","req_id":req["req_id"],"payload":{"approved":true,"always_allow":true}}))
        .await;
    let (output, _) = within("the hook's answer", asking).await.unwrap();
    assert_eq!(
        hook_decision(&output),
        json!({"behavior":"allow","updatedPermissions":[{"type":"addRules","rules":[{"toolName":"Bash","ruleContent":"git diff *"}],"behavior":"allow","destination":"session"}]})
    );
    // Denied with words: they reach the agent.
    let asking = tokio::spawn({
        let event = permission_event("rm -rf build");
        let base = base.clone();
        async move { uplink_hook(&["--sled", &base, "--fallback-to-dialog"], &event).await }
    });
    let req = conn.recv_kind("perm_request").await;
    conn.send(
        json!({"type":"perm_response","req_id":req["req_id"],"payload":{"approved":false,"message":"not on main"}}),
    )
    .await;
    let (output, _) = within("the hook's answer", asking).await.unwrap();
    assert_eq!(
        hook_decision(&output),
        json!({"behavior":"deny","message":"Permission denied at the gateway: not on main"}),
        "a gateway's denial is never turned into the dialog"
    );
    // The link is lost before a decision: a denial that says so; the dialog only where asked for.
    for (fallback, want_dialog) in [(false, false), (true, true)] {
        let asking = tokio::spawn({
            let event = permission_event("cargo publish");
            let base = base.clone();
            async move {
                let args: &[&str] = if fallback { &["--fallback-to-dialog"] } else { &[] };
                uplink_hook(&[&["--sled", base.as_str()][..], args].concat(), &event).await
            }
        });
        conn.recv_kind("perm_request").await;
        drop(conn);
        let (output, log) = within("the hook's answer", asking).await.unwrap();
        if want_dialog {
            assert_eq!(output, None, "no decision: Claude Code shows its dialog ({log})");
        } else {
            let decision = hook_decision(&output);
            assert_eq!(decision["behavior"], "deny");
            assert!(decision["message"].as_str().unwrap().contains("connection to the gateway was lost"), "{decision}");
        }
        conn = gw.accept().await;
        conn.recv().await;
    }
    // An unreadable event is a denial, never a silence.
    let (output, _) = uplink_hook(&["--sled", &base, "--fallback-to-dialog"], "{not json").await;
    assert!(hook_decision(&output)["message"].as_str().unwrap().contains("could not read the hook's event"));
}

#[tokio::test]
async fn the_permission_hook_denies_when_the_sled_cannot_be_reached_unless_told_to_fall_back() {
    let closed = format!("http://127.0.0.1:{}", uplink_tests::free_port());
    let (output, log) = uplink_hook(&["--sled", &closed], &permission_event("ls")).await;
    let decision = hook_decision(&output);
    assert_eq!(decision["behavior"], "deny");
    assert!(decision["message"].as_str().unwrap().contains("the sled did not answer"), "{decision}");
    assert!(log.contains("cannot reach"), "{log}");
    let (output, _) = uplink_hook(&["--sled", &closed, "--fallback-to-dialog"], &permission_event("ls")).await;
    assert_eq!(output, None);
    // Something else answering there, or a URL that is not one: a denial, even with the fallback asked for.
    let other = uplink_tests::CannedHttp::start(200, "application/json", r#"{"ok":true}"#).await;
    for sled in [format!("http://{}", other.addr), "localhost:3002".to_owned()] {
        let (output, _) = uplink_hook(&["--sled", &sled, "--fallback-to-dialog"], &permission_event("ls")).await;
        assert_eq!(hook_decision(&output)["behavior"], "deny", "{sled}");
    }
}

//! The real program over loopback, against the floor of the same work done directly, in the same run.
//!
//! The gateway is the `uplink gateway` program, started as a child process so that its CPU time and resident
//! memory are its own; the sleds ([`uplink_tokio::Uplink`]), the local MCP server (a minimal hyper server) and
//! the load generators run in this process.
//!
//! ```text
//! cargo bench -p uplink-tokio --bench net                   # every bench, quick sizes
//! cargo bench -p uplink-tokio --bench net -- rtt            # one of: rtt throughput relay scale decisions wide large
//! cargo bench -p uplink-tokio --bench net -- scale --sleds 10000 --idle-secs 30 [--restart [--pending N]]
//! ```
#![allow(clippy::print_stdout, reason = "a benchmark reports on standard output")]
#![allow(missing_docs, unreachable_pub, reason = "a benchmark binary")]
#![allow(clippy::unwrap_used, reason = "a benchmark stops at the first broken assumption")]

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::program::{Program, Running};
use uplink_tokio::{Decision, LinkState, Uplink, UplinkConfig};

const SLED_TOKEN: &str = "bench-sled-token";
const ADMIN_TOKEN: &str = "bench-admin-token";
/// The JSON-RPC call the MCP benches make, numbered `n`: `add(n, 2)`.
fn mcp_body(n: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/call","params":{{"name":"add","arguments":{{"a":{n},"b":2}}}}}}"#
    )
}

/// What the local MCP server answers to `mcp_body(n)`, and all a relayed answer counts as when it equals.
fn mcp_result(n: u64) -> serde_json::Value {
    json!({"jsonrpc":"2.0","id":n,"result":{"content":[{"type":"text","text":(n + 2).to_string()}],"isError":false}})
}

// ── Processes and their costs ────────────────────────────────────────────────────────────────────────────

/// `uplink gateway` as a child process, started by the tests' helper: in a state directory of its own (removed
/// with it), its banner read and the rest of its output read as it comes, so that it never blocks on a full
/// pipe. Killed when dropped; [`GatewayProcess::stop`] also waits until it is gone.
struct GatewayProcess {
    process: Running,
    addr: SocketAddr,
}

impl GatewayProcess {
    /// As deployed: with its store (the audit log).
    async fn start() -> GatewayProcess {
        GatewayProcess::start_with(&["--auto-approve", "Bench"]).await
    }

    async fn start_with(extra: &[&str]) -> GatewayProcess {
        GatewayProcess::start_on("127.0.0.1:0", extra).await
    }

    /// On `listen` (a restart takes the address of the gateway before it).
    async fn start_on(listen: &str, extra: &[&str]) -> GatewayProcess {
        GatewayProcess::start_in(listen, extra, None).await
    }

    /// On `listen`, keeping its store in `state` (a restart finds what the gateway before it kept), or in a
    /// fresh directory of its own.
    async fn start_in(listen: &str, extra: &[&str], state: Option<&std::path::Path>) -> GatewayProcess {
        let far = far_wrapper();
        let mut program = Program::gateway_on(env!("CARGO_BIN_EXE_uplink"), listen)
            .args(["--sled-token", SLED_TOKEN, "--admin-token", ADMIN_TOKEN])
            .args(extra)
            .wrapped(&far.iter().map(String::as_str).collect::<Vec<_>>());
        if let Some(dir) = state {
            program = program.state_dir(dir);
        }
        let process = program.start().await;
        let addr = process.base_url().strip_prefix("http://").unwrap().parse().unwrap();
        GatewayProcess { process, addr }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills the gateway and waits until it is gone, so that what is measured next has the machine without it.
    async fn stop(mut self) {
        self.process.kill().await;
    }

    fn cpu(&self) -> Duration {
        process_cpu(&self.pid().to_string())
    }

    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
        kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
    }

    /// Waits until the gateway lists `n` connected sleds: a sled sees its link up before the gateway has read
    /// its `identity`, and an MCP request for it before then would find no such project.
    async fn wait_connected(&self, n: usize) {
        self.wait_connected_every(n, Duration::from_millis(10)).await;
    }

    /// As [`GatewayProcess::wait_connected`], asking every `every` (each listing of many sleds costs the
    /// gateway CPU of its own).
    async fn wait_connected_every(&self, n: usize, every: Duration) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut client = http_client(self.addr).await;
            let request = Request::get("/api/sleds")
                .header("host", self.addr.to_string())
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let body = client.send_request(request).await.unwrap().into_body().collect().await.unwrap().to_bytes();
            let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let connected = list["sleds"].as_array().unwrap().iter().filter(|s| s["connected"] == true).count();
            if connected >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {connected} of {n} sleds registered at the gateway");
            tokio::time::sleep(every).await;
        }
    }

    fn sled_url(&self) -> String {
        format!("ws://{}/api/sled-uplink", self.addr)
    }

    /// `GET` of `path` with the admin token: its JSON.
    async fn get(&self, path: &str) -> serde_json::Value {
        let mut client = http_client(self.addr).await;
        let request = Request::get(path)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let body = client.send_request(request).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    /// The permissions the gateway lists.
    async fn permissions(&self) -> Vec<serde_json::Value> {
        self.get("/api/permissions").await["permissions"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the gateway lists `n` pending permissions (with `back`, each on its sled's live connection
    /// again, none held for a sled that is away), asking every 250 ms.
    async fn wait_pending(&self, n: usize, back: bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let listed = self.permissions().await;
            let here = listed.iter().filter(|p| !back || p["sled_away"] == false).count();
            if here >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {here} of {n} permissions listed");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Approves the permission `id`.
    async fn approve(&self, id: &str) {
        let mut client = http_client(self.addr).await;
        let request = Request::post(format!("/api/permissions/{id}"))
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::new(Bytes::from_static(br#"{"approved":true}"#)))
            .unwrap();
        let status = client.send_request(request).await.unwrap().status();
        assert!(status.is_success(), "approving {id}: {status}");
    }
}

/// The CPU the far ends (the gateway, the echo server, the relay floor) run on, from `--far-cpu N`; none:
/// wherever the kernel puts them.
static FAR_CPU: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

/// What a far end's command line starts with: `taskset -c N` for `--far-cpu`'s CPU when one is given
/// (`taskset` keeps the process id), else nothing.
fn far_wrapper() -> Vec<String> {
    match FAR_CPU.get().copied().flatten() {
        Some(cpu) => vec!["taskset".to_owned(), "-c".to_owned(), cpu.to_string()],
        None => Vec::new(),
    }
}

/// A command for a far end, run as [`far_wrapper`] says.
fn far_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let wrapper = far_wrapper();
    match wrapper.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// CPU time of a process: the sum over its threads of the time they ran, from `/proc/PID/task/*/schedstat`
/// (nanoseconds; `/proc/PID/stat` counts only in 10 ms ticks). Threads that have ended are not counted; the
/// runtimes' worker threads live as long as the process.
fn process_cpu(pid: &str) -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("schedstat");
        // A thread may end between listing and reading.
        if let Ok(stat) = std::fs::read_to_string(path) {
            ns += stat.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        }
    }
    Duration::from_nanos(ns)
}

fn own_cpu() -> Duration {
    process_cpu("self")
}

// ── Latency statistics ───────────────────────────────────────────────────────────────────────────────────

struct Latencies(Vec<Duration>);

impl Latencies {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }
    /// Rate over `wall`, then p50, p99 and max.
    fn summary(&self, wall: Duration) -> String {
        let rate = self.0.len() as f64 / wall.as_secs_f64();
        format!("{rate:.0}/s  p50 {}  p99 {}  max {}", us(self.pct(0.5)), us(self.pct(0.99)), us(self.max()))
    }
    fn over(&self, limit: Duration) -> usize {
        self.0.iter().filter(|d| **d > limit).count()
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

// ── Sleds and servers in this process ────────────────────────────────────────────────────────────────────

async fn start_sled(gateway_url: String, project: &str, mcp_url: &str) -> Uplink {
    let mut cfg = UplinkConfig::new(gateway_url, project);
    cfg.token = Some(SLED_TOKEN.to_owned());
    cfg.local_mcp_url = mcp_url.to_owned();
    // As many local calls at once as the relay bench keeps outstanding: at the default (32), the calls
    // beyond are answered at once with a "busy" error, which the bench counts as the error it is.
    cfg.sled.max_mcp_calls = 64;
    let uplink = Uplink::start(cfg).unwrap();
    let mut link = uplink.watch_link();
    tokio::time::timeout(Duration::from_secs(60), link.wait_for(|s| matches!(s, LinkState::Connected { .. })))
        .await
        .expect("the sled connects within a minute")
        .unwrap();
    uplink
}

/// A minimal local MCP server: `add(a, b)` for every POST, answered with the call's own id.
async fn start_mcp_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            tcp.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let call: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let n = call["id"].as_u64().unwrap_or(0);
                    let mut response = hyper::Response::new(Full::new(Bytes::from(mcp_result(n).to_string())));
                    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    addr
}

/// One keep-alive HTTP/1.1 connection with `TCP_NODELAY`.
async fn http_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// `workers` concurrent keep-alive clients each POST `per_worker` bodies to `path` (round robin over the
/// paths); returns every latency and the wall time.
/// `workers` keep-alive connections each POST `per_worker` numbered calls in turn; only an answer equal to
/// what the MCP server produced for that very call counts (its latency is kept). Everything else is an
/// error, counted by kind, and the bench stops after printing them: a figure made of errors is no figure.
async fn post_load(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    bearer: Option<&'static str>,
    workers: usize,
    per_worker: usize,
) -> (Latencies, Duration) {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let paths = paths.clone();
        tasks.spawn(async move {
            let mut client = http_client(addr).await;
            let mut lat = Vec::with_capacity(per_worker);
            let mut errors = std::collections::BTreeMap::<String, usize>::new();
            for i in 0..per_worker {
                let n = (w * per_worker + i) as u64;
                let path = &paths[n as usize % paths.len()];
                let mut request = Request::post(path.as_str())
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(mcp_body(n))))
                    .unwrap();
                if let Some(token) = bearer {
                    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
                }
                let t = Instant::now();
                client.ready().await.unwrap();
                let response = client.send_request(request).await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let took = t.elapsed();
                let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if status.is_success() && answer == mcp_result(n) {
                    lat.push(took);
                } else {
                    let what =
                        answer["error"]["message"].as_str().or(answer["error"].as_str()).unwrap_or("not the answer");
                    *errors.entry(format!("HTTP {status}: {what}")).or_default() += 1;
                }
            }
            (lat, errors)
        });
    }
    let mut all = Vec::with_capacity(workers * per_worker);
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    while let Some(done) = tasks.join_next().await {
        let (lat, errs) = done.unwrap();
        all.extend(lat);
        for (k, v) in errs {
            *errors.entry(k).or_default() += v;
        }
    }
    let wall = start.elapsed();
    if !errors.is_empty() {
        for (what, n) in &errors {
            println!("errors: {n} × {what}");
        }
        panic!("{} of {} requests were not answered correctly", errors.values().sum::<usize>(), workers * per_worker);
    }
    (Latencies(all), wall)
}

fn tool_input() -> serde_json::Value {
    json!({"command": "cargo test --workspace", "description": "Run the tests", "timeout": 120000})
}

// ── 2. Permission round trip vs a bare WebSocket echo ────────────────────────────────────────────────────

/// A bare tokio-tungstenite echo server: every text message is sent straight back.
async fn serve_echo(listener: TcpListener) {
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            tcp.set_nodelay(true).unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() && ws.send(message).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The echo server in this process.
async fn spawn_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_echo(listener));
    addr
}

/// The echo server as a child process (this binary, run as `echo-server`), placed as the gateway is.
struct EchoProcess {
    child: Child,
    addr: SocketAddr,
}

/// This binary as a far end in `mode`; the child, and the addresses its first line names after
/// `listening on `.
fn start_far_child(mode: &str) -> (Child, Vec<SocketAddr>) {
    let mut child = far_command(std::env::current_exe().unwrap())
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {mode}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addrs = line.split("listening on ").nth(1).unwrap().split_whitespace().map(|a| a.parse().unwrap());
    (child, addrs.collect())
}

impl EchoProcess {
    fn start() -> EchoProcess {
        EchoProcess::start_as("echo-server")
    }

    /// `echo-server` or `echo-server-hub`.
    fn start_as(mode: &str) -> EchoProcess {
        let (child, addrs) = start_far_child(mode);
        EchoProcess { child, addr: addrs[0] }
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `echo-server` (or `echo-server-hub`, [`serve_echo_via_hub`]): serves echoes until killed.
fn echo_server_main(via_hub: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("echo listening on {}", listener.local_addr().unwrap());
        if via_hub { serve_echo_via_hub(listener).await } else { serve_echo(listener).await }
    });
}

/// Echoes shaped as the gateway is: each connection's task hands every frame to one task that all
/// connections share (as the gateway's connections hand theirs to the hub task), which hands it back
/// through the connection's own queue. No protocol: what the shape costs.
async fn serve_echo_via_hub(listener: TcpListener) {
    type Back = tokio::sync::mpsc::Sender<Message>;
    let (hub, mut frames) = tokio::sync::mpsc::channel::<(Message, Back)>(1024);
    tokio::spawn(async move {
        while let Some((frame, back)) = frames.recv().await {
            let _ = back.send(frame).await;
        }
    });
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        let hub = hub.clone();
        tokio::spawn(async move {
            tcp.set_nodelay(true).unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let (back, mut queue) = tokio::sync::mpsc::channel::<Message>(64);
            loop {
                tokio::select! {
                    read = ws.next() => match read {
                        Some(Ok(message)) if message.is_text() => {
                            if hub.send((message, back.clone())).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    Some(message) = queue.recv() => {
                        if ws.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

type EchoClient = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn echo_client(addr: SocketAddr) -> EchoClient {
    tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/"), None, true).await.unwrap().0
}

/// `n` sequential echoes of `frame` by one task that writes and reads its own socket.
async fn echo_round_trips(ws: &mut EchoClient, frame: &str, n: usize, lat: &mut Vec<Duration>) {
    for _ in 0..n {
        let t = Instant::now();
        ws.send(Message::text(frame)).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        lat.push(t.elapsed());
        assert!(reply.is_text());
    }
}

/// As [`echo_round_trips`], but the socket is owned by a task of its own and the caller reaches it through a
/// channel and gets the answer through a one-shot, as any handle-and-task design (ours included) does: the
/// floor of the architecture rather than of the socket.
async fn echo_via_task_round_trips(addr: SocketAddr, frame: &str, n: usize) -> Latencies {
    let mut ws = echo_client(addr).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, tokio::sync::oneshot::Sender<Message>)>(16);
    tokio::spawn(async move {
        while let Some((text, reply)) = rx.recv().await {
            ws.send(Message::text(text)).await.unwrap();
            let _ = reply.send(ws.next().await.unwrap().unwrap());
        }
    });
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.send((frame.to_owned(), reply)).await.unwrap();
        let answer = answer.await.unwrap();
        lat.push(t.elapsed());
        assert!(answer.is_text());
    }
    Latencies(lat)
}

/// The gateway's server in this process, configured as the child process is.
async fn in_process_gateway() -> SocketAddr {
    use uplink_tokio::gateway::{GatewayServer, GatewayServerConfig};
    let mut config = GatewayServerConfig::new("127.0.0.1:0".parse().unwrap(), vec![SLED_TOKEN.into()], ADMIN_TOKEN);
    config.hub.auto_approve = ["Bench".to_owned()].into();
    let server = GatewayServer::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    addr
}

/// `n` sequential permissions through `sled`.
async fn permission_round_trips(sled: &Uplink, n: usize, lat: &mut Vec<Duration>) {
    let input = tool_input();
    for _ in 0..n {
        let t = Instant::now();
        let decision = sled.request_permission("Bench", &input).await;
        lat.push(t.elapsed());
        assert_eq!(decision, Decision::Approve);
    }
}

fn print_latencies(what: &str, l: &Latencies) {
    println!("{what}: p50 {}  p99 {}  max {}", us(l.pct(0.5)), us(l.pct(0.99)), us(l.max()));
}

/// Permissions through a sled connected to `gateway` against echoes from `echo`, in ten alternating blocks
/// after a warm-up of each, so that a drift of the machine's speed falls on both alike.
/// With `far`, the two far ends' process ids: their CPU time per round trip is printed too.
async fn permission_against_echo(
    gateway: SocketAddr,
    echo: SocketAddr,
    frame: &str,
    n: usize,
    far: Option<(u32, u32)>,
) -> (Duration, Duration) {
    let sled = start_sled(format!("ws://{gateway}/api/sled-uplink"), "bench", "http://127.0.0.1:9/mcp").await;
    let mut ws = echo_client(echo).await;
    let (mut perm, mut floor) = (Vec::with_capacity(n), Vec::with_capacity(n));
    permission_round_trips(&sled, 200, &mut Vec::new()).await;
    echo_round_trips(&mut ws, frame, 200, &mut Vec::new()).await;
    let cpu = |pid: Option<u32>| pid.map_or(Duration::ZERO, |p| process_cpu(&p.to_string()));
    let (mut gateway_cpu, mut echo_cpu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..10 {
        let before = cpu(far.map(|f| f.0));
        permission_round_trips(&sled, n / 10, &mut perm).await;
        gateway_cpu += cpu(far.map(|f| f.0)) - before;
        let before = cpu(far.map(|f| f.1));
        echo_round_trips(&mut ws, frame, n / 10, &mut floor).await;
        echo_cpu += cpu(far.map(|f| f.1)) - before;
    }
    sled.shutdown().await;
    let (perm, floor) = (Latencies(perm), Latencies(floor));
    print_latencies("permission", &perm);
    print_latencies("echo floor", &floor);
    if far.is_some() {
        let per = |d: Duration, l: &Latencies| d.as_secs_f64() * 1e6 / l.0.len() as f64;
        println!(
            "far end's CPU per round trip: gateway {:.1} µs, echo server {:.1} µs",
            per(gateway_cpu, &perm),
            per(echo_cpu, &floor)
        );
    }
    let ratio = perm.pct(0.5).as_secs_f64() / floor.pct(0.5).as_secs_f64();
    println!("ratio p50: {ratio:.2}x (target ≤ 1.15x)");
    (perm.pct(0.5), floor.pct(0.5))
}

/// `n` audit records like a rule's decision's, committed one by one to a store of their own, as the gateway
/// commits a lone decision: the durable part of the deployed gateway's round trip, done directly.
async fn store_commit_floor(n: usize) -> Latencies {
    use uplink_tokio::store::sqlite::{SqliteStore, StoreOptions};
    use uplink_tokio::store::{Change, Entry, Store as _};
    let dir = std::env::temp_dir().join(format!("uplink-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let lat = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let mut store = SqliteStore::open(&dir, StoreOptions::default()).unwrap();
            // As the gateway's recorder hands it over: the sled's text, written (canonical) at the commit.
            let input: std::sync::Arc<str> = std::sync::Arc::from(tool_input().to_string());
            let mut lat = Vec::with_capacity(n);
            for i in 0..n + 200 {
                let t = Instant::now();
                let mut entry = Entry::new(1_780_000_000_000 + i as u64, "auto")
                    .with("credential", "sled token 1")
                    .with("req_id", format!("{i:032}"))
                    .with("decided_by", "rule")
                    .with("rule", 1)
                    .with("waited_ms", 0)
                    .with_input(input.clone(), None);
                (entry.project, entry.tool, entry.outcome) =
                    (Some("bench".into()), Some("Bench".into()), Some("approve".into()));
                store.commit(&[Change::Record(entry)]).unwrap();
                if i >= 200 {
                    lat.push(t.elapsed());
                }
            }
            lat
        }
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Latencies(lat)
}

async fn bench_rtt(n: usize) {
    println!("\n## 2. Permission round trip (sequential, {n} requests) vs bare tokio-tungstenite echo");
    // The echo frame is as large as the perm_request the sled sends.
    let frame = json!({"type": "perm_request", "req_id": "00000000000000000000000000000042",
        "payload": {"tool_name": "Bench", "tool_input": tool_input()}})
    .to_string();

    println!("### The far end in another process (as deployed: `uplink gateway`; a child echo server)");
    let (gateway, echo) = (GatewayProcess::start().await, EchoProcess::start());
    let deployed =
        permission_against_echo(gateway.addr, echo.addr, &frame, n, Some((gateway.pid(), echo.child.id()))).await;
    gateway.stop().await;
    drop(echo);
    // The deployed gateway answers only once the decision's record is committed: its floor is the echo
    // plus one commit of such a record, done directly.
    let commit = store_commit_floor(n).await;
    print_latencies("one audit record committed alone (the store, in this process)", &commit);
    let floor = deployed.1 + commit.pct(0.5);
    println!(
        "the deployed gateway against its floor (the echo + one commit, p50 {}): {:.2}x",
        us(floor),
        deployed.0.as_secs_f64() / floor.as_secs_f64()
    );
    println!("### The same, the gateway without its store (`--no-store`: no audit record to commit first)");
    let (gateway, echo) =
        (GatewayProcess::start_with(&["--auto-approve", "Bench", "--no-store"]).await, EchoProcess::start());
    permission_against_echo(gateway.addr, echo.addr, &frame, n, Some((gateway.pid(), echo.child.id()))).await;
    gateway.stop().await;
    // The gateway's shape without its work: every frame through one shared task and back.
    let hub_echo = EchoProcess::start_as("echo-server-hub");
    let (mut bare, mut via_hub) = (echo_client(echo.addr).await, echo_client(hub_echo.addr).await);
    echo_round_trips(&mut bare, &frame, 200, &mut Vec::new()).await;
    echo_round_trips(&mut via_hub, &frame, 200, &mut Vec::new()).await;
    let (mut bare_lat, mut hub_lat) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..10 {
        echo_round_trips(&mut bare, &frame, n / 10, &mut bare_lat).await;
        echo_round_trips(&mut via_hub, &frame, n / 10, &mut hub_lat).await;
    }
    let (bare_lat, hub_lat) = (Latencies(bare_lat), Latencies(hub_lat));
    print_latencies("echo floor", &bare_lat);
    print_latencies("echo through one shared task, as the gateway's hub (a child process)", &hub_lat);
    println!("ratio p50: {:.2}x the bare echo", hub_lat.pct(0.5).as_secs_f64() / bare_lat.pct(0.5).as_secs_f64());
    drop((echo, hub_echo));

    println!("### The far end in this process (the gateway's server; an echo server)");
    let echo = spawn_echo().await;
    permission_against_echo(in_process_gateway().await, echo, &frame, n, None).await;
    let _ = echo_via_task_round_trips(echo, &frame, 200).await;
    print_latencies("echo through a socket-owning task", &echo_via_task_round_trips(echo, &frame, n).await);
}

// ── 3. Permission throughput with 64 in flight ───────────────────────────────────────────────────────────

/// `workers` concurrent callers each ask `per_worker` permissions, round robin over `uplinks`; every one must
/// be approved. Returns each round trip and the wall time.
async fn permission_load(uplinks: Arc<Vec<Uplink>>, workers: usize, per_worker: usize) -> (Latencies, Duration) {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let uplinks = uplinks.clone();
        tasks.spawn(async move {
            let input = tool_input();
            let mut lat = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                let sled = &uplinks[(w * per_worker + i) % uplinks.len()];
                let t = Instant::now();
                assert_eq!(sled.request_permission("Bench", &input).await, Decision::Approve);
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let mut all = Vec::with_capacity(workers * per_worker);
    while let Some(lat) = tasks.join_next().await {
        all.extend(lat.unwrap());
    }
    (Latencies(all), start.elapsed())
}

/// The floor of bench 3: `total` echoes of `frame`, `in_flight` at a time, by callers that reach one
/// socket-owning task through a channel and get their answer through a one-shot, as the sled's handles do;
/// the task writes what is waiting in one flush. The echo server is a child process, so this process's CPU
/// is the client side alone. Returns the wall time.
async fn echo_throughput(addr: SocketAddr, frame: &str, total: usize, in_flight: usize) -> Duration {
    use tokio::sync::{mpsc, oneshot};
    let (mut sink, mut stream) = echo_client(addr).await.split();
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<()>>(1024);
    let frame = frame.to_owned();
    tokio::spawn(async move {
        // Echoes come back in order, so the waiting callers are answered in order.
        let mut waiting = std::collections::VecDeque::new();
        loop {
            tokio::select! {
                reply = rx.recv() => {
                    let Some(reply) = reply else { break };
                    waiting.push_back(reply);
                    sink.feed(Message::text(frame.as_str())).await.unwrap();
                    while let Ok(reply) = rx.try_recv() {
                        waiting.push_back(reply);
                        sink.feed(Message::text(frame.as_str())).await.unwrap();
                    }
                    sink.flush().await.unwrap();
                }
                echo = stream.next() => {
                    // The server ends when the bench is done with it.
                    let Some(Ok(echo)) = echo else { break };
                    assert!(echo.is_text());
                    let _ = waiting.pop_front().unwrap().send(());
                }
            }
        }
    });
    let start = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let tx = tx.clone();
        callers.spawn(async move {
            for _ in 0..total / in_flight {
                let (reply, answer) = oneshot::channel();
                tx.send(reply).await.unwrap();
                answer.await.unwrap();
            }
        });
    }
    while callers.join_next().await.is_some() {}
    start.elapsed()
}

/// One run of bench 3: CPU per permission of this process (the sled) and of the gateway, with `resume` on
/// both sides or off.
async fn throughput_run(total: usize, in_flight: usize, resume: bool) -> (f64, f64) {
    let gateway = GatewayProcess::start_with(if resume {
        &["--auto-approve", "Bench"]
    } else {
        &["--auto-approve", "Bench", "--no-resume"]
    })
    .await;
    let mut cfg = UplinkConfig::new(gateway.sled_url(), "bench");
    cfg.token = Some(SLED_TOKEN.to_owned());
    cfg.local_mcp_url = "http://127.0.0.1:9/mcp".to_owned();
    cfg.sled.resume = resume;
    let sled = Uplink::start(cfg).unwrap();
    let mut link = sled.watch_link();
    link.wait_for(|s| matches!(s, LinkState::Connected { .. })).await.unwrap();
    let (sled_cpu0, gw_cpu0) = (own_cpu(), gateway.cpu());
    let (lat, wall) = permission_load(Arc::new(vec![sled.clone()]), in_flight, total / in_flight).await;
    let done = lat.0.len() as f64;
    let sled_cpu = (own_cpu() - sled_cpu0).as_secs_f64() * 1e6 / done;
    let gw_cpu = (gateway.cpu() - gw_cpu0).as_secs_f64() * 1e6 / done;
    println!(
        "throughput (resume {}): {:.0} permissions/s over {wall:.2?}  p50 {}  p99 {}; CPU per permission: sled \
         process {sled_cpu:.1} µs (target ≤ 10 µs), gateway process {gw_cpu:.1} µs",
        if resume { "on" } else { "off" },
        done / wall.as_secs_f64(),
        us(lat.pct(0.5)),
        us(lat.pct(0.99))
    );
    sled.shutdown().await;
    gateway.stop().await;
    (sled_cpu, gw_cpu)
}

async fn bench_throughput(total: usize) {
    const IN_FLIGHT: usize = 64;
    println!("\n## 3. Permission throughput: {total} requests, {IN_FLIGHT} in flight");
    // `resume` on (the default) and off, alternated three times: what keeping requests across a drop costs.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        on.push(throughput_run(total, IN_FLIGHT, true).await);
        off.push(throughput_run(total, IN_FLIGHT, false).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut sled_on, mut gw_on): (Vec<f64>, Vec<f64>) = on.into_iter().unzip();
    let (mut sled_off, mut gw_off): (Vec<f64>, Vec<f64>) = off.into_iter().unzip();
    let (sled_cpu, gw_on, sled_off, gw_off) =
        (median(&mut sled_on), median(&mut gw_on), median(&mut sled_off), median(&mut gw_off));
    println!(
        "resume's cost, medians of three: sled {sled_cpu:.1} µs vs {sled_off:.1} µs off ({:+.1}%), gateway \
         {gw_on:.1} µs vs {gw_off:.1} µs off ({:+.1}%) (target ≤ +3%)",
        (sled_cpu / sled_off - 1.0) * 100.0,
        (gw_on / gw_off - 1.0) * 100.0
    );

    let frame = json!({"type": "perm_request", "req_id": "00000000000000000000000000000042",
        "payload": {"tool_name": "Bench", "tool_input": tool_input()}})
    .to_string();
    let echo = EchoProcess::start();
    let _ = echo_throughput(echo.addr, &frame, IN_FLIGHT * 100, IN_FLIGHT).await;
    let cpu0 = own_cpu();
    let wall = echo_throughput(echo.addr, &frame, total, IN_FLIGHT).await;
    let floor_cpu = (own_cpu() - cpu0).as_secs_f64() * 1e6 / total as f64;
    println!(
        "floor, echoes through a socket-owning task, {IN_FLIGHT} in flight: {:.0}/s, CPU per echo {floor_cpu:.1} µs \
         (this process)",
        total as f64 / wall.as_secs_f64()
    );
    println!("ratio of CPU per permission to the floor: {:.2}x", sled_cpu / floor_cpu);
}

// ── 4. MCP relay vs direct HTTP ──────────────────────────────────────────────────────────────────────────

async fn bench_relay(total: usize) {
    const OUTSTANDING: usize = 64;
    println!("\n## 4. MCP relay, {OUTSTANDING} outstanding, {total} requests: gateway → sled → local server → back");
    let gateway = GatewayProcess::start().await;
    let floor = RelayFloorProcess::start();
    let mcp = start_mcp_server().await;
    floor_far_end(floor.ws, mcp).await;
    let sled = start_sled(gateway.sled_url(), "bench", &format!("http://{mcp}/mcp")).await;
    gateway.wait_connected(1).await;
    let per = total / OUTSTANDING;
    let relay_paths = Arc::new(vec!["/api/sleds/bench/rpc".to_owned()]);
    let direct_paths = Arc::new(vec!["/mcp".to_owned()]);
    let _ = post_load(gateway.addr, relay_paths.clone(), Some(ADMIN_TOKEN), OUTSTANDING, 20).await;
    let _ = post_load(floor.http, direct_paths.clone(), None, OUTSTANDING, 20).await;
    let _ = post_load(mcp, direct_paths.clone(), None, OUTSTANDING, 20).await;
    // CPU of every process per request shows what bounds throughput on a machine with few cores.
    let cpu = || (own_cpu(), gateway.cpu() + floor.cpu());
    let per_request = |d: Duration, l: &Latencies| d.as_secs_f64() * 1e6 / l.0.len() as f64;
    let rate = |l: &Latencies, wall: Duration| l.0.len() as f64 / wall.as_secs_f64();
    let mut rates = Vec::new();
    for (name, addr, paths, bearer) in [
        ("direct HTTP", mcp, &direct_paths, None),
        ("relay floor (the same hops, done directly)", floor.http, &direct_paths, None),
        ("relay through uplink", gateway.addr, &relay_paths, Some(ADMIN_TOKEN)),
    ] {
        let before = cpu();
        let (l, wall) = post_load(addr, paths.clone(), bearer, OUTSTANDING, per).await;
        let after = cpu();
        println!(
            "{name}: {:.0} responses/s  p50 {}  p99 {}  max {}  over 10 ms: {}",
            rate(&l, wall),
            us(l.pct(0.5)),
            us(l.pct(0.99)),
            us(l.max()),
            l.over(Duration::from_millis(10)),
        );
        println!(
            "  CPU per request: {:.1} µs (this process {:.1}, the child {:.1})",
            per_request((after.0 - before.0) + (after.1 - before.1), &l),
            per_request(after.0 - before.0, &l),
            per_request(after.1 - before.1, &l),
        );
        rates.push(rate(&l, wall));
    }
    println!(
        "ratio throughput: relay {:.2}x direct (target ≥ 0.45x; max latency target ≤ 5 ms); floor {:.2}x direct; \
         relay {:.2}x floor",
        rates[2] / rates[0],
        rates[1] / rates[0],
        rates[2] / rates[1]
    );
    sled.shutdown().await;
    gateway.stop().await;
}

// ── 4, floor: the relay's extra hops done directly ─────────────────────────────────────────────────────────

/// The relay's shape with nothing of uplink in it: an HTTP server (placed as the gateway is, in a child
/// process) that sends each body over one WebSocket, numbered, to a far end (placed as the sled is, in this
/// process) that POSTs it to the same local server with hyper's pooled client and sends the answer back.
/// Both WebSocket ends own their socket in one task, which writes whatever is queued and then flushes once.
/// No protocol, no JSON, no authentication, no records: what two HTTP hops and two WebSocket hops cost.
struct RelayFloorProcess {
    child: Child,
    http: SocketAddr,
    ws: SocketAddr,
}

impl RelayFloorProcess {
    fn start() -> RelayFloorProcess {
        let (child, addrs) = start_far_child("relay-floor");
        RelayFloorProcess { child, http: addrs[0], ws: addrs[1] }
    }

    fn cpu(&self) -> Duration {
        process_cpu(&self.child.id().to_string())
    }
}

impl Drop for RelayFloorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type FloorReply = tokio::sync::oneshot::Sender<Bytes>;

/// `relay-floor`: the near end, until killed. The far end connects to the second address first.
fn relay_floor_main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("relay floor listening on {} {}", http.local_addr().unwrap(), ws.local_addr().unwrap());
        let (tcp, _) = ws.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<(Bytes, FloorReply)>(256);
        tokio::spawn(floor_near_link(ws, rx));
        loop {
            let (tcp, _) = http.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        tx.send((body, reply)).await.unwrap();
                        let mut response = hyper::Response::new(Full::new(answer.await.unwrap()));
                        response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
}

/// The near end's socket-owning task: numbers each body, writes everything queued, flushes once; matches
/// each answer to its number.
async fn floor_near_link(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    mut rx: tokio::sync::mpsc::Receiver<(Bytes, FloorReply)>,
) {
    let mut pending = std::collections::HashMap::<u64, FloorReply>::new();
    let mut next = 0u64;
    loop {
        tokio::select! {
            Some(first) = rx.recv() => {
                let mut item = Some(first);
                while let Some((body, reply)) = item.take().or_else(|| rx.try_recv().ok()) {
                    next += 1;
                    pending.insert(next, reply);
                    let mut frame = Vec::with_capacity(body.len() + 21);
                    frame.extend_from_slice(next.to_string().as_bytes());
                    frame.push(b' ');
                    frame.extend_from_slice(&body);
                    ws.feed(Message::text(String::from_utf8(frame).unwrap())).await.unwrap();
                }
                ws.flush().await.unwrap();
            }
            Some(Ok(message)) = ws.next() => {
                let data = message.into_data();
                let space = data.iter().position(|b| *b == b' ').unwrap();
                let id: u64 = std::str::from_utf8(&data[..space]).unwrap().parse().unwrap();
                let _ = pending.remove(&id).unwrap().send(data.slice(space + 1..));
            }
            else => return,
        }
    }
}

/// The far end, in this process: reads numbered bodies, POSTs each to `mcp` in a task of its own, writes
/// the numbered answers back, everything queued at once.
async fn floor_far_end(ws: SocketAddr, mcp: SocketAddr) {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(format!("ws://{ws}/"), None, true).await.unwrap();
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let uri: hyper::Uri = format!("http://{mcp}/mcp").parse().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(256);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(Ok(message)) = ws.next() => {
                    let data = message.into_data();
                    let space = data.iter().position(|b| *b == b' ').unwrap();
                    let (client, uri, tx) = (client.clone(), uri.clone(), tx.clone());
                    tokio::spawn(async move {
                        let request = Request::post(uri)
                            .header("content-type", "application/json")
                            .header("accept", "application/json, text/event-stream")
                            .body(Full::new(data.slice(space + 1..)))
                            .unwrap();
                        let response = client.request(request).await.unwrap();
                        let body = response.into_body().collect().await.unwrap().to_bytes();
                        let mut frame = Vec::with_capacity(space + 1 + body.len());
                        frame.extend_from_slice(&data[..=space]);
                        frame.extend_from_slice(&body);
                        let _ = tx.send(Message::text(String::from_utf8(frame).unwrap())).await;
                    });
                }
                Some(first) = rx.recv() => {
                    let mut item = Some(first);
                    while let Some(message) = item.take().or_else(|| rx.try_recv().ok()) {
                        ws.feed(message).await.unwrap();
                    }
                    ws.flush().await.unwrap();
                }
                else => return,
            }
        }
    });
}

// ── 5. Gateway scale ─────────────────────────────────────────────────────────────────────────────────────

async fn bench_scale(sleds: usize, idle: Duration, restart: bool, pending: usize) {
    println!("\n## 5. Gateway scale: {sleds} sleds, idle window {idle:?}");
    // A restart keeps the store: the new gateway finds what the old one kept.
    let state = uplink_tests::temp_dir();
    let gateway = GatewayProcess::start_in("127.0.0.1:0", &["--auto-approve", "Bench"], Some(state.path())).await;
    let mcp = start_mcp_server().await;
    let mcp_url = format!("http://{mcp}/mcp");
    let rss0 = gateway.rss();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // At most 256 handshakes at a time, so that the listen backlog never overflows.
    let wave = Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..sleds {
        let (url, mcp_url, wave) = (gateway.sled_url(), mcp_url.clone(), wave.clone());
        tasks.spawn(async move {
            let _permit = wave.acquire_owned().await.unwrap();
            start_sled(url, &format!("sled-{i:05}"), &mcp_url).await
        });
    }
    let mut uplinks = Vec::with_capacity(sleds);
    while let Some(u) = tasks.join_next().await {
        uplinks.push(u.unwrap());
    }
    gateway.wait_connected(sleds).await;
    let connect_all = start.elapsed();
    // Let the connections settle (first heartbeats and pings), then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = gateway.rss();
    let (cpu0, t0) = (gateway.cpu(), Instant::now());
    tokio::time::sleep(idle).await;
    let cpu_share = (gateway.cpu() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let per_sled = rss1.saturating_sub(rss0) as f64 / sleds as f64;
    println!("connect all: {connect_all:.2?} ({:.0} sleds/s)", sleds as f64 / connect_all.as_secs_f64());
    println!(
        "gateway RSS: {:.1} MiB idle before, {:.1} MiB with {sleds} sleds: {:.1} KiB per sled (target ≤ 32 KiB)",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        per_sled / 1024.0
    );
    println!("gateway CPU while they heartbeat: {:.2}% of one core (target < 5%)", cpu_share * 100.0);
    // Spread over at most 1,000 sleds: each sled keeps a connection to the local server, and the open-file
    // limit of this process must hold them beside the WebSocket connections.
    let spread = sleds.min(1000);
    let paths = Arc::new((0..spread).map(|i| format!("/api/sleds/sled-{i:05}/rpc")).collect::<Vec<_>>());
    // A first request per sled opens its connection to the local server; the measured round runs warm.
    let _ = post_load(gateway.addr, paths.clone(), Some(ADMIN_TOKEN), 64, spread.div_ceil(64)).await;
    let (relay, wall) = post_load(gateway.addr, paths, Some(ADMIN_TOKEN), 64, 20_000 / 64).await;
    println!("MCP relay spread over {spread} sleds, 64 outstanding: {}", relay.summary(wall));
    // Permission round trips while every sled stays connected: 64 at a time, spread over all the sleds.
    let uplinks = Arc::new(uplinks);
    let (lat, wall) = permission_load(uplinks.clone(), 64, 20_000 / 64).await;
    println!("permissions spread over {sleds} sleds, 64 in flight: {}", lat.summary(wall));
    let gateway = if restart {
        bench_restart(gateway, &uplinks, pending, state.path()).await;
        None
    } else {
        Some(gateway)
    };
    for u in uplinks.iter() {
        u.shutdown().await;
    }
    if let Some(gateway) = gateway {
        gateway.stop().await;
    }
}

/// The gateway stops (SIGTERM: as a deployment restarts it) and a new one starts on its address and its store,
/// with `pending` requests waiting for people across it (spread over the sleds): how long until every sled
/// is identified again and every request is pending again, none denied, with the sleds' default jittered
/// back-off; and the new gateway's CPU over each quarter second meanwhile (targets: all back within 30 s,
/// never above one core). Then every request is approved, and must be approved at its sled.
async fn bench_restart(gateway: GatewayProcess, uplinks: &[Uplink], pending: usize, state: &std::path::Path) {
    let sleds = uplinks.len();
    let waiting: Vec<_> = (0..pending)
        .map(|i| {
            let uplink = uplinks[i % sleds].clone();
            tokio::spawn(
                async move { uplink.request_permission("Write", &json!({"file_path": format!("f{i}")})).await },
            )
        })
        .collect();
    gateway.wait_pending(pending, false).await;
    let listen = gateway.addr.to_string();
    gateway.process.terminate();
    gateway.stop().await;
    let down = Instant::now();
    let next = GatewayProcess::start_in(&listen, &["--auto-approve", "Bench"], Some(state)).await;
    let started = down.elapsed();
    let listed = next.permissions().await.len();
    // Sample the new gateway's CPU every 250 ms while the sleds come back.
    let pid = next.pid().to_string();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peak = 0.0f64;
        let (mut cpu, mut at) = (process_cpu(&pid), Instant::now());
        loop {
            tokio::select! {
                _ = &mut stop_rx => return peak,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let (cpu1, at1) = (process_cpu(&pid), Instant::now());
            peak = peak.max((cpu1 - cpu).as_secs_f64() / (at1 - at).as_secs_f64());
            (cpu, at) = (cpu1, at1);
        }
    });
    next.wait_connected_every(sleds, Duration::from_millis(500)).await;
    let back = down.elapsed();
    next.wait_pending(pending, true).await;
    let resumed = down.elapsed();
    let _ = stop_tx.send(());
    let peak = sampler.await.unwrap();
    let denied = waiting.iter().filter(|w| w.is_finished()).count();
    println!(
        "restart: the new gateway listened after {started:.2?}, listing {listed} of {pending} waiting requests at \
         once; all {sleds} sleds identified again after {back:.2?}, every request pending again at its sled's \
         connection after {resumed:.2?} (target ≤ 30 s), {denied} ended meanwhile (target 0); its CPU at most \
         {:.0}% of one core over any 250 ms (target ≤ 100%)",
        peak * 100.0
    );
    // Every one is approved, and the approval reaches the request it was made for.
    for p in next.permissions().await {
        next.approve(p["id"].as_str().unwrap()).await;
    }
    let mut approved = 0;
    for w in waiting {
        if tokio::time::timeout(Duration::from_secs(60), w).await.map(|d| d.unwrap()) == Ok(Decision::Approve) {
            approved += 1;
        }
    }
    println!("after the restart: {approved} of {pending} requests approved at their sleds (target: all)");
    next.stop().await;
}

// ── 5, wide: idle sleds up to the open-file limit ────────────────────────────────────────────────────────

/// A child process that runs `count` idle sleds named from `first`, prints `ready` once all are connected,
/// and lives until its standard input closes (the bench ends): sleds spread over processes, so that no
/// process of the bench holds more sockets than its open-file limit allows.
fn sled_host_main(args: &[String]) {
    let (url, count, first) = (args[0].clone(), args[1].parse::<usize>().unwrap(), args[2].parse::<usize>().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let wave = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for i in first..first + count {
            let (url, wave) = (url.clone(), wave.clone());
            tasks.spawn(async move {
                let _permit = wave.acquire_owned().await.unwrap();
                start_sled(url, &format!("sled-{i:05}"), "http://127.0.0.1:9/mcp").await
            });
        }
        let mut uplinks = Vec::with_capacity(count);
        while let Some(u) = tasks.join_next().await {
            uplinks.push(u.unwrap());
        }
        println!("ready");
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await;
        drop(uplinks);
    });
}

/// The open-file limit of this process (soft), from `/proc/self/limits`.
fn open_file_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Idle sleds added in steps up to `max` (each step a process of its own): the gateway's resident memory
/// and CPU per sled at each, so that the cost per sled is seen flat, or not, up to the open-file limit.
async fn bench_scale_wide(max: usize, idle: Duration) {
    let limit = open_file_limit();
    println!("\n## 5, wide: idle sleds in steps up to {max}; open-file limit of each process: {limit}");
    // Beyond the default budget (the open-file limit less the 1,024 files the gateway keeps), up to what the
    // open-file limit leaves.
    let budget = (max + 64).to_string();
    let gateway = GatewayProcess::start_with(&["--auto-approve", "Bench", "--max-connections", &budget]).await;
    let rss0 = gateway.rss();
    let mut hosts: Vec<Child> = Vec::new();
    let mut total = 0;
    for step in [1000, 5000, 10_000, 15_000, max].into_iter().filter(|s| *s <= max) {
        if step <= total {
            continue;
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["sled-host", &gateway.sled_url(), &(step - total).to_string(), &total.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "the sled host for sleds {total}..{step} failed");
        hosts.push(child);
        total = step;
        gateway.wait_connected_every(total, Duration::from_millis(500)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = gateway.rss();
        let (cpu0, t0) = (gateway.cpu(), Instant::now());
        tokio::time::sleep(idle).await;
        let share = (gateway.cpu() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
        println!(
            "{total:>6} sleds: gateway RSS {:.1} MiB, {:.1} KiB per sled (target ≤ 16 KiB); CPU {:.2}% of one core, \
             {:.2}% per 10,000 sleds (target ≤ 5%)",
            rss as f64 / 1048576.0,
            rss.saturating_sub(rss0) as f64 / total as f64 / 1024.0,
            share * 100.0,
            share * 100.0 * 10_000.0 / total as f64
        );
    }
    for mut host in hosts {
        drop(host.stdin.take());
        let _ = host.wait();
    }
    gateway.stop().await;
}

// ── Main ─────────────────────────────────────────────────────────────────────────────────────────────────

// ── 6. Decisions through 100 rules and the durable audit log ─────────────────────────────────────────────

/// `total` requests from one raw sled connection, `in_flight` at a time, each decided by the gateway's rules;
/// every answer must be the approval of its own request. Returns each round trip and the wall time.
async fn rule_decisions(gateway: &GatewayProcess, total: usize, in_flight: usize) -> (Latencies, Duration) {
    use std::collections::HashMap;
    let url = format!("{}?token={SLED_TOKEN}", gateway.sled_url());
    // With TCP_NODELAY, as the sled's own connections have it: no 40 ms of Nagle and delayed ACKs.
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let identity = json!({"type":"identity","req_id":"identity","payload":{"project":"team/web"}});
    sink.send(Message::text(identity.to_string())).await.unwrap();
    let frame = |i: usize| {
        json!({"type":"perm_request","req_id":format!("d{i}"),
            "payload":{"tool_name":"Bash","tool_input":{"command":format!("npm run test unit-{i}"),"description":"run one suite"}}})
        .to_string()
    };
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(in_flight * 2);
    let (mut next, mut lat) = (0, Vec::with_capacity(total));
    let start = Instant::now();
    while next < in_flight.min(total) {
        sent.insert(format!("d{next}"), Instant::now());
        sink.feed(Message::text(frame(next))).await.unwrap();
        next += 1;
    }
    sink.flush().await.unwrap();
    while lat.len() < total {
        let Message::Text(text) = stream.next().await.unwrap().unwrap() else { continue };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["type"] != "perm_response" {
            continue;
        }
        let at = sent.remove(v["req_id"].as_str().unwrap()).expect("an answer to a request in flight");
        assert_eq!(v["payload"]["approved"], true, "{text}");
        lat.push(at.elapsed());
        if next < total {
            sent.insert(format!("d{next}"), Instant::now());
            sink.send(Message::text(frame(next))).await.unwrap();
            next += 1;
        }
    }
    (Latencies(lat), start.elapsed())
}

async fn bench_decisions(total: usize, on_postgres: bool) {
    const IN_FLIGHT: usize = 64;
    // The two gateways alternated: without a store and with the embedded one; or (`--postgres`) with the
    // embedded one and with a PostgreSQL database on a throwaway server of the bench's own.
    let kinds: [&str; 2] = if on_postgres { ["sqlite", "postgres"] } else { ["none", "sqlite"] };
    println!(
        "
## 6. Decisions through 100 rules and the audit log: {total} requests, {IN_FLIGHT} in flight ({} against {})",
        kinds[1], kinds[0]
    );
    // 99 rules that look into every command and do not match it, then the allow that does.
    let mut rules: Vec<String> = (0..99).map(|k| format!("deny Bash(rm{k} *)")).collect();
    rules.push("allow Bash(npm run test *)".into());
    let mut args: Vec<String> = Vec::new();
    for r in &rules {
        args.extend(["--rule".to_owned(), r.clone()]);
    }
    let mut results = Vec::new();
    // Alternated, after a warm-up of each, so that a drift of the machine's speed falls on both alike.
    for round in 0..3 {
        for kind in kinds {
            let mut extra = args.clone();
            match kind {
                "none" => extra.push("--no-store".into()),
                "postgres" => {
                    let url = uplink_tests::postgres::Postgres::shared().fresh_database();
                    extra.extend(["--store".to_owned(), url]);
                }
                _ => {}
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let gateway = GatewayProcess::start_with(&extra).await;
            let _ = rule_decisions(&gateway, IN_FLIGHT * 20, IN_FLIGHT).await;
            let cpu0 = gateway.cpu();
            let (lat, wall) = rule_decisions(&gateway, total, IN_FLIGHT).await;
            let cpu = (gateway.cpu() - cpu0).as_secs_f64() * 1e6 / total as f64;
            gateway.stop().await;
            if round > 0 || total < 10_000 {
                results.push((kind, lat, wall, cpu));
            }
        }
    }
    for (kind, lat, wall, cpu) in &results {
        println!(
            "{kind:>9}: {:.0} decisions/s  p50 {}  p99 {}  gateway CPU {cpu:.1} µs per decision",
            lat.0.len() as f64 / wall.as_secs_f64(),
            us(lat.pct(0.5)),
            us(lat.pct(0.99))
        );
    }
    let best = |kind: &str, f: &dyn Fn(&Latencies) -> f64| {
        results.iter().filter(|r| r.0 == kind).map(|r| f(&r.1)).fold(f64::INFINITY, f64::min)
    };
    let rate = |kind: &str| {
        results.iter().filter(|r| r.0 == kind).map(|r| r.1.0.len() as f64 / r.2.as_secs_f64()).fold(0.0, f64::max)
    };
    let p = |q: f64| move |l: &Latencies| l.pct(q).as_secs_f64() * 1e6;
    let (floor, measured) = (kinds[0], kinds[1]);
    println!(
        "{measured}: {:.0} decisions/s ({:.2} of {floor}'s {:.0}; target with the audit log ≥ 20,000); added over {floor}: p50 {:+.0} µs, p99 {:+.0} µs          (target ≤ 2 ms)",
        rate(measured),
        rate(measured) / rate(floor),
        rate(floor),
        best(measured, &p(0.5)) - best(floor, &p(0.5)),
        best(measured, &p(0.99)) - best(floor, &p(0.99)),
    );
}

/// Bench 7: people's decisions made at the node holding the request against decisions made at another node
/// of a cluster (carried to the holder over the internal listener), on one PostgreSQL database.
async fn bench_cross(total: usize, people: usize) {
    const BATCH: usize = 200;
    println!(
        "\n## 7. Decisions at another node: {total} requests a round, asked {BATCH} at a time, {people} deciding at once"
    );
    let url = uplink_tests::postgres::Postgres::shared().fresh_database();
    let cluster = ["--store", url.as_str(), "--cluster-listen", "127.0.0.1:0", "--lease", "10s"];
    let a = GatewayProcess::start_with(&cluster).await;
    let b = GatewayProcess::start_with(&cluster).await;
    let url = format!("{}?token={SLED_TOKEN}", a.sled_url());
    let tcp = TcpStream::connect(a.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let identity = json!({"type":"identity","req_id":"identity","payload":{"project":"web"}});
    ws.send(Message::text(identity.to_string())).await.unwrap();
    let mut results: Vec<(&str, Latencies, Duration)> = Vec::new();
    let mut asked = 0usize;
    // Alternated, after a warm-up round of each.
    for round in 0..3 {
        for (mode, at) in [("same node", a.addr), ("other node", b.addr)] {
            // The sled asks BATCH times (within its connection's budget of pending requests), people decide
            // them all, and again, until `total` are decided.
            let (mut lat, mut wall) = (Vec::with_capacity(total), Duration::ZERO);
            for _ in 0..total.div_ceil(BATCH) {
                let first = asked;
                for i in first..first + BATCH {
                    let frame = json!({"type":"perm_request","req_id":format!("c{i}"),
                        "payload":{"tool_name":"Bash","tool_input":{"command":format!("make deploy-{i}")}}});
                    ws.feed(Message::text(frame.to_string())).await.unwrap();
                }
                ws.flush().await.unwrap();
                asked += BATCH;
                let ids: Vec<String> = loop {
                    let listing = format!("http://{}/api/permissions", a.addr);
                    let (_, body) = uplink_tests::http("GET", &listing, Some(ADMIN_TOKEN), None, &[]).await;
                    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let ids: Vec<String> = listed["permissions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p["id"].as_str().unwrap().to_owned())
                        .collect();
                    if ids.len() == BATCH {
                        break ids;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                // `people` at a time, at `at`; only 200s count, and the sled must hear every one as an approval
                // of its own request.
                let start = Instant::now();
                let queue = Arc::new(std::sync::Mutex::new(ids));
                let people: Vec<_> = (0..people)
                    .map(|_| {
                        let queue = queue.clone();
                        tokio::spawn(async move {
                            let mut lat = Vec::new();
                            loop {
                                let Some(id) = queue.lock().unwrap().pop() else { return lat };
                                let t = Instant::now();
                                let (status, body) = uplink_tests::http(
                                    "POST",
                                    &format!("http://{at}/api/permissions/{id}"),
                                    Some(ADMIN_TOKEN),
                                    Some(r#"{"approved":true}"#),
                                    &[],
                                )
                                .await;
                                assert_eq!(status, 200, "{body}");
                                lat.push(t.elapsed());
                            }
                        })
                    })
                    .collect();
                for person in people {
                    lat.extend(person.await.unwrap());
                }
                wall += start.elapsed();
                let mut heard = 0;
                while heard < BATCH {
                    let Message::Text(text) = ws.next().await.unwrap().unwrap() else { continue };
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if v["type"] == "perm_response" {
                        let n: usize = v["req_id"].as_str().unwrap()[1..].parse().unwrap();
                        assert!((first..first + BATCH).contains(&n) && v["payload"]["approved"] == true, "{text}");
                        heard += 1;
                    }
                }
            }
            if round > 0 {
                results.push((mode, Latencies(lat), wall));
            }
        }
    }
    for (mode, lat, wall) in &results {
        println!("{mode:>10}: {}", lat.summary(*wall));
    }
    let best = |mode: &str, q: f64| {
        results.iter().filter(|r| r.0 == mode).map(|r| r.1.pct(q).as_secs_f64() * 1e6).fold(f64::INFINITY, f64::min)
    };
    println!(
        "a decision made at another node adds p50 {:+.0} µs, p99 {:+.0} µs over one made where the request waits (target: p99 ≤ +2 ms)",
        best("other node", 0.5) - best("same node", 0.5),
        best("other node", 0.99) - best("same node", 0.99),
    );
    a.stop().await;
    b.stop().await;
}

// ── Large answers ────────────────────────────────────────────────────────────────────────────────────────

/// A `tools/call` answer whose text is `size` bytes, for the call numbered `n`.
fn large_answer(n: u64, size: usize) -> Bytes {
    let text: String = "0123456789abcdef".chars().cycle().take(size).collect();
    Bytes::from(
        json!({"jsonrpc":"2.0","id":n,"result":{"content":[{"type":"text","text":text}],"isError":false}}).to_string(),
    )
}

/// A local MCP server answering every call with a `size`-byte text (the answer made once, shared).
async fn start_large_mcp_server(size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = large_answer(1, size);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            tcp.set_nodelay(true).unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        let _ = request.into_body().collect().await;
                        let mut response = hyper::Response::new(Full::new(answer));
                        response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    addr
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        let v = status.lines().find_map(|l| l.strip_prefix(key)).unwrap();
        v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// POSTs the call to `addr` (`path`, with `headers`) once: the time to the whole answer, and the answer.
async fn post_once(
    client: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> (Duration, Bytes) {
    let mut request = Request::post(path).header("content-type", "application/json").header("host", "bench");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(Bytes::from(mcp_body(1)))).unwrap();
    client.ready().await.unwrap();
    let started = Instant::now();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "the large answer's status");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (started.elapsed(), body)
}

/// A `size`-byte answer relayed through `uplink gateway` and `uplink sled` (each a process of its own), against
/// the same answer fetched from the local MCP server directly: the time to the whole answer (median of
/// `rounds`), the CPU the gateway and the sled spent per answer, and the most memory each held beyond what
/// it held before (its peak resident set over its resident set when idle), as a multiple of the answer.
/// Only an answer equal to the server's counts.
async fn bench_large(rounds: usize) {
    println!(
        "\n== large answers: a tools/call result relayed through the gateway and the sled, against fetched directly"
    );
    for size in [1usize << 20, 8 << 20] {
        let mcp = start_large_mcp_server(size).await;
        let want_bytes = large_answer(1, size);
        let want: serde_json::Value = serde_json::from_slice(&want_bytes).unwrap();
        let gateway = GatewayProcess::start_with(&[]).await;
        let far = far_wrapper();
        let sled = Program::sled(env!("CARGO_BIN_EXE_uplink"))
            .args(["--gateway", &format!("ws://{}/api/sled-uplink", gateway.addr), "--token", SLED_TOKEN])
            .args(["--project", "large", "--mcp", &format!("http://{mcp}/mcp")])
            .wrapped(&far.iter().map(String::as_str).collect::<Vec<_>>())
            .start()
            .await;
        gateway.wait_connected(1).await;
        // What each holds idle, connected, before any large answer.
        let (gw_idle, _) = memory(gateway.pid());
        let (sled_idle, _) = memory(sled.pid());
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let relay_headers = [("authorization", auth.as_str())];
        let mut direct = http_client(mcp).await;
        let mut relayed = http_client(gateway.addr).await;
        // One of each first (connections and sessions warm).
        let (_, body) = post_once(&mut direct, "/mcp", &[]).await;
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap(), want);
        let (_, body) = post_once(&mut relayed, "/api/sleds/large/rpc", &relay_headers).await;
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap(), want, "a relayed answer");
        let mut direct_times = Vec::with_capacity(rounds);
        let mut relay_times = Vec::with_capacity(rounds);
        let (gw_cpu, sled_cpu) = (gateway.cpu(), process_cpu(&sled.pid().to_string()));
        for _ in 0..rounds {
            let (took, body) = post_once(&mut relayed, "/api/sleds/large/rpc", &relay_headers).await;
            assert_eq!(body.len(), want_bytes.len(), "a relayed answer of another size");
            relay_times.push(took);
        }
        let gw_cpu = (gateway.cpu() - gw_cpu) / rounds as u32;
        let sled_cpu = (process_cpu(&sled.pid().to_string()) - sled_cpu) / rounds as u32;
        for _ in 0..rounds {
            let (took, _) = post_once(&mut direct, "/mcp", &[]).await;
            direct_times.push(took);
        }
        let (_, gw_peak) = memory(gateway.pid());
        let (_, sled_peak) = memory(sled.pid());
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (d, r) = (median(&mut direct_times), median(&mut relay_times));
        let held = |peak: u64, idle: u64| peak.saturating_sub(idle) as f64 / size as f64;
        println!(
            "{:>4} MiB: direct {:>8.2} ms, relayed {:>8.2} ms ({:.2}x direct; target <= 2x); CPU per answer: gateway {:.2} ms, sled {:.2} ms; \
             most held beyond idle: gateway {:.1}x the answer, sled {:.1}x (target <= 3x)",
            size >> 20,
            d.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            r.as_secs_f64() / d.as_secs_f64(),
            gw_cpu.as_secs_f64() * 1e3,
            sled_cpu.as_secs_f64() * 1e3,
            held(gw_peak, gw_idle),
            held(sled_peak, sled_idle),
        );
        drop(sled);
        gateway.stop().await;
    }
}

fn arg_value(args: &[String], name: &str) -> Option<usize> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "echo-server") {
        return echo_server_main(false);
    }
    if args.first().is_some_and(|a| a == "echo-server-hub") {
        return echo_server_main(true);
    }
    if args.first().is_some_and(|a| a == "relay-floor") {
        return relay_floor_main();
    }
    if args.first().is_some_and(|a| a == "sled-host") {
        return sled_host_main(&args[1..]);
    }
    let _ = FAR_CPU.set(arg_value(&args, "--far-cpu"));
    let all = ["rtt", "throughput", "relay", "scale", "decisions", "wide", "large"];
    // Run only when named: the cluster's decisions (it starts a PostgreSQL server).
    let named_only = ["cross"];
    let chosen: Vec<&str> = all.iter().chain(&named_only).copied().filter(|b| args.iter().any(|a| a == b)).collect();
    let chosen = if chosen.is_empty() { all.to_vec() } else { chosen };
    // `--current-thread` runs this process (sleds, load, local server) on one thread: no cross-thread wake-ups.
    let runtime = if args.iter().any(|a| a == "--current-thread") {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
    };
    // The benches run in a spawned task, on the runtime's workers: `block_on`'s own thread is not a worker,
    // so every wake-up of it would cross threads through a condition variable, a cost no embedder pays.
    runtime.block_on(async {
        tokio::spawn(run(args, chosen)).await.unwrap();
    });
}

async fn run(args: Vec<String>, chosen: Vec<&'static str>) {
    {
        println!("uplink network benchmarks (loopback; gateway = `uplink gateway` child process)");
        for bench in chosen {
            match bench {
                "rtt" => bench_rtt(arg_value(&args, "--n").unwrap_or(2000)).await,
                "cross" => {
                    bench_cross(arg_value(&args, "--n").unwrap_or(2000), arg_value(&args, "--people").unwrap_or(16))
                        .await
                }
                "throughput" => bench_throughput(arg_value(&args, "--n").unwrap_or(50_000)).await,
                "relay" => bench_relay(arg_value(&args, "--n").unwrap_or(20_000)).await,
                "large" => bench_large(arg_value(&args, "--rounds").unwrap_or(10)).await,
                "decisions" => {
                    let on_postgres = args.iter().any(|a| a == "--postgres");
                    bench_decisions(arg_value(&args, "--n").unwrap_or(50_000), on_postgres).await
                }
                "wide" => {
                    let idle = Duration::from_secs(arg_value(&args, "--idle-secs").unwrap_or(10) as u64);
                    bench_scale_wide(arg_value(&args, "--sleds").unwrap_or(2000), idle).await;
                }
                _ => {
                    let sleds = arg_value(&args, "--sleds").unwrap_or(1000);
                    let idle = Duration::from_secs(arg_value(&args, "--idle-secs").unwrap_or(10) as u64);
                    let restart = args.iter().any(|a| a == "--restart");
                    bench_scale(sleds, idle, restart, arg_value(&args, "--pending").unwrap_or(sleds / 5)).await;
                }
            }
        }
    }
}

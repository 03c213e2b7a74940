//! Shared helpers for the end-to-end tests in `tests/tests/`: a scriptable gateway on loopback.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]
// The handshake callbacks have tungstenite's signature, with its large error type.
#![allow(clippy::result_large_err)]

pub mod claude_code;
pub mod mcp_server;
pub mod oidc;
pub mod postgres;
pub mod program;
pub mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

/// Every wait in the tests is bounded by this; nothing here sleeps to dodge a race.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a program may take to start (its banner): a start builds sockets, a store and often a second
/// process, which a machine busy with other builds can slow well beyond [`WAIT`].
pub const START_WAIT: Duration = Duration::from_secs(30);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    within_for(what, WAIT, f).await
}

/// Awaits `f`, failing the test if it takes longer than `bound`.
pub async fn within_for<F: std::future::Future>(what: &str, bound: Duration, f: F) -> F::Output {
    match tokio::time::timeout(bound, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// How long [`until`] waits between two tries.
pub const POLL: Duration = Duration::from_millis(10);

/// Tries `attempt` until it gives a value, [`POLL`] apart; fails the test if that takes longer than [`WAIT`].
/// For what can only be asked again (an HTTP listing), not waited on.
pub async fn until<T>(what: &str, mut attempt: impl AsyncFnMut() -> Option<T>) -> T {
    within(what, async {
        loop {
            if let Some(value) = attempt().await {
                return value;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// A directory of the test's own under the system's temporary directory, empty, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("uplink-test-").tempdir().unwrap()
}

pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A gateway endpoint on loopback that the test drives by hand.
pub struct TestGateway {
    listener: TcpListener,
    pub addr: SocketAddr,
}

/// One sled connection as the test gateway sees it.
pub struct GatewayConn {
    ws: WebSocketStream<Box<dyn Stream>>,
    /// The request URI of the handshake (path and query).
    pub uri: String,
    /// The `Authorization` header of the handshake.
    pub authorization: Option<String>,
}

impl TestGateway {
    pub async fn bind() -> TestGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        TestGateway { listener, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/api/sled-uplink", self.addr)
    }

    async fn tcp(&self) -> tokio::net::TcpStream {
        within("a sled to connect", self.listener.accept()).await.unwrap().0
    }

    /// Accepts the next TCP connection and does nothing with it.
    pub async fn accept_tcp(&self) -> tokio::net::TcpStream {
        self.tcp().await
    }

    /// Accepts the next sled connection.
    pub async fn accept(&self) -> GatewayConn {
        let tcp = self.tcp().await;
        upgrade(Box::new(tcp)).await
    }

    /// Starts a sled with `config` (pointed at this gateway) and accepts its connection, past its `identity`.
    pub async fn start_sled(&self, config: uplink_tokio::UplinkConfig) -> (uplink_tokio::Uplink, GatewayConn) {
        let uplink = uplink_tokio::Uplink::start(config).unwrap();
        let mut conn = self.accept().await;
        conn.recv_kind("identity").await;
        (uplink, conn)
    }

    /// Accepts the next sled connection over TLS.
    pub async fn accept_tls(&self, acceptor: &tokio_rustls::TlsAcceptor) -> GatewayConn {
        let tcp = self.tcp().await;
        let tls = within("the TLS handshake", acceptor.accept(tcp)).await.unwrap();
        upgrade(Box::new(tls)).await
    }

    /// Accepts the next connection and attempts the TLS handshake, returning its outcome.
    pub async fn try_accept_tls(&self, acceptor: &tokio_rustls::TlsAcceptor) -> std::io::Result<()> {
        let tcp = self.tcp().await;
        within("the TLS handshake", acceptor.accept(tcp)).await.map(drop)
    }

    /// Accepts the next connection and refuses its WebSocket handshake with `status`.
    pub async fn refuse(&self, status: StatusCode) {
        let tcp = self.tcp().await;
        let callback = move |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
            let mut r = ErrorResponse::new(None);
            *r.status_mut() = status;
            Err(r)
        };
        let _ = tokio_tungstenite::accept_hdr_async(tcp, callback).await;
    }
}

async fn upgrade(stream: Box<dyn Stream>) -> GatewayConn {
    let mut uri = String::new();
    let mut authorization = None;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        uri = req.uri().to_string();
        authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(resp)
    };
    let ws = within("the WebSocket handshake", tokio_tungstenite::accept_hdr_async(stream, callback)).await.unwrap();
    GatewayConn { ws, uri, authorization }
}

impl GatewayConn {
    /// The next text frame, parsed. Pings are answered by the library while reading.
    pub async fn recv(&mut self) -> Value {
        loop {
            match within("a frame from the sled", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame of type `kind`, skipping heartbeats.
    pub async fn recv_kind(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
            assert_eq!(v["type"], "heartbeat", "expected {kind}, got {v}");
        }
    }

    /// Reads until the sled closes the connection; returns the close code it sent, if any.
    pub async fn until_closed(&mut self) -> Option<u16> {
        loop {
            match within("the sled to close", self.ws.next()).await {
                Some(Ok(Message::Close(frame))) => {
                    // Reading on lets the library answer the close, as a real gateway does.
                    while let Some(Ok(_)) = within("the close handshake", self.ws.next()).await {}
                    return frame.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.unwrap();
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::binary(data)).await.unwrap();
    }

    /// Sends a text frame whose payload is not UTF-8 (a protocol error no well-behaved peer commits).
    pub async fn send_invalid_utf8(&mut self) {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let frame = Frame::message(vec![b'{', 0xff, b'}'], OpCode::Data(Data::Text), true);
        self.ws.send(Message::Frame(frame)).await.unwrap();
    }
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// Starts a close handshake and completes it, as a well-behaved gateway does.
    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
        while let Some(Ok(_)) = within("the sled's close answer", self.ws.next()).await {}
    }

    pub async fn approve(&mut self, req_id: &Value, approved: bool, always_allow: bool) {
        self.send(serde_json::json!({"type":"perm_response","req_id":req_id,"payload":{"approved":approved,"always_allow":always_allow}})).await;
    }
}

/// A local "MCP endpoint" that answers every POST with one canned response: for the cases a real server
/// rarely produces (noise on an event stream, garbage, odd statuses).
pub struct CannedHttp {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl CannedHttp {
    pub async fn start(status: u16, content_type: &'static str, body: &'static str) -> CannedHttp {
        use hyper::service::service_fn;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut r =
                            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(content_type));
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        CannedHttp { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

impl Drop for CannedHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP request with an optional bearer token; returns the status and the body.
pub async fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    within("an HTTP answer", try_http(method, url, token, body, headers)).await.unwrap()
}

/// As [`http`], with a failed connection as an error (a server that dies under the request).
pub async fn try_http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    send(method, url, token, body, headers).await.map(|(status, _, body)| (status, body))
}

/// As [`http`], with the response's headers (names in lower case).
pub async fn http_with_headers(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    within("an HTTP answer", send(method, url, token, body, headers)).await.unwrap()
}

/// One request; the status, the headers and the body.
async fn send(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<(String, String)>, String), String> {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = hyper::Request::builder().method(method).uri(url).header("content-type", "application/json");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(body.unwrap_or("").to_owned()));
    let response = client.request(request.body(body).unwrap()).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Signs in to the console at `base` with `token`: the cookie to send (`uplink_session=…`), and the CSRF
/// token.
pub async fn console_sign_in(base: &str, token: &str) -> (String, String) {
    let body = json!({"token": token}).to_string();
    let (status, headers, body) =
        http_with_headers("POST", &format!("{base}/console/session"), None, Some(&body), &[]).await;
    assert_eq!(status, 200, "{body}");
    let set = &headers.iter().find(|(name, _)| name == "set-cookie").unwrap().1;
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf"].as_str().unwrap().to_owned();
    (cookie, csrf)
}

/// `GET /console/session` at `base` with `cookie`: its status and the CSRF token it gives back.
pub async fn console_session(base: &str, cookie: &str) -> (u16, Option<String>) {
    let (status, _, body) =
        http_with_headers("GET", &format!("{base}/console/session"), None, None, &[("cookie", cookie)]).await;
    let csrf = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["csrf"].as_str().map(str::to_owned));
    (status, csrf)
}

/// Subscribes to a Server-Sent Events endpoint; yields `(event, data)` pairs as they arrive.
pub async fn sse(url: &str, token: &str) -> tokio::sync::mpsc::Receiver<(String, Value)> {
    sse_with(url, &[("authorization", &format!("Bearer {token}"))]).await
}

/// As [`sse`], with these headers (a console's cookie, say) instead of a bearer token.
pub async fn sse_with(url: &str, headers: &[(&str, &str)]) -> tokio::sync::mpsc::Receiver<(String, Value)> {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = hyper::Request::get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(http_body_util::Empty::new()).unwrap();
    let response = within("the event stream", client.request(request)).await.unwrap();
    assert_eq!(response.status(), 200);
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        let mut body = response.into_body();
        let mut parser = uplink_proto::sse::SseParser::new(1 << 20);
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            for event in parser.push(&data).unwrap() {
                let value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                if tx.send((event.event, value)).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Waits for the next event of `kind` on an event stream, skipping others.
pub async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<(String, Value)>, kind: &str) -> Value {
    within(kind, async {
        loop {
            let (k, v) = rx.recv().await.expect("event stream open");
            if k == kind {
                return v;
            }
        }
    })
    .await
}

/// The sled token of every [`RealGateway`].
pub const SLED_TOKEN: &str = "sled-secret";
/// The admin token of every [`RealGateway`].
pub const ADMIN_TOKEN: &str = "admin-secret";

/// A loopback port nothing listens on as this returns (the system's choice for a listener opened and closed
/// here), for a server whose URL must be known before it starts (its public URL names its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `uplink gateway`'s server, in this process, on a loopback port.
pub struct RealGateway {
    pub addr: SocketAddr,
    /// `http://ADDR`
    pub base: String,
    /// `ws://ADDR/api/sled-uplink`
    pub ws: String,
    /// Replaces the running gateway's credentials.
    pub reloader: uplink_tokio::gateway::CredentialsReloader,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), uplink_tokio::gateway::GatewayRunError>>,
}

impl RealGateway {
    pub async fn start(session: uplink_proto::gateway::SessionConfig, max_message_size: usize) -> RealGateway {
        RealGateway::start_hub(uplink_proto::gateway::HubConfig::new(session), max_message_size).await
    }

    /// As [`RealGateway::start`], with every rule of the hub's (its auto flags, its budgets).
    pub async fn start_hub(hub: uplink_proto::gateway::HubConfig, max_message_size: usize) -> RealGateway {
        use uplink_tokio::gateway::GatewayServerConfig;
        let mut config = GatewayServerConfig::new("127.0.0.1:0".parse().unwrap(), vec![SLED_TOKEN.into()], ADMIN_TOKEN);
        config.max_message_size = max_message_size;
        config.hub = hub;
        RealGateway::start_config(config).await
    }

    /// A hub's rules of `session`, approving every request for `tools` at once.
    pub fn approving(
        session: uplink_proto::gateway::SessionConfig,
        tools: &[&str],
    ) -> uplink_proto::gateway::HubConfig {
        let mut hub = uplink_proto::gateway::HubConfig::new(session);
        hub.auto_approve = tools.iter().map(|t| (*t).to_owned()).collect();
        hub
    }

    /// A gateway with exactly `config`, except for a loopback port and a 2 s handshake timeout.
    pub async fn start_config(config: uplink_tokio::gateway::GatewayServerConfig) -> RealGateway {
        RealGateway::start_with_store(config, None).await
    }

    /// As [`RealGateway::start_config`], with `store`.
    pub async fn start_with_store(
        mut config: uplink_tokio::gateway::GatewayServerConfig,
        store: Option<Box<dyn uplink_tokio::store::Store>>,
    ) -> RealGateway {
        config.listen = "127.0.0.1:0".parse().unwrap();
        RealGateway::start_at(config, store).await
    }

    /// As [`RealGateway::start_with_store`], on `config.listen` as given (see [`free_port`]).
    pub async fn start_at(
        mut config: uplink_tokio::gateway::GatewayServerConfig,
        store: Option<Box<dyn uplink_tokio::store::Store>>,
    ) -> RealGateway {
        // Short, so that the slow-loris tests take two seconds rather than ten.
        config.handshake_timeout = Duration::from_secs(2);
        let server = uplink_tokio::gateway::GatewayServer::bind_with_store(config, store).await.unwrap();
        let reloader = server.reloader();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        RealGateway {
            addr,
            base: format!("http://{addr}"),
            ws: format!("ws://{addr}/api/sled-uplink"),
            reloader,
            stop: Some(stop),
            task,
        }
    }

    /// Kills the gateway: every task of it stops at once, with no close frame to anyone, as when its process
    /// dies.
    /// Stops the gateway as its program does on a signal, and waits until its server has finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("the gateway to stop", &mut self.task).await.unwrap().unwrap();
    }

    /// Waits for the gateway to stop by itself (a failed store), and returns why.
    pub async fn stopped(mut self) -> Result<(), uplink_tokio::gateway::GatewayRunError> {
        self.stop.take();
        within("the gateway to stop by itself", &mut self.task).await.unwrap()
    }

    pub async fn kill(mut self) {
        self.stop.take();
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// A WebSocket client connection written by hand, as a sled that does whatever the test wants.
pub type RawWs = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl RealGateway {
    /// A raw WebSocket connection to the sled endpoint, with the sled token.
    pub async fn raw_sled(&self) -> RawWs {
        self.raw_sled_with(SLED_TOKEN).await
    }

    /// A raw WebSocket connection to the sled endpoint with `token` (in `?token=`).
    pub async fn raw_sled_with(&self, token: &str) -> RawWs {
        let url = format!("{}?token={token}", self.ws);
        within("a raw connection", tokio_tungstenite::connect_async(url)).await.unwrap().0
    }
}

/// A raw WebSocket connection to the sled endpoint of the gateway at `base` (`http://ADDR`) with `token`,
/// identified as `project`.
pub async fn raw_sled_at(base: &str, token: &str, project: &str) -> RawWs {
    let url = format!("{}/api/sled-uplink?token={token}", base.replace("http://", "ws://"));
    let mut ws = within("the sled to connect", tokio_tungstenite::connect_async(url)).await.unwrap().0;
    identify(&mut ws, project).await;
    ws
}

/// Sends an `identity` frame for `project`.
pub async fn identify(ws: &mut RawWs, project: &str) {
    let frame = serde_json::json!({"type":"identity","req_id":"identity","payload":{"project":project}});
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next `perm_response` the gateway sends on `ws` (other frames are skipped), as JSON.
pub async fn perm_response(ws: &mut RawWs) -> Value {
    within("a perm_response", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "perm_response" {
                        return frame;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended before a perm_response: {other:?}"),
            }
        }
    })
    .await
}

/// Reads until the gateway closes; returns its close code (`None` when the connection ended without one).
pub async fn close_code(ws: &mut RawWs) -> Option<u16> {
    within("the gateway to close", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
}

impl Drop for RealGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits (bounded by [`WAIT`]) until the uplink's link state satisfies `pred`; returns that state.
pub async fn link_state_where(
    uplink: &uplink_tokio::Uplink,
    what: &str,
    pred: impl Fn(&uplink_tokio::LinkState) -> bool,
) -> uplink_tokio::LinkState {
    let mut rx = uplink.watch_link();
    within(what, async {
        loop {
            let state = rx.borrow_and_update().clone();
            if pred(&state) {
                return state;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
}

/// One request a [`ScriptedHttp`] saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// What a [`ScriptedHttp`] answers one request with.
pub enum Reply {
    /// A status, a content type and a body, complete.
    Full(u16, &'static str, String),
    /// `200` with an event stream that sends this and then never ends.
    Hang(String),
}

/// A local MCP endpoint played by a script: each request is answered by `answer` and reported on `seen`, so a
/// test waits on what the sled sent, with a bound, instead of guessing.
pub struct ScriptedHttp {
    pub addr: SocketAddr,
    pub seen: tokio::sync::mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedHttp {
    pub async fn start(answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> ScriptedHttp {
        use http_body_util::{BodyExt, StreamBody};
        use hyper::body::Frame;
        use hyper::service::service_fn;
        type Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let answer = std::sync::Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (answer, tx) = (answer.clone(), tx.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (answer, tx) = (answer.clone(), tx.clone());
                        async move {
                            let method = req.method().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                                .collect();
                            let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let seen = Seen { method, headers, body: String::from_utf8_lossy(&bytes).into_owned() };
                            let reply = answer(&seen);
                            let _ = tx.send(seen);
                            let (status, content_type, body): (u16, &str, Body) = match reply {
                                Reply::Full(status, ct, body) => {
                                    (status, ct, http_body_util::Full::new(bytes::Bytes::from(body)).boxed())
                                }
                                Reply::Hang(first) => {
                                    let first = futures_util::stream::once(async move {
                                        Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(first)))
                                    });
                                    (
                                        200,
                                        "text/event-stream",
                                        BodyExt::boxed(StreamBody::new(first.chain(futures_util::stream::pending()))),
                                    )
                                }
                            };
                            let mut r = hyper::Response::new(body);
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            r.headers_mut()
                                .insert("content-type", hyper::header::HeaderValue::from_str(content_type).unwrap());
                            r.headers_mut()
                                .insert("mcp-session-id", hyper::header::HeaderValue::from_static("local-1"));
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        ScriptedHttp { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The next request the server saw.
    pub async fn next(&mut self) -> Seen {
        within("a request at the local MCP server", self.seen.recv()).await.expect("the server runs")
    }

    /// The next request the server saw with this method.
    pub async fn next_with(&mut self, method: &str) -> Seen {
        loop {
            let seen = self.next().await;
            if seen.method == method {
                return seen;
            }
        }
    }
}

impl Drop for ScriptedHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

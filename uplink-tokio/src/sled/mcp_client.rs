//! The sled's client for its local MCP endpoint, speaking MCP's Streamable HTTP transport.
//!
//! Which requests to make, with which session headers, and what a lost session means is the core's policy
//! ([`uplink_proto::sled::mcp_session`]); this client performs the POSTs it asks for and reads their answers:
//!
//! - Each message is `POST`ed with `Accept: application/json, text/event-stream`.
//! - `200` + JSON: that object is the answer. `200` + event stream: events are read until the JSON-RPC
//!   response to this request; every other message on the way (notifications, the server's own requests) is
//!   handed to the core in order ([`Io::McpMessage`]), which relays it or answers it; empty priming events
//!   are skipped. `202`: the message was a notification; the answer is `null`.
//! - A stream that ends before the answer is resumed as the core's policy says
//!   ([`resume_after`]): after the server's `retry`, a `GET` with `Last-Event-ID`.
//! - A standalone stream ([`McpClient::listen`]) is a `GET`; `405` means the server offers none.
//! - The core's own messages ([`McpClient::notify`]) and the ends of local sessions (`DELETE`, when the
//!   gateway ends a session, when one is forgotten beyond the bound, and at shutdown) are sent as asked.
//! - Whatever the status, a body holding the JSON-RPC response to the request is the answer; a `404` without
//!   one is reported as such, for the policy to judge.
//! - The call's deadline belongs to the core, which cancels the task.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use uplink_proto::sled::mcp_session::{
    INITIALIZED, McpSessions, PostBody, PostResult, SessionHeaders, Step, resume_after,
};
use uplink_proto::sse::SseParser;
use uplink_proto::{McpCall, McpCallId, McpListen, McpReply, RawValue, jsonrpc};

use super::answer::McpUrlError;
use super::io::Io;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const LAST_EVENT_ID: &str = "last-event-id";

/// How long a `DELETE` or a notice may take before it is abandoned.
const SIDE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the local server's messages within one call or stream go: to the driver, in order.
pub(crate) struct Messages {
    pub(crate) call: McpCallId,
    pub(crate) io: mpsc::Sender<Io>,
}

impl Messages {
    async fn send(&self, message: Box<RawValue>) {
        // Waiting here holds the stream back while the driver is busy: back-pressure, not a pile.
        let _ = self.io.send(Io::McpMessage { call: self.call, message }).await;
    }
}

/// Which messages of a stream are its end.
#[derive(Copy, Clone)]
enum Want<'a> {
    /// The response to this id (any response, for `None`): that is the answer; the rest are messages.
    Answer(Option<&'a RawValue>),
    /// None: every message is a message (a standalone stream).
    Nothing,
}

/// Pooled HTTP client for the local MCP endpoint.
pub(crate) struct McpClient {
    url: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The core's session policy; locked only around its pure calls, never across a request.
    sessions: Mutex<McpSessions>,
    max_body: usize,
}

impl McpClient {
    /// A client of the endpoint at `url`, reading bodies of at most `max_body` bytes, under the policy
    /// `sessions`.
    pub(crate) fn new(url: &str, max_body: usize, sessions: McpSessions) -> Result<Self, McpUrlError> {
        let url: Uri = url.parse()?;
        if url.scheme_str() != Some("http") || url.host().is_none() {
            return Err(McpUrlError::NotHttp);
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(McpClient { url, client, sessions: Mutex::new(sessions), max_body })
    }

    /// Runs `f` on the policy, then ends upstream whatever local sessions it let go of.
    fn policy<T>(&self, f: impl FnOnce(&mut McpSessions) -> T) -> T {
        let (value, ended) = {
            let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let value = f(&mut sessions);
            (value, sessions.take_ended())
        };
        for headers in ended {
            tokio::spawn(self.delete(headers));
        }
        value
    }

    /// The gateway ended `session`: its local session is ended too.
    pub(crate) fn end_session(&self, session: &str) {
        self.policy(|s| s.end(session));
    }

    /// Shutdown: ends every local session, waiting for them at most `grace`.
    pub(crate) async fn end_all(&self, grace: Duration) {
        let ended = {
            let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            sessions.end_all();
            sessions.take_ended()
        };
        let deletes: Vec<_> = ended.into_iter().map(|h| tokio::spawn(self.delete(h))).collect();
        let _ = tokio::time::timeout(grace, async {
            for d in deletes {
                let _ = d.await;
            }
        })
        .await;
    }

    /// A `DELETE` of one local session, as a future of its own (it borrows nothing).
    fn delete(&self, headers: SessionHeaders) -> impl std::future::Future<Output = ()> + Send + 'static {
        let request = self.request(Method::DELETE, &headers).body(Full::new(Bytes::new()));
        let client = self.client.clone();
        async move {
            let Ok(request) = request else { return };
            // The answer does not matter: the session is forgotten either way.
            let _ = tokio::time::timeout(SIDE_REQUEST_TIMEOUT, client.request(request)).await;
        }
    }

    /// POSTs the core's own message `body` in `session`; the answer does not matter.
    pub(crate) fn notify(
        &self,
        session: Option<String>,
        body: String,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let headers = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .headers(session.as_deref().unwrap_or_default());
        let request = self
            .request(Method::POST, &headers)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .body(Full::new(Bytes::from(body)));
        let client = self.client.clone();
        async move {
            let Ok(request) = request else { return };
            let _ = tokio::time::timeout(SIDE_REQUEST_TIMEOUT, client.request(request)).await;
        }
    }

    /// A request to the endpoint with `session`'s headers.
    fn request(&self, method: Method, session: &SessionHeaders) -> hyper::http::request::Builder {
        let mut request = Request::builder().method(method).uri(self.url.clone());
        if let Some(sid) = &session.session_id {
            request = request.header(SESSION_HEADER, sid);
        }
        if let Some(version) = &session.protocol_version {
            request = request.header(VERSION_HEADER, version);
        }
        request
    }

    /// Opens `listen`'s standalone stream and hands every message on it to the core; returns its end.
    pub(crate) async fn listen(&self, listen: McpListen, messages: Messages) -> McpReply {
        let headers = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .headers(listen.session.as_deref().unwrap_or_default());
        let mut parser = SseParser::new(self.max_body);
        let mut attempts = 0;
        let mut last_id: Option<String> = None;
        loop {
            let mut request = self.request(Method::GET, &headers).header(ACCEPT, "text/event-stream");
            if let Some(id) = &last_id {
                request = request.header(LAST_EVENT_ID, id);
            }
            let Ok(request) = request.body(Full::new(Bytes::new())) else {
                return McpReply::Failed("could not build the stream's request".into());
            };
            let response = match self.client.request(request).await {
                Ok(r) => r,
                Err(e) => return McpReply::Failed(describe_client_error(&e)),
            };
            let status = response.status();
            if status == StatusCode::METHOD_NOT_ALLOWED {
                return McpReply::NoStream;
            }
            if !status.is_success() || !is_event_stream(response.headers()) {
                return McpReply::Failed(format!("local MCP endpoint answered the stream's GET with HTTP {status}"));
            }
            if last_id.is_none() {
                let _ = messages.io.send(Io::McpOpened { call: messages.call }).await;
            }
            match read_events(response.into_body(), &mut parser, Want::Nothing, Some(&messages)).await {
                Ok((_, got)) if got => attempts = 0,
                Ok(_) => {}
                Err(e) => return McpReply::Failed(e),
            }
            let Some(delay) = resume_after(parser.last_event_id(), parser.retry(), attempts) else {
                return McpReply::NoContent;
            };
            attempts += 1;
            last_id = parser.last_event_id().map(str::to_owned);
            parser = parser.resumed();
            tokio::time::sleep(delay).await;
        }
    }

    /// Carries `call` through the session policy and returns what to answer the gateway with; the local
    /// server's other messages within it go to `messages`.
    pub(crate) async fn call(&self, call: McpCall, messages: Messages) -> McpReply {
        let (mut exchange, mut step) = self.policy(|s| s.begin(&call));
        // The call's text, taken once (a renewed session posts it again: a `Bytes` is shared, not copied).
        let call_body = Bytes::from(call.body);
        loop {
            let (body, headers) = match step {
                Step::Done(reply) => return reply,
                Step::Post { body, headers } => (body, headers),
            };
            // Only the call's own answer must carry its id; the renewal's requests take any response, and
            // only the call's own messages are relayed.
            let relay = matches!(body, PostBody::Call).then_some(&messages);
            let (text, id) = match body {
                PostBody::Call => (call_body.clone(), call.jsonrpc_id.as_deref()),
                PostBody::Initialize(init) => (Bytes::from(init), None),
                PostBody::Initialized => (Bytes::from_static(INITIALIZED.as_bytes()), None),
            };
            let result = self.post(text, &headers, id, relay).await.unwrap_or_else(PostResult::Failed);
            // Read outside the lock: the policy's lock is held only around its bookkeeping.
            let read = exchange.read(result);
            step = self.policy(|s| s.handle_read(&mut exchange, read));
        }
    }

    /// One POST; with `id`, the answer is the response to that id (any response, without). An error is the
    /// reason the exchange failed.
    async fn post(
        &self,
        body: Bytes,
        session: &SessionHeaders,
        id: Option<&RawValue>,
        messages: Option<&Messages>,
    ) -> Result<PostResult, String> {
        let request = self
            .request(Method::POST, session)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| describe_client_error(&e))?;
        let status = response.status();
        let session_id = header_str(response.headers(), SESSION_HEADER);
        if status == StatusCode::ACCEPTED {
            return Ok(PostResult::Answer { reply: McpReply::NoContent, session_id });
        }
        let body = if status.is_success() && is_event_stream(response.headers()) {
            let mut stream = response.into_body();
            let mut parser = SseParser::new(self.max_body);
            let mut attempts = 0;
            loop {
                let (answer, got) = read_events(stream, &mut parser, Want::Answer(id), messages).await?;
                if let Some(raw) = answer {
                    return Ok(PostResult::Answer { reply: McpReply::Response(raw), session_id });
                }
                if got {
                    attempts = 0;
                }
                // Ended before the answer: resumed if the server made that possible.
                let Some(delay) = resume_after(parser.last_event_id(), parser.retry(), attempts) else {
                    if id.is_none() {
                        return Ok(PostResult::Answer { reply: McpReply::NoContent, session_id });
                    }
                    return Err("local MCP event stream ended without a response".to_owned());
                };
                attempts += 1;
                tokio::time::sleep(delay).await;
                let mut resumed = SessionHeaders::default();
                resumed.session_id = session_id.clone().or_else(|| session.session_id.clone());
                resumed.protocol_version = session.protocol_version.clone();
                let request = self
                    .request(Method::GET, &resumed)
                    .header(ACCEPT, "text/event-stream")
                    .header(LAST_EVENT_ID, parser.last_event_id().unwrap_or_default())
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| e.to_string())?;
                let response = self.client.request(request).await.map_err(|e| describe_client_error(&e))?;
                if !response.status().is_success() || !is_event_stream(response.headers()) {
                    return Err(format!("resuming the local MCP event stream failed: HTTP {}", response.status()));
                }
                parser = parser.resumed();
                stream = response.into_body();
            }
        } else {
            response.into_body()
        };
        let bytes = match http_body_util::Limited::new(body, self.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err(format!("local MCP response larger than {} bytes", self.max_body));
            }
            Err(e) => return Err(format!("reading the local MCP response: {e}")),
        };
        // One copy at most: the body's bytes become the answer's text (a body in one piece is shared with
        // the connection's buffer, so it is copied out here; one in several was joined already).
        let text = match String::from_utf8(Vec::from(bytes)) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let text = if text.trim().len() == text.len() { text } else { text.trim().to_owned() };
        // Whatever the status, a JSON-RPC response to this request is the answer: newer servers send their
        // errors with 4xx statuses.
        let text = if !text.is_empty() && jsonrpc::is_response_to(&text, id) {
            match RawValue::from_string(text) {
                Ok(raw) => return Ok(PostResult::Answer { reply: McpReply::Response(raw), session_id }),
                Err(_) => return Err("local MCP endpoint answered with invalid JSON".to_owned()),
            }
        } else {
            text
        };
        if status == StatusCode::NOT_FOUND {
            return Ok(PostResult::NotFound);
        }
        if !status.is_success() {
            return Err(format!("local MCP endpoint answered HTTP {status}"));
        }
        if text.is_empty() {
            return Ok(PostResult::Answer { reply: McpReply::NoContent, session_id });
        }
        let raw =
            RawValue::from_string(text).map_err(|_| "local MCP endpoint answered with invalid JSON".to_owned())?;
        Ok(PostResult::Answer { reply: McpReply::Response(raw), session_id })
    }
}

/// Reads `stream`'s events until the answer `want`s (returned) or the end (`None`); every other message goes
/// to `messages`, in order. The flag says whether any event arrived.
async fn read_events(
    mut stream: hyper::body::Incoming,
    parser: &mut SseParser,
    want: Want<'_>,
    messages: Option<&Messages>,
) -> Result<(Option<Box<RawValue>>, bool), String> {
    let mut got = false;
    while let Some(frame) = stream.frame().await {
        let frame = frame.map_err(|e| format!("reading the local MCP event stream: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        for event in parser.push(&data).map_err(|e| e.to_string())? {
            got = true;
            let text = event.data.trim();
            if text.is_empty() {
                continue; // a priming event
            }
            let Ok(raw) = RawValue::from_string(text.to_owned()) else {
                continue; // not JSON: neither the answer nor a message anyone could read
            };
            if let Want::Answer(id) = want
                && jsonrpc::is_response_to(raw.get(), id)
            {
                return Ok((Some(raw), got));
            }
            if let Some(messages) = messages {
                messages.send(raw).await;
            }
        }
    }
    Ok((None, got))
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    header_str(headers, CONTENT_TYPE.as_str()).unwrap_or_default().to_ascii_lowercase().starts_with("text/event-stream")
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned)
}

fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

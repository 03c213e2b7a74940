//! The sled's client for its local MCP endpoint, speaking MCP's Streamable HTTP transport.
//!
//! Which requests to make, with which session headers, and what a lost session means is the core's policy
//! ([`uplink_proto::mcp_session`]); this client performs the POSTs it asks for and reads their answers:
//!
//! - Each message is `POST`ed with `Accept: application/json, text/event-stream`.
//! - `200` + JSON: that object is the answer. `200` + event stream: events are read until the JSON-RPC
//!   response to this request; notifications and empty priming events on the way are skipped. `202`: the
//!   message was a notification; the answer is `null`.
//! - Whatever the status, a body holding the JSON-RPC response to the request is the answer; a `404` without
//!   one is reported as such, for the policy to judge.
//! - The call's deadline belongs to the core, which cancels the task.

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use uplink_proto::mcp_session::{INITIALIZED, McpSessions, PostBody, PostResult, SessionHeaders, Step};
use uplink_proto::sse::SseParser;
use uplink_proto::{McpCall, McpReply, RawValue, jsonrpc};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// Why the local MCP URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpUrlError {
    /// It is not a URL.
    #[error(transparent)]
    Invalid(#[from] hyper::http::uri::InvalidUri),
    /// It is not an `http://` URL with a host (the only kind supported).
    #[error("must be an http:// URL with a host")]
    NotHttp,
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
    pub(crate) fn new(url: &str, max_body: usize) -> Result<Self, McpUrlError> {
        let url: Uri = url.parse()?;
        if url.scheme_str() != Some("http") || url.host().is_none() {
            return Err(McpUrlError::NotHttp);
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(McpClient { url, client, sessions: Mutex::new(McpSessions::default()), max_body })
    }

    fn policy<T>(&self, f: impl FnOnce(&mut McpSessions) -> T) -> T {
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut sessions)
    }

    /// Carries `call` through the session policy and returns what to answer the gateway with.
    pub(crate) async fn call(&self, call: McpCall) -> McpReply {
        let (mut exchange, mut step) = self.policy(|s| s.begin(&call));
        loop {
            let (body, headers) = match step {
                Step::Done(reply) => return reply,
                Step::Post { body, headers } => (body, headers),
            };
            let (text, id) = match &body {
                PostBody::Call => (call.body.as_str(), call.jsonrpc_id.as_deref()),
                PostBody::Initialize(init) => (init.as_str(), None),
                PostBody::Initialized => (INITIALIZED, None),
            };
            // Only the call's own answer must carry its id; the renewal's requests take any response.
            let result = self.exchange(text, &headers, id).await;
            step = self.policy(|s| s.handle(&mut exchange, result));
        }
    }

    /// One POST; with `id`, the answer is the response to that id (any response, without).
    async fn exchange(&self, body: &str, session: &SessionHeaders, id: Option<&RawValue>) -> PostResult {
        match self.post(body, session, id).await {
            Ok(result) => result,
            Err(e) => PostResult::Failed(e),
        }
    }

    async fn post(&self, body: &str, session: &SessionHeaders, id: Option<&RawValue>) -> Result<PostResult, String> {
        let mut request = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        if let Some(sid) = &session.session_id {
            request = request.header(SESSION_HEADER, sid);
        }
        if let Some(version) = &session.protocol_version {
            request = request.header(VERSION_HEADER, version);
        }
        let request = request.body(Full::new(Bytes::from(body.to_owned()))).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| describe_client_error(&e))?;
        let status = response.status();
        let session_id = header_str(response.headers(), SESSION_HEADER);
        if status == StatusCode::ACCEPTED {
            return Ok(PostResult::Answer { reply: McpReply::NoContent, session_id });
        }
        let content_type =
            header_str(response.headers(), CONTENT_TYPE.as_str()).unwrap_or_default().to_ascii_lowercase();
        let mut body = response.into_body();
        if status.is_success() && content_type.starts_with("text/event-stream") {
            let mut parser = SseParser::new(self.max_body);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading the local MCP event stream: {e}"))?;
                let Ok(data) = frame.into_data() else { continue };
                for event in parser.push(&data).map_err(|e| e.to_string())? {
                    let text = event.data.trim();
                    if text.is_empty() || !jsonrpc::is_response_to(text, id) {
                        continue; // a priming event, a notification or a request from the server
                    }
                    let raw = RawValue::from_string(text.to_owned()).map_err(|_| "invalid JSON in event stream")?;
                    return Ok(PostResult::Answer { reply: McpReply::Response(raw), session_id });
                }
            }
            if id.is_none() {
                return Ok(PostResult::Answer { reply: McpReply::NoContent, session_id });
            }
            return Err("local MCP event stream ended without a response".to_owned());
        }
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the local MCP response: {e}"))?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > self.max_body {
                    return Err(format!("local MCP response larger than {} bytes", self.max_body));
                }
                bytes.extend_from_slice(&data);
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        // Whatever the status, a JSON-RPC response to this request is the answer: newer servers send their
        // errors with 4xx statuses.
        if !text.is_empty()
            && jsonrpc::is_response_to(text, id)
            && let Ok(raw) = RawValue::from_string(text.to_owned())
        {
            return Ok(PostResult::Answer { reply: McpReply::Response(raw), session_id });
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(PostResult::NotFound);
        }
        if !status.is_success() {
            return Err(format!("local MCP endpoint answered HTTP {status}"));
        }
        if text.is_empty() {
            return Ok(PostResult::Answer { reply: McpReply::NoContent, session_id });
        }
        let raw = RawValue::from_string(text.to_owned())
            .map_err(|_| "local MCP endpoint answered with invalid JSON".to_owned())?;
        Ok(PostResult::Answer { reply: McpReply::Response(raw), session_id })
    }
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

//! The sled's client for its local MCP endpoint, speaking MCP's Streamable HTTP transport.
//!
//! - Each message is `POST`ed with `Accept: application/json, text/event-stream`.
//! - `200` + JSON: that object is the answer. `200` + event stream: events are read until the JSON-RPC
//!   response to this request; notifications and empty priming events on the way are skipped. `202`: the
//!   message was a notification; the answer is `null`.
//! - Sessions: the `Mcp-Session-Id` returned by `initialize` (and the negotiated protocol version) are sent
//!   with later requests of the same session key. A `404` for a known session means the local server lost
//!   it (it restarted): the cached `initialize` is replayed, `notifications/initialized` sent, and the request
//!   retried once.
//! - Every failure becomes [`McpReply::Failed`], which the core turns into a JSON-RPC error carrying the
//!   request's own id. The call's deadline belongs to the core, which cancels the task.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use uplink_proto::McpReply;
use uplink_proto::RawValue;
use uplink_proto::jsonrpc::{self, BodyId};
use uplink_proto::sse::SseParser;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// What one session key knows about its local session.
#[derive(Clone, Debug, Default)]
struct Session {
    id: Option<String>,
    protocol_version: Option<String>,
    initialize: Option<String>,
}

enum Exchange {
    Answer {
        reply: McpReply,
        session_id: Option<String>,
    },
    /// `404` while a session id was sent.
    SessionGone,
}

/// Pooled HTTP client for the local MCP endpoint.
pub(crate) struct McpClient {
    url: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    sessions: Mutex<HashMap<String, Session>>,
    max_body: usize,
}

impl McpClient {
    pub(crate) fn new(url: &str, max_body: usize) -> Result<Self, String> {
        let url: Uri = url.parse().map_err(|e| format!("{e}"))?;
        if url.scheme_str() != Some("http") || url.host().is_none() {
            return Err("must be an http:// URL with a host".to_owned());
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(McpClient { url, client, sessions: Mutex::new(HashMap::new()), max_body })
    }

    fn session(&self, key: &str) -> Session {
        self.sessions.lock().map(|s| s.get(key).cloned().unwrap_or_default()).unwrap_or_default()
    }

    fn store(&self, key: &str, session: Session) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(key.to_owned(), session);
        }
    }

    /// Sends one JSON-RPC message and returns what to answer the gateway with.
    pub(crate) async fn call(&self, body: String, session_key: Option<String>) -> McpReply {
        let key = session_key.unwrap_or_default();
        let is_initialize = jsonrpc::shape(&body).and_then(|s| s.method).as_deref() == Some("initialize");
        let id = match jsonrpc::body_id(&body) {
            BodyId::Id(id) => Some(id.to_owned()),
            _ => None,
        };
        let current = if is_initialize { Session::default() } else { self.session(&key) };
        match self.exchange(&body, &current, id.as_deref()).await {
            Ok(Exchange::Answer { reply, session_id }) => {
                if is_initialize {
                    self.remember_initialize(&key, &body, &reply, session_id);
                }
                reply
            }
            Ok(Exchange::SessionGone) => {
                let renewed = match self.reinitialize(&key, &current).await {
                    Ok(s) => s,
                    Err(e) => return McpReply::Failed(e),
                };
                match self.exchange(&body, &renewed, id.as_deref()).await {
                    Ok(Exchange::Answer { reply, .. }) => reply,
                    Ok(Exchange::SessionGone) => {
                        McpReply::Failed("local MCP session lost again right after re-initializing".to_owned())
                    }
                    Err(e) => McpReply::Failed(e),
                }
            }
            Err(e) => McpReply::Failed(e),
        }
    }

    fn remember_initialize(&self, key: &str, body: &str, reply: &McpReply, session_id: Option<String>) {
        let protocol_version = match reply {
            McpReply::Response(raw) => serde_json::from_str::<serde_json::Value>(raw.get())
                .ok()
                .and_then(|v| v.pointer("/result/protocolVersion").and_then(|p| p.as_str()).map(str::to_owned)),
            _ => None,
        };
        self.store(key, Session { id: session_id, protocol_version, initialize: Some(body.to_owned()) });
    }

    /// The local server forgot our session: replay `initialize`, confirm it, keep the new session.
    async fn reinitialize(&self, key: &str, old: &Session) -> Result<Session, String> {
        let Some(init) = old.initialize.clone() else {
            return Err("local MCP session expired and no initialize request is known to renew it".to_owned());
        };
        let init_id = match jsonrpc::body_id(&init) {
            BodyId::Id(id) => Some(id.to_owned()),
            _ => None,
        };
        let (reply, session_id) = match self.exchange(&init, &Session::default(), init_id.as_deref()).await? {
            Exchange::Answer { reply: reply @ McpReply::Response(_), session_id } => (reply, session_id),
            Exchange::Answer { reply: McpReply::Failed(e), .. } => return Err(format!("re-initializing: {e}")),
            _ => return Err("re-initializing the local MCP session failed".to_owned()),
        };
        self.remember_initialize(key, &init, &reply, session_id);
        let renewed = self.session(key);
        match self.exchange(INITIALIZED, &renewed, None).await? {
            Exchange::Answer { reply: McpReply::Failed(e), .. } => Err(format!("confirming re-initialization: {e}")),
            Exchange::Answer { .. } => Ok(renewed),
            Exchange::SessionGone => Err("local MCP server refused its new session".to_owned()),
        }
    }

    async fn exchange(&self, body: &str, session: &Session, id: Option<&RawValue>) -> Result<Exchange, String> {
        let mut request = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        if let Some(sid) = &session.id {
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
            return Ok(Exchange::Answer { reply: McpReply::NoContent, session_id });
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
                    return Ok(Exchange::Answer { reply: McpReply::Response(raw), session_id });
                }
            }
            if id.is_none() {
                return Ok(Exchange::Answer { reply: McpReply::NoContent, session_id });
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
            return Ok(Exchange::Answer { reply: McpReply::Response(raw), session_id });
        }
        if status == StatusCode::NOT_FOUND && session.id.is_some() {
            return Ok(Exchange::SessionGone);
        }
        if !status.is_success() {
            return Err(format!("local MCP endpoint answered HTTP {status}"));
        }
        if text.is_empty() {
            return Ok(Exchange::Answer { reply: McpReply::NoContent, session_id });
        }
        let raw = RawValue::from_string(text.to_owned())
            .map_err(|_| "local MCP endpoint answered with invalid JSON".to_owned())?;
        Ok(Exchange::Answer { reply: McpReply::Response(raw), session_id })
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

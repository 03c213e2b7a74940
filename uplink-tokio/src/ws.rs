//! The WebSocket side: dialling the gateway, and reading and writing one connection from the driver's loop.
//!
//! Nothing here decides anything: the driver feeds what is read to the core and queues what the core sends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use uplink_proto::ConnectError;

use crate::redact::scrub;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames queued for one connection before it counts as stuck.
pub(crate) const OUTBOX: usize = 1024;

/// Bytes queued for one connection before it counts as stuck (one frame of any allowed size is always taken).
pub(crate) const OUTBOX_BYTES: usize = 32 << 20;

/// Bytes a connection gathers before writing them out within a write turn.
pub(crate) const WRITE_BUFFER: usize = 64 * 1024;

/// How long a close handshake may take before the socket is simply dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Where and how to dial.
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) bearer: Option<String>,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) ws_config: WebSocketConfig,
}

impl Target {
    pub(crate) fn ws_config(max_message_size: usize) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(max_message_size))
            .max_frame_size(Some(max_message_size))
            // Idle sleds should be cheap: the read buffer is allocated up front for every connection, and
            // 4 KiB (not 8) keeps a gateway at about 12 KiB per idle sled; larger frames take more reads.
            .read_buffer_size(4 * 1024)
            // Frames handed over in one write turn leave together, in as few segments as they fit: the
            // library writes out once this much is buffered, and at the flush that ends every write turn.
            .write_buffer_size(WRITE_BUFFER)
    }

    pub(crate) async fn dial(&self) -> Result<Ws, (ConnectError, String)> {
        let secret = self.bearer.as_deref();
        let other = |e: &dyn std::fmt::Display| (ConnectError::Other, scrub(&e.to_string(), secret));
        let mut request = self.url.as_str().into_client_request().map_err(|e| other(&e))?;
        if let Some(token) = &self.bearer {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| other(&e))?;
            value.set_sensitive(true);
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let connector = if request.uri().scheme_str() == Some("wss") {
            Connector::Rustls(self.tls.clone())
        } else {
            Connector::Plain
        };
        match tokio_tungstenite::connect_async_tls_with_config(request, Some(self.ws_config), true, Some(connector))
            .await
        {
            Ok((ws, _response)) => Ok(ws),
            Err(tungstenite::Error::Http(response))
                if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) =>
            {
                let why = match &self.bearer {
                    None => format!(
                        "the gateway wants a sled token and none was given (--token, UPLINK_TOKEN) (HTTP {})",
                        response.status()
                    ),
                    Some(_) => format!("gateway refused the token (HTTP {})", response.status()),
                };
                Err((ConnectError::Unauthorized, why))
            }
            Err(e) => {
                let (error, detail) = other(&e);
                let status = match &e {
                    tungstenite::Error::Http(response) => Some(response.status()),
                    _ => None,
                };
                // Nothing at the path is a refusal the core tells the agents at once; the rest is retried.
                let error = if status == Some(StatusCode::NOT_FOUND) { ConnectError::NotFound } else { error };
                Err((error, with_hint(detail, status, request_is_tls(&self.url))))
            }
        }
    }
}

fn request_is_tls(url: &str) -> bool {
    url.trim_start().to_ascii_lowercase().starts_with("wss://")
}

/// `detail` with what a newcomer most likely got wrong, when the error says so.
fn with_hint(detail: String, status: Option<StatusCode>, tls: bool) -> String {
    let lower = detail.to_ascii_lowercase();
    let hint = if status == Some(StatusCode::NOT_FOUND) {
        Some("nothing there: the gateway's WebSocket path is /api/sled-uplink")
    } else if tls && (lower.contains("invalidcontenttype") || lower.contains("corrupt message")) {
        Some("this port does not speak TLS: try ws:// instead of wss://")
    } else if !tls && (lower.contains("httparse") || lower.contains("http format") || lower.contains("invalid http")) {
        Some("the answer was not HTTP: if this port speaks TLS, try wss://")
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{detail} ({hint})"),
        None => detail,
    }
}

/// An open WebSocket, read and written from its owner's own loop (the sled's driver, or a gateway connection's
/// task), so a frame crosses no task boundary between the socket and the core.
///
/// Writes never block that loop. Frames wait in a bounded queue and are handed to the socket as it accepts
/// them; a peer that stops reading fills the queue, and the owner then treats the connection as dead.
pub(crate) struct Link<S = MaybeTlsStream<TcpStream>> {
    ws: Box<WebSocketStream<S>>,
    /// Set when the socket may have become readable since the last read.
    readable: Arc<ReadWaker>,
    /// The waker given to the socket's reads: sets `readable`, then wakes the owner's task.
    read_waker: Waker,
    /// The last read gave a message, so the library may hold more already read from the socket.
    more: bool,
    queue: VecDeque<Message>,
    /// Bytes of the frames in `queue`.
    queued_bytes: usize,
    /// Frames handed to the socket since its last flush.
    unflushed: bool,
}

/// What reading a connection gave.
pub(crate) enum Read {
    /// A message for the core.
    Message(Message),
    /// The peer sent a close frame (what it said, and its code if it gave one); the library has queued the
    /// answer.
    ClosedByPeer(String, Option<u16>),
    /// A message over the size limit: the connection is to be closed with 1009.
    TooBig(String),
    /// The connection failed or ended.
    Ended(String),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Link<S> {
    pub(crate) fn new(ws: Box<WebSocketStream<S>>) -> Link<S> {
        let readable = Arc::new(ReadWaker { flag: AtomicBool::new(true), task: AtomicWaker::new() });
        let read_waker = Waker::from(readable.clone());
        Link { ws, readable, read_waker, more: true, queue: VecDeque::new(), queued_bytes: 0, unflushed: false }
    }

    /// Queues a frame. `false` when the queue is full (more than [`OUTBOX`] frames, or more than
    /// [`OUTBOX_BYTES`] with something already waiting): the peer has stopped reading.
    pub(crate) fn queue(&mut self, message: Message) -> bool {
        let len = message.len();
        if self.queue.len() >= OUTBOX || (!self.queue.is_empty() && self.queued_bytes + len > OUTBOX_BYTES) {
            return false;
        }
        self.queued_bytes += len;
        self.queue.push_back(message);
        true
    }

    /// Hands queued frames to the socket and flushes them. `Ready(Ok)` once everything is out; `Pending`
    /// while the socket cannot take more (the task is woken when it can).
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>, secret: Option<&str>) -> Poll<Result<(), String>> {
        let failed = |e: tungstenite::Error| scrub(&e.to_string(), secret);
        while !self.queue.is_empty() {
            ready!(self.ws.poll_ready_unpin(cx)).map_err(failed)?;
            if let Some(message) = self.queue.pop_front() {
                self.queued_bytes -= message.len();
                self.ws.start_send_unpin(message).map_err(failed)?;
                self.unflushed = true;
            }
        }
        if self.unflushed {
            ready!(self.ws.poll_flush_unpin(cx)).map_err(failed)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads the next message (the library answers pings and closes by itself).
    ///
    /// The socket is only read when it may hold something: after a message (the library may have read
    /// more), or once its readiness has woken the task. The owner polls its sources on every turn of its
    /// loop, and a read attempt is not free: the library clears its read buffer before every read.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>, secret: Option<&str>) -> Poll<Read> {
        self.readable.task.register(cx.waker());
        if !self.more && !self.readable.flag.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut reading = Context::from_waker(&self.read_waker);
        let next = self.ws.poll_next_unpin(&mut reading);
        self.more = next.is_ready();
        Poll::Ready(match ready!(next) {
            // Not given in message mode; read on.
            Some(Ok(Message::Frame(_))) => return self.poll_read(cx, secret),
            Some(Ok(Message::Close(frame))) => match frame {
                Some(f) => Read::ClosedByPeer(
                    format!("closed by the peer ({} {})", u16::from(f.code), f.reason),
                    Some(f.code.into()),
                ),
                None => Read::ClosedByPeer("closed by the peer".to_owned(), None),
            },
            Some(Ok(message)) => {
                if message.is_ping() {
                    // The library has queued the pong; should its own attempt to send it block, the next
                    // write turn flushes it rather than leave it until the peer sends again.
                    self.unflushed = true;
                }
                Read::Message(message)
            }
            Some(Err(e @ tungstenite::Error::Capacity(_))) => Read::TooBig(scrub(&e.to_string(), secret)),
            Some(Err(e)) => Read::Ended(scrub(&e.to_string(), secret)),
            None => Read::Ended("connection ended".to_owned()),
        })
    }

    /// Finishes the connection: sends what is still queued, then our close frame if `close` is given (else
    /// only what the library queued, such as the answer to the peer's close), and reads until the peer ends
    /// the handshake. All within [`CLOSE_GRACE`].
    pub(crate) async fn finish(self, close: Option<(u16, &'static str)>) {
        let Link { mut ws, mut queue, .. } = self;
        if close.is_none() {
            // The peer closed first: nothing more may be sent but the answer.
            queue.clear();
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, async move {
            for message in queue {
                if ws.feed(message).await.is_err() {
                    return;
                }
            }
            let sent = match close {
                Some((code, reason)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    ws.send(Message::Close(Some(frame))).await
                }
                None => ws.flush().await,
            };
            if sent.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }

    /// [`Link::finish`] in a task of its own, so the owner never waits on a peer.
    pub(crate) fn retire(self, close: Option<(u16, &'static str)>) -> JoinHandle<()> {
        tokio::spawn(self.finish(close))
    }
}

/// Wakes a [`Link`]'s owner for its socket's reads, noting that they may now make progress.
struct ReadWaker {
    flag: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod hint_tests {
    use super::*;

    #[test]
    fn the_usual_mistakes_get_a_hint() {
        let h = |detail: &str, status, tls| with_hint(detail.to_owned(), status, tls);
        assert!(h("HTTP error: 404 Not Found", Some(StatusCode::NOT_FOUND), false).ends_with("is /api/sled-uplink)"));
        let tls_on_plain = "TLS error: rustls error: received corrupt message of type InvalidContentType";
        assert!(h(tls_on_plain, None, true).ends_with("try ws:// instead of wss://)"));
        assert!(h("HTTP format error: invalid HTTP version", None, false).contains("try wss://"));
        assert_eq!(
            h("IO error: Connection refused (os error 111)", None, false),
            "IO error: Connection refused (os error 111)"
        );
    }
}

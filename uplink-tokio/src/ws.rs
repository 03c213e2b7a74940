//! The WebSocket side: dialling the gateway, and reading and writing one connection from the driver's loop.
//!
//! Nothing here decides anything: the driver feeds what is read to the core and queues what the core sends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use uplink_proto::{ConnId, ConnectError};

use crate::driver::Io;
use crate::redact::scrub;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames queued for one connection before it counts as stuck.
pub(crate) const OUTBOX: usize = 1024;

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
            // Idle sleds should be cheap: small buffers that grow on demand.
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
    }

    async fn dial(&self) -> Result<Ws, (ConnectError, String)> {
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
                Err((ConnectError::Unauthorized, format!("gateway refused the token (HTTP {})", response.status())))
            }
            Err(e) => Err(other(&e)),
        }
    }
}

/// An open connection, owned by the driver: it reads and writes it from its own loop, so a frame crosses no
/// task boundary between the socket and the core.
///
/// Writes never block the driver. Frames wait in a bounded queue and are handed to the socket as it accepts
/// them; a gateway that stops reading fills the queue, and the driver then treats the connection as dead.
pub(crate) struct Link {
    pub(crate) conn: ConnId,
    ws: Box<Ws>,
    queue: VecDeque<Message>,
    /// Frames handed to the socket since its last flush.
    unflushed: bool,
}

/// What reading a connection gave.
pub(crate) enum Read {
    /// A message for the core.
    Message(Message),
    /// The gateway sent a close frame; the library has queued the answer.
    ClosedByPeer(String),
    /// A message over the size limit: the connection is to be closed with 1009.
    TooBig(String),
    /// The connection failed or ended.
    Ended(String),
}

impl Link {
    pub(crate) fn new(conn: ConnId, ws: Box<Ws>) -> Link {
        Link { conn, ws, queue: VecDeque::new(), unflushed: false }
    }

    /// Queues a frame. `false` when the queue is full: the gateway has stopped reading.
    pub(crate) fn queue(&mut self, message: Message) -> bool {
        if self.queue.len() >= OUTBOX {
            return false;
        }
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
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>, secret: Option<&str>) -> Poll<Read> {
        loop {
            return Poll::Ready(match ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => Read::ClosedByPeer(match frame {
                    Some(f) => format!("gateway closed the connection ({} {})", u16::from(f.code), f.reason),
                    None => "gateway closed the connection".to_owned(),
                }),
                Some(Ok(message)) => Read::Message(message),
                Some(Err(e @ tungstenite::Error::Capacity(_))) => Read::TooBig(scrub(&e.to_string(), secret)),
                Some(Err(e)) => Read::Ended(scrub(&e.to_string(), secret)),
                None => Read::Ended("connection ended".to_owned()),
            });
        }
    }

    /// Finishes the connection in a task of its own, so the driver never waits on a peer: sends what is still
    /// queued, then our close frame if `close` is given (else only what the library queued, such as the answer
    /// to the gateway's close), and reads until the gateway ends the handshake. All within [`CLOSE_GRACE`].
    pub(crate) fn retire(self, close: Option<(u16, &'static str)>) -> JoinHandle<()> {
        let Link { mut ws, mut queue, .. } = self;
        if close.is_none() {
            // The gateway closed first: nothing more may be sent but the answer.
            queue.clear();
        }
        tokio::spawn(async move {
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
        })
    }
}

/// Dials in a task of its own and reports the outcome; aborting the task abandons the attempt.
pub(crate) fn dial(conn: ConnId, target: Arc<Target>, io: mpsc::Sender<Io>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let result = target.dial().await.map(Box::new);
        let _ = io.send(Io::Dialed { conn, result }).await;
    })
}

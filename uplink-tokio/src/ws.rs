//! The WebSocket side: dialling the gateway, and the two tasks that move frames for one connection.
//!
//! A connection is read by one task and written by another, so a gateway that stops reading cannot stall the
//! reader (or the driver): the writer's bounded outbox fills instead, and the driver then treats the
//! connection as dead. Nothing here decides anything; events go to the driver tagged with their [`ConnId`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use uplink_proto::{ConnId, ConnectError};

use crate::driver::Io;
use crate::redact::scrub;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

/// What the driver asks a connection's writer to do.
#[derive(Debug)]
pub(crate) enum WsOut {
    Text(String),
    Ping,
    Close(u16, &'static str),
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

/// Dials, reports the outcome, then reads the connection until it ends. Aborting the task abandons the
/// attempt or stops reading.
pub(crate) async fn connection_task(conn: ConnId, target: Arc<Target>, io: mpsc::Sender<Io>) {
    let ws = match target.dial().await {
        Ok(ws) => ws,
        Err((error, detail)) => {
            let _ = io.send(Io::ConnectFailed { conn, error, detail }).await;
            return;
        }
    };
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(OUTBOX);
    // Set by the writer once it sends our close: the peer's close frame then completes the handshake.
    let we_closed = Arc::new(AtomicBool::new(false));
    let writer =
        tokio::spawn(writer_task(conn, sink, rx, io.clone(), target.bearer.clone(), we_closed.clone())).abort_handle();
    // Kept to tell the gateway why, if it sends a message over the size limit.
    let outbox = tx.clone();
    if io.send(Io::Connected { conn, outbox: tx, writer: writer.clone() }).await.is_err() {
        writer.abort();
        return;
    }
    let detail = loop {
        match stream.next().await {
            Some(Ok(Message::Close(frame))) => {
                let detail = match frame {
                    Some(f) => format!("gateway closed the connection ({} {})", u16::from(f.code), f.reason),
                    None => "gateway closed the connection".to_owned(),
                };
                let _ = io.send(Io::Closed { conn, detail }).await;
                if !we_closed.load(Ordering::Acquire) {
                    // The gateway started the close: reading on lets the library send our answer.
                    let _ = tokio::time::timeout(CLOSE_GRACE, async { while let Some(Ok(_)) = stream.next().await {} })
                        .await;
                }
                return;
            }
            Some(Ok(Message::Frame(_))) => {}
            Some(Ok(message)) => {
                if io.send(Io::Frame { conn, message }).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                if let tungstenite::Error::Capacity(_) = e {
                    // Oversized message: close with 1009, as the gateway does, before the connection is dropped.
                    let _ = outbox.try_send(WsOut::Close(1009, "message too big"));
                }
                break scrub(&e.to_string(), target.bearer.as_deref());
            }
            None => break "connection ended".to_owned(),
        }
    };
    let _ = io.send(Io::Closed { conn, detail }).await;
}

async fn writer_task(
    conn: ConnId,
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut outbox: mpsc::Receiver<WsOut>,
    io: mpsc::Sender<Io>,
    secret: Option<String>,
    we_closed: Arc<AtomicBool>,
) {
    while let Some(out) = outbox.recv().await {
        // Queue everything already waiting, then flush once.
        let mut batch = vec![out];
        while let Ok(more) = outbox.try_recv() {
            batch.push(more);
        }
        for out in batch {
            let result = match out {
                WsOut::Text(text) => sink.feed(Message::text(text)).await,
                WsOut::Ping => sink.feed(Message::Ping(Bytes::new())).await,
                WsOut::Close(code, reason) => {
                    we_closed.store(true, Ordering::Release);
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
                    return;
                }
            };
            if let Err(e) = result {
                let _ = io.send(Io::Closed { conn, detail: scrub(&e.to_string(), secret.as_deref()) }).await;
                return;
            }
        }
        if let Err(e) = sink.flush().await {
            let _ = io.send(Io::Closed { conn, detail: scrub(&e.to_string(), secret.as_deref()) }).await;
            return;
        }
    }
    // The driver dropped the outbox: the connection is over.
}

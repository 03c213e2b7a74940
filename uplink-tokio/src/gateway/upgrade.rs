//! `GET /api/sled-uplink`: a sled's WebSocket upgrade, and the loop that carries its connection.
//!
//! The loop is the socket's and nothing else's: what the sled sends goes to the hub task as it arrives, what
//! the hub sends is queued and written in write turns. It makes no protocol decision: even an oversized
//! message is reported, and the hub answers with the close to send.

use std::sync::Arc;
use std::task::Poll;

use axum::extract::{Request, State};
use axum::response::{IntoResponse as _, Response};
use hyper::StatusCode;
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::{debug, info};
use uplink_proto::gateway::{AcceptError, ConnHandle};

use super::hub_handle::{CONN_QUEUE, ConnOut, HubHandle};
use super::shared::Shared;
use crate::http::{bearer, error, query_token};
use crate::socket_loop::{Turn, Turns};
use crate::ws::{Link, Read};

/// Checks the sled token, registers the connection with the hub, and answers `101`; the connection's loop
/// starts once hyper hands over the socket.
pub(super) async fn sled_upgrade(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let from_query = if shared.accept_query_token { query_token(request.uri()) } else { None };
    let token = from_query.or_else(|| bearer(request.headers()).map(str::to_owned));
    let credentials = shared.credentials();
    let how = if shared.accept_query_token { "?token= or Authorization: Bearer" } else { "Authorization: Bearer" };
    // Refusals are logged with their reason, never with the token.
    let Some(token) = token else {
        info!(how, "sled refused: it sent no token");
        shared.metrics.refused("no_token");
        return error(StatusCode::UNAUTHORIZED, &format!("sled token required: none was sent ({how})"));
    };
    let Some(credential) = credentials.sled(&token).cloned() else {
        info!("sled refused: its token is not a sled credential's (unknown, revoked, or an admin token)");
        shared.metrics.refused("unknown_token");
        let message = format!("sled token required: this one is not known ({how})");
        return shared.auth.refuse(request.extensions(), &shared.metrics, &message);
    };
    drop(credentials);
    let upgrade = request.headers().get("upgrade").and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(key) = request.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes())) else {
        return error(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return error(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    }
    let (out_tx, out_rx) = mpsc::channel(CONN_QUEUE);
    let label = credential.label.clone();
    let conn = match shared.hub.open(credential, out_tx).await {
        Ok(conn) => conn,
        Err(AcceptError::Expired) => {
            info!(label = %label.escape_debug(), "sled refused: its credential has expired");
            shared.metrics.refused("expired");
            return error(StatusCode::UNAUTHORIZED, "this sled credential has expired");
        }
        Err(refused) => {
            info!(label = %label.escape_debug(), reason = %refused, "sled refused");
            shared.metrics.refused(match refused {
                AcceptError::TooManyConnections => "too_many_connections",
                AcceptError::TooManyUnidentified => "too_many_unidentified",
                _ => "shutting_down",
            });
            return error(StatusCode::SERVICE_UNAVAILABLE, &refused.to_string());
        }
    };
    let task = {
        let hub = shared.hub.clone();
        let ws_config = shared.ws_config;
        async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => {
                    let ws =
                        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config)).await;
                    sled_connection(ws, conn, hub, out_rx).await;
                }
                Err(e) => {
                    debug!(%e, "WebSocket upgrade failed");
                    hub.ended(conn).await;
                }
            }
        }
    };
    {
        let mut tasks = shared.sled_tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Reap the finished ones as new ones come, so the set holds only live connections.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// What woke a connection's loop.
enum Wake {
    Read(Read),
    Out(Option<ConnOut>),
    WriteFailed(String),
}

/// How a connection ends.
enum Ending {
    /// Send what is queued, then this close frame, and wait for the sled's answer.
    Close(u16, &'static str),
    /// The sled closed first: send the library's answer.
    Answer,
    /// The socket is of no use: drop it.
    Drop,
}

/// Carries one sled connection: socket reads to the hub, the hub's frames to the socket. Writes never block
/// the loop; a sled that stops reading fills its queue and is dropped.
async fn sled_connection<S>(ws: WebSocketStream<S>, conn: ConnHandle, hub: HubHandle, mut out: mpsc::Receiver<ConnOut>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut link = Link::new(Box::new(ws));
    let mut reading = true;
    let mut turns = Turns::default();
    let ending = loop {
        let wake = std::future::poll_fn(|cx| {
            turns.poll(cx, 2, |turn, cx| match turn {
                Turn::Input(0) if reading => link.poll_read(cx, None).map(Wake::Read),
                Turn::Input(0) => Poll::Pending,
                Turn::Input(_) => out.poll_recv(cx).map(Wake::Out),
                Turn::Write => match link.poll_write(cx, None) {
                    Poll::Ready(Err(detail)) => Poll::Ready(Wake::WriteFailed(detail)),
                    _ => Poll::Pending,
                },
            })
        })
        .await;
        match wake {
            Wake::Read(Read::Message(message)) => {
                if !hub.received(conn, message).await {
                    break Ending::Drop;
                }
            }
            Wake::Read(Read::ClosedByPeer(detail, _)) => {
                debug!(conn = conn.0, %detail, "sled connection ended");
                hub.ended(conn).await;
                break Ending::Answer;
            }
            Wake::Read(Read::TooBig(detail)) => {
                // The hub answers with the close to send; nothing more is read meanwhile.
                debug!(conn = conn.0, %detail, "sled sent an oversized message");
                reading = false;
                hub.too_big(conn).await;
            }
            Wake::Read(Read::Ended(detail)) | Wake::WriteFailed(detail) => {
                debug!(conn = conn.0, %detail, "sled connection failed");
                hub.ended(conn).await;
                break Ending::Drop;
            }
            Wake::Out(Some(ConnOut::Frame(message))) => {
                if !link.queue(message) {
                    debug!(conn = conn.0, "sled stopped reading; dropping it");
                    hub.ended(conn).await;
                    break Ending::Drop;
                }
            }
            Wake::Out(Some(ConnOut::Close(reason))) => break Ending::Close(reason.code(), reason.text()),
            // The hub let go of this connection without a close: it could not keep up.
            Wake::Out(None) => break Ending::Drop,
        }
    };
    match ending {
        Ending::Drop => {}
        Ending::Answer => link.finish(None).await,
        Ending::Close(code, reason) => link.finish(Some((code, reason))).await,
    }
}

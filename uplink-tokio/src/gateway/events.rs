//! `GET /api/events`: what happens at the gateway, as Server-Sent Events, to any number of clients.
//!
//! The hub task publishes each event once: it is written as JSON once, and every client's queue holds the
//! same text. Each client has a byte budget for what it has not read yet; a client that falls further behind
//! (it stopped reading, or reads too slowly) gets a `lagged` event and its stream ends, so a client can never
//! make the gateway hold more than its budget. A client with nothing queued always gets the next event,
//! however large. The number of clients has a budget too (`503` beyond).
//!
//! In a cluster, a client at one node gets every live node's events: its own, and each other node's as that
//! node's internal stream (`GET /internal/events`, its own events only) has them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use futures_util::StreamExt as _;
use futures_util::stream::{BoxStream, Stream};
use http_body_util::BodyExt as _;
use hyper::StatusCode;
use serde_json::json;
use uplink_proto::gateway::peers::PEER_CALL_WITHIN;
use uplink_proto::sse::{SseEvent, SseParser};

use super::extract::Reader;
use super::fanout::Item;
use super::peers::{Call, Peers};
use super::shared::Shared;
use crate::http::error;
use crate::store::Peer;

/// `GET /api/events`: this node's events; in a cluster, every live node's too (each as that node's stream
/// has it, its data with the node's id as `node`; a node whose stream fails or ends says so once with
/// `node_unreachable`, and the client re-lists).
pub(super) async fn events(_: Reader, State(shared): State<Arc<Shared>>) -> Response {
    let Some(own) = own_events(&shared).await else {
        shared.metrics.overflow("event_clients");
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many event clients, or the gateway is stopping");
    };
    let Some(peers) = shared.peers.clone() else {
        return sse(own.map(|e| Ok(plain(e))));
    };
    let me = peers.me;
    let own = own.map(move |e| Ok(with_node(e, me)));
    let mut streams: Vec<BoxStream<'static, Result<Event, Infallible>>> = vec![Box::pin(own)];
    // The other nodes, as they are when the client comes: one that joins later is in its next connection.
    for peer in peers.others().await.unwrap_or_default() {
        let (peers, closing) = (peers.clone(), shared.closing.subscribe());
        streams.push(Box::pin(peer_events(peers, peer, closing)));
    }
    sse(futures_util::stream::select_all(streams))
}

/// This node's own events as the stream of one client (`None`: no room for another client), ending with the
/// server, or with `lagged` for a client that fell behind its budget.
async fn own_events(shared: &Shared) -> Option<impl Stream<Item = SseEvent> + Send + 'static> {
    let subscription = shared.hub.subscribe().await?;
    let closing = shared.closing.subscribe();
    let metrics = shared.metrics.clone();
    Some(futures_util::stream::unfold((subscription, closing, false), move |(mut subscription, mut closing, ended)| {
        let metrics = metrics.clone();
        async move {
            if ended || *closing.borrow() {
                return None;
            }
            let (event, ended) = tokio::select! {
                item = subscription.next() => match item? {
                    Item::Event(e) => (SseEvent { event: e.kind.to_owned(), data: e.data.to_string() }, false),
                    Item::Lagged { queued, budget } => {
                        metrics.overflow("event_client_bytes");
                        let data = json!({"queued_bytes": queued, "limit_bytes": budget}).to_string();
                        (SseEvent { event: "lagged".to_owned(), data }, true)
                    }
                },
                _ = closing.changed() => return None,
            };
            Some((event, (subscription, closing, ended)))
        }
    }))
}

/// `GET /internal/events` for another node: this node's own events only (never those it takes from its
/// peers), so that no event goes round.
pub(super) async fn own(shared: &Shared) -> Response {
    match own_events(shared).await {
        Some(own) => sse(own.map(|e| Ok(plain(e)))),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "too many event clients, or the gateway is stopping"),
    }
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive");
    ([("cache-control", "no-cache")], Sse::new(stream).keep_alive(keep_alive)).into_response()
}

/// An event as it is.
fn plain(event: SseEvent) -> Event {
    Event::default().event(event.event).data(event.data)
}

/// An event whose data is a JSON object, with `node` added.
fn with_node(event: SseEvent, node: u64) -> Event {
    let data = match event.data.strip_prefix('{').map(str::trim_start) {
        Some(rest) if rest.starts_with('}') => format!(r#"{{"node":{node}}}"#),
        Some(rest) => format!(r#"{{"node":{node},{rest}"#),
        None => event.data,
    };
    let kind = if event.event.is_empty() { "message".to_owned() } else { event.event };
    Event::default().event(kind).data(data)
}

/// `peer`'s own events, read from its internal stream, until it ends or this server closes; a stream that
/// fails or ends is said once as `node_unreachable`.
fn peer_events(
    peers: Arc<Peers>,
    peer: Peer,
    closing: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    struct Reading {
        body: Option<hyper::body::Incoming>,
        parser: SseParser,
        ready: std::collections::VecDeque<SseEvent>,
        done: bool,
    }
    let node = peer.node;
    let start = async move {
        let call = Call { method: "GET", path: "/internal/events", carried: &[] };
        let opened = tokio::time::timeout(PEER_CALL_WITHIN, peers.send(&peer, &call, bytes::Bytes::new())).await;
        let body = match opened {
            Ok(Ok(r)) if r.status() == StatusCode::OK => Some(r.into_body()),
            _ => None,
        };
        Reading { body, parser: SseParser::new(MAX_PEER_EVENT), ready: Default::default(), done: false }
    };
    futures_util::stream::once(start).flat_map(move |reading| {
        let closing = closing.clone();
        futures_util::stream::unfold((reading, closing), move |(mut r, mut closing)| async move {
            loop {
                if r.done || *closing.borrow() {
                    return None;
                }
                if let Some(event) = r.ready.pop_front() {
                    return Some((Ok(with_node(event, node)), (r, closing)));
                }
                let Some(body) = r.body.as_mut() else {
                    r.done = true;
                    let data = json!({"node": node}).to_string();
                    return Some((Ok(Event::default().event("node_unreachable").data(data)), (r, closing)));
                };
                let frame = tokio::select! {
                    frame = body.frame() => frame,
                    _ = closing.changed() => return None,
                };
                match frame.map(|f| f.map(|f| f.into_data())) {
                    Some(Ok(Ok(data))) => match r.parser.push(&data) {
                        Ok(events) => r.ready.extend(events),
                        Err(_) => r.body = None,
                    },
                    Some(Ok(Err(_))) => {}
                    // Ended or failed: said once.
                    _ => r.body = None,
                }
            }
        })
    })
}

/// The largest event read from another node's stream.
const MAX_PEER_EVENT: usize = 16 << 20;

//! `GET /api/events`: what happens at the gateway, as Server-Sent Events, to any number of clients.
//!
//! The hub task publishes each event once: it is written as JSON once, and every client's queue holds the
//! same text. Each client has a byte budget for what it has not read yet; a client that falls further behind
//! (it stopped reading, or reads too slowly) gets a `lagged` event and its stream ends, so a client can never
//! make the gateway hold more than its budget. A client with nothing queued always gets the next event,
//! however large. The number of clients has a budget too (`503` beyond).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use hyper::StatusCode;
use serde_json::json;

use super::extract::Reader;
use super::fanout::Item;
use super::shared::Shared;
use crate::http::error;

/// `GET /api/events`.
pub(super) async fn events(_: Reader, State(shared): State<Arc<Shared>>) -> Response {
    let Some(subscription) = shared.hub.subscribe().await else {
        shared.metrics.overflow("event_clients");
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many event clients, or the gateway is stopping");
    };
    let closing = shared.closing.subscribe();
    let metrics = shared.metrics.clone();
    let stream =
        futures_util::stream::unfold((subscription, closing, false), move |(mut subscription, mut closing, ended)| {
            let metrics = metrics.clone();
            async move {
                if ended || *closing.borrow() {
                    return None;
                }
                let (event, ended) = tokio::select! {
                    item = subscription.next() => match item? {
                        Item::Event(e) => (Event::default().event(e.kind).data(e.data.as_str()), false),
                        Item::Lagged { queued, budget } => {
                            metrics.overflow("event_client_bytes");
                            let data = json!({"queued_bytes": queued, "limit_bytes": budget}).to_string();
                            (Event::default().event("lagged").data(data), true)
                        }
                    },
                    _ = closing.changed() => return None,
                };
                Some((Ok::<_, Infallible>(event), (subscription, closing, ended)))
            }
        });
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive");
    ([("cache-control", "no-cache")], Sse::new(stream).keep_alive(keep_alive)).into_response()
}

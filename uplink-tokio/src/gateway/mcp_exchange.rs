//! An MCP exchange as the hub task and an HTTP handler share it: what the caller hears ([`McpEvent`]) and how
//! the exchange ended ([`McpOutcome`]), where the task sends it ([`Sink`]), and what the MCP endpoint's
//! handler asks for ([`McpAsk`]). The caller's end of it is [`McpExchange`](super::hub_handle::McpExchange).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use uplink_proto::gateway::mcp_endpoint::Body;
use uplink_proto::gateway::{McpAnswer, McpFailure, McpTicket, Method, Refusal};

/// How an MCP exchange through the hub ended.
pub(crate) enum McpOutcome {
    /// The sled answered.
    Answered(McpAnswer),
    /// It ended without an answer.
    Failed(McpFailure),
    /// It was refused (the endpoint's policy, or no sled to relay to), with the status and error to answer.
    Refused(Refusal),
    /// The session it named ended (`DELETE`).
    SessionEnded,
}

/// What the caller of an MCP exchange hears, in order: its ticket (and a new session's id) unless refused,
/// the sled's messages within it, then its one end.
pub(crate) enum McpEvent {
    Started(McpTicket, Option<String>),
    Message(String),
    Opened,
    End(McpOutcome),
}

/// An HTTP request on the gateway's MCP endpoint, as the hub task takes it: what its
/// [`EndpointRequest`](uplink_proto::gateway::EndpointRequest) is made of, owned, its body, and the id drawn for it if it opens a session.
pub(crate) struct McpAsk {
    pub(crate) method: Method,
    pub(crate) project: String,
    pub(crate) principal: Arc<str>,
    pub(crate) session: Option<String>,
    pub(crate) protocol_version: Option<String>,
    pub(crate) accepts_stream: bool,
    /// What the body is, read before it reached the hub task.
    pub(crate) kind: Body,
    pub(crate) body: String,
    pub(crate) drawn: Option<String>,
}

/// Where an exchange's caller hears of it: every event in order, or (one message, one answer) only its end,
/// which costs one allocation less.
pub(crate) enum Sink {
    Events(mpsc::Sender<McpEvent>),
    Answer(oneshot::Sender<McpOutcome>),
}

impl Sink {
    /// The exchange's end. It always fits: a message never takes an events channel's last place.
    pub(crate) fn end(self, outcome: McpOutcome) {
        match self {
            Sink::Events(events) => {
                let _ = events.try_send(McpEvent::End(outcome));
            }
            Sink::Answer(answer) => {
                let _ = answer.send(outcome);
            }
        }
    }
}

/// Room in each exchange's channel. A caller that lets it fill (it reads too slowly) has its exchange
/// cancelled: the last place is kept for the end, so the end always arrives.
pub(crate) const MCP_EVENTS: usize = 64;

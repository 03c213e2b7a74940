//! The sled's local face for its agents, served by `uplink sled` on `--permission-listen`:
//!
//! - `POST /permission` with `{"tool_name": …, "tool_input": …}` answers `200 {"decision": "approve" |
//!   "deny" | "always_allow"}` once the gateway decides (or the request fails closed). A body that is not
//!   such an object gets `400 {"error": …}`.
//! - `/mcp` is a Streamable HTTP MCP server with one tool, `approve`, following Claude Code's
//!   `--permission-prompt-tool` contract. Input `{"tool_name", "input", "tool_use_id"?}`; the result is one
//!   text block holding `{"behavior":"allow","updatedInput": <input>}` or
//!   `{"behavior":"deny","message": …}`.
//!
//! - `POST /hook` answers Claude Code's `PermissionRequest` hook ([`super::hook`]).
//! - `GET /healthz` says whether the sled can get decisions now: `200` when connected and not refused,
//!   otherwise `503`; the body names the link's state and, after a refusal, its cause and what to change.
//!
//! All only forward to an [`Uplink`]: the decisions are the gateway's, the failure rules the core's.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::hook::{EVENT, MAX_HOOK_EVENT, denied, output};
use crate::sled::{Answer, Uplink};
use axum::extract::Query;
use serde_json::Value;
use uplink_proto::{Cause, Decision, LinkState};

/// A local client must send each request's headers, and then its body, within this long.
pub(crate) const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest `/permission` request body.
pub(crate) const MAX_PERMISSION_BODY: usize = 1 << 20;

/// Input of the `approve` tool (Claude Code's permission prompt contract).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub(crate) struct ApproveInput {
    /// The tool the agent wants to use.
    pub tool_name: String,
    /// The input it wants to use it with.
    pub input: serde_json::Value,
    /// The agent's id for this tool use, if any.
    #[serde(default)]
    pub tool_use_id: Option<String>,
}

/// The MCP server behind `/mcp`.
#[derive(Clone)]
pub(crate) struct ApproveServer {
    uplink: Uplink,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl ApproveServer {
    /// A server that asks `uplink` for every decision.
    pub(crate) fn new(uplink: Uplink) -> Self {
        ApproveServer { uplink, tool_router: Self::tool_router() }
    }

    #[tool(description = "Ask the gateway whether a tool call may run. Returns a JSON text block: \
        {\"behavior\":\"allow\",\"updatedInput\":…} (with \"updatedPermissions\" for an always-allow) or {\"behavior\":\"deny\",\"message\":…}.")]
    async fn approve(&self, Parameters(request): Parameters<ApproveInput>, cancelled: CancellationToken) -> String {
        // A call the client cancels (`notifications/cancelled`, or its session ends) drops the question,
        // which withdraws it at the gateway.
        let answer = tokio::select! {
            answer = self.uplink.ask(&request.tool_name, &request.input) => answer,
            () = cancelled.cancelled() => {
                debug!(tool = %request.tool_name.escape_debug(), "approve tool call cancelled; its request is withdrawn");
                return prompt_answer(Answer::denied(Cause::Withdrawn), &request.tool_name, request.input).to_string();
            }
        };
        debug!(tool = %request.tool_name.escape_debug(), tool_use_id = request.tool_use_id.as_deref().map(|t| tracing::field::display(t.escape_debug())), decision = %answer.decision, cause = %answer.cause, "approve tool");
        prompt_answer(answer, &request.tool_name, request.input).to_string()
    }
}

/// The permission-prompt answer for `answer` to a call of `tool` with `input`; a denial says why. An
/// "always allow" also tells Claude Code to allow such calls for the rest of its session
/// (`updatedPermissions`, destination `session`), with the same rule the gateway made from the request
/// ([`uplink_proto::rules::suggest`]); the gateway's rule covers the sled's other sessions.
pub(crate) fn prompt_answer(answer: Answer, tool: &str, input: serde_json::Value) -> serde_json::Value {
    match answer.decision {
        Decision::AlwaysAllow => {
            let mut allow = json!({"behavior": "allow", "updatedInput": input});
            if let Some(rule) = uplink_proto::rules::suggest(tool, &input.to_string()) {
                let (tool_name, content) = rule.tool_and_content();
                let mut value = json!({"toolName": tool_name});
                if let Some(content) = content {
                    value["ruleContent"] = content.into();
                }
                allow["updatedPermissions"] =
                    json!([{"type": "addRules", "rules": [value], "behavior": "allow", "destination": "session"}]);
            }
            allow
        }
        Decision::Approve => json!({"behavior": "allow", "updatedInput": input}),
        Decision::Deny => json!({
            "behavior": "deny",
            "message": deny_message(answer.cause, answer.message.as_deref()),
        }),
    }
}

/// What an agent is told when it is denied: the cause, and the person's words when there are some.
fn deny_message(cause: Cause, message: Option<&str>) -> String {
    match (cause, message) {
        (Cause::Response, Some(message)) => format!("Permission denied at the gateway: {message}"),
        (Cause::Response, None) => "Permission denied by the gateway.".to_owned(),
        (Cause::Refused(refusal), _) => format!("Permission denied: {} ({}).", refusal.describe(), refusal.hint()),
        (other, _) => format!("Permission denied: {}.", other.describe()),
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ApproveServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("Permission prompts for coding agents, decided by the uplink gateway.")
    }
}

use uplink_proto::sled::local::{LocalPolicy, LocalRequest};

use crate::http::{bearer, error, json_response, read_limited};

/// The local routes: `POST /permission`, the MCP server at `/mcp`, `POST /hook`, `GET /metrics` and
/// `GET /healthz`. Unknown routes answer `404`, a wrong
/// method `405` with `Allow`; every error of ours is JSON.
fn router(uplink: Uplink, policy: LocalPolicy, stop: &CancellationToken) -> Router {
    let mcp = StreamableHttpService::new(
        {
            let uplink = uplink.clone();
            move || Ok(ApproveServer::new(uplink.clone()))
        },
        Arc::new(LocalSessionManager::default()),
        // rmcp's own Host and Origin checks are a second lock behind the core's policy (the middleware
        // below runs first): the same origins, and the loopback names plus the listen address.
        StreamableHttpServerConfig::default()
            .with_cancellation_token(stop.child_token())
            .with_allowed_origins(policy.allowed_origins.iter().cloned())
            .enforce_origin_validation()
            .with_allowed_hosts(["localhost", "127.0.0.1", "::1", policy.listen.as_str()]),
    );
    Router::new()
        .route("/permission", post(permission))
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
        .route("/hook", post(hook))
        .route_service("/mcp", mcp)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route; try POST /permission or /mcp") })
        .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "use POST") })
        // Every request, on every route, first passes the core's local policy.
        .layer(axum::middleware::from_fn_with_state(Arc::new(policy), admit))
        .with_state(uplink)
}

/// `GET /metrics`: the uplink's metrics, Prometheus text (behind the same local policy as the rest).
async fn metrics(State(uplink): State<Uplink>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    axum::response::IntoResponse::into_response((StatusCode::OK, [("content-type", content_type)], uplink.metrics()))
}

/// The query of `POST /hook`.
#[derive(serde::Deserialize, Default)]
pub(crate) struct HookQuery {
    /// `dialog`: as `uplink hook --fallback-to-dialog`.
    #[serde(default)]
    fallback: Option<String>,
}

/// `POST /hook`: the hook's event in, the hook's output out (always `200` once past the local policy, so
/// that even a hook whose `onFailure` lets failures through gets a denial rather than nothing).
pub(crate) async fn hook(State(uplink): State<Uplink>, query: Query<HookQuery>, body: Body) -> Response {
    #[derive(serde::Deserialize)]
    struct Event {
        #[serde(default)]
        hook_event_name: Option<String>,
        tool_name: String,
        #[serde(default)]
        tool_input: Value,
    }
    // Always a decision, also for an event over the limit or too slow to come: an `http` hook takes any
    // other status as a failure, which its `onFailure` may let through to the dialog.
    let Ok(body) = read_limited(body, MAX_HOOK_EVENT, LOCAL_TIMEOUT).await else {
        let why = format!("uplink could not read the hook's event (over {MAX_HOOK_EVENT} bytes, or too slow)");
        return json_response(StatusCode::OK, &denied(&why));
    };
    let event: Event = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => {
            return json_response(StatusCode::OK, &denied(&format!("uplink could not read the hook's event: {e}")));
        }
    };
    if let Some(name) = event.hook_event_name.as_deref().filter(|n| *n != EVENT) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("uplink answers the {EVENT} hook only, not {}", name.escape_debug()),
        );
    }
    let answer = uplink.ask(&event.tool_name, &event.tool_input).await;
    tracing::debug!(tool = %event.tool_name.escape_debug(), decision = %answer.decision, cause = %answer.cause, "permission hook");
    let fallback = query.fallback.as_deref() == Some("dialog");
    if fallback && answer.decision == Decision::Deny && answer.cause.lost_the_link() {
        // No decision: Claude Code asks the person at the terminal.
        return json_response(StatusCode::OK, &json!({}));
    }
    let mut decision = prompt_answer(answer, &event.tool_name, event.tool_input);
    // The input as asked is what runs: an allow never restates it.
    if let Some(fields) = decision.as_object_mut() {
        fields.remove("updatedInput");
    }
    json_response(StatusCode::OK, &output(decision))
}

/// `GET /healthz`: whether this sled can get decisions now, and if not, why.
async fn healthz(State(uplink): State<Uplink>) -> Response {
    let link = uplink.link_state();
    let refused = uplink.refusal();
    let (word, reason) = match &link {
        LinkState::Disabled => ("disabled", None),
        LinkState::Connecting { .. } => ("connecting", None),
        LinkState::Connected { .. } => ("connected", None),
        LinkState::BackingOff { reason, .. } => ("backing_off", Some(reason.describe())),
        LinkState::Closed => ("closed", None),
    };
    let mut body = json!({"link": word});
    if let Some(reason) = reason {
        body["reason"] = reason.into();
    }
    if let Some(refusal) = refused {
        body["refused"] = json!({"cause": refusal.as_str(), "why": refusal.describe(), "hint": refusal.hint()});
    }
    let healthy = matches!(link, LinkState::Connected { .. }) && refused.is_none();
    json_response(if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

/// Serves `/permission`, `/mcp`, `/metrics` and `/healthz` on `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, uplink: Uplink, policy: LocalPolicy, stop: CancellationToken) {
    let router = router(uplink, policy, &stop);
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = crate::accept::AcceptBackoff::default();
    let mut stopped = std::pin::pin!(stop.cancelled());
    while let Some(tcp) = crate::accept::next(&listener, &mut backoff, &mut stopped).await {
        let service = TowerToHyperService::new(router.clone());
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // A client that never finishes its headers is cut off.
                .header_read_timeout(LOCAL_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

/// Lets a request through only if the core's [`LocalPolicy`] admits it; otherwise answers with its refusal.
async fn admit(
    State(policy): State<Arc<LocalPolicy>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let header = |name: hyper::header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let local = LocalRequest {
        origin: header(hyper::header::ORIGIN),
        host: header(hyper::header::HOST),
        content_type: header(hyper::header::CONTENT_TYPE),
        bearer: bearer(headers),
        json_only: matches!(request.uri().path(), "/permission" | "/hook") && request.method() == hyper::Method::POST,
    };
    match policy.check(&local) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            debug!(%refused, "refused a local request");
            let status = StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::FORBIDDEN);
            error(status, &refused.to_string())
        }
    }
}

async fn permission(State(uplink): State<Uplink>, body: Body) -> Response {
    #[derive(serde::Deserialize)]
    struct Ask {
        tool_name: String,
        #[serde(default)]
        tool_input: serde_json::Value,
    }
    let body = match read_limited(body, MAX_PERMISSION_BODY, LOCAL_TIMEOUT).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let ask: Ask = match serde_json::from_slice(&body) {
        Ok(ask) => ask,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"tool_name\": string, \"tool_input\": any}}: {e}"),
            );
        }
    };
    let answer = uplink.ask(&ask.tool_name, &ask.tool_input).await;
    let mut reply = json!({"decision": answer.decision.as_str(), "reason": answer.cause.as_str()});
    if let Cause::Refused(refusal) = answer.cause {
        reply["refused"] = json!({"cause": refusal.as_str(), "why": refusal.describe(), "hint": refusal.hint()});
    }
    if let Some(message) = answer.message {
        reply["message"] = message.into();
    }
    json_response(StatusCode::OK, &reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn always() -> Answer {
        Answer { decision: Decision::AlwaysAllow, cause: Cause::Response, message: None }
    }

    #[test]
    fn always_allow_hands_claude_code_the_same_rule_for_its_session() {
        let answer = prompt_answer(always(), "Bash", json!({"command": "git diff HEAD~1"}));
        assert_eq!(
            answer,
            json!({
                "behavior": "allow",
                "updatedInput": {"command": "git diff HEAD~1"},
                "updatedPermissions": [{
                    "type": "addRules",
                    "rules": [{"toolName": "Bash", "ruleContent": "git diff *"}],
                    "behavior": "allow",
                    "destination": "session",
                }],
            })
        );
        let write = prompt_answer(always(), "Write", json!({"file_path": "a.txt"}));
        assert_eq!(write["updatedPermissions"][0]["rules"], json!([{"toolName": "Write"}]));
        // A command that reads as no one rule gets no rule here either; a plain approval never does.
        let compound = prompt_answer(always(), "Bash", json!({"command": "ls $(id)"}));
        assert_eq!(compound, json!({"behavior": "allow", "updatedInput": {"command": "ls $(id)"}}));
        let once = Answer { decision: Decision::Approve, ..always() };
        assert!(prompt_answer(once, "Write", json!({})).get("updatedPermissions").is_none());
    }
}

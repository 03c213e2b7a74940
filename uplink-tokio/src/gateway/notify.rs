//! Notifications: each new pending request (and, if asked, how each ended) is POSTed as JSON to every
//! webhook, generic or Slack-shaped, with a link to the console; and, if asked, each checkpoint of the
//! audit log's head to the generic ones (`{"event": "audit_checkpoint", "at_ms", "seq", "head"}`).
//!
//! Each webhook has a task of its own that owns the core's [`Outbox`] (bounded; one delivery at a time;
//! retried with jittered back-off; given up after a few attempts) and performs what it asks. The hub task
//! hands it notices with `try_send`, so a slow or dead receiver never holds a decision; what does not fit
//! is counted (`uplink_gateway_budget_overflows_total{reason="notify_queue"}`) and logged, never waited for.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use uplink_proto::Instant;
use uplink_proto::gateway::HubEvent;
use uplink_proto::gateway::outbox::{Outbox, OutboxConfig};

use super::gateway_metrics::GatewayMetrics;
use crate::socket_loop::Clock;

/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Notices between the hub task and a webhook's task (the outbox behind it holds the real queue).
const HANDOFF: usize = 256;

/// The shape of a webhook's body.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NotifyFormat {
    /// `{"event", "id", "project", "tool_name", "tool_input", "suggested_rule", "url", …}`.
    #[default]
    Generic,
    /// `{"text": …}`, as Slack's incoming webhooks (and many chat tools) take it.
    Slack,
}

/// One receiver of notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Webhook {
    /// Where to POST (`http://` or `https://`).
    pub url: String,
    /// The body's shape.
    pub format: NotifyFormat,
}

impl Webhook {
    /// A webhook at `url`, bodies shaped as `format`.
    pub fn new(url: impl Into<String>, format: NotifyFormat) -> Webhook {
        Webhook { url: url.into(), format }
    }
}

/// What the notifications say and where they link.
#[derive(Clone, Debug, Default)]
pub(crate) struct NotifyConfig {
    pub(crate) webhooks: Vec<Webhook>,
    /// Also how each request ended.
    pub(crate) decisions: bool,
    /// Also each checkpoint of the audit log's head (to generic webhooks).
    pub(crate) checkpoints: bool,
    /// The console's address, for links (`--public-url`).
    pub(crate) public_url: Option<String>,
}

/// The hub task's side: turns events into notices and hands them to each webhook's task.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// Each webhook's shape, its task's queue, and whether it is dropping notices now (logged once a
    /// streak, however long; every drop is counted).
    hooks: Vec<(NotifyFormat, mpsc::Sender<String>, std::cell::Cell<bool>)>,
    decisions: bool,
    checkpoints: bool,
    public_url: Option<String>,
    metrics: Arc<GatewayMetrics>,
}

impl Notifier {
    /// Starts a task per webhook.
    pub(crate) fn start(config: NotifyConfig, clock: Clock, metrics: Arc<GatewayMetrics>) -> Notifier {
        let hooks = config
            .webhooks
            .into_iter()
            .enumerate()
            .map(|(i, hook)| {
                let (tx, rx) = mpsc::channel(HANDOFF);
                let mut outbox_cfg = OutboxConfig::default();
                outbox_cfg.seed ^= i as u64;
                tokio::spawn(deliver(hook.url, rx, Outbox::new(outbox_cfg), clock, metrics.clone()));
                (hook.format, tx, std::cell::Cell::new(false))
            })
            .collect();
        Notifier {
            hooks,
            decisions: config.decisions,
            checkpoints: config.checkpoints,
            public_url: config.public_url,
            metrics,
        }
    }

    /// Whether any webhook listens.
    pub(crate) fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Hands the notice `event` makes (if any) to every webhook.
    pub(crate) fn on_event(&self, event: &HubEvent) {
        let Some((generic, chat)) = self.notice(event) else { return };
        for (format, tx, dropping) in &self.hooks {
            let body = match format {
                NotifyFormat::Slack => json!({ "text": slack_text(&chat) }).to_string(),
                _ => generic.clone(),
            };
            let dropped = tx.try_send(body).is_err();
            if dropped {
                self.metrics.overflow("notify_queue");
                if !dropping.get() {
                    warn!("a webhook is behind: notifications are dropped until it catches up (counted in /metrics)");
                }
            }
            dropping.set(dropped);
        }
    }

    /// Hands a checkpoint of the audit log's head to every generic webhook, if asked.
    pub(crate) fn checkpoint(&self, checkpoint: &crate::store::Checkpoint) {
        if !self.checkpoints {
            return;
        }
        let mut body = json!({
            "event": "audit_checkpoint",
            "at_ms": checkpoint.at_ms,
            "seq": checkpoint.seq,
            "head": checkpoint.head,
        });
        if checkpoint.chain != 0 {
            body["chain"] = checkpoint.chain.into();
        }
        let body = body.to_string();
        for (format, tx, dropping) in &self.hooks {
            if *format != NotifyFormat::Generic {
                continue;
            }
            if tx.try_send(body.clone()).is_err() {
                self.metrics.overflow("notify_queue");
                dropping.set(true);
            }
        }
    }

    fn link(&self, id: &str) -> Value {
        self.public_url
            .as_ref()
            .map_or(Value::Null, |u| format!("{}/#/permissions/{id}", u.trim_end_matches('/')).into())
    }

    /// The notice `event` makes, if any: its generic body, and what its line of chat is made from. A tool
    /// input goes into the body as the JSON text it arrived in, and the chat line takes only its command or
    /// path (or its first characters): it is never parsed into a tree, which for a hostile input takes many
    /// times its size.
    fn notice(&self, event: &HubEvent) -> Option<(String, Value)> {
        let notice = match event {
            HubEvent::PermissionRequested { id, project, tool_name, tool_input, .. } => {
                #[derive(serde::Serialize)]
                struct Requested<'a> {
                    event: &'static str,
                    id: String,
                    project: &'a str,
                    tool_name: &'a str,
                    tool_input: &'a RawValue,
                    suggested_rule: Option<String>,
                    url: Value,
                }
                let id = id.to_string();
                let url = self.link(&id);
                let null = RawValue::NULL;
                let raw = serde_json::from_str::<&RawValue>(tool_input).unwrap_or(null);
                let suggested_rule = uplink_proto::rules::suggest(tool_name, tool_input).map(|r| r.to_string());
                let chat = json!({
                    "event": "permission_requested",
                    "project": project,
                    "tool_name": tool_name,
                    "tool_input": chat_input(tool_input),
                    "url": url,
                });
                let body = Requested {
                    event: "permission_requested",
                    id,
                    project,
                    tool_name,
                    tool_input: raw,
                    suggested_rule,
                    url,
                };
                return Some((serde_json::to_string(&body).unwrap_or_default(), chat));
            }
            HubEvent::PermissionDecided { id, project, verdict, .. } if self.decisions => json!({
                "event": "permission_decided",
                "id": id.to_string(),
                "project": project,
                "decision": verdict.decision.as_str(),
                "by": verdict.by.as_deref(),
            }),
            HubEvent::PermissionWithdrawn { id, project, reason, .. } if self.decisions => json!({
                "event": "permission_withdrawn",
                "id": id.to_string(),
                "project": project,
                "reason": reason.as_str(),
            }),
            _ => return None,
        };
        Some((notice.to_string(), notice))
    }
}

/// What a line of chat shows of a tool input: its `command` or its `file_path` (read without parsing the
/// rest into a tree), else its first 300 characters of JSON text.
fn chat_input(tool_input: &str) -> Value {
    #[derive(serde::Deserialize)]
    struct Shown {
        command: Option<String>,
        file_path: Option<String>,
    }
    match serde_json::from_str::<Shown>(tool_input) {
        Ok(Shown { command: Some(command), .. }) => json!({ "command": command }),
        Ok(Shown { file_path: Some(path), .. }) => json!({ "file_path": path }),
        _ => Value::from(tool_input.chars().take(300).collect::<String>()),
    }
}

/// A notice as one line of chat. Peer strings are quoted as code, with backticks and control characters
/// taken out and `&`, `<`, `>` escaped (Slack's own rule), so that they cannot break out, link or ping.
fn slack_text(notice: &Value) -> String {
    let code = |v: &Value| {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let clean: String = text.chars().filter(|c| *c != '`' && !c.is_control()).take(300).collect();
        let clean = clean.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        format!("`{clean}`")
    };
    let what = match notice["event"].as_str() {
        Some("permission_requested") => {
            let input = match (&notice["tool_input"]["command"], &notice["tool_input"]["file_path"]) {
                (Value::String(c), _) => code(&Value::from(c.as_str())),
                (_, Value::String(p)) => code(&Value::from(p.as_str())),
                _ => code(&notice["tool_input"]),
            };
            format!("{} asks to run {}: {input}", code(&notice["project"]), code(&notice["tool_name"]))
        }
        Some("permission_decided") => format!(
            "{} {}: {} by {}",
            code(&notice["project"]),
            code(&notice["id"]),
            code(&notice["decision"]),
            code(&notice["by"])
        ),
        _ => format!("{} {}: ended ({})", code(&notice["project"]), code(&notice["id"]), code(&notice["reason"])),
    };
    match notice["url"].as_str() {
        Some(url) => format!("{what} <{url}|decide>"),
        None => what,
    }
}

/// A webhook's URL as logs show it: its scheme and host only. Chat webhooks carry their secret in the path
/// (`https://hooks.slack.com/services/…`), so nothing after the host is shown.
fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}/…")
}

/// One webhook's task: takes notices in, and delivers what its outbox says, when it says.
async fn deliver(
    url: String,
    mut rx: mpsc::Receiver<String>,
    mut outbox: Outbox,
    clock: Clock,
    metrics: Arc<GatewayMetrics>,
) {
    let shown = shown_url(&url);
    let mut in_flight: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>> = None;
    let mut open = true;
    // Whether notices are being refused now: logged once a streak (each is counted).
    let mut dropping = false;
    loop {
        let now: Instant = clock.now();
        if in_flight.is_none()
            && let Some(body) = outbox.poll_send(now)
        {
            let (url, body, shown) = (url.clone(), Bytes::from(body.to_owned()), shown.clone());
            in_flight = Some(Box::pin(async move { post(&url, &shown, body).await }));
        }
        if !open && in_flight.is_none() && outbox.poll_timeout().is_none() {
            return; // the gateway stopped, and nothing is left to try now
        }
        let wake = outbox.poll_timeout().map(|at| clock.at(at));
        tokio::select! {
            notice = rx.recv(), if open => match notice {
                Some(notice) => {
                    let refused = outbox.push(notice).is_err();
                    if refused {
                        metrics.overflow("notify_queue");
                        if !dropping {
                            warn!(webhook = %shown, "a webhook's queue is full: notifications are dropped until it drains");
                        }
                    }
                    dropping = refused;
                }
                None => open = false,
            },
            delivered = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                outbox.handle_result(clock.now(), delivered);
                metrics.notified(if delivered { "delivered" } else { "failed" });
            }
            () = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
        }
    }
}

/// One delivery: any 2xx is taken.
async fn post(url: &str, shown: &str, body: Bytes) -> bool {
    let headers = [("content-type", "application/json"), ("user-agent", "uplink-gateway")];
    let sent = tokio::time::timeout(DELIVERY_TIMEOUT, async {
        let response = crate::http_client::send("POST", url, "", &headers, body, None).await?;
        let status = response.status();
        // Read (a little of) the answer, so that the receiver sees a whole exchange.
        let _ = Limited::new(response.into_body(), 64 << 10).collect().await;
        Ok::<_, String>(status)
    })
    .await;
    match sent {
        Ok(Ok(status)) if status.is_success() => true,
        Ok(Ok(status)) => {
            debug!(webhook = %shown, %status, "a webhook refused a notification; it will be retried");
            false
        }
        Ok(Err(e)) => {
            let e = e.replace(url, shown);
            debug!(webhook = %shown, error = %e, "a webhook could not be reached; it will be retried");
            false
        }
        Err(_) => {
            debug!(webhook = %shown, "a webhook did not answer in time; it will be retried");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhooks_path_and_credentials_never_reach_the_logs() {
        assert_eq!(shown_url("https://hooks.slack.com/services/T0/B0/s3cr3t"), "https://hooks.slack.com/…");
        assert_eq!(shown_url("http://user:pw@10.0.0.1:9000/hook?key=k"), "http://10.0.0.1:9000/…");
    }

    #[test]
    fn a_requests_input_goes_in_as_it_came_and_chat_shows_only_its_command_or_path() {
        use uplink_proto::gateway::{ConnHandle, CredentialId, PermId, PublicPermId};
        let notifier = Notifier {
            hooks: Vec::new(),
            decisions: false,
            checkpoints: false,
            public_url: None,
            metrics: Arc::new(GatewayMetrics::new()),
        };
        let requested = |tool_input: &str| HubEvent::PermissionRequested {
            id: PublicPermId { conn: ConnHandle(1), perm: PermId(0) },
            project: "web".into(),
            credential: CredentialId(0),
            req_id: "r".into(),
            tool_name: "Bash".into(),
            tool_input: tool_input.into(),
            incarnation: None,
        };
        // A large object of many members: in the body as its text, never a tree; chat gets the command.
        let members: String = (0..10_000).map(|i| format!(r#","k{i}":0"#)).collect();
        let input = format!(r#"{{"command":"cargo test"{members}}}"#);
        let (body, chat) = notifier.notice(&requested(&input)).expect("a notice");
        assert!(body.contains(&format!(r#""tool_input":{input}"#)), "the input as it came");
        assert_eq!(serde_json::from_str::<Value>(&body).expect("JSON")["suggested_rule"], "Bash(cargo test *)");
        assert_eq!(chat["tool_input"], json!({"command": "cargo test"}));
        let (_, chat) = notifier.notice(&requested(r#"{"file_path":"/etc/hosts","content":"x"}"#)).expect("a notice");
        assert_eq!(chat["tool_input"], json!({"file_path": "/etc/hosts"}));
        let (_, chat) = notifier.notice(&requested(&format!("[{}]", "1,".repeat(500) + "1"))).expect("a notice");
        assert_eq!(chat["tool_input"].as_str().map(|s| s.chars().count()), Some(300));
    }

    #[test]
    fn chat_text_quotes_peer_strings_so_they_cannot_break_out() {
        let notice = json!({"event":"permission_requested","project":"web`<!channel>`","tool_name":"Bash",
            "tool_input":{"command":"ls\n`rm`"},"url":"https://gw.example/#/permissions/1-0"});
        let text = slack_text(&notice);
        assert_eq!(
            text,
            "`web&lt;!channel&gt;` asks to run `Bash`: `lsrm` <https://gw.example/#/permissions/1-0|decide>"
        );
    }
}

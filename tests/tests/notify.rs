//! Notifications over real sockets: each new pending request reaches every webhook, a receiver that is
//! down is retried while the others are served, and a receiver that never answers holds no decision.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;

use futures_util::SinkExt as _;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use uplink_tests::{ADMIN_TOKEN, RealGateway, http, identify, next_event, sse, until, within};
use uplink_tokio::gateway::{GatewayServerConfig, NotifyFormat, Webhook};

/// A webhook receiver on loopback: each body it is sent goes to the channel; it answers `200` unless
/// `hang`, in which case it never answers.
async fn receiver(hang: bool) -> (SocketAddr, mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send(serde_json::from_slice::<Value>(&body).unwrap());
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (addr, rx)
}

fn config(webhooks: Vec<Webhook>) -> GatewayServerConfig {
    let mut config =
        GatewayServerConfig::new("127.0.0.1:0".parse().unwrap(), vec![uplink_tests::SLED_TOKEN.into()], ADMIN_TOKEN);
    config.notify = webhooks;
    config.notify_decisions = true;
    config.public_url = Some("https://gateway.example".into());
    config
}

async fn ask(ws: &mut uplink_tests::RawWs, req_id: &str, command: &str) {
    let frame =
        json!({"type":"perm_request","req_id":req_id,"payload":{"tool_name":"Bash","tool_input":{"command":command}}});
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

#[tokio::test]
async fn every_webhook_hears_of_each_request_and_a_slow_or_dead_one_holds_nothing() {
    let (good, mut heard) = receiver(false).await;
    let (slack, mut chat) = receiver(false).await;
    let (slow, mut hung) = receiver(true).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // closed at once
    let hooks = vec![
        Webhook::new(format!("http://{dead}/hook"), NotifyFormat::Generic),
        Webhook::new(format!("http://{slow}/hook"), NotifyFormat::Generic),
        Webhook::new(format!("http://{good}/hook"), NotifyFormat::Generic),
        Webhook::new(format!("http://{slack}/services/T0/B0/s3cr3t"), NotifyFormat::Slack),
    ];
    let gw = RealGateway::start_config(config(hooks)).await;
    let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
    let mut ws = gw.raw_sled().await;
    identify(&mut ws, "web").await;
    next_event(&mut events, "sled_connected").await;

    ask(&mut ws, "r1", "git diff HEAD").await;
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let notice = within("the generic webhook", heard.recv()).await.unwrap();
    assert_eq!(
        (notice["event"].as_str(), notice["id"].as_str(), notice["project"].as_str()),
        (Some("permission_requested"), Some(id.as_str()), Some("web"))
    );
    assert_eq!(notice["tool_input"], json!({"command": "git diff HEAD"}));
    assert_eq!(notice["suggested_rule"], "Bash(git diff *)");
    assert_eq!(notice["url"], format!("https://gateway.example/#/permissions/{id}"));
    let text = within("the chat webhook", chat.recv()).await.unwrap()["text"].as_str().unwrap().to_owned();
    assert!(text.starts_with("`web` asks to run `Bash`: `git diff HEAD`"), "{text}");
    // The slow one was asked too, and never answers; the dead one cannot be reached.
    within("the slow webhook", hung.recv()).await.unwrap();

    // Neither holds a decision: it is taken and sent at once, and the good webhooks hear of it.
    let url = format!("{}/api/permissions/{id}", gw.base);
    let (status, _) =
        within("the decision", http("POST", &url, Some(ADMIN_TOKEN), Some(r#"{"approved":true}"#), &[])).await;
    assert_eq!(status, 200);
    let decided = within("the decision's notice", heard.recv()).await.unwrap();
    assert_eq!(
        (decided["event"].as_str(), decided["decision"].as_str()),
        (Some("permission_decided"), Some("approve"))
    );

    // The dead one is retried (and counted) while the rest go on.
    until("a failed delivery to be counted", async || {
        let (_, text) = http("GET", &format!("{}/metrics", gw.base), Some(ADMIN_TOKEN), None, &[]).await;
        let failed = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"uplink_gateway_notification_deliveries_total{result="failed"} "#))
            .and_then(|v| v.parse::<f64>().ok());
        failed.is_some_and(|n| n >= 1.0).then_some(())
    })
    .await;
    gw.stop().await;
}

//! A tiny custom gateway built directly on the gateway session machine: it approves the tools in its allow
//! list, denies the rest, and prints what happens. One task per sled connection, a dozen lines of I/O.
//!
//! `cargo run -p uplink-tokio --example custom_gateway -- 127.0.0.1:8800 Read,Grep`
//! then point a sled at `ws://127.0.0.1:8800/` (any token is accepted: this is an example).
#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use uplink_proto::gateway::{SessionConfig, SessionEvent, SessionOutput, SledSession};
use uplink_proto::{Decision, Instant, Received};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8800".into());
    let allowed: Arc<BTreeSet<String>> =
        Arc::new(args.next().unwrap_or_default().split(',').map(str::to_owned).collect());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("custom gateway on ws://{}/ allowing {allowed:?}", listener.local_addr()?);
    let epoch = tokio::time::Instant::now();
    loop {
        let (tcp, peer) = listener.accept().await?;
        let allowed = allowed.clone();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { return };
            let (mut sink, mut stream) = ws.split();
            let now = || Instant::from_micros(epoch.elapsed().as_micros() as u64);
            let Ok(mut session) = SledSession::new(SessionConfig::default(), now()) else { return };
            loop {
                while let Some(output) = session.poll_output() {
                    match output {
                        SessionOutput::Send(text) => {
                            let _ = sink.send(Message::text(text)).await;
                        }
                        SessionOutput::Ping => {
                            let _ = sink.send(Message::Ping(Default::default())).await;
                        }
                        SessionOutput::Close { .. } => {
                            let _ = sink.close().await;
                        }
                        SessionOutput::Event(SessionEvent::PermissionRequested { perm, tool_name, .. }) => {
                            let decision =
                                if allowed.contains(&tool_name) { Decision::Approve } else { Decision::Deny };
                            println!("{peer}: {tool_name} → {decision:?}");
                            let _ = session.decide(now(), perm, decision);
                        }
                        SessionOutput::Event(SessionEvent::Identified { project, .. }) => {
                            println!("{peer}: sled {project} identified")
                        }
                        SessionOutput::Event(SessionEvent::Closed) => println!("{peer}: gone"),
                        SessionOutput::Event(_) => {}
                    }
                }
                if session.is_closed() {
                    return;
                }
                let wake = session.poll_timeout().map(|at| epoch + Duration::from_micros(at.as_micros()));
                tokio::select! {
                    message = stream.next() => match message {
                        Some(Ok(Message::Text(t))) => session.handle_received(now(), Received::Text(t.as_str())),
                        Some(Ok(Message::Pong(_))) => session.handle_received(now(), Received::Pong),
                        Some(Ok(_)) => {}
                        _ => session.handle_disconnected(now()),
                    },
                    () = async { match wake { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                        session.handle_timeout(now());
                    }
                }
            }
        });
    }
}

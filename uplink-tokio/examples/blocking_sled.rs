//! The protocol core driven from one plain thread: `std::net::TcpStream` and synchronous tungstenite, no
//! async runtime at all. Connects to `UPLINK_GATEWAY` with `UPLINK_TOKEN`, asks for one permission, prints
//! the decision and exits.
//!
//! `UPLINK_GATEWAY=ws://127.0.0.1:8700/api/sled-uplink UPLINK_TOKEN=… cargo run -p uplink-tokio --example blocking_sled`
#![allow(clippy::print_stdout)]

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant as StdInstant};

use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};
use uplink_proto::{ConnId, ConnectError, Decision, Instant, McpReply, Output, RawValue, Received, Sled, SledConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("UPLINK_GATEWAY").map_err(|_| "set UPLINK_GATEWAY to a ws:// URL")?;
    let token = std::env::var("UPLINK_TOKEN").unwrap_or_default();
    let epoch = StdInstant::now();
    let now = || Instant::from_micros(epoch.elapsed().as_micros() as u64);

    let mut sled = Sled::new(SledConfig::new("blocking-sled"), now())?;
    let key = sled.request_permission(now(), "Bash".into(), RawValue::from_string(r#"{"command":"ls"}"#.into())?);
    let mut socket: Option<(ConnId, WebSocket<TcpStream>)> = None;
    let mut decided = None;

    loop {
        // 1. Carry out every output.
        while let Some(output) = sled.poll_output() {
            match output {
                Output::Connect { conn } => match dial(&url, &token) {
                    Ok(ws) => {
                        socket = Some((conn, ws));
                        sled.handle_connected(now(), conn);
                    }
                    Err(e) => {
                        println!("connect failed: {e}");
                        sled.handle_connect_failed(now(), conn, ConnectError::Other);
                    }
                },
                Output::Send { conn, text } => {
                    if let Some((c, ws)) = socket.as_mut().filter(|(c, _)| *c == conn)
                        && ws.send(Message::text(text)).is_err()
                    {
                        let c = *c;
                        sled.handle_disconnected(now(), c);
                    }
                }
                Output::Ping { conn } => {
                    if let Some((_, ws)) = socket.as_mut().filter(|(c, _)| *c == conn) {
                        let _ = ws.send(Message::Ping(Default::default()));
                    }
                }
                Output::Close { conn, .. } => {
                    if let Some((_, mut ws)) = socket.take().filter(|(c, _)| *c == conn) {
                        let _ = ws.close(None);
                        let _ = ws.flush();
                    }
                }
                Output::Decided(d) if d.key == key => {
                    println!("decision for {}: {:?}", d.id, d.decision);
                    decided = Some(d.decision);
                    // Shutting down queues the close frame; the loop sends it like any other output.
                    sled.shutdown(now());
                }
                Output::Decided(_)
                | Output::Event(_)
                | Output::CancelMcp { .. }
                | Output::NotifyMcp { .. }
                | Output::EndMcpSession { .. } => {}
                Output::ListenMcp(listen) => sled.handle_mcp_reply(now(), listen.call, McpReply::NoStream),
                // This example has no local MCP endpoint; the core turns this into a JSON-RPC error.
                Output::CallMcp(call) => {
                    sled.handle_mcp_reply(now(), call.call, McpReply::Failed("no local MCP here".into()))
                }
            }
        }
        if let Some(decision) = decided {
            std::process::exit(if decision == Decision::Deny { 3 } else { 0 });
        }
        // 2. Wait for a frame, but no longer than the core's next deadline.
        let wait = sled.poll_timeout().map_or(Duration::from_secs(1), |at| {
            Duration::from_micros(at.as_micros().saturating_sub(now().as_micros()))
        });
        match socket.as_mut() {
            Some((conn, ws)) => {
                let conn = *conn;
                ws.get_mut().set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
                match ws.read() {
                    Ok(Message::Text(t)) => sled.handle_received(now(), conn, Received::Text(t.as_str())),
                    Ok(Message::Pong(_)) => sled.handle_received(now(), conn, Received::Pong),
                    Ok(Message::Ping(_)) => sled.handle_received(now(), conn, Received::Ping),
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => {
                        socket = None;
                        sled.handle_disconnected(now(), conn);
                    }
                }
            }
            None => std::thread::sleep(wait.min(Duration::from_millis(100))),
        }
        // 3. Fire what is due.
        sled.handle_timeout(now());
    }
}

fn dial(url: &str, token: &str) -> Result<WebSocket<TcpStream>, Box<dyn std::error::Error>> {
    let mut request = format!("{url}?token={token}").into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let host = request.uri().host().ok_or("no host")?.to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host.as_str(), port))?;
    stream.set_nodelay(true)?;
    let (ws, _) = tungstenite::client(request, stream).map_err(|e| e.to_string())?;
    Ok(ws)
}

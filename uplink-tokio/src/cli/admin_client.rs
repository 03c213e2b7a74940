//! A small client of a gateway's admin API for the commands that talk to a running gateway
//! (`uplink rules`, `uplink sleds`, `uplink permissions`): one request per connection, `http://` or
//! `https://` (rustls, web PKI roots plus an optional CA file), the admin token as a bearer, a bounded wait
//! and a bounded answer; or an event stream, followed until it ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;

/// How long a request may take, connecting included.
const WAIT: Duration = Duration::from_secs(30);

/// The largest answer read.
const MAX_ANSWER: usize = 64 << 20;

/// Where the gateway is and who asks.
#[derive(Args, Clone)]
pub(super) struct AdminArgs {
    /// The gateway's base URL (http:// or https://).
    #[arg(long, env = "UPLINK_GATEWAY_URL", default_value = "http://127.0.0.1:8700")]
    gateway_url: String,
    /// An admin principal's token.
    #[arg(long, env = "UPLINK_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// A PEM file of extra CA certificates to trust for https://.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

/// What went wrong, as the program prints it.
pub(super) type Failure = String;

impl AdminArgs {
    /// `method path` with `body` (JSON); the status and the answer's text.
    pub(super) async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), Failure> {
        tokio::time::timeout(WAIT, self.send(method, path, body))
            .await
            .map_err(|_| format!("{}: no answer within {WAIT:?}", self.gateway_url))?
    }

    async fn send(&self, method: &str, path: &str, body: Option<String>) -> Result<(u16, String), Failure> {
        let response = self.open(method, path, body).await?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `GET path` as an event stream: `started` once it is open, then each event (name, data) to `each` as
    /// it arrives, until the stream ends. A status other than 200 is an error, with the gateway's words.
    pub(super) async fn follow(
        &self,
        path: &str,
        started: impl FnOnce(&str),
        mut each: impl FnMut(&str, &str),
    ) -> Result<(), Failure> {
        let connected = tokio::time::timeout(WAIT, self.open("GET", path, None))
            .await
            .map_err(|_| format!("{}: no answer within {WAIT:?}", self.gateway_url))??;
        if connected.status() != hyper::StatusCode::OK {
            let status = connected.status().as_u16();
            let body = Limited::new(connected.into_body(), MAX_ANSWER).collect().await.map(|b| b.to_bytes());
            let text = body.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            return Err(format!("the gateway answered {status}: {}", text.trim()));
        }
        started(&self.gateway_url);
        let mut body = connected.into_body();
        let mut parser = uplink_proto::sse::SseParser::new(MAX_ANSWER);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the event stream broke: {e}"))?;
            let Ok(chunk) = frame.into_data() else { continue };
            for event in parser.push(&chunk).map_err(|e| e.to_string())? {
                each(&event.event, &event.data);
            }
        }
        Ok(())
    }

    async fn open(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
        let base: Uri = self.gateway_url.parse().map_err(|e| format!("--gateway-url: {e}"))?;
        let tls = match base.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("--gateway-url must be http:// or https://".into()),
        };
        let host = base.host().ok_or("--gateway-url has no host")?.trim_matches(['[', ']']).to_owned();
        let port = base.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.gateway_url))?;
        let prefix = base.path().trim_end_matches('/');
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{prefix}{path}"))
            .header("host", base.authority().map(|a| a.as_str()).unwrap_or(&host))
            .header("authorization", format!("Bearer {}", self.admin_token.trim()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        if tls {
            let config = crate::sled::tls_client_config(self.ca_file.as_deref()).map_err(|e| e.to_string())?;
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(&config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", self.gateway_url))?;
            exchange(TokioIo::new(stream), request).await
        } else {
            exchange(TokioIo::new(tcp), request).await
        }
    }
}

async fn exchange<S>(
    io: TokioIo<S>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(request).await.map_err(|e| e.to_string())
}

/// The JSON of a 2xx answer; otherwise an error with the gateway's own words (and the status, for the exit
/// code).
pub(super) fn answer(status: u16, body: &str) -> Result<serde_json::Value, (u16, Failure)> {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let why = value["error"].as_str().map_or_else(|| body.trim().to_owned(), str::to_owned);
    Err((status, format!("the gateway answered {status}: {why}")))
}

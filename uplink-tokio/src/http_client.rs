//! One HTTP request on a connection of its own, `http://` or `https://` (rustls with the web PKI roots and
//! an optional extra CA file): for the program's admin client, the gateway's webhooks and its OpenID
//! provider. The caller bounds the time; the answer's body is the caller's to read (with a limit), or
//! [`json`] reads it as JSON within bounds.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_util::rt::TokioIo;

/// How [`send`]'s error begins when no connection could be made at all (nothing of the request was sent).
pub(crate) const UNREACHABLE: &str = "cannot reach ";

/// As [`send`], with the whole exchange within `within` and the answer read as JSON (at most `limit`
/// bytes): its status and value. An answer that is not JSON is an error naming the status.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn json(
    method: &str,
    url: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    ca_file: Option<&Path>,
    limit: usize,
    within: std::time::Duration,
) -> Result<(u16, serde_json::Value), String> {
    use http_body_util::{BodyExt as _, Limited};
    let go = async {
        let answer = send(method, url, path, headers, body, ca_file).await?;
        let status = answer.status().as_u16();
        let bytes = Limited::new(answer.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("{url}{path}: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).map_err(|_| format!("{url}{path}: {status}, not JSON"))?;
        Ok((status, value))
    };
    tokio::time::timeout(within, go).await.unwrap_or_else(|_| Err(format!("{url}{path}: no answer within {within:?}")))
}

/// `method` to `url` + `path`, with these headers and `body`; the response, its body unread. Errors name
/// the URL as given (callers pass URLs without secrets, or redact them).
pub(crate) async fn send(
    method: &str,
    url: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    ca_file: Option<&Path>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let base: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let tls = match base.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{url}: must be http:// or https://")),
    };
    let host = base.host().ok_or_else(|| format!("{url}: no host"))?.trim_matches(['[', ']']).to_owned();
    let port = base.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{UNREACHABLE}{url}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let prefix = base.path_and_query().map_or("", |p| p.as_str()).trim_end_matches('/');
    let target = if path.is_empty() && prefix.is_empty() { "/".to_owned() } else { format!("{prefix}{path}") };
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("host", base.authority().map(|a| a.as_str()).unwrap_or(&host));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    if tls {
        let config = crate::sled::tls_client_config(ca_file).map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect(name, tcp)
            .await
            .map_err(|e| with_hint(format!("TLS with {url}: {e}"), true))?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await.map_err(|e| with_hint(format!("{url}: {e}"), false))
    }
}

async fn exchange<S>(
    io: TokioIo<S>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(request).await.map_err(|e| e.to_string())
}

/// `detail` with what was most likely got wrong, when the error says so: TLS spoken to a plain-HTTP port,
/// or plain HTTP to a TLS one.
fn with_hint(detail: String, tls: bool) -> String {
    let lower = detail.to_ascii_lowercase();
    if tls && (lower.contains("invalidcontenttype") || lower.contains("corrupt message")) {
        format!("{detail} (this port does not speak TLS: try http:// instead of https://)")
    } else if !tls && (lower.contains("invalid http") || lower.contains("parse") && lower.contains("http")) {
        format!("{detail} (the answer was not HTTP: if this port speaks TLS, try https://)")
    } else {
        detail
    }
}

#[cfg(test)]
mod tests {
    use super::with_hint;

    #[test]
    fn the_usual_mistakes_get_a_hint() {
        let tls_on_plain = "TLS with https://gw: received corrupt message of type InvalidContentType";
        assert!(with_hint(tls_on_plain.into(), true).ends_with("try http:// instead of https://)"));
        assert!(with_hint("http://gw: invalid HTTP version parsed".into(), false).ends_with("try https://)"));
        assert_eq!(with_hint("cannot reach http://gw: refused".into(), false), "cannot reach http://gw: refused");
    }
}

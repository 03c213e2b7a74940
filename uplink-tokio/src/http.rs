//! Small HTTP helpers shared by the gateway's API and the sled's local server (both on axum), and how
//! each connection of the gateway's listeners is served.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

/// `body` (JSON text) with `status` and `Content-Type: application/json`.
pub(crate) fn json_text(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    json_text(status, value.to_string())
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

/// The whole body, or the error response to send: `413` past `limit` bytes, `408` when it has not all
/// arrived within `within` (a slow client cannot hold a connection for ever), `400` if it cannot be read.
pub(crate) async fn read_limited(body: Body, limit: usize, within: Duration) -> Result<Bytes, Response> {
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body over {limit} bytes")))
        }
        Ok(Err(_)) => Err(error(StatusCode::BAD_REQUEST, "could not read the request body")),
    }
}

/// The token of an `Authorization: Bearer …` header; the scheme is matched case-insensitively.
/// A header's value, when it is text.
pub(crate) fn header<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The percent-decoded `token` query parameter.
pub(crate) fn query_token(uri: &hyper::Uri) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

/// `s` as a JSON string literal, quotes included.
pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `d` in whole milliseconds, for JSON (saturating).
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serves one connection from `peer`, whose address each request carries as [`axum::extract::ConnectInfo`].
pub(crate) async fn serve_http<S>(
    io: hyper_util::rt::TokioIo<S>,
    header_timeout: Duration,
    router: axum::Router,
    peer: std::net::SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let router = router.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
    let service = hyper_util::service::TowerToHyperService::new(router);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        // Slow-loris clients are cut off.
        .header_read_timeout(header_timeout)
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case_and_an_empty_token_is_none() {
        let mut headers = hyper::HeaderMap::new();
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ] {
            headers.insert(hyper::header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&headers), want, "{value:?}");
        }
    }

    #[test]
    fn the_token_query_parameter_is_percent_decoded() {
        let uri: hyper::Uri = "/api/sled-uplink?a=1&token=x%2By%20z".parse().expect("uri");
        assert_eq!(query_token(&uri).as_deref(), Some("x+y z"));
        let none: hyper::Uri = "/api/sled-uplink?tokens=1".parse().expect("uri");
        assert_eq!(query_token(&none), None);
    }
}

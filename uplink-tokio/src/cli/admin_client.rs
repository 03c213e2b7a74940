//! A small client of a gateway's admin API for the commands that talk to a running gateway
//! (`uplink rules`, `uplink sleds`, `uplink permissions`): one request per connection, `http://` or
//! `https://` (rustls, web PKI roots plus an optional CA file), the admin token as a bearer, a bounded wait
//! and a bounded answer; or an event stream, followed until it ends. Without `--admin-token` (or
//! `UPLINK_ADMIN_TOKEN`), what `uplink login` kept: its token, or the signed-in person's access token.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Limited};

/// How long a request may take, connecting included.
const WAIT: Duration = Duration::from_secs(30);

/// The largest answer read.
const MAX_ANSWER: usize = 64 << 20;

/// Where the gateway is and who asks.
#[derive(Args, Clone)]
pub(super) struct AdminArgs {
    /// The gateway's base URL (http:// or https://); by default the one `uplink login` kept, else
    /// http://127.0.0.1:8700.
    #[arg(long, env = "UPLINK_GATEWAY_URL", global = true)]
    gateway_url: Option<String>,
    /// An admin principal's token; by default what `uplink login` kept.
    #[arg(long, env = "UPLINK_ADMIN_TOKEN", hide_env_values = true, global = true)]
    admin_token: Option<String>,
    /// A PEM file of extra CA certificates to trust for https://.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
}

/// The gateway to ask, the bearer to ask with, and the extra CA.
struct Target {
    url: String,
    bearer: String,
    ca_file: Option<PathBuf>,
}

/// What went wrong, as the program prints it.
pub(super) type Failure = String;

impl AdminArgs {
    /// The gateway's URL as the flags and the kept login name it (for messages).
    fn url(&self) -> String {
        let kept = super::login::load().ok().flatten().map(|s| s.gateway_url);
        self.gateway_url.clone().or(kept).unwrap_or_else(|| super::login::DEFAULT_GATEWAY_URL.to_owned())
    }

    /// The gateway's URL, and which credential the commands would use (for `uplink status`).
    pub(super) fn describe(&self) -> (String, String) {
        if self.admin_token.as_deref().is_some_and(|t| !t.trim().is_empty()) {
            return (self.url(), "an admin token (--admin-token or UPLINK_ADMIN_TOKEN)".into());
        }
        let place = super::login::path().map(|p| p.display().to_string()).unwrap_or_default();
        let what = match super::login::load() {
            Ok(Some(saved)) if saved.admin_token.is_some() => format!("the admin token `uplink login` kept in {place}"),
            Ok(Some(_)) => format!("the sign-in at the identity provider `uplink login` kept in {place}"),
            Ok(None) => "none: pass --admin-token, or run `uplink login`".into(),
            Err(e) => format!("unreadable: {e}"),
        };
        (self.url(), what)
    }

    async fn target(&self) -> Result<Target, Failure> {
        if let Some(token) = self.admin_token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            return Ok(Target { url: self.url(), bearer: token.to_owned(), ca_file: self.ca_file.clone() });
        }
        let Some(saved) = super::login::load()? else {
            return Err("no credential: pass --admin-token (or set UPLINK_ADMIN_TOKEN), or run `uplink login`".into());
        };
        if let Some(url) =
            self.gateway_url.as_deref().filter(|u| u.trim_end_matches('/') != saved.gateway_url.trim_end_matches('/'))
        {
            return Err(format!(
                "the kept sign-in is for {}, not {url}: pass --admin-token, or run `uplink login --gateway-url {url}`",
                saved.gateway_url
            ));
        }
        let bearer = super::login::bearer(&saved).await?;
        Ok(Target { url: saved.gateway_url.clone(), bearer, ca_file: self.ca_file.clone().or(saved.ca_file) })
    }

    /// `method path` with `body` (JSON); the status and the answer's text.
    pub(super) async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), Failure> {
        tokio::time::timeout(WAIT, self.send(method, path, body))
            .await
            .map_err(|_| format!("{}: no answer within {WAIT:?}", self.url()))?
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
            .map_err(|_| format!("{}: no answer within {WAIT:?}", self.url()))??;
        if connected.status() != hyper::StatusCode::OK {
            let status = connected.status().as_u16();
            let body = Limited::new(connected.into_body(), MAX_ANSWER).collect().await.map(|b| b.to_bytes());
            let text = body.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            return Err(format!("the gateway answered {status}: {}", text.trim()));
        }
        started(&self.url());
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
        let target = self.target().await?;
        let bearer = format!("Bearer {}", target.bearer);
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        let body = Bytes::from(body.unwrap_or_default());
        crate::http_client::send(method, &target.url, path, &headers, body, target.ca_file.as_deref()).await
    }
}

/// The JSON of a 2xx answer; otherwise an error with the gateway's own words (and the status, for the exit
/// code). A 2xx answer that does not parse is an error too, never an empty listing.
pub(super) fn answer(status: u16, body: &str) -> Result<serde_json::Value, (u16, Failure)> {
    let parsed = serde_json::from_str::<serde_json::Value>(body);
    if (200..300).contains(&status) {
        return parsed
            .map_err(|e| (status, format!("the gateway answered {status} with JSON this client cannot read: {e}")));
    }
    let value = parsed.unwrap_or(serde_json::Value::Null);
    let why = value["error"].as_str().map_or_else(|| body.trim().to_owned(), str::to_owned);
    // A 404 that is not the API's own word on a thing (an unknown route, or not the API at all) says the
    // URL is wrong, not that the thing is gone: not exit 3.
    if status == 404 && value["error"].as_str().is_none_or(|e| e == "no such route") {
        return Err((
            1,
            format!(
                "the gateway answered 404 ({}): is the URL the gateway's base URL (http://HOST:PORT, no path)?",
                why.escape_debug()
            ),
        ));
    }
    Err((status, format!("the gateway answered {status}: {why}")))
}

#[cfg(test)]
mod tests {
    use super::answer;

    #[test]
    fn an_answer_that_does_not_parse_is_an_error_never_an_empty_listing() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let listing = format!(r#"{{"permissions":[{{"id":"1-0","tool_input":{deep}}}]}}"#);
        let (status, why) = answer(200, &listing).expect_err("serde_json stops at 128 levels");
        assert_eq!(status, 200);
        assert!(why.contains("cannot read") && why.contains("recursion limit"), "{why}");
        assert_eq!(answer(200, r#"{"permissions":[]}"#).map(|v| v["permissions"].clone()), Ok(serde_json::json!([])));
        // A route the gateway does not have, or something that is not the gateway: the URL is wrong.
        for wrong in [r#"{"error":"no such route"}"#, "<html>Not Found</html>"] {
            let (status, why) = answer(404, wrong).expect_err("404");
            assert_eq!(status, 1, "{wrong}");
            assert!(why.contains("is the URL the gateway's base URL"), "{why}");
        }
        let (status, why) = answer(404, r#"{"error":"no such permission"}"#).expect_err("404");
        assert_eq!((status, why.as_str()), (404, "the gateway answered 404: no such permission"));
    }
}

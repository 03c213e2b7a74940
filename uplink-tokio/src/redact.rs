//! Keeping secrets out of logs and error messages.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// `tracing` filter directives that turn off the targets that would log secrets: tungstenite prints the
/// whole client handshake request, the sled's token included, at TRACE under `tungstenite::handshake::client`.
/// The `uplink` program always applies them; an embedder with its own subscriber should add them too.
pub const SECRET_SAFE_DIRECTIVES: &[&str] = &["tungstenite::handshake::client=off"];

/// `url` with every credential hidden: the `token` (and any `*token*`, `*key*`, `*secret*`, `*password*`)
/// query parameters and any user-info before the host.
pub fn redact_url(url: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let mut out = String::with_capacity(url.len());
    match head.split_once("://") {
        Some((scheme, rest)) => {
            out.push_str(scheme);
            out.push_str("://");
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((_, host)) => {
                    out.push_str("[redacted]@");
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(head),
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let k = key.to_ascii_lowercase();
            let secret = ["token", "key", "secret", "password"].iter().any(|s| k.contains(s));
            out.push_str(key);
            if pair.contains('=') {
                out.push('=');
                out.push_str(if secret && !value.is_empty() { "[redacted]" } else { value });
            }
        }
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Everything but unreserved characters is percent-encoded in a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `value` percent-encoded for a query string.
pub(crate) fn encode_query_value(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// `text` with every occurrence of `secret` (plain or percent-encoded) replaced, for error messages that might
/// quote a request.
pub(crate) fn scrub(text: &str, secret: Option<&str>) -> String {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else { return text.to_owned() };
    let encoded = encode_query_value(secret);
    text.replace(secret, "[redacted]").replace(&encoded, "[redacted]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_tokens_and_userinfo() {
        assert_eq!(
            redact_url("wss://gw.example:8700/api/sled-uplink?token=s3cret&x=1"),
            "wss://gw.example:8700/api/sled-uplink?token=[redacted]&x=1"
        );
        assert_eq!(redact_url("ws://u:p@h/p?api_key=k#f"), "ws://[redacted]@h/p?api_key=[redacted]#f");
        assert_eq!(redact_url("ws://h/p?Token="), "ws://h/p?Token=");
        assert_eq!(redact_url("ws://h/p"), "ws://h/p");
        assert_eq!(redact_url("not a url ? token=x"), "not a url ? token=[redacted]");
    }

    #[test]
    fn scrub_removes_plain_and_encoded_secret() {
        assert_eq!(scrub("bad a b+c/d", Some("b+c/d")), "bad a [redacted]");
        assert_eq!(scrub("GET /?token=b%2Bc%2Fd", Some("b+c/d")), "GET /?token=[redacted]");
        assert_eq!(scrub("x", None), "x");
    }
}

//! The host of a URL, as `WebFetch(domain:…)` rules see it.

use alloc::string::String;

/// The host of `url` (`scheme://[user@]host[:port]/…`), lower-cased and without a trailing dot; `None` when
/// there is none to be read.
pub(crate) fn host(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    // Whatever precedes the last `@` is user information: `http://example.com@evil.test/` goes to evil.test.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        let end = v6.find(']')?;
        &host_port[..end + 2]
    } else {
        host_port.split(':').next()?
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty() && !host.contains(['\\', ' ', '%'])).then(|| host.to_ascii_lowercase())
}

/// Whether `host` is `domain`, or under it when `domain` is `*.name` (or `generous`, for deny and ask rules).
pub(crate) fn host_matches(domain: &str, host: &str, generous: bool) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let under = |name: &str| {
        host.len() > name.len() + 1 && host.ends_with(name) && host.as_bytes()[host.len() - name.len() - 1] == b'.'
    };
    match domain.strip_prefix("*.") {
        Some(name) => under(name),
        None => host == domain || (generous && under(&domain)),
    }
}

#[cfg(test)]
mod tests {
    use super::{host, host_matches};

    #[test]
    fn hosts_are_read_past_user_information_ports_and_case() {
        assert_eq!(host("https://Example.COM/path?q=1").as_deref(), Some("example.com"));
        assert_eq!(host("http://example.com@evil.test/").as_deref(), Some("evil.test"));
        assert_eq!(host("http://a:b@example.com:8080/x").as_deref(), Some("example.com"));
        assert_eq!(host("https://example.com./").as_deref(), Some("example.com"));
        assert_eq!(host("http://[::1]:80/").as_deref(), Some("[::1]"));
        assert_eq!(host("example.com/x"), None);
        assert_eq!(host("http:///x"), None);
        assert_eq!(host("http://exa%6dple.com/"), None);
    }

    #[test]
    fn a_domain_is_exact_unless_starred_or_read_generously() {
        assert!(host_matches("example.com", "example.com", false));
        assert!(!host_matches("example.com", "api.example.com", false));
        assert!(host_matches("example.com", "api.example.com", true));
        assert!(!host_matches("example.com", "badexample.com", true));
        assert!(host_matches("*.example.com", "api.example.com", false));
        assert!(!host_matches("*.example.com", "example.com", false));
    }
}

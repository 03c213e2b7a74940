//! The sled's local face admits only its own agents: no foreign Origin, no rebound Host, JSON bodies only,
//! and the token when one is set.

use uplink_proto::sled::local::{LocalPolicy, LocalRefusal, LocalRequest};

fn agent<'a>() -> LocalRequest<'a> {
    LocalRequest {
        origin: None,
        host: Some("127.0.0.1:3002"),
        content_type: Some("application/json"),
        bearer: None,
        json_only: true,
    }
}

#[test]
fn an_agent_on_loopback_is_admitted_and_a_browser_page_is_not() {
    let policy = LocalPolicy::new("127.0.0.1:3002");
    assert_eq!(policy.check(&agent()), Ok(()));
    for host in
        ["127.0.0.1:3002", "localhost:3002", "LOCALHOST", "127.0.0.1", "127.1.2.3:80", "[::1]:3002", "app.localhost"]
    {
        assert_eq!(policy.check(&LocalRequest { host: Some(host), ..agent() }), Ok(()), "{host}");
    }
    // DNS rebinding: the page's own name, resolved to 127.0.0.1.
    for host in [
        "evil.example:3002",
        "evil.example",
        "127.0.0.1.evil.example",
        "1270.0.0.1",
        "127.0.0.256",
        "",
        "localhost.evil.example",
    ] {
        assert_eq!(
            policy.check(&LocalRequest { host: Some(host), ..agent() }),
            Err(LocalRefusal::ForeignHost),
            "{host}"
        );
    }
    assert_eq!(policy.check(&LocalRequest { host: None, ..agent() }), Err(LocalRefusal::ForeignHost));
    // A page's request carries its Origin.
    let page = LocalRequest { origin: Some("https://evil.example"), ..agent() };
    assert_eq!(policy.check(&page), Err(LocalRefusal::ForeignOrigin));
    assert_eq!(LocalRefusal::ForeignOrigin.status(), 403);
    // A CORS simple request: text/plain, no preflight.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data"),
        None,
        Some("application/jsonx"),
    ] {
        assert_eq!(policy.check(&LocalRequest { content_type: ct, ..agent() }), Err(LocalRefusal::NotJson), "{ct:?}");
    }
    assert_eq!(
        policy.check(&LocalRequest { content_type: Some("Application/JSON; charset=utf-8"), ..agent() }),
        Ok(())
    );
    // Routes that take other bodies (MCP) do not need the JSON type checked here.
    assert_eq!(policy.check(&LocalRequest { content_type: None, json_only: false, ..agent() }), Ok(()));
}

#[test]
fn allowed_origins_and_the_token_are_honoured() {
    let mut policy = LocalPolicy::new("127.0.0.1:3002");
    policy.allowed_origins = vec!["http://localhost:5173".into()];
    assert_eq!(policy.check(&LocalRequest { origin: Some("http://localhost:5173"), ..agent() }), Ok(()));
    assert_eq!(
        policy.check(&LocalRequest { origin: Some("http://localhost:5174"), ..agent() }),
        Err(LocalRefusal::ForeignOrigin)
    );
    policy.token = Some("t0ken".into());
    assert_eq!(policy.check(&agent()), Err(LocalRefusal::Unauthorized));
    for wrong in ["t0ke", "t0kenn", "T0KEN", ""] {
        assert_eq!(policy.check(&LocalRequest { bearer: Some(wrong), ..agent() }), Err(LocalRefusal::Unauthorized));
    }
    assert_eq!(policy.check(&LocalRequest { bearer: Some("t0ken"), ..agent() }), Ok(()));
    assert_eq!(LocalRefusal::Unauthorized.status(), 401);
    assert_eq!(LocalRefusal::NotJson.status(), 415);
}

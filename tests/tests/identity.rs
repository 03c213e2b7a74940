//! Standard identity at the MCP endpoint, against a real OpenID provider (the certified `oidc-provider`,
//! `tests/js/oidc.mjs`) and the official TypeScript SDK's OAuth client: the gateway is an OAuth 2.1
//! resource server under the MCP authorization spec. A client without a token is told where to get one; the
//! SDK signs a person in at the provider and relays through a real sled; a token for another resource, an
//! expired, premature, forged or tampered one, one without the scope or for a person without a role is
//! refused before anything reaches the sled; the client's token never reaches the sled's local server; an
//! MCP session is reached only by the identity that opened it.
//!
//! Needs Node and the packages of `tests/js` (`scripts/test` installs them).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use uplink_proto::gateway::SessionConfig;
use uplink_proto::gateway::identity::PersonRule;
use uplink_tests::oidc::{Provider, console_sign_in, js_dir};
use uplink_tests::program::{Program, Running};
use uplink_tests::{ADMIN_TOKEN, RealGateway, SLED_TOKEN, free_port, http, http_with_headers, next_event, sse};
use uplink_tokio::gateway::{GatewayServerConfig, OidcConfig};
use uplink_tokio::{Uplink, UplinkConfig};

/// The SDK server behind a real sled behind a gateway that takes the provider's tokens.
struct Rig {
    provider: Provider,
    _server: Running,
    gw: RealGateway,
    uplink: Uplink,
    base: String,
}

impl Rig {
    async fn start() -> Rig {
        let provider = Provider::start(None).await;
        let server = Program::new("node").arg(js_dir().join("server.mjs")).show_log().start().await;
        let server_port = serde_json::from_str::<Value>(&server.banner[0]).unwrap()["port"].as_u64().unwrap();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut config = GatewayServerConfig::new(
            format!("127.0.0.1:{port}").parse().unwrap(),
            vec![SLED_TOKEN.into()],
            ADMIN_TOKEN,
        );
        config.hub = uplink_proto::gateway::HubConfig::new(SessionConfig::default());
        config.public_url = Some(base.clone());
        let people: Vec<PersonRule> = ["group:platform-oncall=approver", "group:readers=viewer", "sub:robot=approver"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        config.oidc = Some(OidcConfig { people, ..OidcConfig::new(provider.issuer.clone()) });
        let gw = RealGateway::start_at(config, None).await;
        let mut events = sse(&format!("{}/api/events", gw.base), ADMIN_TOKEN).await;
        let mut c = UplinkConfig::new(&gw.ws, "sdk");
        c.token = Some(SLED_TOKEN.into());
        c.local_mcp_url = format!("http://127.0.0.1:{server_port}/mcp");
        let uplink = Uplink::start(c).unwrap();
        next_event(&mut events, "sled_connected").await;
        Rig { provider, _server: server, gw, uplink, base }
    }

    fn url(&self, project: &str) -> String {
        format!("{}/api/sleds/{project}/mcp", self.base)
    }

    /// Runs the SDK's OAuth client as `user`: its exit status and what it printed.
    async fn sdk_client(&self, user: &str) -> (bool, Value) {
        let run = tokio::process::Command::new("node")
            .arg(js_dir().join("oauth-client.mjs"))
            .args([self.url("sdk").as_str(), user])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the SDK client finishes").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let printed = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{stderr}"));
        (out.status.success(), printed)
    }

    async fn stop(self) {
        self.uplink.shutdown().await;
        self.gw.stop().await;
    }
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");

/// `initialize` with `token`: the status, the `WWW-Authenticate` challenge, the session id, the body.
async fn initialize(url: &str, token: Option<&str>) -> (u16, String, Option<String>, String) {
    let (status, headers, body) = http_with_headers("POST", url, token, Some(INITIALIZE), &[ACCEPT]).await;
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    (status, find("www-authenticate").unwrap_or_default(), find("mcp-session-id"), body)
}

#[tokio::test]
async fn the_sdk_signs_a_person_in_at_the_provider_and_relays_through_the_sled() {
    let rig = Rig::start().await;
    let (ok, seen) = rig.sdk_client("alice").await;
    assert!(ok, "{seen}");
    assert_eq!(seen["before"], "unauthorized", "without a token the client is sent to sign in");
    assert_eq!(seen["authorization_resource"], rig.url("sdk"), "the SDK names this endpoint as the resource");
    assert_eq!(seen["token_audience"], rig.url("sdk"), "and its token is for this endpoint alone");
    assert_eq!(seen["token_subject"], "alice");
    assert!(seen["tools"].as_array().unwrap().iter().any(|t| t == "echo"), "{seen}");
    assert_eq!(seen["echo"], "hello from alice", "a tool call went through the sled and back");

    // Mallory signs in at the provider too, but no rule gives her group a role here.
    let (ok, seen) = rig.sdk_client("mallory").await;
    assert!(!ok, "{seen}");
    assert_eq!(seen["token_subject"], "mallory", "she has a token");
    assert!(seen.get("tools").is_none(), "and nothing past it: {seen}");
    // The gateway answered 403 insufficient_scope (the next test checks the status); the SDK reads that as a
    // call to authorize again, which ends its connection attempt unauthorized.
    assert!(seen["error"].as_str().unwrap().contains("Unauthorized"), "{seen}");
    rig.stop().await;
}

#[tokio::test]
async fn a_client_without_a_token_is_told_where_to_get_one() {
    let rig = Rig::start().await;
    let url = rig.url("sdk");
    let (status, challenge, _, _) = initialize(&url, None).await;
    assert_eq!(status, 401);
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/api/sleds/sdk/mcp", rig.base);
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{metadata_url}\", scope=\"mcp\""));
    let (status, headers, body) = http_with_headers("GET", &metadata_url, None, None, &[]).await;
    assert_eq!(status, 200, "{body}");
    let cors = headers.iter().find(|(n, _)| n == "access-control-allow-origin").map(|(_, v)| v.as_str());
    assert_eq!(cors, Some("*"), "a browser-based client reads it too");
    let metadata: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(metadata["resource"], url);
    assert_eq!(metadata["authorization_servers"], json!([rig.provider.issuer]));
    assert_eq!(metadata["scopes_supported"], json!(["mcp"]));
    // A project's name is one path segment in the resource.
    let (_, body) =
        http("GET", &format!("{}/.well-known/oauth-protected-resource/api/sleds/a%20b/mcp", rig.base), None, None, &[])
            .await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["resource"], rig.url("a%20b"));
    rig.stop().await;
}

#[tokio::test]
async fn only_a_token_for_this_endpoint_with_its_scope_and_a_role_reaches_the_sled() {
    let rig = Rig::start().await;
    let url = rig.url("sdk");
    let p = &rig.provider;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = |edit: &dyn Fn(&mut Value)| {
        let mut c = json!({"iss": p.issuer, "sub": "robot", "aud": url, "exp": now + 300, "iat": now, "scope": "mcp"});
        edit(&mut c);
        c
    };

    // The provider's own tokens.
    let good = p.robot_token(&url, "mcp").await;
    let (status, _, session, body) = initialize(&url, Some(&good)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("uplink-e2e"), "the sled's local server answered: {body}");
    let other_project = p.robot_token(&rig.url("other"), "mcp").await;
    let elsewhere = p.robot_token("https://mcp.example/mcp", "mcp").await;

    let refused: Vec<(&str, String, u16, &str)> = vec![
        ("a token for another project's endpoint", other_project, 401, "not issued for this resource"),
        ("a token for another resource", elsewhere, 401, "not issued for this resource"),
        (
            "an expired one",
            p.forge(claims(&|c| c["exp"] = json!(now - 120)), "provider", "RS256").await,
            401,
            "expired",
        ),
        (
            "a premature one",
            p.forge(claims(&|c| c["nbf"] = json!(now + 600)), "provider", "RS256").await,
            401,
            "not valid yet",
        ),
        (
            "one from another issuer",
            p.forge(claims(&|c| c["iss"] = json!("https://id.example")), "provider", "RS256").await,
            401,
            "trusted issuer",
        ),
        (
            "one without the scope",
            p.forge(claims(&|c| c["scope"] = json!("openid mcp:read")), "provider", "RS256").await,
            403,
            "lacks the mcp scope",
        ),
        (
            "one for a viewer",
            p.forge(
                claims(&|c| {
                    c["sub"] = json!("bob");
                    c["groups"] = json!(["readers"]);
                }),
                "provider",
                "RS256",
            )
            .await,
            403,
            "viewer role",
        ),
        (
            "one for nobody mapped",
            p.forge(claims(&|c| c["sub"] = json!("mallory")), "provider", "RS256").await,
            403,
            "no rule",
        ),
        (
            "one signed with a key the provider does not publish",
            p.forge(claims(&|_| ()), "stranger", "RS256").await,
            401,
            "key the issuer does not publish",
        ),
        (
            "an HMAC keyed with the provider's public key",
            p.forge(claims(&|_| ()), "provider", "HS256").await,
            401,
            "algorithm",
        ),
        ("a tampered one", tamper(&good), 401, "signature"),
        ("no JWT at all", "not-a-jwt".to_owned(), 401, "not a signed JWT"),
    ];
    for (what, token, expected, says) in refused {
        let (status, challenge, session, body) = initialize(&url, Some(&token)).await;
        assert_eq!(status, expected, "{what}: {body}");
        assert!(session.is_none(), "{what}");
        let code = if expected == 401 { "invalid_token" } else { "insufficient_scope" };
        assert!(challenge.starts_with(&format!("Bearer error=\"{code}\"")), "{what}: {challenge}");
        assert!(challenge.contains("resource_metadata=\""), "{what}: {challenge}");
        assert!(body.contains(says), "{what}: {body}");
    }

    // The session the robot opened is its own: another identity with a good token finds none there.
    let session = session.unwrap();
    let alice = p
        .forge(
            claims(&|c| {
                c["sub"] = json!("alice");
                c["groups"] = json!(["platform-oncall"]);
            }),
            "provider",
            "RS256",
        )
        .await;
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let with_session = [ACCEPT, ("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-11-25")];
    let (status, body) = http("POST", &url, Some(&alice), Some(list), &with_session).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http("POST", &url, Some(&good), Some(list), &with_session).await;
    assert_eq!(status, 200, "{body}");

    // The client's token goes no further than the gateway: the local server sees no Authorization.
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"headers","arguments":{}}}"#;
    let (status, body) = http("POST", &url, Some(&good), Some(call), &with_session).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("mcp-session-id"), "the headers came back: {body}");
    assert!(!body.to_ascii_lowercase().contains("authorization"), "{body}");
    assert!(!body.contains(&good[..40]), "{body}");

    // A token for the admin API reads the API and is no good at an MCP endpoint; the MCP endpoint's is no
    // good at the API.
    let api = p.robot_token(&format!("{}/api", rig.base), "mcp").await;
    let (status, body) = http("GET", &format!("{}/api/me", rig.base), Some(&api), None, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["name"], format!("{}#robot", p.issuer));
    let (status, _, _, body) = initialize(&url, Some(&api)).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http("GET", &format!("{}/api/sleds", rig.base), Some(&good), None, &[]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not issued for this resource"), "{body}");

    // Admin tokens work as before beside access tokens.
    let (status, _, _, body) = initialize(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    rig.stop().await;
}

/// `token` with its payload's subject changed, the signature kept.
fn tamper(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let payload = payload.replace("\"sub\":\"robot\"", "\"sub\":\"admin\"");
    assert!(payload.contains("\"sub\":\"admin\""), "{payload}");
    format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload), parts[2])
}

/// A gateway whose console signs people in at a fresh provider (client `uplink-console`, the groups scope).
async fn console_gateway(roles: &[&str]) -> (Provider, RealGateway, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let provider = Provider::start(Some(&format!("{base}/console/oidc/callback"))).await;
    let mut config =
        GatewayServerConfig::new(format!("127.0.0.1:{port}").parse().unwrap(), vec![SLED_TOKEN.into()], ADMIN_TOKEN);
    config.public_url = Some(base.clone());
    config.oidc = Some(OidcConfig {
        people: roles.iter().map(|r| r.parse().unwrap()).collect(),
        client_id: Some("uplink-console".into()),
        client_secret: Some("console-secret".into()),
        scopes: vec!["groups".into()],
        ..OidcConfig::new(provider.issuer.clone())
    });
    let gw = RealGateway::start_at(config, None).await;
    (provider, gw, base)
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str, starting: &str) -> Option<&'a str> {
    headers.iter().find(|(n, v)| n == name && v.starts_with(starting)).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn a_person_signs_in_to_the_console_at_the_provider_once_and_only_in_the_browser_that_began_it() {
    let (provider, gw, base) = console_gateway(&["group:platform-oncall=approver"]).await;
    // The page offers the provider's sign-in.
    let (status, body) = http("GET", &format!("{base}/console/session"), None, None, &[]).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["oidc"].clone()), (401, json!(true)));

    let (callback, binding, authorize) = console_sign_in(&base, "alice").await;
    let asked = |k: &str| authorize.contains(&format!("{k}="));
    assert!(authorize.starts_with(&format!("{}/auth?", provider.issuer)), "{authorize}");
    assert!(["state", "nonce", "code_challenge"].iter().all(|k| asked(k)), "{authorize}");
    assert!(authorize.contains("code_challenge_method=S256") && authorize.contains("scope=openid%20email%20groups"));
    // Without the browser's binding cookie (a login CSRF, a code someone else got): nothing, and the
    // sign-in is used up.
    let (status, _, page) = http_with_headers("GET", &callback, None, None, &[]).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("another browser"), "{page}");
    let with_binding = format!("uplink_oidc={binding}");
    let (status, _, page) = http_with_headers("GET", &callback, None, None, &[("cookie", &with_binding)]).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("unknown or already used"), "{page}");

    // In the browser that began it: a console session, once.
    let (callback, binding, _) = console_sign_in(&base, "alice").await;
    let with_binding = format!("uplink_oidc={binding}");
    let (status, headers, page) = http_with_headers("GET", &callback, None, None, &[("cookie", &with_binding)]).await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(header_of(&headers, "location", ""), Some("/"));
    let session = header_of(&headers, "set-cookie", "uplink_session=").unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"), "{session}");
    let session_cookie = session.split(';').next().unwrap().to_owned();
    let (status, body) =
        http("GET", &format!("{base}/console/session"), None, None, &[("cookie", &session_cookie)]).await;
    assert_eq!(status, 200, "{body}");
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who["name"], "alice@example.com");
    assert_eq!(who["id"], format!("{}#alice", provider.issuer), "known by issuer and subject");
    assert_eq!(who["role"], "approver", "by her group, which came from UserInfo");
    let (status, _) = http("GET", &format!("{base}/api/permissions"), None, None, &[("cookie", &session_cookie)]).await;
    assert_eq!(status, 200, "the session reads");
    // The same callback again (a replayed state): nothing.
    let (status, _, page) = http_with_headers("GET", &callback, None, None, &[("cookie", &with_binding)]).await;
    assert_eq!(status, 400, "{page}");

    // Mallory signs in at the provider, but no rule gives her group a role: no session, and a page that
    // says why.
    let (callback, binding, _) = console_sign_in(&base, "mallory").await;
    let (status, headers, page) =
        http_with_headers("GET", &callback, None, None, &[("cookie", &format!("uplink_oidc={binding}"))]).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("no rule gives you a role here"), "{page}");
    assert!(header_of(&headers, "set-cookie", "uplink_session=").is_none());
    // An ID token with any part wrong signs nobody in: another audience, long expired, another sign-in's
    // nonce, a payload changed under its signature.
    for (part, says) in [
        ("aud", "not issued for this resource"),
        ("exp", "expired"),
        ("nonce", "nonce is not the sign-in"),
        ("sig", "signature does not verify"),
    ] {
        provider.tamper_next_id_token(part).await;
        let (callback, binding, _) = console_sign_in(&base, "alice").await;
        let (status, headers, page) =
            http_with_headers("GET", &callback, None, None, &[("cookie", &format!("uplink_oidc={binding}"))]).await;
        assert_eq!(status, 401, "{part}: {page}");
        assert!(page.contains(says), "{part}: {page}");
        assert!(header_of(&headers, "set-cookie", "uplink_session=").is_none(), "{part}");
    }
    // The provider's own refusal is said as such.
    let (status, _, page) =
        http_with_headers("GET", &format!("{base}/console/oidc/callback?error=access_denied"), None, None, &[]).await;
    assert_eq!(status, 401);
    assert!(page.contains("did not sign you in: access_denied"), "{page}");
    gw.stop().await;
}

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

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use uplink_proto::gateway::SessionConfig;
use uplink_proto::gateway::identity::PersonRule;
use uplink_tests::program::{Program, Running};
use uplink_tests::{ADMIN_TOKEN, RealGateway, SLED_TOKEN, free_port, http, http_with_headers, next_event, sse};
use uplink_tokio::gateway::{GatewayServerConfig, OidcConfig};
use uplink_tokio::{Uplink, UplinkConfig};

fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed: run `npm ci --prefix tests/js` (scripts/test does)"
    );
    dir
}

/// The provider and its forge; killed when dropped.
struct Provider {
    _node: Running,
    issuer: String,
    forge: String,
}

impl Provider {
    async fn start() -> Provider {
        let node = Program::new("node").arg(js_dir().join("oidc.mjs")).show_log().start().await;
        let banner: Value = serde_json::from_str(&node.banner[0]).unwrap();
        let issuer = banner["issuer"].as_str().unwrap().to_owned();
        let forge = format!("http://127.0.0.1:{}/sign", banner["forge"]);
        Provider { _node: node, issuer, forge }
    }

    /// A token the provider issues to the `robot` client (client credentials) for `resource`.
    async fn robot_token(&self, resource: &str, scope: &str) -> String {
        let form = format!("grant_type=client_credentials&scope={scope}&resource={}", encode(resource));
        let (status, body) = form_post(&format!("{}/token", self.issuer), "robot:robot-secret", &form).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    /// A token with exactly `claims`, signed with the provider's key (`key` "provider") or a key it does
    /// not publish ("stranger"), or an HMAC keyed with the provider's public key (`alg` "HS256").
    async fn forge(&self, claims: Value, key: &str, alg: &str) -> String {
        let body = json!({"claims": claims, "key": key, "alg": alg}).to_string();
        let (status, token) = http("POST", &self.forge, None, Some(&body), &[]).await;
        assert_eq!(status, 200, "{token}");
        token
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn form_post(url: &str, basic: &str, form: &str) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let auth = format!("Basic {}", STANDARD.encode(basic));
    let request = hyper::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", auth)
        .body(http_body_util::Full::new(bytes::Bytes::from(form.to_owned())))
        .unwrap();
    let response = uplink_tests::within("the provider's answer", client.request(request)).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

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
        let provider = Provider::start().await;
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
    let (status, body) = http("GET", &metadata_url, None, None, &[]).await;
    assert_eq!(status, 200, "{body}");
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

//! The web console's server side over real sockets: its own page and script with a strict policy, sign-in
//! to an HttpOnly SameSite=Strict cookie, the cookie on the API routes only with its CSRF token from the
//! console's own origin, roles as the credentials say now, the event stream with the cookie, sign-out.
#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uplink_proto::gateway::{ProjectScope, Role};
use uplink_tests::{RealGateway, identify, next_event, sse_with, within};
use uplink_tokio::gateway::GatewayServerConfig;
use uplink_tokio::gateway::credentials::{AdminPrincipal, Credentials, SledCredential, TokenHash};

const SLED: &str = "token-sled-0123456789abcdef0123456789abcdef";
const ANA: &str = "token-ana-approver-0123456789abcdef01234567";
const VIC: &str = "token-vic-viewer-0123456789abcdef0123456789ab";

fn credentials(with_ana: bool) -> Credentials {
    let sleds = vec![SledCredential::new("farm", TokenHash::of(SLED), ProjectScope::Any)];
    let mut people = vec![AdminPrincipal::new("vic", Role::Viewer, TokenHash::of(VIC))];
    if with_ana {
        people.push(AdminPrincipal::new("ana", Role::Approver, TokenHash::of(ANA)));
    }
    Credentials::new(sleds, people).unwrap()
}

/// One request; its status, headers and body.
async fn call(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, hyper::HeaderMap, String) {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = hyper::Request::builder().method(method).uri(url).header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    let response = within("an answer", client.request(request)).await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Signs in with `token`: the cookie header to send, and the CSRF token.
async fn sign_in(base: &str, token: &str) -> (String, String) {
    let (status, headers, body) =
        call("POST", &format!("{base}/console/session"), &[], &json!({"token": token}).to_string()).await;
    assert_eq!(status, 200, "{body}");
    let set = headers["set-cookie"].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag");
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf"].as_str().unwrap().to_owned();
    (cookie, csrf)
}

#[tokio::test]
async fn the_console_signs_in_to_a_cookie_that_decides_only_with_its_csrf_token_from_its_own_origin() {
    let gw = RealGateway::start_config(GatewayServerConfig::with_credentials(
        "127.0.0.1:0".parse().unwrap(),
        credentials(true),
    ))
    .await;
    let base = gw.base.clone();
    let host = base.trim_start_matches("http://").to_owned();
    let origin = base.clone();

    // The page and its script are ours, with a policy that loads nothing from elsewhere.
    let (status, headers, page) = call("GET", &format!("{base}/"), &[], "").await;
    assert_eq!(status, 200);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'")
    );
    let (_, _, script) = call("GET", &format!("{base}/console/app.js"), &[], "").await;
    for text in [&page, &script] {
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("innerHTML"),
            "fetches or injects"
        );
    }

    // Sign-in: a wrong token, a foreign page, then ana.
    assert_eq!(call("POST", &format!("{base}/console/session"), &[], r#"{"token":"nope"}"#).await.0, 401);
    let evil = [("origin", "https://evil.example"), ("host", host.as_str())];
    assert_eq!(
        call("POST", &format!("{base}/console/session"), &evil, &json!({"token": ANA}).to_string()).await.0,
        403
    );
    let (cookie, csrf) = sign_in(&base, ANA).await;
    let (status, _, who) = call("GET", &format!("{base}/console/session"), &[("cookie", &cookie)], "").await;
    assert_eq!((status, serde_json::from_str::<Value>(&who).unwrap()["role"].clone()), (200, json!("approver")));

    // A pending request, seen through the event stream with the cookie.
    let mut events = sse_with(&format!("{base}/api/events"), &[("cookie", &cookie)]).await;
    let mut ws = gw.raw_sled_with(SLED).await;
    identify(&mut ws, "web").await;
    next_event(&mut events, "sled_connected").await;
    let ask = json!({"type":"perm_request","req_id":"r1","payload":{"tool_name":"Bash","tool_input":{"command":"ls"}}});
    ws.send(Message::text(ask.to_string())).await.unwrap();
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let (status, _, listing) = call("GET", &format!("{base}/api/permissions"), &[("cookie", &cookie)], "").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&listing).unwrap()["permissions"][0]["id"], id);

    // Deciding with the cookie: not without the CSRF token, not from another origin, then yes.
    let url = format!("{base}/api/permissions/{id}");
    let approve = r#"{"approved":true}"#;
    assert_eq!(call("POST", &url, &[("cookie", &cookie)], approve).await.0, 403, "no CSRF token");
    let wrong = [("cookie", cookie.as_str()), ("x-csrf-token", "guess")];
    assert_eq!(call("POST", &url, &wrong, approve).await.0, 403);
    let foreign = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str()), ("origin", "https://evil.example")];
    assert_eq!(call("POST", &url, &foreign, approve).await.0, 403, "a cross-site request");
    let own = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str()), ("origin", origin.as_str())];
    let (status, _, body) = call("POST", &url, &own, approve).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["by"], "ana");
    let answer = within("the decision", async {
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "perm_response" {
                    return v;
                }
            }
        }
    })
    .await;
    assert_eq!(answer["payload"]["approved"], true);

    // A viewer's session reads but may not decide.
    let (viewer, viewer_csrf) = sign_in(&base, VIC).await;
    ws.send(Message::text(
        json!({"type":"perm_request","req_id":"r2","payload":{"tool_name":"Bash","tool_input":{}}}).to_string(),
    ))
    .await
    .unwrap();
    let id = next_event(&mut events, "permission_requested").await["id"].as_str().unwrap().to_owned();
    let as_viewer = [("cookie", viewer.as_str()), ("x-csrf-token", viewer_csrf.as_str())];
    assert_eq!(call("POST", &format!("{base}/api/permissions/{id}"), &as_viewer, approve).await.0, 403);

    // Revoked by a reload: every session of ana's ends at once.
    gw.reloader.reload(credentials(false)).await;
    assert_eq!(call("GET", &format!("{base}/api/permissions"), &[("cookie", &cookie)], "").await.0, 401);
    // Signing out ends the viewer's session; the cookie is worth nothing after.
    assert_eq!(
        call("DELETE", &format!("{base}/console/session"), &[("cookie", &viewer)], "").await.0,
        403,
        "needs CSRF"
    );
    assert_eq!(call("DELETE", &format!("{base}/console/session"), &as_viewer, "").await.0, 200);
    assert_eq!(call("GET", &format!("{base}/api/sleds"), &[("cookie", &viewer)], "").await.0, 401);
    gw.stop().await;
}

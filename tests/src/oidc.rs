//! The tests' OpenID provider: the certified `oidc-provider` (`tests/js/oidc.mjs`, pinned in its lockfile),
//! started on loopback for a test and killed when dropped, with its forge of tokens.

use serde_json::{Value, json};

use crate::http;
use crate::program::{Program, Running};

/// `tests/js`, with oidc-provider installed.
pub fn js_dir() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed: run `npm ci --prefix tests/js` (scripts/test does)"
    );
    dir
}

/// The provider and its forge; killed when dropped.
pub struct Provider {
    _node: Running,
    /// Its issuer URL.
    pub issuer: String,
    forge: String,
}

impl Provider {
    /// A provider; with `console_redirect`, its client `uplink-console` (secret `console-secret`) sends
    /// people back there.
    pub async fn start(console_redirect: Option<&str>) -> Provider {
        let node = Program::new("node").arg(js_dir().join("oidc.mjs")).args(console_redirect).show_log().start().await;
        let banner: Value = serde_json::from_str(&node.banner[0]).unwrap();
        let issuer = banner["issuer"].as_str().unwrap().to_owned();
        let forge = format!("http://127.0.0.1:{}/sign", banner["forge"]);
        Provider { _node: node, issuer, forge }
    }

    /// A token the provider issues to the `robot` client (client credentials) for `resource`.
    pub async fn robot_token(&self, resource: &str, scope: &str) -> String {
        let form = format!("grant_type=client_credentials&scope={scope}&resource={}", encode(resource));
        let (status, body) = form_post(&format!("{}/token", self.issuer), "robot:robot-secret", &form).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    /// A token with exactly `claims`, signed with the provider's key (`key` "provider") or a key it does
    /// not publish ("stranger"), or an HMAC keyed with the provider's public key (`alg` "HS256").
    pub async fn forge(&self, claims: Value, key: &str, alg: &str) -> String {
        let body = json!({"claims": claims, "key": key, "alg": alg}).to_string();
        let (status, token) = http("POST", &self.forge, None, Some(&body), &[]).await;
        assert_eq!(status, 200, "{token}");
        token
    }
}

impl Provider {
    /// Makes the provider's next token answer carry an ID token with `part` wrong: `aud`, `exp`, `nonce`
    /// (each re-signed with its own key) or `sig` (a payload changed under its signature).
    pub async fn tamper_next_id_token(&self, part: &str) {
        let url = self.forge.replace("/sign", "/tamper");
        let (status, body) = http("POST", &url, None, Some(&json!({"id_token": part}).to_string()), &[]).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// `user` signs in at the provider, stopped before the gateway's callback: the callback URL, the binding
/// cookie's value, and where the gateway sent the browser.
pub async fn console_sign_in(base: &str, user: &str) -> (String, String, String) {
    console_sign_in_at(base, base, user).await
}

/// As [`console_sign_in`], for a gateway at `base` whose public URL (on which the callback is) is `public`.
pub async fn console_sign_in_at(base: &str, public: &str, user: &str) -> (String, String, String) {
    let run = tokio::process::Command::new("node")
        .arg(js_dir().join("console-signin.mjs"))
        .args([base, user, public])
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(std::time::Duration::from_secs(60), run).await.expect("the sign-in finishes").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    (s("callback"), s("binding"), s("authorize"))
}

/// `text` percent-encoded but for letters and digits.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn form_post(url: &str, basic: &str, form: &str) -> (u16, String) {
    use base64::Engine as _;
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(basic));
    let request = hyper::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", auth)
        .body(http_body_util::Full::new(bytes::Bytes::from(form.to_owned())))
        .unwrap();
    let response = crate::within("the provider's answer", client.request(request)).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

//! `uplink login`: who the terminal commands act as, kept in `CONFIG_DIR/uplink/login.json` (`0600`, in a
//! `0700` directory; `CONFIG_DIR` is `$XDG_CONFIG_HOME`, else `~/.config`): the gateway's URL and either an
//! admin token, or a person's sign-in at the gateway's OpenID provider.
//!
//! The sign-in is the device authorization grant (RFC 8628): the gateway's admin API names its provider and
//! the client id to use in its Protected Resource Metadata (`/.well-known/oauth-protected-resource/api`);
//! the person opens the provider's page, enters the code shown (or follows the link that carries it) and
//! signs in there; the program polls the provider as the core's [`DeviceGrant`] says, and keeps the access
//! token for the API (RFC 8707's `resource`) and the refresh token. Later commands use the access token and,
//! once it is near its end, get the next with the refresh token (keeping the one the provider rotates to).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uplink_proto::gateway::identity::{DeviceGrant, DevicePoll, issuer_allowed};

use crate::socket_loop::Clock;

/// The gateway's URL when neither a flag nor `uplink login` names one.
pub(super) const DEFAULT_GATEWAY_URL: &str = "http://127.0.0.1:8700";

/// The file's name in the configuration directory.
const FILE: &str = "login.json";

/// How long one exchange with the gateway or the provider may take.
const WAIT: Duration = Duration::from_secs(30);

/// An access token this close to its end is renewed first.
const RENEW_BEFORE: u64 = 30;

/// What `uplink login` keeps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Saved {
    /// The gateway's base URL.
    pub(super) gateway_url: String,
    /// A PEM file of extra CA certificates for the gateway and the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ca_file: Option<PathBuf>,
    /// An admin principal's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) admin_token: Option<String>,
    /// A person's sign-in at the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) oidc: Option<SignedIn>,
}

/// A person's sign-in at the provider, for the gateway's API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SignedIn {
    issuer: String,
    client_id: String,
    resource: String,
    token_endpoint: String,
    access_token: String,
    /// When the access token ends, in Unix seconds.
    expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

/// Where `uplink login` keeps what it keeps.
pub(super) fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("uplink").join(FILE))
}

/// What `uplink login` kept, if anything.
pub(super) fn load() -> Result<Option<Saved>, String> {
    let Some(path) = path() else { return Ok(None) };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn store(saved: &Saved) -> Result<PathBuf, String> {
    let path = path().ok_or("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the sign-in")?;
    let text = serde_json::to_string_pretty(saved).map_err(|e| e.to_string())?;
    super::credentials_file::write_private(&path, &text)?;
    Ok(path)
}

/// Forgets what `uplink login` kept.
pub(super) fn logout() -> Result<Option<PathBuf>, String> {
    let Some(path) = path() else { return Ok(None) };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Keeps `admin_token` for `gateway_url`.
pub(super) fn keep_token(gateway_url: &str, admin_token: &str, ca_file: Option<PathBuf>) -> Result<PathBuf, String> {
    store(&Saved {
        gateway_url: gateway_url.to_owned(),
        ca_file,
        admin_token: Some(admin_token.trim().to_owned()),
        oidc: None,
    })
}

/// Signs a person in at `gateway_url`'s provider with the device authorization grant, telling them what to
/// do through `say`; keeps the sign-in.
pub(super) async fn sign_in(
    gateway_url: &str,
    ca_file: Option<PathBuf>,
    say: impl Fn(&str),
) -> Result<PathBuf, String> {
    let ca = ca_file.as_deref();
    let metadata = get_json(gateway_url, "/.well-known/oauth-protected-resource/api", ca).await.map_err(|e| {
        format!("{e} (a gateway signs people in here only with --oidc-issuer; otherwise use --admin-token)")
    })?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let resource = text(&metadata, "resource").ok_or("the gateway's metadata names no resource")?;
    let issuer = metadata["authorization_servers"][0].as_str().map(str::to_owned);
    let issuer = issuer.filter(|i| issuer_allowed(i)).ok_or("the gateway's metadata names no usable provider")?;
    let client_id = text(&metadata, "uplink_cli_client_id")
        .ok_or("the gateway names no client for `uplink login` (its --oidc-cli-client-id); use --admin-token")?;
    let discovery = get_json(&issuer, "/.well-known/openid-configuration", ca).await?;
    if text(&discovery, "issuer").as_deref() != Some(issuer.as_str()) {
        return Err(format!("the provider's discovery document names another issuer than {issuer}"));
    }
    let endpoint = |k: &str| text(&discovery, k).filter(|u| issuer_allowed(u));
    let device = endpoint("device_authorization_endpoint").ok_or("the provider offers no device sign-in")?;
    let token_endpoint = endpoint("token_endpoint").ok_or("the provider names no token endpoint")?;

    let form = format!(
        "client_id={}&scope={}&resource={}",
        enc(&client_id),
        enc("openid email offline_access"),
        enc(&resource)
    );
    let asked = post_form(&device, &form, ca).await?.map_err(|(e, d)| format!("the provider refused: {e} {d}"))?;
    let device_code = text(&asked, "device_code").ok_or("the provider's answer has no device_code")?;
    let user_code = text(&asked, "user_code").unwrap_or_default();
    let page = text(&asked, "verification_uri_complete").or_else(|| text(&asked, "verification_uri"));
    let page = page.ok_or("the provider's answer names no page to sign in at")?;
    say(&format!("To sign in, open {page} and enter the code {user_code} (if asked)."));

    let clock = Clock::new(tokio::time::Instant::now());
    let now = clock.now();
    let mut grant = DeviceGrant::new(now, asked["expires_in"].as_u64().unwrap_or(600), asked["interval"].as_u64());
    let mut next = grant.first(now);
    let form = format!(
        "grant_type={}&device_code={}&client_id={}&resource={}",
        enc("urn:ietf:params:oauth:grant-type:device_code"),
        enc(&device_code),
        enc(&client_id),
        enc(&resource)
    );
    let answer = loop {
        match next {
            DevicePoll::At(at) => {
                tokio::time::sleep(Duration::from_micros(at.as_micros().saturating_sub(clock.now().as_micros()))).await;
            }
            DevicePoll::Denied => return Err("the sign-in was refused at the provider".into()),
            DevicePoll::Expired => {
                return Err("the code expired before the sign-in was done: run `uplink login` again".into());
            }
            DevicePoll::Failed => return Err("the provider ended the sign-in".into()),
        }
        match post_form(&token_endpoint, &form, ca).await? {
            Ok(answer) => break answer,
            Err((error, description)) => {
                next = grant.answered(clock.now(), &error);
                if next == DevicePoll::Failed {
                    return Err(format!("the provider refused: {error} {description}"));
                }
            }
        }
    };
    let signed_in = tokens(&answer, issuer, client_id, resource, token_endpoint, None)?;
    store(&Saved { gateway_url: gateway_url.to_owned(), ca_file, admin_token: None, oidc: Some(signed_in) })
}

/// The bearer token to use for `saved`: its admin token, or the signed-in person's access token (renewed
/// first with the refresh token, and kept, when it is near its end).
pub(super) async fn bearer(saved: &Saved) -> Result<String, String> {
    if let Some(token) = &saved.admin_token {
        return Ok(token.clone());
    }
    let Some(signed_in) = &saved.oidc else {
        return Err("the kept sign-in holds no credential: run `uplink login`".into());
    };
    if unix_now() + RENEW_BEFORE < signed_in.expires_at {
        return Ok(signed_in.access_token.clone());
    }
    let refresh = signed_in.refresh_token.as_deref().ok_or("the sign-in has ended: run `uplink login` again")?;
    let form = format!(
        "grant_type=refresh_token&refresh_token={}&client_id={}&resource={}",
        enc(refresh),
        enc(&signed_in.client_id),
        enc(&signed_in.resource)
    );
    let answer = post_form(&signed_in.token_endpoint, &form, saved.ca_file.as_deref())
        .await?
        .map_err(|(e, d)| format!("the sign-in could not be renewed ({e} {d}): run `uplink login` again"))?;
    let renewed = tokens(
        &answer,
        signed_in.issuer.clone(),
        signed_in.client_id.clone(),
        signed_in.resource.clone(),
        signed_in.token_endpoint.clone(),
        signed_in.refresh_token.clone(),
    )?;
    let token = renewed.access_token.clone();
    store(&Saved { oidc: Some(renewed), ..saved.clone() })?;
    Ok(token)
}

fn tokens(
    answer: &Value,
    issuer: String,
    client_id: String,
    resource: String,
    token_endpoint: String,
    refresh_before: Option<String>,
) -> Result<SignedIn, String> {
    let access_token = answer["access_token"].as_str().ok_or("the provider's answer has no access_token")?.to_owned();
    let expires_at = unix_now() + answer["expires_in"].as_u64().unwrap_or(300);
    // A provider that rotates refresh tokens sends the next; one that does not keeps the first valid.
    let refresh_token = answer["refresh_token"].as_str().map(str::to_owned).or(refresh_before);
    Ok(SignedIn { issuer, client_id, resource, token_endpoint, access_token, expires_at, refresh_token })
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn get_json(base: &str, path: &str, ca: Option<&Path>) -> Result<Value, String> {
    match exchange("GET", base, path, &[("accept", "application/json")], String::new(), ca).await? {
        (200, value) => Ok(value),
        (status, value) => {
            Err(format!("{base}{path}: {status} {}", value.get("error").and_then(Value::as_str).unwrap_or("")))
        }
    }
}

/// A form posted to the provider: its JSON answer, or its OAuth error and description.
async fn post_form(url: &str, form: &str, ca: Option<&Path>) -> Result<Result<Value, (String, String)>, String> {
    let headers = [("content-type", "application/x-www-form-urlencoded"), ("accept", "application/json")];
    let (status, value) = exchange("POST", url, "", &headers, form.to_owned(), ca).await?;
    if (200..300).contains(&status) {
        return Ok(Ok(value));
    }
    let said = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let error = said("error");
    if error.is_empty() {
        return Err(format!("{url}: {status}"));
    }
    Ok(Err((error, said("error_description"))))
}

async fn exchange(
    method: &str,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
    ca: Option<&Path>,
) -> Result<(u16, Value), String> {
    crate::http_client::json(method, base, path, headers, bytes::Bytes::from(body), ca, 1 << 20, WAIT).await
}

/// `uplink login`.
#[derive(clap::Args)]
pub(super) struct LoginArgs {
    /// The gateway's base URL (http:// or https://).
    #[arg(long, env = "UPLINK_GATEWAY_URL", default_value = DEFAULT_GATEWAY_URL)]
    gateway_url: String,
    /// Keep this admin principal's token instead of signing in at the gateway's OpenID provider.
    #[arg(long, env = "UPLINK_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A PEM file of extra CA certificates to trust for https:// (the gateway's and the provider's).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

/// `uplink login`: keeps a token, or signs the person in; then asks the gateway who that is. Exit 0 signed
/// in, 1 not.
pub(super) async fn login(args: LoginArgs) -> std::process::ExitCode {
    let url = args.gateway_url.trim_end_matches('/').to_owned();
    let kept = match args.admin_token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) => keep_token(&url, token, args.ca_file.clone()),
        None => sign_in(&url, args.ca_file.clone(), |line| eprintln!("{line}")).await,
    };
    let path = match kept {
        Ok(path) => path,
        Err(why) => {
            eprintln!("uplink login: {why}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Who the gateway takes this for: a wrong token is said now, not at the first command.
    let me = async {
        let saved = load()?.ok_or("the sign-in was not kept")?;
        let bearer = format!("Bearer {}", bearer(&saved).await?);
        exchange(
            "GET",
            &saved.gateway_url,
            "/api/me",
            &[("authorization", bearer.as_str())],
            String::new(),
            saved.ca_file.as_deref(),
        )
        .await
    };
    match me.await {
        Ok((200, who)) => {
            let (name, role) = (who["name"].as_str().unwrap_or("?"), who["role"].as_str().unwrap_or("?"));
            eprintln!("Signed in to {url} as {} ({role}); kept in {}", name.escape_debug(), path.display());
            std::process::ExitCode::SUCCESS
        }
        Ok((status, said)) => {
            let why = said["error"].as_str().unwrap_or("").escape_debug().to_string();
            eprintln!(
                "uplink login: the gateway refused the credential ({status}: {why}); kept in {} all the same",
                path.display()
            );
            std::process::ExitCode::FAILURE
        }
        Err(why) => {
            eprintln!("uplink login: {why}");
            std::process::ExitCode::FAILURE
        }
    }
}

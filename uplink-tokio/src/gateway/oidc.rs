//! An OpenID provider as this gateway's issuer of tokens (`--oidc-issuer`): its discovery document, its
//! signing keys, and the signature of a token, checked with `jsonwebtoken` (no hand-written JOSE).
//!
//! Only the signature is judged here. What the signed claims are worth (issuer, audience, lifetime, scope,
//! the role they map to) is the core's ([`uplink_proto::gateway::identity`]).
//!
//! - The discovery document (`ISSUER/.well-known/openid-configuration`) must name the issuer exactly, and a
//!   `jwks_uri` that is `https://` (or loopback `http://`).
//! - The keys are fetched at start, again after an hour, and again when a token names a key id they lack
//!   (the issuer rotated), at most every ten seconds ([`KeyRefresh`]); one fetch at a time, each bounded in
//!   time and size. A key of a type this cannot use is skipped, not fatal; a symmetric key is never used.
//! - A token's algorithm must be an asymmetric one the core allows and, where the key names one, the key's.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use uplink_proto::gateway::identity::{Claims, KeyRefresh, PersonRule, issuer_allowed, signing_alg_allowed};

use crate::socket_loop::Clock;

/// Longest token read; a longer one is refused unread.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// Largest discovery document or key set read.
const MAX_DOCUMENT_BYTES: usize = 256 << 10;

/// Most keys kept of one key set.
const MAX_KEYS: usize = 64;

/// How long one fetch from the issuer may take.
const FETCH_WITHIN: Duration = Duration::from_secs(5);

/// The issuer's settings, from the command line.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// The issuer's URL, exactly as its discovery document names it.
    pub issuer: String,
    /// The claim that lists a person's groups (`groups`).
    pub groups_claim: String,
    /// An extra CA file to trust for the issuer's `https://` (beside the web PKI roots).
    pub ca_file: Option<PathBuf>,
    /// The roles people (and MCP clients acting for them) have by their tokens' claims: none without a rule.
    pub people: Vec<PersonRule>,
    /// This gateway's client id at the provider: with it, people sign in to the console there.
    pub client_id: Option<String>,
    /// The client's secret, for a confidential client (sent with HTTP Basic); without, a public client
    /// (PKCE alone).
    pub client_secret: Option<String>,
    /// Scopes asked for at sign-in beside `openid email` (`groups`, at providers that release groups for
    /// it).
    pub scopes: Vec<String>,
    /// The client id `uplink login` signs people in with at the provider (a public client allowed the
    /// device authorization grant), named in the admin API's metadata.
    pub cli_client_id: Option<String>,
}

impl OidcConfig {
    /// `issuer`, the groups in `groups`, no extra CA, no rule (nobody has a role yet).
    pub fn new(issuer: impl Into<String>) -> OidcConfig {
        OidcConfig {
            issuer: issuer.into(),
            groups_claim: "groups".into(),
            ca_file: None,
            people: Vec::new(),
            client_id: None,
            client_secret: None,
            scopes: Vec::new(),
            cli_client_id: None,
        }
    }
}

/// Why a token's signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadSignature {
    /// The token is longer than [`MAX_TOKEN_BYTES`], or not a JWS this reads.
    #[error("the token is not a signed JWT this gateway reads")]
    Unreadable,
    /// Its algorithm is not an allowed one, or not its key's.
    #[error("the token's signature algorithm is not accepted")]
    Algorithm,
    /// No key of the issuer has its key id.
    #[error("the token names a key the issuer does not publish")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    Signature,
    /// The issuer's keys could not be fetched.
    #[error("the issuer's keys are not available: {0}")]
    NoKeys(String),
    /// The signed payload is not what the core reads.
    #[error("{0}")]
    Claims(uplink_proto::gateway::identity::TokenRefusal),
}

/// Where the provider's endpoints are, from its discovery document.
#[derive(Clone, Debug)]
pub(super) struct Endpoints {
    pub(super) authorization: String,
    pub(super) token: String,
    pub(super) userinfo: Option<String>,
}

struct Keys {
    keys: Vec<Jwk>,
    endpoints: Option<Endpoints>,
    refresh: KeyRefresh,
    error: Option<String>,
}

/// The issuer, its keys, and the check of a token's signature.
pub(super) struct Oidc {
    pub(super) config: OidcConfig,
    clock: Clock,
    keys: Mutex<Keys>,
    /// One fetch at a time: a gate held across the fetch, never the keys' lock.
    fetching: tokio::sync::Mutex<()>,
}

impl Oidc {
    pub(super) fn new(config: OidcConfig, clock: Clock) -> Oidc {
        Oidc {
            config,
            clock,
            keys: Mutex::new(Keys { keys: Vec::new(), endpoints: None, refresh: KeyRefresh::default(), error: None }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The claims of `token` once its signature verifies with one of the issuer's keys. Nothing else about
    /// it is judged here.
    pub(super) async fn verify(&self, token: &str) -> Result<Claims, BadSignature> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(BadSignature::Unreadable);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| BadSignature::Unreadable)?;
        if !signing_alg_allowed(&alg_name(header.alg)) {
            return Err(BadSignature::Algorithm);
        }
        let kid = header.kid.as_deref();
        let mut key = self.find(kid, header.alg);
        if key.is_none() {
            self.refresh(true).await;
            key = self.find(kid, header.alg);
        }
        let Some(key) = key else {
            let error = self.keys.lock().unwrap_or_else(PoisonError::into_inner).error.clone();
            return Err(error.map_or(BadSignature::UnknownKey, BadSignature::NoKeys));
        };
        if key.common.key_algorithm.is_some_and(|a| a.to_string() != alg_name(header.alg)) {
            return Err(BadSignature::Algorithm);
        }
        let decoding = DecodingKey::from_jwk(&key).map_err(|_| BadSignature::Signature)?;
        let mut validation = Validation::new(header.alg);
        // Every claim is the core's to judge.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(token, &decoding, &validation).map_err(|_| BadSignature::Signature)?;
        Claims::from_json(&data.claims, &self.config.groups_claim).map_err(BadSignature::Claims)
    }

    /// The key for a token with key id `kid` and algorithm `alg`: the one with that id; without an id, the
    /// only key of the algorithm's family.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        match kid {
            Some(kid) => keys.keys.iter().find(|k| k.common.key_id.as_deref() == Some(kid)).cloned(),
            None => {
                let mut fitting = keys.keys.iter().filter(|k| family_fits(k, alg));
                let only = fitting.next()?;
                fitting.next().is_none().then(|| only.clone())
            }
        }
    }

    /// Fetches the keys if [`KeyRefresh`] says they are due (`unknown_key`: a token named one they lack).
    pub(super) async fn refresh(&self, unknown_key: bool) {
        let _gate = self.fetching.lock().await;
        {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            let now = self.clock.now();
            if !keys.refresh.due(now, unknown_key) {
                return;
            }
            keys.refresh.fetched(now);
        }
        let fetched = tokio::time::timeout(FETCH_WITHIN * 2, self.fetch_keys())
            .await
            .unwrap_or_else(|_| Err(format!("{} did not answer in time", self.config.issuer)));
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        match fetched {
            Ok((fresh, endpoints)) => {
                tracing::info!(issuer = %self.config.issuer.escape_debug(), keys = fresh.len(), "fetched the issuer's keys");
                keys.keys = fresh;
                keys.endpoints = endpoints;
                keys.error = None;
            }
            Err(error) => {
                tracing::warn!(issuer = %self.config.issuer.escape_debug(), error = %error.escape_debug(), "cannot fetch the issuer's keys");
                keys.error = Some(error);
            }
        }
    }

    async fn fetch_keys(&self) -> Result<(Vec<Jwk>, Option<Endpoints>), String> {
        let issuer = &self.config.issuer;
        let discovery = self.get_json(issuer, "/.well-known/openid-configuration").await?;
        if discovery.get("issuer").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(format!("the discovery document of {issuer} names another issuer"));
        }
        let jwks_uri = discovery.get("jwks_uri").and_then(Value::as_str).unwrap_or("");
        if !issuer_allowed(jwks_uri) {
            return Err(format!("the discovery document of {issuer} has no usable jwks_uri"));
        }
        let set = self.get_json(jwks_uri, "").await?;
        let listed = set.get("keys").and_then(Value::as_array).ok_or_else(|| format!("{jwks_uri}: no keys"))?;
        // Each key on its own: one of a type this does not read (or a symmetric one) is skipped.
        let keys: Vec<Jwk> = listed
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
            .filter(|k| {
                k.common.public_key_use.as_ref().is_none_or(|u| *u == jsonwebtoken::jwk::PublicKeyUse::Signature)
            })
            .take(MAX_KEYS)
            .collect();
        let endpoint =
            |name: &str| discovery.get(name).and_then(Value::as_str).filter(|u| issuer_allowed(u)).map(str::to_owned);
        let endpoints = match (endpoint("authorization_endpoint"), endpoint("token_endpoint")) {
            (Some(authorization), Some(token)) => {
                Some(Endpoints { authorization, token, userinfo: endpoint("userinfo_endpoint") })
            }
            _ => None,
        };
        Ok((keys, endpoints))
    }

    /// The provider's endpoints, fetching its discovery document if they are not known yet (at most every
    /// ten seconds).
    pub(super) async fn endpoints(&self) -> Result<Endpoints, String> {
        let known = |this: &Oidc| this.keys.lock().unwrap_or_else(PoisonError::into_inner).endpoints.clone();
        if let Some(e) = known(self) {
            return Ok(e);
        }
        self.refresh(true).await;
        known(self).ok_or_else(|| {
            let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            keys.error.clone().unwrap_or_else(|| "the provider names no authorization and token endpoints".into())
        })
    }

    /// `POST`s `form` (URL-encoded) to the provider's `url`, with this client's Basic credentials if it
    /// has a secret; the JSON answer (an error answer as its `error` and `error_description`).
    pub(super) async fn post_form(&self, url: &str, form: &str) -> Result<Value, String> {
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded"), ("accept", "application/json")];
        let basic;
        if let (Some(id), Some(secret)) = (&self.config.client_id, &self.config.client_secret) {
            use base64::Engine as _;
            let pair = format!("{}:{}", form_encode(id), form_encode(secret));
            basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
            headers.push(("authorization", basic.as_str()));
        }
        self.fetch_json("POST", url, &headers, bytes::Bytes::from(form.to_owned())).await
    }

    /// `GET`s the provider's `url` with `access_token`; the JSON answer.
    pub(super) async fn get_with_token(&self, url: &str, access_token: &str) -> Result<Value, String> {
        let bearer = format!("Bearer {access_token}");
        let headers = [("accept", "application/json"), ("authorization", bearer.as_str())];
        self.fetch_json("GET", url, &headers, bytes::Bytes::new()).await
    }

    async fn fetch_json(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: bytes::Bytes,
    ) -> Result<Value, String> {
        let ca = self.config.ca_file.as_deref();
        let (status, value) =
            crate::http_client::json(method, url, "", headers, body, ca, MAX_DOCUMENT_BYTES, FETCH_WITHIN).await?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let said = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Err(format!("{url}: {status} {} {}", said("error"), said("error_description")))
    }

    async fn get_json(&self, url: &str, path: &str) -> Result<Value, String> {
        let ca = self.config.ca_file.as_deref();
        let accept = [("accept", "application/json")];
        match crate::http_client::json(
            "GET",
            url,
            path,
            &accept,
            bytes::Bytes::new(),
            ca,
            MAX_DOCUMENT_BYTES,
            FETCH_WITHIN,
        )
        .await?
        {
            (200..=299, value) => Ok(value),
            (status, _) => Err(format!("{url}{path}: {status}")),
        }
    }
}

/// `text` URL-encoded for a form (and for HTTP Basic's client credentials, RFC 6749 §2.3.1).
pub(super) fn form_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `RS256`, `ES256`, `EdDSA`, …: the algorithm's name in a JWS header.
fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn family_fits(key: &Jwk, alg: Algorithm) -> bool {
    let name = alg_name(alg);
    match key.algorithm {
        AlgorithmParameters::RSA(_) => name.starts_with("RS") || name.starts_with("PS"),
        AlgorithmParameters::EllipticCurve(_) => name.starts_with("ES"),
        AlgorithmParameters::OctetKeyPair(_) => name == "EdDSA",
        AlgorithmParameters::OctetKey(_) => false,
    }
}

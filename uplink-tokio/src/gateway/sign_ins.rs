//! People signing in to the console at the OpenID provider (`--oidc-client-id`): the authorization code
//! flow with PKCE, and the roles of the people signed in that way.
//!
//! - [`SignIns::begin`] draws the sign-in's `state`, `nonce`, PKCE verifier and a cookie that binds it to
//!   this browser, keeps them in the core's [`PendingSignIns`] (by hashes where they are secrets), and says
//!   where to send the browser.
//! - [`SignIns::finish`] takes the provider's callback: the pending sign-in once (a replayed `state` finds
//!   nothing), in the browser that began it; the code exchanged with the verifier; the ID token's signature
//!   checked against the issuer's keys ([`Oidc`]), UserInfo's claims added for the same subject, and the
//!   whole judged by the core's [`SignInCheck`] (issuer, this client, lifetime, the sign-in's nonce, a role).
//! - The person's role and email go with the console session the sign-in opens (the core's `Vouched`,
//!   kept in the store with the session, so that every node and a restarted one act with them), for an hour
//!   at most: then the person signs in again, which reads their groups anew (a person removed from a group
//!   loses its role within that bound).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use uplink_proto::gateway::Role;
use uplink_proto::gateway::identity::{
    Claims, LEEWAY_SECS, PendingSignIns, People, SignInCheck, SignInRefusal, Subject, TokenRefusal,
};

use super::config::generate_token;
use super::credentials::TokenHash;
use super::oidc::{BadSignature, Oidc, OidcConfig, form_encode};
use crate::socket_loop::Clock;

/// Why a callback signed nobody in.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotSignedIn {
    /// The sign-in itself: unknown, replayed, expired, another browser's.
    #[error("{0}")]
    SignIn(#[from] SignInRefusal),
    /// The provider could not be asked, or refused the code.
    #[error("the identity provider: {0}")]
    Provider(String),
    /// The ID token's signature.
    #[error("{0}")]
    Signature(#[from] BadSignature),
    /// The ID token's claims (or no role for them).
    #[error("{0}")]
    Claims(#[from] TokenRefusal),
}

/// The console's sign-in at the provider.
pub(super) struct SignIns {
    oidc: Arc<Oidc>,
    client_id: String,
    redirect_uri: String,
    scope: String,
    people: People,
    pending: Mutex<PendingSignIns>,
    clock: Clock,
}

impl SignIns {
    /// With a client id; `None` without.
    pub(super) fn new(config: &OidcConfig, oidc: Arc<Oidc>, public: &str, clock: Clock) -> Option<Arc<SignIns>> {
        let client_id = config.client_id.clone()?;
        let mut scope = vec!["openid".to_owned(), "email".to_owned()];
        scope.extend(config.scopes.iter().filter(|s| !matches!(s.as_str(), "openid" | "email")).cloned());
        Some(Arc::new(SignIns {
            oidc,
            client_id,
            redirect_uri: format!("{public}/console/oidc/callback"),
            scope: scope.join(" "),
            people: People::new(config.people.clone()),
            pending: Mutex::new(PendingSignIns::default()),
            clock,
        }))
    }

    /// Begins a sign-in: where to send the browser, and the value of the cookie that binds the sign-in to
    /// it.
    pub(super) async fn begin(&self, from: Option<std::net::IpAddr>) -> Result<(String, String), String> {
        let endpoints = self.oidc.endpoints().await?;
        let draw = || generate_token().map_err(|e| e.to_string());
        let (state, nonce, verifier, binding) = (draw()?, draw()?, draw()?, draw()?);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
        let now = self.clock.now();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).begin(
            now,
            from.map(uplink_proto::gateway::AuthSource::of),
            TokenHash::of(&state).0,
            nonce.clone(),
            verifier,
            TokenHash::of(&binding).0,
        );
        let join = if endpoints.authorization.contains('?') { '&' } else { '?' };
        let location = format!(
            "{}{join}response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
            endpoints.authorization,
            form_encode(&self.client_id),
            form_encode(&self.redirect_uri),
            form_encode(&self.scope),
        );
        Ok((location, binding))
    }

    /// Finishes the sign-in the callback's `state` names, with its `code`, in the browser whose binding
    /// cookie is `binding`: who signed in, with what role.
    pub(super) async fn finish(
        &self,
        state: &str,
        code: &str,
        binding: Option<&str>,
    ) -> Result<(Subject, Role), NotSignedIn> {
        let now = self.clock.now();
        let browser = binding.map(|b| TokenHash::of(b).0);
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner).finish(
            now,
            &TokenHash::of(state).0,
            browser.as_ref(),
        )?;
        let endpoints = self.oidc.endpoints().await.map_err(NotSignedIn::Provider)?;
        let form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}&client_id={}",
            form_encode(code),
            form_encode(&self.redirect_uri),
            form_encode(&pending.verifier),
            form_encode(&self.client_id),
        );
        let answer = self.oidc.post_form(&endpoints.token, &form).await.map_err(NotSignedIn::Provider)?;
        let id_token = answer
            .get("id_token")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| NotSignedIn::Provider("the token answer has no id_token".into()))?;
        let mut claims = self.oidc.verify(id_token).await?;
        if let (Some(userinfo), Some(access)) =
            (&endpoints.userinfo, answer.get("access_token").and_then(serde_json::Value::as_str))
        {
            match self.oidc.get_with_token(userinfo, access).await {
                Ok(info) => {
                    let info = Claims::from_json(&info, &self.oidc.config.groups_claim)?;
                    claims = claims.with_userinfo(info)?;
                }
                Err(e) => {
                    tracing::warn!(error = %e.escape_debug(), "the provider's UserInfo could not be read: the ID token's claims alone decide")
                }
            }
        }
        let check = SignInCheck {
            issuer: &self.oidc.config.issuer,
            client_id: &self.client_id,
            nonce: &pending.nonce,
            people: &self.people,
            leeway: LEEWAY_SECS,
        };
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        Ok(check.check(&claims, unix)?)
    }
}

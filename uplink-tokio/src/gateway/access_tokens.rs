//! The MCP endpoint as an OAuth 2.1 resource server (`--oidc-issuer`): its settings, its issuer's keys, and
//! the check of an access token for one project's endpoint (the signature by [`Oidc`], the claims by the
//! core's [`AccessCheck`]). The routes that use it are in `mcp_auth`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::HeaderValue;
use uplink_proto::gateway::Role;
use uplink_proto::gateway::identity::{
    AccessCheck, MCP_SCOPE, People, Subject, TokenRefusal, api_resource, identity_of, issuer_allowed, mcp_resource,
    resource_metadata, resource_metadata_url,
};

use super::config::GatewayStartError;
use super::oidc::{BadSignature, Oidc, OidcConfig};
use super::sign_ins::SignIns;
use crate::socket_loop::Clock;

/// The MCP endpoint's access tokens and the console's sign-in at the provider, each when configured.
pub(super) type Identity = (Option<Arc<AccessTokens>>, Option<Arc<SignIns>>);

/// The resource server's settings and its issuer.
pub(super) struct AccessTokens {
    oidc: Arc<Oidc>,
    /// The gateway's public URL (scheme, host, port), the base of every resource URL.
    public: String,
    issuers: Vec<String>,
    people: People,
    cli_client_id: Option<String>,
}

impl AccessTokens {
    /// From the gateway's settings, with the console's sign-in at the provider beside (with a client id):
    /// neither without an issuer. The issuer must be `https://` (or loopback `http://`), and the public URL
    /// (which every resource URL and the sign-in's callback are built on) must be set, without a path.
    pub(super) fn new(
        oidc: Option<OidcConfig>,
        public_url: Option<&str>,
        clock: Clock,
    ) -> Result<Identity, GatewayStartError> {
        let Some(config) = oidc else { return Ok((None, None)) };
        if !issuer_allowed(&config.issuer) {
            return Err(GatewayStartError::Oidc("the issuer must be an https:// URL (http:// only on loopback)"));
        }
        let public = public_url.ok_or(GatewayStartError::Oidc(
            "needs --public-url: access tokens are bound to the URL MCP clients reach the gateway at",
        ))?;
        let uri: hyper::Uri = public.parse().map_err(|_| GatewayStartError::Oidc("--public-url is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.host().is_none()
            || uri.path_and_query().is_some_and(|p| p.as_str() != "/")
        {
            return Err(GatewayStartError::Oidc("--public-url must be http(s)://HOST[:PORT], without a path"));
        }
        let public = public.trim_end_matches('/').to_owned();
        let issuers = vec![config.issuer.clone()];
        let people = People::new(config.people.clone());
        let oidc = Arc::new(Oidc::new(config.clone(), clock));
        let sign_ins = SignIns::new(&config, oidc.clone(), &public, clock);
        let cli_client_id = config.cli_client_id.clone();
        Ok((Some(Arc::new(AccessTokens { oidc, public, issuers, people, cli_client_id })), sign_ins))
    }

    /// Fetches the issuer's keys now (at start), so that the first token need not wait.
    pub(super) async fn warm(&self) {
        self.oidc.refresh(false).await;
    }

    /// The challenge of a `401` or `403` for `project`'s endpoint: `error` and its description, if any.
    pub(super) fn challenge(&self, project: &str, refusal: Option<(&str, &str)>) -> HeaderValue {
        let metadata = resource_metadata_url(&self.public, project);
        let text = match refusal {
            None => format!("Bearer resource_metadata=\"{metadata}\", scope=\"{MCP_SCOPE}\""),
            Some((code, description)) => {
                // A quoted-string: no quote or backslash inside.
                let description = description.replace(['"', '\\'], "'");
                format!(
                    "Bearer error=\"{code}\", error_description=\"{description}\", scope=\"{MCP_SCOPE}\", resource_metadata=\"{metadata}\""
                )
            }
        };
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// The identity and role `token` proves for `project`'s endpoint, or why it does not.
    pub(super) async fn check(&self, token: &str, project: &str) -> Result<(Subject, Role), Refused> {
        let claims = self.oidc.verify(token).await.map_err(Refused::Signature)?;
        let resource = mcp_resource(&self.public, project);
        let check = AccessCheck::mcp(&self.issuers, &resource, &self.people);
        check.check(&claims, unix_now()).map_err(Refused::Claims)
    }

    /// The endpoint's Protected Resource Metadata.
    pub(super) fn metadata(&self, project: &str) -> serde_json::Value {
        resource_metadata(&self.public, project, &self.issuers)
    }

    /// The identity and role `token` proves for the admin API, or why it does not.
    pub(super) async fn check_api(&self, token: &str) -> Result<(Subject, Role), Refused> {
        let claims = self.oidc.verify(token).await.map_err(Refused::Signature)?;
        let resource = api_resource(&self.public);
        AccessCheck::api(&self.issuers, &resource, &self.people).check(&claims, unix_now()).map_err(Refused::Claims)
    }

    /// Whether `principal` names an identity of a provider this gateway trusts (`ISSUER#SUBJECT`).
    pub(super) fn vouches_for(&self, principal: &str) -> bool {
        identity_of(&self.issuers, principal)
    }

    /// The admin API's Protected Resource Metadata, with the client id `uplink login` signs people in with.
    pub(super) fn api_metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "resource": api_resource(&self.public),
            "authorization_servers": self.issuers,
            "bearer_methods_supported": ["header"],
            "resource_name": "uplink: the gateway's admin API",
            "uplink_cli_client_id": self.cli_client_id,
        })
    }
}

/// Why an access token was refused.
pub(super) enum Refused {
    /// Its signature (or the issuer's keys).
    Signature(BadSignature),
    /// Its claims.
    Claims(TokenRefusal),
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

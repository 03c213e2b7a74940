//! The MCP endpoint as an OAuth 2.1 resource server (`--oidc-issuer`): its settings, its issuer's keys, and
//! the check of an access token for one project's endpoint (the signature by [`Oidc`], the claims by the
//! core's [`AccessCheck`]). The routes that use it are in `mcp_auth`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::HeaderValue;
use uplink_proto::gateway::Role;
use uplink_proto::gateway::identity::{
    AccessCheck, LEEWAY_SECS, MCP_SCOPE, People, Subject, TokenRefusal, issuer_allowed, mcp_resource,
    resource_metadata, resource_metadata_url,
};

use super::config::GatewayStartError;
use super::oidc::{BadSignature, Oidc, OidcConfig};
use crate::socket_loop::Clock;

/// The resource server's settings and its issuer.
pub(super) struct AccessTokens {
    oidc: Oidc,
    /// The gateway's public URL (scheme, host, port), the base of every resource URL.
    public: String,
    issuers: Vec<String>,
    people: People,
}

impl AccessTokens {
    /// From the gateway's settings: `None` without an issuer. The issuer must be `https://` (or loopback
    /// `http://`), and the public URL (which every resource URL is built on) must be set, without a path.
    pub(super) fn new(
        oidc: Option<OidcConfig>,
        public_url: Option<&str>,
        clock: Clock,
    ) -> Result<Option<Arc<AccessTokens>>, GatewayStartError> {
        let Some(config) = oidc else { return Ok(None) };
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
        Ok(Some(Arc::new(AccessTokens { oidc: Oidc::new(config, clock), public, issuers, people })))
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
        let check =
            AccessCheck { issuers: &self.issuers, resource: &resource, people: &self.people, leeway: LEEWAY_SECS };
        check.check(&claims, unix_now()).map_err(Refused::Claims)
    }

    /// The endpoint's Protected Resource Metadata.
    pub(super) fn metadata(&self, project: &str) -> serde_json::Value {
        resource_metadata(&self.public, project, &self.issuers)
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

//! Standard identity: what a token signed by an OpenID provider (or another OAuth 2.1 authorization server)
//! is worth at this gateway.
//!
//! The adapter fetches the issuer's keys and checks a token's signature with a well-kept JOSE crate; it
//! hands the payload here as [`Claims`]. Everything after the signature is decided here:
//!
//! - [`AccessCheck::check`]: an access token for a project's MCP endpoint (the MCP authorization spec,
//!   2025-11-25): from a trusted issuer, for this very resource (RFC 8707: its `aud` names the endpoint's
//!   canonical URL, so a token minted for another resource, or for another project's endpoint, is refused),
//!   within its lifetime give or take a bounded clock skew, holding the scope that grants relaying MCP, and
//!   for an identity that [`People`] gives a role allowing it. Which status and `WWW-Authenticate` error
//!   each refusal gets is [`TokenRefusal`]'s.
//! - [`People::role_of`]: the role an identity's claims map to, by subject, by verified email or by group;
//!   no rule, no role (never a default one).
//! - [`Subject::principal`]: the stable name an identity is known by here (issuer and subject, never the
//!   email, which can change hands), to which the MCP endpoint binds its sessions.
//! - [`signing_alg_allowed`], [`KeyRefresh`]: which signatures are accepted (asymmetric only: a key the
//!   issuer publishes must not be usable as a shared secret) and how often a token naming an unknown key may
//!   make the adapter fetch the keys again.
//! - [`SignInCheck::check`], [`PendingSignIns`]: a person's sign-in at the provider (the authorization code
//!   flow with PKCE): the sign-ins begun and not yet back (each finished once, in time, in the browser that
//!   began it), and what the ID token must be (issuer, this client, current, the sign-in's nonce, a role).
//! - [`DeviceGrant`]: a person's sign-in at the terminal (the device authorization grant, RFC 8628): how
//!   long to wait between polls, when to give up.
//! - [`mcp_resource`], [`api_resource`], [`resource_metadata_url`]: a project's endpoint URL as a resource, and where its
//!   Protected Resource Metadata (RFC 9728) is served.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use serde_json::Value;

use super::principal::{Action, Role};
use crate::time::Instant;

/// The scope an access token must hold to relay MCP to the project it was minted for.
pub const MCP_SCOPE: &str = "mcp";

/// Most groups one token may claim; a token with more is refused.
pub const MAX_GROUPS: usize = 1024;

/// Most scopes one token may hold; a token with more is refused.
pub const MAX_SCOPES: usize = 256;

/// Clock skew allowed between an issuer and this gateway, either way, when judging `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 60;

/// What a token's payload claims, as far as this gateway reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// `iss`: who issued it.
    pub iss: String,
    /// `sub`: whom it is about, unique within its issuer.
    pub sub: String,
    /// `aud`: for whom it is (a string or a list, read as a list).
    pub aud: Vec<String>,
    /// `exp`, in seconds since the Unix epoch.
    pub exp: Option<i64>,
    /// `nbf`, in seconds since the Unix epoch.
    pub nbf: Option<i64>,
    /// `iat`, in seconds since the Unix epoch.
    pub iat: Option<i64>,
    /// `email`, if any.
    pub email: Option<String>,
    /// `email_verified` is `true` (or the string `"true"`, as some providers write it).
    pub email_verified: bool,
    /// The groups claim (its name is configured: `groups` by default).
    pub groups: Vec<String>,
    /// The scopes: `scope` (space-separated, RFC 9068) or `scp` (a list or a string).
    pub scopes: Vec<String>,
    /// `nonce`, in an ID token.
    pub nonce: Option<String>,
    /// `azp`, in an ID token: the client it was issued to, when `aud` names several.
    pub azp: Option<String>,
}

impl Claims {
    /// Reads a token's payload, taking the groups from the claim named `groups_claim`. A claim of the wrong
    /// shape, or more groups or scopes than the budgets allow, refuses the token.
    pub fn from_json(payload: &Value, groups_claim: &str) -> Result<Claims, TokenRefusal> {
        let object = payload.as_object().ok_or(TokenRefusal::Malformed("the payload is not an object"))?;
        let text = |name: &'static str| -> Result<Option<String>, TokenRefusal> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(TokenRefusal::Malformed(name)),
            }
        };
        let time = |name: &'static str| -> Result<Option<i64>, TokenRefusal> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => {
                    // A fractional time is allowed (RFC 7519's NumericDate); whole seconds are judged.
                    let secs = n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64));
                    secs.map(Some).ok_or(TokenRefusal::Malformed(name))
                }
                Some(_) => Err(TokenRefusal::Malformed(name)),
            }
        };
        let list = |value: Option<&Value>, name: &'static str, most: usize| -> Result<Vec<String>, TokenRefusal> {
            let items: Vec<String> = match value {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) if name == "aud" => alloc::vec![s.clone()],
                Some(Value::String(s)) => s.split(' ').filter(|w| !w.is_empty()).map(ToString::to_string).collect(),
                Some(Value::Array(items)) => {
                    if items.len() > most {
                        return Err(TokenRefusal::TooLarge(name));
                    }
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        out.push(item.as_str().ok_or(TokenRefusal::Malformed(name))?.to_string());
                    }
                    out
                }
                Some(_) => return Err(TokenRefusal::Malformed(name)),
            };
            if items.len() > most { Err(TokenRefusal::TooLarge(name)) } else { Ok(items) }
        };
        let scopes = match object.get("scope") {
            Some(s @ Value::String(_)) => list(Some(s), "scope", MAX_SCOPES)?,
            Some(Value::Null) | None => list(object.get("scp"), "scp", MAX_SCOPES)?,
            Some(_) => return Err(TokenRefusal::Malformed("scope")),
        };
        let email_verified = match object.get("email_verified") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        Ok(Claims {
            iss: text("iss")?.unwrap_or_default(),
            sub: text("sub")?.unwrap_or_default(),
            aud: list(object.get("aud"), "aud", MAX_SCOPES)?,
            exp: time("exp")?,
            nbf: time("nbf")?,
            iat: time("iat")?,
            email: text("email")?,
            email_verified,
            groups: list(object.get(groups_claim), "groups", MAX_GROUPS)?,
            scopes,
            nonce: text("nonce")?,
            azp: text("azp")?,
        })
    }

    /// These claims of an ID token with what the provider's UserInfo endpoint said of the same person
    /// (OpenID Connect Core §5.3): its email, whether verified, and groups where the ID token has none (many
    /// providers put them only there). UserInfo about another subject is refused.
    pub fn with_userinfo(mut self, info: Claims) -> Result<Claims, TokenRefusal> {
        if info.sub != self.sub {
            return Err(TokenRefusal::Malformed("sub of the UserInfo answer"));
        }
        if self.email.is_none() {
            self.email = info.email;
            self.email_verified = info.email_verified;
        }
        if self.groups.is_empty() {
            self.groups = info.groups;
        }
        Ok(self)
    }

    /// Whether the token is current at `now` (seconds since the Unix epoch), give or take `leeway` seconds:
    /// it must have an `exp` (a token that never expires is refused), not be before its `nbf`, and not be
    /// issued in the future.
    pub fn current(&self, now: i64, leeway: i64) -> Result<(), TokenRefusal> {
        let exp = self.exp.ok_or(TokenRefusal::Malformed("exp"))?;
        if now.saturating_sub(leeway) >= exp {
            return Err(TokenRefusal::Expired);
        }
        if self.nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(TokenRefusal::NotYetValid);
        }
        if self.iat.is_some_and(|iat| now.saturating_add(leeway) < iat) {
            return Err(TokenRefusal::NotYetValid);
        }
        Ok(())
    }
}

/// Why a token is refused. [`TokenRefusal::status`] and [`TokenRefusal::error_code`] give what the HTTP
/// answer says (RFC 6750 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRefusal {
    /// A claim of the wrong shape, or a required one missing (its name).
    Malformed(&'static str),
    /// More entries in a list claim than its budget (its name).
    TooLarge(&'static str),
    /// Not from a trusted issuer.
    Issuer,
    /// Not for this resource.
    Audience,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf`, or issued in the future.
    NotYetValid,
    /// Without a subject.
    NoSubject,
    /// Without the scope this needs.
    Scope,
    /// For an identity no rule gives a role.
    Unmapped,
    /// For an identity whose role may not do this.
    Role(Role),
    /// An ID token whose `nonce` is not the one its sign-in sent.
    Nonce,
}

impl TokenRefusal {
    /// `401` for a token that is not good here (the client should get another), `403` for a good token that
    /// does not allow this.
    pub const fn status(&self) -> u16 {
        match self {
            TokenRefusal::Scope | TokenRefusal::Unmapped | TokenRefusal::Role(_) => 403,
            _ => 401,
        }
    }

    /// The `error` of the `WWW-Authenticate: Bearer` challenge: `invalid_token` or `insufficient_scope`.
    pub const fn error_code(&self) -> &'static str {
        match self.status() {
            403 => "insufficient_scope",
            _ => "invalid_token",
        }
    }
}

impl fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRefusal::Malformed(claim) => write!(f, "the token's {claim} claim is missing or malformed"),
            TokenRefusal::TooLarge(claim) => write!(f, "the token's {claim} claim has too many entries"),
            TokenRefusal::Issuer => f.write_str("the token is not from a trusted issuer"),
            TokenRefusal::Audience => f.write_str("the token was not issued for this resource"),
            TokenRefusal::Expired => f.write_str("the token has expired"),
            TokenRefusal::NotYetValid => f.write_str("the token is not valid yet"),
            TokenRefusal::NoSubject => f.write_str("the token names no subject"),
            TokenRefusal::Scope => write!(f, "the token lacks the {MCP_SCOPE} scope"),
            TokenRefusal::Unmapped => f.write_str("no rule gives this identity a role here"),
            TokenRefusal::Role(role) => write!(f, "the {role} role may not do this"),
            TokenRefusal::Nonce => f.write_str("the ID token's nonce is not the sign-in's"),
        }
    }
}

impl core::error::Error for TokenRefusal {}

/// An identity a token proved: its issuer and subject, and its email for reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The issuer.
    pub issuer: String,
    /// The subject, unique within its issuer.
    pub subject: String,
    /// A verified email, for people to read; never part of the identity.
    pub email: Option<String>,
}

impl Subject {
    /// The principal name this identity acts as: `ISSUER#SUBJECT`. Stable for as long as the issuer keeps
    /// the subject, and distinct across issuers; an MCP session opened with it is reached only with it.
    pub fn principal(&self) -> String {
        format!("{}#{}", self.issuer, self.subject)
    }
}

/// Whether `principal` is the principal name ([`Subject::principal`]) of an identity of one of `issuers`:
/// `ISSUER#SUBJECT` with a subject. (An issuer never holds `#`: [`issuer_allowed`].)
pub fn identity_of(issuers: &[String], principal: &str) -> bool {
    principal
        .split_once('#')
        .is_some_and(|(issuer, subject)| !subject.is_empty() && issuers.iter().any(|i| i == issuer))
}

/// Who a [`PersonRule`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// The subject (`sub`).
    Subject(String),
    /// A verified email (`email`, with `email_verified` true), compared without regard to ASCII case.
    Email(String),
    /// A member of the group (the groups claim).
    Group(String),
}

/// One rule of [`People`]: an identity, or every member of a group, has a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonRule {
    /// Only tokens of this issuer match; `None`: any trusted issuer's.
    pub issuer: Option<String>,
    /// Whom it is about.
    pub who: Who,
    /// The role it gives.
    pub role: Role,
}

impl PersonRule {
    fn matches(&self, claims: &Claims) -> bool {
        if self.issuer.as_ref().is_some_and(|i| *i != claims.iss) {
            return false;
        }
        match &self.who {
            Who::Subject(s) => !claims.sub.is_empty() && *s == claims.sub,
            Who::Email(e) => claims.email_verified && claims.email.as_ref().is_some_and(|m| m.eq_ignore_ascii_case(e)),
            Who::Group(g) => claims.groups.iter().any(|m| m == g),
        }
    }
}

/// A `WHO=ROLE` text that is not one: `WHO` is `sub:SUBJECT`, `email:ADDRESS` or `group:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}: write sub:SUBJECT=ROLE, email:ADDRESS=ROLE or group:NAME=ROLE (ROLE is viewer, approver or admin)")]
pub struct BadPersonRule(pub String);

impl core::str::FromStr for PersonRule {
    type Err = BadPersonRule;

    /// `group:platform-oncall=approver`, `email:ana@example.com=admin`, `sub:00u1ab=viewer`: the last `=`
    /// splits the role off.
    fn from_str(text: &str) -> Result<PersonRule, BadPersonRule> {
        let bad = || BadPersonRule(text.into());
        let (who, role) = text.rsplit_once('=').ok_or_else(bad)?;
        let role: Role = role.parse().map_err(|_| bad())?;
        let (kind, value) = who.split_once(':').ok_or_else(bad)?;
        if value.is_empty() {
            return Err(bad());
        }
        let who = match kind {
            "sub" => Who::Subject(value.into()),
            "email" => Who::Email(value.into()),
            "group" => Who::Group(value.into()),
            _ => return Err(bad()),
        };
        Ok(PersonRule { issuer: None, who, role })
    }
}

/// The roles people have here by what their tokens say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct People {
    rules: Vec<PersonRule>,
}

impl People {
    /// These rules.
    pub fn new(rules: Vec<PersonRule>) -> People {
        People { rules }
    }

    /// The rules.
    pub fn rules(&self) -> &[PersonRule] {
        &self.rules
    }

    /// The highest role a rule gives these claims; `None` when no rule matches (no access).
    pub fn role_of(&self, claims: &Claims) -> Option<Role> {
        self.rules.iter().filter(|r| r.matches(claims)).map(|r| r.role).max()
    }
}

/// What an access token for one of the gateway's resources must be: a project's MCP endpoint
/// ([`AccessCheck::mcp`]) or the admin API ([`AccessCheck::api`]).
#[derive(Clone, Copy, Debug)]
pub struct AccessCheck<'a> {
    /// The issuers whose tokens are trusted (the adapter checked the signature with the issuer's keys).
    pub issuers: &'a [String],
    /// The resource's canonical URL ([`mcp_resource`], [`api_resource`]): the token's `aud` must name it.
    pub resource: &'a str,
    /// The scope the token must hold, if any ([`MCP_SCOPE`] for an MCP endpoint).
    pub scope: Option<&'a str>,
    /// The least the identity's role must allow to be let in at all (the routes then ask for their own).
    pub action: Action,
    /// The roles people have.
    pub people: &'a People,
    /// Allowed clock skew, in seconds ([`LEEWAY_SECS`]).
    pub leeway: i64,
}

impl<'a> AccessCheck<'a> {
    /// For `project`'s MCP endpoint at the gateway whose public URL is `public` (`resource` is
    /// [`mcp_resource`]'s): the scope [`MCP_SCOPE`] and a role that may decide.
    pub fn mcp(issuers: &'a [String], resource: &'a str, people: &'a People) -> AccessCheck<'a> {
        AccessCheck { issuers, resource, scope: Some(MCP_SCOPE), action: Action::Decide, people, leeway: LEEWAY_SECS }
    }

    /// For the admin API (`resource` is [`api_resource`]'s): no scope, any role (each route asks for the
    /// right it needs).
    pub fn api(issuers: &'a [String], resource: &'a str, people: &'a People) -> AccessCheck<'a> {
        AccessCheck { issuers, resource, scope: None, action: Action::Read, people, leeway: LEEWAY_SECS }
    }

    /// Whether `claims` may use the resource at `now` (seconds since the Unix epoch): the identity it
    /// proved, and its role.
    pub fn check(&self, claims: &Claims, now: i64) -> Result<(Subject, Role), TokenRefusal> {
        if !self.issuers.contains(&claims.iss) {
            return Err(TokenRefusal::Issuer);
        }
        if !claims.aud.iter().any(|a| a == self.resource) {
            return Err(TokenRefusal::Audience);
        }
        claims.current(now, self.leeway)?;
        if claims.sub.is_empty() {
            return Err(TokenRefusal::NoSubject);
        }
        if self.scope.is_some_and(|needed| !claims.scopes.iter().any(|s| s == needed)) {
            return Err(TokenRefusal::Scope);
        }
        let role = self.people.role_of(claims).ok_or(TokenRefusal::Unmapped)?;
        if !role.allows(self.action) {
            return Err(TokenRefusal::Role(role));
        }
        let email = claims.email.clone().filter(|_| claims.email_verified);
        Ok((Subject { issuer: claims.iss.clone(), subject: claims.sub.clone(), email }, role))
    }
}

/// What an ID token must be for a person's sign-in (OpenID Connect Core §3.1.3.7): from the issuer, for
/// this client, current, with the sign-in's own nonce, about a subject that [`People`] gives a role.
#[derive(Clone, Copy, Debug)]
pub struct SignInCheck<'a> {
    /// The issuer.
    pub issuer: &'a str,
    /// This gateway's client id at the issuer: the token's `aud` must name it (and its `azp`, when it names
    /// others too).
    pub client_id: &'a str,
    /// The nonce the sign-in sent.
    pub nonce: &'a str,
    /// The roles people have.
    pub people: &'a People,
    /// Allowed clock skew, in seconds ([`LEEWAY_SECS`]).
    pub leeway: i64,
}

impl SignInCheck<'_> {
    /// The person `claims` (an ID token's, with UserInfo's) prove at `now`, and their role.
    pub fn check(&self, claims: &Claims, now: i64) -> Result<(Subject, Role), TokenRefusal> {
        if claims.iss != self.issuer {
            return Err(TokenRefusal::Issuer);
        }
        if !claims.aud.iter().any(|a| a == self.client_id) {
            return Err(TokenRefusal::Audience);
        }
        if claims.aud.len() > 1 && claims.azp.as_deref() != Some(self.client_id) {
            return Err(TokenRefusal::Audience);
        }
        claims.current(now, self.leeway)?;
        if claims.nonce.as_deref() != Some(self.nonce) || self.nonce.is_empty() {
            return Err(TokenRefusal::Nonce);
        }
        if claims.sub.is_empty() {
            return Err(TokenRefusal::NoSubject);
        }
        let role = self.people.role_of(claims).ok_or(TokenRefusal::Unmapped)?;
        let email = claims.email.clone().filter(|_| claims.email_verified);
        Ok((Subject { issuer: claims.iss.clone(), subject: claims.sub.clone(), email }, role))
    }
}

/// A sign-in begun at the provider and not yet come back: what the callback needs to finish it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSignIn {
    /// The nonce sent, which the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier, for the code's exchange.
    pub verifier: String,
    /// The hash of the browser's binding cookie, which the callback must bring.
    pub browser: [u8; 32],
    at: Instant,
    /// Where it was begun from, when known.
    from: Option<super::auth_limit::AuthSource>,
}

/// Why a callback finishes no sign-in.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignInRefusal {
    /// No sign-in has this state: unknown, already finished (a replay) or let go for newer ones.
    #[error("this sign-in is unknown or already used: start again")]
    Unknown,
    /// Its time ran out.
    #[error("this sign-in took too long: start again")]
    Expired,
    /// The callback came in another browser than the one that began it.
    #[error("this sign-in was begun in another browser: start again")]
    OtherBrowser,
}

/// The sign-ins begun at the provider, keyed by the hash of their `state`: each finished at most once
/// (a replayed callback finds nothing), within [`PendingSignIns::TTL`], only in the browser that began it
/// (its binding cookie's hash), at most [`PendingSignIns::MAX`] at once and
/// [`PendingSignIns::PER_SOURCE`] from one source (an IPv4 address, an IPv6 `/64`). What makes room is let go
/// from whoever holds the most: its oldest, so that one source beginning sign-ins over and over pushes out
/// only its own, never a person's sign-in under way from elsewhere.
#[derive(Clone, Debug, Default)]
pub struct PendingSignIns {
    pending: alloc::collections::BTreeMap<[u8; 32], PendingSignIn>,
}

impl PendingSignIns {
    /// Most sign-ins pending at once.
    pub const MAX: usize = 1024;
    /// Most sign-ins pending at once from one source.
    pub const PER_SOURCE: usize = 16;
    /// How long a sign-in may take at the provider.
    pub const TTL: Duration = Duration::from_secs(600);

    /// Begins a sign-in whose state hashes to `state`, from `from` (the peer's source, when known).
    pub fn begin(
        &mut self,
        now: Instant,
        from: Option<super::auth_limit::AuthSource>,
        state: [u8; 32],
        nonce: String,
        verifier: String,
        browser: [u8; 32],
    ) {
        self.pending.retain(|_, p| now.saturating_duration_since(p.at) < Self::TTL);
        let of = |pending: &alloc::collections::BTreeMap<[u8; 32], PendingSignIn>, who| {
            pending.values().filter(|p| p.from == who).count()
        };
        while of(&self.pending, from) >= Self::PER_SOURCE || self.pending.len() >= Self::MAX {
            let victim = if of(&self.pending, from) >= Self::PER_SOURCE {
                from
            } else {
                // The source holding the most (the unknown ones counting as one).
                let mut counts: alloc::collections::BTreeMap<_, usize> = alloc::collections::BTreeMap::new();
                for p in self.pending.values() {
                    *counts.entry(p.from).or_default() += 1;
                }
                counts.into_iter().max_by_key(|(_, n)| *n).map(|(who, _)| who).unwrap_or(from)
            };
            let oldest =
                self.pending.iter().filter(|(_, p)| p.from == victim).min_by_key(|(_, p)| p.at).map(|(k, _)| *k);
            match oldest {
                Some(k) => self.pending.remove(&k),
                None => break,
            };
        }
        self.pending.insert(state, PendingSignIn { nonce, verifier, browser, at: now, from });
    }

    /// Finishes the sign-in whose state hashes to `state`, for the browser whose cookie hashes to `browser`:
    /// it is gone from the table whatever the answer (one try per sign-in).
    pub fn finish(
        &mut self,
        now: Instant,
        state: &[u8; 32],
        browser: Option<&[u8; 32]>,
    ) -> Result<PendingSignIn, SignInRefusal> {
        let pending = self.pending.remove(state).ok_or(SignInRefusal::Unknown)?;
        if now.saturating_duration_since(pending.at) >= Self::TTL {
            return Err(SignInRefusal::Expired);
        }
        if browser != Some(&pending.browser) {
            return Err(SignInRefusal::OtherBrowser);
        }
        Ok(pending)
    }

    /// Sign-ins pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A device authorization grant in progress (RFC 8628 §3.4-3.5), for `uplink login`: when to ask the token
/// endpoint next, and what each of its answers means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceGrant {
    interval: Duration,
    until: Instant,
}

/// What to do after the token endpoint's answer to a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePoll {
    /// Ask again at this time.
    At(Instant),
    /// The person refused at the provider.
    Denied,
    /// The code expired (or would before the next poll) without an answer.
    Expired,
    /// An error that waiting will not cure (its code as the provider said it).
    Failed,
}

impl DeviceGrant {
    /// Least time between polls, whatever the provider says.
    pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
    /// The interval when the provider names none (RFC 8628 §3.2).
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    /// Longest a sign-in is waited for, whatever the provider says.
    pub const MAX_WAIT: Duration = Duration::from_secs(1800);

    /// A grant whose device code the provider issued at `now`, valid `expires_in` seconds, to be polled
    /// every `interval` seconds (if it said).
    pub fn new(now: Instant, expires_in: u64, interval: Option<u64>) -> DeviceGrant {
        let interval = interval.map_or(Self::DEFAULT_INTERVAL, Duration::from_secs).max(Self::MIN_INTERVAL);
        let lasts = Duration::from_secs(expires_in).min(Self::MAX_WAIT);
        DeviceGrant { interval, until: now.saturating_add(lasts) }
    }

    /// When to poll first.
    pub fn first(&self, now: Instant) -> DevicePoll {
        self.next(now)
    }

    /// After the token endpoint answered `error` (`authorization_pending`, `slow_down`, `access_denied`,
    /// `expired_token`, or another) at `now`: what to do. `slow_down` lengthens the interval by 5 s for
    /// good (§3.5).
    pub fn answered(&mut self, now: Instant, error: &str) -> DevicePoll {
        match error {
            "authorization_pending" => self.next(now),
            "slow_down" => {
                self.interval = self.interval.saturating_add(Duration::from_secs(5));
                self.next(now)
            }
            "access_denied" => DevicePoll::Denied,
            "expired_token" => DevicePoll::Expired,
            _ => DevicePoll::Failed,
        }
    }

    fn next(&self, now: Instant) -> DevicePoll {
        let at = now.saturating_add(self.interval);
        if at >= self.until { DevicePoll::Expired } else { DevicePoll::At(at) }
    }
}

/// Whether a token signed with `alg` (its header's) is accepted: RSA (PKCS#1 v1.5 and PSS), ECDSA on P-256
/// and P-384, and Ed25519. Never `none` and never an HMAC: a shared-secret algorithm would let whoever has
/// the issuer's public key sign.
pub fn signing_alg_allowed(alg: &str) -> bool {
    matches!(alg, "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA")
}

/// How often the issuer's keys are fetched again: a token naming a key id the adapter does not have makes
/// it fetch them (the issuer rotated its keys), but at most once per [`KeyRefresh::UNKNOWN_KEY_EVERY`], so
/// that tokens with made-up key ids cannot make the gateway hammer the issuer; and they are refreshed every
/// [`KeyRefresh::EVERY`] regardless.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyRefresh {
    last: Option<Instant>,
}

impl KeyRefresh {
    /// Least time between two fetches for an unknown key id.
    pub const UNKNOWN_KEY_EVERY: Duration = Duration::from_secs(10);
    /// Keys older than this are fetched again before use.
    pub const EVERY: Duration = Duration::from_secs(3600);

    /// Whether to fetch the keys at `now`: never fetched, older than [`KeyRefresh::EVERY`], or
    /// `unknown_key` and the last fetch at least [`KeyRefresh::UNKNOWN_KEY_EVERY`] ago.
    pub fn due(&self, now: Instant, unknown_key: bool) -> bool {
        match self.last {
            None => true,
            Some(last) => {
                let age = now.saturating_duration_since(last);
                age >= Self::EVERY || (unknown_key && age >= Self::UNKNOWN_KEY_EVERY)
            }
        }
    }

    /// A fetch began at `now` (whether or not it succeeds: a failing issuer is not asked again at once).
    pub fn fetched(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

/// Whether `url` may be an issuer: `https://`, or `http://` on a loopback host (a provider on the same
/// machine, as in tests); no query, no fragment. OpenID Connect Discovery requires the discovered `issuer`
/// to equal it exactly.
pub fn issuer_allowed(url: &str) -> bool {
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
        return false;
    }
    let Some((scheme, rest)) = url.split_once("://") else { return false };
    let host_port = rest.split('/').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    if host.is_empty() || host_port.contains('@') {
        return false;
    }
    match scheme {
        "https" => true,
        "http" => host == "localhost" || host.parse::<core::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        _ => false,
    }
}

/// The canonical URL of `project`'s MCP endpoint at the gateway whose public URL is `public` (scheme and
/// host, no path): `PUBLIC/api/sleds/PROJECT/mcp`, the project percent-encoded as one path segment.
pub fn mcp_resource(public: &str, project: &str) -> String {
    format!("{}/api/sleds/{}/mcp", public.trim_end_matches('/'), segment(project))
}

/// The canonical URL of the admin API at the gateway whose public URL is `public`: `PUBLIC/api`. A
/// person's command-line client asks its provider for tokens for it.
pub fn api_resource(public: &str) -> String {
    format!("{}/api", public.trim_end_matches('/'))
}

/// Where the Protected Resource Metadata (RFC 9728 §3.1) of `project`'s MCP endpoint is:
/// `PUBLIC/.well-known/oauth-protected-resource/api/sleds/PROJECT/mcp`.
pub fn resource_metadata_url(public: &str, project: &str) -> String {
    format!("{}/.well-known/oauth-protected-resource/api/sleds/{}/mcp", public.trim_end_matches('/'), segment(project))
}

/// The Protected Resource Metadata document of `project`'s MCP endpoint, trusting `issuers`.
pub fn resource_metadata(public: &str, project: &str, issuers: &[String]) -> Value {
    serde_json::json!({
        "resource": mcp_resource(public, project),
        "authorization_servers": issuers,
        "scopes_supported": [MCP_SCOPE],
        "bearer_methods_supported": ["header"],
        "resource_name": format!("uplink: the MCP server of {project}"),
    })
}

/// `text` as one URL path segment: RFC 3986's unreserved characters as they are, every other byte
/// percent-encoded.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

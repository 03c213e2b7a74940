//! Who may connect and who may decide: sled credentials and admin principals, each known by the SHA-256 of
//! its token only.
//!
//! A presented token is hashed once and looked up by its hash. Tokens are at least 256-bit random values,
//! so the hash cannot be inverted and looking it up in a map leaks nothing an attacker could use; the
//! plain token is never stored or logged. What a credential may do (its projects, its expiry, a role's
//! rights) is decided by the core ([`Credential`], [`Role`]); this module only recognises tokens.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use uplink_proto::Instant;
use uplink_proto::gateway::{Credential, CredentialId, ProjectScope, Role};

/// The SHA-256 of a token: all the gateway keeps of it.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The hash of `token`, as presented (no trimming).
    pub fn of(token: &str) -> TokenHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        TokenHash(bytes)
    }

    /// The credential id a sled credential with this hash has: stable across reloads, so that a reload
    /// keeps its live connections.
    fn credential_id(&self) -> CredentialId {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.0[..8]);
        // The top bit set keeps clear of `LEGACY_ID`.
        CredentialId(u64::from_be_bytes(id) | 1 << 63)
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

/// Text that is not 64 hexadecimal digits.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected a SHA-256 as 64 hexadecimal digits")]
pub struct BadTokenHash;

impl FromStr for TokenHash {
    type Err = BadTokenHash;

    fn from_str(s: &str) -> Result<TokenHash, BadTokenHash> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(BadTokenHash);
        }
        let digit = |c: u8| char::from(c).to_digit(16).ok_or(BadTokenHash);
        let mut bytes = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            bytes[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).map_err(|_| BadTokenHash)?;
        }
        Ok(TokenHash(bytes))
    }
}

/// A credential a sled connects with.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SledCredential {
    /// A name for people (listings, logs); not secret.
    pub label: String,
    /// The token's hash.
    pub token_hash: TokenHash,
    /// The projects it may identify as.
    pub projects: ProjectScope,
    /// When it stops being valid.
    pub expires: Option<SystemTime>,
    /// The core's id for it.
    id: CredentialId,
}

impl SledCredential {
    /// A credential for `projects`, known by `token_hash`.
    pub fn new(label: impl Into<String>, token_hash: TokenHash, projects: ProjectScope) -> SledCredential {
        SledCredential { label: label.into(), token_hash, projects, expires: None, id: token_hash.credential_id() }
    }

    /// The same credential, valid until `at`.
    pub fn expiring(mut self, at: SystemTime) -> SledCredential {
        self.expires = Some(at);
        self
    }

    /// As the core sees it at `now` (`wall` being the same moment on the wall clock): an expiry in the past
    /// is `now`.
    pub(crate) fn for_core(&self, now: Instant, wall: SystemTime) -> Credential {
        let credential = Credential::new(self.id, self.projects.clone());
        match self.expires {
            Some(at) => credential.expiring(now + at.duration_since(wall).unwrap_or_default()),
            None => credential,
        }
    }
}

/// The id of the one credential every `--sled-token` token is: any project, as in the original.
const LEGACY_ID: CredentialId = CredentialId(0);

/// Someone (or some bot) who uses the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminPrincipal {
    /// Recorded with every decision they make.
    pub name: Arc<str>,
    /// What they may do.
    pub role: Role,
    /// Their token's hash.
    pub token_hash: TokenHash,
}

impl AdminPrincipal {
    /// `name` with `role`, known by `token_hash`.
    pub fn new(name: impl Into<Arc<str>>, role: Role, token_hash: TokenHash) -> AdminPrincipal {
        AdminPrincipal { name: name.into(), role, token_hash }
    }
}

/// Every credential and principal a gateway knows. Built once per (re)load; lookups are by hash.
#[derive(Clone, Default)]
pub struct Credentials {
    sleds: Vec<SledCredential>,
    admins: Vec<AdminPrincipal>,
    sled_index: HashMap<TokenHash, usize>,
    admin_index: HashMap<TokenHash, usize>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("sleds", &self.sleds).field("admins", &self.admins).finish()
    }
}

/// Credentials that cannot be used together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// Two entries share a token.
    #[error("two credentials share a token ({0})")]
    SharedToken(String),
    /// Two admin principals share a name.
    #[error("two admin principals are named {0:?}")]
    SharedName(String),
}

impl Credentials {
    /// The set of `sleds` and `admins`. Every token must be distinct, sled or admin, and every admin name.
    ///
    /// Either list may be empty, and both may: a revocation always takes effect, the last credential's too.
    /// Without a sled credential no sled may connect; without an admin principal nobody may read or decide
    /// until one is added.
    pub fn new(sleds: Vec<SledCredential>, admins: Vec<AdminPrincipal>) -> Result<Credentials, CredentialsError> {
        let mut c = Credentials { sleds, admins, ..Credentials::default() };
        for (i, s) in c.sleds.iter().enumerate() {
            if c.sled_index.insert(s.token_hash, i).is_some() {
                return Err(CredentialsError::SharedToken(s.label.clone()));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, a) in c.admins.iter().enumerate() {
            if c.sled_index.contains_key(&a.token_hash) || c.admin_index.insert(a.token_hash, i).is_some() {
                return Err(CredentialsError::SharedToken(a.name.to_string()));
            }
            if !names.insert(a.name.clone()) {
                return Err(CredentialsError::SharedName(a.name.to_string()));
            }
        }
        Ok(c)
    }

    /// The original's configuration: every one of `sled_tokens` is one credential for any project, and
    /// `admin_token` is the principal `admin` with the `admin` role.
    pub fn from_tokens(sled_tokens: &[String], admin_token: &str) -> Result<Credentials, CredentialsError> {
        let sleds = sled_tokens
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| SledCredential {
                id: LEGACY_ID,
                ..SledCredential::new("sled-token", TokenHash::of(t), ProjectScope::Any)
            })
            .collect();
        let admins = if admin_token.is_empty() {
            Vec::new()
        } else {
            vec![AdminPrincipal::new("admin", Role::Admin, TokenHash::of(admin_token))]
        };
        Credentials::new(sleds, admins)
    }

    /// The sled credential `token` belongs to.
    pub fn sled(&self, token: &str) -> Option<&SledCredential> {
        self.sled_index.get(&TokenHash::of(token)).map(|i| &self.sleds[*i])
    }

    /// The admin principal `token` belongs to.
    pub fn admin(&self, token: &str) -> Option<&AdminPrincipal> {
        self.admin_index.get(&TokenHash::of(token)).map(|i| &self.admins[*i])
    }

    /// Every sled credential.
    pub fn sleds(&self) -> &[SledCredential] {
        &self.sleds
    }

    /// Every admin principal.
    pub fn admins(&self) -> &[AdminPrincipal] {
        &self.admins
    }

    /// Every sled credential as the core sees it at `now`.
    pub(crate) fn for_core(&self, now: Instant, wall: SystemTime) -> Vec<Credential> {
        let mut seen = std::collections::HashSet::new();
        // The legacy tokens share one id: the core gets it once.
        self.sleds.iter().filter(|s| seen.insert(s.id)).map(|s| s.for_core(now, wall)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_sha256_in_hex_and_reads_back() {
        // SHA-256("abc"), from FIPS 180-2.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(TokenHash::of("abc").to_string(), abc);
        assert_eq!(abc.parse::<TokenHash>(), Ok(TokenHash::of("abc")));
        assert_eq!(abc.to_uppercase().parse::<TokenHash>(), Ok(TokenHash::of("abc")));
        for bad in ["", "ab", &abc[1..], &format!("{abc}0"), &abc.replace('b', "g"), &format!("+{}", &abc[1..])] {
            assert_eq!(bad.parse::<TokenHash>(), Err(BadTokenHash), "{bad}");
        }
    }

    #[test]
    fn tokens_are_recognised_by_their_hash_and_must_be_distinct() {
        let sled = SledCredential::new("ci", TokenHash::of("s1"), ProjectScope::Patterns(vec!["team-a/*".into()]));
        let admin = AdminPrincipal::new("ana", Role::Approver, TokenHash::of("a1"));
        let c = Credentials::new(vec![sled.clone()], vec![admin.clone()]).expect("valid");
        assert_eq!(c.sled("s1"), Some(&sled));
        assert_eq!(c.admin("a1"), Some(&admin));
        assert_eq!((c.sled("a1"), c.admin("s1"), c.sled("s1 "), c.sled("")), (None, None, None, None));
        let twice = AdminPrincipal::new("bob", Role::Viewer, TokenHash::of("s1"));
        assert!(matches!(Credentials::new(vec![sled.clone()], vec![twice]), Err(CredentialsError::SharedToken(_))));
        let same_name = AdminPrincipal::new("ana", Role::Viewer, TokenHash::of("a2"));
        assert!(matches!(
            Credentials::new(vec![sled.clone()], vec![admin, same_name]),
            Err(CredentialsError::SharedName(_))
        ));
        // The last sled credential or the last principal may go: an empty side is a valid set, and refuses all.
        let no_admin = Credentials::new(vec![sled.clone()], vec![]).expect("no principal is a valid set");
        assert_eq!((no_admin.sled("s1"), no_admin.admin("a1")), (Some(&sled), None));
        let nothing = Credentials::new(vec![], vec![]).expect("the empty set is valid");
        assert_eq!((nothing.sled("s1"), nothing.admin("a1")), (None, None));
        assert!(nothing.for_core(Instant::ZERO, SystemTime::UNIX_EPOCH).is_empty());
    }

    #[test]
    fn legacy_tokens_are_one_credential_and_file_credentials_keep_their_ids() {
        let c = Credentials::from_tokens(&["a".into(), "b".into()], "adm").expect("valid");
        let now = Instant::ZERO;
        let wall = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        assert_eq!(c.for_core(now, wall), vec![Credential::unbound(LEGACY_ID)]);
        let s = SledCredential::new("x", TokenHash::of("t"), ProjectScope::Any)
            .expiring(wall + std::time::Duration::from_secs(60));
        let core = s.for_core(now, wall);
        assert_eq!(core.expires, Some(now + std::time::Duration::from_secs(60)));
        assert_eq!(core.id, SledCredential::new("renamed", TokenHash::of("t"), ProjectScope::Any).id);
        assert_ne!(core.id, LEGACY_ID);
        // Already expired on the wall clock: expired at once.
        let past = SledCredential::new("x", TokenHash::of("t"), ProjectScope::Any).expiring(SystemTime::UNIX_EPOCH);
        assert!(past.for_core(now, wall).is_expired(now));
    }
}

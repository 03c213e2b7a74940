//! The credentials file of `uplink gateway` (TOML) and the `uplink gateway token` commands that edit it.
//!
//! ```toml
//! [[sled]]
//! label = "team-a builders"
//! token_sha256 = "…64 hex digits…"
//! projects = ["team-a/*"]             # names or `*` patterns; ["*"] for any project
//! expires = "2027-01-01T00:00:00Z"    # optional, RFC 3339
//!
//! [[admin]]
//! name = "ana"
//! role = "approver"                   # viewer, approver or admin
//! token_sha256 = "…"
//! ```
//!
//! Only hashes are stored. `token add` prints the new token once; nobody can read it back. Every write goes
//! to a temporary file beside the real one, readable by its owner only, then replaces it in one rename.
//!
//! The same entries can live in the gateway's store instead ([`Place::Store`]: the `credentials` table of
//! `STATE_DIR/uplink.db`), where `token …` keeps them when no file is named. When a gateway has both, the
//! file wins: a store entry with the same token as a file entry, or an admin of the same name, is left out.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uplink_proto::gateway::{ProjectScope, Role};

use super::store_at::StoreAt;
use crate::gateway::credentials::{AdminPrincipal, Credentials, SledCredential, TokenHash};
use crate::store::CredentialRow;

/// Where `token …` keeps credentials.
pub(super) enum Place {
    /// A TOML file.
    File(PathBuf),
    /// The gateway's store (its state directory's, or a PostgreSQL database).
    Store(StoreAt),
}

impl Place {
    fn read(&self) -> Result<File, String> {
        match self {
            Place::File(path) => read_or_empty(path),
            Place::Store(at) => Ok(from_rows(&at.credentials()?.read().map_err(|e| e.to_string())?.0)),
        }
    }

    fn write(&self, file: &File) -> Result<(), String> {
        match self {
            Place::File(path) => write(path, file),
            Place::Store(at) => at.credentials()?.write(&to_rows(file)).map_err(|e| e.to_string()),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Place::File(path) => path.display().to_string(),
            Place::Store(at) => at.describe(),
        }
    }
}

/// The store's rows as the file's entries.
fn from_rows(rows: &[CredentialRow]) -> File {
    let mut file = File::default();
    for r in rows {
        match r.kind.as_str() {
            "sled" => file.sleds.push(SledEntry {
                label: r.name.clone(),
                token_sha256: r.token_sha256.clone(),
                projects: r.projects.clone(),
                expires: r.expires.clone(),
            }),
            _ => file.admins.push(AdminEntry {
                name: r.name.clone(),
                role: r.role.clone().unwrap_or_default(),
                token_sha256: r.token_sha256.clone(),
            }),
        }
    }
    file
}

fn to_rows(file: &File) -> Vec<CredentialRow> {
    let sleds = file.sleds.iter().map(|s| CredentialRow {
        kind: "sled".into(),
        name: s.label.clone(),
        token_sha256: s.token_sha256.clone(),
        projects: s.projects.clone(),
        role: None,
        expires: s.expires.clone(),
    });
    let admins = file.admins.iter().map(|a| CredentialRow {
        kind: "admin".into(),
        name: a.name.clone(),
        token_sha256: a.token_sha256.clone(),
        projects: Vec::new(),
        role: Some(a.role.clone()),
        expires: None,
    });
    sleds.chain(admins).collect()
}

/// The credentials of a file (if any) and of the store's rows, the file winning: a store entry whose token
/// or (for an admin) name a file entry has is left out. Returns them with a sentence per entry left out.
pub(super) fn load_merged(file: Option<&Path>, store: &[CredentialRow]) -> Result<(Credentials, Vec<String>), String> {
    let mut merged = match file {
        Some(path) => read(path)?,
        None => File::default(),
    };
    let origin = file.map_or_else(|| "the store".to_owned(), |p| format!("{} and the store", p.display()));
    let mut left_out = Vec::new();
    let from_store = from_rows(store);
    let taken = |hash: &str, merged: &File| {
        merged.sleds.iter().any(|s| s.token_sha256.eq_ignore_ascii_case(hash))
            || merged.admins.iter().any(|a| a.token_sha256.eq_ignore_ascii_case(hash))
    };
    for s in from_store.sleds {
        if taken(&s.token_sha256, &merged) {
            left_out.push(format!(
                "the store's sled credential {:?} has a token the file has: the file's is used",
                s.label
            ));
        } else {
            merged.sleds.push(s);
        }
    }
    for a in from_store.admins {
        if taken(&a.token_sha256, &merged) || merged.admins.iter().any(|m| m.name == a.name) {
            left_out.push(format!("the store's admin {:?} is also in the file: the file's is used", a.name));
        } else {
            merged.admins.push(a);
        }
    }
    Ok((check(&merged, &origin)?, left_out))
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "sled", skip_serializing_if = "Vec::is_empty")]
    sleds: Vec<SledEntry>,
    #[serde(default, rename = "admin", skip_serializing_if = "Vec::is_empty")]
    admins: Vec<AdminEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SledEntry {
    label: String,
    token_sha256: String,
    projects: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminEntry {
    name: String,
    role: String,
    token_sha256: String,
}

fn read(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The file at `path`, or an empty one when there is none yet.
fn read_or_empty(path: &Path) -> Result<File, String> {
    if path.exists() { read(path) } else { Ok(File::default()) }
}

fn write(path: &Path, file: &File) -> Result<(), String> {
    let text = toml::to_string(file).map_err(|e| format!("cannot write the credentials: {e}"))?;
    write_private(path, &text)
}

/// Writes `text` to `path` through a temporary file that only the owner can read, renamed into place.
pub(super) fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::owner_only::dir(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(fail)?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

fn scope(projects: &[String]) -> ProjectScope {
    ProjectScope::Patterns(projects.to_vec())
}

fn hash(text: &str, whose: &str) -> Result<TokenHash, String> {
    text.parse().map_err(|e| format!("{whose}: token_sha256: {e}"))
}

/// The credentials in the file at `path`, checked: every hash, role and expiry readable, every token and
/// admin name distinct. None at all is a valid set (it lets nobody in).
#[cfg(test)]
fn load(path: &Path) -> Result<Credentials, String> {
    check(&read(path)?, &path.display().to_string())
}

/// The credentials `file` (from `origin`) holds, checked as [`load`] says.
fn check(file: &File, origin: &str) -> Result<Credentials, String> {
    let mut sleds = Vec::new();
    for s in &file.sleds {
        if s.projects.is_empty() {
            return Err(format!("{origin}: sled {:?} has no projects (use [\"*\"] for any)", s.label));
        }
        let mut credential = SledCredential::new(&s.label, hash(&s.token_sha256, &s.label)?, scope(&s.projects));
        if let Some(at) = &s.expires {
            let at = humantime::parse_rfc3339_weak(at).map_err(|e| format!("sled {:?}: expires: {e}", s.label))?;
            credential = credential.expiring(at);
        }
        sleds.push(credential);
    }
    let mut admins = Vec::new();
    for a in &file.admins {
        let role: Role = a.role.parse().map_err(|e| format!("admin {:?}: {e}", a.name))?;
        admins.push(AdminPrincipal::new(a.name.as_str(), role, hash(&a.token_sha256, &a.name)?));
    }
    Credentials::new(sleds, admins).map_err(|e| format!("{origin}: {e}"))
}

/// What `token add` adds.
pub(super) enum NewToken {
    Sled { label: Option<String>, projects: Vec<String>, expires: Option<SystemTime> },
    Admin { name: String, role: Role },
}

/// Adds a credential with a fresh token at `place` (created if need be); returns the token.
pub(super) fn add(place: &Place, new: NewToken) -> Result<String, String> {
    let mut file = place.read()?;
    let token = crate::gateway::generate_token().map_err(|e| e.to_string())?;
    let token_sha256 = TokenHash::of(&token).to_string();
    match new {
        NewToken::Sled { label, projects, expires } => {
            if projects.is_empty() {
                return Err("a sled credential needs at least one --project (use '*' for any)".into());
            }
            let label = label.unwrap_or_else(|| format!("sled-{}", &token_sha256[..8]));
            let expires = expires.map(|at| humantime::format_rfc3339_seconds(at).to_string());
            file.sleds.push(SledEntry { label, token_sha256, projects, expires });
        }
        NewToken::Admin { name, role } => {
            if file.admins.iter().any(|a| a.name == name) {
                return Err(format!("an admin principal named {name:?} exists; revoke it first"));
            }
            file.admins.push(AdminEntry { name, role: role.to_string(), token_sha256 });
        }
    }
    place.write(&file)?;
    Ok(token)
}

/// One line per credential, under a header: kind, name, rights (a sled's projects, a person's role), expiry,
/// the hash's first 12 digits. Nothing at all when there is none.
pub(super) fn list(place: &Place) -> Result<String, String> {
    let file = place.read()?;
    if file.sleds.is_empty() && file.admins.is_empty() {
        return Ok(String::new());
    }
    let sleds = file.sleds.iter().map(|s| {
        let expires = s.expires.as_deref().unwrap_or("never").to_owned();
        [
            "sled".to_owned(),
            s.label.clone(),
            format!("projects {}", s.projects.join(",")),
            expires,
            short(&s.token_sha256).to_owned(),
        ]
    });
    let admins = file.admins.iter().map(|a| {
        [
            "admin".to_owned(),
            a.name.clone(),
            format!("role {}", a.role),
            "never".to_owned(),
            short(&a.token_sha256).to_owned(),
        ]
    });
    Ok(super::common::table(&["KIND", "NAME", "MAY", "EXPIRES", "TOKEN HASH"], sleds.chain(admins)))
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Removes the one credential that `who` names: an admin's name, a sled's label, or the start of a
/// token's hash (8 digits at least). Refuses when none or several match.
pub(super) fn revoke(place: &Place, who: &str) -> Result<String, String> {
    let mut file = place.read()?;
    let by_hash = who.len() >= 8 && who.bytes().all(|b| b.is_ascii_hexdigit());
    let matches = |name: &str, hash: &str| name == who || (by_hash && hash.starts_with(&who.to_ascii_lowercase()));
    let sleds = file.sleds.iter().filter(|s| matches(&s.label, &s.token_sha256)).count();
    let admins = file.admins.iter().filter(|a| matches(&a.name, &a.token_sha256)).count();
    match sleds + admins {
        0 => return Err(format!("no credential is named {who:?}")),
        1 => {}
        n => return Err(format!("{n} credentials match {who:?}; name one by its hash (token ls)")),
    }
    file.sleds.retain(|s| !matches(&s.label, &s.token_sha256));
    file.admins.retain(|a| !matches(&a.name, &a.token_sha256));
    place.write(&file)?;
    Ok(format!("revoked {who:?} from {}", place.describe()))
}

/// The state directory when none is given: `$XDG_STATE_HOME/uplink`, else `~/.local/state/uplink`.
pub(super) fn default_state_dir() -> PathBuf {
    match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
        (Some(state), _) if !state.is_empty() => PathBuf::from(state).join("uplink"),
        (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".local/state/uplink"),
        _ => PathBuf::from("uplink-state"),
    }
}

/// `--expires`: an RFC 3339 time, or a duration from now (`30d`, `12h`).
pub(super) fn expiry(text: &str) -> Result<SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    let d: Duration = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?}: expected an RFC 3339 time or a duration such as 30d"))?;
    Ok(SystemTime::now() + d)
}

/// `--since`: an RFC 3339 time, or a duration ago (`24h`); in Unix milliseconds.
pub(super) fn since(text: &str) -> Result<u64, String> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => {
            let d: Duration = humantime::parse_duration(text)
                .map_err(|_| format!("{text:?}: expected an RFC 3339 time or a duration ago such as 24h"))?;
            SystemTime::now().checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    };
    Ok(at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CredentialStore as _;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("uplink-cred-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("credentials.toml")
    }

    #[test]
    fn tokens_added_are_stored_as_hashes_found_by_their_token_listed_and_revoked() {
        let path = temp("cycle");
        let place = Place::File(path.clone());
        let sled = NewToken::Sled { label: Some("ci".into()), projects: vec!["team-a/*".into()], expires: None };
        let s = add(&place, sled).expect("added");
        let a = add(&place, NewToken::Admin { name: "ana".into(), role: Role::Approver }).expect("added");
        let text = std::fs::read_to_string(&path).expect("written");
        assert!(!text.contains(&s) && !text.contains(&a), "a plain token was stored");
        assert!(text.contains(&TokenHash::of(&s).to_string()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
        }
        let c = load(&path).expect("loads");
        assert_eq!(c.sled(&s).map(|x| x.label.as_str()), Some("ci"));
        assert_eq!(c.admin(&a).map(|x| x.role), Some(Role::Approver));
        let listing = list(&place).expect("lists");
        assert!(listing.contains("ci") && listing.contains("ana") && !listing.contains(&s));
        assert!(add(&place, NewToken::Admin { name: "ana".into(), role: Role::Viewer }).is_err());
        assert!(revoke(&place, "nobody").is_err());
        revoke(&place, "ci").expect("revoked");
        // No sled credential left: the file loads, and lets no sled in.
        let c = load(&path).expect("a set without sleds loads");
        assert!(c.sleds().is_empty() && c.sled(&s).is_none() && c.admin(&a).is_some());
        let hash = TokenHash::of(&a).to_string();
        revoke(&place, &hash[..10]).expect("revoked by hash");
        assert!(list(&place).expect("lists").is_empty());
        let c = load(&path).expect("the empty set loads");
        assert!(c.admins().is_empty() && c.admin(&a).is_none());
    }

    #[test]
    fn the_store_keeps_credentials_too_and_the_file_wins_where_both_name_one() {
        let dir = temp("store").parent().expect("dir").to_owned();
        let store = Place::Store(StoreAt::Dir(dir.clone()));
        let sled = NewToken::Sled { label: Some("farm".into()), projects: vec!["*".into()], expires: None };
        let farm = add(&store, sled).expect("added");
        let ana = add(&store, NewToken::Admin { name: "ana".into(), role: Role::Admin }).expect("added");
        let bob = add(&store, NewToken::Admin { name: "bob".into(), role: Role::Viewer }).expect("added");
        assert!(list(&store).expect("lists").contains("farm"));
        let kept = crate::store::sqlite::SqliteStore::credentials_in(&dir).expect("open");
        let (rows, version) = kept.read().expect("rows");
        assert_eq!(kept.version().expect("version"), version);
        assert_eq!((rows.len(), version), (3, 3), "one version per write");
        assert!(rows.iter().all(|r| r.token_sha256.len() == 64 && !r.token_sha256.contains(&farm)));
        // Alone, the store's credentials load.
        let (c, left_out) = load_merged(None, &rows).expect("loads");
        assert!(c.sled(&farm).is_some() && c.admin(&ana).is_some() && left_out.is_empty());
        // With a file naming ana (another token) and a sled: the file's ana wins, the store's is left out.
        let file = dir.join("declared.toml");
        let file_place = Place::File(file.clone());
        let ana_in_file = add(&file_place, NewToken::Admin { name: "ana".into(), role: Role::Viewer }).expect("added");
        add(&file_place, NewToken::Sled { label: Some("ci".into()), projects: vec!["ci/*".into()], expires: None })
            .expect("added");
        let (c, left_out) = load_merged(Some(&file), &rows).expect("loads");
        assert_eq!(c.admin(&ana_in_file).map(|p| p.role), Some(Role::Viewer));
        assert!(c.admin(&ana).is_none(), "the store's ana is left out");
        assert!(c.admin(&bob).is_some() && c.sled(&farm).is_some(), "the rest of the store is used");
        assert_eq!(left_out.len(), 1, "{left_out:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_file_is_refused_with_where_and_why() {
        let path = temp("bad");
        for (text, want) in [
            ("[[sled]]\nlabel = \"x\"\ntoken_sha256 = \"00\"\nprojects = [\"*\"]\n", "token_sha256"),
            ("[[sled]]\nlabel = \"x\"\ntoken_sha256 = \"00\"\nprojects = []\n", "no projects"),
            ("[[admin]]\nname = \"x\"\nrole = \"root\"\ntoken_sha256 = \"00\"\n", "not a role"),
            ("[[sledd]]\n", "unknown field"),
            ("not toml", "credentials.toml"),
        ] {
            write_private(&path, text).expect("written");
            let err = load(&path).err().unwrap_or_default();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn expiry_reads_times_and_durations() {
        assert_eq!(expiry("2027-01-01T00:00:00Z").ok(), humantime::parse_rfc3339("2027-01-01T00:00:00Z").ok());
        let in_a_day = expiry("1d").expect("a duration");
        assert!(in_a_day > SystemTime::now() + Duration::from_secs(86_000));
        assert!(expiry("tomorrow").is_err());
    }
}

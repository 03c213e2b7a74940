//! Permission rules: decided here, before a person is asked, in Claude Code's rule syntax.
//!
//! A [`Rule`] pairs a [`Pattern`] ([`pattern`]: which calls) with an [`Effect`] (`allow`, `deny`, `ask`),
//! the projects it applies to, an optional expiry, its author and creation time. A [`RuleSet`] evaluates a
//! request:
//!
//! ```text
//!   any matching deny ──▶ Deny      (wins over everything)
//!   else any matching ask ──▶ Ask   (a person decides, even if an allow matches too)
//!   else allow covers it ──▶ Allow
//!   else ──▶ NoRule                 (a person decides; with nobody to ask, deny)
//! ```
//!
//! Matching is asymmetric on purpose, so that doubt never approves:
//! - a Bash command is [allowed](shell) only when it is made of constructs bash cannot turn into code (no
//!   substitution, arithmetic, `${…}` operator or evaluating builtin, no parentheses, no file redirection)
//!   and **every** simple command matches an allow rule;
//! - it is [denied](shell) (or asked) when **any** fragment of it matches: each simple command, the
//!   insides of substitutions, each without its wrappers and leading assignments;
//! - relative paths, subdomains and unreadable inputs are read narrowly by allow rules and generously by deny
//!   and ask rules ([`path`], [`url`]).
//!
//! The same rules and request always give the same outcome, whatever the rules' order.

pub mod path;
pub mod pattern;
pub mod shell;
pub mod url;

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::OnceCell;
use core::fmt;
use core::str::FromStr;

use serde::Deserialize;

use crate::gateway::credential::ProjectScope;
use crate::ids::ConnHandle;
use crate::time::Instant;
use pattern::{EDIT_TOOLS, Kind, READ_TOOLS, canonical, mcp_matches};
pub use pattern::{Pattern, PatternError};

/// What a rule does to the calls it matches.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    /// Approve without asking.
    Allow,
    /// Ask a person, even if an allow rule matches.
    Ask,
    /// Deny, whatever else matches.
    Deny,
}

impl Effect {
    /// `allow`, `ask` or `deny`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Ask => "ask",
            Effect::Deny => "deny",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not `allow`, `ask` or `deny`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an effect: expected allow, ask or deny")]
pub struct BadEffect;

impl FromStr for Effect {
    type Err = BadEffect;

    fn from_str(s: &str) -> Result<Effect, BadEffect> {
        [Effect::Allow, Effect::Ask, Effect::Deny].into_iter().find(|e| e.as_str() == s).ok_or(BadEffect)
    }
}

impl Pattern {
    /// As [`Pattern::parse`], for a rule of `effect`: an allow rule's tool name takes a `*` only after
    /// `mcp__server__` (Claude Code refuses `mcp__*` and `Web*` in allow rules; they are deny and ask rules'
    /// only). What makes a new rule; a rule kept from before is read with [`Pattern::parse_kept`].
    pub fn parse_for(effect: Effect, text: &str) -> Result<Pattern, PatternError> {
        let pattern = Pattern::parse(text)?;
        match pattern.wildcard_name() {
            Some(name) if effect == Effect::Allow => Err(PatternError::WildcardAllow(String::from(name))),
            _ => Ok(pattern),
        }
    }
}

/// Names one rule.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub u64);

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rule {
    /// Its id.
    pub id: RuleId,
    /// What it does.
    pub effect: Effect,
    /// Which calls.
    pub pattern: Pattern,
    /// Which projects (default: all).
    pub projects: ProjectScope,
    /// The one sled connection it applies to (a person's "always allow" for this connection), or `None`:
    /// any connection. The hub removes such a rule when its connection ends.
    pub connection: Option<ConnHandle>,
    /// When it stops applying; `None`: never.
    pub expires: Option<Instant>,
    /// Who made it (a principal's name, or `--auto-approve` and the like).
    pub author: Arc<str>,
    /// When it was made, in the adapter's own terms (Unix seconds for `uplink gateway`).
    pub created: u64,
}

impl Rule {
    /// A rule for every project, without expiry.
    pub fn new(id: RuleId, effect: Effect, pattern: Pattern, author: impl Into<Arc<str>>, created: u64) -> Rule {
        Rule {
            id,
            effect,
            pattern,
            projects: ProjectScope::Any,
            connection: None,
            expires: None,
            author: author.into(),
            created,
        }
    }

    /// The same rule for calls from the sled connection `conn` only.
    pub fn for_connection(mut self, conn: ConnHandle) -> Rule {
        self.connection = Some(conn);
        self
    }

    /// The same rule with the id `id`.
    pub fn with_id(mut self, id: RuleId) -> Rule {
        self.id = id;
        self
    }

    /// Whether it has stopped applying at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    /// The same rule for `projects` only.
    pub fn for_projects(mut self, projects: ProjectScope) -> Rule {
        self.projects = projects;
        self
    }

    /// The same rule, applying until `at`.
    pub fn expiring(mut self, at: Instant) -> Rule {
        self.expires = Some(at);
        self
    }

    fn applies(&self, now: Instant, request: &Request<'_>) -> bool {
        !self.is_expired(now)
            && self.connection.is_none_or(|c| request.connection == Some(c))
            && self.projects.covers(request.project)
    }
}

/// What the rules say about one request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Denied by this rule.
    Deny(RuleId),
    /// A person must decide, by this rule.
    Ask(RuleId),
    /// Approved: this rule matched (the first command's, for a compound Bash command).
    Allow(RuleId),
    /// No rule matched: a person decides.
    NoRule,
}

/// A request as the rules read it.
#[derive(Copy, Clone, Debug)]
pub struct Request<'a> {
    /// The sled connection it arrived on, when the caller knows it (connection-scoped rules need it).
    pub connection: Option<ConnHandle>,
    /// The sled's project.
    pub project: &'a str,
    /// The tool.
    pub tool_name: &'a str,
    /// The tool's input, as JSON text.
    pub tool_input: &'a str,
}

/// The fields of a tool input the rules read; anything else in it is ignored.
#[derive(Default, Deserialize)]
struct Fields<'a> {
    #[serde(default, borrow)]
    command: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    file_path: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    notebook_path: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    url: Option<Cow<'a, str>>,
}

impl<'a> Fields<'a> {
    fn read(input: &'a str) -> Fields<'a> {
        crate::wire::object(input).unwrap_or_default()
    }

    /// The command's fragments as deny and ask rules read it: split once per request, whatever the
    /// number of rules.
    fn deny_fragments(&self, cell: &'a OnceCell<Vec<String>>) -> Option<&'a [String]> {
        let command = self.command.as_deref()?;
        Some(cell.get_or_init(|| shell::for_deny(command)))
    }

    fn named(&self, field: &str) -> Option<&str> {
        match field {
            "file_path" => self.file_path.as_deref(),
            "path" => self.path.as_deref(),
            "notebook_path" => self.notebook_path.as_deref(),
            _ => None,
        }
    }

    /// The path a read or edit tool acts on.
    fn path_of(&self, tools: &[(&str, &str)], tool: &str) -> Option<Option<&str>> {
        tools.iter().find(|(t, _)| *t == tool).map(|(_, field)| self.named(field))
    }
}

/// The rules in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// These rules.
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        RuleSet { rules }
    }

    /// Every rule.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Adds `rule` (replacing one with the same id).
    pub fn insert(&mut self, rule: Rule) {
        self.rules.retain(|r| r.id != rule.id);
        self.rules.push(rule);
    }

    /// Removes the rule `id`; whether there was one.
    pub fn remove(&mut self, id: RuleId) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.id != id);
        self.rules.len() != before
    }

    /// What the rules in force at `now` say about `request`.
    pub fn evaluate(&self, now: Instant, request: &Request<'_>) -> Outcome {
        let live = || self.rules.iter().filter(|r| r.applies(now, request));
        if live().next().is_none() {
            return Outcome::NoRule;
        }
        // The input is read only when a rule looks into it (bare tool and MCP rules do not).
        let looks_inside = live().any(|r| !matches!(r.pattern.kind, Kind::Tool(_) | Kind::Mcp(_) | Kind::ToolGlob(_)));
        let fields = if looks_inside { Fields::read(request.tool_input) } else { Fields::default() };
        let fragments = OnceCell::new();
        let matching = |effect: Effect| {
            live()
                .filter(|r| r.effect == effect && matches_generously(r, request.tool_name, &fields, &fragments))
                .map(|r| r.id)
                .min()
        };
        if let Some(id) = matching(Effect::Deny) {
            return Outcome::Deny(id);
        }
        if let Some(id) = matching(Effect::Ask) {
            return Outcome::Ask(id);
        }
        allowed_by(|| live().filter(|r| r.effect == Effect::Allow), request.tool_name, &fields)
            .map_or(Outcome::NoRule, Outcome::Allow)
    }
}

/// Whether a deny or ask rule matches: any fragment, read generously.
fn matches_generously<'a>(
    rule: &Rule,
    tool: &str,
    fields: &'a Fields<'a>,
    fragments: &'a OnceCell<Vec<String>>,
) -> bool {
    match &rule.pattern.kind {
        Kind::Tool(name) => name == canonical(tool),
        // Read generously: the name as sent, or its name now (`Task*` denies an older Claude Code's `Task`).
        Kind::ToolGlob(pattern) => {
            crate::glob::star_match(pattern.as_bytes(), tool.as_bytes())
                || crate::glob::star_match(pattern.as_bytes(), canonical(tool).as_bytes())
        }
        Kind::Mcp(pattern) => mcp_matches(pattern, tool),
        Kind::Command(pattern) => {
            tool == "Bash" && fields.deny_fragments(fragments).is_some_and(|f| f.iter().any(|f| pattern.matches(f)))
        }
        Kind::Read(pattern) => matches!(fields.path_of(READ_TOOLS, tool), Some(Some(p)) if pattern.matches(p, true)),
        Kind::Edit(pattern) => matches!(fields.path_of(EDIT_TOOLS, tool), Some(Some(p)) if pattern.matches(p, true)),
        Kind::Domain(domain) => {
            tool == "WebFetch"
                && fields
                    .url
                    .as_deref()
                    .is_some_and(|u| url::host(u).is_none_or(|host| url::host_matches(domain, &host, true)))
        }
    }
}

/// The allow rule that approves the request, read narrowly: for Bash, every simple command must match one
/// (the lowest id among those of the first command is reported).
fn allowed_by<'r, I: Iterator<Item = &'r Rule>>(
    allows: impl Fn() -> I,
    tool: &str,
    fields: &Fields<'_>,
) -> Option<RuleId> {
    let whole = allows()
        .filter(|r| match &r.pattern.kind {
            Kind::Tool(name) => name == canonical(tool),
            // Never an allow (Pattern::parse_for refuses it); read narrowly all the same.
            Kind::ToolGlob(_) => false,
            Kind::Mcp(pattern) => mcp_matches(pattern, tool),
            Kind::Read(pattern) => {
                matches!(fields.path_of(READ_TOOLS, tool), Some(Some(p)) if pattern.matches(p, false))
            }
            Kind::Edit(pattern) => {
                matches!(fields.path_of(EDIT_TOOLS, tool), Some(Some(p)) if pattern.matches(p, false))
            }
            Kind::Domain(domain) => {
                tool == "WebFetch"
                    && fields
                        .url
                        .as_deref()
                        .and_then(url::host)
                        .is_some_and(|host| url::host_matches(domain, &host, false))
            }
            Kind::Command(_) => false,
        })
        .map(|r| r.id)
        .min();
    if whole.is_some() || tool != "Bash" {
        return whole;
    }
    let parts = shell::for_allow(fields.command.as_deref()?)?;
    let mut first = None;
    for (i, part) in parts.iter().enumerate() {
        if part.complex {
            return None;
        }
        let id = allows()
            .filter(|r| matches!(&r.pattern.kind, Kind::Command(p) if p.matches(&part.text)))
            .map(|r| r.id)
            .min()?;
        if i == 0 {
            first = Some(id);
        }
    }
    first
}

/// The suggestion a person sees before saving an "always allow" for a request: see [`Pattern::suggest`].
pub fn suggest(tool_name: &str, tool_input: &str) -> Option<Pattern> {
    let fields = Fields::read(tool_input);
    Pattern::suggest(tool_name, fields.command.as_deref())
}

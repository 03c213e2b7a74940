//! A rule's pattern in Claude Code's permission-rule syntax: `Tool` or `Tool(specifier)`.
//!
//! | form | matches |
//! |---|---|
//! | `Bash`, `Bash(*)`, `Tool`, `Tool(*)` | every call of that tool (the name is exact) |
//! | `Bash(npm run build)` | exactly that command |
//! | `Bash(npm run test *)`, `Bash(git * main)` | `*` matches any run of characters; a single trailing ` *` also matches nothing (`npm run test`) |
//! | `Bash(npm run test:*)` | the legacy prefix form: `npm run test`, or it followed by a space and anything |
//! | `Read(path)` | `Read`, `Grep`, `Glob`, `LS`, `NotebookRead` on a path matching (see [`path`](super::path)) |
//! | `Edit(path)` | `Edit`, `Write`, `MultiEdit`, `NotebookEdit` on a path matching |
//! | `WebFetch(domain:example.com)` | `WebFetch` of a URL on that host (`*.example.com`: its subdomains) |
//! | `mcp__server`, `mcp__server__tool`, `mcp__server__*` | that MCP server's tools, that tool, or a `*` pattern over tool names |
//! | `Web*`, `*` (deny and ask rules only) | every tool whose name the `*` pattern matches |
//!
//! Read as Claude Code reads a rule: the specifier runs from the first `(` not escaped to the last `)` not
//! escaped, which must end the rule; in it `\(` is `(`, `\)` is `)`, then `\\` is `\`; `Tool(*)` is `Tool`;
//! `Task` is `Agent`'s old name and `KillShell`, `KillBash` are `TaskStop`'s, in rules and in requests.
//!
//! Anything else is refused when the rule is made, with the reason, never accepted and silently ignored:
//! a specifier uplink does not read, `Write(…)` (write it `Edit(…)`), `Bash(command:…)`, `Tool()` and a
//! lower-case tool name (Claude Code refuses both), `\*` (a literal star, which uplink does not match), and
//! in an allow rule a `*` in a tool name but after `mcp__server__` (Claude Code refuses `mcp__*` there: it
//! would allow every server's tools).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use super::path::PathPattern;
use crate::glob::star_match;

/// The tools `Read(…)` rules cover, with the input field that holds their path.
pub(crate) const READ_TOOLS: &[(&str, &str)] =
    &[("Read", "file_path"), ("Grep", "path"), ("Glob", "path"), ("LS", "path"), ("NotebookRead", "notebook_path")];
/// The tools `Edit(…)` rules cover, with the input field that holds their path.
pub(crate) const EDIT_TOOLS: &[(&str, &str)] =
    &[("Edit", "file_path"), ("Write", "file_path"), ("MultiEdit", "file_path"), ("NotebookEdit", "notebook_path")];

/// Old tool names Claude Code still reads in rules, and the tools' names now.
const ALIASES: &[(&str, &str)] = &[("Task", "Agent"), ("KillShell", "TaskStop"), ("KillBash", "TaskStop")];

/// Claude Code's tools, for the suggestion given with a lower-case name.
const TOOLS: &[&str] = &[
    "Agent",
    "Bash",
    "Edit",
    "Glob",
    "Grep",
    "LS",
    "MultiEdit",
    "NotebookEdit",
    "NotebookRead",
    "PowerShell",
    "Read",
    "Skill",
    "TaskStop",
    "TodoWrite",
    "WebFetch",
    "WebSearch",
    "Write",
];

/// The name a tool goes by now: `Task` is `Agent`, `KillShell` and `KillBash` are `TaskStop`.
pub(crate) fn canonical(tool: &str) -> &str {
    ALIASES.iter().find(|(old, _)| *old == tool).map_or(tool, |(_, now)| now)
}

/// A parsed rule pattern. Its text is kept for display ([`Pattern::text`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// The specifier as Claude Code's value form has it (unescaped), if there is one.
    content: Option<String>,
    pub(crate) kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Every call of this tool.
    Tool(String),
    /// A Bash command pattern.
    Command(CommandPattern),
    /// A path pattern for the read tools.
    Read(PathPattern),
    /// A path pattern for the edit tools.
    Edit(PathPattern),
    /// A `WebFetch` host.
    Domain(String),
    /// MCP tools by name: a server (`mcp__server`), a tool, or a `*` pattern.
    Mcp(String),
    /// Tools whose name a `*` pattern matches (deny and ask rules only).
    ToolGlob(String),
}

/// A Bash command pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommandPattern {
    /// With runs of whitespace collapsed.
    glob: String,
    /// The legacy `prefix:*` form, or a single trailing ` *`: the prefix alone matches too.
    bare: Option<String>,
}

impl CommandPattern {
    fn parse(spec: &str) -> CommandPattern {
        let collapsed = spec.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(prefix) = collapsed.strip_suffix(":*") {
            let prefix = prefix.trim_end();
            return CommandPattern { glob: alloc::format!("{prefix} *"), bare: Some(String::from(prefix)) };
        }
        let bare = collapsed.strip_suffix(" *").filter(|rest| !rest.contains('*')).map(String::from);
        CommandPattern { glob: collapsed, bare }
    }

    /// Whether one simple command (already collapsed) matches.
    pub(crate) fn matches(&self, command: &str) -> bool {
        self.bare.as_deref() == Some(command) || star_match(self.glob.as_bytes(), command.as_bytes())
    }
}

/// Why a rule's pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// Not `Tool` or `Tool(specifier)`.
    #[error("expected Tool or Tool(specifier)")]
    Syntax,
    /// The tool name has characters a tool name cannot have.
    #[error("a tool name is letters, digits, `_` and `-`")]
    ToolName,
    /// uplink does not read this tool's specifier.
    #[error("uplink does not read a specifier for `{0}` (write `{0}` alone, for every call)")]
    NoSpecifier(String),
    /// `Tool()`: Claude Code refuses empty parentheses.
    #[error("empty parentheses: write `{0}` alone, for every call, or what it applies to inside them")]
    EmptyParentheses(String),
    /// A lower-case tool name (tools' names start with a capital letter; MCP names have `__`).
    #[error("tool names start with a capital letter: {0}")]
    LowerCase(String),
    /// `\*`: a literal star, which Claude Code matches and uplink does not.
    #[error("`\\*` (a literal `*`) is not supported: uplink would not match it as Claude Code does")]
    EscapedStar,
    /// A `*` in an allow rule's tool name other than after `mcp__server__`.
    #[error(
        "an allow rule's `*` may only follow `mcp__server__` (`mcp__github__*`): `{0}` would allow tools of any name"
    )]
    WildcardAllow(String),
    /// A path rule for an edit tool other than `Edit`.
    #[error("path rules for `{0}` are written `Edit(…)`, which covers every tool that edits files")]
    WriteAsEdit(String),
    /// A path rule for a read tool other than `Read`.
    #[error("path rules for `{0}` are written `Read(…)`, which covers every tool that reads files")]
    ReadAsRead(String),
    /// The path pattern is empty or climbs with `..`.
    #[error("a path pattern may not be empty or contain `..`")]
    Path,
    /// `WebFetch` takes `domain:HOST`.
    #[error("`WebFetch` rules are written `WebFetch(domain:example.com)`")]
    Domain,
    /// `Bash(command:…)` and other `field:value` forms are not commands.
    #[error("`Bash` rules take the command itself (`Bash(npm run test *)`), not `field:value`")]
    FieldForm,
    /// An MCP rule takes no parentheses.
    #[error("MCP rules are tool names: `mcp__server`, `mcp__server__tool` or `mcp__server__*`")]
    McpSpecifier,
    /// Too long to be a rule.
    #[error("a rule is at most 4,096 bytes")]
    TooLong,
}

impl Pattern {
    /// Reads a rule pattern.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let text = text.trim();
        if text.len() > 4096 {
            return Err(PatternError::TooLong);
        }
        let (name, content) = split_call(text)?;
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '*';
        if name.is_empty() || !name.chars().all(valid) {
            return Err(PatternError::ToolName);
        }
        if !name.contains('_') && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            let meant = TOOLS.iter().find(|t| t.eq_ignore_ascii_case(name));
            return Err(PatternError::LowerCase(match meant {
                Some(t) => alloc::format!("did you mean `{t}`?"),
                None => alloc::format!("`{name}` is none of Claude Code's ({})", TOOLS.join(", ")),
            }));
        }
        if content.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(PatternError::EmptyParentheses(String::from(name)));
        }
        let name = canonical(name);
        let spec = content.as_deref().map(str::trim).filter(|s| *s != "*");
        let kind = if name.starts_with("mcp__") {
            if spec.is_some() {
                return Err(PatternError::McpSpecifier);
            }
            Kind::Mcp(String::from(name))
        } else if name.contains('*') {
            if spec.is_some() {
                return Err(PatternError::ToolName);
            }
            Kind::ToolGlob(String::from(name))
        } else {
            match (name, spec) {
                (name, None) => Kind::Tool(String::from(name)),
                ("Bash", Some(spec)) => {
                    let field = spec
                        .split_once(':')
                        .filter(|(f, v)| *v != "*" && !f.contains(' ') && f.bytes().all(|b| b.is_ascii_alphabetic()));
                    if field.is_some() {
                        return Err(PatternError::FieldForm);
                    }
                    Kind::Command(CommandPattern::parse(spec))
                }
                ("Read", Some(spec)) => Kind::Read(PathPattern::parse(spec).ok_or(PatternError::Path)?),
                ("Edit", Some(spec)) => Kind::Edit(PathPattern::parse(spec).ok_or(PatternError::Path)?),
                ("WebFetch", Some(spec)) => {
                    let domain = spec.strip_prefix("domain:").map(str::trim).ok_or(PatternError::Domain)?;
                    if domain.is_empty() || domain.contains(['/', ' ', '@', ':']) {
                        return Err(PatternError::Domain);
                    }
                    Kind::Domain(domain.to_ascii_lowercase())
                }
                (name, Some(_)) if EDIT_TOOLS.iter().any(|(t, _)| *t == name) => {
                    return Err(PatternError::WriteAsEdit(String::from(name)));
                }
                (name, Some(_)) if READ_TOOLS.iter().any(|(t, _)| *t == name) => {
                    return Err(PatternError::ReadAsRead(String::from(name)));
                }
                (name, Some(_)) => return Err(PatternError::NoSpecifier(String::from(name))),
            }
        };
        let content = spec.map(String::from);
        Ok(Pattern { text: text.to_string(), content, kind })
    }

    /// The `*` pattern of a tool name that only a deny or ask rule may hold: any tool-name wildcard but one
    /// after a literal `mcp__server__` (`mcp__github__*`).
    pub(crate) fn wildcard_name(&self) -> Option<&str> {
        match &self.kind {
            Kind::ToolGlob(name) => Some(name),
            Kind::Mcp(name) if name.contains('*') => {
                // Only a literal server before the star: `mcp__github__*`.
                let after = &name["mcp__".len()..];
                let server_is_literal = after.find("__").is_some_and(|end| end > 0 && !after[..end].contains('*'));
                (!server_is_literal).then_some(name.as_str())
            }
            _ => None,
        }
    }

    /// A rule kept from before (in a store): read as [`Pattern::parse`] does, but for what earlier versions
    /// accepted and no longer do (a lower-case tool name, `Tool()`), which keeps its old meaning: only a
    /// tool of exactly that name, that is, none of Claude Code's. A kept rule that does not read at all is
    /// an error for the caller (a deny rule dropped would allow what it denied).
    pub fn parse_kept(text: &str) -> Result<Pattern, PatternError> {
        match Pattern::parse(text) {
            Err(PatternError::LowerCase(_) | PatternError::EmptyParentheses(_)) => Ok(Pattern {
                text: String::from(text.trim()),
                content: None,
                kind: Kind::Tool(String::from(text.trim())),
            }),
            other => other,
        }
    }

    /// Every call of the tool named exactly `name` (what `--auto-approve NAME` means; `Task` is `Agent`): no
    /// pattern syntax is read in the name.
    pub fn tool(name: &str) -> Pattern {
        Pattern { text: String::from(name), content: None, kind: Kind::Tool(String::from(canonical(name))) }
    }

    /// The pattern as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The pattern that covers a Bash command the way a person's "always allow" does, never wider than the
    /// request: when the second word is a plain subcommand (`git diff`, `npm run`), the program and it, then
    /// anything (`git diff *`); otherwise the very command (`ls -la`, `git -C repo status`: never the program
    /// alone with `*`, which for `git` would allow every git command), or no rule when the command holds a
    /// `*` (its pattern would read it as a wildcard) or is not one plain command. For other tools, the tool.
    pub fn suggest(tool_name: &str, command: Option<&str>) -> Option<Pattern> {
        let text = match (tool_name, command) {
            ("Bash", Some(command)) => match super::shell::for_allow(command).as_deref() {
                Some([part]) if !part.complex => {
                    let words: Vec<&str> = part.text.split(' ').collect();
                    let plain =
                        |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
                    // Never wider than the request: a program and its subcommand (`git diff *`), or the very
                    // command. Not the program alone with `*` (`git *` would allow every git command), and not
                    // past options before a subcommand (`git -C repo status`: which of `repo` and `status` is
                    // the subcommand depends on the program's options).
                    match words.as_slice() {
                        [first, second, ..] if plain(first) && plain(second) && !second.starts_with('-') => {
                            alloc::format!("Bash({first} {second} *)")
                        }
                        // A `*` in the command would be a wildcard in its pattern, and Claude Code reads `\`,
                        // `(` and `)` in a rule as escapes and bounds: no rule then.
                        _ if part.text.contains(['*', '(', ')', '\\']) => return None,
                        _ => alloc::format!("Bash({})", part.text),
                    }
                }
                _ => return None,
            },
            // A Bash call without a command to read is no model for a rule (never "every command").
            ("Bash", None) => return None,
            (tool, _) => String::from(tool),
        };
        // A tool named with a `*` would make a rule for every tool its name matches: none then.
        Pattern::parse(&text).ok().filter(|p| !matches!(&p.kind, Kind::Mcp(n) | Kind::ToolGlob(n) if n.contains('*')))
    }
}

impl Pattern {
    /// The pattern as Claude Code's settings and `updatedPermissions` spell a rule: the tool (or MCP name),
    /// and what is between the parentheses, if anything, unescaped (`Bash(git diff *)` → `("Bash",
    /// Some("git diff *"))`; `Bash(echo \(x\))` → `("Bash", Some("echo (x)"))`). The tool as written.
    pub fn tool_and_content(&self) -> (&str, Option<&str>) {
        let tool = self.text.split_once('(').map_or(self.text.as_str(), |(tool, _)| tool);
        (tool, self.content.as_deref())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Claude Code's reading of `Tool(content)`: the name, and the content unescaped (`\(` → `(`, `\)` → `)`,
/// then `\\` → `\`). The content runs from the first `(` not escaped (after an even run of backslashes) to
/// the last `)` not escaped, which must end the text; the name holds no parenthesis. Where Claude Code reads
/// a malformed rule as a tool name with parentheses in it (never a real tool), uplink refuses it.
fn split_call(text: &str) -> Result<(&str, Option<String>), PatternError> {
    let bytes = text.as_bytes();
    let escaped = |at: usize| bytes[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1;
    let open = (0..bytes.len()).find(|&i| bytes[i] == b'(' && !escaped(i));
    let close = (0..bytes.len()).rev().find(|&i| bytes[i] == b')' && !escaped(i));
    match (open, close) {
        (None, None) if !text.contains(['(', ')']) => Ok((text, None)),
        (Some(open), Some(close)) if close == bytes.len() - 1 && close > open && !text[..open].contains(['(', ')']) => {
            let raw = &text[open + 1..close];
            if raw.contains("\\*") {
                return Err(PatternError::EscapedStar);
            }
            let content = raw.replace("\\(", "(").replace("\\)", ")").replace("\\\\", "\\");
            Ok((&text[..open], Some(content)))
        }
        _ => Err(PatternError::Syntax),
    }
}

/// Claude Code's writing of a rule's content: `\` → `\\`, `(` → `\(`, `)` → `\)` (what
/// [`Pattern::parse`] reads back).
pub fn escape_content(content: &str) -> String {
    content.replace('\\', "\\\\").replace('(', "\\(").replace(')', "\\)")
}

/// Whether an MCP tool name matches an `mcp__…` pattern.
pub(crate) fn mcp_matches(pattern: &str, tool: &str) -> bool {
    if pattern.contains('*') {
        return star_match(pattern.as_bytes(), tool.as_bytes());
    }
    // `mcp__server` is every tool of that server; `mcp__server__tool` is one.
    let server_only = pattern["mcp__".len()..].find("__").is_none();
    tool == pattern
        || (server_only
            && tool.len() > pattern.len() + 2
            && tool.starts_with(pattern)
            && tool[pattern.len()..].starts_with("__"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses_and_the_rest_is_refused_with_the_reason() {
        for ok in [
            "Bash",
            "Bash(*)",
            "Bash(npm run build)",
            "Bash(npm run test:*)",
            "Bash(git diff *)",
            "Read(./src/**)",
            "Edit(/etc/**)",
            "Read(~/.ssh/**)",
            "WebFetch(domain:example.com)",
            "mcp__github",
            "mcp__github__create_issue",
            "mcp__github__*",
            "WebSearch",
            "Write",
            "B*sh",
            "*",
            r"Bash(echo \(x\))",
        ] {
            assert!(Pattern::parse(ok).is_ok(), "{ok}: {:?}", Pattern::parse(ok));
        }
        for (bad, want) in [
            ("", PatternError::ToolName),
            ("Bash(ls", PatternError::Syntax),
            ("Ba sh", PatternError::ToolName),
            ("Write(src/**)", PatternError::WriteAsEdit("Write".into())),
            ("Grep(src/**)", PatternError::ReadAsRead("Grep".into())),
            ("WebSearch(x)", PatternError::NoSpecifier("WebSearch".into())),
            ("Agent(Explore)", PatternError::NoSpecifier("Agent".into())),
            ("Skill(pdf)", PatternError::NoSpecifier("Skill".into())),
            ("Bash()", PatternError::EmptyParentheses("Bash".into())),
            ("Read( )", PatternError::EmptyParentheses("Read".into())),
            ("bash", PatternError::LowerCase("did you mean `Bash`?".into())),
            ("webfetch(domain:x.com)", PatternError::LowerCase("did you mean `WebFetch`?".into())),
            (r"Bash(echo \*)", PatternError::EscapedStar),
            ("Bash(a) b", PatternError::Syntax),
            ("Bash(a))(", PatternError::Syntax),
            ("Bash)(", PatternError::Syntax),
            ("Bash(command:rm *)", PatternError::FieldForm),
            ("Read(../x)", PatternError::Path),
            ("WebFetch(example.com)", PatternError::Domain),
            ("WebFetch(domain:a/b)", PatternError::Domain),
            ("mcp__github(x)", PatternError::McpSpecifier),
            ("B*sh(x)", PatternError::ToolName),
        ] {
            assert_eq!(Pattern::parse(bad), Err(want), "{bad}");
        }
        assert!(matches!(Pattern::parse("snake"), Err(PatternError::LowerCase(m)) if m.contains("none of")));
    }

    #[test]
    fn escapes_are_read_as_claude_code_reads_them() {
        let content = |p: &str| Pattern::parse(p).expect("parses").tool_and_content().1.map(String::from);
        assert_eq!(content(r"Bash(echo \(x\))").as_deref(), Some("echo (x)"));
        assert_eq!(content(r"Bash(printf a\\b)").as_deref(), Some(r"printf a\b"));
        // The first `(` not escaped opens, the last `)` not escaped closes.
        assert_eq!(content(r"Bash(echo (a) (b))").as_deref(), Some("echo (a) (b)"));
        assert_eq!(content("Bash(*)"), None);
        for text in ["echo (x)", r"a\b", r"\(", "((", "x)y("] {
            let rule = alloc::format!("Bash({})", escape_content(text));
            assert_eq!(content(&rule).as_deref(), Some(text), "{rule}");
        }
    }

    #[test]
    fn wildcard_tool_names_only_deny_or_ask_and_old_names_are_todays() {
        use super::super::Effect;
        for allow in ["mcp__*", "mcp__gh*__x", "Web*", "*"] {
            assert!(matches!(Pattern::parse_for(Effect::Allow, allow), Err(PatternError::WildcardAllow(_))), "{allow}");
            assert!(Pattern::parse_for(Effect::Deny, allow).is_ok(), "{allow}");
            assert!(Pattern::parse_for(Effect::Ask, allow).is_ok(), "{allow}");
        }
        assert!(Pattern::parse_for(Effect::Allow, "mcp__github__*").is_ok());
        assert_eq!(Pattern::parse("Task").expect("parses").kind, Kind::Tool("Agent".into()));
        assert_eq!(Pattern::parse("KillBash").expect("parses").kind, Kind::Tool("TaskStop".into()));
        assert_eq!(Pattern::tool("Task").kind, Kind::Tool("Agent".into()));
        // Kept rules that no longer read keep their old meaning: a tool of exactly that name.
        assert_eq!(Pattern::parse_kept("bash").expect("kept").kind, Kind::Tool("bash".into()));
        assert_eq!(Pattern::parse_kept("Bash()").expect("kept").kind, Kind::Tool("Bash()".into()));
        assert!(Pattern::parse_kept("Bash(ls").is_err());
    }

    #[test]
    fn command_patterns() {
        let m = |p: &str, c: &str| match Pattern::parse(p).expect("parses").kind {
            Kind::Command(cp) => cp.matches(c),
            other => panic!("{other:?}"),
        };
        assert!(m("Bash(npm run build)", "npm run build"));
        assert!(!m("Bash(npm run build)", "npm run build --watch"));
        assert!(m("Bash(npm run test:*)", "npm run test"));
        assert!(m("Bash(npm run test:*)", "npm run test -- --ci"));
        assert!(!m("Bash(npm run test:*)", "npm run testing"), "the legacy form keeps a word boundary");
        assert!(m("Bash(git diff *)", "git diff"));
        assert!(m("Bash(git diff *)", "git diff HEAD~1"));
        assert!(!m("Bash(git diff *)", "git difftool"));
        assert!(m("Bash(git * main)", "git checkout main"));
        assert!(!m("Bash(git * main)", "git checkout"), "two wildcards: none is optional");
        assert!(m("Bash(ls*)", "lsof"));
        assert!(m("Bash(npm   run  *)", "npm run x"), "whitespace in a pattern is collapsed");
    }

    #[test]
    fn mcp_names() {
        assert!(mcp_matches("mcp__github", "mcp__github__create_issue"));
        assert!(!mcp_matches("mcp__github", "mcp__githubx__a"));
        assert!(mcp_matches("mcp__github__create_issue", "mcp__github__create_issue"));
        assert!(!mcp_matches("mcp__github__create_issue", "mcp__github__create_issue_x"));
        assert!(mcp_matches("mcp__github__*", "mcp__github__list"));
    }

    #[test]
    fn suggestions_cover_the_command_and_its_subcommand() {
        let s = |c: &str| Pattern::suggest("Bash", Some(c)).map(|p| String::from(p.text()));
        assert_eq!(s("git diff HEAD~1").as_deref(), Some("Bash(git diff *)"));
        assert_eq!(s("npm run test -- --ci").as_deref(), Some("Bash(npm run *)"));
        // Never the program alone with `*`, nor a guess past options: the very command instead.
        assert_eq!(s("ls -la").as_deref(), Some("Bash(ls -la)"));
        assert_eq!(s("git -C repo status").as_deref(), Some("Bash(git -C repo status)"));
        assert_eq!(s("git").as_deref(), Some("Bash(git)"));
        assert_eq!(s("ls -la *.rs"), None, "a `*` would widen it");
        assert_eq!(s(r"grep -e a\\b x"), None, "Claude Code would read the backslash as an escape");
        assert_eq!(s("ls && rm x"), None);
        assert_eq!(s("echo $(id)"), None);
        assert_eq!(Pattern::suggest("Read", None).map(|p| String::from(p.text())).as_deref(), Some("Read"));
    }
}

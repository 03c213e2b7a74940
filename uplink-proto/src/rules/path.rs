//! File paths as the `Read(…)` and `Edit(…)` rules see them.
//!
//! A rule's path pattern is gitignore style (`*` within a segment, `**` across segments, `?` one character)
//! and anchored by its first characters:
//! - `//path` and `/path`: absolute. (Claude Code reads `/path` relative to its settings file; the gateway
//!   has no settings file, so both are absolute here.)
//! - `~/path`: under a home directory: `/home/<anyone>/path`, `/Users/<anyone>/path` or `/root/path`.
//! - `path` or `./path`: relative to the agent's working directory, which the gateway does not know. It is
//!   read the safe way: an **allow** rule matches only a path the agent wrote relative; a **deny** or **ask**
//!   rule matches the pattern under any directory.
//!
//! The tool's path is normalised first (`.` and empty segments dropped, `..` applied), so
//! `/src/../etc/passwd` is `/etc/passwd` and cannot slip past a rule on either side.

use alloc::string::String;
use alloc::vec::Vec;

use crate::glob::path_match;

/// Where a pattern is anchored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// From the root.
    Absolute,
    /// From some home directory.
    Home,
    /// From the agent's working directory.
    Relative,
}

/// A parsed path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathPattern {
    anchor: Anchor,
    segments: Vec<String>,
}

impl PathPattern {
    /// Reads `text` (the rule's specifier).
    pub(crate) fn parse(text: &str) -> Option<PathPattern> {
        let (anchor, rest) = if let Some(rest) = text.strip_prefix("//") {
            (Anchor::Absolute, rest)
        } else if let Some(rest) = text.strip_prefix('/') {
            (Anchor::Absolute, rest)
        } else if let Some(rest) = text.strip_prefix("~/") {
            (Anchor::Home, rest)
        } else {
            (Anchor::Relative, text.strip_prefix("./").unwrap_or(text))
        };
        let segments: Vec<String> = rest.split('/').filter(|s| !s.is_empty() && *s != ".").map(String::from).collect();
        if segments.iter().any(|s| s == "..") || (segments.is_empty() && anchor == Anchor::Relative) {
            return None;
        }
        Some(PathPattern { anchor, segments })
    }

    /// Whether `path` (the tool's) matches; `generous` for deny and ask rules.
    pub(crate) fn matches(&self, path: &str, generous: bool) -> bool {
        let Some((absolute, segments)) = normalise(path) else { return generous };
        let pattern: Vec<&str> = self.segments.iter().map(String::as_str).collect();
        let text: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (&self.anchor, absolute) {
            (Anchor::Absolute, true) => path_match(&pattern, &text),
            (Anchor::Absolute, false) => false,
            (Anchor::Home, true) => {
                let under = match text.first().copied() {
                    Some("root") => 1,
                    Some("home") | Some("Users") if text.len() >= 2 => 2,
                    _ => return false,
                };
                path_match(&pattern, &text[under..])
            }
            (Anchor::Home, false) => false,
            (Anchor::Relative, false) => path_match(&pattern, &text),
            (Anchor::Relative, true) => generous && (0..=text.len()).any(|from| path_match(&pattern, &text[from..])),
        }
    }
}

/// `path` as (absolute?, segments) with `.`, empty segments and `..` resolved; `None` when `..` climbs above
/// the start of a relative path (the gateway cannot know where that is).
fn normalise(path: &str) -> Option<(bool, Vec<String>)> {
    let absolute = path.starts_with('/');
    let mut out: Vec<String> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() && !absolute {
                    return None;
                }
            }
            s => out.push(String::from(s)),
        }
    }
    Some((absolute, out))
}

#[cfg(test)]
mod tests {
    use super::PathPattern;

    fn m(pattern: &str, path: &str, generous: bool) -> bool {
        PathPattern::parse(pattern).expect("a pattern").matches(path, generous)
    }

    #[test]
    fn anchors_and_normalisation() {
        assert!(m("/etc/**", "/etc/passwd", false));
        assert!(m("//etc/**", "/etc/ssh/sshd_config", false));
        assert!(!m("/etc/**", "/home/etc/passwd", false));
        assert!(m("/etc/**", "/srv/../etc/passwd", false), "`..` is applied before matching");
        assert!(!m("/srv/**", "/srv/../etc/passwd", false), "and cannot widen an allow");
        assert!(m("~/.ssh/**", "/home/ana/.ssh/id_ed25519", false));
        assert!(m("~/.ssh/**", "/Users/ana/.ssh/id_ed25519", false));
        assert!(m("~/.ssh/**", "/root/.ssh/id_ed25519", false));
        assert!(!m("~/.ssh/**", "/etc/.ssh/x", false));
        // Relative: an allow vouches only for a relative path; a deny covers it under any directory.
        assert!(m("./src/**", "src/main.rs", false));
        assert!(m("src/**", "./src/main.rs", false));
        assert!(!m("./src/**", "/work/app/src/main.rs", false));
        assert!(m("./src/**", "/work/app/src/main.rs", true));
        assert!(m("*.env", "/work/app/.env", true));
        assert!(!m("./src/**", "../src/x", false));
        assert!(m("./src/**", "../src/x", true), "a path the gateway cannot place is matched by a deny");
        assert!(PathPattern::parse("../x").is_none());
        assert!(PathPattern::parse("").is_none());
    }
}

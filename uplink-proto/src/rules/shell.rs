//! Reading a Bash command the way the rules must: as the simple commands it runs, never fooled by quoting.
//!
//! The reader knows single and double quotes, backslash escapes, the control operators (`;`, `&&`, `||`,
//! `|`, `|&`, `&`, newline), redirections, command substitution (`$(…)`, backticks), process substitution
//! (`<(…)`, `>(…)`) and parentheses. It does not run or expand anything. It reads for two purposes:
//! - **allow**: the simple commands, each with its unquoted whitespace collapsed, but only
//!   when the whole line is plain: a substitution, a parenthesis, an unbalanced quote or a trailing
//!   backslash anywhere makes it unreadable (`None`), and a part with a redirection other than to
//!   `/dev/null` or between descriptors is marked complex. An allow rule must match every part, and no
//!   complex one.
//! - **deny and ask**: every fragment that could run, read generously: the simple commands,
//!   the text inside substitutions and parentheses too, each also without leading assignments, wrappers
//!   (`timeout 5`, `nice`, `nohup`, `env`, `sudo`, `exec`, `command`, `time`, `xargs`) and keywords (`if`,
//!   `then`, `do`, `!`, …). A deny rule matching any of them denies the whole line.

use alloc::string::String;
use alloc::vec::Vec;

/// One simple command, as an allow rule sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// The command's text: trimmed, unquoted runs of whitespace collapsed to one space, quotes kept as typed.
    pub(crate) text: String,
    /// It redirects to or from a file (or does something else an allow rule must not wave through).
    pub(crate) complex: bool,
}

/// What the scanner does at an unquoted character.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Mode {
    Allow,
    Deny,
}

struct Scan {
    parts: Vec<Part>,
    current: Part,
    /// Something was seen that makes the line unreadable for allow rules.
    unreadable: bool,
}

impl Scan {
    fn end_part(&mut self) {
        let text = self.current.text.trim_end_matches(' ').trim_start_matches(' ');
        if !text.is_empty() {
            let part = Part { text: String::from(text), complex: self.current.complex };
            self.parts.push(part);
        }
        self.current = Part { text: String::new(), complex: false };
    }

    fn push(&mut self, c: char) {
        if c == ' ' && (self.current.text.is_empty() || self.current.text.ends_with(' ')) {
            return;
        }
        self.current.text.push(c);
    }
}

fn scan(command: &str, mode: Mode) -> Scan {
    let chars: Vec<char> = command.chars().collect();
    let mut s = Scan { parts: Vec::new(), current: Part { text: String::new(), complex: false }, unreadable: false };
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                // An escaped character is literal; a backslash-newline joins lines.
                match at(i + 1) {
                    Some('\n') => {}
                    Some(next) => {
                        s.push('\\');
                        s.push(next);
                    }
                    None => s.unreadable = true,
                }
                i += 2;
                continue;
            }
            '\'' => {
                // Literal to the next quote.
                match chars[i + 1..].iter().position(|&q| q == '\'') {
                    Some(len) => {
                        chars[i..i + len + 2].iter().for_each(|&q| s.current.text.push(q));
                        i += len + 2;
                    }
                    None => {
                        s.unreadable = true;
                        chars[i..].iter().for_each(|&q| s.current.text.push(q));
                        i = chars.len();
                    }
                }
                continue;
            }
            '"' => {
                s.current.text.push('"');
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    let d = chars[i];
                    if d == '\\' && i + 1 < chars.len() {
                        s.current.text.push(d);
                        s.current.text.push(chars[i + 1]);
                        i += 2;
                        continue;
                    }
                    if d == '"' {
                        s.current.text.push('"');
                        i += 1;
                        closed = true;
                        break;
                    }
                    if d == '`' || (d == '$' && at(i + 1) == Some('(')) {
                        // A substitution runs even inside double quotes.
                        s.unreadable = true;
                        if mode == Mode::Deny {
                            // Read what is inside as commands of their own.
                            s.end_part();
                            i += if d == '`' { 1 } else { 2 };
                            continue;
                        }
                    }
                    s.current.text.push(d);
                    i += 1;
                }
                if !closed {
                    s.unreadable = true;
                }
                continue;
            }
            '`' | '(' | ')' => {
                s.unreadable = true;
                if mode == Mode::Deny {
                    s.end_part();
                    i += 1;
                    continue;
                }
            }
            '$' if at(i + 1) == Some('(') => {
                s.unreadable = true;
                if mode == Mode::Deny {
                    s.end_part();
                    i += 2;
                    continue;
                }
            }
            ';' | '\n' => {
                s.end_part();
                i += 1;
                continue;
            }
            '&' | '|' => {
                if c == '&' && at(i + 1) == Some('>') {
                    // `&>file`: both outputs to a file.
                    let (len, harmless) = redirect_target(&chars, i + 2);
                    s.current.complex |= !harmless;
                    chars[i..i + 2 + len].iter().for_each(|&q| s.push(q));
                    i += 2 + len;
                    continue;
                }
                s.end_part();
                // `&&`, `||`, `|&` are one operator.
                i += if matches!((c, at(i + 1)), ('&', Some('&')) | ('|', Some('|')) | ('|', Some('&'))) {
                    2
                } else {
                    1
                };
                continue;
            }
            '>' | '<' => {
                if mode == Mode::Deny && at(i + 1) == Some('(') {
                    // Process substitution: what is inside runs.
                    s.unreadable = true;
                    s.end_part();
                    i += 2;
                    continue;
                }
                if at(i + 1) == Some('(') {
                    s.unreadable = true;
                }
                let mut j = i + 1;
                if c == '>' && matches!(at(j), Some('>') | Some('|')) {
                    j += 1;
                }
                let harmless = if c == '>' && at(j) == Some('&') && at(j + 1).is_some_and(|d| d.is_ascii_digit()) {
                    // `>&2`, `2>&1`: between descriptors.
                    j += 2;
                    while at(j).is_some_and(|d| d.is_ascii_digit()) {
                        j += 1;
                    }
                    true
                } else if c == '>' {
                    let (len, harmless) = redirect_target(&chars, j);
                    j += len;
                    harmless
                } else {
                    false
                };
                s.current.complex |= !harmless;
                chars[i..j].iter().for_each(|&q| s.push(q));
                i = j;
                continue;
            }
            ' ' | '\t' | '\r' => {
                s.push(' ');
                i += 1;
                continue;
            }
            _ => {}
        }
        s.push(c);
        i += 1;
    }
    s.end_part();
    s
}

/// The target of an output redirection starting at `from`: how many characters it takes (spaces before it
/// included), and whether it is `/dev/null`.
fn redirect_target(chars: &[char], from: usize) -> (usize, bool) {
    let mut j = from;
    while chars.get(j) == Some(&' ') {
        j += 1;
    }
    let start = j;
    while chars.get(j).is_some_and(|c| !matches!(c, ' ' | '\t' | ';' | '&' | '|' | '\n' | '<' | '>')) {
        j += 1;
    }
    let target: String = chars[start..j].iter().collect();
    (j - from, target == "/dev/null")
}

/// The simple commands of `command` for allow rules, or `None` when the line is not plain enough for an
/// allow rule to vouch for it (see the [module docs](self)).
pub(crate) fn for_allow(command: &str) -> Option<Vec<Part>> {
    let s = scan(command, Mode::Allow);
    (!s.unreadable).then_some(s.parts)
}

/// Leading words that run the rest of the line as a command.
const WRAPPERS: &[&str] = &["timeout", "nice", "nohup", "env", "sudo", "exec", "command", "time", "xargs", "builtin"];
/// Wrapper options that take the next word as their value.
const OPTIONS_WITH_VALUES: &[&str] = &["-u", "-g", "-n", "-s", "-k", "-C", "-D", "-E", "-I", "-P", "-L"];
/// Keywords that may start a simple command's text after the line is split.
const KEYWORDS: &[&str] = &["if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "!", "{", "}"];

/// Every fragment of `command` a deny or ask rule should be checked against (see the [module docs](self)):
/// the whole line, each simple command, and each again without what leads it.
pub(crate) fn for_deny(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let whole = command.trim();
    if !whole.is_empty() {
        out.push(String::from(whole));
    }
    for part in scan(command, Mode::Deny).parts {
        let mut words: Vec<&str> = part.text.split(' ').collect();
        out.push(part.text.clone());
        // Strip what leads the command, one word at a time, keeping each form.
        while let Some(first) = words.first().copied() {
            let is_assignment = first
                .find('=')
                .is_some_and(|eq| eq > 0 && first[..eq].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            if !(KEYWORDS.contains(&first) || WRAPPERS.contains(&first) || is_assignment) {
                break;
            }
            words.remove(0);
            if WRAPPERS.contains(&first) {
                // The wrapper's own options and numbers: `timeout 5`, `nice -n 10`, `sudo -u root`.
                while let Some(w) = words.first().copied() {
                    if OPTIONS_WITH_VALUES.contains(&w) {
                        words.drain(..words.len().min(2));
                    } else if w.starts_with('-') || w.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                        words.remove(0);
                    } else {
                        break;
                    }
                }
            }
            if !words.is_empty() {
                out.push(words.join(" "));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(command: &str) -> Option<Vec<(String, bool)>> {
        for_allow(command).map(|parts| parts.into_iter().map(|p| (p.text, p.complex)).collect())
    }

    fn plain(parts: &[&str]) -> Option<Vec<(String, bool)>> {
        Some(parts.iter().map(|p| (String::from(*p), false)).collect())
    }

    #[test]
    fn plain_lines_split_at_every_control_operator() {
        assert_eq!(texts("npm run test"), plain(&["npm run test"]));
        assert_eq!(texts("  npm   run\ttest  "), plain(&["npm run test"]));
        assert_eq!(texts("a && b || c; d | e |& f & g\nh"), plain(&["a", "b", "c", "d", "e", "f", "g", "h"]));
        assert_eq!(texts("echo 'a && b; c' \"d | e\""), plain(&["echo 'a && b; c' \"d | e\""]));
        assert_eq!(texts("echo a\\;b"), plain(&["echo a\\;b"]));
        assert_eq!(texts("make 2>&1 | tail -5"), plain(&["make 2>&1", "tail -5"]));
        assert_eq!(texts("ls >/dev/null 2> /dev/null"), plain(&["ls >/dev/null 2> /dev/null"]));
        assert_eq!(texts("echo 'it''s'"), plain(&["echo 'it''s'"]));
    }

    #[test]
    fn what_an_allow_rule_must_not_vouch_for_is_unreadable_or_complex() {
        for unreadable in [
            "echo $(rm -rf /)",
            "echo `rm -rf /`",
            "echo \"$(id)\"",
            "echo \"`id`\"",
            "(rm -rf /)",
            "diff <(cat a) b",
            "tee >(sh)",
            "echo 'unbalanced",
            "echo \"unbalanced",
            "echo trailing\\",
        ] {
            assert_eq!(texts(unreadable), None, "{unreadable}");
        }
        assert_eq!(texts("npm test > ~/.bashrc"), Some(vec![(String::from("npm test > ~/.bashrc"), true)]));
        assert_eq!(texts("npm test >> out"), Some(vec![(String::from("npm test >> out"), true)]));
        assert_eq!(texts("npm test &> out"), Some(vec![(String::from("npm test &> out"), true)]));
        assert_eq!(texts("sh < script"), Some(vec![(String::from("sh < script"), true)]));
        // Single quotes keep everything literal, substitutions included.
        assert_eq!(texts("echo '$(id)'"), plain(&["echo '$(id)'"]));
    }

    #[test]
    fn deny_fragments_include_substitutions_and_commands_without_their_wrappers() {
        let f = for_deny("echo $(rm -rf /) && timeout 5 nice -n 10 rm -rf ~ ; FOO=1 sudo -u root rm x");
        for want in ["rm -rf /", "rm -rf ~", "rm x", "timeout 5 nice -n 10 rm -rf ~"] {
            assert!(f.iter().any(|x| x == want), "{want:?} not in {f:?}");
        }
        let f = for_deny("for f in *; do rm \"$f\"; done");
        assert!(f.iter().any(|x| x == "rm \"$f\""), "{f:?}");
        let f = for_deny("echo \"`rm -rf /`\"");
        assert!(f.iter().any(|x| x.starts_with("rm -rf /")), "{f:?}");
        let f = for_deny("cat <(rm -rf /)");
        assert!(f.iter().any(|x| x == "rm -rf /"), "{f:?}");
    }
}

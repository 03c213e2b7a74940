//! Reading a Bash command the way the rules must: as the simple commands it runs, never fooled by quoting.
//!
//! The reader knows single and double quotes, ANSI-C quotes (`$'…'`), backslash escapes, comments, the control
//! operators (`;`, `&&`, `||`, `|`, `|&`, `&`, newline), redirections, parameter expansions, command
//! substitution (`$(…)`, backticks), process substitution (`<(…)`, `>(…)`) and parentheses. It does not run or
//! expand anything. It reads for two purposes:
//! - **allow**: the simple commands, each with its unquoted blanks collapsed, but only when every construct in
//!   the line is one bash cannot turn into code, whatever the variables it expands hold (an allow-list,
//!   below). Anything else makes the line unreadable (`None`), and a part with a redirection other than to
//!   `/dev/null` or between descriptors is marked complex. An allow rule must match every part, and no complex
//!   one. The environment's own hooks (`PATH`, `BASH_ENV`, exported functions) are not the line's: they are
//!   trusted as they are.
//! - **deny and ask**: every fragment that could run, read generously: the simple commands, the text inside
//!   substitutions and parentheses too, each also without leading assignments, wrappers (`timeout 5`, `nice`,
//!   `nohup`, `env`, `sudo`, `exec`, `command`, `time`, `xargs`) and keywords (`if`, `then`, `do`, `!`, …). A
//!   deny rule matching any of them denies the whole line. A line that spells a command so that no fragment
//!   shows it (`r''m`, `$'\x72m'`, a variable) slips past a deny rule; only an allow rule's narrow reading
//!   is a guarantee, and such a line reaches a person unless an allow rule covers every command it runs.
//!
//! What an allow rule accepts (everything else sends the line to a person):
//! - words of plain characters, backslash escapes, `'…'`, `$'…'` (not as a command's name) and `"…"`; globs
//!   (`*`, `?`, `[…]`), brace expansion and `~` in arguments: they only make words;
//! - the parameter expansions `$NAME`, `${NAME}`, `$1`, `${10}` and `$@ $* $# $? $- $$ $!` (braced too),
//!   bare or inside double quotes: bash substitutes the value and never evaluates it; a `$` that starts no
//!   expansion (`echo $`) is a character;
//! - assignments before a command (`RUST_LOG=debug cargo test`), except to the variables bash assigns
//!   arithmetically (`HISTCMD`, `OPTIND`, `RANDOM`, `SECONDS`, `SRANDOM`; no word anywhere may look like
//!   one, since `set -k` makes it an assignment) and to array elements (`a[i]=`);
//! - comments (a word starting with `#`, to the end of its line), which are dropped;
//! - `!` only where history expansion cannot start (before a blank, `=`, the end of a line or a closing `"`),
//!   and no `^` starting a command;
//! - redirections to `/dev/null` and between descriptors (`2>&1`) with a plain descriptor number.
//!
//! Refused, because bash evaluates them (some through a variable's value: with `x='a[$(cmd)]'` in the
//! environment, `$((x))` runs `cmd`): arithmetic in every spelling (`$((…))`, `$[…]`, `((…))`), every other
//! `${…}` form (indirection `${!x}`, transformations `${x@P}`, subscripts `${a[i]}`, offsets `${x:i:j}`,
//! lengths, and the operators whose words are expanded: `${x:-w}`, `${x=w}`, `${x?w}`, `${x/p/r}`, …),
//! `$"…"` (its translation is expanded again), substitutions, parentheses, a `{var}>` redirection, and the
//! builtins and keywords that evaluate an operand as arithmetic or as a variable name (whose subscript is
//! arithmetic): `let`, `declare`, `typeset`, `local`, `export`, `readonly`, `printf` (`-v`), `read`, `test`
//! and `[` (`-v`), `[[`, `unset`, `wait` (`-p`), wherever they are the command (after `!`, `time`, `then`,
//! `command`, `builtin`, …), `coproc` and `function`, where a command may follow a name, and a command name
//! with a glob, a brace or `$'…'` (it may expand to one of those). What any other command does with its
//! arguments is its own business: `Bash(find *)` approves `find -exec`, `Bash(jobs *)` `jobs -x`,
//! `Bash(eval *)` anything.

use alloc::string::String;
use alloc::vec::Vec;

/// One simple command, as an allow rule sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// The command's text: trimmed, unquoted runs of blanks collapsed to one space, quotes kept as typed,
    /// comments dropped.
    pub(crate) text: String,
    /// It redirects to or from a file (or does something else an allow rule must not wave through).
    pub(crate) complex: bool,
}

/// How the scanner reads.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Mode {
    /// Narrowly, for allow rules: anything not on the allow-list makes the line unreadable.
    Allow,
    /// Generously, for deny and ask rules; `comments`: whether a `#` starting a word starts a comment.
    Deny { comments: bool },
}

/// Commands an allow rule never vouches for: the bash builtins and keywords that evaluate an operand as
/// arithmetic or as a variable name (whose subscript is arithmetic), and `coproc` and `function`, where a
/// command may follow a name.
const REFUSED_COMMANDS: &[&str] = &[
    "let", "declare", "typeset", "local", "export", "readonly", "printf", "read", "test", "[", "[[", "unset", "wait",
    "coproc", "function",
];
/// Keywords and builtins after which the next word is still in a command's place.
const LEADING_KEYWORDS: &[&str] =
    &["!", "time", "if", "then", "else", "elif", "do", "while", "until", "{", "}", "command", "builtin"];
/// Of those, the ones that take options (`time -p`, `command -p`).
const WITH_OPTIONS: &[&str] = &["time", "command", "builtin"];
/// Variables bash assigns arithmetically (bash 5.2): an assignment to one evaluates its value.
const ARITHMETIC_VARIABLES: &[&str] = &["HISTCMD", "OPTIND", "RANDOM", "SECONDS", "SRANDOM"];

/// Where a redirection's target word will go.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Target {
    /// Output: harmless when the target is `/dev/null`.
    Output,
    /// Input, or anything else: never harmless.
    Other,
}

struct Scan {
    mode: Mode,
    parts: Vec<Part>,
    current: Part,
    /// Something was seen that makes the line unreadable for allow rules.
    unreadable: bool,
    /// Where the word being read starts in `current.text`, while one is being read.
    word: Option<usize>,
    /// Allow: the next word may still be the current part's command name (or an assignment before it).
    command_place: bool,
    /// Allow: the last leading keyword takes options, which are skipped.
    options: bool,
    /// The next word is a redirection's target.
    target: Option<Target>,
    /// Deny without comments: a `#` was seen where bash would start a comment.
    comment_seen: bool,
}

impl Scan {
    fn new(mode: Mode) -> Scan {
        Scan {
            mode,
            parts: Vec::new(),
            current: Part { text: String::new(), complex: false },
            unreadable: false,
            word: None,
            command_place: true,
            options: false,
            target: None,
            comment_seen: false,
        }
    }

    fn allow(&self) -> bool {
        self.mode == Mode::Allow
    }

    /// Ends the word being read, if any, and judges it where it stands.
    fn end_word(&mut self) {
        let Some(start) = self.word.take() else {
            return;
        };
        let raw = &self.current.text[start..];
        if let Some(target) = self.target.take() {
            self.current.complex |= !(target == Target::Output && raw == "/dev/null");
        } else if self.allow() && self.command_place {
            match command_word(raw, self.options) {
                Word::Refused => self.unreadable = true,
                Word::Leading { options } => self.options = options,
                Word::Option | Word::Assignment => {}
                Word::Command => self.command_place = false,
            }
        } else if self.allow() && matches!(assignment(raw), Some((name, _)) if ARITHMETIC_VARIABLES.contains(&name)) {
            // With `set -k` (which `SHELLOPTS` in the environment can turn on) it is an assignment too.
            self.unreadable = true;
        }
    }

    fn end_part(&mut self) {
        self.end_word();
        if self.target.take().is_some() {
            // A redirection without a target.
            self.current.complex = true;
        }
        let text = self.current.text.trim_end_matches(' ').trim_start_matches(' ');
        if !text.is_empty() {
            let part = Part { text: String::from(text), complex: self.current.complex };
            self.parts.push(part);
        }
        self.current = Part { text: String::new(), complex: false };
        self.command_place = true;
        self.options = false;
    }

    /// A blank between words: collapsed into one space.
    fn blank(&mut self) {
        self.end_word();
        if !(self.current.text.is_empty() || self.current.text.ends_with(' ')) {
            self.current.text.push(' ');
        }
    }

    /// A character of a word.
    fn push(&mut self, c: char) {
        if self.word.is_none() {
            self.word = Some(self.current.text.len());
        }
        self.current.text.push(c);
    }

    fn push_all(&mut self, chars: &[char]) {
        chars.iter().for_each(|&c| self.push(c));
    }
}

/// What a word in a command's place is.
enum Word {
    /// An allow rule must not vouch for the command.
    Refused,
    /// A keyword or wrapper: the next word is in a command's place (and options may come first).
    Leading { options: bool },
    /// An option of the keyword before it.
    Option,
    /// An assignment before the command.
    Assignment,
    /// The command's name.
    Command,
}

/// Judges `raw`, a word as typed, standing where a command's name may be.
fn command_word(raw: &str, options: bool) -> Word {
    match assignment(raw) {
        Some((name, false)) if !ARITHMETIC_VARIABLES.contains(&name) => return Word::Assignment,
        // An array element's assignment evaluates its subscript (a command so named is no loss).
        Some(_) => return Word::Refused,
        None => {}
    }
    if options && raw.starts_with('-') {
        return Word::Option;
    }
    if raw.contains("$'") {
        // Its value is not read here.
        return Word::Refused;
    }
    // The name as bash looks it up: quotes and backslashes removed.
    let unquoted: String;
    let name = if raw.contains(['\'', '"', '\\']) {
        unquoted = raw.chars().filter(|c| !matches!(c, '\'' | '"' | '\\')).collect();
        unquoted.as_str()
    } else {
        raw
    };
    if LEADING_KEYWORDS.contains(&name) {
        return Word::Leading { options: WITH_OPTIONS.contains(&name) };
    }
    if REFUSED_COMMANDS.contains(&name) || raw.contains(['*', '?', '[', ']', '{', '}']) {
        // An evaluating builtin, or a name a glob or brace expansion may turn into one.
        return Word::Refused;
    }
    Word::Command
}

/// The variable `raw` assigns to when it is an assignment (`NAME=…`, `NAME+=…`), and whether it may be an
/// array element's (`NAME[…`).
fn assignment(raw: &str) -> Option<(&str, bool)> {
    if !raw.starts_with(is_name_start) {
        return None;
    }
    let (name, rest) = raw.split_at(raw.find(|c: char| !is_name(c)).unwrap_or(raw.len()));
    if rest.starts_with('=') || rest.starts_with("+=") {
        Some((name, false))
    } else if rest.starts_with('[') {
        Some((name, true))
    } else {
        None
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Special parameters: `$@`, `$*`, `$#`, `$?`, `$-`, `$$`, `$!`.
fn is_special(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!')
}

/// The length of `${…}` at `from` when it is one of the plain forms (`${NAME}`, `${10}`, `${@}`, …).
fn plain_braced(chars: &[char], from: usize) -> Option<usize> {
    let at = |i: usize| chars.get(i).copied();
    let mut j = from + 2;
    match at(j)? {
        c if is_name_start(c) => {
            while at(j).is_some_and(is_name) {
                j += 1;
            }
        }
        c if c.is_ascii_digit() => {
            while at(j).is_some_and(|d| d.is_ascii_digit()) {
                j += 1;
            }
        }
        c if is_special(c) => j += 1,
        _ => return None,
    }
    (at(j)? == '}').then_some(j + 1 - from)
}

/// Reads the `$` at `i` (unquoted, or inside double quotes when `quoted`); returns where reading goes on.
fn dollar(s: &mut Scan, chars: &[char], i: usize, quoted: bool) -> usize {
    let at = |i: usize| chars.get(i).copied();
    match at(i + 1) {
        Some('(') => {
            // Command substitution or arithmetic: it runs.
            s.unreadable = true;
            if !s.allow() {
                // Read what is inside as commands of their own.
                s.end_part();
                return i + 2;
            }
            s.push('$');
            i + 1
        }
        Some('\'') if !quoted => {
            // ANSI-C quoting: literal up to the first `'` not escaped by a backslash.
            let mut j = i + 2;
            while j < chars.len() && chars[j] != '\'' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            if j >= chars.len() {
                s.unreadable = true;
                s.push_all(&chars[i..]);
                return chars.len();
            }
            s.push_all(&chars[i..=j]);
            j + 1
        }
        Some('"') if !quoted => {
            // A locale string: its translation is expanded again.
            s.unreadable = true;
            s.push('$');
            i + 1
        }
        Some('{') => {
            if let Some(len) = plain_braced(chars, i) {
                s.push_all(&chars[i..i + len]);
                return i + len;
            }
            // Every other form can evaluate (indirection, subscripts, offsets, operators, transformations).
            s.unreadable = true;
            s.push('$');
            i + 1
        }
        Some('[') => {
            // Legacy arithmetic.
            s.unreadable = true;
            s.push('$');
            i + 1
        }
        Some(c) if is_name_start(c) => {
            let mut j = i + 1;
            while at(j).is_some_and(is_name) {
                j += 1;
            }
            s.push_all(&chars[i..j]);
            j
        }
        Some(c) if c.is_ascii_digit() || is_special(c) => {
            // `$$'…'` is the process id and a quoted word; `$#` starts no comment.
            s.push_all(&chars[i..i + 2]);
            i + 2
        }
        _ => {
            // A `$` that starts nothing is itself.
            s.push('$');
            i + 1
        }
    }
}

/// Whether a `!` at `i` could start a history expansion (in an interactive shell).
fn history(chars: &[char], i: usize, quoted: bool) -> bool {
    match chars.get(i + 1) {
        None | Some(' ' | '\t' | '\n' | '=') => false,
        Some('"') => !quoted,
        Some(_) => true,
    }
}

fn scan(command: &str, mode: Mode) -> Scan {
    let chars: Vec<char> = command.chars().collect();
    let mut s = Scan::new(mode);
    let allow = mode == Mode::Allow;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied();
    while i < chars.len() {
        if allow && s.unreadable {
            return s;
        }
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
                        s.push_all(&chars[i..i + len + 2]);
                        i += len + 2;
                    }
                    None => {
                        s.unreadable = true;
                        s.push_all(&chars[i..]);
                        i = chars.len();
                    }
                }
                continue;
            }
            '"' => {
                s.push('"');
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    if allow && s.unreadable {
                        return s;
                    }
                    let d = chars[i];
                    match d {
                        '\\' if i + 1 < chars.len() => {
                            s.push(d);
                            s.push(chars[i + 1]);
                            i += 2;
                        }
                        '"' => {
                            s.push('"');
                            i += 1;
                            closed = true;
                            break;
                        }
                        '$' => i = dollar(&mut s, &chars, i, true),
                        '`' => {
                            // A substitution runs even inside double quotes.
                            s.unreadable = true;
                            if !allow {
                                // Read what is inside as commands of their own.
                                s.end_part();
                            }
                            i += 1;
                        }
                        '!' if allow && history(&chars, i, true) => s.unreadable = true,
                        _ => {
                            s.push(d);
                            i += 1;
                        }
                    }
                }
                if !closed {
                    s.unreadable = true;
                }
                continue;
            }
            '$' => {
                i = dollar(&mut s, &chars, i, false);
                continue;
            }
            '#' if s.word.is_none() => {
                // A word starting with `#` starts a comment, to the end of the line.
                if mode == (Mode::Deny { comments: false }) {
                    s.comment_seen = true;
                } else {
                    i = chars[i..].iter().position(|&q| q == '\n').map_or(chars.len(), |n| i + n);
                    continue;
                }
            }
            '!' if allow && history(&chars, i, false) => s.unreadable = true,
            '^' if allow && s.current.text.is_empty() => s.unreadable = true,
            '`' | '(' | ')' => {
                s.unreadable = true;
                if !allow {
                    s.end_part();
                    i += 1;
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
                    redirection(&mut s, &chars[i..i + 2], Target::Output);
                    i += 2;
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
                if at(i + 1) == Some('(') {
                    // Process substitution: what is inside runs.
                    s.unreadable = true;
                    if !allow {
                        s.end_part();
                        i += 2;
                        continue;
                    }
                }
                let mut j = i + 1;
                if c == '>' && matches!(at(j), Some('>') | Some('|')) {
                    j += 1;
                }
                // `>&2`, `2>&1`: between descriptors, harmless (`>&2x` is a file named `2x`).
                let digits = chars[(j + 1).min(chars.len())..].iter().take_while(|d| d.is_ascii_digit()).count();
                let after = at(j + 1 + digits);
                if c == '>'
                    && at(j) == Some('&')
                    && digits > 0
                    && after.is_none_or(|d| matches!(d, ' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')'))
                {
                    j += 1 + digits;
                    redirection(&mut s, &chars[i..j], Target::Output);
                    s.target = None;
                } else {
                    if c == '>' && at(j) == Some('&') {
                        // `>&file`.
                        j += 1;
                    }
                    let target = if c == '>' { Target::Output } else { Target::Other };
                    redirection(&mut s, &chars[i..j], target);
                }
                i = j;
                continue;
            }
            ' ' | '\t' => {
                s.blank();
                i += 1;
                continue;
            }
            // Bash does not split words at a carriage return; the generous reading does.
            '\r' if !allow => {
                s.blank();
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

/// A redirection operator `op`; its target is the next word.
fn redirection(s: &mut Scan, op: &[char], target: Target) {
    if let Some(start) = s.word.take() {
        // A word touching the operator is its descriptor (`2>`), a `{var}>` naming one, or a word of its own.
        let raw = &s.current.text[start..];
        if raw.starts_with('{') {
            // `{a[i]}>` assigns the descriptor's number to a variable, evaluating its subscript.
            s.unreadable = true;
        } else if !raw.bytes().all(|b| b.is_ascii_digit()) {
            s.word = Some(start);
            s.end_word();
        }
    }
    if s.target.take().is_some() {
        // Two operators in a row: a syntax error.
        s.current.complex = true;
    }
    op.iter().for_each(|&c| s.current.text.push(c));
    s.target = Some(target);
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
/// the whole line, each simple command, and each again without what leads it. A line with a comment is read
/// both with and without it, whichever way bash would read it.
pub(crate) fn for_deny(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let whole = command.trim();
    if !whole.is_empty() {
        out.push(String::from(whole));
    }
    let plain = scan(command, Mode::Deny { comments: false });
    let mut commented = Vec::new();
    if plain.comment_seen {
        commented = scan(command, Mode::Deny { comments: true }).parts;
        commented.retain(|p| !plain.parts.iter().any(|q| q.text == p.text));
    }
    for part in plain.parts.into_iter().chain(commented) {
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
    fn comments_are_dropped_and_carriage_returns_are_no_blanks_for_allow() {
        assert_eq!(texts("npm run test # it's all: $[x] `id`"), plain(&["npm run test"]));
        assert_eq!(texts("ls #'\nrm -rf / #'"), plain(&["ls", "rm -rf /"]));
        assert_eq!(texts("echo a#b $# ${#} '#'"), plain(&["echo a#b $# ${#} '#'"]));
        assert_eq!(texts("ls\r -la"), plain(&["ls\r -la"]));
        assert_eq!(texts("ls $'\\'' ; rm -rf / #'"), plain(&["ls $'\\''", "rm -rf /"]));
    }

    #[test]
    fn redirections_are_judged_by_their_whole_target_word() {
        assert_eq!(texts("ls 2>/dev/null >> /dev/null >&2"), plain(&["ls 2>/dev/null >> /dev/null >&2"]));
        assert_eq!(texts("ls >'/dev/null'"), Some(vec![(String::from("ls >'/dev/null'"), true)]));
        assert_eq!(texts("ls >/dev/null'x y'"), Some(vec![(String::from("ls >/dev/null'x y'"), true)]));
        assert_eq!(texts("ls >&-"), Some(vec![(String::from("ls >&-"), true)]));
        assert_eq!(texts("ls >&2x"), Some(vec![(String::from("ls >&2x"), true)]));
        assert_eq!(texts("ls >&2;ls 2>&1|ls"), plain(&["ls >&2", "ls 2>&1", "ls"]));
        assert_eq!(texts("ls >"), Some(vec![(String::from("ls >"), true)]));
        // `{var}>` stores the descriptor in a variable, evaluating a subscript.
        assert_eq!(texts("ls {fd}>/dev/null"), None);
        // A redirection may come first; the command is the word after it.
        assert_eq!(texts("2>/dev/null ls"), plain(&["2>/dev/null ls"]));
        assert_eq!(texts("2>/dev/null printf -v v x"), None);
    }

    #[test]
    fn deny_fragments_read_a_line_with_a_comment_both_ways() {
        // Bash: a comment, then `rm` on the next line.
        let f = for_deny("ls #'\nrm -rf / #'");
        assert!(f.iter().any(|x| x == "rm -rf /"), "{f:?}");
        // Bash: no comment (inside `${…}`), and `rm` runs.
        let f = for_deny("echo ${x// #/}; rm -rf /");
        assert!(f.iter().any(|x| x == "rm -rf /"), "{f:?}");
        // The command without its comment, for exact patterns.
        let f = for_deny("rm -rf / # clean");
        assert!(f.iter().any(|x| x == "rm -rf /"), "{f:?}");
        // ANSI-C quotes end where bash ends them.
        let f = for_deny("ls $'\\'' ; rm -rf / ; echo '\''");
        assert!(f.iter().any(|x| x == "rm -rf /"), "{f:?}");
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

//! Wildcard matching shared by the credential scopes and the rules: iterative, one back-track point, linear in
//! practice and quadratic at worst, never recursive.

/// Whether `text` matches `pattern`, where `*` matches any run of bytes (`/` and spaces included) and every
/// other byte matches itself.
pub(crate) fn star_match(pattern: &[u8], text: &[u8]) -> bool {
    wildcard(pattern, text, |p| *p == b'*', |p, t| p == t)
}

/// Whether the path segments `text` match the glob segments `pattern` (gitignore style): a `**` segment
/// matches any number of segments, zero included; within a segment `*` matches any run of characters and
/// `?` any one, never a `/`.
pub(crate) fn path_match(pattern: &[&str], text: &[&str]) -> bool {
    wildcard(
        pattern,
        text,
        |p| *p == "**",
        |p, t| wildcard(p.as_bytes(), t.as_bytes(), |c| *c == b'*', |c, d| *c == b'?' || c == d),
    )
}

/// The one matcher: an element of `pattern` for which `is_star` holds matches any run of elements of
/// `text`; any other matches one element when `one` says so. One back-track point (the last star), so it is
/// never recursive.
fn wildcard<T>(pattern: &[T], text: &[T], is_star: impl Fn(&T) -> bool, one: impl Fn(&T, &T) -> bool) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && is_star(&pattern[p]) {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && one(&pattern[p], &text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(is_star)
}

#[cfg(test)]
mod tests {
    use super::{path_match, star_match};
    use alloc::vec::Vec;

    #[test]
    fn stars_match_any_run_and_everything_else_matches_itself() {
        let cases = [
            ("team-a/*", "team-a/web", true),
            ("team-a/*", "team-a/", true),
            ("team-a/*", "team-b/web", false),
            ("team-a/*", "team-a", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*-prod", "web-prod", true),
            ("*-prod", "web-prod-2", false),
            ("demo", "demo", true),
            ("demo", "Demo", false),
            ("**", "anything", true),
            ("git * main", "git checkout main", true),
            ("git * main", "git checkout mainline", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(star_match(pattern.as_bytes(), text.as_bytes()), want, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn path_globs_keep_stars_within_a_segment_and_double_stars_across() {
        let split = |s: &'static str| s.split('/').filter(|x| !x.is_empty()).collect::<Vec<_>>();
        let cases = [
            ("src/**", "src/a/b.rs", true),
            ("src/**", "src", true),
            ("src/*", "src/a/b.rs", false),
            ("src/*.rs", "src/main.rs", true),
            ("src/**/*.ts", "src/a/b/c.ts", true),
            ("src/**/*.ts", "src/c.ts", true),
            ("src/**/*.ts", "src/c.rs", false),
            ("etc/**", "etc", true),
            ("etc/**", "etcetera/x", false),
            ("*.env", ".env", true),
            ("?.txt", "a.txt", true),
            ("?.txt", "ab.txt", false),
            ("**/secrets/**", "home/u/secrets/k", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(path_match(&split(pattern), &split(text)), want, "{pattern} ~ {text}");
        }
    }
}

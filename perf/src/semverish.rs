//! node-semver ranges, approximately, on top of the `semver` crate (which speaks Cargo's
//! dialect): `a || b` alternatives, space-separated comparator sets, hyphen ranges
//! (`1.2 - 2.3.4`), bare versions as exact matches, `x`/`X`/`*` wildcards, `latest`, and
//! `npm:name@range` aliases. Good enough to resolve a real npm dependency tree for the swarm
//! workload; whatever it cannot parse falls back to the highest version (counted).

use semver::{Version, VersionReq};

/// A parsed range: any of the alternatives matches.
#[derive(Debug, Clone)]
pub(crate) struct Range {
    alternatives: Vec<VersionReq>,
}

impl Range {
    /// Parses a node-semver range; `None` if it is not one we understand.
    #[must_use]
    pub(crate) fn parse(text: &str) -> Option<Range> {
        let text = text.trim();
        if text.is_empty() || text == "*" || text == "latest" || text == "x" || text == "X" {
            return Some(Range {
                alternatives: vec![VersionReq::STAR],
            });
        }
        let mut alternatives = Vec::new();
        for part in text.split("||") {
            alternatives.push(VersionReq::parse(&to_cargo(part.trim())?).ok()?);
        }
        Some(Range { alternatives })
    }

    #[must_use]
    pub(crate) fn matches(&self, version: &Version) -> bool {
        self.alternatives.iter().any(|r| r.matches(version))
    }
}

fn normalize_version(v: &str) -> String {
    let v = v.trim_start_matches(['v', '=']);
    v.split('.')
        .map(|p| if p == "x" || p == "X" { "*" } else { p })
        .collect::<Vec<_>>()
        .join(".")
}

/// One comparator set in node syntax -> Cargo syntax.
fn to_cargo(set: &str) -> Option<String> {
    if set.is_empty() || set == "*" || set == "x" || set == "X" {
        return Some("*".to_owned());
    }
    if let Some((low, high)) = set.split_once(" - ") {
        return Some(format!(
            ">={}, <={}",
            normalize_version(low.trim()),
            normalize_version(high.trim())
        ));
    }
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_op: Option<&str> = None;
    for token in set.split_ascii_whitespace() {
        if matches!(token, ">" | ">=" | "<" | "<=" | "=" | "^" | "~") {
            pending_op = Some(token);
            continue;
        }
        let (op, rest) = match pending_op.take() {
            Some(op) => (op, token),
            None => split_op(token),
        };
        let version = normalize_version(rest);
        if version.is_empty() || !version.starts_with(|c: char| c.is_ascii_digit() || c == '*') {
            return None;
        }
        let op = match op {
            // A bare version is exact in npm, caret in Cargo.
            "" if version.contains('*') => "",
            "" => "=",
            "~>" => "~",
            other => other,
        };
        comparators.push(format!("{op}{version}"));
    }
    (!comparators.is_empty()).then(|| comparators.join(", "))
}

fn split_op(token: &str) -> (&str, &str) {
    for op in [">=", "<=", "~>", ">", "<", "=", "^", "~"] {
        if let Some(rest) = token.strip_prefix(op) {
            return (op, rest);
        }
    }
    ("", token)
}

/// A dependency spec resolved to (package name, range text): `npm:other@^1` aliases point
/// at another package; specs that are not registry ranges (git, file, URLs) give `None`.
#[must_use]
pub(crate) fn dependency_target<'a>(name: &'a str, spec: &'a str) -> Option<(&'a str, &'a str)> {
    if let Some(alias) = spec.strip_prefix("npm:") {
        if alias.is_empty() {
            return None;
        }
        let at = alias[1..].find('@').map(|i| i + 1);
        return Some(match at {
            Some(i) => (&alias[..i], &alias[i + 1..]),
            None => (alias, "*"),
        });
    }
    let lowered = spec.trim();
    let is_other = [
        "git",
        "http:",
        "https:",
        "file:",
        "link:",
        "workspace:",
        "github:",
    ]
    .iter()
    .any(|p| lowered.starts_with(p))
        || (lowered.contains('/') && !lowered.contains(' '));
    (!is_other).then_some((name, spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(range: &str, version: &str) -> bool {
        let v = Version::parse(version).expect("test version");
        Range::parse(range)
            .unwrap_or_else(|| panic!("parse {range}"))
            .matches(&v)
    }

    #[test]
    fn node_ranges() {
        assert!(ok("^1.2.3", "1.9.0"));
        assert!(!ok("^1.2.3", "2.0.0"));
        assert!(ok("1.2.3", "1.2.3"));
        assert!(!ok("1.2.3", "1.2.4"));
        assert!(ok(">= 2.1.2 < 3", "2.5.0"));
        assert!(!ok(">= 2.1.2 < 3", "3.0.0"));
        assert!(ok("^1 || ^2", "2.3.0"));
        assert!(ok("1.x", "1.4.0"));
        assert!(ok("1.2 - 2.3", "2.3.9"));
        assert!(ok("*", "0.0.1"));
        assert!(ok("~1.2", "1.2.7"));
        assert!(!ok("~1.2", "1.3.0"));
    }

    #[test]
    fn aliases() {
        assert_eq!(
            dependency_target("string-width-cjs", "npm:string-width@^4.2.0"),
            Some(("string-width", "^4.2.0"))
        );
        assert_eq!(
            dependency_target("x", "npm:@scope/y@1"),
            Some(("@scope/y", "1"))
        );
        assert_eq!(dependency_target("x", "github:a/b"), None);
    }
}

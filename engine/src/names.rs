//! Validated npm identifiers: `PackageName`, `Version` and `DistTag`.
//!
//! Every package name, version and dist-tag that enters the engine from a client passes through
//! one of the `parse` functions here first; the rest of the engine takes the newtypes and never
//! re-validates. Handlers in the server call `parse` on URL segments and publish bodies, and map
//! the error enums to HTTP 400 (their `Display` text is the message npm users and agents read).
//!
//! Invariants of a value that exists:
//! - `PackageName`: passes validate-npm-package-name's rules for *new* packages (v5+), so it is
//!   lowercase ASCII `a-z 0-9 - . _`, at most one `/` (only as `@scope/name`), no component is
//!   `.` or `..`, no `%`, `\`, NUL or non-ASCII byte. It is therefore safe to use as a URL path
//!   segment and as part of a file name without further escaping.
//! - `Version`: strict semver 2.0 in its canonical string form, every numeric core component
//!   representable by a JavaScript number (npm clients parse it with node-semver).
//! - `DistTag`: URL-safe, not `.`/`..`, and never parseable as a semver version or range.
//!
//! Errors quote the offending input through `Quoted`, which escapes everything outside printable
//! ASCII and truncates, so hostile input cannot inject newlines or terminal escapes into a
//! response, a log line or a terminal.

use std::fmt;
use std::fmt::Write as _;

use crate::limits::{
    DIST_TAG_BYTES_MAX, ERROR_INPUT_CHARS_MAX, PACKAGE_NAME_BYTES_MAX, VERSION_BYTES_MAX,
    VERSION_COMPONENT_MAX,
};

/// Names npm reserves outright (compared case-insensitively, as npm does).
const RESERVED_NAMES: [&str; 2] = ["node_modules", "favicon.ico"];

// Node.js core-module names ("events", "punycode", "buffer", ...) are accepted on purpose:
// npm refuses them for new packages, but the public registry hosts legacy packages with those
// names that real dependency trees install (the shared corpus has `events` and `punycode`),
// and AgentRegistry must be able to hold any package npm serves.

/// Characters `encodeURIComponent` leaves alone but npm still refuses in new names.
const NAME_SPECIAL_CHARS: &str = "~'!()*";

/// The start of a rejected input, kept for an error message.
///
/// `Display` prints it in double quotes with every character outside printable ASCII escaped
/// (`\n`, `\u{202e}`, ...) and `"`/`\` backslash-escaped, so the message is plain ASCII whatever
/// the input was. At most `ERROR_INPUT_CHARS_MAX` characters are kept; the rest is counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quoted {
    head: Box<str>,
    omitted_bytes: usize,
}

impl Quoted {
    pub fn new(input: &str) -> Quoted {
        match input.char_indices().nth(ERROR_INPUT_CHARS_MAX) {
            Some((cut, _)) => Quoted {
                head: input[..cut].into(),
                omitted_bytes: input.len() - cut,
            },
            None => Quoted {
                head: input.into(),
                omitted_bytes: 0,
            },
        }
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.head.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                ' '..='~' => f.write_char(c)?,
                _ => write!(f, "{}", c.escape_default())?,
            }
        }
        f.write_char('"')?;
        if self.omitted_bytes > 0 {
            write!(f, "... ({} more bytes)", self.omitted_bytes)?;
        }
        Ok(())
    }
}

/// Why a string is not a valid name for a new npm package. One variant per rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("package name is empty")]
    Empty,
    #[error(
        "package name {name} is {len} bytes long; npm allows at most {PACKAGE_NAME_BYTES_MAX}"
    )]
    TooLong { name: Quoted, len: usize },
    #[error("package name {name} contains a control character (such as NUL or a newline)")]
    ControlCharacter { name: Quoted },
    #[error(
        "package name {name} contains non-ASCII characters; use lowercase letters, digits, \
         '-', '.' and '_'"
    )]
    NonAscii { name: Quoted },
    #[error("package name {name} contains '%'; send the decoded name, not a percent-encoded one")]
    PercentSign { name: Quoted },
    #[error("package name {name} contains a backslash")]
    Backslash { name: Quoted },
    #[error("package name {name} starts or ends with whitespace")]
    SurroundingWhitespace { name: Quoted },
    #[error("package name {name} starts with '.' (this also refuses \".\", \"..\" and \"../x\")")]
    LeadingDot { name: Quoted },
    #[error("package name {name} starts with '_'")]
    LeadingUnderscore { name: Quoted },
    #[error(
        "package name {name} is reserved: \"node_modules\" and \"favicon.ico\" cannot be used"
    )]
    Reserved { name: Quoted },
    #[error("package name {name} contains uppercase letters; new npm package names are lowercase")]
    Uppercase { name: Quoted },
    #[error(
        "package name {name} contains '/' but does not start with '@'; only scoped names \
         (\"@scope/name\") contain a slash"
    )]
    SlashInUnscoped { name: Quoted },
    #[error("scoped package name {name} has no '/'; expected \"@scope/name\"")]
    ScopeWithoutName { name: Quoted },
    #[error("scoped package name {name} has more than one '/'; expected \"@scope/name\"")]
    TooManySlashes { name: Quoted },
    #[error("scoped package name {name} has an empty scope; expected \"@scope/name\"")]
    EmptyScope { name: Quoted },
    #[error(
        "scoped package name {name} has an empty name after the scope; expected \"@scope/name\""
    )]
    EmptyScopedName { name: Quoted },
    #[error("scoped package name {name} has a scope that starts with '.'")]
    ScopeLeadingDot { name: Quoted },
    #[error("scoped package name {name} has a name part that starts with '.'")]
    ScopedNameLeadingDot { name: Quoted },
    #[error("scoped package name {name} has a name part that starts with '_'")]
    ScopedNameLeadingUnderscore { name: Quoted },
    #[error("package name {name} contains {ch:?}; npm refuses the characters ~'!()* in new names")]
    SpecialCharacter { name: Quoted, ch: char },
    #[error(
        "package name {name} contains {ch:?}, which is not URL-safe; use lowercase letters, \
         digits, '-', '.' and '_'"
    )]
    NotUrlSafe { name: Quoted, ch: char },
}

/// Why a string is not a version the registry accepts. One variant per rule.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("version is empty")]
    Empty,
    #[error("version {version} is {len} bytes long; at most {VERSION_BYTES_MAX} are allowed")]
    TooLong { version: Quoted, len: usize },
    #[error("version {version} contains whitespace")]
    Whitespace { version: Quoted },
    #[error("version {version} starts with {prefix:?}; write the bare version, such as \"1.2.3\"")]
    Prefix { version: Quoted, prefix: char },
    #[error("version {version} is not valid semver 2.0: {source}")]
    Invalid {
        version: Quoted,
        source: semver::Error,
    },
    #[error(
        "version {version} has a major, minor or patch number above {max}, which npm clients \
         cannot represent",
        max = VERSION_COMPONENT_MAX
    )]
    ComponentTooLarge { version: Quoted },
}

/// Why a string is not a valid dist-tag. One variant per rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DistTagError {
    #[error("dist-tag is empty")]
    Empty,
    #[error("dist-tag {tag} is {len} bytes long; at most {DIST_TAG_BYTES_MAX} are allowed")]
    TooLong { tag: Quoted, len: usize },
    #[error(
        "dist-tag {tag} contains {ch:?}, which is not URL-safe; use letters, digits and \
         -_.!~*'()"
    )]
    NotUrlSafe { tag: Quoted, ch: char },
    #[error("dist-tag {tag} is a relative path segment")]
    DotSegment { tag: Quoted },
    #[error(
        "dist-tag {tag} parses as a semver version or range, so `pkg@{tag}` would be ambiguous; \
         npm refuses such tags (use a name such as \"latest\", \"next\" or \"beta\")"
    )]
    SemverRange { tag: Quoted },
}

/// A package name valid for a new npm package: `name` or `@scope/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageName(Box<str>);

impl PackageName {
    /// Validates a name as npm's registry does for NEW packages (validate-npm-package-name's
    /// validForNewPackages), and returns it.
    ///
    /// Stricter than npm in two places, both for path safety: a scope may not start with '.',
    /// and '%', '\' and control characters get their own errors instead of the generic
    /// URL-safety one, because they are the usual shapes of traversal attempts.
    pub fn parse(s: &str) -> Result<PackageName, NameError> {
        check_name_whole(s)?;
        match s.strip_prefix('@') {
            Some(rest) => check_name_scoped(s, rest)?,
            None => check_name_unscoped(s)?,
        }
        Ok(PackageName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `Some("scope")` (without '@') for "@scope/name".
    pub fn scope(&self) -> Option<&str> {
        let rest = self.0.strip_prefix('@')?;
        rest.split_once('/').map(|(scope, _)| scope)
    }

    /// The part after the slash for scoped names, the whole name otherwise.
    pub fn basename(&self) -> &str {
        match self
            .0
            .strip_prefix('@')
            .and_then(|rest| rest.split_once('/'))
        {
            Some((_, base)) => base,
            None => &self.0,
        }
    }

    /// npm's tarball file name: "{basename}-{version}.tgz".
    pub fn tarball_file(&self, version: &Version) -> String {
        format!("{}-{}.tgz", self.basename(), version.as_str())
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rules on the name as a whole, before its shape (scoped or not) is looked at.
fn check_name_whole(s: &str) -> Result<(), NameError> {
    let name = || Quoted::new(s);
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    // Checked before anything that scans the input, so the work per request is bounded.
    if s.len() > PACKAGE_NAME_BYTES_MAX {
        return Err(NameError::TooLong {
            name: name(),
            len: s.len(),
        });
    }
    if s.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter { name: name() });
    }
    if !s.is_ascii() {
        return Err(NameError::NonAscii { name: name() });
    }
    if s.contains('%') {
        return Err(NameError::PercentSign { name: name() });
    }
    if s.contains('\\') {
        return Err(NameError::Backslash { name: name() });
    }
    if s.trim_ascii() != s {
        return Err(NameError::SurroundingWhitespace { name: name() });
    }
    if s.starts_with('.') {
        return Err(NameError::LeadingDot { name: name() });
    }
    if s.starts_with('_') {
        return Err(NameError::LeadingUnderscore { name: name() });
    }
    if RESERVED_NAMES.iter().any(|r| s.eq_ignore_ascii_case(r)) {
        return Err(NameError::Reserved { name: name() });
    }
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(NameError::Uppercase { name: name() });
    }
    Ok(())
}

/// `@scope/name`: `rest` is `s` without its '@'.
fn check_name_scoped(s: &str, rest: &str) -> Result<(), NameError> {
    let name = || Quoted::new(s);
    let Some((scope, base)) = rest.split_once('/') else {
        return Err(NameError::ScopeWithoutName { name: name() });
    };
    if base.contains('/') {
        return Err(NameError::TooManySlashes { name: name() });
    }
    if scope.is_empty() {
        return Err(NameError::EmptyScope { name: name() });
    }
    if base.is_empty() {
        return Err(NameError::EmptyScopedName { name: name() });
    }
    if scope.starts_with('.') {
        return Err(NameError::ScopeLeadingDot { name: name() });
    }
    if base.starts_with('.') {
        return Err(NameError::ScopedNameLeadingDot { name: name() });
    }
    if base.starts_with('_') {
        return Err(NameError::ScopedNameLeadingUnderscore { name: name() });
    }
    check_name_chars(s, scope)?;
    check_name_chars(s, base)
}

fn check_name_unscoped(s: &str) -> Result<(), NameError> {
    if s.contains('/') {
        return Err(NameError::SlashInUnscoped {
            name: Quoted::new(s),
        });
    }
    check_name_chars(s, s)
}

/// The URL-safety rule for one component (`scope`, or the name proper) of `full`: what is left
/// after the earlier checks must be exactly lowercase `a-z 0-9 - . _`.
fn check_name_chars(full: &str, component: &str) -> Result<(), NameError> {
    match component
        .chars()
        .find(|&c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '.' | '_'))
    {
        None => Ok(()),
        Some(ch) if NAME_SPECIAL_CHARS.contains(ch) => Err(NameError::SpecialCharacter {
            name: Quoted::new(full),
            ch,
        }),
        Some(ch) => Err(NameError::NotUrlSafe {
            name: Quoted::new(full),
            ch,
        }),
    }
}

/// A semver 2.0 version in canonical string form.
///
/// `Ord` is the byte order of the string, which suits map keys; semver precedence comes from
/// `semver()`. Build metadata (`+...`) is kept as given, and semver precedence ignores it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(Box<str>);

impl Version {
    /// Strict semver 2.0 (semver crate), length <= `VERSION_BYTES_MAX`. No leading 'v', no
    /// spaces, no leading zeros, major/minor/patch <= `VERSION_COMPONENT_MAX`.
    pub fn parse(s: &str) -> Result<Version, VersionError> {
        let version = || Quoted::new(s);
        if s.is_empty() {
            return Err(VersionError::Empty);
        }
        if s.len() > VERSION_BYTES_MAX {
            return Err(VersionError::TooLong {
                version: version(),
                len: s.len(),
            });
        }
        if s.chars().any(char::is_whitespace) {
            return Err(VersionError::Whitespace { version: version() });
        }
        // node-semver's loose mode accepts these and npm strips them on publish; a registry
        // that stored them would serve keys no client asks for.
        if let Some(prefix) = s.chars().next().filter(|c| matches!(c, 'v' | 'V' | '=')) {
            return Err(VersionError::Prefix {
                version: version(),
                prefix,
            });
        }
        let parsed = semver::Version::parse(s).map_err(|source| VersionError::Invalid {
            version: version(),
            source,
        })?;
        if [parsed.major, parsed.minor, parsed.patch]
            .iter()
            .any(|&n| n > VERSION_COMPONENT_MAX)
        {
            return Err(VersionError::ComponentTooLarge { version: version() });
        }
        Ok(Version(parsed.to_string().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parsed form, for semver precedence and range matching.
    pub fn semver(&self) -> semver::Version {
        semver::Version::parse(&self.0).expect("Version holds only strings that parsed as semver")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A dist-tag name such as `latest` or `next`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DistTag(Box<str>);

impl DistTag {
    /// Non-empty, <= `DIST_TAG_BYTES_MAX`, URL-safe (`encodeURIComponent` leaves it unchanged),
    /// not "." or "..", and not parseable as a semver version or range: npm refuses "1",
    /// "1.x", "~1.2", "v2", "*" (and "^1.2", ">=2", which are not URL-safe anyway), while
    /// "latest", "beta" and "next-2" are fine.
    pub fn parse(s: &str) -> Result<DistTag, DistTagError> {
        let tag = || Quoted::new(s);
        if s.is_empty() {
            return Err(DistTagError::Empty);
        }
        if s.len() > DIST_TAG_BYTES_MAX {
            return Err(DistTagError::TooLong {
                tag: tag(),
                len: s.len(),
            });
        }
        if let Some(ch) = s.chars().find(|&c| !is_uri_component_char(c)) {
            return Err(DistTagError::NotUrlSafe { tag: tag(), ch });
        }
        // Both are URL-safe, yet HTTP clients and proxies collapse them in
        // `/-/package/:pkg/dist-tags/:tag`, so the request would reach another route.
        if s == "." || s == ".." {
            return Err(DistTagError::DotSegment { tag: tag() });
        }
        if is_semver_version_or_range(s) {
            return Err(DistTagError::SemverRange { tag: tag() });
        }
        Ok(DistTag(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DistTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Characters `encodeURIComponent` leaves unchanged.
fn is_uri_component_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()".contains(c)
}

/// True when npm would read `s` (already known URL-safe) as a version or range.
///
/// npm's rule is node-semver's `validRange(tag) !== null`. Over URL-safe characters the only
/// range forms left are a tilde range and an x-range: `[~]` `[v=]*` `X(.X(.X(-pre)?)?)?` with
/// X a number, `x`, `X` or `*`. This check refuses a little more than node-semver, never less:
/// numbers with leading zeros, and anything after a three-part core that starts with '-'.
/// The semver crate's own version and requirement parsers are consulted too, as a second
/// opinion from an independent grammar.
fn is_semver_version_or_range(s: &str) -> bool {
    if semver::Version::parse(s).is_ok() || semver::VersionReq::parse(s).is_ok() {
        return true;
    }
    let s = s.strip_prefix('~').unwrap_or(s);
    let s = s.trim_start_matches(['v', '=']);
    let (core, suffix) = s.split_at(s.find(['-', '+']).unwrap_or(s.len()));
    let mut parts = 0usize;
    for part in core.split('.') {
        parts += 1;
        let is_x_identifier = matches!(part, "x" | "X" | "*")
            || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
        if !is_x_identifier || parts > 3 {
            return false;
        }
    }
    suffix.is_empty() || parts == 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Expected outcome of a table row: `Ok` or the `Debug` name of the error variant.
    fn outcome<T, E: fmt::Debug>(r: &Result<T, E>) -> String {
        match r {
            Ok(_) => "Ok".to_string(),
            Err(e) => {
                let debug = format!("{e:?}");
                let end = debug.find([' ', '(', '{']).unwrap_or(debug.len());
                debug[..end].to_string()
            }
        }
    }

    #[test]
    fn package_name_table() {
        let long_ok = "a".repeat(PACKAGE_NAME_BYTES_MAX);
        let long_bad = "a".repeat(PACKAGE_NAME_BYTES_MAX + 1);
        let scoped_long_bad = format!("@s/{}", "a".repeat(PACKAGE_NAME_BYTES_MAX - 2));
        let table: &[(&str, &str)] = &[
            ("a", "Ok"),
            ("lodash", "Ok"),
            ("left-pad", "Ok"),
            ("lodash.merge", "Ok"),
            ("a_b", "Ok"),
            ("a..b", "Ok"),
            ("123", "Ok"),
            ("x-", "Ok"),
            ("test", "Ok"),
            ("node", "Ok"),
            ("sea", "Ok"),
            ("@types/node", "Ok"),
            ("@babel/core", "Ok"),
            ("@a/b", "Ok"),
            ("@_internal/x", "Ok"),
            ("@scope/fs", "Ok"),
            ("@scope/node_modules", "Ok"),
            ("@scope/a.b_c-d", "Ok"),
            (&long_ok, "Ok"),
            ("", "Empty"),
            (&long_bad, "TooLong"),
            (&scoped_long_bad, "TooLong"),
            (".", "LeadingDot"),
            ("..", "LeadingDot"),
            ("../x", "LeadingDot"),
            ("./x", "LeadingDot"),
            (".bin", "LeadingDot"),
            ("_x", "LeadingUnderscore"),
            ("%2e%2e", "PercentSign"),
            ("%2e%2e%2fetc", "PercentSign"),
            ("@scope%2fname", "PercentSign"),
            ("a%00", "PercentSign"),
            ("..\\x", "Backslash"),
            ("a\\b", "Backslash"),
            ("a\0b", "ControlCharacter"),
            ("\0", "ControlCharacter"),
            ("a\nb", "ControlCharacter"),
            ("a\tb", "ControlCharacter"),
            ("a\u{7f}", "ControlCharacter"),
            ("caf\u{e9}", "NonAscii"),
            ("\u{ff0e}\u{ff0e}", "NonAscii"),
            ("a\u{202e}b", "NonAscii"),
            ("\u{1f600}", "NonAscii"),
            (" a", "SurroundingWhitespace"),
            ("a ", "SurroundingWhitespace"),
            ("a b", "NotUrlSafe"),
            ("node_modules", "Reserved"),
            ("favicon.ico", "Reserved"),
            ("Node_Modules", "Reserved"),
            ("FAVICON.ICO", "Reserved"),
            ("Lodash", "Uppercase"),
            ("FS", "Uppercase"),
            ("@Scope/x", "Uppercase"),
            ("@scope/X", "Uppercase"),
            ("a/b", "SlashInUnscoped"),
            ("fs/promises", "SlashInUnscoped"),
            ("a/", "SlashInUnscoped"),
            ("@", "ScopeWithoutName"),
            ("@scope", "ScopeWithoutName"),
            ("@/x", "EmptyScope"),
            ("@/", "EmptyScope"),
            ("@s/", "EmptyScopedName"),
            ("@scope/../x", "TooManySlashes"),
            ("@a/b/c", "TooManySlashes"),
            ("@s//", "TooManySlashes"),
            ("@../x", "ScopeLeadingDot"),
            ("@./x", "ScopeLeadingDot"),
            ("@scope/..", "ScopedNameLeadingDot"),
            ("@scope/.", "ScopedNameLeadingDot"),
            ("@scope/.x", "ScopedNameLeadingDot"),
            ("@scope/_x", "ScopedNameLeadingUnderscore"),
            ("a~b", "SpecialCharacter"),
            ("a'b", "SpecialCharacter"),
            ("a!", "SpecialCharacter"),
            ("(a)", "SpecialCharacter"),
            ("a*", "SpecialCharacter"),
            ("@s~/x", "SpecialCharacter"),
            ("@s/x!", "SpecialCharacter"),
            ("a@b", "NotUrlSafe"),
            ("@s/a@b", "NotUrlSafe"),
            ("a:b", "NotUrlSafe"),
            ("a#b", "NotUrlSafe"),
            ("a?b", "NotUrlSafe"),
            ("a+b", "NotUrlSafe"),
            ("a&b", "NotUrlSafe"),
            ("a=b", "NotUrlSafe"),
            ("a,b", "NotUrlSafe"),
            ("a\"b", "NotUrlSafe"),
            ("<script>", "NotUrlSafe"),
            ("@s/a b", "NotUrlSafe"),
        ];
        for (input, expected) in table {
            let got = outcome(&PackageName::parse(input));
            assert_eq!(&got, expected, "PackageName::parse({input:?})");
        }
    }

    #[test]
    fn scope_basename_and_tarball_file() {
        let scoped = PackageName::parse("@types/node").expect("valid name");
        assert_eq!(scoped.scope(), Some("types"));
        assert_eq!(scoped.basename(), "node");
        let plain = PackageName::parse("left-pad").expect("valid name");
        assert_eq!(plain.scope(), None);
        assert_eq!(plain.basename(), "left-pad");
        let v = Version::parse("1.2.3-beta.1").expect("valid version");
        assert_eq!(scoped.tarball_file(&v), "node-1.2.3-beta.1.tgz");
        assert_eq!(plain.tarball_file(&v), "left-pad-1.2.3-beta.1.tgz");
        assert_eq!(scoped.to_string(), "@types/node");
    }

    #[test]
    fn legacy_core_module_names_are_accepted() {
        for m in ["events", "punycode", "buffer", "util", "fs"] {
            assert!(PackageName::parse(m).is_ok(), "{m} refused");
        }
    }

    #[test]
    fn error_messages_quote_input_safely() {
        let e = PackageName::parse("a\nb\u{1b}[31m").expect_err("control characters refused");
        let msg = e.to_string();
        assert!(msg.contains(r#""a\nb\u{1b}[31m""#), "{msg}");
        assert!(msg.is_ascii() && !msg.contains('\n'), "{msg}");

        let e = PackageName::parse("caf\u{e9}\u{202e}").expect_err("non-ASCII refused");
        let msg = e.to_string();
        assert!(msg.contains(r#""caf\u{e9}\u{202e}""#), "{msg}");

        let e = PackageName::parse("a\"b").expect_err("quote refused");
        assert!(e.to_string().contains(r#""a\"b""#), "{e}");

        let long = "x".repeat(PACKAGE_NAME_BYTES_MAX + 50);
        let msg = PackageName::parse(&long).expect_err("too long").to_string();
        let kept = "x".repeat(ERROR_INPUT_CHARS_MAX);
        assert!(
            msg.contains(&format!("\"{kept}\"... (164 more bytes)")),
            "{msg}"
        );
        assert!(
            msg.contains("264 bytes long; npm allows at most 214"),
            "{msg}"
        );
        assert!(msg.len() < 300, "{msg}");
    }

    #[test]
    fn version_table() {
        let long = format!("1.0.0-{}", "a".repeat(VERSION_BYTES_MAX));
        let max = format!("{VERSION_COMPONENT_MAX}.0.0");
        let over = format!("{}.0.0", VERSION_COMPONENT_MAX + 1);
        let table: &[(&str, &str)] = &[
            ("0.0.0", "Ok"),
            ("1.2.3", "Ok"),
            ("1.2.3-alpha", "Ok"),
            ("1.2.3-alpha.1", "Ok"),
            ("1.2.3-0.3.7", "Ok"),
            ("1.2.3-x.7.z.92", "Ok"),
            ("1.0.0+20130313144700", "Ok"),
            ("1.0.0-beta+exp.sha.5114f85", "Ok"),
            ("1.0.0+001", "Ok"),
            (&max, "Ok"),
            ("", "Empty"),
            (&long, "TooLong"),
            (" 1.2.3", "Whitespace"),
            ("1.2.3 ", "Whitespace"),
            ("1.2. 3", "Whitespace"),
            ("v1.2.3", "Prefix"),
            ("V1.2.3", "Prefix"),
            ("=1.2.3", "Prefix"),
            ("1", "Invalid"),
            ("1.2", "Invalid"),
            ("1.2.3.4", "Invalid"),
            ("01.2.3", "Invalid"),
            ("1.02.3", "Invalid"),
            ("1.2.3-01", "Invalid"),
            ("1.2.3-", "Invalid"),
            ("1.2.3+", "Invalid"),
            ("1.2.x", "Invalid"),
            ("^1.2.3", "Invalid"),
            ("latest", "Invalid"),
            ("1.2.3-\u{e9}", "Invalid"),
            ("../1.2.3", "Invalid"),
            ("1.2.3/..", "Invalid"),
            ("1.2.3\0", "Invalid"),
            ("99999999999999999999.0.0", "Invalid"),
            (&over, "ComponentTooLarge"),
        ];
        for (input, expected) in table {
            let got = outcome(&Version::parse(input));
            assert_eq!(&got, expected, "Version::parse({input:?})");
        }
    }

    #[test]
    fn version_keeps_canonical_form_and_semver() {
        let v = Version::parse("1.0.0-beta.11+exp.sha").expect("valid version");
        assert_eq!(v.as_str(), "1.0.0-beta.11+exp.sha");
        assert_eq!(v.to_string(), "1.0.0-beta.11+exp.sha");
        let s = v.semver();
        assert_eq!((s.major, s.minor, s.patch), (1, 0, 0));
        assert_eq!(s.pre.as_str(), "beta.11");
        let msg = Version::parse("1.2").expect_err("too short").to_string();
        assert!(
            msg.starts_with("version \"1.2\" is not valid semver 2.0: "),
            "{msg}"
        );
    }

    #[test]
    fn dist_tag_table() {
        let long = "a".repeat(DIST_TAG_BYTES_MAX + 1);
        let longest = "a".repeat(DIST_TAG_BYTES_MAX);
        let table: &[(&str, &str)] = &[
            ("latest", "Ok"),
            ("beta", "Ok"),
            ("next", "Ok"),
            ("next-2", "Ok"),
            ("canary", "Ok"),
            ("Experimental", "Ok"),
            ("v", "Ok"),
            ("v-next", "Ok"),
            ("1-beta", "Ok"),
            ("1.2-beta", "Ok"),
            ("1.2.3.4", "Ok"),
            ("release_2024", "Ok"),
            ("it's~fine!(*)", "Ok"),
            ("...", "Ok"),
            (&longest, "Ok"),
            ("", "Empty"),
            (&long, "TooLong"),
            (".", "DotSegment"),
            ("..", "DotSegment"),
            ("^1.2", "NotUrlSafe"),
            (">=2", "NotUrlSafe"),
            ("1 - 2", "NotUrlSafe"),
            ("1||2", "NotUrlSafe"),
            ("a/b", "NotUrlSafe"),
            ("a%2fb", "NotUrlSafe"),
            ("a\\b", "NotUrlSafe"),
            ("a\0", "NotUrlSafe"),
            ("b\u{e9}ta", "NotUrlSafe"),
            ("1.2.3+build", "NotUrlSafe"),
            ("1", "SemverRange"),
            ("1.2", "SemverRange"),
            ("1.2.3", "SemverRange"),
            ("1.x", "SemverRange"),
            ("1.2.X", "SemverRange"),
            ("1.*", "SemverRange"),
            ("x", "SemverRange"),
            ("X", "SemverRange"),
            ("*", "SemverRange"),
            ("~1.2", "SemverRange"),
            ("~1", "SemverRange"),
            ("v1", "SemverRange"),
            ("v1.2.3", "SemverRange"),
            ("vv1", "SemverRange"),
            ("1.2.3-beta", "SemverRange"),
            ("1.2.3-beta.1", "SemverRange"),
            ("01", "SemverRange"),
            ("0", "SemverRange"),
        ];
        for (input, expected) in table {
            let got = outcome(&DistTag::parse(input));
            assert_eq!(&got, expected, "DistTag::parse({input:?})");
        }
    }

    /// Names built from the characters that matter to the parser's structure, so that random
    /// cases reach the scoped/unscoped branches instead of failing the first character check.
    fn structured_name() -> impl Strategy<Value = String> {
        proptest::string::string_regex("@?[a-z0-9._/~%@A-Z-]{0,24}").expect("valid regex")
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_strings(s in ".*") {
            let _ = PackageName::parse(&s);
            let _ = Version::parse(&s);
            let _ = DistTag::parse(&s);
        }

        #[test]
        fn parsed_names_round_trip_and_are_path_safe(s in structured_name()) {
            if let Ok(name) = PackageName::parse(&s) {
                prop_assert_eq!(name.as_str(), s.as_str());
                prop_assert_eq!(name.to_string(), s.clone());
                match name.scope() {
                    Some(scope) => {
                        prop_assert_eq!(format!("@{}/{}", scope, name.basename()), s.clone());
                    }
                    None => prop_assert_eq!(name.basename(), s.as_str()),
                }
                let body = s.strip_prefix('@').unwrap_or(&s);
                prop_assert!(body.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit() || b"-._/@".contains(&b)));
                prop_assert!(s.len() <= PACKAGE_NAME_BYTES_MAX);
            }
        }

        #[test]
        fn well_formed_names_parse(
            scope in proptest::option::of("[a-z0-9][a-z0-9._-]{0,20}"),
            base in "[a-z0-9][a-z0-9._-]{0,30}",
        ) {
            let s = match &scope {
                Some(scope) => format!("@{scope}/{base}"),
                None => base.clone(),
            };
            let expect_ok = scope.is_some()
                || base != "node_modules";
            prop_assert_eq!(PackageName::parse(&s).is_ok(), expect_ok, "{}", s);
        }

        #[test]
        fn versions_round_trip(
            core in (0u64..1000, 0u64..1000, 0u64..1000),
            pre in proptest::option::of("[a-z][a-z0-9-]{0,8}(\\.[1-9][0-9]{0,3})?"),
            build in proptest::option::of("[a-zA-Z0-9-]{1,8}"),
        ) {
            let mut s = format!("{}.{}.{}", core.0, core.1, core.2);
            if let Some(pre) = pre { s = format!("{s}-{pre}"); }
            if let Some(build) = build { s = format!("{s}+{build}"); }
            let v = Version::parse(&s).expect("well-formed version");
            prop_assert_eq!(v.as_str(), s.as_str());
            prop_assert_eq!(v.semver().to_string(), s);
        }

        #[test]
        fn parsed_tags_round_trip(s in "[a-zA-Z0-9._~*'()!-]{1,12}") {
            if let Ok(tag) = DistTag::parse(&s) {
                prop_assert_eq!(tag.as_str(), s.as_str());
                prop_assert!(semver::Version::parse(&s).is_err());
                prop_assert!(semver::VersionReq::parse(&s).is_err());
            }
        }
    }
}

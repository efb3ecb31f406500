//! `route`: method + raw request target -> `Route`. Pure: no I/O, no engine, no auth.
//!
//! The path is percent-decoded once, as a whole, before it is split: `@scope%2fname` and
//! `@scope/name` are the same package. A decoded path with NUL, control characters,
//! backslashes or invalid UTF-8 is refused here; package names are validated by the handlers
//! (`PackageName::parse`), which refuse `..`, `%` (double encoding) and everything else npm
//! refuses. No route carries a file-system path: tarballs are found by name in metadata.

use crate::http::parse::Method;

/// What a request asks for. Package names are decoded but not yet validated.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Ping,
    /// `GET /-/metrics` (and `GET /metrics` from a client that does not ask for JSON).
    Metrics,
    Whoami,
    /// `PUT /-/user/org.couchdb.user:NAME`
    Login {
        user: String,
    },
    /// `GET /-/user/org.couchdb.user:NAME`
    UserGet {
        user: String,
    },
    /// `DELETE /-/user/token/TOKEN` (npm logout)
    /// `GET /-/npm/v1/tokens`
    TokensList,
    /// `POST /-/npm/v1/tokens`
    TokenCreate,
    /// `DELETE /-/npm/v1/tokens/token/KEY`
    TokenDelete {
        key: String,
    },
    Logout {
        token: String,
    },
    /// `POST /-/v1/login`: npm's web login, which we do not offer (npm then uses legacy).
    WebLogin,
    DistTagsGet {
        package: String,
    },
    DistTagSet {
        package: String,
        tag: String,
    },
    DistTagDelete {
        package: String,
        tag: String,
    },
    Packument {
        package: String,
    },
    /// `PUT /NAME` or `PUT /NAME/-rev/REV`: publish, or a metadata update.
    Publish {
        package: String,
        rev: Option<String>,
    },
    /// `DELETE /NAME/-rev/REV`: unpublish every version.
    Unpublish {
        package: String,
        rev: String,
    },
    /// `DELETE /NAME/-/FILE/-rev/REV`: npm's tarball cleanup after unpublishing a version.
    TarballDelete {
        package: String,
        file: String,
    },
    /// `GET /NAME/VERSION` or `GET /NAME/TAG`.
    VersionDoc {
        package: String,
        spec: String,
    },
    Tarball {
        package: String,
        file: String,
    },
    /// `POST /-/admin/fsck` (admin token).
    AdminFsck,
    /// `POST /-/admin/backup` (admin token).
    AdminBackup,
}

/// Why a target matched no route.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the request path is not valid: {0}")]
    BadPath(&'static str),
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
}

impl RouteError {
    /// The status and error type this failure is answered with.
    #[must_use]
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            RouteError::BadPath(_) => (400, "bad_request"),
            RouteError::NotFound => (404, "not_found"),
            RouteError::MethodNotAllowed => (405, "method_not_allowed"),
        }
    }
}

/// Routes one request. HEAD routes like GET (the connection drops the body).
///
/// # Errors
/// `BadPath`, `NotFound` or `MethodNotAllowed`.
pub fn route(method: Method, target: &str) -> Result<Route, RouteError> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(RouteError::BadPath("the path must start with '/'"));
    }
    let path = percent_decode(path)?;
    let method = if method == Method::Head {
        Method::Get
    } else {
        method
    };
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments.first() == Some(&"-") {
        return route_special(method, &segments[1..]);
    }
    let (package, rest) = split_package(&segments)?;
    match (method, rest) {
        (Method::Get, []) => Ok(Route::Packument { package }),
        (Method::Put, []) => Ok(Route::Publish { package, rev: None }),
        (Method::Put, ["-rev", rev]) => Ok(Route::Publish {
            package,
            rev: Some((*rev).to_owned()),
        }),
        (Method::Delete, ["-rev", rev]) => Ok(Route::Unpublish {
            package,
            rev: (*rev).to_owned(),
        }),
        (Method::Delete, ["-", file, "-rev", _]) => Ok(Route::TarballDelete {
            package,
            file: (*file).to_owned(),
        }),
        (Method::Get, [spec]) if !spec.is_empty() => Ok(Route::VersionDoc {
            package,
            spec: (*spec).to_owned(),
        }),
        (Method::Get, ["-", file]) if !file.is_empty() => Ok(Route::Tarball {
            package,
            file: (*file).to_owned(),
        }),
        (_, [] | [_] | ["-", _]) => Err(RouteError::MethodNotAllowed),
        _ => Err(RouteError::NotFound),
    }
}

fn route_special(method: Method, segments: &[&str]) -> Result<Route, RouteError> {
    match (method, segments) {
        (Method::Get, ["ping"]) => Ok(Route::Ping),
        (Method::Get, ["npm", "v1", "tokens"]) => Ok(Route::TokensList),
        (Method::Post, ["npm", "v1", "tokens"]) => Ok(Route::TokenCreate),
        (Method::Delete, ["npm", "v1", "tokens", "token", key]) => Ok(Route::TokenDelete {
            key: (*key).to_owned(),
        }),
        (Method::Get, ["metrics"]) => Ok(Route::Metrics),
        (Method::Get, ["whoami"]) => Ok(Route::Whoami),
        (Method::Post, ["v1", "login"]) => Ok(Route::WebLogin),
        (_, ["user", couch]) if couch.starts_with("org.couchdb.user:") => {
            let user = couch["org.couchdb.user:".len()..].to_owned();
            match method {
                Method::Put => Ok(Route::Login { user }),
                Method::Get => Ok(Route::UserGet { user }),
                _ => Err(RouteError::MethodNotAllowed),
            }
        }
        (Method::Delete, ["user", "token", token]) => Ok(Route::Logout {
            token: (*token).to_owned(),
        }),
        (_, ["package", rest @ ..]) => route_dist_tags(method, rest),
        (Method::Post, ["admin", "fsck"]) => Ok(Route::AdminFsck),
        (Method::Post, ["admin", "backup"]) => Ok(Route::AdminBackup),
        (_, ["admin", "fsck" | "backup"]) => Err(RouteError::MethodNotAllowed),
        (_, ["ping" | "whoami"] | ["v1", "login"]) => Err(RouteError::MethodNotAllowed),
        _ => Err(RouteError::NotFound),
    }
}

fn route_dist_tags(method: Method, segments: &[&str]) -> Result<Route, RouteError> {
    let (package, rest) = split_package(segments)?;
    match (method, rest) {
        (Method::Get, ["dist-tags"]) => Ok(Route::DistTagsGet { package }),
        (Method::Put | Method::Post, ["dist-tags", tag]) => Ok(Route::DistTagSet {
            package,
            tag: (*tag).to_owned(),
        }),
        (Method::Delete, ["dist-tags", tag]) => Ok(Route::DistTagDelete {
            package,
            tag: (*tag).to_owned(),
        }),
        (_, ["dist-tags"] | ["dist-tags", _]) => Err(RouteError::MethodNotAllowed),
        _ => Err(RouteError::NotFound),
    }
}

/// Splits `[@scope, name, rest..]` or `[name, rest..]`.
fn split_package<'s>(segments: &'s [&'s str]) -> Result<(String, &'s [&'s str]), RouteError> {
    match segments {
        [scope, name, rest @ ..] if scope.starts_with('@') => Ok((format!("{scope}/{name}"), rest)),
        [name, rest @ ..] if !name.is_empty() => Ok(((*name).to_owned(), rest)),
        _ => Err(RouteError::NotFound),
    }
}

/// Decodes `%XX` escapes once. Refuses malformed escapes, invalid UTF-8, NUL, control
/// characters and backslashes (no registry path needs them; they only serve traversal tricks).
fn percent_decode(path: &str) -> Result<String, RouteError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(RouteError::BadPath("truncated %-escape"))?;
            let hex = std::str::from_utf8(hex).map_err(|_| RouteError::BadPath("bad %-escape"))?;
            let byte =
                u8::from_str_radix(hex, 16).map_err(|_| RouteError::BadPath("bad %-escape"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded =
        String::from_utf8(out).map_err(|_| RouteError::BadPath("path is not valid UTF-8"))?;
    if decoded.chars().any(|c| c.is_control() || c == '\\') {
        return Err(RouteError::BadPath(
            "control characters or backslashes in the path",
        ));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkg(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn table() {
        use Method::{Delete, Get, Head, Post, Put};
        let cases: Vec<(Method, &str, Result<Route, RouteError>)> = vec![
            (Get, "/-/ping", Ok(Route::Ping)),
            (Get, "/-/ping?write=true", Ok(Route::Ping)),
            (Get, "/-/whoami", Ok(Route::Whoami)),
            (
                Put,
                "/-/user/org.couchdb.user:ada",
                Ok(Route::Login { user: pkg("ada") }),
            ),
            (
                Get,
                "/-/user/org.couchdb.user:ada",
                Ok(Route::UserGet { user: pkg("ada") }),
            ),
            (
                Delete,
                "/-/user/token/abc",
                Ok(Route::Logout { token: pkg("abc") }),
            ),
            (Post, "/-/v1/login", Ok(Route::WebLogin)),
            (Get, "/-/npm/v1/tokens", Ok(Route::TokensList)),
            (Post, "/-/npm/v1/tokens", Ok(Route::TokenCreate)),
            (
                Delete,
                "/-/npm/v1/tokens/token/ab12",
                Ok(Route::TokenDelete { key: pkg("ab12") }),
            ),
            (
                Get,
                "/express",
                Ok(Route::Packument {
                    package: pkg("express"),
                }),
            ),
            (
                Head,
                "/express",
                Ok(Route::Packument {
                    package: pkg("express"),
                }),
            ),
            (
                Get,
                "/@babel%2fcore",
                Ok(Route::Packument {
                    package: pkg("@babel/core"),
                }),
            ),
            (
                Get,
                "/@babel%2Fcore",
                Ok(Route::Packument {
                    package: pkg("@babel/core"),
                }),
            ),
            (
                Get,
                "/@babel/core",
                Ok(Route::Packument {
                    package: pkg("@babel/core"),
                }),
            ),
            (
                Put,
                "/@babel%2fcore",
                Ok(Route::Publish {
                    package: pkg("@babel/core"),
                    rev: None,
                }),
            ),
            (
                Put,
                "/a/-rev/3-abc",
                Ok(Route::Publish {
                    package: pkg("a"),
                    rev: Some(pkg("3-abc")),
                }),
            ),
            (
                Delete,
                "/a/-rev/3-abc",
                Ok(Route::Unpublish {
                    package: pkg("a"),
                    rev: pkg("3-abc"),
                }),
            ),
            (
                Delete,
                "/@s/a/-/a-1.0.0.tgz/-rev/3-abc",
                Ok(Route::TarballDelete {
                    package: pkg("@s/a"),
                    file: pkg("a-1.0.0.tgz"),
                }),
            ),
            (
                Get,
                "/express/4.0.0",
                Ok(Route::VersionDoc {
                    package: pkg("express"),
                    spec: pkg("4.0.0"),
                }),
            ),
            (
                Get,
                "/@a/b/latest",
                Ok(Route::VersionDoc {
                    package: pkg("@a/b"),
                    spec: pkg("latest"),
                }),
            ),
            (
                Get,
                "/express/-/express-4.0.0.tgz",
                Ok(Route::Tarball {
                    package: pkg("express"),
                    file: pkg("express-4.0.0.tgz"),
                }),
            ),
            (
                Get,
                "/@a%2fb/-/b-1.0.0.tgz",
                Ok(Route::Tarball {
                    package: pkg("@a/b"),
                    file: pkg("b-1.0.0.tgz"),
                }),
            ),
            (
                Get,
                "/-/package/@a%2fb/dist-tags",
                Ok(Route::DistTagsGet {
                    package: pkg("@a/b"),
                }),
            ),
            (
                Put,
                "/-/package/a/dist-tags/beta",
                Ok(Route::DistTagSet {
                    package: pkg("a"),
                    tag: pkg("beta"),
                }),
            ),
            (
                Delete,
                "/-/package/a/dist-tags/beta",
                Ok(Route::DistTagDelete {
                    package: pkg("a"),
                    tag: pkg("beta"),
                }),
            ),
            (Post, "/-/admin/fsck", Ok(Route::AdminFsck)),
            (Post, "/-/admin/backup", Ok(Route::AdminBackup)),
            (Get, "/-/admin/fsck", Err(RouteError::MethodNotAllowed)),
            (Post, "/-/admin/other", Err(RouteError::NotFound)),
            (Delete, "/express", Err(RouteError::MethodNotAllowed)),
            (Post, "/-/ping", Err(RouteError::MethodNotAllowed)),
            (Get, "/-/nothing", Err(RouteError::NotFound)),
            (Get, "/", Err(RouteError::NotFound)),
            (Get, "/a/b/c/d", Err(RouteError::NotFound)),
            (
                Get,
                "x",
                Err(RouteError::BadPath("the path must start with '/'")),
            ),
            (
                Get,
                "/a%00b",
                Err(RouteError::BadPath(
                    "control characters or backslashes in the path",
                )),
            ),
            (
                Get,
                "/a%5c..",
                Err(RouteError::BadPath(
                    "control characters or backslashes in the path",
                )),
            ),
            (
                Get,
                "/a%c0%ae",
                Err(RouteError::BadPath("path is not valid UTF-8")),
            ),
            (Get, "/a%2", Err(RouteError::BadPath("truncated %-escape"))),
            (Get, "/a%zz", Err(RouteError::BadPath("bad %-escape"))),
        ];
        for (method, target, expected) in cases {
            assert_eq!(route(method, target), expected, "{method:?} {target}");
        }
    }

    #[test]
    fn traversal_reaches_only_name_validation() {
        // Decoding never produces a file path: these become package names or versions that
        // PackageName::parse / the tarball index refuse.
        assert_eq!(
            route(Method::Get, "/%2e%2e/-/x.tgz"),
            Ok(Route::Tarball {
                package: pkg(".."),
                file: pkg("x.tgz")
            })
        );
        assert_eq!(
            route(Method::Get, "/%252e%252e"),
            Ok(Route::Packument {
                package: pkg("%2e%2e")
            })
        );
    }

    proptest! {
        #[test]
        fn never_panics(target in ".{0,200}") {
            let _ = route(Method::Get, &target);
            let _ = route(Method::Put, &target);
        }
    }
}

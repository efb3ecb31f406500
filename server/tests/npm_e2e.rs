//! Real-client end-to-end scenarios (STYLE section 10 item 6): the real npm, pnpm, yarn
//! berry and bun talk to the registry on loopback, each with its own HOME, config and empty
//! cache, every step under a deadline (see `common`).
//!
//! Each test starts its own registry, so the tests run in parallel. Against a shared
//! registry (`AGENTREGISTRY_E2E_URL`, e.g. Verdaccio) names get a unique suffix instead.
//! Fixture packages: `e2e-alpha` 1.0.0 and 1.1.0, `@e2e/beta` 1.0.0, and `e2e-gamma` 1.0.0
//! depending on `e2e-alpha@^1.0.0` (must resolve to 1.1.0) and `@e2e/beta@^1.0.0`.
//!
//! Needs the tools from `scripts/install-tools.sh`; a missing tool fails the test unless
//! `AGENTREGISTRY_E2E_SKIP_MISSING_TOOLS=1`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Client, Registry, Response, Tool};
use serde_json::Value;

const PASSWORD: &str = "e2e-password-1";
const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";
/// What npm and pnpm send for packuments (pnpm and bun: same string).
const NPM_CORGI_ACCEPT: &str =
    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

/// The fixture names for one test (suffixed on a shared registry).
struct Names {
    alpha: String,
    beta: String,
    gamma: String,
    user: String,
}

impl Names {
    fn new(registry: &Registry) -> Names {
        Names {
            alpha: registry.name("e2e-alpha"),
            beta: registry.name("@e2e/beta"),
            gamma: registry.name("e2e-gamma"),
            user: registry.name("e2e-user"),
        }
    }
}

/// `module.exports = "<name>@<version>";`: what an installed fixture must contain.
fn marker_module(name: &str, version: &str) -> String {
    format!(
        "module.exports = {};\n",
        Value::from(format!("{name}@{version}"))
    )
}

fn gamma_module(names: &Names) -> String {
    format!(
        "module.exports = {{ self: {}, alpha: require({}), beta: require({}) }};\n",
        Value::from(format!("{}@1.0.0", names.gamma)),
        Value::from(names.alpha.as_str()),
        Value::from(names.beta.as_str()),
    )
}

/// Path segment of a package in URLs, the way npm sends it (`@scope%2fname`).
fn escaped(name: &str) -> String {
    name.replacen('/', "%2f", 1)
}

/// `<name-without-scope>-<version>.tgz`.
fn tarball_file(name: &str, version: &str) -> String {
    let bare = name.rsplit('/').next().unwrap_or(name);
    format!("{bare}-{version}.tgz")
}

/// Writes a fixture package and publishes it with `npm publish`.
fn publish(npm: &Client<'_>, name: &str, version: &str, deps: &[(&str, &str)], index_js: &str) {
    let dir = npm.new_dir(&format!("{}-{version}", name.replace('/', "+")));
    common::write_package(&dir, name, version, deps, index_js);
    let out = npm.run_ok(
        &["publish"],
        &dir,
        &format!("npm publish of {name}@{version}"),
    );
    let expected = format!("+ {name}@{version}");
    assert!(
        out.stdout.contains(&expected),
        "npm publish of {name}@{version}: expected `{expected}` on stdout\n{}",
        out.describe()
    );
}

/// Publishes all fixtures through `npm` (which must be logged in).
fn publish_fixtures(npm: &Client<'_>, names: &Names) {
    publish(
        npm,
        &names.alpha,
        "1.0.0",
        &[],
        &marker_module(&names.alpha, "1.0.0"),
    );
    publish(
        npm,
        &names.beta,
        "1.0.0",
        &[],
        &marker_module(&names.beta, "1.0.0"),
    );
    publish(
        npm,
        &names.alpha,
        "1.1.0",
        &[],
        &marker_module(&names.alpha, "1.1.0"),
    );
    let deps = [
        (names.alpha.as_str(), "^1.0.0"),
        (names.beta.as_str(), "^1.0.0"),
    ];
    publish(npm, &names.gamma, "1.0.0", &deps, &gamma_module(names));
}

/// A logged-in npm client (raw couchdb login) with the fixtures published.
fn seeded_publisher<'r>(registry: &'r Registry, names: &Names) -> Option<Client<'r>> {
    let mut npm = Client::new(Tool::Npm, registry)?;
    npm.login_http(&names.user, PASSWORD);
    publish_fixtures(&npm, names);
    Some(npm)
}

fn list_dir(dir: &Path) -> String {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            format!("{}: {names:?}", dir.display())
        }
        Err(e) => format!("{}: cannot list ({e})", dir.display()),
    }
}

fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("expected {} to exist: {e}", path.display()))
}

/// Checks an installed project: gamma 1.0.0 at the top, alpha resolved by `^1.0.0` to
/// 1.1.0, beta 1.0.0, file contents as published, and Node's own `require` agreeing.
fn assert_installed(client: &Client<'_>, project: &Path, names: &Names) {
    let tool = client.tool().name();
    let node_modules = project.join("node_modules");
    let gamma_dir = node_modules.join(&names.gamma);
    assert!(
        gamma_dir.join("package.json").is_file(),
        "{tool}: expected {} after install; found {}",
        gamma_dir.display(),
        list_dir(&node_modules)
    );
    let expectations = [
        (names.gamma.as_str(), "1.0.0", gamma_dir.clone()),
        (
            names.alpha.as_str(),
            "1.1.0",
            resolve_dep(tool, &gamma_dir, &names.alpha, &node_modules),
        ),
        (
            names.beta.as_str(),
            "1.0.0",
            resolve_dep(tool, &gamma_dir, &names.beta, &node_modules),
        ),
    ];
    for (name, version, dir) in &expectations {
        let got = common::read_version(dir);
        assert_eq!(
            got,
            *version,
            "{tool}: expected {name}@{version} installed at {} (alpha via ^1.0.0 must pick the \
             highest, 1.1.0), got version {got}",
            dir.display()
        );
        let index = read_file(&dir.join("index.js"));
        let expected = if *name == names.gamma {
            gamma_module(names)
        } else {
            marker_module(name, version)
        };
        assert_eq!(
            index, expected,
            "{tool}: {name}/index.js content differs from what was published"
        );
    }
    let script = "process.stdout.write(JSON.stringify(require(process.argv[1])))";
    let loaded = common::node_eval(script, &[&names.gamma], Some(project));
    let loaded: Value = serde_json::from_str(&loaded)
        .unwrap_or_else(|e| panic!("{tool}: node output {loaded:?}: {e}"));
    let expected = serde_json::json!({
        "self": format!("{}@1.0.0", names.gamma),
        "alpha": format!("{}@1.1.0", names.alpha),
        "beta": format!("{}@1.0.0", names.beta),
    });
    assert_eq!(
        loaded, expected,
        "{tool}: require({:?}) from the project returned something else",
        names.gamma
    );
}

fn resolve_dep(tool: &str, from: &Path, dep: &str, node_modules: &Path) -> std::path::PathBuf {
    common::resolve_from(from, dep).unwrap_or_else(|| {
        panic!(
            "{tool}: expected {dep} to be resolvable from {} (Node's lookup); found {}",
            from.display(),
            list_dir(node_modules)
        )
    })
}

/// Full packument of `name` via raw HTTP; panics unless 200 JSON.
fn packument(registry: &Registry, name: &str, accept: &str) -> (Response, Value) {
    let path = format!("/{}", escaped(name));
    let response = registry.get(&path, &[("Accept", accept)]);
    assert_eq!(
        response.status,
        200,
        "GET {path} (Accept: {accept}): expected 200\n{}",
        response.describe()
    );
    let json = response.json(&format!("GET {path}"));
    (response, json)
}

/// `versions[version].dist.<field>` as a string.
fn dist_field(doc: &Value, version: &str, field: &str) -> String {
    doc.pointer(&format!("/versions/{version}/dist/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| {
            panic!("expected versions[{version:?}].dist.{field} (a string) in packument:\n{doc:#}")
        })
        .to_string()
}

/// The request path of `versions[version].dist.tarball`, which must point at this registry.
fn tarball_path(registry: &Registry, doc: &Value, version: &str) -> String {
    let url = dist_field(doc, version, "tarball");
    let Some(path) = url
        .strip_prefix(registry.url())
        .filter(|p| p.starts_with('/'))
    else {
        panic!(
            "expected dist.tarball of {version} to start with {}/, got {url:?}",
            registry.url()
        )
    };
    path.to_string()
}

fn get_tarball(registry: &Registry, path: &str) -> Vec<u8> {
    let response = registry.get(path, &[]);
    assert_eq!(
        response.status,
        200,
        "GET {path}: expected 200 with the tarball\n{}",
        response.describe()
    );
    assert!(
        response.body.starts_with(&[0x1f, 0x8b]),
        "GET {path}: expected gzip'd tarball bytes (1f 8b ...)\n{}",
        response.describe()
    );
    response.body
}

/// `npm dist-tag ls NAME` output (`tag: version` lines) as a map.
fn dist_tags(npm: &Client<'_>, name: &str) -> BTreeMap<String, String> {
    let out = npm.run_ok(
        &["dist-tag", "ls", name],
        &npm.home(),
        &format!("npm dist-tag ls {name}"),
    );
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(tag, version)| (tag.trim().to_string(), version.trim().to_string()))
        .collect()
}

/// Checks an error response: the status, and (AgentRegistry) the JSON `{error, message}` body.
fn assert_error(registry: &Registry, response: &Response, status: u16, context: &str) {
    assert_eq!(
        response.status,
        status,
        "{context}: expected status {status}\n{}",
        response.describe()
    );
    let json: Option<Value> = serde_json::from_slice(&response.body).ok();
    let shaped = json.as_ref().is_some_and(|j| {
        j.get("error").is_some_and(Value::is_string)
            && j.get("message").is_some_and(Value::is_string)
    });
    if !shaped
        && !registry.relax(&format!(
            "{context}: error body is not {{\"error\",\"message\"}}"
        ))
    {
        panic!(
            "{context}: expected a JSON body {{\"error\": ..., \"message\": ...}}\n{}",
            response.describe()
        );
    }
}

/// Publishes `version` of `name` again through raw HTTP with different tarball bytes, the
/// way `npm publish` would if it did not check first.
fn republish_raw(npm: &Client<'_>, registry: &Registry, name: &str, version: &str) -> Response {
    let dir = npm.new_dir(&format!("{}-{version}-again", name.replace('/', "+")));
    common::write_package(
        &dir,
        name,
        version,
        &[],
        "module.exports = 'republished: must not win';\n",
    );
    let out = npm.run_ok(
        &["pack", "--json", "--pack-destination", "."],
        &dir,
        "npm pack",
    );
    let packed: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "npm pack --json: expected JSON on stdout ({e})\n{}",
            out.describe()
        )
    });
    let field = |k: &str| {
        packed
            .pointer(&format!("/0/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("npm pack --json: no {k}\n{}", out.describe()))
            .to_string()
    };
    let (file, integrity, shasum) = (field("filename"), field("integrity"), field("shasum"));
    let bytes = std::fs::read(dir.join(&file)).expect("npm pack wrote the tarball it named");
    let attachment = tarball_file(name, version);
    let body = serde_json::json!({
        "_id": name,
        "name": name,
        "description": "republish attempt",
        "dist-tags": { "latest": version },
        "versions": { version: {
            "name": name,
            "version": version,
            "main": "index.js",
            "_id": format!("{name}@{version}"),
            "dist": {
                "integrity": integrity,
                "shasum": shasum,
                "tarball": format!("{}/{name}/-/{attachment}", registry.url()),
            },
        }},
        "access": null,
        "_attachments": { attachment: {
            "content_type": "application/octet-stream",
            "data": common::base64_encode(&bytes),
            "length": bytes.len(),
        }},
    });
    let token = npm.token().expect("the publisher is logged in");
    let auth = format!("Bearer {token}");
    let body = body.to_string().into_bytes();
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    registry.request("PUT", &format!("/{}", escaped(name)), &headers, Some(&body))
}

/// Goal: the whole npm publisher workflow works with the real npm 11 CLI.
/// Method: real `npm login` (through a pty), whoami, publish unscoped and scoped, refused
/// republish (tarball unchanged), view, dist-tag add/ls/rm, then a fresh anonymous npm
/// with an empty cache installs a project whose dependency tree needs range resolution.
#[test]
fn npm_login_publish_view_dist_tag_install() {
    let registry = Registry::start();
    let names = Names::new(&registry);
    let Some(mut npm) = Client::new(Tool::Npm, &registry) else {
        return;
    };
    let home = npm.home();

    npm.npm_login(&names.user, PASSWORD);
    let whoami = npm.run_ok(&["whoami"], &home, "npm whoami after npm login");
    assert_eq!(
        whoami.stdout.trim(),
        names.user,
        "npm whoami: expected the logged-in user\n{}",
        whoami.describe()
    );

    publish(
        &npm,
        &names.alpha,
        "1.0.0",
        &[],
        &marker_module(&names.alpha, "1.0.0"),
    );
    publish(
        &npm,
        &names.beta,
        "1.0.0",
        &[],
        &marker_module(&names.beta, "1.0.0"),
    );
    publish(
        &npm,
        &names.alpha,
        "1.1.0",
        &[],
        &marker_module(&names.alpha, "1.1.0"),
    );

    // Republishing 1.1.0 must fail and leave the stored tarball alone.
    let (_, doc) = packument(&registry, &names.alpha, "application/json");
    let path = tarball_path(&registry, &doc, "1.1.0");
    let before = get_tarball(&registry, &path);
    let integrity_before = dist_field(&doc, "1.1.0", "integrity");
    assert_eq!(
        common::sha512_integrity(&before),
        integrity_before,
        "GET {path}: bytes do not match dist.integrity"
    );
    let again = npm.new_dir("alpha-1.1.0-cli-again");
    common::write_package(
        &again,
        &names.alpha,
        "1.1.0",
        &[],
        "module.exports = 'changed';\n",
    );
    npm.run_fails(
        &["publish"],
        &again,
        "npm publish of an existing version (1.1.0)",
    );
    let conflict = republish_raw(&npm, &registry, &names.alpha, "1.1.0");
    if conflict.status != 409 {
        let lenient = (400..500).contains(&conflict.status)
            && registry.relax(&format!(
                "republish answered {} instead of 409",
                conflict.status
            ));
        assert!(
            lenient,
            "raw PUT republishing {}@1.1.0: expected 409\n{}",
            names.alpha,
            conflict.describe()
        );
    }
    let after = get_tarball(&registry, &path);
    assert!(
        after == before,
        "GET {path} after the refused republish: expected the original {} bytes ({integrity_before}), got {} bytes ({})",
        before.len(),
        after.len(),
        common::sha512_integrity(&after)
    );
    let (_, doc) = packument(&registry, &names.alpha, "application/json");
    assert_eq!(
        dist_field(&doc, "1.1.0", "integrity"),
        integrity_before,
        "dist.integrity of 1.1.0 changed by a refused republish"
    );

    let view = npm.run_ok(
        &["view", &names.alpha, "versions", "--json"],
        &home,
        "npm view versions",
    );
    let versions: Value = serde_json::from_str(&view.stdout).unwrap_or_else(|e| {
        panic!(
            "npm view versions --json: expected JSON ({e})\n{}",
            view.describe()
        )
    });
    assert_eq!(
        versions,
        serde_json::json!(["1.0.0", "1.1.0"]),
        "npm view {} versions\n{}",
        names.alpha,
        view.describe()
    );
    let spec = format!("{}@1.0.0", names.alpha);
    let view = npm.run_ok(
        &["view", &spec, "version"],
        &home,
        "npm view NAME@1.0.0 version",
    );
    assert_eq!(
        view.stdout.trim(),
        "1.0.0",
        "npm view {spec} version\n{}",
        view.describe()
    );

    npm.run_ok(
        &["dist-tag", "add", &spec, "stable"],
        &home,
        "npm dist-tag add NAME@1.0.0 stable",
    );
    let tags = dist_tags(&npm, &names.alpha);
    let expected: BTreeMap<String, String> = [("latest", "1.1.0"), ("stable", "1.0.0")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(tags, expected, "npm dist-tag ls after adding `stable`");
    npm.run_ok(
        &["dist-tag", "rm", &names.alpha, "stable"],
        &home,
        "npm dist-tag rm NAME stable",
    );
    let tags = dist_tags(&npm, &names.alpha);
    let expected: BTreeMap<String, String> = [("latest".to_string(), "1.1.0".to_string())].into();
    assert_eq!(tags, expected, "npm dist-tag ls after removing `stable`");

    let deps = [
        (names.alpha.as_str(), "^1.0.0"),
        (names.beta.as_str(), "^1.0.0"),
    ];
    publish(&npm, &names.gamma, "1.0.0", &deps, &gamma_module(&names));

    // Logging in again as the existing user works from a machine with a fresh HOME.
    let Some(mut second) = Client::new(Tool::Npm, &registry) else {
        return;
    };
    second.npm_login(&names.user, PASSWORD);
    let whoami = second.run_ok(
        &["whoami"],
        &second.home(),
        "npm whoami after logging in again",
    );
    assert_eq!(
        whoami.stdout.trim(),
        names.user,
        "npm whoami after re-login\n{}",
        whoami.describe()
    );

    let Some(fresh) = Client::new(Tool::Npm, &registry) else {
        return;
    };
    let project = fresh.new_dir("project");
    common::write_project(&project, &[(names.gamma.as_str(), "^1.0.0")]);
    fresh.install(&project);
    assert_installed(&fresh, &project, &names);
}

/// Goal: `tool` installs the fixture tree published by npm. Method: seed with npm, then a
/// fresh client of `tool` (own HOME, empty cache, token from the couchdb login) installs a
/// project depending on `e2e-gamma@^1.0.0` and the tree is checked on disk and by Node.
fn install_scenario(tool: Tool) {
    let registry = Registry::start();
    let names = Names::new(&registry);
    let Some(mut client) = Client::new(tool, &registry) else {
        return;
    };
    let Some(_publisher) = seeded_publisher(&registry, &names) else {
        return;
    };
    client.login_http(&names.user, PASSWORD);
    let project = client.new_dir("project");
    common::write_project(&project, &[(names.gamma.as_str(), "^1.0.0")]);
    client.install(&project);
    assert_installed(&client, &project, &names);
}

#[test]
fn pnpm_install_resolves_range_and_scoped_dependency() {
    install_scenario(Tool::Pnpm);
}

#[test]
fn bun_install_resolves_range_and_scoped_dependency() {
    install_scenario(Tool::Bun);
}

#[test]
fn yarn_berry_install_resolves_range_and_scoped_dependency() {
    install_scenario(Tool::Yarn);
}

/// Goal: the HTTP details clients and caches rely on. Method: seed with npm, then raw
/// HTTP/1.1 requests: content negotiation, ETag/304, gzip, tarball path forms, version and
/// tag documents, dist-tags, errors.
#[test]
fn raw_http_packument_negotiation_etag_gzip_and_tarballs() {
    let registry = Registry::start();
    let names = Names::new(&registry);
    let Some(npm) = seeded_publisher(&registry, &names) else {
        return;
    };
    let alpha_path = format!("/{}", names.alpha);

    // Abbreviated packument: its own content type, the `time` map, and its own ETag.
    let (corgi, corgi_doc) = packument(&registry, &names.alpha, NPM_CORGI_ACCEPT);
    let content_type = corgi.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with(ABBREVIATED),
        "GET {alpha_path} (Accept: {NPM_CORGI_ACCEPT}): expected content-type {ABBREVIATED}\n{}",
        corgi.describe()
    );
    for key in ["1.0.0", "1.1.0"] {
        assert!(
            corgi_doc
                .pointer(&format!("/time/{key}"))
                .is_some_and(Value::is_string),
            "abbreviated packument: expected time[{key:?}] (release-age gates need it)\n{}",
            corgi.describe()
        );
        assert!(
            corgi_doc
                .pointer(&format!("/versions/{key}/dist/tarball"))
                .is_some(),
            "abbreviated packument lacks versions[{key}].dist\n{}",
            corgi.describe()
        );
    }
    assert_eq!(
        corgi_doc.pointer("/dist-tags/latest"),
        Some(&Value::from("1.1.0")),
        "abbreviated dist-tags.latest\n{}",
        corgi.describe()
    );
    let (full, full_doc) = packument(&registry, &names.alpha, "application/json");
    let full_type = full.header("content-type").unwrap_or_default();
    assert!(
        full_type.starts_with("application/json"),
        "GET {alpha_path} (Accept: application/json): expected content-type application/json\n{}",
        full.describe()
    );
    assert_eq!(
        full_doc.get("name"),
        Some(&Value::from(names.alpha.as_str())),
        "full packument name\n{}",
        full.describe()
    );
    let corgi_etag = corgi
        .header("etag")
        .unwrap_or_else(|| {
            panic!(
                "abbreviated packument: expected an ETag\n{}",
                corgi.describe()
            )
        })
        .to_string();
    let full_etag = full
        .header("etag")
        .unwrap_or_else(|| panic!("full packument: expected an ETag\n{}", full.describe()))
        .to_string();
    assert_ne!(
        corgi_etag, full_etag,
        "the abbreviated and the full packument must not share an ETag (caches would mix them)"
    );
    for (response, which) in [(&corgi, "abbreviated"), (&full, "full")] {
        let vary = response.header_tokens("vary");
        let varies = vary.iter().any(|t| t.eq_ignore_ascii_case("accept"));
        if !varies && !registry.relax(&format!("{which} packument Vary {vary:?} lacks Accept")) {
            panic!(
                "{which} packument: expected `Vary` to contain `Accept`, got {vary:?}\n{}",
                response.describe()
            );
        }
    }

    // Conditional requests.
    let not_modified = registry.get(
        &alpha_path,
        &[("Accept", NPM_CORGI_ACCEPT), ("If-None-Match", &corgi_etag)],
    );
    assert_eq!(
        not_modified.status,
        304,
        "GET {alpha_path} with If-None-Match: {corgi_etag}: expected 304\n{}",
        not_modified.describe()
    );
    assert!(
        not_modified.body.is_empty(),
        "304 must have no body\n{}",
        not_modified.describe()
    );
    let full_304 = registry.get(
        &alpha_path,
        &[
            ("Accept", "application/json"),
            ("If-None-Match", &full_etag),
        ],
    );
    assert_eq!(
        full_304.status,
        304,
        "GET {alpha_path} (full) with If-None-Match: {full_etag}: expected 304\n{}",
        full_304.describe()
    );
    let crossed = registry.get(
        &alpha_path,
        &[
            ("Accept", "application/json"),
            ("If-None-Match", &corgi_etag),
        ],
    );
    assert_eq!(crossed.status, 200, "GET {alpha_path} (full) with the abbreviated ETag: expected 200, not a 304 for the other document\n{}", crossed.describe());
    let stale = registry.get(
        &alpha_path,
        &[
            ("Accept", NPM_CORGI_ACCEPT),
            ("If-None-Match", "\"e2e-stale-etag\""),
        ],
    );
    assert_eq!(
        stale.status,
        200,
        "GET {alpha_path} with a stale If-None-Match: expected 200\n{}",
        stale.describe()
    );
    let plain = registry.get(&alpha_path, &[("Accept", NPM_CORGI_ACCEPT)]);
    assert_eq!(
        plain.status,
        200,
        "GET {alpha_path} without If-None-Match: expected 200\n{}",
        plain.describe()
    );

    // gzip when asked for, identical JSON once decompressed.
    let gzipped = registry.get(
        &alpha_path,
        &[("Accept", NPM_CORGI_ACCEPT), ("Accept-Encoding", "gzip")],
    );
    assert_eq!(
        gzipped.status,
        200,
        "GET {alpha_path} with Accept-Encoding: gzip\n{}",
        gzipped.describe()
    );
    assert_eq!(
        gzipped.header("content-encoding"),
        Some("gzip"),
        "expected Content-Encoding: gzip when the client accepts gzip\n{}",
        gzipped.describe()
    );
    let vary = gzipped.header_tokens("vary");
    assert!(
        vary.iter()
            .any(|t| t.eq_ignore_ascii_case("accept-encoding")),
        "gzip'd response: expected Vary to contain Accept-Encoding, got {vary:?}\n{}",
        gzipped.describe()
    );
    let inflated: Value =
        serde_json::from_slice(&common::gunzip(&gzipped.body)).unwrap_or_else(|e| {
            panic!("gzip'd abbreviated packument does not decompress to JSON: {e}")
        });
    assert_eq!(
        inflated, corgi_doc,
        "gzip'd abbreviated packument differs from the identity one"
    );
    let identity = registry.get(&alpha_path, &[("Accept", NPM_CORGI_ACCEPT)]);
    assert!(
        identity
            .header("content-encoding")
            .is_none_or(|e| e == "identity"),
        "no Accept-Encoding: expected an uncompressed body\n{}",
        identity.describe()
    );

    // Tarballs: integrity matches, scoped names in both path forms.
    for version in ["1.0.0", "1.1.0"] {
        let path = tarball_path(&registry, &full_doc, version);
        let bytes = get_tarball(&registry, &path);
        assert_eq!(
            common::sha512_integrity(&bytes),
            dist_field(&full_doc, version, "integrity"),
            "GET {path}: bytes do not match dist.integrity"
        );
    }
    let (_, beta_doc) = packument(&registry, &names.beta, "application/json");
    let beta_integrity = dist_field(&beta_doc, "1.0.0", "integrity");
    let file = tarball_file(&names.beta, "1.0.0");
    let (scope, bare) = names.beta.split_once('/').expect("beta is scoped");
    for path in [
        format!("/{scope}%2f{bare}/-/{file}"),
        format!("/{scope}%2F{bare}/-/{file}"),
        format!("/{scope}/{bare}/-/{file}"),
    ] {
        let bytes = get_tarball(&registry, &path);
        assert_eq!(
            common::sha512_integrity(&bytes),
            beta_integrity,
            "GET {path}: bytes do not match dist.integrity of {}",
            names.beta
        );
    }
    for path in [format!("/{scope}%2f{bare}"), format!("/{scope}%2F{bare}")] {
        let response = registry.get(&path, &[("Accept", NPM_CORGI_ACCEPT)]);
        assert_eq!(
            response.status,
            200,
            "GET {path} (pnpm sends %2F, npm/bun/yarn %2f): expected 200\n{}",
            response.describe()
        );
        let doc = response.json(&path);
        assert_eq!(
            doc.get("name"),
            Some(&Value::from(names.beta.as_str())),
            "GET {path}: name\n{}",
            response.describe()
        );
    }

    // Version and tag documents.
    for (suffix, version) in [("latest", "1.1.0"), ("1.0.0", "1.0.0"), ("1.1.0", "1.1.0")] {
        let path = format!("{alpha_path}/{suffix}");
        let response = registry.get(&path, &[]);
        assert_eq!(
            response.status,
            200,
            "GET {path}: expected 200\n{}",
            response.describe()
        );
        let doc = response.json(&path);
        assert_eq!(
            doc.get("version"),
            Some(&Value::from(version)),
            "GET {path}: expected version {version}\n{}",
            response.describe()
        );
        assert_eq!(
            doc.get("name"),
            Some(&Value::from(names.alpha.as_str())),
            "GET {path}: name\n{}",
            response.describe()
        );
        assert!(
            doc.pointer("/dist/integrity").is_some_and(Value::is_string),
            "GET {path}: expected dist.integrity\n{}",
            response.describe()
        );
    }

    // dist-tags endpoint.
    let tags_path = format!("/-/package/{}/dist-tags", names.alpha);
    let tags = registry.get(&tags_path, &[]);
    assert_eq!(tags.status, 200, "GET {tags_path}\n{}", tags.describe());
    assert_eq!(
        tags.json(&tags_path),
        serde_json::json!({"latest": "1.1.0"}),
        "GET {tags_path}\n{}",
        tags.describe()
    );

    // whoami with the token.
    let token = npm.token().expect("the publisher is logged in");
    let auth = format!("Bearer {token}");
    let whoami = registry.get("/-/whoami", &[("Authorization", &auth)]);
    assert_eq!(
        whoami.status,
        200,
        "GET /-/whoami with a token\n{}",
        whoami.describe()
    );
    assert_eq!(
        whoami.json("/-/whoami").get("username"),
        Some(&Value::from(names.user.as_str())),
        "GET /-/whoami\n{}",
        whoami.describe()
    );

    // Errors.
    let missing = format!("/{}", registry.name("e2e-does-not-exist"));
    assert_error(
        &registry,
        &registry.get(&missing, &[("Accept", NPM_CORGI_ACCEPT)]),
        404,
        &format!("GET {missing}"),
    );
    let missing_version = format!("{alpha_path}/9.9.9");
    assert_error(
        &registry,
        &registry.get(&missing_version, &[]),
        404,
        &format!("GET {missing_version}"),
    );
    let missing_tarball = format!("{alpha_path}/-/{}", tarball_file(&names.alpha, "9.9.9"));
    assert_error(
        &registry,
        &registry.get(&missing_tarball, &[]),
        404,
        &format!("GET {missing_tarball}"),
    );
    let web_login = registry.request(
        "POST",
        "/-/v1/login",
        &[("Content-Type", "application/json")],
        Some(b"{}"),
    );
    assert_error(
        &registry,
        &web_login,
        404,
        "POST /-/v1/login (npm falls back to couchdb login on 4xx)",
    );
    let wrong = serde_json::json!({"_id": format!("org.couchdb.user:{}", names.user), "name": names.user, "password": "wrong-password", "type": "user", "roles": []}).to_string();
    let login_path = format!("/-/user/org.couchdb.user:{}", names.user);
    let refused = registry.request(
        "PUT",
        &login_path,
        &[("Content-Type", "application/json")],
        Some(wrong.as_bytes()),
    );
    assert!(
        (400..500).contains(&refused.status),
        "PUT {login_path} with a wrong password: expected 4xx (401)\n{}",
        refused.describe()
    );
}

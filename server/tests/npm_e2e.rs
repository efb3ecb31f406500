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

/// Checks an error response: the status, and (on `AgentRegistry`) the JSON body
/// `{"error": ..., "message": ...}`.
fn assert_error(registry: &Registry, response: &Response, status: u16, context: &str) {
    let shown = response.describe();
    assert_eq!(
        response.status, status,
        "{context}: expected status {status}\n{shown}"
    );
    let json: Option<Value> = serde_json::from_slice(&response.body).ok();
    let has = |key: &str| {
        json.as_ref()
            .and_then(|j| j.get(key))
            .is_some_and(Value::is_string)
    };
    let shaped = (has("error") && has("message"))
        || registry.relax(&format!(
            "{context}: error body is not {{\"error\",\"message\"}}"
        ));
    assert!(
        shaped,
        "{context}: expected a JSON body {{\"error\": .., \"message\": ..}}\n{shown}"
    );
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
/// republish (tarball unchanged), view, dist-tag add/ls/rm, re-login from a fresh HOME,
/// then a fresh anonymous npm with an empty cache installs a project whose dependency tree
/// needs range resolution.
#[test]
fn npm_login_publish_view_dist_tag_install() {
    let registry = Registry::start();
    let names = Names::new(&registry);
    let Some(mut npm) = Client::new(Tool::Npm, &registry) else {
        return;
    };

    npm.npm_login(&names.user, PASSWORD);
    expect_whoami(&npm, &names.user);
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
    republish_is_refused(&npm, &registry, &names.alpha, "1.1.0");
    view_lists_versions(&npm, &names.alpha);
    dist_tag_add_ls_rm(&npm, &names.alpha);
    let deps = [
        (names.alpha.as_str(), "^1.0.0"),
        (names.beta.as_str(), "^1.0.0"),
    ];
    publish(&npm, &names.gamma, "1.0.0", &deps, &gamma_module(&names));

    // Logging in again as the now existing user, from a fresh HOME.
    let Some(mut second) = Client::new(Tool::Npm, &registry) else {
        return;
    };
    second.npm_login(&names.user, PASSWORD);
    expect_whoami(&second, &names.user);

    let Some(fresh) = Client::new(Tool::Npm, &registry) else {
        return;
    };
    let project = fresh.new_dir("project");
    common::write_project(&project, &[(names.gamma.as_str(), "^1.0.0")]);
    fresh.install(&project);
    assert_installed(&fresh, &project, &names);
}

fn expect_whoami(npm: &Client<'_>, user: &str) {
    let out = npm.run_ok(&["whoami"], &npm.home(), "npm whoami after npm login");
    let got = out.stdout.trim();
    assert_eq!(
        got,
        user,
        "npm whoami: expected {user:?}, got {got:?}\n{}",
        out.describe()
    );
}

/// `npm publish` of an existing version fails, a raw PUT of it answers 409, and the stored
/// tarball (bytes and `dist.integrity`) stays what it was.
fn republish_is_refused(npm: &Client<'_>, registry: &Registry, name: &str, version: &str) {
    let (_, doc) = packument(registry, name, "application/json");
    let path = tarball_path(registry, &doc, version);
    let before = get_tarball(registry, &path);
    let integrity = dist_field(&doc, version, "integrity");
    let hashed = common::sha512_integrity(&before);
    assert_eq!(
        hashed, integrity,
        "GET {path}: bytes do not match dist.integrity"
    );

    let again = npm.new_dir(&format!("{}-{version}-cli-again", name.replace('/', "+")));
    common::write_package(&again, name, version, &[], "module.exports = 'changed';\n");
    let what = format!("npm publish of the existing {name}@{version}");
    npm.run_fails(&["publish"], &again, &what);

    let conflict = republish_raw(npm, registry, name, version);
    if conflict.status != 409 {
        let other = format!("republish answered {} instead of 409", conflict.status);
        let lenient = (400..500).contains(&conflict.status) && registry.relax(&other);
        let shown = conflict.describe();
        assert!(
            lenient,
            "raw PUT republishing {name}@{version}: expected 409\n{shown}"
        );
    }
    let after = get_tarball(registry, &path);
    assert!(
        after == before,
        "GET {path} after the refused republish: expected the original {} bytes \
         ({integrity}), got {} bytes ({})",
        before.len(),
        after.len(),
        common::sha512_integrity(&after)
    );
    let (_, doc) = packument(registry, name, "application/json");
    let now = dist_field(&doc, version, "integrity");
    assert_eq!(
        now, integrity,
        "dist.integrity of {version} changed by a refused republish"
    );
}

fn view_lists_versions(npm: &Client<'_>, name: &str) {
    let home = npm.home();
    let out = npm.run_ok(
        &["view", name, "versions", "--json"],
        &home,
        "npm view versions",
    );
    let versions: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "npm view {name} versions --json: expected JSON ({e})\n{}",
            out.describe()
        )
    });
    let expected = serde_json::json!(["1.0.0", "1.1.0"]);
    assert_eq!(
        versions,
        expected,
        "npm view {name} versions --json\n{}",
        out.describe()
    );

    let spec = format!("{name}@1.0.0");
    let out = npm.run_ok(
        &["view", &spec, "version"],
        &home,
        "npm view NAME@1.0.0 version",
    );
    let got = out.stdout.trim();
    assert_eq!(got, "1.0.0", "npm view {spec} version\n{}", out.describe());
}

fn dist_tag_add_ls_rm(npm: &Client<'_>, name: &str) {
    let home = npm.home();
    let spec = format!("{name}@1.0.0");
    npm.run_ok(
        &["dist-tag", "add", &spec, "stable"],
        &home,
        "npm dist-tag add NAME@1.0.0 stable",
    );
    let tags = dist_tags(npm, name);
    let expected = tag_map(&[("latest", "1.1.0"), ("stable", "1.0.0")]);
    assert_eq!(
        tags, expected,
        "npm dist-tag ls {name} after adding `stable`"
    );

    npm.run_ok(
        &["dist-tag", "rm", name, "stable"],
        &home,
        "npm dist-tag rm NAME stable",
    );
    let tags = dist_tags(npm, name);
    let expected = tag_map(&[("latest", "1.1.0")]);
    assert_eq!(
        tags, expected,
        "npm dist-tag ls {name} after removing `stable`"
    );
}

fn tag_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
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
/// tag documents, dist-tags, whoami, errors.
#[test]
fn raw_http_packument_negotiation_etag_gzip_and_tarballs() {
    let registry = Registry::start();
    let names = Names::new(&registry);
    let Some(npm) = seeded_publisher(&registry, &names) else {
        return;
    };

    let etags = negotiation(&registry, &names.alpha);
    conditional_requests(&registry, &names.alpha, &etags);
    gzip_when_accepted(&registry, &names.alpha);
    tarballs_match_integrity(&registry, &names);
    version_and_tag_documents(&registry, &names.alpha);
    let token = npm.token().expect("the publisher is logged in");
    whoami_and_dist_tags(&registry, &names, token);
    errors(&registry, &names);
}

/// The `ETag`s of the abbreviated and the full packument.
struct Etags {
    abbreviated: String,
    full: String,
}

/// Abbreviated packument: its own content type, the `time` map, its own `ETag`; both forms
/// say `Vary: Accept`.
fn negotiation(registry: &Registry, name: &str) -> Etags {
    let (corgi, corgi_doc) = packument(registry, name, NPM_CORGI_ACCEPT);
    let content_type = corgi.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with(ABBREVIATED),
        "GET /{name} (Accept: {NPM_CORGI_ACCEPT}): expected content-type {ABBREVIATED}\n{}",
        corgi.describe()
    );
    for version in ["1.0.0", "1.1.0"] {
        let time = corgi_doc.pointer(&format!("/time/{version}"));
        assert!(
            time.is_some_and(Value::is_string),
            "abbreviated packument: expected time[{version:?}] (release-age gates need it)\n{}",
            corgi.describe()
        );
        let dist = corgi_doc.pointer(&format!("/versions/{version}/dist/tarball"));
        let shown = corgi.describe();
        assert!(
            dist.is_some(),
            "abbreviated packument lacks versions[{version}].dist\n{shown}"
        );
    }
    let latest = corgi_doc.pointer("/dist-tags/latest");
    let shown = corgi.describe();
    assert_eq!(
        latest,
        Some(&Value::from("1.1.0")),
        "abbreviated dist-tags.latest\n{shown}"
    );

    let (full, full_doc) = packument(registry, name, "application/json");
    let full_type = full.header("content-type").unwrap_or_default();
    assert!(
        full_type.starts_with("application/json"),
        "GET /{name} (Accept: application/json): expected content-type application/json\n{}",
        full.describe()
    );
    let shown = full.describe();
    assert_eq!(
        full_doc.get("name"),
        Some(&Value::from(name)),
        "full packument name\n{shown}"
    );

    let etag = |r: &Response, which: &str| -> String {
        let etag = r.header("etag");
        etag.unwrap_or_else(|| panic!("{which} packument: expected an ETag\n{}", r.describe()))
            .to_string()
    };
    let etags = Etags {
        abbreviated: etag(&corgi, "abbreviated"),
        full: etag(&full, "full"),
    };
    assert_ne!(
        etags.abbreviated, etags.full,
        "the abbreviated and the full packument must not share an ETag (caches would mix them)"
    );
    for (response, which) in [(&corgi, "abbreviated"), (&full, "full")] {
        let vary = response.header_tokens("vary");
        let varies = vary.iter().any(|t| t.eq_ignore_ascii_case("accept"))
            || registry.relax(&format!("{which} packument Vary {vary:?} lacks Accept"));
        let shown = response.describe();
        assert!(
            varies,
            "{which} packument: expected Vary to contain Accept, got {vary:?}\n{shown}"
        );
    }
    etags
}

/// `If-None-Match` with the current `ETag` gives 304 (no body); another document's `ETag`, a
/// stale one, or none give 200.
fn conditional_requests(registry: &Registry, name: &str, etags: &Etags) {
    let path = format!("/{name}");
    let cases = [
        (
            NPM_CORGI_ACCEPT,
            Some(etags.abbreviated.as_str()),
            304,
            "the abbreviated ETag",
        ),
        (
            "application/json",
            Some(etags.full.as_str()),
            304,
            "the full ETag",
        ),
        (
            "application/json",
            Some(etags.abbreviated.as_str()),
            200,
            "the other document's ETag",
        ),
        (
            NPM_CORGI_ACCEPT,
            Some("\"e2e-stale-etag\""),
            200,
            "a stale ETag",
        ),
        (NPM_CORGI_ACCEPT, None, 200, "no If-None-Match"),
    ];
    for (accept, etag, status, case) in cases {
        let mut headers = vec![("Accept", accept)];
        headers.extend(etag.map(|e| ("If-None-Match", e)));
        let response = registry.get(&path, &headers);
        let shown = response.describe();
        assert_eq!(
            response.status, status,
            "GET {path} (Accept: {accept}) with {case}: expected {status}\n{shown}"
        );
        if status == 304 {
            assert!(response.body.is_empty(), "304 must have no body\n{shown}");
        }
    }
}

/// gzip when the client accepts it (same JSON once decompressed), identity otherwise.
fn gzip_when_accepted(registry: &Registry, name: &str) {
    let path = format!("/{name}");
    let (_, identity_doc) = packument(registry, name, NPM_CORGI_ACCEPT);
    let identity = registry.get(&path, &[("Accept", NPM_CORGI_ACCEPT)]);
    let encoding = identity.header("content-encoding");
    let shown = identity.describe();
    let uncompressed = encoding.is_none_or(|e| e == "identity");
    assert!(
        uncompressed,
        "GET {path} without Accept-Encoding: expected no compression\n{shown}"
    );

    let headers = [("Accept", NPM_CORGI_ACCEPT), ("Accept-Encoding", "gzip")];
    let gzipped = registry.get(&path, &headers);
    let shown = gzipped.describe();
    assert_eq!(
        gzipped.status, 200,
        "GET {path} with Accept-Encoding: gzip\n{shown}"
    );
    let encoding = gzipped.header("content-encoding");
    assert_eq!(
        encoding,
        Some("gzip"),
        "expected Content-Encoding: gzip\n{shown}"
    );
    let vary = gzipped.header_tokens("vary");
    let varies = vary
        .iter()
        .any(|t| t.eq_ignore_ascii_case("accept-encoding"));
    assert!(
        varies,
        "gzip'd response: expected Vary to contain Accept-Encoding\n{shown}"
    );
    let inflated = common::gunzip(&gzipped.body);
    let inflated: Value = serde_json::from_slice(&inflated)
        .unwrap_or_else(|e| panic!("gzip'd packument does not decompress to JSON ({e})\n{shown}"));
    assert_eq!(
        inflated, identity_doc,
        "gzip'd abbreviated packument differs from identity"
    );
}

/// Every tarball's sha512 matches `dist.integrity`; the scoped tarball answers in the
/// `@scope%2fname` (npm, bun, yarn), `@scope%2Fname` and `@scope/name` forms, and the scoped
/// packument in both escapings (pnpm sends `%2F`, the others `%2f`).
fn tarballs_match_integrity(registry: &Registry, names: &Names) {
    let (_, alpha_doc) = packument(registry, &names.alpha, "application/json");
    for version in ["1.0.0", "1.1.0"] {
        let path = tarball_path(registry, &alpha_doc, version);
        let hashed = common::sha512_integrity(&get_tarball(registry, &path));
        let integrity = dist_field(&alpha_doc, version, "integrity");
        assert_eq!(
            hashed, integrity,
            "GET {path}: bytes do not match dist.integrity"
        );
    }

    let (_, beta_doc) = packument(registry, &names.beta, "application/json");
    let integrity = dist_field(&beta_doc, "1.0.0", "integrity");
    let listed = tarball_path(registry, &beta_doc, "1.0.0");
    let file = tarball_file(&names.beta, "1.0.0");
    let (scope, bare) = names.beta.split_once('/').expect("beta is scoped");
    let forms = [
        listed,
        format!("/{scope}%2f{bare}/-/{file}"),
        format!("/{scope}%2F{bare}/-/{file}"),
        format!("/{scope}/{bare}/-/{file}"),
    ];
    for path in forms {
        let hashed = common::sha512_integrity(&get_tarball(registry, &path));
        assert_eq!(
            hashed, integrity,
            "GET {path}: bytes do not match {}'s dist.integrity",
            names.beta
        );
    }
    for path in [format!("/{scope}%2f{bare}"), format!("/{scope}%2F{bare}")] {
        let response = registry.get(&path, &[("Accept", NPM_CORGI_ACCEPT)]);
        let shown = response.describe();
        assert_eq!(response.status, 200, "GET {path}: expected 200\n{shown}");
        let doc = response.json(&path);
        let got = doc.get("name");
        assert_eq!(
            got,
            Some(&Value::from(names.beta.as_str())),
            "GET {path}: name\n{shown}"
        );
    }
}

/// `GET /NAME/TAG` and `GET /NAME/VERSION` give that version's manifest.
fn version_and_tag_documents(registry: &Registry, name: &str) {
    for (suffix, version) in [("latest", "1.1.0"), ("1.0.0", "1.0.0"), ("1.1.0", "1.1.0")] {
        let path = format!("/{name}/{suffix}");
        let response = registry.get(&path, &[]);
        let shown = response.describe();
        assert_eq!(response.status, 200, "GET {path}: expected 200\n{shown}");
        let doc = response.json(&path);
        let got = doc.get("version");
        assert_eq!(
            got,
            Some(&Value::from(version)),
            "GET {path}: expected {version}\n{shown}"
        );
        assert_eq!(
            doc.get("name"),
            Some(&Value::from(name)),
            "GET {path}: name\n{shown}"
        );
        let integrity = doc.pointer("/dist/integrity");
        assert!(
            integrity.is_some_and(Value::is_string),
            "GET {path}: dist.integrity\n{shown}"
        );
    }
}

fn whoami_and_dist_tags(registry: &Registry, names: &Names, token: &str) {
    let auth = format!("Bearer {token}");
    let whoami = registry.get("/-/whoami", &[("Authorization", &auth)]);
    let shown = whoami.describe();
    assert_eq!(
        whoami.status, 200,
        "GET /-/whoami with a token: expected 200\n{shown}"
    );
    let user = whoami.json("/-/whoami").get("username").cloned();
    let expected = Some(Value::from(names.user.as_str()));
    assert_eq!(
        user, expected,
        "GET /-/whoami: expected the token's user\n{shown}"
    );

    let path = format!("/-/package/{}/dist-tags", names.alpha);
    let tags = registry.get(&path, &[]);
    let shown = tags.describe();
    assert_eq!(tags.status, 200, "GET {path}: expected 200\n{shown}");
    let expected = serde_json::json!({"latest": "1.1.0"});
    assert_eq!(tags.json(&path), expected, "GET {path}\n{shown}");
}

fn errors(registry: &Registry, names: &Names) {
    let alpha = &names.alpha;
    let missing = format!("/{}", registry.name("e2e-does-not-exist"));
    let response = registry.get(&missing, &[("Accept", NPM_CORGI_ACCEPT)]);
    assert_error(registry, &response, 404, &format!("GET {missing}"));
    let missing = format!("/{alpha}/9.9.9");
    assert_error(
        registry,
        &registry.get(&missing, &[]),
        404,
        &format!("GET {missing}"),
    );
    let missing = format!("/{alpha}/-/{}", tarball_file(alpha, "9.9.9"));
    assert_error(
        registry,
        &registry.get(&missing, &[]),
        404,
        &format!("GET {missing}"),
    );

    let json = [("Content-Type", "application/json")];
    let web_login = registry.request("POST", "/-/v1/login", &json, Some(b"{}"));
    let context = "POST /-/v1/login (npm 11 falls back to the couchdb login on a 4xx)";
    assert_error(registry, &web_login, 404, context);

    let user = &names.user;
    let wrong = serde_json::json!({
        "_id": format!("org.couchdb.user:{user}"),
        "name": user,
        "password": "wrong-password",
        "type": "user",
        "roles": [],
    });
    let path = format!("/-/user/org.couchdb.user:{user}");
    let body = wrong.to_string().into_bytes();
    let refused = registry.request("PUT", &path, &json, Some(&body));
    let shown = refused.describe();
    let client_error = (400..500).contains(&refused.status);
    assert!(
        client_error,
        "PUT {path} with a wrong password: expected a 4xx (401)\n{shown}"
    );
}

/// Goal: every client can publish, not just npm. Method: each tool logs in (raw couchdb PUT),
/// publishes a tiny package with its own publish command, and the registry then serves the
/// packument and a tarball whose sha512 matches the `dist.integrity` it advertises.
fn publish_scenario(tool: Tool) {
    let registry = Registry::start();
    let Some(mut client) = Client::new(tool, &registry) else {
        return;
    };
    let user = registry.name(&format!("publisher-{}", tool.name()));
    client.login_http(&user, PASSWORD);
    let name = registry.name(&format!("e2e-by-{}", tool.name()));
    let dir = client.new_dir("package");
    common::write_package(&dir, &name, "1.0.0", &[], &marker_module(&name, "1.0.0"));
    let args: &[&str] = match tool {
        Tool::Npm | Tool::Bun => &["publish"],
        Tool::Pnpm => &["publish", "--no-git-checks"],
        Tool::Yarn => {
            // yarn refuses to pack a project it has not installed (no lockfile entry).
            client.install(&dir);
            &["npm", "publish"]
        }
    };
    client.run_ok(args, &dir, &format!("{} publish", tool.name()));
    let (response, doc) = packument(&registry, &name, "application/json");
    assert_eq!(response.status, 200, "{}", response.describe());
    assert_eq!(doc["dist-tags"]["latest"], "1.0.0", "{doc}");
    let tarball = get_tarball(&registry, &tarball_path(&registry, &doc, "1.0.0"));
    assert_eq!(
        common::sha512_integrity(&tarball),
        dist_field(&doc, "1.0.0", "integrity"),
        "the served tarball matches its advertised integrity"
    );
}

#[test]
fn pnpm_publish_is_served() {
    publish_scenario(Tool::Pnpm);
}

#[test]
fn bun_publish_is_served() {
    publish_scenario(Tool::Bun);
}

#[test]
fn yarn_berry_publish_is_served() {
    publish_scenario(Tool::Yarn);
}

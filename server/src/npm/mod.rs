//! The npm registry protocol, one file per endpoint family. Handlers validate input into
//! engine newtypes, check auth, then make one engine call (a cached read, or a job for the
//! shard writer). They never open tables, build file paths or hash blobs.

mod dist_tags;
mod packument;
mod publish;
mod tarball;
mod tokens;
mod user;

use engine::config_record::{FLAG_PRIVATE_REGISTRY, FLAG_READ_ONLY};
use engine::names::PackageName;
use sha2::{Digest, Sha256};

use crate::api_error::ApiError;
use crate::auth::token_hash;
use crate::cores::Core;
use crate::http::parse::RequestHead;
use crate::http::respond::Reply;
use crate::route::Route;

/// Handles one routed request. Never fails: errors become JSON replies.
pub async fn handle(route: Route, head: &RequestHead<'_>, body: Vec<u8>, core: &Core) -> Reply {
    match dispatch(route, head, body, core).await {
        Ok(reply) => reply,
        Err(e) => e.reply(),
    }
}

async fn dispatch(
    route: Route,
    head: &RequestHead<'_>,
    body: Vec<u8>,
    core: &Core,
) -> Result<Reply, ApiError> {
    let is_write = matches!(
        route,
        Route::Publish { .. }
            | Route::Unpublish { .. }
            | Route::TarballDelete { .. }
            | Route::DistTagSet { .. }
            | Route::DistTagDelete { .. }
    );
    if is_write && core.shared.live.has(FLAG_READ_ONLY) {
        return Err(ApiError::new(
            503,
            "read_only",
            "the registry is in read-only maintenance mode; writes are refused",
        ));
    }
    let private = core.shared.live.has(FLAG_PRIVATE_REGISTRY);
    match route {
        Route::Ping => Ok(Reply::json(200, &b"{}"[..])),
        Route::Metrics => Ok(crate::metrics::scrape(core).await),
        Route::WebLogin => Err(ApiError::not_found(
            "web login is not supported by this registry; use `npm login --auth-type=legacy`",
        )),
        Route::Whoami => user::whoami(head, core).await,
        Route::Login { user } => user::login(&user, &body, core).await,
        Route::UserGet { user } => user::get(&user, head, core).await,
        Route::Logout { token } => user::logout(&token, head, core).await,
        Route::Packument { package } => {
            read_access(private, head, core).await?;
            packument::full_or_abbreviated(&package_name(&package)?, head, core)
        }
        Route::VersionDoc { package, spec } => {
            read_access(private, head, core).await?;
            packument::version(&package_name(&package)?, &spec, head, core)
        }
        Route::Tarball { package, file } => {
            read_access(private, head, core).await?;
            tarball::get(&package_name(&package)?, &file, core).await
        }
        Route::DistTagsGet { package } => {
            read_access(private, head, core).await?;
            dist_tags::get(&package_name(&package)?, core)
        }
        Route::Publish { package, rev } => {
            let user = require_writer(head, core).await?;
            publish::put(package_name(&package)?, body, user, rev, core).await
        }
        Route::Unpublish { package, rev } => {
            let user = require_writer(head, core).await?;
            publish::unpublish(package_name(&package)?, rev, user, core).await
        }
        Route::TarballDelete { package, file } => {
            require_writer(head, core).await?;
            publish::tarball_delete(&package_name(&package)?, &file, core)
        }
        Route::DistTagSet { package, tag } => {
            let user = require_writer(head, core).await?;
            dist_tags::set(package_name(&package)?, &tag, &body, user, core).await
        }
        Route::DistTagDelete { package, tag } => {
            let user = require_writer(head, core).await?;
            dist_tags::remove(package_name(&package)?, &tag, user, core).await
        }
        Route::TokensList => tokens::list(&require_user(head, core).await?, core),
        Route::TokenCreate => tokens::create(require_user(head, core).await?, &body, core).await,
        Route::TokenDelete { key } => {
            tokens::delete(&require_user(head, core).await?, &key, core).await
        }
        Route::AdminFsck => crate::admin::fsck(head, &body, core).await,
        Route::AdminBackup => crate::admin::backup(head, &body, core).await,
    }
}

/// `GET /metrics` is also a valid package name. Scrapers ask for text; npm clients ask for
/// JSON, except yarn, which sends no Accept: it gets the package when one exists.
#[must_use]
pub fn resolve(route: Route, head: &RequestHead<'_>, core: &Core) -> Route {
    match route {
        Route::Packument { package }
            if package == "metrics"
                && (head.accept_metrics
                    || (!head.accept_json && !package_exists(&package, core))) =>
        {
            Route::Metrics
        }
        other => other,
    }
}

fn package_exists(name: &str, core: &Core) -> bool {
    let shard = core.shared.shard(name);
    !matches!(core.packages.borrow_mut().index(shard, name), Ok(None))
}

fn package_name(raw: &str) -> Result<PackageName, ApiError> {
    Ok(PackageName::parse(raw)?)
}

async fn read_access(private: bool, head: &RequestHead<'_>, core: &Core) -> Result<(), ApiError> {
    if private {
        require_user(head, core).await?;
    }
    Ok(())
}

/// Who sent a request.
struct Caller {
    user: String,
    /// A read-only token (`npm token create` with read-only permission).
    readonly: bool,
}

/// The authenticated user, or 401.
async fn require_user(head: &RequestHead<'_>, core: &Core) -> Result<String, ApiError> {
    Ok(require_caller(head, core).await?.user)
}

/// The authenticated user allowed to write, or 401/403.
async fn require_writer(head: &RequestHead<'_>, core: &Core) -> Result<String, ApiError> {
    let caller = require_caller(head, core).await?;
    if caller.readonly {
        return Err(ApiError::new(403, "forbidden", "this token is read-only"));
    }
    Ok(caller.user)
}

async fn require_caller(head: &RequestHead<'_>, core: &Core) -> Result<Caller, ApiError> {
    user_of(head, core).await?.ok_or_else(|| {
        ApiError::unauthorized("authentication required: log in with `npm login` first")
    })
}

/// The user named by the request's credentials: `Bearer <token>` or `Basic <base64>`.
/// Absent credentials are `None`; present but wrong ones are 401.
async fn user_of(head: &RequestHead<'_>, core: &Core) -> Result<Option<Caller>, ApiError> {
    let Some(value) = head.authorization else {
        return Ok(None);
    };
    let value = std::str::from_utf8(value)
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid UTF-8"))?;
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        let record = core
            .shared
            .auth
            .read_token(&token_hash(credentials))
            .map_err(|e| {
                tracing::error!(error = %e, "token lookup failed");
                ApiError::new(
                    500,
                    "internal_error",
                    "token lookup failed; see the server log",
                )
            })?;
        return match record {
            Some(record) if record.expires_unix.is_some_and(|e| e <= unix_now()) => {
                Err(ApiError::unauthorized("the token has expired"))
            }
            Some(record) => Ok(Some(Caller {
                user: record.user,
                readonly: record.readonly,
            })),
            None => Err(ApiError::unauthorized(
                "the token is invalid or was revoked",
            )),
        };
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let key: [u8; 32] = Sha256::digest(credentials.as_bytes()).into();
        if let Some(user) = core.basic.borrow().get(&key) {
            return Ok(Some(Caller {
                user,
                readonly: false,
            }));
        }
        let decoded = base64_simd::STANDARD
            .decode_to_vec(credentials.as_bytes())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
        let (name, password) = decoded
            .split_once(':')
            .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
        let ok = core
            .shared
            .auth_worker
            .verify(name.to_owned(), password.to_owned())
            .await?;
        if !ok {
            return Err(ApiError::unauthorized("bad username or password"));
        }
        core.basic.borrow_mut().insert(key, name.to_owned());
        return Ok(Some(Caller {
            user: name.to_owned(),
            readonly: false,
        }));
    }
    Err(ApiError::unauthorized(
        "unsupported Authorization scheme (use Bearer or Basic)",
    ))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

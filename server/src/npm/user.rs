//! Users: npm's legacy (CouchDB-style) login `PUT /-/user/org.couchdb.user:NAME`, `whoami`,
//! the user document, and logout (`DELETE /-/user/token/TOKEN`).

use engine::config_record::FLAG_OPEN_REGISTRATION;
use serde::Deserialize;

use crate::api_error::ApiError;
use crate::auth::token_hash;
use crate::cores::Core;
use crate::http::parse::RequestHead;
use crate::http::respond::Reply;

const USER_NAME_BYTES_MAX: usize = 64;
const PASSWORD_BYTES_MAX: usize = 1024;

#[derive(Deserialize)]
struct LoginBody {
    name: Option<String>,
    password: Option<String>,
    email: Option<String>,
}

fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= USER_NAME_BYTES_MAX
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub(super) async fn login(url_user: &str, body: &[u8], core: &Core) -> Result<Reply, ApiError> {
    let body: LoginBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "malformed_json", format!("login body: {e}")))?;
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_request("the login body has no name"))?;
    if name != url_user {
        return Err(ApiError::bad_request(format!(
            "user name in the URL ({url_user:?}) and body ({name:?}) differ"
        )));
    }
    if !valid_user_name(&name) {
        return Err(ApiError::bad_request(
            "user names are 1-64 characters of letters, digits, '.', '_' and '-'",
        ));
    }
    let password = body.password.unwrap_or_default();
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(ApiError::bad_request("the password must be 1-1024 bytes"));
    }
    let open = core.shared.live.has(FLAG_OPEN_REGISTRATION);
    let token = core
        .shared
        .auth_worker
        .login(name.clone(), password, body.email, open)
        .await?;
    let reply = serde_json::json!({
        "ok": true,
        "id": format!("org.couchdb.user:{name}"),
        "rev": "1",
        "token": token,
    });
    Ok(Reply::json(
        201,
        serde_json::to_vec(&reply).expect("a JSON value serializes"),
    ))
}

pub(super) async fn whoami(head: &RequestHead<'_>, core: &Core) -> Result<Reply, ApiError> {
    let user = super::require_user(head, core).await?;
    let body = serde_json::json!({ "username": user });
    Ok(Reply::json(
        200,
        serde_json::to_vec(&body).expect("a JSON value serializes"),
    ))
}

pub(super) async fn get(
    user: &str,
    head: &RequestHead<'_>,
    core: &Core,
) -> Result<Reply, ApiError> {
    super::require_user(head, core).await?;
    let record = core.shared.auth.read_user(user).map_err(|e| {
        tracing::error!(error = %e, "user lookup failed");
        ApiError::new(
            500,
            "internal_error",
            "user lookup failed; see the server log",
        )
    })?;
    let record = record.ok_or_else(|| ApiError::not_found(format!("user {user:?} not found")))?;
    let body = serde_json::json!({
        "_id": format!("org.couchdb.user:{}", record.name),
        "name": record.name,
        "email": record.email,
        "type": "user",
        "roles": [],
    });
    Ok(Reply::json(
        200,
        serde_json::to_vec(&body).expect("a JSON value serializes"),
    ))
}

pub(super) async fn logout(
    token: &str,
    head: &RequestHead<'_>,
    core: &Core,
) -> Result<Reply, ApiError> {
    let user = super::require_user(head, core).await?;
    let hash = token_hash(token);
    let owner = core
        .shared
        .auth
        .read_token(&hash)
        .ok()
        .flatten()
        .map(|t| t.user);
    if owner.as_deref() != Some(user.as_str()) {
        return Err(ApiError::not_found("no such token for this user"));
    }
    core.shared.auth_worker.delete_token(hash).await?;
    Ok(Reply::json(200, &br#"{"ok":true}"#[..]))
}

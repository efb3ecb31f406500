//! `npm token list|create|revoke`: `GET/POST /-/npm/v1/tokens` and
//! `DELETE /-/npm/v1/tokens/token/KEY`. A token's key is the hex sha256 of its secret (what
//! the store is keyed by), so listing never reveals a usable secret. Read-only tokens and
//! expiry are enforced where requests are authenticated (`npm/mod.rs`); CIDR-restricted
//! tokens are refused, because this registry does not enforce client addresses yet.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::auth::{token_hash, TokenRequest};
use crate::cores::Core;
use crate::http::respond::Reply;

const TOKEN_NAME_CHARS_MAX: usize = 128;
const EXPIRES_DAYS_MAX: u64 = 3650;

#[derive(Deserialize)]
struct CreateBody {
    password: Option<String>,
    name: Option<String>,
    /// npm 10 and older.
    readonly: Option<bool>,
    /// npm 11: "read-only" or "read-write".
    packages_and_scopes_permission: Option<String>,
    /// Days until the token expires.
    expires: Option<u64>,
    cidr_whitelist: Option<Vec<String>>,
}

fn storage_error(e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "token store failed");
    ApiError::new(
        500,
        "internal_error",
        "the token store failed; see the server log",
    )
}

fn describe(key: &[u8; 32], record: &engine::auth::TokenRecord) -> Value {
    json!({
        "token": record.prefix,
        "key": hex::encode(key),
        "name": record.name,
        "readonly": record.readonly,
        "automation": false,
        "cidr_whitelist": null,
        "created": record.created,
        "updated": record.created,
        "expires": record.expires_unix.map(|e| {
            humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(e))
                .to_string()
        }),
    })
}

pub(super) fn list(user: &str, core: &Core) -> Result<Reply, ApiError> {
    let tokens = core
        .shared
        .auth
        .list_tokens(user)
        .map_err(|e| storage_error(&e))?;
    let objects: Vec<Value> = tokens
        .iter()
        .map(|(key, record)| describe(key, record))
        .collect();
    let body = json!({ "objects": objects, "total": objects.len(), "urls": { "next": null } });
    Ok(Reply::json(
        200,
        serde_json::to_vec(&body).expect("a JSON value serializes"),
    ))
}

pub(super) async fn create(user: String, body: &[u8], core: &Core) -> Result<Reply, ApiError> {
    let body: CreateBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "malformed_json", format!("token request: {e}")))?;
    let password = body
        .password
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("creating a token needs your password"))?;
    if body.cidr_whitelist.is_some_and(|c| !c.is_empty()) {
        return Err(ApiError::bad_request(
            "CIDR-restricted tokens are not supported by this registry",
        ));
    }
    if body
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > TOKEN_NAME_CHARS_MAX)
    {
        return Err(ApiError::bad_request(
            "token names are at most 128 characters",
        ));
    }
    let readonly = body.readonly.unwrap_or(false)
        || body.packages_and_scopes_permission.as_deref() == Some("read-only");
    let expires_unix = match body.expires {
        None | Some(0) => None,
        Some(days) if days > EXPIRES_DAYS_MAX => {
            return Err(ApiError::bad_request(
                "tokens expire within 3650 days at most",
            ));
        }
        Some(days) => Some(super::unix_now() + days * 86_400),
    };
    let request = TokenRequest {
        user,
        password,
        name: body.name,
        readonly,
        expires_unix,
    };
    let (token, record) = core.shared.auth_worker.create_token(request).await?;
    let mut answer = describe(&token_hash(&token), &record);
    answer["token"] = Value::String(token);
    Ok(Reply::json(
        200,
        serde_json::to_vec(&answer).expect("a JSON value serializes"),
    ))
}

/// `key` is the token's key (hex sha256) or, as npm also sends, the secret itself.
pub(super) async fn delete(user: &str, key: &str, core: &Core) -> Result<Reply, ApiError> {
    let mut hash = [0u8; 32];
    if hex::decode_to_slice(key, &mut hash).is_err() {
        hash = token_hash(key);
    }
    let owner = core
        .shared
        .auth
        .read_token(&hash)
        .map_err(|e| storage_error(&e))?;
    if owner.is_none_or(|record| record.user != user) {
        return Err(ApiError::not_found("no such token for this user"));
    }
    core.shared.auth_worker.delete_token(hash).await?;
    Ok(Reply::json(204, bytes::Bytes::new()))
}

//! Users and tokens, in `<home>/auth.redb`. Passwords arrive here already hashed (argon2id PHC
//! strings, computed by the server off the request path); tokens are stored only as their
//! sha256, so a copy of the database reveals no usable token. Looking a token up by its hash
//! means no stored secret is ever compared byte by byte with client input.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub(crate) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub(crate) const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens");

/// A registered user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// argon2id PHC string.
    pub password_phc: String,
    pub email: Option<String>,
    pub created: String,
}

/// A token, keyed by the sha256 of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    pub created: String,
    pub readonly: bool,
    /// First characters of the secret, for `npm token list`.
    pub prefix: String,
    /// The name given at `npm token create --name` (login tokens have none).
    #[serde(default)]
    pub name: Option<String>,
    /// Seconds since the Unix epoch after which the token is refused.
    #[serde(default)]
    pub expires_unix: Option<u64>,
}

/// Why an auth operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthStoreError {
    #[error("auth database error: {0}")]
    Storage(#[from] redb::Error),
    #[error("auth record for {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("user {0} already exists")]
    UserExists(String),
}

fn storage(e: impl Into<redb::Error>) -> AuthStoreError {
    AuthStoreError::Storage(e.into())
}

/// The users and tokens database.
pub struct AuthStore {
    db: Database,
}

impl std::fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthStore")
    }
}

impl AuthStore {
    /// Opens or creates the database. Blocks: fsync.
    ///
    /// # Errors
    /// redb errors.
    pub fn open(path: &Path) -> Result<AuthStore, AuthStoreError> {
        let db = redb::Builder::new()
            .set_cache_size(8 * 1024 * 1024)
            .create(path)
            .map_err(storage)?;
        let txn = crate::shard::begin_durable_write(&db).map_err(storage)?;
        txn.open_table(USERS).map_err(storage)?;
        txn.open_table(TOKENS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(AuthStore { db })
    }

    /// The redb database, for backup's read transaction.
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Looks a user up.
    ///
    /// # Errors
    /// redb errors or a corrupt record.
    pub fn read_user(&self, name: &str) -> Result<Option<UserRecord>, AuthStoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(USERS).map_err(storage)?;
        let Some(value) = table.get(name).map_err(storage)? else {
            return Ok(None);
        };
        decode(name, value.value()).map(Some)
    }

    /// Creates a user; refuses an existing name (checked inside the write transaction, so two
    /// racing registrations cannot both succeed). Blocks: fsync.
    ///
    /// # Errors
    /// `UserExists`, redb errors.
    pub fn create_user(&self, user: &UserRecord) -> Result<(), AuthStoreError> {
        let txn = crate::shard::begin_durable_write(&self.db).map_err(storage)?;
        {
            let mut table = txn.open_table(USERS).map_err(storage)?;
            if table.get(user.name.as_str()).map_err(storage)?.is_some() {
                return Err(AuthStoreError::UserExists(user.name.clone()));
            }
            let bytes = serde_json::to_vec(user).expect("a plain struct serializes");
            table
                .insert(user.name.as_str(), bytes.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Stores a token record under the sha256 of its secret. Blocks: fsync.
    ///
    /// # Errors
    /// redb errors.
    pub fn write_token(&self, hash: &[u8; 32], token: &TokenRecord) -> Result<(), AuthStoreError> {
        let txn = crate::shard::begin_durable_write(&self.db).map_err(storage)?;
        {
            let mut table = txn.open_table(TOKENS).map_err(storage)?;
            let bytes = serde_json::to_vec(token).expect("a plain struct serializes");
            table.insert(hash, bytes.as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Looks a token up by the sha256 of its secret.
    ///
    /// # Errors
    /// redb errors or a corrupt record.
    pub fn read_token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, AuthStoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(TOKENS).map_err(storage)?;
        let Some(value) = table.get(hash).map_err(storage)? else {
            return Ok(None);
        };
        decode("token", value.value()).map(Some)
    }

    /// Deletes a token; returns whether it existed. Blocks: fsync.
    ///
    /// # Errors
    /// redb errors.
    pub fn delete_token(&self, hash: &[u8; 32]) -> Result<bool, AuthStoreError> {
        let txn = crate::shard::begin_durable_write(&self.db).map_err(storage)?;
        let existed = {
            let mut table = txn.open_table(TOKENS).map_err(storage)?;
            let removed = table.remove(hash).map_err(storage)?;
            removed.is_some()
        };
        txn.commit().map_err(storage)?;
        Ok(existed)
    }

    /// Every token of `user`, with its key (the secret's sha256).
    ///
    /// # Errors
    /// redb errors or a corrupt record.
    pub fn list_tokens(&self, user: &str) -> Result<Vec<([u8; 32], TokenRecord)>, AuthStoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(TOKENS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let record: TokenRecord = decode("token", value.value())?;
            if record.user == user {
                out.push((*key.value(), record));
            }
        }
        Ok(out)
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, AuthStoreError> {
    serde_json::from_slice(bytes).map_err(|e| AuthStoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuthStore::open(&dir.path().join("auth.redb")).unwrap();
        let user = UserRecord {
            name: "ada".into(),
            password_phc: "$argon2id$...".into(),
            email: None,
            created: "now".into(),
        };
        store.create_user(&user).unwrap();
        assert!(matches!(
            store.create_user(&user),
            Err(AuthStoreError::UserExists(_))
        ));
        assert_eq!(store.read_user("ada").unwrap(), Some(user));
        let token = TokenRecord {
            user: "ada".into(),
            created: "now".into(),
            readonly: false,
            prefix: "abc".into(),
            name: None,
            expires_unix: None,
        };
        store.write_token(&[7; 32], &token).unwrap();
        assert_eq!(store.read_token(&[7; 32]).unwrap(), Some(token));
        assert_eq!(store.list_tokens("ada").unwrap().len(), 1);
        assert!(store.delete_token(&[7; 32]).unwrap());
        assert_eq!(store.read_token(&[7; 32]).unwrap(), None);
    }
}

//! Authentication: tokens, passwords, and the auth worker.
//!
//! Tokens are 32 random bytes (hex, prefixed `agr_`); only their sha256 is stored, and a token
//! is found by looking its hash up, so no stored secret is compared with client input.
//! Passwords are hashed with argon2id. Hashing and verifying take tens of milliseconds of CPU,
//! so they run on the auth worker thread, never on a core's event loop; so do auth writes.
//! Successful Basic-auth checks are cached per core for `BASIC_CACHE_TTL`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use engine::auth::{AuthStore, AuthStoreError, TokenRecord, UserRecord};
use futures_channel::oneshot;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::idle::WorkerRelease;

const TOKEN_PREFIX: &str = "agr_";
const BASIC_CACHE_TTL: Duration = Duration::from_secs(300);
const BASIC_CACHE_ENTRIES_MAX: usize = 4096;

/// sha256 of a token secret: the key it is stored under.
#[must_use]
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

fn now_string() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("bad username or password")]
    BadCredentials,
    #[error("user registration is closed on this registry")]
    RegistrationClosed,
    #[error("auth storage failed: {0}")]
    Storage(#[from] AuthStoreError),
    #[error("the auth worker has stopped")]
    WorkerGone,
}

/// What `npm token create` asked for.
pub struct TokenRequest {
    pub user: String,
    pub password: String,
    pub name: Option<String>,
    pub readonly: bool,
    pub expires_unix: Option<u64>,
}

enum Job {
    CreateToken(TokenRequest),
    Login {
        name: String,
        password: String,
        email: Option<String>,
        open: bool,
    },
    Verify {
        name: String,
        password: String,
    },
    DeleteToken {
        hash: [u8; 32],
    },
}

enum Answer {
    Token(Result<String, LoginError>),
    Created(Result<(String, TokenRecord), LoginError>),
    Verified(Result<bool, LoginError>),
    Deleted(Result<bool, LoginError>),
}

/// Handle to the auth worker thread.
#[derive(Clone)]
pub struct AuthWorker {
    tx: flume::Sender<(Job, oneshot::Sender<Answer>)>,
}

impl AuthWorker {
    /// Starts the worker.
    ///
    /// # Errors
    /// Thread creation failures.
    /// It returns its free memory after `idle_release_secs` without a job (`idle.rs`).
    pub fn start(store: Arc<AuthStore>, idle_release_secs: u64) -> std::io::Result<AuthWorker> {
        let (tx, rx) = flume::bounded::<(Job, oneshot::Sender<Answer>)>(256);
        std::thread::Builder::new()
            .name("auth-worker".into())
            .spawn(move || {
                let mut release = WorkerRelease::new(idle_release_secs);
                while let Some((job, reply)) = release.recv(&rx) {
                    let _ = reply.send(run(&store, job));
                }
            })?;
        Ok(AuthWorker { tx })
    }

    async fn ask(&self, job: Job) -> Result<Answer, LoginError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send_async((job, tx))
            .await
            .map_err(|_| LoginError::WorkerGone)?;
        rx.await.map_err(|_| LoginError::WorkerGone)
    }

    /// Logs `name` in (creating the user when `open` registration allows) and returns a new
    /// token.
    ///
    /// # Errors
    /// `BadCredentials`, `RegistrationClosed`, storage errors.
    pub async fn login(
        &self,
        name: String,
        password: String,
        email: Option<String>,
        open: bool,
    ) -> Result<String, LoginError> {
        match self
            .ask(Job::Login {
                name,
                password,
                email,
                open,
            })
            .await?
        {
            Answer::Token(result) => result,
            _ => Err(LoginError::WorkerGone),
        }
    }

    /// Creates a named token after checking the user's password (`npm token create`).
    /// Returns the secret and its stored record.
    ///
    /// # Errors
    /// `BadCredentials`, storage errors.
    pub async fn create_token(
        &self,
        request: TokenRequest,
    ) -> Result<(String, TokenRecord), LoginError> {
        match self.ask(Job::CreateToken(request)).await? {
            Answer::Created(result) => result,
            _ => Err(LoginError::WorkerGone),
        }
    }

    /// Checks a password.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn verify(&self, name: String, password: String) -> Result<bool, LoginError> {
        match self.ask(Job::Verify { name, password }).await? {
            Answer::Verified(result) => result,
            _ => Err(LoginError::WorkerGone),
        }
    }

    /// Revokes a token; returns whether it existed.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn delete_token(&self, hash: [u8; 32]) -> Result<bool, LoginError> {
        match self.ask(Job::DeleteToken { hash }).await? {
            Answer::Deleted(result) => result,
            _ => Err(LoginError::WorkerGone),
        }
    }
}

fn run(store: &AuthStore, job: Job) -> Answer {
    match job {
        Job::Login {
            name,
            password,
            email,
            open,
        } => Answer::Token(login(store, &name, &password, email, open)),
        Job::Verify { name, password } => Answer::Verified(verify(store, &name, &password)),
        Job::CreateToken(request) => Answer::Created(create_token(store, request)),
        Job::DeleteToken { hash } => {
            Answer::Deleted(store.delete_token(&hash).map_err(LoginError::from))
        }
    }
}

fn login(
    store: &AuthStore,
    name: &str,
    password: &str,
    email: Option<String>,
    open: bool,
) -> Result<String, LoginError> {
    match store.read_user(name)? {
        Some(_) => {
            if !verify(store, name, password)? {
                return Err(LoginError::BadCredentials);
            }
        }
        None if open => {
            let user = UserRecord {
                name: name.to_owned(),
                password_phc: hash_password(password),
                email,
                created: now_string(),
            };
            match store.create_user(&user) {
                Ok(()) => {}
                // A racing registration won; fall back to checking the password against it.
                Err(AuthStoreError::UserExists(_)) => {
                    if !verify(store, name, password)? {
                        return Err(LoginError::BadCredentials);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => return Err(LoginError::RegistrationClosed),
    }
    let token = new_token();
    let record = TokenRecord {
        user: name.to_owned(),
        created: now_string(),
        readonly: false,
        prefix: token[..TOKEN_PREFIX.len() + 6].to_owned(),
        name: None,
        expires_unix: None,
    };
    store.write_token(&token_hash(&token), &record)?;
    Ok(token)
}

fn create_token(
    store: &AuthStore,
    request: TokenRequest,
) -> Result<(String, TokenRecord), LoginError> {
    if !verify(store, &request.user, &request.password)? {
        return Err(LoginError::BadCredentials);
    }
    let token = new_token();
    let record = TokenRecord {
        user: request.user,
        created: now_string(),
        readonly: request.readonly,
        prefix: token[..TOKEN_PREFIX.len() + 6].to_owned(),
        name: request.name,
        expires_unix: request.expires_unix,
    };
    store.write_token(&token_hash(&token), &record)?;
    Ok((token, record))
}

fn verify(store: &AuthStore, name: &str, password: &str) -> Result<bool, LoginError> {
    let Some(user) = store.read_user(name)? else {
        // Spend the same work as a real check so timing does not reveal which users exist.
        let _ = hash_password(password);
        return Ok(false);
    };
    let Ok(parsed) = PasswordHash::new(&user.password_phc) else {
        return Ok(false);
    };
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2id with default parameters accepts any password")
        .to_string()
}

/// Per-core cache of successful Basic-auth checks, keyed by the sha256 of the header value.
#[derive(Default)]
pub struct BasicCache {
    entries: HashMap<[u8; 32], (String, Instant)>,
}

impl BasicCache {
    /// The cached user for `key`, if still fresh.
    #[must_use]
    pub fn get(&self, key: &[u8; 32]) -> Option<String> {
        let (user, at) = self.entries.get(key)?;
        (at.elapsed() < BASIC_CACHE_TTL).then(|| user.clone())
    }

    /// Remembers a successful check.
    pub fn insert(&mut self, key: [u8; 32], user: String) {
        if self.entries.len() >= BASIC_CACHE_ENTRIES_MAX {
            self.entries.clear();
        }
        self.entries.insert(key, (user, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_creates_then_checks_password() {
        // A space cannot occur in a PHC string (base64 fields), so the last check cannot
        // pass or fail by chance; "pw" once appeared in a random salt.
        const PASSWORD: &str = "open sesame";
        let dir = tempfile::tempdir().unwrap();
        let store = AuthStore::open(&dir.path().join("auth.redb")).unwrap();
        assert!(matches!(
            login(&store, "ada", PASSWORD, None, false),
            Err(LoginError::RegistrationClosed)
        ));
        let token = login(&store, "ada", PASSWORD, None, true).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(
            store.read_token(&token_hash(&token)).unwrap().unwrap().user,
            "ada"
        );
        assert!(login(&store, "ada", PASSWORD, None, false).is_ok());
        assert!(matches!(
            login(&store, "ada", "wrong", None, true),
            Err(LoginError::BadCredentials)
        ));
        let phc = store.read_user("ada").unwrap().unwrap().password_phc;
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains(PASSWORD));
    }
}

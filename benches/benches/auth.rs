//! Auth check on the request path (`cargo bench -p benches --bench auth`): what a core spends
//! to learn who sent a request, before the handler's one engine call.
//!
//! - `auth/token_hash`: sha256 of an `agr_<64 hex>` token (`server::auth::token_hash`).
//! - `auth/token_lookup`: `AuthStore::read_token` of that hash: a redb read transaction,
//!   a B-tree get and the JSON decode of the `TokenRecord`.
//! - `auth/bearer_check`: the whole `Authorization: Bearer agr_<hex>` branch of
//!   `npm::user_of` (UTF-8 check, scheme split, hash, lookup, expiry check). `user_of` is
//!   private and needs a running core, so its steps are repeated here in the same order.
//!   There is no token cache and no constant-time compare: a token is found by its hash, so
//!   no stored secret is compared with client input.
//! - `auth/bearer_check_unknown`: the same for a token that is not stored (a 401).
//! - `auth/basic_cache_hit`: the `Basic` branch when the core's `BasicCache` holds the
//!   credentials: sha256 of the header value, then the cache lookup.
//! - `auth/argon2_verify`: a password check on the auth worker (`AuthWorker::verify`:
//!   `read_user` plus argon2id with default parameters). It runs on the `auth-worker` thread,
//!   never on a core, and happens once per Basic credentials per `BASIC_CACHE_TTL`; it is here
//!   so its cost is on record. The channel hop to the worker costs microseconds, noise next to
//!   argon2's milliseconds.
//!
//! The data directory is real (`DataDir::open_or_create` in a temp directory): the user and
//! its token come from `AuthWorker::login`, as `npm login` makes them, and `FILLER_TOKENS`
//! more tokens written with `AuthStore::write_token` give the tokens table a realistic depth.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use engine::auth::{AuthStore, TokenRecord};
use engine::data_dir::DataDir;
use server::auth::{token_hash, AuthWorker, BasicCache};
use sha2::{Digest, Sha256};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USER: &str = "bench-agent";
const PASSWORD: &str = "correct horse battery staple";
/// Tokens besides the user's own: a registry serving a swarm of agents holds many.
const FILLER_TOKENS: u32 = 1_000;

/// Who a request is from, as `user_of` reports it: user and read-only flag.
type Caller = (String, bool);

/// The `Bearer` branch of `npm::user_of`, step by step; `None` is its 401.
fn bearer_caller(store: &AuthStore, authorization: &[u8]) -> Option<Caller> {
    let value = std::str::from_utf8(authorization).ok()?;
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    assert!(
        scheme.eq_ignore_ascii_case("bearer"),
        "fixture is a Bearer header"
    );
    let record = store
        .read_token(&token_hash(credentials))
        .expect("token lookup")?;
    if record.expires_unix.is_some_and(|e| e <= unix_now()) {
        return None;
    }
    Some((record.user, record.readonly))
}

/// The `Basic` branch of `npm::user_of` up to its cache hit.
fn basic_cached_user(cache: &BasicCache, authorization: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(authorization).ok()?;
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    assert!(
        scheme.eq_ignore_ascii_case("basic"),
        "fixture is a Basic header"
    );
    let key: [u8; 32] = Sha256::digest(credentials.as_bytes()).into();
    cache.get(&key)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Wakes the bench thread parked in `block_on`.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs one `AuthWorker` call to completion on this thread. Its futures only wait for the
/// worker's channel, so parking until woken is all an executor has to do here.
fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

fn write_filler_tokens(store: &AuthStore) {
    for index in 0..FILLER_TOKENS {
        let token = format!("agr_{index:064x}");
        let record = TokenRecord {
            user: format!("agent-{index}"),
            created: "2026-05-28T00:00:00.000Z".to_owned(),
            readonly: index % 4 == 0,
            prefix: token[..10].to_owned(),
            name: None,
            expires_unix: None,
        };
        store
            .write_token(&token_hash(&token), &record)
            .expect("filler token is stored");
    }
}

fn bench_auth(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let data = DataDir::open_or_create(dir.path(), 2).expect("data directory");
    let store = Arc::new(AuthStore::open(&data.auth_path()).expect("auth store"));
    let worker = AuthWorker::start(Arc::clone(&store), 0).expect("auth worker");
    let token = block_on(worker.login(USER.to_owned(), PASSWORD.to_owned(), None, true))
        .expect("login creates the user and a token");
    write_filler_tokens(&store);

    let bearer = format!("Bearer {token}").into_bytes();
    let unknown = format!("Bearer agr_{}", "5a".repeat(32)).into_bytes();
    assert_eq!(
        bearer_caller(&store, &bearer),
        Some((USER.to_owned(), false))
    );
    assert_eq!(bearer_caller(&store, &unknown), None);

    // Filled the way `user_of` fills it: after the worker has accepted the password.
    let credentials = base64_simd::STANDARD.encode_to_string(format!("{USER}:{PASSWORD}"));
    let basic = format!("Basic {credentials}").into_bytes();
    assert!(block_on(worker.verify(USER.to_owned(), PASSWORD.to_owned())).expect("verify"));
    let mut cache = BasicCache::default();
    cache.insert(
        Sha256::digest(credentials.as_bytes()).into(),
        USER.to_owned(),
    );
    assert_eq!(basic_cached_user(&cache, &basic).as_deref(), Some(USER));

    let mut group = c.benchmark_group("auth");
    group.bench_function("token_hash", |b| {
        b.iter(|| token_hash(black_box(&token)));
    });
    let hash = token_hash(&token);
    group.bench_function("token_lookup", |b| {
        b.iter(|| store.read_token(black_box(&hash)).expect("lookup"));
    });
    group.bench_function("bearer_check", |b| {
        b.iter(|| bearer_caller(&store, black_box(&bearer)));
    });
    group.bench_function("bearer_check_unknown", |b| {
        b.iter(|| bearer_caller(&store, black_box(&unknown)));
    });
    group.bench_function("basic_cache_hit", |b| {
        b.iter(|| basic_cached_user(&cache, black_box(&basic)));
    });
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.bench_function("argon2_verify", |b| {
        b.iter(|| block_on(worker.verify(USER.to_owned(), PASSWORD.to_owned())).expect("verify"));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = benches::config();
    targets = bench_auth
}
criterion_main!(benches);

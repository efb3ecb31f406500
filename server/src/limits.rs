//! Every bound the server enforces on client input, as a const. Going over one is an error for
//! the client (413, 414, 431) or a closed connection, never a panic or unbounded growth.

/// Largest request head (request line + headers).
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most request headers.
pub const HEADERS_COUNT_MAX: usize = 96;
/// Longest request target.
pub const TARGET_BYTES_MAX: usize = 8 * 1024;
/// Largest request body (a publish carries a base64 tarball: 4/3 of its size plus JSON).
pub const BODY_BYTES_MAX: usize = engine::limits::TARBALL_BYTES_MAX / 3 * 4 + 8 * 1024 * 1024;
/// Largest body for requests that are not publishes (login, dist-tags).
pub const SMALL_BODY_BYTES_MAX: usize = 64 * 1024;
/// Connection read buffer's starting capacity.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Responses at most this large are copied into the output buffer (one write); larger bodies
/// are written straight from their shared `Bytes`.
pub const COPY_BODY_BYTES_MAX: usize = 32 * 1024;
/// How long a client may take to send a complete request head once it started one.
pub const HEADER_TIMEOUT_MS: u64 = 10_000;
/// How long a keep-alive connection may sit idle between requests.
pub const IDLE_TIMEOUT_MS: u64 = 60_000;
/// How long a body may take to arrive, per read.
pub const BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Pending ops per shard writer before senders wait (bounded channel).
pub const WRITER_QUEUE_DEPTH: usize = 1024;
/// Threads that parse publish bodies and make their tarballs durable before the writer
/// commits them. Each works on a batch and syncs its blobs from up to
/// `engine::limits::BLOB_WRITE_THREADS_MAX` threads; a few batches in flight keep the CPUs
/// parsing while the disk syncs.
pub const PUBLISH_PREPARE_THREADS: usize = 4;
/// Bodies one prepare thread takes at most into a batch.
pub const PREPARE_BATCH_MAX: usize = 16;
/// Ops one group commit takes at most.
pub const WRITER_BATCH_MAX: usize = 256;
/// Packument cache budget per CPU: the cache is shared by the cores
/// (`cache::SharedPackages`), and its budget is this times the CPU count, or the core count
/// when `--cores` asks for more (192 MiB on two CPUs). It was per core until cores defaulted
/// to half the CPUs: one core on two CPUs then had 96 MiB, and `perf scale` at 100,000
/// packages hit 69% (abbreviated) instead of 99.7%. At 64 MiB per core, 100,000 small packages read at random hit 73-81% and served
/// 0.66-0.81 of the 1,000-package rate; at 96 MiB they hit 96% and served 0.92-0.94, for
/// ~55 MiB more RSS after traffic (perf/RESULTS.md, session 6). See ARCHITECTURE.md, "One
/// packument cache for every core".
pub const PACKAGE_CACHE_BYTES_PER_CPU: usize = 96 * 1024 * 1024;
/// Mutex-guarded segments of the shared packument cache (by name hash): enough that two cores
/// rarely meet on one lock, few enough that a segment's eviction pass stays short.
pub const PACKAGE_CACHE_SEGMENTS: usize = 64;
/// How often each core drops its kept shard read transactions once their shard has
/// committed (`cache::PackageCache::release_stale`), so an idle core does not pin pages
/// the writer could reuse.
pub const READ_TXN_RELEASE_MS: u64 = 250;
/// Seconds without a request on any core before the caches are emptied and their memory
/// given back (`idle.rs`; `serve --idle-release-secs`, 0 never). Long enough that a pause
/// between two installs of one agent keeps the cache warm, short enough that a registry
/// left running goes back to its start-up size while nobody uses it.
pub const IDLE_RELEASE_SECS_DEFAULT: u64 = 30;
/// Per-core budget of documents rebased for another `Host`.
pub const REBASED_CACHE_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Per-core tarball cache budget, and the largest tarball it keeps. Real trees have a few
/// tarballs of several MiB (typescript: 9.2 MiB in the shared corpus); re-reading and
/// re-hashing those per request would dominate, so they are cached too.
pub const TARBALL_CACHE_BYTES_MAX: usize = 128 * 1024 * 1024;
pub const TARBALL_CACHE_ENTRY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Threads that read and verify blob files for the cores (`blob_read.rs`), and the reads
/// that may wait for them.
pub const BLOB_READ_THREADS: usize = 2;
pub const BLOB_READ_QUEUE_DEPTH: usize = 1024;

const _: () = assert!(HEADERS_COUNT_MAX * 4 < HEAD_BYTES_MAX);
const _: () = assert!(SMALL_BODY_BYTES_MAX < BODY_BYTES_MAX);
const _: () = assert!(TARBALL_CACHE_ENTRY_BYTES_MAX < TARBALL_CACHE_BYTES_MAX);
